//! `weft-scaler`: an agent that starts and stops agent processes on demand.
//!
//! The fabric pushes the demand for each agent (pending executions, instances no session
//! serves, listeners waiting on generator streams, the live sessions and their load); the
//! active scaler turns it into a number of processes per agent and starts or stops them
//! through a backend: local processes or Docker containers. Several scalers of one group may
//! run: one holds the group's lease and acts, the others stand by; the active one records
//! its intent in the grid before every start and stop, so a successor adopts what it left.
//!
//! ```text
//!   fabric ── demand (watch) ──► controller ── plan (pure) ──► backend ──► agent processes
//!      ▲  lease, fenced intents,     │  backoff (pure)                       │ sessions named
//!      └──── status ─────────────────┘                                        ▼ after replicas
//!                                                                          fabric
//! ```
//!
//! # Layout
//! - [`config`]: the TOML configuration, its defaults and validation.
//! - [`reload`]: reloading it on SIGHUP and when the file changes.
//! - [`plan`]: desired replicas per agent and what to start and stop (pure).
//! - [`backoff`]: restart back-off and crash-loop detection per replica slot (pure).
//! - [`backend`]: where the processes run: [`backend::Launch`], exits, the process backend.
//! - [`fabric`]: what the scaler needs from the fabric (demand, lease, fenced intents,
//!   status), the adapter over the SDK, and an in-memory fake for tests.
//! - [`intent`]: the record kept in the grid per replica.
//! - [`status`]: the status published for `weft scaler status`.
//! - [`controller`]: the loop: lease, adoption, acting on demand, crashes.
//! - [`metrics`]: Prometheus text on `--metrics-addr`.
//! - [`clock`]: time, injectable for tests.
//! - [`service`]: wires it all for the binary: config, fabric, backends, controller, the
//!   scaler's own agent session, metrics.

pub mod backend;
pub mod backoff;
pub mod clock;
pub mod config;
pub mod controller;
pub mod fabric;
pub mod intent;
pub mod metrics;
pub mod plan;
pub mod reload;
pub mod service;
pub mod status;

pub use config::Config;
pub use controller::Controller;

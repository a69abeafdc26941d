//! The Weft fabric node.
//!
//! A node is one process (`weft node`): it stores a Raft log in sled, replicates the grid with
//! openraft, and serves gRPC (agents, tools, peers) and HTTP on one TCP port.
//!
//! The `weft` command line (`node`, `dev` and the client commands) is the binary's own tree,
//! `src/bin/weft/`, built on this crate's public items; the library parses no arguments.
//!
//! # Layout
//! - [`node`]: wires every subsystem together and stops them with one signal.
//! - [`config`]: configuration layering (defaults < TOML < `WEFT_*` env < flags), validation.
//! - [`data_dir`]: the data directory's identity and layout; refuses foreign directories.
//! - [`grid`]: the replicated state machine: pure, deterministic `apply` over in-memory maps.
//! - [`raft`]: openraft type config, sled log store, snapshotting state machine, network, and
//!   the Raft gRPC service.
//! - [`membership`]: SWIM gossip (foca over UDP), forming a cluster from gossip, and the
//!   leader's reconciler that turns gossip into Raft membership changes.
//! - `api`: the gRPC services agents and tools call (state, executions, instances, cluster).
//! - `routing`: the one path to the leader for writes and linearizable reads, the write
//!   batcher, the node-to-node `Forward` service, and the one place domain errors become
//!   `tonic::Status`.
//! - `convert`: generated protobuf types to domain types and back, in one place.
//! - `http`: `/healthz`, `/readyz`, `/metrics`.
//! - `readiness`: whether this node can serve now (the rule `/readyz` and gRPC health share).
//! - `health`: `grpc.health.v1.Health`, kept in step with readiness.
//! - [`metrics`]: the Prometheus metrics the layers fill (histograms, execution counters)
//!   and the text format `/metrics` writes.
//! - `dashboard`: the web dashboard (`/ui/`): embedded page, snapshots as JSON and as SSE.
//! - `sessions`: agent sessions hosted here (`Listen` streams) and the reaper of dead ones.
//! - `watch`: the hub applied entries fill: assignments to push, results to wake callers.
//! - [`log_limit`]: the `weft` binary's log filter that rate-limits repeated peer errors.
//! - [`auth`]: tokens with scopes: roles, scopes, and the one check (`authorize`) every
//!   handler asks for the permission its operation needs.
//! - [`tls`]: TLS on the node's port from files read again when they change, mutual TLS
//!   between nodes (only node certificates reach Raft and forwarding), the dialer for
//!   peers, and development certificates (`weft certs`).
//! - [`audit_notes`]: configuration reloads (TLS files, gossip keys) queued, bounded, for the
//!   audit trail.
//! - `codec`: versioned binary encoding of everything persisted or sent between nodes.
//! - `fuzzing` (feature `fuzzing`): entry points for the fuzz targets in `fuzz/`, one per
//!   decoder fed from outside.
//! - [`testing`]: the one harness for tests and benchmarks: in-process clusters, and `weft node`
//!   processes on free ports (spawn, kill, restart, ask for the leader).

// A public type in a crate-private module is an internal that leaked into the public API.
#![warn(unnameable_types)]

pub(crate) mod api;
pub mod audit_notes;
pub mod auth;
pub(crate) mod codec;
pub mod config;
pub(crate) mod convert;
pub(crate) mod dashboard;
pub mod data_dir;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod grid;
pub(crate) mod health;
pub(crate) mod http;
pub mod log_limit;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod raft;
pub(crate) mod readiness;
pub(crate) mod rest;
pub(crate) mod routing;
pub(crate) mod sessions;
pub mod testing;
pub mod tls;
pub(crate) mod watch;

pub use config::Config;
pub use node::Node;

/// A node's id in the cluster: chosen by the operator (`--node-id`) or generated and kept in
/// the data directory. Shared by every layer, so it lives at the root.
pub type NodeId = u64;

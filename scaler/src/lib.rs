//! `weft-scaler`: an agent that starts and stops agent processes on demand.
//!
//! The fabric pushes the demand for each agent (pending executions, instances no session
//! serves, listeners waiting on generator streams, the live sessions and their load); the
//! active scaler turns it into a number of processes per agent and starts or stops them
//! through a backend: local processes or Docker containers.
//!
//! # Layout
//! - [`backend`]: where agent processes run: the [`backend::Launch`] a replica is started
//!   from, the exits a backend reports, and the backends themselves.

pub mod backend;

//! Backends: where the scaler's agent processes run.
//!
//! A backend starts a replica from a [`Launch`], stops one (TERM, the drain grace, then KILL),
//! reports every exit on the channel it was built with, and finds the replicas that a scaler
//! (this one or a predecessor) started and that still run, so they can be adopted instead of
//! started again. Every replica carries its [`ReplicaId`] where the backend can read it back:
//! in the process's environment (`WEFT_SCALER_REPLICA`), in the container's labels.
//!
//! # Layout
//! - [`docker`]: containers on the machine's Docker engine.

use std::time::Duration;

pub mod docker;

/// A replica's id: unique per scaler cluster, made of the agent's name and a random suffix
/// (`echo-5f3a9c21`). It is also the session name the replica's worker opens with
/// (`WEFT_SESSION_NAME`), which is how the scaler finds its replicas' sessions.
pub type ReplicaId = String;

/// The environment variable that carries a process's replica id.
pub const REPLICA_ENV: &str = "WEFT_SCALER_REPLICA";

/// Everything needed to start one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The replica's id.
    pub replica: ReplicaId,
    /// The agent it serves.
    pub agent: String,
    /// In per-instance mode, the instance it serves alone.
    pub instance: Option<String>,
    /// Environment for the process: the agent's configured environment plus `WEFT_ENDPOINT`,
    /// `WEFT_AGENT`, `WEFT_INSTANCE` (per-instance), `WEFT_SESSION_NAME` and
    /// `WEFT_SCALER_REPLICA`.
    pub env: Vec<(String, String)>,
}

/// How a replica ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exited {
    /// The replica.
    pub replica: ReplicaId,
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Whether the scaler asked it to stop (a stop, not a crash).
    pub stopped: bool,
    /// The last lines of its output (bounded).
    pub output_tail: String,
}

/// A replica found running, for adoption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The replica.
    pub replica: ReplicaId,
    /// The agent it serves.
    pub agent: String,
    /// The instance it serves alone, in per-instance mode.
    pub instance: Option<String>,
    /// The backend's handle for it: a process id, a container id.
    pub handle: String,
}

/// Longest tail of output kept per replica, in bytes.
pub const MAX_OUTPUT_TAIL_BYTES: usize = 64 * 1024;

/// How long a stop waits after KILL for the replica to be gone before it reports an error.
pub const KILL_WAIT: Duration = Duration::from_secs(5);

//! Intents: what the active scaler records in the grid about each replica before it acts, so
//! a successor adopts what its predecessor started (or cleans it up) and never starts
//! duplicates.
//!
//! One JSON value per replica, under `replica/<id>` in the group's namespace
//! (`shared/weft.scaler.<group>`), written with the lease's fence:
//!
//! ```text
//!  start: put {phase: starting, handle: ""} ─► backend.start ─► put {handle: "PID@TICKS"}
//!         ─► its session opens ─► put {phase: running}
//!  stop:  put {phase: stopping} ─► backend.stop (TERM, grace, KILL) ─► exit ─► delete
//!  crash: exit ─► delete (the slot waits for its back-off; a restart is a new replica)
//! ```

use serde::{Deserialize, Serialize};

use crate::config::BackendKind;

/// The key prefix of intents in the group's namespace.
pub const KEY_PREFIX: &str = "replica/";

/// The key of replica `id`'s intent.
pub fn key(id: &str) -> String {
    format!("{KEY_PREFIX}{id}")
}

/// Where a recorded replica is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// About to be started or started; its session is not open yet.
    Starting,
    /// Its session opened.
    Running,
    /// Asked to stop.
    Stopping,
}

/// One replica's intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// The agent it serves.
    pub agent: String,
    /// The instance it serves alone (per-instance mode).
    pub instance: Option<String>,
    /// Its backend.
    pub backend: BackendKind,
    /// The backend's handle once started: `PID@START` for a process (its start time in
    /// clock ticks since boot, from `/proc/PID/stat`, so a reused pid never matches), the
    /// container id for Docker; empty before the start.
    pub handle: String,
    /// The host of the scaler that started it (a process can be adopted only there).
    pub host: String,
    /// Its phase.
    pub phase: Phase,
    /// When the scaler decided to start it, ms since the epoch.
    pub started_at_ms: u64,
    /// Its pool slot (restart back-off is kept per slot); `None` in per-instance mode.
    pub slot: Option<u32>,
}

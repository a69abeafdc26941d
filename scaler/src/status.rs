//! The status the active scaler publishes (fenced) under `status` in its group's namespace
//! whenever it changes, and at least every [`REFRESH`]; `weft scaler status` prints it and
//! the scaler's own agent (`weft.scaler`, delegate `status`) returns it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The key of the status in the group's namespace.
pub const KEY: &str = "status";
/// Longest time between two publications of an unchanged status: a status older than 3 ×
/// this is stale (its scaler is gone or cut off).
pub const REFRESH: Duration = Duration::from_secs(10);
/// Most replicas listed per agent.
pub const MAX_REPLICAS_LISTED: usize = 20;
/// Longest output tail in a crash report, in bytes.
pub const MAX_TAIL_BYTES: usize = 2048;
/// Largest status published, in bytes of JSON: past it the replica lists, then the output
/// tails, are left out.
pub const MAX_STATUS_BYTES: usize = 512 * 1024;

/// The whole status of a scaler group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The group.
    pub group: String,
    /// The active scaler (its lease holder name).
    pub holder: String,
    /// Its lease's fencing token.
    pub token: u64,
    /// When this was published, ms since the epoch (the scaler's clock).
    pub updated_at_ms: u64,
    /// Per agent.
    pub agents: BTreeMap<String, AgentStatus>,
}

/// One agent's status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// `pool` or `per-instance`.
    pub mode: String,
    /// `process` or `docker`.
    pub backend: String,
    /// Replicas it should have.
    pub desired: u32,
    /// Replicas whose session is open.
    pub running: u32,
    /// Replicas started whose session is not open yet.
    pub starting: u32,
    /// Replicas draining.
    pub stopping: u32,
    /// Replicas waiting for their restart back-off.
    pub waiting: u32,
    /// Set while failures in a row reached the crash-loop threshold.
    pub crash_looping: Option<CrashLoop>,
    /// The last thing that went wrong (a failed start, a refused write), if any.
    pub last_error: Option<String>,
    /// Its replicas (at most [`MAX_REPLICAS_LISTED`]).
    pub replicas: Vec<ReplicaStatus>,
}

/// A crash loop: the last failure and when the next try comes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashLoop {
    /// Failures in a row.
    pub failures: u32,
    /// The last exit code, if the process exited.
    pub exit_code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// What went wrong.
    pub reason: String,
    /// The tail of its output (at most [`MAX_TAIL_BYTES`]).
    pub output_tail: String,
    /// When the next start may be tried, ms since the epoch.
    pub next_retry_at_ms: u64,
}

/// One replica.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// Its id (and session name).
    pub id: String,
    /// `waiting`, `starting`, `running` or `stopping`.
    pub phase: String,
    /// The instance it serves alone.
    pub instance: Option<String>,
    /// The backend's handle.
    pub handle: String,
    /// Its session, once open.
    pub session: Option<u64>,
    /// When it was started, ms since the epoch.
    pub started_at_ms: u64,
}

/// The last `max` bytes of `text`, cut on a character boundary.
pub fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

impl Status {
    /// The status as JSON within [`MAX_STATUS_BYTES`]: replica lists, then tails, dropped as
    /// needed.
    pub fn to_bounded_json(&self) -> serde_json::Value {
        let mut status = self.clone();
        for step in 0..3 {
            let value = serde_json::to_value(&status).unwrap_or_default();
            if value.to_string().len() <= MAX_STATUS_BYTES || step == 2 {
                return value;
            }
            for a in status.agents.values_mut() {
                match step {
                    0 => a.replicas.clear(),
                    _ => {
                        if let Some(c) = a.crash_looping.as_mut() {
                            c.output_tail.clear();
                        }
                    }
                }
            }
        }
        serde_json::Value::Null
    }

    /// The status without its publication time, to tell whether anything changed.
    pub fn same_as(&self, other: &Status) -> bool {
        Status { updated_at_ms: 0, ..self.clone() } == Status { updated_at_ms: 0, ..other.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_cut_on_character_boundaries() {
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("aé", 1), "");
        assert_eq!(tail("aéb", 2), "b");
    }

    #[test]
    fn an_oversized_status_drops_replica_lists_first() {
        let mut s = Status::default();
        for i in 0..400 {
            let replicas = (0..MAX_REPLICAS_LISTED)
                .map(|r| ReplicaStatus { id: format!("agent-{i}-{r:0>200}"), ..ReplicaStatus::default() })
                .collect();
            s.agents.insert(format!("agent-{i}"), AgentStatus { replicas, ..AgentStatus::default() });
        }
        let json = s.to_bounded_json();
        assert!(json.to_string().len() <= MAX_STATUS_BYTES);
        assert_eq!(json["agents"]["agent-0"]["replicas"].as_array().unwrap().len(), 0);
    }
}

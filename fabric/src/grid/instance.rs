//! Agent instances: `(agent, instance id)` with a lifecycle and single activation.
//!
//! ```text
//!   start ──► Starting ──Start ok──► Running ──stop──► Stopping ──Stop done──► removed
//!                 └──Start failed / cancelled──────────────────────────────► removed
//! ```
//!
//! An instance's executions wait in its own queue; only its head is offered to sessions, so
//! they run one at a time and in order (unless the serving session declared the agent
//! concurrent). The first session that takes one activates the instance; it keeps it until
//! the session ends. Removing an instance removes its state namespace and stops its children.
//!
//! This file holds the types (`NewInstance` as the log stores it, `Instance` as the grid keeps
//! it). How `apply` starts, stops and removes instances is in `instances.rs`.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::execution::{ExecutionId, Payload, SessionId};

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lifecycle {
    /// Its `Start` execution has not finished.
    Starting,
    /// Started; serving calls.
    Running,
    /// Its `Stop` execution runs (after what was running); new calls are refused.
    Stopping,
}

impl Lifecycle {
    /// The name in the protocol and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Starting => "starting",
            Lifecycle::Running => "running",
            Lifecycle::Stopping => "stopping",
        }
    }
}

/// A request to start an instance, as stored in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewInstance {
    /// The agent.
    pub agent: String,
    /// The instance id; `None`: the grid makes one (`i<n>`).
    pub instance: Option<String>,
    /// The `Start` delegate's arguments.
    pub payload: Payload,
    /// Starting again with this key (and the same id) returns the first start.
    pub idempotency_key: Option<String>,
    /// The instance that starts this one (stopping it stops this one too).
    pub parent: Option<(String, String)>,
    /// Outcome retention of the `Start` execution (set by the proposing node).
    pub retention_ms: u64,
    /// Delivery bound of the `Start` execution (set by the proposing node).
    pub max_deliveries: u32,
}

/// One instance, as the grid holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The agent.
    pub agent: String,
    /// The instance id.
    pub id: String,
    /// Where it is in its life.
    pub lifecycle: Lifecycle,
    /// The session it is activated on.
    pub session: Option<SessionId>,
    /// Its executions waiting to run, in order (higher priority, then older, first).
    pub queue: BTreeSet<(i64, ExecutionId)>,
    /// The head of `queue` while it is offered to sessions: (delegate, order key).
    pub offered: Option<(String, (i64, ExecutionId))>,
    /// Its executions assigned now.
    pub running: u32,
    /// Every execution of it that has not finished.
    pub live: BTreeSet<ExecutionId>,
    /// The `Start` execution.
    pub start_execution: ExecutionId,
    /// The `Start` result, once it succeeded.
    pub start_result: Option<Payload>,
    /// The `Stop` execution, once stopping.
    pub stop_execution: Option<ExecutionId>,
    /// The instance that started it.
    pub parent: Option<(String, String)>,
    /// Instances it started.
    pub children: BTreeSet<(String, String)>,
    /// When it was created (leader-stamped ms).
    pub created_ms: u64,
    /// Outcome retention for its `Start` and `Stop` executions.
    pub retention_ms: u64,
    /// Delivery bound for its `Start` and `Stop` executions.
    pub max_deliveries: u32,
}

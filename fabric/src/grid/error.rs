//! [`Error`]: why the grid refused a command or a query. In every case the grid is unchanged.
//!
//! Errors travel in Raft responses (bincode): append new variants at the end, never reorder.

use serde::{Deserialize, Serialize};

use super::execution::{ExecutionId, SessionId};

/// Why a command or query was refused. In every case the grid is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
    /// The namespace name has an unknown format. Nothing changed.
    #[error("invalid namespace '{namespace}': {reason}")]
    InvalidNamespace { namespace: String, reason: String },
    /// The key is empty or too long. Nothing changed.
    #[error("invalid key: {reason}")]
    InvalidKey { reason: String },
    /// The value is over the size limit. Nothing changed.
    #[error("value is {size} bytes; the limit is {limit} bytes (max_value_bytes)")]
    ValueTooLarge { size: usize, limit: usize },
    /// A compare-and-set or conditional delete named a version that is not the key's current
    /// one (0 = absent). Nothing changed.
    #[error("version mismatch: expected {expected}, current is {current} (0 means absent)")]
    VersionMismatch { expected: u64, current: u64 },
    /// A put-if-absent found the key present. Nothing changed.
    #[error("key already exists at version {version}")]
    AlreadyExists { version: u64 },
    /// A list page size of zero or over the limit. Nothing read.
    #[error("page size {requested} is out of range 1..={limit}")]
    InvalidPageSize { requested: usize, limit: usize },
    /// An agent, delegate or instance name has the wrong form. Nothing changed.
    #[error("invalid {what} name '{name}': {reason}")]
    InvalidName { what: String, name: String, reason: String },
    /// A payload's codec is unknown or its bytes do not match it. Nothing changed.
    #[error("invalid payload: {reason}")]
    InvalidPayload { reason: String },
    /// A payload (arguments, result or error message) is over the limit. Nothing changed.
    #[error("payload is {size} bytes; the limit is {limit} bytes (max_payload_bytes)")]
    PayloadTooLarge { size: usize, limit: usize },
    /// An execution request is malformed (times, retry policy, reserved delegate). Nothing
    /// changed.
    #[error("invalid execution: {reason}")]
    InvalidExecution { reason: String },
    /// A session request is malformed. Nothing changed.
    #[error("invalid session: {reason}")]
    InvalidSession { reason: String },
    /// A completion is malformed (effects it may not make). Nothing changed.
    #[error("invalid completion: {reason}")]
    InvalidCompletion { reason: String },
    /// No execution has this id (never created, or forgotten after its retention). Nothing
    /// changed.
    #[error("no execution {id} (never created, or forgotten after its retention)")]
    UnknownExecution { id: ExecutionId },
    /// The execution has its final outcome already. Nothing changed.
    #[error("execution {id} is already {status}")]
    ExecutionFinished { id: ExecutionId, status: String },
    /// The caller does not hold the execution's current lease. Nothing changed.
    #[error("execution {id}: stale lease: {reason}")]
    StaleLease { id: ExecutionId, reason: String },
    /// No live session has this id. Nothing changed.
    #[error("no session {id} (it has ended)")]
    UnknownSession { id: SessionId },
    /// No such instance. Nothing changed.
    #[error("no instance {agent}/{instance} (never started, or stopped)")]
    UnknownInstance { agent: String, instance: String },
    /// The instance exists already. Nothing changed.
    #[error("instance {agent}/{instance} exists already")]
    InstanceExists { agent: String, instance: String },
    /// The instance is stopping and takes no new calls. Nothing changed.
    #[error("instance {agent}/{instance} is stopping; it takes no new calls")]
    InstanceStopping { agent: String, instance: String },
    /// Another session serves the instance (single activation). Nothing changed.
    #[error("instance {agent}/{instance} is served by session {session}; one session at a time")]
    InstanceClaimed { agent: String, instance: String, session: SessionId },
    /// The idempotency key was used for a different call. Nothing changed.
    #[error("idempotency key '{key}' was used for a different call (execution {id})")]
    IdempotencyKeyReused { key: String, id: ExecutionId },
    /// A bound on stored things (executions, sessions) is reached. Nothing changed.
    #[error("{what}: {count} stored; the limit is {limit} ({setting})")]
    TooMany { what: String, count: usize, limit: usize, setting: String },
}

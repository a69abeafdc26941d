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
    /// No stream has this name (never created, or deleted). Nothing changed.
    #[error("no stream '{name}' (never created, or deleted)")]
    UnknownStream { name: String },
    /// A stream of this name exists with other settings. Nothing changed.
    #[error("stream '{name}' exists with other settings")]
    StreamExists { name: String },
    /// A stream's settings are malformed. Nothing changed.
    #[error("invalid stream: {reason}")]
    InvalidStream { reason: String },
    /// An item is malformed (key, headers, payload) or an append is. Nothing changed.
    #[error("invalid item: {reason}")]
    InvalidItem { reason: String },
    /// A key filter is malformed. Nothing changed.
    #[error("invalid key filter '{filter}': {reason}")]
    InvalidFilter { filter: String, reason: String },
    /// The stream is closed and takes no appends (or was closed with another status).
    /// Nothing changed.
    #[error("stream '{name}' is closed")]
    StreamClosed { name: String },
    /// An append's expected last seq is not the stream's. Nothing changed.
    #[error("stream '{stream}': expected last seq {expected}, the stream's is {current}")]
    LastSeqMismatch { stream: String, expected: u64, current: u64 },
    /// An exactly-once producer's append is out of order or from an older epoch. Nothing
    /// changed.
    #[error("stream '{stream}', producer '{producer}': {reason}")]
    ProducerRefused { stream: String, producer: String, reason: String },
    /// A stream limit with discard "new" refuses the append, or the append can never fit.
    /// Nothing changed.
    #[error("stream '{stream}' is at its {limit}: {reason}")]
    StreamLimit { stream: String, limit: String, reason: String },
    /// No cursor of this name on the stream. Nothing changed.
    #[error("no cursor '{name}' on stream '{stream}'")]
    UnknownCursor { stream: String, name: String },
    /// A cursor of this name exists with other settings. Nothing changed.
    #[error("cursor '{name}' of stream '{stream}' exists with other settings")]
    CursorExists { stream: String, name: String },
    /// A cursor's settings or a listener's request are malformed. Nothing changed.
    #[error("invalid cursor: {reason}")]
    InvalidCursor { reason: String },
    /// An ack or nack names a delivery that is not the item's current one. Nothing changed.
    #[error("stream '{stream}', cursor '{cursor}', item {seq}: stale fencing token: {reason}")]
    StaleAck { stream: String, cursor: String, seq: u64, reason: String },
    /// No attached listener has this id. Nothing changed.
    #[error("no listener {id} (it was detached)")]
    UnknownListener { id: u64 },
    /// A resuming listener's stream was deleted (and maybe created again). Nothing changed.
    #[error("stream '{name}' was deleted (a stream of that name now is another one)")]
    StreamReplaced { name: String },
    /// A lease request is malformed (holder, time to live, a fenced command that may not be
    /// fenced). Nothing changed.
    #[error("invalid lease request: {reason}")]
    InvalidLease { reason: String },
    /// Another holder holds the lease. Nothing changed.
    #[error(
        "lease '{lease}' is held by '{holder}' (token {token}) for {remaining_ms} ms more, until {expires_at_ms}"
    )]
    LeaseHeld { lease: String, holder: String, token: u64, expires_at_ms: u64, remaining_ms: u64 },
    /// A renew or a fenced write named a grant that does not hold the lease now (it expired,
    /// was released or another holder took it over). Nothing changed.
    #[error("lease '{lease}' is not held with token {token}: {reason}")]
    LeaseLost { lease: String, token: u64, reason: String },
    /// Sessions of the agent are connected and none serves the delegate: the call would wait
    /// for one that may never come. Nothing changed.
    #[error(
        "no connected session of agent '{agent}' serves delegate '{delegate}'; its {sessions} session(s) serve: {served}. To wait for a session that serves it (a rolling deploy), create the call with wait_for_delegate (weft call --wait-for-delegate)"
    )]
    DelegateNotServed { agent: String, delegate: String, sessions: usize, served: String },
    /// A token request is malformed (id, name, scopes, lifetime). Nothing changed.
    #[error("invalid token: {reason}")]
    InvalidToken { reason: String },
    /// No token has this id (never created, or revoked long ago). Nothing changed.
    #[error("no token '{id}' (never created, or revoked)")]
    UnknownToken { id: String },
    /// A token with this id exists with another secret, name, role or scopes. Nothing changed.
    #[error("token '{id}' exists already (with another secret, name, role or scopes)")]
    TokenExists { id: String },
    /// The lease is free, but holders wait for it: the first is granted it on the next tick
    /// (within moments), and one who does not wait may not go ahead of them. Nothing changed.
    #[error(
        "lease '{lease}' has {waiting} holder(s) waiting for it; '{first}' is granted it next (ask with a wait to queue)"
    )]
    LeaseAwaited { lease: String, waiting: usize, first: String },
    /// A schedule is malformed (name, cron expression, time zone, call, policies). Nothing
    /// changed.
    #[error("invalid schedule: {reason}")]
    InvalidSchedule { reason: String },
    /// No schedule has this name (never created, or deleted). Nothing changed.
    #[error("no schedule '{name}' (never created, or deleted)")]
    UnknownSchedule { name: String },
    /// A schedule of this name exists with other settings. Nothing changed.
    #[error("schedule '{name}' exists already with other settings (delete it first to replace it)")]
    ScheduleExists { name: String },
}

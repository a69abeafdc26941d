//! What applying an entry tells the nodes besides its `Output`: [`Event`]s (an execution
//! assigned to a session, a result ready). They are not state: every replica computes the
//! same ones, and each node acts on those of its own sessions and waiting callers.
//!
//! While a command applies it fills an [`Outbox`]: its events, and what dispatch must look at
//! once the command is done.

use std::collections::BTreeSet;

use super::execution::{ExecutionId, SessionId};
use super::session::Host;

/// Something nodes act on after an entry is applied: push an assignment down a session's
/// stream, tell a handler to stop, wake a caller waiting for a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `execution` was assigned to `session`, whose stream lives at `host`, under `token`.
    /// By the time a node acts on it a later entry may have moved the execution on: push it
    /// only while the lease is still `(session, token)`.
    Assigned { host: Host, session: SessionId, execution: ExecutionId, token: u64 },
    /// `session` no longer holds `execution` (cancelled, deadline, lease expired): its
    /// handler should stop; a completion with `token` will be refused.
    Revoked { host: Host, session: SessionId, execution: ExecutionId, token: u64, reason: String },
    /// `execution` changed status.
    Changed { execution: ExecutionId },
    /// `session` ended.
    SessionClosed { host: Host, session: SessionId, reason: String },
}

/// What one command leaves for the end of its apply: events, and agents to dispatch for.
pub(super) struct Outbox<'a> {
    pub(super) events: &'a mut Vec<Event>,
    /// Agents whose queues dispatch looks at when the command is done.
    pub(super) dirty: BTreeSet<String>,
    /// Placement steps dispatch has taken for this command.
    pub(super) steps: usize,
    /// Instance queue heads their instance's session does not serve (see `Grid::offer`).
    pub(super) unserved: Vec<ExecutionId>,
}

impl<'a> Outbox<'a> {
    pub(super) fn new(events: &'a mut Vec<Event>) -> Self {
        Self { events, dirty: BTreeSet::new(), steps: 0, unserved: Vec::new() }
    }
}

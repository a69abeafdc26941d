//! What applying an entry tells the nodes besides its `Output`: [`Event`]s (an execution
//! assigned to a session, a result ready, a stream item delivered to a listener, the demand
//! changed). They are not state: every replica computes the same ones, and each node acts on
//! those of its own sessions, waiting callers and watchers.
//!
//! While a command applies it fills an [`Outbox`]: its events, and what dispatch must look at
//! once the command is done.

use std::collections::{BTreeMap, BTreeSet};

use super::cursor::ListenerId;
use super::execution::{ExecutionId, SessionId};
use super::session::Host;
use super::stream::{End, Seq};

/// Something nodes act on after an entry is applied: push an assignment down a session's
/// stream, tell a handler to stop, wake a caller waiting for a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `execution` was assigned to `session`, whose stream lives at `host`, under `token`.
    /// By the time a node acts on it a later entry may have moved the execution on: push it
    /// only while the lease is still `(session, token)`. `pushed`: the leader pushed it to the
    /// session before creating it (an eager call, `reserved.rs`); nobody pushes it again.
    Assigned { host: Host, session: SessionId, execution: ExecutionId, token: u64, pushed: bool },
    /// `session` no longer holds `execution` (cancelled, deadline, lease expired): its
    /// handler should stop; a completion with `token` will be refused.
    Revoked { host: Host, session: SessionId, execution: ExecutionId, token: u64, reason: String },
    /// `execution` changed status.
    Changed { execution: ExecutionId },
    /// `execution` was created (with a `Changed` too).
    Created { execution: ExecutionId },
    /// `session` ended.
    SessionClosed { host: Host, session: SessionId, reason: String },
    /// `stream` changed: items appended or removed, closed, or deleted. Readers on every node
    /// look again.
    StreamChanged { stream: String },
    /// Item `seq` of `stream` was delivered to `listener`, whose gRPC stream lives at `host`,
    /// under `token` (0: no ack expected), for the `count`-th time.
    Delivered { host: Host, listener: ListenerId, stream: String, seq: Seq, token: u64, count: u32 },
    /// `listener` will get nothing more: the stream closed and it has everything, or the
    /// stream or cursor is gone, or the fabric removed it.
    ListenerEnded { host: Host, listener: ListenerId, end: ListenerEnd },
    /// The demand for agent processes changed in a way no other event tells: a session opened
    /// or began draining, a listener attached to a generator stream, delayed executions became
    /// ready. Demand watchers on every node look again (with [`Event::Changed`],
    /// [`Event::SessionClosed`] and [`Event::ListenerEnded`], which change it too).
    WorkChanged,
    /// Token `id` was revoked. Each node ends the long-lived calls (agent sessions, waits,
    /// listeners, watches, tails) that were opened with it.
    TokenRevoked { id: String },
}

/// Why a listener ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerEnd {
    /// The stream was closed with this status, and the cursor delivered and saw acknowledged
    /// every item.
    Closed(End),
    /// The stream or the cursor was deleted.
    Deleted(String),
    /// The listener was detached (its node is gone, it was replaced).
    Removed(String),
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
    /// Streams whose cursors the delivery pass looks at when the command is done.
    pub(super) streams: BTreeSet<String>,
    /// Slots per session that the leader's eager calls hold and the grid has not created yet:
    /// the entry's stamp, less each of them created since in the entry (`reserved.rs`).
    pub(super) held: &'a mut Held,
}

/// Eager calls held per session, as the leader stamped an entry (see [`Outbox::held`]).
pub(super) type Held = BTreeMap<SessionId, u32>;

impl<'a> Outbox<'a> {
    pub(super) fn new(events: &'a mut Vec<Event>, held: &'a mut Held) -> Self {
        Self {
            events,
            dirty: BTreeSet::new(),
            steps: 0,
            unserved: Vec::new(),
            streams: BTreeSet::new(),
            held,
        }
    }
}

//! The grid: Weft's replicated state machine.
//!
//! `Grid::apply` is pure and deterministic: it reads no clock, does no I/O and draws no random
//! numbers, so every replica that applies the same log holds the same grid. Time comes from the
//! log entry (the leader stamps each batch with its clock) and never runs backwards inside the
//! grid.
//!
//! ```text
//!   leader: Batch { now_ms, [Command, ...] } --raft--> every node: Grid::apply_batch
//!                                                      -> [Result<Output, Error>, ...]
//! ```
//!
//! The grid holds key/value state in namespaces, the work of agents (executions, the
//! sessions that run them and agent instances), streams with their cursors, leases with
//! their fencing tokens, and the bearer tokens callers present (hashed). [`Grid::apply_with_events`] is the table of
//! contents: one line per command, each applied by the file of its concept, then dispatch.
//! Applying an entry also yields [`Event`]s (an execution assigned to a session, a result
//! ready): not state, but what the nodes act on once the entry is applied.
//!
//! # Layout
//! Here: [`Grid`], whose fields are the snapshot format, and `apply`. Around them:
//! - `command`: [`Command`] (as the log stores it), [`Output`], [`Limits`]; checks against the
//!   limits (at proposal) and of shape (at apply).
//! - `error`: [`Error`], why a command or a query was refused.
//! - `events`: [`Event`]s for the nodes, and the outbox a command fills while it applies.
//! - `queries`: every read (keys, executions, sessions, instances, totals, next timer).
//! - [`demand`]: what a scaler sees per agent (pending, running, delayed, instances, generator
//!   listeners, sessions), read from the dispatch and timer indexes.
//! - `snapshot`: older snapshot formats ([`GridV1`] to [`GridV7`]) and
//!   how they load.
//! - [`namespace`]: namespace names, and the rule for agent, delegate and instance names.
//!
//! Each concept has one file for how `apply` changes it (an `impl Grid` block); a concept
//! whose types callers build and read keeps them in a public module named in the singular:
//! - `kv`: key/value maps (put, compare-and-set, delete, expiry) and the cluster uid.
//! - `executions` (types: [`execution`]): create, complete, renew, give back, cancel, finish,
//!   forget.
//! - `sessions` (types: [`session`]): open, close, drain.
//! - `instances` (types: [`instance`]): start, stop, remove.
//! - `dispatch`: where pending executions wait; assigning them to sessions, releasing them.
//! - `streams` (types: [`stream`]): create, append (dedup, expected last seq, limits), close,
//!   delete, items leaving by age.
//! - `cursors` (types: [`cursor`]): cursors, listeners, acks, and the delivery pass that
//!   hands stream items to listeners with room.
//! - `leases` (types: [`lease`]): acquire, renew, release, writes fenced by a grant.
//! - `tokens` (types: [`token`]): bearer tokens, kept hashed: create, revoke.
//! - `schedules` (types: [`schedule`]): cron schedules that create executions at their due
//!   times: create, pause, resume, trigger, delete, and the tick that fires them.
//! - `timers`: what a `Tick` fires: delays, deadlines, execution leases, retention, ack
//!   waits, idle cursors, items past their age, expired leases, due schedules.
//!
//! A new concept adds its file beside these, its commands to `command` and one arm per command
//! to [`Grid::apply_with_events`]. Tests sit beside what they test: `<file>_test.rs` (the work
//! tests drive a grid through `test_harness`), or inline when small.

pub mod audit;
pub mod cursor;
pub mod demand;
pub mod execution;
pub mod instance;
pub mod lease;
pub mod namespace;
pub mod schedule;
pub mod session;
pub mod stream;
pub mod token;

mod command;
mod cursors;
mod dispatch;
mod error;
mod events;
mod executions;
mod instances;
mod kv;
mod leases;
mod queries;
mod reserved;
mod schedules;
mod sessions;
mod snapshot;
mod streams;
mod timers;
mod tokens;

#[cfg(test)]
mod audit_test;
#[cfg(test)]
mod demand_test;
#[cfg(test)]
mod dispatch_test;
#[cfg(test)]
mod executions_test;
#[cfg(test)]
mod instances_test;
#[cfg(test)]
mod kv_test;
#[cfg(test)]
mod lease_queues_test;
#[cfg(test)]
mod leases_test;
#[cfg(test)]
mod reserved_test;
#[cfg(test)]
mod schedules_test;
#[cfg(test)]
mod streams_test;
#[cfg(test)]
pub(crate) mod test_harness;
#[cfg(test)]
mod tokens_test;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

pub use self::command::{
    Command, Completed, Limits, Output, validate_cursor_name, validate_key, validate_listener_cursor,
    validate_name,
};
pub use self::error::Error;
pub use self::events::{Event, ListenerEnd};
pub use self::kv::Value;
pub use self::queries::{ExecutionPage, ExecutionQuery, Page, Totals};
pub use self::snapshot::{GridV1, GridV2, GridV3, GridV4, GridV5, GridV6, GridV7};

use self::command::clip_reason;
use self::cursor::{Listener, ListenerId};
use self::events::{Held, Outbox};
use self::execution::{Execution, ExecutionId, SessionId};
use self::instance::Instance;
use self::lease::Lease;
use self::session::Session;
use self::stream::{Seq, Stream};
use self::token::Token;

/// The replicated in-memory state. Snapshots are the bincode of these fields in this order:
/// never reorder them (older layouts load through `snapshot`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grid {
    /// Incremented by every write; a key's version is the revision of its last write.
    revision: u64,
    /// The latest leader-stamped time seen; never decreases.
    now_ms: u64,
    namespaces: BTreeMap<String, BTreeMap<String, Value>>,
    /// Expiry index: (expires_at_ms, namespace, key) for every key with a time to live.
    expiries: BTreeMap<(u64, String, String), ()>,
    /// Executions, sessions and instances. Snapshots of a grid from before it existed have
    /// their own format tag and load through [`Grid::from_v1`].
    work: Work,
    /// Streams, cursors and listeners. Snapshots from before streams load through
    /// [`Grid::from_v2`].
    streams: Streams,
    /// Leases and their fencing tokens. Snapshots from before leases (whose sessions have no
    /// only-claimed flag either) load through [`Grid::from_v3`].
    leases: Leases,
    /// Bearer tokens (hashed) and revoked ids. Snapshots from before tokens load through
    /// [`Grid::from_v4`].
    tokens: Tokens,
    /// Blocks of execution ids and tokens set aside for the leader's eager calls. Snapshots
    /// from before them load through [`Grid::from_v5`].
    eager: reserved::Blocks,
    /// Holders waiting for leases. Snapshots from before them load through
    /// [`Grid::from_v6`].
    waiting: Waiting,
    /// Schedules and their due times. Snapshots from before them load through
    /// [`Grid::from_v7`].
    schedules: schedules::Schedules,
}

/// Holders waiting for leases, first come first granted. Part of the grid's snapshot. Changed
/// only through its methods (`leases.rs`), which keep the two fields agreeing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Waiting {
    /// Each lease's queue (never empty), oldest first.
    queues: BTreeMap<String, VecDeque<lease::Waiter>>,
    /// (until_ms, lease, holder) of every waiter, one entry each (so also their count): a
    /// `Tick` removes those whose wait ran out.
    ends: BTreeSet<(u64, String, String)>,
}

/// Tokens, and the ids of the newest revoked ones. Part of the grid's snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Tokens {
    /// Every token held, by id.
    held: BTreeMap<String, Token>,
    /// Ids revoked (the newest `token::MAX_REVOKED`), for "revoked" rather than "unknown".
    revoked: BTreeSet<String>,
    /// The same ids, oldest first: which one to forget next.
    revoked_order: VecDeque<String>,
}

/// Held leases, when they run out, and the last fencing token granted. Part of the grid's
/// snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Leases {
    /// Every lease held now (and ones expired that no `Tick` has removed yet), by name.
    held: BTreeMap<String, Lease>,
    /// (expires_at_ms, name) of every lease in `held`.
    timers: BTreeSet<(u64, String)>,
    /// The last fencing token granted, to any lease.
    last_token: u64,
}

/// Streams, their cursors and the listeners attached. Part of the grid's snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Streams {
    streams: BTreeMap<String, Stream>,
    listeners: BTreeMap<ListenerId, Listener>,
    last_listener_id: ListenerId,
    /// The last fencing token given to a delivery.
    last_token: u64,
    /// (expires_ms, stream, cursor, seq) of deliveries waiting for their ack: removed with
    /// the delivery's ack, nack or detach; one left by a deleted stream or cursor is skipped
    /// when it fires.
    ack_timers: BTreeSet<(u64, String, String, Seq)>,
    /// (due_ms, stream, cursor) of unnamed cursors without listeners.
    idle: BTreeSet<(u64, String, String)>,
    /// Bytes of the items of all streams.
    bytes: u64,
    /// Running generator executions and the stream each feeds.
    generators: BTreeMap<ExecutionId, String>,
}

/// Executions, sessions and instances. Part of the grid's snapshot; every index is kept in
/// step by the files of the concepts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Work {
    last_execution_id: ExecutionId,
    last_session_id: SessionId,
    last_token: u64,
    executions: BTreeMap<ExecutionId, Execution>,
    /// Runnable executions per (agent, delegate), in dispatch order.
    ready: BTreeMap<(String, String), BTreeSet<(i64, ExecutionId)>>,
    /// Pending executions waiting for their `not_before_ms`.
    delayed: BTreeSet<(u64, ExecutionId)>,
    /// Unfinished executions with a deadline.
    deadlines: BTreeSet<(u64, ExecutionId)>,
    /// Assignments whose lease runs out unless renewed.
    leases: BTreeSet<(u64, ExecutionId)>,
    /// Finished executions and when they are forgotten.
    retained: BTreeSet<(u64, ExecutionId)>,
    /// (parent id or 0, idempotency key) to the execution created with it.
    idempotency: BTreeMap<(ExecutionId, String), ExecutionId>,
    /// (parent, child) pairs.
    children: BTreeSet<(ExecutionId, ExecutionId)>,
    sessions: BTreeMap<SessionId, Session>,
    /// Sessions serving each agent.
    serving: BTreeMap<String, BTreeSet<SessionId>>,
    instances: BTreeMap<(String, String), Instance>,
}

impl Grid {
    /// Applies a batch of commands stamped with the leader's clock, in order.
    pub fn apply_batch(&mut self, now_ms: u64, commands: &[Command]) -> Vec<Result<Output, Error>> {
        self.apply_batch_with_events(now_ms, commands, &mut Vec::new())
    }

    /// Applies a batch and appends the events it caused to `events`.
    pub fn apply_batch_with_events(
        &mut self,
        now_ms: u64,
        commands: &[Command],
        events: &mut Vec<Event>,
    ) -> Vec<Result<Output, Error>> {
        self.apply_batch_held(now_ms, &[], commands, events)
    }

    /// Applies a batch the leader stamped with the eager calls it held per session (`held`):
    /// dispatch leaves that many slots of each session free, less each of those calls the
    /// batch creates (`reserved.rs`).
    pub fn apply_batch_held(
        &mut self,
        now_ms: u64,
        held: &[(SessionId, u32)],
        commands: &[Command],
        events: &mut Vec<Event>,
    ) -> Vec<Result<Output, Error>> {
        self.advance_clock(now_ms);
        let mut held: Held = held.iter().copied().filter(|(_, n)| *n > 0).collect();
        self.restamp(&mut held, events);
        commands.iter().map(|c| self.apply_held(c, events, &mut held)).collect()
    }

    /// Moves the grid's clock forward to `now_ms` (it never goes back, so a new leader with a
    /// slower clock cannot resurrect expired keys).
    pub fn advance_clock(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// Applies one command at the grid's current time.
    pub fn apply(&mut self, command: &Command) -> Result<Output, Error> {
        self.apply_with_events(command, &mut Vec::new())
    }

    /// Applies one command at the grid's current time; appends its events to `events`. A
    /// refused command changes nothing and yields no events, except that a refused `Audited`
    /// operation is still recorded in the audit stream (with its error).
    pub fn apply_with_events(&mut self, command: &Command, events: &mut Vec<Event>) -> Result<Output, Error> {
        self.apply_held(command, events, &mut Held::new())
    }

    fn apply_held(
        &mut self,
        command: &Command,
        events: &mut Vec<Event>,
        held: &mut Held,
    ) -> Result<Output, Error> {
        command.validate_shape()?;
        let mut out = Outbox::new(events, held);
        let result = self.apply_command(command, &mut out);
        // Assign what the command made runnable (dispatch.rs) and hand stream items to the
        // listeners with room (cursors.rs); a key/value command leaves nothing to do.
        self.dispatch(&mut out);
        while let Some(stream) = out.streams.pop_first() {
            self.deliver(&stream, &mut out);
        }
        result
    }

    /// The table of contents: each command applied by the file of its concept (shape already
    /// checked; dispatch and delivery follow in [`Grid::apply_with_events`]).
    fn apply_command(&mut self, command: &Command, out: &mut Outbox) -> Result<Output, Error> {
        match command {
            // Key/value state (kv.rs).
            Command::Put { namespace, key, value, ttl_ms, if_absent } => {
                self.put(namespace, key, value, *ttl_ms, *if_absent)
            }
            Command::CompareAndSet { namespace, key, expected_version, value, ttl_ms } => {
                self.compare_and_set(namespace, key, *expected_version, value, *ttl_ms)
            }
            Command::Delete { namespace, key, expected_version } => {
                self.delete(namespace, key, *expected_version)
            }
            Command::Expire { limit } => Ok(self.expire(*limit)),
            Command::SetClusterUid { uid } => Ok(self.set_cluster_uid(*uid)),
            // Executions (executions.rs).
            Command::CreateExecution(new) => self.create_execution(new, false, out),
            Command::CreateServedExecution(new) => self.create_execution(new, true, out),
            Command::Complete(c) => self.complete(c, out),
            Command::Renew { execution, token } => self.renew(*execution, *token),
            Command::GiveBack { execution, token } => self.give_back(*execution, *token, out),
            Command::Cancel { execution, reason } => self.cancel(*execution, &clip_reason(reason), out),
            // Sessions (sessions.rs).
            Command::OpenSession(new) => self.open_session(new, false, out),
            Command::OpenSessionOnlyClaimed(new) => self.open_session(new, true, out),
            Command::CloseSession { session, reason } => {
                Ok(self.close_session(*session, &clip_reason(reason), out))
            }
            Command::DrainSession { session } => self.drain_session(*session, out),
            // Instances (instances.rs).
            Command::StartInstance(new) => self.start_instance(new, out),
            Command::StopInstance { agent, instance } => self.stop_instance(agent, instance, out),
            // Timers (timers.rs).
            Command::Tick { limit } => Ok(self.tick(*limit, out)),
            // Streams (streams.rs).
            Command::CreateStream(new) => self.create_stream(new, out),
            Command::Append(a) => self.append(a, out),
            Command::CloseStream { stream, error } => self.close_stream(stream, error.as_deref(), out),
            Command::DeleteStream { stream } => Ok(self.delete_stream(stream, out)),
            Command::StartGenerator { stream } => self.start_generator(stream, out),
            // Cursors and listeners (cursors.rs).
            Command::CreateCursor(new) => self.create_cursor(new, out),
            Command::DeleteCursor { stream, cursor } => self.delete_cursor(stream, cursor, out),
            Command::Attach(new) => self.attach(new, out),
            Command::Detach { listener, reason } => Ok(self.detach(*listener, &clip_reason(reason), out)),
            Command::Ack { stream, cursor, acks, effects } => self.ack(stream, cursor, acks, effects, out),
            Command::Nack { stream, cursor, seq, token } => self.nack(stream, cursor, *seq, *token, out),
            Command::Credit { listener, items } => self.credit(*listener, *items, out),
            // Leases (leases.rs).
            Command::AcquireLease { name, holder, ttl_ms } => self.acquire_lease(name, holder, *ttl_ms),
            Command::RenewLease { name, token, ttl_ms } => self.renew_lease(name, *token, *ttl_ms),
            Command::ReleaseLease { name, token } => Ok(self.release_lease(name, *token)),
            Command::AwaitLease { name, holder, ttl_ms, wait_ms } => {
                self.await_lease(name, holder, *ttl_ms, *wait_ms)
            }
            Command::StopWaiting { name, holder } => Ok(self.stop_waiting(name, holder)),
            // Schedules (schedules.rs).
            Command::CreateSchedule(new) => self.create_schedule(new),
            Command::PauseSchedule { name, agent } => self.pause_schedule(name, agent),
            Command::ResumeSchedule { name, agent } => self.resume_schedule(name, agent),
            Command::TriggerSchedule { name, agent } => self.trigger_schedule(name, agent, out),
            Command::DeleteSchedule { name, agent } => Ok(self.delete_schedule(name, agent)),
            Command::Fenced { lease, token, command } => self.fenced(lease, *token, command),
            // The audit trail (audit.rs).
            Command::Audited { actor, command } => self.audited(actor, command, out),
            Command::AuditNote(note) => Ok(self.audit_note(note, out)),
            // Tokens (tokens.rs).
            Command::CreateToken(new) => self.create_token(new),
            Command::RevokeToken { id } => self.revoke_token(id, out),
            // Eager calls (reserved.rs).
            Command::ReserveBlock { count } => Ok(self.reserve_block(*count)),
            Command::CreateReserved(r) => self.create_reserved(r, out),
        }
    }
}

/// Removes `value` from the set under `key`, and the key once its set is empty.
fn remove_pair<K: Ord, V: Ord>(map: &mut BTreeMap<K, BTreeSet<V>>, key: &K, value: &V) {
    if let Some(set) = map.get_mut(key) {
        set.remove(value);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

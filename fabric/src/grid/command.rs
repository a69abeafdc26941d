//! What goes into `apply` and what comes out: [`Command`] (a state-changing operation, as
//! stored in the Raft log), [`Output`] and [`Completed`] (what a successful one returns); the
//! [`Limits`] the receiving node checks a command against before proposing it, and the shape
//! checks `apply` itself makes.
//!
//! Commands and outputs are bincode in the log and in responses: append new variants at the
//! end, never reorder variants or fields.

use serde::{Deserialize, Serialize};

use super::Error;
use super::audit::{self, Actor, AuditNote};
use super::cursor::{ListenerId, NewCursor, NewListener};
use super::execution::{self, Completion, ExecutionId, NewExecution, SessionId};
use super::instance::NewInstance;
use super::lease::{self, Lease};
use super::namespace;
use super::schedule::{NewSchedule, Run, Schedule};
use super::session::NewSession;
use super::stream::{Append, NewStream, Seq, validate_stream_name};
use super::token::{self, NewToken};

/// Longest reason a cancel or a session close may give, in bytes (longer ones are clipped).
const MAX_REASON_BYTES: usize = 1024;

/// Deepest nesting of [`Command::Fenced`] and [`Command::Audited`] (together) that decodes.
/// One level is all `apply` accepts (a fenced command is a key/value write, an audited one a
/// control operation); bincode has no depth limit of its own, so without this a peer's few
/// hundred kilobytes of nested wrappers overflow the decoding thread's stack.
const MAX_FENCED_DEPTH: usize = 4;

/// Decodes the command inside a [`Command::Fenced`] or [`Command::Audited`], refusing one
/// nested deeper than [`MAX_FENCED_DEPTH`] before reading it.
fn fenced_command<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Box<Command>, D::Error> {
    thread_local!(static DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) });
    /// Leaves the level on the way out, however the decode ends.
    struct Level;
    impl Drop for Level {
        fn drop(&mut self) {
            DEPTH.set(DEPTH.get() - 1);
        }
    }
    if DEPTH.get() >= MAX_FENCED_DEPTH {
        return Err(serde::de::Error::custom(format!(
            "fenced or audited commands nested more than {MAX_FENCED_DEPTH} deep"
        )));
    }
    DEPTH.set(DEPTH.get() + 1);
    let _level = Level;
    Box::<Command>::deserialize(deserializer)
}

/// Limits on commands and queries. The node that receives a write checks them before
/// proposing it ([`Command::validate`]); `apply` does not, so replicas configured with other
/// limits still apply the same log the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
    /// Largest key, in bytes.
    pub max_key_bytes: usize,
    /// Largest page a list returns.
    pub max_list_page: usize,
    /// Largest execution payload (arguments, result, error message), in bytes.
    pub max_payload_bytes: usize,
    /// Most effects one completion may carry.
    pub max_effects: usize,
    /// Largest stream item (payload, key and headers), in bytes.
    pub max_item_bytes: usize,
    /// Largest total of one item's headers, in bytes.
    pub max_header_bytes: usize,
    /// Most items one append may carry.
    pub max_batch_items: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_value_bytes: 1 << 20,
            max_key_bytes: 1024,
            max_list_page: 1000,
            max_payload_bytes: 1 << 20,
            max_effects: 1000,
            max_item_bytes: 1 << 20,
            max_header_bytes: 4096,
            max_batch_items: 1000,
        }
    }
}

/// A state-changing operation, as stored in the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Write `value` under `key`, unconditionally or only when the key is absent.
    Put {
        namespace: String,
        key: String,
        // Bytes as one length-prefixed blob, not a sequence of u8 (many times faster to encode).
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        if_absent: bool,
    },
    /// Remove `key`, optionally only when its version matches.
    Delete { namespace: String, key: String, expected_version: Option<u64> },
    /// Write `value` only when the key's version equals `expected_version` (0: key absent).
    CompareAndSet {
        namespace: String,
        key: String,
        expected_version: u64,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    },
    /// Drop keys whose time to live has run out at the entry's time, at most `limit` of them
    /// (the leader proposes another entry for the rest).
    Expire { limit: u64 },
    /// Record this cluster's instance id, unless one is recorded already (the first wins).
    /// Proposed by the first leader; it tells this cluster from another of the same name.
    SetClusterUid { uid: u64 },
    /// Create an execution (or find the one its idempotency key names).
    CreateExecution(Box<NewExecution>),
    /// Register an agent session.
    OpenSession(Box<NewSession>),
    /// End a session; what it held goes back to pending.
    CloseSession { session: SessionId, reason: String },
    /// Finish an execution with a result or error, and apply its effects.
    Complete(Box<Completion>),
    /// Extend an assignment's lease.
    Renew { execution: ExecutionId, token: u64 },
    /// Hand an assignment back unfinished; it goes back to pending.
    GiveBack { execution: ExecutionId, token: u64 },
    /// Stop giving a session new work (it is shutting down).
    DrainSession { session: SessionId },
    /// Cancel an execution and its unfinished children.
    Cancel { execution: ExecutionId, reason: String },
    /// Create an instance and queue its `Start`.
    StartInstance(Box<NewInstance>),
    /// Stop an instance: queue its `Stop`, then remove it.
    StopInstance { agent: String, instance: String },
    /// Fire the timers due at the entry's time (delays, deadlines, leases, retention, ack
    /// waits, idle cursors, items past their age), at most `limit` of them (the leader
    /// proposes another for the rest).
    Tick { limit: u64 },
    /// Create a stream (or find the same one).
    CreateStream(Box<NewStream>),
    /// Append one item or an atomic batch to a stream.
    Append(Box<Append>),
    /// Close a stream: ok (`error: None`) or with an error.
    CloseStream { stream: String, error: Option<String> },
    /// Delete a stream, its items and cursors.
    DeleteStream { stream: String },
    /// Create a cursor (or find the same one).
    CreateCursor(Box<NewCursor>),
    /// Delete a cursor.
    DeleteCursor { stream: String, cursor: String },
    /// Attach a listener to a cursor.
    Attach(Box<NewListener>),
    /// Detach a listener; what it had not acked is delivered again.
    Detach { listener: ListenerId, reason: String },
    /// Acknowledge deliveries `(seq, token)` of a cursor, with effects applied atomically
    /// with the acks (state writes in shared namespaces, appends, more acks).
    Ack { stream: String, cursor: String, acks: Vec<(Seq, u64)>, effects: Vec<execution::Effect> },
    /// Hand a delivery back for delivery again now.
    Nack { stream: String, cursor: String, seq: Seq, token: u64 },
    /// A listener of an ack-none cursor processed `items`.
    Credit { listener: ListenerId, items: u32 },
    /// Start a generator stream's execution, unless it has started (a plain reader attached).
    StartGenerator { stream: String },
    /// Take the lease `name` for `holder` for `ttl_ms` if it is free (with a new fencing
    /// token); renew it if `holder` holds it.
    AcquireLease { name: String, holder: String, ttl_ms: u64 },
    /// Extend the grant `token` of lease `name` to `ttl_ms` from the entry's time.
    RenewLease { name: String, token: u64, ttl_ms: u64 },
    /// Give lease `name` up, if the grant `token` holds it.
    ReleaseLease { name: String, token: u64 },
    /// A key/value write (`Put`, `CompareAndSet` or `Delete`; nothing else) applied only
    /// while the grant `token` holds `lease` at the entry's time.
    Fenced {
        lease: String,
        token: u64,
        #[serde(deserialize_with = "fenced_command")]
        command: Box<Command>,
    },
    /// Register an agent session that serves, of each agent it claims instances of, only
    /// those instances (`OpenSession` entries from before the flag existed decode as before).
    OpenSessionOnlyClaimed(Box<NewSession>),
    /// Create an execution as `CreateExecution` does, but refuse it when sessions of its
    /// agent are connected and none of them serves its delegate (`CreateExecution` waits for
    /// one: a caller that asked to, during a rolling deploy).
    CreateServedExecution(Box<NewExecution>),
    /// A control operation (see [`audit::is_control`]) recorded in the audit stream with who
    /// asked and its outcome, in the same entry.
    Audited {
        actor: Actor,
        #[serde(deserialize_with = "fenced_command")]
        command: Box<Command>,
    },
    /// A record for the audit stream of something done outside the grid's commands.
    AuditNote(Box<AuditNote>),
    /// Store a bearer token (its secret's hash, never the secret), or find the same one.
    CreateToken(Box<NewToken>),
    /// Remove a token: from the entry on, every node refuses it.
    RevokeToken { id: String },
    /// Set aside `count` execution ids and as many fencing tokens that the grid will never
    /// give out itself: the leader hands them to eager calls (`reserved.rs`). Proposed only by
    /// the leader's proposer.
    ReserveBlock { count: u32 },
    /// Create a call that the leader pushed to a session already, under the id and token it
    /// gave, if the grid agrees; otherwise create it as `CreateExecution` would, with an id of
    /// its own (`reserved.rs`). Proposed only by the leader's proposer.
    CreateReserved(Box<execution::Reserved>),
    /// As `AcquireLease`, but a lease held by another holder (or with holders waiting for
    /// it) puts `holder` in its queue, for `wait_ms`: when the lease is released or expires,
    /// the first holder still waiting is granted it (with a new token) in the same entry.
    /// Asked again by a holder in the queue: it keeps its place, with the new times.
    AwaitLease { name: String, holder: String, ttl_ms: u64, wait_ms: u64 },
    /// `holder` stops waiting for lease `name`; the answer says whether it holds it now.
    StopWaiting { name: String, holder: String },
    /// Create a schedule (or find the same one): from the entry on, each of its due times
    /// creates an execution in the `Tick` that reaches it.
    CreateSchedule(Box<NewSchedule>),
    /// No run of schedule `name` until it is resumed. `agent` in these four is the agent the
    /// caller was allowed for: a schedule of that name calling another agent (deleted and
    /// created again meanwhile) counts as none.
    PauseSchedule { name: String, agent: String },
    /// Schedule `name` is due again from its next due time after the entry's time.
    ResumeSchedule { name: String, agent: String },
    /// A run of schedule `name` now, outside its due times (its overlap policy applies).
    TriggerSchedule { name: String, agent: String },
    /// Remove schedule `name`; runs started go on.
    DeleteSchedule { name: String, agent: String },
}

impl Command {
    /// Checks the command against the limits without touching any state. The node that
    /// receives a write calls it before proposing, so an over-limit command never reaches the
    /// log. (`apply` checks only [`Command::validate_shape`]: limits are configuration and may
    /// differ between nodes, and `apply` must give the same answer on every replica.)
    pub fn validate(&self, limits: &Limits) -> Result<(), Error> {
        match self {
            Command::Put { namespace, key, value, .. }
            | Command::CompareAndSet { namespace, key, value, .. } => {
                validate_key(namespace, key, limits)?;
                if value.len() > limits.max_value_bytes {
                    return Err(Error::ValueTooLarge { size: value.len(), limit: limits.max_value_bytes });
                }
                Ok(())
            }
            Command::Delete { namespace, key, .. } => validate_key(namespace, key, limits),
            Command::Fenced { command, .. } => command.validate(limits),
            Command::Audited { command, .. } => command.validate(limits),
            Command::CreateExecution(new) | Command::CreateServedExecution(new) => {
                validate_new_execution(new, limits)
            }
            Command::CreateReserved(r) => validate_new_execution(&r.new, limits),
            Command::CreateSchedule(new) => validate_new_execution(&new.call, limits),
            Command::ReserveBlock { .. } => self.validate_shape(),
            Command::StartInstance(new) => check_payload_size(new.payload.data.len(), limits),
            Command::Append(a) => validate_append(a, limits),
            Command::Complete(c) => {
                let size = match &c.outcome {
                    Ok(payload) => payload.data.len(),
                    Err(e) => e.message.len(),
                };
                check_payload_size(size, limits)?;
                if c.effects.len() > limits.max_effects {
                    return Err(Error::InvalidCompletion {
                        reason: format!(
                            "{} effects; the limit is {} (max_effects)",
                            c.effects.len(),
                            limits.max_effects
                        ),
                    });
                }
                for effect in &c.effects {
                    validate_effect(effect, limits)?;
                }
                Ok(())
            }
            Command::Expire { .. }
            | Command::SetClusterUid { .. }
            | Command::OpenSession(_)
            | Command::CloseSession { .. }
            | Command::Renew { .. }
            | Command::GiveBack { .. }
            | Command::DrainSession { .. }
            | Command::Cancel { .. }
            | Command::StopInstance { .. }
            | Command::Tick { .. }
            | Command::CreateCursor(_)
            | Command::DeleteCursor { .. }
            | Command::Attach(_)
            | Command::Detach { .. }
            | Command::Nack { .. }
            | Command::Credit { .. }
            | Command::StartGenerator { .. }
            | Command::AcquireLease { .. }
            | Command::RenewLease { .. }
            | Command::ReleaseLease { .. }
            | Command::AwaitLease { .. }
            | Command::StopWaiting { .. }
            | Command::PauseSchedule { .. }
            | Command::ResumeSchedule { .. }
            | Command::TriggerSchedule { .. }
            | Command::DeleteSchedule { .. }
            | Command::OpenSessionOnlyClaimed(_)
            | Command::CreateToken(_)
            | Command::RevokeToken { .. } => Ok(()),
            Command::CreateStream(new) => {
                audit::check_not_reserved(&new.name)?;
                match &new.config.generator {
                    Some(g) => validate_new_execution(&g.call, limits),
                    None => Ok(()),
                }
            }
            Command::CloseStream { stream, .. } | Command::DeleteStream { stream } => {
                audit::check_not_reserved(stream)
            }
            // Notes come from the nodes' own tasks (membership changes, reloads), forwarded to
            // the leader like any write (Forward is node-only with TLS on): a note that claims
            // anyone but the fabric is a forgery.
            Command::AuditNote(note) => {
                if note.actor.principal != "fabric" {
                    return Err(Error::InvalidItem {
                        reason: "audit notes are written by the fabric itself".into(),
                    });
                }
                self.validate_shape()
            }
            Command::Ack { acks, effects, .. } => {
                if acks.is_empty() || acks.len() > limits.max_batch_items {
                    return Err(Error::InvalidCursor {
                        reason: format!(
                            "an ack names 1 to {} deliveries (max_batch_items); this one {}",
                            limits.max_batch_items,
                            acks.len()
                        ),
                    });
                }
                if effects.len() > limits.max_effects {
                    return Err(Error::InvalidCompletion {
                        reason: format!(
                            "{} effects; the limit is {} (max_effects)",
                            effects.len(),
                            limits.max_effects
                        ),
                    });
                }
                effects.iter().try_for_each(|e| validate_effect(e, limits))
            }
        }?;
        self.validate_shape()
    }

    /// Checks what does not depend on configuration: namespace format and a non-empty key,
    /// names, session and execution shapes.
    pub fn validate_shape(&self) -> Result<(), Error> {
        match self {
            Command::Put { namespace, key, .. }
            | Command::CompareAndSet { namespace, key, .. }
            | Command::Delete { namespace, key, .. } => {
                namespace::parse(namespace)?;
                if key.is_empty() {
                    return Err(Error::InvalidKey { reason: "the key is empty".into() });
                }
                Ok(())
            }
            Command::Expire { .. } => Ok(()),
            Command::SetClusterUid { uid: 0 } => {
                Err(Error::InvalidKey { reason: "a cluster uid must not be 0".into() })
            }
            Command::SetClusterUid { .. } => Ok(()),
            Command::CreateExecution(new) | Command::CreateServedExecution(new) => new.validate_shape(),
            Command::CreateReserved(r) => r.new.validate_shape(),
            Command::ReserveBlock { count } => {
                if *count == 0 || *count > super::reserved::MAX_BLOCK {
                    return Err(Error::InvalidExecution {
                        reason: format!(
                            "a reserved block holds 1 to {} ids; this one {count}",
                            super::reserved::MAX_BLOCK
                        ),
                    });
                }
                Ok(())
            }
            Command::OpenSession(new) | Command::OpenSessionOnlyClaimed(new) => new.validate_shape(),
            Command::StartInstance(new) => {
                validate_name("agent", &new.agent)?;
                if let Some(id) = &new.instance {
                    validate_name("instance", id)?;
                }
                if let Some((agent, id)) = &new.parent {
                    validate_name("agent", agent)?;
                    validate_name("instance", id)?;
                }
                new.payload.validate()
            }
            Command::StopInstance { agent, instance } => {
                validate_name("agent", agent)?;
                validate_name("instance", instance)
            }
            Command::Complete(c) => match &c.outcome {
                Ok(payload) => payload.validate(),
                Err(_) => Ok(()),
            },
            Command::CloseSession { .. }
            | Command::Renew { .. }
            | Command::GiveBack { .. }
            | Command::DrainSession { .. }
            | Command::Cancel { .. }
            | Command::Tick { .. }
            | Command::Detach { .. }
            | Command::Credit { .. } => Ok(()),
            Command::CreateStream(new) => {
                validate_stream_name(&new.name)?;
                new.config.validate()
            }
            Command::Append(a) => a.validate_shape(),
            Command::CloseStream { stream, .. }
            | Command::DeleteStream { stream }
            | Command::StartGenerator { stream } => validate_stream_name(stream),
            Command::CreateCursor(new) => {
                validate_stream_name(&new.stream)?;
                validate_cursor_name(&new.name)?;
                new.config.validate()
            }
            Command::DeleteCursor { stream, cursor }
            | Command::Ack { stream, cursor, .. }
            | Command::Nack { stream, cursor, .. } => {
                validate_stream_name(stream)?;
                // An unnamed cursor's name is the grid's, and may be acked and deleted.
                if cursor.starts_with(super::cursor::UNNAMED_PREFIX) {
                    return Ok(());
                }
                validate_cursor_name(cursor)
            }
            Command::Attach(new) => {
                validate_stream_name(&new.stream)?;
                if let Some(name) = &new.cursor {
                    validate_listener_cursor(name)?;
                }
                if let Some(config) = &new.config {
                    config.validate()?;
                }
                Ok(())
            }
            Command::AcquireLease { name, holder, ttl_ms } => {
                lease::validate_lease_name(name)?;
                lease::validate_holder(holder)?;
                lease::validate_ttl(*ttl_ms)
            }
            Command::RenewLease { name, ttl_ms, .. } => {
                lease::validate_lease_name(name)?;
                lease::validate_ttl(*ttl_ms)
            }
            Command::ReleaseLease { name, .. } => lease::validate_lease_name(name),
            Command::AwaitLease { name, holder, ttl_ms, wait_ms } => {
                lease::validate_lease_name(name)?;
                lease::validate_holder(holder)?;
                lease::validate_ttl(*ttl_ms)?;
                lease::validate_wait(*wait_ms)
            }
            Command::StopWaiting { name, holder } => {
                lease::validate_lease_name(name)?;
                lease::validate_holder(holder)
            }
            Command::CreateSchedule(new) => new.validate_shape(),
            Command::PauseSchedule { name, agent }
            | Command::ResumeSchedule { name, agent }
            | Command::TriggerSchedule { name, agent }
            | Command::DeleteSchedule { name, agent } => {
                validate_name("schedule", name)?;
                validate_name("agent", agent)
            }
            Command::Audited { command, .. } if audit::is_control(command) => command.validate_shape(),
            Command::Audited { .. } => {
                Err(Error::InvalidItem { reason: "only a control operation can be audited".into() })
            }
            Command::AuditNote(note) => {
                if note.operation.is_empty() {
                    return Err(Error::InvalidItem { reason: "an audit note needs an operation".into() });
                }
                Ok(())
            }
            Command::CreateToken(new) => new.validate_shape(),
            Command::RevokeToken { id } => token::validate_id(id),
            Command::Fenced { lease: name, command, .. } => {
                lease::validate_lease_name(name)?;
                match **command {
                    Command::Put { .. } | Command::CompareAndSet { .. } | Command::Delete { .. } => {
                        command.validate_shape()
                    }
                    _ => Err(Error::InvalidLease { reason: super::leases::FENCE_REFUSAL.into() }),
                }
            }
        }
    }
}

/// Checks a cursor name: 1-128 characters of `[A-Za-z0-9._-]`.
pub fn validate_cursor_name(name: &str) -> Result<(), Error> {
    validate_name("cursor", name)
}

/// Checks the cursor a listener names: a cursor name, or an unnamed cursor's name as the grid
/// gave it (a listener resumes on its unnamed cursor after a failover by naming it).
pub fn validate_listener_cursor(name: &str) -> Result<(), Error> {
    match name.strip_prefix(super::cursor::UNNAMED_PREFIX) {
        Some(rest) => validate_name("cursor", rest),
        None => validate_cursor_name(name),
    }
}

/// Checks one effect of a completion or an ack against the limits.
fn validate_effect(effect: &execution::Effect, limits: &Limits) -> Result<(), Error> {
    use execution::Effect;
    match effect {
        Effect::Put { namespace, key, value, .. } => {
            validate_key(namespace, key, limits)?;
            if value.len() > limits.max_value_bytes {
                return Err(Error::ValueTooLarge { size: value.len(), limit: limits.max_value_bytes });
            }
            Ok(())
        }
        Effect::Delete { namespace, key, .. } => validate_key(namespace, key, limits),
        Effect::Call(new) => validate_new_execution(new, limits),
        Effect::Append { stream, items } => {
            audit::check_not_reserved(stream)?;
            validate_items(items, limits).and_then(|_| validate_stream_name(stream))
        }
        Effect::Ack { stream, .. } => validate_stream_name(stream),
        Effect::Fence { lease, .. } => lease::validate_lease_name(lease),
    }
}

fn validate_append(a: &Append, limits: &Limits) -> Result<(), Error> {
    audit::check_not_reserved(&a.stream)?;
    validate_items(&a.items, limits)
}

fn validate_items(items: &[super::stream::NewItem], limits: &Limits) -> Result<(), Error> {
    if items.len() > limits.max_batch_items {
        return Err(Error::InvalidItem {
            reason: format!(
                "{} items in one append; the limit is {} (max_batch_items)",
                items.len(),
                limits.max_batch_items
            ),
        });
    }
    for item in items {
        let size = item.size();
        if size > limits.max_item_bytes {
            return Err(Error::InvalidItem {
                reason: format!(
                    "an item is {size} bytes; the limit is {} bytes (max_item_bytes)",
                    limits.max_item_bytes
                ),
            });
        }
        let headers = item.header_bytes();
        if headers > limits.max_header_bytes {
            return Err(Error::InvalidItem {
                reason: format!(
                    "an item's headers are {headers} bytes; the limit is {} bytes (max_header_bytes)",
                    limits.max_header_bytes
                ),
            });
        }
    }
    Ok(())
}

fn check_payload_size(size: usize, limits: &Limits) -> Result<(), Error> {
    if size > limits.max_payload_bytes {
        return Err(Error::PayloadTooLarge { size, limit: limits.max_payload_bytes });
    }
    Ok(())
}

fn validate_new_execution(new: &NewExecution, limits: &Limits) -> Result<(), Error> {
    check_payload_size(new.payload.data.len(), limits)?;
    if let Some(key) = &new.idempotency_key
        && key.starts_with(super::schedule::RUN_KEY_PREFIX)
    {
        return Err(Error::InvalidExecution {
            reason: format!(
                "idempotency keys starting with '{}' belong to schedules' runs",
                super::schedule::RUN_KEY_PREFIX
            ),
        });
    }
    new.validate_shape()
}

/// Checks an agent, delegate or instance name: 1-128 characters of `[A-Za-z0-9._-]`, like
/// a namespace segment (an instance's state lives in `instance/<agent>/<instance-id>`).
pub fn validate_name(what: &'static str, name: &str) -> Result<(), Error> {
    if namespace::valid_segment(name) {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what: what.to_owned(),
            name: namespace::clip(name),
            reason: "expected 1-128 characters of [A-Za-z0-9._-]".into(),
        })
    }
}

/// Checks a namespace and key pair.
pub fn validate_key(namespace: &str, key: &str, limits: &Limits) -> Result<(), Error> {
    namespace::parse(namespace)?;
    if key.is_empty() {
        return Err(Error::InvalidKey { reason: "the key is empty".into() });
    }
    if key.len() > limits.max_key_bytes {
        return Err(Error::InvalidKey {
            reason: format!("the key is {} bytes; the limit is {}", key.len(), limits.max_key_bytes),
        });
    }
    Ok(())
}

/// A cancel's or a session close's reason, clipped to [`MAX_REASON_BYTES`].
pub(super) fn clip_reason(reason: &str) -> String {
    namespace::clip_to(reason, MAX_REASON_BYTES)
}

/// What a successful command returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Output {
    /// The key now holds the value at this version.
    Written { version: u64 },
    /// Whether a key was removed.
    Deleted { existed: bool },
    /// How many keys expired.
    Expired { count: u64 },
    /// The cluster's instance id after the command (the one recorded first).
    ClusterUid { uid: u64 },
    /// The execution a create made or found (`created: false`: its idempotency key named an
    /// existing one).
    Execution { id: ExecutionId, created: bool },
    /// The session opened.
    Session { id: SessionId },
    /// Whether the session still existed.
    SessionClosed { existed: bool },
    /// How a completion was taken.
    Completion(Completed),
    /// The lease now runs out at this time (`None`: with the session).
    Renewed { expires_ms: Option<u64> },
    /// The execution went back to pending.
    Released,
    /// The session takes no new work.
    Drained,
    /// How many executions a cancel ended (children included).
    Cancelled { count: u64 },
    /// The instance a start made or found, and its `Start` execution.
    Instance { agent: String, instance: String, start_execution: ExecutionId, created: bool },
    /// The instance is stopping; its `Stop` execution.
    Stopping { stop_execution: ExecutionId },
    /// How many timers fired.
    Ticked { fired: u64 },
    /// The stream a create made or found.
    Stream { uid: u64, created: bool },
    /// The seqs an append was given (`duplicate`: by an earlier append it repeats).
    Appended { first_seq: Seq, last_seq: Seq, duplicate: bool },
    /// The stream is closed (`already`: it was, with the same status).
    StreamClosed { already: bool },
    /// Whether a create made the cursor.
    Cursor { created: bool },
    /// The listener attached, its cursor and the stream's uid.
    Listener { id: ListenerId, cursor: String, uid: u64 },
    /// Whether the listener was still attached.
    Detached { existed: bool },
    /// How many deliveries an ack acknowledged now.
    Acked { count: u64 },
    /// A listener's credit was given back.
    Credited,
    /// The generator's execution (`None`: the stream has no generator, or it has ended).
    Generator { execution: Option<ExecutionId> },
    /// The lease is held by this grant (acquired or renewed).
    Leased(Lease),
    /// Whether a release gave the lease up (false: the grant did not hold it).
    LeaseReleased { released: bool },
    /// An audit note was recorded.
    Noted,
    /// The token a create stored (`created: false`: the same one was stored already).
    Token { id: String, created: bool },
    /// Whether a revoke removed a token now (false: it was revoked before).
    TokenRevoked { existed: bool },
    /// Execution ids `first_id..first_id + count` and fencing tokens
    /// `first_token..first_token + count` are set aside for the leader's eager calls.
    Block { first_id: ExecutionId, first_token: u64, count: u32 },
    /// `holder` waits for the lease, `position`th in its queue (1 is next), until `until_ms`.
    LeaseQueued { position: u32, until_ms: u64 },
    /// A holder stopped waiting: the grant it holds now, if the lease was granted to it.
    WaitEnded { grant: Option<Lease> },
    /// A schedule as it is after the command; `created` when this command made it.
    Schedule { schedule: Box<Schedule>, created: bool },
    /// What a trigger did.
    ScheduleRun { run: Run },
}

/// How a completion was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Completed {
    /// The result (or final error) and the effects were applied.
    Accepted,
    /// This completion (same token) was applied before; nothing changed now.
    Repeated,
    /// An effect's expected version did not match; nothing was applied and the execution is
    /// pending again (it will run again with fresh state).
    Conflict { namespace: String, key: String, expected: u64, current: u64 },
    /// The handler's error will be retried at `not_before_ms` (its retry policy).
    Retrying { not_before_ms: u64 },
    /// A [`execution::Effect::Fence`] did not hold (`reason` says why): nothing was applied
    /// and the execution is pending again, like a conflict.
    LockLost { lease: String, token: u64, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    /// The bytes of `depth` fences around an `Expire`, written level by level (building the
    /// value would recurse as deep as decoding it).
    fn nested_fences(depth: usize) -> Vec<u8> {
        let inner = Command::Expire { limit: 0 };
        let once = Command::Fenced { lease: String::new(), token: 0, command: Box::new(inner.clone()) };
        let (once, inner) = (codec::encode(&once), codec::encode(&inner));
        let level = &once[1..once.len() - (inner.len() - 1)];
        [&once[..1], &level.repeat(depth), &inner[1..]].concat()
    }

    #[test]
    fn fences_nested_a_little_decode() {
        let bytes = nested_fences(MAX_FENCED_DEPTH);
        let Ok(Command::Fenced { command, .. }) = codec::decode::<Command>(&bytes) else {
            panic!("{MAX_FENCED_DEPTH} nested fences decode")
        };
        assert!(matches!(*command, Command::Fenced { .. }));
        let refused = codec::decode::<Command>(&nested_fences(MAX_FENCED_DEPTH + 1)).unwrap_err();
        assert!(refused.to_string().contains("commands nested more than 4 deep"), "{refused}");
        // The depth is per decode: the next one starts from zero.
        assert!(codec::decode::<Command>(&bytes).is_ok());
    }

    /// A forwarded command (or an entry a leader sends) of 300 kB of nested fences, decoded on
    /// a thread with a tokio worker's stack, is refused; it used to overflow the stack and
    /// abort the node.
    /// The same for audited commands.
    #[test]
    fn deeply_nested_audited_commands_are_refused_not_a_stack_overflow() {
        let inner = Command::Expire { limit: 0 };
        let once = Command::Audited { actor: Actor::fabric(1), command: Box::new(inner.clone()) };
        let (once, inner) = (codec::encode(&once), codec::encode(&inner));
        let level = &once[1..once.len() - (inner.len() - 1)];
        let few = [&once[..1], &level.repeat(MAX_FENCED_DEPTH), &inner[1..]].concat();
        assert!(codec::decode::<Command>(&few).is_ok(), "{MAX_FENCED_DEPTH} nested audits decode");
        let bytes = [&once[..1], &level.repeat(100_000), &inner[1..]].concat();
        let decoded = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || codec::decode::<Command>(&bytes).map(|_| ()).map_err(|e| e.to_string()))
            .unwrap()
            .join()
            .unwrap();
        let e = decoded.unwrap_err();
        assert!(e.contains("nested more than"), "{e}");
    }

    #[test]
    fn deeply_nested_fences_are_refused_not_a_stack_overflow() {
        let bytes = nested_fences(100_000);
        let decoded = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || codec::decode::<Command>(&bytes).map(|_| ()).map_err(|e| e.to_string()))
            .unwrap()
            .join()
            .unwrap();
        assert!(decoded.unwrap_err().contains("nested more than"));
    }
}

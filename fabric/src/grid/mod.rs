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
//! The grid holds key/value state in namespaces, and the work of agents: executions, the
//! sessions that run them and agent instances ([`work`]). Every key write bumps the grid's
//! `revision`; the revision of a key's last write is its `version`, so a version is never
//! reused (a key deleted and written again gets a new one) and compare-and-set cannot suffer
//! ABA.
//!
//! Applying an entry also yields [`Event`]s (an execution assigned to a session, a result
//! ready): not state, but what the nodes act on once the entry is applied.

pub mod execution;
pub mod instance;
pub mod namespace;
pub mod session;
pub mod work;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use self::execution::{Completion, ExecutionId, NewExecution, SessionId};
use self::instance::NewInstance;
use self::session::NewSession;
pub use self::work::{Completed, Event};
use self::work::{Outbox, Work};

/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;
/// Longest reason a cancel or a session close may give, in bytes (longer ones are clipped).
pub const MAX_REASON_BYTES: usize = 1024;

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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_value_bytes: 1 << 20,
            max_key_bytes: 1024,
            max_list_page: 1000,
            max_payload_bytes: 1 << 20,
            max_effects: 1000,
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
    /// Fire the timers due at the entry's time (delays, deadlines, leases, retention), at
    /// most `limit` of them (the leader proposes another for the rest).
    Tick { limit: u64 },
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
            Command::CreateExecution(new) => validate_new_execution(new, limits),
            Command::StartInstance(new) => check_payload_size(new.payload.data.len(), limits),
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
                    match effect {
                        execution::Effect::Put { namespace, key, value, .. } => {
                            validate_key(namespace, key, limits)?;
                            if value.len() > limits.max_value_bytes {
                                return Err(Error::ValueTooLarge {
                                    size: value.len(),
                                    limit: limits.max_value_bytes,
                                });
                            }
                        }
                        execution::Effect::Delete { namespace, key, .. } => {
                            validate_key(namespace, key, limits)?
                        }
                        execution::Effect::Call(new) => validate_new_execution(new, limits)?,
                    }
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
            | Command::Tick { .. } => Ok(()),
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
            Command::CreateExecution(new) => new.validate_shape(),
            Command::OpenSession(new) => new.validate_shape(),
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
            | Command::Tick { .. } => Ok(()),
        }
    }
}

fn check_payload_size(size: usize, limits: &Limits) -> Result<(), Error> {
    if size > limits.max_payload_bytes {
        return Err(Error::PayloadTooLarge { size, limit: limits.max_payload_bytes });
    }
    Ok(())
}

fn validate_new_execution(new: &NewExecution, limits: &Limits) -> Result<(), Error> {
    check_payload_size(new.payload.data.len(), limits)?;
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

/// The grid's own namespace. Its name is not a valid user namespace, so no API call can read or
/// write it; it lives in the same map so the snapshot format is unchanged.
const SYSTEM_NAMESPACE: &str = "weft/system";
/// The key under which [`Command::SetClusterUid`] records the cluster's instance id.
const CLUSTER_UID_KEY: &str = "cluster-uid";

fn uid_of(data: &[u8]) -> u64 {
    data.try_into().map_or(0, u64::from_be_bytes)
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
}

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

/// Most expired-but-not-yet-removed keys one list page skips before it ends early (with a
/// page token to continue from).
pub const MAX_LIST_SKIPPED: usize = 10_000;

/// One stored value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Value {
    /// The bytes stored.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// Grid revision of the write that stored them.
    pub version: u64,
    /// Leader-stamped time (ms since the Unix epoch) after which the key is gone.
    pub expires_at_ms: Option<u64>,
}

impl Value {
    fn live_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|at| now_ms < at)
    }
}

/// A page of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Keys in order, with their values.
    pub entries: Vec<(String, Value)>,
    /// The last key returned, when more keys may follow.
    pub next: Option<String>,
}

/// The replicated in-memory state.
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
}

/// The grid as snapshots of Weft before executions stored it.
#[derive(Debug, Deserialize)]
pub struct GridV1 {
    revision: u64,
    now_ms: u64,
    namespaces: BTreeMap<String, BTreeMap<String, Value>>,
    expiries: BTreeMap<(u64, String, String), ()>,
}

impl Grid {
    /// A grid from a snapshot written before executions existed.
    pub fn from_v1(old: GridV1) -> Self {
        Self {
            revision: old.revision,
            now_ms: old.now_ms,
            namespaces: old.namespaces,
            expiries: old.expiries,
            work: Work::default(),
        }
    }

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
        self.advance_clock(now_ms);
        commands.iter().map(|c| self.apply_with_events(c, events)).collect()
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
    /// refused command changes nothing and yields no events.
    pub fn apply_with_events(&mut self, command: &Command, events: &mut Vec<Event>) -> Result<Output, Error> {
        command.validate_shape()?;
        let mut out = Outbox::new(events);
        let result = match command {
            Command::CreateExecution(new) => self.create_execution(new, &mut out),
            Command::OpenSession(new) => self.open_session(new, &mut out),
            Command::CloseSession { session, reason } => {
                Ok(self.close_session(*session, &namespace::clip_to(reason, MAX_REASON_BYTES), &mut out))
            }
            Command::Complete(c) => self.complete(c, &mut out),
            Command::Renew { execution, token } => self.renew(*execution, *token),
            Command::GiveBack { execution, token } => self.give_back(*execution, *token, &mut out),
            Command::DrainSession { session } => self.drain_session(*session),
            Command::Cancel { execution, reason } => {
                self.cancel(*execution, &namespace::clip_to(reason, MAX_REASON_BYTES), &mut out)
            }
            Command::StartInstance(new) => self.start_instance(new, &mut out),
            Command::StopInstance { agent, instance } => self.stop_instance(agent, instance, &mut out),
            Command::Tick { limit } => Ok(self.tick(*limit, &mut out)),
            other => return self.apply_kv(other),
        };
        self.dispatch(&mut out);
        result
    }

    /// Applies a key/value or cluster command.
    fn apply_kv(&mut self, command: &Command) -> Result<Output, Error> {
        match command {
            Command::Put { namespace, key, value, ttl_ms, if_absent } => {
                if *if_absent && let Some(current) = self.live(namespace, key) {
                    return Err(Error::AlreadyExists { version: current.version });
                }
                Ok(self.write(namespace, key, value.clone(), *ttl_ms))
            }
            Command::CompareAndSet { namespace, key, expected_version, value, ttl_ms } => {
                let current = self.live(namespace, key).map_or(0, |v| v.version);
                if current != *expected_version {
                    return Err(Error::VersionMismatch { expected: *expected_version, current });
                }
                Ok(self.write(namespace, key, value.clone(), *ttl_ms))
            }
            Command::Delete { namespace, key, expected_version } => {
                let current = self.live(namespace, key).map(|v| v.version);
                if let Some(expected) = expected_version
                    && current.unwrap_or(0) != *expected
                {
                    return Err(Error::VersionMismatch {
                        expected: *expected,
                        current: current.unwrap_or(0),
                    });
                }
                let existed = current.is_some();
                // An expired key that is still stored is removed too; it was already invisible.
                self.remove(namespace, key);
                if existed {
                    self.revision += 1;
                }
                Ok(Output::Deleted { existed })
            }
            Command::Expire { limit } => Ok(Output::Expired { count: self.expire(*limit) }),
            Command::SetClusterUid { uid } => {
                let entry = self.namespaces.entry(SYSTEM_NAMESPACE.to_owned()).or_default();
                let stored = entry.entry(CLUSTER_UID_KEY.to_owned()).or_insert_with(|| Value {
                    data: uid.to_be_bytes().to_vec(),
                    version: 0,
                    expires_at_ms: None,
                });
                Ok(Output::ClusterUid { uid: uid_of(&stored.data) })
            }
            // Work commands are applied by `apply_with_events`.
            _ => Err(Error::InvalidExecution { reason: "not a key/value command".into() }),
        }
    }

    /// Reads one key as of the grid's clock.
    pub fn get(&self, namespace: &str, key: &str) -> Option<&Value> {
        self.live(namespace, key)
    }

    /// Lists keys of a namespace that start with `prefix`, after `start_after`, up to `limit`.
    pub fn list(
        &self,
        namespace: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        limits: &Limits,
    ) -> Result<Page, Error> {
        namespace::parse(namespace)?;
        if limit == 0 || limit > limits.max_list_page {
            return Err(Error::InvalidPageSize { requested: limit, limit: limits.max_list_page });
        }
        let Some(map) = self.namespaces.get(namespace) else {
            return Ok(Page { entries: Vec::new(), next: None });
        };
        use std::ops::Bound;
        let lower = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after.to_owned()),
            _ => Bound::Included(prefix.to_owned()),
        };
        let mut entries = Vec::new();
        let mut next = None;
        let mut skipped = 0;
        for (k, v) in map.range::<String, _>((lower, Bound::Unbounded)) {
            if !k.starts_with(prefix) {
                break;
            }
            if !v.live_at(self.now_ms) {
                // Expired but not yet removed: skipped, but a page never scans unboundedly.
                skipped += 1;
                if skipped == MAX_LIST_SKIPPED {
                    next = Some(k.clone());
                    break;
                }
                continue;
            }
            if entries.len() == limit {
                next = entries.last().map(|(k, _): &(String, Value)| k.clone());
                break;
            }
            entries.push((k.clone(), v.clone()));
        }
        Ok(Page { entries, next })
    }

    /// The grid's clock: the latest leader-stamped time applied.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The grid's revision: how many writes it has applied.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The earliest time at which some key expires, if any key has a time to live.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.expiries.keys().next().map(|(at, _, _)| *at)
    }

    /// Number of stored keys across all namespaces (expired ones not yet dropped included).
    pub fn key_count(&self) -> usize {
        self.namespaces.iter().filter(|(ns, _)| *ns != SYSTEM_NAMESPACE).map(|(_, keys)| keys.len()).sum()
    }

    /// This cluster's instance id, 0 until the first leader has recorded one.
    pub fn cluster_uid(&self) -> u64 {
        self.namespaces
            .get(SYSTEM_NAMESPACE)
            .and_then(|keys| keys.get(CLUSTER_UID_KEY))
            .map_or(0, |v| uid_of(&v.data))
    }

    fn live(&self, namespace: &str, key: &str) -> Option<&Value> {
        self.namespaces.get(namespace)?.get(key).filter(|v| v.live_at(self.now_ms))
    }

    fn write(&mut self, namespace: &str, key: &str, data: Vec<u8>, ttl_ms: Option<u64>) -> Output {
        self.remove(namespace, key);
        self.revision += 1;
        let version = self.revision;
        let expires_at_ms = ttl_ms.filter(|ttl| *ttl > 0).map(|ttl| self.now_ms.saturating_add(ttl));
        if let Some(at) = expires_at_ms {
            self.expiries.insert((at, namespace.to_owned(), key.to_owned()), ());
        }
        self.namespaces
            .entry(namespace.to_owned())
            .or_default()
            .insert(key.to_owned(), Value { data, version, expires_at_ms });
        Output::Written { version }
    }

    /// Removes a whole namespace (an instance's state when it is removed).
    fn remove_namespace(&mut self, namespace: &str) {
        let Some(map) = self.namespaces.remove(namespace) else { return };
        for (key, value) in map {
            if let Some(at) = value.expires_at_ms {
                self.expiries.remove(&(at, namespace.to_owned(), key));
            }
        }
        self.revision += 1;
    }

    fn remove(&mut self, namespace: &str, key: &str) {
        let Some(map) = self.namespaces.get_mut(namespace) else {
            return;
        };
        if let Some(old) = map.remove(key)
            && let Some(at) = old.expires_at_ms
        {
            self.expiries.remove(&(at, namespace.to_owned(), key.to_owned()));
        }
        if map.is_empty() {
            self.namespaces.remove(namespace);
        }
    }

    fn expire(&mut self, limit: u64) -> u64 {
        let mut count = 0;
        while count < limit
            && let Some(entry) = self.expiries.first_entry()
        {
            let (at, _, _) = entry.key();
            if *at > self.now_ms {
                break;
            }
            let ((_, namespace, key), ()) = entry.remove_entry();
            if let Some(map) = self.namespaces.get_mut(&namespace) {
                map.remove(&key);
                if map.is_empty() {
                    self.namespaces.remove(&namespace);
                }
            }
            self.revision += 1;
            count += 1;
        }
        count
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod work_tests;

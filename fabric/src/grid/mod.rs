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
//! For now the grid holds key/value state in namespaces. Every write bumps the grid's
//! `revision`; the revision of a key's last write is its `version`, so a version is never reused
//! (a key deleted and written again gets a new one) and compare-and-set cannot suffer ABA.

pub mod namespace;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_value_bytes: 1 << 20, max_key_bytes: 1024, max_list_page: 1000 }
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
            Command::Expire { .. } | Command::SetClusterUid { .. } => Ok(()),
        }
    }

    /// Checks what does not depend on configuration: namespace format and a non-empty key.
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
        }
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
}

impl Grid {
    /// Applies a batch of commands stamped with the leader's clock, in order.
    pub fn apply_batch(&mut self, now_ms: u64, commands: &[Command]) -> Vec<Result<Output, Error>> {
        self.advance_clock(now_ms);
        commands.iter().map(|c| self.apply(c)).collect()
    }

    /// Moves the grid's clock forward to `now_ms` (it never goes back, so a new leader with a
    /// slower clock cannot resurrect expired keys).
    pub fn advance_clock(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// Applies one command at the grid's current time.
    pub fn apply(&mut self, command: &Command) -> Result<Output, Error> {
        command.validate_shape()?;
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

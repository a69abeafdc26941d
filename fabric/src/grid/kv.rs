//! Key/value state: maps of [`Value`]s in namespaces, with versions and an optional time to
//! live, and the commands that change them (put, compare-and-set, delete, expire); the
//! cluster uid the grid keeps in a namespace of its own. Reads are in `queries.rs`.
//!
//! Every key write bumps the grid's `revision`; the revision of a key's last write is its
//! `version`, so a version is never reused (a key deleted and written again gets a new one)
//! and compare-and-set cannot suffer ABA.

use serde::{Deserialize, Serialize};

use super::{Error, Grid, Output};

/// The grid's own namespace. Its name is not a valid user namespace, so no API call can read or
/// write it; it lives in the same map so the snapshot format is unchanged.
pub(super) const SYSTEM_NAMESPACE: &str = "weft/system";
/// The key under which [`Command::SetClusterUid`](super::Command::SetClusterUid) records the
/// cluster's instance id.
pub(super) const CLUSTER_UID_KEY: &str = "cluster-uid";

pub(super) fn uid_of(data: &[u8]) -> u64 {
    data.try_into().map_or(0, u64::from_be_bytes)
}

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
    pub(super) fn live_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|at| now_ms < at)
    }
}

impl Grid {
    /// [`Command::Put`](super::Command::Put): writes `value` under `key`, unless `if_absent`
    /// and the key is there.
    pub(super) fn put(
        &mut self,
        namespace: &str,
        key: &str,
        value: &[u8],
        ttl_ms: Option<u64>,
        if_absent: bool,
    ) -> Result<Output, Error> {
        if if_absent && let Some(current) = self.live(namespace, key) {
            return Err(Error::AlreadyExists { version: current.version });
        }
        Ok(self.write(namespace, key, value.to_vec(), ttl_ms))
    }

    /// [`Command::CompareAndSet`](super::Command::CompareAndSet): writes `value` only if the
    /// key's version is `expected_version` (0: absent).
    pub(super) fn compare_and_set(
        &mut self,
        namespace: &str,
        key: &str,
        expected_version: u64,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<Output, Error> {
        let current = self.live(namespace, key).map_or(0, |v| v.version);
        if current != expected_version {
            return Err(Error::VersionMismatch { expected: expected_version, current });
        }
        Ok(self.write(namespace, key, value.to_vec(), ttl_ms))
    }

    /// [`Command::Delete`](super::Command::Delete): removes `key`, only if its version is
    /// `expected_version` when given.
    pub(super) fn delete(
        &mut self,
        namespace: &str,
        key: &str,
        expected_version: Option<u64>,
    ) -> Result<Output, Error> {
        let current = self.live(namespace, key).map(|v| v.version);
        if let Some(expected) = expected_version
            && current.unwrap_or(0) != expected
        {
            return Err(Error::VersionMismatch { expected, current: current.unwrap_or(0) });
        }
        let existed = current.is_some();
        // An expired key that is still stored is removed too; it was already invisible.
        self.remove(namespace, key);
        if existed {
            self.revision += 1;
        }
        Ok(Output::Deleted { existed })
    }

    /// [`Command::SetClusterUid`](super::Command::SetClusterUid): records `uid` unless a uid is
    /// recorded already (the first wins).
    pub(super) fn set_cluster_uid(&mut self, uid: u64) -> Output {
        let entry = self.namespaces.entry(SYSTEM_NAMESPACE.to_owned()).or_default();
        let stored = entry.entry(CLUSTER_UID_KEY.to_owned()).or_insert_with(|| Value {
            data: uid.to_be_bytes().to_vec(),
            version: 0,
            expires_at_ms: None,
        });
        Output::ClusterUid { uid: uid_of(&stored.data) }
    }

    /// [`Command::Expire`](super::Command::Expire): drops keys whose time to live has run out
    /// at the grid's clock, at most `limit` of them.
    pub(super) fn expire(&mut self, limit: u64) -> Output {
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
        Output::Expired { count }
    }

    /// The value under `key`, unless it is absent or expired at the grid's clock.
    pub(super) fn live(&self, namespace: &str, key: &str) -> Option<&Value> {
        self.namespaces.get(namespace)?.get(key).filter(|v| v.live_at(self.now_ms))
    }

    /// Stores `data` under `key` at a new version, with its expiry.
    ///
    /// One lookup of the key (the insert returns what it replaces), and, for a write without a
    /// time to live, no allocation for the namespace's name unless the namespace is new: this
    /// is the put path.
    pub(super) fn write(&mut self, namespace: &str, key: &str, data: Vec<u8>, ttl_ms: Option<u64>) -> Output {
        self.revision += 1;
        let version = self.revision;
        let expires_at_ms = ttl_ms.filter(|ttl| *ttl > 0).map(|ttl| self.now_ms.saturating_add(ttl));
        if let Some(at) = expires_at_ms {
            self.expiries.insert((at, namespace.to_owned(), key.to_owned()), ());
        }
        let map = match self.namespaces.get_mut(namespace) {
            Some(map) => map,
            None => self.namespaces.entry(namespace.to_owned()).or_default(),
        };
        let replaced = map.insert(key.to_owned(), Value { data, version, expires_at_ms });
        if let Some(at) = replaced.and_then(|old| old.expires_at_ms)
            && expires_at_ms != Some(at)
        {
            self.expiries.remove(&(at, namespace.to_owned(), key.to_owned()));
        }
        Output::Written { version }
    }

    /// Removes one key, live or expired, and its expiry entry. Not a write: the caller bumps
    /// the revision if the key was live.
    pub(super) fn remove(&mut self, namespace: &str, key: &str) {
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

    /// Removes a whole namespace (an instance's state when it is removed).
    pub(super) fn remove_namespace(&mut self, namespace: &str) {
        let Some(map) = self.namespaces.remove(namespace) else { return };
        for (key, value) in map {
            if let Some(at) = value.expires_at_ms {
                self.expiries.remove(&(at, namespace.to_owned(), key));
            }
        }
        self.revision += 1;
    }
}

impl Grid {
    /// Applies a checked state effect (a put or a delete) of a completion or an ack.
    pub(super) fn apply_state_effect(&mut self, effect: &super::execution::Effect) {
        use super::execution::Effect;
        match effect {
            Effect::Put { namespace, key, value, ttl_ms, .. } => {
                self.write(namespace, key, value.clone(), *ttl_ms);
            }
            Effect::Delete { namespace, key, .. } => {
                if self.live(namespace, key).is_some() {
                    self.revision += 1;
                }
                self.remove(namespace, key);
            }
            _ => {}
        }
    }
}

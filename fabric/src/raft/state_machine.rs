//! The state machine openraft drives: the grid in memory, snapshots as files on disk.
//!
//! ```text
//!   <data-dir>/snapshots/<snapshot-id>.snap   codec(SnapshotFile { meta, grid })
//! ```
//!
//! A snapshot is written to a temporary file, fsync'd and renamed into place; older snapshot
//! files are removed only after the new one is durable. On start the newest snapshot is
//! loaded, and openraft re-applies the committed log after it.
//!
//! Reads share the grid through [`Handle`]: a read lock on the in-memory grid, never I/O.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::{NodeId, Request, Response, StorageError, TypeConfig};
use crate::codec;
use crate::grid::{Grid, GridV1, GridV2, GridV3, GridV4, GridV5, GridV6, GridV7};
use crate::metrics::Registry;
use crate::watch;

type Meta = SnapshotMeta<NodeId, openraft::BasicNode>;

/// What a snapshot file holds.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotFile {
    pub(crate) meta: Meta,
    pub(crate) grid: Grid,
}

/// A snapshot file written before the grid held executions.
#[derive(Debug, Deserialize)]
struct SnapshotFileV1 {
    meta: Meta,
    grid: GridV1,
}

/// A snapshot file written before the grid held streams.
#[derive(Debug, Deserialize)]
struct SnapshotFileV2 {
    meta: Meta,
    grid: GridV2,
}

/// A snapshot file written before the grid held leases.
#[derive(Debug, Deserialize)]
struct SnapshotFileV3 {
    meta: Meta,
    grid: GridV3,
}

/// A snapshot file written before the grid held tokens.
#[derive(Debug, Deserialize)]
struct SnapshotFileV4 {
    meta: Meta,
    grid: GridV4,
}

/// A snapshot file written before the grid held schedules.
#[derive(Debug, Deserialize)]
struct SnapshotFileV7 {
    meta: Meta,
    grid: GridV7,
}

/// A snapshot file written before the grid held holders waiting for leases.
#[derive(Debug, Deserialize)]
struct SnapshotFileV6 {
    meta: Meta,
    grid: GridV6,
}

/// A snapshot file written before the grid held blocks for eager calls.
#[derive(Debug, Deserialize)]
struct SnapshotFileV5 {
    meta: Meta,
    grid: GridV5,
}

/// Decodes a snapshot file: [`codec::FORMAT_SNAPSHOT_V8`] (today's grid),
/// [`codec::FORMAT_SNAPSHOT_V7`] (before schedules; read with none),
/// [`codec::FORMAT_SNAPSHOT_V6`] (before lease queues; read with none),
/// [`codec::FORMAT_SNAPSHOT_V5`] (before blocks for eager calls; read with none),
/// [`codec::FORMAT_SNAPSHOT_V4`] (before tokens; read with none), [`codec::FORMAT_SNAPSHOT_V3`]
/// (before leases; read with none, and no session only-claimed), [`codec::FORMAT_SNAPSHOT_V2`]
/// (before streams; read with none) or [`codec::FORMAT_BINCODE_V1`] (written before the grid
/// held executions; read into an empty work state).
pub(crate) fn decode_snapshot(bytes: &[u8]) -> Result<SnapshotFile, codec::Error> {
    match codec::split_tag(bytes)? {
        (codec::FORMAT_SNAPSHOT_V8, body) => codec::decode_body(body),
        (codec::FORMAT_SNAPSHOT_V7, body) => {
            let old: SnapshotFileV7 = codec::decode_body(body)?;
            Ok(SnapshotFile { meta: old.meta, grid: Grid::from_v7(old.grid) })
        }
        (codec::FORMAT_SNAPSHOT_V6, body) => {
            let old: SnapshotFileV6 = codec::decode_body(body)?;
            Ok(SnapshotFile { meta: old.meta, grid: Grid::from_v6(old.grid) })
        }
        (codec::FORMAT_SNAPSHOT_V5, body) => {
            let old: SnapshotFileV5 = codec::decode_body(body)?;
            Ok(SnapshotFile { meta: old.meta, grid: Grid::from_v5(old.grid) })
        }
        (codec::FORMAT_SNAPSHOT_V4, body) => {
            let old: SnapshotFileV4 = codec::decode_body(body)?;
            Ok(SnapshotFile { meta: old.meta, grid: Grid::from_v4(old.grid) })
        }
        (codec::FORMAT_SNAPSHOT_V3, body) => {
            let old: SnapshotFileV3 = codec::decode_body(body)?;
            Ok(SnapshotFile { meta: old.meta, grid: Grid::from_v3(old.grid) })
        }
        (codec::FORMAT_SNAPSHOT_V2, body) => {
            let old: SnapshotFileV2 = codec::decode_body(body)?;
            Ok(SnapshotFile { meta: old.meta, grid: Grid::from_v2(old.grid) })
        }
        (codec::FORMAT_BINCODE_V1, body) => {
            let old: SnapshotFileV1 = codec::decode_body(body)?;
            Ok(SnapshotFile { meta: old.meta, grid: Grid::from_v1(old.grid) })
        }
        (tag, _) => Err(codec::Error::UnknownFormat(tag)),
    }
}

/// Encodes a snapshot file in today's format.
pub(crate) fn encode_snapshot(file: &SnapshotFile) -> Vec<u8> {
    codec::encode_tagged(codec::FORMAT_SNAPSHOT_V8, file)
}

/// The applied state shared between the state machine and readers.
#[derive(Debug, Default)]
pub struct Applied {
    /// The grid as of `last_applied`.
    pub grid: Grid,
    /// The last log entry applied.
    pub last_applied: Option<LogId<NodeId>>,
    /// The last membership applied.
    pub last_membership: StoredMembership<NodeId, openraft::BasicNode>,
}

/// Read access to the applied state and state-machine counters, cheap to clone.
#[derive(Clone, Debug)]
pub struct Handle {
    applied: Arc<RwLock<Applied>>,
    counters: Arc<Counters>,
    /// The instance id the applied grid records (0 until applied).
    cluster_uid: Arc<AtomicU64>,
    /// Before the grid records one: the instance id of the first leader that replicated to
    /// this node, which owns it from then on.
    claimed_uid: Arc<AtomicU64>,
}

/// Counters the state machine keeps for `/metrics` and for tests.
#[derive(Debug, Default)]
pub struct Counters {
    /// Snapshots received from a leader and installed.
    pub snapshots_installed: AtomicU64,
    /// Snapshots built locally.
    pub snapshots_built: AtomicU64,
    /// Grid commands applied.
    pub commands_applied: AtomicU64,
}

impl Handle {
    /// Runs `f` with the applied state under a read lock. Keep `f` short: applies wait for it.
    pub fn read<T>(&self, f: impl FnOnce(&Applied) -> T) -> T {
        f(&self.applied.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// A handle over `grid` alone, as if it were applied (tests of what reads it).
    #[cfg(test)]
    pub(crate) fn with_grid(grid: Grid) -> Self {
        Self {
            applied: Arc::new(RwLock::new(Applied { grid, ..Applied::default() })),
            counters: Arc::default(),
            cluster_uid: Arc::default(),
            claimed_uid: Arc::default(),
        }
    }

    /// Applies `commands` at `now_ms` to the grid and tells `hub`, as the state machine does
    /// (tests of what watches the grid change).
    #[cfg(test)]
    pub(crate) fn apply_and_publish(
        &self,
        hub: &watch::Hub,
        now_ms: u64,
        commands: &[crate::grid::Command],
    ) -> Vec<Result<crate::grid::Output, crate::grid::Error>> {
        let mut applied = self.applied.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut events = Vec::new();
        let results = applied.grid.apply_batch_with_events(now_ms, commands, &mut events);
        hub.publish(&applied.grid, events);
        results
    }

    /// The state machine's counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The cluster's instance id: as applied here, or else as claimed by the first leader
    /// that replicated to this node; 0 while neither. Read without the lock, for every Raft
    /// message.
    pub fn cluster_uid(&self) -> u64 {
        match self.cluster_uid.load(Ordering::Acquire) {
            0 => self.claimed_uid.load(Ordering::Acquire),
            uid => uid,
        }
    }

    /// A message of cluster instance `uid` arrived: a node that knows no instance yet belongs
    /// to it from now on. Returns whether `uid` is this node's instance.
    pub fn claim_cluster_uid(&self, uid: u64) -> bool {
        if self.cluster_uid() == 0 {
            let _ = self.claimed_uid.compare_exchange(0, uid, Ordering::AcqRel, Ordering::Acquire);
        }
        self.cluster_uid() == uid
    }

    fn refresh_cluster_uid(&self, applied: &Applied) {
        self.cluster_uid.store(applied.grid.cluster_uid(), Ordering::Release);
    }
}

/// The grid state machine with its snapshot directory.
pub struct StateMachine {
    handle: Handle,
    store: Arc<SnapshotStore>,
    hub: watch::Hub,
    metrics: Arc<Registry>,
}

impl StateMachine {
    /// Opens the snapshot directory and restores the newest snapshot in it, if any. Applied
    /// entries' events go to `hub`.
    #[cfg(test)]
    pub(crate) fn open(dir: &Path, hub: watch::Hub) -> Result<Self, StorageError> {
        Self::open_observed(dir, hub, Arc::default())
    }

    /// [`StateMachine::open`], filling `metrics` (snapshots, executions) as it works.
    pub(crate) fn open_observed(
        dir: &Path,
        hub: watch::Hub,
        metrics: Arc<Registry>,
    ) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| read_err(None, e))?;
        let sm = Self {
            handle: Handle {
                applied: Arc::new(RwLock::new(Applied::default())),
                counters: Arc::default(),
                cluster_uid: Arc::default(),
                claimed_uid: Arc::default(),
            },
            store: Arc::new(SnapshotStore {
                dir: dir.to_owned(),
                save_lock: Mutex::new(()),
                current: Mutex::new(None),
                tmp_seq: AtomicU64::new(0),
            }),
            hub,
            metrics,
        };
        if let Some(path) = newest_snapshot(dir).map_err(|e| read_err(None, e))? {
            let bytes = std::fs::read(&path).map_err(|e| read_err(None, e))?;
            let file = decode_snapshot(&bytes).map_err(|e| read_err(None, e))?;
            tracing::info!(path = %path.display(), last_log_id = ?file.meta.last_log_id, "restored snapshot");
            sm.metrics.snapshot_bytes.store(bytes.len() as u64, Ordering::Relaxed);
            *sm.store.current.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((file.meta.clone(), Arc::new(bytes)));
            sm.restore(file);
        }
        Ok(sm)
    }

    /// A read handle on the applied state.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    fn restore(&self, file: SnapshotFile) {
        let mut applied = self.handle.applied.write().unwrap_or_else(|p| p.into_inner());
        applied.grid = file.grid;
        applied.last_applied = file.meta.last_log_id;
        applied.last_membership = file.meta.last_membership;
        self.handle.refresh_cluster_uid(&applied);
    }
}

fn read_err<E: std::error::Error + 'static>(meta: Option<&Meta>, e: E) -> StorageError {
    StorageError::IO { source: StorageIOError::read_snapshot(meta.map(|m| m.signature()), AnyError::new(&e)) }
}

fn write_err<E: std::error::Error + 'static>(meta: &Meta, e: E) -> StorageError {
    StorageError::IO { source: StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e)) }
}

const SNAPSHOT_SUFFIX: &str = ".snap";

/// Snapshot ids start with the zero-padded last log index, so names sort by age.
fn snapshot_id(last_log_id: Option<LogId<NodeId>>, seq: u64) -> String {
    match last_log_id {
        Some(id) => format!("{:020}-{:020}-{seq}", id.index, id.leader_id.term),
        None => format!("{:020}-{:020}-{seq}", 0, 0),
    }
}

/// A snapshot's file name, from its log id only: never from a name a peer sent.
fn file_name(last_log_id: Option<LogId<NodeId>>) -> String {
    let (index, term) = last_log_id.map_or((0, 0), |id| (id.index, id.leader_id.term));
    format!("{index:020}-{term:020}{SNAPSHOT_SUFFIX}")
}

fn newest_snapshot(dir: &Path) -> std::io::Result<Option<PathBuf>> {
    let mut newest: Option<PathBuf> = None;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.to_string_lossy().ends_with(SNAPSHOT_SUFFIX)
            && newest.as_ref().is_none_or(|n| path.file_name() > n.file_name())
        {
            newest = Some(path);
        }
    }
    Ok(newest)
}

/// The snapshot files and the current snapshot, shared by the state machine and builders.
///
/// openraft builds snapshots in a task of their own, concurrently with installing one from
/// the leader, so saves are serialized here and a snapshot never replaces a newer one: a
/// build that finishes after a newer install is dropped.
struct SnapshotStore {
    dir: PathBuf,
    save_lock: Mutex<()>,
    current: Mutex<Option<(Meta, Arc<Vec<u8>>)>>,
    tmp_seq: AtomicU64,
}

impl SnapshotStore {
    fn current(&self) -> Option<(Meta, Arc<Vec<u8>>)> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Writes a snapshot durably, makes it current and removes older files; returns false
    /// (and writes nothing) when the current snapshot is as new or newer. Blocking.
    fn save(&self, meta: &Meta, bytes: Arc<Vec<u8>>) -> Result<bool, StorageError> {
        use std::io::Write;
        let _serialized = self.save_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.current().is_some_and(|(m, _)| m.last_log_id >= meta.last_log_id) {
            return Ok(false);
        }
        let name = file_name(meta.last_log_id);
        let final_path = self.dir.join(&name);
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp_path = self.dir.join(format!("{name}.{seq}.tmp"));
        let mut file = std::fs::File::create(&tmp_path).map_err(|e| write_err(meta, e))?;
        file.write_all(&bytes).map_err(|e| write_err(meta, e))?;
        file.sync_all().map_err(|e| write_err(meta, e))?;
        std::fs::rename(&tmp_path, &final_path).map_err(|e| write_err(meta, e))?;
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| write_err(meta, e))?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((meta.clone(), bytes));
        for entry in std::fs::read_dir(&self.dir).map_err(|e| write_err(meta, e))? {
            let path = entry.map_err(|e| write_err(meta, e))?.path();
            // Older snapshots and leftovers of interrupted writes (no other save is running).
            if path != final_path {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(true)
    }
}

/// Builds snapshots from a copy of the grid taken under a short read lock.
pub struct Builder {
    handle: Handle,
    store: Arc<SnapshotStore>,
    seq: u64,
    metrics: Arc<Registry>,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let started = std::time::Instant::now();
        let (grid, last_log_id, last_membership) =
            self.handle.read(|a| (a.grid.clone(), a.last_applied, a.last_membership.clone()));
        let meta = Meta { last_log_id, last_membership, snapshot_id: snapshot_id(last_log_id, self.seq) };
        let store = self.store.clone();
        let file = SnapshotFile { meta, grid };
        // Encoding and fsync are slow for a big grid: keep them off the async workers.
        let (meta, bytes, kept) = tokio::task::spawn_blocking(move || {
            let bytes = Arc::new(encode_snapshot(&file));
            store.save(&file.meta, bytes.clone()).map(|kept| (file.meta, bytes, kept))
        })
        .await
        .map_err(|e| StorageError::IO {
            source: StorageIOError::write_snapshot(None, AnyError::new(&e)),
        })??;
        if !kept {
            // A newer snapshot (installed from the leader) arrived while this one was built.
            if let Some((meta, bytes)) = self.store.current() {
                tracing::info!(snapshot_id = %meta.snapshot_id, "a newer snapshot arrived during the build; kept it");
                return Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes.as_ref().clone())) });
            }
        }
        self.handle.counters.snapshots_built.fetch_add(1, Ordering::Relaxed);
        self.metrics.snapshot_build.observe(started.elapsed());
        self.metrics.snapshot_bytes.store(bytes.len() as u64, Ordering::Relaxed);
        tracing::info!(snapshot_id = %meta.snapshot_id, bytes = bytes.len(), "built snapshot");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes.as_ref().clone())) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, openraft::BasicNode>), StorageError> {
        Ok(self.handle.read(|a| (a.last_applied, a.last_membership.clone())))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut applied = self.handle.applied.write().unwrap_or_else(|p| p.into_inner());
        let mut responses = Vec::new();
        let mut events = Vec::new();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Response::default(),
                EntryPayload::Normal(request) => {
                    let (now_ms, held, commands) = match request {
                        Request::Batch { now_ms, commands } => (now_ms, Vec::new(), commands),
                        Request::BatchHeld { now_ms, held, commands } => (now_ms, held, commands),
                    };
                    self.handle.counters.commands_applied.fetch_add(commands.len() as u64, Ordering::Relaxed);
                    let first_event = events.len();
                    let results = applied.grid.apply_batch_held(now_ms, &held, &commands, &mut events);
                    if self.metrics.counts_entry(entry.log_id.index) {
                        self.metrics.executions.entry_applied(&applied.grid, &events[first_event..]);
                    }
                    Response { results }
                }
                EntryPayload::Membership(membership) => {
                    applied.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    Response::default()
                }
            };
            responses.push(response);
        }
        self.handle.refresh_cluster_uid(&applied);
        // Still under the write lock: a waiter that registered and then read the grid sees
        // either the new state or this wake-up.
        self.hub.publish(&applied.grid, events);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let seq = self.handle.counters.snapshots_built.load(Ordering::Relaxed);
        Builder { handle: self.handle.clone(), store: self.store.clone(), seq, metrics: self.metrics.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = Arc::new(snapshot.into_inner());
        let file = decode_snapshot(&bytes).map_err(|e| read_err(Some(meta), e))?;
        self.metrics.snapshot_bytes.store(bytes.len() as u64, Ordering::Relaxed);
        let store = self.store.clone();
        let meta_w = meta.clone();
        tokio::task::spawn_blocking(move || store.save(&meta_w, bytes))
            .await
            .map_err(|e| write_err(meta, e))??;
        self.restore(SnapshotFile { meta: meta.clone(), grid: file.grid });
        self.hub.reset();
        self.metrics.executions.grid_replaced();
        self.handle.counters.snapshots_installed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(snapshot_id = %meta.snapshot_id, last_log_id = ?meta.last_log_id, "installed snapshot from leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self
            .store
            .current()
            .map(|(meta, bytes)| Snapshot { meta, snapshot: Box::new(Cursor::new(bytes.as_ref().clone())) }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Membership};

    use super::*;

    fn meta(index: u64) -> Meta {
        let log_id = Some(LogId::new(CommittedLeaderId::new(2, 1), index));
        Meta {
            last_log_id: log_id,
            last_membership: StoredMembership::new(None, Membership::new(vec![Default::default()], None)),
            snapshot_id: snapshot_id(log_id, 0),
        }
    }

    fn bytes_of(index: u64) -> Arc<Vec<u8>> {
        let mut grid = Grid::default();
        grid.advance_clock(index);
        Arc::new(encode_snapshot(&SnapshotFile { meta: meta(index), grid }))
    }

    /// A build that finishes after a newer snapshot was installed must not replace it (on
    /// disk or as the current snapshot), or the node restarts behind its purged log.
    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let sm = StateMachine::open(dir.path(), watch::Hub::new(1, 1)).unwrap();
        assert!(sm.store.save(&meta(60), bytes_of(60)).unwrap(), "newer is kept");
        assert!(!sm.store.save(&meta(50), bytes_of(50)).unwrap(), "older is dropped");
        assert!(!sm.store.save(&meta(60), bytes_of(60)).unwrap(), "same is dropped");
        assert_eq!(sm.store.current().unwrap().0.last_log_id.unwrap().index, 60);
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(files, [std::ffi::OsString::from(file_name(meta(60).last_log_id))]);

        let reopened = StateMachine::open(dir.path(), watch::Hub::new(1, 1)).unwrap();
        assert_eq!(reopened.handle.read(|a| a.last_applied).unwrap().index, 60);
        assert!(reopened.store.save(&meta(70), bytes_of(70)).unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "older files removed");
    }

    /// A snapshot written before executions existed (format 1, the old grid) still loads,
    /// into an empty work state; an unknown format is refused.
    #[test]
    fn format_one_snapshots_still_load() {
        #[derive(Serialize)]
        struct OldGrid {
            revision: u64,
            now_ms: u64,
            namespaces:
                std::collections::BTreeMap<String, std::collections::BTreeMap<String, crate::grid::Value>>,
            expiries: std::collections::BTreeMap<(u64, String, String), ()>,
        }
        #[derive(Serialize)]
        struct OldFile {
            meta: Meta,
            grid: OldGrid,
        }
        let mut grid = Grid::default();
        grid.apply_batch(
            5,
            &[crate::grid::Command::Put {
                namespace: "shared/a".into(),
                key: "k".into(),
                value: b"v".to_vec(),
                ttl_ms: None,
                if_absent: false,
            }],
        );
        let value = grid.get("shared/a", "k").unwrap().clone();
        let old = OldFile {
            meta: meta(9),
            grid: OldGrid {
                revision: grid.revision(),
                now_ms: grid.now_ms(),
                namespaces: [("shared/a".to_owned(), [("k".to_owned(), value)].into())].into(),
                expiries: Default::default(),
            },
        };
        let restored = decode_snapshot(&codec::encode(&old)).unwrap();
        assert_eq!(restored.grid, grid);
        let mut unknown = encode_snapshot(&restored);
        unknown[0] = 9;
        assert!(matches!(decode_snapshot(&unknown), Err(codec::Error::UnknownFormat(9))));
    }

    /// A snapshot file written before leases existed (format 3) loads: no leases, no session
    /// only-claimed; written again, it is format 4.
    #[test]
    fn format_three_snapshots_still_load() {
        #[derive(Serialize)]
        struct OldFile {
            meta: Meta,
            grid: GridV3,
        }
        let mut grid = Grid::default();
        let put = crate::grid::Command::Put {
            namespace: "shared/a".into(),
            key: "k".into(),
            value: b"v".to_vec(),
            ttl_ms: None,
            if_absent: false,
        };
        let open =
            crate::grid::Command::OpenSession(Box::new(crate::grid::test_harness::new_session(&["w"], 2)));
        let results = grid.apply_batch(5, &[put, open]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let old =
            codec::encode_tagged(codec::FORMAT_SNAPSHOT_V3, &OldFile { meta: meta(9), grid: grid.to_v3() });
        let restored = decode_snapshot(&old).unwrap();
        assert_eq!(restored.grid, grid);
        assert_eq!(restored.meta, meta(9));
        assert_eq!(encode_snapshot(&restored)[0], codec::FORMAT_SNAPSHOT_V8);
    }

    /// A snapshot file written before tokens existed (format 4) loads with none; written
    /// again, it is format 5.
    #[test]
    fn format_four_snapshots_still_load() {
        #[derive(Serialize)]
        struct OldFile {
            meta: Meta,
            grid: GridV4,
        }
        let mut grid = Grid::default();
        let acquire =
            crate::grid::Command::AcquireLease { name: "l".into(), holder: "h".into(), ttl_ms: 100 };
        assert!(grid.apply_batch(5, &[acquire]).iter().all(Result::is_ok));
        let old =
            codec::encode_tagged(codec::FORMAT_SNAPSHOT_V4, &OldFile { meta: meta(9), grid: grid.to_v4() });
        let restored = decode_snapshot(&old).unwrap();
        assert_eq!(restored.grid, grid);
        assert_eq!(restored.grid.token_count(), 0);
        assert!(restored.grid.lease("l").is_some(), "what format 4 held is kept");
        assert_eq!(encode_snapshot(&restored)[0], codec::FORMAT_SNAPSHOT_V8);
    }

    /// A snapshot file written before blocks for eager calls (format 5) loads with none;
    /// written again, it is today's format.
    #[test]
    fn format_five_snapshots_still_load() {
        #[derive(Serialize)]
        struct OldFile {
            meta: Meta,
            grid: GridV5,
        }
        let mut grid = Grid::default();
        let put = crate::grid::Command::Put {
            namespace: "shared/a".into(),
            key: "k".into(),
            value: b"v".to_vec(),
            ttl_ms: None,
            if_absent: false,
        };
        assert!(grid.apply_batch(5, &[put]).iter().all(Result::is_ok));
        let old =
            codec::encode_tagged(codec::FORMAT_SNAPSHOT_V5, &OldFile { meta: meta(9), grid: grid.to_v5() });
        let restored = decode_snapshot(&old).unwrap();
        assert_eq!(restored.grid, grid);
        assert_eq!(encode_snapshot(&restored)[0], codec::FORMAT_SNAPSHOT_V8);
        // And format 6 is not format 5: a grid with a block does not load as one.
        grid.apply_batch(6, &[crate::grid::Command::ReserveBlock { count: 4 }]);
        let file = SnapshotFile { meta: meta(10), grid: grid.clone() };
        assert_eq!(decode_snapshot(&encode_snapshot(&file)).unwrap().grid, grid);
    }

    /// A snapshot file written before lease queues (format 6) loads with none; a grid with a
    /// holder waiting is written in format 7 and loads with it.
    #[test]
    fn format_six_snapshots_still_load() {
        #[derive(Serialize)]
        struct OldFile {
            meta: Meta,
            grid: GridV6,
        }
        use crate::grid::Command;
        let mut grid = Grid::default();
        let acquire = Command::AcquireLease { name: "l".into(), holder: "a".into(), ttl_ms: 100 };
        let block = Command::ReserveBlock { count: 4 };
        assert!(grid.apply_batch(5, &[acquire, block]).iter().all(Result::is_ok));
        let old =
            codec::encode_tagged(codec::FORMAT_SNAPSHOT_V6, &OldFile { meta: meta(9), grid: grid.to_v6() });
        let restored = decode_snapshot(&old).unwrap();
        assert_eq!(restored.grid, grid);
        assert_eq!(encode_snapshot(&restored)[0], codec::FORMAT_SNAPSHOT_V8);
        let wait = Command::AwaitLease { name: "l".into(), holder: "b".into(), ttl_ms: 100, wait_ms: 1_000 };
        assert!(matches!(
            grid.apply_batch(6, &[wait])[0],
            Ok(crate::grid::Output::LeaseQueued { position: 1, .. })
        ));
        let file = SnapshotFile { meta: meta(10), grid: grid.clone() };
        let restored = decode_snapshot(&encode_snapshot(&file)).unwrap().grid;
        assert_eq!(restored, grid);
        assert_eq!(restored.lease_waiters("l").len(), 1);
    }

    /// A snapshot file written before schedules (format 7) loads with none; a grid with a
    /// schedule is written in format 8 and loads with it.
    #[test]
    fn format_seven_snapshots_still_load() {
        #[derive(Serialize)]
        struct OldFile {
            meta: Meta,
            grid: GridV7,
        }
        use crate::grid::Command;
        let mut grid = Grid::default();
        let acquire = Command::AcquireLease { name: "l".into(), holder: "a".into(), ttl_ms: 100 };
        let wait = Command::AwaitLease { name: "l".into(), holder: "b".into(), ttl_ms: 100, wait_ms: 1_000 };
        assert!(grid.apply_batch(5, &[acquire, wait]).iter().all(Result::is_ok));
        let old =
            codec::encode_tagged(codec::FORMAT_SNAPSHOT_V7, &OldFile { meta: meta(9), grid: grid.to_v7() });
        let restored = decode_snapshot(&old).unwrap();
        assert_eq!(restored.grid, grid);
        assert_eq!(encode_snapshot(&restored)[0], codec::FORMAT_SNAPSHOT_V8);
        let create =
            Command::CreateSchedule(Box::new(crate::grid::schedule::NewSchedule::example("nightly")));
        assert!(grid.apply_batch(6, &[create])[0].is_ok());
        let file = SnapshotFile { meta: meta(10), grid: grid.clone() };
        let restored = decode_snapshot(&encode_snapshot(&file)).unwrap().grid;
        assert_eq!(restored, grid);
        assert!(restored.schedule("nightly").is_some());
    }

    /// File names come from log ids, never from the id a peer sent.
    #[test]
    fn file_names_ignore_peer_snapshot_ids() {
        let dir = tempfile::tempdir().unwrap();
        let sm = StateMachine::open(dir.path(), watch::Hub::new(1, 1)).unwrap();
        let mut m = meta(5);
        m.snapshot_id = "../../escape".into();
        assert!(sm.store.save(&m, bytes_of(5)).unwrap());
        assert!(dir.path().join(file_name(m.last_log_id)).exists());
        assert!(!dir.path().parent().unwrap().join("escape.snap").exists());
    }
}

//! The Raft log and vote, stored in sled.
//!
//! One sled tree holds everything, so a purge and the record of what was purged land in one
//! atomic batch:
//!
//! ```text
//!   "l" + index (u64 big-endian)  ->  codec(Entry)        the log
//!   "m/vote"                      ->  codec(Vote)         flushed before save_vote returns
//!   "m/committed"                 ->  codec(LogId)        written lazily (openraft allows it)
//!   "m/purged"                    ->  codec(LogId)        last purged log id
//! ```
//!
//! Appends are acknowledged to openraft only after an fsync. A single flusher task does the
//! fsyncs: it takes every append callback waiting for it, flushes once, then acknowledges them
//! all. (openraft 0.9 waits for each append before the next, so in practice each flush covers
//! one append; the leader's batching of client writes into entries is what shares an fsync.)
//!
//! sled's own flush is not enough for "fsync'd": it writes its log with `sync_file_range`,
//! which persists neither file metadata nor the device cache, and writes large values to blob
//! files without syncing them (sled fsyncs on its own only every 500 ms). [`Durable`] follows
//! every flush with `fsync` of the log file, of new blob files and of the blob directory.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{LogId, OptionalSend, StorageIOError, Vote};
use tokio::sync::mpsc;

use super::{NodeId, StorageError, TypeConfig};
use crate::codec;
use crate::metrics::Histogram;

type Entry = openraft::Entry<TypeConfig>;

/// How many append acknowledgements may wait for the flusher; appends wait when it is full.
pub const MAX_PENDING_FLUSHES: usize = 4096;

const LOG_PREFIX: u8 = b'l';
const KEY_VOTE: &[u8] = b"m/vote";
const KEY_COMMITTED: &[u8] = b"m/committed";
const KEY_PURGED: &[u8] = b"m/purged";

fn log_key(index: u64) -> [u8; 9] {
    let mut key = [LOG_PREFIX; 9];
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

fn io_err<E: std::error::Error + 'static>(
    make: fn(openraft::AnyError) -> StorageIOError<NodeId>,
    e: E,
) -> StorageError {
    StorageError::IO { source: make(openraft::AnyError::new(&e)) }
}

/// The sled-backed log store. Cheap to clone: clones share the database.
#[derive(Clone)]
pub struct LogStore {
    tree: sled::Tree,
    durable: Durable,
    flusher: mpsc::Sender<LogFlushed<TypeConfig>>,
    closed: Closed,
}

/// Resolves once the flusher has stopped and released its handle on the database: after
/// every clone of the store is dropped. A node waits for it before its data dir may be
/// opened again.
#[derive(Clone)]
pub struct Closed(tokio::sync::watch::Receiver<bool>);

impl Closed {
    /// Waits until the database is released.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|closed| *closed).await;
    }
}

impl LogStore {
    /// Opens (or creates) the log in `dir` and starts its flusher task on the current runtime.
    #[cfg(test)]
    pub fn open(dir: &Path) -> Result<Self, sled::Error> {
        Self::open_observed(dir, Arc::new(Histogram::new(crate::metrics::histogram::FSYNC_BUCKETS_S)))
    }

    /// [`LogStore::open`], timing every flush into `fsync`.
    pub fn open_observed(dir: &Path, fsync: Arc<Histogram>) -> Result<Self, sled::Error> {
        let db = sled::Config::new().path(dir).mode(sled::Mode::HighThroughput).open()?;
        let tree = db.open_tree("raft")?;
        let durable = Durable {
            log_file: Arc::new(std::fs::File::open(dir.join("db"))?),
            db: db.clone(),
            dir: dir.to_owned(),
            synced_blobs: Arc::default(),
            fsync,
        };
        let (tx, rx) = mpsc::channel(MAX_PENDING_FLUSHES);
        let (closed_tx, closed_rx) = tokio::sync::watch::channel(false);
        let flusher = durable.clone();
        // A thread of its own: a flush is blocking I/O, and doing it here saves two thread
        // hand-offs per append (sled's I/O thread and tokio's blocking pool).
        let lock_file = dir.join("db");
        std::thread::Builder::new().name("weft-log-flush".into()).spawn(move || {
            flush_loop(flusher, rx);
            wait_for_release(&lock_file);
            let _ = closed_tx.send(true);
        })?;
        Ok(Self { tree, durable, flusher: tx, closed: Closed(closed_rx) })
    }

    /// Resolves once every clone of this store is gone and the database is released.
    pub fn closed(&self) -> Closed {
        self.closed.clone()
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        err: fn(openraft::AnyError) -> StorageIOError<NodeId>,
    ) -> Result<Option<T>, StorageError> {
        match self.tree.get(key).map_err(|e| io_err(err, e))? {
            None => Ok(None),
            Some(bytes) => codec::decode(&bytes).map(Some).map_err(|e| io_err(err, e)),
        }
    }
}

/// Makes everything sled has written so far durable (see the module docs).
#[derive(Clone)]
struct Durable {
    db: sled::Db,
    dir: PathBuf,
    log_file: Arc<std::fs::File>,
    /// Blob files already synced; rebuilt from the directory listing at every sync.
    synced_blobs: Arc<Mutex<HashSet<OsString>>>,
    /// How long each flush takes.
    fsync: Arc<Histogram>,
}

impl Durable {
    async fn flush(&self) -> std::io::Result<()> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.flush_blocking()).await.map_err(std::io::Error::other)?
    }

    /// sled's flush writes its buffers (with `sync_file_range`); `fdatasync` then makes them,
    /// and the file's size, durable.
    fn flush_blocking(&self) -> std::io::Result<()> {
        let started = std::time::Instant::now();
        self.db.flush().map_err(std::io::Error::other)?;
        self.sync_files()?;
        self.fsync.observe(started.elapsed());
        Ok(())
    }

    fn sync_files(&self) -> std::io::Result<()> {
        self.log_file.sync_data()?;
        let blobs = self.dir.join("blobs");
        let Ok(entries) = std::fs::read_dir(&blobs) else { return Ok(()) };
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|p| p.into_inner());
        let mut present = HashSet::new();
        let mut added = false;
        for entry in entries {
            let name = entry?.file_name();
            if !synced.contains(&name) {
                match std::fs::File::open(blobs.join(&name)) {
                    Ok(file) => file.sync_all()?,
                    // Removed since the listing (its entry was purged): nothing to sync.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                added = true;
            }
            present.insert(name);
        }
        if added {
            std::fs::File::open(&blobs)?.sync_all()?;
        }
        *synced = present;
        Ok(())
    }
}

/// Acknowledges appends once they are durable: one flush for every append waiting when it
/// starts. Ends when every store clone (sender) is dropped, with a last flush.
fn flush_loop(durable: Durable, mut rx: mpsc::Receiver<LogFlushed<TypeConfig>>) {
    let mut waiting = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        waiting.push(first);
        while waiting.len() < MAX_PENDING_FLUSHES
            && let Ok(more) = rx.try_recv()
        {
            waiting.push(more);
        }
        let result = durable.flush_blocking();
        for callback in waiting.drain(..) {
            let result = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            callback.log_io_completed(result);
        }
    }
    if let Err(e) = durable.flush_blocking() {
        tracing::error!(error = %e, "final flush of the Raft log failed");
    }
}

/// How long [`Closed`] waits, after the last handle is dropped, for sled's background
/// threads to let go of the database's file lock.
const MAX_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits until sled's lock on `lock_file` is free. Dropping the last `Db` does not release it
/// at once: jobs sled handed to its own thread pool still hold the file, and opening the
/// directory again in that window fails with "could not acquire lock". sled locks with
/// `flock`, which conflicts between two opens of one file even in one process, so taking the
/// lock here (and dropping it) proves the database is released.
fn wait_for_release(lock_file: &Path) {
    let deadline = std::time::Instant::now() + MAX_RELEASE_WAIT;
    loop {
        let Ok(file) = std::fs::File::open(lock_file) else { return };
        match file.try_lock() {
            Ok(()) => return,
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => {
                tracing::warn!(error = %e, "the Raft log's file lock is still held after close");
                return;
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(log_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(log_key(*i)),
            Bound::Unbounded => Bound::Included(log_key(0)),
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(log_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(log_key(*i)),
            Bound::Unbounded => Bound::Included(log_key(u64::MAX)),
        };
        let mut entries = Vec::new();
        for item in self.tree.range((start, end)) {
            let (_, bytes) = item.map_err(|e| io_err(StorageIOError::read_logs, e))?;
            entries.push(codec::decode(&bytes).map_err(|e| io_err(StorageIOError::read_logs, e))?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId<NodeId>> =
            self.get_meta(KEY_PURGED, StorageIOError::read_logs)?;
        let last = self
            .tree
            .range(log_key(0)..=log_key(u64::MAX))
            .next_back()
            .transpose()
            .map_err(|e| io_err(StorageIOError::read_logs, e))?;
        let last_log_id = match last {
            Some((_, bytes)) => {
                let entry: Entry = codec::decode(&bytes).map_err(|e| io_err(StorageIOError::read_logs, e))?;
                Some(entry.log_id)
            }
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.tree.insert(KEY_VOTE, codec::encode(vote)).map_err(|e| io_err(StorageIOError::write_vote, e))?;
        // A vote must be durable before the node acts on it.
        self.durable.flush().await.map_err(|e| io_err(StorageIOError::write_vote, e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_meta(KEY_VOTE, StorageIOError::read_vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError> {
        self.tree
            .insert(KEY_COMMITTED, codec::encode(&committed))
            .map_err(|e| io_err(StorageIOError::write, e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>(KEY_COMMITTED, StorageIOError::read)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut entries = entries.into_iter();
        let first = entries.next();
        let second = entries.next();
        match (first, second) {
            (None, _) => {}
            // One entry (most appends): a plain insert is atomic on its own. A batch would cost
            // sled two more writes of its log buffer (`PageCache::pin_log` seals the buffer
            // before and after reserving the batch's manifest), each a job for its I/O threads.
            (Some(entry), None) => {
                self.tree
                    .insert(log_key(entry.log_id.index), codec::encode(&entry))
                    .map_err(|e| io_err(StorageIOError::write_logs, e))?;
            }
            // Several: one atomic batch, so a crash never keeps a later entry without an
            // earlier one.
            (Some(first), Some(second)) => {
                let mut batch = sled::Batch::default();
                for entry in [first, second].into_iter().chain(entries) {
                    batch.insert(&log_key(entry.log_id.index), codec::encode(&entry));
                }
                self.tree.apply_batch(batch).map_err(|e| io_err(StorageIOError::write_logs, e))?;
            }
        }
        // The flusher acknowledges once the entries are on disk.
        if let Err(mpsc::error::SendError(callback)) = self.flusher.send(callback).await {
            callback.log_io_completed(Err(std::io::Error::other("log flusher stopped")));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for key in self.tree.range(log_key(log_id.index)..=log_key(u64::MAX)).keys() {
            batch.remove(key.map_err(|e| io_err(StorageIOError::write_logs, e))?);
        }
        self.tree.apply_batch(batch).map_err(|e| io_err(StorageIOError::write_logs, e))?;
        // Rare, and a removed conflicting entry must not reappear after a crash.
        self.durable.flush().await.map_err(|e| io_err(StorageIOError::write_logs, e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        batch.insert(KEY_PURGED, codec::encode(&log_id));
        for key in self.tree.range(log_key(0)..=log_key(log_id.index)).keys() {
            batch.remove(key.map_err(|e| io_err(StorageIOError::write_logs, e))?);
        }
        self.tree.apply_batch(batch).map_err(|e| io_err(StorageIOError::write_logs, e))?;
        // Rare, and a removed conflicting entry must not reappear after a crash.
        self.durable.flush().await.map_err(|e| io_err(StorageIOError::write_logs, e))?;
        Ok(())
    }
}

//! openraft's storage conformance suite, run against the sled log store and the grid state
//! machine on real directories.

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};

use super::log_store::LogStore;
use super::state_machine::StateMachine;
use super::{NodeId, TypeConfig};

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SledBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open(&dir.path().join("raft")).expect("open sled");
        let sm = StateMachine::open(&dir.path().join("snapshots"), crate::watch::Hub::new(1, 16))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn sled_store_passes_openraft_suite() -> Result<(), StorageError<NodeId>> {
    Suite::test_all(SledBuilder)
}

/// The log and vote survive closing and reopening the database.
#[test]
fn log_and_vote_survive_reopen() {
    use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let mut log = LogStore::open(dir.path()).unwrap();
        log.save_vote(&Vote::new(3, 1)).await.unwrap();
        let entries: Vec<Entry<TypeConfig>> = (1..=5)
            .map(|i| Entry {
                log_id: LogId::new(CommittedLeaderId::new(3, 1), i),
                payload: EntryPayload::Blank,
            })
            .collect();
        log.blocking_append(entries).await.unwrap();
        log.purge(LogId::new(CommittedLeaderId::new(3, 1), 2)).await.unwrap();
        // Release the database as a node's shutdown does, before opening it again.
        let closed = log.closed();
        drop(log);
        closed.wait().await;
    });
    drop(rt);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut log = LogStore::open(dir.path()).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(2));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(5));
        let got = log.try_get_log_entries(0..100).await.unwrap();
        assert_eq!(got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), [3, 4, 5]);
    });
}

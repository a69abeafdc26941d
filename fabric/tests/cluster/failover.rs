//! Losing the leader: the cluster elects another and keeps every acknowledged write.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_loss_keeps_acknowledged_writes() {
    init_tracing();
    let mut cluster = Cluster::start(3, |_| {}).await;
    let old_leader = cluster.wait_for_leader().await;
    let followers: Vec<String> =
        (1..=3u64).filter(|id| *id != old_leader).map(|id| cluster.addrs[id as usize - 1].clone()).collect();

    tracing::info!("phase: writers on both followers write continuously");
    let writers = Writers::start(&followers, "shared/f");
    tokio::time::sleep(Duration::from_millis(500)).await;

    tracing::info!(old_leader, "phase: stop the leader");
    cluster.stop(old_leader).await;
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, old_leader);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let acked: BTreeSet<String> = writers.stop().await.into_iter().map(|(k, _)| k).collect();
    tracing::info!(acked = acked.len(), new_leader, "phase: every acknowledged write is kept");
    assert!(acked.len() > 10, "writers made progress: {}", acked.len());

    tracing::info!("phase: the old leader comes back and catches up");
    cluster.restart(old_leader).await;
    cluster.wait_caught_up(old_leader).await;
    for id in 1..=3 {
        let missing: Vec<&String> = cluster
            .node(id)
            .applied()
            .read(|a| acked.iter().filter(|k| a.grid.get("shared/f", k).is_none()).collect());
        assert!(missing.is_empty(), "node {id} lost acknowledged writes: {missing:?}");
    }
    cluster.shutdown().await;
}

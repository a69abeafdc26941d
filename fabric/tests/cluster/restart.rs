//! Restarts: catching up from the log, from a snapshot, and a whole-cluster restart.

use std::sync::atomic::Ordering;

use crate::support::*;

fn follower_of(leader: u64) -> u64 {
    if leader == 3 { 2 } else { 3 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_follower_catches_up_from_the_log() {
    init_tracing();
    let mut cluster = Cluster::start(3, |_| {}).await;
    let leader = cluster.wait_for_leader().await;
    let lagging = follower_of(leader);
    tracing::info!(lagging, "phase: stop a follower, write while it is down");
    cluster.stop(lagging).await;
    let addr = cluster.addrs[leader as usize - 1].clone();
    for i in 0..40 {
        put_retrying(&addr, "shared/r", &format!("k{i}"), &format!("v{i}")).await.unwrap().unwrap();
    }
    tracing::info!("phase: restart it; it catches up from the leader's log");
    cluster.restart(lagging).await;
    cluster.wait_caught_up(lagging).await;
    let node = cluster.node(lagging);
    assert_eq!(node.applied().counters().snapshots_installed.load(Ordering::Relaxed), 0);
    for i in 0..40 {
        let v = node.applied().read(|a| a.grid.get("shared/r", &format!("k{i}")).map(|v| v.data.clone()));
        assert_eq!(v, Some(format!("v{i}").into_bytes()));
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lagging_follower_catches_up_by_snapshot() {
    init_tracing();
    let mut cluster = Cluster::start(3, |c| {
        c.snapshot_after_entries = 20;
        c.log_entries_kept_after_snapshot = 0;
        c.snapshot_chunk_bytes = 1024; // several chunks
    })
    .await;
    let leader = cluster.wait_for_leader().await;
    let lagging = follower_of(leader);
    tracing::info!(lagging, "phase: stop a follower; write until the others purge their logs");
    cluster.stop(lagging).await;
    let addr = cluster.addrs[leader as usize - 1].clone();
    for i in 0..120 {
        put_retrying(&addr, "shared/s", &format!("k{i:03}"), &"x".repeat(64)).await.unwrap().unwrap();
    }
    let purged = loop {
        let m = cluster.node(leader).raft().metrics().borrow().clone();
        if let Some(p) = m.purged.filter(|p| p.index > 20) {
            break p.index;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    tracing::info!(purged, "phase: restart the follower; the log it needs is gone, so it gets a snapshot");
    cluster.restart(lagging).await;
    cluster.wait_caught_up(lagging).await;
    let node = cluster.node(lagging);
    assert!(
        node.applied().counters().snapshots_installed.load(Ordering::Relaxed) >= 1,
        "no snapshot was installed"
    );
    assert_eq!(node.applied().read(|a| a.grid.key_count()), 120);

    tracing::info!("phase: it keeps following after the snapshot");
    put_retrying(&addr, "shared/s", "after", "y").await.unwrap().unwrap();
    cluster.wait_caught_up(lagging).await;
    assert!(cluster.node(lagging).applied().read(|a| a.grid.get("shared/s", "after").is_some()));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_cluster_restart_keeps_every_write() {
    init_tracing();
    // Snapshots every 30 entries: the restart restores a snapshot and replays the log after it.
    let mut cluster = Cluster::start(3, |c| c.snapshot_after_entries = 30).await;
    let leader = cluster.wait_for_leader().await;
    let addr = cluster.addrs[leader as usize - 1].clone();
    for i in 0..75 {
        put_retrying(&addr, "shared/all", &format!("k{i}"), &format!("v{i}")).await.unwrap().unwrap();
    }
    tracing::info!("phase: stop every node, then start them all again");
    for id in 1..=3 {
        cluster.stop(id).await;
    }
    for id in 1..=3 {
        cluster.restart(id).await;
    }
    cluster.wait_for_leader().await;
    for a in &cluster.addrs {
        for i in [0, 31, 74] {
            assert_eq!(get(a, "shared/all", &format!("k{i}")).await, Some(format!("v{i}")));
        }
    }
    for id in 1..=3 {
        cluster.wait_caught_up(id).await;
        assert_eq!(cluster.node(id).applied().read(|a| a.grid.key_count()), 75, "node {id}");
    }
    cluster.shutdown().await;
}

/// Replication messages are bounded in bytes: a follower that missed many large entries
/// catches up instead of timing out on one huge message again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_catches_up_on_large_values() {
    init_tracing();
    let mut cluster = Cluster::start(3, |_| {}).await;
    let leader = cluster.wait_for_leader().await;
    let lagging = follower_of(leader);
    cluster.stop(lagging).await;
    let addr = cluster.addrs[leader as usize - 1].clone();
    let value = "v".repeat(1000 * 1024);
    tracing::info!(lagging, "phase: 80 values of 1000 KiB while a follower is down");
    for i in 0..80 {
        put_retrying(&addr, "shared/big", &format!("k{i}"), &value).await.unwrap().unwrap();
    }
    tracing::info!("phase: the follower catches up");
    let started = std::time::Instant::now();
    cluster.restart(lagging).await;
    cluster.wait_caught_up(lagging).await;
    tracing::info!(took = ?started.elapsed(), "caught up");
    assert_eq!(cluster.node(lagging).applied().read(|a| a.grid.key_count()), 80);
    cluster.shutdown().await;
}

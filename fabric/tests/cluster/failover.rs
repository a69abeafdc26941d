//! Losing the leader: the cluster elects another and keeps every acknowledged write.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_loss_keeps_acknowledged_writes() {
    init_tracing();
    let mut cluster = Cluster::start(3, |_| {}).await;
    let old_leader = cluster.wait_for_leader().await;
    let followers: Vec<String> = (1..=3u64)
        .filter(|id| *id != old_leader)
        .map(|id| cluster.addrs[id as usize - 1].clone())
        .collect();

    tracing::info!("phase: writers on both followers write continuously");
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (w, addr) in followers.iter().cloned().enumerate() {
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{w}-{i}");
                if let Some(_) = put_retrying(&addr, "shared/f", &key, "v").await.unwrap() {
                    acked.push(key);
                }
                i += 1;
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    tracing::info!(old_leader, "phase: stop the leader");
    cluster.stop(old_leader).await;
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, old_leader);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = BTreeSet::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    tracing::info!(
        acked = acked.len(),
        new_leader,
        "phase: every acknowledged write is readable"
    );
    assert!(acked.len() > 10, "writers made progress: {}", acked.len());

    tracing::info!("phase: the old leader comes back and catches up");
    cluster.restart(old_leader).await;
    let leader = cluster.wait_for_leader().await;
    let last = cluster
        .node(leader)
        .raft()
        .metrics()
        .borrow()
        .last_log_index
        .unwrap();
    cluster.wait_applied(old_leader, last).await;
    for id in 1..=3 {
        let missing: Vec<&String> = cluster.node(id).applied().read(|a| {
            acked
                .iter()
                .filter(|k| a.grid.get("shared/f", k).is_none())
                .collect()
        });
        assert!(
            missing.is_empty(),
            "node {id} lost acknowledged writes: {missing:?}"
        );
    }
    cluster.shutdown().await;
}

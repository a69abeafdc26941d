//! The built `weft` binary as separate processes: `kill -9` the leader.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::*;

/// Three `weft node` processes forming a static cluster `cluster` under `dir`.
fn static_cluster(dir: &std::path::Path, cluster: &str, env: &[(&str, &str)]) -> ProcessCluster {
    spawn_cluster(dir, 3, |mut o| {
        o = o.args(["--cluster", cluster]);
        for (k, v) in env {
            o = o.env(k, v);
        }
        o
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill9_loses_no_acknowledged_write() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut procs = static_cluster(dir.path(), "kill9", &[]);
    let addrs = procs.addrs().to_vec();
    let leader = wait_for_leader_at(&addrs).await;
    tracing::info!(leader, "phase: three weft processes up; writers on every node");
    let writers = Writers::start(&addrs, "shared/k9");
    tokio::time::sleep(Duration::from_millis(800)).await;

    tracing::info!(leader, "phase: kill -9 the leader");
    let killed_at = Instant::now();
    procs.nodes_mut()[leader as usize - 1].kill9();
    let survivors: Vec<String> =
        addrs.iter().enumerate().filter(|(i, _)| *i as u64 + 1 != leader).map(|(_, a)| a.clone()).collect();
    let new_leader = wait_for_new_leader_at(&survivors, leader).await;
    assert_ne!(new_leader, leader);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut acked = BTreeSet::new();
    let mut first_after_kill: Option<Instant> = None;
    for (key, at) in writers.stop().await {
        if at > killed_at {
            first_after_kill = Some(first_after_kill.map_or(at, |f| f.min(at)));
        }
        acked.insert(key);
    }
    let gap = first_after_kill.map(|f| f - killed_at);
    tracing::info!(
        ?gap,
        acked = acked.len(),
        "phase: writable again after the kill (figure, not an assertion)"
    );
    assert!(gap.is_some(), "no write was acknowledged after the leader was killed");

    tracing::info!("phase: restart the killed node; every acknowledged write is on every node");
    procs.nodes_mut()[leader as usize - 1].restart().unwrap();
    wait_for_leader_at(&addrs[leader as usize - 1..leader as usize]).await;
    for addr in &addrs {
        let mut c = client(addr).await;
        for key in &acked {
            let got = c.get(get_req("shared/k9", key)).await.expect("linearizable read").into_inner();
            assert!(got.entry.is_some(), "acknowledged write {key} missing when read through {addr}");
        }
    }
    drop(procs);
}

/// A static cluster whose requests may take far longer than an election (so only a leader
/// change can end a call early), with one write acknowledged; its leader's id and a
/// follower's address.
async fn cluster_with_a_follower(dir: &std::path::Path, cluster: &str) -> (ProcessCluster, u64, String) {
    let procs = static_cluster(dir, cluster, &[("WEFT_REQUEST_TIMEOUT_MS", "60000")]);
    let addrs = procs.addrs().to_vec();
    let leader = wait_for_leader_at(&addrs).await;
    let follower = (1..=3u64).find(|id| *id != leader).unwrap();
    let follower_addr = addrs[follower as usize - 1].clone();
    put_retrying(&follower_addr, "shared/frozen", "warm", "v").await.unwrap().expect("acknowledged");
    (procs, leader, follower_addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_forwarded_to_a_frozen_leader_ends_when_a_new_leader_is_elected() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (procs, leader, follower_addr) = cluster_with_a_follower(dir.path(), "frozen").await;

    tracing::info!(leader, %follower_addr, "phase: freeze the leader (SIGSTOP); write through a follower");
    let frozen = &procs.nodes()[leader as usize - 1];
    frozen.signal("STOP").unwrap();
    let mut c = client(&follower_addr).await;
    let mut req = tonic::Request::new(put_req("shared/frozen", "k", "v"));
    req.set_timeout(Duration::from_secs(50));
    let result = c.put(req).await;
    let _ = frozen.signal("CONT");
    let status = result.expect_err("a frozen leader cannot acknowledge");
    tracing::info!(?status, "phase: the forwarded write ended");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("was elected while the request was with the old leader"), "{status:?}");
    assert!(!is_not_applied(&status), "the old leader may have the write: its outcome is unknown");
    drop(procs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_through_a_follower_of_a_frozen_leader_asks_the_new_leader() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (procs, leader, follower_addr) = cluster_with_a_follower(dir.path(), "frozen-read").await;

    tracing::info!(leader, %follower_addr, "phase: freeze the leader (SIGSTOP); read through a follower");
    let frozen = &procs.nodes()[leader as usize - 1];
    frozen.signal("STOP").unwrap();
    let mut c = client(&follower_addr).await;
    let mut req = tonic::Request::new(get_req("shared/frozen", "warm"));
    req.set_timeout(Duration::from_secs(50));
    let result = c.get(req).await;
    let _ = frozen.signal("CONT");
    let reply = result.expect("the new leader answers the read index").into_inner();
    assert_eq!(reply.entry.map(|e| e.value), Some(b"v".to_vec()));
    drop(procs);
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_without_quorum_answers_within_the_request_timeout() {
    init_tracing();
    let mut cluster = Cluster::start(3, |c| c.request_timeout_ms = 1_500).await;
    let leader = cluster.wait_for_leader().await;
    let addr = cluster.addrs[leader as usize - 1].clone();
    put_retrying(&addr, "shared/q", "before", "v").await.unwrap().unwrap();

    tracing::info!(leader, "phase: stop both followers; the leader is alone");
    for id in (1..=3).filter(|id| *id != leader) {
        cluster.stop(id).await;
    }
    let mut c = client(&addr).await;
    let started = std::time::Instant::now();
    let err = c.put(put_req("shared/q", "during", "v")).await.expect_err("cannot commit without a quorum");
    let took = started.elapsed();
    tracing::info!(?took, code = ?err.code(), message = err.message(), "write to a leader without quorum");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(!is_not_applied(&err), "a proposed write's outcome is unknown, not 'not applied': {err:?}");
    assert!(err.message().contains("outcome unknown"), "{}", err.message());
    assert!(took < Duration::from_secs(10), "answered after the request timeout, not never ({took:?})");

    let err = c.get(get_req("shared/q", "before")).await.expect_err("no linearizable read without a quorum");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(is_not_applied(&err), "a failed read changed nothing: {err:?}");

    let (code, body) = crate::writes::http_get(&addr, "/readyz").await;
    assert_eq!(code, 503, "a leader without a quorum is not ready: {body}");
    assert!(body.contains("has not heard from a quorum"), "{body}");

    tracing::info!("phase: the followers come back; the cluster serves again");
    for id in (1..=3).filter(|id| *id != leader) {
        cluster.restart(id).await;
    }
    let leader = cluster.wait_for_leader().await;
    let addr = &cluster.addrs[leader as usize - 1];
    assert_eq!(get(addr, "shared/q", "before").await.as_deref(), Some("v"));
    put_retrying(addr, "shared/q", "after", "v").await.unwrap().unwrap();
    cluster.shutdown().await;
}

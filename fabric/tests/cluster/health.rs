//! Readiness: `/readyz` says whether a node can serve requests, on `weft node` processes.

use std::time::{Duration, Instant};

use crate::support::*;
use crate::writes::http_get;

/// How soon a node restarted alone must answer not ready once it serves HTTP: its quorum
/// timeout (2 × `election_timeout_max_ms`, 1 s by default) and a margin for a loaded machine.
const VERDICT_WITHIN: Duration = Duration::from_secs(2);
/// How long it must then stay not ready (it is alone: nothing can make it ready).
const STAYS_FOR: Duration = Duration::from_secs(3);
/// How often the test asks.
const ASK_EVERY: Duration = Duration::from_millis(100);

/// `GET path` once the node at `addr` accepts connections (waits up to [`PATIENCE`]).
async fn http_get_when_up(addr: &str, path: &str) -> (u16, String) {
    let deadline = Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "{addr} did not accept connections within {PATIENCE:?}");
        tokio::time::sleep(ASK_EVERY).await;
    }
    http_get(addr, path).await
}

/// Restarts node `id` of `procs` with the others down and checks that `/readyz` answers 503
/// within [`VERDICT_WITHIN`] of its first answer and keeps doing so for [`STAYS_FOR`]; the
/// last answer's body.
async fn restart_alone_and_expect_not_ready(procs: &mut ProcessCluster, id: u64) -> String {
    let addr = procs.addrs()[id as usize - 1].clone();
    procs.nodes_mut()[id as usize - 1].restart().unwrap();
    let (mut code, mut body) = http_get_when_up(&addr, "/readyz").await;
    let serving = Instant::now();
    tracing::info!(id, code, body = body.trim(), "first /readyz answer of the lone node");
    while code != 503 {
        assert!(
            serving.elapsed() < VERDICT_WITHIN,
            "node {id}, restarted without its peers, still answers {code} {body:?} {:?} after its \
             first answer",
            serving.elapsed()
        );
        tokio::time::sleep(ASK_EVERY).await;
        (code, body) = http_get(&addr, "/readyz").await;
    }
    tracing::info!(id, after = ?serving.elapsed(), body = body.trim(), "not ready");
    let until = Instant::now() + STAYS_FOR;
    while Instant::now() < until {
        tokio::time::sleep(ASK_EVERY).await;
        (code, body) = http_get(&addr, "/readyz").await;
        assert_eq!(code, 503, "node {id} is alone, yet became ready: {body}");
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_restarted_without_its_peers_is_not_ready() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut procs = spawn_cluster(dir.path(), 3, |o| o.args(["--cluster", "alone"]));
    let addrs = procs.addrs().to_vec();
    let leader = wait_for_leader_at(&addrs).await;
    put_retrying(&addrs[0], "shared/alone", "k", "v").await.unwrap().expect("acknowledged");
    tracing::info!(leader, "phase: a formed cluster: every node is ready");
    for addr in &addrs {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (code, body) = http_get(addr, "/readyz").await;
            if code == 200 {
                assert!(body.contains(&format!("leader is node {leader}")), "{body}");
                break;
            }
            assert!(Instant::now() < deadline, "{addr} not ready in a formed cluster: {body}");
            tokio::time::sleep(ASK_EVERY).await;
        }
    }

    // kill -9, as a crash would: a graceful stop leaves the cluster (leave_on_shutdown).
    tracing::info!("phase: kill -9 every node; restart the old leader alone");
    procs.kill9_all();
    let body = restart_alone_and_expect_not_ready(&mut procs, leader).await;
    assert!(body.contains("has not heard from a quorum"), "{body}");

    let follower = (1..=3u64).find(|id| *id != leader).unwrap();
    tracing::info!(follower, "phase: kill it; restart a former follower alone");
    procs.nodes_mut()[leader as usize - 1].kill9();
    let body = restart_alone_and_expect_not_ready(&mut procs, follower).await;
    assert!(body.starts_with("not ready: "), "{body}");
    drop(procs);
}

//! Locks (leases that holders wait for) over real nodes: waiters granted in the order they
//! asked through any node, a holder that does not wait never going ahead of them, a wait that
//! runs out; and with real processes, a holder that dies (never renews) while the leader is
//! killed: the `weft locks acquire --wait` process waiting for the lock gets it once the
//! lease runs out, with a greater token.

use std::time::{Duration, Instant};

use tonic::Code;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::leases_client::LeasesClient;

use crate::support::*;

async fn locks(addr: &str) -> LeasesClient<tonic::transport::Channel> {
    LeasesClient::new(channel(addr).await)
}

fn acquire(name: &str, holder: &str, ttl_ms: u64, wait_ms: u64) -> pb::AcquireLeaseRequest {
    pb::AcquireLeaseRequest { name: name.into(), holder: holder.into(), ttl_ms, wait_ms }
}

/// Who waits for lock `name`, as node `addr` answers (linearizable).
async fn waiters(addr: &str, name: &str) -> Vec<String> {
    let got = locks(addr).await.get(pb::GetLeaseRequest { name: name.into(), consistency: 0 }).await;
    got.expect("get").into_inner().waiters.into_iter().map(|w| w.holder).collect()
}

/// Waits until `addr` shows exactly `want` waiting for `name`.
async fn wait_for_waiters(addr: &str, name: &str, want: &[&str]) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = waiters(addr, name).await;
        if now == want {
            return;
        }
        assert!(Instant::now() < deadline, "waiters of {name}: {now:?}, expected {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_get_the_lock_in_the_order_they_asked_through_any_node() {
    init_tracing();
    let cluster = Cluster::start(3, |_| {}).await;
    let leader = cluster.wait_for_leader().await;
    let addrs = cluster.addrs.clone();
    let followers: Vec<String> =
        (1..=3).filter(|i| *i != leader).map(|i| addrs[i as usize - 1].clone()).collect();

    let first = locks(&addrs[0]).await.acquire(acquire("jobs", "a", 60_000, 0)).await.unwrap().into_inner();
    tracing::info!("b waits through one follower, then c through the other");
    let b = tokio::spawn({
        let at = followers[0].clone();
        async move { locks(&at).await.acquire(acquire("jobs", "b", 60_000, 30_000)).await }
    });
    wait_for_waiters(&addrs[0], "jobs", &["b"]).await;
    let c = tokio::spawn({
        let at = followers[1].clone();
        async move { locks(&at).await.acquire(acquire("jobs", "c", 60_000, 30_000)).await }
    });
    wait_for_waiters(&addrs[2], "jobs", &["b", "c"]).await;

    let listed =
        locks(&followers[1]).await.list(pb::ListLeasesRequest::default()).await.unwrap().into_inner();
    let row =
        listed.leases.iter().find(|l| l.grant.as_ref().is_some_and(|g| g.name == "jobs")).expect("listed");
    assert_eq!((row.grant.as_ref().unwrap().holder.as_str(), row.waiting), ("a", 2));

    tracing::info!("a release hands the lock to b at once; c still waits; d, not waiting, is refused");
    locks(&addrs[1])
        .await
        .release(pb::ReleaseLeaseRequest { name: "jobs".into(), token: first.token })
        .await
        .unwrap();
    let b = tokio::time::timeout(PATIENCE, b)
        .await
        .expect("b answered")
        .unwrap()
        .expect("b granted")
        .into_inner();
    assert_eq!(b.holder, "b");
    assert!(b.token > first.token, "{} after {}", b.token, first.token);
    assert!(!c.is_finished(), "c was granted out of turn");
    let d = locks(&addrs[0]).await.acquire(acquire("jobs", "d", 1_000, 0)).await.unwrap_err();
    assert_eq!(d.code(), Code::FailedPrecondition, "{d:?}");
    assert!(d.message().contains("held by 'b'"), "{d:?}");

    tracing::info!("a wait that runs out is refused, naming the holder, and leaves the queue");
    let e = locks(&followers[0]).await.acquire(acquire("jobs", "e", 1_000, 300)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("not granted to 'e' within wait_ms 300") && e.message().contains("'b' holds it"),
        "{e:?}"
    );
    wait_for_waiters(&addrs[0], "jobs", &["c"]).await;

    locks(&addrs[2])
        .await
        .release(pb::ReleaseLeaseRequest { name: "jobs".into(), token: b.token })
        .await
        .unwrap();
    let c = tokio::time::timeout(PATIENCE, c)
        .await
        .expect("c answered")
        .unwrap()
        .expect("c granted")
        .into_inner();
    assert_eq!(c.holder, "c");
    assert!(c.token > b.token);
    assert!(waiters(&addrs[1], "jobs").await.is_empty());

    tracing::info!("bad waits are refused with the field named");
    let bad = locks(&addrs[0]).await.acquire(acquire("jobs", "f", 1_000, 600_001)).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("wait_ms 600001"), "{bad:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_process_gets_the_lock_of_a_dead_holder_across_a_leader_kill() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut procs = spawn_cluster(dir.path(), 3, |o| o);
    let addrs = procs.addrs().to_vec();
    let leader = wait_for_leader_at(&addrs).await;
    let follower = (1..=3u64).find(|&id| id != leader).unwrap();
    let at = addrs[follower as usize - 1].clone();

    tracing::info!("the holder takes the lock for 3 s and dies: it never renews or releases");
    let dead = loop {
        match locks(&at).await.acquire(acquire("nightly", "dead-holder", 3_000, 0)).await {
            Ok(g) => break g.into_inner(),
            Err(s) if s.code() == Code::Unavailable => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(s) => panic!("acquire: {s:?}"),
        }
    };
    let waiter = WeftProcess::spawn(
        &at,
        &["locks", "acquire", "nightly", "--holder", "next", "--ttl", "60s", "--wait", "1m", "--json"],
    );
    wait_for_waiters(&at, "nightly", &["next"]).await;

    tracing::info!(leader, "kill -9 the leader while the lock is held and awaited");
    procs.nodes_mut()[leader as usize - 1].kill9();
    let new_leader = wait_for_new_leader_at(&addrs, leader).await;
    tracing::info!(new_leader, "the new leader's tick hands the lock on when it runs out");
    let (code, lines, err) = waiter.finish().await;
    assert_eq!(code, 0, "the waiting process was not granted the lock: {lines:?} {err}");
    let grant: serde_json::Value = serde_json::from_str(&lines.concat()).expect("a JSON grant");
    assert_eq!(grant["holder"], "next");
    assert!(grant["token"].as_u64().unwrap() > dead.token, "{grant} after token {}", dead.token);

    let (code, out, _) = weft(&at, &["locks", "get", "nightly"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("held by next"), "{out}");
}

/// A waiting request that is dropped takes its holder out of the queue at once; and the CLI
/// waits as long as `--wait` says, past its usual 15 s request timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_wait_leaves_the_queue_and_the_cli_waits_past_its_request_timeout() {
    init_tracing();
    let cluster = Cluster::start(1, |_| {}).await;
    cluster.wait_for_leader().await;
    let addr = cluster.addrs[0].clone();
    let first = locks(&addr).await.acquire(acquire("long", "a", 120_000, 0)).await.unwrap().into_inner();

    let dropped = tokio::spawn({
        let addr = addr.clone();
        async move { locks(&addr).await.acquire(acquire("long", "gone", 60_000, 60_000)).await }
    });
    wait_for_waiters(&addr, "long", &["gone"]).await;
    dropped.abort();
    wait_for_waiters(&addr, "long", &[]).await;

    let cli = WeftProcess::spawn(
        &addr,
        &["locks", "acquire", "long", "--holder", "cli", "--ttl", "10s", "--wait", "40s"],
    );
    wait_for_waiters(&addr, "long", &["cli"]).await;
    tokio::time::sleep(Duration::from_secs(17)).await;
    locks(&addr)
        .await
        .release(pb::ReleaseLeaseRequest { name: "long".into(), token: first.token })
        .await
        .unwrap();
    let (code, lines, err) = cli.finish().await;
    assert_eq!(code, 0, "{lines:?} {err}");
    assert!(lines.concat().contains("long held by cli"), "{lines:?}");
    cluster.shutdown().await;
}

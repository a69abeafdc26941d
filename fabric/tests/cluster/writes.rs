//! Reads and writes through every node of a cluster.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use weft_proto::fabric::v1 as pb;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_and_reads_through_every_node() {
    init_tracing();
    let cluster = Cluster::start(3, |_| {}).await;
    let leader = cluster.wait_for_leader().await;
    tracing::info!(leader, "phase: a write through each node, leader and followers");
    for (i, addr) in cluster.addrs.iter().enumerate() {
        let v = put_retrying(addr, "shared/w", &format!("k{i}"), &format!("v{i}")).await.unwrap();
        assert!(v.is_some(), "put through node {} acknowledged", i + 1);
    }

    tracing::info!("phase: linearizable reads through each node see every write");
    for addr in &cluster.addrs {
        for i in 0..3 {
            assert_eq!(
                get(addr, "shared/w", &format!("k{i}")).await.as_deref(),
                Some(format!("v{i}").as_str())
            );
        }
    }

    tracing::info!("phase: followers forwarded to the leader");
    let follower = cluster.addrs.iter().enumerate().find(|(i, _)| *i as u64 + 1 != leader).unwrap().1;
    let metrics = reqwest_metrics(follower).await;
    let forwarded = metric(&metrics, "weft_api_forwarded_total");
    assert!(forwarded >= 1, "follower forwarded nothing:\n{metrics}");

    tracing::info!("phase: compare-and-set through a follower");
    let mut c = client(follower).await;
    let current = c.get(get_req("shared/w", "k0")).await.unwrap().into_inner().entry.unwrap();
    let cas = pb::CompareAndSetRequest {
        namespace: "shared/w".into(),
        key: "k0".into(),
        expected_version: current.version,
        value: b"v0-2".to_vec(),
        ttl_ms: None,
        fence: None,
    };
    let new_version = c.compare_and_set(cas.clone()).await.unwrap().into_inner().version;
    assert!(new_version > current.version);
    let err = c.compare_and_set(cas).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains(&format!("current is {new_version}")), "{}", err.message());

    tracing::info!("phase: list pages through a prefix via another node");
    let mut c = client(&cluster.addrs[2]).await;
    for i in 0..25 {
        put_retrying(&cluster.addrs[2], "shared/list", &format!("item/{i:03}"), "x").await.unwrap().unwrap();
    }
    put_retrying(&cluster.addrs[2], "shared/list", "other", "x").await.unwrap().unwrap();
    let mut keys = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c
            .list(pb::ListRequest {
                namespace: "shared/list".into(),
                prefix: "item/".into(),
                page_token: token,
                limit: 10,
                consistency: 0,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        keys.extend(page.entries.into_iter().map(|e| e.key));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(keys, (0..25).map(|i| format!("item/{i:03}")).collect::<Vec<_>>());

    tracing::info!("phase: cluster status lists every member with its role");
    let status = cluster_status(&cluster.addrs[1..2]).await.expect("status");
    assert_eq!(status.leader_id, leader);
    assert_eq!(status.members.len(), 3);
    assert!(status.members.iter().all(|m| m.reachable && m.voter && m.applied_index.is_some()));
    assert_eq!(status.members.iter().filter(|m| m.role == "leader").count(), 1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_are_batched_and_all_applied() {
    init_tracing();
    let cluster = Cluster::start(3, |_| {}).await;
    let before = cluster.node(1).raft().metrics().borrow().last_log_index.unwrap_or(0);
    tracing::info!("phase: 64 clients x 20 puts, spread over every node");
    let mut tasks = Vec::new();
    for c in 0..64 {
        let addr = cluster.addrs[c % 3].clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..20 {
                let key = format!("c{c}-{i}");
                if put_retrying(&addr, "shared/batch", &key, "v").await.unwrap().is_some() {
                    acked.push(key);
                }
            }
            acked
        }));
    }
    let mut acked = BTreeSet::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(acked.len(), 64 * 20, "every put acknowledged in a healthy cluster");
    let leader = cluster.wait_for_leader().await;
    let after = cluster.node(leader).raft().metrics().borrow().last_log_index.unwrap_or(0);
    tracing::info!(entries = after - before, writes = acked.len(), "phase: writes shared log entries");
    assert!(
        after - before < acked.len() as u64,
        "1280 concurrent writes should share entries, but took {} entries",
        after - before
    );
    for id in 1..=3 {
        cluster.wait_applied(id, after).await;
        let count = cluster.node(id).applied().read(|a| a.grid.key_count());
        assert_eq!(count, acked.len(), "node {id} holds every key");
    }
    cluster.shutdown().await;
}

/// Sum of a metric over every node of the cluster.
async fn metric_sum(cluster: &Cluster, name: &str) -> u64 {
    let mut sum = 0;
    for addr in &cluster.addrs {
        sum += metric(&reqwest_metrics(addr).await, name);
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_linearizable_reads_share_rounds_and_see_every_acknowledged_write() {
    init_tracing();
    let cluster = Cluster::start(3, |_| {}).await;
    cluster.wait_for_leader().await;
    let rounds_before = metric_sum(&cluster, "weft_read_index_rounds_total").await;
    let forwarded_before = metric_sum(&cluster, "weft_api_forwarded_total").await;

    tracing::info!("phase: 48 clients each write a key through one node, then read it back through another");
    const CLIENTS: usize = 48;
    const ROUNDS: usize = 10;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let write_addr = cluster.addrs[c % 3].clone();
        let read_addr = cluster.addrs[(c + 1) % 3].clone();
        tasks.push(tokio::spawn(async move {
            let mut reader = client(&read_addr).await;
            let key = format!("c{c}");
            for i in 0..ROUNDS {
                let value = i.to_string();
                let acked = put_retrying(&write_addr, "shared/reads", &key, &value).await.unwrap();
                assert!(acked.is_some(), "put {key}={value} acknowledged in a healthy cluster");
                // The write was acknowledged before this read began: a linearizable read
                // through any node sees it (or something newer, and there is nothing newer).
                let got = reader.get(get_req("shared/reads", &key)).await.expect("linearizable get");
                let got = got.into_inner().entry.map(|e| String::from_utf8(e.value).unwrap());
                assert_eq!(got.as_deref(), Some(value.as_str()), "read of {key} through {read_addr}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let reads = (CLIENTS * ROUNDS) as u64;
    let rounds = metric_sum(&cluster, "weft_read_index_rounds_total").await - rounds_before;
    let forwarded = metric_sum(&cluster, "weft_api_forwarded_total").await - forwarded_before;
    tracing::info!(reads, rounds, forwarded, "phase: reads shared read-index rounds");
    assert!(rounds >= 1, "no read-index round ran");
    assert!(
        rounds < reads,
        "{reads} concurrent linearizable reads should share quorum rounds, but took {rounds} rounds"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_cluster_serves_reads_and_writes() {
    init_tracing();
    let cluster = Cluster::start(1, |_| {}).await;
    let addr = &cluster.addrs[0];
    put_retrying(addr, "instance/counter/c1", "n", "1").await.unwrap().unwrap();
    assert_eq!(get(addr, "instance/counter/c1", "n").await.as_deref(), Some("1"));
    let err = client(addr)
        .await
        .put(pb::PutRequest { if_absent: true, ..put_req("instance/counter/c1", "n", "2") })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    let deleted = client(addr)
        .await
        .delete(pb::DeleteRequest {
            namespace: "instance/counter/c1".into(),
            key: "n".into(),
            expected_version: None,
            fence: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted);
    assert_eq!(get(addr, "instance/counter/c1", "n").await, None);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ttl_expiry_is_replicated_to_every_node() {
    init_tracing();
    let cluster = Cluster::start(3, |c| c.ttl_check_interval_ms = 100).await;
    let addr = &cluster.addrs[0];
    let mut c = client(addr).await;
    c.put(pb::PutRequest { ttl_ms: Some(300), ..put_req("shared/ttl", "short", "v") }).await.unwrap();
    put_retrying(addr, "shared/ttl", "long", "v").await.unwrap().unwrap();
    let kv = c
        .get(get_req("shared/ttl", "short"))
        .await
        .unwrap()
        .into_inner()
        .entry
        .expect("present before expiry");
    assert!(kv.expires_at_ms.is_some());

    tracing::info!("phase: the leader proposes expiry; every replica drops the key");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let counts: Vec<usize> =
            (1..=3).map(|id| cluster.node(id).applied().read(|a| a.grid.key_count())).collect();
        if counts.iter().all(|c| *c == 1) {
            break;
        }
        assert!(Instant::now() < deadline, "expired key still stored: {counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for a in &cluster.addrs {
        let stale = client(a).await.get(stale_get_req("shared/ttl", "short")).await.unwrap().into_inner();
        assert!(stale.entry.is_none(), "expired key visible at {a}");
        assert_eq!(get(a, "shared/ttl", "long").await.as_deref(), Some("v"));
    }
    cluster.shutdown().await;
}

pub async fn reqwest_metrics(addr: &str) -> String {
    http_get(addr, "/metrics").await.1
}

/// A minimal HTTP/1.1 GET over a raw socket (no HTTP client dependency for two endpoints).
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect for HTTP");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let code = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (code, body)
}

pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_answer_on_the_grpc_port() {
    init_tracing();
    let cluster = Cluster::start(1, |_| {}).await;
    let addr = &cluster.addrs[0];
    assert_eq!(http_get(addr, "/healthz").await, (200, "ok\n".into()));
    let (code, body) = http_get(addr, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("leader is node 1"), "{body}");
    put_retrying(addr, "shared/m", "k", "v").await.unwrap().unwrap();
    let text = reqwest_metrics(addr).await;
    assert_eq!(metric(&text, "weft_raft_is_leader"), 1);
    assert_eq!(metric(&text, "weft_grid_keys"), 1);
    assert!(metric(&text, "weft_api_writes_total") >= 1);
    cluster.shutdown().await;
}

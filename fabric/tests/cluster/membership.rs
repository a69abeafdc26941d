//! Gossip-discovered membership: clusters that form from seeds, grow, heal and shrink.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use weft_fabric::{Config, Node};
use weft_proto::fabric::v1 as pb;

use crate::support::*;
use crate::writes::http_get;

/// A gossip-mode config: no static members, the test timing preset. The cluster is named
/// after the data dir, so clusters of tests running side by side never meet.
pub(crate) fn gossip_config(root: &std::path::Path, id: u64, addr: &str, seeds: &str, expect: u32) -> Config {
    let name: String =
        root.file_name().unwrap().to_string_lossy().chars().filter(char::is_ascii_alphanumeric).collect();
    Config {
        node_id: id,
        cluster: format!("g{name}"),
        data_dir: root.join(format!("node-{id}")),
        listen: addr.into(),
        seeds: seeds.into(),
        bootstrap_expect: expect,
        gossip_preset: "test".into(),
        dead_node_grace_ms: 2_000,
        request_timeout_ms: 10_000,
        ..Config::default()
    }
}

/// (voters, learners) as node `node` sees the Raft membership.
pub(crate) fn raft_members(node: &Node) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let metrics = node.raft().metrics();
    let m = metrics.borrow();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let learners: BTreeSet<u64> = membership.learner_ids().collect();
    (voters, learners)
}

pub(crate) fn leader_of(nodes: &[Option<Node>]) -> Option<u64> {
    let leaders: Vec<Option<u64>> =
        nodes.iter().flatten().map(|n| n.raft().metrics().borrow().current_leader).collect();
    match leaders.first() {
        Some(Some(l)) if leaders.iter().all(|x| *x == Some(*l)) => Some(*l),
        _ => None,
    }
}

pub(crate) async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "not within {PATIENCE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn node_status(addr: &str) -> pb::NodeStatusReply {
    cluster_client(addr).await.node_status(pb::StatusRequest {}).await.expect("node status").into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_with_one_seed_form_three_voters_and_two_learners() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let listeners = listeners(5).await;
    let addrs: Vec<String> = listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
    tracing::info!("phase: five nodes, each told only of node 1, expecting 3 to form");
    let mut nodes: Vec<Option<Node>> = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let config = gossip_config(dir.path(), i as u64 + 1, &addrs[i], &addrs[0], 3);
        nodes.push(Some(Node::start_on(config, listener).await.expect("node starts")));
    }
    wait_until("3 voters + 2 learners, one leader everyone follows", || {
        let Some(leader) = leader_of(&nodes) else { return false };
        let (voters, learners) = raft_members(nodes[leader as usize - 1].as_ref().unwrap());
        voters.len() == 3 && learners.len() == 2
    })
    .await;
    let leader = leader_of(&nodes).unwrap();
    let (voters, learners) = raft_members(nodes[leader as usize - 1].as_ref().unwrap());
    tracing::info!(leader, ?voters, ?learners, "phase: formed; every node sees the same membership");
    let all: BTreeSet<u64> = voters.union(&learners).copied().collect();
    assert_eq!(all, (1..=5).collect::<BTreeSet<u64>>());
    for node in nodes.iter().flatten() {
        wait_until("each node has the final membership", || {
            raft_members(node) == (voters.clone(), learners.clone())
        })
        .await;
    }
    tracing::info!("phase: a write through a learner is readable everywhere; gossip sees all five alive");
    let learner = *learners.iter().next().unwrap();
    put_retrying(&addrs[learner as usize - 1], "shared/g", "k", "v").await.unwrap().expect("acknowledged");
    for addr in &addrs {
        assert_eq!(get(addr, "shared/g", "k").await.as_deref(), Some("v"));
    }
    let members = cluster_client(&addrs[0]).await.members(pb::MembersRequest {}).await.unwrap().into_inner();
    let alive = members.members.iter().filter(|m| m.state == "alive").count();
    assert_eq!(alive, 5, "{members:?}");
    let status = cluster_status(&addrs).await.expect("status");
    assert!(status.members.iter().all(|m| m.gossip == "alive" && m.lag.is_some()), "{status:?}");
    for node in nodes.iter_mut().filter_map(Option::take) {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_halves_never_form_two_clusters_and_a_leave_is_removed_at_once() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let listeners = listeners(3).await;
    let addrs: Vec<String> = listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
    // A long grace: only a graceful leave can explain a quick removal.
    let config = |id: u64, seeds: &str| Config {
        dead_node_grace_ms: 120_000,
        ..gossip_config(dir.path(), id, &addrs[id as usize - 1], seeds, 3)
    };
    tracing::info!("phase: node 1 alone, nodes 2+3 together: neither half reaches 3");
    let mut listeners = listeners.into_iter();
    let mut nodes: Vec<Option<Node>> = vec![
        Some(Node::start_on(config(1, ""), listeners.next().unwrap()).await.unwrap()),
        Some(Node::start_on(config(2, &addrs[1]), listeners.next().unwrap()).await.unwrap()),
        Some(Node::start_on(config(3, &addrs[1]), listeners.next().unwrap()).await.unwrap()),
    ];
    wait_until("nodes 2 and 3 see each other", || {
        nodes[1].as_ref().unwrap().membership().gossip.view().up().map(|(id, _)| id).eq([2, 3])
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for addr in &addrs {
        let s = node_status(addr).await;
        assert!(!s.initialized, "node {} formed a cluster without 3 nodes: {s:?}", s.id);
    }
    let s = node_status(&addrs[1]).await;
    assert!(s.join_state.contains("waiting for 1 more node"), "{s:?}");
    let (code, readyz) = http_get(&addrs[0], "/readyz").await;
    assert!(code == 503 && readyz.contains("in no cluster yet"), "{code} {readyz}");

    tracing::info!("phase: node 1 restarts with a seed in the other half: one cluster of 3 forms");
    nodes[0].take().unwrap().shutdown().await;
    let listener = rebind(&addrs[0]).await;
    nodes[0] = Some(Node::start_on(config(1, &addrs[1]), listener).await.unwrap());
    wait_until("one leader, 3 voters", || {
        leader_of(&nodes).is_some_and(|l| raft_members(nodes[l as usize - 1].as_ref().unwrap()).0.len() == 3)
    })
    .await;
    let leader = leader_of(&nodes).unwrap();
    let terms: BTreeSet<u64> =
        nodes.iter().flatten().map(|n| n.raft().metrics().borrow().current_term).collect();
    assert_eq!(terms.len(), 1, "every node is in the one cluster's term: {terms:?}");
    for node in nodes.iter().flatten() {
        assert_eq!(raft_members(node).0, BTreeSet::from([1, 2, 3]));
    }
    put_retrying(&addrs[0], "shared/h", "k", "v").await.unwrap().expect("acknowledged");

    tracing::info!(leader, "phase: a follower leaves gracefully; it is removed long before the grace");
    let leaver = (1..=3).find(|id| *id != leader).unwrap();
    let left_at = Instant::now();
    nodes[leaver as usize - 1].take().unwrap().leave().await;
    wait_until("the leaver is out of the Raft membership", || {
        let (voters, learners) = raft_members(nodes[leader as usize - 1].as_ref().unwrap());
        !voters.contains(&leaver) && !learners.contains(&leaver)
    })
    .await;
    let took = left_at.elapsed();
    tracing::info!(?took, "phase: removed after the leave (figure)");
    assert!(took < Duration::from_secs(60), "removal took {took:?}: it waited for the grace period");
    let survivor = (1..=3).find(|id| *id != leader && *id != leaver).unwrap();
    put_retrying(&addrs[survivor as usize - 1], "shared/h", "k2", "v")
        .await
        .unwrap()
        .expect("still writable");
    for node in nodes.iter_mut().filter_map(Option::take) {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_seeds_foreign_clusters_and_garbage_are_refused() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let listeners = listeners(3).await;
    let addrs: Vec<String> = listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
    let mut listeners = listeners.into_iter();
    tracing::info!("phase: a node alone forms its own cluster (no seeds, bootstrap-expect 1)");
    let a = Node::start_on(gossip_config(dir.path(), 1, &addrs[0], "", 1), listeners.next().unwrap())
        .await
        .unwrap();
    wait_until("node 1 leads its own cluster", || a.raft().metrics().borrow().current_leader == Some(1))
        .await;

    tracing::info!("phase: a node whose seed never answers waits, says so, and forms nothing");
    let dead_seed = format!("127.0.0.1:{}", free_port());
    let b = Node::start_on(gossip_config(dir.path(), 2, &addrs[1], &dead_seed, 3), listeners.next().unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, readyz) = http_get(&addrs[1], "/readyz").await;
    assert!(code == 503 && readyz.contains("waiting for seeds"), "{code} {readyz}");
    assert!(!node_status(&addrs[1]).await.initialized);

    tracing::info!("phase: a node of another cluster seeded at node 1 is refused, never merged");
    let foreign = Config { cluster: "other".into(), ..gossip_config(dir.path(), 3, &addrs[2], &addrs[0], 0) };
    let c = Node::start_on(foreign, listeners.next().unwrap()).await.unwrap();
    let members = |addr: String| async move {
        cluster_client(&addr).await.members(pb::MembersRequest {}).await.unwrap().into_inner()
    };
    let deadline = Instant::now() + PATIENCE;
    while members(addrs[0].clone()).await.dropped_foreign_cluster == 0 {
        assert!(Instant::now() < deadline, "no foreign gossip was counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = members(addrs[0].clone()).await;
    assert!(m.members.iter().all(|x| x.id != 3), "the foreign node got in: {m:?}");
    assert!(raft_members(&a).1.is_empty(), "nothing was added to Raft");

    tracing::info!("phase: garbage and oversized datagrams are dropped and counted");
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(b"not gossip at all", &addrs[0]).await.unwrap();
    // A well-framed packet of our cluster whose foca payload is garbage.
    let framed = weft_fabric::membership::packet::frame_plain(
        &members(addrs[0].clone()).await.cluster,
        b"\xff\xff\xff",
    );
    sock.send_to(&framed, &addrs[0]).await.unwrap();
    sock.send_to(&vec![0u8; 4000], &addrs[0]).await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let m = members(addrs[0].clone()).await;
        if m.dropped_malformed >= 2 && m.dropped_oversized >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "drops not counted: {m:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = http_get(&addrs[0], "/metrics").await;
    assert!(metrics.contains("weft_gossip_dropped_oversized_total{node=\"1\"} 1"), "{metrics}");
    put_retrying(&addrs[0], "shared/s", "k", "v").await.unwrap().expect("still serving");
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

async fn rebind(addr: &str) -> TcpListener {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                tracing::info!(error = %e, "port not free yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot rebind {addr}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_join_only_node_with_the_lowest_id_does_not_stall_formation() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let listeners = listeners(4).await;
    let addrs: Vec<String> = listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
    tracing::info!("phase: node 1 only joins; nodes 2-4 expect 3: they must form without node 1");
    let mut nodes: Vec<Option<Node>> = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let expect = if id == 1 { 0 } else { 3 };
        let config = gossip_config(dir.path(), id, &addrs[i], &addrs[1], expect);
        nodes.push(Some(Node::start_on(config, listener).await.expect("node starts")));
    }
    wait_until("voters 2, 3, 4 and node 1 a learner", || {
        leader_of(&nodes).is_some_and(|l| {
            raft_members(nodes[l as usize - 1].as_ref().unwrap())
                == (BTreeSet::from([2, 3, 4]), BTreeSet::from([1]))
        })
    })
    .await;
    for node in nodes.iter_mut().filter_map(Option::take) {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_clusters_of_one_name_never_merge() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let listeners = listeners(3).await;
    let addrs: Vec<String> = listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
    let mut listeners = listeners.into_iter();
    tracing::info!("phase: nodes 1 and 2 each form a cluster of one, with the same name");
    let a = Node::start_on(gossip_config(dir.path(), 1, &addrs[0], "", 1), listeners.next().unwrap())
        .await
        .unwrap();
    let b = Node::start_on(gossip_config(dir.path(), 2, &addrs[1], "", 1), listeners.next().unwrap())
        .await
        .unwrap();
    wait_until("each leads itself and has recorded its instance id", || {
        [&a, &b].iter().all(|n| {
            n.raft().metrics().borrow().current_leader == Some(n.id()) && n.applied().cluster_uid() != 0
        })
    })
    .await;
    assert_ne!(a.applied().cluster_uid(), b.applied().cluster_uid());
    put_retrying(&addrs[0], "shared/t", "k", "from-a").await.unwrap().expect("acknowledged");
    put_retrying(&addrs[1], "shared/t", "k", "from-b").await.unwrap().expect("acknowledged");

    tracing::info!("phase: node 3 joins with both as seeds: gossip now connects the two clusters");
    let c = Node::start_on(
        gossip_config(dir.path(), 3, &addrs[2], &format!("{},{}", addrs[0], addrs[1]), 0),
        listeners.next().unwrap(),
    )
    .await
    .unwrap();
    wait_until("1 and 2 see each other through gossip", || {
        a.membership().gossip.view().members.get(&2).is_some_and(|m| m.health.is_up())
            && b.membership().gossip.view().members.get(&1).is_some_and(|m| m.health.is_up())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let all = |n: &Node| {
        let (v, l) = raft_members(n);
        v.union(&l).copied().collect::<BTreeSet<u64>>()
    };
    assert!(!all(&a).contains(&2), "cluster 1 took in node 2: {:?}", raft_members(&a));
    assert!(!all(&b).contains(&1), "cluster 2 took in node 1: {:?}", raft_members(&b));
    assert!(
        c.raft().metrics().borrow().running_state.is_ok(),
        "node 3 was driven by both clusters and failed"
    );
    let in_a = all(&a).contains(&3)
        && a.raft()
            .metrics()
            .borrow()
            .replication
            .as_ref()
            .is_some_and(|r| r.get(&3).is_some_and(Option::is_some));
    let in_b = all(&b).contains(&3)
        && b.raft()
            .metrics()
            .borrow()
            .replication
            .as_ref()
            .is_some_and(|r| r.get(&3).is_some_and(Option::is_some));
    assert!(!(in_a && in_b), "node 3 took replication from both clusters");
    assert_eq!(get(&addrs[0], "shared/t", "k").await.as_deref(), Some("from-a"));
    assert_eq!(get(&addrs[1], "shared/t", "k").await.as_deref(), Some("from-b"));
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

//! Nodes that come back at another address with the same data dir (`weft dev --port P2` on a
//! data dir made with another port): the cluster follows them.

use std::path::Path;
use std::time::{Duration, Instant};

use weft_fabric::testing::free_addrs;
use weft_proto::fabric::v1 as pb;

use crate::support::*;

/// `weft node` of static node `id` at `addrs[id - 1]`, listing every address as a member, as
/// `weft dev` starts its nodes.
fn static_node(dir: &Path, cluster: &str, id: usize, addrs: &[String]) -> NodeProcess {
    let members =
        addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect::<Vec<_>>().join(",");
    let mut args = vec![
        "--listen".to_owned(),
        addrs[id - 1].clone(),
        "--data-dir".to_owned(),
        dir.join(format!("n{id}")).display().to_string(),
        "--node-id".to_owned(),
        id.to_string(),
        "--cluster".to_owned(),
        cluster.to_owned(),
        "--gossip-preset".to_owned(),
        "test".to_owned(),
    ];
    if addrs.len() > 1 {
        args.extend(["--initial-members".to_owned(), members]);
    }
    spawn_node(args, dir.join(format!("n{id}.log")))
}

/// Every member of `status` is listed at the address `addrs` gives its id.
fn at_addresses(status: &pb::ClusterStatus, addrs: &[String]) -> bool {
    status.members.len() == addrs.len()
        && status.members.iter().all(|m| addrs.get(m.id as usize - 1).is_some_and(|a| *a == m.address))
}

/// A put through `addr` and a linearizable read of it through `addr`, retried until both work
/// or [`PATIENCE`] passes.
async fn write_and_read_through(addr: &str, key: &str) {
    let deadline = Instant::now() + PATIENCE;
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut c = client(addr).await;
        match c.put(put_req("shared/moved", key, key)).await {
            Ok(_) => match c.get(get_req("shared/moved", key)).await {
                Ok(r) if r.get_ref().entry.as_ref().is_some_and(|e| e.value == key.as_bytes()) => return,
                Ok(r) => last = format!("read back {:?}", r.into_inner().entry),
                Err(s) => last = format!("read: {s}"),
            },
            Err(s) => last = format!("write: {s}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no write and read through {addr} within {PATIENCE:?}; last error: {last}");
}

async fn stop_all(nodes: &mut [NodeProcess]) {
    for node in nodes {
        node.stop(Duration::from_secs(10)).await.expect("a clean stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whole_cluster_restarted_on_new_ports_keeps_working() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cluster = "moved-all";
    let old = free_addrs(3).unwrap();
    tracing::info!(?old, "phase: three static nodes; write through each");
    let mut nodes: Vec<NodeProcess> = (1..=3).map(|id| static_node(dir.path(), cluster, id, &old)).collect();
    wait_for_leader_at(&old).await;
    for (i, addr) in old.iter().enumerate() {
        put_retrying(addr, "shared/moved", &format!("before{i}"), "old")
            .await
            .unwrap()
            .expect("acknowledged");
    }
    stop_all(&mut nodes).await;

    let new = free_addrs(3).unwrap();
    tracing::info!(?new, "phase: every node restarts on a new port with its data dir");
    let mut nodes: Vec<NodeProcess> = (1..=3).map(|id| static_node(dir.path(), cluster, id, &new)).collect();
    for (i, addr) in new.iter().enumerate() {
        write_and_read_through(addr, &format!("after{i}")).await;
    }
    tracing::info!("phase: the old data is there, read through every node");
    for addr in &new {
        for i in 0..3 {
            assert_eq!(
                get(addr, "shared/moved", &format!("before{i}")).await.as_deref(),
                Some("old"),
                "via {addr}"
            );
        }
    }
    tracing::info!("phase: the membership lists the new addresses");
    let status = wait_for_status(&new, PATIENCE, "the new addresses in the membership", |s| {
        s.leader_id != 0 && at_addresses(s, &new)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.members.iter().all(|m| m.reachable), "{status:?}");
    let (code, out, err) = weft(&new[0], &["status"]).await;
    assert_eq!(code, 0, "{err}");
    for addr in &new {
        assert!(out.contains(addr.as_str()), "weft status does not show {addr}:\n{out}");
    }
    for addr in &old {
        assert!(!out.contains(addr.as_str()), "weft status still shows {addr}:\n{out}");
    }
    stop_all(&mut nodes).await;
}

/// `weft dev --port P+1` on a data dir made with `--port P`: each node takes the next node's
/// old address, so a message sent to a stale address reaches the wrong node, which must refuse
/// it rather than vote or acknowledge entries in the other node's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_restarted_on_ports_shifted_by_one_keeps_working() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cluster = "moved-shift";
    let old = free_addrs(3).unwrap();
    let mut nodes: Vec<NodeProcess> = (1..=3).map(|id| static_node(dir.path(), cluster, id, &old)).collect();
    wait_for_leader_at(&old).await;
    put_retrying(&old[0], "shared/moved", "before", "old").await.unwrap().expect("acknowledged");
    stop_all(&mut nodes).await;

    let mut new = old[1..].to_vec();
    new.extend(free_addrs(1).unwrap());
    tracing::info!(?old, ?new, "phase: node N restarts at node N+1's old address");
    let mut nodes: Vec<NodeProcess> = (1..=3).map(|id| static_node(dir.path(), cluster, id, &new)).collect();
    for (i, addr) in new.iter().enumerate() {
        write_and_read_through(addr, &format!("after{i}")).await;
        assert_eq!(get(addr, "shared/moved", "before").await.as_deref(), Some("old"), "via {addr}");
    }
    wait_for_status(&new, PATIENCE, "the new addresses in the membership", |s| {
        s.leader_id != 0 && at_addresses(s, &new)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    stop_all(&mut nodes).await;
}

/// The wire check behind the test above: a Raft message names the node it is for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_raft_message_meant_for_another_node_is_refused() {
    use weft_proto::cluster::v1::RaftPayload;
    use weft_proto::cluster::v1::raft_client::RaftClient;
    init_tracing();
    let cluster = Cluster::start(1, |_| {}).await;
    let mut raft = RaftClient::new(channel(&cluster.addrs[0]).await);
    let config_cluster = status_at_cluster(&cluster.addrs[0]).await;
    let message = |target_id| RaftPayload {
        format: 1,
        payload: b"not a vote".to_vec(),
        cluster: config_cluster.clone(),
        cluster_uid: 0,
        target_id,
    };
    let refused = raft.vote(message(2)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("this is node 1, not node 2"), "{refused:?}");
    // Meant for this node (or for any, from an older sender), it passes the check and only
    // then fails on the payload.
    for target in [1, 0] {
        let decoded = raft.vote(message(target)).await.unwrap_err();
        assert_eq!(decoded.code(), tonic::Code::InvalidArgument, "{decoded:?}");
    }
    cluster.shutdown().await;
}

async fn status_at_cluster(addr: &str) -> String {
    cluster_status(&[addr.to_owned()]).await.expect("status").cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_restarted_on_a_new_port_gets_its_new_address_in_the_membership() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cluster = "moved-one";
    let mut addrs = free_addrs(3).unwrap();
    let mut nodes: Vec<NodeProcess> =
        (1..=3).map(|id| static_node(dir.path(), cluster, id, &addrs)).collect();
    let leader = wait_for_leader_at(&addrs).await as usize;
    put_retrying(&addrs[0], "shared/moved", "before", "old").await.unwrap().expect("acknowledged");

    // A follower moves (the leader moving is the whole-cluster test's case too).
    let moved = if leader == 3 { 2 } else { 3 };
    tracing::info!(moved, "phase: stop a follower, restart it on a new port; the others stay up");
    nodes[moved - 1].stop(Duration::from_secs(10)).await.expect("a clean stop");
    let old_addr = addrs[moved - 1].clone();
    addrs[moved - 1] = free_addrs(1).unwrap().remove(0);
    nodes[moved - 1] = static_node(dir.path(), cluster, moved, &addrs);

    let status = wait_for_status(&addrs, PATIENCE, "the moved node's new address in the membership", |s| {
        s.leader_id != 0 && at_addresses(s, &addrs)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(!status.members.iter().any(|m| m.address == old_addr), "{status:?}");
    tracing::info!("phase: writes and reads through the moved node work");
    write_and_read_through(&addrs[moved - 1], "after").await;
    assert_eq!(get(&addrs[moved - 1], "shared/moved", "before").await.as_deref(), Some("old"));
    stop_all(&mut nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_node_restarted_on_a_new_port_keeps_working() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cluster = "moved-single";
    let old = free_addrs(1).unwrap();
    let mut node = static_node(dir.path(), cluster, 1, &old);
    put_retrying(&old[0], "shared/moved", "before", "old").await.unwrap().expect("acknowledged");
    node.stop(Duration::from_secs(10)).await.expect("a clean stop");

    let new = free_addrs(1).unwrap();
    tracing::info!(?new, "phase: the lone node restarts on a new port");
    let mut node = static_node(dir.path(), cluster, 1, &new);
    write_and_read_through(&new[0], "after").await;
    assert_eq!(get(&new[0], "shared/moved", "before").await.as_deref(), Some("old"));
    wait_for_status(&new, PATIENCE, "the new address in the membership", |s| at_addresses(s, &new))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    node.stop(Duration::from_secs(10)).await.expect("a clean stop");
}

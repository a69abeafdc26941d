//! Authenticated gossip: clusters that form with a gossip key (MAC or encrypted), nodes without
//! the key that never get in, and a key rotation while the cluster runs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use weft_fabric::membership::keys::{Keys, generate};
use weft_fabric::{Config, Node};
use weft_proto::fabric::v1 as pb;

use crate::membership::{gossip_config, leader_of, raft_members, wait_until};
use crate::support::*;
use crate::writes::http_get;

/// Probe periods of the `test` preset a refused node is given to get in, after its packets
/// are first seen dropped: several suspicion timeouts' worth.
const REFUSED_FOR: Duration = Duration::from_millis(200 * 15);

/// A temp dir for the nodes' data and key files, and `n` bound ports with their addresses.
async fn setup(n: usize) -> (tempfile::TempDir, Vec<String>, std::vec::IntoIter<TcpListener>) {
    init_tracing();
    let ls = listeners(n).await;
    let addrs = ls.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
    (tempfile::tempdir().unwrap(), addrs, ls.into_iter())
}

async fn stop(nodes: Vec<Option<Node>>) {
    for node in nodes.into_iter().flatten() {
        node.shutdown().await;
    }
}

fn key_id(key: &str) -> String {
    Keys::parse_list(key).unwrap().sender().id()
}

/// Writes `keys` (sending one first) to node `id`'s key file; returns the file.
pub(crate) fn write_keys(root: &Path, id: u64, keys: &[&str]) -> PathBuf {
    let file = root.join(format!("node-{id}.keys"));
    // Written whole and renamed in place, as an operator's tooling should.
    let tmp = root.join(format!("node-{id}.keys.tmp"));
    std::fs::write(&tmp, format!("# node {id}\n{}\n", keys.join("\n"))).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    file
}

async fn members(addr: &str) -> pb::MembersReply {
    cluster_client(addr).await.members(pb::MembersRequest {}).await.expect("members").into_inner()
}

/// Node ids gossip on `node` knows of, itself included.
pub(crate) fn gossip_ids(node: &Node) -> BTreeSet<u64> {
    node.membership().gossip.view().members.keys().copied().collect()
}

pub(crate) fn in_raft(node: &Node, id: u64) -> bool {
    let (voters, learners) = raft_members(node);
    voters.contains(&id) || learners.contains(&id)
}

/// Starts nodes 1..=n of a gossip cluster expecting `n`, seeded at node 1, each configured by
/// `configure`.
async fn start_nodes(
    root: &Path,
    addrs: &[String],
    listeners: &mut impl Iterator<Item = TcpListener>,
    n: usize,
    configure: impl Fn(u64, Config) -> Config,
) -> Vec<Option<Node>> {
    let mut nodes = Vec::new();
    for id in 1..=n as u64 {
        let config = configure(id, gossip_config(root, id, &addrs[id as usize - 1], &addrs[0], n as u32));
        nodes.push(Some(Node::start_on(config, listeners.next().unwrap()).await.expect("node starts")));
    }
    nodes
}

async fn wait_for_voters(nodes: &[Option<Node>], voters: &[u64]) {
    let expected: BTreeSet<u64> = voters.iter().copied().collect();
    wait_until("the voters formed with one leader", || {
        leader_of(nodes).is_some_and(|l| raft_members(nodes[l as usize - 1].as_ref().unwrap()).0 == expected)
    })
    .await;
}

/// Waits until node `refused_by` has dropped some of `reason` and then `REFUSED_FOR` more,
/// and asserts `outsider` is in no member's gossip view or Raft membership.
async fn assert_never_joins(nodes: &[Option<Node>], addrs: &[String], outsider: &Node, reason: &str) {
    let id = outsider.id();
    let dropped = |m: &pb::MembersReply| match reason {
        "bad_mac" => m.dropped_bad_mac,
        "unauthenticated" => m.dropped_unauthenticated,
        other => panic!("no counter for {other}"),
    };
    let deadline = std::time::Instant::now() + PATIENCE;
    while dropped(&members(&addrs[0]).await) < 3 {
        assert!(std::time::Instant::now() < deadline, "node 1 counted no {reason} drops from node {id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(REFUSED_FOR).await;
    for node in nodes.iter().flatten() {
        assert!(!gossip_ids(node).contains(&id), "node {} sees node {id} in gossip", node.id());
        assert!(!in_raft(node, id), "node {id} got into node {}'s Raft membership", node.id());
    }
    assert_eq!(gossip_ids(outsider), BTreeSet::from([id]), "node {id} heard from nobody");
    let (_, metrics) = http_get(&addrs[0], "/metrics").await;
    let line = format!("weft_gossip_dropped_{reason}_total{{node=\"1\"}} ");
    let counted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no {line} in /metrics"))
        .parse()
        .unwrap();
    assert!(counted >= 3, "{line}{counted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_with_a_gossip_key_forms_and_nodes_without_it_never_join() {
    let (dir, addrs, mut ls) = setup(5).await;
    let root = dir.path();
    let key = generate();
    tracing::info!("phase: three nodes sharing a gossip key form a cluster by gossip");
    let nodes = start_nodes(root, &addrs, &mut ls, 3, |id, c| Config {
        gossip_key_file: Some(write_keys(root, id, &[&key])),
        ..c
    })
    .await;
    wait_for_voters(&nodes, &[1, 2, 3]).await;
    put_retrying(&addrs[2], "shared/k", "k", "v").await.unwrap().expect("acknowledged");
    let m = members(&addrs[0]).await;
    assert_eq!((m.gossip_sends.as_str(), m.gossip_key_ids.clone()), ("mac", vec![key_id(&key)]));
    assert!(m.dropped_bad_mac == 0 && m.dropped_unauthenticated == 0, "{m:?}");

    tracing::info!("phase: node 4, same cluster name, another key: its packets are dropped, it never joins");
    let wrong = generate();
    let config = Config {
        gossip_key_file: Some(write_keys(root, 4, &[&wrong])),
        ..gossip_config(root, 4, &addrs[3], &addrs[0], 0)
    };
    let outsider = Node::start_on(config, ls.next().unwrap()).await.unwrap();
    assert_never_joins(&nodes, &addrs, &outsider, "bad_mac").await;
    outsider.shutdown().await;

    tracing::info!("phase: node 5 without a key (plain gossip, as before keys): dropped, never joins");
    let keyless =
        Node::start_on(gossip_config(root, 5, &addrs[4], &addrs[0], 0), ls.next().unwrap()).await.unwrap();
    assert_never_joins(&nodes, &addrs, &keyless, "unauthenticated").await;
    keyless.shutdown().await;

    put_retrying(&addrs[0], "shared/k", "k2", "v").await.unwrap().expect("the cluster still serves");
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_encrypted_cluster_forms_by_gossip() {
    let (dir, addrs, mut ls) = setup(3).await;
    let root = dir.path();
    let key = generate();
    tracing::info!("phase: three nodes with gossip encryption form a cluster by gossip");
    let nodes = start_nodes(root, &addrs, &mut ls, 3, |id, c| Config {
        gossip_key_file: Some(write_keys(root, id, &[&key])),
        gossip_encrypt: true,
        ..c
    })
    .await;
    wait_for_voters(&nodes, &[1, 2, 3]).await;
    put_retrying(&addrs[1], "shared/e", "k", "v").await.unwrap().expect("acknowledged");
    for addr in &addrs {
        assert_eq!(get(addr, "shared/e", "k").await.as_deref(), Some("v"));
        let m = members(addr).await;
        assert_eq!(m.gossip_sends, "encrypted");
        assert_eq!(m.members.iter().filter(|x| x.state == "alive").count(), 3, "{m:?}");
        assert!(m.dropped_bad_mac == 0 && m.dropped_malformed == 0, "{m:?}");
    }
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gossip_keys_rotate_while_the_cluster_runs() {
    let (dir, addrs, mut ls) = setup(5).await;
    let root = dir.path();
    let (k1, k2) = (generate(), generate());
    let (id1, id2) = (key_id(&k1), key_id(&k2));
    tracing::info!("phase: three nodes with [k1] form a cluster");
    let mut nodes = start_nodes(root, &addrs, &mut ls, 3, |id, c| Config {
        gossip_key_file: Some(write_keys(root, id, &[&k1])),
        ..c
    })
    .await;
    wait_for_voters(&nodes, &[1, 2, 3]).await;
    let all_hold = |nodes: &[Option<Node>], ids: Vec<String>| {
        nodes.iter().flatten().all(|n| n.membership().gossip.auth().key_ids == ids)
    };

    tracing::info!("phase: step 1, every node gets [k1, k2] (k2 accepted, k1 still sends)");
    for id in 1..=3 {
        write_keys(root, id, &[&k1, &k2]);
    }
    wait_until("every node reloaded [k1, k2]", || all_hold(&nodes, vec![id1.clone(), id2.clone()])).await;
    tracing::info!("phase: each node's reload is in the audit trail, naming key ids only");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let records = crate::audit::records(&addrs[0]).await;
        let reloaded: Vec<u64> = records
            .iter()
            .filter(|r| r["operation"] == "config.reload" && r["outcome"] == "ok")
            .filter(|r| {
                r["target"].as_str().is_some_and(|t| t.contains("gossip key file") && t.contains(&id2))
            })
            .filter_map(|r| r["node"].as_u64())
            .collect();
        assert!(
            !records.iter().any(|r| r.to_string().contains(&k2)),
            "a key in the audit trail: {records:#?}"
        );
        if (1..=3).all(|id| reloaded.contains(&id)) {
            break;
        }
        assert!(Instant::now() < deadline, "reloads of nodes 1-3 not audited: {records:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    tracing::info!("phase: node 4 joins with [k2, k1]: it sends with k2, the others accept it");
    let config = Config {
        gossip_key_file: Some(write_keys(root, 4, &[&k2, &k1])),
        ..gossip_config(root, 4, &addrs[3], &addrs[0], 0)
    };
    nodes.push(Some(Node::start_on(config, ls.next().unwrap()).await.unwrap()));
    wait_until("node 4 is a learner", || {
        leader_of(&nodes)
            .is_some_and(|l| raft_members(nodes[l as usize - 1].as_ref().unwrap()).1.contains(&4))
    })
    .await;
    put_retrying(&addrs[3], "shared/r", "k", "through-4").await.unwrap().expect("acknowledged");
    assert_eq!(get(&addrs[0], "shared/r", "k").await.as_deref(), Some("through-4"));

    tracing::info!("phase: step 2, every node moves k2 first; step 3, every node drops k1");
    for id in 1..=3 {
        write_keys(root, id, &[&k2, &k1]);
    }
    wait_until("every node sends with k2", || all_hold(&nodes, vec![id2.clone(), id1.clone()])).await;
    for id in 1..=4 {
        write_keys(root, id, &[&k2]);
    }
    wait_until("every node holds only k2", || all_hold(&nodes, vec![id2.clone()])).await;
    tokio::time::sleep(REFUSED_FOR).await;
    for (i, addr) in addrs.iter().take(4).enumerate() {
        let m = members(addr).await;
        // Each step keeps every pair of nodes able to verify each other: nothing is dropped.
        assert_eq!(m.dropped_bad_mac, 0, "node {} dropped packets during the rotation: {m:?}", i + 1);
        assert_eq!(m.members.iter().filter(|x| x.state == "alive").count(), 4, "{m:?}");
    }
    put_retrying(&addrs[3], "shared/r", "k", "after").await.unwrap().expect("acknowledged");

    tracing::info!("phase: node 5 with only the retired k1 never joins");
    let config = Config {
        gossip_key_file: Some(write_keys(root, 5, &[&k1])),
        ..gossip_config(root, 5, &addrs[4], &addrs[0], 0)
    };
    let stale = Node::start_on(config, ls.next().unwrap()).await.unwrap();
    assert_never_joins(&nodes, &addrs, &stale, "bad_mac").await;
    stale.shutdown().await;
    stop(nodes).await;
}

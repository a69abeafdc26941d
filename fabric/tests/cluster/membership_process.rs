//! Gossip membership with the built `weft` binary as processes: `kill -9` a voter.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use weft_proto::fabric::v1 as pb;

use crate::support::*;

/// Waits until `check` accepts the cluster status some live node reports.
async fn wait_status(
    addrs: &[String],
    what: &str,
    check: impl Fn(&pb::ClusterStatus) -> bool,
) -> pb::ClusterStatus {
    wait_for_status(addrs, PATIENCE, what, check).await.unwrap_or_else(|e| panic!("{e}"))
}

fn voters(s: &pb::ClusterStatus) -> BTreeSet<u64> {
    s.members.iter().filter(|m| m.voter).map(|m| m.id).collect()
}

fn learners(s: &pb::ClusterStatus) -> BTreeSet<u64> {
    s.members.iter().filter(|m| !m.voter && m.role != "not a member").map(|m| m.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_voter_is_declared_down_replaced_and_rejoins_as_learner() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    tracing::info!("phase: five weft processes with generated ids, one seed, bootstrap-expect 3");
    let mut procs = spawn_cluster(dir.path(), 5, |o| {
        o.membership(Membership::Gossip { bootstrap_expect: 3 }).args([
            "--cluster",
            "gossip9",
            "--gossip-preset",
            "test",
            "--dead-node-grace-ms",
            "2000",
        ])
    });
    let addrs = procs.addrs().to_vec();
    let formed = wait_status(&addrs, "3 voters + 2 learners", |s| {
        s.leader_id != 0
            && voters(s).len() == 3
            && learners(s).len() == 2
            && s.members.iter().all(|m| m.reachable)
    })
    .await;
    let index_of: BTreeMap<u64, usize> = formed
        .members
        .iter()
        .map(|m| {
            (m.id, addrs.iter().position(|a| *a == m.address).expect("a member at one of our addresses"))
        })
        .collect();
    let leader = formed.leader_id;
    let victim = *voters(&formed).iter().find(|id| **id != leader).unwrap();
    let old_learners = learners(&formed);
    tracing::info!(
        leader,
        victim,
        ?old_learners,
        "phase: formed; writers on every node, then kill -9 a voter"
    );
    let writers = Writers::start(&addrs, "shared/g9");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = Instant::now();
    procs.nodes_mut()[index_of[&victim]].kill9();
    let live: Vec<String> =
        addrs.iter().enumerate().filter(|(i, _)| *i != index_of[&victim]).map(|(_, a)| a.clone()).collect();

    let down = wait_status(&live, "the victim is declared down", |s| {
        s.members.iter().any(|m| m.id == victim && m.gossip == "down")
    })
    .await;
    let declared_down = killed_at.elapsed();
    let replaced = wait_status(&live, "the victim is replaced by a learner", |s| {
        let v = voters(s);
        v.len() == 3
            && !v.contains(&victim)
            && v.intersection(&old_learners).count() == 1
            && !s.members.iter().any(|m| m.id == victim && m.role != "not a member")
    })
    .await;
    let replaced_after = killed_at.elapsed();
    tracing::info!(?declared_down, ?replaced_after, leader = down.leader_id, voters = ?voters(&replaced),
        "phase: declared down and replaced (figures)");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = writers.stop().await;
    assert!(acked.iter().any(|(_, at)| *at > killed_at + replaced_after), "writes stopped working");
    tracing::info!(acked = acked.len(), "phase: every acknowledged write is readable");
    let mut c = client(&live[0]).await;
    for (key, _) in &acked {
        let got = c.get(get_req("shared/g9", key)).await.expect("linearizable read").into_inner();
        assert!(got.entry.is_some(), "acknowledged write {key} lost");
    }

    tracing::info!("phase: the victim restarts on its data dir and rejoins as a learner");
    let term_before = cluster_status(&live).await.expect("status").term;
    procs.nodes_mut()[index_of[&victim]].restart().unwrap();
    let back = wait_status(&addrs, "the victim is back as a learner", |s| {
        s.members.iter().any(|m| m.id == victim && !m.voter && m.role == "learner" && m.gossip == "alive")
    })
    .await;
    assert_eq!(voters(&back).len(), 3, "{back:?}");
    // Removed while away, its return must not set off elections (its higher term would force
    // the leader to step down). Whether it would stand depends on a race: the leader re-adding
    // it against its old leader's lease running out unheard. When the guard trusted the leader
    // read back from disk, a CI run lost that race (term 1 -> 3); the rule that closes it is
    // pinned by election_guard's unit tests. One unrelated election on a busy machine is
    // tolerated; a node standing again and again is not.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = cluster_status(&live).await.expect("status");
    tracing::info!(term_before, term_after = after.term, "phase: terms around the rejoin");
    assert!(
        after.term <= term_before + 1,
        "the rejoin disrupted the cluster: term {term_before} -> {}",
        after.term
    );
    drop(procs);
}

//! The built `weft` binary as separate processes: `kill -9` the leader.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill9_loses_no_acknowledged_write() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let addrs: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let members = members_of(&addrs);
    let mut procs: Vec<Process> = (1..=3u64)
        .map(|id| {
            let args = vec![
                "--node-id".into(),
                id.to_string(),
                "--cluster".into(),
                "kill9".into(),
                "--listen".into(),
                addrs[id as usize - 1].clone(),
                "--initial-members".into(),
                members.clone(),
                "--data-dir".into(),
                dir.path().join(format!("n{id}")).display().to_string(),
            ];
            Process::spawn(args, dir.path().join(format!("n{id}.log"))).unwrap()
        })
        .collect();
    let leader = wait_for_leader_at(&addrs).await;
    tracing::info!(leader, "phase: three weft processes up; writers on every node");
    let writers = Writers::start(&addrs, "shared/k9");
    tokio::time::sleep(Duration::from_millis(800)).await;

    tracing::info!(leader, "phase: kill -9 the leader");
    let killed_at = Instant::now();
    procs[leader as usize - 1].kill9();
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
    procs[leader as usize - 1].start().unwrap();
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

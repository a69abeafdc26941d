//! Failover: kill -9 of the active scaler with a standby running: the standby takes the
//! lease, adopts the processes (same pids), starts no duplicates, and max is never exceeded.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_adopts_the_replicas_of_a_killed_scaler() {
    init_tracing();
    let fabric = Fabric::start().await;
    let group = Group::new("failover");
    let agent =
        "max_replicas = 3\nbacklog_per_replica = 1\ncapacity = 1\nidle_ms = 600000\ndrain_grace_ms = 3000";
    let config = config_head(&fabric, &group) + &scaled_agent("work", agent);
    let mut a = start_scaler(&fabric, "a", &config);
    let client = fabric.client();
    let first = wait_status(&client, &group, "a is active", |s| s["agents"]["work"].is_object()).await;
    let holder_a = first["holder"].as_str().unwrap().to_owned();
    let _b = start_scaler(&fabric, "b", &config);

    tracing::info!("phase: a backlog brings the agent to max under scaler a");
    let stop = CancellationToken::new();
    let sampler = sample_sessions(client.clone(), "work", "work-", stop.clone());
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let client = client.clone();
        calls.spawn(async move {
            client.request("work", "sleep").args(&8000u64).timeout(PATIENCE).call::<u64>().await
        });
    }
    wait_status(&client, &group, "three running", |s| field(s, "work", "running") == 3).await;
    let pids = group.pids();
    assert_eq!(pids.len(), 3);

    tracing::info!("phase: kill -9 scaler a");
    a.kill9();
    let taken = wait_status(&client, &group, "b took over", |s| {
        s["holder"].as_str() != Some(holder_a.as_str()) && field(s, "work", "running") == 3
    })
    .await;
    assert!(taken["token"].as_u64() > first["token"].as_u64(), "a newer lease: {taken:#}");
    assert_eq!(group.pids(), pids, "the same processes, adopted");

    tracing::info!("phase: no duplicates while the calls finish");
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let running = group.pids();
        assert!(running.len() <= 3, "above max: {running:?}");
        assert!(running.iter().all(|p| pids.contains(p)), "a new process: {running:?} vs {pids:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while let Some(done) = calls.join_next().await {
        assert_eq!(done.unwrap().expect("the call returns"), 8000);
    }
    stop.cancel();
    let most = sampler.await.unwrap();
    assert!(most <= 3, "at most max sessions at once: {most}");
    let log = std::fs::read_to_string(fabric.root().join("b.log")).unwrap();
    assert!(log.contains("adopted"), "b's log says it adopted");
}

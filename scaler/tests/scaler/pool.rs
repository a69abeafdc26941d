//! Pool mode: scale from zero on a call, up to max under a backlog (never beyond), back to
//! min after the idle time.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_an_agent_at_zero_starts_a_replica_and_returns_its_result() {
    init_tracing();
    let fabric = Fabric::start().await;
    let group = Group::new("zero");
    let metrics_addr = weft_fabric::testing::free_addrs(1).unwrap().remove(0);
    // An engine address where none listens: a scaler of processes must not need Docker (CI
    // once ran these tests with no engine started, and adoption waited for it forever).
    let no_engine = fabric.root().join("no-docker.sock");
    let config = config_head(&fabric, &group)
        + &format!("metrics_addr = \"{metrics_addr}\"\n")
        + &format!("\n[docker]\nhost = \"unix://{}\"\n", no_engine.display())
        + &scaled_agent("work", "max_replicas = 2\nidle_ms = 600000");
    let _scaler = start_scaler(&fabric, "scaler", &config);
    let client = fabric.client();
    tracing::info!("phase: the scaler is active, nothing runs");
    wait_status(&client, &group, "the scaler publishes", |s| s["agents"]["work"].is_object()).await;
    assert!(group.running().is_empty());

    tracing::info!("phase: a call starts a replica and gets its result");
    let started = Instant::now();
    let who: Value =
        client.request("work", "whoami").timeout(PATIENCE).call().await.expect("the call returns");
    tracing::info!(cold_start_ms = started.elapsed().as_millis() as u64, "call to an agent at zero returned");
    let session = who["session"].as_str().expect("a session name").to_owned();
    let running = group.running();
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(running[0].replica, session, "the session is named after the replica");
    assert_eq!(running[0].handle.split('@').next(), Some(who["pid"].to_string().as_str()));
    let echoed: Value = client.request("work", "echo").args(&json!({"n": 1})).call().await.unwrap();
    assert_eq!(echoed, json!({"n": 1}));

    let s = wait_status(&client, &group, "running 1", |s| field(s, "work", "running") == 1).await;
    assert_eq!(field(&s, "work", "desired"), 1);
    assert_eq!(group.running().len(), 1, "one call, one replica");

    tracing::info!("phase: the metrics say so");
    let metrics = http_get(&metrics_addr, "/metrics").await;
    for line in [
        "weft_scaler_active 1",
        "weft_scaler_starts_total{agent=\"work\"} 1",
        "weft_scaler_replicas{agent=\"work\",phase=\"running\"} 1",
        "weft_scaler_cold_start_seconds_count{agent=\"work\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}

/// A plain HTTP/1.1 GET; the body.
async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the metrics address");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_scales_up_to_max_never_beyond_and_idle_scales_back_to_min() {
    init_tracing();
    let fabric = Fabric::start().await;
    let group = Group::new("backlog");
    let agent = "min_replicas = 1\nmax_replicas = 3\nbacklog_per_replica = 2\ncapacity = 2\nidle_ms = 2000\ndrain_grace_ms = 3000";
    let config = config_head(&fabric, &group) + &scaled_agent("work", agent);
    let _scaler = start_scaler(&fabric, "scaler", &config);
    let client = fabric.client();
    tracing::info!("phase: min replicas run without demand");
    wait_status(&client, &group, "min running", |s| field(s, "work", "running") == 1).await;
    assert_eq!(group.running().len(), 1);

    tracing::info!("phase: a backlog of 12 two-second calls");
    let stop = CancellationToken::new();
    let sampler = sample_sessions(client.clone(), "work", "work-", stop.clone());
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let client = client.clone();
        calls.spawn(async move {
            client.request("work", "sleep").args(&2000u64).timeout(PATIENCE).call::<u64>().await
        });
    }
    let mut most_processes = 0;
    let deadline = Instant::now() + PATIENCE;
    while !calls.is_empty() {
        most_processes = most_processes.max(group.running().len());
        assert!(Instant::now() < deadline, "the calls did not finish");
        tokio::select! {
            Some(done) = calls.join_next() => assert_eq!(done.unwrap().expect("the call returns"), 2000),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    stop.cancel();
    let most_sessions = sampler.await.unwrap();
    assert_eq!(most_processes, 3, "scaled up to max, never beyond (processes)");
    assert!(most_sessions <= 3, "at most max sessions at once: {most_sessions}");
    assert_eq!(most_sessions, 3, "the demand saw max sessions");

    tracing::info!("phase: idle, back to min");
    wait_status(&client, &group, "back to min", |s| {
        field(s, "work", "desired") == 1
            && field(s, "work", "running") == 1
            && field(s, "work", "stopping") == 0
    })
    .await;
    eventually("one process left", || group.running().len() == 1).await;
}

//! The ping-pong example against a real node: two agents calling each other.

use std::time::Duration;

use weft_fabric::testing::LocalCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rally_goes_back_and_forth() {
    let dir = tempfile::tempdir().unwrap();
    let c = LocalCluster::start(dir.path(), 1, |_| {}).await.expect("a node");
    c.wait_for_leader(Duration::from_secs(30)).await.expect("a leader");
    let endpoints = c.endpoints().join(",");
    let mut agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_ping-pong"))
        .args(["--endpoints", &endpoints, "agent"])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_ping-pong"))
            .args(["--endpoints", &endpoints, "play", "--rounds", "6"])
            .output(),
    )
    .await
    .expect("the rally ends")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.trim(), "ping pong ping pong ping pong ping");
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_ping-pong"))
        .args(["--endpoints", &endpoints, "play", "--rounds", "50"])
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("at most 12 rounds"));
    let _ = agent.kill().await;
    c.shutdown().await;
}

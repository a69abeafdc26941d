//! The fan-out example against real nodes: one job, two agent processes sharing its
//! children.

use std::time::Duration;

use weft_fabric::testing::LocalCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_gathers_every_child_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = LocalCluster::start(dir.path(), 3, |_| {}).await.expect("nodes");
    c.wait_for_leader(Duration::from_secs(30)).await.expect("a leader");
    let endpoints = c.endpoints().join(",");
    let agent = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_fan-out"))
            .args(["--endpoints", &endpoints, "agent", "--capacity", "32"])
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (agent(), agent());
    let n: u64 = 300;
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_fan-out"))
            .args(["--endpoints", &endpoints, "run", "--n", &n.to_string()])
            .output(),
    )
    .await
    .expect("the job ends")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    let expected = n * (n + 1) * (2 * n + 1) / 6;
    assert!(stdout.contains(&format!("is {expected} ")), "{stdout}");
    let executions = c.node(1).applied().read(|a| a.grid.work_totals().executions);
    assert_eq!(executions as u64, n + 1, "one job and one execution per child, no more");
    let _ = a.kill().await;
    let _ = b.kill().await;
    c.shutdown().await;
}

//! The counter example against real nodes: its demo, and an agent process killed with
//! `kill -9` in the middle of an increment.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weft_agent::Client;
use weft_fabric::testing::LocalCluster;

const PATIENCE: Duration = Duration::from_secs(30);

/// An agent process whose stderr lines are collected; killed when dropped.
struct AgentProcess {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl AgentProcess {
    fn spawn(endpoints: &[String], extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_counter"))
            .args(["--endpoints", &endpoints.join(","), "agent"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the counter agent starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stderr = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, lines }
    }

    fn ran(&self, execution: u64) -> bool {
        let needle = format!("runs execution {execution} ");
        self.lines.lock().unwrap().iter().any(|l| l.contains(&needle))
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn cluster(n: usize, dir: &tempfile::TempDir) -> LocalCluster {
    let c = LocalCluster::start(dir.path(), n, |_| {}).await.expect("nodes start");
    c.wait_for_leader(PATIENCE).await.expect("a leader");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_demo_counts_each_increment_once_even_when_run_twice() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(1, &dir).await;
    let _agent = AgentProcess::spawn(&c.endpoints(), &[]);
    for run in 1..=2 {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_counter"))
            .args(["--endpoints", &c.endpoints().join(","), "demo", "--id", "d1", "--times", "4"])
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "run {run}: {stdout} {}", String::from_utf8_lossy(&out.stderr));
        // The second run repeats the same idempotency keys: the same answers, no new counts.
        assert!(stdout.contains("increment 4: 4"), "run {run}: {stdout}");
        assert!(stdout.contains("counter d1 is at 4"), "run {run}: {stdout}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_killed_mid_increment_is_replaced_and_the_increment_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(3, &dir).await;
    let endpoints = c.endpoints();
    let mut agents = [
        AgentProcess::spawn(&endpoints, &["--work-ms", "3000"]),
        AgentProcess::spawn(&endpoints, &["--work-ms", "3000"]),
    ];
    let client = Client::new(endpoints.clone()).unwrap();
    let started = client.start_instance_with::<_, u64>("counter", Some("k"), &0u64, Some("start-k"), None);
    tokio::time::timeout(PATIENCE, started).await.expect("in time").expect("started");

    let id = client
        .request("counter", "increment")
        .instance("k")
        .args(&1u64)
        .idempotency_key("inc-1")
        .send()
        .await
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    let victim = loop {
        if let Some(i) = (0..2).find(|i| agents[*i].ran(id)) {
            break i;
        }
        assert!(Instant::now() < deadline, "no agent took execution {id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    agents[victim].kill9();
    let killed = Instant::now();
    let count: u64 = client.wait(id, PATIENCE).await.expect("the other agent finishes it");
    eprintln!("execution {id} finished {:?} after the kill", killed.elapsed());
    assert_eq!(count, 1);
    assert!(agents[1 - victim].ran(id), "the survivor ran it");
    let e = client.execution(id).await.unwrap();
    assert_eq!(e.attempts, 2, "delivered twice: once to the killed process");
    let state = client.state("instance/counter/k");
    assert_eq!(state.get::<u64>("count").await.unwrap(), Some(1), "counted once");
    let again: u64 = client
        .request("counter", "increment")
        .instance("k")
        .args(&1u64)
        .idempotency_key("inc-1")
        .call()
        .await
        .unwrap();
    assert_eq!(again, 1, "a retry with the same key gets the first result");
    assert_eq!(state.get::<u64>("count").await.unwrap(), Some(1));
    c.shutdown().await;
}

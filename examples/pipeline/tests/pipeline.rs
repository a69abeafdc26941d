//! The pipeline example against real nodes: two processes per stage, the feed run twice, and
//! a stage process killed with `kill -9` mid-stream; every order is counted exactly once.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use weft_agent::Client;
use weft_agent::streams::Item;
use weft_fabric::testing::LocalCluster;

const PATIENCE: Duration = Duration::from_secs(60);
const N: u64 = 120;

/// A stage process whose stderr lines are collected; killed when dropped.
struct StageProcess {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl StageProcess {
    fn spawn(endpoints: &[String], stage: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pipeline"))
            .args([
                "--endpoints",
                &endpoints.join(","),
                "stage",
                stage,
                "--work-ms",
                "20",
                "--ack-wait-ms",
                "3000",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the stage starts");
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

    fn committed(&self) -> usize {
        self.lines.lock().unwrap().iter().filter(|l| l.contains(" committed #")).count()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for StageProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn pipeline(endpoints: &[String], args: &[&str]) -> String {
    let out = tokio::time::timeout(
        PATIENCE,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_pipeline"))
            .args(["--endpoints", &endpoints.join(",")])
            .args(args)
            .output(),
    )
    .await
    .expect("it ends")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{args:?}: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[derive(Debug, Deserialize)]
struct Receipt {
    order: u64,
    #[allow(dead_code)]
    customer: String,
    #[allow(dead_code)]
    balance: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_order_is_counted_once_though_a_stage_process_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let c = LocalCluster::start(dir.path(), 3, |_| {}).await.expect("nodes start");
    c.wait_for_leader(Duration::from_secs(30)).await.expect("a leader");
    let endpoints = c.endpoints();
    let mut enrich = [StageProcess::spawn(&endpoints, "enrich"), StageProcess::spawn(&endpoints, "enrich")];
    let _ledger = [StageProcess::spawn(&endpoints, "ledger"), StageProcess::spawn(&endpoints, "ledger")];

    let fed = pipeline(&endpoints, &["feed", "--n", &N.to_string()]).await;
    assert!(fed.contains(&format!("fed {N} orders ({N} new")), "{fed}");

    // Kill an enrich process once it has committed a few items (it holds more).
    let deadline = Instant::now() + PATIENCE;
    let victim = loop {
        if let Some(i) = (0..2).find(|i| enrich[*i].committed() >= 5) {
            break i;
        }
        assert!(Instant::now() < deadline, "no enrich process committed anything");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    enrich[victim].kill9();
    eprintln!("killed enrich process {victim} after {} commits", enrich[victim].committed());

    let fed = pipeline(&endpoints, &["feed", "--n", &N.to_string()]).await;
    assert!(
        fed.contains(&format!("(0 new, {N} already there)")),
        "the producer appends nothing twice: {fed}"
    );

    let client = Client::new(endpoints.clone()).unwrap();
    let receipts = client.stream("receipts");
    let deadline = Instant::now() + PATIENCE;
    while receipts.info().await.unwrap().last_seq < N {
        assert!(Instant::now() < deadline, "not every order made it through");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // nothing more comes
    let items: Vec<Item<Receipt>> = receipts.read(0, 1_000).await.unwrap();
    let orders: BTreeSet<u64> = items.iter().map(|i| i.value.order).collect();
    assert_eq!(items.len() as u64, N, "one receipt per order");
    assert_eq!(orders, (1..=N).collect(), "every order");
    assert!(enrich[1 - victim].committed() > 0, "the survivor took over");

    let report = pipeline(&endpoints, &["report"]).await;
    let cents: u64 = (1..=N).map(|id| (100 + id) * 120 / 100).sum();
    assert!(report.contains(&format!("total: {N} orders, {N} receipts, {cents} cents")), "{report}");
    c.shutdown().await;
}

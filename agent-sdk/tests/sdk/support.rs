//! Test support: clusters (in-process, or `weft node` processes, from `weft_fabric::testing`),
//! workers, and small agents.

use std::time::Duration;

use tokio::task::JoinHandle;
use weft_agent::{Agent, Error, Stopper, Worker};
use weft_fabric::Config;
use weft_fabric::testing::{ClusterOptions, LocalCluster, ProcessCluster, wait_for_leader, weft_binary};

/// Generous bound for what a healthy cluster does "soon": tests share 2 cores.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,sdk=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A cluster of `n` in-process nodes, with its data dir, once it has a leader.
pub struct TestCluster {
    pub cluster: LocalCluster,
    pub _dir: tempfile::TempDir,
}

impl TestCluster {
    pub async fn start(n: usize, tweak: impl Fn(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let cluster = LocalCluster::start(dir.path(), n, tweak).await.expect("nodes start");
        cluster.wait_for_leader(PATIENCE).await.expect("a leader");
        Self { cluster, _dir: dir }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.cluster.endpoints()
    }

    pub async fn leader(&self) -> u64 {
        self.cluster.wait_for_leader(PATIENCE).await.expect("a leader")
    }
}

/// A running worker and what stops it.
pub struct Running {
    pub stopper: Stopper,
    pub task: JoinHandle<Result<(), Error>>,
}

impl Running {
    pub async fn stop(self) -> Result<(), Error> {
        self.stopper.stop();
        tokio::time::timeout(PATIENCE, self.task).await.expect("the worker stops").expect("no panic")
    }
}

/// Starts a worker for `agents` on `endpoints`.
pub fn spawn_worker(endpoints: Vec<String>, agents: Vec<Agent>, capacity: u32) -> Running {
    let mut builder = Worker::builder(endpoints).capacity(capacity).drain_timeout(Duration::from_secs(2));
    for agent in agents {
        builder = builder.agent(agent);
    }
    let worker = builder.build().expect("a valid worker");
    let stopper = worker.stopper();
    Running { stopper, task: tokio::spawn(worker.run()) }
}

/// Waits until `f` holds, or panics after `PATIENCE` naming `what`.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !f() {
        assert!(std::time::Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` `weft node` processes with static membership and the test gossip preset, data and logs
/// under `root`, `RUST_LOG=warn`; killed when dropped.
pub fn node_processes(root: &std::path::Path, n: usize) -> ProcessCluster {
    let binary = weft_binary().unwrap_or_else(|e| panic!("{e}"));
    let options =
        ClusterOptions::new(binary, root, n).args(["--gossip-preset", "test"]).env("RUST_LOG", "warn");
    ProcessCluster::start(options).unwrap_or_else(|e| panic!("{e}"))
}

/// The leader as the nodes at `addrs` report it.
pub async fn leader_of(addrs: &[String]) -> u64 {
    wait_for_leader(addrs, PATIENCE).await.unwrap_or_else(|e| panic!("{e}"))
}

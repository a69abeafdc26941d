//! Test support: clusters, workers, and small agents.

use std::time::Duration;

use tokio::task::JoinHandle;
use weft_agent::{Agent, Error, Stopper, Worker};
use weft_fabric::config::Config;
use weft_fabric::testing::LocalCluster;

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

/// A `weft node` process, killed when dropped.
pub struct NodeProcess {
    pub child: std::process::Child,
    pub args: Vec<String>,
    pub log: std::path::PathBuf,
}

impl NodeProcess {
    pub fn spawn(args: Vec<String>, log: std::path::PathBuf) -> Self {
        Self { child: Self::start(&args, &log), args, log }
    }

    fn start(args: &[String], log: &std::path::Path) -> std::process::Child {
        let binary = weft_fabric::testing::weft_binary(std::path::Path::new(env!("CARGO_MANIFEST_DIR")))
            .expect("the weft binary: build the workspace first (cargo build -p weft-fabric --bin weft)");
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        std::process::Command::new(binary)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("weft starts")
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.child = Self::start(&self.args, &self.log);
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Three `weft node` processes with static membership on free ports, data under `root`.
pub fn node_processes(root: &std::path::Path, n: usize) -> (Vec<NodeProcess>, Vec<String>) {
    let ports: Vec<u16> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
        .collect();
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let members = weft_fabric::testing::members_of(&addrs);
    let nodes = (0..n)
        .map(|i| {
            let args = vec![
                "node".into(),
                "--node-id".into(),
                (i + 1).to_string(),
                "--listen".into(),
                addrs[i].clone(),
                "--data-dir".into(),
                root.join(format!("node-{}", i + 1)).display().to_string(),
                "--initial-members".into(),
                members.clone(),
                "--gossip-preset".into(),
                "test".into(),
            ];
            NodeProcess::spawn(args, root.join(format!("node-{}.log", i + 1)))
        })
        .collect();
    (nodes, addrs)
}

/// The leader as the nodes at `addrs` report it.
pub async fn leader_of(addrs: &[String]) -> u64 {
    use weft_proto::fabric::v1::cluster_client::ClusterClient;
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        for addr in addrs {
            if let Ok(mut c) = ClusterClient::connect(format!("http://{addr}")).await
                && let Ok(Ok(s)) = tokio::time::timeout(
                    Duration::from_secs(2),
                    c.status(weft_proto::fabric::v1::StatusRequest {}),
                )
                .await
                && s.get_ref().leader_id != 0
            {
                return s.into_inner().leader_id;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no leader within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

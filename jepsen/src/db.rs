//! The system under test: one `weft node` process per host namespace, started with
//! `ip netns exec` (which execs in place, so the child's pid is the node's), killed with
//! SIGKILL, paused with SIGSTOP and resumed with SIGCONT.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::cluster_client::ClusterClient;

use crate::net::{Host, Network, sh};

/// The port every node listens on, in its own namespace.
pub const PORT: u16 = 7400;
/// How long a status query may take.
const STATUS_TIMEOUT: Duration = Duration::from_millis(800);

/// Starting or controlling a node failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No `weft` binary where one was expected.
    #[error(
        "no weft binary at {0}: build it with `cargo build -p weft-fabric --bin weft` (or `--release`), or pass --weft-bin"
    )]
    NoBinary(String),
    /// The node process could not be started; nothing runs for it.
    #[error("cannot start node {id}: {source}")]
    Spawn { id: u64, source: std::io::Error },
    /// A signal could not be sent.
    #[error(transparent)]
    Net(#[from] crate::net::Error),
    /// No leader was agreed within the time given; the nodes keep running.
    #[error("no leader within {0:?}; see the node logs")]
    NoLeader(Duration),
}

/// How to run the nodes.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `weft` binary.
    pub binary: PathBuf,
    /// Parent of the nodes' data directories.
    pub data_root: PathBuf,
    /// Where each node's stdout/stderr goes (`n<id>.log`).
    pub log_dir: PathBuf,
    /// Extra `WEFT_*` settings for every node.
    pub env: Vec<(String, String)>,
}

/// Finds the `weft` binary: `explicit` if given, else the newer of `target/release/weft`
/// and `target/debug/weft` under the current directory or the workspace.
pub fn find_binary(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(p) = explicit {
        return if p.is_file() { Ok(p.to_path_buf()) } else { Err(Error::NoBinary(p.display().to_string())) };
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target_dirs: Vec<PathBuf> = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("target"), workspace.join("target")])
        .collect();
    let newest = target_dirs
        .iter()
        .flat_map(|t| [t.join("release/weft"), t.join("debug/weft")])
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max_by_key(|(t, _)| *t);
    match newest {
        Some((_, p)) => Ok(p),
        None => Err(Error::NoBinary("target/{debug,release}/weft".into())),
    }
}

/// One node process.
#[derive(Debug)]
pub struct Node {
    /// The node id.
    pub id: u64,
    /// Its host namespace.
    pub host: Host,
    /// `IP:PORT` of its gRPC/HTTP listener.
    pub addr: String,
    child: Option<Child>,
    paused: bool,
    args: Vec<String>,
    log: PathBuf,
}

impl Node {
    /// Whether the process is running (possibly paused).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
    /// Whether the process is stopped with SIGSTOP.
    pub fn is_paused(&self) -> bool {
        self.paused
    }
    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// The cluster of node processes; every process is killed when dropped.
#[derive(Debug)]
pub struct Db {
    nodes: Vec<Node>,
    options: Options,
}

impl Db {
    /// Starts one node per host of `net`, all members of one static cluster.
    pub fn start(net: &Network, options: Options) -> Result<Self, Error> {
        if !options.binary.is_file() {
            return Err(Error::NoBinary(options.binary.display().to_string()));
        }
        let members =
            net.hosts().iter().map(|h| format!("{}={}:{PORT}", h.id, h.ip)).collect::<Vec<_>>().join(",");
        let mut db = Self { nodes: Vec::new(), options };
        for host in net.hosts() {
            let addr = format!("{}:{PORT}", host.ip);
            let data_dir = db.options.data_root.join(format!("n{}", host.id));
            let args = vec![
                "--node-id".to_string(),
                host.id.to_string(),
                "--cluster".into(),
                "jepsen".into(),
                "--listen".into(),
                addr.clone(),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--initial-members".into(),
                members.clone(),
            ];
            let log = db.options.log_dir.join(format!("n{}.log", host.id));
            db.nodes.push(Node {
                id: host.id,
                host: host.clone(),
                addr,
                child: None,
                paused: false,
                args,
                log,
            });
            db.spawn(host.id)?;
        }
        Ok(db)
    }

    /// The nodes, by id order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Every node's `IP:PORT`, by id order.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        let i = self.nodes.iter().position(|n| n.id == id).expect("node id of this cluster");
        &mut self.nodes[i]
    }

    fn spawn(&mut self, id: u64) -> Result<(), Error> {
        let binary = self.options.binary.clone();
        let env = self.options.env.clone();
        let node = self.node_mut(id);
        let spawn_err = |source| Error::Spawn { id, source };
        let log = OpenOptions::new().create(true).append(true).open(&node.log).map_err(spawn_err)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &node.host.netns])
            .arg(&binary)
            .arg("node")
            .args(&node.args)
            .env("RUST_LOG", std::env::var("WEFT_JEPSEN_NODE_LOG").unwrap_or_else(|_| "info".into()))
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(spawn_err)?)
            .stderr(log)
            .spawn()
            .map_err(spawn_err)?;
        tracing::info!(node = id, pid = child.id(), "node started");
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// `kill -9` node `id` and reap it.
    pub fn kill(&mut self, id: u64) {
        let node = self.node_mut(id);
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            tracing::info!(node = id, "node killed");
        }
        node.paused = false;
    }

    /// Starts node `id` again on its data directory, if it is not running.
    pub fn restart(&mut self, id: u64) -> Result<(), Error> {
        if self.node_mut(id).child.is_some() {
            return Ok(());
        }
        self.spawn(id)
    }

    /// SIGSTOP node `id`.
    pub fn pause(&mut self, id: u64) -> Result<(), Error> {
        let node = self.node_mut(id);
        if let Some(pid) = node.pid() {
            sh("kill", &["-STOP", &pid.to_string()])?;
            node.paused = true;
            tracing::info!(node = id, "node paused");
        }
        Ok(())
    }

    /// SIGCONT node `id`.
    pub fn resume(&mut self, id: u64) -> Result<(), Error> {
        let node = self.node_mut(id);
        if let Some(pid) = node.pid() {
            sh("kill", &["-CONT", &pid.to_string()])?;
            node.paused = false;
            tracing::info!(node = id, "node resumed");
        }
        Ok(())
    }

    /// Restarts every dead node and resumes every paused one.
    pub fn heal(&mut self) -> Result<(), Error> {
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        for id in ids {
            if self.node_mut(id).paused {
                self.resume(id)?;
            }
            self.restart(id)?;
        }
        Ok(())
    }

    /// Kills every node.
    pub fn stop_all(&mut self) {
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        for id in ids {
            self.kill(id);
        }
    }

    /// The leader as reported by a node that says it leads (the highest term wins).
    pub async fn leader(&self) -> Option<u64> {
        let mut best: Option<(u64, u64)> = None;
        for node in self.nodes.iter().filter(|n| n.is_running() && !n.paused) {
            if let Some(s) = node_status(&node.addr).await
                && s.role == "leader"
                && best.is_none_or(|(term, _)| s.term > term)
            {
                best = Some((s.term, s.id));
            }
        }
        best.map(|(_, id)| id)
    }

    /// Waits until every running node names the same leader.
    pub async fn wait_for_leader(&self, patience: Duration) -> Result<u64, Error> {
        let deadline = Instant::now() + patience;
        loop {
            let mut seen = Vec::new();
            for node in self.nodes.iter().filter(|n| n.is_running() && !n.paused) {
                seen.push(node_status(&node.addr).await.map(|s| s.leader_id).unwrap_or(0));
            }
            if let Some(&l) = seen.first()
                && l != 0
                && seen.iter().all(|x| *x == l)
            {
                return Ok(l);
            }
            if Instant::now() > deadline {
                return Err(Error::NoLeader(patience));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// A lazily connecting channel to `addr` with the given per-request timeout.
pub fn channel(addr: &str, timeout: Duration) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("IP:PORT is a valid URI")
        .connect_timeout(Duration::from_millis(500))
        .timeout(timeout)
        .connect_lazy()
}

/// One node's own status, or `None` if it does not answer quickly.
pub async fn node_status(addr: &str) -> Option<pb::NodeStatusReply> {
    let mut c = ClusterClient::new(channel(addr, STATUS_TIMEOUT));
    let mut req = tonic::Request::new(pb::StatusRequest {});
    req.set_timeout(STATUS_TIMEOUT);
    tokio::time::timeout(STATUS_TIMEOUT * 2, c.node_status(req)).await.ok()?.ok().map(|r| r.into_inner())
}

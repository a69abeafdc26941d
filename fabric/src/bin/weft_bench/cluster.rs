//! The benchmark's clusters: `weft node` processes started by the shared harness
//! ([`weft_fabric::testing::ProcessCluster`]) under the benchmark's scratch dir, what the
//! workloads need to know of each node, and what the nodes logged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use weft_agent::{Client, ClientBuilder, Tls, Token, Worker, WorkerBuilder};
use weft_fabric::testing::{ClusterOptions, Membership, ProcessCluster};
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::cluster_client::ClusterClient;

/// How long a new cluster may take to elect a leader that sees every member.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Kinds of warning/error lines shown per node log after each cluster.
const MAX_LOG_KINDS_SHOWN: usize = 8;
/// Lines of each node's log shown when a wait fails.
const LOG_LINES_SHOWN: usize = 8;

/// The benchmark's temp dir; removed on drop unless `--keep`.
pub struct Scratch {
    pub path: PathBuf,
    pub keep: bool,
}

impl Scratch {
    pub fn new(keep: bool) -> anyhow::Result<Self> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("weft-bench-{}-{nanos:09}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        if keep {
            eprintln!("data dirs and node logs are kept in {}", path.display());
        }
        Ok(Self { path, keep })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// What protects a cluster's nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Security {
    /// TLS on the nodes (a development CA and node certificates; mutual TLS between nodes);
    /// clients over TLS, without client certificates.
    pub tls: bool,
    /// Auth on the nodes, with an admin token made for the cluster (`weft tokens generate`,
    /// created by the leader) that every client of the benchmark presents.
    pub auth: bool,
}

/// How the benchmark's clients reach a cluster: its TLS settings and token, if any.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub tls: Option<Tls>,
    pub token: Option<Token>,
}

impl Access {
    /// An SDK client's settings for `addr`.
    pub fn client(&self, addr: &str) -> ClientBuilder {
        Client::builder([addr]).tls(self.tls.clone()).token(self.token.clone())
    }

    /// An SDK worker's settings for `addr`.
    pub fn worker(&self, addr: &str) -> WorkerBuilder {
        Worker::builder([addr]).tls(self.tls.clone()).token(self.token.clone())
    }
}

/// Makes an admin token in `dir` with `weft tokens generate` of `weft`: the token and its file.
fn admin_token(weft: &Path, dir: &Path) -> anyhow::Result<(Token, PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let out = std::process::Command::new(weft)
        .args(["tokens", "generate"])
        .output()
        .with_context(|| format!("cannot run {} tokens generate", weft.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "weft tokens generate failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let token = Token::new(&text)?;
    let file = dir.join("admin.token");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&file)
        .with_context(|| format!("cannot write {}", file.display()))?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    Ok((token, file))
}

/// One node of a [`Cluster`], as the workloads see it.
pub struct Node<'a> {
    /// Its id (0 while a gossip cluster has not formed).
    pub id: u64,
    pub addr: &'a str,
    /// Its process, while it runs.
    pub pid: Option<u32>,
    pub data_dir: PathBuf,
}

/// A cluster of `weft node` processes; kills them and removes their dirs on drop (unless
/// `--keep`).
pub struct Cluster {
    processes: ProcessCluster,
    /// Node ids in start order: 1..=n with static membership, learned from a status with
    /// gossip ([`learn_ids`](Self::learn_ids)).
    ids: Vec<u64>,
    keep: bool,
    /// With auth on, the admin token every client presents.
    token: Option<Token>,
}

impl Cluster {
    /// Starts `n` nodes with static membership under `root`. A lone node forms a cluster of
    /// its own.
    pub fn start(
        weft: &Path,
        root: &Path,
        n: usize,
        snapshot_after_entries: u64,
        keep: bool,
    ) -> anyhow::Result<Self> {
        Self::start_with(weft, root, n, snapshot_after_entries, keep, &[], Security::default())
    }

    /// [`Cluster::start`] with extra environment for every node (`WEFT_*` settings), and TLS
    /// and auth as `security` says (certificates under `root/certs`, the admin token under
    /// `root/auth`; clients use [`Cluster::access`]).
    pub fn start_with(
        weft: &Path,
        root: &Path,
        n: usize,
        snapshot_after_entries: u64,
        keep: bool,
        env: &[(&str, &str)],
        security: Security,
    ) -> anyhow::Result<Self> {
        let mut options = ClusterOptions::new(weft, root, n)
            .tls(security.tls)
            .args(["--cluster", "bench"])
            .env("WEFT_SNAPSHOT_AFTER_ENTRIES", snapshot_after_entries.to_string())
            .env("NO_COLOR", "1");
        for (k, v) in env {
            options = options.env(k, v);
        }
        let mut token = None;
        if security.auth {
            let (admin, file) = admin_token(weft, &root.join("auth"))?;
            options = options.env("WEFT_AUTH", "true").env("WEFT_AUTH_BOOTSTRAP_TOKEN_FILE", file);
            token = Some(admin);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            options = options.env("RUST_LOG", "info");
        }
        let processes = ProcessCluster::start(options)?;
        Ok(Self { processes, ids: (1..=n as u64).collect(), keep, token })
    }

    /// Starts `n` gossip-mode nodes under `root` (generated ids, the first node the seed of
    /// all, `--bootstrap-expect 3`) with gossip preset `preset`.
    pub fn start_gossip(
        weft: &Path,
        root: &Path,
        n: usize,
        preset: &str,
        dead_node_grace_ms: u64,
        keep: bool,
    ) -> anyhow::Result<Self> {
        let mut options = ClusterOptions::new(weft, root, n)
            .membership(Membership::Gossip { bootstrap_expect: 3 })
            .args(["--cluster", "bench", "--gossip-preset", preset])
            .args(["--dead-node-grace-ms", &dead_node_grace_ms.to_string()])
            .env("NO_COLOR", "1");
        if std::env::var_os("RUST_LOG").is_none() {
            options = options.env("RUST_LOG", "info");
        }
        let processes = ProcessCluster::start(options)?;
        Ok(Self { processes, ids: vec![0; n], keep, token: None })
    }

    /// How clients reach it: with TLS on, trusting the cluster's CA; with auth on, with the
    /// admin token.
    pub fn access(&self) -> Access {
        Access { tls: self.processes.client_tls(), token: self.token.clone() }
    }

    /// The nodes, in start order.
    pub fn nodes(&self) -> impl Iterator<Item = Node<'_>> {
        let processes = &self.processes;
        self.ids.iter().zip(processes.addrs()).zip(processes.nodes()).enumerate().map(
            |(i, ((id, addr), process))| Node {
                id: *id,
                addr,
                pid: process.pid(),
                data_dir: processes.data_dir(i),
            },
        )
    }

    /// The address of node `id`.
    pub fn addr(&self, id: u64) -> anyhow::Result<&str> {
        self.index(id).map(|i| self.processes.addrs()[i].as_str())
    }

    /// The node processes that run.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes().filter_map(|n| n.pid).collect()
    }

    /// Waits until a node reports a leader and every member reachable; returns the leader.
    pub async fn wait_for_leader(&mut self) -> anyhow::Result<u64> {
        let n = self.ids.len();
        let settled = move |s: &pb::ClusterStatus| {
            s.leader_id != 0 && s.members.len() == n && s.members.iter().all(|m| m.reachable)
        };
        if self.token.is_none() {
            let status =
                self.processes.wait_for(LEADER_TIMEOUT, "a leader that sees every member", settled).await?;
            return Ok(status.leader_id);
        }
        // The shared harness asks without a token; with auth on the benchmark asks itself,
        // until the leader has created the admin token and reports every member.
        let access = self.access();
        let deadline = std::time::Instant::now() + LEADER_TIMEOUT;
        let mut last = String::from("no answer yet");
        loop {
            for addr in self.processes.addrs() {
                match status(addr, &access).await {
                    Ok(s) if settled(&s) => return Ok(s.leader_id),
                    Ok(s) => last = format!("{addr}: leader {}, {} member(s)", s.leader_id, s.members.len()),
                    Err(e) => last = format!("{addr}: {e:#}"),
                }
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "no leader that sees every member within {LEADER_TIMEOUT:?} ({last}); node logs:\n{}",
                self.log_tails()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Takes each node's id from a status that lists every member.
    pub fn learn_ids(&mut self, status: &pb::ClusterStatus) {
        for (id, addr) in self.ids.iter_mut().zip(self.processes.addrs()) {
            *id = status.members.iter().find(|m| m.address == *addr).map_or(0, |m| m.id);
        }
    }

    /// `kill -9` node `id`.
    pub fn kill9(&mut self, id: u64) -> anyhow::Result<()> {
        let i = self.index(id)?;
        self.processes.nodes_mut()[i].kill9();
        Ok(())
    }

    /// The end of every node's log, for an error message.
    pub fn log_tails(&self) -> String {
        let processes = &self.processes;
        processes
            .addrs()
            .iter()
            .zip(processes.nodes())
            .map(|(addr, node)| format!("--- {addr} ---\n{}\n", node.log_tail(LOG_LINES_SHOWN)))
            .collect()
    }

    fn index(&self, id: u64) -> anyhow::Result<usize> {
        self.ids.iter().position(|i| *i == id).with_context(|| format!("no node n{id} in this cluster"))
    }

    /// Prints the warnings and errors the nodes logged, grouped by message, so fabric trouble
    /// is not missed.
    pub fn report_log_problems(&self) {
        for (id, node) in self.ids.iter().zip(self.processes.nodes()) {
            let Ok(text) = std::fs::read_to_string(node.log()) else {
                continue;
            };
            let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
            for line in text
                .lines()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked"))
            {
                // Drop the timestamp; keep enough of the message to tell kinds apart.
                let message = line.split_once(' ').map_or(line, |(_, rest)| rest).trim();
                let kind: String = message.chars().take(110).collect();
                *kinds.entry(kind).or_default() += 1;
            }
            let mut kinds: Vec<(String, usize)> = kinds.into_iter().collect();
            kinds.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
            for (kind, count) in kinds.iter().take(MAX_LOG_KINDS_SHOWN) {
                eprintln!("   n{id} logged {count}x: {kind}");
            }
            if kinds.len() > MAX_LOG_KINDS_SHOWN {
                eprintln!(
                    "   n{id} logged {} more kinds of warning/error",
                    kinds.len() - MAX_LOG_KINDS_SHOWN
                );
            }
        }
    }
}

/// `Cluster.Status` of the node at `addr`.
async fn status(addr: &str, access: &Access) -> anyhow::Result<pb::ClusterStatus> {
    let channel = crate::kv::connect_over(addr, 1, access).await?.remove(0);
    let mut request = tonic::Request::new(pb::StatusRequest {});
    request.set_timeout(Duration::from_secs(2));
    Ok(ClusterClient::new(channel).status(request).await?.into_inner())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The nodes go before their dirs.
        self.processes.kill9_all();
        if !self.keep {
            let _ = std::fs::remove_dir_all(self.processes.root());
        }
    }
}

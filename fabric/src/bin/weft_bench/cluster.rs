//! The benchmark's clusters: `weft node` processes started by the shared harness
//! ([`weft_fabric::testing::ProcessCluster`]) under the benchmark's scratch dir, what the
//! workloads need to know of each node, and what the nodes logged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use weft_fabric::testing::{ClusterOptions, Membership, ProcessCluster};
use weft_proto::fabric::v1 as pb;

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
        Self::start_with(weft, root, n, snapshot_after_entries, keep, &[], false)
    }

    /// [`Cluster::start`] with extra environment for every node (`WEFT_*` settings), and TLS
    /// on when `tls` (a development CA and node certificates under `root/certs`; clients use
    /// [`Cluster::tls`]).
    pub fn start_with(
        weft: &Path,
        root: &Path,
        n: usize,
        snapshot_after_entries: u64,
        keep: bool,
        env: &[(&str, &str)],
        tls: bool,
    ) -> anyhow::Result<Self> {
        let mut options = ClusterOptions::new(weft, root, n)
            .tls(tls)
            .args(["--cluster", "bench"])
            .env("WEFT_SNAPSHOT_AFTER_ENTRIES", snapshot_after_entries.to_string())
            .env("NO_COLOR", "1");
        for (k, v) in env {
            options = options.env(k, v);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            options = options.env("RUST_LOG", "info");
        }
        let processes = ProcessCluster::start(options)?;
        Ok(Self { processes, ids: (1..=n as u64).collect(), keep })
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
        Ok(Self { processes, ids: vec![0; n], keep })
    }

    /// With TLS on, the SDK settings clients use (trusting the cluster's CA).
    pub fn tls(&self) -> Option<weft_agent::Tls> {
        self.processes.client_tls()
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
        let status = self
            .processes
            .wait_for(LEADER_TIMEOUT, "a leader that sees every member", |s| {
                s.leader_id != 0 && s.members.len() == n && s.members.iter().all(|m| m.reachable)
            })
            .await?;
        Ok(status.leader_id)
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

impl Drop for Cluster {
    fn drop(&mut self) {
        // The nodes go before their dirs.
        self.processes.kill9_all();
        if !self.keep {
            let _ = std::fs::remove_dir_all(self.processes.root());
        }
    }
}

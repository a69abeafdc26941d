//! A cluster of `weft node` processes on free 127.0.0.1 ports, with data and logs under a
//! root directory the caller owns.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weft_proto::fabric::v1 as pb;

use super::status::{POLL_INTERVAL, status_over};
use super::{Error, NodeCommand, NodeProcess, members_of};

/// Lines of each node's log an error shows.
const LOG_LINES_SHOWN: usize = 20;

/// How the nodes of a [`ProcessCluster`] find each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// Node ids 1..=n, each node started with `--node-id` and `--initial-members` listing all
    /// of them (a single node gets no members: it forms a cluster of its own).
    Static,
    /// Generated ids: every node is started with the first node's address as `--seeds`, and
    /// `--bootstrap-expect`.
    Gossip {
        /// Nodes gossip must see before one of them forms the cluster.
        bootstrap_expect: usize,
    },
}

/// What a [`ProcessCluster`] starts. Node `i` (1-based) keeps its data in `root/n{i}` and
/// logs to `root/n{i}.log`.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The `weft` binary ([`weft_binary`](super::weft_binary)).
    pub binary: PathBuf,
    /// Where the nodes' data dirs and logs go; created if missing.
    pub root: PathBuf,
    /// How many nodes.
    pub nodes: usize,
    /// How they find each other.
    pub membership: Membership,
    /// Arguments every node gets after the ones the cluster sets (`--listen`, `--data-dir`,
    /// the membership's): `--cluster NAME`, `--gossip-preset test`, ...
    pub args: Vec<OsString>,
    /// Extra environment of every node: `RUST_LOG`, `WEFT_SNAPSHOT_AFTER_ENTRIES`, ...
    pub env: Vec<(OsString, OsString)>,
    /// Whether the nodes use TLS (see [`ClusterOptions::tls`]).
    pub tls: bool,
}

impl ClusterOptions {
    /// `nodes` nodes of `binary` with static membership, data under `root`, no extra
    /// arguments or environment.
    pub fn new(binary: impl Into<PathBuf>, root: impl Into<PathBuf>, nodes: usize) -> Self {
        Self {
            binary: binary.into(),
            root: root.into(),
            nodes,
            membership: Membership::Static,
            args: Vec::new(),
            env: Vec::new(),
            tls: false,
        }
    }

    /// With `on`, TLS: a development CA and a certificate for each node are made in
    /// `root/certs` (`ca.pem`, `n1.pem` + `n1.key`, ...; for 127.0.0.1 and localhost), every
    /// node gets its files (`--tls-*-file`), and clients need
    /// [`ProcessCluster::client_tls`].
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// Another way to find each other.
    pub fn membership(mut self, membership: Membership) -> Self {
        self.membership = membership;
        self
    }

    /// One more argument for every node.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// More arguments for every node.
    pub fn args(mut self, args: impl IntoIterator<Item = impl Into<OsString>>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// One more environment variable for every node.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// `weft node` processes started together on free ports of 127.0.0.1. Each is killed when the
/// cluster is dropped; the root directory stays (it is the caller's).
///
/// With [`Membership::Static`], node `id` is `nodes()[id - 1]` at `addrs()[id - 1]`.
#[derive(Debug)]
pub struct ProcessCluster {
    root: PathBuf,
    addrs: Vec<String>,
    nodes: Vec<NodeProcess>,
    /// The CA file and client settings, with TLS on.
    tls: Option<(PathBuf, weft_agent::Tls)>,
}

/// Makes a CA and `n` node certificates in `dir` (see [`ClusterOptions::tls`]); the CA file.
fn make_certs(dir: &Path, n: usize) -> Result<PathBuf, Error> {
    use crate::tls::issue::{self, Kind};
    let err = |e: issue::Error| Error::Certs(e.to_string());
    let ca = issue::ca("Weft test cluster CA", 30).map_err(err)?;
    let (ca_file, _) = issue::write(dir, "ca", &ca, true).map_err(err)?;
    let hosts = ["127.0.0.1".to_owned(), "localhost".to_owned()];
    for id in 1..=n {
        let name = format!("n{id}");
        let node = issue::leaf(Kind::Node, &ca.cert_pem, &ca.key_pem, &name, &hosts, 30).map_err(err)?;
        issue::write(dir, &name, &node, true).map_err(err)?;
    }
    Ok(ca_file)
}

impl ProcessCluster {
    /// Starts the nodes `options` describes; they elect a leader in the background
    /// ([`wait_for_leader`](Self::wait_for_leader)). Nodes started before a failure are
    /// killed.
    pub fn start(options: ClusterOptions) -> Result<Self, Error> {
        let ClusterOptions { binary, root, nodes: n, membership, args, env, tls } = options;
        std::fs::create_dir_all(&root).map_err(|source| Error::CreateDir { path: root.clone(), source })?;
        let certs = root.join("certs");
        let tls = if tls {
            let ca = make_certs(&certs, n)?;
            let client = weft_agent::Tls::from_files(&ca, None).map_err(|e| Error::Certs(e.to_string()))?;
            Some((ca, client))
        } else {
            None
        };
        let addrs = free_addrs(n)?;
        let members = members_of(&addrs);
        let mut nodes = Vec::with_capacity(n);
        for (i, addr) in addrs.iter().enumerate() {
            let id = i + 1;
            let mut command = NodeCommand::node(&binary, root.join(format!("n{id}.log")))
                .args(["--listen", addr])
                .arg("--data-dir")
                .arg(root.join(format!("n{id}")));
            command = match membership {
                Membership::Static if n == 1 => command.args(["--node-id", "1"]),
                Membership::Static => {
                    command.args(["--node-id", &id.to_string(), "--initial-members", &members])
                }
                Membership::Gossip { bootstrap_expect } => {
                    command.args(["--seeds", &addrs[0], "--bootstrap-expect", &bootstrap_expect.to_string()])
                }
            };
            if let Some((ca, _)) = &tls {
                command = command
                    .arg("--tls-ca-file")
                    .arg(ca)
                    .arg("--tls-cert-file")
                    .arg(certs.join(format!("n{id}.pem")))
                    .arg("--tls-key-file")
                    .arg(certs.join(format!("n{id}.key")));
            }
            command.args.extend(args.iter().cloned());
            command.env.extend(env.iter().cloned());
            // On an error, the nodes started so far are dropped, so killed.
            nodes.push(command.spawn()?);
        }
        Ok(Self { root, addrs, nodes, tls })
    }

    /// With TLS on, the CA file clients must trust (`--tls-ca`, `WEFT_TLS_CA`).
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|(ca, _)| ca.as_path())
    }

    /// With TLS on, SDK settings that trust the cluster's CA.
    pub fn client_tls(&self) -> Option<weft_agent::Tls> {
        self.tls.as_ref().map(|(_, tls)| tls.clone())
    }

    /// The directory the nodes' data dirs and logs are in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every node's address, in start order.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// Every node's process, in start order.
    pub fn nodes(&self) -> &[NodeProcess] {
        &self.nodes
    }

    /// Every node's process, to kill, stop or restart one.
    pub fn nodes_mut(&mut self) -> &mut [NodeProcess] {
        &mut self.nodes
    }

    /// The data dir of the node at `index` (0-based, start order).
    pub fn data_dir(&self, index: usize) -> PathBuf {
        self.root.join(format!("n{}", index + 1))
    }

    /// Asks the running nodes in turn, again every [`POLL_INTERVAL`], until one reports a
    /// status that passes `check`, and returns it. Fails early with [`Error::Exited`] when a
    /// node exits on its own, and with [`Error::Timeout`] (showing the end of every log)
    /// after `within`.
    pub async fn wait_for(
        &mut self,
        within: Duration,
        what: &str,
        check: impl Fn(&pb::ClusterStatus) -> bool,
    ) -> Result<pb::ClusterStatus, Error> {
        let deadline = Instant::now() + within;
        loop {
            for (i, node) in self.nodes.iter_mut().enumerate() {
                if let Some(status) = node.try_wait()? {
                    return Err(Error::Exited {
                        who: format!("node {} ({})", i + 1, self.addrs[i]),
                        status,
                        what: what.into(),
                        log_tail: node.log_tail(LOG_LINES_SHOWN),
                    });
                }
            }
            for (node, addr) in self.nodes.iter().zip(&self.addrs) {
                if node.pid().is_some()
                    && let Some(status) = status_over(addr, self.client_tls().as_ref()).await
                    && check(&status)
                {
                    return Ok(status);
                }
            }
            if Instant::now() >= deadline {
                let logs: String = self
                    .nodes
                    .iter()
                    .zip(&self.addrs)
                    .map(|(node, addr)| format!("\n--- {addr} ---\n{}", node.log_tail(LOG_LINES_SHOWN / 2)))
                    .collect();
                return Err(Error::Timeout {
                    what: what.into(),
                    within,
                    details: format!("; node logs:{logs}"),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until a running node reports a leader (see [`wait_for`](Self::wait_for)); the
    /// leader's id.
    pub async fn wait_for_leader(&mut self, within: Duration) -> Result<u64, Error> {
        Ok(self.wait_for(within, "a leader", |s| s.leader_id != 0).await?.leader_id)
    }

    /// `kill -9` every node.
    pub fn kill9_all(&mut self) {
        for node in &mut self.nodes {
            node.kill9();
        }
    }
}

/// `n` free ports of 127.0.0.1: bound together, so they differ, then released for processes
/// to take (a child cannot inherit a bound socket here). Another process may take one first;
/// then that node fails to start.
pub fn free_ports(n: usize) -> Result<Vec<u16>, Error> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::Port)?;
    listeners.iter().map(|l| Ok(l.local_addr().map_err(Error::Port)?.port())).collect()
}

/// `n` free addresses `127.0.0.1:PORT` (see [`free_ports`]).
pub fn free_addrs(n: usize) -> Result<Vec<String>, Error> {
    Ok(free_ports(n)?.into_iter().map(|port| format!("127.0.0.1:{port}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(10);

    #[test]
    fn free_ports_differ() {
        let ports = free_ports(8).unwrap();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), 8, "{ports:?}");
    }

    /// `echo` in place of `weft` writes each node's arguments to its log and exits.
    async fn arguments_of(options: ClusterOptions) -> (Vec<String>, Vec<String>) {
        let mut cluster = ProcessCluster::start(options).unwrap();
        let mut args = Vec::new();
        for node in cluster.nodes_mut() {
            assert!(node.wait_exit(BOUND).await.unwrap().success());
            args.push(std::fs::read_to_string(node.log()).unwrap().trim().to_owned());
        }
        (cluster.addrs().to_vec(), args)
    }

    #[tokio::test]
    async fn static_membership_lists_every_node() {
        let dir = tempfile::tempdir().unwrap();
        let options = ClusterOptions::new("/bin/echo", dir.path(), 2).args(["--cluster", "c"]);
        let (addrs, args) = arguments_of(options).await;
        let members = format!("1={},2={}", addrs[0], addrs[1]);
        for (i, args) in args.iter().enumerate() {
            let data_dir = dir.path().join(format!("n{}", i + 1));
            let expected = format!(
                "node --listen {} --data-dir {} --node-id {} --initial-members {members} --cluster c",
                addrs[i],
                data_dir.display(),
                i + 1
            );
            assert_eq!(*args, expected);
        }
    }

    #[tokio::test]
    async fn a_single_node_and_gossip_nodes_get_no_member_list() {
        let dir = tempfile::tempdir().unwrap();
        let (_, args) = arguments_of(ClusterOptions::new("/bin/echo", dir.path().join("one"), 1)).await;
        assert!(args[0].ends_with("--node-id 1"), "{}", args[0]);

        let options = ClusterOptions::new("/bin/echo", dir.path().join("gossip"), 2)
            .membership(Membership::Gossip { bootstrap_expect: 3 });
        let (addrs, args) = arguments_of(options).await;
        for args in &args {
            assert!(args.ends_with(&format!("--seeds {} --bootstrap-expect 3", addrs[0])), "{args}");
            assert!(!args.contains("--node-id"), "{args}");
        }
    }

    #[tokio::test]
    async fn a_wait_fails_early_when_a_node_exits() {
        let dir = tempfile::tempdir().unwrap();
        // `sh node ...` looks for a script called `node` and exits.
        let mut cluster = ProcessCluster::start(ClusterOptions::new("/bin/sh", dir.path(), 2)).unwrap();
        let started = Instant::now();
        let err = cluster.wait_for_leader(Duration::from_secs(60)).await.unwrap_err();
        assert!(matches!(err, Error::Exited { .. }), "{err:?}");
        assert!(err.to_string().contains("waiting for a leader"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(30), "it waited for the bound");
    }
}

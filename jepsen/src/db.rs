//! The system under test: one `weft node` process per host namespace, started with
//! `ip netns exec` (which execs in place, so the child's pid is the node's), killed with
//! SIGKILL, paused with SIGSTOP and resumed with SIGCONT.
//!
//! Two ways to form the cluster ([`Membership`]): a static list of members, or gossip
//! (`--seeds`, `--bootstrap-expect`), which lets the membership nemesis stop nodes for good
//! (SIGTERM = graceful leave, or SIGKILL) and add fresh ones on spare hosts. The [`Roster`]
//! tells clients which nodes exist right now.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tonic::transport::Endpoint;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::cluster_client::ClusterClient;

use crate::net::{Host, Network, sh};

/// The port every node listens on, in its own namespace.
pub const PORT: u16 = 7400;
/// How long a status query may take.
const STATUS_TIMEOUT: Duration = Duration::from_millis(800);
/// Gossip mode: how long a node must be down before the leader removes it (short, so a
/// SIGKILLed node is replaced within a fault window).
pub const GOSSIP_GRACE_MS: u64 = 3000;
/// How long a node stopped with SIGTERM has to leave and exit before it gets SIGKILL (the
/// node itself waits up to 3 s for its removal to commit).
const LEAVE_PATIENCE: Duration = Duration::from_secs(10);

/// How the nodes form their cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Membership {
    /// `--initial-members` lists every node: a fixed cluster.
    #[default]
    Static,
    /// `--seeds` + `--bootstrap-expect`, the test gossip preset and a short grace: nodes
    /// can leave and join (needed by the membership nemesis).
    Gossip,
}

/// Voters the leader keeps in gossip mode for `nodes` initial nodes: 5 from 7 nodes up,
/// 3 from 3, else 1.
pub fn voters_for(nodes: usize) -> u32 {
    match nodes {
        0..=2 => 1,
        3..=6 => 3,
        _ => 5,
    }
}

/// The nodes clients may use: every node started and not stopped for good, `(id, IP:PORT)`
/// by id order, and each worker's home node. Cheap to clone; [`Db`] keeps it current.
///
/// Homes stay balanced as nodes come and go: the workers of a node stopped for good move to
/// the node with the fewest workers, and a fresh node takes one worker from the node with
/// the most (when that one has at least two), so new nodes get used.
#[derive(Debug, Clone, Default)]
pub struct Roster(Arc<Mutex<RosterInner>>);

#[derive(Debug, Default)]
struct RosterInner {
    nodes: Vec<(u64, String)>,
    /// worker id -> home node id.
    homes: BTreeMap<u64, u64>,
}

impl RosterInner {
    fn load(&self, node: u64) -> usize {
        self.homes.values().filter(|h| **h == node).count()
    }
}

impl Roster {
    /// The nodes now, by id order.
    pub fn live(&self) -> Vec<(u64, String)> {
        self.0.lock().expect("roster lock").nodes.clone()
    }
    /// Whether node `id` is still there.
    pub fn contains(&self, id: u64) -> bool {
        self.0.lock().expect("roster lock").nodes.iter().any(|(x, _)| *x == id)
    }
    /// Worker `worker`'s home node: at first the `worker % n`-th node; `None` if no node is
    /// left.
    pub fn home(&self, worker: u64) -> Option<u64> {
        let mut r = self.0.lock().expect("roster lock");
        if r.nodes.is_empty() {
            return None;
        }
        let first = r.nodes[(worker as usize) % r.nodes.len()].0;
        Some(*r.homes.entry(worker).or_insert(first))
    }
    pub(crate) fn add(&self, id: u64, addr: String) {
        let mut r = self.0.lock().expect("roster lock");
        r.nodes.push((id, addr));
        r.nodes.sort();
        let busiest = r.nodes.iter().map(|(n, _)| *n).max_by_key(|n| (r.load(*n), std::cmp::Reverse(*n)));
        if let Some(from) = busiest.filter(|n| r.load(*n) >= 2)
            && let Some(worker) = r.homes.iter().find(|(_, h)| **h == from).map(|(w, _)| *w)
        {
            r.homes.insert(worker, id);
            tracing::info!(worker, from, to = id, "worker moves home to a new node");
        }
    }
    pub(crate) fn remove(&self, id: u64) {
        let mut r = self.0.lock().expect("roster lock");
        r.nodes.retain(|(x, _)| *x != id);
        let homeless: Vec<u64> = r.homes.iter().filter(|(_, h)| **h == id).map(|(w, _)| *w).collect();
        for worker in homeless {
            // The least loaded node; the newest among equals.
            let Some(to) =
                r.nodes.iter().map(|(n, _)| *n).min_by_key(|n| (r.load(*n), std::cmp::Reverse(*n)))
            else {
                r.homes.remove(&worker);
                continue;
            };
            r.homes.insert(worker, to);
            tracing::info!(worker, from = id, to, "worker's home node is gone; new home");
        }
    }
}

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
    /// The run's TLS certificates could not be made (`--tls`); nothing was started.
    #[error("cannot make the TLS certificates: {0}")]
    Certs(String),
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
    /// Static or gossip membership.
    pub membership: Membership,
    /// TLS files every node gets (`--tls-*-file`); without them nodes run `--insecure` (the
    /// hosts are network namespaces of this machine).
    pub tls: Option<TlsFiles>,
}

/// A run's TLS files: the CA and one node certificate naming every host's IP.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA (clients and agents trust it).
    pub ca: PathBuf,
    /// The node certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Makes a development CA and a node certificate for `ips` in `dir` with `weft certs` of
    /// `binary`.
    pub fn make(binary: &Path, dir: &Path, ips: &[String]) -> Result<Self, Error> {
        let d = dir.display().to_string();
        let hosts = ips.join(",");
        for args in [
            vec!["certs", "ca", "--dir", &d],
            vec!["certs", "node", "jepsen-node", "--dir", &d, "--host", &hosts],
        ] {
            let out = std::process::Command::new(binary)
                .args(&args)
                .output()
                .map_err(|e| Error::Certs(format!("cannot run {}: {e}", binary.display())))?;
            if !out.status.success() {
                return Err(Error::Certs(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
            }
        }
        let tls = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("jepsen-node.pem"),
            key: dir.join("jepsen-node.key"),
        };
        let client = weft_agent::Tls::from_files(&tls.ca, None).map_err(|e| Error::Certs(e.to_string()))?;
        let _ = CLIENT_TLS.set(client);
        Ok(tls)
    }
}

/// The TLS settings of this process's clients, once a run made its certificates; every
/// channel of the harness uses them.
static CLIENT_TLS: std::sync::OnceLock<weft_agent::Tls> = std::sync::OnceLock::new();

/// The clients' TLS settings (`None`: plain connections).
pub fn client_tls() -> Option<weft_agent::Tls> {
    CLIENT_TLS.get().cloned()
}

/// The bearer token this process's clients send (`--auth`): the run's admin token while the
/// harness sets the run up, then the workload's client token. Each channel takes the one in
/// force when it is made.
static CLIENT_TOKEN: RwLock<Option<weft_agent::Token>> = RwLock::new(None);

/// Sets the token channels made from now on send.
pub fn set_client_token(token: Option<weft_agent::Token>) {
    *CLIENT_TOKEN.write().unwrap_or_else(|p| p.into_inner()) = token;
}

/// The token channels made now send (`None`: no auth).
pub fn client_token() -> Option<weft_agent::Token> {
    CLIENT_TOKEN.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// A channel of the harness: TLS as the run says, and the client token on every request.
pub type Channel = weft_agent::token::Authorized<tonic::transport::Channel>;

fn lazy(endpoint: &str, configure: impl FnOnce(Endpoint) -> Endpoint) -> Channel {
    lazy_with(endpoint, configure, client_token())
}

fn lazy_with(
    endpoint: &str,
    configure: impl FnOnce(Endpoint) -> Endpoint,
    token: Option<weft_agent::Token>,
) -> Channel {
    let tls = CLIENT_TLS.get();
    let uri = weft_agent::endpoint_uri(endpoint, tls.is_some()).expect("IP:PORT is a valid endpoint");
    let endpoint = configure(Endpoint::from_shared(uri).expect("IP:PORT is a valid URI"));
    let channel = match tls {
        Some(tls) => tls.channel(endpoint),
        None => endpoint.connect_lazy(),
    };
    weft_agent::token::Authorized::new(channel, token)
}

/// Finds the `weft` binary: `explicit` if given, else the one of the same build as the running
/// executable (beside it, or one directory up from cargo's `deps/`, where tests live; CI
/// builds for a named target, into `target/<triple>/debug/`), else the newer of
/// `target/release/weft` and `target/debug/weft` under the current directory or the workspace.
pub fn find_binary(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(p) = explicit {
        return if p.is_file() { Ok(p.to_path_buf()) } else { Err(Error::NoBinary(p.display().to_string())) };
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let dir = if dir.ends_with("deps") { dir.parent().unwrap_or(dir) } else { dir };
        let sibling = dir.join("weft");
        if sibling.is_file() {
            return Ok(sibling);
        }
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
    /// Stopped for good by the membership nemesis: never restarted.
    gone: bool,
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
    /// Whether the node was stopped for good (it stays listed, and is never restarted).
    pub fn is_gone(&self) -> bool {
        self.gone
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
    roster: Roster,
    /// `--voters` in gossip mode.
    voters: u32,
}

impl Db {
    /// Starts one node per host of `net` (not the spares), all members of one cluster:
    /// static, or formed by gossip once all of them see each other.
    pub fn start(net: &Network, options: Options) -> Result<Self, Error> {
        if !options.binary.is_file() {
            return Err(Error::NoBinary(options.binary.display().to_string()));
        }
        let hosts = net.hosts();
        let members = hosts.iter().map(|h| format!("{}={}:{PORT}", h.id, h.ip)).collect::<Vec<_>>().join(",");
        let seeds = hosts.iter().map(|h| format!("{}:{PORT}", h.ip)).collect::<Vec<_>>().join(",");
        let voters = voters_for(hosts.len());
        let mut db = Self { nodes: Vec::new(), options, roster: Roster::default(), voters };
        for host in hosts {
            let membership = match db.options.membership {
                Membership::Static => vec!["--initial-members".to_string(), members.clone()],
                Membership::Gossip => {
                    vec![
                        "--seeds".to_string(),
                        seeds.clone(),
                        "--bootstrap-expect".into(),
                        hosts.len().to_string(),
                    ]
                }
            };
            db.launch(host, membership)?;
        }
        Ok(db)
    }

    /// Starts a fresh node (id = the host's id, empty data directory) on spare host `host`
    /// that joins the running cluster through `seeds` (`IP:PORT` of live nodes).
    pub fn add(&mut self, host: &Host, seeds: &[String]) -> Result<(), Error> {
        self.launch(host, vec!["--seeds".to_string(), seeds.join(",")])
    }

    fn launch(&mut self, host: &Host, membership: Vec<String>) -> Result<(), Error> {
        let addr = format!("{}:{PORT}", host.ip);
        let data_dir = self.options.data_root.join(format!("n{}", host.id));
        let mut args = vec![
            "--node-id".to_string(),
            host.id.to_string(),
            "--cluster".into(),
            "jepsen".into(),
            "--listen".into(),
            addr.clone(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        match &self.options.tls {
            Some(tls) => {
                for (flag, path) in
                    [("--tls-ca-file", &tls.ca), ("--tls-cert-file", &tls.cert), ("--tls-key-file", &tls.key)]
                {
                    args.extend([flag.to_string(), path.display().to_string()]);
                }
            }
            // The hosts live in network namespaces of this machine only.
            None => args.push("--insecure".into()),
        }
        args.extend(membership);
        if self.options.membership == Membership::Gossip {
            args.extend([
                "--voters".to_string(),
                self.voters.to_string(),
                "--gossip-preset".into(),
                "test".into(),
                "--dead-node-grace-ms".into(),
                GOSSIP_GRACE_MS.to_string(),
            ]);
        }
        let log = self.options.log_dir.join(format!("n{}.log", host.id));
        self.nodes.push(Node {
            id: host.id,
            host: host.clone(),
            addr: addr.clone(),
            child: None,
            paused: false,
            gone: false,
            args,
            log,
        });
        self.spawn(host.id)?;
        self.roster.add(host.id, addr);
        Ok(())
    }

    /// The nodes clients may use; kept current as nodes leave and join.
    pub fn roster(&self) -> Roster {
        self.roster.clone()
    }

    /// Ids of the nodes not stopped for good, by id order (running, paused or killed).
    pub fn member_ids(&self) -> Vec<u64> {
        self.nodes.iter().filter(|n| !n.gone).map(|n| n.id).collect()
    }

    /// Stops node `id` for good: SIGTERM (a graceful leave; SIGKILL if it has not exited
    /// within 10 s) when `graceful`, else SIGKILL. It is never restarted.
    pub async fn stop_for_good(&mut self, id: u64, graceful: bool) -> Result<(), Error> {
        self.roster.remove(id);
        let node = self.node_mut(id);
        node.gone = true;
        if graceful && let Some(pid) = node.pid() {
            if node.paused {
                sh("kill", &["-CONT", &pid.to_string()])?;
                node.paused = false;
            }
            sh("kill", &["-TERM", &pid.to_string()])?;
            let deadline = Instant::now() + LEAVE_PATIENCE;
            while Instant::now() < deadline {
                if let Some(status) = node.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    tracing::info!(node = id, %status, "node left");
                    node.child = None;
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tracing::warn!(node = id, "node did not exit within 10 s of SIGTERM; killing it");
        }
        self.kill(id);
        Ok(())
    }

    /// The voters of the configuration `id` holds (empty if it does not answer).
    pub async fn voters_seen_by(&self, id: u64) -> Vec<u64> {
        let Some(node) = self.nodes.iter().find(|n| n.id == id) else { return Vec::new() };
        node_status(&node.addr).await.map(|s| s.voters).unwrap_or_default()
    }

    /// The cluster as the leader sees it (`Cluster.Status`), if a leader answers.
    pub async fn cluster_status(&self) -> Option<pb::ClusterStatus> {
        let leader = self.leader().await?;
        let node = self.nodes.iter().find(|n| n.id == leader)?;
        let mut c = ClusterClient::new(channel(&node.addr, STATUS_TIMEOUT * 3));
        let mut req = tonic::Request::new(pb::StatusRequest {});
        req.set_timeout(STATUS_TIMEOUT * 3);
        c.status(req).await.ok().map(|r| r.into_inner())
    }

    /// Waits (up to `patience`) until the leader's membership holds exactly the nodes not
    /// stopped for good; returns the last status seen.
    pub async fn wait_for_membership(&self, patience: Duration) -> Option<pb::ClusterStatus> {
        let deadline = Instant::now() + patience;
        let want: Vec<u64> = self.member_ids();
        let mut last = None;
        loop {
            if let Some(s) = self.cluster_status().await {
                let mut have: Vec<u64> =
                    s.members.iter().filter(|m| m.role != "not a member").map(|m| m.id).collect();
                have.sort();
                let settled = have == want;
                last = Some(s);
                if settled {
                    return last;
                }
            }
            if Instant::now() > deadline {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
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

    /// Starts node `id` again on its data directory, if it is not running and not gone
    /// for good.
    pub fn restart(&mut self, id: u64) -> Result<(), Error> {
        let node = self.node_mut(id);
        if node.child.is_some() || node.gone {
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
        for node in self.nodes.iter().filter(|n| n.is_running() && !n.paused && !n.gone) {
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
            for node in self.nodes.iter().filter(|n| n.is_running() && !n.paused && !n.gone) {
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
    lazy(addr, |e| e.connect_timeout(Duration::from_millis(500)).timeout(timeout))
}

/// [`channel`] that sends `token` rather than the client token.
pub fn channel_with(addr: &str, timeout: Duration, token: weft_agent::Token) -> Channel {
    lazy_with(addr, |e| e.connect_timeout(Duration::from_millis(500)).timeout(timeout), Some(token))
}

/// How often a long-lived call's connection is pinged (HTTP/2 keep-alive).
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a ping may go unanswered before the connection is dropped: with
/// [`KEEP_ALIVE_INTERVAL`], a paused node is noticed within about 3 s.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// A lazily connecting channel to `addr` for long-lived calls (a stream listener): no
/// per-request timeout, and keep-alive pings, so a paused or vanished node is noticed.
pub fn stream_channel(addr: &str) -> Channel {
    lazy(addr, |e| {
        e.connect_timeout(Duration::from_millis(500))
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
    })
}

/// One node's own status, or `None` if it does not answer quickly.
pub async fn node_status(addr: &str) -> Option<pb::NodeStatusReply> {
    let mut c = ClusterClient::new(channel(addr, STATUS_TIMEOUT));
    let mut req = tonic::Request::new(pb::StatusRequest {});
    req.set_timeout(STATUS_TIMEOUT);
    tokio::time::timeout(STATUS_TIMEOUT * 2, c.node_status(req)).await.ok()?.ok().map(|r| r.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn homes_follow_nodes_that_leave_and_join() {
        let r = Roster::default();
        for id in 1..=5 {
            r.add(id, format!("10.0.0.{id}:1"));
        }
        let homes = |r: &Roster| (0..5).map(|w| r.home(w).unwrap()).collect::<Vec<_>>();
        assert_eq!(homes(&r), vec![1, 2, 3, 4, 5]);
        r.remove(3);
        let h = homes(&r);
        assert!(!h.contains(&3), "{h:?}");
        r.add(6, "10.0.0.6:1".into());
        let h = homes(&r);
        assert!(h.contains(&6), "a new node gets a worker: {h:?}");
        assert!(!r.contains(3) && r.contains(6));
        for id in [1, 2, 4, 5] {
            r.remove(id);
        }
        assert_eq!(homes(&r), vec![6; 5], "all go to the last node");
        r.remove(6);
        assert_eq!(r.home(0), None);
    }
}

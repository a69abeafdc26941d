//! The network: one Linux network namespace per node, each joined by a veth pair to a bridge
//! in the root namespace, on a private /24 that nothing else on the host uses.
//!
//! ```text
//!   root namespace (weft-jepsen, its clients)
//!   ┌───────────────────────── bridge wj<run>br 10.77.X.1/24 ─────────────────────────┐
//!   └──┬ wj<run>h1 ─────────┬ wj<run>h2 ─────────┬ ...                              ┘
//!      │ veth               │ veth
//!   ┌──┴──────────────┐  ┌──┴──────────────┐
//!   │ netns wj-<run>-n1│  │ netns wj-<run>-n2│  ...   each: lo + eth 10.77.X.(10+k)/24,
//!   │ weft node 1      │  │ weft node 2      │        no default route, iptables INPUT
//!   └─────────────────┘  └─────────────────┘        rules for partitions
//! ```
//!
//! The namespaces have no route off the subnet, so nodes can reach only each other and the
//! bridge address. Partitions drop packets in the INPUT chain of each namespace by source
//! address; traffic from the bridge address (the clients) is never dropped.
//!
//! The executions workload adds one more namespace per agent process, `wj-<run>-a<k>` at
//! 10.77.X.(200+k), joined to the same bridge: agents reach every node, and a partition,
//! which drops only node addresses, never cuts them off (like the clients).
//!
//! Every name carries the run id, and `/run/weft-jepsen/<run>` records the owning process,
//! so [`cleanup`] can remove what a dead run left behind without touching a live one.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Namespaces of this suite are named `wj-<run>-n<k>`; links start with `wj<run>`.
pub const PREFIX: &str = "wj";
/// Where runs record their owner pid, and the lock that serializes subnet choice.
pub const STATE_DIR: &str = "/run/weft-jepsen";
/// The suite's networks are 10.77.X.0/24 for a free X.
pub const SUBNET: [u8; 2] = [10, 77];
/// Most nodes one network holds (addresses .10 to .10 + MAX_NODES - 1).
pub const MAX_NODES: usize = 100;
/// Most agent hosts one network holds (addresses .201 to .200 + MAX_AGENTS).
pub const MAX_AGENTS: usize = 50;
/// Agent host `k` has address 10.77.X.(AGENT_BASE + k).
const AGENT_BASE: u8 = 200;
/// Comment on the root-namespace FORWARD rule that lets bridge traffic pass a host whose
/// FORWARD policy is DROP (Docker's) when bridge netfilter is on.
const FORWARD_COMMENT: &str = "weft-jepsen";

/// Setting up, cutting or removing the network failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command ran and failed; what it changed is unknown, cleanup removes it.
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    /// A command could not be started (is iproute2 / iptables installed?).
    #[error("cannot run `{command}`: {source}")]
    Spawn { command: String, source: std::io::Error },
    /// Every 10.77.X.0/24 is in use; nothing was created.
    #[error("no free 10.77.X.0/24 subnet on this host")]
    NoSubnet,
    /// The state directory or lock file could not be used; nothing was created.
    #[error("{path}: {source}")]
    State { path: String, source: std::io::Error },
    /// Too many or too few nodes; nothing was created.
    #[error("a network holds 1 to {MAX_NODES} nodes, not {0}")]
    Size(usize),
    /// Too many agent hosts; nothing was created.
    #[error("a network holds at most {MAX_AGENTS} agent hosts, not {0}")]
    AgentSize(usize),
    /// Not root: namespaces and iptables need CAP_SYS_ADMIN and CAP_NET_ADMIN.
    #[error("weft-jepsen must run as root (it creates network namespaces); effective uid is {0}")]
    NotRoot(u32),
}

/// Runs a command and returns its stdout.
pub(crate) fn sh(program: &str, args: &[&str]) -> Result<String, Error> {
    let command = format!("{program} {}", args.join(" "));
    tracing::trace!(%command, "run");
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| Error::Spawn { command: command.clone(), source })?;
    if !out.status.success() {
        return Err(Error::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fails unless the process runs as root.
pub fn require_root() -> Result<(), Error> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|source| Error::State { path: "/proc/self/status".into(), source })?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX);
    if euid == 0 { Ok(()) } else { Err(Error::NotRoot(euid)) }
}

/// One node's (or agent process's) host: a namespace with one address.
#[derive(Debug, Clone)]
pub struct Host {
    /// The node id (1-based); for an agent host, the agent's number (1-based).
    pub id: u64,
    /// The namespace's name (`ip netns exec <netns> ...`).
    pub netns: String,
    /// The node's address on the bridge.
    pub ip: Ipv4Addr,
}

/// Which peers each node must not hear from: `grudge[a]` holds the nodes whose packets
/// node `a` drops.
pub type Grudge = BTreeMap<u64, BTreeSet<u64>>;

/// A running network; removed when dropped.
#[derive(Debug)]
pub struct Network {
    run: String,
    bridge: String,
    gateway: Ipv4Addr,
    hosts: Vec<Host>,
    /// Hosts with no node at first, where nodes added by the membership nemesis go.
    spares: Vec<Host>,
    /// Hosts of agent processes (executions workload): never partitioned.
    agents: Vec<Host>,
    forward_rule: Option<Vec<String>>,
    destroyed: bool,
}

fn state_file(run: &str) -> PathBuf {
    Path::new(STATE_DIR).join(run)
}

fn state_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::State { path: path.display().to_string(), source }
}

impl Network {
    /// Creates the bridge and `nodes` namespaces for run `run` (4 hex digits).
    pub fn create(run: &str, nodes: usize) -> Result<Self, Error> {
        Self::create_with_spares(run, nodes, 0)
    }

    /// Creates the bridge, `nodes` namespaces, and `spares` more (hosts `nodes + 1 ..`,
    /// named and addressed like the others) for nodes added during the run.
    pub fn create_with_spares(run: &str, nodes: usize, spares: usize) -> Result<Self, Error> {
        Self::create_with_agents(run, nodes, spares, 0)
    }

    /// [`Network::create_with_spares`], plus `agents` agent hosts (`wj-<run>-a1`, ... at
    /// 10.77.X.201, ...) on the same bridge, for agent processes.
    pub fn create_with_agents(run: &str, nodes: usize, spares: usize, agents: usize) -> Result<Self, Error> {
        require_root()?;
        if nodes == 0 || nodes + spares > MAX_NODES {
            return Err(Error::Size(nodes + spares));
        }
        if agents > MAX_AGENTS {
            return Err(Error::AgentSize(agents));
        }
        std::fs::create_dir_all(STATE_DIR).map_err(state_err(Path::new(STATE_DIR)))?;
        let owner = state_file(run);
        std::fs::File::create(&owner)
            .and_then(|mut f| writeln!(f, "{}", std::process::id()))
            .map_err(state_err(&owner))?;
        let mut net = Self {
            run: run.to_string(),
            bridge: format!("{PREFIX}{run}br"),
            gateway: Ipv4Addr::UNSPECIFIED,
            hosts: Vec::new(),
            spares: Vec::new(),
            agents: Vec::new(),
            forward_rule: None,
            destroyed: false,
        };
        // Choosing a subnet and taking it must not interleave with another run doing the same.
        let lock_path = Path::new(STATE_DIR).join("lock");
        let lock = std::fs::File::create(&lock_path).map_err(state_err(&lock_path))?;
        lock.lock().map_err(state_err(&lock_path))?;
        let x = free_subnet()?;
        net.gateway = Ipv4Addr::new(SUBNET[0], SUBNET[1], x, 1);
        let bridge = net.bridge.clone();
        sh("ip", &["link", "add", &bridge, "type", "bridge"])?;
        sh("ip", &["addr", "add", &format!("{}/24", net.gateway), "dev", &bridge])?;
        drop(lock);
        sh("ip", &["link", "set", &bridge, "up"])?;
        let rule: Vec<String> = [
            "FORWARD",
            "-i",
            &bridge,
            "-o",
            &bridge,
            "-m",
            "comment",
            "--comment",
            FORWARD_COMMENT,
            "-j",
            "ACCEPT",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut insert = vec!["-w".to_string(), "-I".to_string()];
        insert.extend(rule.iter().cloned());
        sh("iptables", &insert.iter().map(String::as_str).collect::<Vec<_>>())?;
        net.forward_rule = Some(rule);
        for k in 1..=(nodes + spares) as u64 {
            let host = Host {
                id: k,
                netns: format!("{PREFIX}-{run}-n{k}"),
                ip: Ipv4Addr::new(SUBNET[0], SUBNET[1], x, 9 + k as u8),
            };
            sh("ip", &["netns", "add", &host.netns])?;
            if k as usize <= nodes {
                net.hosts.push(host.clone());
            } else {
                net.spares.push(host.clone());
            }
            net.plug(&host, &format!("{PREFIX}{run}h{k}"), &format!("{PREFIX}{run}p{k}"))?;
        }
        for k in 1..=agents as u64 {
            let host = Host {
                id: k,
                netns: format!("{PREFIX}-{run}-a{k}"),
                ip: Ipv4Addr::new(SUBNET[0], SUBNET[1], x, AGENT_BASE + k as u8),
            };
            sh("ip", &["netns", "add", &host.netns])?;
            net.agents.push(host.clone());
            net.plug(&host, &format!("{PREFIX}{run}a{k}"), &format!("{PREFIX}{run}q{k}"))?;
        }
        tracing::info!(run, bridge = %net.bridge, gateway = %net.gateway, nodes, spares, agents, "network up");
        Ok(net)
    }

    /// Joins `host`'s namespace to the bridge: a veth pair `outside` (on the bridge) and
    /// `inside` (in the namespace, with the host's address), and `lo` up.
    fn plug(&self, host: &Host, outside: &str, inside: &str) -> Result<(), Error> {
        sh("ip", &["-n", &host.netns, "link", "set", "lo", "up"])?;
        sh("ip", &["link", "add", outside, "type", "veth", "peer", "name", inside, "netns", &host.netns])?;
        sh("ip", &["link", "set", outside, "master", &self.bridge])?;
        sh("ip", &["link", "set", outside, "up"])?;
        sh("ip", &["-n", &host.netns, "addr", "add", &format!("{}/24", host.ip), "dev", inside])?;
        sh("ip", &["-n", &host.netns, "link", "set", inside, "up"])?;
        Ok(())
    }

    /// The run id.
    pub fn run(&self) -> &str {
        &self.run
    }

    /// The nodes' hosts, by id order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The spare hosts (no node at first), by id order.
    pub fn spares(&self) -> &[Host] {
        &self.spares
    }

    /// The agent hosts, by number.
    pub fn agents(&self) -> &[Host] {
        &self.agents
    }

    fn all_hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter().chain(&self.spares)
    }

    /// The bridge's address (where clients come from).
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    fn host(&self, id: u64) -> Option<&Host> {
        self.all_hosts().find(|h| h.id == id)
    }

    /// Replaces the partition in force by `grudge`.
    pub fn cut(&self, grudge: &Grudge) -> Result<(), Error> {
        self.heal()?;
        for (node, peers) in grudge {
            let Some(host) = self.host(*node) else { continue };
            for peer in peers.iter().filter_map(|p| self.host(*p)) {
                let src = peer.ip.to_string();
                sh(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &host.netns,
                        "iptables",
                        "-w",
                        "-A",
                        "INPUT",
                        "-s",
                        &src,
                        "-j",
                        "DROP",
                    ],
                )?;
            }
        }
        tracing::info!(?grudge, "network cut");
        Ok(())
    }

    /// Removes every partition rule.
    pub fn heal(&self) -> Result<(), Error> {
        for host in self.all_hosts() {
            sh("ip", &["netns", "exec", &host.netns, "iptables", "-w", "-F", "INPUT"])?;
        }
        Ok(())
    }

    /// Removes the namespaces (and every process still in them), links and rules. Safe to
    /// call more than once; errors are logged, not returned, so cleanup always goes on.
    pub fn destroy(&mut self) {
        if self.destroyed {
            return;
        }
        self.destroyed = true;
        for host in self.hosts.iter().chain(&self.spares) {
            remove_netns(&host.netns);
            // Deleting a namespace destroys its veth end asynchronously; deleting the root
            // end now takes the pair down at once, so nothing is left when this returns.
            let _ = sh("ip", &["link", "del", &format!("{PREFIX}{}h{}", self.run, host.id)]);
        }
        for host in &self.agents {
            remove_netns(&host.netns);
            let _ = sh("ip", &["link", "del", &format!("{PREFIX}{}a{}", self.run, host.id)]);
        }
        if let Some(rule) = self.forward_rule.take() {
            let mut args = vec!["-w", "-D"];
            args.extend(rule.iter().map(String::as_str));
            if let Err(e) = sh("iptables", &args) {
                tracing::warn!(error = %e, "cannot remove the FORWARD rule");
            }
        }
        if let Err(e) = sh("ip", &["link", "del", &self.bridge]) {
            tracing::warn!(error = %e, bridge = %self.bridge, "cannot remove the bridge");
        }
        let _ = std::fs::remove_file(state_file(&self.run));
        tracing::info!(run = %self.run, "network removed");
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// Kills every process in a namespace and deletes it (deleting the namespace deletes its
/// end of the veth pair, and with it the pair).
fn remove_netns(netns: &str) {
    if let Ok(pids) = sh("ip", &["netns", "pids", netns]) {
        for pid in pids.split_whitespace() {
            let _ = sh("kill", &["-9", pid]);
        }
    }
    if let Err(e) = sh("ip", &["netns", "del", netns]) {
        tracing::warn!(error = %e, netns, "cannot remove namespace");
    }
}

fn free_subnet() -> Result<u8, Error> {
    let addrs = sh("ip", &["-o", "-4", "addr", "show"])?;
    let used: BTreeSet<u8> = addrs
        .split_whitespace()
        .filter_map(|w| w.split('/').next()?.parse::<Ipv4Addr>().ok())
        .filter(|ip| ip.octets()[..2] == SUBNET)
        .map(|ip| ip.octets()[2])
        .collect();
    (1..=254u8).find(|x| !used.contains(x)).ok_or(Error::NoSubnet)
}

/// Whether the run that owns `run` is gone (no state file, or its process is dead).
fn run_is_dead(run: &str) -> bool {
    match std::fs::read_to_string(state_file(run)) {
        Ok(pid) => {
            let pid = pid.trim();
            pid.is_empty()
                || (pid != std::process::id().to_string() && !Path::new("/proc").join(pid).exists())
        }
        Err(_) => true,
    }
}

/// Removes the namespaces, links and rules of runs whose process is gone (or of every run,
/// with `all`). Returns what it removed.
pub fn cleanup(all: bool) -> Result<Vec<String>, Error> {
    require_root()?;
    let mut removed = Vec::new();
    let namespaces = sh("ip", &["netns", "list"])?;
    for ns in namespaces.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = ns.strip_prefix(&format!("{PREFIX}-")) else { continue };
        let run = rest.split('-').next().unwrap_or_default();
        if all || run_is_dead(run) {
            remove_netns(ns);
            removed.push(format!("netns {ns}"));
        }
    }
    let links = sh("ip", &["-o", "link", "show"])?;
    for name in links.lines().filter_map(|l| l.split(": ").nth(1)).map(|n| n.split('@').next().unwrap_or(n)) {
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        if rest.len() < 6 || !rest[..4].chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        if (all || run_is_dead(&rest[..4])) && sh("ip", &["link", "del", name]).is_ok() {
            removed.push(format!("link {name}"));
        }
    }
    // FORWARD rules name their bridge: remove those whose bridge is gone.
    let rules = sh("iptables", &["-w", "-S", "FORWARD"])?;
    let live: BTreeSet<String> = sh("ip", &["-o", "link", "show"])?
        .lines()
        .filter_map(|l| l.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n).to_string()))
        .collect();
    for rule in rules.lines().filter(|r| r.contains(FORWARD_COMMENT)) {
        let words: Vec<&str> = rule.split_whitespace().map(|w| w.trim_matches('"')).collect();
        let bridge = words.windows(2).find(|w| w[0] == "-i").map(|w| w[1]).unwrap_or_default();
        if !live.contains(bridge) {
            let mut args = vec!["-w", "-D"];
            args.extend(words.iter().skip(1));
            if sh("iptables", &args).is_ok() {
                removed.push(format!("FORWARD rule for {bridge}"));
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir(STATE_DIR) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name != "lock" && (all || run_is_dead(&name)) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    if !removed.is_empty() {
        tracing::info!(count = removed.len(), "removed leftovers of earlier runs");
    }
    Ok(removed)
}

/// A fresh run id: 4 hex digits not used by any namespace or link on the host.
pub fn new_run_id(seed: u64) -> Result<String, Error> {
    let namespaces = sh("ip", &["netns", "list"])?;
    let links = sh("ip", &["-o", "link", "show"])?;
    let mut x = seed;
    for _ in 0..1000 {
        x = crate::rng::splitmix64(x);
        let run = format!("{:04x}", x & 0xffff);
        if !namespaces.contains(&format!("{PREFIX}-{run}-"))
            && !links.contains(&format!("{PREFIX}{run}"))
            && !state_file(&run).exists()
        {
            return Ok(run);
        }
    }
    Err(Error::NoSubnet)
}

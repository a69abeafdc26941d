//! The key-value workloads: puts of unique keys, compare-and-set chains and linearizable gets,
//! each for a fixed time with a given number of clients against one node (the leader, or a
//! follower that forwards to it), measuring ops/s, latency percentiles, log entries and the
//! servers' CPU per operation. With etcd available ([`crate::etcd`]), the put and get rows are
//! also measured on an etcd cluster of the same size, with the same clients and loop
//! ([`KvClient`]), the two systems taking turns at going first.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::task::JoinSet;
use tonic::transport::Endpoint;

use crate::cluster::{Access, Cluster, Scratch, Security};
use crate::etcd::EtcdCluster;
use crate::lockstep::{self, Lockstep};
use crate::probes::{CpuTicks, TICKS_PER_SEC, cpu_ticks, metrics_over};
use crate::report::percentile_ms;
use crate::store::{KvClient, System};
use crate::{Args, ERROR_PAUSE, REQUEST_TIMEOUT, Workload};

/// One kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Put,
    Cas,
    Get,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Cas => "cas",
            Op::Get => "get (linearizable)",
        }
    }
}

/// Figures of one workload at one concurrency.
#[derive(Debug, Clone)]
pub struct Row {
    pub system: System,
    pub nodes: usize,
    pub op: Op,
    pub via_follower: bool,
    /// "n1" (Weft) or "m1" (etcd): the node the clients talked to.
    pub target: String,
    pub clients: usize,
    pub channels: usize,
    /// Operations that completed inside the measured window.
    pub ops: u64,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    /// Log entries the leader appended while measuring (None if it could not be asked).
    pub entries: Option<u64>,
    /// The Raft term changed while measuring: there was an election.
    pub term_changed: bool,
    /// Cores the server processes used together while measuring.
    pub node_cores: f64,
    /// Cores this benchmark process used while measuring.
    pub bench_cores: f64,
    /// CPU time of the server processes together per operation, ms (NaN without operations).
    pub server_cpu_ms_per_op: f64,
}

pub type RowKey = (usize, bool, Op, usize, System);

impl Row {
    pub fn key(&self) -> RowKey {
        (self.nodes, self.via_follower, self.op, self.clients, self.system)
    }
}

/// The servers a row measures.
#[derive(Clone, Copy)]
pub enum Servers<'a> {
    Weft(&'a Cluster),
    Etcd(&'a EtcdCluster),
}

impl Servers<'_> {
    fn system(&self) -> System {
        match self {
            Servers::Weft(_) => System::Weft,
            Servers::Etcd(_) => System::Etcd,
        }
    }

    fn addr(&self, id: u64) -> anyhow::Result<String> {
        match self {
            Servers::Weft(c) => c.addr(id).map(str::to_owned),
            Servers::Etcd(c) => c.addr(id).map(str::to_owned),
        }
    }

    fn access(&self) -> Access {
        match self {
            Servers::Weft(c) => c.access(),
            Servers::Etcd(_) => Access::default(),
        }
    }

    fn pids(&self) -> Vec<u32> {
        match self {
            Servers::Weft(c) => c.pids(),
            Servers::Etcd(c) => c.pids(),
        }
    }

    /// "n1" for Weft's node 1, "m1" for etcd's member 1.
    fn name(&self, id: u64) -> String {
        match self {
            Servers::Weft(_) => format!("n{id}"),
            Servers::Etcd(_) => format!("m{id}"),
        }
    }

    /// What reads where the log of node `leader` stands.
    fn log_probe(&self, leader: u64) -> anyhow::Result<LogProbe> {
        let addr = self.addr(leader)?;
        Ok(match self {
            Servers::Weft(c) => LogProbe::Weft(addr, c.access()),
            Servers::Etcd(_) => LogProbe::Etcd(addr),
        })
    }
}

/// Reads a leader's last log index and term: Weft's `/metrics`, etcd's `Maintenance.Status`.
enum LogProbe {
    Weft(String, Access),
    Etcd(String),
}

impl LogProbe {
    async fn read(&self) -> Option<(u64, u64)> {
        match self {
            LogProbe::Weft(addr, access) => {
                metrics_over(addr, access).await.ok().map(|m| (m.last_log_index, m.term))
            }
            LogProbe::Etcd(addr) => crate::etcd::status(addr).await.ok().map(|s| (s.raft_index, s.raft_term)),
        }
    }
}

/// One run of the put, cas, get and follower workloads: for each cluster size, each
/// workload the arguments ask for, at each number of clients; with `etcd`, the put and get
/// workloads again on etcd, Weft first at odd turns and etcd first at even ones (a turn is
/// the run number plus the cluster size's place in `--nodes`), so drift in the machine's load
/// falls on both alike.
pub async fn measure(
    args: &Args,
    weft: &Path,
    etcd: Option<&Path>,
    scratch: &Scratch,
    run: usize,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let ops: Vec<Op> = [(Workload::Put, Op::Put), (Workload::Cas, Op::Cas), (Workload::Get, Op::Get)]
        .into_iter()
        .filter(|(w, _)| args.wants(*w))
        .map(|(_, op)| op)
        .collect();
    let etcd_ops: Vec<Op> = ops.iter().copied().filter(|op| *op != Op::Cas).collect();
    let follower = args.wants(Workload::Follower) && args.nodes.contains(&3);
    for (turn, &n) in args.nodes.iter().enumerate() {
        let mut systems = vec![System::Weft];
        if etcd.is_some() && !etcd_ops.is_empty() {
            if (run + turn) % 2 == 1 {
                systems.push(System::Etcd);
            } else {
                systems.insert(0, System::Etcd);
            }
        }
        for system in systems {
            match (system, etcd) {
                (System::Weft, _) => {
                    rows.extend(weft_rows(args, weft, scratch, run, n, &ops, follower).await?)
                }
                (System::Etcd, Some(etcd)) => {
                    rows.extend(etcd_rows(args, etcd, scratch, run, n, &etcd_ops).await?)
                }
                (System::Etcd, None) => {}
            }
        }
    }
    Ok(rows)
}

/// The rows of one Weft cluster of `n` nodes: `ops` against the leader, and with `follower`
/// (3 nodes only) put and get against a follower.
async fn weft_rows(
    args: &Args,
    weft: &Path,
    scratch: &Scratch,
    run: usize,
    n: usize,
    ops: &[Op],
    follower: bool,
) -> anyhow::Result<Vec<Row>> {
    let with_follower = follower && n == 3;
    if ops.is_empty() && !with_follower {
        return Ok(Vec::new());
    }
    let mut cluster = Cluster::start(
        weft,
        &scratch.path.join(format!("run{run}-{n}nodes")),
        n,
        args.snapshot_after_entries,
        args.keep,
    )?;
    let leader = cluster.wait_for_leader().await?;
    eprintln!("   Weft: {n} node(s) up, leader n{leader}");
    let mut targets = vec![(false, leader)];
    if with_follower {
        let follower = cluster
            .nodes()
            .map(|node| node.id)
            .find(|id| *id != leader)
            .context("a 3-node cluster without a follower")?;
        targets.push((true, follower));
    }
    let mut rows = Vec::new();
    for (via_follower, target) in targets {
        let target_ops: Vec<Op> = if via_follower { vec![Op::Put, Op::Get] } else { ops.to_vec() };
        for &op in &target_ops {
            for &clients in &args.clients {
                let case = Case { nodes: n, op, leader, target, via_follower, clients };
                rows.push(measured_row(args, Servers::Weft(&cluster), case).await?);
            }
        }
    }
    cluster.report_log_problems();
    Ok(rows)
}

/// The rows of one etcd cluster of `n` members: `ops` against the leader.
async fn etcd_rows(
    args: &Args,
    etcd: &Path,
    scratch: &Scratch,
    run: usize,
    n: usize,
    ops: &[Op],
) -> anyhow::Result<Vec<Row>> {
    let cluster = EtcdCluster::start(etcd, &scratch.path.join(format!("run{run}-{n}etcd")), n, args.keep)?;
    let leader = cluster.wait_for_leader().await?;
    eprintln!("   etcd: {n} member(s) up, leader m{leader}");
    let mut rows = Vec::new();
    for &op in ops {
        for &clients in &args.clients {
            let case = Case { nodes: n, op, leader, target: leader, via_follower: false, clients };
            rows.push(measured_row(args, Servers::Etcd(&cluster), case).await?);
        }
    }
    cluster.report_log_problems();
    Ok(rows)
}

/// [`measure_row`] with its progress line.
async fn measured_row(args: &Args, servers: Servers<'_>, case: Case) -> anyhow::Result<Row> {
    let Case { nodes, op, clients, target, .. } = case;
    let system = servers.system();
    let row = measure_row(args, servers, case).await.with_context(|| {
        format!("{}: {} with {clients} client(s) on {nodes} node(s)", system.name(), op.name())
    })?;
    eprintln!(
        "   {:<4} {nodes} node(s) {:<20} {clients:>2} client(s) via {}: {:>8.0} ops/s  p50 {:.3} ms  \
         p99 {:.3} ms  errors {}  cpu servers {:.2} bench {:.2}  server cpu/op {:.3} ms",
        system.name(),
        op.name(),
        servers.name(target),
        row.ops_per_sec,
        row.p50_ms,
        row.p99_ms,
        row.errors,
        row.node_cores,
        row.bench_cores,
        row.server_cpu_ms_per_op
    );
    if row.term_changed {
        eprintln!("   warning: the Raft term changed while measuring (an election)");
    }
    Ok(row)
}

/// Puts to the leader of a fresh cluster of `n` nodes under `root` (extra node environment
/// `env`, TLS and auth as `security` says), one row per client count of `--clients`; `label` names the
/// setting in the progress lines. With a `lockstep`, each row starts when the other side's does.
pub async fn leader_puts(
    args: &Args,
    weft: &Path,
    root: &Path,
    n: usize,
    (env, security): (&[(&str, &str)], Security),
    label: &str,
    lockstep: Option<&Lockstep>,
) -> anyhow::Result<Vec<Row>> {
    let mut cluster =
        Cluster::start_with(weft, root, n, args.snapshot_after_entries, args.keep, env, security)?;
    let leader = cluster.wait_for_leader().await?;
    let mut rows = Vec::new();
    for &clients in &args.clients {
        lockstep::meet(lockstep).await;
        let case = Case { nodes: n, op: Op::Put, leader, target: leader, via_follower: false, clients };
        let row = measure_row(args, Servers::Weft(&cluster), case).await?;
        eprintln!(
            "   {n} node(s), {clients} client(s), {label}: {:.0} puts/s, p50 {:.3} ms, p99 {:.3} ms, errors {}, \
             cpu nodes {:.2} bench {:.2}",
            row.ops_per_sec, row.p50_ms, row.p99_ms, row.errors, row.node_cores, row.bench_cores
        );
        rows.push(row);
    }
    cluster.report_log_problems();
    Ok(rows)
}

/// A channel of the benchmark: the token, if any, on every request.
pub type Channel = weft_agent::token::Authorized<tonic::transport::Channel>;

/// Connects `count` channels to `addr`.
pub async fn connect(addr: &str, count: usize) -> anyhow::Result<Vec<Channel>> {
    connect_over(addr, count, &Access::default()).await
}

/// [`connect`], over TLS and with the token as `access` says.
pub async fn connect_over(addr: &str, count: usize, access: &Access) -> anyhow::Result<Vec<Channel>> {
    let tls = access.tls.as_ref();
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        let endpoint = Endpoint::from_shared(weft_agent::endpoint_uri(addr, tls.is_some())?)?
            .connect_timeout(Duration::from_secs(3))
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true);
        let channel = match tls {
            Some(tls) => tls.connect(endpoint).await,
            None => endpoint.connect().await,
        }
        .with_context(|| format!("cannot connect to {addr}"))?;
        channels.push(weft_agent::token::Authorized::new(channel, access.token.clone()));
    }
    Ok(channels)
}

/// The value every write writes: `--value-bytes` letters.
pub fn value(args: &Args) -> Vec<u8> {
    (0..args.value_bytes).map(|i| b'a' + (i % 26) as u8).collect()
}

/// What one client saw while measuring.
#[derive(Default)]
pub struct ClientTally {
    pub latencies_ns: Vec<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// One row to measure: a workload, its concurrency and the node the clients talk to.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub nodes: usize,
    pub op: Op,
    pub leader: u64,
    pub target: u64,
    pub via_follower: bool,
    pub clients: usize,
}

/// Runs one workload with `clients` clients against node `target` of `servers` and measures
/// it. The loop is the same for every system; only [`KvClient`] knows which one it talks to.
pub async fn measure_row(args: &Args, servers: Servers<'_>, case: Case) -> anyhow::Result<Row> {
    let Case { nodes, op, leader, target, via_follower, clients } = case;
    let system = servers.system();
    let addr = servers.addr(target)?;
    let access = servers.access();
    let channels = connect_over(&addr, args.channels.min(clients), &access).await?;
    let value = value(args);
    let tag = format!(
        "{}-{}-c{clients}",
        op.name().split(' ').next().unwrap_or("op"),
        if via_follower { "f" } else { "l" }
    );

    // Each client's own key and starting version (cas and get need one before measuring).
    let mut starts = Vec::with_capacity(clients);
    for c in 0..clients {
        let key = format!("{tag}-{c}");
        let mut client = KvClient::new(system, channels[c % channels.len()].clone());
        let version = match op {
            Op::Put => 0,
            Op::Cas => client.cas(&key, 0, value.clone()).await.context("creating a cas key")?,
            Op::Get => client.put(key.clone(), value.clone()).await.context("writing a key to read")?,
        };
        starts.push((client, key, version));
    }

    let measure_from = Instant::now() + args.warmup();
    let measure_until = measure_from + args.secs();
    let pids = servers.pids();
    let probe = servers.log_probe(leader)?;
    let sampler = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        let before = (cpu_ticks(&pids), probe.read().await);
        tokio::time::sleep_until(measure_until.into()).await;
        let after = (cpu_ticks(&pids), probe.read().await);
        (before, after)
    });

    let mut tasks = JoinSet::new();
    for (c, (mut client, key, mut version)) in starts.into_iter().enumerate() {
        let value = value.clone();
        let tag = tag.clone();
        tasks.spawn(async move {
            let mut tally = ClientTally::default();
            let mut seq = 0u64;
            loop {
                let start = Instant::now();
                if start >= measure_until {
                    break;
                }
                let result = match op {
                    Op::Put => {
                        seq += 1;
                        client.put(format!("{tag}-{c}-{seq}"), value.clone()).await.map(drop)
                    }
                    Op::Cas => client.cas(&key, version, value.clone()).await.map(|v| version = v),
                    Op::Get => client.get(&key).await,
                };
                let end = Instant::now();
                let counted = start >= measure_from && end <= measure_until;
                match result {
                    Ok(()) if counted => tally.latencies_ns.push((end - start).as_nanos() as u64),
                    Ok(()) => {}
                    Err(status) => {
                        if counted {
                            tally.errors += 1;
                        }
                        tally
                            .first_error
                            .get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
                        tokio::time::sleep(ERROR_PAUSE).await;
                        if op == Op::Cas {
                            // The chain broke (or its outcome is unknown): pick it up again at
                            // the key's current version.
                            if let Ok(v) = client.version(&key).await {
                                version = v;
                            }
                        }
                    }
                }
            }
            tally
        });
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    while let Some(tally) = tasks.join_next().await {
        let tally = tally.context("a client task panicked")?;
        latencies.extend(tally.latencies_ns);
        errors += tally.errors;
        first_error = first_error.or(tally.first_error);
    }
    let ((before, first_entry), (after, last_entry)) = sampler.await.context("the sampler panicked")?;
    if let Some(e) = first_error {
        eprintln!("   first error of {} {} ({clients} clients): {e}", system.name(), op.name());
    }
    latencies.sort_unstable();
    let secs = args.secs;
    let ticks = |pick: fn(&CpuTicks) -> u64| pick(&after).saturating_sub(pick(&before));
    let cores = |pick: fn(&CpuTicks) -> u64| ticks(pick) as f64 / TICKS_PER_SEC / secs;
    Ok(Row {
        system,
        nodes,
        op,
        via_follower,
        target: servers.name(target),
        clients,
        channels: channels.len(),
        ops: latencies.len() as u64,
        ops_per_sec: latencies.len() as f64 / secs,
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
        errors,
        entries: match (first_entry, last_entry) {
            (Some((first, _)), Some((last, _))) => Some(last.saturating_sub(first)),
            _ => None,
        },
        term_changed: match (first_entry, last_entry) {
            (Some((_, first)), Some((_, last))) => first != last,
            _ => false,
        },
        node_cores: cores(|t| t.nodes),
        bench_cores: cores(|t| t.bench),
        server_cpu_ms_per_op: cpu_ms_per_op(ticks(|t| t.nodes), latencies.len() as u64),
    })
}

/// CPU milliseconds per operation from clock ticks spent on `ops` operations (NaN for none).
pub fn cpu_ms_per_op(ticks: u64, ops: u64) -> f64 {
    if ops == 0 { f64::NAN } else { ticks as f64 / TICKS_PER_SEC * 1000.0 / ops as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_op_is_ticks_in_ms_over_operations() {
        // 150 ticks of 10 ms over 1 000 operations: 1.5 ms each.
        assert_eq!(cpu_ms_per_op(150, 1_000), 1.5);
        assert_eq!(cpu_ms_per_op(0, 10), 0.0);
        assert!(cpu_ms_per_op(10, 0).is_nan());
    }
}

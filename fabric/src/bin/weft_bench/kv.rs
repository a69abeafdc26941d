//! The key-value workloads: puts of unique keys, compare-and-set chains and linearizable gets,
//! each for a fixed time with a given number of clients against one node (the leader, or a
//! follower that forwards to it), measuring ops/s, latency percentiles, log entries and CPU.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::task::JoinSet;
use tonic::transport::Endpoint;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::state_client::StateClient;

use crate::cluster::{Access, Cluster, Scratch, Security};
use crate::lockstep::{self, Lockstep};
use crate::probes::{CpuTicks, TICKS_PER_SEC, cpu_ticks, metrics_over};
use crate::report::percentile_ms;
use crate::{Args, ERROR_PAUSE, REQUEST_TIMEOUT, Workload};

/// The namespace every workload writes to.
const NAMESPACE: &str = "shared/bench";

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
    pub nodes: usize,
    pub op: Op,
    pub via_follower: bool,
    /// "n1" etc.: the node the clients talked to.
    pub target: String,
    pub clients: usize,
    pub channels: usize,
    /// Operations that completed inside the measured window.
    pub ops: u64,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    /// Log entries the leader appended while measuring (None if its metrics were unreadable).
    pub entries: Option<u64>,
    /// The Raft term changed while measuring: there was an election.
    pub term_changed: bool,
    /// Cores the node processes used together while measuring.
    pub node_cores: f64,
    /// Cores this benchmark process used while measuring.
    pub bench_cores: f64,
}

pub type RowKey = (usize, bool, Op, usize);

impl Row {
    pub fn key(&self) -> RowKey {
        (self.nodes, self.via_follower, self.op, self.clients)
    }
}

/// One run of the put, cas, get and follower workloads: for each cluster size, each
/// workload the arguments ask for, at each number of clients.
pub async fn measure(args: &Args, weft: &Path, scratch: &Scratch, run: usize) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let ops: Vec<Op> = [(Workload::Put, Op::Put), (Workload::Cas, Op::Cas), (Workload::Get, Op::Get)]
        .into_iter()
        .filter(|(w, _)| args.wants(*w))
        .map(|(_, op)| op)
        .collect();
    let follower = args.wants(Workload::Follower) && args.nodes.contains(&3);
    for &n in &args.nodes {
        let with_follower = follower && n == 3;
        if ops.is_empty() && !with_follower {
            continue;
        }
        let mut cluster = Cluster::start(
            weft,
            &scratch.path.join(format!("run{run}-{n}nodes")),
            n,
            args.snapshot_after_entries,
            args.keep,
        )?;
        let leader = cluster.wait_for_leader().await?;
        eprintln!("   {n} node(s) up, leader n{leader}");
        let mut targets = vec![(false, leader)];
        if with_follower {
            let follower = cluster
                .nodes()
                .map(|node| node.id)
                .find(|id| *id != leader)
                .context("a 3-node cluster without a follower")?;
            targets.push((true, follower));
        }
        for (via_follower, target) in targets {
            let target_ops: Vec<Op> = if via_follower { vec![Op::Put, Op::Get] } else { ops.clone() };
            for &op in &target_ops {
                for &clients in &args.clients {
                    let row = measure_row(
                        args,
                        &cluster,
                        Case { nodes: n, op, leader, target, via_follower, clients },
                    )
                    .await
                    .with_context(|| format!("{} with {clients} client(s) on {n} node(s)", op.name()))?;
                    eprintln!(
                        "   {n} node(s) {:<20} {:>2} client(s) via n{target}: {:>8.0} ops/s  p50 {:.3} ms  \
                         p99 {:.3} ms  errors {}  cpu nodes {:.2} bench {:.2}",
                        op.name(),
                        clients,
                        row.ops_per_sec,
                        row.p50_ms,
                        row.p99_ms,
                        row.errors,
                        row.node_cores,
                        row.bench_cores
                    );
                    if row.term_changed {
                        eprintln!("   warning: the Raft term changed while measuring (an election)");
                    }
                    rows.push(row);
                }
            }
        }
        cluster.report_log_problems();
        drop(cluster);
    }
    Ok(rows)
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
        let row = measure_row(args, &cluster, case).await?;
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

/// A put of `key` into the benchmark's namespace.
pub fn put_request(key: String, value: Vec<u8>) -> pb::PutRequest {
    pb::PutRequest { namespace: NAMESPACE.into(), key, value, ttl_ms: None, if_absent: false, fence: None }
}

fn get_request(key: &str) -> pb::GetRequest {
    pb::GetRequest {
        namespace: NAMESPACE.into(),
        key: key.into(),
        consistency: pb::Consistency::Linearizable as i32,
    }
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

/// Runs one workload with `clients` clients against node `target` and measures it.
pub async fn measure_row(args: &Args, cluster: &Cluster, case: Case) -> anyhow::Result<Row> {
    let Case { nodes, op, leader, target, via_follower, clients } = case;
    let addr = cluster.addr(target)?.to_owned();
    let access = cluster.access();
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
        let mut client = StateClient::new(channels[c % channels.len()].clone());
        let version = match op {
            Op::Put => 0,
            Op::Cas => {
                client
                    .compare_and_set(pb::CompareAndSetRequest {
                        namespace: NAMESPACE.into(),
                        key: key.clone(),
                        expected_version: 0,
                        value: value.clone(),
                        ttl_ms: None,
                        fence: None,
                    })
                    .await
                    .context("creating a cas key")?
                    .into_inner()
                    .version
            }
            Op::Get => {
                client
                    .put(put_request(key.clone(), value.clone()))
                    .await
                    .context("writing a key to read")?
                    .into_inner()
                    .version
            }
        };
        starts.push((client, key, version));
    }

    let measure_from = Instant::now() + args.warmup();
    let measure_until = measure_from + args.secs();
    let pids = cluster.pids();
    let leader_addr = cluster.addr(leader)?.to_owned();
    let sampler = tokio::spawn(async move {
        let log_index =
            async || metrics_over(&leader_addr, &access).await.ok().map(|m| (m.last_log_index, m.term));
        tokio::time::sleep_until(measure_from.into()).await;
        let before = (cpu_ticks(&pids), log_index().await);
        tokio::time::sleep_until(measure_until.into()).await;
        let after = (cpu_ticks(&pids), log_index().await);
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
                        client.put(put_request(format!("{tag}-{c}-{seq}"), value.clone())).await.map(drop)
                    }
                    Op::Cas => client
                        .compare_and_set(pb::CompareAndSetRequest {
                            namespace: NAMESPACE.into(),
                            key: key.clone(),
                            expected_version: version,
                            value: value.clone(),
                            ttl_ms: None,
                            fence: None,
                        })
                        .await
                        .map(|r| version = r.into_inner().version),
                    Op::Get => client.get(get_request(&key)).await.and_then(|r| match r.into_inner().entry {
                        Some(_) => Ok(()),
                        None => Err(tonic::Status::not_found("the key written is gone")),
                    }),
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
                            if let Ok(r) = client.get(get_request(&key)).await {
                                version = r.into_inner().entry.map_or(0, |e| e.version);
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
        eprintln!("   first error of {} ({clients} clients): {e}", op.name());
    }
    latencies.sort_unstable();
    let secs = args.secs;
    let cores =
        |pick: fn(&CpuTicks) -> u64| pick(&after).saturating_sub(pick(&before)) as f64 / TICKS_PER_SEC / secs;
    Ok(Row {
        nodes,
        op,
        via_follower,
        target: format!("n{target}"),
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
    })
}

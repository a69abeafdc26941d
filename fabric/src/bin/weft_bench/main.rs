//! `weft-bench`: throughput, latency, memory and disk of real `weft node` processes.
//!
//! Starts clusters of the `weft` binary that sits next to this one (each node its own data dir
//! under the system temp dir, on free ports of 127.0.0.1, its log flushed to disk as always),
//! runs each workload for a fixed time with 1 and 64 concurrent clients against the leader,
//! and prints ops/s and latency percentiles. A last phase writes `--puts` unique keys into a
//! fresh 3-node cluster and reports each node's RSS and data-dir size once snapshots have
//! settled. The `executions` workload ([`executions`]) times calls of an echo agent that runs
//! in this process with the `weft-agent` SDK; `membership` ([`membership`]) times gossip.
//!
//! ```text
//!   weft-bench ──gRPC (1..8 channels)──► leader ──Raft──► followers
//!      │                                   (one process each, own data dir)
//!      └── /proc/PID/{status,stat}, http://ADDR/metrics, data-dir walk
//! ```
//!
//! Progress goes to stderr; the figures, as markdown tables, to stdout:
//!
//! ```text
//! cargo build --release -p weft-fabric
//! ./target/release/weft-bench --runs 3 > bench.md
//! ```
//!
//! Every node process is killed and every data dir removed when the benchmark ends, fails or
//! is interrupted with ctrl-c (the [`Cluster`] and [`Scratch`] drop guards).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::cluster_client::ClusterClient;
use weft_proto::fabric::v1::state_client::StateClient;

mod executions;
mod membership;

/// The namespace every workload writes to.
const NAMESPACE: &str = "shared/bench";
/// How long a new cluster may take to elect a leader that sees every member.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long followers may take to apply everything, and nodes to finish their snapshots,
/// after the million-put phase.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Deadline of one benchmark request; a slower one counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most attempts at one put of the million-put phase before the phase is abandoned.
const MAX_ATTEMPTS_PER_PUT: u32 = 50;
/// Pause after a failed request, so an overloaded node is not hammered in a hot loop.
const ERROR_PAUSE: Duration = Duration::from_millis(10);
/// Linux reports process CPU time in clock ticks of 1/100 s (USER_HZ).
const TICKS_PER_SEC: f64 = 100.0;
/// Kinds of warning/error lines shown per node log after each cluster.
const MAX_LOG_KINDS_SHOWN: usize = 8;
/// How often the million-put phase reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Benchmarks real `weft node` processes on this machine.
#[derive(Debug, Clone, Parser)]
#[command(name = "weft-bench")]
struct Args {
    /// Seconds each workload is measured.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Seconds each workload runs before measuring starts.
    #[arg(long, default_value_t = 0.5)]
    warmup_secs: f64,
    /// Unique keys the million-put phase writes.
    #[arg(long, default_value_t = 1_000_000)]
    puts: u64,
    /// Run only these workloads (comma-separated); all when absent.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Workload>,
    /// Cluster sizes for the put, cas, get and executions workloads.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 3])]
    nodes: Vec<usize>,
    /// Concurrent clients for the put, cas, get and executions workloads.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 64])]
    clients: Vec<usize>,
    /// Concurrent clients of the million-put phase.
    #[arg(long, default_value_t = 64)]
    million_clients: usize,
    /// gRPC channels (HTTP/2 connections) the clients share, round-robin; never more than
    /// the clients.
    #[arg(long, default_value_t = 8)]
    channels: usize,
    /// Bytes of each value written.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// `snapshot_after_entries` of the nodes (passed as WEFT_SNAPSHOT_AFTER_ENTRIES).
    #[arg(long, default_value_t = 20_000)]
    snapshot_after_entries: u64,
    /// Repeat everything this many times on fresh clusters and also print medians.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// The `weft` binary (default: `weft` next to this executable).
    #[arg(long, value_name = "PATH")]
    weft: Option<PathBuf>,
    /// Keep the data dirs and node logs instead of removing them (their path is printed).
    #[arg(long)]
    keep: bool,
}

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Workload {
    /// Puts of unique keys.
    Put,
    /// Each client compare-and-sets its own key in a chain of versions.
    Cas,
    /// Linearizable gets (read-index through the leader).
    Get,
    /// Put and get on 3 nodes sent to a follower, which forwards to the leader.
    Follower,
    /// The million-put phase: throughput, then RSS and disk per node.
    Million,
    /// Gossip membership: formation time, gossip traffic, failure detection and replacement.
    Membership,
    /// Executions: round trips of calls to an echo agent served by this process (weft-agent).
    Executions,
}

/// One kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Put,
    Cas,
    Get,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Cas => "cas",
            Op::Get => "get (linearizable)",
        }
    }
}

impl Args {
    fn wants(&self, w: Workload) -> bool {
        self.only.is_empty() || self.only.contains(&w)
    }

    fn secs(&self) -> Duration {
        Duration::from_secs_f64(self.secs)
    }

    fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_secs)
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.secs > 0.0, "--secs must be more than 0");
        anyhow::ensure!(self.warmup_secs >= 0.0, "--warmup-secs must not be negative");
        anyhow::ensure!(self.runs > 0, "--runs must be 1 or more");
        anyhow::ensure!(self.channels > 0, "--channels must be 1 or more");
        anyhow::ensure!(
            self.clients.iter().all(|c| *c > 0) && self.million_clients > 0,
            "client counts must be 1 or more"
        );
        anyhow::ensure!(
            self.nodes.iter().all(|n| (1..=9).contains(n)),
            "--nodes takes cluster sizes from 1 to 9"
        );
        anyhow::ensure!(self.snapshot_after_entries > 0, "--snapshot-after-entries must be more than 0");
        Ok(())
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let result = match args.check() {
        Err(e) => Err(e),
        // Dropping the benchmark future runs the drop guards: nodes killed, data dirs removed.
        Ok(()) => tokio::select! {
            biased;
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted: nodes stopped, data dirs removed")),
            result = run(args) => result,
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The benchmark

/// Figures of one workload at one concurrency.
#[derive(Debug, Clone)]
struct Row {
    nodes: usize,
    op: Op,
    via_follower: bool,
    /// "n1" etc.: the node the clients talked to.
    target: String,
    clients: usize,
    channels: usize,
    /// Operations that completed inside the measured window.
    ops: u64,
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// Log entries the leader appended while measuring (None if its metrics were unreadable).
    entries: Option<u64>,
    /// The Raft term changed while measuring: there was an election.
    term_changed: bool,
    /// Cores the node processes used together while measuring.
    node_cores: f64,
    /// Cores this benchmark process used while measuring.
    bench_cores: f64,
}

type RowKey = (usize, bool, Op, usize);

impl Row {
    fn key(&self) -> RowKey {
        (self.nodes, self.via_follower, self.op, self.clients)
    }
}

/// One node after the million-put phase.
#[derive(Debug, Clone)]
struct NodeFigures {
    id: u64,
    leader: bool,
    rss_before_kib: u64,
    rss_kib: u64,
    peak_rss_kib: u64,
    raft_dir: DiskUse,
    snapshot_dir: DiskUse,
    total: DiskUse,
    metrics: Metrics,
}

/// The million-put phase.
#[derive(Debug, Clone)]
struct MillionFigures {
    puts: u64,
    value_bytes: usize,
    clients: usize,
    channels: usize,
    secs: f64,
    puts_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    errors: u64,
    /// Log entries the leader appended during the phase.
    entries: u64,
    /// The Raft term when the phase started and when it ended.
    terms: (u64, u64),
    /// The leader when the phase started and when it ended.
    leaders: (u64, u64),
    settle_secs: f64,
    snapshot_after_entries: u64,
    nodes: Vec<NodeFigures>,
}

/// Everything one run measured.
#[derive(Debug, Default)]
struct RunFigures {
    rows: Vec<Row>,
    million: Option<MillionFigures>,
    load_before: String,
    load_after: String,
    secs: f64,
}

async fn run(args: Args) -> anyhow::Result<()> {
    let weft = match &args.weft {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("cannot find this executable")?
            .parent()
            .context("this executable has no directory")?
            .join("weft"),
    };
    anyhow::ensure!(
        weft.is_file(),
        "no weft binary at {} (build it: cargo build --release -p weft-fabric)",
        weft.display()
    );
    let scratch = Scratch::new(args.keep)?;
    let started = Instant::now();
    let mut runs = Vec::new();
    let data_workloads = [Workload::Put, Workload::Cas, Workload::Get, Workload::Follower, Workload::Million];
    let data_runs = if data_workloads.iter().any(|w| args.wants(*w)) { args.runs } else { 0 };
    for run in 1..=data_runs {
        eprintln!("== run {run} of {} (load average {})", args.runs, load_average());
        let figures = run_once(&args, &weft, &scratch, run).await?;
        print!("{}", run_markdown(&args, run, &figures));
        runs.push(figures);
    }
    if runs.len() > 1 {
        print!("{}", median_markdown(&args, &runs));
    }
    if args.wants(Workload::Executions) {
        let mut figures = Vec::new();
        for run in 1..=args.runs {
            eprintln!("== executions run {run} of {} (load average {})", args.runs, load_average());
            let f = executions::measure(&args, &weft, &scratch, run).await?;
            print!("{}", executions::run_markdown(&args, run, &f));
            figures.push(f);
        }
        if figures.len() > 1 {
            print!("{}", executions::median_markdown(&figures));
        }
    }
    if args.wants(Workload::Membership) {
        let mut figures = Vec::new();
        for run in 1..=args.runs {
            for preset in ["lan", "test"] {
                eprintln!(
                    "== membership run {run} of {}, preset {preset} (load average {})",
                    args.runs,
                    load_average()
                );
                figures.push((preset.to_owned(), membership::measure(&weft, &scratch, run, preset).await?));
            }
        }
        print!("{}", membership::markdown(&figures));
    }
    let total = started.elapsed();
    println!("\nTotal time: {:.0} s for {} run(s).", total.as_secs_f64(), args.runs);
    drop(scratch);
    Ok(())
}

async fn run_once(args: &Args, weft: &Path, scratch: &Scratch, run: usize) -> anyhow::Result<RunFigures> {
    let started = Instant::now();
    let mut figures = RunFigures { load_before: load_average(), ..Default::default() };
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
        )
        .await?;
        let leader = cluster.wait_for_leader().await?;
        eprintln!("   {n} node(s) up, leader n{leader}");
        let mut targets = vec![(false, leader)];
        if with_follower {
            let follower = cluster
                .nodes
                .iter()
                .map(|node| node.id)
                .find(|id| *id != leader)
                .context("a 3-node cluster without a follower")?;
            targets.push((true, follower));
        }
        for (via_follower, target) in targets {
            let target_ops: Vec<Op> = if via_follower { vec![Op::Put, Op::Get] } else { ops.clone() };
            for &op in &target_ops {
                for &clients in &args.clients {
                    let row =
                        measure(args, &cluster, Case { nodes: n, op, leader, target, via_follower, clients })
                            .await
                            .with_context(|| {
                                format!("{} with {clients} client(s) on {n} node(s)", op.name())
                            })?;
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
                    figures.rows.push(row);
                }
            }
        }
        cluster.report_log_problems();
        drop(cluster);
    }
    if args.wants(Workload::Million) {
        let mut cluster = Cluster::start(
            weft,
            &scratch.path.join(format!("run{run}-million")),
            3,
            args.snapshot_after_entries,
            args.keep,
        )
        .await?;
        let leader = cluster.wait_for_leader().await?;
        eprintln!("   3 nodes up for {} puts, leader n{leader}", args.puts);
        figures.million = Some(million(args, &cluster, leader).await?);
        cluster.report_log_problems();
        drop(cluster);
    }
    figures.load_after = load_average();
    figures.secs = started.elapsed().as_secs_f64();
    Ok(figures)
}

/// Connects `count` channels to `addr`.
async fn connect(addr: &str, count: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

fn value(args: &Args) -> Vec<u8> {
    (0..args.value_bytes).map(|i| b'a' + (i % 26) as u8).collect()
}

fn put_request(key: String, value: Vec<u8>) -> pb::PutRequest {
    pb::PutRequest { namespace: NAMESPACE.into(), key, value, ttl_ms: None, if_absent: false }
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
struct ClientTally {
    latencies_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// One row to measure: a workload, its concurrency and the node the clients talk to.
#[derive(Debug, Clone, Copy)]
struct Case {
    nodes: usize,
    op: Op,
    leader: u64,
    target: u64,
    via_follower: bool,
    clients: usize,
}

/// Runs one workload with `clients` clients against node `target` and measures it.
async fn measure(args: &Args, cluster: &Cluster, case: Case) -> anyhow::Result<Row> {
    let Case { nodes, op, leader, target, via_follower, clients } = case;
    let addr = cluster.addr(target)?.to_owned();
    let channels = connect(&addr, args.channels.min(clients)).await?;
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
        let log_index = async || metrics(&leader_addr).await.ok().map(|m| (m.last_log_index, m.term));
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

/// Nearest-rank percentile of sorted nanosecond latencies, in milliseconds.
fn percentile_ms(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted_ns.len() as f64).ceil() as usize).clamp(1, sorted_ns.len());
    sorted_ns[rank - 1] as f64 / 1e6
}

/// The million-put phase: `--puts` unique keys from `--million-clients` clients, then RSS and
/// disk per node once followers have caught up and snapshots have settled.
async fn million(args: &Args, cluster: &Cluster, leader: u64) -> anyhow::Result<MillionFigures> {
    let addr = cluster.addr(leader)?.to_owned();
    let rss_before: BTreeMap<u64, u64> =
        cluster.nodes.iter().map(|n| (n.id, proc_status_kib(n.pid, "VmRSS:").unwrap_or(0))).collect();
    let before = metrics(&addr).await?;
    let channels = connect(&addr, args.channels.min(args.million_clients)).await?;
    let value = value(args);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let total = args.puts;

    let started = Instant::now();
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(PROGRESS_EVERY).await;
                let now = done.load(Ordering::Relaxed);
                eprintln!(
                    "   {:>9} puts after {:>4.0} s ({:.0}/s in the last {} s)",
                    now,
                    started.elapsed().as_secs_f64(),
                    (now - last) as f64 / PROGRESS_EVERY.as_secs_f64(),
                    PROGRESS_EVERY.as_secs()
                );
                last = now;
            }
        })
    };
    let mut tasks = JoinSet::new();
    for c in 0..args.million_clients {
        let mut client = StateClient::new(channels[c % channels.len()].clone());
        let (next, done, value) = (next.clone(), done.clone(), value.clone());
        tasks.spawn(async move {
            let mut tally = ClientTally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(tally);
                }
                let key = format!("m-{i:09}");
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    let start = Instant::now();
                    match client.put(put_request(key.clone(), value.clone())).await {
                        Ok(_) => {
                            tally.latencies_ns.push(start.elapsed().as_nanos() as u64);
                            done.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        // A retried put of the same key and value is harmless, whatever the
                        // first attempt's outcome was.
                        Err(status) if attempts < MAX_ATTEMPTS_PER_PUT => {
                            tally.errors += 1;
                            tally
                                .first_error
                                .get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
                            tokio::time::sleep(ERROR_PAUSE).await;
                        }
                        Err(status) => bail!(
                            "put of {key} failed {attempts} times, last: {:?}: {}",
                            status.code(),
                            status.message()
                        ),
                    }
                }
            }
        });
    }
    let mut latencies = Vec::with_capacity(total as usize);
    let mut errors = 0;
    let mut first_error = None;
    while let Some(tally) = tasks.join_next().await {
        let tally = tally.context("a client task panicked")??;
        latencies.extend(tally.latencies_ns);
        errors += tally.errors;
        first_error = first_error.or(tally.first_error);
    }
    let secs = started.elapsed().as_secs_f64();
    progress.abort();
    if let Some(e) = first_error {
        eprintln!("   first error of the million-put phase: {e}");
    }
    latencies.sort_unstable();
    let after = metrics(&addr).await?;
    let entries = after.last_log_index.saturating_sub(before.last_log_index);
    eprintln!(
        "   {total} puts in {secs:.1} s: {:.0} puts/s, {entries} log entries ({:.1} puts per entry)",
        total as f64 / secs,
        total as f64 / entries.max(1) as f64
    );

    let mut leader_after = leader;
    for node in &cluster.nodes {
        if metrics(&node.addr).await.is_ok_and(|m| m.is_leader) {
            leader_after = node.id;
        }
    }
    if after.term != before.term || leader_after != leader {
        eprintln!(
            "   warning: elections during the phase: term {} -> {}, leader n{leader} -> n{leader_after}",
            before.term, after.term
        );
    }
    let settle_started = Instant::now();
    settle(cluster, args.snapshot_after_entries).await?;
    let settle_secs = settle_started.elapsed().as_secs_f64();
    let mut nodes = Vec::new();
    for node in &cluster.nodes {
        let metrics = metrics(&node.addr).await?;
        nodes.push(NodeFigures {
            id: node.id,
            leader: metrics.is_leader,
            rss_before_kib: rss_before.get(&node.id).copied().unwrap_or(0),
            rss_kib: proc_status_kib(node.pid, "VmRSS:").unwrap_or(0),
            peak_rss_kib: proc_status_kib(node.pid, "VmHWM:").unwrap_or(0),
            raft_dir: disk_use(&node.data_dir.join("raft")),
            snapshot_dir: disk_use(&node.data_dir.join("snapshots")),
            total: disk_use(&node.data_dir),
            metrics,
        });
    }
    Ok(MillionFigures {
        puts: total,
        value_bytes: args.value_bytes,
        clients: args.million_clients,
        channels: channels.len(),
        secs,
        puts_per_sec: total as f64 / secs,
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
        max_ms: percentile_ms(&latencies, 1.0),
        errors,
        entries,
        terms: (before.term, after.term),
        leaders: (leader, leader_after),
        settle_secs,
        snapshot_after_entries: args.snapshot_after_entries,
        nodes,
    })
}

/// Waits until every node has applied the whole log and none is due a snapshot (openraft
/// snapshots once `applied - snapshot_index >= snapshot_after_entries`).
async fn settle(cluster: &Cluster, snapshot_after_entries: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let mut all = Vec::new();
        for node in &cluster.nodes {
            all.push(metrics(&node.addr).await?);
        }
        let last = all.iter().map(|m| m.last_log_index).max().unwrap_or(0);
        let applied = all.iter().all(|m| m.applied_index >= last);
        let snapshotted = all
            .iter()
            .all(|m| m.applied_index - m.snapshot_index.min(m.applied_index) < snapshot_after_entries);
        if applied && snapshotted {
            return Ok(());
        }
        if Instant::now() >= deadline {
            eprintln!(
                "   warning: not settled after {} s (applied {:?}, snapshot {:?}, last log {last}); \
                 measuring anyway",
                SETTLE_TIMEOUT.as_secs(),
                all.iter().map(|m| m.applied_index).collect::<Vec<_>>(),
                all.iter().map(|m| m.snapshot_index).collect::<Vec<_>>()
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Node processes

/// The benchmark's temp dir; removed on drop unless `--keep`.
struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Scratch {
    fn new(keep: bool) -> anyhow::Result<Self> {
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

/// One `weft node` process.
struct NodeProcess {
    id: u64,
    addr: String,
    pid: u32,
    data_dir: PathBuf,
    log: PathBuf,
    child: Child,
}

/// A cluster of `weft node` processes; kills them and removes their dirs on drop.
struct Cluster {
    root: PathBuf,
    keep: bool,
    nodes: Vec<NodeProcess>,
}

impl Cluster {
    /// Starts `n` nodes under `root`. A lone node forms a cluster of its own.
    async fn start(
        weft: &Path,
        root: &Path,
        n: usize,
        snapshot_after_entries: u64,
        keep: bool,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
        let mut cluster = Cluster { root: root.to_owned(), keep, nodes: Vec::new() };
        let addrs = free_addrs(n)?;
        let members =
            addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect::<Vec<_>>().join(",");
        for (i, addr) in addrs.into_iter().enumerate() {
            let id = i as u64 + 1;
            let data_dir = root.join(format!("n{id}"));
            let log = root.join(format!("n{id}.log"));
            let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
            let mut cmd = Command::new(weft);
            cmd.arg("node")
                .args(["--node-id", &id.to_string()])
                .args(["--cluster", "bench"])
                .args(["--listen", &addr])
                .arg("--data-dir")
                .arg(&data_dir)
                .env("WEFT_SNAPSHOT_AFTER_ENTRIES", snapshot_after_entries.to_string())
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
            if std::env::var_os("RUST_LOG").is_none() {
                cmd.env("RUST_LOG", "info");
            }
            if n > 1 {
                cmd.args(["--initial-members", &members]);
            }
            let child = cmd.spawn().with_context(|| format!("cannot start {}", weft.display()))?;
            cluster.nodes.push(NodeProcess { id, addr, pid: child.id(), data_dir, log, child });
        }
        Ok(cluster)
    }

    fn addr(&self, id: u64) -> anyhow::Result<&str> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.addr.as_str())
            .with_context(|| format!("no node n{id} in this cluster"))
    }

    fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.pid).collect()
    }

    /// Waits until a node reports a leader and every member reachable; returns the leader.
    async fn wait_for_leader(&mut self) -> anyhow::Result<u64> {
        let deadline = Instant::now() + LEADER_TIMEOUT;
        loop {
            for node in &mut self.nodes {
                if let Some(status) = node.child.try_wait()? {
                    bail!(
                        "node n{} exited with {status} before the cluster formed; its log:\n{}",
                        node.id,
                        tail(&node.log, 20)
                    );
                }
            }
            for node in &self.nodes {
                if let Some(leader) = leader_seen_by(&node.addr, self.nodes.len()).await {
                    return Ok(leader);
                }
            }
            if Instant::now() >= deadline {
                let logs: String =
                    self.nodes.iter().map(|n| format!("--- n{} ---\n{}\n", n.id, tail(&n.log, 10))).collect();
                bail!("no leader within {} s; node logs:\n{logs}", LEADER_TIMEOUT.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Prints the warnings and errors the nodes logged, grouped by message, so fabric trouble
    /// is not missed.
    fn report_log_problems(&self) {
        for node in &self.nodes {
            let Ok(text) = std::fs::read_to_string(&node.log) else {
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
                eprintln!("   n{} logged {count}x: {kind}", node.id);
            }
            if kinds.len() > MAX_LOG_KINDS_SHOWN {
                eprintln!(
                    "   n{} logged {} more kinds of warning/error",
                    node.id,
                    kinds.len() - MAX_LOG_KINDS_SHOWN
                );
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// `n` free addresses on 127.0.0.1 (bound together so they differ, then released).
fn free_addrs(n: usize) -> anyhow::Result<Vec<String>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot bind a free port on 127.0.0.1")?;
    listeners.iter().map(|l| Ok(l.local_addr()?.to_string())).collect()
}

/// The leader a node reports, once it sees `members` reachable members.
async fn leader_seen_by(addr: &str, members: usize) -> Option<u64> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .ok()?;
    let status = ClusterClient::new(channel).status(pb::StatusRequest {}).await.ok()?.into_inner();
    let all_there = status.members.len() == members && status.members.iter().all(|m| m.reachable);
    (status.leader_id != 0 && all_there).then_some(status.leader_id)
}

/// The last `lines` lines of a file.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// What the operating system and the nodes report

/// Figures from a node's `/metrics`.
#[derive(Debug, Clone, Default)]
struct Metrics {
    term: u64,
    is_leader: bool,
    last_log_index: u64,
    applied_index: u64,
    snapshot_index: u64,
    purged_index: u64,
    snapshots_built: u64,
    snapshots_installed: u64,
    keys: u64,
    commands_applied: u64,
    waiters: u64,
    executions_pending: u64,
    executions_assigned: u64,
}

/// Reads `http://ADDR/metrics` (plain HTTP/1.1 on the node's one port).
async fn metrics(addr: &str) -> anyhow::Result<Metrics> {
    let text = metrics_text(addr).await?;
    let mut values = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("weft_")) {
        if let (Some((name, _)), Some(v)) = (line.split_once('{'), line.rsplit(' ').next()) {
            values.insert(name.to_owned(), v.parse::<u64>().unwrap_or(0));
        }
    }
    anyhow::ensure!(
        values.contains_key("weft_raft_applied_index"),
        "{addr}/metrics has no weft_raft_applied_index"
    );
    let get = |name: &str| values.get(name).copied().unwrap_or(0);
    Ok(Metrics {
        term: get("weft_raft_term"),
        is_leader: get("weft_raft_is_leader") == 1,
        last_log_index: get("weft_raft_last_log_index"),
        applied_index: get("weft_raft_applied_index"),
        snapshot_index: get("weft_raft_snapshot_index"),
        purged_index: get("weft_raft_purged_index"),
        snapshots_built: get("weft_snapshots_built_total"),
        snapshots_installed: get("weft_snapshots_installed_total"),
        keys: get("weft_grid_keys"),
        commands_applied: get("weft_grid_commands_applied_total"),
        waiters: get("weft_waiters"),
        executions_pending: get("weft_executions_pending"),
        executions_assigned: get("weft_executions_assigned"),
    })
}

/// The text of `http://ADDR/metrics` (plain HTTP/1.1 on the node's one port).
async fn metrics_text(addr: &str) -> anyhow::Result<String> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        Ok::<_, std::io::Error>(text)
    })
    .await
    .with_context(|| format!("{addr}/metrics timed out"))?
    .with_context(|| format!("cannot read {addr}/metrics"))
}

/// A `kB` field of `/proc/PID/status` (`VmRSS:`, `VmHWM:`), in KiB.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| l.strip_prefix(field))?.split_whitespace().next()?.parse().ok()
}

/// CPU time (user + system) in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
struct CpuTicks {
    nodes: u64,
    bench: u64,
}

fn cpu_ticks(pids: &[u32]) -> CpuTicks {
    let of = |path: String| -> u64 {
        let Ok(text) = std::fs::read_to_string(path) else {
            return 0;
        };
        // Fields after the parenthesised command name start at field 3 (state); utime and
        // stime are fields 14 and 15.
        let Some((_, rest)) = text.rsplit_once(')') else {
            return 0;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok());
        field(14).unwrap_or(0) + field(15).unwrap_or(0)
    };
    CpuTicks {
        nodes: pids.iter().map(|p| of(format!("/proc/{p}/stat"))).sum(),
        bench: of("/proc/self/stat".into()),
    }
}

/// Bytes below a directory: file lengths (`du --apparent-size`) and allocated blocks (`du`).
#[derive(Debug, Clone, Copy, Default)]
struct DiskUse {
    apparent: u64,
    allocated: u64,
}

fn disk_use(path: &Path) -> DiskUse {
    use std::os::unix::fs::MetadataExt;
    let mut total = DiskUse::default();
    let Ok(entries) = std::fs::read_dir(path) else {
        return total;
    };
    for entry in entries.flatten() {
        match entry.metadata() {
            Ok(m) if m.is_dir() => {
                let sub = disk_use(&entry.path());
                total.apparent += sub.apparent;
                total.allocated += sub.allocated;
            }
            Ok(m) => {
                total.apparent += m.len();
                total.allocated += m.blocks() * 512;
            }
            Err(_) => {}
        }
    }
    total
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ---------------------------------------------------------------------------------------------
// Markdown

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

fn ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v < 10.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.2}")
    }
}

fn target_text(row: &Row) -> String {
    let role = if row.via_follower { "follower" } else { "leader" };
    let election = if row.term_changed { ", election!" } else { "" };
    format!("{role} ({}{election})", row.target)
}

const ROWS_HEADER: &str = "| nodes | workload | clients (channels) | clients talk to | ops/s | p50 ms | p99 ms | errors | writes per log entry | CPU cores: nodes + bench |\n|---:|---|---:|---|---:|---:|---:|---:|---:|---|\n";

/// Writes per log entry, for the write workloads.
fn per_entry(row: &Row) -> String {
    match row.entries {
        Some(entries) if row.op != Op::Get && entries > 0 => {
            format!("{:.1}", row.ops as f64 / entries as f64)
        }
        _ => "-".into(),
    }
}

fn rows_markdown(rows: &[Row]) -> String {
    let mut out = String::from(ROWS_HEADER);
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} ({}) | {} | {:.0} | {} | {} | {} | {} | {:.2} + {:.2} |",
            r.nodes,
            r.op.name(),
            r.clients,
            r.channels,
            target_text(r),
            r.ops_per_sec,
            ms(r.p50_ms),
            ms(r.p99_ms),
            r.errors,
            per_entry(r),
            r.node_cores,
            r.bench_cores
        );
    }
    out
}

fn million_markdown(m: &MillionFigures) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} puts of {}-byte values into 3 nodes from {} clients ({} channels) to the leader: \
         {:.1} s, **{:.0} puts/s**, p50 {} ms, p99 {} ms, max {} ms, {} errors (retried); {} log \
         entries ({:.1} puts per entry); {}. Followers caught up and snapshots settled {:.1} s \
         later (snapshot_after_entries = {}).\n",
        m.puts,
        m.value_bytes,
        m.clients,
        m.channels,
        m.secs,
        m.puts_per_sec,
        ms(m.p50_ms),
        ms(m.p99_ms),
        ms(m.max_ms),
        m.errors,
        m.entries,
        m.puts as f64 / m.entries.max(1) as f64,
        if m.terms.0 == m.terms.1 {
            format!("no election (term {}, leader n{})", m.terms.0, m.leaders.0)
        } else {
            format!(
                "**elections during the phase**: term {} → {}, leader n{} → n{}",
                m.terms.0, m.terms.1, m.leaders.0, m.leaders.1
            )
        },
        m.settle_secs,
        m.snapshot_after_entries
    );
    out.push_str(
        "| node | role | RSS before → after (MiB) | peak RSS (MiB) | raft/ sled (MiB) | snapshots/ (MiB) | data dir (MiB, allocated / apparent) | snapshots built / installed | snapshot index | purged index | last log index | keys |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for n in &m.nodes {
        let _ = writeln!(
            out,
            "| n{} | {} | {} → {} | {} | {} | {} | {} / {} | {} / {} | {} | {} | {} | {} |",
            n.id,
            if n.leader { "leader" } else { "follower" },
            mib(n.rss_before_kib * 1024),
            mib(n.rss_kib * 1024),
            mib(n.peak_rss_kib * 1024),
            mib(n.raft_dir.allocated),
            mib(n.snapshot_dir.allocated),
            mib(n.total.allocated),
            mib(n.total.apparent),
            n.metrics.snapshots_built,
            n.metrics.snapshots_installed,
            n.metrics.snapshot_index,
            n.metrics.purged_index,
            n.metrics.last_log_index,
            n.metrics.keys
        );
    }
    out
}

fn run_markdown(args: &Args, run: usize, f: &RunFigures) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### Run {run}\n\n{} s measured per row after {} s warm-up; load average {} before, {} \
         after; the run took {:.0} s.\n",
        args.secs, args.warmup_secs, f.load_before, f.load_after, f.secs
    );
    if !f.rows.is_empty() {
        out.push_str(&rows_markdown(&f.rows));
        out.push('\n');
    }
    if let Some(m) = &f.million {
        out.push_str(&million_markdown(m));
    }
    out
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| !v.is_nan());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) { (values[mid - 1] + values[mid]) / 2.0 } else { values[mid] }
}

fn per_entry_median(rows: &[&Row]) -> String {
    let values: Vec<f64> = rows
        .iter()
        .filter(|r| r.op != Op::Get)
        .filter_map(|r| r.entries.filter(|e| *e > 0).map(|e| r.ops as f64 / e as f64))
        .collect();
    let m = median(values);
    if m.is_nan() { "-".into() } else { format!("{m:.1}") }
}

fn median_markdown(args: &Args, runs: &[RunFigures]) -> String {
    let mut out = format!(
        "\n### Medians of {} runs\n\nEach figure is the median of that figure over the runs; \
         \"ops/s per run\" shows the spread. Errors are summed over the runs.\n\n",
        runs.len()
    );
    let mut groups: BTreeMap<RowKey, Vec<&Row>> = BTreeMap::new();
    for row in runs.iter().flat_map(|r| &r.rows) {
        groups.entry(row.key()).or_default().push(row);
    }
    if !groups.is_empty() {
        out.push_str(
            "| nodes | workload | clients (channels) | clients talk to | ops/s | p50 ms | p99 ms | errors | writes per log entry | ops/s per run |\n\
             |---:|---|---:|---|---:|---:|---:|---:|---:|---|\n",
        );
        // Keep the order the runs measured in.
        let order: Vec<RowKey> = runs[0].rows.iter().map(Row::key).collect();
        for key in order {
            let rows = &groups[&key];
            let first = rows[0];
            let per_run: Vec<String> = rows.iter().map(|r| format!("{:.0}", r.ops_per_sec)).collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} ({}) | {} | {:.0} | {} | {} | {} | {} | {} |",
                first.nodes,
                first.op.name(),
                first.clients,
                first.channels,
                if first.via_follower { "follower" } else { "leader" },
                median(rows.iter().map(|r| r.ops_per_sec).collect()),
                ms(median(rows.iter().map(|r| r.p50_ms).collect())),
                ms(median(rows.iter().map(|r| r.p99_ms).collect())),
                rows.iter().map(|r| r.errors).sum::<u64>(),
                per_entry_median(rows),
                per_run.join(" / ")
            );
        }
        out.push('\n');
    }
    let millions: Vec<&MillionFigures> = runs.iter().filter_map(|r| r.million.as_ref()).collect();
    if !millions.is_empty() {
        let per_run: Vec<String> = millions.iter().map(|m| format!("{:.0}", m.puts_per_sec)).collect();
        let leaders: Vec<&NodeFigures> =
            millions.iter().flat_map(|m| m.nodes.iter().filter(|n| n.leader)).collect();
        let followers: Vec<&NodeFigures> =
            millions.iter().flat_map(|m| m.nodes.iter().filter(|n| !n.leader)).collect();
        let med = |nodes: &[&NodeFigures], f: fn(&NodeFigures) -> u64| {
            mib(median(nodes.iter().map(|n| f(n) as f64).collect()) as u64)
        };
        let _ = writeln!(
            out,
            "{} puts ({}-byte values, {} clients): median **{:.0} puts/s** (runs: {}), p50 {} ms, \
             p99 {} ms, max {} ms; elections during the phase in {} of {} runs.\n",
            millions[0].puts,
            args.value_bytes,
            millions[0].clients,
            median(millions.iter().map(|m| m.puts_per_sec).collect()),
            per_run.join(" / "),
            ms(median(millions.iter().map(|m| m.p50_ms).collect())),
            ms(median(millions.iter().map(|m| m.p99_ms).collect())),
            ms(median(millions.iter().map(|m| m.max_ms).collect())),
            millions.iter().filter(|m| m.terms.0 != m.terms.1).count(),
            millions.len()
        );
        out.push_str(
            "| role | RSS after (MiB) | peak RSS (MiB) | raft/ sled (MiB) | snapshots/ (MiB) | data dir allocated (MiB) |\n|---|---:|---:|---:|---:|---:|\n",
        );
        for (role, nodes) in [("leader", &leaders), ("follower", &followers)] {
            if nodes.is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                "| {role} | {} | {} | {} | {} | {} |",
                med(nodes, |n| n.rss_kib * 1024),
                med(nodes, |n| n.peak_rss_kib * 1024),
                med(nodes, |n| n.raft_dir.allocated),
                med(nodes, |n| n.snapshot_dir.allocated),
                med(nodes, |n| n.total.allocated)
            );
        }
    }
    out
}

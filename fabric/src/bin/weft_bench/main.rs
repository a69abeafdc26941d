//! `weft-bench`: throughput, latency, memory and disk of real `weft node` processes.
//!
//! Starts clusters of the `weft` binary that sits next to this one (each node its own data dir
//! under the system temp dir, on free ports of 127.0.0.1, its log flushed to disk as always),
//! runs each workload for a fixed time with 1 and 64 concurrent clients against the leader,
//! and prints ops/s and latency percentiles. A last phase writes `--puts` unique keys into a
//! fresh 3-node cluster and reports each node's RSS and data-dir size once snapshots have
//! settled. The `executions` workload ([`executions`]) times calls of an echo agent that runs
//! in this process with the `weft-agent` SDK; `membership` ([`membership`]) times gossip;
//! `streams` ([`streams`]) measures streams against NATS JetStream R3 in the same run. When
//! etcd is installed ([`etcd`]), the put and get workloads and the million-put phase run on
//! etcd clusters of the same sizes too, with the same client code, and the report sets each
//! figure beside etcd's with the ratio.
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
//! is interrupted with ctrl-c (the [`cluster::Cluster`] and [`cluster::Scratch`] drop guards;
//! the node processes come from the shared harness, `weft_fabric::testing`).
//!
//! # Layout
//! - [`kv`]: the put, cas, get and follower workloads, on Weft and (put, get) on etcd.
//! - [`store`]: one client for both stores: Weft's `State` and etcd's `KV` services.
//! - [`etcd`]: clusters of `etcd` processes, the peer of the key-value workloads.
//! - [`million`]: the million-put phase, then RSS and disk per node.
//! - [`executions`]: round trips of calls to an echo agent served by this process.
//! - [`membership`]: gossip formation, traffic, failure detection and replacement.
//! - [`streams`]: append throughput, append → listener latency, memory per million items;
//!   Weft and NATS JetStream interleaved.
//! - [`schedules`]: how late cron schedules fire, next to delayed executions.
//! - [`metrics_cost`]: puts with the request-latency metrics on and off, interleaved.
//! - [`http_call`]: a call's round trip through the HTTP/JSON API next to gRPC, interleaved.
//! - [`gossip_packets`]: the cost per gossip packet of a MAC or encryption (no nodes).
//! - [`security_cost`]: puts and execution round trips with TLS on and off, and with auth on
//!   and off, interleaved.
//! - [`lockstep`]: two sides of a comparison measured at the same time (`--side-by-side`).
//! - [`cluster`]: the clusters of `weft node` processes and the scratch dir they live in.
//! - [`probes`]: `/metrics`, `/proc` RSS and CPU time, disk use, load average.
//! - [`report`]: markdown tables, medians and percentiles.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use weft_fabric::testing::weft_binary;

use crate::cluster::Scratch;
use crate::probes::load_average;

mod cluster;
mod etcd;
mod executions;
mod gossip_packets;
mod http_call;
mod kv;
mod lockstep;
mod membership;
mod metrics_cost;
mod million;
mod probes;
mod programs;
mod report;
mod schedules;
mod security_cost;
mod store;
mod streams;

/// Deadline of one benchmark request; a slower one counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed request, so an overloaded node is not hammered in a hot loop.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

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
    /// Streams: items per append in the throughput cases (1: single-item appends).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 100])]
    batch_items: Vec<usize>,
    /// Streams: items the memory phase appends (0: no memory phase).
    #[arg(long, default_value_t = 1_000_000)]
    stream_items: u64,
    /// Streams: single-item appends per second while listener latency is measured (0: no
    /// latency phase).
    #[arg(long, default_value_t = 200.0)]
    listen_rate: f64,
    /// Streams: the systems to measure, in the order each run measures them.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [streams::System::Weft, streams::System::NatsAlways, streams::System::NatsDefault])]
    systems: Vec<streams::System>,
    /// Streams: the `nats-server` binary (default: $NATS_SERVER, then PATH).
    #[arg(long, value_name = "PATH")]
    nats_server: Option<PathBuf>,
    /// The `etcd` binary the put, get and million-put workloads are compared with (default:
    /// $ETCD, then PATH). With none on PATH, Weft is measured alone; a --etcd or $ETCD that
    /// is not a file is an error.
    #[arg(long, value_name = "PATH")]
    etcd: Option<PathBuf>,
    /// Measure Weft alone even when etcd is installed.
    #[arg(long, conflicts_with = "etcd")]
    no_etcd: bool,
    /// tls-cost and auth-cost: measure the setting on and off at the same time, on two
    /// clusters side by side (each row of one measured while the same row of the other is),
    /// instead of one after the other. On a machine shared with other work both sides then
    /// see the same load; CPU per operation then counts the node processes only.
    #[arg(long)]
    side_by_side: bool,
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
    /// Streams: append throughput, append → listener latency and memory per million items,
    /// against NATS JetStream R3 when nats-server is available.
    Streams,
    /// Schedules firing every second next to delayed executions: how late each runs.
    Schedules,
    /// Puts with the request-latency metrics (`rpc_metrics`) on and off, interleaved: what
    /// the metrics cost on the put path. Only when asked for (`--only metrics-cost`).
    MetricsCost,
    /// A call's round trip through the HTTP/JSON API (`POST /v1/call`) next to gRPC, one
    /// caller, interleaved.
    HttpCall,
    /// Gossip packets sealed and opened plain, with a MAC and encrypted, in this process:
    /// ns per packet (each case runs a tenth of --secs).
    GossipPackets,
    /// Puts and execution round trips on clusters with TLS (and mutual TLS between nodes)
    /// on and off, interleaved: what TLS costs. Only when asked for (`--only tls-cost`).
    TlsCost,
    /// Puts and execution round trips on clusters with auth on (every request carries a
    /// bearer token the node checks) and off, interleaved: what auth costs. Only when asked
    /// for (`--only auth-cost`).
    AuthCost,
}

impl Args {
    fn wants(&self, w: Workload) -> bool {
        (self.only.is_empty() && !matches!(w, Workload::MetricsCost | Workload::TlsCost | Workload::AuthCost))
            || self.only.contains(&w)
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
        anyhow::ensure!(
            self.batch_items.iter().all(|b| (1..=1000).contains(b)),
            "--batch-items takes 1 to 1000 items per append (the fabric's max_batch_items)"
        );
        anyhow::ensure!(
            !self.wants(Workload::Streams) || self.value_bytes >= 8,
            "--value-bytes must be 8 or more for streams (items carry a time stamp)"
        );
        anyhow::ensure!(self.listen_rate >= 0.0, "--listen-rate must not be negative");
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

/// Everything one run measured.
#[derive(Debug, Default)]
struct RunFigures {
    rows: Vec<kv::Row>,
    /// The million-put phase of each system measured, in the order they ran.
    millions: Vec<million::MillionFigures>,
    load_before: String,
    load_after: String,
    secs: f64,
}

async fn run(args: Args) -> anyhow::Result<()> {
    let weft = match &args.weft {
        Some(path) => path.clone(),
        None => weft_binary()?,
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
    let etcd_workloads = [Workload::Put, Workload::Get, Workload::Million];
    let etcd = if data_runs > 0 && etcd_workloads.iter().any(|w| args.wants(*w)) {
        etcd_binary(&args)?
    } else {
        None
    };
    for run in 1..=data_runs {
        eprintln!("== run {run} of {} (load average {})", args.runs, load_average());
        let figures = run_once(&args, &weft, etcd.as_deref(), &scratch, run).await?;
        print!("{}", report::run_markdown(&args, run, &figures));
        runs.push(figures);
    }
    if runs.len() > 1 {
        print!("{}", report::median_markdown(&args, &runs));
    }
    let etcd_measured = |r: &RunFigures| {
        r.rows.iter().any(|row| row.system == store::System::Etcd)
            || r.millions.iter().any(|m| m.system == store::System::Etcd)
    };
    if runs.iter().any(etcd_measured) {
        print!("{}", report::versus_markdown(&runs));
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
    if args.wants(Workload::Streams) {
        streams::measure(&args, &weft, &scratch).await?;
    }
    if args.wants(Workload::Schedules) {
        let mut rows = Vec::new();
        for run in 1..=args.runs {
            eprintln!("== schedules run {run} of {} (load average {})", args.runs, load_average());
            rows.extend(schedules::measure(&args, &weft, &scratch, run).await?);
        }
        print!("{}", schedules::markdown(&rows));
    }
    if args.wants(Workload::MetricsCost) {
        eprintln!("== metrics cost: puts with rpc_metrics on and off (load average {})", load_average());
        let samples = metrics_cost::measure(&args, &weft, &scratch).await?;
        print!("{}", metrics_cost::markdown(&args, &samples));
    }
    if args.wants(Workload::HttpCall) {
        eprintln!("== a call over HTTP and over gRPC (load average {})", load_average());
        let mut sides = Vec::new();
        for _ in 0..args.runs {
            sides.extend(http_call::measure(&args, &weft, &scratch).await?);
        }
        print!("{}", http_call::markdown(&sides));
    }
    if args.wants(Workload::GossipPackets) {
        eprintln!("== gossip packets: plain, MAC, encrypted (load average {})", load_average());
        let rows = gossip_packets::measure(Duration::from_secs_f64((args.secs / 10.0).max(0.1)));
        print!("{}", gossip_packets::markdown(&rows));
    }
    if args.wants(Workload::TlsCost) {
        eprintln!("== TLS cost: puts and executions with TLS on and off (load average {})", load_average());
        let samples = security_cost::measure(&args, &weft, &scratch, security_cost::Setting::Tls).await?;
        print!("{}", security_cost::markdown(&args, security_cost::Setting::Tls, &samples));
    }
    if args.wants(Workload::AuthCost) {
        eprintln!("== auth cost: puts and executions with auth on and off (load average {})", load_average());
        let samples = security_cost::measure(&args, &weft, &scratch, security_cost::Setting::Auth).await?;
        print!("{}", security_cost::markdown(&args, security_cost::Setting::Auth, &samples));
    }
    let total = started.elapsed();
    println!("\nTotal time: {:.0} s for {} run(s).", total.as_secs_f64(), args.runs);
    drop(scratch);
    Ok(())
}

/// The etcd to compare the key-value workloads with, unless `--no-etcd`; says on stdout
/// which one, or why there is none and how to install it. An etcd named by `--etcd` or `$ETCD`
/// that is not there is an error: the caller asked for it.
fn etcd_binary(args: &Args) -> anyhow::Result<Option<PathBuf>> {
    if args.no_etcd {
        println!("\netcd was not measured: --no-etcd.\n");
        return Ok(None);
    }
    match etcd::find_binary(args.etcd.as_deref()) {
        Ok(path) => {
            let version = etcd::version(&path);
            eprintln!("== etcd {version} ({}) is measured beside Weft", path.display());
            println!(
                "\netcd {version} is measured beside Weft: clusters of the same sizes, the same clients \
                 and client code; the two take turns at going first.\n"
            );
            Ok(Some(path))
        }
        Err(why) if args.etcd.is_some() || std::env::var_os("ETCD").is_some() => anyhow::bail!(why),
        Err(why) => {
            eprintln!("== etcd is not measured: {why}");
            println!("\netcd was not measured: {why}.\n");
            Ok(None)
        }
    }
}

/// One run of the put, cas, get, follower and million-put workloads the arguments ask for.
async fn run_once(
    args: &Args,
    weft: &Path,
    etcd: Option<&Path>,
    scratch: &Scratch,
    run: usize,
) -> anyhow::Result<RunFigures> {
    let started = Instant::now();
    let mut figures = RunFigures { load_before: load_average(), ..Default::default() };
    figures.rows = kv::measure(args, weft, etcd, scratch, run).await?;
    if args.wants(Workload::Million) {
        // etcd first in even runs, so drift in the machine's load falls on both alike.
        let etcd_first = run.is_multiple_of(2);
        if let Some(etcd) = etcd.filter(|_| etcd_first) {
            figures.millions.push(million::measure_etcd(args, etcd, scratch, run).await?);
        }
        figures.millions.push(million::measure(args, weft, scratch, run).await?);
        if let Some(etcd) = etcd.filter(|_| !etcd_first) {
            figures.millions.push(million::measure_etcd(args, etcd, scratch, run).await?);
        }
    }
    figures.load_after = load_average();
    figures.secs = started.elapsed().as_secs_f64();
    Ok(figures)
}

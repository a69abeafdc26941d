//! `weft-bench --only executions`: round trips of executions through real `weft node`
//! processes, with the `weft-agent` SDK on both ends.
//!
//! An agent `bench` whose delegate `echo` returns its argument runs in this process: a
//! `weft_agent::Worker` with capacity [`WORKER_CAPACITY`], a real gRPC session over TCP to
//! one node. Callers are tasks of this process too, each calling
//! `Client::call("bench", "echo", &i)` (bincode) in a loop on the leader; the 64 callers share
//! `--channels` clients, that is as many HTTP/2 connections. A round trip is timed from the
//! call to its result:
//!
//! ```text
//!   caller ──Call (create + wait)──► leader ──Raft: CreateExecution (assigned as it applies)
//!                                      │ assignment, through the watch hub of node W
//!                                      ▼
//!                          worker (session on node W): echo
//!                                      │ completion (forwarded if W is a follower)
//!                                      ▼
//!   caller ◄──────── result ───────── leader ◄──Raft: Complete
//! ```
//!
//! Node W is the leader; on 3 nodes a second variant puts the worker's session on a
//! follower. The handler notes when it runs, which splits each round trip in two: from the
//! call to the handler (create, commit, assignment) and from the handler to the result
//! (completion, commit, the caller's wait). The leader's `/metrics` before and after the
//! window give the log entries and grid commands per execution (how well create and
//! complete batch).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::task::{JoinHandle, JoinSet};
use weft_agent::{Agent, Context, Fail};

use crate::cluster::{Access, Cluster, Scratch, Security};
use crate::lockstep::{self, Lockstep};
use crate::probes::{CpuTicks, Metrics, TICKS_PER_SEC, cpu_ticks, load_average, metrics_over};
use crate::report::{median, ms, percentile_ms};
use crate::{Args, ERROR_PAUSE, REQUEST_TIMEOUT};

/// The agent the benchmark serves.
const AGENT: &str = "bench";
/// Its delegate, which returns its argument.
const DELEGATE: &str = "echo";
/// Executions the worker holds at once: well above the most callers, so callers never wait
/// for room in the worker.
const WORKER_CAPACITY: u32 = 256;
/// How long a stopping worker lets running handlers finish.
const WORKER_DRAIN: Duration = Duration::from_secs(2);
/// How long a new worker may take to open its session and answer a first call.
const WORKER_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the worker may take to stop, and the nodes to forget finished waits and
/// assignments, after a variant.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Callers' arguments: caller number above these bits, the caller's sequence below.
const SEQ_BITS: u32 = 40;

/// Figures of one variant at one concurrency.
#[derive(Debug, Clone)]
pub struct Row {
    nodes: usize,
    /// The worker's session is on a follower (else on the leader).
    worker_on_follower: bool,
    /// "n1" etc.: the node the worker is connected to.
    worker_target: String,
    /// "n1" etc.: the node the callers talk to (the leader).
    caller_target: String,
    callers: usize,
    channels: usize,
    /// Seconds measured.
    secs: f64,
    /// Round trips that started and ended inside the measured window.
    ops: u64,
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Median time from the call to the handler running.
    to_agent_p50_ms: f64,
    /// Median time from the handler running to the result at the caller.
    back_p50_ms: f64,
    errors: u64,
    /// Log entries the leader appended while measuring (None if its metrics were unreadable).
    entries: Option<u64>,
    /// Grid commands the leader applied while measuring.
    commands: Option<u64>,
    /// The Raft term changed while measuring: there was an election.
    term_changed: bool,
    /// Cores the leader, the followers (together) and this process used while measuring.
    leader_cores: f64,
    follower_cores: f64,
    bench_cores: f64,
}

type RowKey = (usize, bool, usize);

/// A row's figures as other workloads compare them.
pub struct Summary {
    pub nodes: usize,
    pub callers: usize,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    /// Cores the nodes used together while measuring.
    pub node_cores: f64,
    /// Cores this process used while measuring.
    pub bench_cores: f64,
}

impl Figures {
    /// The rows whose worker was on the leader.
    pub fn on_leader(&self) -> Vec<Summary> {
        self.rows
            .iter()
            .filter(|r| !r.worker_on_follower)
            .map(|r| Summary {
                nodes: r.nodes,
                callers: r.callers,
                ops_per_sec: r.ops_per_sec,
                p50_ms: r.p50_ms,
                p99_ms: r.p99_ms,
                errors: r.errors,
                node_cores: r.leader_cores + r.follower_cores,
                bench_cores: r.bench_cores,
            })
            .collect()
    }
}

impl Row {
    fn key(&self) -> RowKey {
        (self.nodes, self.worker_on_follower, self.callers)
    }

    fn entries_per_execution(&self) -> f64 {
        match self.entries {
            Some(e) if self.ops > 0 => e as f64 / self.ops as f64,
            _ => f64::NAN,
        }
    }

    /// The leader's log entries per second while measuring.
    fn entries_per_sec(&self) -> f64 {
        self.entries.map_or(f64::NAN, |e| e as f64 / self.secs)
    }

    fn commands_per_entry(&self) -> f64 {
        match (self.commands, self.entries) {
            (Some(c), Some(e)) if e > 0 => c as f64 / e as f64,
            _ => f64::NAN,
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Default)]
pub struct Figures {
    rows: Vec<Row>,
    /// Trouble seen between rows: a worker that failed, executions or waits left behind.
    notes: Vec<String>,
    load_before: String,
    load_after: String,
    secs: f64,
}

/// When the echo handler last ran for each caller, so that a round trip splits in two. Each
/// caller has one call in flight, so its slot belongs to its current call.
#[derive(Clone)]
struct Stamps {
    base: Instant,
    /// Per caller: nanoseconds since `base` (0: never).
    at_ns: Arc<Vec<AtomicU64>>,
}

impl Stamps {
    fn new(callers: usize) -> Self {
        Self { base: Instant::now(), at_ns: Arc::new((0..callers).map(|_| AtomicU64::new(0)).collect()) }
    }

    /// The handler runs for argument `arg` (its caller number in the high bits).
    fn mark(&self, arg: u64) {
        if let Some(slot) = self.at_ns.get((arg >> SEQ_BITS) as usize) {
            slot.store(self.base.elapsed().as_nanos().max(1) as u64, Ordering::Release);
        }
    }

    /// When the handler last ran for `caller`.
    fn at(&self, caller: usize) -> Option<Instant> {
        let ns = self.at_ns.get(caller)?.load(Ordering::Acquire);
        (ns > 0).then(|| self.base + Duration::from_nanos(ns))
    }
}

/// A worker serving `bench.echo` on the node at `addr`, running on this process's runtime.
struct EchoWorker {
    stopper: weft_agent::Stopper,
    task: JoinHandle<Result<(), weft_agent::Error>>,
}

impl EchoWorker {
    fn start(addr: &str, stamps: Stamps, access: &Access) -> anyhow::Result<Self> {
        let echo = move |_ctx: Context, x: u64| {
            stamps.mark(x);
            async move { Ok::<_, Fail>(x) }
        };
        let worker = access
            .worker(addr)
            .agent(Agent::new(AGENT).delegate(DELEGATE, echo))
            .capacity(WORKER_CAPACITY)
            .drain_timeout(WORKER_DRAIN)
            .name("weft-bench echo")
            .build()
            .context("cannot build the echo worker")?;
        let stopper = worker.stopper();
        Ok(Self { stopper, task: tokio::spawn(worker.run()) })
    }

    /// Stops the worker and returns how its run ended.
    async fn stop(mut self) -> anyhow::Result<()> {
        self.stopper.stop();
        match tokio::time::timeout(SETTLE_TIMEOUT, &mut self.task).await {
            Err(_) => bail!("the echo worker did not stop within {} s", SETTLE_TIMEOUT.as_secs()),
            Ok(Err(e)) => bail!("the echo worker panicked: {e}"),
            Ok(Ok(Err(e))) => bail!("the echo worker ended with an error: {e}"),
            Ok(Ok(Ok(()))) => Ok(()),
        }
    }
}

// Dropping a worker that was not stopped (an error, ctrl-c) must not leave it running.
impl Drop for EchoWorker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One run: for each cluster size, each place of the worker and each number of callers.
pub async fn measure(args: &Args, weft: &Path, scratch: &Scratch, run: usize) -> anyhow::Result<Figures> {
    measure_over(args, weft, scratch, run, (Security::default(), None), "").await
}

/// [`measure`] on clusters with TLS and auth as `security` says (callers and worker over
/// TLS too, with the admin token), their dirs named starting with `label`. With a
/// `lockstep`, each row starts when the other side's does.
pub async fn measure_over(
    args: &Args,
    weft: &Path,
    scratch: &Scratch,
    run: usize,
    (security, lockstep): (Security, Option<&Lockstep>),
    label: &str,
) -> anyhow::Result<Figures> {
    let started = Instant::now();
    let mut figures = Figures { load_before: load_average(), ..Default::default() };
    for &n in &args.nodes {
        let mut cluster = Cluster::start_with(
            weft,
            &scratch.path.join(format!("{label}run{run}-executions-{n}nodes")),
            n,
            args.snapshot_after_entries,
            args.keep,
            &[],
            security,
        )?;
        let leader = cluster.wait_for_leader().await?;
        eprintln!("   {n} node(s) up, leader n{leader}");
        let mut places = vec![(false, leader)];
        if let Some(follower) = cluster.nodes().map(|node| node.id).find(|id| *id != leader) {
            places.push((true, follower));
        }
        for (on_follower, worker_node) in places {
            let stamps = Stamps::new(args.clients.iter().copied().max().unwrap_or(1));
            let worker = EchoWorker::start(cluster.addr(worker_node)?, stamps.clone(), &cluster.access())?;
            let callers_addr = cluster.addr(leader)?.to_owned();
            wait_until_served(&callers_addr, &cluster.access()).await.with_context(|| {
                format!("the echo worker on n{worker_node} of {n} node(s) does not answer")
            })?;
            for &callers in &args.clients {
                lockstep::meet(lockstep).await;
                let row =
                    measure_row(args, &cluster, n, leader, (on_follower, worker_node), callers, &stamps)
                        .await
                        .with_context(|| format!("executions with {callers} caller(s) on {n} node(s)"))?;
                eprintln!(
                    "   {n} node(s) executions {callers:>2} caller(s), worker on n{worker_node}: \
                     {:>8.0} ops/s  p50 {:.3} ms ({:.3} to the agent + {:.3} back)  p99 {:.3} ms  \
                     errors {}  entries/execution {:.2} ({:.0}/s)  commands/entry {:.1}  \
                     cpu leader {:.2} followers {:.2} bench {:.2}",
                    row.ops_per_sec,
                    row.p50_ms,
                    row.to_agent_p50_ms,
                    row.back_p50_ms,
                    row.p99_ms,
                    row.errors,
                    row.entries_per_execution(),
                    row.entries_per_sec(),
                    row.commands_per_entry(),
                    row.leader_cores,
                    row.follower_cores,
                    row.bench_cores
                );
                if row.term_changed {
                    eprintln!("   warning: the Raft term changed while measuring (an election)");
                }
                figures.rows.push(row);
            }
            let place = format!("{n} node(s), worker on n{worker_node}");
            if let Err(e) = worker.stop().await {
                eprintln!("   warning: {place}: {e:#}");
                figures.notes.push(format!("{place}: {e:#}"));
            }
            for leftover in leftovers(&cluster).await {
                eprintln!("   warning: {place}: {leftover}");
                figures.notes.push(format!("{place}: {leftover}"));
            }
        }
        cluster.report_log_problems();
        drop(cluster);
    }
    figures.load_after = load_average();
    figures.secs = started.elapsed().as_secs_f64();
    Ok(figures)
}

/// Calls `bench.echo` on `addr` until one call answers, so that measuring starts with the
/// worker's session open.
async fn wait_until_served(addr: &str, access: &Access) -> anyhow::Result<()> {
    let client = access.client(addr).build().context("cannot build a client")?;
    let probe = client.request(AGENT, DELEGATE).args(&0u64).wait(WORKER_READY_TIMEOUT).call::<u64>();
    match tokio::time::timeout(WORKER_READY_TIMEOUT, probe).await {
        Ok(Ok(0)) => Ok(()),
        Ok(Ok(other)) => bail!("echo of 0 returned {other}"),
        Ok(Err(e)) => bail!("{e}"),
        Err(_) => bail!("no answer within {} s", WORKER_READY_TIMEOUT.as_secs()),
    }
}

/// What the nodes still hold once the worker stopped and every caller finished: assigned or
/// pending executions, waiting callers. Empty when all of it went away within
/// [`SETTLE_TIMEOUT`].
async fn leftovers(cluster: &Cluster) -> Vec<String> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let mut found = Vec::new();
        for node in cluster.nodes() {
            match metrics_over(node.addr, &cluster.access()).await {
                Ok(m) => {
                    if m.waiters > 0 {
                        found.push(format!("n{} still has {} waiting caller(s)", node.id, m.waiters));
                    }
                    if m.is_leader && (m.executions_pending > 0 || m.executions_assigned > 0) {
                        found.push(format!(
                            "the leader n{} still has {} pending and {} assigned execution(s)",
                            node.id, m.executions_pending, m.executions_assigned
                        ));
                    }
                }
                Err(e) => found.push(format!("{e:#}")),
            }
        }
        if found.is_empty() || Instant::now() >= deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What one caller saw while measuring.
#[derive(Default)]
struct Tally {
    latencies_ns: Vec<u64>,
    to_agent_ns: Vec<u64>,
    back_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// Runs `callers` callers against the leader for the measured window.
async fn measure_row(
    args: &Args,
    cluster: &Cluster,
    nodes: usize,
    leader: u64,
    (worker_on_follower, worker_node): (bool, u64),
    callers: usize,
    stamps: &Stamps,
) -> anyhow::Result<Row> {
    let addr = cluster.addr(leader)?.to_owned();
    let access = cluster.access();
    let clients = (0..args.channels.min(callers))
        .map(|_| access.client(&addr).build())
        .collect::<Result<Vec<_>, _>>()
        .context("cannot build a client")?;

    let measure_from = Instant::now() + args.warmup();
    let measure_until = measure_from + args.secs();
    let pids: Vec<(bool, u32)> = cluster.nodes().filter_map(|n| Some((n.id == leader, n.pid?))).collect();
    let sampler = tokio::spawn(async move {
        let sample = async || {
            let ticks: Vec<(bool, CpuTicks)> = pids.iter().map(|(l, p)| (*l, cpu_ticks(&[*p]))).collect();
            (ticks, metrics_over(&addr, &access).await.ok())
        };
        tokio::time::sleep_until(measure_from.into()).await;
        let before = sample().await;
        tokio::time::sleep_until(measure_until.into()).await;
        let after = sample().await;
        (before, after)
    });

    let mut tasks = JoinSet::new();
    for c in 0..callers {
        let client = clients[c % clients.len()].clone();
        let stamps = stamps.clone();
        tasks.spawn(async move {
            let mut tally = Tally::default();
            let mut seq = 0u64;
            loop {
                let start = Instant::now();
                if start >= measure_until {
                    break;
                }
                seq += 1;
                let arg = ((c as u64) << SEQ_BITS) | seq;
                let result =
                    match tokio::time::timeout(REQUEST_TIMEOUT, client.call::<_, u64>(AGENT, DELEGATE, &arg))
                        .await
                    {
                        Ok(Ok(got)) if got == arg => Ok(()),
                        Ok(Ok(got)) => Err(format!("echo of {arg} returned {got}")),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("no result within {} s", REQUEST_TIMEOUT.as_secs())),
                    };
                let end = Instant::now();
                let counted = start >= measure_from && end <= measure_until;
                match result {
                    Ok(()) if counted => {
                        tally.latencies_ns.push((end - start).as_nanos() as u64);
                        if let Some(handled) = stamps.at(c).filter(|t| (start..=end).contains(t)) {
                            tally.to_agent_ns.push((handled - start).as_nanos() as u64);
                            tally.back_ns.push((end - handled).as_nanos() as u64);
                        }
                    }
                    Ok(()) => {}
                    Err(e) => {
                        if counted {
                            tally.errors += 1;
                        }
                        tally.first_error.get_or_insert(e);
                        tokio::time::sleep(ERROR_PAUSE).await;
                    }
                }
            }
            tally
        });
    }
    let mut latencies = Vec::new();
    let (mut to_agent, mut back) = (Vec::new(), Vec::new());
    let mut errors = 0;
    let mut first_error = None;
    while let Some(tally) = tasks.join_next().await {
        let tally = tally.context("a caller task panicked")?;
        latencies.extend(tally.latencies_ns);
        to_agent.extend(tally.to_agent_ns);
        back.extend(tally.back_ns);
        errors += tally.errors;
        first_error = first_error.or(tally.first_error);
    }
    let ((ticks_before, first), (ticks_after, last)) = sampler.await.context("the sampler panicked")?;
    if let Some(e) = first_error {
        eprintln!("   first error of executions ({callers} callers): {e}");
    }
    latencies.sort_unstable();
    to_agent.sort_unstable();
    back.sort_unstable();
    let secs = args.secs;
    let cores = |leader: bool| {
        let ticks = |all: &[(bool, CpuTicks)]| -> u64 {
            all.iter().filter(|(l, _)| *l == leader).map(|(_, t)| t.nodes).sum()
        };
        ticks(&ticks_after).saturating_sub(ticks(&ticks_before)) as f64 / TICKS_PER_SEC / secs
    };
    let bench = |all: &[(bool, CpuTicks)]| all.first().map_or(0, |(_, t)| t.bench);
    let delta = |pick: fn(&Metrics) -> u64| match (&first, &last) {
        (Some(a), Some(b)) => Some(pick(b).saturating_sub(pick(a))),
        _ => None,
    };
    Ok(Row {
        nodes,
        worker_on_follower,
        worker_target: format!("n{worker_node}"),
        caller_target: format!("n{leader}"),
        callers,
        channels: clients.len(),
        secs,
        ops: latencies.len() as u64,
        ops_per_sec: latencies.len() as f64 / secs,
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
        to_agent_p50_ms: percentile_ms(&to_agent, 0.50),
        back_p50_ms: percentile_ms(&back, 0.50),
        errors,
        entries: delta(|m| m.last_log_index),
        commands: delta(|m| m.commands_applied),
        term_changed: matches!((&first, &last), (Some(a), Some(b)) if a.term != b.term),
        leader_cores: cores(true),
        follower_cores: cores(false),
        bench_cores: bench(&ticks_after).saturating_sub(bench(&ticks_before)) as f64 / TICKS_PER_SEC / secs,
    })
}

// ---------------------------------------------------------------------------------------------
// Markdown

fn fixed(v: f64, places: usize) -> String {
    if v.is_nan() { "-".into() } else { format!("{v:.places$}") }
}

fn worker_text(row: &Row) -> String {
    let role = if row.worker_on_follower { "follower" } else { "leader" };
    format!("{role} ({})", row.worker_target)
}

/// The figures of one run.
pub fn run_markdown(args: &Args, run: usize, f: &Figures) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### Executions, run {run}\n\n{} s measured per row after {} s warm-up; load average {} \
         before, {} after; the run took {:.0} s.\n",
        args.secs, args.warmup_secs, f.load_before, f.load_after, f.secs
    );
    out.push_str(
        "| nodes | callers (channels) | callers talk to | worker on | executions/s | p50 ms | p50 ms: to agent + back | p99 ms | errors | log entries per execution (per s) | grid commands per entry | CPU cores: leader + followers + bench |\n\
         |---:|---:|---|---|---:|---:|---|---:|---:|---:|---:|---|\n",
    );
    for r in &f.rows {
        let election = if r.term_changed { ", election!" } else { "" };
        let _ = writeln!(
            out,
            "| {} | {} ({}) | leader ({}){election} | {} | {:.0} | {} | {} + {} | {} | {} | {} ({}) | {} | {:.2} + {:.2} + {:.2} |",
            r.nodes,
            r.callers,
            r.channels,
            r.caller_target,
            worker_text(r),
            r.ops_per_sec,
            ms(r.p50_ms),
            ms(r.to_agent_p50_ms),
            ms(r.back_p50_ms),
            ms(r.p99_ms),
            r.errors,
            fixed(r.entries_per_execution(), 2),
            fixed(r.entries_per_sec(), 0),
            fixed(r.commands_per_entry(), 1),
            r.leader_cores,
            r.follower_cores,
            r.bench_cores
        );
    }
    for note in &f.notes {
        let _ = writeln!(out, "\n**Note**: {note}.");
    }
    out
}

/// Medians over the runs, with each run's executions/s and p50.
pub fn median_markdown(runs: &[Figures]) -> String {
    let mut out = format!(
        "\n### Executions: medians of {} runs\n\nEach figure is the median of that figure over the \
         runs; the last two columns show each run's. Errors are summed over the runs.\n\n",
        runs.len()
    );
    out.push_str(
        "| nodes | callers (channels) | worker on | executions/s | p50 ms | p50 ms: to agent + back | p99 ms | errors | log entries per execution (per s) | grid commands per entry | executions/s per run | p50 ms per run |\n\
         |---:|---:|---|---:|---:|---|---:|---:|---:|---:|---|---|\n",
    );
    let mut groups: std::collections::BTreeMap<RowKey, Vec<&Row>> = std::collections::BTreeMap::new();
    for row in runs.iter().flat_map(|r| &r.rows) {
        groups.entry(row.key()).or_default().push(row);
    }
    // Keep the order the runs measured in.
    let order: Vec<RowKey> = runs.first().map_or_else(Vec::new, |r| r.rows.iter().map(Row::key).collect());
    for key in order {
        let rows = &groups[&key];
        let first = rows[0];
        let med = |f: fn(&Row) -> f64| median(rows.iter().map(|r| f(r)).collect());
        let per_run = |f: fn(&Row) -> String| rows.iter().map(|r| f(r)).collect::<Vec<_>>().join(" / ");
        let _ = writeln!(
            out,
            "| {} | {} ({}) | {} | {:.0} | {} | {} + {} | {} | {} | {} ({}) | {} | {} | {} |",
            first.nodes,
            first.callers,
            first.channels,
            if first.worker_on_follower { "follower" } else { "leader" },
            med(|r| r.ops_per_sec),
            ms(med(|r| r.p50_ms)),
            ms(med(|r| r.to_agent_p50_ms)),
            ms(med(|r| r.back_p50_ms)),
            ms(med(|r| r.p99_ms)),
            rows.iter().map(|r| r.errors).sum::<u64>(),
            fixed(med(Row::entries_per_execution), 2),
            fixed(med(|r| r.entries_per_sec()), 0),
            fixed(med(Row::commands_per_entry), 1),
            per_run(|r| format!("{:.0}", r.ops_per_sec)),
            per_run(|r| ms(r.p50_ms)),
        );
    }
    let notes: Vec<&String> = runs.iter().flat_map(|r| &r.notes).collect();
    if !notes.is_empty() {
        let _ = writeln!(out, "\n{} note(s) over the runs; see each run.", notes.len());
    }
    out
}

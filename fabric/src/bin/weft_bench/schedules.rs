//! `weft-bench --only schedules`: how late schedules fire, on real `weft node` processes, next
//! to delayed executions (the grid's one-shot timer) in the same window.
//!
//! [`SCHEDULES`] schedules `* * * * * *` (every second, overlap allow) call an agent served by
//! this process (the `weft-agent` SDK, its session on the leader); meanwhile a task creates
//! [`SCHEDULES`] executions a second with `not_before_ms` on the next whole second. After
//! `--secs`, the schedules are paused and every execution of the agent is listed:
//!
//! - a run's due time is in its idempotency key (`schedule:NAME:DUE_MS`) and it was created at
//!   its `created_ms` (the time of the tick entry that fired it): **fire lateness** is
//!   `created_ms - due`, on the leader's clock;
//! - the handler notes the wall time it starts (same machine, same clock): **start lateness**
//!   is that minus the due time (or the delayed execution's `not_before_ms`), which adds the
//!   commit, the assignment and the delivery to the agent.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use weft_agent::{Agent, Context, Fail};
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::executions_client::ExecutionsClient;
use weft_proto::fabric::v1::schedules_client::SchedulesClient;

use crate::Args;
use crate::cluster::{Cluster, Scratch};
use crate::probes::load_average;
use crate::report::percentile_ms;

/// The agent and its delegate.
const AGENT: &str = "cron";
const DELEGATE: &str = "tick";
/// Every-second schedules, and delayed executions created each second.
const SCHEDULES: usize = 10;

/// Lateness of one kind of timer, in nanoseconds, sorted.
#[derive(Debug, Default)]
struct Lateness {
    fire_ns: Vec<u64>,
    start_ns: Vec<u64>,
}

/// One cluster size's figures.
#[derive(Debug)]
pub struct Row {
    nodes: usize,
    secs: f64,
    scheduled: Lateness,
    delayed: Lateness,
    /// Due times that did not run (skipped, refused) or runs the agent never started.
    missing: usize,
    load: String,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Measures each cluster size of `--nodes`.
pub async fn measure(args: &Args, weft: &Path, scratch: &Scratch, run: usize) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &n in &args.nodes {
        let mut cluster = Cluster::start(
            weft,
            &scratch.path.join(format!("run{run}-schedules-{n}nodes")),
            n,
            args.snapshot_after_entries,
            args.keep,
        )?;
        let leader = cluster.wait_for_leader().await?;
        let addr = cluster.addr(leader)?.to_owned();
        eprintln!("   {n} node(s) up, leader n{leader}");
        rows.push(
            measure_row(args, &cluster, &addr, n)
                .await
                .with_context(|| format!("schedules on {n} node(s)"))?,
        );
    }
    Ok(rows)
}

async fn measure_row(args: &Args, cluster: &Cluster, addr: &str, nodes: usize) -> anyhow::Result<Row> {
    // Handler start times (wall ms, as µs for precision) by execution id.
    let started: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let seen = started.clone();
    let tick = move |ctx: Context, (): ()| {
        let at_us = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        seen.lock().expect("no panic holding it").entry(ctx.execution_id()).or_insert(at_us);
        async { Ok::<_, Fail>(()) }
    };
    let worker = cluster
        .access()
        .worker(addr)
        .agent(Agent::new(AGENT).delegate(DELEGATE, tick))
        .capacity(256)
        .name("weft-bench cron")
        .build()
        .context("cannot build the worker")?;
    let stopper = worker.stopper();
    let task = tokio::spawn(worker.run());
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?.connect().await?;
    let mut schedules = SchedulesClient::new(channel.clone());
    let call =
        pb::CreateExecutionRequest { agent: AGENT.into(), delegate: DELEGATE.into(), ..Default::default() };
    for i in 0..SCHEDULES {
        let req = pb::CreateScheduleRequest {
            name: format!("bench-{i}"),
            cron: "* * * * * *".into(),
            call: Some(call.clone()),
            overlap: "allow".into(),
            ..Default::default()
        };
        schedules.create(req).await.context("create a schedule")?;
    }
    let load_before = load_average();
    let begin = Instant::now();
    let mut executions = ExecutionsClient::new(channel.clone());
    while begin.elapsed() < args.secs() {
        // Delayed executions due on the next whole second but one (so they are created well
        // before they are due), like the schedules' due times.
        let due = (now_ms() / 1_000 + 2) * 1_000;
        for _ in 0..SCHEDULES {
            let req = pb::CreateExecutionRequest { not_before_ms: Some(due), ..call.clone() };
            executions.create(req).await.context("create a delayed execution")?;
        }
        tokio::time::sleep(Duration::from_millis(1_000)).await;
    }
    for i in 0..SCHEDULES {
        schedules.pause(pb::ScheduleRef { name: format!("bench-{i}") }).await.context("pause")?;
    }
    let secs = begin.elapsed().as_secs_f64();
    // Let the last runs and delayed executions reach the agent.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stopper.stop();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;

    let mut listed = Vec::new();
    let mut page_token = 0;
    loop {
        let req =
            pb::ListExecutionsRequest { agent: AGENT.into(), page_token, limit: 1000, ..Default::default() };
        let page = executions.list(req).await.context("list executions")?.into_inner();
        listed.extend(page.executions);
        if page.next_page_token == 0 {
            break;
        }
        page_token = page.next_page_token;
    }
    let started = started.lock().expect("no panic holding it").clone();
    let mut row = Row {
        nodes,
        secs,
        scheduled: Lateness::default(),
        delayed: Lateness::default(),
        missing: 0,
        load: format!("{load_before} → {}", load_average()),
    };
    for e in &listed {
        let (due_ms, kind) = match (e.idempotency_key.rsplit_once(':'), e.not_before_ms) {
            (Some((_, due)), _) if e.idempotency_key.starts_with("schedule:") => (due.parse::<u64>()?, 0),
            (_, Some(due)) => (due, 1),
            _ => bail!("execution {} is neither a run nor delayed", e.id),
        };
        let Some(&start_us) = started.get(&e.id) else {
            row.missing += 1;
            continue;
        };
        let lateness = if kind == 0 { &mut row.scheduled } else { &mut row.delayed };
        if kind == 0 {
            lateness.fire_ns.push(e.created_ms.saturating_sub(due_ms) * 1_000_000);
        }
        lateness.start_ns.push((start_us.saturating_sub(due_ms * 1_000)) * 1_000);
    }
    for l in [&mut row.scheduled, &mut row.delayed] {
        l.fire_ns.sort_unstable();
        l.start_ns.sort_unstable();
    }
    eprintln!(
        "   {nodes} node(s): {} runs, fire p50 {:.1} ms p99 {:.1} ms, start p50 {:.1} ms p99 {:.1} ms; \
         {} delayed, start p50 {:.1} ms p99 {:.1} ms; {} not run",
        row.scheduled.start_ns.len(),
        percentile_ms(&row.scheduled.fire_ns, 0.5),
        percentile_ms(&row.scheduled.fire_ns, 0.99),
        percentile_ms(&row.scheduled.start_ns, 0.5),
        percentile_ms(&row.scheduled.start_ns, 0.99),
        row.delayed.start_ns.len(),
        percentile_ms(&row.delayed.start_ns, 0.5),
        percentile_ms(&row.delayed.start_ns, 0.99),
        row.missing
    );
    Ok(row)
}

/// The figures as a markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### Schedules: how late they fire\n\n{SCHEDULES} schedules `* * * * * *` and {SCHEDULES} \
         delayed executions a second (`not_before_ms` on a whole second), one agent in this \
         process. Fire: the tick entry's time minus the due time (leader's clock). Start: the \
         handler's start minus the due time (same machine).\n"
    );
    let _ = writeln!(
        out,
        "| nodes | secs | runs | fire p50 | fire p99 | start p50 | start p99 | delayed | delayed start p50 | delayed start p99 | start p50 ratio | not run | load |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let (s50, d50) = (percentile_ms(&r.scheduled.start_ns, 0.5), percentile_ms(&r.delayed.start_ns, 0.5));
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {} | {:.1} ms | {:.1} ms | {:.2} | {} | {} |",
            r.nodes,
            r.secs,
            r.scheduled.start_ns.len(),
            percentile_ms(&r.scheduled.fire_ns, 0.5),
            percentile_ms(&r.scheduled.fire_ns, 0.99),
            s50,
            percentile_ms(&r.scheduled.start_ns, 0.99),
            r.delayed.start_ns.len(),
            d50,
            percentile_ms(&r.delayed.start_ns, 0.99),
            s50 / d50,
            r.missing,
            r.load
        );
    }
    out
}

//! The million-put phase: `--puts` unique keys written into a fresh 3-node cluster, then each
//! node's RSS, data-dir size and snapshot figures once followers have caught up and snapshots
//! have settled.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::task::JoinSet;
use weft_proto::fabric::v1::state_client::StateClient;

use crate::cluster::{Cluster, Scratch};
use crate::kv::{ClientTally, connect, put_request, value};
use crate::probes::{DiskUse, Metrics, disk_use, metrics, proc_status_kib};
use crate::report::percentile_ms;
use crate::{Args, ERROR_PAUSE};

/// How long followers may take to apply everything, and nodes to finish their snapshots,
/// after the phase.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Most attempts at one put before the phase is abandoned.
const MAX_ATTEMPTS_PER_PUT: u32 = 50;
/// How often the phase reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// One node after the million-put phase.
#[derive(Debug, Clone)]
pub struct NodeFigures {
    pub id: u64,
    pub leader: bool,
    pub rss_before_kib: u64,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    pub raft_dir: DiskUse,
    pub snapshot_dir: DiskUse,
    pub total: DiskUse,
    pub metrics: Metrics,
}

/// The million-put phase.
#[derive(Debug, Clone)]
pub struct MillionFigures {
    pub puts: u64,
    pub value_bytes: usize,
    pub clients: usize,
    pub channels: usize,
    pub secs: f64,
    pub puts_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub errors: u64,
    /// Log entries the leader appended during the phase.
    pub entries: u64,
    /// The Raft term when the phase started and when it ended.
    pub terms: (u64, u64),
    /// The leader when the phase started and when it ended.
    pub leaders: (u64, u64),
    pub settle_secs: f64,
    pub snapshot_after_entries: u64,
    pub nodes: Vec<NodeFigures>,
}

/// One run of the phase on a fresh 3-node cluster.
pub async fn measure(
    args: &Args,
    weft: &Path,
    scratch: &Scratch,
    run: usize,
) -> anyhow::Result<MillionFigures> {
    let mut cluster = Cluster::start(
        weft,
        &scratch.path.join(format!("run{run}-million")),
        3,
        args.snapshot_after_entries,
        args.keep,
    )?;
    let leader = cluster.wait_for_leader().await?;
    eprintln!("   3 nodes up for {} puts, leader n{leader}", args.puts);
    let figures = million(args, &cluster, leader).await?;
    cluster.report_log_problems();
    Ok(figures)
}

/// The million-put phase: `--puts` unique keys from `--million-clients` clients, then RSS and
/// disk per node once followers have caught up and snapshots have settled.
async fn million(args: &Args, cluster: &Cluster, leader: u64) -> anyhow::Result<MillionFigures> {
    let addr = cluster.addr(leader)?.to_owned();
    let rss_before: BTreeMap<u64, u64> = cluster
        .nodes()
        .map(|n| (n.id, n.pid.and_then(|p| proc_status_kib(p, "VmRSS:")).unwrap_or(0)))
        .collect();
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
    for node in cluster.nodes() {
        if metrics(node.addr).await.is_ok_and(|m| m.is_leader) {
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
    for node in cluster.nodes() {
        let metrics = metrics(node.addr).await?;
        nodes.push(NodeFigures {
            id: node.id,
            leader: metrics.is_leader,
            rss_before_kib: rss_before.get(&node.id).copied().unwrap_or(0),
            rss_kib: node.pid.and_then(|p| proc_status_kib(p, "VmRSS:")).unwrap_or(0),
            peak_rss_kib: node.pid.and_then(|p| proc_status_kib(p, "VmHWM:")).unwrap_or(0),
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
pub async fn settle(cluster: &Cluster, snapshot_after_entries: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let mut all = Vec::new();
        for node in cluster.nodes() {
            all.push(metrics(node.addr).await?);
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

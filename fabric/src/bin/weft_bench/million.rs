//! The million-put phase: `--puts` unique keys written into a fresh 3-node cluster, then each
//! node's RSS, data-dir size and snapshot figures once followers have caught up and snapshots
//! have settled; the same for a 3-member etcd cluster when etcd is measured.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::task::JoinSet;

use crate::cluster::{Cluster, Scratch};
use crate::etcd::{self, EtcdCluster};
use crate::kv::{ClientTally, connect, value};
use crate::probes::{DiskUse, Metrics, disk_use, metrics, proc_status_kib};
use crate::report::percentile_ms;
use crate::store::{KvClient, System};
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
    /// "n1" (Weft) or "m1" (etcd).
    pub name: String,
    pub leader: bool,
    pub rss_before_kib: u64,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    /// The log: Weft's `raft/` (sled), etcd's `member/wal/`.
    pub raft_dir: DiskUse,
    /// The state at rest: Weft's `snapshots/`, etcd's `member/snap/` (its bbolt database and
    /// snapshot files).
    pub snapshot_dir: DiskUse,
    pub total: DiskUse,
    /// Weft's `/metrics`; for etcd only what its status and files tell: term, leader, last log
    /// and applied index, snapshot index (the newest `.snap` file) and keys.
    pub metrics: Metrics,
}

/// The million-put phase.
#[derive(Debug, Clone)]
pub struct MillionFigures {
    pub system: System,
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
    /// Log entries between snapshots: Weft's `snapshot_after_entries`, etcd's
    /// `--snapshot-count`.
    pub snapshot_after_entries: u64,
    pub nodes: Vec<NodeFigures>,
}

/// One run of the phase on a fresh 3-node Weft cluster.
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
    eprintln!("   Weft: 3 nodes up for {} puts, leader n{leader}", args.puts);
    let figures = million(args, &cluster, leader).await?;
    cluster.report_log_problems();
    Ok(figures)
}

/// What writing the keys took.
struct Written {
    /// Latency of each put (its last attempt), sorted.
    latencies_ns: Vec<u64>,
    /// Failed attempts, retried.
    errors: u64,
    secs: f64,
    channels: usize,
}

/// Writes `--puts` unique keys (`m-000000000`, …) of `--value-bytes` each to the node at
/// `addr` of `system` from `--million-clients` clients, retrying failed puts (a retried put
/// of the same key and value is harmless whatever the first attempt's outcome was).
async fn write_keys(args: &Args, system: System, addr: &str) -> anyhow::Result<Written> {
    let channels = connect(addr, args.channels.min(args.million_clients)).await?;
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
        let mut client = KvClient::new(system, channels[c % channels.len()].clone());
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
                    match client.put(key.clone(), value.clone()).await {
                        Ok(_) => {
                            tally.latencies_ns.push(start.elapsed().as_nanos() as u64);
                            done.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
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
    let mut failed = None;
    while let Some(tally) = tasks.join_next().await {
        match tally.context("a client task panicked").and_then(|t| t) {
            Ok(tally) => {
                latencies.extend(tally.latencies_ns);
                errors += tally.errors;
                first_error = first_error.or(tally.first_error);
            }
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    progress.abort();
    if let Some(e) = failed {
        return Err(e);
    }
    let secs = started.elapsed().as_secs_f64();
    if let Some(e) = first_error {
        eprintln!("   first error of the million-put phase: {e}");
    }
    latencies.sort_unstable();
    Ok(Written { latencies_ns: latencies, errors, secs, channels: channels.len() })
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
    let written = write_keys(args, System::Weft, &addr).await?;
    let total = args.puts;
    let after = metrics(&addr).await?;
    let entries = after.last_log_index.saturating_sub(before.last_log_index);
    eprintln!(
        "   {total} puts in {:.1} s: {:.0} puts/s, {entries} log entries ({:.1} puts per entry)",
        written.secs,
        total as f64 / written.secs,
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
            name: format!("n{}", node.id),
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
    Ok(figures(
        args,
        System::Weft,
        written,
        entries,
        (before.term, after.term),
        (leader, leader_after),
        settle_secs,
        args.snapshot_after_entries,
        nodes,
    ))
}

/// The figures of a phase from what was written and measured.
#[allow(clippy::too_many_arguments)]
fn figures(
    args: &Args,
    system: System,
    written: Written,
    entries: u64,
    terms: (u64, u64),
    leaders: (u64, u64),
    settle_secs: f64,
    snapshot_after_entries: u64,
    nodes: Vec<NodeFigures>,
) -> MillionFigures {
    let latencies = &written.latencies_ns;
    MillionFigures {
        system,
        puts: args.puts,
        value_bytes: args.value_bytes,
        clients: args.million_clients,
        channels: written.channels,
        secs: written.secs,
        puts_per_sec: args.puts as f64 / written.secs,
        p50_ms: percentile_ms(latencies, 0.50),
        p99_ms: percentile_ms(latencies, 0.99),
        max_ms: percentile_ms(latencies, 1.0),
        errors: written.errors,
        entries,
        terms,
        leaders,
        settle_secs,
        snapshot_after_entries,
        nodes,
    }
}

/// The same phase on a fresh 3-member etcd cluster: the same keys, values and clients; then,
/// once every member has applied the whole log, each member's RSS, its WAL and snap dirs, its
/// newest snapshot and the keys the leader counts.
pub async fn measure_etcd(
    args: &Args,
    etcd: &Path,
    scratch: &Scratch,
    run: usize,
) -> anyhow::Result<MillionFigures> {
    let cluster =
        EtcdCluster::start(etcd, &scratch.path.join(format!("run{run}-million-etcd")), 3, args.keep)?;
    let leader = cluster.wait_for_leader().await?;
    eprintln!("   etcd: 3 members up for {} puts, leader m{leader}", args.puts);
    let addr = cluster.addr(leader)?.to_owned();
    let rss = |pick: &str| -> Vec<u64> {
        cluster
            .members()
            .iter()
            .map(|m| m.pid().and_then(|p| proc_status_kib(p, pick)).unwrap_or(0))
            .collect()
    };
    let rss_before = rss("VmRSS:");
    let before = etcd::status(&addr).await?;
    let written = write_keys(args, System::Etcd, &addr).await?;
    let after = etcd::status(&addr).await?;
    let entries = after.raft_index.saturating_sub(before.raft_index);
    eprintln!(
        "   {} puts in {:.1} s: {:.0} puts/s, {entries} log entries",
        args.puts,
        written.secs,
        args.puts as f64 / written.secs
    );
    let settle_started = Instant::now();
    let statuses = etcd::settle(&cluster, SETTLE_TIMEOUT).await?;
    let settle_secs = settle_started.elapsed().as_secs_f64();
    let leader_after = cluster.wait_for_leader().await?;
    if after.raft_term != before.raft_term || leader_after != leader {
        eprintln!(
            "   warning: elections during the phase: term {} -> {}, leader m{leader} -> m{leader_after}",
            before.raft_term, after.raft_term
        );
    }
    let keys = etcd::count_keys(cluster.addr(leader_after)?, "m-").await?;
    let (rss_after, peak) = (rss("VmRSS:"), rss("VmHWM:"));
    let mut nodes = Vec::new();
    for (i, (member, status)) in cluster.members().iter().zip(&statuses).enumerate() {
        let member_dir = member.data_dir.join("member");
        let snap_dir = member_dir.join("snap");
        nodes.push(NodeFigures {
            name: member.name.clone(),
            leader: i as u64 + 1 == leader_after,
            rss_before_kib: rss_before[i],
            rss_kib: rss_after[i],
            peak_rss_kib: peak[i],
            raft_dir: disk_use(&member_dir.join("wal")),
            snapshot_dir: disk_use(&snap_dir),
            total: disk_use(&member.data_dir),
            metrics: Metrics {
                term: status.raft_term,
                is_leader: i as u64 + 1 == leader_after,
                last_log_index: status.raft_index,
                applied_index: status.raft_applied_index,
                snapshot_index: etcd::newest_snapshot_index(&snap_dir).unwrap_or(0),
                keys,
                ..Metrics::default()
            },
        });
    }
    cluster.report_log_problems();
    Ok(figures(
        args,
        System::Etcd,
        written,
        entries,
        (before.raft_term, after.raft_term),
        (leader, leader_after),
        settle_secs,
        etcd::SNAPSHOT_COUNT,
        nodes,
    ))
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

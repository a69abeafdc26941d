//! The three phases of the streams workload, run alike against any [`Target`]: append
//! throughput, append → listener latency, and memory and disk per million items.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::target::{ListenKind, Target};
use crate::probes::{CpuTicks, DiskUse, TICKS_PER_SEC, cpu_ticks, disk_use, proc_status_kib};
use crate::report::percentile_ms;
use crate::{Args, ERROR_PAUSE};

/// Items per append in the memory phase.
pub const MEMORY_BATCH: usize = 100;
/// Most attempts at one batch of the memory phase before the phase is abandoned.
const MAX_ATTEMPTS_PER_BATCH: u32 = 20;
/// How long a listener may take to deliver the last items after the producer stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the memory phase reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// A payload of `bytes` bytes whose first 8 carry `stamp_ns` (little endian), the rest
/// letters.
fn payload(stamp_ns: u64, bytes: usize) -> Bytes {
    let mut data: Vec<u8> = (0..bytes.max(8)).map(|i| b'a' + (i % 26) as u8).collect();
    data[..8].copy_from_slice(&stamp_ns.to_le_bytes());
    Bytes::from(data)
}

fn stamp_of(payload: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(payload.get(..8)?.try_into().ok()?))
}

/// Append throughput at one concurrency and batch size.
#[derive(Debug, Clone)]
pub struct Throughput {
    pub producers: usize,
    pub batch: usize,
    pub connections: usize,
    pub items_per_sec: f64,
    pub appends_per_sec: f64,
    /// Latency of one append (a whole batch), from sending it to its acknowledgement.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    /// Cores the system's processes used together while measuring, and this benchmark.
    pub server_cores: f64,
    pub bench_cores: f64,
}

/// `producers` producers append batches of `batch` items to a fresh stream on the node that
/// leads it, each waiting for one append's acknowledgement before the next, for `--secs`
/// after `--warmup-secs`.
pub async fn throughput(
    args: &Args,
    target: &dyn Target,
    stream: &str,
    producers: usize,
    batch: usize,
) -> anyhow::Result<Throughput> {
    target.create_stream(stream).await?;
    let appenders = target.appenders(stream, args.channels.min(producers)).await?;
    let payloads: Arc<Vec<Bytes>> = Arc::new((0..batch).map(|_| payload(0, args.value_bytes)).collect());
    let measure_from = Instant::now() + args.warmup();
    let measure_until = measure_from + args.secs();
    let pids: Vec<u32> = target.processes(stream).await?.iter().filter_map(|p| p.pid).collect();
    let sampler = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        let before = cpu_ticks(&pids);
        tokio::time::sleep_until(measure_until.into()).await;
        (before, cpu_ticks(&pids))
    });
    let mut tasks = JoinSet::new();
    for p in 0..producers {
        let appender = appenders[p % appenders.len()].clone();
        let (payloads, stream) = (payloads.clone(), stream.to_owned());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let (mut errors, mut first_error) = (0u64, None);
            loop {
                let start = Instant::now();
                if start >= measure_until {
                    break;
                }
                let result = appender.append(&stream, &payloads).await;
                let end = Instant::now();
                let counted = start >= measure_from && end <= measure_until;
                match result {
                    Ok(()) if counted => latencies.push((end - start).as_nanos() as u64),
                    Ok(()) => {}
                    Err(e) => {
                        errors += u64::from(counted);
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                        tokio::time::sleep(ERROR_PAUSE).await;
                    }
                }
            }
            (latencies, errors, first_error)
        });
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let (l, e, first) = joined.context("a producer task panicked")?;
        latencies.extend(l);
        errors += e;
        first_error = first_error.or(first);
    }
    if let Some(e) = first_error {
        eprintln!("      first failed append ({producers} producers, {batch} items): {e}");
    }
    let (before, after) = sampler.await.context("the CPU sampler panicked")?;
    latencies.sort_unstable();
    let secs = args.secs;
    let cores =
        |pick: fn(&CpuTicks) -> u64| pick(&after).saturating_sub(pick(&before)) as f64 / TICKS_PER_SEC / secs;
    let appends = latencies.len() as u64;
    let figures = Throughput {
        producers,
        batch,
        connections: appenders.len(),
        items_per_sec: (appends * batch as u64) as f64 / secs,
        appends_per_sec: appends as f64 / secs,
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
        errors,
        server_cores: cores(|t| t.nodes),
        bench_cores: cores(|t| t.bench),
    };
    drop(appenders);
    target.delete_stream(stream).await?;
    Ok(figures)
}

/// Append → listener latency on a node that does not lead the stream.
#[derive(Debug, Clone)]
pub struct Latency {
    pub kind: ListenKind,
    /// Where the listener ran.
    pub placement: String,
    /// Items appended inside the window, and how many of them the listener got.
    pub sent: u64,
    pub received: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The producer's own append latency (to its acknowledgement).
    pub append_p50_ms: f64,
    pub append_p99_ms: f64,
    pub errors: u64,
}

/// One producer on the leader appends single items at `--listen-rate` per second (each
/// stamped with the time it was sent); a listener of `kind` on a follower takes them. The
/// latency of an item is from just before its append was sent to the listener having it.
pub async fn latency(
    args: &Args,
    target: &dyn Target,
    stream: &str,
    kind: ListenKind,
) -> anyhow::Result<Latency> {
    target.create_stream(stream).await?;
    let appender = target.appenders(stream, 1).await?.remove(0);
    let (mut listener, placement) = target.listen(stream, kind).await?;
    let base = Instant::now();
    let measure_from = base + args.warmup();
    let measure_until = measure_from + args.secs();
    let window_ns = ((measure_from - base).as_nanos() as u64, (measure_until - base).as_nanos() as u64);
    // The listener runs on its own, sending when it got each item's stamp; the producer's
    // side collects them once it has stopped (a channel: nothing taken is lost to a timeout).
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<anyhow::Result<(u64, u64)>>();
    let listening = tokio::spawn(async move {
        loop {
            let seen = match listener.next().await {
                Ok(Some(payload)) => match stamp_of(&payload) {
                    Some(stamp) => Ok((stamp, base.elapsed().as_nanos() as u64)),
                    None => continue,
                },
                Ok(None) => return,
                Err(e) => Err(e.context("the listener failed")),
            };
            let failed = seen.is_err();
            if seen_tx.send(seen).is_err() || failed {
                return;
            }
        }
    });

    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / args.listen_rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut append_latencies = Vec::new();
    let mut errors = 0;
    let mut in_window = 0;
    loop {
        ticks.tick().await;
        let start = Instant::now();
        if start >= measure_until {
            break;
        }
        let stamp = (start - base).as_nanos() as u64;
        let result = appender.append(stream, &[payload(stamp, args.value_bytes)]).await;
        let counted = start >= measure_from;
        match result {
            Ok(()) if counted => {
                append_latencies.push(start.elapsed().as_nanos() as u64);
                in_window += 1;
            }
            Ok(()) => {}
            Err(e) => {
                errors += u64::from(counted);
                eprintln!("      an append failed: {e:#}");
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    let mut latencies = Vec::new();
    let drain_until = Instant::now() + DRAIN_TIMEOUT;
    while (latencies.len() as u64) < in_window {
        match tokio::time::timeout_at(drain_until.into(), seen_rx.recv()).await {
            Ok(Some(Ok((stamp, got)))) => {
                if stamp >= window_ns.0 && stamp < window_ns.1 {
                    latencies.push(got.saturating_sub(stamp));
                }
            }
            Ok(Some(Err(e))) => {
                listening.abort();
                return Err(e);
            }
            Ok(None) | Err(_) => break,
        }
    }
    listening.abort();
    let received = latencies.len() as u64;
    latencies.sort_unstable();
    append_latencies.sort_unstable();
    drop(appender);
    target.delete_stream(stream).await?;
    Ok(Latency {
        kind,
        placement,
        sent: in_window,
        received,
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
        max_ms: percentile_ms(&latencies, 1.0),
        append_p50_ms: percentile_ms(&append_latencies, 0.50),
        append_p99_ms: percentile_ms(&append_latencies, 0.99),
        errors,
    })
}

/// One process after the memory phase.
#[derive(Debug, Clone)]
pub struct ProcessMemory {
    pub name: String,
    pub leader: bool,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub peak_rss_kib: u64,
    pub disk_before: DiskUse,
    pub disk_after: DiskUse,
}

/// The memory phase.
#[derive(Debug, Clone)]
pub struct Memory {
    /// Items the stream holds at the end (retried batches may have added some twice).
    pub items: u64,
    pub secs: f64,
    pub items_per_sec: f64,
    pub errors: u64,
    pub settle_secs: f64,
    pub processes: Vec<ProcessMemory>,
}

/// `--stream-items` items in batches of [`MEMORY_BATCH`] from `--million-clients` producers
/// into a fresh stream of a fresh system; RSS and data-dir size of each process before and
/// once every replica has it all.
pub async fn memory(args: &Args, target: &dyn Target, stream: &str) -> anyhow::Result<Memory> {
    target.create_stream(stream).await?;
    let before: Vec<(Option<u64>, DiskUse)> = target
        .processes(stream)
        .await?
        .iter()
        .map(|p| (p.pid.and_then(|pid| proc_status_kib(pid, "VmRSS:")), disk_use(&p.data_dir)))
        .collect();
    let producers = args.million_clients;
    let appenders = target.appenders(stream, args.channels.min(producers)).await?;
    let batches = args.stream_items.div_ceil(MEMORY_BATCH as u64);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(PROGRESS_EVERY).await;
                let now = done.load(Ordering::Relaxed) * MEMORY_BATCH as u64;
                eprintln!(
                    "      {now:>9} items after {:>4.0} s ({:.0}/s in the last {} s)",
                    started.elapsed().as_secs_f64(),
                    (now - last) as f64 / PROGRESS_EVERY.as_secs_f64(),
                    PROGRESS_EVERY.as_secs()
                );
                last = now;
            }
        })
    };
    let payloads: Arc<Vec<Bytes>> =
        Arc::new((0..MEMORY_BATCH).map(|_| payload(0, args.value_bytes)).collect());
    let mut tasks = JoinSet::new();
    for p in 0..producers {
        let appender = appenders[p % appenders.len()].clone();
        let (next, done, payloads, stream) =
            (next.clone(), done.clone(), payloads.clone(), stream.to_owned());
        tasks.spawn(async move {
            let mut errors = 0u64;
            while next.fetch_add(1, Ordering::Relaxed) < batches {
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    match appender.append(&stream, &payloads).await {
                        Ok(()) => break,
                        Err(e) if attempts >= MAX_ATTEMPTS_PER_BATCH => {
                            bail!("a batch failed {attempts} times, last: {e:#}")
                        }
                        Err(_) => {
                            errors += 1;
                            tokio::time::sleep(ERROR_PAUSE).await;
                        }
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(errors)
        });
    }
    let mut errors = 0;
    while let Some(joined) = tasks.join_next().await {
        errors += joined.context("a producer task panicked")??;
    }
    let secs = started.elapsed().as_secs_f64();
    progress.abort();
    drop(appenders);
    let settle_started = Instant::now();
    target.settle(stream).await?;
    let settle_secs = settle_started.elapsed().as_secs_f64();
    let items = target.items(stream).await?;
    let processes = target
        .processes(stream)
        .await?
        .into_iter()
        .zip(before)
        .map(|(p, (rss_before, disk_before))| ProcessMemory {
            name: p.name.clone(),
            leader: p.leader,
            rss_before_kib: rss_before.unwrap_or(0),
            rss_after_kib: p.pid.and_then(|pid| proc_status_kib(pid, "VmRSS:")).unwrap_or(0),
            peak_rss_kib: p.pid.and_then(|pid| proc_status_kib(pid, "VmHWM:")).unwrap_or(0),
            disk_before,
            disk_after: disk_use(&p.data_dir),
        })
        .collect();
    Ok(Memory {
        items,
        secs,
        items_per_sec: (batches * MEMORY_BATCH as u64) as f64 / secs,
        errors,
        settle_secs,
        processes,
    })
}

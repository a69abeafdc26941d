//! The `streams` workload (issue 11): Weft's streams on 3 nodes against NATS JetStream R3 on
//! the same machine in the same run, rounds interleaved (Weft, NATS with `sync_interval:
//! always`, NATS with its default, then again, `--runs` times), then medians and Weft/NATS
//! ratios.
//!
//! Each round of each system measures, on a fresh 3-node cluster: append throughput (1 and
//! 64 producers, `--batch-items` items per append, a fresh stream per case); append →
//! listener latency with the listener on a node that does not lead the stream (a plain
//! reader, then a durable cursor with explicit acks); then, on another fresh cluster, the
//! memory phase: `--stream-items` items in batches, RSS and data dir per node before and
//! after.
//!
//! NATS needs `nats-server` (see [`nats::find_server`]) and weft-bench built with the
//! `nats-bench` feature (which brings in `async-nats`); without either the NATS rounds are
//! skipped with a message saying why, and Weft is measured alone.
//!
//! # Layout
//! - [`target`]: what a system under test offers the phases ([`target::Target`]).
//! - [`phases`]: throughput, latency and memory, the same code for every system.
//! - [`weft`]: Weft's 3-node cluster as a target.
//! - `nats`: NATS JetStream R3 as a target (feature `nats-bench`).
//! - [`report`]: the tables: each run, medians, ratios.

use std::path::{Path, PathBuf};

use clap::ValueEnum;

use crate::Args;
use crate::cluster::Scratch;
use crate::probes::load_average;

#[cfg(feature = "nats-bench")]
mod nats;
mod phases;
mod report;
mod target;
mod weft;

/// A system the streams workload measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum System {
    /// Weft, 3 nodes (every write fsync'd before it is acknowledged).
    Weft,
    /// NATS JetStream R3 with `sync_interval: always` (fsync before ack, as Weft).
    NatsAlways,
    /// NATS JetStream R3 with its default `sync_interval` (fsync every 2 minutes).
    NatsDefault,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Weft => "Weft",
            System::NatsAlways => "NATS sync always",
            System::NatsDefault => "NATS default sync",
        }
    }

    fn is_nats(self) -> bool {
        self != System::Weft
    }
}

/// What one round measured of one system.
#[derive(Debug, Clone)]
pub struct Round {
    pub run: usize,
    pub system: System,
    pub throughput: Vec<phases::Throughput>,
    pub latency: Vec<phases::Latency>,
    pub memory: Option<phases::Memory>,
    pub load_before: String,
    pub load_after: String,
    pub secs: f64,
}

/// Runs the rounds, printing each run's tables and then the medians and ratios.
pub async fn measure(args: &Args, weft: &Path, scratch: &Scratch) -> anyhow::Result<()> {
    let nats = nats_server(args);
    let wants_nats = args.systems.iter().any(|s| s.is_nats());
    if let Err(why) = &nats
        && wants_nats
    {
        eprintln!("== streams: NATS JetStream skipped: {why}");
    }
    // In the order asked for, each once, NATS only when it can run.
    let mut systems: Vec<System> = Vec::new();
    for &s in &args.systems {
        if !systems.contains(&s) && (!s.is_nats() || nats.is_ok()) {
            systems.push(s);
        }
    }
    print!("{}", report::header(args, &systems, nats.as_ref().ok().map(|(_, v)| v.as_str())));
    if let Err(why) = &nats
        && wants_nats
    {
        println!("NATS JetStream was not measured: {why}.\n");
    }
    let nats_binary = nats.ok().map(|(path, _)| path);
    let mut rounds = Vec::new();
    for run in 1..=args.runs {
        let mut this_run = Vec::new();
        for &system in &systems {
            eprintln!(
                "== streams run {run} of {}: {} (load average {})",
                args.runs,
                system.name(),
                load_average()
            );
            let round = round(args, weft, nats_binary.as_deref(), scratch, run, system).await?;
            this_run.push(round);
        }
        print!("{}", report::run_markdown(run, &this_run));
        rounds.extend(this_run);
    }
    print!("{}", report::median_markdown(&rounds));
    Ok(())
}

/// The nats-server binary and its version, or why NATS cannot be measured.
fn nats_server(args: &Args) -> Result<(PathBuf, String), String> {
    #[cfg(feature = "nats-bench")]
    {
        let path = nats::find_server(args.nats_server.as_deref())?;
        let version = nats::server_version(&path);
        Ok((path, version))
    }
    #[cfg(not(feature = "nats-bench"))]
    {
        let _ = args;
        Err("weft-bench was built without the `nats-bench` feature \
             (cargo build --release -p weft-fabric --features nats-bench)"
            .into())
    }
}

/// Starts `system` fresh under `root`.
async fn start(
    args: &Args,
    system: System,
    weft: &Path,
    nats_binary: Option<&Path>,
    root: &Path,
) -> anyhow::Result<Box<dyn target::Target>> {
    match system {
        System::Weft => Ok(Box::new(weft::WeftTarget::start(args, weft, root).await?)),
        #[cfg(feature = "nats-bench")]
        System::NatsAlways | System::NatsDefault => {
            let binary = nats_binary.ok_or_else(|| anyhow::anyhow!("no nats-server"))?;
            let sync_always = system == System::NatsAlways;
            Ok(Box::new(nats::NatsTarget::start(binary, root, sync_always, args.keep).await?))
        }
        #[cfg(not(feature = "nats-bench"))]
        System::NatsAlways | System::NatsDefault => {
            let _ = nats_binary;
            anyhow::bail!("weft-bench was built without the `nats-bench` feature")
        }
    }
}

/// One round of one system: throughput and latency on a fresh cluster, then memory on
/// another.
async fn round(
    args: &Args,
    weft: &Path,
    nats_binary: Option<&Path>,
    scratch: &Scratch,
    run: usize,
    system: System,
) -> anyhow::Result<Round> {
    let started = std::time::Instant::now();
    let tag = format!("{system:?}").to_lowercase();
    let mut round = Round {
        run,
        system,
        throughput: Vec::new(),
        latency: Vec::new(),
        memory: None,
        load_before: load_average(),
        load_after: String::new(),
        secs: 0.0,
    };
    if (!args.clients.is_empty() && !args.batch_items.is_empty()) || args.listen_rate > 0.0 {
        let target =
            start(args, system, weft, nats_binary, &scratch.path.join(format!("streams{run}-{tag}"))).await?;
        for &producers in &args.clients {
            for &batch in &args.batch_items {
                let stream = format!("tput-p{producers}-b{batch}");
                let t = phases::throughput(args, target.as_ref(), &stream, producers, batch).await?;
                eprintln!(
                    "   {:<18} {producers:>2} producer(s) x {batch:>3} items: {:>8.0} items/s {:>7.0} appends/s  \
                     p50 {:.3} ms  p99 {:.3} ms  errors {}",
                    system.name(),
                    t.items_per_sec,
                    t.appends_per_sec,
                    t.p50_ms,
                    t.p99_ms,
                    t.errors
                );
                round.throughput.push(t);
            }
        }
        if args.listen_rate > 0.0 {
            for kind in [target::ListenKind::Reader, target::ListenKind::Cursor] {
                let stream =
                    format!("lat-{}", if kind == target::ListenKind::Reader { "reader" } else { "cursor" });
                let l = phases::latency(args, target.as_ref(), &stream, kind).await?;
                eprintln!(
                    "   {:<18} {}: append→listener p50 {:.3} ms  p99 {:.3} ms  ({} of {} items; {})",
                    system.name(),
                    kind.name(),
                    l.p50_ms,
                    l.p99_ms,
                    l.received,
                    l.sent,
                    l.placement
                );
                round.latency.push(l);
            }
        }
        target.report_log_problems();
    }
    if args.stream_items > 0 {
        let target =
            start(args, system, weft, nats_binary, &scratch.path.join(format!("streams{run}-{tag}-memory")))
                .await?;
        let m = phases::memory(args, target.as_ref(), "memory").await?;
        eprintln!(
            "   {:<18} {} items in {:.1} s ({:.0} items/s), settled {:.1} s later",
            system.name(),
            m.items,
            m.secs,
            m.items_per_sec,
            m.settle_secs
        );
        target.report_log_problems();
        round.memory = Some(m);
    }
    round.load_after = load_average();
    round.secs = started.elapsed().as_secs_f64();
    Ok(round)
}

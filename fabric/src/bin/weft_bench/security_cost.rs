//! The cost of TLS, and of auth: puts to the leader, and execution round trips (the echo
//! worker on the leader, see [`executions`](crate::executions)), on clusters with the setting
//! on and off. TLS: mutual TLS between the nodes; callers and the worker over TLS, without
//! client certificates. Auth: every request carries a bearer token (the cluster's admin
//! token) that the node checks. Each run alternates which goes first, so drift in the
//! machine's load (it may be shared) falls on both alike; medians over runs. With
//! `--side-by-side` the two sides run at the same time instead ([`Lockstep`]), which a load
//! that changes from minute to minute cannot tell apart.

use std::path::Path;

use crate::Args;
use crate::cluster::{Scratch, Security};
use crate::executions;
use crate::kv::leader_puts;
use crate::lockstep::Lockstep;
use crate::report::{Side, SideRun, compare_header, compare_rows};

/// What is turned on and off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Tls,
    Auth,
}

impl Setting {
    /// As the tables name it.
    fn name(self) -> &'static str {
        match self {
            Setting::Tls => "TLS",
            Setting::Auth => "auth",
        }
    }

    /// The start of the cluster dirs' names.
    fn slug(self) -> &'static str {
        match self {
            Setting::Tls => "tls",
            Setting::Auth => "auth",
        }
    }

    fn security(self, on: bool) -> Security {
        match self {
            Setting::Tls => Security { tls: on, ..Security::default() },
            Setting::Auth => Security { auth: on, ..Security::default() },
        }
    }
}

/// One measured case.
pub struct Sample {
    pub run: usize,
    /// Whether the setting was on.
    pub on: bool,
    /// "puts" or "executions".
    pub kind: &'static str,
    pub nodes: usize,
    pub clients: usize,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Cores the nodes used while measuring, with this process's unless side by side.
    pub cores: f64,
}

fn word(on: bool) -> &'static str {
    if on { "on " } else { "off" }
}

/// Every run: puts for each cluster size and client count, then executions, `setting` on
/// and off: one after the other, the side that goes first alternating from run to run, or
/// with `--side-by-side` both at the same time ([`Lockstep`]).
pub async fn measure(
    args: &Args,
    weft: &Path,
    scratch: &Scratch,
    setting: Setting,
) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for run in 1..=args.runs {
        let order = if run % 2 == 1 { [false, true] } else { [true, false] };
        for &n in &args.nodes {
            if args.side_by_side {
                let lockstep = Lockstep::new();
                let (a, b) = tokio::try_join!(
                    puts(args, weft, scratch, (setting, order[0]), run, n, Some(&lockstep)),
                    puts(args, weft, scratch, (setting, order[1]), run, n, Some(&lockstep)),
                )?;
                samples.extend(a.into_iter().chain(b));
            } else {
                for on in order {
                    samples.extend(puts(args, weft, scratch, (setting, on), run, n, None).await?);
                }
            }
        }
        if args.side_by_side {
            let lockstep = Lockstep::new();
            let (a, b) = tokio::try_join!(
                executions(args, weft, scratch, (setting, order[0]), run, Some(&lockstep)),
                executions(args, weft, scratch, (setting, order[1]), run, Some(&lockstep)),
            )?;
            samples.extend(a.into_iter().chain(b));
        } else {
            for on in order {
                samples.extend(executions(args, weft, scratch, (setting, on), run, None).await?);
            }
        }
    }
    Ok(samples)
}

/// Puts to the leader of a fresh cluster of `n` nodes with `setting` `on` or off. Side by
/// side (with a `lockstep`) this process serves both sides, so its CPU is left out.
async fn puts(
    args: &Args,
    weft: &Path,
    scratch: &Scratch,
    (setting, on): (Setting, bool),
    run: usize,
    n: usize,
    lockstep: Option<&Lockstep>,
) -> anyhow::Result<Vec<Sample>> {
    let root = scratch.path.join(format!("{}-run{run}-{n}nodes-{}", setting.slug(), word(on).trim()));
    let label = format!("run {run}, {} {}", setting.name(), word(on));
    let rows = leader_puts(args, weft, &root, n, (&[], setting.security(on)), &label, lockstep).await?;
    Ok(rows
        .into_iter()
        .map(|row| Sample {
            run,
            on,
            kind: "puts",
            nodes: n,
            clients: row.clients,
            ops_per_sec: row.ops_per_sec,
            p50_ms: row.p50_ms,
            p99_ms: row.p99_ms,
            cores: row.node_cores + if lockstep.is_some() { 0.0 } else { row.bench_cores },
        })
        .collect())
}

/// Execution round trips (worker on the leader) on fresh clusters of each size with
/// `setting` `on` or off; this process's CPU is left out side by side, as in [`puts`].
async fn executions(
    args: &Args,
    weft: &Path,
    scratch: &Scratch,
    (setting, on): (Setting, bool),
    run: usize,
    lockstep: Option<&Lockstep>,
) -> anyhow::Result<Vec<Sample>> {
    let name = setting.name();
    let label = format!("{}-{}-", setting.slug(), word(on).trim());
    let figures =
        executions::measure_over(args, weft, scratch, run, (setting.security(on), lockstep), &label).await?;
    let mut samples = Vec::new();
    for row in figures.on_leader() {
        let cores = row.node_cores + if lockstep.is_some() { 0.0 } else { row.bench_cores };
        eprintln!(
            "   run {run}: {} node(s), {} caller(s), {name} {}: {:.0} executions/s, p50 {:.3} ms, errors {}, \
             cpu {cores:.2}",
            row.nodes,
            row.callers,
            word(on),
            row.ops_per_sec,
            row.p50_ms,
            row.errors,
        );
        samples.push(Sample {
            run,
            on,
            kind: "executions",
            nodes: row.nodes,
            clients: row.callers,
            ops_per_sec: row.ops_per_sec,
            p50_ms: row.p50_ms,
            p99_ms: row.p99_ms,
            cores,
        });
    }
    Ok(samples)
}

/// Medians of `setting` off and on per workload, cluster size and client count, with the
/// ratio.
pub fn markdown(args: &Args, setting: Setting, samples: &[Sample]) -> String {
    let name = setting.name();
    let (how, cpu) = if args.side_by_side {
        ("on and off side by side", "the node processes'")
    } else {
        ("on/off alternating", "the node processes' and the benchmark's")
    };
    let mut out = format!(
        "\n## Cost of {name} (median of {} run(s), {how}; executions: worker on the leader)\n\n\
         CPU µs/op: {cpu} CPU time per operation.\n\n{}",
        args.runs,
        compare_header(&format!("| workload | nodes | clients | {name}"), "|---|---:|---:|---", "ops")
    );
    for kind in ["puts", "executions"] {
        for &n in &args.nodes {
            for &clients in &args.clients {
                let side = |on: bool| Side {
                    label: word(on).trim(),
                    runs: samples
                        .iter()
                        .filter(|s| s.kind == kind && s.on == on && s.nodes == n && s.clients == clients)
                        .map(|s| SideRun::new(s.run, s.ops_per_sec, s.p50_ms, s.p99_ms, s.cores))
                        .collect(),
                };
                let (on, off) = (side(true), side(false));
                if !on.runs.is_empty() && !off.runs.is_empty() {
                    compare_rows(&mut out, &format!("| {kind} | {n} | {clients} |"), [on, off]);
                }
            }
        }
    }
    out
}

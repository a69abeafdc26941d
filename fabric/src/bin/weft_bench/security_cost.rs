//! The cost of TLS, and of auth: puts to the leader, and execution round trips (the echo
//! worker on the leader, see [`executions`](crate::executions)), on clusters with the setting
//! on and off. TLS: mutual TLS between the nodes; callers and the worker over TLS, without
//! client certificates. Auth: every request carries a bearer token (the cluster's admin
//! token) that the node checks. Each run alternates which goes first, so drift in the
//! machine's load (it may be shared) falls on both alike; medians over runs.

use std::path::Path;

use crate::Args;
use crate::cluster::{Scratch, Security};
use crate::executions;
use crate::kv::leader_puts;
use crate::report::{Side, compare_rows};

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
}

fn word(on: bool) -> &'static str {
    if on { "on " } else { "off" }
}

/// Every run: puts for each cluster size and client count, then executions, `setting` on
/// and off.
pub async fn measure(
    args: &Args,
    weft: &Path,
    scratch: &Scratch,
    setting: Setting,
) -> anyhow::Result<Vec<Sample>> {
    let (name, slug) = (setting.name(), setting.slug());
    let mut samples = Vec::new();
    for run in 1..=args.runs {
        let order = if run % 2 == 1 { [false, true] } else { [true, false] };
        for &n in &args.nodes {
            for on in order {
                let root = scratch.path.join(format!("{slug}-run{run}-{n}nodes-{}", word(on).trim()));
                let label = format!("run {run}, {name} {}", word(on));
                for row in leader_puts(args, weft, &root, n, (&[], setting.security(on)), &label).await? {
                    samples.push(Sample {
                        run,
                        on,
                        kind: "puts",
                        nodes: n,
                        clients: row.clients,
                        ops_per_sec: row.ops_per_sec,
                        p50_ms: row.p50_ms,
                        p99_ms: row.p99_ms,
                    });
                }
            }
        }
        for on in order {
            let label = format!("{slug}-{}-", word(on).trim());
            let figures =
                executions::measure_over(args, weft, scratch, run, setting.security(on), &label).await?;
            for row in figures.on_leader() {
                eprintln!(
                    "   run {run}: {} node(s), {} caller(s), {name} {}: {:.0} executions/s, p50 {:.3} ms, errors {}",
                    row.nodes,
                    row.callers,
                    word(on),
                    row.ops_per_sec,
                    row.p50_ms,
                    row.errors
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
                });
            }
        }
    }
    Ok(samples)
}

/// Medians of `setting` off and on per workload, cluster size and client count, with the
/// ratio.
pub fn markdown(args: &Args, setting: Setting, samples: &[Sample]) -> String {
    let name = setting.name();
    let mut out = format!(
        "\n## Cost of {name} (median of {} run(s), on/off alternating; executions: worker on the leader)\n\n\
         | workload | nodes | clients | {name} | ops/s | p50 ms | p99 ms | ops/s per run |\n\
         |---|---:|---:|---|---:|---:|---:|---|\n",
        args.runs
    );
    for kind in ["puts", "executions"] {
        for &n in &args.nodes {
            for &clients in &args.clients {
                let side = |on: bool| Side {
                    label: word(on).trim(),
                    runs: samples
                        .iter()
                        .filter(|s| s.kind == kind && s.on == on && s.nodes == n && s.clients == clients)
                        .map(|s| (s.run, s.ops_per_sec, s.p50_ms, s.p99_ms))
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

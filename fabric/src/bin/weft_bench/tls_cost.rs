//! The cost of TLS: puts to the leader, and execution round trips (the echo worker on the
//! leader, see [`executions`](crate::executions)), on clusters with TLS on (mutual TLS
//! between the nodes; callers and the worker over TLS, without client certificates) and off.
//! Each run alternates which goes first, so drift in the machine's load (it may be shared)
//! falls on both alike; medians over runs.

use std::path::Path;

use crate::Args;
use crate::cluster::Scratch;
use crate::executions;
use crate::kv::leader_puts;
use crate::report::{Side, compare_rows};

/// One measured case.
pub struct Sample {
    pub run: usize,
    pub tls: bool,
    /// "puts" or "executions".
    pub kind: &'static str,
    pub nodes: usize,
    pub clients: usize,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

fn word(tls: bool) -> &'static str {
    if tls { "on " } else { "off" }
}

/// Every run: puts for each cluster size and client count, then executions, TLS on and off.
pub async fn measure(args: &Args, weft: &Path, scratch: &Scratch) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for run in 1..=args.runs {
        let order = if run % 2 == 1 { [false, true] } else { [true, false] };
        for &n in &args.nodes {
            for tls in order {
                let root = scratch.path.join(format!("tls-run{run}-{n}nodes-{}", word(tls).trim()));
                let label = format!("run {run}, TLS {}", word(tls));
                for row in leader_puts(args, weft, &root, n, (&[], tls), &label).await? {
                    samples.push(Sample {
                        run,
                        tls,
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
        for tls in order {
            let label = format!("tls-{}-", word(tls).trim());
            let figures = executions::measure_over(args, weft, scratch, run, tls, &label).await?;
            for row in figures.on_leader() {
                eprintln!(
                    "   run {run}: {} node(s), {} caller(s), TLS {}: {:.0} executions/s, p50 {:.3} ms, errors {}",
                    row.nodes,
                    row.callers,
                    word(tls),
                    row.ops_per_sec,
                    row.p50_ms,
                    row.errors
                );
                samples.push(Sample {
                    run,
                    tls,
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

/// Medians of TLS off and on per workload, cluster size and client count, with the ratio.
pub fn markdown(args: &Args, samples: &[Sample]) -> String {
    let mut out = format!(
        "\n## Cost of TLS (median of {} run(s), on/off alternating; executions: worker on the leader)\n\n\
         | workload | nodes | clients | TLS | ops/s | p50 ms | p99 ms | ops/s per run |\n\
         |---|---:|---:|---|---:|---:|---:|---|\n",
        args.runs
    );
    for kind in ["puts", "executions"] {
        for &n in &args.nodes {
            for &clients in &args.clients {
                let side = |tls: bool| Side {
                    label: word(tls).trim(),
                    runs: samples
                        .iter()
                        .filter(|s| s.kind == kind && s.tls == tls && s.nodes == n && s.clients == clients)
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

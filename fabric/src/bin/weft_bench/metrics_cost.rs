//! The cost of the request-latency metrics on the put path: puts against the leader of a
//! fresh cluster with `rpc_metrics` on and off, alternating which goes first in each run so
//! that drift in the machine's load (it may be shared) falls on both alike; medians over runs.

use std::fmt::Write as _;
use std::path::Path;

use crate::Args;
use crate::cluster::{Cluster, Scratch};
use crate::kv::{Case, Op, Row, measure_row};
use crate::report::{median, ms};

/// One measured row and whether the middleware was on.
pub struct Sample {
    pub run: usize,
    pub rpc_metrics: bool,
    pub row: Row,
}

/// Every run: for each cluster size and client count, puts with the middleware on and off.
pub async fn measure(args: &Args, weft: &Path, scratch: &Scratch) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for run in 1..=args.runs {
        let order = if run % 2 == 1 { [true, false] } else { [false, true] };
        for &n in &args.nodes {
            for on in order {
                let env = [("WEFT_RPC_METRICS", if on { "true" } else { "false" })];
                let root =
                    scratch.path.join(format!("metrics-run{run}-{n}nodes-{}", if on { "on" } else { "off" }));
                let mut cluster =
                    Cluster::start_with_env(weft, &root, n, args.snapshot_after_entries, args.keep, &env)?;
                let leader = cluster.wait_for_leader().await?;
                for &clients in &args.clients {
                    let case =
                        Case { nodes: n, op: Op::Put, leader, target: leader, via_follower: false, clients };
                    let row = measure_row(args, &cluster, case).await?;
                    eprintln!(
                        "   run {run}: {n} node(s), {clients} client(s), rpc_metrics {}: {:.0} puts/s, p50 {:.3} ms, p99 {:.3} ms",
                        if on { "on " } else { "off" },
                        row.ops_per_sec,
                        row.p50_ms,
                        row.p99_ms
                    );
                    samples.push(Sample { run, rpc_metrics: on, row });
                }
                cluster.report_log_problems();
            }
        }
    }
    Ok(samples)
}

/// Medians of on and off per cluster size and client count, with each run's figures.
pub fn markdown(args: &Args, samples: &[Sample]) -> String {
    let mut out = format!(
        "\n## Cost of the request-latency metrics (puts to the leader, median of {} run(s), on/off alternating)\n\n\
         | nodes | clients | rpc_metrics | puts/s | p50 ms | p99 ms | puts/s per run |\n|---:|---:|---|---:|---:|---:|---|\n",
        args.runs
    );
    for &n in &args.nodes {
        for &clients in &args.clients {
            let mut medians = Vec::new();
            for on in [true, false] {
                let rows: Vec<&Sample> = samples
                    .iter()
                    .filter(|s| s.rpc_metrics == on && s.row.nodes == n && s.row.clients == clients)
                    .collect();
                let ops = median(rows.iter().map(|s| s.row.ops_per_sec).collect());
                let p50 = median(rows.iter().map(|s| s.row.p50_ms).collect());
                let p99 = median(rows.iter().map(|s| s.row.p99_ms).collect());
                let per_run: Vec<String> =
                    rows.iter().map(|s| format!("r{}: {:.0}", s.run, s.row.ops_per_sec)).collect();
                let _ = writeln!(
                    out,
                    "| {n} | {clients} | {} | {ops:.0} | {} | {} | {} |",
                    if on { "on" } else { "off" },
                    ms(p50),
                    ms(p99),
                    per_run.join(", ")
                );
                medians.push((ops, p50));
            }
            let (on, off) = (medians[0], medians[1]);
            let _ = writeln!(
                out,
                "| {n} | {clients} | on vs off | {:+.1} % | {:+.1} % | | |",
                (on.0 / off.0 - 1.0) * 100.0,
                (on.1 / off.1 - 1.0) * 100.0
            );
        }
    }
    out
}

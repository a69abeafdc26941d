//! The cost of the request-latency metrics on the put path: puts against the leader of a
//! fresh cluster with `rpc_metrics` on and off, alternating which goes first in each run so
//! that drift in the machine's load (it may be shared) falls on both alike; medians over runs.

use std::path::Path;

use crate::Args;
use crate::cluster::Scratch;
use crate::cluster::Security;
use crate::kv::{Row, leader_puts};
use crate::report::{Side, SideRun, compare_header, compare_rows};

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
                let label = format!("run {run}, rpc_metrics {}", if on { "on " } else { "off" });
                for row in
                    leader_puts(args, weft, &root, n, (&env, Security::default()), &label, None).await?
                {
                    samples.push(Sample { run, rpc_metrics: on, row });
                }
            }
        }
    }
    Ok(samples)
}

/// Medians of on and off per cluster size and client count, with each run's figures.
pub fn markdown(args: &Args, samples: &[Sample]) -> String {
    let mut out = format!(
        "\n## Cost of the request-latency metrics (puts to the leader, median of {} run(s), on/off alternating)\n\n{}",
        args.runs,
        compare_header("| nodes | clients | rpc_metrics", "|---:|---:|---", "puts")
    );
    for &n in &args.nodes {
        for &clients in &args.clients {
            let side = |on: bool| Side {
                label: if on { "on" } else { "off" },
                runs: samples
                    .iter()
                    .filter(|s| s.rpc_metrics == on && s.row.nodes == n && s.row.clients == clients)
                    .map(|s| {
                        let r = &s.row;
                        SideRun::new(s.run, r.ops_per_sec, r.p50_ms, r.p99_ms, r.node_cores + r.bench_cores)
                    })
                    .collect(),
            };
            compare_rows(&mut out, &format!("| {n} | {clients} |"), [side(true), side(false)]);
        }
    }
    out
}

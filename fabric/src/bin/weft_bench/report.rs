//! The report: markdown tables of each run's figures, medians over the runs, and the
//! statistics behind them (percentiles, medians).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::Args;
use crate::RunFigures;
use crate::kv::{Op, Row, RowKey};
use crate::million::{MillionFigures, NodeFigures};

/// Bytes as MiB, one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

/// Milliseconds for a table: `-` when there is no figure, three decimals below 10 ms.
pub fn ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v < 10.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.2}")
    }
}

fn target_text(row: &Row) -> String {
    let role = if row.via_follower { "follower" } else { "leader" };
    let election = if row.term_changed { ", election!" } else { "" };
    format!("{role} ({}{election})", row.target)
}

const ROWS_HEADER: &str = "| nodes | workload | clients (channels) | clients talk to | ops/s | p50 ms | p99 ms | errors | writes per log entry | CPU cores: nodes + bench |\n|---:|---|---:|---|---:|---:|---:|---:|---:|---|\n";

/// Writes per log entry, for the write workloads.
fn per_entry(row: &Row) -> String {
    match row.entries {
        Some(entries) if row.op != Op::Get && entries > 0 => {
            format!("{:.1}", row.ops as f64 / entries as f64)
        }
        _ => "-".into(),
    }
}

fn rows_markdown(rows: &[Row]) -> String {
    let mut out = String::from(ROWS_HEADER);
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} ({}) | {} | {:.0} | {} | {} | {} | {} | {:.2} + {:.2} |",
            r.nodes,
            r.op.name(),
            r.clients,
            r.channels,
            target_text(r),
            r.ops_per_sec,
            ms(r.p50_ms),
            ms(r.p99_ms),
            r.errors,
            per_entry(r),
            r.node_cores,
            r.bench_cores
        );
    }
    out
}

fn million_markdown(m: &MillionFigures) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} puts of {}-byte values into 3 nodes from {} clients ({} channels) to the leader: \
         {:.1} s, **{:.0} puts/s**, p50 {} ms, p99 {} ms, max {} ms, {} errors (retried); {} log \
         entries ({:.1} puts per entry); {}. Followers caught up and snapshots settled {:.1} s \
         later (snapshot_after_entries = {}).\n",
        m.puts,
        m.value_bytes,
        m.clients,
        m.channels,
        m.secs,
        m.puts_per_sec,
        ms(m.p50_ms),
        ms(m.p99_ms),
        ms(m.max_ms),
        m.errors,
        m.entries,
        m.puts as f64 / m.entries.max(1) as f64,
        if m.terms.0 == m.terms.1 {
            format!("no election (term {}, leader n{})", m.terms.0, m.leaders.0)
        } else {
            format!(
                "**elections during the phase**: term {} → {}, leader n{} → n{}",
                m.terms.0, m.terms.1, m.leaders.0, m.leaders.1
            )
        },
        m.settle_secs,
        m.snapshot_after_entries
    );
    out.push_str(
        "| node | role | RSS before → after (MiB) | peak RSS (MiB) | raft/ sled (MiB) | snapshots/ (MiB) | data dir (MiB, allocated / apparent) | snapshots built / installed | snapshot index | purged index | last log index | keys |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for n in &m.nodes {
        let _ = writeln!(
            out,
            "| n{} | {} | {} → {} | {} | {} | {} | {} / {} | {} / {} | {} | {} | {} | {} |",
            n.id,
            if n.leader { "leader" } else { "follower" },
            mib(n.rss_before_kib * 1024),
            mib(n.rss_kib * 1024),
            mib(n.peak_rss_kib * 1024),
            mib(n.raft_dir.allocated),
            mib(n.snapshot_dir.allocated),
            mib(n.total.allocated),
            mib(n.total.apparent),
            n.metrics.snapshots_built,
            n.metrics.snapshots_installed,
            n.metrics.snapshot_index,
            n.metrics.purged_index,
            n.metrics.last_log_index,
            n.metrics.keys
        );
    }
    out
}

/// The figures of one run: the put, cas, get and follower rows and the million-put phase.
pub fn run_markdown(args: &Args, run: usize, f: &RunFigures) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### Run {run}\n\n{} s measured per row after {} s warm-up; load average {} before, {} \
         after; the run took {:.0} s.\n",
        args.secs, args.warmup_secs, f.load_before, f.load_after, f.secs
    );
    if !f.rows.is_empty() {
        out.push_str(&rows_markdown(&f.rows));
        out.push('\n');
    }
    if let Some(m) = &f.million {
        out.push_str(&million_markdown(m));
    }
    out
}

/// One run's figures of one side of an interleaved comparison.
#[derive(Debug, Clone, Copy)]
pub struct SideRun {
    pub run: usize,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU time the node processes and the benchmark process used together, per operation
    /// (µs). Unlike ops/s it hardly depends on how much of a shared machine the run got.
    pub cpu_us_per_op: f64,
}

impl SideRun {
    /// A run's figures, with the CPU per operation from the cores used while measuring.
    pub fn new(run: usize, ops_per_sec: f64, p50_ms: f64, p99_ms: f64, cores: f64) -> Self {
        let cpu_us_per_op = if ops_per_sec > 0.0 { cores / ops_per_sec * 1e6 } else { f64::NAN };
        Self { run, ops_per_sec, p50_ms, p99_ms, cpu_us_per_op }
    }
}

/// One side of an interleaved comparison of one case: its label and each run's figures.
pub struct Side<'a> {
    pub label: &'a str,
    pub runs: Vec<SideRun>,
}

/// The header of [`compare_rows`]' table: the case's own columns `lead` (`"| nodes | clients
/// | TLS"`, aligned as `align` says, `"|---:|---:|---"`), then the figures, operations named
/// `ops` (`"puts"`).
pub fn compare_header(lead: &str, align: &str, ops: &str) -> String {
    format!(
        "{lead} | {ops}/s | p50 ms | p99 ms | CPU µs/op | {ops}/s per run |\n\
         {align}|---:|---:|---:|---:|---|\n"
    )
}

/// The change from `b` to `a` in percent, `+1.5 %`; `-` without figures.
fn change(a: f64, b: f64) -> String {
    let c = (a / b - 1.0) * 100.0;
    if c.is_finite() { format!("{c:+.1} %") } else { "-".into() }
}

/// Markdown rows comparing two sides of one case: each side's medians and ops/s per run,
/// after the case's own cells `lead` (`"| 3 | 64 |"`), then a row `first vs second` with the
/// change in the median ops/s, p50 and CPU per operation from the second side to the first,
/// and (in the last column) the medians of the same changes taken run by run, over the runs
/// both sides have: the pairs measured next to each other, so under the same load.
pub fn compare_rows(out: &mut String, lead: &str, sides: [Side<'_>; 2]) {
    let mut medians = Vec::new();
    for side in &sides {
        let ops = median(side.runs.iter().map(|r| r.ops_per_sec).collect());
        let p50 = median(side.runs.iter().map(|r| r.p50_ms).collect());
        let p99 = median(side.runs.iter().map(|r| r.p99_ms).collect());
        let cpu = median(side.runs.iter().map(|r| r.cpu_us_per_op).collect());
        let per_run: Vec<String> =
            side.runs.iter().map(|r| format!("r{}: {:.0}", r.run, r.ops_per_sec)).collect();
        let cpu_text = if cpu.is_nan() { "-".to_owned() } else { format!("{cpu:.0}") };
        let _ = writeln!(
            out,
            "{lead} {} | {ops:.0} | {} | {} | {cpu_text} | {} |",
            side.label,
            ms(p50),
            ms(p99),
            per_run.join(", ")
        );
        medians.push((ops, p50, cpu));
    }
    let (first, second) = (medians[0], medians[1]);
    let paired = |pick: fn(&SideRun) -> f64| {
        let ratios: Vec<f64> = sides[0]
            .runs
            .iter()
            .filter_map(|a| {
                let b = sides[1].runs.iter().find(|b| b.run == a.run)?;
                Some(pick(a) / pick(b))
            })
            .filter(|r| r.is_finite())
            .collect();
        let m = median(ratios);
        if m.is_nan() { "-".to_owned() } else { format!("{:+.1} %", (m - 1.0) * 100.0) }
    };
    let _ = writeln!(
        out,
        "{lead} {} vs {} | {} | {} | | {} | run by run: ops/s {}, CPU/op {} |",
        sides[0].label,
        sides[1].label,
        change(first.0, second.0),
        change(first.1, second.1),
        change(first.2, second.2),
        paired(|r| r.ops_per_sec),
        paired(|r| r.cpu_us_per_op),
    );
}

/// The median of the values that are figures (NaN is skipped); NaN when none is.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| !v.is_nan());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) { (values[mid - 1] + values[mid]) / 2.0 } else { values[mid] }
}

fn per_entry_median(rows: &[&Row]) -> String {
    let values: Vec<f64> = rows
        .iter()
        .filter(|r| r.op != Op::Get)
        .filter_map(|r| r.entries.filter(|e| *e > 0).map(|e| r.ops as f64 / e as f64))
        .collect();
    let m = median(values);
    if m.is_nan() { "-".into() } else { format!("{m:.1}") }
}

/// Medians over the runs, with each run's ops/s.
pub fn median_markdown(args: &Args, runs: &[RunFigures]) -> String {
    let mut out = format!(
        "\n### Medians of {} runs\n\nEach figure is the median of that figure over the runs; \
         \"ops/s per run\" shows the spread. Errors are summed over the runs.\n\n",
        runs.len()
    );
    let mut groups: BTreeMap<RowKey, Vec<&Row>> = BTreeMap::new();
    for row in runs.iter().flat_map(|r| &r.rows) {
        groups.entry(row.key()).or_default().push(row);
    }
    if !groups.is_empty() {
        out.push_str(
            "| nodes | workload | clients (channels) | clients talk to | ops/s | p50 ms | p99 ms | errors | writes per log entry | ops/s per run |\n\
             |---:|---|---:|---|---:|---:|---:|---:|---:|---|\n",
        );
        // Keep the order the runs measured in.
        let order: Vec<RowKey> = runs[0].rows.iter().map(Row::key).collect();
        for key in order {
            let rows = &groups[&key];
            let first = rows[0];
            let per_run: Vec<String> = rows.iter().map(|r| format!("{:.0}", r.ops_per_sec)).collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} ({}) | {} | {:.0} | {} | {} | {} | {} | {} |",
                first.nodes,
                first.op.name(),
                first.clients,
                first.channels,
                if first.via_follower { "follower" } else { "leader" },
                median(rows.iter().map(|r| r.ops_per_sec).collect()),
                ms(median(rows.iter().map(|r| r.p50_ms).collect())),
                ms(median(rows.iter().map(|r| r.p99_ms).collect())),
                rows.iter().map(|r| r.errors).sum::<u64>(),
                per_entry_median(rows),
                per_run.join(" / ")
            );
        }
        out.push('\n');
    }
    let millions: Vec<&MillionFigures> = runs.iter().filter_map(|r| r.million.as_ref()).collect();
    if !millions.is_empty() {
        let per_run: Vec<String> = millions.iter().map(|m| format!("{:.0}", m.puts_per_sec)).collect();
        let leaders: Vec<&NodeFigures> =
            millions.iter().flat_map(|m| m.nodes.iter().filter(|n| n.leader)).collect();
        let followers: Vec<&NodeFigures> =
            millions.iter().flat_map(|m| m.nodes.iter().filter(|n| !n.leader)).collect();
        let med = |nodes: &[&NodeFigures], f: fn(&NodeFigures) -> u64| {
            mib(median(nodes.iter().map(|n| f(n) as f64).collect()) as u64)
        };
        let _ = writeln!(
            out,
            "{} puts ({}-byte values, {} clients): median **{:.0} puts/s** (runs: {}), p50 {} ms, \
             p99 {} ms, max {} ms; elections during the phase in {} of {} runs.\n",
            millions[0].puts,
            args.value_bytes,
            millions[0].clients,
            median(millions.iter().map(|m| m.puts_per_sec).collect()),
            per_run.join(" / "),
            ms(median(millions.iter().map(|m| m.p50_ms).collect())),
            ms(median(millions.iter().map(|m| m.p99_ms).collect())),
            ms(median(millions.iter().map(|m| m.max_ms).collect())),
            millions.iter().filter(|m| m.terms.0 != m.terms.1).count(),
            millions.len()
        );
        out.push_str(
            "| role | RSS after (MiB) | peak RSS (MiB) | raft/ sled (MiB) | snapshots/ (MiB) | data dir allocated (MiB) |\n|---|---:|---:|---:|---:|---:|\n",
        );
        for (role, nodes) in [("leader", &leaders), ("follower", &followers)] {
            if nodes.is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                "| {role} | {} | {} | {} | {} | {} |",
                med(nodes, |n| n.rss_kib * 1024),
                med(nodes, |n| n.peak_rss_kib * 1024),
                med(nodes, |n| n.raft_dir.allocated),
                med(nodes, |n| n.snapshot_dir.allocated),
                med(nodes, |n| n.total.allocated)
            );
        }
    }
    out
}

/// Nearest-rank percentile of sorted nanosecond latencies, in milliseconds.
pub fn percentile_ms(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted_ns.len() as f64).ceil() as usize).clamp(1, sorted_ns.len());
    sorted_ns[rank - 1] as f64 / 1e6
}

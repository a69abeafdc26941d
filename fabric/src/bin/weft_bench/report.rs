//! The report: markdown tables of each run's figures, medians over the runs, and the
//! statistics behind them (percentiles, medians).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::Args;
use crate::RunFigures;
use crate::kv::{Op, Row, RowKey};
use crate::million::{MillionFigures, NodeFigures};
use crate::store::System;

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

const ROWS_HEADER: &str = "| system | nodes | workload | clients (channels) | clients talk to | ops/s | p50 ms | p99 ms | errors | writes per log entry | CPU cores: servers + bench | server CPU ms per op |\n|---|---:|---|---:|---|---:|---:|---:|---:|---:|---|---:|\n";

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
            "| {} | {} | {} | {} ({}) | {} | {:.0} | {} | {} | {} | {} | {:.2} + {:.2} | {} |",
            r.system.name(),
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
            r.bench_cores,
            ms(r.server_cpu_ms_per_op)
        );
    }
    out
}

fn million_markdown(m: &MillionFigures) -> String {
    let mut out = String::new();
    let weft = m.system == System::Weft;
    let (nodes, node) = if weft { ("nodes", "n") } else { ("members", "m") };
    let _ = writeln!(
        out,
        "**{}**: {} puts of {}-byte values into 3 {nodes} from {} clients ({} channels) to the leader: \
         {:.1} s, **{:.0} puts/s**, p50 {} ms, p99 {} ms, max {} ms, {} errors (retried); {} log \
         entries ({:.1} puts per entry); {}. Followers caught up{} {:.1} s later ({} = {}).\n",
        m.system.name(),
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
            format!("no election (term {}, leader {node}{})", m.terms.0, m.leaders.0)
        } else {
            format!(
                "**elections during the phase**: term {} → {}, leader {node}{} → {node}{}",
                m.terms.0, m.terms.1, m.leaders.0, m.leaders.1
            )
        },
        if weft { " and snapshots settled" } else { "" },
        m.settle_secs,
        if weft { "snapshot_after_entries" } else { "--snapshot-count" },
        m.snapshot_after_entries
    );
    out.push_str(
        "| node | role | RSS before → after (MiB) | peak RSS (MiB) | log: raft/ · wal/ (MiB) | state: snapshots/ · snap/ (MiB) | data dir (MiB, allocated / apparent) | snapshots built / installed | snapshot index | purged index | last log index | keys |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for n in &m.nodes {
        let weft_only = |v: String| if weft { v } else { "-".into() };
        let _ = writeln!(
            out,
            "| {} | {} | {} → {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} |",
            n.name,
            if n.leader { "leader" } else { "follower" },
            mib(n.rss_before_kib * 1024),
            mib(n.rss_kib * 1024),
            mib(n.peak_rss_kib * 1024),
            mib(n.raft_dir.allocated),
            mib(n.snapshot_dir.allocated),
            mib(n.total.allocated),
            mib(n.total.apparent),
            weft_only(format!("{} / {}", n.metrics.snapshots_built, n.metrics.snapshots_installed)),
            n.metrics.snapshot_index,
            weft_only(n.metrics.purged_index.to_string()),
            n.metrics.last_log_index,
            n.metrics.keys
        );
    }
    out.push('\n');
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
    for m in &f.millions {
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
            "| system | nodes | workload | clients (channels) | clients talk to | ops/s | p50 ms | p99 ms | errors | writes per log entry | server CPU ms per op | ops/s per run |\n\
             |---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---|\n",
        );
        // Keep the order the runs measured in.
        let order: Vec<RowKey> = runs[0].rows.iter().map(Row::key).collect();
        for key in order {
            let rows = &groups[&key];
            let first = rows[0];
            let per_run: Vec<String> = rows.iter().map(|r| format!("{:.0}", r.ops_per_sec)).collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} ({}) | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
                first.system.name(),
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
                ms(median(rows.iter().map(|r| r.server_cpu_ms_per_op).collect())),
                per_run.join(" / ")
            );
        }
        out.push('\n');
    }
    for system in [System::Weft, System::Etcd] {
        let millions: Vec<&MillionFigures> =
            runs.iter().flat_map(|r| &r.millions).filter(|m| m.system == system).collect();
        if !millions.is_empty() {
            out.push_str(&million_median_markdown(args, &millions));
        }
    }
    out
}

/// The medians of one system's million-put phases.
fn million_median_markdown(args: &Args, millions: &[&MillionFigures]) -> String {
    let mut out = String::new();
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
        "**{}**: {} puts ({}-byte values, {} clients): median **{:.0} puts/s** (runs: {}), p50 {} ms, \
         p99 {} ms, max {} ms; elections during the phase in {} of {} runs.\n",
        millions[0].system.name(),
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
        "| role | RSS after (MiB) | peak RSS (MiB) | log: raft/ · wal/ (MiB) | state: snapshots/ · snap/ (MiB) | data dir allocated (MiB) |\n|---|---:|---:|---:|---:|---:|\n",
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
    out.push('\n');
    out
}

/// The million-put phase of Weft beside etcd's: medians over the runs, and the ratio.
fn million_versus_markdown(runs: &[RunFigures]) -> String {
    let of = |system: System| -> Vec<&MillionFigures> {
        runs.iter().flat_map(|r| &r.millions).filter(|m| m.system == system).collect()
    };
    let (weft, etcd) = (of(System::Weft), of(System::Etcd));
    if weft.is_empty() || etcd.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\n#### {} keys: Weft beside etcd (medians of {} and {} run(s))\n\n\
         Both after every member applied the whole log (Weft: and no node was due a snapshot; \
         snapshots every {} entries in Weft, every {} in etcd). Memory is VmRSS / VmHWM of each \
         process; disk is blocks allocated below each data dir.\n\n\
         | figure | Weft | etcd | Weft / etcd |\n|---|---:|---:|---:|\n",
        weft[0].puts,
        weft.len(),
        etcd.len(),
        weft[0].snapshot_after_entries,
        etcd[0].snapshot_after_entries
    );
    let row = |out: &mut String,
               name: &str,
               f: &dyn Fn(&[&MillionFigures]) -> f64,
               show: &dyn Fn(f64) -> String| {
        let (w, e) = (f(&weft), f(&etcd));
        let _ = writeln!(out, "| {name} | {} | {} | **{}** |", show(w), show(e), times(ratio(w, e)));
    };
    // Of every run's figure (phase rows) or of every node in that role over the runs (node
    // rows), as the medians above.
    let phase = |f: fn(&MillionFigures) -> f64| {
        move |ms: &[&MillionFigures]| median(ms.iter().map(|m| f(m)).collect())
    };
    let nodes = |leader: bool, f: fn(&NodeFigures) -> u64| {
        move |ms: &[&MillionFigures]| {
            median(
                ms.iter()
                    .flat_map(|m| &m.nodes)
                    .filter(|n| n.leader == leader)
                    .map(|n| f(n) as f64)
                    .collect(),
            )
        }
    };
    let as_mib = |v: f64| if v.is_nan() { "-".to_owned() } else { format!("{:.1}", v / (1024.0 * 1024.0)) };
    let as_count = |v: f64| format!("{v:.0}");
    row(&mut out, "puts/s", &phase(|m| m.puts_per_sec), &as_count);
    row(&mut out, "p50 ms", &phase(|m| m.p50_ms), &|v| ms(v));
    row(&mut out, "p99 ms", &phase(|m| m.p99_ms), &|v| ms(v));
    row(&mut out, "log entries", &phase(|m| m.entries as f64), &as_count);
    for (role, leader) in [("leader", true), ("follower", false)] {
        row(&mut out, &format!("{role} RSS after (MiB)"), &nodes(leader, |n| n.rss_kib * 1024), &as_mib);
        row(&mut out, &format!("{role} peak RSS (MiB)"), &nodes(leader, |n| n.peak_rss_kib * 1024), &as_mib);
        row(&mut out, &format!("{role} log dir (MiB)"), &nodes(leader, |n| n.raft_dir.allocated), &as_mib);
        row(
            &mut out,
            &format!("{role} state dir (MiB)"),
            &nodes(leader, |n| n.snapshot_dir.allocated),
            &as_mib,
        );
        row(&mut out, &format!("{role} data dir (MiB)"), &nodes(leader, |n| n.total.allocated), &as_mib);
    }
    out
}

/// `a / b`; NaN when either is not a figure or `b` is 0.
pub fn ratio(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() || b == 0.0 { f64::NAN } else { a / b }
}

/// A ratio for a table: `1.23x`, or `-` when there is none.
fn times(r: f64) -> String {
    if r.is_nan() { "-".into() } else { format!("{r:.2}x") }
}

/// Weft beside etcd: for each case measured on both (leader rows), the median of each figure
/// over the runs for each system and the ratio Weft / etcd of those medians, with the ops/s
/// ratio of each run (the two systems in one run ran back to back, so a run's ratio is the
/// fairest single figure). Above 1 is better for ops/s; below 1 for latency and CPU.
pub fn versus_markdown(runs: &[RunFigures]) -> String {
    let mut out = String::new();
    if runs.iter().flat_map(|r| &r.rows).any(|r| r.system == System::Etcd) {
        out.push_str(&rows_versus_markdown(runs));
    }
    out.push_str(&million_versus_markdown(runs));
    out
}

/// A case measured on both systems: cluster size, workload, clients.
type CaseKey = (usize, Op, usize);
/// A row and the index of the run that measured it.
type RunRow<'a> = (usize, &'a Row);

/// The put and get rows of [`versus_markdown`].
fn rows_versus_markdown(runs: &[RunFigures]) -> String {
    let mut out = format!(
        "\n### Weft beside etcd (medians of {} run(s))\n\n\
         Each cell is the median over the runs; \"Weft / etcd\" divides Weft's median by etcd's \
         (ops/s: above 1 is Weft ahead; latency and CPU: below 1 is Weft ahead). Server CPU is \
         the user + system time of every server process (/proc/PID/stat) over the measured \
         window, per completed operation.\n\n\
         | nodes | workload | clients | ops/s Weft | ops/s etcd | Weft / etcd | p50 ms Weft | p50 ms etcd | Weft / etcd | p99 ms Weft | p99 ms etcd | server CPU ms/op Weft | server CPU ms/op etcd | Weft / etcd | ops/s Weft / etcd per run |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        runs.len()
    );
    let leader_rows = |system: System| {
        let mut groups: BTreeMap<CaseKey, Vec<RunRow<'_>>> = BTreeMap::new();
        for (i, run) in runs.iter().enumerate() {
            for row in run.rows.iter().filter(|r| r.system == system && !r.via_follower) {
                groups.entry((row.nodes, row.op, row.clients)).or_default().push((i, row));
            }
        }
        groups
    };
    let weft = leader_rows(System::Weft);
    let etcd = leader_rows(System::Etcd);
    for (key, etcd_rows) in &etcd {
        let Some(weft_rows) = weft.get(key) else { continue };
        let (nodes, op, clients) = *key;
        let med =
            |rows: &[(usize, &Row)], f: fn(&Row) -> f64| median(rows.iter().map(|(_, r)| f(r)).collect());
        let pair = |f: fn(&Row) -> f64| (med(weft_rows, f), med(etcd_rows, f));
        let ops = pair(|r| r.ops_per_sec);
        let p50 = pair(|r| r.p50_ms);
        let p99 = pair(|r| r.p99_ms);
        let cpu = pair(|r| r.server_cpu_ms_per_op);
        let per_run: Vec<String> = weft_rows
            .iter()
            .filter_map(|(i, w)| {
                let (_, e) = etcd_rows.iter().find(|(j, _)| j == i)?;
                Some(times(ratio(w.ops_per_sec, e.ops_per_sec)))
            })
            .collect();
        let _ = writeln!(
            out,
            "| {nodes} | {} | {clients} | {:.0} | {:.0} | **{}** | {} | {} | **{}** | {} | {} | {} | {} | **{}** | {} |",
            op.name(),
            ops.0,
            ops.1,
            times(ratio(ops.0, ops.1)),
            ms(p50.0),
            ms(p50.1),
            times(ratio(p50.0, p50.1)),
            ms(p99.0),
            ms(p99.1),
            ms(cpu.0),
            ms(cpu.1),
            times(ratio(cpu.0, cpu.1)),
            per_run.join(" / ")
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::{DiskUse, Metrics};

    #[test]
    fn the_median_skips_missing_figures_and_averages_the_middle_pair() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![f64::NAN, 5.0]), 5.0);
        assert!(median(vec![]).is_nan());
        assert!(median(vec![f64::NAN]).is_nan());
    }

    #[test]
    fn a_ratio_needs_two_figures_and_a_divisor() {
        assert_eq!(ratio(3.0, 2.0), 1.5);
        assert!(ratio(1.0, 0.0).is_nan());
        assert!(ratio(f64::NAN, 2.0).is_nan());
        assert!(ratio(2.0, f64::NAN).is_nan());
        assert_eq!(times(1.5), "1.50x");
        assert_eq!(times(f64::NAN), "-");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let ns: Vec<u64> = (1..=100).map(|i| i * 1_000_000).collect();
        assert_eq!(percentile_ms(&ns, 0.50), 50.0);
        assert_eq!(percentile_ms(&ns, 0.99), 99.0);
        assert_eq!(percentile_ms(&ns, 1.0), 100.0);
        assert!(percentile_ms(&[], 0.5).is_nan());
    }

    fn row(system: System, op: Op, ops_per_sec: f64, p50_ms: f64, cpu: f64) -> Row {
        Row {
            system,
            nodes: 3,
            op,
            via_follower: false,
            target: "n1".into(),
            clients: 64,
            channels: 8,
            ops: (ops_per_sec * 5.0) as u64,
            ops_per_sec,
            p50_ms,
            p99_ms: p50_ms * 2.0,
            errors: 0,
            entries: None,
            term_changed: false,
            node_cores: 1.0,
            bench_cores: 0.5,
            server_cpu_ms_per_op: cpu,
        }
    }

    #[test]
    fn weft_beside_etcd_divides_the_medians_and_shows_each_runs_ratio() {
        let run = |weft_ops: f64, etcd_ops: f64| RunFigures {
            rows: vec![
                row(System::Weft, Op::Put, weft_ops, 2.0, 0.5),
                row(System::Etcd, Op::Put, etcd_ops, 1.0, 0.25),
                // Only Weft measures compare-and-set: no comparison row for it.
                row(System::Weft, Op::Cas, 100.0, 1.0, 1.0),
            ],
            ..Default::default()
        };
        let runs = [run(6000.0, 4000.0), run(8000.0, 4000.0), run(7000.0, 5000.0)];
        let text = versus_markdown(&runs);
        // Medians 7000 and 4000: 1.75x; p50 2 / 1 ms; CPU 0.5 / 0.25 ms.
        assert!(
            text.contains("| 3 | put | 64 | 7000 | 4000 | **1.75x** | 2.000 | 1.000 | **2.00x** | 4.000 | 2.000 | 0.500 | 0.250 | **2.00x** | 1.50x / 2.00x / 1.40x |"),
            "{text}"
        );
        assert!(!text.contains("| cas |"), "{text}");
    }

    fn million(system: System, puts_per_sec: f64, follower_rss_mib: [u64; 2]) -> MillionFigures {
        let node = |leader: bool, rss_mib: u64| NodeFigures {
            name: "n1".into(),
            leader,
            rss_before_kib: 0,
            rss_kib: rss_mib * 1024,
            peak_rss_kib: rss_mib * 1024,
            raft_dir: DiskUse::default(),
            snapshot_dir: DiskUse::default(),
            total: DiskUse::default(),
            metrics: Metrics::default(),
        };
        MillionFigures {
            system,
            puts: 1000,
            value_bytes: 100,
            clients: 64,
            channels: 8,
            secs: 1.0,
            puts_per_sec,
            p50_ms: 1.0,
            p99_ms: 2.0,
            max_ms: 3.0,
            errors: 0,
            entries: 10,
            terms: (1, 1),
            leaders: (1, 1),
            settle_secs: 0.0,
            snapshot_after_entries: 100,
            nodes: vec![node(true, 100), node(false, follower_rss_mib[0]), node(false, follower_rss_mib[1])],
        }
    }

    #[test]
    fn the_million_keys_beside_etcd_pool_every_follower_of_every_run() {
        let runs = [
            RunFigures {
                millions: vec![million(System::Weft, 900.0, [10, 20]), million(System::Etcd, 300.0, [5, 5])],
                ..Default::default()
            },
            RunFigures {
                millions: vec![million(System::Etcd, 600.0, [5, 5]), million(System::Weft, 1200.0, [30, 40])],
                ..Default::default()
            },
        ];
        let text = versus_markdown(&runs);
        // Weft's followers 10, 20, 30, 40 MiB: median 25; etcd's 5.
        assert!(text.contains("| follower RSS after (MiB) | 25.0 | 5.0 | **5.00x** |"), "{text}");
        assert!(text.contains("| puts/s | 1050 | 450 | **2.33x** |"), "{text}");
        // No put or get rows were measured on etcd: no table for them.
        assert!(!text.contains("| nodes | workload |"), "{text}");
    }
}

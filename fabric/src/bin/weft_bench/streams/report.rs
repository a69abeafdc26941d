//! The streams workload's tables: what was run and where, each run's figures, then medians
//! over the runs and Weft/NATS ratios.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::phases::{Latency, MEMORY_BATCH, Memory, ProcessMemory};
use super::{Round, System};
use crate::Args;
use crate::report::{median, ms};

/// One figure of a latency row (p50, p99).
type LatencyFigure = fn(&Latency) -> f64;

/// KiB to MiB, one decimal.
fn mib_of_kib(kib: f64) -> String {
    if kib.is_nan() { "-".into() } else { format!("{:.1}", kib / 1024.0) }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() || b == 0.0 { "-".into() } else { format!("{:.2}", a / b) }
}

/// One line of `/proc/cpuinfo` or `/proc/meminfo`.
fn proc_field(file: &str, field: &str) -> String {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

/// The command, the machine and the settings.
pub fn header(args: &Args, systems: &[System], nats_version: Option<&str>) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let command: Vec<String> = std::env::args().collect();
    let mut out = format!(
        "\n## Streams: Weft against NATS JetStream R3\n\n\
         Command: `{}`\n\n\
         Machine: {cores} cores ({}), {} memory, Linux {}; load average {} at the start.\n\n\
         Systems, interleaved in each run: {}. {}\n\n\
         {} s measured per case after {} s warm-up; {}-byte payloads; producers on the node \
         that leads the stream, listeners on one that does not; listener latency with one \
         producer appending single items at {}/s; the memory phase appends {} items in batches \
         of {MEMORY_BATCH} from {} producers.\n",
        command.join(" "),
        proc_field("/proc/cpuinfo", "model name"),
        proc_field("/proc/meminfo", "MemTotal"),
        kernel.trim(),
        crate::probes::load_average(),
        systems.iter().map(|s| s.name()).collect::<Vec<_>>().join(", "),
        nats_version.map(|v| format!("NATS: `{v}`.")).unwrap_or_default(),
        args.secs,
        args.warmup_secs,
        args.value_bytes,
        args.listen_rate,
        args.stream_items,
        args.million_clients,
    );
    out.push('\n');
    out
}

const THROUGHPUT_HEADER: &str = "| producers (connections) | items per append | system | items/s | appends/s | append p50 ms | append p99 ms | errors | CPU cores: servers + bench |\n|---:|---:|---|---:|---:|---:|---:|---:|---|\n";
const LATENCY_HEADER: &str = "| listener | system | p50 ms | p99 ms | max ms | items got / sent | append p50 ms | append p99 ms | append errors | where |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n";

fn per_million(m: &Memory, delta: f64) -> f64 {
    if m.items == 0 { f64::NAN } else { delta * 1_000_000.0 / m.items as f64 }
}

fn rss_growth_kib(p: &ProcessMemory) -> f64 {
    p.rss_after_kib as f64 - p.rss_before_kib as f64
}

fn disk_growth_kib(p: &ProcessMemory) -> f64 {
    (p.disk_after.allocated as f64 - p.disk_before.allocated as f64) / 1024.0
}

/// One run: every system's throughput, latency and memory.
pub fn run_markdown(run: usize, rounds: &[Round]) -> String {
    let mut out = format!("\n### Streams, run {run}\n\n");
    for r in rounds {
        let _ = writeln!(
            out,
            "- {}: {:.0} s, load average {} before, {} after.",
            r.system.name(),
            r.secs,
            r.load_before,
            r.load_after
        );
    }
    out.push('\n');
    if rounds.iter().any(|r| !r.throughput.is_empty()) {
        out.push_str(THROUGHPUT_HEADER);
        let cases = rounds.iter().map(|r| r.throughput.len()).max().unwrap_or(0);
        for i in 0..cases {
            for r in rounds {
                let Some(t) = r.throughput.get(i) else { continue };
                let _ = writeln!(
                    out,
                    "| {} ({}) | {} | {} | {:.0} | {:.0} | {} | {} | {} | {:.2} + {:.2} |",
                    t.producers,
                    t.connections,
                    t.batch,
                    r.system.name(),
                    t.items_per_sec,
                    t.appends_per_sec,
                    ms(t.p50_ms),
                    ms(t.p99_ms),
                    t.errors,
                    t.server_cores,
                    t.bench_cores
                );
            }
        }
        out.push('\n');
    }
    if rounds.iter().any(|r| !r.latency.is_empty()) {
        out.push_str(LATENCY_HEADER);
        let cases = rounds.iter().map(|r| r.latency.len()).max().unwrap_or(0);
        for i in 0..cases {
            for r in rounds {
                let Some(l) = r.latency.get(i) else { continue };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} |",
                    l.kind.name(),
                    r.system.name(),
                    ms(l.p50_ms),
                    ms(l.p99_ms),
                    ms(l.max_ms),
                    l.received,
                    l.sent,
                    ms(l.append_p50_ms),
                    ms(l.append_p99_ms),
                    l.errors,
                    l.placement
                );
            }
        }
        out.push('\n');
    }
    if rounds.iter().any(|r| r.memory.is_some()) {
        out.push_str(
            "| system | items | items/s | errors | node | RSS before → after (MiB) | peak RSS (MiB) | data dir before → after (MiB) |\n\
             |---|---:|---:|---:|---|---:|---:|---:|\n",
        );
        for r in rounds {
            let Some(m) = &r.memory else { continue };
            for p in &m.processes {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} | {} | {} ({}) | {} → {} | {} | {:.1} → {:.1} |",
                    r.system.name(),
                    m.items,
                    m.items_per_sec,
                    m.errors,
                    p.name,
                    if p.leader { "leader" } else { "follower" },
                    mib_of_kib(p.rss_before_kib as f64),
                    mib_of_kib(p.rss_after_kib as f64),
                    mib_of_kib(p.peak_rss_kib as f64),
                    p.disk_before.allocated as f64 / (1 << 20) as f64,
                    p.disk_after.allocated as f64 / (1 << 20) as f64,
                );
            }
        }
        out.push('\n');
    }
    out
}

/// Medians over the runs, per system, and Weft/NATS ratios of those medians (with each run's
/// own ratio, since the rounds of one run ran side by side).
pub fn median_markdown(rounds: &[Round]) -> String {
    let runs = rounds.iter().map(|r| r.run).max().unwrap_or(0);
    let mut systems: Vec<System> = rounds.iter().map(|r| r.system).collect();
    systems.sort();
    systems.dedup();
    let nats: Vec<System> = systems.iter().copied().filter(|s| s.is_nats()).collect();
    let mut out = format!(
        "\n### Streams: medians of {runs} run(s)\n\nEach figure is the median over the runs; \
         \"per run\" shows the spread. A ratio is Weft's median over NATS's; \"per run\" gives \
         each run's own ratio (its rounds ran back to back).\n\n"
    );

    // Throughput.
    let mut cases: Vec<(usize, usize)> = Vec::new();
    for t in rounds.iter().flat_map(|r| &r.throughput) {
        if !cases.contains(&(t.producers, t.batch)) {
            cases.push((t.producers, t.batch));
        }
    }
    let find = |run: usize, system: System, case: (usize, usize)| {
        rounds
            .iter()
            .filter(|r| r.run == run && r.system == system)
            .flat_map(|r| &r.throughput)
            .find(|t| (t.producers, t.batch) == case)
    };
    if !cases.is_empty() {
        out.push_str(
            "| producers | items per append | system | items/s | appends/s | append p50 ms | append p99 ms | errors | server CPU µs per item | items/s per run |\n\
             |---:|---:|---|---:|---:|---:|---:|---:|---:|---|\n",
        );
        let mut medians: BTreeMap<((usize, usize), System), f64> = BTreeMap::new();
        for &case in &cases {
            for &system in &systems {
                let all: Vec<_> = (1..=runs).filter_map(|run| find(run, system, case)).collect();
                if all.is_empty() {
                    continue;
                }
                let items = median(all.iter().map(|t| t.items_per_sec).collect());
                medians.insert((case, system), items);
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | **{:.0}** | {:.0} | {} | {} | {} | {:.0} | {} |",
                    case.0,
                    case.1,
                    system.name(),
                    items,
                    median(all.iter().map(|t| t.appends_per_sec).collect()),
                    ms(median(all.iter().map(|t| t.p50_ms).collect())),
                    ms(median(all.iter().map(|t| t.p99_ms).collect())),
                    all.iter().map(|t| t.errors).sum::<u64>(),
                    median(all.iter().map(|t| t.server_cores * 1e6 / t.items_per_sec).collect()),
                    all.iter().map(|t| format!("{:.0}", t.items_per_sec)).collect::<Vec<_>>().join(" / ")
                );
            }
        }
        out.push('\n');
        if systems.contains(&System::Weft) && !nats.is_empty() {
            out.push_str("| producers | items per append |");
            for n in &nats {
                let _ = write!(out, " Weft / {} items/s (per run) |", n.name());
            }
            out.push_str("\n|---:|---:|");
            for _ in &nats {
                out.push_str("---|");
            }
            out.push('\n');
            for &case in &cases {
                let _ = write!(out, "| {} | {} |", case.0, case.1);
                for &n in &nats {
                    let per_run: Vec<String> = (1..=runs)
                        .filter_map(|run| {
                            Some(ratio(
                                find(run, System::Weft, case)?.items_per_sec,
                                find(run, n, case)?.items_per_sec,
                            ))
                        })
                        .collect();
                    let m = ratio(
                        medians.get(&(case, System::Weft)).copied().unwrap_or(f64::NAN),
                        medians.get(&(case, n)).copied().unwrap_or(f64::NAN),
                    );
                    let _ = write!(out, " **{m}** ({}) |", per_run.join(" / "));
                }
                out.push('\n');
            }
            out.push('\n');
        }
    }

    // Latency.
    let mut kinds = Vec::new();
    for l in rounds.iter().flat_map(|r| &r.latency) {
        if !kinds.contains(&l.kind) {
            kinds.push(l.kind);
        }
    }
    let find_l = |run: usize, system: System, kind| {
        rounds
            .iter()
            .filter(|r| r.run == run && r.system == system)
            .flat_map(|r| &r.latency)
            .find(|l| l.kind == kind)
    };
    if !kinds.is_empty() {
        out.push_str(
            "| listener | system | append→listener p50 ms | p99 ms | max ms | items got / sent | append p50 ms | append p99 ms | p99 per run |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---|\n",
        );
        for &kind in &kinds {
            for &system in &systems {
                let all: Vec<_> = (1..=runs).filter_map(|run| find_l(run, system, kind)).collect();
                if all.is_empty() {
                    continue;
                }
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | **{}** | {} | {} / {} | {} | {} | {} |",
                    kind.name(),
                    system.name(),
                    ms(median(all.iter().map(|l| l.p50_ms).collect())),
                    ms(median(all.iter().map(|l| l.p99_ms).collect())),
                    ms(median(all.iter().map(|l| l.max_ms).collect())),
                    all.iter().map(|l| l.received).sum::<u64>(),
                    all.iter().map(|l| l.sent).sum::<u64>(),
                    ms(median(all.iter().map(|l| l.append_p50_ms).collect())),
                    ms(median(all.iter().map(|l| l.append_p99_ms).collect())),
                    all.iter().map(|l| ms(l.p99_ms)).collect::<Vec<_>>().join(" / ")
                );
            }
        }
        out.push('\n');
        if systems.contains(&System::Weft) && !nats.is_empty() {
            out.push_str("| listener | figure |");
            for n in &nats {
                let _ = write!(out, " Weft / {} (per run; below 1: Weft is faster) |", n.name());
            }
            out.push_str("\n|---|---|");
            for _ in &nats {
                out.push_str("---|");
            }
            out.push('\n');
            let figures: [(&str, LatencyFigure); 2] = [("p50", |l| l.p50_ms), ("p99", |l| l.p99_ms)];
            for &kind in &kinds {
                for (name, figure) in figures {
                    let _ = write!(out, "| {} | {name} |", kind.name());
                    for &n in &nats {
                        let med = |s: System| {
                            median((1..=runs).filter_map(|run| find_l(run, s, kind)).map(figure).collect())
                        };
                        let per_run: Vec<String> = (1..=runs)
                            .filter_map(|run| {
                                Some(ratio(
                                    figure(find_l(run, System::Weft, kind)?),
                                    figure(find_l(run, n, kind)?),
                                ))
                            })
                            .collect();
                        let _ = write!(
                            out,
                            " **{}** ({}) |",
                            ratio(med(System::Weft), med(n)),
                            per_run.join(" / ")
                        );
                    }
                    out.push('\n');
                }
            }
            out.push('\n');
        }
    }

    // Memory.
    let memories: Vec<(System, &Memory)> =
        rounds.iter().filter_map(|r| r.memory.as_ref().map(|m| (r.system, m))).collect();
    if !memories.is_empty() {
        out.push_str(
            "| system | items | items/s | RSS growth per million items, leader (MiB) | followers (MiB) | RSS after, leader / followers (MiB) | data dir growth per million items, leader / followers (MiB) | items/s per run |\n\
             |---|---:|---:|---:|---:|---:|---:|---|\n",
        );
        for &system in &systems {
            let ms_: Vec<&Memory> = memories.iter().filter(|(s, _)| *s == system).map(|(_, m)| *m).collect();
            if ms_.is_empty() {
                continue;
            }
            let of = |leader: bool, f: &dyn Fn(&Memory, &ProcessMemory) -> f64| {
                median(
                    ms_.iter()
                        .flat_map(|m| m.processes.iter().filter(|p| p.leader == leader).map(|p| f(m, p)))
                        .collect(),
                )
            };
            let rss_pm = |m: &Memory, p: &ProcessMemory| per_million(m, rss_growth_kib(p));
            let disk_pm = |m: &Memory, p: &ProcessMemory| per_million(m, disk_growth_kib(p));
            let rss_after = |_: &Memory, p: &ProcessMemory| p.rss_after_kib as f64;
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.0} | **{}** | **{}** | {} / {} | {} / {} | {} |",
                system.name(),
                median(ms_.iter().map(|m| m.items as f64).collect()),
                median(ms_.iter().map(|m| m.items_per_sec).collect()),
                mib_of_kib(of(true, &rss_pm)),
                mib_of_kib(of(false, &rss_pm)),
                mib_of_kib(of(true, &rss_after)),
                mib_of_kib(of(false, &rss_after)),
                mib_of_kib(of(true, &disk_pm)),
                mib_of_kib(of(false, &disk_pm)),
                ms_.iter().map(|m| format!("{:.0}", m.items_per_sec)).collect::<Vec<_>>().join(" / ")
            );
        }
        out.push('\n');
    }
    out
}

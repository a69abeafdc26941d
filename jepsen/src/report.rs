//! The report: one folder per run.
//!
//! ```text
//! <store>/<utc time>-<workload>-<nemesis>-<run>/
//!   history.jsonl            every event (see `history`)
//!   results.json             options, counts and each checker's verdict (executions
//!                            --target shared: the nodes' eager-call counters, `eager_calls`)
//!   <checker>-failing.jsonl  the smallest failing sub-history, when a checker fails
//!   latency.png              latency of every operation over time, nemesis windows shaded
//!   throughput.png           completions per second by outcome, nemesis windows shaded
//!   stream.png               streams: items acknowledged to producers, delivered (first
//!                            time, again) and acked by consumers over time
//!   summary.txt              the one-line summary
//!   n<id>.log                each node's output
//! ```
//!
//! Plots need a TrueType font for their labels: [`FONT_PATHS`] lists where one is looked
//! for (Debian's `fonts-dejavu-core`). Without one, plots are drawn without text.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use serde_json::json;

use crate::checker::{Validity, Verdict};
use crate::history::{self, Event, Op, Type};

/// Where a font for plot labels is looked for, in order.
pub const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];
/// Plot size in pixels.
const PLOT_SIZE: (u32, u32) = (1200, 600);

/// Writing the report failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// The history could not be written.
    #[error(transparent)]
    History(#[from] history::Error),
    /// A plot could not be drawn.
    #[error("plot {path}: {message}")]
    Plot { path: String, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.display().to_string(), source }
}

/// Registers a font with plotters once; `false` when none was found.
fn fonts() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        for path in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(path) {
                // plotters keeps fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        tracing::warn!(
            ?FONT_PATHS,
            "no font found: plots are drawn without text (install fonts-dejavu-core)"
        );
        false
    })
}

/// Writes results.json, failing sub-histories, plots and summary.txt into `dir`.
pub fn write(
    dir: &Path,
    events: &[Event],
    verdicts: &[Verdict],
    options: serde_json::Value,
    summary: &str,
) -> Result<(), Error> {
    let ops = history::operations(events);
    let count = |ty| ops.iter().filter(|o| o.ty == ty).count();
    let validity = verdicts.iter().fold(Validity::Valid, |v, x| v.and(x.validity));
    let results = json!({
        "validity": validity,
        "summary": summary,
        "options": options,
        "operations": { "total": ops.len(), "ok": count(Type::Ok), "fail": count(Type::Fail), "info": count(Type::Info) },
        "nemesis": history::windows(events),
        "verdicts": verdicts,
    });
    let path = dir.join("results.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&results).expect("JSON values serialize"))
        .map_err(io(&path))?;
    for v in verdicts {
        if let Some(failing) = &v.failing {
            history::write(&dir.join(format!("{}-failing.jsonl", v.checker)), failing)?;
        }
    }
    let path = dir.join("summary.txt");
    std::fs::write(&path, format!("{summary}\n")).map_err(io(&path))?;
    plot_latency(&dir.join("latency.png"), events)?;
    plot_throughput(&dir.join("throughput.png"), events)?;
    if ops.iter().any(|o| matches!(o.op, Op::Append { .. })) {
        plot_stream(&dir.join("stream.png"), events)?;
    }
    Ok(())
}

fn color(ty: Type) -> RGBColor {
    match ty {
        Type::Ok => RGBColor(0x1b, 0x9e, 0x40),
        Type::Fail => RGBColor(0xd6, 0x27, 0x28),
        _ => RGBColor(0xff, 0x8c, 0x00),
    }
}

const NEMESIS_SHADE: RGBAColor = RGBAColor(0x80, 0x80, 0xc0, 0.25);

fn plot_err(path: &Path) -> impl Fn(String) -> Error + '_ {
    move |message| Error::Plot { path: path.display().to_string(), message }
}

/// Seconds of the run: the last event's time, at least 1.
fn span_s(events: &[Event]) -> f64 {
    (events.iter().map(|e| e.time_ns).max().unwrap_or(0) as f64 / 1e9).max(1.0)
}

/// Nemesis windows as (start s, stop s, name).
fn shade(events: &[Event]) -> Vec<(f64, f64, String)> {
    let end = span_s(events);
    history::windows(events)
        .into_iter()
        .map(|w| (w.start_ns as f64 / 1e9, w.stop_ns.map_or(end, |s| s as f64 / 1e9), w.name))
        .collect()
}

/// A chart's frame: margins, label areas and (with a font) its caption.
/// Draws the mesh of a chart over time (seconds on x, `y_desc` on y, labels only with
/// `text`) and shades the nemesis windows up to `y_max`.
fn time_frame(
    path: &Path,
    chart: &mut ChartContext<
        '_,
        BitMapBackend<'_>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    text: bool,
    y_desc: &str,
    events: &[Event],
    y_max: f64,
) -> Result<(), Error> {
    let err = plot_err(path);
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("time (s)").y_desc(y_desc);
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(|e| err(e.to_string()))?;
    let windows = shade(events)
        .into_iter()
        .map(|(a, b, _)| Rectangle::new([(a, 0.0), (b, y_max)], NEMESIS_SHADE.filled()));
    chart.draw_series(windows).map_err(|e| err(e.to_string()))?;
    Ok(())
}

fn chart_builder<'a, 'b>(
    root: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    text: bool,
    caption: &str,
) -> ChartBuilder<'a, 'b, BitMapBackend<'b>> {
    let mut builder = ChartBuilder::on(root);
    let (x_area, y_area) = if text { (40, 60) } else { (5, 5) };
    builder.margin(15).x_label_area_size(x_area).y_label_area_size(y_area);
    if text {
        builder.caption(caption, ("sans-serif", 20));
    }
    builder
}

/// The legend box of a chart whose series carry labels.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()
}

/// Latency of each completed operation (ms, log scale) against its invoke time.
pub fn plot_latency(path: &Path, events: &[Event]) -> Result<(), Error> {
    let err = plot_err(path);
    let text = fonts();
    let ops = history::operations(events);
    let points: Vec<(f64, f64, Type)> = ops
        .iter()
        .filter_map(|o| {
            let done = o.complete_ns?;
            Some((o.invoke_ns as f64 / 1e9, ((done - o.invoke_ns) as f64 / 1e6).max(0.01), o.ty))
        })
        .collect();
    let x_max = span_s(events);
    let y_max = points.iter().map(|p| p.1).fold(1.0f64, f64::max) * 1.5;
    let root = BitMapBackend::new(path, PLOT_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut builder = chart_builder(&root, text, "latency by operation outcome (nemesis windows shaded)");
    let mut chart = builder
        .build_cartesian_2d(0f64..x_max, (0.01f64..y_max).log_scale())
        .map_err(|e| err(e.to_string()))?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("time (s)").y_desc("latency (ms)");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(|e| err(e.to_string()))?;
    chart
        .draw_series(
            shade(events)
                .into_iter()
                .map(|(a, b, _)| Rectangle::new([(a, 0.01), (b, y_max)], NEMESIS_SHADE.filled())),
        )
        .map_err(|e| err(e.to_string()))?;
    for ty in [Type::Ok, Type::Fail, Type::Info] {
        let c = color(ty);
        let series = chart
            .draw_series(points.iter().filter(|p| p.2 == ty).map(|p| Circle::new((p.0, p.1), 2, c.filled())))
            .map_err(|e| err(e.to_string()))?;
        if text {
            series
                .label(format!("{ty:?}").to_lowercase())
                .legend(move |(x, y)| Circle::new((x, y), 4, c.filled()));
        }
    }
    if text {
        draw_legend(&mut chart).map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))
}

/// Completions per second, one line per outcome.
pub fn plot_throughput(path: &Path, events: &[Event]) -> Result<(), Error> {
    let err = plot_err(path);
    let text = fonts();
    let ops = history::operations(events);
    let x_max = span_s(events);
    let buckets = x_max.ceil() as usize + 1;
    let mut counts = [vec![0u32; buckets], vec![0u32; buckets], vec![0u32; buckets]];
    for o in &ops {
        let Some(done) = o.complete_ns else { continue };
        let i = ((done as f64 / 1e9) as usize).min(buckets - 1);
        let k = match o.ty {
            Type::Ok => 0,
            Type::Fail => 1,
            _ => 2,
        };
        counts[k][i] += 1;
    }
    let y_max = counts.iter().flatten().copied().max().unwrap_or(1).max(1) as f64 * 1.2;
    let root = BitMapBackend::new(path, PLOT_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut builder =
        chart_builder(&root, text, "throughput: completions per second (nemesis windows shaded)");
    let mut chart = builder.build_cartesian_2d(0f64..x_max, 0f64..y_max).map_err(|e| err(e.to_string()))?;
    time_frame(path, &mut chart, text, "operations / s", events, y_max)?;
    for (k, ty) in [Type::Ok, Type::Fail, Type::Info].into_iter().enumerate() {
        let c = color(ty);
        let series = chart
            .draw_series(LineSeries::new(
                counts[k].iter().enumerate().map(|(i, n)| (i as f64 + 0.5, *n as f64)),
                c.stroke_width(2),
            ))
            .map_err(|e| err(e.to_string()))?;
        if text {
            series
                .label(format!("{ty:?}").to_lowercase())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        }
    }
    if text {
        draw_legend(&mut chart).map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))
}

/// Streams: cumulative items over time: acknowledged to producers (each append once, when
/// first answered `ok`), delivered to consumers for the first time, delivered again, and
/// acknowledged by consumers. A flat "delivered" under a rising "appended" is a stall.
pub fn plot_stream(path: &Path, events: &[Event]) -> Result<(), Error> {
    let err = plot_err(path);
    let text = fonts();
    let ops = history::operations(events);
    // (time s, items) steps of each line.
    let mut appended = Vec::new();
    let mut first = Vec::new();
    let mut again = Vec::new();
    let mut acked = Vec::new();
    let mut answered = std::collections::BTreeSet::new();
    for o in &ops {
        match &o.op {
            Op::Append { producer, epoch, sequence, values, .. }
                if o.ty == Type::Ok && answered.insert((producer, epoch, sequence)) =>
            {
                appended.push((o.complete_ns.unwrap_or(o.invoke_ns), values.len() as u64));
            }
            Op::Deliver { deliveries, .. } => {
                let to = if *deliveries > 1 { &mut again } else { &mut first };
                to.push((o.invoke_ns, 1));
                if o.ty == Type::Ok {
                    acked.push((o.complete_ns.unwrap_or(o.invoke_ns), 1));
                }
            }
            _ => {}
        }
    }
    let cumulative = |mut steps: Vec<(u64, u64)>| {
        steps.sort();
        let mut total = 0;
        let mut out = vec![(0.0, 0.0)];
        for (t, n) in steps {
            total += n;
            out.push((t as f64 / 1e9, total as f64));
        }
        out
    };
    let lines = [
        ("appended (acknowledged)", cumulative(appended), RGBColor(0x1f, 0x77, 0xb4)),
        ("delivered (first time)", cumulative(first), RGBColor(0x1b, 0x9e, 0x40)),
        ("acked by consumers", cumulative(acked), RGBColor(0x9a, 0x9a, 0x9a)),
        ("delivered again", cumulative(again), RGBColor(0xff, 0x8c, 0x00)),
    ];
    let x_max = span_s(events);
    let y_max = lines.iter().filter_map(|l| l.1.last().map(|p| p.1)).fold(1.0f64, f64::max) * 1.1;
    let root = BitMapBackend::new(path, PLOT_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut builder = chart_builder(&root, text, "stream items over time (nemesis windows shaded)");
    let mut chart = builder.build_cartesian_2d(0f64..x_max, 0f64..y_max).map_err(|e| err(e.to_string()))?;
    time_frame(path, &mut chart, text, "items", events, y_max)?;
    for (label, points, c) in lines {
        let series =
            chart.draw_series(LineSeries::new(points, c.stroke_width(2))).map_err(|e| err(e.to_string()))?;
        if text {
            series
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        }
    }
    if text {
        draw_legend(&mut chart).map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))
}

/// The folder for a run: `<store>/<utc>-<workload>-<nemesis>-<run>`.
pub fn run_dir(store: &Path, workload: &str, nemesis: &str, run: &str) -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let nemesis: String = nemesis
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .take(60)
        .collect();
    store.join(format!("{}-{workload}-{nemesis}-{run}", utc(secs)))
}

/// `YYYYMMDDTHHMMSSZ` for seconds since the epoch (civil-from-days, proleptic Gregorian).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Op, Phase};

    #[test]
    fn utc_names_a_known_instant() {
        assert_eq!(utc(0), "19700101T000000Z");
        assert_eq!(utc(1_795_349_693), "20261122T121453Z");
    }

    #[test]
    fn plots_are_png_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut events = Vec::new();
        for i in 0..50u64 {
            let f = Op::Write { key: "k".into(), value: i, version: None };
            events.push(Event {
                index: 2 * i,
                time_ns: i * 100_000_000,
                process: Some(i % 3),
                ty: Type::Invoke,
                f: f.clone(),
                node: Some(1),
                error: None,
            });
            let ty = [Type::Ok, Type::Fail, Type::Info][(i % 3) as usize];
            events.push(Event {
                index: 2 * i + 1,
                time_ns: i * 100_000_000 + 5_000_000 * (i % 7 + 1),
                process: Some(i % 3),
                ty,
                f,
                node: Some(1),
                error: None,
            });
        }
        let nem = |t: u64, phase| Event {
            index: 1000 + t,
            time_ns: t * 1_000_000_000,
            process: None,
            ty: Type::Info,
            f: Op::Nemesis { phase, name: "kill".into(), detail: String::new() },
            node: None,
            error: None,
        };
        events.push(nem(1, Phase::Start));
        events.push(nem(3, Phase::Stop));
        write(dir.path(), &events, &[], json!({}), "test").unwrap();
        for f in ["latency.png", "throughput.png"] {
            let bytes = std::fs::read(dir.path().join(f)).unwrap();
            assert_eq!(&bytes[1..4], b"PNG", "{f} is a PNG");
        }
        assert!(!dir.path().join("stream.png").exists(), "only streams runs get a stream plot");
    }

    #[test]
    fn a_streams_run_gets_a_stream_plot() {
        let dir = tempfile::tempdir().unwrap();
        let mut events = Vec::new();
        let mut push = |process, ty, f| {
            let index = events.len() as u64;
            events.push(Event {
                index,
                time_ns: index * 50_000_000,
                process: Some(process),
                ty,
                f,
                node: Some(1),
                error: None,
            });
        };
        for i in 0..20u64 {
            let append = Op::Append {
                producer: "p0".into(),
                epoch: 1,
                sequence: i + 1,
                values: vec![format!("v{i}")],
                first_seq: Some(i + 1),
                last_seq: Some(i + 1),
                duplicate: Some(false),
            };
            push(i, Type::Invoke, append.clone());
            push(i, Type::Ok, append);
            let deliver = Op::Deliver {
                consumer: 0,
                session: 1,
                seq: i + 1,
                value: format!("v{i}"),
                deliveries: 1 + (i % 4 == 0) as u32,
                token: i,
            };
            push(100 + i, Type::Invoke, deliver.clone());
            push(100 + i, if i % 5 == 0 { Type::Info } else { Type::Ok }, deliver);
        }
        write(dir.path(), &events, &[], json!({}), "test").unwrap();
        let bytes = std::fs::read(dir.path().join("stream.png")).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
    }
}

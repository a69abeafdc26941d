//! A strict reader of the Prometheus text exposition format (0.0.4), for tests that scrape
//! `/metrics`: [`parse`] refuses anything a scraper might misread, and what it accepts can be
//! queried by name and labels.
//!
//! Beyond the format it holds the exposition to Weft's conventions: every family has
//! `# HELP` and `# TYPE`; counters end in `_total`; a family's samples come together, right
//! after its `# TYPE`; histograms have `le` buckets that never decrease, a `+Inf` bucket
//! equal to `_count`, and `_sum`.

use std::collections::{BTreeMap, BTreeSet};

/// Why an exposition was refused: the line (1-based, 0: the whole text) and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct Invalid {
    /// Where (1-based; 0 for a problem of the whole text).
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// A family's declared type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// `counter`.
    Counter,
    /// `gauge`.
    Gauge,
    /// `histogram`.
    Histogram,
    /// `summary`.
    Summary,
    /// `untyped`.
    Untyped,
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name (for a histogram, with `_bucket`, `_sum` or `_count`).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// A family: its type, help and samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// The declared type.
    pub kind: Type,
    /// The help text.
    pub help: Option<String>,
    /// Its samples, in order.
    pub samples: Vec<Sample>,
}

/// A parsed exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    /// Families by name.
    pub families: BTreeMap<String, Family>,
}

impl Exposition {
    /// Whether `name` is a family, or a histogram's (or summary's) `_bucket`, `_sum` or
    /// `_count` series: a name a query may use.
    pub fn has_metric(&self, name: &str) -> bool {
        if self.families.contains_key(name) {
            return true;
        }
        ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix).and_then(|f| self.families.get(f)).is_some_and(|f| {
                matches!(f.kind, Type::Histogram) || (matches!(f.kind, Type::Summary) && *suffix != "_bucket")
            })
        })
    }

    /// Samples named `name` whose labels include every pair of `labels`.
    pub fn samples<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> {
        self.families.values().flat_map(|f| f.samples.iter()).filter(move |s| {
            s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
        })
    }

    /// The value of the one sample named `name` with `labels` (a subset of its labels), if
    /// exactly one matches.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.samples(name, labels);
        let first = found.next()?;
        found.next().is_none().then_some(first.value)
    }
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        v => v.parse().ok().filter(|_| !v.eq_ignore_ascii_case("inf") && !v.eq_ignore_ascii_case("infinity")),
    }
}

/// Parses `{k="v",...}` at the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("expected '{'")?;
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let name = rest[..eq].trim();
        if !valid_label_name(name) {
            return Err(format!("bad label name '{name}'"));
        }
        rest = rest[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or_else(|| format!("label {name}: value not quoted"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("label {name}: unterminated value")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("label {name}: bad escape {other:?}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = rest[end + 1..].trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err("expected ',' or '}' after a label".into());
        }
    }
}

/// Parses and checks an exposition (see the module docs for what is refused).
pub fn parse(text: &str) -> Result<Exposition, Invalid> {
    let mut exp = Exposition::default();
    let mut current: Option<String> = None;
    let mut closed = BTreeSet::new();
    let mut helps: BTreeMap<String, String> = BTreeMap::new();
    let mut seen_series = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let bad = |reason: String| Invalid { line: n, reason };
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), help) => {
                    if !valid_metric_name(name) {
                        return Err(bad(format!("bad metric name '{name}' in HELP")));
                    }
                    if helps.insert(name.to_owned(), help.unwrap_or("").to_owned()).is_some() {
                        return Err(bad(format!("second HELP for {name}")));
                    }
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !valid_metric_name(name) {
                        return Err(bad(format!("bad metric name '{name}' in TYPE")));
                    }
                    let kind = match kind.trim() {
                        "counter" => Type::Counter,
                        "gauge" => Type::Gauge,
                        "histogram" => Type::Histogram,
                        "summary" => Type::Summary,
                        "untyped" => Type::Untyped,
                        other => return Err(bad(format!("unknown type '{other}' for {name}"))),
                    };
                    if kind == Type::Counter && !name.ends_with("_total") {
                        return Err(bad(format!("counter {name} does not end in _total")));
                    }
                    if exp.families.contains_key(name) {
                        return Err(bad(format!("second TYPE for {name}")));
                    }
                    if let Some(prev) = current.replace(name.to_owned()) {
                        closed.insert(prev);
                    }
                    exp.families.insert(name.to_owned(), Family { kind, help: None, samples: Vec::new() });
                }
                (Some("TYPE"), _, _) => return Err(bad("TYPE line without a name and a type".into())),
                _ => {} // other comments are allowed
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| bad("sample without a value".into()))?;
        let name = &line[..name_end];
        if !valid_metric_name(name) {
            return Err(bad(format!("bad metric name '{name}'")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(|e| bad(format!("{name}: {e}")))?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value = fields.next().ok_or_else(|| bad(format!("{name}: no value")))?;
        let value = parse_value(value).ok_or_else(|| bad(format!("{name}: bad value '{value}'")))?;
        if let Some(ts) = fields.next()
            && ts.parse::<i64>().is_err()
        {
            return Err(bad(format!("{name}: bad timestamp '{ts}'")));
        }
        if fields.next().is_some() {
            return Err(bad(format!("{name}: text after the timestamp")));
        }
        // The family this sample belongs to.
        let family = match exp.families.get(name) {
            Some(f) if matches!(f.kind, Type::Histogram) => {
                return Err(bad(format!(
                    "histogram {name} has a bare sample (expected _bucket, _sum, _count)"
                )));
            }
            Some(_) => name.to_owned(),
            None => ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = name.strip_suffix(suffix)?;
                    let f = exp.families.get(base)?;
                    let fits = match f.kind {
                        Type::Histogram => true,
                        Type::Summary => *suffix != "_bucket",
                        _ => false,
                    };
                    fits.then(|| base.to_owned())
                })
                .ok_or_else(|| bad(format!("sample {name} belongs to no declared TYPE")))?,
        };
        if current.as_deref() != Some(family.as_str()) || closed.contains(&family) {
            return Err(bad(format!("sample {name} is not with the other samples of {family}")));
        }
        if name.ends_with("_bucket") {
            match labels.get("le").map(|le| parse_value(le)) {
                Some(Some(_)) => {}
                Some(None) => return Err(bad(format!("{name}: le is not a number"))),
                None => return Err(bad(format!("{name}: bucket without le"))),
            }
        }
        if !seen_series.insert((name.to_owned(), labels.clone())) {
            return Err(bad(format!("{name}{labels:?} appears twice")));
        }
        exp.families.get_mut(&family).expect("found above").samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    for (name, help) in helps {
        match exp.families.get_mut(&name) {
            Some(f) => f.help = Some(help),
            None => return Err(Invalid { line: 0, reason: format!("HELP for {name}, which has no TYPE") }),
        }
    }
    for (name, f) in &exp.families {
        if f.help.as_deref().is_none_or(str::is_empty) {
            return Err(Invalid { line: 0, reason: format!("{name} has no HELP") });
        }
        if f.kind == Type::Histogram {
            check_histogram(name, f)?;
        }
    }
    Ok(exp)
}

/// Buckets never decrease; `+Inf` equals `_count`; `_sum` is there.
fn check_histogram(name: &str, f: &Family) -> Result<(), Invalid> {
    let bad = |reason: String| Invalid { line: 0, reason };
    type Series = BTreeMap<String, String>;
    let mut buckets: BTreeMap<Series, Vec<(f64, f64)>> = BTreeMap::new();
    let mut sums = BTreeMap::new();
    let mut counts = BTreeMap::new();
    for s in &f.samples {
        let mut key = s.labels.clone();
        if s.name.ends_with("_bucket") {
            let le = key.remove("le").and_then(|le| parse_value(&le)).expect("checked when parsed");
            buckets.entry(key).or_default().push((le, s.value));
        } else if s.name.ends_with("_sum") {
            sums.insert(key, s.value);
        } else {
            counts.insert(key, s.value);
        }
    }
    for (series, mut bs) in buckets {
        bs.sort_by(|a, b| a.0.total_cmp(&b.0));
        if bs.windows(2).any(|w| w[1].1 < w[0].1) {
            return Err(bad(format!("{name}{series:?}: bucket counts decrease")));
        }
        let inf = bs.last().filter(|b| b.0.is_infinite()).map(|b| b.1);
        let Some(inf) = inf else { return Err(bad(format!("{name}{series:?}: no +Inf bucket"))) };
        if counts.get(&series) != Some(&inf) {
            return Err(bad(format!(
                "{name}{series:?}: _count {:?} is not the +Inf bucket {inf}",
                counts.get(&series)
            )));
        }
        if !sums.contains_key(&series) {
            return Err(bad(format!("{name}{series:?}: no _sum")));
        }
        counts.remove(&series);
    }
    if let Some(series) = counts.keys().next() {
        return Err(bad(format!("{name}{series:?}: _count without buckets")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
# HELP a_total Things.
# TYPE a_total counter
a_total{node=\"1\",agent=\"x\\\"y\"} 3
# HELP g A gauge.
# TYPE g gauge
g 1.5
# HELP h_seconds Latency.
# TYPE h_seconds histogram
h_seconds_bucket{le=\"0.1\"} 1
h_seconds_bucket{le=\"1\"} 2
h_seconds_bucket{le=\"+Inf\"} 2
h_seconds_sum 0.6
h_seconds_count 2
";

    #[test]
    fn accepts_a_good_exposition_and_answers_queries() {
        let exp = parse(GOOD).unwrap();
        assert_eq!(exp.value("a_total", &[("agent", "x\"y")]), Some(3.0));
        assert_eq!(exp.value("h_seconds_count", &[]), Some(2.0));
        assert!(exp.has_metric("h_seconds_bucket") && exp.has_metric("g") && !exp.has_metric("g_sum"));
    }

    /// Every checker proves it can fail: each broken exposition is refused, for its reason.
    #[test]
    fn refuses_broken_expositions() {
        let cases: &[(&str, &str)] = &[
            // a sample whose family was never declared
            ("# HELP g G.\n# TYPE g gauge\ng 1\nstray_metric 2\n", "belongs to no declared TYPE"),
            // a counter not named _total
            ("# HELP c C.\n# TYPE c counter\nc 1\n", "does not end in _total"),
            // a bad metric name
            ("# HELP g G.\n# TYPE g gauge\n9g 1\n", "bad metric name"),
            // no HELP
            ("# TYPE g gauge\ng 1\n", "has no HELP"),
            // a family split in two
            (
                "# HELP a A.\n# TYPE a gauge\na{x=\"1\"} 1\n# HELP b B.\n# TYPE b gauge\nb 1\na{x=\"2\"} 1\n",
                "not with the other samples",
            ),
            // an unquoted label value
            ("# HELP g G.\n# TYPE g gauge\ng{x=1} 1\n", "not quoted"),
            // a value that is not a number
            ("# HELP g G.\n# TYPE g gauge\ng one\n", "bad value"),
            // a duplicate series
            ("# HELP g G.\n# TYPE g gauge\ng{x=\"1\"} 1\ng{x=\"1\"} 2\n", "twice"),
            // histogram: +Inf disagrees with _count
            (
                "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
                "is not the +Inf bucket",
            ),
            // histogram: buckets decrease
            (
                "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
                "decrease",
            ),
            // histogram: no +Inf
            ("# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", "no +Inf"),
            // histogram: a bucket without le
            ("# HELP h H.\n# TYPE h histogram\nh_bucket 1\n", "without le"),
        ];
        for (text, reason) in cases {
            let err = parse(text).expect_err(text);
            assert!(err.reason.contains(reason), "{text}: expected '{reason}', got {err}");
        }
    }
}

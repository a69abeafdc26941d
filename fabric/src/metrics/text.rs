//! [`Text`]: writes the Prometheus text exposition format (version 0.0.4): a `# HELP` and a
//! `# TYPE` line before each family's samples, label values escaped.

use std::fmt::{Display, Write};

use super::histogram::Snapshot;

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets when the process restarts); its name ends in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, `_sum` and `_count`.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// An exposition being written. Write each family's samples right after its
/// [`Text::family`] line: the format wants a family's samples together.
#[derive(Debug, Default)]
pub struct Text {
    out: String,
}

impl Text {
    /// Starts a family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) {
        debug_assert!(kind != Kind::Counter || name.ends_with("_total"), "counter {name} must end in _total");
        let _ = writeln!(self.out, "# HELP {name} {}\n# TYPE {name} {}", escape_help(help), kind.as_str());
    }

    /// One sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    /// A family with one sample.
    pub fn single(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[(&str, &str)],
        value: impl Display,
    ) {
        self.family(name, help, kind);
        self.sample(name, labels, value);
    }

    /// One histogram series: its buckets, `+Inf`, `_sum` and `_count`.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Snapshot) {
        for (bound, count) in &h.buckets {
            let le = bound.to_string();
            let _ = write!(self.out, "{name}_bucket");
            self.labels(labels, Some(&le));
            let _ = writeln!(self.out, " {count}");
        }
        let _ = write!(self.out, "{name}_bucket");
        self.labels(labels, Some("+Inf"));
        let _ = writeln!(self.out, " {}", h.count);
        let _ = write!(self.out, "{name}_sum");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {}", h.sum_s);
        let _ = write!(self.out, "{name}_count");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {}", h.count);
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        let mut first = true;
        for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
            if !first {
                self.out.push(',');
            }
            first = false;
            self.out.push_str(k);
            self.out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => self.out.push_str("\\\\"),
                    '"' => self.out.push_str("\\\""),
                    '\n' => self.out.push_str("\\n"),
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }
        self.out.push('}');
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values_and_writes_histograms_whole() {
        let mut t = Text::default();
        t.single("a_total", "A.", Kind::Counter, &[("agent", "we\"ird\\\n")], 3);
        t.family("h_seconds", "H.", Kind::Histogram);
        t.histogram(
            "h_seconds",
            &[("rpc", "x")],
            &Snapshot { buckets: vec![(0.5, 1), (1.0, 2)], count: 3, sum_s: 2.25 },
        );
        assert_eq!(
            t.finish(),
            "# HELP a_total A.\n# TYPE a_total counter\na_total{agent=\"we\\\"ird\\\\\\n\"} 3\n\
             # HELP h_seconds H.\n# TYPE h_seconds histogram\n\
             h_seconds_bucket{rpc=\"x\",le=\"0.5\"} 1\nh_seconds_bucket{rpc=\"x\",le=\"1\"} 2\n\
             h_seconds_bucket{rpc=\"x\",le=\"+Inf\"} 3\nh_seconds_sum{rpc=\"x\"} 2.25\nh_seconds_count{rpc=\"x\"} 3\n"
        );
    }
}

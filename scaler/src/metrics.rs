//! The scaler's Prometheus metrics, served as text on `--metrics-addr` (`/metrics`), in the
//! style of the fabric's `/metrics`: per agent, desired and actual replicas by phase, starts,
//! crashes and failed starts, and a histogram of cold starts (a replica's start until its
//! session opened).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};

/// Upper bounds of the cold-start histogram's buckets, in seconds.
pub const COLD_START_BUCKETS_S: [f64; 12] =
    [0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Debug, Default, Clone)]
struct AgentMetrics {
    desired: u64,
    /// Replicas by phase (`starting`, `running`, `stopping`, `waiting`).
    phases: BTreeMap<&'static str, u64>,
    starts: u64,
    crashes: u64,
    failed_starts: u64,
    cold_start_counts: [u64; COLD_START_BUCKETS_S.len()],
    cold_start_count: u64,
    cold_start_sum_s: f64,
}

#[derive(Debug, Default)]
struct Inner {
    active: bool,
    agents: BTreeMap<String, AgentMetrics>,
}

/// The metrics; cheap to clone (clones share them).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
}

/// Replica phases the gauges are reported for.
pub const PHASES: [&str; 4] = ["starting", "running", "stopping", "waiting"];

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether this scaler is the active one.
    pub fn set_active(&self, active: bool) {
        self.with(|m| m.active = active);
    }

    /// An agent's desired replicas and replicas per phase.
    pub fn set_replicas(&self, agent: &str, desired: u32, phases: [(&'static str, u32); 4]) {
        self.with(|m| {
            let a = m.agents.entry(agent.to_owned()).or_default();
            a.desired = u64::from(desired);
            for (phase, n) in phases {
                a.phases.insert(phase, u64::from(n));
            }
        });
    }

    /// A replica was started.
    pub fn started(&self, agent: &str) {
        self.with(|m| m.agents.entry(agent.to_owned()).or_default().starts += 1);
    }

    /// A replica exited without being asked to.
    pub fn crashed(&self, agent: &str) {
        self.with(|m| m.agents.entry(agent.to_owned()).or_default().crashes += 1);
    }

    /// A start failed (could not be started, or opened no session in time).
    pub fn failed_start(&self, agent: &str) {
        self.with(|m| m.agents.entry(agent.to_owned()).or_default().failed_starts += 1);
    }

    /// A replica's session opened `ms` after its start.
    pub fn cold_start(&self, agent: &str, ms: u64) {
        let s = ms as f64 / 1000.0;
        self.with(|m| {
            let a = m.agents.entry(agent.to_owned()).or_default();
            for (i, bound) in COLD_START_BUCKETS_S.iter().enumerate() {
                if s <= *bound {
                    a.cold_start_counts[i] += 1;
                }
            }
            a.cold_start_count += 1;
            a.cold_start_sum_s += s;
        });
    }

    /// The Prometheus text.
    pub fn render(&self) -> String {
        let inner = self.with(|m| (m.active, m.agents.clone()));
        let (active, agents) = inner;
        let mut out = String::new();
        let mut family = |name: &str, help: &str, kind: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family("weft_scaler_active", "1 when this scaler holds its group's lease.", "gauge");
        let _ = writeln!(out, "weft_scaler_active {}", u8::from(active));
        let mut lines = |name: &str, help: &str, kind: &str, value: &dyn Fn(&AgentMetrics) -> u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (agent, a) in &agents {
                let _ = writeln!(out, "{name}{{agent=\"{agent}\"}} {}", value(a));
            }
        };
        lines("weft_scaler_replicas_desired", "Replicas the agent should have.", "gauge", &|a| a.desired);
        lines("weft_scaler_starts_total", "Replicas started.", "counter", &|a| a.starts);
        lines("weft_scaler_crashes_total", "Replicas that exited without being asked to.", "counter", &|a| {
            a.crashes
        });
        lines(
            "weft_scaler_failed_starts_total",
            "Starts that failed: the command or image could not be started, or no session opened in time.",
            "counter",
            &|a| a.failed_starts,
        );
        let _ = writeln!(
            out,
            "# HELP weft_scaler_replicas Replicas by phase.\n# TYPE weft_scaler_replicas gauge"
        );
        for (agent, a) in &agents {
            for phase in PHASES {
                let n = a.phases.get(phase).copied().unwrap_or(0);
                let _ = writeln!(out, "weft_scaler_replicas{{agent=\"{agent}\",phase=\"{phase}\"}} {n}");
            }
        }
        let name = "weft_scaler_cold_start_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} From a replica's start until its session opened.\n# TYPE {name} histogram"
        );
        for (agent, a) in &agents {
            for (i, bound) in COLD_START_BUCKETS_S.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{agent=\"{agent}\",le=\"{bound}\"}} {}",
                    a.cold_start_counts[i]
                );
            }
            let _ = writeln!(out, "{name}_bucket{{agent=\"{agent}\",le=\"+Inf\"}} {}", a.cold_start_count);
            let _ = writeln!(out, "{name}_sum{{agent=\"{agent}\"}} {}", a.cold_start_sum_s);
            let _ = writeln!(out, "{name}_count{{agent=\"{agent}\"}} {}", a.cold_start_count);
        }
        out
    }
}

/// Serves `/metrics` (and `/healthz`) on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use axum::routing::get;
    let router = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { m.render() }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_gauges_counters_and_the_histogram() {
        let m = Metrics::default();
        m.set_active(true);
        m.set_replicas("work", 2, [("starting", 1), ("running", 1), ("stopping", 0), ("waiting", 0)]);
        m.started("work");
        m.crashed("work");
        m.cold_start("work", 120);
        m.cold_start("work", 3000);
        let text = m.render();
        for line in [
            "weft_scaler_active 1",
            "weft_scaler_replicas_desired{agent=\"work\"} 2",
            "weft_scaler_replicas{agent=\"work\",phase=\"running\"} 1",
            "weft_scaler_starts_total{agent=\"work\"} 1",
            "weft_scaler_crashes_total{agent=\"work\"} 1",
            "weft_scaler_cold_start_seconds_bucket{agent=\"work\",le=\"0.1\"} 0",
            "weft_scaler_cold_start_seconds_bucket{agent=\"work\",le=\"0.15\"} 1",
            "weft_scaler_cold_start_seconds_bucket{agent=\"work\",le=\"5\"} 2",
            "weft_scaler_cold_start_seconds_count{agent=\"work\"} 2",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }

    /// The example alert rules (`examples/grafana/alerts.yml`) name only `weft_scaler_*`
    /// metrics the scaler exports (the fabric's own test checks the rest), so a rename here
    /// cannot silently break an alert.
    #[test]
    fn the_example_alerts_name_only_metrics_the_scaler_exports() {
        let m = Metrics::default();
        m.cold_start("work", 120);
        let text = m.render();
        let families: Vec<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        let exists = |name: &str| {
            families.contains(&name)
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s).is_some_and(|f| families.contains(&f)))
        };
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/grafana/alerts.yml");
        let alerts = std::fs::read_to_string(path).unwrap();
        let mut checked = 0;
        for expr in alerts.lines().filter_map(|l| l.trim().strip_prefix("expr:")) {
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .filter(|w| w.starts_with("weft_scaler_"))
            {
                assert!(exists(name), "alerts.yml names {name}, which the scaler does not export");
                checked += 1;
            }
        }
        assert!(checked >= 2, "the alerts name {checked} scaler metrics");
    }
}

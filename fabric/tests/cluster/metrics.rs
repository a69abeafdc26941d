//! `/metrics` of a real 3-node cluster after puts and calls: the content type, a strict parse
//! of the whole exposition (`weft_fabric::testing::exposition`), counts that match what was
//! done; and the Grafana dashboard and alert rules in `examples/grafana/` use only metric
//! names a real node exports.

use std::time::{Duration, Instant};

use weft_agent::{Agent, Client, Context, Fail, Worker};
use weft_fabric::testing::exposition::{self, Exposition};

use crate::support::*;

/// `GET /metrics` over a raw socket: the `Content-Type` and the body.
async fn scrape(addr: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect for HTTP");
    s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-type")))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    (content_type, body.to_owned())
}

/// Scrapes and parses strictly: a node's exposition must always pass.
async fn parsed(addr: &str) -> Exposition {
    let (content_type, body) = scrape(addr).await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    exposition::parse(&body)
        .unwrap_or_else(|e| panic!("{addr}/metrics is not a valid exposition: {e}\n{body}"))
}

fn count(exp: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    exp.value(name, labels).unwrap_or(0.0)
}

const PUTS: usize = 20;
const CALLS: usize = 5;
const FAILING_CALLS: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_what_the_cluster_did() {
    init_tracing();
    let cluster = Cluster::start(3, |_| {}).await;
    let leader = cluster.wait_for_leader().await;
    let entry = &cluster.addrs[0];

    tracing::info!(PUTS, "puts through node 1, and one refused put");
    let mut state = client(entry).await;
    for i in 0..PUTS {
        state.put(put_req("shared/m", &format!("k{i}"), "v")).await.expect("a put");
    }
    let refused = state.put(put_req("nope", "k", "v")).await.expect_err("a bad namespace");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");

    tracing::info!(
        CALLS,
        FAILING_CALLS,
        "an agent session through the SDK; calls that complete and that fail"
    );
    let agent = Agent::new("metered")
        .delegate("echo", |_ctx: Context, n: u32| async move { Ok::<u32, Fail>(n) })
        .delegate("boom", |_ctx: Context, (): ()| async { Err::<(), _>(Fail::permanent("boom")) });
    let worker =
        Worker::builder(cluster.endpoints()).capacity(4).agent(agent).build().expect("a valid worker");
    let stopper = worker.stopper();
    let running = tokio::spawn(worker.run());
    let caller = Client::new(cluster.endpoints()).unwrap();
    for n in 0..CALLS as u32 {
        let back: u32 = caller.call("metered", "echo", &n).await.expect("a result");
        assert_eq!(back, n);
    }
    for _ in 0..FAILING_CALLS {
        caller.call::<_, ()>("metered", "boom", &()).await.expect_err("the handler fails");
    }

    tracing::info!("every node counts every execution once, as its grid applies them");
    let echo = [("agent", "metered"), ("delegate", "echo")];
    let boom = [("agent", "metered"), ("delegate", "boom")];
    let agent_only = [("agent", "metered")];
    for addr in &cluster.addrs {
        let deadline = Instant::now() + PATIENCE;
        let exp = loop {
            let exp = parsed(addr).await;
            let done = count(&exp, "weft_executions_completed_total", &echo) as usize == CALLS
                && count(&exp, "weft_executions_failed_total", &boom) as usize == FAILING_CALLS;
            if done || Instant::now() > deadline {
                break exp;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let got = |name: &str, labels: &[(&str, &str)]| count(&exp, name, labels) as usize;
        assert_eq!(got("weft_executions_created_total", &echo), CALLS, "{addr}");
        assert_eq!(got("weft_executions_completed_total", &echo), CALLS, "{addr}");
        assert_eq!(got("weft_executions_failed_total", &echo), 0, "{addr}");
        assert_eq!(got("weft_executions_created_total", &boom), FAILING_CALLS, "{addr}");
        assert_eq!(got("weft_executions_failed_total", &boom), FAILING_CALLS, "{addr}");
        assert_eq!(got("weft_executions_completed_total", &boom), 0, "{addr}");
        assert_eq!(got("weft_executions_retried_total", &echo), 0, "{addr}");
        for h in ["weft_execution_queue_wait_seconds", "weft_execution_run_seconds"] {
            let n = got(&format!("{h}_count"), &agent_only);
            assert_eq!(n, CALLS + FAILING_CALLS, "{addr}: {h}");
            assert_eq!(
                got(&format!("{h}_bucket"), &[("agent", "metered"), ("le", "+Inf")]),
                n,
                "{addr}: {h}"
            );
        }
        assert_eq!(got("weft_agent_sessions", &agent_only), 1, "{addr}");
        assert_eq!(got("weft_agent_executions_pending", &agent_only), 0, "{addr}");
        assert!(got("weft_raft_log_fsync_seconds_count", &[]) > 0, "{addr}: no fsync timed");
        assert!(exp.value("weft_snapshot_bytes", &[]).is_some(), "{addr}");
        assert_eq!(exp.value("weft_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(exp.value(name, &[]).is_some_and(|v| v > 0.0), "{addr}: {name}");
        }
    }

    tracing::info!("node 1 timed each put it served, by method and code");
    let exp = parsed(entry).await;
    let put_ok = [("rpc", "/weft.fabric.v1.State/Put"), ("code", "OK")];
    assert_eq!(count(&exp, "weft_grpc_server_handling_seconds_count", &put_ok) as usize, PUTS);
    assert_eq!(
        count(&exp, "weft_grpc_server_handling_seconds_bucket", &[put_ok[0], put_ok[1], ("le", "+Inf")])
            as usize,
        PUTS
    );
    let put_bad = [("rpc", "/weft.fabric.v1.State/Put"), ("code", "INVALID_ARGUMENT")];
    assert_eq!(count(&exp, "weft_grpc_server_handling_seconds_count", &put_bad), 1.0);
    let rpcs: std::collections::BTreeSet<&str> = exp
        .samples("weft_grpc_server_handling_seconds_count", &[])
        .map(|s| s.labels["rpc"].as_str())
        .collect();
    assert!(rpcs.iter().all(|r| r.starts_with("/weft.") || *r == "other"), "{rpcs:?}");

    tracing::info!(leader, "the leader timed the commits of those writes");
    let exp = parsed(&cluster.addrs[leader as usize - 1]).await;
    let commits = count(&exp, "weft_raft_commit_seconds_count", &[]);
    assert!(commits >= 1.0, "no commit timed on the leader");
    assert!(
        commits <= count(&exp, "weft_grid_commands_applied_total", &[]),
        "a commit is at least one command"
    );

    stopper.stop();
    running.await.unwrap().unwrap();
    cluster.shutdown().await;
}

/// Metric names in a PromQL expression: identifiers outside quotes and label matchers that
/// start with `weft_` or `process_` (the only prefixes the examples use).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let (mut depth, mut quoted, mut word) = (0, false, String::new());
    let mut flush = |word: &mut String, depth: i32| {
        if depth == 0 && (word.starts_with("weft_") || word.starts_with("process_")) {
            names.push(word.clone());
        }
        word.clear();
    };
    let mut prev = ' ';
    for c in expr.chars() {
        if quoted {
            quoted = !(c == '"' && prev != '\\');
        } else if c == '"' {
            quoted = true;
        } else if c == '{' {
            flush(&mut word, depth);
            depth += 1;
        } else if c == '}' {
            depth -= 1;
        } else if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            if word.is_empty() && (prev == '$' || prev.is_ascii_digit()) {
                // a Grafana variable ($__rate_interval) or a duration (5m)
            } else {
                word.push(c);
            }
        } else {
            flush(&mut word, depth);
        }
        prev = c;
    }
    flush(&mut word, depth);
    names
}

/// Every string under an `expr` key (panels' targets) or the `query` of a query variable.
fn queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            let query_variable = map.get("type").and_then(|t| t.as_str()) == Some("query");
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query", serde_json::Value::String(s)) if query_variable => out.push(s.clone()),
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// The `expr:` lines of a Prometheus rules file (each rule's expression on one line).
pub fn alert_exprs(yaml: &str) -> Vec<String> {
    yaml.lines().filter_map(|l| l.trim().strip_prefix("expr:")).map(|e| e.trim().to_owned()).collect()
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le, rpc) (rate(weft_grpc_server_handling_seconds_bucket{code!=\"OK\", rpc=~\"weft_x.*\"}[$__rate_interval]))) / process_open_fds"
        ),
        vec!["weft_grpc_server_handling_seconds_bucket", "process_open_fds"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alerts_use_only_metrics_a_node_exports() {
    init_tracing();
    let cluster = Cluster::start(1, |_| {}).await;
    let exp = parsed(&cluster.addrs[0]).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/grafana");

    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("weft-dashboard.json")).unwrap())
            .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    queries(&dashboard, &mut exprs);
    let alerts = std::fs::read_to_string(root.join("alerts.yml")).unwrap();
    let alert_exprs = alert_exprs(&alerts);
    assert!(
        exprs.len() >= 10 && alert_exprs.len() >= 4,
        "{} panel queries, {} alerts",
        exprs.len(),
        alert_exprs.len()
    );
    for expr in exprs.iter().chain(&alert_exprs) {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no metric in '{expr}'");
        for name in names {
            // The scaler's metrics come from the scaler process; its own test checks them.
            if !name.starts_with("weft_scaler_") {
                assert!(exp.has_metric(&name), "'{name}' (in '{expr}') is not in a node's /metrics");
            }
        }
    }
    cluster.shutdown().await;
}

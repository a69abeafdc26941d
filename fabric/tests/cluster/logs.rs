//! The `weft` binary's log: no ANSI colour when stderr is not a terminal, `--log-format json`,
//! and repeated errors about a dead peer rate-limited into a line with a count.

use std::time::Duration;

use crate::support::*;

/// Lines of `log` from byte `from` on that are about the peer at `addr` (openraft names its
/// address in every replication and heartbeat error).
fn lines_about(log: &str, from: usize, addr: &str) -> Vec<String> {
    log[from..].lines().filter(|l| l.contains(addr)).map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_logs_have_no_colour_off_a_terminal_and_limit_repeated_peer_errors() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = spawn_cluster(dir.path(), 3, |o| o);
    let leader = cluster.wait_for_leader(PATIENCE).await.unwrap_or_else(|e| panic!("{e}"));
    let victim = (1..=3u64).find(|&id| id != leader).unwrap();
    let victim_addr = cluster.addrs()[victim as usize - 1].clone();

    tracing::info!(victim, "phase: kill -9 a follower; the leader keeps trying to reach it");
    let log_path = cluster.nodes()[leader as usize - 1].log().to_owned();
    let before = std::fs::read_to_string(&log_path).unwrap().len();
    cluster.nodes_mut()[victim as usize - 1].kill9();
    // Past one 10 s window of the limit, so a summary with its count is due.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let log = std::fs::read_to_string(&log_path).unwrap();

    tracing::info!("phase: the log went to a file: no escape bytes");
    assert!(!log.contains('\x1b'), "ANSI escapes in a log written to a file:\n{log}");

    tracing::info!("phase: few lines about the dead peer, and a count of the rest");
    let about = lines_about(&log, before, &victim_addr);
    // Unlimited, openraft logs ~4 lines per attempt every ~50-500 ms: well over 100 in 12 s.
    assert!(about.len() <= 30, "{} lines about {victim_addr}:\n{}", about.len(), about.join("\n"));
    assert!(
        about.iter().any(|l| l.contains("more like this")),
        "no summary with a count:\n{}",
        about.join("\n")
    );
    cluster.kill9_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_json_object_per_line() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut node = NodeCommand::node(weft_bin(), dir.path().join("n1.log"))
        .args(["--log-format", "json", "--listen", &addr, "--node-id", "1", "--initial-members"])
        .arg(format!("1={addr}"))
        .arg("--data-dir")
        .arg(dir.path().join("n1"))
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    wait_for_leader_at(std::slice::from_ref(&addr)).await;
    node.stop(PATIENCE).await.expect("stops on SIGTERM");
    let log = std::fs::read_to_string(dir.path().join("n1.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 2, "{log}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("node started")), "{log}");

    tracing::info!("the same through WEFT_LOG_FORMAT, for a client command");
    let out = std::process::Command::new(weft_bin())
        .args(["state", "get", "shared/x", "k", "--endpoint", &addr])
        .env("WEFT_LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let json_lines = err.lines().filter(|l| l.starts_with('{')).count();
    assert!(
        json_lines > 0
            && err.lines().filter(|l| !l.is_empty()).all(|l| l.starts_with('{') || l.starts_with("error")),
        "{err}"
    );
}

//! The `weft` command line against a real `weft dev` process, and clean shutdown on SIGTERM.

use std::process::{Command, Stdio};

use crate::support::*;

fn weft(endpoint: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(weft_bin()).args(args).env("WEFT_ENDPOINT", endpoint).output().expect("run weft");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A base port whose next `n - 1` ports are free too.
fn free_run(n: u16) -> u16 {
    loop {
        let base = free_port();
        if base.checked_add(n).is_some()
            && (1..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        {
            return base;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_tour_against_weft_dev() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let base = free_run(3);
    let mut dev = NodeCommand::new(weft_bin(), dir.path().join("dev.log"))
        .args(["dev", "--nodes", "3", "--port", &base.to_string(), "--data-dir"])
        .arg(dir.path().join("data"))
        .spawn()
        .unwrap();
    let addrs: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", base + i)).collect();
    wait_for_leader_at(&addrs).await;
    let ep = &addrs[1];

    tracing::info!("phase: status, text and JSON");
    let (code, out, err) = weft(ep, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cluster 'dev'") && out.contains("leader node"), "{out}");
    assert_eq!(out.lines().filter(|l| l.contains("127.0.0.1:")).count(), 3, "{out}");
    tracing::info!("phase: a reader that went away ends the command quietly (141), no panic");
    // The read end is closed before the command starts, so its first write fails.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(weft_bin())
        .args(["status"])
        .env("WEFT_ENDPOINT", ep)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let (code, out, _) = weft(ep, &["status", "--json"]);
    assert_eq!(code, 0);
    let s: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
    assert_eq!(s["members"].as_array().unwrap().len(), 3);
    assert!(s["leader_id"].as_u64().is_some());

    tracing::info!("phase: state put, get, cas, list, delete");
    let (code, out, err) = weft(ep, &["state", "put", "shared/demo", "greeting", "hello"]);
    assert_eq!((code, out.trim()), (0, "ok: version 1"), "{err}");
    let (code, out, _) = weft(ep, &["state", "get", "shared/demo", "greeting"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("greeting = hello  (version 1"), "{out}");
    let (code, out, _) = weft(ep, &["state", "get", "shared/demo", "greeting", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["value"].as_str(), v["version"].as_u64()), (Some("hello"), Some(1)));
    let (code, _, err) = weft(ep, &["state", "cas", "shared/demo", "greeting", "hi", "--expect", "7"]);
    assert_eq!(code, 1);
    assert!(err.contains("FailedPrecondition") && err.contains("expected 7, current is 1"), "{err}");
    let (code, out, _) =
        weft(ep, &["state", "cas", "shared/demo", "greeting", "hi", "--expect", "1", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["version"], 2);
    let (code, _, err) = weft(ep, &["state", "put", "nope", "k", "v"]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid namespace 'nope'"), "{err}");
    weft(ep, &["state", "put", "shared/demo", "a", "1"]);
    let (code, out, _) = weft(ep, &["state", "list", "shared/demo", "--limit", "1", "--all", "--json"]);
    assert_eq!(code, 0);
    let l: serde_json::Value = serde_json::from_str(&out).unwrap();
    let keys: Vec<&str> =
        l["entries"].as_array().unwrap().iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["a", "greeting"]);
    let (code, out, _) = weft(&addrs[2], &["state", "get", "shared/demo", "a", "--stale"]);
    assert!(code == 0 && out.starts_with("a = 1") || code == 1, "stale read: {out}");
    let (code, out, _) = weft(ep, &["state", "delete", "shared/demo", "a"]);
    assert_eq!((code, out.trim()), (0, "deleted"));
    let (code, _, err) = weft(ep, &["state", "get", "shared/demo", "a"]);
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");
    let (code, _, err) = weft("127.0.0.1:1", &["status"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach a Weft node at 127.0.0.1:1"), "{err}");

    tracing::info!("phase: SIGTERM stops the dev cluster cleanly");
    let status = dev.stop(PATIENCE).await.unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_node_cleanly_and_it_restarts_with_its_data() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let args = vec![
        "--listen".into(),
        addr.clone(),
        "--data-dir".into(),
        dir.path().join("n").display().to_string(),
    ];
    let log = dir.path().join("node.log");
    let mut node = spawn_node(args, log.clone());
    wait_for_leader_at(std::slice::from_ref(&addr)).await;
    put_retrying(&addr, "shared/t", "k", "kept").await.unwrap().unwrap();

    let status = node.stop(PATIENCE).await.unwrap();
    assert!(status.success(), "exit status {status:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("stopped"), "{text}");

    node.restart().unwrap();
    wait_for_leader_at(std::slice::from_ref(&addr)).await;
    assert_eq!(get(&addr, "shared/t", "k").await.as_deref(), Some("kept"));
}

//! The command line with real payloads: values from a file (`@FILE`) or stdin (`-`), and
//! `state list --keys-only`.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_come_from_files_and_stdin_and_keys_list_alone() {
    init_tracing();
    let c = Cluster::start(1, |_| {}).await;
    let ep = c.endpoints()[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("value.json");
    std::fs::write(&file, "{\"big\": [1, 2, 3]}\n").unwrap();
    let at_file = format!("@{}", file.display());

    tracing::info!("phase: state put from a file and from stdin; @@ keeps a literal @");
    let (code, _, err) = weft(&ep, &["state", "put", "shared/in", "a", &at_file]).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) =
        weft_with_stdin(&ep, &["state", "put", "shared/in", "b", "-"], Some("from stdin")).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = weft(&ep, &["state", "put", "shared/in", "c", "@@handle"]).await;
    assert_eq!(code, 0, "{err}");
    let (_, v) = weft_json(&ep, &["state", "get", "shared/in", "a"]).await;
    assert_eq!(v["value"], "{\"big\": [1, 2, 3]}\n");
    let (_, v) = weft_json(&ep, &["state", "get", "shared/in", "b"]).await;
    assert_eq!(v["value"], "from stdin");
    let (_, v) = weft_json(&ep, &["state", "get", "shared/in", "c"]).await;
    assert_eq!(v["value"], "@handle");

    tracing::info!("phase: a missing file is refused, nothing written");
    let (code, _, err) = weft(&ep, &["state", "put", "shared/in", "d", "@/nonexistent/weft-value"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("cannot read file /nonexistent/weft-value"), "{err}");

    tracing::info!("phase: list --keys-only, text and JSON");
    let (code, out, err) = weft(&ep, &["state", "list", "shared/in", "--keys-only"]).await;
    assert_eq!((code, out.as_str()), (0, "a\nb\nc\n"), "{err}");
    let (_, v) = weft_json(&ep, &["state", "list", "shared/in", "--keys-only"]).await;
    assert_eq!(v["keys"], serde_json::json!(["a", "b", "c"]));

    tracing::info!("phase: a stream item from a file");
    let (code, _, err) = weft(&ep, &["streams", "create", "in"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = weft(&ep, &["streams", "append", "in", &at_file]).await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = weft(&ep, &["streams", "read", "in", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"big\""), "{out}");

    tracing::info!("phase: a delayed execution shows when it runs, its args from a file");
    let (code, v) =
        weft_json(&ep, &["call", "nobody", "later", &at_file, "--delay", "1h", "--timeout", "1"]).await;
    assert_eq!(code, 1);
    let id = v["error"]["execution_id"].as_u64().unwrap_or_else(|| panic!("{v}"));
    let (code, out, err) = weft(&ep, &["executions", "get", &id.to_string()]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pending, runs in 59m") || out.contains("pending, runs in 1h"), "{out}");
    assert!(out.contains("\"big\""), "args from the file: {out}");
    let (code, out, _) = weft(&ep, &["executions", "list", "--agent", "nobody"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("pending, runs in"), "{out}");

    tracing::info!("phase: executions list: newest first, --oldest-first, --since, --status");
    let (_, v) = weft_json(&ep, &["call", "nobody", "later", "2", "--delay", "1h", "--timeout", "1"]).await;
    let second = v["error"]["execution_id"].as_u64().unwrap_or_else(|| panic!("{v}"));
    let ids = |v: &serde_json::Value| -> Vec<u64> {
        v["executions"].as_array().unwrap().iter().map(|e| e["id"].as_u64().unwrap()).collect()
    };
    let (_, v) = weft_json(&ep, &["executions", "list", "--agent", "nobody"]).await;
    assert_eq!(ids(&v), [second, id]);
    let (_, v) = weft_json(&ep, &["executions", "list", "--agent", "nobody", "--oldest-first"]).await;
    assert_eq!(ids(&v), [id, second]);
    let (_, v) = weft_json(&ep, &["executions", "list", "--agent", "nobody", "--limit", "1"]).await;
    assert_eq!((ids(&v), v["next_page_token"].as_u64()), (vec![second], Some(second)));
    let token = second.to_string();
    let (_, v) = weft_json(&ep, &["executions", "list", "--agent", "nobody", "--page-token", &token]).await;
    assert_eq!(ids(&v), [id], "the next page continues before the token");
    let (_, v) = weft_json(&ep, &["executions", "list", "--since", "10m", "--status", "pending"]).await;
    assert_eq!(ids(&v), [second, id]);
    // Both were created over a second ago (the leader's clock is this machine's).
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let (_, v) = weft_json(&ep, &["executions", "list", "--since", "1s"]).await;
    assert_eq!(ids(&v), Vec::<u64>::new());
    c.shutdown().await;
}

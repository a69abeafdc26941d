//! `weft call`, `weft executions ...` and `weft instances ...`: the built binary against
//! in-process nodes, with agents served by raw sessions opened by the test.
//!
//! The test agents answer every assignment themselves: `say` (and any other delegate) echoes
//! its arguments, `boom` fails, `flaky` fails (retryably) on its first attempt, `Start` echoes
//! its arguments unless they are `"fail"`, `Stop` returns null.

use std::time::Duration;

use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::executions_client::ExecutionsClient;

use crate::support::*;

/// What the test agent answers to an execution.
fn answer(e: &pb::Execution) -> pb::completion::Outcome {
    use pb::completion::Outcome;
    let args = e.payload.as_ref().map(|p| p.data.clone()).filter(|d| !d.is_empty());
    let args = args.unwrap_or_else(|| b"null".to_vec());
    let ok = |data: Vec<u8>| Outcome::Result(pb::Payload { codec: "json".into(), data });
    let error = |message: &str, retryable: bool| {
        Outcome::Error(pb::HandlerError { message: message.into(), retryable })
    };
    match e.delegate.as_str() {
        "boom" => error("boom went the handler", false),
        "flaky" if e.attempts == 1 => error("flaky fails its first attempt", true),
        "Start" if args == b"\"fail\"" => error("Start was told to fail", false),
        "Stop" => ok(b"null".to_vec()),
        _ => ok(args),
    }
}

/// Serves `agent` on a raw session at `addr` until dropped (other CLI tests use it too).
pub struct Agent {
    task: tokio::task::JoinHandle<()>,
}

impl Agent {
    pub async fn serve(addr: &str, agent: &str) -> Self {
        let (tx, mut inbound) = listen(addr, open_msg(agent, 8)).await.expect("session opens");
        let pb::fabric_message::Kind::Opened(opened) = next_kind(&mut inbound).await else {
            panic!("the session did not open")
        };
        let beat = Duration::from_millis((opened.session_timeout_ms / 3).max(100));
        let task = tokio::spawn(async move {
            let mut heartbeat = tokio::time::interval(beat);
            loop {
                let message = tokio::select! {
                    biased;
                    m = inbound.message() => m,
                    _ = heartbeat.tick() => {
                        let beat = pb::AgentMessage {
                            kind: Some(pb::agent_message::Kind::Heartbeat(pb::Heartbeat {})),
                        };
                        if tx.send(beat).await.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                let Ok(Some(pb::FabricMessage { kind: Some(kind) })) = message else { return };
                let pb::fabric_message::Kind::Assignment(a) = kind else { continue };
                let Some(e) = a.execution else { continue };
                let completion = pb::Completion {
                    execution_id: e.id,
                    token: a.token,
                    outcome: Some(answer(&e)),
                    effects: vec![],
                };
                let message = pb::AgentMessage { kind: Some(pb::agent_message::Kind::Complete(completion)) };
                if tx.send(message).await.is_err() {
                    return;
                }
            }
        });
        Self { task }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The executions `weft executions list --all --json` shows (of `agent`, if given).
async fn listed(ep: &str, agent: Option<&str>) -> Vec<serde_json::Value> {
    let mut args = vec!["executions", "list", "--all"];
    if let Some(agent) = agent {
        args.extend(["--agent", agent]);
    }
    let (code, v) = weft_json(ep, &args).await;
    assert_eq!(code, 0, "{v}");
    v["executions"].as_array().expect("an executions array").clone()
}

/// The execution id a DEADLINE_EXCEEDED message names: "execution N is still ...".
fn named_id(message: &str) -> u64 {
    let rest = message.split("execution ").nth(1).unwrap_or_else(|| panic!("no execution id in {message:?}"));
    rest.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{message:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_call_prints_results_and_errors() {
    init_tracing();
    let cluster = Cluster::start(3, |_| {}).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let other = (1..=3).find(|i| *i != leader && *i != follower).unwrap();
    tracing::info!(leader, follower, other, "echo served on one follower, called through the other");
    let _echo = Agent::serve(&cluster.addrs[follower as usize - 1], "echo").await;
    let ep = cluster.addrs[other as usize - 1].clone();
    let ep = ep.as_str();

    tracing::info!("phase: results in text, from positional ARGS, --args or none");
    let (code, out, err) = weft(ep, &["call", "echo", "say", "\"hi\""]).await;
    assert_eq!((code, out.as_str()), (0, "\"hi\"\n"), "{err}");
    let (code, out, err) = weft(ep, &["call", "echo", "say", "--args", r#"{"n": 1, "list": [true]}"#]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "{\n  \"list\": [\n    true\n  ],\n  \"n\": 1\n}\n");
    let (code, out, err) = weft(ep, &["call", "echo", "say"]).await;
    assert_eq!((code, out.as_str()), (0, "null\n"), "{err}");
    let (code, out, err) = weft(ep, &["call", "echo", "say", "-12"]).await;
    assert_eq!((code, out.as_str()), (0, "-12\n"), "a negative number is ARGS, not a flag: {err}");

    tracing::info!("phase: --json prints the whole execution");
    let (code, v) = weft_json(ep, &["call", "echo", "say", "\"hi\"", "--priority", "3"]).await;
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["status"], "completed");
    assert_eq!((v["agent"].as_str(), v["delegate"].as_str()), (Some("echo"), Some("say")));
    assert_eq!((v["args"].as_str(), v["result"].as_str()), (Some("hi"), Some("hi")));
    assert_eq!((v["attempts"].as_u64(), v["priority"].as_i64()), (Some(1), Some(3)));
    assert!(
        v["id"].as_u64().is_some()
            && v["created_ms"].as_u64().is_some()
            && v["finished_ms"].as_u64().is_some()
    );
    assert!(v["error"].is_null() && v["instance"].is_null(), "{v}");

    tracing::info!("phase: a failing delegate exits 1 with its error");
    let (code, out, err) = weft(ep, &["call", "echo", "boom"]).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(err.trim(), "error (handler): boom went the handler");
    assert!(out.is_empty(), "{out}");
    let (code, v) = weft_json(ep, &["call", "echo", "boom"]).await;
    assert_eq!(code, 1);
    assert_eq!((v["status"].as_str(), v["error"]["kind"].as_str()), (Some("failed"), Some("handler")), "{v}");
    assert_eq!(v["error"]["message"], "boom went the handler");

    tracing::info!("phase: --retries runs a retryable failure again");
    let (code, out, err) = weft(ep, &["call", "echo", "flaky", "1"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("flaky fails its first attempt"), "{err}");
    let (code, v) = weft_json(ep, &["call", "echo", "flaky", "1", "--retries", "3"]).await;
    assert_eq!(code, 0, "{v}");
    assert_eq!((v["status"].as_str(), v["attempts"].as_u64()), (Some("completed"), Some(2)), "{v}");
    assert_eq!(v["retry"]["max_attempts"], 3);
    assert_eq!(v["retry"]["initial_backoff_ms"], 100);

    tracing::info!("phase: ARGS that are not JSON are refused before anything is sent");
    let before = listed(ep, Some("echo")).await.len();
    let (code, out, err) = weft(ep, &["call", "echo", "say", "{nope"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("ARGS is not valid JSON") && err.contains("nothing was sent"), "{err}");
    let (code, _, err) = weft(ep, &["call", "echo", "say", "--args", "hello"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("--args is not valid JSON") && err.contains(r#"'"hello"'"#), "{err}");
    let (code, v) = weft_json(ep, &["call", "echo", "say", "--args", ""]).await;
    assert_eq!((code, v["error"]["code"].as_str()), (1, Some("InvalidArgument")), "{v}");
    let (code, _, err) = weft(ep, &["call", "echo", "say", "1", "--args", "2"]).await;
    assert_eq!(code, 2, "ARGS and --args together are a usage error: {err}");
    assert_eq!(listed(ep, Some("echo")).await.len(), before, "no execution was created");

    tracing::info!("phase: a wait that runs out names the execution, which goes on");
    let (code, out, err) = weft(ep, &["call", "nobody", "say", "--timeout", "300ms"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(err.starts_with("error (DeadlineExceeded): execution ") && err.contains(" is still "), "{err}");
    let id = named_id(&err);
    let (code, v) = weft_json(ep, &["executions", "get", &id.to_string()]).await;
    assert_eq!(
        (code, v["status"].as_str(), v["agent"].as_str()),
        (0, Some("pending"), Some("nobody")),
        "{v}"
    );
    let (code, v) = weft_json(ep, &["call", "nobody", "say", "--timeout", "300ms"]).await;
    assert_eq!((code, v["error"]["code"].as_str()), (1, Some("DeadlineExceeded")), "{v}");
    assert!(v["error"]["execution_id"].as_u64().is_some_and(|n| n > id), "{v}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_executions_list_get_wait_cancel() {
    init_tracing();
    let cluster = Cluster::start(1, |_| {}).await;
    let ep = cluster.addrs[0].clone();
    let ep = ep.as_str();
    let _echo = Agent::serve(ep, "echo").await;

    tracing::info!("phase: three completed calls of echo, two pending executions of idle");
    for n in 1..=3 {
        let (code, _, err) = weft(ep, &["call", "echo", "say", &n.to_string()]).await;
        assert_eq!(code, 0, "{err}");
    }
    let mut grpc = ExecutionsClient::new(channel(ep).await);
    let mut pending = Vec::new();
    for key in ["a", "b"] {
        let req = pb::CreateExecutionRequest {
            agent: "idle".into(),
            delegate: "wait".into(),
            idempotency_key: key.into(),
            ..Default::default()
        };
        pending.push(grpc.create(req).await.unwrap().into_inner().execution.unwrap().id);
    }

    tracing::info!("phase: list as a table, filtered, paged");
    let (code, out, err) = weft(ep, &["executions", "list"]).await;
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["ID", "AGENT", "INSTANCE", "DELEGATE", "STATUS", "ATTEMPTS", "AGE"]);
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 5, "{out}");
    // Newest first.
    assert_eq!(&rows[0][1..6], ["idle", "-", "wait", "pending", "0"], "{out}");
    assert_eq!(&rows[4][1..6], ["echo", "-", "say", "completed", "1"], "{out}");
    let (code, v) = weft_json(ep, &["executions", "list", "--agent", "idle", "--status", "pending"]).await;
    assert_eq!(code, 0);
    let ids: Vec<u64> =
        v["executions"].as_array().unwrap().iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, pending.iter().rev().copied().collect::<Vec<_>>());
    assert!(v["next_page_token"].is_null(), "{v}");
    let (code, out, err) = weft(ep, &["executions", "list", "--agent", "echo", "--limit", "2"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "header and two rows: {out}");
    let token = err.split("--page-token ").nth(1).and_then(|t| t.split_whitespace().next());
    let token = token.unwrap_or_else(|| panic!("a page token in {err:?}"));
    let (code, v) = weft_json(ep, &["executions", "list", "--agent", "echo", "--page-token", token]).await;
    assert_eq!((code, v["executions"].as_array().unwrap().len()), (0, 1), "{v}");
    assert_eq!(v["executions"][0]["args"], 1, "the oldest comes last");
    let (code, v) = weft_json(ep, &["executions", "list", "--limit", "1", "--all"]).await;
    assert_eq!((code, v["executions"].as_array().unwrap().len()), (0, 5), "{v}");
    let (code, _, err) = weft(ep, &["executions", "list", "--status", "lost"]).await;
    assert_eq!(code, 2, "clap refuses an unknown status: {err}");

    tracing::info!("phase: get, text and JSON; an unknown id");
    let first = rows[4][0];
    let (code, out, err) = weft(ep, &["executions", "get", first]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("execution {first}  echo/say  completed  attempts 1")), "{out}");
    assert!(out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["result", "1"]), "{out}");
    let (code, v) = weft_json(ep, &["executions", "get", first, "--stale"]).await;
    assert_eq!((code, v["result"].as_u64()), (0, Some(1)), "{v}");
    let (code, out, err) = weft(ep, &["executions", "get", "999999"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(err.starts_with("error (NotFound): "), "{err}");
    let (code, v) = weft_json(ep, &["executions", "get", "999999"]).await;
    assert_eq!((code, v["error"]["code"].as_str()), (1, Some("NotFound")), "{v}");
    let (code, _, err) = weft(ep, &["executions", "wait", "999999"]).await;
    assert!(code == 1 && err.starts_with("error (NotFound): "), "{err}");

    tracing::info!("phase: wait follows an execution until a session serves it");
    let waited = pending[0].to_string();
    let mut wait = WeftProcess::spawn(ep, &["executions", "wait", &waited, "--timeout", "20s"]);
    // The session opens only once the wait has shown the pending state, so it sees it.
    assert_eq!(wait.next_line().await, format!("{waited} pending attempts 0"));
    let idle = Agent::serve(ep, "idle").await;
    let (code, rest, err) = wait.finish().await;
    assert_eq!(code, 0, "{rest:?} {err}");
    assert_eq!(rest[rest.len() - 2], format!("{waited} completed attempts 1"), "{rest:?}");
    assert_eq!(rest.last().map(String::as_str), Some("null"), "{rest:?}");
    drop(idle);
    let (code, v) = weft_json(ep, &["executions", "wait", &waited]).await;
    assert_eq!((code, v["status"].as_str()), (0, Some("completed")), "a final one at once: {v}");

    tracing::info!("phase: cancel a pending execution of an agent nobody serves");
    let (code, out, err) = weft(ep, &["call", "nobody", "job", "--timeout", "200ms"]).await;
    assert_eq!(code, 1, "{out}");
    let id = named_id(&err).to_string();
    let (code, _, err) = weft(ep, &["executions", "wait", &id, "--timeout", "300ms"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("DeadlineExceeded") && err.contains(&format!("execution {id} is still pending")),
        "{err}"
    );
    let (code, out, err) = weft(ep, &["executions", "cancel", &id, "--reason", "not needed"]).await;
    assert_eq!((code, out.trim()), (0, "cancelled 1 execution(s)"), "{err}");
    let (code, v) = weft_json(ep, &["executions", "get", &id]).await;
    assert_eq!(code, 0);
    assert_eq!(
        (v["status"].as_str(), v["error"]["kind"].as_str()),
        (Some("cancelled"), Some("cancelled")),
        "{v}"
    );
    assert_eq!(v["error"]["message"], "not needed");
    let (code, out, err) = weft(ep, &["executions", "wait", &id]).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(out.trim(), format!("{id} cancelled attempts 0"));
    assert_eq!(err.trim(), "error (cancelled): not needed");
    let (code, _, err) = weft(ep, &["executions", "cancel", &id]).await;
    assert_eq!(code, 1, "a final execution cannot be cancelled again");
    assert!(err.starts_with("error (FailedPrecondition): "), "{err}");
    let (code, v) = weft_json(ep, &["executions", "list", "--status", "cancelled"]).await;
    assert_eq!((code, v["executions"][0]["id"].as_u64()), (0, id.parse().ok()), "{v}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_instances_start_list_stop() {
    init_tracing();
    let cluster = Cluster::start(1, |_| {}).await;
    let ep = cluster.addrs[0].clone();
    let ep = ep.as_str();
    let _counter = Agent::serve(ep, "counter").await;

    tracing::info!("phase: start instances, with and without an id and arguments");
    let (code, out, err) = weft(ep, &["instances", "start", "counter", "--id", "c1"]).await;
    assert_eq!((code, out.as_str()), (0, "started counter/c1\n"), "{err}");
    let (code, out, err) = weft(ep, &["instances", "start", "counter", r#"{"from": 5}"#]).await;
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    let named = lines.next().unwrap().strip_prefix("started counter/").expect("started AGENT/ID").to_owned();
    assert_eq!(lines.collect::<Vec<_>>(), ["{", "  \"from\": 5", "}"], "the Start result follows: {out}");
    let (code, v) = weft_json(ep, &["instances", "start", "counter", "--id", "c2", "--args", "[1]"]).await;
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        (v["agent"].as_str(), v["instance"].as_str(), v["created"].as_bool()),
        (Some("counter"), Some("c2"), Some(true))
    );
    assert_eq!(
        (v["start"]["delegate"].as_str(), v["start"]["result"][0].as_u64()),
        (Some("Start"), Some(1)),
        "{v}"
    );

    tracing::info!("phase: a Start that fails exits 1 with its error, and leaves no instance");
    let (code, out, err) = weft(ep, &["instances", "start", "counter", "--id", "bad", "\"fail\""]).await;
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("counter/bad did not start"), "{err}");
    assert!(err.contains("error (handler): Start was told to fail"), "{err}");
    let (code, _, err) = weft(ep, &["instances", "start", "counter", "--id", "bad2", "--args", "{x"]).await;
    assert!(code == 1 && err.contains("--args is not valid JSON"), "{err}");

    tracing::info!("phase: list and get");
    let (code, out, err) = weft(ep, &["instances", "list"]).await;
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["AGENT", "ID", "LIFECYCLE", "SESSION", "QUEUED", "RUNNING", "AGE"]);
    let ids: Vec<&str> = rows[1..].iter().map(|r| r[1]).collect();
    let mut expected = vec!["c1", "c2", named.as_str()];
    expected.sort();
    assert_eq!(ids, expected, "{out}");
    assert!(rows[1..].iter().all(|r| r[0] == "counter" && r[2] == "running"), "{out}");
    let (code, out, err) = weft(ep, &["instances", "list", "--agent", "counter", "--limit", "1"]).await;
    assert_eq!((code, out.lines().count()), (0, 2), "{out}");
    assert!(err.contains("--page-token 'counter/c1'"), "{err}");
    let (code, v) = weft_json(ep, &["instances", "list", "--page-token", "counter/c1"]).await;
    assert_eq!((code, v["instances"][0]["id"].as_str()), (0, Some("c2")), "{v}");
    let (code, v) = weft_json(ep, &["instances", "list", "--limit", "1", "--all"]).await;
    assert_eq!((code, v["instances"].as_array().unwrap().len()), (0, 3), "{v}");
    let (code, v) = weft_json(ep, &["instances", "get", "counter", "c2"]).await;
    assert_eq!(code, 0, "{v}");
    assert_eq!((v["lifecycle"].as_str(), v["start_result"][0].as_u64()), (Some("running"), Some(1)), "{v}");
    let (code, out, err) = weft(ep, &["instances", "get", "counter", "c1"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("instance counter/c1  running"), "{out}");
    let (code, _, err) = weft(ep, &["instances", "get", "counter", "nope"]).await;
    assert!(code == 1 && err.starts_with("error (NotFound): "), "{err}");

    tracing::info!("phase: a call on an instance, then stop it");
    let (code, v) = weft_json(ep, &["call", "counter", "add", "2", "--instance", "c1"]).await;
    assert_eq!((code, v["instance"].as_str(), v["result"].as_u64()), (0, Some("c1"), Some(2)), "{v}");
    let (code, out, err) = weft(ep, &["instances", "stop", "counter", "c1"]).await;
    assert_eq!((code, out.as_str()), (0, "stopped counter/c1\n"), "{err}");
    let (code, _, err) = weft(ep, &["instances", "get", "counter", "c1"]).await;
    assert!(code == 1 && err.starts_with("error (NotFound): "), "{err}");
    let (code, v) = weft_json(ep, &["instances", "stop", "counter", "c2"]).await;
    assert_eq!(
        (code, v["stop"]["delegate"].as_str(), v["stop"]["status"].as_str()),
        (0, Some("Stop"), Some("completed")),
        "{v}"
    );
    let (code, _, err) = weft(ep, &["instances", "stop", "counter", "c2"]).await;
    assert!(code == 1 && err.starts_with("error (NotFound): "), "{err}");
    let (code, v) = weft_json(ep, &["instances", "list"]).await;
    assert_eq!((code, v["instances"].as_array().unwrap().len()), (0, 1), "{v}");
    cluster.shutdown().await;
}

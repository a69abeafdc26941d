//! A revoked or expired token ends the long calls it opened, on real nodes with auth on: an
//! agent session (`Executions/Listen`), a wait (`Executions/Wait`, and the wait inside
//! `Executions/Call`), stream listeners (`Streams/Listen`, a plain reader and a cursor
//! listener), a demand watch (`Scaling/WatchDemand`), an HTTP tail and the dashboard's event
//! stream. Each ends with `UNAUTHENTICATED` (an SSE `end` event with that error) naming the
//! token and why, while the same calls opened with other tokens on the same node go on; the
//! execution a revoked agent's session held goes to another session; an SDK worker whose
//! token is revoked stops with that error and its work is done by another worker.

use std::time::Duration;

use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};
use weft_agent::{Agent, Client, Codec, Context, Token, Worker};
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::executions_client::ExecutionsClient;
use weft_proto::fabric::v1::scaling_client::ScalingClient;
use weft_proto::fabric::v1::streams_client::StreamsClient;
use weft_proto::fabric::v1::tokens_client::TokensClient;

use crate::authz::{admin_ready, bootstrap_token, create_token, req};
use crate::dashboard::{Events, http};
use crate::support::*;

/// A token's text and id.
struct Tok {
    text: String,
    id: String,
}

impl Tok {
    fn some(&self) -> Option<String> {
        Some(self.text.clone())
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.text)
    }
}

const NONE: &[&str] = &[];

/// `n` nodes with auth on; the bootstrap admin token (working) and the dir holding its file.
async fn auth_cluster(n: usize) -> (Cluster, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (file, admin) = bootstrap_token(dir.path());
    let cluster = Cluster::start(n, move |c| {
        c.auth = true;
        c.auth_bootstrap_token_file = Some(file.clone());
    })
    .await;
    admin_ready(&channel(&cluster.addrs[0]).await, &admin).await;
    (cluster, admin, dir)
}

async fn token(ch: &Channel, admin: &str, name: &str, role: &str, scopes: [&[&str]; 4]) -> Tok {
    let (text, id) = create_token(ch, admin, name, role, scopes, None).await;
    Tok { text, id }
}

/// A channel without a per-request timeout, for calls that wait long.
fn long_channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}

/// Revokes token `id` as `admin` through `ch`; every member has applied it when this returns.
pub(crate) async fn revoke(ch: &Channel, admin: &str, id: &str) {
    let reply = TokensClient::new(ch.clone())
        .revoke(req(&Some(admin.to_owned()), pb::RevokeTokenRequest { id: id.into() }))
        .await
        .unwrap_or_else(|e| panic!("revoke {id}: {e}"))
        .into_inner();
    assert!(reply.existed, "token {id} existed");
    assert!(reply.not_applied.is_empty(), "every member applied the revoke of {id}: {:?}", reply.not_applied);
}

/// Reads `stream` until it ends with a status (within `PATIENCE`, a generous bound, not a
/// measure); asserts `UNAUTHENTICATED` naming token `id` and `why`.
async fn ends_unauthenticated<T: std::fmt::Debug>(
    what: &str,
    stream: &mut Streaming<T>,
    id: &str,
    why: &str,
) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => panic!("{what}: still open {PATIENCE:?} after its token {id} {why}"),
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => panic!("{what}: ended without a status (expected UNAUTHENTICATED)"),
            Ok(Err(status)) => {
                assert_unauthenticated(what, &status, id, why);
                return;
            }
        }
    }
}

fn assert_unauthenticated(what: &str, status: &Status, id: &str, why: &str) {
    assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    let message = status.message();
    assert!(message.contains(&format!("token \"{id}\"")) && message.contains(why), "{what}: {message}");
}

/// Reads SSE `events` until their `end` event; asserts it carries `UNAUTHENTICATED` naming
/// token `id` and `why`, and that the stream closes after it.
async fn sse_ends_unauthenticated(what: &str, events: &mut Events, id: &str, why: &str) {
    loop {
        let Some((name, data)) = events.next(PATIENCE).await else {
            panic!("{what}: closed without an end event")
        };
        if name != "end" {
            continue;
        }
        let body: serde_json::Value = serde_json::from_str(&data).expect("the end event is JSON");
        assert_eq!(body["error"]["code"], "UNAUTHENTICATED", "{what}: {data}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("token \"{id}\"")) && message.contains(why), "{what}: {message}");
        break;
    }
    assert!(events.next(PATIENCE).await.is_none(), "{what}: the stream closes after its end event");
}

/// A `Streams/Listen` stream as `token`, started (its `started` message read).
async fn open_listener(
    ch: &Channel,
    token: &Tok,
    start: pb::StartListener,
) -> (mpsc::Sender<pb::ListenerMessage>, Streaming<pb::StreamMessage>) {
    let (tx, rx) = mpsc::channel(16);
    let first = pb::ListenerMessage { kind: Some(pb::listener_message::Kind::Start(start)) };
    tx.send(first).await.expect("the channel is open");
    let outbound = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut inbound = StreamsClient::new(ch.clone())
        .listen(req(&token.some(), outbound))
        .await
        .expect("the listener opens")
        .into_inner();
    let started = tokio::time::timeout(PATIENCE, inbound.message()).await.expect("started in time");
    let started = started.expect("started").expect("open").kind;
    assert!(matches!(started, Some(pb::stream_message::Kind::Started(_))), "{started:?}");
    (tx, inbound)
}

fn reader(stream: &str) -> pb::StartListener {
    pb::StartListener { stream: stream.into(), ..Default::default() }
}

fn cursor_listener(stream: &str) -> pb::StartListener {
    pb::StartListener {
        stream: stream.into(),
        config: Some(pb::CursorConfig::default()),
        ..Default::default()
    }
}

/// Reads a listener until it is sent the item at `seq`.
async fn until_item(what: &str, stream: &mut Streaming<pb::StreamMessage>, seq: u64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let m = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| panic!("{what}: item {seq} not sent within {PATIENCE:?}"))
            .unwrap_or_else(|e| panic!("{what}: ended: {e:?}"))
            .unwrap_or_else(|| panic!("{what}: ended"));
        if let Some(pb::stream_message::Kind::Item(i)) = m.kind
            && i.item.as_ref().is_some_and(|i| i.seq == seq)
        {
            return;
        }
    }
}

/// Keeps a raw session open past `session_timeout_ms` (until its stream is gone).
fn heartbeats(tx: &mpsc::Sender<pb::AgentMessage>) {
    let tx = tx.clone();
    tokio::spawn(async move {
        let beat = pb::AgentMessage { kind: Some(pb::agent_message::Kind::Heartbeat(pb::Heartbeat {})) };
        while tx.send(beat.clone()).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

/// Reads a raw session until it is assigned `execution`; the assignment's fencing token.
async fn until_assigned(session: &mut Streaming<pb::FabricMessage>, execution: u64) -> u64 {
    loop {
        if let pb::fabric_message::Kind::Assignment(a) = next_kind(session).await
            && a.execution.as_ref().is_some_and(|e| e.id == execution)
        {
            return a.token;
        }
    }
}

fn create(agent: &str) -> pb::CreateExecutionRequest {
    pb::CreateExecutionRequest {
        agent: agent.into(),
        delegate: "run".into(),
        payload: json("1"),
        ..Default::default()
    }
}

async fn append(ch: &Channel, admin: &str, stream: &str) -> u64 {
    let item = pb::NewItem { key: "k".into(), payload: json("\"after\""), headers: vec![] };
    let r = pb::AppendRequest { stream: stream.into(), items: vec![item], ..Default::default() };
    StreamsClient::new(ch.clone())
        .append(req(&Some(admin.to_owned()), r))
        .await
        .expect("append")
        .into_inner()
        .last_seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoking_a_token_ends_every_long_call_it_opened_and_no_other() {
    init_tracing();
    let (cluster, admin, _dir) = auth_cluster(3).await;
    // Every call runs on node 2; the tokens are revoked through node 1.
    let (via, at) = (cluster.addrs[0].clone(), cluster.addrs[1].clone());
    let (ch1, ch2) = (channel(&via).await, long_channel(&at));
    let a = Some(admin.clone());

    tracing::info!("phase: a token of each kind to revoke, and one of each to keep");
    let agent_scopes = [&["echo"][..], NONE, NONE, NONE];
    let client_scopes = [NONE, &["echo", "idle"][..], NONE, &["app."][..]];
    let ops_scopes = [NONE; 4];
    let victim_agent = token(&ch1, &admin, "victim-agent", "agent", agent_scopes).await;
    let keeper_agent = token(&ch1, &admin, "keeper-agent", "agent", agent_scopes).await;
    let victim_client = token(&ch1, &admin, "victim-client", "client", client_scopes).await;
    let keeper_client = token(&ch1, &admin, "keeper-client", "client", client_scopes).await;
    let victim_ops = token(&ch1, &admin, "victim-ops", "operator", ops_scopes).await;
    let keeper_ops = token(&ch1, &admin, "keeper-ops", "operator", ops_scopes).await;
    StreamsClient::new(ch1.clone())
        .create(req(&a, pb::CreateStreamRequest { name: "app.events".into(), ..Default::default() }))
        .await
        .expect("create stream");
    // Node 2 accepts every token before anything is opened there.
    cluster.wait_caught_up(2).await;

    tracing::info!("phase: the victim's agent session opens first and is assigned an execution");
    let (victim_tx, mut victim_session) =
        listen_as(&at, Some(&victim_agent.text), open_msg("echo", 4)).await.expect("victim session");
    assert!(matches!(next_kind(&mut victim_session).await, pb::fabric_message::Kind::Opened(_)));
    heartbeats(&victim_tx);
    let executions = ExecutionsClient::new(ch2.clone());
    let created = executions.clone().create(req(&a, create("echo"))).await.expect("create").into_inner();
    let held = created.execution.expect("an execution").id;
    until_assigned(&mut victim_session, held).await;
    let (keeper_tx, mut keeper_session) =
        listen_as(&at, Some(&keeper_agent.text), open_msg("echo", 4)).await.expect("keeper session");
    assert!(matches!(next_kind(&mut keeper_session).await, pb::fabric_message::Kind::Opened(_)));
    heartbeats(&keeper_tx);

    tracing::info!("phase: the other long calls, each opened on node 2 with both tokens");
    let wait = |t: &Tok| {
        let (mut executions, token) = (executions.clone(), t.some());
        async move {
            let mut s = executions
                .wait(req(&token, pb::WaitRequest { id: held, timeout_ms: 0 }))
                .await
                .expect("wait opens")
                .into_inner();
            let first = tokio::time::timeout(PATIENCE, s.message()).await.expect("in time").expect("ok");
            assert_eq!(first.expect("the execution now").status, "assigned");
            s
        }
    };
    let (mut victim_wait, mut keeper_wait) = (wait(&victim_client).await, wait(&keeper_client).await);
    // A call of an agent nobody serves waits for its outcome (a unary long call).
    let victim_call = tokio::spawn({
        let (mut executions, token) = (executions.clone(), victim_client.some());
        async move {
            let r = pb::CallRequest { create: Some(create("idle")), timeout_ms: 600_000 };
            executions.call(req(&token, r)).await
        }
    });
    let (_vr, mut victim_reader) = open_listener(&ch2, &victim_client, reader("app.events")).await;
    let (_kr, mut keeper_reader) = open_listener(&ch2, &keeper_client, reader("app.events")).await;
    let (_vc, mut victim_cursor) = open_listener(&ch2, &victim_client, cursor_listener("app.events")).await;
    let (_kc, mut keeper_cursor) = open_listener(&ch2, &keeper_client, cursor_listener("app.events")).await;
    let demand = |t: &Tok| {
        let token = t.some();
        let mut scaling = ScalingClient::new(ch2.clone());
        async move {
            let r =
                pb::WatchDemandRequest { agents: vec!["echo".into()], min_interval_ms: 0, heartbeat_ms: 500 };
            let mut s = scaling.watch_demand(req(&token, r)).await.expect("watch opens").into_inner();
            let first = tokio::time::timeout(PATIENCE, s.message()).await.expect("in time");
            first.expect("ok").expect("a first picture");
            s
        }
    };
    let (mut victim_demand, mut keeper_demand) = (demand(&victim_ops).await, demand(&keeper_ops).await);
    let tail = "/v1/streams/app.events/tail";
    let mut victim_tail = Events::open_with(&at, tail, &[("Authorization", &victim_client.bearer())]).await;
    let mut keeper_tail = Events::open_with(&at, tail, &[("Authorization", &keeper_client.bearer())]).await;
    let board = "/v1/dashboard/events";
    let mut victim_board = Events::open_with(&at, board, &[("Authorization", &victim_ops.bearer())]).await;
    let mut keeper_board = Events::open_with(&at, board, &[("Authorization", &keeper_ops.bearer())]).await;
    for (what, events) in [("victim tail", &victim_tail), ("keeper tail", &keeper_tail)] {
        assert_eq!(events.status, 200, "{what}");
    }
    for (what, events) in [("victim dashboard", &mut victim_board), ("keeper dashboard", &mut keeper_board)] {
        assert_eq!(events.status, 200, "{what}");
        let (name, _) = events.next(PATIENCE).await.expect("a first snapshot");
        assert_eq!(name, "snapshot", "{what}");
    }

    tracing::info!("phase: the victim tokens are revoked through node 1");
    for victim in [&victim_agent, &victim_client, &victim_ops] {
        revoke(&ch1, &admin, &victim.id).await;
    }

    tracing::info!("phase: every call they opened on node 2 ends, UNAUTHENTICATED, naming the token");
    let revoked = "was revoked";
    ends_unauthenticated("agent session", &mut victim_session, &victim_agent.id, revoked).await;
    ends_unauthenticated("wait", &mut victim_wait, &victim_client.id, revoked).await;
    ends_unauthenticated("plain reader", &mut victim_reader, &victim_client.id, revoked).await;
    ends_unauthenticated("cursor listener", &mut victim_cursor, &victim_client.id, revoked).await;
    ends_unauthenticated("demand watch", &mut victim_demand, &victim_ops.id, revoked).await;
    sse_ends_unauthenticated("tail", &mut victim_tail, &victim_client.id, revoked).await;
    sse_ends_unauthenticated("dashboard", &mut victim_board, &victim_ops.id, revoked).await;
    // The call's execution was created: not UNAUTHENTICATED (nothing changed), but the
    // execution it made, which goes on, and why the call stopped waiting.
    let call = tokio::time::timeout(PATIENCE, victim_call).await.expect("the call returns").expect("joined");
    let status = call.expect_err("the call ends without its outcome");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(weft_proto::wire::execution_of(&status).is_some(), "names its execution: {status:?}");
    let message = status.message();
    assert!(message.contains(&format!("token \"{}\" was revoked", victim_client.id)), "{message}");

    tracing::info!("phase: the calls of the kept tokens go on; the revoked session's execution is not lost");
    let token = until_assigned(&mut keeper_session, held).await;
    let done = pb::Completion {
        execution_id: held,
        token,
        outcome: Some(pb::completion::Outcome::Result(pb::Payload {
            codec: "json".into(),
            data: b"\"kept\"".to_vec(),
        })),
        effects: vec![],
    };
    keeper_tx
        .send(pb::AgentMessage { kind: Some(pb::agent_message::Kind::Complete(done)) })
        .await
        .expect("the keeper's session is open");
    loop {
        let change = tokio::time::timeout(PATIENCE, keeper_wait.message()).await.expect("a change in time");
        let e = change.expect("the keeper's wait goes on").expect("open until final");
        if e.status == "completed" {
            assert_eq!(e.result.map(|p| p.data), Some(b"\"kept\"".to_vec()));
            break;
        }
    }
    let seq = append(&ch1, &admin, "app.events").await;
    until_item("keeper reader", &mut keeper_reader, seq).await;
    until_item("keeper cursor listener", &mut keeper_cursor, seq).await;
    let (name, data) = keeper_tail.next(PATIENCE).await.expect("the keeper's tail goes on");
    assert_eq!(name, "item", "{data}");
    let picture = tokio::time::timeout(PATIENCE, keeper_demand.message()).await.expect("a picture in time");
    picture.expect("the keeper's watch goes on").expect("open");
    let (name, _) = keeper_board.next(PATIENCE).await.expect("the keeper's dashboard goes on");
    assert_eq!(name, "snapshot");

    tracing::info!("phase: node 2 counted each ending once");
    let metrics = http(&at, "/metrics", &[("Authorization", &keeper_ops.bearer())]).await;
    assert_eq!(metrics.status, 200);
    let line = "weft_auth_streams_ended_total{node=\"2\",reason=\"revoked\"} 8";
    assert!(metrics.body.lines().any(|l| l == line), "{line} in:\n{}", metrics.body);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_token_ends_the_calls_it_opened() {
    init_tracing();
    let (cluster, admin, _dir) = auth_cluster(1).await;
    let addr = cluster.addrs[0].clone();
    let ch = long_channel(&addr);
    let a = Some(admin.clone());
    let scopes = [NONE, &["echo"][..], NONE, &["app."][..]];
    StreamsClient::new(ch.clone())
        .create(req(&a, pb::CreateStreamRequest { name: "app.s".into(), ..Default::default() }))
        .await
        .expect("create stream");
    let executions = ExecutionsClient::new(ch.clone());
    let created = executions.clone().create(req(&a, create("echo"))).await.expect("create").into_inner();
    let pending = created.execution.expect("an execution").id;

    tracing::info!("phase: a token that expires in a few seconds opens a wait, a reader and a tail");
    // Long enough to open three calls on an idle node; the test waits for the expiry, it does
    // not time it.
    let (text, id) = create_token(&ch, &admin, "short", "client", scopes, Some(4_000)).await;
    let short = Tok { text, id };
    let keeper = token(&ch, &admin, "keeper", "client", scopes).await;
    let mut wait = executions
        .clone()
        .wait(req(&short.some(), pb::WaitRequest { id: pending, timeout_ms: 0 }))
        .await
        .expect("the short token is valid yet")
        .into_inner();
    let (_r, mut short_reader) = open_listener(&ch, &short, reader("app.s")).await;
    let (_k, mut keeper_reader) = open_listener(&ch, &keeper, reader("app.s")).await;
    let mut tail =
        Events::open_with(&addr, "/v1/streams/app.s/tail", &[("Authorization", &short.bearer())]).await;
    assert_eq!(tail.status, 200, "the short token is valid yet");

    tracing::info!("phase: at its expiry each ends, UNAUTHENTICATED, saying when it expired");
    ends_unauthenticated("wait", &mut wait, &short.id, "expired at").await;
    ends_unauthenticated("plain reader", &mut short_reader, &short.id, "expired at").await;
    sse_ends_unauthenticated("tail", &mut tail, &short.id, "expired at").await;

    tracing::info!("phase: a reader of a token without an expiry goes on");
    let seq = append(&ch, &admin, "app.s").await;
    until_item("keeper reader", &mut keeper_reader, seq).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_whose_token_is_revoked_stops_and_another_does_its_work() {
    init_tracing();
    let (cluster, admin, _dir) = auth_cluster(1).await;
    let ch = channel(&cluster.addrs[0]).await;
    let serve = [&["slow"][..], NONE, NONE, NONE];
    let victim = token(&ch, &admin, "victim-worker", "agent", serve).await;
    let keeper = token(&ch, &admin, "keeper-worker", "agent", serve).await;
    let caller = token(&ch, &admin, "caller", "client", [NONE, &["slow"][..], NONE, NONE]).await;

    tracing::info!("phase: a worker with the victim token takes a call and holds it");
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let holding = Agent::new("slow").delegate("run", move |ctx: Context, _args: serde_json::Value| {
        let started = started_tx.clone();
        async move {
            let _ = started.send(ctx.execution_id());
            ctx.cancelled().await;
            Err::<serde_json::Value, _>("cancelled".to_owned())
        }
    });
    let worker = Worker::builder(cluster.endpoints())
        .token(Some(Token::new(&victim.text).expect("a token")))
        .agent(holding)
        .build()
        .expect("worker");
    let victim_worker = tokio::spawn(worker.run());
    let client = Client::builder(cluster.endpoints())
        .codec(Codec::Json)
        .token(Some(Token::new(&caller.text).expect("a token")))
        .build()
        .expect("client");
    let call = tokio::spawn(async move {
        client.request("slow", "run").args(&1).wait(PATIENCE * 2).call::<serde_json::Value>().await
    });
    let held = tokio::time::timeout(PATIENCE, started.recv()).await.expect("the victim runs the call");
    let held = held.expect("an execution id");

    tracing::info!("phase: its token is revoked: the worker stops with the refusal, not reconnecting");
    revoke(&ch, &admin, &victim.id).await;
    let ended =
        tokio::time::timeout(PATIENCE, victim_worker).await.expect("the worker stops").expect("joined");
    match ended {
        Err(weft_agent::Error::Unauthenticated(message)) => {
            assert!(message.contains(&format!("token \"{}\" was revoked", victim.id)), "{message}")
        }
        other => panic!("the worker should stop with Unauthenticated naming the revoke: {other:?}"),
    }

    tracing::info!("phase: a worker with a valid token finishes the same execution; the call gets it");
    let answering = Agent::new("slow")
        .delegate("run", |_ctx: Context, _args: serde_json::Value| async move { Ok::<_, String>("kept") });
    let worker = Worker::builder(cluster.endpoints())
        .token(Some(Token::new(&keeper.text).expect("a token")))
        .agent(answering)
        .build()
        .expect("worker");
    let stopper = worker.stopper();
    let keeper_worker = tokio::spawn(worker.run());
    let answer = tokio::time::timeout(PATIENCE * 2, call).await.expect("the call ends").expect("joined");
    assert_eq!(answer.expect("the call's result"), serde_json::json!("kept"));
    let e = ExecutionsClient::new(ch.clone())
        .get(req(&Some(admin.clone()), pb::GetExecutionRequest { id: held, ..Default::default() }))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(e.status, "completed", "the execution the victim held is the one completed: {e:?}");
    stopper.stop();
    let _ = tokio::time::timeout(PATIENCE, keeper_worker).await;
    cluster.shutdown().await;
}

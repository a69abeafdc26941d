//! The demand for agent processes (`Scaling/WatchDemand`) over real nodes: pushed pictures of
//! pending, running and unserved work, sessions and generator listeners, through a follower
//! as through the leader; named agents with zeros; the heartbeat; bad requests; the end of a
//! watch when its node stops.

use std::time::Duration;

use tokio::sync::mpsc;
use tonic::{Code, Streaming};
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::executions_client::ExecutionsClient;
use weft_proto::fabric::v1::instances_client::InstancesClient;
use weft_proto::fabric::v1::scaling_client::ScalingClient;
use weft_proto::fabric::v1::streams_client::StreamsClient;

use crate::support::*;

/// A heartbeat far beyond [`PATIENCE`]: a picture that arrives in a test using it was pushed
/// by a change, not repeated by the timer.
const NO_HEARTBEAT_MS: u32 = 600_000;

async fn watch(
    addr: &str,
    agents: &[&str],
    heartbeat_ms: u32,
) -> Result<Streaming<pb::Demand>, tonic::Status> {
    let req = pb::WatchDemandRequest {
        agents: agents.iter().map(|a| (*a).to_owned()).collect(),
        min_interval_ms: 0,
        heartbeat_ms,
    };
    Ok(ScalingClient::new(channel(addr).await).watch_demand(req).await?.into_inner())
}

/// The next picture (within [`PATIENCE`]).
async fn next(pictures: &mut Streaming<pb::Demand>) -> pb::Demand {
    tokio::time::timeout(PATIENCE, pictures.message())
        .await
        .expect("a picture in time")
        .expect("the watch goes on")
        .expect("the watch is open")
}

/// Pictures until one that satisfies `f`.
async fn until_picture(
    pictures: &mut Streaming<pb::Demand>,
    what: &str,
    f: impl Fn(&pb::Demand) -> bool,
) -> pb::Demand {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(PATIENCE, async {
        loop {
            let picture = next(pictures).await;
            if f(&picture) {
                return picture;
            }
            seen.push(picture.agents);
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no picture where {what} within {PATIENCE:?}; saw {seen:?}"))
}

/// The demand of `agent` in a picture.
fn of<'a>(picture: &'a pb::Demand, agent: &str) -> Option<&'a pb::AgentDemand> {
    picture.agents.iter().find(|d| d.agent == agent)
}

/// Pictures until one whose demand of `agent` satisfies `f`; that demand.
async fn until(
    pictures: &mut Streaming<pb::Demand>,
    agent: &str,
    what: &str,
    f: impl Fn(&pb::AgentDemand) -> bool,
) -> pb::AgentDemand {
    let picture = until_picture(pictures, what, |p| of(p, agent).is_some_and(&f)).await;
    of(&picture, agent).cloned().expect("found")
}

fn counts(d: &pb::AgentDemand) -> (u64, u64, u64) {
    (d.pending, d.running, d.delayed)
}

fn create_req(agent: &str) -> pb::CreateExecutionRequest {
    pb::CreateExecutionRequest {
        agent: agent.into(),
        delegate: "work".into(),
        payload: json("1"),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_waits_as_pending_and_runs_once_a_session_opens_seen_through_a_follower() {
    init_tracing();
    let cluster = Cluster::start(3, |_| {}).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let on_follower = cluster.addrs[follower as usize - 1].clone();
    let on_leader = cluster.addrs[leader as usize - 1].clone();

    tracing::info!(follower, "watches on a follower and on the leader; nothing to do yet");
    let mut pictures = watch(&on_follower, &[], NO_HEARTBEAT_MS).await.expect("watch");
    let first = next(&mut pictures).await;
    assert_eq!(first.node_id, follower, "served by the node asked");
    assert!(first.agents.iter().all(|d| d.agent != "worker"), "{first:?}");
    let mut at_leader = watch(&on_leader, &["worker"], NO_HEARTBEAT_MS).await.expect("watch");
    assert_eq!(counts(&next(&mut at_leader).await.agents[0]), (0, 0, 0));

    tracing::info!("a call to an agent with no session: pushed as pending 1");
    let mut caller = ExecutionsClient::new(channel(&on_leader).await);
    let id = caller
        .create(create_req("worker"))
        .await
        .expect("create")
        .into_inner()
        .execution
        .expect("an execution")
        .id;
    let d = until(&mut pictures, "worker", "pending 1", |d| d.pending == 1).await;
    assert_eq!(counts(&d), (1, 0, 0));
    assert!(d.sessions.is_empty());
    assert_eq!(counts(&until(&mut at_leader, "worker", "pending 1", |d| d.pending == 1).await), (1, 0, 0));

    tracing::info!("a session opens on the other follower: the call runs there");
    let other = (1..=3).find(|i| *i != leader && *i != follower).unwrap();
    let (tx, mut inbound) = listen(&cluster.addrs[other as usize - 1], open_msg("worker", 3)).await.unwrap();
    let pb::fabric_message::Kind::Opened(opened) = next_kind(&mut inbound).await else {
        panic!("not opened")
    };
    let pb::fabric_message::Kind::Assignment(a) = next_kind(&mut inbound).await else {
        panic!("no assignment")
    };
    assert_eq!(a.execution.as_ref().map(|e| e.id), Some(id));
    let d = until(&mut pictures, "worker", "running 1", |d| d.running == 1).await;
    assert_eq!(counts(&d), (0, 1, 0));
    assert_eq!(d.sessions.len(), 1);
    let s = &d.sessions[0];
    assert_eq!((s.id, s.name.as_str(), s.node_id), (opened.session_id, "raw-test", other));
    assert_eq!((s.capacity, s.assigned, s.draining, s.only_claimed), (3, 1, false, false));

    tracing::info!("the session leaves: its call is pending again, and no session is left");
    drop(tx);
    drop(inbound);
    let d = until(&mut pictures, "worker", "the session gone", |d| d.sessions.is_empty()).await;
    assert_eq!(counts(&d), (1, 0, 0));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_nobody_serves_is_unserved_and_a_generator_listener_waits() {
    init_tracing();
    let cluster = Cluster::start(1, |_| {}).await;
    let addr = cluster.addrs[0].clone();
    let mut pictures = watch(&addr, &["counter", "numbers"], NO_HEARTBEAT_MS).await.expect("watch");
    let first = next(&mut pictures).await;
    let names: Vec<&str> = first.agents.iter().map(|d| d.agent.as_str()).collect();
    assert_eq!(names, ["counter", "numbers"], "named agents, with nothing yet");

    tracing::info!("an instance starts with no session to run its Start");
    let mut instances = InstancesClient::new(channel(&addr).await);
    let start = tokio::spawn(async move {
        let req = pb::StartInstanceRequest {
            agent: "counter".into(),
            instance: "c1".into(),
            payload: json("{}"),
            timeout_ms: 60_000,
            ..Default::default()
        };
        instances.start(req).await
    });
    let d = until(&mut pictures, "counter", "an instance", |d| !d.instances.is_empty()).await;
    let i = &d.instances[0];
    assert_eq!((i.id.as_str(), i.lifecycle.as_str(), i.session, i.unfinished), ("c1", "starting", None, 1));
    assert_eq!(d.pending, 1, "its Start waits for a session");
    assert!(!d.instances_truncated);

    tracing::info!("a listener attaches to a generator stream whose agent has no session");
    let generator = pb::GeneratorSpec { call: Some(create_req("numbers")), start_on_create: false };
    let mut streams = StreamsClient::new(channel(&addr).await);
    let req =
        pb::CreateStreamRequest { name: "nums".into(), generator: Some(generator), ..Default::default() };
    streams.create(req).await.expect("create the generator stream");
    let (tx, rx) = mpsc::channel(4);
    let begin = pb::StartListener {
        stream: "nums".into(),
        cursor: "c".into(),
        config: Some(pb::CursorConfig { ack_wait_ms: 30_000, ..Default::default() }),
        ..Default::default()
    };
    tx.send(pb::ListenerMessage { kind: Some(pb::listener_message::Kind::Start(begin)) }).await.unwrap();
    let outbound = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let _listener = streams.listen(outbound).await.expect("listen").into_inner();
    let d = until(&mut pictures, "numbers", "a generator listener", |d| d.generator_listeners == 1).await;
    assert_eq!(d.pending, 1, "the generator's execution waits too");

    tracing::info!("a session for both: the Start and the generator run, nothing waits");
    let mut open = open_msg("counter", 4);
    if let Some(pb::agent_message::Kind::Open(o)) = &mut open.kind {
        o.agents.push(pb::AgentSpec {
            name: "numbers".into(),
            delegates: vec![],
            concurrent_instances: false,
        });
    }
    let (_tx, mut inbound) = listen(&addr, open).await.unwrap();
    let pb::fabric_message::Kind::Opened(opened) = next_kind(&mut inbound).await else {
        panic!("not opened")
    };
    let running = |p: &pb::Demand, agent| of(p, agent).is_some_and(|d| d.running == 1);
    let picture =
        until_picture(&mut pictures, "both running", |p| running(p, "numbers") && running(p, "counter"))
            .await;
    let d = of(&picture, "numbers").unwrap();
    assert_eq!((d.generator_listeners, d.pending), (0, 0));
    let d = of(&picture, "counter").unwrap();
    assert_eq!(d.instances[0].session, Some(opened.session_id));
    assert_eq!(d.sessions[0].claimed, ["c1"], "activated on the session");
    assert_eq!(d.sessions[0].assigned, 2, "both agents' work");
    start.abort();
    drop(tx);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_watch_repeats_at_the_heartbeat_and_ends_when_its_node_stops() {
    init_tracing();
    let mut cluster = Cluster::start(1, |_| {}).await;
    let addr = cluster.addrs[0].clone();
    let mut pictures = watch(&addr, &["nobody"], 100).await.expect("watch");
    let first = next(&mut pictures).await;
    assert_eq!(first.agents.len(), 1);
    assert_eq!(first.agents[0], pb::AgentDemand { agent: "nobody".into(), ..Default::default() });

    tracing::info!("nothing changes: the same picture comes again, later");
    for _ in 0..3 {
        let again = next(&mut pictures).await;
        assert_eq!(again.agents, first.agents);
        assert!(again.applied_index >= first.applied_index);
    }

    tracing::info!("the node stops: the watch ends with a status that says to go elsewhere");
    cluster.stop(1).await;
    let end = tokio::time::timeout(PATIENCE, async {
        loop {
            match pictures.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the watch ends in time");
    let status = end.expect_err("ended with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_watch_requests_are_refused_with_a_clear_error() {
    init_tracing();
    let cluster = Cluster::start(1, |c| c.max_listeners = 1).await;
    let addr = cluster.addrs[0].clone();
    let client = ScalingClient::new(channel(&addr).await);
    let many: Vec<String> = (0..1001).map(|i| format!("a{i}")).collect();
    let cases = [
        (
            pb::WatchDemandRequest { agents: vec!["ok".into(), "no way".into()], ..Default::default() },
            "invalid agent name 'no way'",
        ),
        (pb::WatchDemandRequest { agents: many, ..Default::default() }, "a watch may name at most 1000"),
        (
            pb::WatchDemandRequest { min_interval_ms: 20_000, ..Default::default() },
            "min_interval_ms is 20000",
        ),
        (pb::WatchDemandRequest { heartbeat_ms: 10, ..Default::default() }, "heartbeat_ms is 10"),
    ];
    for (req, needle) in cases {
        let e = client.clone().watch_demand(req).await.expect_err("refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(needle), "{:?} should say {needle:?}", e.message());
    }

    tracing::info!("one watch fills max_listeners = 1: a second is refused, and taken once the first leaves");
    let mut first = watch(&addr, &[], 0).await.expect("the first watch");
    next(&mut first).await;
    let e = watch(&addr, &[], 0).await.expect_err("no room");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("max_listeners"), "{e:?}");
    drop(first);
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut again = loop {
        match watch(&addr, &[], 0).await {
            Ok(w) => break w,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "no room within {PATIENCE:?}: {e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    next(&mut again).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weft_demand_shows_what_a_scaler_sees_once_or_as_it_changes() {
    init_tracing();
    let cluster = Cluster::start(1, |_| {}).await;
    let addr = cluster.addrs[0].clone();
    let mut caller = ExecutionsClient::new(channel(&addr).await);
    caller.create(create_req("worker")).await.expect("create");

    tracing::info!("one picture, as JSON and as a table");
    let (code, v) = weft_json(&addr, &["demand"]).await;
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["node_id"], 1);
    assert_eq!(v["agents"][0]["agent"], "worker");
    assert_eq!(v["agents"][0]["pending"], 1);
    let (code, out, err) = weft(&addr, &["demand", "--agent", "nobody", "--agent", "worker"]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("AGENT") && lines[0].contains("PENDING"), "{out}");
    let row = |agent: &str| {
        lines.iter().find(|l| l.starts_with(agent)).map(|l| l.split_whitespace().collect::<Vec<_>>())
    };
    assert_eq!(row("nobody"), Some(vec!["nobody", "0", "0", "0", "0", "0", "0", "0", "0"]), "{out}");
    assert_eq!(row("worker").map(|r| r[1].to_owned()), Some("1".into()), "{out}");

    tracing::info!("a bad agent name is refused");
    let (code, out, err) = weft(&addr, &["demand", "--agent", "no way"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("InvalidArgument") && err.contains("invalid agent name 'no way'"), "{err}");

    tracing::info!("--watch prints each change: a session takes the call");
    let mut watching = WeftProcess::spawn(&addr, &["demand", "--agent", "worker", "--watch", "--json"]);
    assert_eq!(watching.next_json().await["agents"][0]["pending"], 1);
    let (_tx, mut inbound) = listen(&addr, open_msg("worker", 2)).await.unwrap();
    let _opened = next_kind(&mut inbound).await;
    loop {
        let picture = watching.next_json().await;
        let d = &picture["agents"][0];
        if d["running"] == 1 {
            assert_eq!(d["pending"], 0);
            assert_eq!(d["sessions"][0]["capacity"], 2);
            break;
        }
    }
    watching.signal("INT");
    let (code, _, err) = watching.finish().await;
    assert_eq!(code, 130, "ended by ctrl-c: {err}");
    cluster.shutdown().await;
}

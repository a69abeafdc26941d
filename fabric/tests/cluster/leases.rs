//! Leases over real nodes: taken over after expiry through followers, the old holder's
//! fenced writes refused, the CLI showing and releasing them; sessions that serve only their
//! claimed instances.

use std::time::{Duration, Instant};

use tonic::Code;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::executions_client::ExecutionsClient;
use weft_proto::fabric::v1::instances_client::InstancesClient;
use weft_proto::fabric::v1::leases_client::LeasesClient;

use crate::support::*;

async fn leases(addr: &str) -> LeasesClient<tonic::transport::Channel> {
    LeasesClient::new(channel(addr).await)
}

fn acquire_req(holder: &str, ttl_ms: u64) -> pb::AcquireLeaseRequest {
    pb::AcquireLeaseRequest { name: "scaler".into(), holder: holder.into(), ttl_ms, wait_ms: 0 }
}

fn fenced_put(key: &str, value: &str, token: u64) -> pb::PutRequest {
    pb::PutRequest {
        fence: Some(pb::Fence { lease: "scaler".into(), token }),
        ..put_req("shared/s", key, value)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lease_is_taken_over_after_expiry_and_the_old_holders_fenced_writes_are_refused() {
    init_tracing();
    let cluster = Cluster::start(3, |_| {}).await;
    let leader = cluster.wait_for_leader().await;
    let followers: Vec<String> =
        (1..=3).filter(|i| *i != leader).map(|i| cluster.addrs[i as usize - 1].clone()).collect();
    let (a_node, b_node) = (&followers[0], &followers[1]);
    let mut a = leases(a_node).await;
    let mut b = leases(b_node).await;

    tracing::info!("holder a takes the lease through a follower and writes fenced by it");
    let first = a.acquire(acquire_req("a", 1_500)).await.expect("acquire").into_inner();
    assert_eq!((first.name.as_str(), first.holder.as_str()), ("scaler", "a"));
    assert!(first.token > 0);
    client(a_node).await.put(fenced_put("owner", "a", first.token)).await.expect("fenced put while held");
    let again = a.acquire(acquire_req("a", 1_500)).await.expect("the holder renews").into_inner();
    assert_eq!(again.token, first.token, "the holder asking again keeps its token");

    tracing::info!("holder b, through the other follower, is refused while a holds it");
    let refused = b.acquire(acquire_req("b", 1_500)).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("held by 'a'"), "{refused:?}");
    let seen =
        b.get(pb::GetLeaseRequest { name: "scaler".into(), consistency: 0 }).await.unwrap().into_inner();
    assert_eq!(seen.grant.as_ref().map(|g| (g.holder.as_str(), g.token)), Some(("a", first.token)));

    tracing::info!("a stops renewing; once the lease runs out b takes it with a greater token");
    let deadline = Instant::now() + PATIENCE;
    let taken = loop {
        match b.acquire(acquire_req("b", 60_000)).await {
            Ok(grant) => break grant.into_inner(),
            Err(s) if s.code() == Code::FailedPrecondition && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("b could not take the lease: {s:?}"),
        }
    };
    assert_eq!(taken.holder, "b");
    assert!(taken.token > first.token, "{} after {}", taken.token, first.token);

    tracing::info!("a's fenced writes are refused and change nothing; b's apply");
    let mut state = client(a_node).await;
    let stale = state.put(fenced_put("owner", "a-again", first.token)).await.unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition, "{stale:?}");
    assert!(
        stale.message().contains("lease 'scaler'") && stale.message().contains("held with another token"),
        "{stale:?}"
    );
    let cas = pb::CompareAndSetRequest {
        namespace: "shared/s".into(),
        key: "owner".into(),
        expected_version: 0,
        value: b"x".to_vec(),
        ttl_ms: None,
        fence: Some(pb::Fence { lease: "scaler".into(), token: first.token }),
    };
    assert_eq!(state.compare_and_set(cas.clone()).await.unwrap_err().code(), Code::FailedPrecondition);
    let delete = pb::DeleteRequest {
        namespace: "shared/s".into(),
        key: "owner".into(),
        expected_version: None,
        fence: Some(pb::Fence { lease: "scaler".into(), token: first.token }),
    };
    assert_eq!(state.delete(delete.clone()).await.unwrap_err().code(), Code::FailedPrecondition);
    assert_eq!(get(b_node, "shared/s", "owner").await.as_deref(), Some("a"));
    let version =
        state.put(fenced_put("owner", "b", taken.token)).await.expect("b's fenced put").into_inner();
    let b_fence = Some(pb::Fence { lease: "scaler".into(), token: taken.token });
    let cas = pb::CompareAndSetRequest { expected_version: version.version, fence: b_fence.clone(), ..cas };
    state.compare_and_set(cas).await.expect("b's fenced compare-and-set");
    assert_eq!(get(a_node, "shared/s", "owner").await.as_deref(), Some("x"));
    let deleted =
        state.delete(pb::DeleteRequest { fence: b_fence, ..delete }).await.expect("b's fenced delete");
    assert!(deleted.into_inner().deleted);

    tracing::info!("a's old token renews and releases nothing");
    let renew =
        a.renew(pb::RenewLeaseRequest { name: "scaler".into(), token: first.token, ttl_ms: 1_000 }).await;
    assert_eq!(renew.unwrap_err().code(), Code::FailedPrecondition);
    let release = a.release(pb::ReleaseLeaseRequest { name: "scaler".into(), token: first.token }).await;
    assert!(!release.unwrap().into_inner().released);

    tracing::info!("bad requests are refused with a clear error");
    for (req, needle) in [
        (acquire_req("b", 0), "ttl_ms 0"),
        (acquire_req("", 1_000), "holder"),
        (
            pb::AcquireLeaseRequest { name: "no spaces".into(), ..acquire_req("b", 1_000) },
            "invalid lease name",
        ),
    ] {
        let err = b.acquire(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(needle), "{err:?} should mention {needle:?}");
    }
    let bad_fence = pb::PutRequest {
        fence: Some(pb::Fence { lease: String::new(), token: 1 }),
        ..put_req("shared/s", "k", "v")
    };
    assert_eq!(state.put(bad_fence).await.unwrap_err().code(), Code::InvalidArgument);

    tracing::info!("the CLI shows who holds the lease and releases it by token");
    let (code, shown) = weft_json(a_node, &["leases", "get", "scaler"]).await;
    assert_eq!(code, 0, "{shown}");
    assert_eq!((shown["holder"].as_str(), shown["token"].as_u64()), (Some("b"), Some(taken.token)));
    let (code, out, _) = weft(b_node, &["leases", "get", "scaler"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("scaler held by b") && out.contains(&format!("token {}", taken.token)), "{out}");
    let stale_token = first.token.to_string();
    let (code, out, err) = weft(a_node, &["leases", "release", "scaler", "--token", &stale_token]).await;
    assert_eq!(code, 1, "{out} {err}");
    assert!(err.contains("not released"), "{err}");
    let token = taken.token.to_string();
    let (code, released) = weft_json(a_node, &["leases", "release", "scaler", "--token", &token]).await;
    assert_eq!((code, released["released"].as_bool()), (0, Some(true)), "{released}");
    let (code, shown) = weft_json(b_node, &["leases", "get", "scaler"]).await;
    assert_eq!((code, shown["held"].as_bool()), (1, Some(false)), "{shown}");
    let (code, _, err) = weft(b_node, &["leases", "get", "bad name"]).await;
    assert!(code != 0 && err.contains("InvalidArgument"), "{err}");
    cluster.shutdown().await;
}

fn only_claimed_open(instance: &str) -> pb::AgentMessage {
    pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Open(pb::OpenSession {
            agents: vec![pb::AgentSpec { name: "w".into(), delegates: vec![], concurrent_instances: false }],
            capacity: 4,
            claims: vec![pb::InstanceRef { agent: "w".into(), instance: instance.into() }],
            lease_ms: 0,
            name: format!("per-instance {instance}"),
            only_claimed: true,
        })),
    }
}

async fn complete(tx: &tokio::sync::mpsc::Sender<pb::AgentMessage>, a: &pb::Assignment) {
    let completion = pb::Completion {
        execution_id: a.execution.as_ref().unwrap().id,
        token: a.token,
        outcome: Some(pb::completion::Outcome::Result(pb::Payload {
            codec: "json".into(),
            data: b"1".to_vec(),
        })),
        effects: vec![],
    };
    tx.send(pb::AgentMessage { kind: Some(pb::agent_message::Kind::Complete(completion)) }).await.unwrap();
}

async fn next_assignment(inbound: &mut tonic::Streaming<pb::FabricMessage>) -> pb::Assignment {
    loop {
        match next_kind(inbound).await {
            pb::fabric_message::Kind::Assignment(a) => return a,
            pb::fabric_message::Kind::Completed(_) => {}
            other => panic!("expected an assignment, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_only_claimed_session_gets_only_its_instances_work() {
    init_tracing();
    let cluster = Cluster::start(1, |_| {}).await;
    let addr = cluster.addrs[0].clone();
    let applied = cluster.node(1).applied();

    tracing::info!("instances x and y are started; nobody serves w yet");
    let start = |instance: &'static str| {
        let addr = addr.clone();
        tokio::spawn(async move {
            let req = pb::StartInstanceRequest {
                agent: "w".into(),
                instance: instance.into(),
                payload: json("0"),
                timeout_ms: 60_000,
                ..Default::default()
            };
            InstancesClient::new(channel(&addr).await).start(req).await
        })
    };
    let (start_y, start_x) = (start("y"), start("x"));
    let deadline = Instant::now() + PATIENCE;
    let starts = loop {
        let found = applied.read(|a| {
            Some((a.grid.instance("w", "x")?.start_execution, a.grid.instance("w", "y")?.start_execution))
        });
        if let Some(found) = found {
            break found;
        }
        assert!(Instant::now() < deadline, "the instances were not created");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    tracing::info!("a session serving only x gets x's Start, not y's");
    let (tx, mut inbound) = listen(&addr, only_claimed_open("x")).await.unwrap();
    let pb::fabric_message::Kind::Opened(opened) = next_kind(&mut inbound).await else {
        panic!("not opened")
    };
    let a = next_assignment(&mut inbound).await;
    let e = a.execution.clone().unwrap();
    assert_eq!((e.id, e.instance.as_str(), e.delegate.as_str()), (starts.0, "x", "Start"));
    complete(&tx, &a).await;
    let started = start_x.await.unwrap().expect("x started").into_inner();
    assert_eq!(started.start.unwrap().status, "completed");

    tracing::info!("a call to x runs there; y's Start and a call without an instance wait");
    let mut calls = ExecutionsClient::new(channel(&addr).await);
    let create = |instance: &str| pb::CreateExecutionRequest {
        agent: "w".into(),
        instance: instance.into(),
        delegate: "job".into(),
        payload: json("1"),
        ..Default::default()
    };
    let stateless = calls.create(create("")).await.unwrap().into_inner().execution.unwrap().id;
    let on_x = calls.create(create("x")).await.unwrap().into_inner().execution.unwrap().id;
    let a = next_assignment(&mut inbound).await;
    assert_eq!(a.execution.as_ref().unwrap().id, on_x, "the session gets x's call, nothing else");
    // Both waiting executions were pending before x's call was created; dispatch, which runs
    // in every entry, left them: the session may not take them.
    let waiting = applied.read(|a| {
        [starts.1, stateless].map(|id| a.grid.execution(id).map(|e| (e.status.as_str(), e.lease.is_some())))
    });
    assert_eq!(waiting, [Some(("pending", false)), Some(("pending", false))]);
    let session = applied.read(|a| a.grid.session(opened.session_id).cloned()).expect("session");
    assert!(session.only_claimed);
    assert_eq!(session.assigned.into_iter().collect::<Vec<_>>(), vec![on_x]);
    complete(&tx, &a).await;

    tracing::info!("a plain session takes y's Start and the call without an instance");
    let (tx2, mut inbound2) = listen(&addr, open_msg("w", 4)).await.unwrap();
    let pb::fabric_message::Kind::Opened(_) = next_kind(&mut inbound2).await else { panic!("not opened") };
    let mut got = Vec::new();
    for _ in 0..2 {
        let a = next_assignment(&mut inbound2).await;
        got.push(a.execution.as_ref().unwrap().id);
        complete(&tx2, &a).await;
    }
    got.sort();
    let mut expected = vec![starts.1, stateless];
    expected.sort();
    assert_eq!(got, expected);
    let started = start_y.await.unwrap().expect("y started").into_inner();
    assert_eq!(started.start.unwrap().status, "completed");
    drop((tx, tx2));
    cluster.shutdown().await;
}

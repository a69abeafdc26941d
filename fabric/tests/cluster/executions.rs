//! Executions over the raw protocol: a session on one node, callers on others, results
//! through every node; bad session input.

use std::time::Duration;

use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::executions_client::ExecutionsClient;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_through_one_node_runs_on_a_session_of_another() {
    init_tracing();
    let cluster = Cluster::start(3, |_| {}).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    tracing::info!(leader, follower, "an agent session on a follower");
    let (tx, mut inbound) = listen(&cluster.addrs[follower as usize - 1], open_msg("echo", 4)).await.unwrap();
    let pb::fabric_message::Kind::Opened(opened) = next_kind(&mut inbound).await else {
        panic!("not opened")
    };
    assert_eq!(opened.node_id, follower);

    tracing::info!("a caller on the other follower calls echo");
    let other = (1..=3).find(|i| *i != leader && *i != follower).unwrap();
    let mut caller = ExecutionsClient::new(channel(&cluster.addrs[other as usize - 1]).await);
    let call = tokio::spawn(async move {
        caller
            .call(pb::CallRequest {
                create: Some(pb::CreateExecutionRequest {
                    agent: "echo".into(),
                    delegate: "say".into(),
                    payload: json("\"hello\""),
                    ..Default::default()
                }),
                timeout_ms: 20_000,
            })
            .await
    });
    let pb::fabric_message::Kind::Assignment(a) = next_kind(&mut inbound).await else {
        panic!("no assignment")
    };
    let e = a.execution.unwrap();
    assert_eq!((e.agent.as_str(), e.delegate.as_str(), e.attempts), ("echo", "say", 1));
    assert_eq!(e.payload.unwrap().data, b"\"hello\"");
    tx.send(pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Complete(pb::Completion {
            execution_id: e.id,
            token: a.token,
            outcome: Some(pb::completion::Outcome::Result(pb::Payload {
                codec: "json".into(),
                data: b"\"hello back\"".to_vec(),
            })),
            effects: vec![],
        })),
    })
    .await
    .unwrap();
    let pb::fabric_message::Kind::Completed(ack) = next_kind(&mut inbound).await else { panic!("no ack") };
    assert_eq!(ack.outcome, "accepted", "{ack:?}");
    let done = call.await.unwrap().expect("the call returns").into_inner();
    assert_eq!(done.status, "completed");
    assert_eq!(done.result.unwrap().data, b"\"hello back\"");

    tracing::info!("a second completion with the same token is recognised, a stale one refused");
    let mut completer = ExecutionsClient::new(channel(&cluster.addrs[leader as usize - 1]).await);
    let again = pb::Completion {
        execution_id: e.id,
        token: a.token,
        outcome: Some(pb::completion::Outcome::Result(pb::Payload {
            codec: "json".into(),
            data: b"1".to_vec(),
        })),
        effects: vec![],
    };
    assert_eq!(completer.complete(again.clone()).await.unwrap().into_inner().outcome, "repeated");
    let stale = pb::Completion { token: a.token + 1000, ..again };
    let ack = completer.complete(stale).await.unwrap().into_inner();
    assert_eq!(ack.outcome, "stale");
    assert!(ack.error.contains("already completed"), "{ack:?}");
    drop(tx);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_session_input_is_refused_with_a_clear_error() {
    init_tracing();
    let cluster = Cluster::start(1, |c| c.max_session_capacity = 100).await;
    let addr = cluster.addrs[0].clone();
    let heartbeat = pb::AgentMessage { kind: Some(pb::agent_message::Kind::Heartbeat(pb::Heartbeat {})) };
    let cases = [
        (heartbeat, tonic::Code::InvalidArgument, "first message of a session must be `open`"),
        (open_msg("echo", 0), tonic::Code::InvalidArgument, "capacity must be at least 1"),
        (open_msg("echo", 101), tonic::Code::InvalidArgument, "max_session_capacity"),
        (open_msg("not valid!", 1), tonic::Code::InvalidArgument, "invalid agent name"),
    ];
    for (open, code, needle) in cases {
        let err = match listen(&addr, open).await {
            Err(status) => status,
            Ok((_tx, mut inbound)) => inbound.message().await.expect_err("refused"),
        };
        assert_eq!(err.code(), code, "{err:?}");
        assert!(err.message().contains(needle), "{:?} should mention {needle:?}", err.message());
    }
    let sessions = cluster.node(1).applied().read(|a| a.grid.sessions().count());
    assert_eq!(sessions, 0, "no session was opened");

    let mut client = ExecutionsClient::new(channel(&addr).await);
    let bad = client
        .create(pb::CreateExecutionRequest {
            agent: "echo".into(),
            delegate: "say".into(),
            payload: Some(pb::Payload { codec: "yaml".into(), data: b"a: 1".to_vec() }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("unknown codec 'yaml'"), "{bad:?}");
    let missing = client.get(pb::GetExecutionRequest { id: 77, consistency: 0 }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    let _ = Duration::ZERO;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_session_claiming_a_busy_instance_is_refused() {
    init_tracing();
    let cluster = Cluster::start(1, |_| {}).await;
    let addr = cluster.addrs[0].clone();
    let claiming = |instance: &str| pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Open(pb::OpenSession {
            agents: vec![pb::AgentSpec {
                name: "counter".into(),
                delegates: vec![],
                concurrent_instances: false,
            }],
            capacity: 1,
            claims: vec![pb::InstanceRef { agent: "counter".into(), instance: instance.into() }],
            lease_ms: 0,
            name: "claimer".into(),
            only_claimed: false,
        })),
    };
    tracing::info!("claiming an instance that does not exist is refused");
    let err = match listen(&addr, claiming("c1")).await {
        Err(status) => status,
        Ok((_tx, mut inbound)) => inbound.message().await.expect_err("refused"),
    };
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    tracing::info!("start c1; a first session claims it and answers its Start");
    let mut instances = weft_proto::fabric::v1::instances_client::InstancesClient::new(channel(&addr).await);
    let start = tokio::spawn(async move {
        instances
            .start(pb::StartInstanceRequest {
                agent: "counter".into(),
                instance: "c1".into(),
                payload: json("0"),
                timeout_ms: 20_000,
                ..Default::default()
            })
            .await
    });
    let deadline = std::time::Instant::now() + PATIENCE;
    while cluster.node(1).applied().read(|a| a.grid.instance("counter", "c1").is_none()) {
        assert!(std::time::Instant::now() < deadline, "the instance was not created");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (tx, mut inbound) = listen(&addr, claiming("c1")).await.unwrap();
    let pb::fabric_message::Kind::Opened(first) = next_kind(&mut inbound).await else { panic!("not opened") };
    let pb::fabric_message::Kind::Assignment(a) = next_kind(&mut inbound).await else { panic!("no Start") };
    assert_eq!(a.execution.as_ref().unwrap().delegate, "Start");

    tracing::info!("a second session claiming c1 is refused and changes nothing");
    let err = match listen(&addr, claiming("c1")).await {
        Err(status) => status,
        Ok((_tx, mut inbound)) => inbound.message().await.expect_err("refused"),
    };
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains(&format!("served by session {}", first.session_id)), "{err:?}");
    let sessions = cluster.node(1).applied().read(|a| a.grid.sessions().count());
    assert_eq!(sessions, 1);

    tx.send(pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Complete(pb::Completion {
            execution_id: a.execution.unwrap().id,
            token: a.token,
            outcome: Some(pb::completion::Outcome::Result(pb::Payload {
                codec: "json".into(),
                data: b"0".to_vec(),
            })),
            effects: vec![],
        })),
    })
    .await
    .unwrap();
    let started = start.await.unwrap().expect("started").into_inner();
    assert_eq!(started.start.unwrap().status, "completed");
    drop(tx);
    cluster.shutdown().await;
}

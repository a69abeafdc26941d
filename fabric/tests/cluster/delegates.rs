//! What the connected sessions serve: `weft agents` lists them; a call of a delegate none of
//! them serves is refused at once unless the caller waits for one; an execution created
//! without a timeout gets the node's default one.

use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::executions_client::ExecutionsClient;

use crate::support::*;

/// A raw session of `agent` serving only `delegates`, named `name`.
fn open_serving(agent: &str, delegates: &[&str], name: &str) -> pb::AgentMessage {
    let mut open = open_msg(agent, 3);
    if let Some(pb::agent_message::Kind::Open(o)) = open.kind.as_mut() {
        o.agents[0].delegates = delegates.iter().map(|d| (*d).to_owned()).collect();
        o.name = name.into();
    }
    open
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_are_listed_and_an_unserved_delegate_is_refused_at_once() {
    init_tracing();
    let cluster = Cluster::start(3, |c| c.default_execution_timeout_ms = 2_000).await;
    let on = cluster.addrs[1].clone();
    let (_tx, mut inbound) =
        listen(&on, open_serving("img", &["crop", "thumb"], "img-worker-1")).await.unwrap();
    let pb::fabric_message::Kind::Opened(opened) = next_kind(&mut inbound).await else {
        panic!("not opened")
    };

    tracing::info!("weft agents shows the session, through another node");
    let other = &cluster.addrs[2];
    let (code, listed) = weft_json(other, &["agents"]).await;
    assert_eq!(code, 0, "{listed}");
    let sessions = listed["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1, "{listed}");
    let s = &sessions[0];
    assert_eq!(s["id"], opened.session_id);
    assert_eq!(s["name"], "img-worker-1");
    assert_eq!(s["node_id"], 2);
    assert_eq!(s["capacity"], 3);
    assert_eq!(s["in_flight"], 0);
    assert_eq!(s["agents"][0]["name"], "img");
    assert_eq!(s["agents"][0]["delegates"], serde_json::json!(["crop", "thumb"]));
    let (code, text, err) = weft(other, &["agents"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("img-worker-1") && text.contains("img(crop,thumb)"), "{text}");
    let (_, only_other) = weft_json(other, &["agents", "nobody"]).await;
    assert_eq!(only_other["sessions"], serde_json::json!([]), "filtered by agent");

    tracing::info!("a call of a delegate no connected session serves fails at once, naming theirs");
    let (code, out, err) = weft(other, &["call", "img", "rotate", "--timeout", "60s"]).await;
    assert_eq!(code, 1, "{out} {err}");
    assert!(err.contains("FailedPrecondition") && err.contains("serve: crop, thumb"), "{err}");
    assert!(err.contains("--wait-for-delegate"), "says how to wait: {err}");
    let mut client = ExecutionsClient::new(channel(other).await);
    let page =
        client.list(pb::ListExecutionsRequest { agent: "img".into(), ..Default::default() }).await.unwrap();
    assert!(page.into_inner().executions.is_empty(), "a refused call leaves no execution");

    tracing::info!("a caller that waits gets a pending execution, failed by the default timeout");
    let created = client
        .create(pb::CreateExecutionRequest {
            agent: "img".into(),
            delegate: "rotate".into(),
            payload: json("1"),
            wait_for_delegate: true,
            ..Default::default()
        })
        .await
        .expect("a waiting create is taken")
        .into_inner()
        .execution
        .unwrap();
    assert_eq!(created.status, "pending");
    assert_eq!(created.deadline_ms, Some(created.created_ms + 2_000), "the default timeout");
    let mut wait =
        client.wait(pb::WaitRequest { id: created.id, timeout_ms: 30_000 }).await.unwrap().into_inner();
    let mut last = None;
    while let Some(e) = wait.message().await.expect("wait stream") {
        last = Some(e);
    }
    let last = last.expect("the final state");
    assert_eq!(last.status, "failed");
    assert_eq!(last.error.as_ref().map(|e| e.kind.as_str()), Some("deadline"), "{last:?}");

    tracing::info!("a delayed call's default timeout counts from when it is due");
    let delayed = client
        .create(pb::CreateExecutionRequest {
            agent: "img".into(),
            delegate: "thumb".into(),
            payload: json("1"),
            delay_ms: Some(600_000),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .execution
        .unwrap();
    assert_eq!(delayed.deadline_ms, Some(delayed.created_ms + 600_000 + 2_000));

    tracing::info!("an explicit timeout wins over the default");
    let explicit = client
        .create(pb::CreateExecutionRequest {
            agent: "img".into(),
            delegate: "thumb".into(),
            payload: json("1"),
            timeout_ms: Some(600_000),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .execution
        .unwrap();
    assert_eq!(explicit.deadline_ms, Some(explicit.created_ms + 600_000));
}

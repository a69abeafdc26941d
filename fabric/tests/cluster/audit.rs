//! The audit trail on real nodes: a cancel through one node and a membership change are
//! recorded in `weft.audit` with who, what, when and the outcome, readable from any node;
//! callers cannot write to it.

use std::time::{Duration, Instant};

use weft_fabric::Node;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::executions_client::ExecutionsClient;

use crate::membership::gossip_config;
use crate::support::*;

/// The audit records (their JSON payloads) as `endpoint` reads them.
pub(crate) async fn records(endpoint: &str) -> Vec<serde_json::Value> {
    let (code, v) = weft_json(endpoint, &["streams", "read", "weft.audit"]).await;
    if code != 0 {
        return Vec::new();
    }
    v["items"].as_array().cloned().unwrap_or_default().into_iter().map(|i| i["payload"].clone()).collect()
}

async fn wait_for_record(
    endpoint: &str,
    what: &str,
    matches: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let all = records(endpoint).await;
        if let Some(r) = all.iter().find(|r| matches(r)) {
            return r.clone();
        }
        assert!(Instant::now() < deadline, "no audit record of {what} within {PATIENCE:?}: {all:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_operations_and_membership_changes_are_audited_and_the_trail_is_read_only() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let listeners = listeners(4).await;
    let addrs: Vec<String> = listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let expect = if i < 3 { 3 } else { 0 };
        let config = gossip_config(dir.path(), i as u64 + 1, &addrs[i], &addrs[0], expect);
        nodes.push(Node::start_on(config, listener).await.expect("node starts"));
    }

    tracing::info!("phase: node 4 joins as a learner, and the leader records the change");
    let added = wait_for_record(&addrs[2], "node 4 added", |r| {
        r["operation"] == "membership.add_learner" && r["target"] == format!("node 4 at {}", addrs[3])
    })
    .await;
    assert_eq!(added["principal"], "fabric");
    assert_eq!(added["outcome"], "ok");

    tracing::info!("phase: an execution cancelled through node 2 is recorded, read through node 3");
    let mut client = ExecutionsClient::new(channel(&addrs[0]).await);
    let created = client
        .create(pb::CreateExecutionRequest {
            agent: "nobody".into(),
            delegate: "work".into(),
            payload: json("1"),
            ..Default::default()
        })
        .await
        .expect("created")
        .into_inner();
    let id = created.execution.expect("the execution").id;
    let before =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let (code, out, err) = weft(&addrs[1], &["executions", "cancel", &id.to_string()]).await;
    assert_eq!(code, 0, "{out} {err}");
    let cancel = wait_for_record(&addrs[2], "the cancel", |r| {
        r["operation"] == "execution.cancel" && r["target"] == format!("execution {id}")
    })
    .await;
    assert_eq!(cancel["principal"], "anonymous", "tokens are off: {cancel}");
    assert_eq!(cancel["node"], 2, "the node that took the request: {cancel}");
    assert_eq!(cancel["outcome"], "ok");
    let at = cancel["at_ms"].as_u64().expect("at_ms");
    assert!(at + 5_000 >= before && at <= before + 60_000, "when: {at} vs {before}");

    tracing::info!("phase: a stop of an instance that does not exist is recorded with its error");
    let (code, _, err) = weft(&addrs[0], &["instances", "stop", "nobody", "i-404"]).await;
    assert_ne!(code, 0, "{err}");
    let stop = wait_for_record(&addrs[0], "the refused stop", |r| r["operation"] == "instance.stop").await;
    assert!(stop["outcome"].as_str().unwrap().contains("i-404"), "{stop}");

    tracing::info!("phase: callers cannot append to, close or delete the trail");
    let count = records(&addrs[0]).await.len();
    for args in [
        &["streams", "append", "weft.audit", "{\"forged\": true}"][..],
        &["streams", "delete", "weft.audit"][..],
        &["streams", "close", "weft.audit"][..],
        &["streams", "create", "weft.other"][..],
    ] {
        let (code, out, err) = weft(&addrs[1], args).await;
        assert_ne!(code, 0, "{args:?}: {out}");
        assert!(err.contains("belong to the fabric"), "{args:?}: {err}");
    }
    assert_eq!(records(&addrs[0]).await.len(), count, "nothing was written to the trail");
    for node in nodes {
        node.shutdown().await;
    }
}

//! How the `weft` command line reaches a cluster: a list of endpoints in `WEFT_ENDPOINT` or
//! `--endpoint` (the SDK's syntax), moving past nodes that do not answer and past nodes that
//! answer that they did not apply the request; an endpoint without a port refused; a request
//! that times out naming the endpoint it waited on; a node that has not joined a cluster
//! saying why it cannot serve.

use std::path::Path;

use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::executions_client::ExecutionsClient;
use weft_proto::wire;

use crate::cli_executions::Agent;
use crate::support::*;

/// A node whose only seed never answers, so it never joins a cluster: it waits
/// `request_timeout_ms` (1 s) for a leader, then answers a write or a linearizable read
/// UNAVAILABLE, not applied. Returns it and its address.
async fn unformed_node(dir: &Path) -> (weft_fabric::Node, String) {
    let listener = listeners(1).await.into_iter().next().unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config = weft_fabric::Config {
        node_id: 1,
        cluster: "unformed".into(),
        data_dir: dir.join("unformed-1"),
        listen: addr.clone(),
        seeds: format!("127.0.0.1:{}", free_port()),
        bootstrap_expect: 3,
        gossip_preset: "test".into(),
        request_timeout_ms: 1_000,
        ..weft_fabric::Config::default()
    };
    (weft_fabric::Node::start_on(config, listener).await.unwrap(), addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_endpoints_moves_past_dead_nodes_and_a_missing_port_is_refused() {
    init_tracing();
    let c = Cluster::start(1, |_| {}).await;
    let live = c.endpoints()[0].clone();
    let dead = format!("127.0.0.1:{}", free_port());

    tracing::info!("phase: WEFT_ENDPOINT lists a dead node first, as the SDK's would");
    let list = format!("{dead}, {live}");
    let (code, out, err) = weft(&list, &["state", "put", "shared/ep", "k", "v1"]).await;
    assert_eq!((code, out.trim()), (0, "ok: version 1"), "{err}");

    tracing::info!("phase: --endpoint takes the same list");
    let (code, out, err) = weft("", &["state", "get", "shared/ep", "k", "--endpoint", &list]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("k = v1"), "{out}");

    tracing::info!("phase: no node of the list answers: each is named");
    let other_dead = format!("127.0.0.1:{}", free_port());
    let (code, _, err) = weft(&format!("{dead},{other_dead}"), &["state", "get", "shared/ep", "k"]).await;
    assert_eq!(code, 1);
    assert!(err.contains(&format!("{dead}: ")) && err.contains(&format!("{other_dead}: ")), "{err}");

    tracing::info!("phase: an endpoint without a port is refused, nothing sent");
    for endpoint in ["127.0.0.1".to_owned(), format!("{live},127.0.0.1")] {
        let (code, _, err) = weft(&endpoint, &["state", "put", "shared/ep", "k", "v2"]).await;
        assert_eq!(code, 1, "{endpoint}");
        assert!(err.contains("'127.0.0.1' has no port") && err.contains("add the node's port"), "{err}");
    }
    let (_, out, _) = weft(&live, &["state", "get", "shared/ep", "k"]).await;
    assert!(out.starts_with("k = v1"), "unchanged: {out}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_times_out_names_the_endpoint() {
    init_tracing();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    // Holds every connection open, reading nothing and answering nothing.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let ((code, _, err), (json_code, out, _)) = tokio::join!(
        weft(&addr, &["state", "get", "shared/t", "k"]),
        weft(&addr, &["state", "get", "shared/t", "k", "--json"]),
    );
    assert_eq!((code, json_code), (1, 1));
    assert!(err.contains(&addr), "the error names the endpoint it waited on: {err}");
    assert!(out.contains(&addr), "and so does --json: {out}");
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unformed_node_says_why_it_has_no_leader() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (node, addr) = unformed_node(dir.path()).await;
    // Past the first seed round, so the join state is "waiting for seeds to answer".
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let (code, _, err) = weft(&addr, &["state", "put", "shared/u", "k", "v"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("has not joined a cluster yet") && err.contains("waiting for seeds"),
        "the error says why: {err}"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_moves_past_a_node_that_did_not_apply_the_request() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (unformed, first) = unformed_node(dir.path()).await;
    let c = Cluster::start(1, |_| {}).await;
    let live = c.endpoints()[0].clone();
    let _echo = Agent::serve(&live, "echo").await;

    tracing::info!("phase: the first node of the list answers UNAVAILABLE, not applied");
    let put = client(&first).await.put(put_req("shared/na", "k", "v0")).await.unwrap_err();
    assert_eq!(put.code(), tonic::Code::Unavailable, "{put:?}");
    assert!(wire::is_not_applied(&put), "{put:?}");
    let create = pb::CreateExecutionRequest {
        agent: "echo".into(),
        delegate: "say".into(),
        payload: json("1"),
        ..Default::default()
    };
    let call = ExecutionsClient::new(channel(&first).await)
        .call(pb::CallRequest { create: Some(create), timeout_ms: 5_000 })
        .await
        .unwrap_err();
    assert!(call.code() == tonic::Code::Unavailable && wire::is_not_applied(&call), "{call:?}");

    tracing::info!("phase: put, get and call through the list are taken by the second node");
    let list = format!("{first},{live}");
    let (code, out, err) = weft(&list, &["state", "put", "shared/na", "k", "v1"]).await;
    assert_eq!((code, out.trim()), (0, "ok: version 1"), "applied once: {err}");
    let (code, out, err) = weft("", &["state", "get", "shared/na", "k", "--endpoint", &list]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("k = v1"), "{out}");
    let (code, out, err) = weft(&list, &["call", "echo", "say", "\"hi\""]).await;
    assert_eq!((code, out.as_str()), (0, "\"hi\"\n"), "{err}");

    tracing::info!("phase: a follow's Listen moves on as well");
    let (code, _, err) = weft(&list, &["streams", "create", "na-orders"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = weft(&list, &["streams", "append", "na-orders", r#"{"id": 1}"#]).await;
    assert_eq!(code, 0, "{err}");
    let mut tail = WeftProcess::spawn(&list, &["streams", "tail", "na-orders", "--follow", "--json"]);
    let item = tail.next_json().await;
    assert_eq!(item["payload"], serde_json::json!({"id": 1}), "{item}");
    let (code, _, err) = weft(&list, &["streams", "close", "na-orders"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, rest, err) = tail.finish().await;
    assert_eq!(code, 0, "the follow ends with the stream: {rest:?} {err}");

    unformed.shutdown().await;
    c.shutdown().await;
}

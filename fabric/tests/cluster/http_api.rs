//! The HTTP/JSON API over real sockets: each group of routes against a 3-node cluster, errors
//! with the same codes and messages as gRPC, bad input refused with 4xx JSON and nothing
//! changed, the live tail, and the OpenAPI document covering what is served.

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::state_client::StateClient;
use weft_proto::fabric::v1::streams_client::StreamsClient;

use crate::support::*;

/// An HTTP answer: status, headers (lower-case names), body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request with `Connection: close`; the whole answer.
pub(crate) async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).await.unwrap();
    // The node may answer (413 for an oversized body) and close before it has read all of
    // the body: the write then fails with a broken pipe or a reset, and the answer is still
    // there to read (and what a reset cut short fails `a head` below).
    let _ = stream.write_all(body).await;
    let mut raw = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw)).await.expect("an answer in time");
    if let Err(e) = read {
        tracing::debug!(error = %e, bytes = raw.len(), "the node closed the connection; reading what came");
    }
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked")) {
        body = dechunk(&body);
    }
    Answer { status, headers, body }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&raw[end + 2..end + 2 + size]);
        raw = &raw[end + 2 + size + 2..];
    }
    out
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

async fn get(addr: &str, path: &str) -> Answer {
    http(addr, "GET", path, &[], b"").await
}

async fn post_json(addr: &str, path: &str, body: &Value) -> Answer {
    http(addr, "POST", path, &[JSON], body.to_string().as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn state_cluster_and_errors_through_a_follower() {
    init_tracing();
    let cluster = Cluster::start(3, |_| {}).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.addrs[(1..=3).find(|i| *i != leader).unwrap() as usize - 1].clone();

    let status = get(&follower, "/v1/cluster").await;
    assert_eq!(status.status, 200);
    assert_eq!(status.header("content-type"), Some("application/json"));
    let c = status.json();
    assert_eq!(c["leader_id"], leader);
    assert_eq!(c["members"].as_array().unwrap().len(), 3, "{c}");
    let members = get(&follower, "/v1/cluster/members").await.json();
    assert_eq!(members["members"].as_array().unwrap().len(), 3, "{members}");

    tracing::info!("state: put, get, list, compare-and-set, delete");
    let put = http(&follower, "PUT", "/v1/state/shared/app/greeting", &[], b"\"hello\"").await;
    assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));
    let version = put.json()["version"].as_u64().unwrap();
    let got = get(&follower, "/v1/state/shared/app/greeting").await.json();
    assert_eq!((got["value"].as_str(), got["version"].as_u64()), (Some("\"hello\""), Some(version)));
    assert_eq!(get(&follower, "/v1/state/shared/app/greeting").await.json()["key"], "greeting");
    // The same key through gRPC: one grid.
    let mut grpc = StateClient::new(channel(&follower).await);
    let entry = grpc.get(get_req("shared/app", "greeting")).await.unwrap().into_inner().entry.unwrap();
    assert_eq!(entry.value, b"\"hello\"");
    http(&follower, "PUT", "/v1/state/shared/app/other", &[], b"1").await;
    let listed = get(&follower, "/v1/state/shared/app?keys_only=true").await.json();
    let keys: Vec<&str> =
        listed["entries"].as_array().unwrap().iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["greeting", "other"]);
    assert_eq!(listed["entries"][0]["value"], Value::Null, "keys only");
    let stale = http(&follower, "PUT", "/v1/state/shared/app/greeting?expected_version=999", &[], b"2").await;
    assert_eq!(stale.status, 400);
    assert_eq!(stale.json()["error"]["code"], "FAILED_PRECONDITION");
    let cas = http(
        &follower,
        "PUT",
        &format!("/v1/state/shared/app/greeting?expected_version={version}"),
        &[],
        b"2",
    )
    .await;
    assert_eq!(cas.status, 200);
    let absent = http(&follower, "PUT", "/v1/state/shared/app/greeting?if_absent=true", &[], b"3").await;
    assert_eq!((absent.status, absent.json()["error"]["code"].as_str()), (409, Some("ALREADY_EXISTS")));
    let deleted = http(&follower, "DELETE", "/v1/state/shared/app/other", &[], b"").await.json();
    assert_eq!(deleted["deleted"], true);
    let gone = get(&follower, "/v1/state/shared/app/other").await;
    assert_eq!((gone.status, gone.json()["error"]["code"].as_str()), (404, Some("NOT_FOUND")));

    tracing::info!("errors carry gRPC's code and message");
    let bad_key = "k".repeat(2000);
    let http_err = get(&follower, &format!("/v1/state/shared/app/{bad_key}")).await;
    let grpc_err = grpc.get(get_req("shared/app", &bad_key)).await.unwrap_err();
    assert_eq!(http_err.status, 400);
    assert_eq!(http_err.json()["error"]["code"], "INVALID_ARGUMENT");
    assert_eq!(http_err.json()["error"]["message"], grpc_err.message(), "the same message as gRPC");
    let bad_ns = get(&follower, "/v1/state/instance/nobody/none/k").await;
    assert!(bad_ns.status >= 400 && bad_ns.status < 500, "{}", bad_ns.status);

    tracing::info!("bad input: 4xx JSON, nothing changed");
    let before = get(&follower, "/v1/executions").await.json();
    for (what, answer, status) in [
        ("malformed JSON", http(&follower, "POST", "/v1/executions", &[JSON], b"{bad").await, 400),
        (
            "wrong content type",
            http(&follower, "POST", "/v1/executions", &[("Content-Type", "text/plain")], b"{}").await,
            415,
        ),
        ("missing field", post_json(&follower, "/v1/executions", &json!({"agent": "a"})).await, 400),
        (
            "unknown field",
            post_json(&follower, "/v1/executions", &json!({"agent": "a", "delegate": "d", "nope": 1})).await,
            400,
        ),
        (
            "empty agent",
            post_json(&follower, "/v1/executions", &json!({"agent": "", "delegate": "d"})).await,
            400,
        ),
        ("oversized body", http(&follower, "POST", "/v1/call/a/d", &[JSON], &vec![b' '; 9 << 20]).await, 413),
        (
            "oversized value",
            http(&follower, "PUT", "/v1/state/shared/app/big", &[], &vec![b'x'; 9 << 20]).await,
            413,
        ),
        ("bad query", get(&follower, "/v1/executions?limit=many").await, 400),
        ("bad path", get(&follower, "/v1/executions/not-a-number").await, 400),
        ("unknown path", get(&follower, "/v1/nothing/here").await, 404),
        ("wrong method", http(&follower, "PATCH", "/v1/cluster", &[], b"").await, 405),
    ] {
        assert_eq!(answer.status, status, "{what}: {}", String::from_utf8_lossy(&answer.body));
        let body = answer.json();
        assert!(body["error"]["code"].is_string() && body["error"]["message"].is_string(), "{what}: {body}");
    }
    assert_eq!(get(&follower, "/v1/executions").await.json(), before, "nothing was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn executions_calls_and_sessions_over_http() {
    init_tracing();
    let cluster = Cluster::start(3, |_| {}).await;
    let addr = cluster.addrs[2].clone();
    let (tx, mut inbound) = listen(&cluster.addrs[0], open_msg("echo", 4)).await.unwrap();
    let pb::fabric_message::Kind::Opened(opened) = next_kind(&mut inbound).await else {
        panic!("not opened")
    };

    let sessions = get(&addr, "/v1/sessions?agent=echo").await.json();
    assert_eq!(sessions["sessions"][0]["id"], opened.session_id, "{sessions}");
    assert_eq!(sessions["sessions"][0]["agents"][0]["all_delegates"], true);

    tracing::info!("a call: the JSON body reaches the agent as the JSON codec, the result comes back");
    let call = {
        let addr = addr.clone();
        tokio::spawn(async move {
            post_json(&addr, "/v1/call/echo/say?timeout_ms=20000", &json!({"n": [1, 2]})).await
        })
    };
    let pb::fabric_message::Kind::Assignment(a) = next_kind(&mut inbound).await else {
        panic!("no assignment")
    };
    let e = a.execution.unwrap();
    let payload = e.payload.unwrap();
    assert_eq!(payload.codec, "json");
    assert_eq!(serde_json::from_slice::<Value>(&payload.data).unwrap(), json!({"n": [1, 2]}));
    tx.send(pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Complete(pb::Completion {
            execution_id: e.id,
            token: a.token,
            outcome: Some(pb::completion::Outcome::Result(pb::Payload {
                codec: "json".into(),
                data: br#"{"echoed": true}"#.to_vec(),
            })),
            effects: vec![],
        })),
    })
    .await
    .unwrap();
    let answer = call.await.unwrap();
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    let done = answer.json();
    assert_eq!(
        (done["status"].as_str(), done["result"].clone()),
        (Some("completed"), json!({"echoed": true}))
    );
    assert_eq!(done["args"], json!({"n": [1, 2]}));

    tracing::info!("create with an idempotency key: 201, then 200 with the same execution");
    let create = json!({"agent": "later", "delegate": "run", "args": "x", "delay_ms": 600000});
    let key = ("Idempotency-Key", "order-1");
    let first = http(&addr, "POST", "/v1/executions", &[JSON, key], create.to_string().as_bytes()).await;
    assert_eq!(first.status, 201, "{}", String::from_utf8_lossy(&first.body));
    let second = http(&addr, "POST", "/v1/executions", &[JSON, key], create.to_string().as_bytes()).await;
    assert_eq!(second.status, 200);
    let (a, b) = (first.json(), second.json());
    assert_eq!((a["created"].as_bool(), b["created"].as_bool()), (Some(true), Some(false)));
    let id = a["execution"]["id"].as_u64().unwrap();
    assert_eq!(b["execution"]["id"], id);
    assert!(a["execution"]["not_before_ms"].as_u64().is_some(), "delayed: shows when it runs");

    let listed = get(&addr, "/v1/executions?agent=later&status=pending").await.json();
    assert_eq!(listed["executions"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(get(&addr, &format!("/v1/executions/{id}")).await.json()["status"], "pending");
    let waited = get(&addr, &format!("/v1/executions/{id}/wait?timeout_ms=300")).await;
    assert_eq!(
        (waited.status, waited.json()["status"].as_str()),
        (202, Some("pending")),
        "still running: 202"
    );
    let cancelled =
        post_json(&addr, &format!("/v1/executions/{id}/cancel"), &json!({"reason": "test"})).await;
    assert_eq!(cancelled.json()["cancelled"], 1);
    let waited = get(&addr, &format!("/v1/executions/{id}/wait")).await;
    assert_eq!(waited.status, 200);
    assert_eq!(waited.json()["error"]["kind"], "cancelled");
    let missing = get(&addr, "/v1/executions/999999").await;
    assert_eq!((missing.status, missing.json()["error"]["code"].as_str()), (404, Some("NOT_FOUND")));

    tracing::info!("a call still running when its wait ends: 202 with the execution");
    let slow = post_json(&addr, "/v1/call/nobody/run?timeout_ms=200", &json!(null)).await;
    assert_eq!((slow.status, slow.json()["status"].as_str()), (202, Some("pending")));
    let unserved = post_json(&addr, "/v1/call/echo/other?timeout_ms=200", &json!(null)).await;
    assert_eq!(unserved.status, 202, "echo serves every delegate: it is assigned and waits");

    let instances = get(&addr, "/v1/instances").await;
    assert_eq!((instances.status, instances.json()["instances"].clone()), (200, json!([])));
    let none = get(&addr, "/v1/instances/echo/i1").await;
    assert_eq!(none.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_append_read_and_tail_live() {
    init_tracing();
    let cluster = Cluster::start(1, |_| {}).await;
    let addr = cluster.addrs[0].clone();
    let mut streams = StreamsClient::new(channel(&addr).await);
    streams
        .create(pb::CreateStreamRequest {
            name: "orders".into(),
            kind: pb::StreamKind::Persistent as i32,
            limits: None,
            generator: None,
        })
        .await
        .unwrap();
    let appended = post_json(
        &addr,
        "/v1/streams/orders/items",
        &json!({"items": [{"key": "eu.fr", "payload": {"id": 1}}]}),
    )
    .await;
    assert_eq!(appended.status, 200, "{}", String::from_utf8_lossy(&appended.body));
    assert_eq!(appended.json()["first_seq"], 1);

    tracing::info!("a live tail from seq 1 gets the stored item, then one appended after it opened");
    let mut tail = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tail.write_all(
        format!("GET /v1/streams/orders/tail?from_seq=1 HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut lines = BufReader::new(tail).lines();
    let mut data = Vec::new();
    let read = async {
        while data.len() < 2 {
            let line = lines.next_line().await.unwrap().expect("the tail stays open");
            if let Some(d) = line.strip_prefix("data: ") {
                data.push(serde_json::from_str::<Value>(d).unwrap());
                if data.len() == 1 {
                    let more = json!({"items": [{"payload": {"id": 2}, "headers": {"h": "v"}}]});
                    assert_eq!(post_json(&addr, "/v1/streams/orders/items", &more).await.status, 200);
                }
            }
        }
    };
    tokio::time::timeout(PATIENCE, read).await.expect("two items within the patience");
    assert_eq!((data[0]["seq"].as_u64(), data[0]["payload"].clone()), (Some(1), json!({"id": 1})));
    assert_eq!((data[1]["seq"].as_u64(), data[1]["payload"].clone()), (Some(2), json!({"id": 2})));
    assert_eq!(data[1]["headers"]["h"], "v");

    let page = get(&addr, "/v1/streams/orders/items?from_seq=2").await.json();
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    let list = get(&addr, "/v1/streams").await.json();
    assert_eq!(list["streams"][0]["last_seq"], 2);
    let missing = post_json(&addr, "/v1/streams/none/items", &json!({"items": [{"payload": 1}]})).await;
    assert_eq!(missing.status, 404, "{}", String::from_utf8_lossy(&missing.body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_covers_every_route() {
    let cluster = Cluster::start(1, |_| {}).await;
    let doc = get(&cluster.addrs[0], "/openapi.json").await;
    assert_eq!(doc.status, 200);
    let doc = doc.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    for (path, methods) in [
        ("/v1/cluster", &["get"][..]),
        ("/v1/cluster/members", &["get"]),
        ("/v1/sessions", &["get"]),
        ("/v1/executions", &["get", "post"]),
        ("/v1/executions/{id}", &["get"]),
        ("/v1/executions/{id}/wait", &["get"]),
        ("/v1/executions/{id}/cancel", &["post"]),
        ("/v1/call/{agent}/{delegate}", &["post"]),
        ("/v1/instances", &["get"]),
        ("/v1/instances/{agent}/{id}", &["get", "post", "delete"]),
        ("/v1/state/shared/{name}", &["get"]),
        ("/v1/state/shared/{name}/{key}", &["get", "put", "delete"]),
        ("/v1/state/instance/{agent}/{instance}", &["get"]),
        ("/v1/state/instance/{agent}/{instance}/{key}", &["get", "put", "delete"]),
        ("/v1/streams", &["get"]),
        ("/v1/streams/{name}/items", &["get", "post"]),
        ("/v1/streams/{name}/tail", &["get"]),
        ("/v1/tokens", &["get", "post"]),
        ("/v1/tokens/{id}", &["delete"]),
    ] {
        for method in methods {
            assert!(
                paths.get(path).and_then(|p| p.get(*method)).is_some(),
                "{method} {path} is not documented"
            );
        }
    }
    // The token routes, like every operation, document the bearer scheme and its refusals.
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    for (path, method) in [("/v1/tokens", "get"), ("/v1/tokens", "post"), ("/v1/tokens/{id}", "delete")] {
        let responses = &paths[path][method]["responses"];
        for code in ["400", "401", "403"] {
            assert!(responses.get(code).is_some(), "{method} {path} does not document {code}: {responses}");
        }
    }
    assert!(paths["/v1/tokens/{id}"]["delete"]["responses"].get("404").is_some());
    assert!(paths["/v1/tokens"]["post"]["responses"].get("201").is_some());
    let expires = &doc["components"]["schemas"]["CreateToken"]["properties"]["expires_in_ms"];
    assert_eq!(
        expires["maximum"].as_f64(),
        Some(weft_fabric::grid::token::MAX_EXPIRES_IN_MS as f64),
        "the documented bound is the grid's: {expires}"
    );
    assert_eq!(paths.len(), 19, "a documented path the test does not know: {:?}", paths.keys());
    // Every documented operation is served: none answers 404 "no such path".
    for path in paths.keys() {
        let concrete = path.replace("{id}", "1").replace('{', "x").replace('}', "");
        let answer = get(&cluster.addrs[0], &concrete).await;
        let unknown = answer.status == 404
            && answer.json()["error"]["message"].as_str().is_some_and(|m| m.starts_with("no such path"));
        assert!(!unknown, "{path} is documented but not served");
    }
}

//! The dashboard's server side without a browser: the embedded page and its headers, the
//! snapshot JSON, the SSE stream (live, bounded, ended by shutdown), bad queries.
//! `dashboard_browser.rs` drives the page itself in Chromium.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use weft_agent::{Agent, Client, Codec, Context, Worker};

use crate::support::*;

/// Most dashboard event streams a node serves (`dashboard::MAX_EVENT_STREAMS`).
const MAX_EVENT_STREAMS: usize = 16;

/// An HTTP response: status, headers (lower-case names), body.
pub struct Response {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.0 request (the server closes the connection after the body, so no chunking).
pub async fn http(addr: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut stream = TcpStream::connect(addr).await.expect("connect to the node's HTTP port");
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        request += &format!("{k}: {v}\r\n");
    }
    stream.write_all((request + "\r\n").as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw)).await.expect("a response in time").unwrap();
    let raw = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    parse_head(head, body.to_owned())
}

fn parse_head(head: &str, body: String) -> Response {
    let mut lines = head.lines();
    let status =
        lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Response { status, headers, body }
}

/// A `/v1/dashboard/events` stream, read as it comes.
pub struct Events {
    reader: BufReader<TcpStream>,
    pub status: u16,
    pub headers: HashMap<String, String>,
}

impl Events {
    pub async fn open(addr: &str, query: &str) -> Self {
        Self::open_with(addr, &format!("/v1/dashboard/events{query}"), &[]).await
    }

    /// Any Server-Sent Events route (`path` with its query), with extra `headers`.
    pub async fn open_with(addr: &str, path: &str, headers: &[(&str, &str)]) -> Self {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            request += &format!("{k}: {v}\r\n");
        }
        stream.write_all((request + "\r\n").as_bytes()).await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(PATIENCE, reader.read_line(&mut line))
                .await
                .expect("head in time")
                .unwrap();
            if n == 0 || line == "\r\n" {
                break;
            }
            head += &line;
        }
        let r = parse_head(&head, String::new());
        Self { reader, status: r.status, headers: r.headers }
    }

    /// The next event's (name, data), or None at the end of the stream.
    pub async fn next(&mut self, within: Duration) -> Option<(String, String)> {
        let (mut name, mut data) = (String::new(), String::new());
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(within, self.reader.read_line(&mut line))
                .await
                .expect("an event or the end in time")
                .ok()?;
            if n == 0 {
                return None;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if !data.is_empty() {
                    return Some((name, data));
                }
                continue;
            }
            if let Some(v) = line.strip_prefix("event:") {
                name = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data += v.strip_prefix(' ').unwrap_or(v);
            }
        }
    }

    /// Reads snapshots until one satisfies `ok`; panics naming `what` after `PATIENCE`.
    pub async fn until(&mut self, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + PATIENCE;
        let mut last = serde_json::Value::Null;
        while Instant::now() < deadline {
            let Some((name, data)) = self.next(deadline - Instant::now()).await else { break };
            assert_eq!(name, "snapshot");
            last = serde_json::from_str(&data).expect("a snapshot is JSON");
            if ok(&last) {
                return last;
            }
        }
        panic!("{what}: not seen within {PATIENCE:?}; last snapshot: {last}")
    }
}

/// A worker serving agent `echo` on `endpoints`: delegate `say` returns its arguments, `wait`
/// runs until its execution is cancelled.
pub fn echo_worker(endpoints: Vec<String>) -> (weft_agent::Stopper, tokio::task::JoinHandle<()>) {
    let agent = Agent::new("echo")
        .delegate("say", |_ctx: Context, args: serde_json::Value| async move { Ok::<_, String>(args) })
        .delegate("wait", |ctx: Context, _args: serde_json::Value| async move {
            ctx.cancelled().await;
            Err::<serde_json::Value, _>("cancelled".to_owned())
        });
    let worker =
        Worker::builder(endpoints).agent(agent).name("echo-worker").capacity(4).build().expect("worker");
    let stopper = worker.stopper();
    let task = tokio::spawn(async move {
        let _ = worker.run().await;
    });
    (stopper, task)
}

/// A client that sends JSON, as the CLI and HTTP callers do.
pub fn json_client(endpoints: Vec<String>) -> Client {
    Client::builder(endpoints).codec(Codec::Json).build().expect("client")
}

fn execution<'a>(snapshot: &'a serde_json::Value, delegate: &str) -> Option<&'a serde_json::Value> {
    snapshot["executions"].as_array()?.iter().find(|e| e["delegate"] == delegate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_and_its_snapshots_show_the_cluster_live() {
    init_tracing();
    let mut cluster = Cluster::start(3, |_| {}).await;
    let leader = cluster.wait_for_leader().await;
    let on = if leader == 2 { 3 } else { 2 };
    let addr = cluster.addrs[on as usize - 1].clone();

    tracing::info!("the page and its assets, with their types and cache headers");
    let root = http(&addr, "/", &[]).await;
    assert_eq!((root.status, root.headers.get("location").map(String::as_str)), (307, Some("/ui/")));
    let page = http(&addr, "/ui/", &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(page.headers["cache-control"], "no-cache");
    assert!(page.headers["content-security-policy"].contains("script-src 'self'"), "{:?}", page.headers);
    assert!(page.body.contains(r#"<script src="app.js""#), "{}", page.body);
    let js = http(&addr, "/ui/app.js", &[]).await;
    assert_eq!((js.status, js.headers["content-type"].as_str()), (200, "text/javascript; charset=utf-8"));
    for sink in [".innerHTML", ".outerHTML", "insertAdjacentHTML", "document.write"] {
        assert!(!js.body.contains(sink), "the page never parses data as markup: {sink}");
    }
    let css = http(&addr, "/ui/app.css", &[]).await;
    assert_eq!((css.status, css.headers["content-type"].as_str()), (200, "text/css; charset=utf-8"));
    let etag = js.headers["etag"].clone();
    let again = http(&addr, "/ui/app.js", &[("If-None-Match", &etag)]).await;
    assert_eq!((again.status, again.body.as_str()), (304, ""), "an unchanged asset is not sent again");

    tracing::info!("a snapshot lists the three members and the leader");
    let deadline = Instant::now() + PATIENCE;
    let snapshot = loop {
        let s = http(&addr, "/v1/dashboard/snapshot", &[]).await;
        assert_eq!((s.status, s.headers["content-type"].as_str()), (200, "application/json"), "{}", s.body);
        let s = s.json();
        let members = s["members"].as_array().unwrap();
        if members.len() == 3 && members.iter().all(|m| m["gossip"] == "alive" && m["reachable"] == true) {
            break s;
        }
        assert!(Instant::now() < deadline, "three alive members not seen: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(snapshot["node_id"], on);
    assert_eq!(snapshot["leader_id"], leader);
    let roles: Vec<&str> =
        snapshot["members"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles.iter().filter(|r| **r == "leader").count(), 1, "{roles:?}");

    tracing::info!("bad queries get JSON errors that say what is wrong");
    let bad = http(&addr, "/v1/dashboard/snapshot?status=done", &[]).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["code"], "INVALID_ARGUMENT");
    assert!(
        bad.json()["error"]["message"].as_str().unwrap().contains("unknown status 'done'"),
        "{}",
        bad.body
    );
    let bad = http(&addr, "/v1/dashboard/events?limit=100000", &[]).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("limit must be 1 to 200"), "{}", bad.body);
    let bad = http(&addr, "/v1/dashboard/executions/abc", &[]).await;
    assert_eq!((bad.status, bad.json()["error"]["code"].as_str()), (400, Some("INVALID_ARGUMENT")));
    let missing = http(&addr, "/v1/dashboard/executions/987654321", &[]).await;
    assert_eq!((missing.status, missing.json()["error"]["code"].as_str()), (404, Some("NOT_FOUND")));

    tracing::info!("the event stream sends a snapshot at once");
    let mut events = Events::open(&addr, "").await;
    assert_eq!(events.status, 200);
    assert_eq!(events.headers["content-type"], "text/event-stream");
    let first = events.until("a first snapshot", |_| true).await;
    assert_eq!(first["sessions"], serde_json::json!([]));

    tracing::info!("a worker connects and a call runs: the stream shows both, with no polling");
    let (stopper, worker) = echo_worker(cluster.endpoints());
    let seen = events
        .until("the echo session", |s| {
            s["sessions"].as_array().is_some_and(|l| l.iter().any(|x| x["name"] == "echo-worker"))
        })
        .await;
    let session = &seen["sessions"][0];
    assert_eq!(session["agents"][0]["name"], "echo");
    let delegates = session["agents"][0]["delegates"].as_array().unwrap();
    assert!(delegates.contains(&serde_json::json!("say")), "{session}");
    let client = json_client(cluster.endpoints());
    let args = serde_json::json!({"text": "hello <b>dashboard</b>"});
    let reply: serde_json::Value = client.call("echo", "say", &args).await.expect("the call completes");
    assert_eq!(reply, args);
    let done = events
        .until("the call completed", |s| execution(s, "say").is_some_and(|e| e["status"] == "completed"))
        .await;
    let e = execution(&done, "say").unwrap();
    assert_eq!(e["args"]["json"], args, "{e}");
    assert_eq!(e["result"]["json"], args, "{e}");
    assert_eq!(e["attempts"], 1);
    assert!(e["finished_ms"].as_u64().unwrap() >= e["created_ms"].as_u64().unwrap());
    let detail = http(&addr, &format!("/v1/dashboard/executions/{}", e["id"]), &[]).await.json();
    assert_eq!((detail["status"].as_str(), &detail["result"]["json"]), (Some("completed"), &args));

    tracing::info!("filters apply to the listed executions");
    let failed = http(&addr, "/v1/dashboard/snapshot?status=failed", &[]).await.json();
    assert_eq!(failed["executions"], serde_json::json!([]));
    assert_eq!(failed["filter"]["status"], "failed");
    let by_agent = http(&addr, "/v1/dashboard/snapshot?agent=echo&limit=1", &[]).await.json();
    assert_eq!(by_agent["executions"].as_array().unwrap().len(), 1);

    tracing::info!("at most {MAX_EVENT_STREAMS} streams per node: the next one gets 503 JSON");
    let mut more = Vec::new();
    for _ in 1..MAX_EVENT_STREAMS {
        let s = Events::open(&addr, "").await;
        assert_eq!(s.status, 200);
        more.push(s);
    }
    let refused = http(&addr, "/v1/dashboard/events", &[]).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.json()["error"]["code"], "UNAVAILABLE");
    assert!(refused.body.contains("already serves 16 dashboard event streams"), "{}", refused.body);
    drop(more);
    let deadline = Instant::now() + PATIENCE;
    // A closed stream frees its slot once the server sees the connection gone.
    while Events::open(&addr, "").await.status == 503 {
        assert!(Instant::now() < deadline, "closed streams did not free their slots");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    tracing::info!("another node's stop shows in the stream (gossip), and this node's stop ends it");
    let other = (1..=3).find(|id| *id != on && *id != leader).unwrap();
    cluster.stop(other).await;
    events
        .until("the stopped node not alive", |s| {
            s["members"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["id"] == other && m["gossip"] != "alive"))
        })
        .await;
    stopper.stop();
    let _ = tokio::time::timeout(PATIENCE, worker).await;
    cluster.stop(on).await;
    let ended =
        tokio::time::timeout(PATIENCE, async { while events.next(PATIENCE).await.is_some() {} }).await;
    assert!(ended.is_ok(), "the event stream did not end with the node");
    cluster.shutdown().await;
}

//! Streams over real nodes: appends and reads through any node, bad input, listeners on
//! cursors (competing, acks, redelivery), plain readers, end-of-stream and delete seen by
//! live listeners, and a listener that resumes on another node after its node is killed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::streams_client::StreamsClient;

use crate::support::*;

async fn streams(addr: &str) -> StreamsClient<Channel> {
    StreamsClient::new(channel(addr).await)
}

fn json(text: &str) -> Option<pb::Payload> {
    Some(pb::Payload { codec: "json".into(), data: text.as_bytes().to_vec() })
}

fn item(text: &str) -> pb::NewItem {
    pb::NewItem { key: String::new(), payload: json(&format!("\"{text}\"")), headers: vec![] }
}

fn text_of(item: &pb::Item) -> String {
    let data = &item.payload.as_ref().expect("a payload").data;
    serde_json::from_slice::<String>(data).expect("a JSON string")
}

fn append_req(stream: &str, items: Vec<pb::NewItem>) -> pb::AppendRequest {
    pb::AppendRequest { stream: stream.into(), items, ..Default::default() }
}

async fn create(
    addr: &str,
    name: &str,
    kind: pb::StreamKind,
    limits: Option<pb::StreamLimits>,
) -> pb::StreamInfo {
    let req = pb::CreateStreamRequest { name: name.into(), kind: kind as i32, limits, generator: None };
    streams(addr).await.create(req).await.expect("create").into_inner()
}

fn explicit(ack_wait_ms: u64) -> pb::CursorConfig {
    pb::CursorConfig { ack_wait_ms, ..Default::default() }
}

/// One `Listen` stream.
struct Listener {
    tx: mpsc::Sender<pb::ListenerMessage>,
    rx: Streaming<pb::StreamMessage>,
    started: pb::ListenerStarted,
}

/// What a listener is told, heartbeats aside.
#[derive(Debug)]
enum Heard {
    Item(pb::StreamItem),
    Acked(pb::AckResult),
    End(pb::StreamEnd),
}

impl Listener {
    async fn start(addr: &str, start: pb::StartListener) -> Result<Self, Status> {
        let (tx, rx) = mpsc::channel(64);
        tx.send(pb::ListenerMessage { kind: Some(pb::listener_message::Kind::Start(start)) }).await.unwrap();
        let outbound = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let mut rx = streams(addr).await.listen(outbound).await?.into_inner();
        let first = rx.message().await?.ok_or_else(|| Status::internal("ended before started"))?;
        let Some(pb::stream_message::Kind::Started(started)) = first.kind else {
            return Err(Status::internal(format!("expected started, got {first:?}")));
        };
        Ok(Self { tx, rx, started })
    }

    async fn on_cursor(
        addr: &str,
        stream: &str,
        cursor: &str,
        config: pb::CursorConfig,
        credit: u32,
    ) -> Self {
        let start = pb::StartListener {
            stream: stream.into(),
            cursor: cursor.into(),
            config: Some(config),
            credit,
            ..Default::default()
        };
        Self::start(addr, start).await.expect("listener starts")
    }

    /// The next message that is not a heartbeat, or why the stream failed; `None` when it
    /// ended or nothing came within `within`.
    async fn next(&mut self, within: Duration) -> Option<Result<Heard, Status>> {
        let until = Instant::now() + within;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let m = match tokio::time::timeout(left, self.rx.message()).await {
                Err(_) => return None,
                Ok(Err(status)) => return Some(Err(status)),
                Ok(Ok(None)) => return None,
                Ok(Ok(Some(m))) => m,
            };
            use pb::stream_message::Kind;
            return Some(Ok(match m.kind {
                Some(Kind::Item(i)) => Heard::Item(i),
                Some(Kind::Acked(a)) => Heard::Acked(a),
                Some(Kind::End(e)) => Heard::End(e),
                Some(Kind::Heartbeat(_)) | Some(Kind::Started(_)) | None => continue,
            }));
        }
    }

    async fn item(&mut self) -> pb::StreamItem {
        match self.next(PATIENCE).await {
            Some(Ok(Heard::Item(i))) => i,
            other => panic!("expected an item, got {other:?}"),
        }
    }

    async fn send(&self, kind: pb::listener_message::Kind) {
        let _ = self.tx.send(pb::ListenerMessage { kind: Some(kind) }).await;
    }

    async fn ack(&self, i: &pb::StreamItem) {
        let d = pb::Delivery { seq: i.item.as_ref().unwrap().seq, token: i.token };
        self.send(pb::listener_message::Kind::Ack(d)).await;
    }
}

async fn cursor_info(addr: &str, stream: &str, cursor: &str) -> pb::CursorInfo {
    let req = pb::CursorInfoRequest { stream: stream.into(), name: cursor.into(), consistency: 0 };
    streams(addr).await.cursor_info(req).await.expect("cursor info").into_inner()
}

/// Node addresses other than the leader's.
async fn followers(cluster: &Cluster) -> (u64, Vec<(u64, String)>) {
    let leader = cluster.wait_for_leader().await;
    let others = (1..=3u64)
        .filter(|id| *id != leader)
        .map(|id| (id, cluster.addrs[id as usize - 1].clone()))
        .collect();
    (leader, others)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_and_reads_through_any_node_and_bad_input_changes_nothing() {
    init_tracing();
    let cluster = Cluster::start(3, |_| {}).await;
    let (_, f) = followers(&cluster).await;
    let addr = &f[0].1;
    let mut s = streams(addr).await;

    tracing::info!("phase: create on a follower; single and batched appends get dense seqs");
    let limits = pb::StreamLimits { max_items: 5, discard: pb::Discard::New as i32, ..Default::default() };
    let info = create(addr, "orders", pb::StreamKind::Persistent, Some(limits)).await;
    assert_eq!((info.name.as_str(), info.first_seq, info.last_seq, info.items), ("orders", 1, 0, 0));
    let one = s.append(append_req("orders", vec![item("a")])).await.unwrap().into_inner();
    assert_eq!((one.first_seq, one.last_seq, one.duplicate), (1, 1, false));
    let mut keyed = item("b");
    keyed.key = "eu.de".into();
    keyed.headers = vec![pb::Header { name: "trace".into(), value: "x1".into() }];
    let batch = s.append(append_req("orders", vec![keyed, item("c")])).await.unwrap().into_inner();
    assert_eq!((batch.first_seq, batch.last_seq), (2, 3));

    tracing::info!("phase: reads: range, filter, last by key, info");
    let read = s
        .read(pb::ReadRequest { stream: "orders".into(), from_seq: 2, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.items.iter().map(text_of).collect::<Vec<_>>(), ["b", "c"]);
    assert_eq!(read.items[0].headers[0].value, "x1");
    let filtered = pb::ReadRequest { stream: "orders".into(), filter: "eu.*".into(), ..Default::default() };
    assert_eq!(s.read(filtered).await.unwrap().into_inner().items.len(), 1);
    let last = s
        .last_by_key(pb::LastByKeyRequest { stream: "orders".into(), key: "eu.de".into(), consistency: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(last.seq, 2);

    tracing::info!("phase: bad input gets a clear status and changes nothing");
    let expect = |r: Result<tonic::Response<pb::AppendResponse>, Status>, code: Code, says: &str| {
        let e = r.expect_err("refused");
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().contains(says), "'{}' should say '{says}'", e.message());
    };
    expect(s.append(append_req("nope", vec![item("x")])).await, Code::NotFound, "no stream 'nope'");
    expect(
        s.append(append_req("bad name", vec![item("x")])).await,
        Code::InvalidArgument,
        "invalid stream name",
    );
    let mut bad_key = item("x");
    bad_key.key = "a..b".into();
    expect(s.append(append_req("orders", vec![bad_key])).await, Code::InvalidArgument, "key 'a..b'");
    let huge = pb::NewItem { payload: json(&format!("\"{}\"", "x".repeat(2 << 20))), ..item("") };
    expect(s.append(append_req("orders", vec![huge])).await, Code::InvalidArgument, "max_item_bytes");
    let stale = pb::AppendRequest { expected_last_seq: Some(1), ..append_req("orders", vec![item("x")]) };
    expect(s.append(stale).await, Code::FailedPrecondition, "expected last seq 1");
    let gap = pb::AppendRequest {
        producer: Some(pb::Producer { id: "p".into(), epoch: 1, sequence: 2 }),
        ..append_req("orders", vec![item("x")])
    };
    expect(s.append(gap).await, Code::FailedPrecondition, "starts at sequence 1");
    expect(
        s.append(append_req("orders", vec![item("x"), item("y"), item("z")])).await,
        Code::ResourceExhausted,
        "max_items",
    );
    let info =
        s.info(pb::StreamInfoRequest { name: "orders".into(), consistency: 0 }).await.unwrap().into_inner();
    assert_eq!((info.last_seq, info.items), (3, 3), "nothing changed");

    tracing::info!("phase: an exactly-once producer's retry is stored once");
    let produce = |sequence| pb::AppendRequest {
        producer: Some(pb::Producer { id: "p".into(), epoch: 1, sequence }),
        ..append_req("orders", vec![item("p1")])
    };
    let first = s.append(produce(1)).await.unwrap().into_inner();
    let again = s.append(produce(1)).await.unwrap().into_inner();
    assert_eq!((again.first_seq, again.duplicate), (first.first_seq, true));

    tracing::info!("phase: closed streams take no appends");
    s.close(pb::CloseStreamRequest { name: "orders".into(), error: String::new() }).await.unwrap();
    expect(s.append(append_req("orders", vec![item("late")])).await, Code::FailedPrecondition, "is closed");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn competing_listeners_on_followers_ack_and_get_redeliveries() {
    init_tracing();
    let cluster = Cluster::start(3, |_| {}).await;
    let (leader, f) = followers(&cluster).await;
    let leader_addr = cluster.addrs[leader as usize - 1].clone();
    create(&leader_addr, "jobs", pb::StreamKind::Workqueue, None).await;

    tracing::info!("phase: two listeners, one per follower, share a cursor");
    let mut a = Listener::on_cursor(&f[0].1, "jobs", "workers", explicit(60_000), 4).await;
    let mut b = Listener::on_cursor(&f[1].1, "jobs", "workers", explicit(60_000), 4).await;
    let mut s = streams(&leader_addr).await;
    let items: Vec<pb::NewItem> = (0..6).map(|i| item(&i.to_string())).collect();
    s.append(append_req("jobs", items)).await.unwrap();
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        got_a.push(a.item().await);
        got_b.push(b.item().await);
    }
    let seqs = |v: &[pb::StreamItem]| v.iter().map(|i| i.item.as_ref().unwrap().seq).collect::<BTreeSet<_>>();
    assert!(seqs(&got_a).is_disjoint(&seqs(&got_b)), "each item goes to one listener");
    assert_eq!(seqs(&got_a).union(&seqs(&got_b)).count(), 6);

    tracing::info!("phase: A acks its items; a stale token is refused");
    for i in &got_a {
        a.ack(i).await;
    }
    for _ in 0..3 {
        match a.next(PATIENCE).await {
            Some(Ok(Heard::Acked(r))) => assert_eq!(r.error, "", "{r:?}"),
            other => panic!("expected an ack result, got {other:?}"),
        }
    }
    let bogus = pb::AckRequest {
        stream: "jobs".into(),
        cursor: "workers".into(),
        acks: vec![pb::Delivery { seq: got_b[0].item.as_ref().unwrap().seq, token: got_b[0].token + 1000 }],
        effects: vec![],
    };
    let e = s.ack(bogus).await.expect_err("stale");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("stale fencing token"), "{e:?}");

    tracing::info!("phase: B goes away without acking: its items go to A");
    drop(b);
    let mut again = Vec::new();
    for _ in 0..3 {
        let i = a.item().await;
        assert_eq!(i.deliveries, 2, "a redelivery");
        a.ack(&i).await;
        again.push(i);
    }
    assert_eq!(seqs(&again), seqs(&got_b));
    let deadline = Instant::now() + PATIENCE;
    loop {
        let info = cursor_info(&leader_addr, "jobs", "workers").await;
        let stream =
            s.info(pb::StreamInfoRequest { name: "jobs".into(), consistency: 0 }).await.unwrap().into_inner();
        if info.ack_floor == 6 && stream.items == 0 {
            assert_eq!((info.redelivered, info.ack_pending), (3, 0));
            break;
        }
        assert!(Instant::now() < deadline, "all acked and removed from the workqueue: {info:?} {stream:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn close_and_delete_reach_live_listeners_as_an_end_not_an_error() {
    init_tracing();
    let cluster = Cluster::start(3, |_| {}).await;
    let (leader, f) = followers(&cluster).await;
    let leader_addr = cluster.addrs[leader as usize - 1].clone();
    let mut s = streams(&leader_addr).await;
    let info = create(&leader_addr, "feed", pb::StreamKind::Persistent, None).await;
    s.append(append_req("feed", vec![item("1"), item("2")])).await.unwrap();

    tracing::info!("phase: a cursor listener and a plain reader on followers");
    let mut on_cursor = Listener::on_cursor(&f[0].1, "feed", "c", explicit(60_000), 16).await;
    let reader_start = pb::StartListener { stream: "feed".into(), credit: 16, ..Default::default() };
    let mut reader = Listener::start(&f[1].1, reader_start).await.unwrap();
    assert_eq!((reader.started.uid, reader.started.node_id), (info.uid, f[1].0));
    s.close(pb::CloseStreamRequest { name: "feed".into(), error: "upstream failed".into() }).await.unwrap();

    tracing::info!("phase: both get the remaining items, then the end with the close error");
    for want in ["1", "2"] {
        let r = reader.item().await;
        assert_eq!(text_of(r.item.as_ref().unwrap()), want);
    }
    match reader.next(PATIENCE).await {
        Some(Ok(Heard::End(e))) => {
            assert_eq!((e.reason.as_str(), e.error.as_str()), ("closed", "upstream failed"))
        }
        other => panic!("reader: expected the end, got {other:?}"),
    }
    let i1 = on_cursor.item().await;
    let i2 = on_cursor.item().await;
    assert!(on_cursor.next(Duration::from_millis(300)).await.is_none(), "no end before the items are acked");
    on_cursor.ack(&i1).await;
    on_cursor.ack(&i2).await;
    loop {
        match on_cursor.next(PATIENCE).await {
            Some(Ok(Heard::Acked(_))) => continue,
            Some(Ok(Heard::End(e))) => {
                assert_eq!((e.reason.as_str(), e.error.as_str()), ("closed", "upstream failed"));
                break;
            }
            other => panic!("cursor listener: expected the end, got {other:?}"),
        }
    }

    tracing::info!("phase: deleting a stream ends its live listeners with 'deleted'");
    create(&leader_addr, "doomed", pb::StreamKind::Persistent, None).await;
    let mut on_cursor = Listener::on_cursor(&f[0].1, "doomed", "c", explicit(60_000), 16).await;
    let reader_start = pb::StartListener { stream: "doomed".into(), credit: 16, ..Default::default() };
    let mut reader = Listener::start(&f[1].1, reader_start).await.unwrap();
    let gone = s.delete(pb::DeleteStreamRequest { name: "doomed".into() }).await.unwrap().into_inner();
    assert!(gone.existed);
    for l in [&mut on_cursor, &mut reader] {
        match l.next(PATIENCE).await {
            Some(Ok(Heard::End(e))) => assert_eq!(e.reason, "deleted", "{e:?}"),
            other => panic!("expected 'deleted', got {other:?}"),
        }
    }
    for (id, _) in &f {
        let held = cluster.node(*id).applied().read(|a| a.grid.stream("doomed").is_some());
        assert!(!held, "node {id} dropped the data");
    }
    let e = Listener::start(&f[0].1, pb::StartListener { stream: "doomed".into(), ..Default::default() })
        .await
        .err()
        .expect("no such stream");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    cluster.shutdown().await;
}

/// A producer appends through a retrying exactly-once producer while the leader is killed,
/// and later the listener's own node; the listener resumes on another node at its cursor.
/// Every acknowledged append is delivered and acknowledged, none twice from a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listener_resumes_on_another_node_after_a_leader_kill_and_its_own_node_kill() {
    init_tracing();
    let mut cluster = Cluster::start(3, |_| {}).await;
    let (leader, f) = followers(&cluster).await;
    let addrs = cluster.addrs.clone();
    create(&addrs[leader as usize - 1], "events", pb::StreamKind::Persistent, None).await;

    tracing::info!("phase: a producer appends continuously with one producer id, retrying the same sequence");
    let producer_addrs = addrs.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let stopping = stop.clone();
    let producer = tokio::spawn(async move {
        let mut acked: BTreeMap<u64, String> = BTreeMap::new();
        let mut sequence = 0u64;
        let mut node = 0usize;
        while !stopping.is_cancelled() {
            sequence += 1;
            let value = format!("v{sequence}");
            loop {
                let req = pb::AppendRequest {
                    producer: Some(pb::Producer { id: "prod".into(), epoch: 1, sequence }),
                    ..append_req("events", vec![item(&value)])
                };
                let addr = &producer_addrs[node % producer_addrs.len()];
                let answer = match tokio::time::timeout(Duration::from_secs(3), async {
                    let channel =
                        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
                    Ok::<_, anyhow::Error>(StreamsClient::new(channel).append(req).await)
                })
                .await
                {
                    Ok(Ok(answer)) => answer,
                    _ => Err(Status::unavailable("no answer")),
                };
                match answer {
                    Ok(r) => {
                        let r = r.into_inner();
                        if !r.duplicate || r.last_seq != 0 {
                            acked.insert(r.last_seq, value.clone());
                        }
                        break;
                    }
                    Err(_) => {
                        node += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        acked
    });

    tracing::info!("phase: a listener on a follower acks everything it gets");
    let (listener_node, listener_addr) = f[0].clone();
    let (delivered_tx, mut delivered_rx) = mpsc::unbounded_channel::<(u64, String)>();
    let consumer_addrs: Vec<String> = addrs.clone();
    let consumer = tokio::spawn(async move {
        let mut addr = listener_addr;
        let mut resumed = 0;
        loop {
            let Ok(mut l) = Listener::start(
                &addr,
                pb::StartListener {
                    stream: "events".into(),
                    cursor: "durable".into(),
                    config: Some(explicit(2_000)),
                    credit: 32,
                    ..Default::default()
                },
            )
            .await
            else {
                addr =
                    consumer_addrs[(consumer_addrs.iter().position(|a| *a == addr).unwrap() + 1) % 3].clone();
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            loop {
                match l.next(Duration::from_secs(10)).await {
                    Some(Ok(Heard::Item(i))) => {
                        let it = i.item.clone().unwrap();
                        let _ = delivered_tx.send((it.seq, text_of(&it)));
                        l.ack(&i).await;
                    }
                    Some(Ok(Heard::Acked(_))) => {}
                    Some(Ok(Heard::End(e))) => return (resumed, Some(e)),
                    // The node went away or stopped serving: resume elsewhere.
                    Some(Err(_)) | None => break,
                }
            }
            resumed += 1;
            addr = consumer_addrs[(consumer_addrs.iter().position(|a| *a == addr).unwrap() + 1) % 3].clone();
        }
    });

    tokio::time::sleep(Duration::from_millis(1_500)).await;
    tracing::info!(leader, "phase: kill the leader");
    cluster.stop(leader).await;
    cluster.wait_for_leader().await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    cluster.restart(leader).await;
    cluster.wait_caught_up(leader).await;
    tracing::info!(listener_node, "phase: kill the listener's node");
    cluster.stop(listener_node).await;
    cluster.wait_for_leader().await;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    stop.cancel();
    let acked = producer.await.unwrap();
    assert!(acked.len() > 20, "the producer made progress: {}", acked.len());

    tracing::info!(acked = acked.len(), "phase: close the stream; the listener drains and ends");
    let last = *acked.keys().next_back().unwrap();
    let live = (1..=3u64).find(|id| *id != listener_node).unwrap();
    let mut s = streams(&addrs[live as usize - 1]).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        match s.close(pb::CloseStreamRequest { name: "events".into(), error: String::new() }).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "close: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (resumed, end) =
        tokio::time::timeout(PATIENCE * 2, consumer).await.expect("the listener ends").unwrap();
    assert_eq!(end.map(|e| e.reason), Some("closed".to_owned()));
    assert!(resumed >= 1, "the listener resumed on another node");
    let mut delivered: BTreeMap<u64, String> = BTreeMap::new();
    while let Ok((seq, value)) = delivered_rx.try_recv() {
        if let Some(before) = delivered.insert(seq, value.clone()) {
            assert_eq!(before, value, "seq {seq} delivered with two values");
        }
    }
    let read =
        s.read(pb::ReadRequest { stream: "events".into(), ..Default::default() }).await.unwrap().into_inner();
    let stored: Vec<u64> = read.items.iter().map(|i| i.seq).collect();
    assert_eq!(stored, (1..=stored.len() as u64).collect::<Vec<_>>(), "dense seqs");
    let values: BTreeSet<String> = read.items.iter().map(text_of).collect();
    assert_eq!(values.len(), stored.len(), "no value stored twice (producer retries deduplicated)");
    for (seq, value) in &acked {
        assert_eq!(
            read.items.get(*seq as usize - 1).map(text_of).as_ref(),
            Some(value),
            "acknowledged append {seq} kept"
        );
    }
    assert!(last <= stored.len() as u64);
    assert_eq!(delivered.keys().copied().collect::<Vec<_>>(), stored, "every stored item was delivered");
    cluster.shutdown().await;
}

/// Streams, cursors and their positions survive snapshots and restarts: a node restarted
/// from a snapshot holds the same stream as the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_and_cursors_survive_snapshots_and_restarts() {
    init_tracing();
    let mut cluster = Cluster::start(3, |c| c.snapshot_after_entries = 40).await;
    let (leader, f) = followers(&cluster).await;
    let addr = cluster.addrs[leader as usize - 1].clone();
    create(&addr, "log", pb::StreamKind::Persistent, None).await;
    let mut s = streams(&addr).await;
    for i in 0..120 {
        s.append(append_req("log", vec![item(&i.to_string())])).await.unwrap();
    }
    let mut l = Listener::on_cursor(&f[0].1, "log", "c", explicit(60_000), 50).await;
    for _ in 0..50 {
        let i = l.item().await;
        l.ack(&i).await;
    }
    let mut confirmed = 0;
    while confirmed < 50 {
        match l.next(PATIENCE).await {
            Some(Ok(Heard::Acked(r))) if r.error.is_empty() => confirmed += 1,
            // Acks make room: the next items come, and stay unacked.
            Some(Ok(Heard::Item(_))) => {}
            other => panic!("expected ack results, got {other:?}"),
        }
    }
    drop(l);
    let restarted = f[1].0;
    let built = cluster
        .node(restarted)
        .applied()
        .counters()
        .snapshots_built
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(built > 0, "node {restarted} built a snapshot holding the stream");
    tracing::info!(restarted, "phase: restart a node; it loads its snapshot and replays the rest");
    cluster.stop(restarted).await;
    cluster.restart(restarted).await;
    cluster.wait_caught_up(restarted).await;
    let deadline = Instant::now() + PATIENCE;
    let floor = |id: u64| {
        cluster
            .node(id)
            .applied()
            .read(|a| a.grid.stream("log").map(|s| (s.last_seq, s.cursors["c"].ack_floor())))
    };
    while floor(restarted) != Some((120, 50)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let streams: Vec<_> =
        (1..=3).map(|id| cluster.node(id).applied().read(|a| a.grid.stream("log").cloned())).collect();
    assert_eq!(floor(restarted), Some((120, 50)));
    assert!(streams.windows(2).all(|w| w[0] == w[1]), "every replica holds the same stream");
    cluster.shutdown().await;
}

/// A listener that stops reading holds back only itself: appends go on, and another listener
/// gets everything. More listeners than `max_listeners` on a node are refused, changing
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stuck_listener_slows_only_itself_and_listeners_are_bounded() {
    init_tracing();
    let cluster = Cluster::start(3, |c| c.max_listeners = 3).await;
    let (leader, f) = followers(&cluster).await;
    let leader_addr = cluster.addrs[leader as usize - 1].clone();
    create(&leader_addr, "firehose", pb::StreamKind::Persistent, None).await;

    tracing::info!("phase: two listeners on one follower; the first never reads");
    let stuck_start = pb::StartListener { stream: "firehose".into(), credit: 10_000, ..Default::default() };
    let stuck = Listener::start(&f[0].1, stuck_start).await.unwrap();
    let stuck_cursor = Listener::on_cursor(&f[0].1, "firehose", "stuck", explicit(60_000), 10_000).await;
    let mut live = Listener::on_cursor(
        &f[0].1,
        "firehose",
        "live",
        pb::CursorConfig { ack: pb::AckPolicy::AckNone as i32, ..Default::default() },
        1_000,
    )
    .await;

    tracing::info!("phase: a fourth listener on the same node is refused");
    let e = Listener::start(&f[0].1, pb::StartListener { stream: "firehose".into(), ..Default::default() })
        .await
        .err()
        .expect("over max_listeners");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("max_listeners"), "{e:?}");
    let attached = || cluster.node(leader).applied().read(|a| a.grid.listeners().count());
    assert_eq!(attached(), 2, "the refused one attached nothing (the reader keeps no grid state)");

    tracing::info!("phase: 20 000 items of 1 KiB; the live listener gets all of them");
    let mut s = streams(&leader_addr).await;
    let body = "x".repeat(1000);
    let producer = tokio::spawn(async move {
        for _ in 0..20 {
            let items = (0..1000).map(|_| item(&body)).collect();
            s.append(append_req("firehose", items)).await.expect("appends go on");
        }
    });
    let mut seen = 0u64;
    let mut credit = 0;
    while seen < 20_000 {
        match live.next(PATIENCE).await {
            Some(Ok(Heard::Item(i))) => {
                seen += 1;
                assert_eq!(i.item.unwrap().seq, seen, "in order, no gaps");
                credit += 1;
                if credit == 500 {
                    live.send(pb::listener_message::Kind::Credit(pb::Credit { items: credit })).await;
                    credit = 0;
                }
            }
            other => panic!("after {seen} items: {other:?}"),
        }
    }
    producer.await.unwrap();
    drop((stuck, stuck_cursor));
    cluster.shutdown().await;
}

/// Acks a client sent before it closed its side of the stream still count, and are
/// answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acks_sent_before_the_client_closes_still_count() {
    init_tracing();
    let cluster = Cluster::start(3, |_| {}).await;
    let (leader, f) = followers(&cluster).await;
    let leader_addr = cluster.addrs[leader as usize - 1].clone();
    create(&leader_addr, "last-words", pb::StreamKind::Persistent, None).await;
    let items = (0..20).map(|i| item(&i.to_string())).collect();
    streams(&leader_addr).await.append(append_req("last-words", items)).await.unwrap();
    let mut l = Listener::on_cursor(&f[0].1, "last-words", "c", explicit(60_000), 20).await;
    let mut got = Vec::new();
    for _ in 0..20 {
        got.push(l.item().await);
    }
    for i in &got {
        l.ack(i).await;
    }
    let Listener { tx, mut rx, .. } = l;
    drop(tx);
    let mut answered = 0;
    while let Ok(Some(m)) = rx.message().await {
        if let Some(pb::stream_message::Kind::Acked(r)) = m.kind {
            assert_eq!(r.error, "", "{r:?}");
            answered += 1;
        }
    }
    assert_eq!(answered, 20, "every ack answered before the stream ended");
    assert_eq!(cursor_info(&leader_addr, "last-words", "c").await.ack_floor, 20);
    cluster.shutdown().await;
}

/// A listener whose node shuts down lets go of its items at once: another listener of the
/// cursor gets them long before their ack wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_shutting_down_hands_its_listeners_items_on() {
    init_tracing();
    let mut cluster = Cluster::start(3, |_| {}).await;
    let (leader, f) = followers(&cluster).await;
    let leader_addr = cluster.addrs[leader as usize - 1].clone();
    create(&leader_addr, "handover", pb::StreamKind::Persistent, None).await;
    let mut doomed = Listener::on_cursor(&f[0].1, "handover", "c", explicit(600_000), 5).await;
    let items = (0..5).map(|i| item(&i.to_string())).collect();
    streams(&leader_addr).await.append(append_req("handover", items)).await.unwrap();
    for _ in 0..5 {
        doomed.item().await;
    }
    let mut heir = Listener::on_cursor(&leader_addr, "handover", "c", explicit(600_000), 5).await;
    assert!(
        heir.next(Duration::from_millis(300)).await.is_none(),
        "nothing for the heir while they are held"
    );
    tracing::info!(node = f[0].0, "phase: the holder's node shuts down");
    cluster.stop(f[0].0).await;
    // `item` waits at most PATIENCE (30 s): far less than the 10 min ack wait.
    for _ in 0..5 {
        let i = heir.item().await;
        assert_eq!(i.deliveries, 2);
    }
    cluster.shutdown().await;
}

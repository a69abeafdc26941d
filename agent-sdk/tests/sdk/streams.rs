//! Streams: appends and listeners in both codecs, batches, exactly-once producers across a
//! leader stop, competing listeners and redelivery, the end of a stream (ok, failed,
//! deleted), listeners and readers that resume on another node, commits (ack + effects) and
//! handler completions that consume items exactly once, generators that survive the death
//! of their process, and stream references passed between agents.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use weft_agent::streams::{Closed, Config, CursorConfig, Emitter, Generator, Item, Listener, NewItem};
use weft_agent::{Agent, Client, Codec, Context, Error, Fail, StreamRef};

use crate::support::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    item: String,
}

fn order(id: u64) -> Order {
    Order { id, item: format!("item-{id}") }
}

/// Gossip that declares a stopped node down within a few seconds: the leader then detaches
/// its listeners (what they held is delivered again) without waiting for ack waits.
fn fast_gossip(config: &mut weft_fabric::Config) {
    config.gossip_preset = "test".into();
}

/// The listener's next item; panics on an error, the end, or a wait past `PATIENCE`.
async fn next<T: serde::de::DeserializeOwned>(l: &mut Listener<T>) -> Item<T> {
    match tokio::time::timeout(PATIENCE, l.next()).await {
        Ok(Some(Ok(item))) => item,
        Ok(Some(Err(e))) => panic!("listener on {} failed: {e}", l.stream()),
        Ok(None) => panic!("listener on {} ended", l.stream()),
        Err(_) => panic!("no item on {} within {PATIENCE:?}", l.stream()),
    }
}

/// What the listener yields next, after its items: `None` (the end) or an error.
async fn ending<T: serde::de::DeserializeOwned + std::fmt::Debug>(l: &mut Listener<T>) -> Option<Error> {
    match tokio::time::timeout(PATIENCE, l.next()).await {
        Ok(None) => None,
        Ok(Some(Err(e))) => Some(e),
        Ok(Some(Ok(item))) => panic!("an item where the end was expected: {item:?}"),
        Err(_) => panic!("no end on {} within {PATIENCE:?}", l.stream()),
    }
}

/// Nothing more comes from the listener for a while.
async fn quiet<T: serde::de::DeserializeOwned + std::fmt::Debug>(l: &mut Listener<T>, d: Duration) {
    if let Ok(got) = tokio::time::timeout(d, l.next()).await {
        panic!("expected nothing, got {got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn items_round_trip_through_readers_and_cursors_in_either_codec() {
    init_tracing();
    let c = TestCluster::start(1, |_| {}).await;
    let client = Client::new(c.endpoints()).unwrap();
    let json = Client::builder(c.endpoints()).codec(Codec::Json).build().unwrap();
    let orders = client.stream("orders");

    tracing::info!("create is idempotent for the same settings only");
    let info = orders.create(Config::new().max_items(1_000)).await.unwrap();
    assert_eq!((info.name.as_str(), info.last_seq, info.closed.clone()), ("orders", 0, None));
    assert_eq!(orders.create(Config::new().max_items(1_000)).await.unwrap().uid, info.uid);
    let other = orders.create(Config::new().max_items(5)).await.unwrap_err();
    assert!(matches!(other, Error::Refused { code: tonic::Code::AlreadyExists, .. }), "{other:?}");

    tracing::info!("appends: plain, keyed with headers, from a JSON client, a batch");
    assert_eq!(orders.append(&order(1)).await.unwrap().first_seq, 1);
    orders.append(NewItem::new(&order(2)).key("orders.eu.paris").header("trace", "t-2")).await.unwrap();
    json.stream("orders").append(&order(3)).await.unwrap();
    let batch = orders.batch().items(&[order(4), order(5)]).send().await.unwrap();
    assert_eq!((batch.first_seq, batch.last_seq, batch.duplicate), (4, 5, false));

    tracing::info!("a plain reader sees every item in order, decoded from its own codec");
    let mut reader = orders.listener::<Order>().start().await.unwrap();
    assert_eq!(reader.cursor(), None);
    let mut seen = Vec::new();
    for _ in 0..5 {
        let item = next(&mut reader).await;
        assert!(!item.needs_ack());
        seen.push(item);
    }
    assert_eq!(seen.iter().map(|i| i.value.id).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert_eq!(seen.iter().map(|i| i.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert_eq!(seen[1].key.as_deref(), Some("orders.eu.paris"));
    assert_eq!(seen[1].header("trace"), Some("t-2"));
    assert_eq!(seen[2].value, order(3), "a JSON item decodes in a bincode client");

    tracing::info!("a durable cursor: items to ack, and the cursor keeps its place");
    let mut audit = orders.listener::<Order>().cursor("audit").start().await.unwrap();
    assert_eq!(audit.cursor().as_deref(), Some("audit"));
    for id in 1..=5 {
        let item = next(&mut audit).await;
        assert_eq!((item.value.id, item.deliveries), (id, 1));
        assert!(item.needs_ack());
        item.ack().await.unwrap();
        item.ack().await.unwrap(); // again: harmless
    }
    drop(audit);
    let cursor = orders.cursor("audit").await.unwrap();
    assert_eq!((cursor.ack_floor, cursor.ack_pending), (5, 0));
    orders.append(&order(6)).await.unwrap();
    let mut audit = orders.listener::<Order>().cursor("audit").start().await.unwrap();
    assert_eq!(next(&mut audit).await.value.id, 6, "it resumes after what it acknowledged");

    tracing::info!("reads, info and the stream list");
    let page: Vec<Item<Order>> = orders.read(2, 3).await.unwrap();
    assert_eq!(page.iter().map(|i| i.seq).collect::<Vec<_>>(), [2, 3, 4]);
    let info = orders.info().await.unwrap();
    assert_eq!((info.first_seq, info.last_seq, info.items), (1, 6, 6));
    assert!(info.cursors.iter().any(|c| c.name == "audit"));
    let wrong: Result<Vec<Item<String>>, _> = orders.read(1, 1).await;
    assert!(matches!(wrong, Err(Error::Codec(m)) if m.contains("item 1")));
    client.stream("other").create(Config::new()).await.unwrap();
    let listed = client.list_streams(None).await.unwrap();
    assert_eq!(listed.streams.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["orders", "other"]);
    let missing = client.stream("nope").listener::<u64>().start().await.unwrap_err();
    assert!(matches!(missing, Error::Refused { code: tonic::Code::NotFound, .. }), "{missing:?}");
    c.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_are_atomic_conditional_and_deduplicated() {
    init_tracing();
    let c = TestCluster::start(1, |_| {}).await;
    let client = Client::new(c.endpoints()).unwrap();
    let s = client.stream("s");
    s.create(Config::new()).await.unwrap();
    let a = s.batch().items(["a", "b", "c"]).send().await.unwrap();
    assert_eq!((a.first_seq, a.last_seq), (1, 3));

    tracing::info!("a stale expected last seq appends nothing; the right one appends");
    let stale = s.batch().item("d").item("e").expected_last_seq(1).send().await.unwrap_err();
    assert!(matches!(stale, Error::Refused { code: tonic::Code::FailedPrecondition, .. }), "{stale:?}");
    assert_eq!(s.info().await.unwrap().last_seq, 3, "all or nothing");
    assert_eq!(s.batch().item("d").expected_last_seq(3).send().await.unwrap().first_seq, 4);

    tracing::info!("a message id appends once");
    let first = s.batch().items(["x", "y"]).msg_id("import-1").send().await.unwrap();
    let again = s.batch().items(["x", "y"]).msg_id("import-1").send().await.unwrap();
    assert_eq!((first.first_seq, first.last_seq, first.duplicate), (5, 6, false));
    assert_eq!((again.first_seq, again.last_seq, again.duplicate), (5, 6, true));
    assert_eq!(s.info().await.unwrap().last_seq, 6);
    let empty = s.batch().send().await.unwrap_err();
    assert!(matches!(empty, Error::Usage(_)));

    tracing::info!("a discard-new limit refuses, naming the limit");
    let impatient = Client::builder(c.endpoints()).retry_for(Duration::from_millis(500)).build().unwrap();
    let full = impatient.stream("full");
    full.create(Config::new().max_items(2).discard(weft_agent::streams::Discard::New)).await.unwrap();
    full.batch().items(&[1u8, 2]).send().await.unwrap();
    let refused = full.append(&3u8).await.unwrap_err();
    assert!(matches!(&refused, Error::Overloaded(m) if m.contains("max_items")), "{refused:?}");
    c.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_producer_stores_each_append_once_even_across_a_leader_stop() {
    init_tracing();
    let mut c = TestCluster::start(3, fast_gossip).await;
    let client = Client::new(c.endpoints()).unwrap();
    let s = client.stream("produced");
    s.create(Config::new()).await.unwrap();

    tracing::info!("the same sequence again is a duplicate; an older epoch is fenced off");
    let p = s.producer("p", 1);
    assert_eq!(p.append(&0u64).await.unwrap().first_seq, 1);
    assert_eq!(p.sequence(), 1);
    let replay = s.producer("p", 1).starting_at(1);
    let dup = replay.append(&0u64).await.unwrap();
    assert_eq!((dup.first_seq, dup.duplicate), (1, true), "the first answer again");
    let newer = s.producer("p", 2);
    assert_eq!(newer.append(&0u64).await.unwrap().first_seq, 2);
    let fenced = p.append(&0u64).await.unwrap_err();
    assert!(
        matches!(&fenced, Error::Refused { code: tonic::Code::FailedPrecondition, message } if message.contains("epoch")),
        "{fenced:?}"
    );
    assert_eq!(s.info().await.unwrap().last_seq, 2);

    tracing::info!("a producer appends 1..=N while the leader stops; every value lands once, in order");
    const N: u64 = 60;
    let stream = client.stream("counted");
    stream.create(Config::new()).await.unwrap();
    let (progress_tx, mut progress) = mpsc::unbounded_channel::<u64>();
    let duplicates = Arc::new(AtomicU64::new(0));
    let producing = {
        let (stream, duplicates) = (stream.clone(), duplicates.clone());
        tokio::spawn(async move {
            let producer = stream.producer("counter", 1);
            for n in 1..=N {
                loop {
                    match producer.append(&n).await {
                        Ok(a) => {
                            if a.duplicate {
                                duplicates.fetch_add(1, Ordering::Relaxed);
                            }
                            break;
                        }
                        Err(e) => {
                            tracing::info!(n, error = %e, "append failed; the producer sends it again");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
                let _ = progress_tx.send(n);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    while progress.recv().await.expect("producing") < N / 3 {}
    let leader = c.leader().await;
    tracing::info!(leader, "stopping the leader mid-stream");
    c.cluster.stop(leader).await;
    tokio::time::timeout(PATIENCE * 2, producing).await.expect("the producer finishes").unwrap();
    let survivors: Vec<String> = c
        .endpoints()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i as u64 + 1 != leader)
        .map(|(_, a)| a)
        .collect();
    let reader = Client::new(survivors).unwrap();
    let items: Vec<Item<u64>> = reader.stream("counted").read(0, 1_000).await.unwrap();
    tracing::info!(items = items.len(), duplicates = duplicates.load(Ordering::Relaxed), "stored");
    assert_eq!(items.iter().map(|i| i.value).collect::<Vec<_>>(), (1..=N).collect::<Vec<_>>());
    c.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_item_left_unacked_by_a_dropped_listener_goes_to_a_competing_one() {
    init_tracing();
    let c = TestCluster::start(1, |_| {}).await;
    let client = Client::new(c.endpoints()).unwrap();
    let jobs = client.stream("jobs");
    jobs.create(Config::new()).await.unwrap();
    jobs.batch().items(&[10u64, 20]).send().await.unwrap();
    // A long ack wait: what comes back comes because its listener went.
    let config = CursorConfig::new().ack_wait(Duration::from_secs(600));
    let mut first =
        jobs.listener::<u64>().cursor("workers").config(config.clone()).buffer(1).start().await.unwrap();
    let held = next(&mut first).await;
    let mut second = jobs.listener::<u64>().cursor("workers").config(config).buffer(1).start().await.unwrap();
    let other = next(&mut second).await;
    assert_ne!(held.seq, other.seq, "competing listeners get different items");
    tracing::info!(held = held.seq, "the first listener goes without acking its item");
    drop(held);
    drop(first);
    other.ack().await.unwrap();
    let again = next(&mut second).await;
    assert_eq!((again.seq, again.deliveries), (3 - other.seq, 2), "delivered again, to the other listener");
    again.ack().await.unwrap();

    tracing::info!("a nack sends an item again at once");
    jobs.append(&30u64).await.unwrap();
    let third = next(&mut second).await;
    third.nack();
    let back = next(&mut second).await;
    assert_eq!((back.seq, back.deliveries), (third.seq, 2));
    let stale = third.ack().await.unwrap_err();
    assert!(matches!(stale, Error::Refused { code: tonic::Code::FailedPrecondition, .. }), "{stale:?}");
    back.ack().await.unwrap();
    let cursor = jobs.cursor("workers").await.unwrap();
    assert_eq!((cursor.ack_floor, cursor.redelivered, cursor.ack_pending), (3, 2, 0));
    c.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listeners_see_a_stream_close_ok_or_with_an_error() {
    init_tracing();
    let c = TestCluster::start(1, |_| {}).await;
    let client = Client::new(c.endpoints()).unwrap();

    tracing::info!("closed ok: the items, then the end");
    let ok = client.stream("ok");
    ok.create(Config::new()).await.unwrap();
    ok.batch().items(&[1u64, 2, 3]).send().await.unwrap();
    let mut cursor = ok.listener::<u64>().cursor("c").start().await.unwrap();
    let mut reader = ok.listener::<u64>().from_seq(2).start().await.unwrap();
    let closed = ok.close().await.unwrap();
    assert_eq!(closed.closed, Some(Closed::Ok));
    assert_eq!(ok.close().await.unwrap().closed, Some(Closed::Ok), "closing again is fine");
    let refused = ok.append(&4u64).await.unwrap_err();
    assert!(matches!(refused, Error::Refused { code: tonic::Code::FailedPrecondition, .. }), "{refused:?}");
    assert_eq!([next(&mut reader).await.value, next(&mut reader).await.value], [2, 3]);
    assert_eq!(ending(&mut reader).await, None);
    for n in 1..=2 {
        let item = next(&mut cursor).await;
        assert_eq!(item.value, n);
        item.ack().await.unwrap();
    }
    let last = next(&mut cursor).await;
    quiet(&mut cursor, Duration::from_millis(300)).await; // not the end before the last ack
    last.ack().await.unwrap();
    assert_eq!(ending(&mut cursor).await, None);
    assert!(cursor.next().await.is_none(), "and it stays ended");

    tracing::info!("closed with an error: the items, the error, then the end");
    let failed = client.stream("failed");
    failed.create(Config::new()).await.unwrap();
    failed.append(&1u64).await.unwrap();
    let mut reader = failed.listener::<u64>().start().await.unwrap();
    failed.close_with_error("the source went away").await.unwrap();
    assert_eq!(next(&mut reader).await.value, 1);
    let e = ending(&mut reader).await.expect("an error");
    assert!(
        matches!(&e, Error::StreamFailed { stream, message } if stream == "failed" && message.contains("the source went away")),
        "{e:?}"
    );
    assert!(reader.next().await.is_none());
    c.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_stream_is_a_clear_error_even_when_created_again() {
    init_tracing();
    let c = TestCluster::start(1, |_| {}).await;
    let client = Client::new(c.endpoints()).unwrap();
    let s = client.stream("doomed");
    s.create(Config::new()).await.unwrap();
    s.append(&1u64).await.unwrap();
    let mut listener = s.listener::<u64>().cursor("c").start().await.unwrap();
    let mut reader = s.listener::<u64>().start().await.unwrap();
    assert_eq!(next(&mut listener).await.value, 1);
    assert_eq!(next(&mut reader).await.value, 1);
    let reference = s.reference().await.unwrap();
    assert!(s.delete().await.unwrap());
    for l in [&mut listener, &mut reader] {
        let e = ending(l).await.expect("an error");
        assert!(matches!(&e, Error::StreamDeleted { stream, .. } if stream == "doomed"), "{e:?}");
        assert!(l.next().await.is_none());
    }

    tracing::info!("a stream of the same name is another one: a reference to the old one says so");
    s.create(Config::new()).await.unwrap();
    s.append(&2u64).await.unwrap();
    let old = client.stream_from(&reference);
    let e = old.listener::<u64>().start().await.unwrap_err();
    assert!(matches!(e, Error::StreamDeleted { .. }), "{e:?}");
    let e = old.listener::<u64>().cursor("c").start().await.unwrap_err();
    assert!(matches!(e, Error::StreamDeleted { .. }), "{e:?}");
    assert!(matches!(old.info().await.unwrap_err(), Error::StreamDeleted { .. }));
    let fresh = client.stream_from(&s.reference().await.unwrap());
    let mut l = fresh.listener::<u64>().start().await.unwrap();
    assert_eq!(next(&mut l).await.value, 2);
    c.cluster.shutdown().await;
}

/// A TCP proxy to a node that, when armed, passes the next request on but never its answer:
/// it holds what the node sends back for a while (the request is applied meanwhile), then
/// cuts the connection. The client sees a request whose outcome is unknown.
struct AnswerCutter {
    addr: String,
    armed: Arc<std::sync::atomic::AtomicBool>,
    cuts: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl AnswerCutter {
    /// How long the node has to apply the request before the cut.
    const HOLD: Duration = Duration::from_millis(500);

    async fn start(target: String) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cuts = Arc::new(AtomicU64::new(0));
        let (a, k) = (armed.clone(), cuts.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else { continue };
                let (armed, cuts) = (a.clone(), k.clone());
                tokio::spawn(async move {
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match server_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if armed.swap(false, Ordering::SeqCst) {
                            tokio::time::sleep(Self::HOLD).await;
                            cuts.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    up.abort();
                });
            }
        });
        Self { addr, armed, cuts, task }
    }

    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for AnswerCutter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_append_whose_answer_is_lost_is_sent_again_only_when_that_is_safe() {
    init_tracing();
    let c = TestCluster::start(1, |_| {}).await;
    let cutter = AnswerCutter::start(c.endpoints()[0].clone()).await;
    let client = Client::new([cutter.addr.clone()]).unwrap();
    let s = client.stream("cut");
    s.create(Config::new()).await.unwrap();
    let producer = s.producer("p", 1);
    producer.append(&1u64).await.unwrap();

    tracing::info!("a producer's append: its answer is lost, it is sent again with its sequence");
    cutter.arm();
    let appended = producer.append(&2u64).await.unwrap();
    assert_eq!(cutter.cuts(), 1, "an answer was cut");
    assert_eq!((appended.first_seq, appended.duplicate), (2, true), "the repeat found the first append");
    assert_eq!(producer.sequence(), 2);
    assert_eq!(producer.append(&3u64).await.unwrap().first_seq, 3);

    tracing::info!("with a message id, likewise");
    cutter.arm();
    let appended = s.batch().item(&4u64).msg_id("four").send().await.unwrap();
    assert_eq!(cutter.cuts(), 2);
    assert_eq!((appended.first_seq, appended.duplicate), (4, true));

    tracing::info!("a plain append is not sent again: its outcome is unknown");
    cutter.arm();
    let e = s.append(&5u64).await.unwrap_err();
    assert_eq!(cutter.cuts(), 3);
    assert!(matches!(e, Error::Unknown(_)), "{e:?}");
    let stored: Vec<Item<u64>> = s.read(0, 10).await.unwrap();
    assert_eq!(stored.iter().map(|i| i.value).collect::<Vec<_>>(), [1, 2, 3, 4, 5], "each once (5: applied)");
    c.cluster.shutdown().await;
}

/// Starts listeners made by `make` until one is served by node `node`.
async fn listener_on<T, F, Fut>(node: u64, mut make: F) -> Listener<T>
where
    T: serde::de::DeserializeOwned,
    F: FnMut() -> Fut,
    Fut: Future<Output = Listener<T>>,
{
    for _ in 0..100 {
        let l = make().await;
        if l.node() == node {
            return l;
        }
    }
    panic!("no listener landed on node {node}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cursor_listeners_resume_on_another_node_when_theirs_stops() {
    init_tracing();
    let mut c = TestCluster::start(3, fast_gossip).await;
    let client = Client::new(c.endpoints()).unwrap();
    let s = client.stream("resumed");
    s.create(Config::new()).await.unwrap();
    s.batch().items(&(1..=10u64).collect::<Vec<_>>()).send().await.unwrap();
    // Items held by the stopped node's listeners come back after their ack wait.
    let config = CursorConfig::new().ack_wait(Duration::from_secs(2));
    let mut named =
        s.listener::<u64>().cursor("named").config(config.clone()).buffer(4).start().await.unwrap();
    let node = named.node();
    let mut unnamed = listener_on(node, || {
        let (s, config) = (s.clone(), config.clone());
        async move { s.listener::<u64>().unnamed().config(config).buffer(4).start().await.unwrap() }
    })
    .await;
    let unnamed_cursor = unnamed.cursor().expect("an unnamed cursor has a name");
    assert!(unnamed_cursor.starts_with('~'), "{unnamed_cursor}");
    for l in [&mut named, &mut unnamed] {
        for n in 1..=5 {
            let item = next(l).await;
            assert_eq!(item.value, n);
            item.ack().await.unwrap();
        }
    }

    tracing::info!(node, "the listeners' node stops; more items are appended elsewhere");
    c.cluster.stop(node).await;
    let appender = client.clone();
    let appending = tokio::spawn(async move {
        for n in 11..=20u64 {
            appender.stream("resumed").batch().item(&n).msg_id(&format!("n-{n}")).send().await.unwrap();
        }
    });
    for l in [&mut named, &mut unnamed] {
        let mut acked = BTreeSet::new();
        while acked.len() < 15 {
            let item = next(l).await;
            assert!((6..=20).contains(&item.value), "{} again", item.value);
            match item.ack().await {
                Ok(()) => {
                    acked.insert(item.value);
                }
                // Held across the stop: it comes again.
                Err(e) => tracing::info!(value = item.value, error = %e, "ack refused"),
            }
        }
        assert_ne!(l.node(), node, "served by another node now");
    }
    appending.await.unwrap();
    assert_eq!(unnamed.cursor().as_deref(), Some(unnamed_cursor.as_str()), "on its own cursor still");
    assert_eq!(s.cursor("named").await.unwrap().ack_floor, 20);
    assert_eq!(s.cursor(&unnamed_cursor).await.unwrap().ack_floor, 20);
    c.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_resumes_after_its_last_item_when_its_node_stops() {
    init_tracing();
    let mut c = TestCluster::start(3, fast_gossip).await;
    let client = Client::new(c.endpoints()).unwrap();
    let s = client.stream("read");
    s.create(Config::new()).await.unwrap();
    s.batch().items(&(1..=10u64).collect::<Vec<_>>()).send().await.unwrap();
    let mut reader = s.listener::<u64>().buffer(4).start().await.unwrap();
    let mut seen: Vec<u64> = Vec::new();
    for _ in 0..5 {
        seen.push(next(&mut reader).await.value);
    }
    let node = reader.node();
    tracing::info!(node, "the reader's node stops");
    c.cluster.stop(node).await;
    for n in 11..=20u64 {
        s.batch().item(&n).msg_id(&format!("n-{n}")).send().await.unwrap();
    }
    for _ in 0..15 {
        seen.push(next(&mut reader).await.value);
    }
    assert_eq!(seen, (1..=20).collect::<Vec<_>>(), "every item once, in order");
    assert_ne!(reader.node(), node);
    quiet(&mut reader, Duration::from_millis(300)).await;
    c.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_applies_an_items_effects_with_its_ack_exactly_once() {
    init_tracing();
    let c = TestCluster::start(1, |_| {}).await;
    let client = Client::new(c.endpoints()).unwrap();
    let (input, output) = (client.stream("in"), client.stream("out"));
    input.create(Config::new()).await.unwrap();
    output.create(Config::new()).await.unwrap();
    let totals = client.state("shared/totals");
    input.batch().items(&[5u64, 7]).send().await.unwrap();
    let config = CursorConfig::new().ack_wait(Duration::from_secs(3));
    let mut l = input.listener::<u64>().cursor("sum").config(config).buffer(1).start().await.unwrap();

    tracing::info!("a commit whose state write does not match applies nothing");
    let first = next(&mut l).await;
    let e = first
        .commit()
        .compare_and_set("shared/totals", "sum", &first.value, 99)
        .append("out", &format!("counted {}", first.value))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Refused { code: tonic::Code::FailedPrecondition, .. }), "{e:?}");
    assert_eq!(output.info().await.unwrap().last_seq, 0);
    assert_eq!(totals.get::<u64>("sum").await.unwrap(), None);
    assert_eq!(input.cursor("sum").await.unwrap().ack_floor, 0, "not acknowledged either");

    tracing::info!("the right one applies all of it");
    first
        .commit()
        .compare_and_set("shared/totals", "sum", &first.value, 0)
        .append("out", &format!("counted {}", first.value))
        .send()
        .await
        .unwrap();
    assert_eq!(totals.get::<u64>("sum").await.unwrap(), Some(5));
    assert_eq!(input.cursor("sum").await.unwrap().ack_floor, 1);
    assert_eq!(output.info().await.unwrap().last_seq, 1);
    let again = first.commit().put("shared/totals", "sum", &1_000u64).send().await.unwrap_err();
    assert!(matches!(again, Error::Refused { code: tonic::Code::FailedPrecondition, .. }), "{again:?}");
    assert_eq!(totals.get::<u64>("sum").await.unwrap(), Some(5), "a commit applies once");

    tracing::info!("an item whose ack wait ran out is delivered again; only that delivery may commit it");
    let slow = next(&mut l).await;
    let redelivered = next(&mut l).await;
    assert_eq!((redelivered.seq, redelivered.deliveries), (slow.seq, 2));
    let (sum, version) = totals.get_versioned::<u64>("sum").await.unwrap().unwrap();
    redelivered
        .commit()
        .compare_and_set("shared/totals", "sum", &(sum + redelivered.value), version)
        .append("out", &format!("counted {}", redelivered.value))
        .send()
        .await
        .unwrap();
    let late =
        slow.commit().put("shared/totals", "sum", &(sum + slow.value)).append("out", &"twice").send().await;
    assert!(matches!(late, Err(Error::Refused { code: tonic::Code::FailedPrecondition, .. })), "{late:?}");
    assert_eq!(totals.get::<u64>("sum").await.unwrap(), Some(12));
    let out: Vec<Item<String>> = output.read(0, 10).await.unwrap();
    assert_eq!(out.iter().map(|i| i.value.as_str()).collect::<Vec<_>>(), ["counted 5", "counted 7"]);

    tracing::info!("items that need no ack cannot be committed");
    let mut reader = input.listener::<u64>().start().await.unwrap();
    let plain = next(&mut reader).await;
    assert!(matches!(plain.commit().send().await, Err(Error::Usage(_))));
    c.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handlers_stream_appends_and_acks_apply_with_its_result() {
    init_tracing();
    let c = TestCluster::start(1, |_| {}).await;
    let client = Client::new(c.endpoints()).unwrap();
    let jobs = client.stream("jobs");
    jobs.create(Config::new()).await.unwrap();
    client.stream("results").create(Config::new()).await.unwrap();
    jobs.batch().items(&[3u64, 4]).send().await.unwrap();
    let agent = Agent::new("consumer").delegate("take", |ctx: Context, fail: bool| async move {
        let config = CursorConfig::new().ack_wait(Duration::from_secs(60));
        let mut jobs =
            ctx.stream("jobs").listener::<u64>().cursor("takers").config(config).buffer(1).start().await?;
        let job = jobs.next().await.ok_or_else(|| Fail::new("the stream ended"))??;
        ctx.shared("done").put(&job.seq.to_string(), &job.value)?;
        ctx.append("results", NewItem::new(&(job.value * 10)).key("results.job"))?;
        ctx.ack(&job)?;
        if fail {
            return Err(Fail::permanent("changed my mind"));
        }
        Ok::<_, Fail>((job.seq, job.deliveries))
    });
    let worker = spawn_worker(c.endpoints(), vec![agent], 4);

    let taken: (u64, u32) = client.call("consumer", "take", &false).await.unwrap();
    assert_eq!(taken, (1, 1));
    let results: Vec<Item<u64>> = client.stream("results").read(0, 10).await.unwrap();
    assert_eq!(results.iter().map(|i| i.value).collect::<Vec<_>>(), [30]);
    assert_eq!(client.state("shared/done").get::<u64>("1").await.unwrap(), Some(3));
    assert_eq!(jobs.cursor("takers").await.unwrap().ack_floor, 1, "acknowledged with the result");

    tracing::info!("a handler that fails applies none of it: the job comes again");
    let e = client.call::<_, (u64, u32)>("consumer", "take", &true).await.unwrap_err();
    assert!(matches!(&e, Error::Failed { message, .. } if message.contains("changed my mind")), "{e:?}");
    assert_eq!(client.stream("results").info().await.unwrap().last_seq, 1);
    assert_eq!(client.state("shared/done").get::<u64>("2").await.unwrap(), None);
    let (seq, deliveries): (u64, u32) = client.call("consumer", "take", &false).await.unwrap();
    // Delivered again; perhaps also to the first call's listener, which lived until that
    // call's result (acking item 1) was applied, and so had room for item 2 meanwhile.
    assert_eq!(seq, 2, "the same job again");
    assert!(deliveries >= 2, "{deliveries}");
    assert_eq!(jobs.cursor("takers").await.unwrap().ack_floor, 2);
    assert_eq!(client.stream("results").info().await.unwrap().last_seq, 2);
    worker.stop().await.unwrap();
    c.cluster.shutdown().await;
}

/// Emits 1..=n, one every 50 ms, telling `progress` (attempt, n) after each.
async fn slow_count(
    ctx: Context,
    out: Emitter<u64>,
    n: u64,
    progress: mpsc::UnboundedSender<(u32, u64)>,
) -> Result<(), Fail> {
    for i in 1..=n {
        out.emit(NewItem::new(&i).key("count")).await?;
        let _ = progress.send((ctx.attempt(), i));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn counter_agent(progress: mpsc::UnboundedSender<(u32, u64)>) -> Agent {
    Agent::new("gen").generator("count", move |ctx: Context, out: Emitter<u64>, n: u64| {
        slow_count(ctx, out, n, progress.clone())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_generator_whose_process_dies_resumes_without_duplicates() {
    init_tracing();
    const N: u64 = 40;
    let c = TestCluster::start(1, |_| {}).await;
    let client = Client::new(c.endpoints()).unwrap();
    let numbers = client.stream("numbers");
    numbers.create(Config::new().generator(Generator::new("gen", "count").args(&N))).await.unwrap();
    assert_eq!(numbers.info().await.unwrap().generator_execution, None, "started by its first listener");

    tracing::info!("a worker in a runtime of its own: its death is a process's");
    let (progress_tx, mut progress) = mpsc::unbounded_channel();
    let doomed = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (endpoints, agent) = (c.endpoints(), counter_agent(progress_tx.clone()));
    doomed.spawn(async move {
        // Built in its runtime, so its connections die with it.
        weft_agent::Worker::builder(endpoints).agent(agent).build().unwrap().run().await
    });
    let mut listener = numbers.listener::<u64>().start().await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 10 {
        seen.push(next(&mut listener).await.value);
    }
    let (attempt, _) = progress.recv().await.unwrap();
    assert_eq!(attempt, 1);
    tracing::info!(emitted = seen.len(), "the generator's process dies");
    doomed.shutdown_background();

    let worker = spawn_worker(c.endpoints(), vec![counter_agent(progress_tx)], 4);
    while let Some(item) = tokio::time::timeout(PATIENCE, listener.next()).await.expect("items or the end") {
        seen.push(item.unwrap().value);
    }
    assert_eq!(seen, (1..=N).collect::<Vec<_>>(), "every number once, in order, then the end");
    let info = numbers.info().await.unwrap();
    assert_eq!((info.last_seq, info.closed), (N, Some(Closed::Ok)));
    let execution = client.execution(info.generator_execution.expect("started")).await.unwrap();
    assert_eq!(execution.attempts, 2, "it ran again");
    let mut reruns = 0;
    while let Ok((attempt, _)) = progress.try_recv() {
        reruns += u64::from(attempt == 2);
    }
    assert_eq!(reruns, N, "the rerun emitted everything again, and the fabric kept each once");
    worker.stop().await.unwrap();
    c.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_reference_returned_from_a_call_is_listened_to() {
    init_tracing();
    let c = TestCluster::start(1, |_| {}).await;
    let agent = Agent::new("numbers")
        .generator("count", |_ctx: Context, out: Emitter<u64>, n: u64| async move {
            for i in 1..=n {
                out.emit(&i).await?;
            }
            Ok::<_, Fail>(())
        })
        .generator("broken", |_ctx: Context, out: Emitter<String>, (): ()| async move {
            out.emit(&"one".to_owned()).await?;
            Err::<(), _>(Fail::permanent("the source broke"))
        })
        .delegate("open", |ctx: Context, n: u64| async move {
            let name = format!("count-{}", ctx.execution_id());
            let generator = Generator::new("numbers", "count").args(&n);
            let info = ctx.stream(&name).create(Config::new().generator(generator)).await?;
            Ok::<_, Fail>(info.reference())
        });
    let worker = spawn_worker(c.endpoints(), vec![agent], 4);
    let client = Client::new(c.endpoints()).unwrap();

    let reference: StreamRef = client.call("numbers", "open", &5u64).await.unwrap();
    tracing::info!(?reference, "a stream reference, from a call");
    let mut numbers = client.stream_from(&reference).listener::<u64>().start().await.unwrap();
    assert_eq!(numbers.uid(), reference.uid);
    let mut seen = Vec::new();
    while let Some(item) = tokio::time::timeout(PATIENCE, numbers.next()).await.unwrap() {
        seen.push(item.unwrap().value);
    }
    assert_eq!(seen, [1, 2, 3, 4, 5]);

    tracing::info!("a generator that fails closes its stream with its error");
    let broken = client.stream("broken");
    broken
        .create(Config::new().generator(Generator::new("numbers", "broken").start_on_create(true)))
        .await
        .unwrap();
    let mut l = broken.listener::<String>().start().await.unwrap();
    assert_eq!(next(&mut l).await.value, "one");
    let e = ending(&mut l).await.expect("an error");
    assert!(
        matches!(&e, Error::StreamFailed { message, .. } if message.contains("the source broke")),
        "{e:?}"
    );

    tracing::info!("a generator is not a delegate to call");
    let e = client.call::<_, ()>("numbers", "count", &3u64).await.unwrap_err();
    assert!(matches!(&e, Error::Failed { message, .. } if message.contains("generator")), "{e:?}");
    worker.stop().await.unwrap();
    c.cluster.shutdown().await;
}

//! Streams and cursors in the grid: appends, dedup, limits, close and delete, cursor
//! delivery, acks, redelivery, dead letters; and property tests: replicas agree, a snapshot
//! plus replay equals replay, and deliveries follow a simple model.

use proptest::prelude::*;

use super::cursor::*;
use super::execution::{Effect, Payload};
use super::session::Host;
use super::stream::*;
use super::test_harness::Harness;
use super::{Command, Error, Event, Grid, ListenerEnd, Output};
use crate::codec;

fn create(h: &mut Harness, name: &str, config: StreamConfig) -> u64 {
    match h.ok(Command::CreateStream(Box::new(NewStream { name: name.into(), config }))) {
        Output::Stream { uid, .. } => uid,
        other => panic!("{other:?}"),
    }
}

fn item(text: &str) -> NewItem {
    NewItem { key: None, payload: Payload::json(format!("\"{text}\"")), headers: vec![] }
}

fn keyed(key: &str, text: &str) -> NewItem {
    NewItem { key: Some(key.into()), ..item(text) }
}

fn append_cmd(stream: &str, items: Vec<NewItem>) -> Command {
    Command::Append(Box::new(Append {
        stream: stream.into(),
        items,
        expected_last_seq: None,
        producer: None,
        msg_id: None,
    }))
}

fn append(h: &mut Harness, stream: &str, items: Vec<NewItem>) -> (Seq, Seq) {
    match h.ok(append_cmd(stream, items)) {
        Output::Appended { first_seq, last_seq, duplicate: false } => (first_seq, last_seq),
        other => panic!("{other:?}"),
    }
}

fn attach(
    h: &mut Harness,
    stream: &str,
    cursor: &str,
    config: Option<CursorConfig>,
    key: u64,
    window: u32,
) -> ListenerId {
    let new = NewListener {
        stream: stream.into(),
        cursor: Some(cursor.into()),
        config,
        uid: None,
        host: Host { node: 1, key },
        window,
    };
    match h.ok(Command::Attach(Box::new(new))) {
        Output::Listener { id, .. } => id,
        other => panic!("{other:?}"),
    }
}

/// (listener, seq, token, count) of every delivery so far, and clears the events.
fn deliveries(h: &mut Harness) -> Vec<(ListenerId, Seq, u64, u32)> {
    let out = h
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Delivered { listener, seq, token, count, .. } => Some((*listener, *seq, *token, *count)),
            _ => None,
        })
        .collect();
    h.events.retain(|e| !matches!(e, Event::Delivered { .. }));
    out
}

fn ended(h: &Harness) -> Vec<(ListenerId, ListenerEnd)> {
    h.events
        .iter()
        .filter_map(|e| match e {
            Event::ListenerEnded { listener, end, .. } => Some((*listener, end.clone())),
            _ => None,
        })
        .collect()
}

fn ack(stream: &str, cursor: &str, acks: Vec<(Seq, u64)>) -> Command {
    Command::Ack { stream: stream.into(), cursor: cursor.into(), acks, effects: vec![] }
}

#[test]
fn appends_get_dense_seqs_and_batches_are_atomic() {
    let mut h = Harness::new();
    create(&mut h, "s", StreamConfig::default());
    assert_eq!(append(&mut h, "s", vec![item("a")]), (1, 1));
    assert_eq!(append(&mut h, "s", vec![item("b"), item("c"), item("d")]), (2, 4));
    let bad = append_cmd("s", vec![item("e"), NewItem { key: Some("a..b".into()), ..item("f") }]);
    assert!(matches!(h.apply(bad), Err(Error::InvalidItem { .. })));
    let s = h.grid.stream("s").unwrap();
    assert_eq!((s.first_seq(), s.last_seq, s.items.len()), (1, 4, 4), "the bad batch changed nothing");
    assert!(matches!(h.apply(append_cmd("nope", vec![item("x")])), Err(Error::UnknownStream { .. })));
}

#[test]
fn create_is_idempotent_for_the_same_settings_only() {
    let mut h = Harness::new();
    let uid = create(&mut h, "s", StreamConfig::default());
    assert_eq!(
        h.ok(Command::CreateStream(Box::new(NewStream {
            name: "s".into(),
            config: StreamConfig::default()
        }))),
        Output::Stream { uid, created: false }
    );
    let other = StreamConfig { kind: Kind::Workqueue, ..StreamConfig::default() };
    let again = h.apply(Command::CreateStream(Box::new(NewStream { name: "s".into(), config: other })));
    assert!(matches!(again, Err(Error::StreamExists { .. })));
}

#[test]
fn expected_last_seq_producers_and_msg_ids() {
    let mut h = Harness::new();
    create(&mut h, "s", StreamConfig::default());
    let with = |expected_last_seq, producer: Option<(u64, u64)>, msg_id: Option<&str>| {
        Command::Append(Box::new(Append {
            stream: "s".into(),
            items: vec![item("x")],
            expected_last_seq,
            producer: producer.map(|(epoch, sequence)| ProducerSeq { id: "p".into(), epoch, sequence }),
            msg_id: msg_id.map(String::from),
        }))
    };
    assert!(matches!(
        h.apply(with(Some(3), None, None)),
        Err(Error::LastSeqMismatch { expected: 3, current: 0, .. })
    ));
    assert_eq!(
        h.ok(with(Some(0), None, None)),
        Output::Appended { first_seq: 1, last_seq: 1, duplicate: false }
    );
    // Producer: 1, then 1 again (a retry) is a duplicate with the first answer, 3 is a gap.
    assert_eq!(
        h.ok(with(None, Some((1, 1)), None)),
        Output::Appended { first_seq: 2, last_seq: 2, duplicate: false }
    );
    assert_eq!(
        h.ok(with(None, Some((1, 1)), None)),
        Output::Appended { first_seq: 2, last_seq: 2, duplicate: true }
    );
    assert!(matches!(h.apply(with(None, Some((1, 3)), None)), Err(Error::ProducerRefused { .. })));
    assert_eq!(
        h.ok(with(None, Some((1, 2)), None)),
        Output::Appended { first_seq: 3, last_seq: 3, duplicate: false }
    );
    // An older sequence was applied before: a duplicate, its seqs no longer known.
    assert_eq!(
        h.ok(with(None, Some((1, 1)), None)),
        Output::Appended { first_seq: 0, last_seq: 0, duplicate: true }
    );
    // A new epoch starts at 1; the old epoch is fenced off.
    assert!(matches!(h.apply(with(None, Some((2, 5)), None)), Err(Error::ProducerRefused { .. })));
    assert_eq!(
        h.ok(with(None, Some((2, 1)), None)),
        Output::Appended { first_seq: 4, last_seq: 4, duplicate: false }
    );
    assert!(matches!(h.apply(with(None, Some((1, 3)), None)), Err(Error::ProducerRefused { .. })));
    // Message ids dedup within the window, then are forgotten.
    assert_eq!(
        h.ok(with(None, None, Some("m"))),
        Output::Appended { first_seq: 5, last_seq: 5, duplicate: false }
    );
    assert_eq!(
        h.ok(with(None, None, Some("m"))),
        Output::Appended { first_seq: 5, last_seq: 5, duplicate: true }
    );
    h.at(1_000 + DEFAULT_DEDUP_WINDOW_MS);
    assert_eq!(
        h.ok(with(None, None, Some("m"))),
        Output::Appended { first_seq: 6, last_seq: 6, duplicate: false }
    );
    assert_eq!(h.grid.stream("s").unwrap().last_seq, 6);
}

/// A refused append changes nothing, not even the message ids whose dedup window has passed
/// (found by the `log_entry` fuzz target: they were forgotten before the append was checked).
#[test]
fn a_refused_append_forgets_no_message_id() {
    let mut h = Harness::new();
    create(&mut h, "s", StreamConfig::default());
    let with = |expected_last_seq| {
        Command::Append(Box::new(Append {
            stream: "s".into(),
            items: vec![item("x")],
            expected_last_seq,
            producer: None,
            msg_id: Some("m".into()),
        }))
    };
    h.ok(with(None));
    h.grid.advance_clock(1_000 + DEFAULT_DEDUP_WINDOW_MS);
    let before = h.grid.clone();
    assert!(matches!(h.grid.apply(&with(Some(7))), Err(Error::LastSeqMismatch { .. })));
    assert!(h.grid == before, "a refused append changed the grid");
    // The message id is past its window all the same: the next append is stored.
    h.at(1_000 + DEFAULT_DEDUP_WINDOW_MS);
    assert_eq!(h.ok(with(None)), Output::Appended { first_seq: 2, last_seq: 2, duplicate: false });
}

#[test]
fn limits_discard_old_or_refuse_new() {
    let mut h = Harness::new();
    create(&mut h, "old", StreamConfig { max_items: Some(3), ..StreamConfig::default() });
    create(
        &mut h,
        "new",
        StreamConfig { max_items: Some(3), discard: Discard::New, ..StreamConfig::default() },
    );
    for i in 0..5 {
        append(&mut h, "old", vec![item(&i.to_string())]);
    }
    let s = h.grid.stream("old").unwrap();
    assert_eq!((s.first_seq(), s.last_seq, s.items.len()), (3, 5, 3));
    append(&mut h, "new", vec![item("a"), item("b"), item("c")]);
    let refused = h.apply(append_cmd("new", vec![item("d")]));
    assert!(matches!(&refused, Err(Error::StreamLimit { limit, .. }) if limit == "max_items"), "{refused:?}");
    assert!(
        matches!(
            h.apply(append_cmd("old", vec![item("1"), item("2"), item("3"), item("4")])),
            Err(Error::InvalidItem { .. })
        ),
        "a batch that can never fit"
    );
    // Age: items go once older than max_age_ms, at a tick.
    create(&mut h, "aged", StreamConfig { max_age_ms: Some(100), ..StreamConfig::default() });
    append(&mut h, "aged", vec![item("a")]);
    assert_eq!(h.grid.next_timer_ms(), Some(1_100));
    h.at(1_100).ok(Command::Tick { limit: 10 });
    assert!(h.grid.stream("aged").unwrap().items.is_empty());
    let (_, bytes) = h.grid.stream_totals();
    let sum: u64 = ["old", "new", "aged"].iter().map(|n| h.grid.stream(n).unwrap().bytes).sum();
    assert_eq!(bytes, sum, "the total follows the streams");
}

#[test]
fn competing_listeners_ack_redeliver_and_dead_letter() {
    let mut h = Harness::new();
    create(&mut h, "s", StreamConfig::default());
    create(&mut h, "dlq", StreamConfig::default());
    append(&mut h, "s", vec![item("a"), item("b"), item("c")]);
    let config = CursorConfig {
        ack_wait_ms: 1_000,
        max_deliveries: Some(2),
        dead_letter: Some("dlq".into()),
        ..CursorConfig::default()
    };
    let l1 = attach(&mut h, "s", "c", Some(config), 1, 1);
    let l2 = attach(&mut h, "s", "c", None, 2, 1);
    let d = deliveries(&mut h);
    assert_eq!(
        d.iter().map(|x| (x.0, x.1)).collect::<Vec<_>>(),
        [(l1, 1), (l2, 2)],
        "one item each, window 1"
    );
    let (t1, t2) = (d[0].2, d[1].2);
    // A stale token is refused and nothing changes; the right one frees room for item 3.
    assert!(matches!(h.apply(ack("s", "c", vec![(1, t2)])), Err(Error::StaleAck { .. })));
    assert_eq!(h.ok(ack("s", "c", vec![(1, t1)])), Output::Acked { count: 1 });
    assert_eq!(
        h.ok(ack("s", "c", vec![(1, t1)])),
        Output::Acked { count: 0 },
        "acking again changes nothing"
    );
    let d = deliveries(&mut h);
    assert_eq!(d.iter().map(|x| (x.0, x.1, x.3)).collect::<Vec<_>>(), [(l1, 3, 1)]);
    // l2 goes away: item 2 goes to l1 once it has room.
    h.ok(Command::Detach { listener: l2, reason: "gone".into() });
    assert!(deliveries(&mut h).is_empty(), "l1 is full");
    let t3 = d[0].2;
    h.ok(ack("s", "c", vec![(3, t3)]));
    let d = deliveries(&mut h);
    assert_eq!(d.iter().map(|x| (x.0, x.1, x.3)).collect::<Vec<_>>(), [(l1, 2, 2)], "second delivery of 2");
    let cursor = &h.grid.stream("s").unwrap().cursors["c"];
    assert_eq!((cursor.ack_floor(), cursor.redelivered), (1, 1));
    // Its ack wait runs out: the second delivery was the last, it goes to the dead letters.
    h.at(1_000 + 1_000).ok(Command::Tick { limit: 10 });
    let dlq = h.grid.stream("dlq").unwrap();
    assert_eq!(dlq.last_seq, 1);
    let dead = &dlq.items[&1];
    assert!(dead.headers.contains(&(DEAD_LETTER_SEQ.into(), "2".into())), "{:?}", dead.headers);
    let cursor = &h.grid.stream("s").unwrap().cursors["c"];
    assert_eq!((cursor.ack_floor(), cursor.dead_lettered), (3, 1));
    assert!(
        matches!(h.apply(ack("s", "c", vec![(2, d[0].2)])), Ok(Output::Acked { count: 0 })),
        "done already"
    );
}

const DEAD_LETTER_SEQ: &str = "weft-dead-letter-seq";

#[test]
fn close_ends_caught_up_listeners_and_delete_tells_them() {
    let mut h = Harness::new();
    create(&mut h, "s", StreamConfig::default());
    append(&mut h, "s", vec![item("a")]);
    let l = attach(&mut h, "s", "c", Some(CursorConfig::default()), 1, 10);
    let d = deliveries(&mut h);
    h.ok(Command::CloseStream { stream: "s".into(), error: Some("boom".into()) });
    assert!(ended(&h).is_empty(), "item 1 is not acked yet");
    assert!(matches!(h.apply(append_cmd("s", vec![item("b")])), Err(Error::StreamClosed { .. })));
    h.ok(ack("s", "c", vec![(1, d[0].2)]));
    assert_eq!(ended(&h), [(l, ListenerEnd::Closed(End::Failed("boom".into())))]);
    assert_eq!(
        h.ok(Command::CloseStream { stream: "s".into(), error: Some("boom".into()) }),
        Output::StreamClosed { already: true }
    );
    assert!(matches!(
        h.apply(Command::CloseStream { stream: "s".into(), error: None }),
        Err(Error::StreamClosed { .. })
    ));

    create(&mut h, "t", StreamConfig::default());
    let l2 = attach(&mut h, "t", "c", Some(CursorConfig::default()), 2, 10);
    h.events.clear();
    assert_eq!(h.ok(Command::DeleteStream { stream: "t".into() }), Output::Deleted { existed: true });
    assert!(matches!(&ended(&h)[..], [(id, ListenerEnd::Deleted(_))] if *id == l2));
    assert!(h.grid.listener(l2).is_none() && h.grid.stream("t").is_none());
    let uid = create(&mut h, "t", StreamConfig::default());
    let resume = NewListener {
        stream: "t".into(),
        cursor: None,
        config: Some(CursorConfig { idle_ms: Some(10), ..CursorConfig::default() }),
        uid: Some(uid - 1),
        host: Host { node: 1, key: 9 },
        window: 1,
    };
    assert!(matches!(h.apply(Command::Attach(Box::new(resume))), Err(Error::StreamReplaced { .. })));
}

#[test]
fn workqueue_and_ephemeral_streams_let_go_of_acked_items() {
    let mut h = Harness::new();
    create(&mut h, "wq", StreamConfig { kind: Kind::Workqueue, ..StreamConfig::default() });
    append(&mut h, "wq", vec![item("a"), item("b")]);
    attach(&mut h, "wq", "c", Some(CursorConfig::default()), 1, 10);
    let second = CreateCursor("wq", "d");
    assert!(matches!(h.apply(second), Err(Error::InvalidCursor { .. })), "one cursor per workqueue");
    let d = deliveries(&mut h);
    h.ok(ack("wq", "c", vec![(d[0].1, d[0].2)]));
    assert_eq!(h.grid.stream("wq").unwrap().items.keys().copied().collect::<Vec<_>>(), [2]);

    create(&mut h, "eph", StreamConfig { kind: Kind::Ephemeral, ..StreamConfig::default() });
    append(&mut h, "eph", vec![item("a"), item("b")]);
    h.ok(CreateCursor("eph", "x"));
    h.ok(CreateCursor("eph", "y"));
    let lx = attach(&mut h, "eph", "x", None, 2, 10);
    let dx: Vec<_> = deliveries(&mut h);
    h.ok(ack("eph", "x", dx.iter().map(|d| (d.1, d.2)).collect()));
    assert_eq!(h.grid.stream("eph").unwrap().items.len(), 2, "y has not acked");
    attach(&mut h, "eph", "y", None, 3, 10);
    let dy = deliveries(&mut h);
    assert!(dy.iter().all(|d| d.0 != lx));
    h.ok(ack("eph", "y", dy.iter().map(|d| (d.1, d.2)).collect()));
    assert!(h.grid.stream("eph").unwrap().items.is_empty(), "every cursor acked");
}

#[allow(non_snake_case)]
fn CreateCursor(stream: &str, name: &str) -> Command {
    Command::CreateCursor(Box::new(NewCursor {
        stream: stream.into(),
        name: name.into(),
        config: CursorConfig::default(),
    }))
}

#[test]
fn deliver_policies_and_filters() {
    let mut h = Harness::new();
    create(&mut h, "s", StreamConfig::default());
    append(&mut h, "s", vec![keyed("a.x", "1"), keyed("b.x", "2"), keyed("a.y", "3"), keyed("a.x", "4")]);
    let seqs = |h: &mut Harness, key, deliver, filter: Option<&str>| {
        let config = CursorConfig { deliver, filter: filter.map(String::from), ..CursorConfig::default() };
        attach(h, "s", key, Some(config), 1, 100);
        deliveries(h).into_iter().map(|d| d.1).collect::<Vec<_>>()
    };
    assert_eq!(seqs(&mut h, "all", DeliverPolicy::All, None), [1, 2, 3, 4]);
    assert_eq!(seqs(&mut h, "new", DeliverPolicy::New, None), Vec::<Seq>::new());
    assert_eq!(seqs(&mut h, "last", DeliverPolicy::Last, None), [4]);
    assert_eq!(seqs(&mut h, "lpk", DeliverPolicy::LastPerKey, None), [2, 3, 4]);
    assert_eq!(seqs(&mut h, "from", DeliverPolicy::FromSeq(3), None), [3, 4]);
    assert_eq!(seqs(&mut h, "a", DeliverPolicy::All, Some("a.*")), [1, 3, 4]);
    assert_eq!(seqs(&mut h, "ax", DeliverPolicy::All, Some("*.x")), [1, 2, 4]);
    append(&mut h, "s", vec![keyed("b.y", "5")]);
    let fresh: Vec<_> = deliveries(&mut h).into_iter().map(|d| d.1).collect();
    assert_eq!(fresh.len(), 5, "all, new, last, lpk, from get 5; the filtered do not: {fresh:?}");
}

#[test]
fn unnamed_cursors_go_when_idle() {
    let mut h = Harness::new();
    create(&mut h, "s", StreamConfig::default());
    let new = NewListener {
        stream: "s".into(),
        cursor: None,
        config: Some(CursorConfig { idle_ms: Some(500), ..CursorConfig::default() }),
        uid: None,
        host: Host { node: 1, key: 1 },
        window: 4,
    };
    let Output::Listener { id, cursor, .. } = h.ok(Command::Attach(Box::new(new.clone()))) else { panic!() };
    assert!(cursor.starts_with(UNNAMED_PREFIX));
    h.ok(Command::Detach { listener: id, reason: "bye".into() });
    // A listener that comes back in time (a failover) resumes on it by its name.
    let resume = NewListener { cursor: Some(cursor.clone()), config: None, ..new.clone() };
    assert!(Command::Attach(Box::new(resume.clone())).validate_shape().is_ok());
    let Output::Listener { id, cursor: again, .. } =
        h.at(1_200).ok(Command::Attach(Box::new(resume.clone())))
    else {
        panic!()
    };
    assert_eq!(again, cursor);
    h.at(1_200).ok(Command::Detach { listener: id, reason: "bye".into() });
    assert_eq!(h.grid.next_timer_ms(), Some(1_700));
    h.at(1_700).ok(Command::Tick { limit: 10 });
    assert!(h.grid.stream("s").unwrap().cursors.is_empty());
    // Gone: naming it does not make it again, not even with settings.
    let late = NewListener { config: new.config.clone(), ..resume };
    assert!(matches!(h.at(1_800).apply(Command::Attach(Box::new(late))), Err(Error::UnknownCursor { .. })));
    assert!(h.grid.stream("s").unwrap().cursors.is_empty());
    let bad = NewListener { cursor: Some(format!("{UNNAMED_PREFIX}a b")), ..new };
    assert!(Command::Attach(Box::new(bad)).validate_shape().is_err());
}

#[test]
fn ack_none_cursors_use_credit() {
    let mut h = Harness::new();
    create(&mut h, "s", StreamConfig::default());
    append(&mut h, "s", (0..5).map(|i| item(&i.to_string())).collect());
    let l = attach(
        &mut h,
        "s",
        "c",
        Some(CursorConfig { ack: AckPolicy::None, ..CursorConfig::default() }),
        1,
        2,
    );
    assert_eq!(deliveries(&mut h).len(), 2);
    h.ok(Command::Credit { listener: l, items: 2 });
    assert_eq!(deliveries(&mut h).into_iter().map(|d| (d.1, d.2)).collect::<Vec<_>>(), [(3, 0), (4, 0)]);
    assert!(matches!(h.apply(ack("s", "c", vec![(3, 0)])), Err(Error::InvalidCursor { .. })));
}

/// A listener that consumes an item, writes state and appends what it made does all of it in
/// one ack, or none of it: a stale token or a failing effect changes nothing.
#[test]
fn acks_with_effects_are_atomic() {
    let mut h = Harness::new();
    create(&mut h, "in", StreamConfig::default());
    create(&mut h, "out", StreamConfig::default());
    append(&mut h, "in", vec![item("a"), item("b")]);
    attach(&mut h, "in", "c", Some(CursorConfig::default()), 1, 10);
    let d = deliveries(&mut h);
    let effects = |version: Option<u64>| {
        vec![
            Effect::Put {
                namespace: "shared/totals".into(),
                key: "k".into(),
                value: b"1".to_vec(),
                ttl_ms: None,
                expected_version: version,
            },
            Effect::Append { stream: "out".into(), items: vec![item("A")] },
        ]
    };
    let with = |seq, token, effects| Command::Ack {
        stream: "in".into(),
        cursor: "c".into(),
        acks: vec![(seq, token)],
        effects,
    };
    // A stale token: nothing at all.
    assert!(matches!(h.apply(with(1, d[1].2, effects(None))), Err(Error::StaleAck { .. })));
    // A state conflict: nothing at all.
    assert!(matches!(h.apply(with(1, d[0].2, effects(Some(7)))), Err(Error::VersionMismatch { .. })));
    // An instance namespace or a call: refused.
    let instance = vec![Effect::Put {
        namespace: "instance/a/b".into(),
        key: "k".into(),
        value: vec![],
        ttl_ms: None,
        expected_version: None,
    }];
    assert!(matches!(h.apply(with(1, d[0].2, instance)), Err(Error::InvalidCompletion { .. })));
    // A fence whose grant does not hold (nobody holds the lease): nothing at all.
    let fenced = [effects(None), vec![Effect::Fence { lease: "l".into(), token: 1 }]].concat();
    assert!(matches!(h.apply(with(1, d[0].2, fenced)), Err(Error::LeaseLost { .. })));
    assert_eq!(h.grid.stream("out").unwrap().last_seq, 0);
    assert!(h.grid.get("shared/totals", "k").is_none());
    assert_eq!(h.grid.stream("in").unwrap().cursors["c"].ack_floor(), 0);
    // All of it.
    h.ok(with(1, d[0].2, effects(None)));
    assert_eq!(h.grid.stream("out").unwrap().last_seq, 1);
    assert!(h.grid.get("shared/totals", "k").is_some());
    assert_eq!(h.grid.stream("in").unwrap().cursors["c"].ack_floor(), 1);
    // The same ack sent again (its outcome was unknown): refused, its effects not applied twice.
    assert!(matches!(h.apply(with(1, d[0].2, effects(None))), Err(Error::StaleAck { .. })));
    assert_eq!(h.grid.stream("out").unwrap().last_seq, 1, "appended once");
    // A plain ack of a done item still changes nothing, and succeeds.
    assert_eq!(h.ok(ack("in", "c", vec![(1, d[0].2)])), Output::Acked { count: 0 });
    // Closing the output refuses the next one whole.
    h.ok(Command::CloseStream { stream: "out".into(), error: None });
    assert!(matches!(h.apply(with(2, d[1].2, effects(None))), Err(Error::StreamClosed { .. })));
    assert_eq!(h.grid.stream("in").unwrap().cursors["c"].ack_floor(), 1);
}

/// A completion's effects may append to streams and ack a delivery, with its result.
#[test]
fn completions_append_and_ack_with_their_result() {
    use super::execution::Status;
    use super::test_harness::{complete_cmd, new_exec};
    let mut h = Harness::new();
    create(&mut h, "in", StreamConfig::default());
    create(&mut h, "out", StreamConfig::default());
    append(&mut h, "in", vec![item("a")]);
    attach(&mut h, "in", "c", Some(CursorConfig::default()), 1, 10);
    let d = deliveries(&mut h);
    h.open(&["w"], 1);
    let id = h.create(new_exec("w", "job"));
    let token = h.token(id);
    let stale = vec![
        Effect::Append { stream: "out".into(), items: vec![item("x")] },
        Effect::Ack { stream: "in".into(), cursor: "c".into(), seq: 1, token: d[0].2 + 99 },
    ];
    assert!(matches!(
        h.apply(complete_cmd(id, token, Ok(Payload::json("1")), stale)),
        Err(Error::StaleAck { .. })
    ));
    assert_eq!(
        (h.exec(id).status, h.grid.stream("out").unwrap().last_seq),
        (Status::Assigned, 0),
        "nothing applied"
    );
    let good = vec![
        Effect::Append { stream: "out".into(), items: vec![item("x"), item("y")] },
        Effect::Ack { stream: "in".into(), cursor: "c".into(), seq: 1, token: d[0].2 },
    ];
    h.ok(complete_cmd(id, token, Ok(Payload::json("1")), good.clone()));
    assert_eq!(h.exec(id).status, Status::Completed);
    assert_eq!(h.grid.stream("out").unwrap().last_seq, 2);
    assert_eq!(h.grid.stream("in").unwrap().cursors["c"].ack_floor(), 1);
    // Another execution that consumed the same delivery cannot commit it a second time.
    let other = h.create(new_exec("w", "job"));
    let other_token = h.token(other);
    assert!(matches!(
        h.apply(complete_cmd(other, other_token, Ok(Payload::json("1")), good)),
        Err(Error::StaleAck { .. })
    ));
    assert_eq!(h.grid.stream("out").unwrap().last_seq, 2, "nothing applied twice");
}

/// A generator stream starts its execution at the first listener (or at creation when eager),
/// closes with its outcome, and a deleted generator stream cancels its execution.
#[test]
fn generators_start_on_first_listener_and_close_with_their_outcome() {
    use super::execution::{FailureKind, HandlerError, Status};
    use super::test_harness::{complete_cmd, new_exec};
    let mut h = Harness::new();
    h.open(&["gen"], 10);
    let spec = |eager| Some(Box::new(Generator { call: new_exec("gen", "numbers"), eager }));
    create(&mut h, "lazy", StreamConfig { generator: spec(false), ..StreamConfig::default() });
    assert_eq!(h.grid.stream("lazy").unwrap().generator_execution, None, "no listener yet");
    attach(&mut h, "lazy", "c", Some(CursorConfig::default()), 1, 10);
    let id = h.grid.stream("lazy").unwrap().generator_execution.expect("started by the listener");
    assert_eq!(h.grid.generator_stream(id), Some("lazy"));
    // Its appends carry its execution as producer: a run after a crash appends nothing twice.
    let produce = |sequence: u64| {
        Command::Append(Box::new(Append {
            stream: "lazy".into(),
            items: vec![item(&sequence.to_string())],
            expected_last_seq: None,
            producer: Some(ProducerSeq { id: format!("execution-{id}"), epoch: 1, sequence }),
            msg_id: None,
        }))
    };
    h.ok(produce(1));
    h.ok(produce(2));
    assert!(matches!(h.ok(produce(1)), Output::Appended { duplicate: true, .. }), "the rerun's first item");
    assert!(matches!(h.ok(produce(2)), Output::Appended { duplicate: true, .. }));
    h.ok(produce(3));
    assert_eq!(h.grid.stream("lazy").unwrap().last_seq, 3);
    let token = h.token(id);
    h.ok(complete_cmd(id, token, Ok(Payload::json("null")), vec![]));
    assert_eq!(h.grid.stream("lazy").unwrap().closed, Some(End::Ok));

    create(&mut h, "eager", StreamConfig { generator: spec(true), ..StreamConfig::default() });
    let id = h.grid.stream("eager").unwrap().generator_execution.expect("started at creation");
    let token = h.token(id);
    h.ok(complete_cmd(id, token, Err(HandlerError { message: "boom".into(), retryable: false }), vec![]));
    assert!(matches!(&h.grid.stream("eager").unwrap().closed, Some(End::Failed(m)) if m.contains("boom")));

    create(&mut h, "doomed", StreamConfig { generator: spec(true), ..StreamConfig::default() });
    let id = h.grid.stream("doomed").unwrap().generator_execution.unwrap();
    h.ok(Command::DeleteStream { stream: "doomed".into() });
    let e = h.exec(id);
    assert_eq!(e.status, Status::Cancelled);
    assert!(matches!(&e.outcome, Some(Err(f)) if f.kind == FailureKind::Cancelled));
}

// ---- properties ------------------------------------------------------------------------

const STREAMS: [&str; 2] = ["s", "t"];

/// A random command over two streams, two cursors and a few listeners: the tests below
/// replay these logs.
fn arb_command() -> impl Strategy<Value = Command> {
    let stream = prop::sample::select(STREAMS.to_vec()).prop_map(String::from);
    let cursor = prop::sample::select(vec!["c", "d"]).prop_map(String::from);
    let kind = prop::sample::select(vec![Kind::Persistent, Kind::Ephemeral, Kind::Workqueue]);
    prop_oneof![
        1 => (stream.clone(), kind, prop::option::of(1u64..6)).prop_map(|(name, kind, max_items)| {
            Command::CreateStream(Box::new(NewStream { name, config: StreamConfig { kind, max_items, ..StreamConfig::default() } }))
        }),
        6 => (stream.clone(), 1usize..4, prop::option::of(0u64..8), prop::option::of((1u64..3, 1u64..5))).prop_map(
            |(stream, n, expected_last_seq, producer)| Command::Append(Box::new(Append {
                stream,
                items: (0..n).map(|i| item(&i.to_string())).collect(),
                expected_last_seq,
                producer: producer.map(|(epoch, sequence)| ProducerSeq { id: "p".into(), epoch, sequence }),
                msg_id: None,
            }))
        ),
        3 => (stream.clone(), cursor.clone(), 1u64..4, 1u32..4).prop_map(|(stream, cursor, key, window)| {
            let config = CursorConfig { ack_wait_ms: 50, max_deliveries: Some(3), ..CursorConfig::default() };
            Command::Attach(Box::new(NewListener { stream, cursor: Some(cursor), config: Some(config), uid: None, host: Host { node: 1, key }, window }))
        }),
        1 => (1u64..8).prop_map(|listener| Command::Detach { listener, reason: "x".into() }),
        5 => (stream.clone(), cursor.clone(), 1u64..10, 1u64..30, any::<bool>()).prop_map(|(stream, cursor, seq, token, effect)| {
            let effects = if effect { vec![Effect::Append { stream: "t".into(), items: vec![item("e")] }] } else { vec![] };
            Command::Ack { stream, cursor, acks: vec![(seq, token)], effects }
        }),
        1 => (stream.clone(), cursor, 1u64..10, 1u64..30).prop_map(|(stream, cursor, seq, token)| Command::Nack { stream, cursor, seq, token }),
        1 => stream.clone().prop_map(|stream| Command::CloseStream { stream, error: None }),
        1 => stream.prop_map(|stream| Command::DeleteStream { stream }),
        2 => (1u64..4).prop_map(|limit| Command::Tick { limit }),
    ]
}

fn arb_log() -> impl Strategy<Value = Vec<(u64, Vec<Command>)>> {
    prop::collection::vec((0u64..400, prop::collection::vec(arb_command(), 0..4)), 0..50)
}

fn replay(
    grid: &mut Grid,
    log: &[(u64, Vec<Command>)],
    events: &mut Vec<Event>,
) -> Vec<Vec<Result<Output, Error>>> {
    log.iter().map(|(now, cmds)| grid.apply_batch_with_events(*now, cmds, events)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Restoring a snapshot at any point and replaying the rest gives the same grid, the same
    /// responses and the same events as replaying the whole log; two replicas agree.
    #[test]
    fn replay_equals_snapshot_plus_replay(log in arb_log(), cut in any::<prop::sample::Index>()) {
        let cut = cut.index(log.len() + 1);
        let (mut full, mut full_events) = (Grid::default(), Vec::new());
        let full_out = replay(&mut full, &log, &mut full_events);
        let (mut twin, mut twin_events) = (Grid::default(), Vec::new());
        prop_assert_eq!(&replay(&mut twin, &log, &mut twin_events), &full_out);
        prop_assert_eq!(&twin, &full);
        prop_assert_eq!(&twin_events, &full_events);

        let mut before = Grid::default();
        replay(&mut before, &log[..cut], &mut Vec::new());
        let mut restored: Grid = codec::decode(&codec::encode(&before)).unwrap();
        let rest_out = replay(&mut restored, &log[cut..], &mut Vec::new());
        prop_assert_eq!(&restored, &full);
        prop_assert_eq!(&rest_out[..], &full_out[cut..]);
    }

    /// Against a model: seqs are dense and each stream's items are the appends that were
    /// accepted, in order (no duplicate from a repeated producer sequence); every delivery
    /// names a stored item; a cursor's listeners never hold more than their window; no
    /// item is delivered to two listeners of a cursor at once; the byte total is the sum.
    #[test]
    fn streams_follow_the_model(log in arb_log()) {
        let mut grid = Grid::default();
        // stream -> seqs accepted, in order (reset when the stream is deleted)
        let mut model: std::collections::BTreeMap<String, Vec<Seq>> = Default::default();
        for (now, cmds) in log.iter().flat_map(|(now, cmds)| cmds.iter().map(move |c| (now, c))) {
            let mut events = Vec::new();
            let result = grid.apply_batch_with_events(*now, std::slice::from_ref(cmds), &mut events).pop().unwrap();
            {
                let (cmd, result) = (cmds, &result);
                match (cmd, result) {
                    (Command::CreateStream(new), Ok(Output::Stream { created: true, .. })) => {
                        model.insert(new.name.clone(), Vec::new());
                    }
                    (Command::Append(a), Ok(Output::Appended { first_seq, last_seq, duplicate: false })) => {
                        let seqs = model.get_mut(&a.stream).expect("appended to a stream the model knows");
                        let expected_first = seqs.last().map_or(1, |s| s + 1);
                        prop_assert_eq!(*first_seq, expected_first, "dense");
                        prop_assert_eq!(*last_seq - *first_seq + 1, a.items.len() as u64);
                        seqs.extend(*first_seq..=*last_seq);
                    }
                    (Command::Append(a), Ok(Output::Appended { last_seq, duplicate: true, .. })) => {
                        prop_assert!(*last_seq == 0 || model[&a.stream].contains(last_seq), "a duplicate names stored seqs (or 0: no longer known)");
                    }
                    (Command::DeleteStream { stream }, Ok(Output::Deleted { existed: true })) => {
                        model.remove(stream);
                    }
                    // An ack's effects append too, in order, before the acks.
                    (Command::Ack { effects, .. }, Ok(Output::Acked { .. })) => {
                        for effect in effects {
                            if let Effect::Append { stream, items } = effect {
                                let seqs = model.get_mut(stream).expect("appended to a stream the model knows");
                                let first = seqs.last().map_or(1, |s| s + 1);
                                seqs.extend(first..first + items.len() as u64);
                            }
                        }
                    }
                    _ => {}
                }
            }
            for e in &events {
                if let Event::Delivered { stream, seq, .. } = e {
                    prop_assert!(model.get(stream).is_some_and(|s| s.contains(seq)), "delivered {} {} was appended", stream, seq);
                }
            }
            let mut total = 0;
            for name in STREAMS {
                let Some(s) = grid.stream(name) else {
                    prop_assert!(!model.contains_key(name));
                    continue;
                };
                prop_assert_eq!(s.last_seq, model[name].last().copied().unwrap_or(0));
                prop_assert!(s.items.keys().all(|k| model[name].contains(k)));
                total += s.bytes;
                for c in s.cursors.values() {
                    for id in &c.listeners {
                        let l = grid.listener(*id).expect("a cursor's listener exists");
                        prop_assert!(l.in_flight <= l.window);
                        let held = c.unacked.values().filter(|d| d.listener == *id).count() as u32;
                        prop_assert!(held <= l.in_flight);
                    }
                    prop_assert!(c.unacked.keys().all(|s| !c.queued.contains_key(s)), "held and queued at once");
                }
            }
            prop_assert_eq!(grid.stream_totals().1, total);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// What a listener's ack filter leans on (`Cursor::check_ack`): along any log, an ack of
    /// a delivered token that a replica finds done stays done, and one it finds stale never
    /// becomes current again; so a replica behind the leader may answer those itself.
    #[test]
    fn an_ack_found_stale_or_done_never_becomes_current(log in arb_log()) {
        let mut grid = Grid::default();
        // Every token delivered so far: (stream, seq, token).
        let mut issued: Vec<(String, Seq, u64)> = Vec::new();
        // (stream uid, cursor, seq, token) -> found done (false: found stale).
        let mut found: std::collections::BTreeMap<(u64, String, Seq, u64), bool> = Default::default();
        for (now, cmds) in &log {
            let mut events = Vec::new();
            grid.apply_batch_with_events(*now, cmds, &mut events);
            for e in &events {
                if let Event::Delivered { stream, seq, token, .. } = e {
                    issued.push((stream.clone(), *seq, *token));
                }
            }
            for (stream, seq, token) in &issued {
                let Some(s) = grid.stream(stream) else { continue };
                for (name, c) in &s.cursors {
                    let key = (s.uid, name.clone(), *seq, *token);
                    let done = match c.check_ack(stream, *seq, *token) {
                        Ok(AckCheck::Current) => {
                            prop_assert!(!found.contains_key(&key), "{:?} is current again", key);
                            continue;
                        }
                        Ok(AckCheck::Done) => true,
                        Err(Error::StaleAck { .. }) => false,
                        Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
                    };
                    if let Some(was_done) = found.insert(key.clone(), done) {
                        prop_assert!(!was_done || done, "{:?} was done and is stale now", key);
                    }
                }
            }
        }
    }
}

/// An ack, a nack or a detach takes its delivery's ack timer with it, so the timers follow
/// what waits for an ack rather than everything delivered within an ack wait; and a stream
/// holds at most MAX_CURSORS_PER_STREAM cursors.
#[test]
fn ack_timers_go_with_their_deliveries_and_cursors_are_bounded() {
    let mut h = Harness::new();
    create(&mut h, "s", StreamConfig::default());
    append(&mut h, "s", (0..3).map(|i| item(&i.to_string())).collect());
    let l = attach(&mut h, "s", "c", Some(CursorConfig::default()), 1, 10);
    let d = deliveries(&mut h);
    assert_eq!(h.grid.streams.ack_timers.len(), 3);
    h.ok(ack("s", "c", vec![(d[0].1, d[0].2)]));
    h.ok(Command::Nack { stream: "s".into(), cursor: "c".into(), seq: d[1].1, token: d[1].2 });
    assert_eq!(h.grid.streams.ack_timers.len(), 2, "one acked, one nacked and delivered again");
    h.ok(Command::Detach { listener: l, reason: "bye".into() });
    assert!(h.grid.streams.ack_timers.is_empty());
    assert_eq!(h.grid.next_timer_ms(), None);

    for i in h.grid.stream("s").unwrap().cursors.len()..MAX_CURSORS_PER_STREAM {
        h.ok(CreateCursor("s", &format!("k{i}")));
    }
    assert!(matches!(h.apply(CreateCursor("s", "one-more")), Err(Error::TooMany { .. })));
}

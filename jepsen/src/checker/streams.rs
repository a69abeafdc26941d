//! The streams checker: producers append batches of unique values to one stream (a retry
//! carries the same producer id, epoch, sequence and values); consumers record every item a
//! listener of the durable cursor got; after the faults, one final read of the whole stream
//! and a drain of the cursor ([`crate::streams`]). Promise 3, anomaly by anomaly:
//!
//! | promise | anomaly when |
//! |---|---|
//! | (a) one order | the final read's seqs are not exactly 1..=N; an item a consumer got at seq s has another value than the read at s (or the read has no s, unless it came from an append of unknown outcome applied after the read); an append invoked after another was acknowledged sits at a lower seq (real time) |
//! | (b) no acknowledged append lost | an append answered `ok` has a value missing from the read, or the read holds its values at other seqs than it was told |
//! | (c) a retried producer sequence is stored once | a value appears at two seqs (every value belongs to one append, sent again only by retries of it) |
//! | (d) every item is delivered | an item of the read never reached a consumer with its value, once the run drained the cursor |
//! | batches are atomic | some but not all values of an append are in the read, or not at consecutive seqs in order |
//! | nothing else appears | a value no append carried, or one of an append that certainly failed (every attempt refused or not applied) |
//! | the cursor delivers each time once | two deliveries of one seq carry the same delivery count, or a listener got new items (count 1) out of seq order |
//!
//! Appends of unknown outcome (`info`, or retried until `ok` with `duplicate`) may or may
//! not be in the read, but at most once: the verdict counts them as present or absent.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::json;

use super::{Validity, Verdict};
use crate::history::{self, Event, Op, Type};

/// Most anomalies listed by name in each kind of a verdict.
pub const MAX_LISTED: usize = 20;

/// An append: producer, epoch, sequence.
type Key = (String, u64, u64);

fn name(k: &Key) -> String {
    format!("{} epoch {} sequence {}", k.0, k.1, k.2)
}

/// What the attempts of one append say.
#[derive(Debug, Default)]
struct Append {
    values: Vec<String>,
    /// Its operations (positions in `history::operations`).
    ops: Vec<usize>,
    /// `(first_seq, last_seq, duplicate, completed at)` of each `ok` attempt.
    answers: Vec<(u64, u64, bool, u64)>,
    fail: usize,
    info: usize,
    /// The first attempt's invoke: it cannot have been applied before.
    invoked_ns: u64,
    /// An attempt carried other values (a bug of the workload, not of the fabric).
    other_values: bool,
}

impl Append {
    fn acknowledged(&self) -> bool {
        !self.answers.is_empty()
    }
    fn certainly_failed(&self) -> bool {
        self.answers.is_empty() && self.info == 0 && self.fail > 0
    }
}

/// One item a consumer got.
#[derive(Debug)]
struct Delivery<'a> {
    op: usize,
    consumer: u64,
    session: u64,
    seq: u64,
    value: &'a str,
    deliveries: u32,
    node: Option<u64>,
}

/// Anomalies by kind, each a list of lines (the first [`MAX_LISTED`] kept) and a count.
#[derive(Debug, Default)]
struct Anomalies {
    kinds: BTreeMap<&'static str, (usize, Vec<String>)>,
    /// Operations the anomalies name, for the failing sub-history.
    ops: BTreeSet<usize>,
}

impl Anomalies {
    fn add(&mut self, kind: &'static str, line: String, ops: impl IntoIterator<Item = usize>) {
        let (count, lines) = self.kinds.entry(kind).or_default();
        *count += 1;
        if lines.len() < MAX_LISTED {
            lines.push(line);
            self.ops.extend(ops);
        }
    }
    fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }
}

/// Checks the appends, deliveries, final read and drain of `events`.
pub fn check(events: &[Event]) -> Verdict {
    let ops = history::operations(events);
    let node_of: HashMap<u64, u64> = events.iter().filter_map(|e| Some((e.index, e.node?))).collect();
    let mut appends: BTreeMap<Key, Append> = BTreeMap::new();
    let mut deliveries: Vec<Delivery> = Vec::new();
    let mut read: Option<(usize, &[(u64, String)])> = None;
    let mut drain: Option<(usize, Type, Option<u64>)> = None;
    let mut sessions = 0usize;
    for (i, o) in ops.iter().enumerate() {
        match &o.op {
            Op::Append { producer, epoch, sequence, values, first_seq, last_seq, duplicate } => {
                let a = appends.entry((producer.clone(), *epoch, *sequence)).or_default();
                if a.ops.is_empty() {
                    a.values = values.clone();
                    a.invoked_ns = o.invoke_ns;
                } else if a.values != *values {
                    a.other_values = true;
                }
                a.ops.push(i);
                match o.ty {
                    Type::Ok => a.answers.push((
                        first_seq.unwrap_or(0),
                        last_seq.unwrap_or(0),
                        duplicate.unwrap_or(false),
                        o.complete_ns.unwrap_or(u64::MAX),
                    )),
                    Type::Fail => a.fail += 1,
                    _ => a.info += 1,
                }
            }
            Op::Deliver { consumer, session, seq, value, deliveries: count, .. } => {
                deliveries.push(Delivery {
                    op: i,
                    consumer: *consumer,
                    session: *session,
                    seq: *seq,
                    value,
                    deliveries: *count,
                    node: node_of.get(&o.index).copied(),
                })
            }
            Op::Listen { .. } => sessions += 1,
            Op::ReadStream { items: Some(items) } if o.ty == Type::Ok => read = Some((i, items)),
            Op::Drain { ack_floor, .. } if o.ty != Type::Invoke => drain = Some((i, o.ty, *ack_floor)),
            _ => {}
        }
    }
    let tally = |ty| ops.iter().filter(|o| o.ty == ty && matches!(o.op, Op::Append { .. })).count();
    let (ok_ops, fail_ops, info_ops) = (tally(Type::Ok), tally(Type::Fail), tally(Type::Info));
    let acknowledged = appends.values().filter(|a| a.acknowledged()).count();
    let unknown: Vec<&Key> =
        appends.iter().filter(|(_, a)| !a.acknowledged() && a.info > 0).map(|(k, _)| k).collect();
    let failed = appends.values().filter(|a| a.certainly_failed()).count();
    let figures = json!({
        "append_ops": { "ok": ok_ops, "fail": fail_ops, "info": info_ops },
        "appends": appends.len(), "acknowledged": acknowledged, "unknown": unknown.len(), "failed": failed,
        "retried": appends.values().filter(|a| a.ops.len() > 1).count(),
        "answered_duplicate": appends.values().filter(|a| a.answers.iter().any(|x| x.2)).count(),
        "deliveries": deliveries.len(),
        "redeliveries": deliveries.iter().filter(|d| d.deliveries > 1).count(),
        "acks": {
            "ok": deliveries.iter().filter(|d| ops[d.op].ty == Type::Ok).count(),
            "stale": deliveries.iter().filter(|d| ops[d.op].ty == Type::Fail).count(),
            "unanswered": deliveries.iter().filter(|d| ops[d.op].ty == Type::Info).count(),
        },
        "listen_sessions": sessions,
        "consumers": deliveries.iter().map(|d| d.consumer).collect::<BTreeSet<_>>().len(),
    });
    let Some((read_op, items)) = read else {
        return Verdict {
            checker: "streams".into(),
            validity: Validity::Unknown,
            summary: "no successful final read".into(),
            details: figures,
            failing: None,
        };
    };

    let mut bad = Anomalies::default();
    let ops_of = |k: &Key| appends.get(k).map(|a| a.ops.clone()).unwrap_or_default();

    // (a) One order: dense seqs from 1.
    for (i, (seq, _)) in items.iter().enumerate() {
        if *seq != i as u64 + 1 {
            bad.add("order", format!("item {} of the final read has seq {seq}", i + 1), []);
        }
    }
    let last = items.last().map_or(0, |(s, _)| *s);
    let by_seq: BTreeMap<u64, &str> = items.iter().map(|(s, v)| (*s, v.as_str())).collect();
    let mut at: HashMap<&str, Vec<u64>> = HashMap::new();
    for (seq, value) in items {
        at.entry(value.as_str()).or_default().push(*seq);
    }
    let mut owner: HashMap<&str, &Key> = HashMap::new();
    for (k, a) in &appends {
        for v in &a.values {
            owner.insert(v.as_str(), k);
        }
        if a.other_values {
            bad.add("workload", format!("{}: its attempts carried different values", name(k)), a.ops.clone());
        }
    }

    // (c) Stored once; and nothing nobody appended.
    for (value, seqs) in &at {
        match owner.get(value) {
            None => {
                bad.add("unexpected", format!("seqs {seqs:?} hold {value:?}, which no append carried"), [])
            }
            Some(k) if seqs.len() > 1 => {
                bad.add("duplicate", format!("{value:?} of {} is at seqs {seqs:?}", name(k)), ops_of(k))
            }
            Some(_) => {}
        }
    }

    // (b) Acknowledged appends at their seqs; batches whole; certain failures absent.
    let mut present_unknown = 0;
    let mut present: Vec<(&Key, u64)> = Vec::new();
    for (k, a) in &appends {
        let firsts: Vec<Option<u64>> = a.values.iter().map(|v| at.get(v.as_str()).map(|s| s[0])).collect();
        let found = firsts.iter().flatten().count();
        if found > 0
            && let Some(min) = firsts.iter().flatten().min()
        {
            present.push((k, *min));
        }
        if a.acknowledged() {
            if found < a.values.len() {
                let missing: Vec<&String> =
                    a.values.iter().zip(&firsts).filter(|(_, f)| f.is_none()).map(|(v, _)| v).collect();
                let (f, l, ..) = a.answers[0];
                bad.add(
                    "lost",
                    format!("{} was acknowledged at seqs {f}..={l}; {missing:?} missing", name(k)),
                    ops_of(k),
                );
            }
            for &(f, l, dup, _) in &a.answers {
                let told: Vec<u64> = (f..=l).collect();
                let held: Vec<Option<&str>> = told.iter().map(|s| by_seq.get(s).copied()).collect();
                let want: Vec<Option<&str>> = a.values.iter().map(|v| Some(v.as_str())).collect();
                if held != want {
                    let dup = if dup { " (duplicate)" } else { "" };
                    bad.add(
                        "lost",
                        format!(
                            "{} was told seqs {f}..={l}{dup}, where the read holds {held:?}, not {want:?}",
                            name(k)
                        ),
                        ops_of(k),
                    );
                }
            }
        } else if a.certainly_failed() && found > 0 {
            bad.add(
                "failed-present",
                format!("{} certainly failed, yet {found} of its values are in the read", name(k)),
                ops_of(k),
            );
        } else if found > 0 {
            present_unknown += 1;
        }
        if found > 0 && found < a.values.len() && !a.acknowledged() {
            bad.add(
                "torn",
                format!("{}: only {found} of its {} values are in the read", name(k), a.values.len()),
                ops_of(k),
            );
        }
        if found == a.values.len()
            && let Some(Some(first)) = firsts.first()
            && firsts.iter().enumerate().any(|(i, f)| *f != Some(first + i as u64))
        {
            bad.add(
                "torn",
                format!("{}: its values are at seqs {firsts:?}, not consecutive", name(k)),
                ops_of(k),
            );
        }
    }

    // (a) Real time: an append invoked after another was answered sits above it. Where an
    // append is is where its values first are in the read (a copy appended later by a plain
    // retry does not count), or where its answer put it when they are not.
    let placed: HashMap<&Key, u64> = appends
        .iter()
        .filter_map(|(k, a)| {
            let firsts: Option<Vec<u64>> =
                a.values.iter().map(|v| at.get(v.as_str()).map(|s| s[0])).collect();
            Some((k, firsts?.into_iter().max()?))
        })
        .collect();
    let mut answered: Vec<(u64, u64, &Key)> = appends
        .iter()
        .flat_map(|(k, a)| a.answers.iter().map(move |x| (x.3, x.1, k)))
        .map(|(t, l, k)| (t, placed.get(k).copied().unwrap_or(l), k))
        .collect();
    answered.sort();
    let mut highest: Vec<(u64, &Key)> = Vec::with_capacity(answered.len());
    for (_, l, k) in &answered {
        let best = highest.last().filter(|(h, _)| *h >= *l).copied().unwrap_or((*l, *k));
        highest.push(best);
    }
    for (k, first) in &present {
        let invoked = appends[*k].invoked_ns;
        let before = answered.partition_point(|(t, ..)| *t < invoked);
        if before > 0 {
            let (high, other) = highest[before - 1];
            if high >= *first {
                let mut named = ops_of(k);
                named.extend(ops_of(other));
                bad.add(
                    "order",
                    format!("{} is at seq {first}, below seq {high} of {}, which was acknowledged before it was invoked", name(k), name(other)),
                    named,
                );
            }
        }
    }

    // (a) Every delivery as read; the cursor hands out each (seq, count) once, new items in order.
    let mut delivered: BTreeSet<u64> = BTreeSet::new();
    let mut late = 0;
    let mut counts: HashMap<(u64, u32), usize> = HashMap::new();
    let mut newest: HashMap<(u64, u64), (u64, usize)> = HashMap::new();
    for d in &deliveries {
        let who = format!(
            "consumer {} (session {}, node {:?}) got seq {} (delivery {})",
            d.consumer, d.session, d.node, d.seq, d.deliveries
        );
        match by_seq.get(&d.seq) {
            Some(v) if *v == d.value => {
                delivered.insert(d.seq);
            }
            Some(v) => {
                let mut named = vec![d.op];
                named.extend(owner.get(d.value).map(|k| ops_of(k)).unwrap_or_default());
                named.extend(owner.get(v).map(|k| ops_of(k)).unwrap_or_default());
                bad.add("order", format!("{who} = {:?}; the read holds {v:?} there", d.value), named);
            }
            None => {
                // After the read, only an append of unknown outcome that the read lacks can
                // still have been applied.
                let k = owner.get(d.value);
                let allowed = d.seq > last
                    && k.is_some_and(|k| !appends[*k].acknowledged() && !at.contains_key(d.value));
                if allowed {
                    late += 1;
                } else {
                    let mut named = vec![d.op];
                    named.extend(k.map(|k| ops_of(k)).unwrap_or_default());
                    bad.add(
                        "order",
                        format!("{who} = {:?}, beyond the read's last seq {last}", d.value),
                        named,
                    );
                }
            }
        }
        if let Some(other) = counts.insert((d.seq, d.deliveries), d.op) {
            bad.add("cursor", format!("{who}, a delivery count seen before"), [other, d.op]);
        }
        if d.deliveries == 1 {
            let slot = newest.entry((d.consumer, d.session)).or_insert((0, d.op));
            if d.seq <= slot.0 {
                bad.add("cursor", format!("{who} after new seq {}", slot.0), [slot.1, d.op]);
            }
            *slot = (d.seq.max(slot.0), d.op);
        }
    }

    // (d) Every item delivered, given the drain.
    let undelivered: Vec<u64> = by_seq.keys().copied().filter(|s| !delivered.contains(s)).collect();
    let drained = drain.is_some_and(|(_, ty, floor)| ty == Type::Ok && floor.is_some_and(|f| f >= last));
    let mut undecided = false;
    if !undelivered.is_empty() {
        match drain {
            Some(_) => {
                let how = if drained { "the cursor says acknowledged" } else { "the cursor did not drain" };
                for seq in &undelivered {
                    let named = owner.get(by_seq[seq]).map(|k| ops_of(k)).unwrap_or_default();
                    bad.add(
                        "undelivered",
                        format!("seq {seq} ({:?}) reached no consumer; {how}", by_seq[seq]),
                        named,
                    );
                }
            }
            None => undecided = true,
        }
    }

    let valid = bad.is_empty();
    let redeliveries = deliveries.iter().filter(|d| d.deliveries > 1).count();
    let summary = if valid {
        let drain = match drain {
            Some(_) if drained => "drained".to_owned(),
            Some(_) => "every item delivered, though the drain did not finish".to_owned(),
            None => "no drain".to_owned(),
        };
        let mut s = format!(
            "{last} items at seqs 1..={last}; all {acknowledged} acknowledged appends at their seqs; {present_unknown} of {} unknown present, once; no duplicates; {} deliveries ({redeliveries} redelivered) over {sessions} listener sessions, all as read; {drain}",
            unknown.len(),
            deliveries.len(),
        );
        if undecided {
            s.push_str(&format!("; {} items undelivered and no drain to judge them by", undelivered.len()));
        }
        s
    } else {
        bad.kinds.iter().map(|(kind, (n, _))| format!("{n} {kind}")).collect::<Vec<_>>().join(", ")
    };
    let failing = (!valid).then(|| {
        let mut keep = BTreeSet::new();
        for i in bad.ops.iter().copied().chain([read_op]).chain(drain.map(|d| d.0)) {
            keep.insert(ops[i].index);
            keep.extend(ops[i].complete_index);
        }
        events.iter().filter(|e| keep.contains(&e.index)).cloned().collect()
    });
    let mut details = figures;
    details["items"] = json!(last);
    details["present_unknown"] = json!(present_unknown);
    details["delivered_after_read"] = json!(late);
    details["undelivered"] = json!(undelivered.len());
    details["drained"] = json!(drained);
    details["drain_ack_floor"] = json!(drain.and_then(|d| d.2));
    details["anomalies"] = json!(
        bad.kinds
            .iter()
            .map(|(k, (n, lines))| (k.to_string(), json!({ "count": n, "first": lines })))
            .collect::<serde_json::Map<_, _>>()
    );
    let validity = match (valid, undecided) {
        (false, _) => Validity::Invalid,
        (true, true) => Validity::Unknown,
        (true, false) => Validity::Valid,
    };
    Verdict { checker: "streams".into(), validity, summary, details, failing }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds histories: each call adds an invoke and its completion.
    #[derive(Default)]
    struct H {
        events: Vec<Event>,
        process: u64,
    }

    impl H {
        fn push(&mut self, process: u64, ty: Type, f: Op, error: Option<&str>) {
            let index = self.events.len() as u64;
            self.events.push(Event {
                index,
                time_ns: index * 10,
                process: Some(process),
                ty,
                f,
                node: Some(1),
                error: error.map(str::to_owned),
            });
        }
        fn op(&mut self, invoke: Op, ty: Type, done: Op) {
            self.process += 1;
            let p = self.process;
            self.push(p, Type::Invoke, invoke, None);
            let error = (ty != Type::Ok).then_some("Unavailable: no answer");
            self.push(p, ty, done, error);
        }
        /// An attempt of producer `p`'s append `sequence` with `values`; `seqs` on ok.
        fn append(
            &mut self,
            p: &str,
            sequence: u64,
            values: &[&str],
            ty: Type,
            seqs: Option<(u64, u64, bool)>,
        ) {
            let op = |s: Option<(u64, u64, bool)>| Op::Append {
                producer: p.into(),
                epoch: 1,
                sequence,
                values: values.iter().map(|v| v.to_string()).collect(),
                first_seq: s.map(|x| x.0),
                last_seq: s.map(|x| x.1),
                duplicate: s.map(|x| x.2),
            };
            self.op(op(None), ty, op(seqs));
        }
        fn deliver(&mut self, consumer: u64, session: u64, seq: u64, value: &str, deliveries: u32) {
            let op = Op::Deliver {
                consumer,
                session,
                seq,
                value: value.into(),
                deliveries,
                token: seq * 100 + u64::from(deliveries),
            };
            self.op(op.clone(), Type::Ok, op);
        }
        fn read(&mut self, items: &[(u64, &str)]) {
            let items = items.iter().map(|(s, v)| (*s, v.to_string())).collect();
            self.op(Op::ReadStream { items: None }, Type::Ok, Op::ReadStream { items: Some(items) });
        }
        fn drain(&mut self, ty: Type, floor: u64) {
            let op = |f: Option<u64>| Op::Drain {
                want: floor,
                ack_floor: f,
                last_seq: f,
                delivered: None,
                redelivered: None,
            };
            self.op(op(None), ty, op(Some(floor)));
        }
        fn check(&self) -> Verdict {
            check(&self.events)
        }
    }

    /// Two producers, a retried append answered as a duplicate, an unknown one applied and
    /// one not, a failed one; every item delivered, one twice.
    fn clean() -> H {
        let mut h = H::default();
        h.append("p0", 1, &["a1", "a2"], Type::Ok, Some((1, 2, false)));
        h.append("p1", 1, &["b1"], Type::Info, None);
        h.append("p1", 1, &["b1"], Type::Ok, Some((3, 3, true)));
        h.append("p0", 2, &["a3"], Type::Info, None);
        h.append("p1", 2, &["b2", "b3", "b4"], Type::Fail, None);
        h.append("p1", 2, &["b2", "b3", "b4"], Type::Info, None);
        h.append("p0", 3, &["a5"], Type::Fail, None);
        h.deliver(0, 1, 1, "a1", 1);
        h.deliver(1, 1, 2, "a2", 1);
        h.deliver(0, 1, 3, "b1", 1);
        h.deliver(1, 2, 3, "b1", 2);
        h.deliver(0, 1, 4, "b2", 1);
        h.deliver(0, 1, 5, "b3", 1);
        h.deliver(1, 2, 6, "b4", 1);
        h.read(&[(1, "a1"), (2, "a2"), (3, "b1"), (4, "b2"), (5, "b3"), (6, "b4")]);
        h.drain(Type::Ok, 6);
        h
    }

    fn kinds(v: &Verdict) -> Vec<String> {
        v.details["anomalies"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }

    #[test]
    fn a_clean_history_is_valid() {
        let v = clean().check();
        assert_eq!(v.validity, Validity::Valid, "{v:?}");
        assert_eq!(v.details["items"], 6);
        assert_eq!(v.details["present_unknown"], 1, "b2-b4 applied, a3 not");
        assert_eq!(v.details["redeliveries"], 1);
        assert!(v.summary.contains("drained"), "{}", v.summary);
    }

    #[test]
    fn a_gap_or_another_value_at_a_seq_breaks_the_one_order() {
        let mut h = clean();
        h.deliver(1, 2, 2, "a1", 2);
        let v = h.check();
        assert_eq!(v.validity, Validity::Invalid);
        assert_eq!(kinds(&v), ["order"]);
        let failing = v.failing.unwrap();
        assert!(failing.iter().any(|e| matches!(&e.f, Op::Deliver { value, seq: 2, .. } if value == "a1")));
        assert!(failing.iter().any(|e| matches!(e.f, Op::ReadStream { .. })));

        let mut h = H::default();
        h.append("p0", 1, &["a1"], Type::Ok, Some((1, 1, false)));
        h.append("p0", 2, &["a2"], Type::Ok, Some((3, 3, false)));
        h.deliver(0, 1, 1, "a1", 1);
        h.deliver(0, 1, 3, "a2", 1);
        h.read(&[(1, "a1"), (3, "a2")]);
        h.drain(Type::Ok, 3);
        assert_eq!(kinds(&h.check()), ["order"], "seq 2 is missing");
    }

    #[test]
    fn an_append_below_one_acknowledged_before_it_is_out_of_real_time_order() {
        let mut h = H::default();
        h.append("p0", 1, &["a1"], Type::Ok, Some((2, 2, false)));
        // Invoked after a1 was acknowledged at seq 2, yet stored at seq 1.
        h.append("p1", 1, &["b1"], Type::Ok, Some((1, 1, false)));
        h.deliver(0, 1, 1, "b1", 1);
        h.deliver(0, 1, 2, "a1", 1);
        h.read(&[(1, "b1"), (2, "a1")]);
        h.drain(Type::Ok, 2);
        let v = h.check();
        assert_eq!(kinds(&v), ["order"], "{v:?}");
        assert!(v.summary.contains("1 order"));
    }

    #[test]
    fn a_lost_or_moved_acknowledged_append_is_caught() {
        let mut h = H::default();
        h.append("p0", 1, &["a1"], Type::Ok, Some((1, 1, false)));
        h.append("p0", 2, &["a2"], Type::Ok, Some((2, 2, false)));
        h.deliver(0, 1, 1, "a1", 1);
        h.read(&[(1, "a1")]);
        h.drain(Type::Ok, 1);
        let v = h.check();
        assert_eq!(kinds(&v), ["lost"], "{v:?}");
        assert_eq!(v.details["anomalies"]["lost"]["count"], 2, "missing, and not at its seq");

        let mut h = H::default();
        h.append("p0", 1, &["a1"], Type::Ok, Some((2, 2, false)));
        h.append("p1", 1, &["b1"], Type::Info, None);
        h.deliver(0, 1, 1, "a1", 1);
        h.deliver(0, 1, 2, "b1", 1);
        h.read(&[(1, "a1"), (2, "b1")]);
        h.drain(Type::Ok, 2);
        assert_eq!(kinds(&h.check()), ["lost"], "told seq 2, read at seq 1");
    }

    #[test]
    fn a_retried_append_stored_twice_is_a_duplicate() {
        // What `--appends plain` does: the first attempt was applied after all, and its retry
        // appended the values again.
        let mut h = H::default();
        h.append("p0", 1, &["a1", "a2"], Type::Info, None);
        h.append("p0", 1, &["a1", "a2"], Type::Ok, Some((3, 4, false)));
        for (seq, v) in [(1, "a1"), (2, "a2"), (3, "a1"), (4, "a2")] {
            h.deliver(0, 1, seq, v, 1);
        }
        h.read(&[(1, "a1"), (2, "a2"), (3, "a1"), (4, "a2")]);
        h.drain(Type::Ok, 4);
        let v = h.check();
        assert_eq!(kinds(&v), ["duplicate"], "{v:?}");
        assert_eq!(v.details["anomalies"]["duplicate"]["count"], 2);
        let failing = v.failing.unwrap();
        assert_eq!(failing.iter().filter(|e| matches!(e.f, Op::Append { .. })).count(), 4);
    }

    #[test]
    fn an_item_that_reached_no_consumer_is_undelivered() {
        let mut h = clean();
        h.events.retain(|e| !matches!(&e.f, Op::Deliver { seq: 5, .. }));
        let v = h.check();
        assert_eq!(kinds(&v), ["undelivered"], "{v:?}");
        // Without a drain, nobody waited for it: undecided.
        let mut h = clean();
        h.events.retain(|e| !matches!(&e.f, Op::Deliver { seq: 5, .. } | Op::Drain { .. }));
        assert_eq!(h.check().validity, Validity::Unknown);
        // A drain that gave up does not excuse it.
        let mut h = clean();
        h.events.retain(|e| !matches!(&e.f, Op::Deliver { seq: 5, .. } | Op::Drain { .. }));
        h.drain(Type::Info, 4);
        assert_eq!(kinds(&h.check()), ["undelivered"]);
    }

    #[test]
    fn torn_batches_failed_appends_and_strangers_are_caught() {
        let mut h = H::default();
        h.append("p0", 1, &["a1", "a2"], Type::Info, None);
        h.append("p1", 1, &["b1"], Type::Fail, None);
        h.deliver(0, 1, 1, "a1", 1);
        h.deliver(0, 1, 2, "b1", 1);
        h.deliver(0, 1, 3, "zz", 1);
        h.read(&[(1, "a1"), (2, "b1"), (3, "zz")]);
        h.drain(Type::Ok, 3);
        let v = h.check();
        assert_eq!(kinds(&v), ["failed-present", "torn", "unexpected"], "{v:?}");

        let mut h = H::default();
        h.append("p0", 1, &["a1", "a2"], Type::Info, None);
        h.append("p1", 1, &["b1"], Type::Info, None);
        h.deliver(0, 1, 1, "a1", 1);
        h.deliver(0, 1, 2, "b1", 1);
        h.deliver(0, 1, 3, "a2", 1);
        h.read(&[(1, "a1"), (2, "b1"), (3, "a2")]);
        h.drain(Type::Ok, 3);
        assert_eq!(kinds(&h.check()), ["torn"], "a batch split by another append");
    }

    #[test]
    fn the_cursor_hands_out_each_delivery_once_and_new_items_in_order() {
        let mut h = clean();
        h.deliver(0, 1, 2, "a2", 1);
        let v = h.check();
        assert_eq!(kinds(&v), ["cursor"], "{v:?}");
        assert_eq!(
            v.details["anomalies"]["cursor"]["count"], 2,
            "count 1 twice, and below seq 5 in session 1"
        );
    }

    #[test]
    fn items_delivered_after_the_read_may_only_be_unknown_appends() {
        let mut h = clean();
        // a3's first attempt was unknown; it was applied after the final read.
        h.deliver(0, 1, 7, "a3", 1);
        let v = h.check();
        assert_eq!(v.validity, Validity::Valid, "{v:?}");
        assert_eq!(v.details["delivered_after_read"], 1);
        let mut h = clean();
        h.deliver(0, 1, 7, "a1", 1);
        assert_eq!(kinds(&h.check()), ["order"]);
    }

    #[test]
    fn no_final_read_is_unknown() {
        let mut h = clean();
        h.events.retain(|e| !matches!(e.f, Op::ReadStream { .. }));
        let v = h.check();
        assert_eq!(v.validity, Validity::Unknown);
        assert_eq!(v.details["acknowledged"], 2, "figures are given all the same");
    }

    /// A simulated stream with exactly-once producers (`dedup`) or without: each planned
    /// append is (producer, batch size, outcome 0 ok / 1 fail / 2 unknown, applied if
    /// unknown, retried after it). Consumers get every item, some twice.
    fn simulate(plan: &[(u8, u8, u8, bool, bool)], dedup: bool) -> (H, Vec<(u64, String)>) {
        let mut h = H::default();
        let mut stream: Vec<(u64, String)> = Vec::new();
        let mut applied: BTreeMap<(u8, u64), (u64, u64)> = BTreeMap::new();
        let mut next: BTreeMap<u8, u64> = BTreeMap::new();
        // A producer's append that is not done yet: tried again with the same values.
        let mut pending: BTreeMap<u8, Vec<String>> = BTreeMap::new();
        for &(p, size, outcome, applied_if_unknown, retry) in plan {
            let producer = p % 3;
            let sequence = *next.entry(producer).or_insert(0) + 1;
            let name = format!("p{producer}");
            let values = pending
                .remove(&producer)
                .unwrap_or_else(|| (0..=size % 3).map(|i| format!("{name}-{sequence}-{i}")).collect());
            let refs: Vec<&str> = values.iter().map(String::as_str).collect();
            let apply = |stream: &mut Vec<(u64, String)>, applied: &mut BTreeMap<(u8, u64), (u64, u64)>| {
                if dedup && let Some(seqs) = applied.get(&(producer, sequence)) {
                    return (seqs.0, seqs.1, true);
                }
                let first = stream.len() as u64 + 1;
                for v in &values {
                    stream.push((stream.len() as u64 + 1, v.clone()));
                }
                let seqs = (first, stream.len() as u64);
                applied.insert((producer, sequence), seqs);
                (seqs.0, seqs.1, false)
            };
            let done = match outcome % 3 {
                0 => {
                    let s = apply(&mut stream, &mut applied);
                    h.append(&name, sequence, &refs, Type::Ok, Some(s));
                    true
                }
                1 => {
                    h.append(&name, sequence, &refs, Type::Fail, None);
                    false
                }
                _ => {
                    if applied_if_unknown {
                        apply(&mut stream, &mut applied);
                    }
                    h.append(&name, sequence, &refs, Type::Info, None);
                    if retry {
                        let s = apply(&mut stream, &mut applied);
                        h.append(&name, sequence, &refs, Type::Ok, Some(s));
                    }
                    retry || applied_if_unknown
                }
            };
            if done {
                next.insert(producer, sequence);
            } else {
                pending.insert(producer, values.clone());
            }
        }
        for (i, (seq, v)) in stream.iter().enumerate() {
            h.deliver(i as u64 % 2, 1, *seq, v, 1);
            if i % 5 == 0 {
                h.deliver((i as u64 + 1) % 2, 2, *seq, v, 2);
            }
        }
        let items: Vec<(u64, &str)> = stream.iter().map(|(s, v)| (*s, v.as_str())).collect();
        h.read(&items);
        h.drain(Type::Ok, stream.len() as u64);
        (h, stream)
    }

    fn plans() -> impl Strategy<Value = Vec<(u8, u8, u8, bool, bool)>> {
        proptest::collection::vec((0u8..3, 0u8..3, 0u8..3, any::<bool>(), any::<bool>()), 1..60)
    }

    proptest! {
        #[test]
        fn every_simulated_exactly_once_history_is_valid(plan in plans()) {
            let (h, _) = simulate(&plan, true);
            let v = h.check();
            prop_assert_eq!(v.validity, Validity::Valid, "{:?}", v);
        }

        #[test]
        fn a_retry_without_dedup_of_an_applied_append_is_caught(plan in plans()) {
            let doubled = plan.iter().any(|&(_, _, o, applied, retry)| o % 3 == 2 && applied && retry);
            let (h, _) = simulate(&plan, false);
            let v = h.check();
            if doubled {
                prop_assert_eq!(v.validity, Validity::Invalid);
                prop_assert!(kinds(&v).contains(&"duplicate".to_string()), "{:?}", v);
            } else {
                prop_assert_eq!(v.validity, Validity::Valid, "{:?}", v);
            }
        }

        #[test]
        fn corrupting_the_read_or_a_delivery_is_caught(plan in plans(), pick in any::<usize>(), how in 0u8..4) {
            let (mut h, stream) = simulate(&plan, true);
            prop_assume!(stream.len() >= 2);
            // Not the last item: a read without it could be one taken before an unknown
            // append was applied.
            let victim = pick % (stream.len() - 1);
            let last = h.events.len() - 3;
            match how {
                // Drop an item from the read: a gap (and maybe a lost acknowledged append).
                0 => {
                    let Op::ReadStream { items: Some(items) } = &mut h.events[last].f else { unreachable!() };
                    items.remove(victim);
                }
                // Swap two values in the read: deliveries disagree.
                1 => {
                    let Op::ReadStream { items: Some(items) } = &mut h.events[last].f else { unreachable!() };
                    let other = (victim + 1) % items.len();
                    let (a, b) = (items[victim].1.clone(), items[other].1.clone());
                    items[victim].1 = b;
                    items[other].1 = a;
                }
                // A consumer got another value at a seq.
                2 => {
                    let seq = stream[victim].0;
                    let value = stream[(victim + 1) % stream.len()].1.clone();
                    for e in h.events.iter_mut() {
                        if let Op::Deliver { seq: s, value: v, .. } = &mut e.f && *s == seq {
                            *v = value.clone();
                        }
                    }
                }
                // Nobody got an item.
                _ => {
                    let seq = stream[victim].0;
                    h.events.retain(|e| !matches!(&e.f, Op::Deliver { seq: s, .. } if *s == seq));
                }
            }
            let v = h.check();
            prop_assert_eq!(v.validity, Validity::Invalid, "{:?}", v);
            prop_assert!(v.failing.is_some());
        }
    }
}

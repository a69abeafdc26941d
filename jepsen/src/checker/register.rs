//! The register checker: each key is a register with read, write and compare-and-set, and
//! the operations on each key must be linearizable (linearizability is compositional, so
//! keys are checked one by one).
//!
//! The model is exact for what the workload does: every write and compare-and-set stores a
//! value no other operation stores, so a value names the one write that made it, and the
//! version a worker read with a value is that value's version. A compare-and-set that
//! expects the version of value `from` therefore succeeds exactly when the register holds
//! `from`, and the model is a register of `Option<u64>` (absent = `None`):
//!
//! | operation | outcome | allowed in state `s` | next state |
//! |---|---|---|---|
//! | read → v | ok | `s == v` | `s` |
//! | write v | ok or unknown | always | `v` |
//! | cas from → to | ok | `s == from` | `to` |
//! | cas from → to | failed precondition | `s != from` | `s` |
//! | cas from → to | unknown | always | `to` if `s == from`, else `s` |
//!
//! Reads that failed or timed out and writes that certainly failed change nothing and are
//! left out. Besides the search, the checker holds every value to one version: the same
//! value seen at two versions means a write was applied twice.
//!
//! When a key fails, the checker shrinks its history to a small sub-history that is still
//! not linearizable on its own. It only removes what cannot make a linearizable history look
//! broken: operations without effect, and writes whose value nothing left in the
//! sub-history observes (while no failed compare-and-set is left that could tell).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::json;

use super::linearizable::{self, Entry, Model, Outcome};
use super::{Validity, Verdict};
use crate::history::{self, Event, Op, Type};

/// Bounds on the register checker.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Most search steps per key before the verdict for that key is unknown.
    pub max_steps_per_key: u64,
    /// Time allowed for shrinking a failing key's history.
    pub shrink_budget: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self { max_steps_per_key: 20_000_000, shrink_budget: Duration::from_secs(20) }
    }
}

/// A register operation with its result, as the model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegOp {
    /// A read that returned this value.
    Read(Option<u64>),
    /// A write (acknowledged or of unknown outcome).
    Write(u64),
    /// An acknowledged compare-and-set.
    Cas { from: Option<u64>, to: u64 },
    /// A compare-and-set refused because the register did not hold `from`.
    CasRefused { from: Option<u64> },
    /// A compare-and-set of unknown outcome.
    CasUnknown { from: Option<u64>, to: u64 },
}

impl RegOp {
    fn has_effect(&self) -> bool {
        matches!(self, RegOp::Write(_) | RegOp::Cas { .. } | RegOp::CasUnknown { .. })
    }
    fn written(&self) -> Option<u64> {
        match *self {
            RegOp::Write(v) | RegOp::Cas { to: v, .. } | RegOp::CasUnknown { to: v, .. } => Some(v),
            _ => None,
        }
    }
    fn observed(&self) -> Option<u64> {
        match *self {
            RegOp::Read(v) => v,
            RegOp::Cas { from, .. } | RegOp::CasRefused { from } | RegOp::CasUnknown { from, .. } => from,
            RegOp::Write(_) => None,
        }
    }
}

/// The sequential register (see the module docs for the table).
pub struct Register;

impl Model for Register {
    type State = Option<u64>;
    type Op = RegOp;
    fn init(&self) -> Option<u64> {
        None
    }
    fn step(&self, s: &Option<u64>, op: &RegOp) -> Option<Option<u64>> {
        match *op {
            RegOp::Read(v) => (*s == v).then_some(*s),
            RegOp::Write(v) => Some(Some(v)),
            RegOp::Cas { from, to } => (*s == from).then_some(Some(to)),
            RegOp::CasRefused { from } => (*s != from).then_some(*s),
            RegOp::CasUnknown { from, to } => Some(if *s == from { Some(to) } else { *s }),
        }
    }
}

/// The model's view of one operation, or `None` when it has no bearing on the register.
fn reg_entry(o: &history::Operation) -> Option<(String, Entry<RegOp>)> {
    let done = |op| Entry { op, call: o.invoke_ns, ret: o.complete_ns };
    let unknown = |op| Entry { op, call: o.invoke_ns, ret: None };
    let (key, entry) = match (&o.op, o.ty) {
        (Op::Read { key, value, .. }, Type::Ok) => (key, done(RegOp::Read(*value))),
        (Op::Write { key, value, .. }, Type::Ok) => (key, done(RegOp::Write(*value))),
        (Op::Write { key, value, .. }, Type::Info) => (key, unknown(RegOp::Write(*value))),
        (Op::Cas { key, from, to, .. }, Type::Ok) => (key, done(RegOp::Cas { from: *from, to: *to })),
        (Op::Cas { key, from, to, .. }, Type::Info) => {
            (key, unknown(RegOp::CasUnknown { from: *from, to: *to }))
        }
        _ => return None,
    };
    Some((key.clone(), entry))
}

/// Whether a failed operation failed because its precondition did not hold (rather than
/// because it never reached the state).
pub fn is_refusal(error: Option<&str>) -> bool {
    error.is_some_and(|e| e.starts_with("FailedPrecondition"))
}

/// The key's version a refused compare-and-set reports (`... current is N ...`).
pub fn refused_at(error: Option<&str>) -> Option<u64> {
    let rest = error?.split("current is ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Checks the register operations of `events`.
pub fn check(events: &[Event], options: Options) -> Verdict {
    let ops = history::operations(events);
    let errors: HashMap<u64, Option<String>> =
        events.iter().filter(|e| e.process.is_some()).map(|e| (e.index, e.error.clone())).collect();
    // Every value's versions, and the value of each (key, version) seen.
    let mut versions: BTreeMap<(String, u64), HashSet<u64>> = BTreeMap::new();
    let mut by_version: HashMap<(String, u64), u64> = HashMap::new();
    for o in ops.iter().filter(|o| o.ty == Type::Ok) {
        let seen = match &o.op {
            Op::Read { key, value: Some(v), version: Some(ver) } => Some((key, *v, *ver)),
            Op::Write { key, value, version: Some(ver) } => Some((key, *value, *ver)),
            Op::Cas { key, to, version: Some(ver), .. } => Some((key, *to, *ver)),
            _ => None,
        };
        if let Some((key, v, ver)) = seen {
            versions.entry((key.clone(), v)).or_default().insert(ver);
            by_version.insert((key.clone(), ver), v);
        }
    }
    let mut per_key: BTreeMap<String, Vec<(Entry<RegOp>, usize)>> = BTreeMap::new();
    for (i, o) in ops.iter().enumerate() {
        let error = o.complete_index.and_then(|c| errors.get(&c).cloned().flatten());
        let entry = match (&o.op, o.ty) {
            (Op::Cas { key, from, .. }, Type::Fail) if is_refusal(error.as_deref()) => {
                // A refusal names the version the key had when the CAS was applied: when that
                // version's value is known, the refusal is a read of it (which also implies
                // "not `from`"); otherwise all we know is "not `from`".
                let op = match refused_at(error.as_deref()) {
                    Some(0) => RegOp::Read(None),
                    Some(ver) => match by_version.get(&(key.clone(), ver)) {
                        Some(v) => RegOp::Read(Some(*v)),
                        None => RegOp::CasRefused { from: *from },
                    },
                    None => RegOp::CasRefused { from: *from },
                };
                Some((key.clone(), Entry { op, call: o.invoke_ns, ret: o.complete_ns }))
            }
            _ => reg_entry(o),
        };
        if let Some((key, entry)) = entry {
            per_key.entry(key).or_default().push((entry, i));
        }
    }

    let mut validity = Validity::Valid;
    let mut keys = serde_json::Map::new();
    let mut failing: Option<Vec<Event>> = None;
    let mut bad_keys = Vec::new();
    let mut unknown_keys = Vec::new();
    for (key, entries) in &per_key {
        let (outcome, entries) = check_key(entries, options);
        let entries = &entries;
        let word = match &outcome {
            Outcome::Linearizable => "linearizable".to_string(),
            Outcome::NotLinearizable { .. } => {
                validity = Validity::Invalid;
                bad_keys.push(key.clone());
                if failing.is_none() {
                    let small = shrink(entries.clone(), options);
                    failing = Some(sub_history(events, &ops, small.iter().map(|(_, i)| *i)));
                }
                "NOT linearizable".to_string()
            }
            Outcome::Unknown { steps } => {
                validity = validity.and(Validity::Unknown);
                unknown_keys.push(key.clone());
                format!("unknown after {steps} search steps")
            }
        };
        keys.insert(key.clone(), json!({ "operations": entries.len(), "result": word }));
    }
    let duplicates: Vec<String> = versions
        .iter()
        .filter(|(_, vs)| vs.len() > 1)
        .map(|((k, v), vs)| format!("key {k}: value {v} seen at versions {vs:?} (applied twice?)"))
        .collect();
    if !duplicates.is_empty() {
        validity = Validity::Invalid;
    }
    let count = |ty| {
        ops.iter()
            .filter(|o| o.ty == ty && matches!(o.op, Op::Read { .. } | Op::Write { .. } | Op::Cas { .. }))
            .count()
    };
    let summary = match validity {
        Validity::Valid => format!("{} keys linearizable", per_key.len()),
        Validity::Invalid if !bad_keys.is_empty() => {
            format!("not linearizable on key(s) {}", bad_keys.join(", "))
        }
        Validity::Invalid => format!("{} value(s) seen at two versions", duplicates.len()),
        Validity::Unknown => format!("search bound hit on key(s) {}", unknown_keys.join(", ")),
    };
    Verdict {
        checker: "register".into(),
        validity,
        summary,
        details: json!({
            "ok": count(Type::Ok), "fail": count(Type::Fail), "info": count(Type::Info),
            "keys": keys, "duplicate_versions": duplicates,
            "failing_operations": failing.as_ref().map(|f| f.len() / 2),
        }),
        failing,
    }
}

/// Checks one key. Writes and compare-and-sets of unknown outcome whose value nothing
/// observes are left out first: each could be placed last (its completion is infinitely
/// late), so if the rest is linearizable the whole is; and removing one from a linearization
/// of the whole leaves a linearization of the rest, unless a refused compare-and-set whose
/// cause is not known ([`RegOp::CasRefused`]) could follow it, so those writes are kept. The
/// verdict on the rest is the verdict on the whole, and the search, which pays for every
/// operation left open, gets much cheaper. Returns the outcome and the entries it is about.
fn check_key(entries: &[(Entry<RegOp>, usize)], options: Options) -> (Outcome, Vec<(Entry<RegOp>, usize)>) {
    let observed: HashSet<u64> = entries.iter().filter_map(|(e, _)| e.op.observed()).collect();
    let last_refusal = entries
        .iter()
        .filter(|(e, _)| matches!(e.op, RegOp::CasRefused { .. }))
        .map(|(e, _)| e.ret.unwrap_or(u64::MAX))
        .max();
    let prunable = |e: &Entry<RegOp>| {
        e.ret.is_none()
            && e.op.written().is_some_and(|v| !observed.contains(&v))
            && last_refusal.is_none_or(|r| e.call >= r)
    };
    let kept: Vec<(Entry<RegOp>, usize)> = entries.iter().filter(|(e, _)| !prunable(e)).cloned().collect();
    let plain: Vec<Entry<RegOp>> = kept.iter().map(|(e, _)| e.clone()).collect();
    (linearizable::check(&Register, &plain, options.max_steps_per_key), kept)
}

/// The invoke and completion events of the given operations, in history order.
fn sub_history(
    events: &[Event],
    ops: &[history::Operation],
    which: impl Iterator<Item = usize>,
) -> Vec<Event> {
    let mut keep = HashSet::new();
    for i in which {
        keep.insert(ops[i].index);
        if let Some(c) = ops[i].complete_index {
            keep.insert(c);
        }
    }
    events.iter().filter(|e| keep.contains(&e.index)).cloned().collect()
}

fn is_broken(entries: &[(Entry<RegOp>, usize)], options: Options) -> bool {
    let plain: Vec<Entry<RegOp>> = entries.iter().map(|(e, _)| e.clone()).collect();
    matches!(
        linearizable::check(&Register, &plain, options.max_steps_per_key),
        Outcome::NotLinearizable { .. }
    )
}

/// Whether dropping `removed` from a history that leaves `kept` cannot turn a linearizable
/// history into a broken one (see the module docs).
fn sound_removal(removed: &[(Entry<RegOp>, usize)], kept: &[(Entry<RegOp>, usize)]) -> bool {
    if removed.iter().all(|(e, _)| !e.op.has_effect()) {
        return true;
    }
    if kept.iter().any(|(e, _)| matches!(e.op, RegOp::CasRefused { .. })) {
        return false;
    }
    let observed: HashSet<u64> = kept.iter().filter_map(|(e, _)| e.op.observed()).collect();
    removed.iter().filter_map(|(e, _)| e.op.written()).all(|v| !observed.contains(&v))
}

/// Shrinks a non-linearizable key history (delta debugging over chunks), within the budget.
pub fn shrink(mut current: Vec<(Entry<RegOp>, usize)>, options: Options) -> Vec<(Entry<RegOp>, usize)> {
    let deadline = Instant::now() + options.shrink_budget;
    let mut chunk = current.len().div_ceil(2).max(1);
    loop {
        let before = current.len();
        let mut i = 0;
        while i < current.len() {
            if Instant::now() > deadline {
                return current;
            }
            let end = (i + chunk).min(current.len());
            let removed = &current[i..end];
            let kept: Vec<_> = current[..i].iter().chain(current[end..].iter()).cloned().collect();
            if sound_removal(removed, &kept) && is_broken(&kept, options) {
                current = kept;
            } else {
                i = end;
            }
        }
        // Removing one operation can make another removable (a refused compare-and-set
        // pins every write): at single steps, go on until a pass removes nothing.
        if chunk == 1 && current.len() == before {
            return current;
        }
        chunk = chunk.div_ceil(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Phase;
    use proptest::prelude::*;

    /// (process, op, invoke time, completion time, type, error).
    type Planned<'a> = (u64, Op, u64, u64, Type, Option<&'a str>);

    /// Builds a history from planned operations.
    fn history(ops: &[Planned]) -> Vec<Event> {
        let mut points = Vec::new();
        for (p, op, call, ret, ty, err) in ops {
            points.push((*call, *p, Type::Invoke, op.clone(), None));
            points.push((*ret, *p, *ty, op.clone(), err.map(String::from)));
        }
        points.sort_by_key(|x| (x.0, x.2 != Type::Invoke));
        points
            .into_iter()
            .enumerate()
            .map(|(i, (t, p, ty, f, error))| Event {
                index: i as u64,
                time_ns: t,
                process: Some(p),
                ty,
                f,
                node: None,
                error,
            })
            .collect()
    }
    fn r(v: Option<u64>, ver: Option<u64>) -> Op {
        Op::Read { key: "k".into(), value: v, version: ver }
    }
    fn w(v: u64, ver: u64) -> Op {
        Op::Write { key: "k".into(), value: v, version: Some(ver) }
    }
    fn cas(from: Option<u64>, to: u64, ver: Option<u64>) -> Op {
        Op::Cas { key: "k".into(), from, expected_version: 0, to, version: ver }
    }

    #[test]
    fn a_clean_history_is_valid() {
        let h = history(&[
            (0, w(1, 10), 0, 5, Type::Ok, None),
            (1, r(Some(1), Some(10)), 6, 8, Type::Ok, None),
            (0, cas(Some(1), 2, Some(11)), 9, 12, Type::Ok, None),
            (1, cas(Some(1), 3, None), 13, 14, Type::Fail, Some("FailedPrecondition: version mismatch")),
            (1, r(Some(2), Some(11)), 15, 16, Type::Ok, None),
        ]);
        let v = check(&h, Options::default());
        assert_eq!(v.validity, Validity::Valid, "{v:?}");
    }

    #[test]
    fn a_stale_read_is_caught_and_shrunk() {
        // The known-bad history a stale read produces: write 1, write 2 (both acknowledged),
        // then a read that still returns 1, with unrelated noise around.
        let h = history(&[
            (0, w(1, 10), 0, 5, Type::Ok, None),
            (2, r(Some(1), Some(10)), 6, 7, Type::Ok, None),
            (0, w(2, 11), 8, 10, Type::Ok, None),
            (2, r(Some(2), Some(11)), 11, 12, Type::Ok, None),
            (1, r(Some(1), Some(10)), 13, 14, Type::Ok, None),
            (2, r(Some(2), Some(11)), 15, 16, Type::Ok, None),
        ]);
        let v = check(&h, Options::default());
        assert_eq!(v.validity, Validity::Invalid);
        let failing = v.failing.expect("a failing sub-history");
        // write 1, write 2, the stale read: three operations, six events.
        assert_eq!(failing.len(), 6, "{failing:#?}");
    }

    #[test]
    fn a_refused_cas_that_should_have_succeeded_is_caught() {
        let h = history(&[
            (0, w(1, 10), 0, 5, Type::Ok, None),
            (1, cas(Some(1), 2, None), 6, 8, Type::Fail, Some("FailedPrecondition: version mismatch")),
        ]);
        assert_eq!(check(&h, Options::default()).validity, Validity::Invalid);
        // The same failure without the precondition (not applied) says nothing about state.
        let h = history(&[
            (0, w(1, 10), 0, 5, Type::Ok, None),
            (1, cas(Some(1), 2, None), 6, 8, Type::Fail, Some("Unavailable: no leader")),
        ]);
        assert_eq!(check(&h, Options::default()).validity, Validity::Valid);
    }

    #[test]
    fn an_indeterminate_write_may_appear_later() {
        let h = history(&[
            (
                0,
                Op::Write { key: "k".into(), value: 1, version: None },
                0,
                5,
                Type::Info,
                Some("DeadlineExceeded"),
            ),
            (1, r(None, None), 6, 7, Type::Ok, None),
            (1, r(Some(1), Some(3)), 8, 9, Type::Ok, None),
        ]);
        assert_eq!(check(&h, Options::default()).validity, Validity::Valid);
        // ...but a definite failure may not.
        let h = history(&[
            (
                0,
                Op::Write { key: "k".into(), value: 1, version: None },
                0,
                5,
                Type::Fail,
                Some("Unavailable"),
            ),
            (1, r(Some(1), Some(3)), 8, 9, Type::Ok, None),
        ]);
        assert_eq!(check(&h, Options::default()).validity, Validity::Invalid);
    }

    #[test]
    fn unobserved_unknown_writes_are_pruned_without_hiding_anomalies() {
        let unknown = |v| Op::Write { key: "k".into(), value: v, version: None };
        // Many open writes nobody observes, then a clean sequence: valid, and cheap.
        let mut ops: Vec<Planned> = (0..60)
            .map(|i| (100 + i, unknown(1000 + i), i, i + 1, Type::Info, Some("DeadlineExceeded")))
            .collect();
        ops.push((0, w(1, 10), 100, 101, Type::Ok, None));
        ops.push((1, r(Some(1), Some(10)), 102, 103, Type::Ok, None));
        let v = check(&history(&ops), Options { max_steps_per_key: 10_000, ..Options::default() });
        assert_eq!(v.validity, Validity::Valid, "{v:?}");
        // The same open writes do not hide a stale read.
        ops.push((0, w(2, 11), 104, 105, Type::Ok, None));
        ops.push((1, r(Some(1), Some(10)), 106, 107, Type::Ok, None));
        let v = check(&history(&ops), Options::default());
        assert_eq!(v.validity, Validity::Invalid, "{v:?}");
    }

    #[test]
    fn a_refusal_is_a_read_of_the_version_it_names() {
        assert_eq!(
            refused_at(Some(
                "FailedPrecondition: version mismatch: expected 4, current is 17 (0 means absent)"
            )),
            Some(17)
        );
        assert_eq!(refused_at(Some("FailedPrecondition: other")), None);
        // The refusal names version 10 (value 1) after value 2 (version 11) was acknowledged:
        // a stale answer, caught although "not from" alone would allow it.
        let h = history(&[
            (0, w(1, 10), 0, 1, Type::Ok, None),
            (0, w(2, 11), 2, 3, Type::Ok, None),
            (
                1,
                cas(Some(7), 3, None),
                4,
                5,
                Type::Fail,
                Some("FailedPrecondition: version mismatch: expected 5, current is 10 (0 means absent)"),
            ),
        ]);
        assert_eq!(check(&h, Options::default()).validity, Validity::Invalid);
        let ok = history(&[
            (0, w(1, 10), 0, 1, Type::Ok, None),
            (0, w(2, 11), 2, 3, Type::Ok, None),
            (
                1,
                cas(Some(7), 3, None),
                4,
                5,
                Type::Fail,
                Some("FailedPrecondition: version mismatch: expected 5, current is 11 (0 means absent)"),
            ),
        ]);
        assert_eq!(check(&ok, Options::default()).validity, Validity::Valid);
    }

    #[test]
    fn an_unknown_write_seen_only_by_a_refusal_is_kept() {
        // The unknown write of 5 took effect (version 12, never read); a CAS from 2 was refused
        // because of it. Leaving the write out would make the refusal look wrong.
        let h = history(&[
            (0, w(2, 11), 0, 1, Type::Ok, None),
            (
                2,
                Op::Write { key: "k".into(), value: 5, version: None },
                2,
                3,
                Type::Info,
                Some("DeadlineExceeded"),
            ),
            (
                1,
                cas(Some(2), 3, None),
                4,
                5,
                Type::Fail,
                Some("FailedPrecondition: version mismatch: expected 11, current is 12 (0 means absent)"),
            ),
        ]);
        assert_eq!(check(&h, Options::default()).validity, Validity::Valid);
    }

    #[test]
    fn a_value_at_two_versions_is_a_double_apply() {
        let h =
            history(&[(0, w(1, 10), 0, 5, Type::Ok, None), (1, r(Some(1), Some(12)), 6, 7, Type::Ok, None)]);
        let v = check(&h, Options::default());
        assert_eq!(v.validity, Validity::Invalid, "{v:?}");
    }

    #[test]
    fn nemesis_events_are_ignored() {
        let mut h = history(&[(0, w(1, 10), 0, 5, Type::Ok, None)]);
        h.push(Event {
            index: 99,
            time_ns: 6,
            process: None,
            ty: Type::Info,
            f: Op::Nemesis { phase: Phase::Start, name: "kill".into(), detail: String::new() },
            node: None,
            error: None,
        });
        assert_eq!(check(&h, Options::default()).validity, Validity::Valid);
    }

    /// A simulated atomic register: operations happen at one instant inside their
    /// [invoke, complete] window, so every generated history is linearizable.
    fn simulate(plan: &[(u8, u8, u64, u64)]) -> Vec<Event> {
        let mut state: Option<(u64, u64)> = None;
        let mut version = 0;
        let mut ops = Vec::new();
        let mut t = 0;
        for (i, &(kind, process, before, after)) in plan.iter().enumerate() {
            let call = t + before;
            let at = call + 1;
            let ret = at + after;
            t = call;
            let v = i as u64 + 1;
            let (op, ty, err) = match kind % 4 {
                0 => (r(state.map(|s| s.0), state.map(|s| s.1)), Type::Ok, None),
                1 => {
                    version += 1;
                    state = Some((v, version));
                    (w(v, version), Type::Ok, None)
                }
                2 => {
                    let from = state.map(|s| s.0);
                    version += 1;
                    state = Some((v, version));
                    (cas(from, v, Some(version)), Type::Ok, None)
                }
                _ => (cas(Some(u64::MAX), v, None), Type::Fail, Some("FailedPrecondition: mismatch")),
            };
            ops.push((process as u64 * 1000 + i as u64, op, call, ret, ty, err));
        }
        history(&ops)
    }

    proptest! {
        #[test]
        fn every_simulated_atomic_history_is_linearizable(
            plan in proptest::collection::vec((0u8..4, 0u8..4, 0u64..3, 0u64..3), 0..40)
        ) {
            let h = simulate(&plan);
            let v = check(&h, Options::default());
            prop_assert_eq!(v.validity, Validity::Valid, "{:?}", v);
        }

        #[test]
        fn corrupting_a_read_after_writes_is_caught(
            plan in proptest::collection::vec((0u8..4, 0u8..4, 0u64..3, 0u64..3), 1..30)
        ) {
            // Append: a write of a fresh value, then (strictly after it) a read that returns a
            // value nobody ever wrote. No linearization can explain it.
            let mut h = simulate(&plan);
            let t = h.iter().map(|e| e.time_ns).max().unwrap_or(0) + 10;
            let n = h.len() as u64;
            let mk = |i: u64, time_ns, ty, f| Event { index: n + i, time_ns, process: Some(999_999), ty, f, node: None, error: None };
            h.push(mk(0, t, Type::Invoke, w(777_777, 9_999)));
            h.push(mk(1, t + 1, Type::Ok, w(777_777, 9_999)));
            h.push(mk(2, t + 2, Type::Invoke, r(Some(555_555), Some(1))));
            h.push(mk(3, t + 3, Type::Ok, r(Some(555_555), Some(1))));
            let v = check(&h, Options::default());
            prop_assert_eq!(v.validity, Validity::Invalid);
            prop_assert!(v.failing.is_some());
        }
    }
}

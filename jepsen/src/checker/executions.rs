//! The executions checker: callers create `increment` executions of the counter instance
//! (or, with `--target shared`, stateless `increment_shared` executions over a shared
//! namespace, which conflict and run again rather than both apply), each with its own
//! idempotency key (a retry of an indeterminate one reuses it); after the faults are healed
//! one final read returns the count and, per key, the record the increment wrote in the
//! same completion as the count ([`crate::counter`]). Promises 4 and 5 say each increment is
//! applied at most once, with its record, and an acknowledged one exactly once; a call
//! retried with the same key gets the same execution and result.
//!
//! | what | anomaly when |
//! |---|---|
//! | an acknowledged (`ok`) key | it has no record (lost), or its record's count is not the count the caller got |
//! | a key that certainly failed | it has a record (a failed or never-created execution was applied) |
//! | a key of unknown outcome (`info`) | never (applied once or not at all; "twice" shows in the counts) |
//! | a record | its key was never invoked |
//! | one key's operations | they name different executions, or its record names yet another one |
//! | the counts | the records' counts are not exactly 1..=count, one each: a count no record holds (an increment applied twice, or without its record), two records with one count (a lost update), more or fewer records than the count |
//!
//! A key certainly failed when every operation on it failed, or one of them saw its
//! execution end `failed` or `cancelled` (final: it never completes, and effects come only
//! with a completion).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::{Validity, Verdict};
use crate::history::{self, Applied, Event, Op, Type};

/// Most keys listed by name in each anomaly of a verdict.
pub const MAX_LISTED: usize = 20;

/// What the operations say about one idempotency key.
#[derive(Debug, Default)]
struct Key {
    /// Operations (their positions in `history::operations`).
    ops: Vec<usize>,
    /// Counts returned to `ok` callers.
    ok_counts: BTreeSet<u64>,
    failed: usize,
    info: usize,
    /// An operation saw its execution final without a result.
    execution_failed: bool,
    /// Execution ids the operations named.
    executions: BTreeSet<u64>,
}

impl Key {
    fn acknowledged(&self) -> bool {
        !self.ok_counts.is_empty()
    }
    fn certainly_failed(&self) -> bool {
        self.execution_failed || (self.failed == self.ops.len() && self.failed > 0)
    }
}

/// The count anomalies of a final read: counts no record holds, counts two or more records
/// hold, records above the count.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub missing: Vec<u64>,
    pub duplicated: Vec<u64>,
    pub beyond: Vec<u64>,
}

/// Holds the records' counts to exactly 1..=`count`, one each.
pub fn counts(count: u64, applied: &BTreeMap<String, Applied>) -> Counts {
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for r in applied.values() {
        *seen.entry(r.count).or_default() += 1;
    }
    // Gaps are listed up to a bound: a corrupt count could name billions.
    let missing = (1..=count).filter(|c| !seen.contains_key(c)).take(10 * MAX_LISTED).collect();
    Counts {
        missing,
        duplicated: seen.iter().filter(|(_, n)| **n > 1).map(|(c, _)| *c).collect(),
        beyond: seen.keys().copied().filter(|c| *c == 0 || *c > count).collect(),
    }
}

/// Checks the increments and the final read of `events`.
pub fn check(events: &[Event]) -> Verdict {
    let ops = history::operations(events);
    let errors: BTreeMap<u64, &str> =
        events.iter().filter_map(|e| Some((e.index, e.error.as_deref()?))).collect();
    let mut keys: BTreeMap<String, Key> = BTreeMap::new();
    let mut read: Option<(u64, &BTreeMap<String, Applied>)> = None;
    for (i, o) in ops.iter().enumerate() {
        match &o.op {
            Op::Increment { key, count, execution, .. } => {
                let k = keys.entry(key.clone()).or_default();
                k.ops.push(i);
                k.executions.extend(*execution);
                match o.ty {
                    Type::Ok => {
                        k.ok_counts.insert(count.unwrap_or(u64::MAX));
                    }
                    Type::Fail => {
                        k.failed += 1;
                        let error =
                            o.complete_index.and_then(|c| errors.get(&c).copied()).unwrap_or_default();
                        if error.starts_with("execution ") {
                            k.execution_failed = true;
                        }
                    }
                    _ => k.info += 1,
                }
            }
            Op::ReadCounter { count: Some(count), applied: Some(applied) } if o.ty == Type::Ok => {
                read = Some((*count, applied));
            }
            _ => {}
        }
    }
    let tally = |ty| ops.iter().filter(|o| o.ty == ty && matches!(o.op, Op::Increment { .. })).count();
    let (ok_ops, fail_ops, info_ops) = (tally(Type::Ok), tally(Type::Fail), tally(Type::Info));
    let acknowledged = keys.values().filter(|k| k.acknowledged()).count();
    let Some((count, applied)) = read else {
        return Verdict {
            checker: "executions".into(),
            validity: Validity::Unknown,
            summary: "no successful final read".into(),
            details: json!({ "ok": ok_ops, "fail": fail_ops, "info": info_ops, "keys": keys.len() }),
            failing: None,
        };
    };

    let mut lost = Vec::new();
    let mut wrong_count = Vec::new();
    let mut failed_but_applied = Vec::new();
    let mut two_executions = Vec::new();
    let mut recovered = 0;
    let mut indeterminate = 0;
    for (key, k) in &keys {
        let record = applied.get(key);
        if k.acknowledged() {
            match record {
                None => lost.push(key.clone()),
                Some(r) if k.ok_counts.len() > 1 || !k.ok_counts.contains(&r.count) => {
                    wrong_count
                        .push(format!("{key}: callers got {:?}, its record says {}", k.ok_counts, r.count));
                }
                Some(_) => {}
            }
            if k.execution_failed {
                wrong_count.push(format!("{key}: acknowledged, and also seen failed"));
            }
        } else if k.certainly_failed() {
            if let Some(r) = record {
                failed_but_applied
                    .push(format!("{key}: applied as count {} by execution {}", r.count, r.execution));
            }
        } else {
            indeterminate += 1;
            recovered += usize::from(record.is_some());
        }
        let mut named = k.executions.clone();
        named.extend(record.map(|r| r.execution));
        if named.len() > 1 {
            two_executions.push(format!("{key}: executions {named:?}"));
        }
    }
    let unexpected: Vec<String> = applied.keys().filter(|k| !keys.contains_key(*k)).cloned().collect();
    let c = counts(count, applied);
    let records = applied.len() as u64;
    let mut count_problems = Vec::new();
    if records != count {
        count_problems.push(format!("the count is {count} but {records} increments left a record"));
    }
    if !c.missing.is_empty() {
        count_problems.push(format!(
            "no record holds count(s) {:?}: an increment applied twice, or applied without its record",
            &c.missing[..c.missing.len().min(MAX_LISTED)]
        ));
    }
    if !c.duplicated.is_empty() {
        count_problems.push(format!("several records hold count(s) {:?}: a lost update", c.duplicated));
    }
    if !c.beyond.is_empty() {
        count_problems.push(format!("records hold count(s) {:?}, outside 1..={count}", c.beyond));
    }
    let valid = lost.is_empty()
        && wrong_count.is_empty()
        && failed_but_applied.is_empty()
        && two_executions.is_empty()
        && unexpected.is_empty()
        && count_problems.is_empty();
    let retried = keys.values().filter(|k| k.ops.len() > 1).count();
    let summary = if valid {
        format!(
            "all {acknowledged} acknowledged increments applied once; count {count} = {records} records, counts 1..={count}; {recovered} of {indeterminate} indeterminate applied; {retried} keys retried"
        )
    } else {
        let mut parts = Vec::new();
        let mut say = |n: usize, what: &str| {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        };
        say(lost.len(), "acknowledged increments lost");
        say(wrong_count.len(), "acknowledged increments with another count");
        say(failed_but_applied.len(), "failed increments applied");
        say(two_executions.len(), "keys with several executions");
        say(unexpected.len(), "records of keys never invoked");
        parts.extend(count_problems.iter().cloned());
        parts.join("; ")
    };

    let failing = (!valid).then(|| {
        // Keys the anomalies name; for a missing count, the record just above it (the
        // increment that ran again after the one that produced the count left no record);
        // for duplicated or out-of-range counts, the records that hold them.
        let mut bad: BTreeSet<String> = lost.iter().chain(&unexpected).cloned().collect();
        for line in wrong_count.iter().chain(&failed_but_applied).chain(&two_executions) {
            bad.insert(line.split(':').next().unwrap_or_default().to_owned());
        }
        let near: BTreeSet<u64> = c
            .missing
            .iter()
            .map(|m| m + 1)
            .chain(c.duplicated.iter().copied())
            .chain(c.beyond.iter().copied())
            .collect();
        let mut by_count: Vec<&String> =
            applied.iter().filter(|(_, r)| near.contains(&r.count)).map(|(k, _)| k).collect();
        by_count.truncate(2 * MAX_LISTED);
        bad.extend(by_count.into_iter().cloned());
        let mut keep = BTreeSet::new();
        for o in &ops {
            let hit = match &o.op {
                Op::Increment { key, .. } => bad.contains(key),
                Op::ReadCounter { .. } => o.ty == Type::Ok,
                _ => false,
            };
            if hit {
                keep.insert(o.index);
                keep.extend(o.complete_index);
            }
        }
        events.iter().filter(|e| keep.contains(&e.index)).cloned().collect()
    });
    let listed = |v: &[String]| v.iter().take(MAX_LISTED).cloned().collect::<Vec<_>>();
    Verdict {
        checker: "executions".into(),
        validity: if valid { Validity::Valid } else { Validity::Invalid },
        summary,
        details: json!({
            "ok": ok_ops, "fail": fail_ops, "info": info_ops, "keys": keys.len(),
            "acknowledged": acknowledged, "indeterminate": indeterminate, "recovered": recovered,
            "retried_keys": retried, "count": count, "records": records,
            "lost": listed(&lost), "lost_count": lost.len(),
            "wrong_count": listed(&wrong_count), "failed_but_applied": listed(&failed_but_applied),
            "several_executions": listed(&two_executions), "unexpected": listed(&unexpected),
            "counts": count_problems,
            "missing_counts": &c.missing[..c.missing.len().min(MAX_LISTED)],
            "duplicated_counts": c.duplicated, "counts_beyond": c.beyond,
        }),
        failing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One planned increment: key, outcome, count returned (ok), execution, error (fail).
    struct Planned {
        key: String,
        ty: Type,
        count: Option<u64>,
        execution: Option<u64>,
        error: Option<String>,
    }

    fn planned(key: &str, ty: Type, count: Option<u64>, execution: u64) -> Planned {
        let error = match ty {
            Type::Fail => Some("Unavailable: not applied: no leader".to_owned()),
            Type::Info => Some("DeadlineExceeded: still assigned".to_owned()),
            _ => None,
        };
        Planned { key: key.into(), ty, count, execution: Some(execution), error }
    }

    /// A final read: the count, and (key, count, execution) per record.
    type Read<'a> = (u64, &'a [(&'a str, u64, u64)]);

    /// A history: each planned increment as invoke + completion (sequential), then the read.
    fn history(plan: &[Planned], read: Option<Read>) -> Vec<Event> {
        let mut out = Vec::new();
        let mut push = |process, ty, f, error| {
            let index = out.len() as u64;
            out.push(Event { index, time_ns: index, process: Some(process), ty, f, node: Some(1), error });
        };
        for (p, o) in plan.iter().enumerate() {
            let invoke = Op::Increment { key: o.key.clone(), count: None, execution: None, attempts: None };
            push(p as u64, Type::Invoke, invoke, None);
            let done = Op::Increment {
                key: o.key.clone(),
                count: o.count,
                execution: o.execution,
                attempts: Some(1),
            };
            push(p as u64, o.ty, done, o.error.clone());
        }
        if let Some((count, records)) = read {
            let applied = records
                .iter()
                .map(|(k, c, e)| (k.to_string(), Applied { count: *c, execution: *e, attempt: 1 }))
                .collect();
            push(1_000_000, Type::Invoke, Op::ReadCounter { count: None, applied: None }, None);
            push(1_000_000, Type::Ok, Op::ReadCounter { count: Some(count), applied: Some(applied) }, None);
        }
        out
    }

    #[test]
    fn a_clean_history_is_valid() {
        let plan = [
            planned("a", Type::Ok, Some(1), 1),
            planned("b", Type::Info, None, 2),
            planned("c", Type::Fail, None, 3),
            planned("d", Type::Ok, Some(3), 4),
            planned("e", Type::Info, None, 5),
        ];
        let v = check(&history(&plan, Some((3, &[("a", 1, 1), ("b", 2, 2), ("d", 3, 4)]))));
        assert_eq!(v.validity, Validity::Valid, "{v:?}");
        assert_eq!(
            (v.details["recovered"].as_u64(), v.details["indeterminate"].as_u64()),
            (Some(1), Some(2))
        );
    }

    #[test]
    fn a_lost_acknowledged_increment_is_caught() {
        // b was acknowledged with count 2, but neither its record nor its count is there.
        let plan = [planned("a", Type::Ok, Some(1), 1), planned("b", Type::Ok, Some(2), 2)];
        let v = check(&history(&plan, Some((1, &[("a", 1, 1)]))));
        assert_eq!(v.validity, Validity::Invalid);
        assert_eq!(v.details["lost"], json!(["b"]));
        // The failing sub-history: b's invoke and completion, and the final read.
        let failing = v.failing.unwrap();
        assert_eq!(failing.len(), 4, "{failing:?}");
        assert!(failing.iter().all(|e| !matches!(&e.f, Op::Increment { key, .. } if key == "a")));
    }

    #[test]
    fn a_double_apply_is_caught() {
        // a ran twice (its first run's count 1 has no record; its rerun wrote count 2): the
        // count exceeds the records, and count 1 is missing.
        let plan = [planned("a", Type::Ok, Some(2), 1), planned("b", Type::Ok, Some(3), 2)];
        let v = check(&history(&plan, Some((3, &[("a", 2, 1), ("b", 3, 2)]))));
        assert_eq!(v.validity, Validity::Invalid, "{v:?}");
        assert_eq!(v.details["missing_counts"], json!([1]));
        assert!(v.summary.contains("the count is 3 but 2 increments left a record"), "{}", v.summary);
        // Indeterminate ones too: "at most once" holds them to the counts as well.
        let plan = [planned("a", Type::Info, None, 1)];
        let v = check(&history(&plan, Some((2, &[("a", 2, 1)]))));
        assert_eq!(v.validity, Validity::Invalid);
        let failing = v.failing.unwrap();
        assert!(failing.iter().any(|e| matches!(&e.f, Op::Increment { key, .. } if key == "a")));
    }

    #[test]
    fn a_failed_increment_that_was_applied_is_caught() {
        let plan = [planned("a", Type::Fail, None, 1)];
        let v = check(&history(&plan, Some((1, &[("a", 1, 1)]))));
        assert_eq!(v.validity, Validity::Invalid);
        assert_eq!(v.details["failed_but_applied"].as_array().unwrap().len(), 1);
        // After an indeterminate try, a not-applied retry says nothing about the first one...
        let plan = [planned("a", Type::Info, None, 1), planned("a", Type::Fail, None, 1)];
        assert_eq!(check(&history(&plan, Some((1, &[("a", 1, 1)])))).validity, Validity::Valid);
        // ...but a retry that finds the execution failed does: it can never apply.
        let mut failed = planned("a", Type::Fail, None, 1);
        failed.error = Some("execution 1 failed (undeliverable): delivered 50 times".into());
        let plan = [planned("a", Type::Info, None, 1), failed];
        assert_eq!(check(&history(&plan, Some((1, &[("a", 1, 1)])))).validity, Validity::Invalid);
    }

    #[test]
    fn a_wrong_result_a_lost_update_and_a_second_execution_are_caught() {
        let plan = [planned("a", Type::Ok, Some(5), 1)];
        assert_eq!(check(&history(&plan, Some((1, &[("a", 1, 1)])))).validity, Validity::Invalid);
        // Two increments both produced count 1: one overwrote the other's count.
        let plan = [planned("a", Type::Ok, Some(1), 1), planned("b", Type::Ok, Some(1), 2)];
        let v = check(&history(&plan, Some((1, &[("a", 1, 1), ("b", 1, 2)]))));
        assert_eq!(v.details["duplicated_counts"], json!([1]));
        assert_eq!(v.validity, Validity::Invalid);
        // A retry with the same key got a different execution.
        let plan = [planned("a", Type::Info, None, 1), planned("a", Type::Ok, Some(1), 9)];
        let v = check(&history(&plan, Some((1, &[("a", 1, 9)]))));
        assert_eq!(v.validity, Validity::Invalid);
        assert_eq!(v.details["several_executions"].as_array().unwrap().len(), 1);
        // A record nobody asked for.
        assert_eq!(check(&history(&[], Some((1, &[("zz", 1, 1)])))).validity, Validity::Invalid);
    }

    #[test]
    fn no_final_read_is_unknown() {
        let plan = [planned("a", Type::Ok, Some(1), 1)];
        assert_eq!(check(&history(&plan, None)).validity, Validity::Unknown);
    }

    /// A simulated counter that applies each increment at most once: every op is ok, fail
    /// (never applied) or info (applied or not); some keys are tried again after an info.
    /// Returns the history and the keys that were acknowledged.
    fn simulate(plan: &[(u8, bool, bool)]) -> (Vec<Event>, Vec<String>) {
        let mut count = 0;
        let mut records: Vec<(String, u64, u64)> = Vec::new();
        let mut ops = Vec::new();
        let mut acked = Vec::new();
        for (i, &(kind, applied_if_info, retry)) in plan.iter().enumerate() {
            let key = format!("k{i}");
            let execution = i as u64 + 1;
            let mut apply = |records: &mut Vec<(String, u64, u64)>| {
                count += 1;
                records.push((key.clone(), count, execution));
                count
            };
            match kind % 3 {
                0 => {
                    let c = apply(&mut records);
                    ops.push(planned(&key, Type::Ok, Some(c), execution));
                    acked.push(key.clone());
                }
                1 => ops.push(planned(&key, Type::Fail, None, execution)),
                _ => {
                    let c = applied_if_info.then(|| apply(&mut records));
                    ops.push(planned(&key, Type::Info, None, execution));
                    if retry {
                        // The same key again returns the same execution: its result if it
                        // was applied, else (say) it runs now.
                        let c = c.unwrap_or_else(|| apply(&mut records));
                        ops.push(planned(&key, Type::Ok, Some(c), execution));
                        acked.push(key.clone());
                    }
                }
            }
        }
        let refs: Vec<(&str, u64, u64)> = records.iter().map(|(k, c, e)| (k.as_str(), *c, *e)).collect();
        (history(&ops, Some((count, &refs))), acked)
    }

    proptest! {
        #[test]
        fn every_simulated_exactly_once_history_is_valid(
            plan in proptest::collection::vec((0u8..3, any::<bool>(), any::<bool>()), 0..60)
        ) {
            let (h, _) = simulate(&plan);
            let v = check(&h);
            prop_assert_eq!(v.validity, Validity::Valid, "{:?}", v);
        }

        #[test]
        fn dropping_an_acknowledged_record_or_applying_one_twice_is_caught(
            plan in proptest::collection::vec((0u8..3, any::<bool>(), any::<bool>()), 1..60),
            pick in any::<usize>(),
            twice in any::<bool>(),
        ) {
            let (mut h, acked) = simulate(&plan);
            prop_assume!(!acked.is_empty());
            let victim = &acked[pick % acked.len()];
            let last = h.len() - 1;
            let Op::ReadCounter { count: Some(count), applied: Some(applied) } = &mut h[last].f else {
                unreachable!()
            };
            if twice {
                // Applied again: the count goes up, the record moves to the new count.
                *count += 1;
                applied.get_mut(victim).unwrap().count = *count;
            } else {
                applied.remove(victim);
            }
            let v = check(&h);
            prop_assert_eq!(v.validity, Validity::Invalid);
            prop_assert!(v.failing.is_some());
        }
    }
}

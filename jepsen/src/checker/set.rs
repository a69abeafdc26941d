//! The set checker: workers add unique elements; after the faults are healed one final read
//! returns every element. Every acknowledged add must be in it (promise 1: acknowledged
//! writes survive), no add that certainly failed may be, and nothing never added may be.
//! Adds of unknown outcome may go either way; the verdict counts them as `recovered` or
//! `absent`.

use std::collections::BTreeSet;

use serde_json::json;

use super::{Validity, Verdict};
use crate::history::{self, Event, Op, Type};

/// Most elements listed by name in each anomaly of a verdict.
pub const MAX_LISTED: usize = 20;

/// Checks the adds and the final read of `events`.
pub fn check(events: &[Event]) -> Verdict {
    let ops = history::operations(events);
    let mut ok = BTreeSet::new();
    let mut fail = BTreeSet::new();
    let mut info = BTreeSet::new();
    let mut final_read: Option<BTreeSet<String>> = None;
    for o in &ops {
        match (&o.op, o.ty) {
            (Op::Add { element }, Type::Ok) => {
                ok.insert(element.clone());
            }
            (Op::Add { element }, Type::Fail) => {
                fail.insert(element.clone());
            }
            (Op::Add { element }, _) => {
                info.insert(element.clone());
            }
            (Op::ReadAll { elements: Some(els) }, Type::Ok) => {
                final_read = Some(els.iter().cloned().collect());
            }
            _ => {}
        }
    }
    let Some(read) = final_read else {
        return Verdict {
            checker: "set".into(),
            validity: Validity::Unknown,
            summary: "no successful final read".into(),
            details: json!({ "ok": ok.len(), "fail": fail.len(), "info": info.len() }),
            failing: None,
        };
    };
    let lost: Vec<&String> = ok.difference(&read).collect();
    let resurrected: Vec<&String> = fail.intersection(&read).collect();
    let unexpected: Vec<&String> =
        read.iter().filter(|e| !ok.contains(*e) && !fail.contains(*e) && !info.contains(*e)).collect();
    let recovered = info.intersection(&read).count();
    let valid = lost.is_empty() && resurrected.is_empty() && unexpected.is_empty();
    let summary = if valid {
        format!(
            "all {} acknowledged adds present ({} of {} indeterminate recovered)",
            ok.len(),
            recovered,
            info.len()
        )
    } else {
        format!(
            "{} acknowledged adds lost, {} failed adds present, {} unexpected elements",
            lost.len(),
            resurrected.len(),
            unexpected.len()
        )
    };
    let failing = (!valid).then(|| {
        let bad: BTreeSet<&String> = lost.iter().chain(&resurrected).copied().collect();
        let mut keep = BTreeSet::new();
        for o in &ops {
            let hit = match &o.op {
                Op::Add { element } => bad.contains(element),
                Op::ReadAll { .. } => true,
                _ => false,
            };
            if hit {
                keep.insert(o.index);
                if let Some(c) = o.complete_index {
                    keep.insert(c);
                }
            }
        }
        events.iter().filter(|e| keep.contains(&e.index)).cloned().collect()
    });
    let listed = |v: &[&String]| v.iter().take(MAX_LISTED).map(|s| s.to_string()).collect::<Vec<_>>();
    Verdict {
        checker: "set".into(),
        validity: if valid { Validity::Valid } else { Validity::Invalid },
        summary,
        details: json!({
            "ok": ok.len(), "fail": fail.len(), "info": info.len(), "read": read.len(),
            "recovered": recovered, "lost": listed(&lost), "lost_count": lost.len(),
            "failed_but_present": listed(&resurrected), "unexpected": listed(&unexpected),
        }),
        failing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(adds: &[(&str, Type)], read: Option<&[&str]>) -> Vec<Event> {
        let mut out = Vec::new();
        let mut t = 0;
        let mut push = |p, ty, f| {
            out.push(Event {
                index: out.len() as u64,
                time_ns: t,
                process: Some(p),
                ty,
                f,
                node: None,
                error: None,
            });
            t += 1;
        };
        for (i, (e, ty)) in adds.iter().enumerate() {
            push(i as u64, Type::Invoke, Op::Add { element: e.to_string() });
            push(i as u64, *ty, Op::Add { element: e.to_string() });
        }
        if let Some(r) = read {
            push(1000, Type::Invoke, Op::ReadAll { elements: None });
            push(1000, Type::Ok, Op::ReadAll { elements: Some(r.iter().map(|s| s.to_string()).collect()) });
        }
        out
    }

    #[test]
    fn all_acknowledged_present_is_valid() {
        let v = check(&h(&[("a", Type::Ok), ("b", Type::Info), ("c", Type::Fail)], Some(&["a", "b"])));
        assert_eq!(v.validity, Validity::Valid, "{v:?}");
        assert_eq!(v.details["recovered"], 1);
    }

    #[test]
    fn a_lost_acknowledged_add_is_caught() {
        let v = check(&h(&[("a", Type::Ok), ("b", Type::Ok)], Some(&["a"])));
        assert_eq!(v.validity, Validity::Invalid);
        assert_eq!(v.details["lost"], json!(["b"]));
        // The failing sub-history: the lost add and the final read.
        assert_eq!(v.failing.unwrap().len(), 4);
    }

    #[test]
    fn a_failed_add_that_appears_is_caught() {
        let v = check(&h(&[("a", Type::Fail)], Some(&["a"])));
        assert_eq!(v.validity, Validity::Invalid);
    }

    #[test]
    fn an_element_never_added_is_caught() {
        let v = check(&h(&[("a", Type::Ok)], Some(&["a", "zz"])));
        assert_eq!(v.validity, Validity::Invalid);
    }

    #[test]
    fn no_final_read_is_unknown() {
        assert_eq!(check(&h(&[("a", Type::Ok)], None)).validity, Validity::Unknown);
    }
}

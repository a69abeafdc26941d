//! Tests of leases: acquire, renew by the holder and by token, takeover after expiry with a
//! greater token, release, writes fenced by a grant applied or refused (and then changing
//! nothing), expiry by `Tick`, bounds; then property tests: leases and fenced writes follow a
//! model, and a restored snapshot plus the rest of the log equals the whole log.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::lease::{Lease, MAX_HOLDER_BYTES, MAX_LEASE_TTL_MS, MAX_LEASES};
use super::test_harness::*;
use super::*;

const NS: &str = "shared/s";

fn acquire(name: &str, holder: &str, ttl_ms: u64) -> Command {
    Command::AcquireLease { name: name.into(), holder: holder.into(), ttl_ms }
}

fn granted(output: Output) -> Lease {
    match output {
        Output::Leased(lease) => lease,
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        namespace: NS.into(),
        key: key.into(),
        value: value.into(),
        ttl_ms: None,
        if_absent: false,
    }
}

fn fenced(lease: &str, token: u64, command: Command) -> Command {
    Command::Fenced { lease: lease.into(), token, command: Box::new(command) }
}

#[test]
fn acquire_renew_and_takeover_after_expiry() {
    let mut h = Harness::new();
    let first = granted(h.ok(acquire("scaler", "a", 1_000)));
    assert_eq!((first.holder.as_str(), first.token, first.expires_at_ms), ("a", 1, 2_000));
    assert_eq!(h.grid.lease("scaler"), Some(&first));
    assert_eq!(h.grid.next_timer_ms(), Some(2_000), "the expiry is a timer");

    // The holder asking again renews: same token, a new expiry.
    let again = granted(h.at(1_500).ok(acquire("scaler", "a", 1_000)));
    assert_eq!((again.token, again.expires_at_ms), (1, 2_500));
    let renewed =
        granted(h.at(1_600).ok(Command::RenewLease { name: "scaler".into(), token: 1, ttl_ms: 2_000 }));
    assert_eq!((renewed.token, renewed.expires_at_ms), (1, 3_600));

    // Another holder is refused until it runs out, and told who holds it and for how long.
    let before = h.grid.clone();
    let refused = h.at(3_599).apply(acquire("scaler", "b", 1_000));
    assert_eq!(
        refused,
        Err(Error::LeaseHeld {
            lease: "scaler".into(),
            holder: "a".into(),
            token: 1,
            expires_at_ms: 3_600,
            remaining_ms: 1,
        })
    );
    assert_eq!(h.grid.clone_with_clock(3_599), before.clone_with_clock(3_599), "a refusal changes nothing");
    let message = refused.clone().unwrap_err().to_string();
    assert!(message.contains("'a'") && message.contains("1 ms more"), "{message}");

    // Expired at the entry's time, it is free even before a Tick removes it: the taker gets
    // a greater token, and the old grant can neither renew nor release.
    let taken = granted(h.at(3_600).ok(acquire("scaler", "b", 1_000)));
    assert_eq!((taken.holder.as_str(), taken.token), ("b", 2));
    let stale = h.apply(Command::RenewLease { name: "scaler".into(), token: 1, ttl_ms: 1_000 });
    assert!(
        matches!(&stale, Err(Error::LeaseLost { token: 1, reason, .. }) if reason.contains("another token, 2, by 'b'")),
        "{stale:?}"
    );
    assert_eq!(
        h.ok(Command::ReleaseLease { name: "scaler".into(), token: 1 }),
        Output::LeaseReleased { released: false }
    );
    assert_eq!(h.grid.lease("scaler"), Some(&taken), "a stale release changes nothing");
}

#[test]
fn tokens_grow_across_leases_and_release_frees_at_once() {
    let mut h = Harness::new();
    let a = granted(h.ok(acquire("a", "x", 100)));
    let b = granted(h.ok(acquire("b", "x", 100)));
    assert!(b.token > a.token);
    assert_eq!(
        h.ok(Command::ReleaseLease { name: "a".into(), token: a.token }),
        Output::LeaseReleased { released: true }
    );
    assert_eq!(h.grid.lease("a"), None);
    assert_eq!(
        h.ok(Command::ReleaseLease { name: "a".into(), token: a.token }),
        Output::LeaseReleased { released: false }
    );
    let again = granted(h.ok(acquire("a", "y", 100)));
    assert!(again.token > b.token, "a token is never given twice");
    // Released and taken again: the old token is lost.
    let lost = h.apply(Command::RenewLease { name: "a".into(), token: a.token, ttl_ms: 100 });
    assert!(matches!(lost, Err(Error::LeaseLost { .. })));
}

#[test]
fn a_tick_removes_expired_leases_and_errors_say_why() {
    let mut h = Harness::new();
    let l = granted(h.ok(acquire("l", "x", 100)));
    let early = h.at(1_099).ok(Command::Tick { limit: 10 });
    assert_eq!(early, Output::Ticked { fired: 0 });
    // Past its expiry, before the Tick: lost for renew and fenced writes, saying it expired.
    h.at(1_100);
    let lost = h.apply(fenced("l", l.token, put("k", "v")));
    assert!(
        matches!(&lost, Err(Error::LeaseLost { reason, .. }) if reason.contains("expired at 1100")),
        "{lost:?}"
    );
    assert_eq!(h.grid.lease("l"), None, "not held once expired");
    assert_eq!(h.ok(Command::Tick { limit: 10 }), Output::Ticked { fired: 1 });
    assert_eq!(h.grid.next_timer_ms(), None);
    let gone = h.apply(fenced("l", l.token, put("k", "v")));
    assert!(
        matches!(&gone, Err(Error::LeaseLost { reason, .. }) if reason.contains("released or it expired"))
    );
    let never = h.apply(fenced("l", 99, put("k", "v")));
    assert!(matches!(&never, Err(Error::LeaseLost { reason, .. }) if reason.contains("never granted")));
    assert!(h.grid.get(NS, "k").is_none());
}

#[test]
fn fenced_writes_apply_while_held_and_change_nothing_once_lost() {
    let mut h = Harness::new();
    let old = granted(h.ok(acquire("l", "old", 100)));
    assert_eq!(h.ok(fenced("l", old.token, put("k", "1"))), Output::Written { version: 1 });
    let cas = Command::CompareAndSet {
        namespace: NS.into(),
        key: "k".into(),
        expected_version: 1,
        value: b"2".to_vec(),
        ttl_ms: None,
    };
    assert_eq!(h.ok(fenced("l", old.token, cas.clone())), Output::Written { version: 2 });
    // The fence and the inner condition both hold: a version mismatch is still refused.
    assert!(matches!(h.apply(fenced("l", old.token, cas)), Err(Error::VersionMismatch { .. })));

    let new = granted(h.at(1_100).ok(acquire("l", "new", 100)));
    let before = h.grid.clone();
    let del = Command::Delete { namespace: NS.into(), key: "k".into(), expected_version: None };
    for write in [put("k", "stale"), del.clone(), put("other", "x")] {
        let refused = h.apply(fenced("l", old.token, write));
        assert!(
            matches!(&refused, Err(Error::LeaseLost { lease, token, .. }) if lease == "l" && *token == old.token),
            "{refused:?}"
        );
        assert_eq!(h.grid, before, "a refused fenced write changes nothing");
    }
    assert_eq!(h.ok(fenced("l", new.token, del)), Output::Deleted { existed: true });
}

/// A completion with a fence effect: applied whole while the grant holds; once the lock is
/// lost, nothing of it is applied and the execution runs again (an error result too); a
/// completion applied before still answers as repeated.
#[test]
fn completions_fenced_by_a_lock_apply_only_while_it_holds() {
    use super::execution::{Effect, HandlerError, Payload, Status};
    let mut h = Harness::new();
    h.open(&["w"], 10);
    let fence = |token| Effect::Fence { lease: "l".into(), token };
    let old = granted(h.ok(acquire("l", "old", 100)));

    let first = h.create(new_exec("w", "job"));
    let first_token = h.token(first);
    let done = complete_cmd(
        first,
        first_token,
        Ok(Payload::json("1")),
        vec![put_effect(NS, "k", "1", None), fence(old.token)],
    );
    assert_eq!(h.ok(done.clone()), Output::Completion(Completed::Accepted));
    assert_eq!(h.grid.get(NS, "k").unwrap().data, b"1");

    // The lock runs out and another holder takes it: the old holder's result is not applied.
    let second = h.create(new_exec("w", "job"));
    let token = h.token(second);
    let new = granted(h.at(1_200).ok(acquire("l", "new", 1_000)));
    let late = complete_cmd(
        second,
        token,
        Ok(Payload::json("2")),
        vec![put_effect(NS, "k", "2", None), fence(old.token)],
    );
    let out = h.ok(late);
    assert!(
        matches!(&out, Output::Completion(Completed::LockLost { lease, token, reason })
            if lease == "l" && *token == old.token && reason.contains("'new'")),
        "{out:?}"
    );
    assert_eq!(h.grid.get(NS, "k").unwrap().data, b"1", "no effect applied");
    assert_eq!(h.exec(second).status, Status::Assigned, "it runs again at once");
    assert_eq!(h.exec(second).attempts, 2);
    // The lost lock is what it hears, whatever else its effects ran into meanwhile (here an
    // append to a stream that is gone), so it runs again rather than failing.
    let token = h.token(second);
    let append = Effect::Append { stream: "gone".into(), items: vec![] };
    let out = h.ok(complete_cmd(second, token, Ok(Payload::json("2")), vec![append, fence(old.token)]));
    assert!(matches!(out, Output::Completion(Completed::LockLost { .. })), "{out:?}");
    assert_eq!(h.exec(second).attempts, 3);

    // An error result carries a fence too (and nothing else); a lost one does not fail it.
    let token = h.token(second);
    let error = |fences| {
        complete_cmd(second, token, Err(HandlerError { message: "no".into(), retryable: false }), fences)
    };
    assert!(matches!(
        h.apply(error(vec![fence(new.token), put_effect(NS, "k", "3", None)])),
        Err(Error::InvalidCompletion { .. })
    ));
    assert!(matches!(h.ok(error(vec![fence(old.token)])), Output::Completion(Completed::LockLost { .. })));
    assert_eq!(h.exec(second).attempts, 4);
    let token = h.token(second);
    let error = complete_cmd(
        second,
        token,
        Err(HandlerError { message: "no".into(), retryable: false }),
        vec![fence(new.token)],
    );
    assert_eq!(h.ok(error), Output::Completion(Completed::Accepted));
    assert_eq!(h.exec(second).status, Status::Failed);

    // The first completion sent again (its answer was lost) is a repeat, lock or no lock.
    assert_eq!(h.ok(done), Output::Completion(Completed::Repeated));
}

#[test]
fn bad_lease_requests_are_refused_and_change_nothing() {
    let mut h = Harness::new();
    let l = granted(h.ok(acquire("l", "x", 100)));
    let before = h.grid.clone();
    let long = "x".repeat(MAX_HOLDER_BYTES + 1);
    let bad = [
        acquire("", "x", 100),
        acquire("bad name", "x", 100),
        acquire(&"n".repeat(129), "x", 100),
        acquire("l2", "", 100),
        acquire("l2", &long, 100),
        acquire("l2", "x", 0),
        acquire("l2", "x", MAX_LEASE_TTL_MS + 1),
        Command::RenewLease { name: "l".into(), token: l.token, ttl_ms: 0 },
        Command::ReleaseLease { name: "b/ad".into(), token: l.token },
        fenced("l", l.token, Command::Tick { limit: 1 }),
        fenced("l", l.token, fenced("l", l.token, put("k", "v"))),
        fenced("l", l.token, acquire("m", "x", 100)),
        fenced("l", l.token, put("", "v")),
        fenced("no pe", l.token, put("k", "v")),
    ];
    for command in bad {
        let what = format!("{command:?}");
        let refused = h.apply(command.clone());
        assert!(refused.is_err(), "{what} was accepted");
        assert!(command.validate(&Limits::default()).is_err(), "{what} passes the proposal check");
        assert_eq!(h.grid.clone_with_clock(h.now), before.clone_with_clock(h.now), "{what} changed the grid");
    }
    assert!(matches!(
        h.apply(fenced("l", l.token, Command::Tick { limit: 1 })),
        Err(Error::InvalidLease { reason }) if reason.contains("only Put, CompareAndSet and Delete")
    ));
    assert!(acquire("l", "x", MAX_LEASE_TTL_MS).validate(&Limits::default()).is_ok());
    // The size limits on the write a fence wraps hold at proposal too.
    let big = fenced("l", l.token, put("k", &"v".repeat(2 << 20)));
    assert!(matches!(big.validate(&Limits::default()), Err(Error::ValueTooLarge { .. })));
}

#[test]
fn at_most_max_leases_are_held() {
    let mut g = Grid::default();
    let acquires: Vec<Command> = (0..MAX_LEASES).map(|i| acquire(&format!("l{i}"), "x", 100)).collect();
    assert!(g.apply_batch(0, &acquires).iter().all(Result::is_ok));
    let more = g.apply_batch(0, &[acquire("one-more", "x", 100)]);
    assert!(matches!(&more[0], Err(Error::TooMany { limit: MAX_LEASES, .. })), "{more:?}");
    // The holder of one may still renew it, and once they expire there is room again.
    assert!(g.apply_batch(50, &[acquire("l0", "x", 100)])[0].is_ok());
    let out =
        g.apply_batch(120, &[Command::Tick { limit: MAX_LEASES as u64 }, acquire("one-more", "x", 100)]);
    assert_eq!(out[0], Ok(Output::Ticked { fired: (MAX_LEASES - 1) as u64 }));
    assert!(out[1].is_ok());
}

impl Grid {
    /// The grid with its clock at `now_ms` (comparing two grids whose clocks a refused
    /// entry moved apart).
    fn clone_with_clock(&self, now_ms: u64) -> Grid {
        let mut g = self.clone();
        g.advance_clock(now_ms);
        g
    }
}

// ---- properties --------------------------------------------------------------------------

const NAMES: [&str; 2] = ["a", "b"];
const HOLDERS: [&str; 2] = ["h1", "h2"];

/// A lease command, a fenced write or a plain one, or a `Tick` (the key/value tests' logs
/// mix these in too).
pub(super) fn arb_command() -> impl Strategy<Value = Command> {
    let name = prop::sample::select(NAMES.to_vec()).prop_map(String::from);
    let holder = prop::sample::select(HOLDERS.to_vec()).prop_map(String::from);
    let token = 0u64..8;
    let ttl = 1u64..150;
    let write = prop_oneof![
        (prop::sample::select(vec!["k1", "k2"]), any::<u8>()).prop_map(|(k, v)| put(k, &v.to_string())),
        (prop::sample::select(vec!["k1", "k2"]), 0u64..10).prop_map(|(k, expected_version)| {
            Command::CompareAndSet {
                namespace: NS.into(),
                key: k.into(),
                expected_version,
                value: b"c".to_vec(),
                ttl_ms: None,
            }
        }),
        prop::sample::select(vec!["k1", "k2"]).prop_map(|k| Command::Delete {
            namespace: NS.into(),
            key: k.into(),
            expected_version: None
        }),
    ];
    prop_oneof![
        4 => (name.clone(), holder, ttl.clone()).prop_map(|(name, holder, ttl_ms)| Command::AcquireLease { name, holder, ttl_ms }),
        2 => (name.clone(), token.clone(), ttl).prop_map(|(name, token, ttl_ms)| Command::RenewLease { name, token, ttl_ms }),
        1 => (name.clone(), token.clone()).prop_map(|(name, token)| Command::ReleaseLease { name, token }),
        4 => (name, token, write.clone()).prop_map(|(lease, token, w)| fenced(&lease, token, w)),
        1 => write,
        1 => (1u64..3).prop_map(|limit| Command::Tick { limit }),
    ]
}

/// Batches stamped with times that may go back (a new leader's slower clock).
fn arb_log() -> impl Strategy<Value = Vec<(u64, Vec<Command>)>> {
    prop::collection::vec((0u64..600, prop::collection::vec(arb_command(), 0..4)), 0..50)
}

/// What a lease is in the model: (holder, token, expires_at_ms).
type ModelLease = (String, u64, u64);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Restoring a snapshot taken anywhere and replaying the rest equals replaying the whole
    /// log (grid and responses), and two replicas agree.
    #[test]
    fn replay_equals_snapshot_plus_replay(log in arb_log(), cut in any::<prop::sample::Index>()) {
        check_replay(&log, cut.index(log.len() + 1))?;
    }

    /// Against a model of who holds each lease: grants, renewals, refusals and releases agree;
    /// every new grant's token is greater than all before it; a fenced write applies exactly
    /// when its grant holds at the entry's time, and a refused one changes no key.
    #[test]
    fn leases_and_fences_follow_the_model(log in arb_log()) {
        let mut grid = Grid::default();
        let mut model: BTreeMap<String, ModelLease> = BTreeMap::new();
        let (mut now, mut last_token) = (0u64, 0u64);
        for (stamp, cmds) in &log {
            now = now.max(*stamp);
            grid.advance_clock(*stamp);
            for cmd in cmds {
                let holds = |m: &BTreeMap<String, ModelLease>, name: &str, token: u64| {
                    m.get(name).is_some_and(|(_, t, exp)| *t == token && now < *exp)
                };
                let keys_before = (grid.revision(), grid.key_count());
                let result = grid.apply(cmd);
                match cmd {
                    Command::AcquireLease { name, holder, ttl_ms } => {
                        match model.get(name).filter(|(_, _, exp)| now < *exp).cloned() {
                            Some((h, t, exp)) if &h != holder => {
                                prop_assert!(matches!(&result, Err(Error::LeaseHeld { token, expires_at_ms, .. }) if *token == t && *expires_at_ms == exp), "{:?}", result);
                            }
                            Some((h, t, _)) => {
                                prop_assert_eq!(&result, &Ok(Output::Leased(Lease { name: name.clone(), holder: h.clone(), token: t, acquired_ms: grid.lease(name).map_or(0, |l| l.acquired_ms), expires_at_ms: now + ttl_ms })));
                                model.insert(name.clone(), (h, t, now + ttl_ms));
                            }
                            None => {
                                let Ok(Output::Leased(l)) = &result else { return Err(TestCaseError::fail(format!("{result:?}"))) };
                                prop_assert!(l.token > last_token, "token {} after {}", l.token, last_token);
                                last_token = l.token;
                                prop_assert_eq!((&l.holder, l.expires_at_ms, l.acquired_ms), (holder, now + ttl_ms, now));
                                model.insert(name.clone(), (holder.clone(), l.token, now + ttl_ms));
                            }
                        }
                    }
                    Command::RenewLease { name, token, ttl_ms } => {
                        if holds(&model, name, *token) {
                            let Ok(Output::Leased(l)) = &result else { return Err(TestCaseError::fail(format!("{result:?}"))) };
                            prop_assert_eq!((l.token, l.expires_at_ms), (*token, now + ttl_ms));
                            if let Some(m) = model.get_mut(name) { m.2 = now + ttl_ms; }
                        } else {
                            prop_assert!(matches!(&result, Err(Error::LeaseLost { .. })), "{:?}", result);
                        }
                    }
                    Command::ReleaseLease { name, token } => {
                        let released = holds(&model, name, *token);
                        prop_assert_eq!(&result, &Ok(Output::LeaseReleased { released }));
                        if released { model.remove(name); }
                    }
                    Command::Fenced { lease, token, .. } => {
                        if !holds(&model, lease, *token) {
                            prop_assert!(matches!(&result, Err(Error::LeaseLost { .. })), "{:?}", result);
                        } else {
                            prop_assert!(!matches!(&result, Err(Error::LeaseLost { .. })), "{:?}", result);
                        }
                        if result.is_err() {
                            prop_assert_eq!((grid.revision(), grid.key_count()), keys_before, "a refused write changed keys");
                        }
                    }
                    _ => {}
                }
                for name in NAMES {
                    let held = model.get(name).filter(|(_, _, exp)| now < *exp);
                    prop_assert_eq!(grid.lease(name).map(|l| (&l.holder, l.token, l.expires_at_ms)), held.map(|(h, t, e)| (h, *t, *e)));
                }
            }
        }
    }
}

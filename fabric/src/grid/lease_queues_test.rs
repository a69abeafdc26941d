//! Tests of holders waiting for leases: first come first granted on release, on expiry and
//! ahead of a holder that does not wait; a wait that ran out is skipped; asking again keeps
//! the place; stopping says whether the lease came; the bounds. Then a property test over
//! random logs: every grant goes to the first holder still waiting (or to one that asked
//! while nobody waited), tokens only grow, and a refused command changes nothing.

use std::collections::{BTreeMap, VecDeque};

use proptest::prelude::*;

use super::lease::{Lease, MAX_LEASE_WAIT_MS, MAX_LEASE_WAITERS};
use super::test_harness::*;
use super::*;

fn acquire(name: &str, holder: &str, ttl_ms: u64) -> Command {
    Command::AcquireLease { name: name.into(), holder: holder.into(), ttl_ms }
}

fn wait(name: &str, holder: &str, ttl_ms: u64, wait_ms: u64) -> Command {
    Command::AwaitLease { name: name.into(), holder: holder.into(), ttl_ms, wait_ms }
}

fn release(name: &str, token: u64) -> Command {
    Command::ReleaseLease { name: name.into(), token }
}

fn stop(name: &str, holder: &str) -> Command {
    Command::StopWaiting { name: name.into(), holder: holder.into() }
}

fn granted(output: Output) -> Lease {
    match output {
        Output::Leased(lease) => lease,
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn holder(h: &Harness, name: &str) -> Option<(String, u64)> {
    h.grid.lease(name).map(|l| (l.holder.clone(), l.token))
}

fn waiters(h: &Harness, name: &str) -> Vec<String> {
    h.grid.lease_waiters(name).iter().map(|w| w.holder.clone()).collect()
}

#[test]
fn waiters_are_granted_in_the_order_they_asked_and_ahead_of_others() {
    let mut h = Harness::new();
    let a = granted(h.ok(acquire("l", "a", 1_000)));
    assert!(matches!(h.ok(wait("l", "b", 500, 10_000)), Output::LeaseQueued { position: 1, .. }));
    assert!(matches!(h.ok(wait("l", "c", 500, 10_000)), Output::LeaseQueued { position: 2, .. }));
    assert!(matches!(h.apply(acquire("l", "d", 500)), Err(Error::LeaseHeld { .. })));
    assert_eq!(waiters(&h, "l"), ["b", "c"]);

    h.at(1_200).ok(release("l", a.token));
    let (b, b_token) = holder(&h, "l").expect("the first waiter holds it");
    assert_eq!(b, "b");
    assert!(b_token > a.token);
    assert_eq!(h.grid.lease("l").unwrap().expires_at_ms, 1_700, "its own ttl from the release");
    assert_eq!(waiters(&h, "l"), ["c"]);
    // A holder that does not wait is refused while the lease is held, even when free at once.
    h.at(1_300).ok(release("l", b_token));
    assert_eq!(holder(&h, "l").map(|(h, _)| h), Some("c".into()));
    assert!(matches!(h.apply(acquire("l", "d", 500)), Err(Error::LeaseHeld { .. })));
    assert!(waiters(&h, "l").is_empty());
}

#[test]
fn an_expired_lease_goes_to_the_first_waiter_whose_wait_has_not_run_out() {
    let mut h = Harness::new();
    let a = granted(h.ok(acquire("l", "a", 100)));
    h.ok(wait("l", "short", 100, 50));
    h.ok(wait("l", "long", 300, 10_000));
    // The lease ran out at 1 100; "short" stopped waiting at 1 050.
    h.at(1_150).ok(Command::Tick { limit: 10 });
    let (who, token) = holder(&h, "l").expect("granted on the tick");
    assert_eq!(who, "long");
    assert!(token > a.token);
    assert_eq!(h.grid.lease("l").unwrap().expires_at_ms, 1_450);
    assert!(h.grid.lease_waiters("l").is_empty());
    // Expired, before the tick: nobody goes ahead of the waiter, and nothing changes.
    let mut h = Harness::new();
    h.ok(acquire("l", "a", 100));
    h.ok(wait("l", "b", 100, 10_000));
    let mut before = h.at(1_200).grid.clone();
    before.advance_clock(1_200);
    let refused = h.apply(acquire("l", "a", 100));
    assert!(
        matches!(&refused, Err(Error::LeaseAwaited { waiting: 1, first, .. }) if first == "b"),
        "{refused:?}"
    );
    assert_eq!(h.grid, before);
    assert!(matches!(h.ok(wait("l", "a", 100, 1_000)), Output::LeaseQueued { position: 2, .. }));
    h.ok(Command::Tick { limit: 10 });
    assert_eq!(holder(&h, "l").map(|(h, _)| h), Some("b".into()));
}

#[test]
fn asking_again_keeps_the_place_and_stopping_says_whether_the_lease_came() {
    let mut h = Harness::new();
    let a = granted(h.ok(acquire("l", "a", 1_000)));
    h.ok(wait("l", "b", 100, 1_000));
    h.ok(wait("l", "c", 100, 1_000));
    assert_eq!(h.ok(wait("l", "b", 200, 5_000)), Output::LeaseQueued { position: 1, until_ms: 6_000 });
    assert_eq!(h.ok(stop("l", "c")), Output::WaitEnded { grant: None });
    assert_eq!(waiters(&h, "l"), ["b"]);
    h.ok(release("l", a.token));
    let Output::WaitEnded { grant: Some(g) } = h.ok(stop("l", "b")) else { panic!("b holds it") };
    assert_eq!((g.holder.as_str(), g.expires_at_ms), ("b", 1_200));
    // Asked by the holder that holds it: renewed, as an acquire.
    let renewed = granted(h.ok(wait("l", "b", 300, 1_000)));
    assert_eq!((renewed.token, renewed.expires_at_ms), (g.token, 1_300));
    assert_eq!(h.ok(stop("l", "nobody")), Output::WaitEnded { grant: None });
}

#[test]
fn queues_are_bounded_and_bad_waits_are_refused_changing_nothing() {
    let mut h = Harness::new();
    h.ok(acquire("l", "a", 100_000));
    for i in 0..MAX_LEASE_WAITERS {
        h.ok(wait("l", &format!("w{i}"), 100, 10_000));
    }
    let before = h.grid.clone();
    let full = h.apply(wait("l", "one-more", 100, 10_000));
    assert!(
        matches!(&full, Err(Error::TooMany { limit, setting, .. }) if *limit == MAX_LEASE_WAITERS && setting.contains("MAX_LEASE_WAITERS")),
        "{full:?}"
    );
    assert_eq!(h.grid, before);
    // Waits that ran out leave at the next tick, and take no room even before it.
    assert!(matches!(
        h.at(20_000).ok(wait("l", "early", 100, 10_000)),
        Output::LeaseQueued { position: 1, .. }
    ));
    assert_eq!(h.grid.lease_waiter_count(), 1);
    h.ok(Command::StopWaiting { name: "l".into(), holder: "early".into() });
    h.ok(acquire("n", "holder", 100_000));
    h.ok(wait("n", "brief", 100, 50));
    assert_eq!(h.grid.lease_waiter_count(), 1);
    assert_eq!(h.at(20_100).ok(Command::Tick { limit: 10 }), Output::Ticked { fired: 1 });
    assert_eq!(h.grid.lease_waiter_count(), 0, "the tick removed the wait that ran out");
    assert!(matches!(h.ok(wait("l", "one-more", 100, 10_000)), Output::LeaseQueued { position: 1, .. }));
    for bad in [0, MAX_LEASE_WAIT_MS + 1] {
        let before = h.grid.clone();
        let refused = h.apply(wait("l", "x", 100, bad));
        assert!(
            matches!(&refused, Err(Error::InvalidLease { reason }) if reason.contains("wait_ms")),
            "{refused:?}"
        );
        assert_eq!(h.grid, before);
    }
}

// ---- properties --------------------------------------------------------------------------

const NAMES: [&str; 2] = ["a", "b"];
const HOLDERS: [&str; 4] = ["h1", "h2", "h3", "h4"];

fn arb_command() -> impl Strategy<Value = Command> {
    let name = prop::sample::select(NAMES.to_vec()).prop_map(String::from);
    let holder = prop::sample::select(HOLDERS.to_vec()).prop_map(String::from);
    prop_oneof![
        2 => (name.clone(), holder.clone(), 1u64..150).prop_map(|(n, h, ttl)| acquire(&n, &h, ttl)),
        4 => (name.clone(), holder.clone(), 1u64..150, 1u64..300).prop_map(|(n, h, ttl, w)| wait(&n, &h, ttl, w)),
        2 => (name.clone(), holder.clone()).prop_map(|(n, h)| stop(&n, &h)),
        3 => (name.clone(), 0u64..12).prop_map(|(n, t)| release(&n, t)),
        1 => (name, 0u64..12, 1u64..150).prop_map(|(name, token, ttl_ms)| Command::RenewLease { name, token, ttl_ms }),
        2 => (1u64..3).prop_map(|limit| Command::Tick { limit }),
    ]
}

fn arb_log() -> impl Strategy<Value = Vec<(u64, Vec<Command>)>> {
    prop::collection::vec((0u64..800, prop::collection::vec(arb_command(), 0..4)), 0..60)
}

/// The raw lease (expired ones not yet removed too).
fn raw(grid: &Grid, name: &str) -> Option<Lease> {
    grid.leases.held.get(name).cloned()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Against a model of each lease's queue of (holder, until): a grant goes to the model's
    /// first holder still waiting, or, when none waits, only to the holder that asked; the
    /// waiters the grid shows are the model's still waiting; nobody waits for a lease nobody
    /// holds (a release or the tick that removes it hands it on at once); tokens only grow; a
    /// refused command changes nothing.
    #[test]
    fn grants_are_first_come_first_served(log in arb_log()) {
        let mut grid = Grid::default();
        let mut queues: BTreeMap<String, VecDeque<(String, u64)>> = BTreeMap::new();
        let mut now = 0u64;
        for (stamp, cmds) in &log {
            now = now.max(*stamp);
            grid.advance_clock(*stamp);
            for cmd in cmds {
                let before = grid.clone();
                let waiting_before: BTreeMap<&str, bool> = NAMES
                    .iter()
                    .map(|n| (*n, queues.get(*n).is_some_and(|q| q.iter().any(|(_, u)| *u > now))))
                    .collect();
                let result = grid.apply(cmd);
                if result.is_err() {
                    prop_assert_eq!(&grid, &before, "a refused {:?} changed the grid", cmd);
                }
                let asker = match cmd {
                    Command::AcquireLease { holder, .. } | Command::AwaitLease { holder, .. } => Some(holder.clone()),
                    _ => None,
                };
                for name in NAMES {
                    let queue = queues.entry(name.into()).or_default();
                    let live_before: Vec<String> = queue.iter().filter(|(_, u)| *u > now).map(|(h, _)| h.clone()).collect();
                    let (old, new) = (raw(&before, name), raw(&grid, name));
                    let fresh = new.as_ref().filter(|n| old.as_ref().is_none_or(|o| o.token != n.token));
                    if let Some(g) = fresh {
                        // One tick may grant several leases: each token is above all before it.
                        prop_assert!(g.token > before.leases.last_token, "token {} after {}", g.token, before.leases.last_token);
                        match live_before.first() {
                            Some(first) => {
                                prop_assert_eq!(&g.holder, first, "granted past the queue {:?}", live_before);
                                let at = queue.iter().position(|(h, _)| h == first).expect("in the queue");
                                queue.drain(..=at);
                            }
                            None => {
                                prop_assert_eq!(Some(&g.holder), asker.as_ref(), "granted to one that did not ask");
                                let asked_for = matches!(cmd, Command::AcquireLease { name: n, .. } | Command::AwaitLease { name: n, .. } if n == name);
                                prop_assert!(asked_for, "granted by {:?}", cmd);
                            }
                        }
                    }
                }
                match (cmd, &result) {
                    (Command::AwaitLease { name, holder, wait_ms, .. }, Ok(Output::LeaseQueued { until_ms, .. })) => {
                        prop_assert_eq!(*until_ms, now + wait_ms);
                        let queue = queues.entry(name.clone()).or_default();
                        match queue.iter_mut().find(|(h, u)| h == holder && *u > now) {
                            Some(w) => w.1 = *until_ms,
                            None => {
                                queue.retain(|(_, u)| *u > now);
                                queue.push_back((holder.clone(), *until_ms));
                            }
                        }
                    }
                    (Command::StopWaiting { name, holder }, _) => {
                        queues.entry(name.clone()).or_default().retain(|(h, _)| h != holder);
                    }
                    _ => {}
                }
                let queued: usize = grid.waiting.queues.values().map(|q| q.len()).sum();
                let ends: std::collections::BTreeSet<(u64, String, String)> = grid.waiting.queues.iter()
                    .flat_map(|(n, q)| q.iter().map(move |w| (w.until_ms, n.clone(), w.holder.clone())))
                    .collect();
                prop_assert_eq!(grid.waiting.ends.len(), queued, "one end time per waiter");
                prop_assert_eq!(&grid.waiting.ends, &ends, "the end times of waiters");
                prop_assert!(grid.waiting.queues.values().all(|q| !q.is_empty()), "an empty queue kept");
                if let (Command::Tick { limit }, Ok(Output::Ticked { fired })) = (cmd, &result)
                    && fired < limit
                {
                    prop_assert!(grid.waiting.ends.first().is_none_or(|(at, ..)| *at > now), "a tick left waits that ran out");
                }
                for name in NAMES {
                    let live: Vec<(String, u64)> = queues[name].iter().filter(|(_, u)| *u > now).cloned().collect();
                    let shown: Vec<(String, u64)> = grid.lease_waiters(name).iter().map(|w| (w.holder.clone(), w.until_ms)).collect();
                    prop_assert_eq!(&shown, &live, "waiters of {}", name);
                    // A lease nobody holds (released, or removed by a tick) has nobody waiting.
                    prop_assert!(raw(&grid, name).is_some() || live.is_empty(), "{} free with {:?} waiting", name, live);
                    if let (Command::ReleaseLease { name: n, .. }, Ok(Output::LeaseReleased { released: true })) = (cmd, &result)
                        && n == name
                    {
                        prop_assert_eq!(grid.lease(name).is_some(), waiting_before[name], "released; waiting before: {}", waiting_before[name]);
                    }
                }
            }
        }
    }

    /// Restoring a snapshot taken anywhere and replaying the rest equals the whole log.
    #[test]
    fn replay_with_queues_equals_snapshot_plus_replay(log in arb_log(), cut in any::<prop::sample::Index>()) {
        check_replay(&log, cut.index(log.len() + 1))?;
    }
}

//! Tests of dispatch: capacity, order and load sharing, and the delivery bound; then property
//! tests that drive random sessions, executions, completions, cancels, stops and clock steps,
//! check every invariant of the indexes after each step, and check that replicas and restored
//! snapshots of the same log agree.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::execution::*;
use super::instance::NewInstance;
use super::session::NewSession;
use super::test_harness::*;
use super::*;
use crate::codec;

#[test]
fn capacity_bounds_assignments_and_priority_then_age_orders_them() {
    let mut h = Harness::new();
    let s = h.open(&["w"], 2);
    let low = h.create(new_exec("w", "job"));
    let _second = h.create(new_exec("w", "job"));
    let third = h.create(new_exec("w", "job"));
    let high = h.create(NewExecution { priority: 5, ..new_exec("w", "job") });
    assert_eq!(h.grid.session(s).unwrap().assigned.len(), 2, "capacity 2");
    assert_eq!(h.exec(third).status, Status::Pending);
    h.complete(low, "1");
    assert_eq!(h.exec(high).status, Status::Assigned, "the higher priority goes first");
    assert_eq!(h.exec(third).status, Status::Pending, "then the older: not yet");
}

#[test]
fn competing_sessions_share_the_load() {
    let mut h = Harness::new();
    let a = h.open(&["w"], 10);
    let b = h.open(&["w"], 10);
    let ids: Vec<_> = (0..10).map(|_| h.create(new_exec("w", "job"))).collect();
    let on_a = ids.iter().filter(|id| h.holder(**id) == Some(a)).count();
    let on_b = ids.iter().filter(|id| h.holder(**id) == Some(b)).count();
    assert_eq!((on_a, on_b), (5, 5));
}

#[test]
fn delegates_a_session_does_not_serve_wait() {
    let mut h = Harness::new();
    let mut new = new_session(&["w"], 4);
    new.agents[0].delegates = vec!["a".into()];
    h.open_with(new);
    let a = h.create(new_exec("w", "a"));
    let b = h.create(new_exec("w", "b"));
    assert_eq!((h.exec(a).status, h.exec(b).status), (Status::Assigned, Status::Pending));
}

#[test]
fn undeliverable_after_max_deliveries() {
    let mut h = Harness::new();
    let id = h.create(NewExecution { max_deliveries: 2, ..new_exec("w", "job") });
    for _ in 0..2 {
        let s = h.open(&["w"], 1);
        assert_eq!(h.holder(id), Some(s));
        h.ok(Command::CloseSession { session: s, reason: "crashed".into() });
    }
    h.open(&["w"], 1);
    let e = h.exec(id);
    assert_eq!(e.status, Status::Failed);
    assert!(matches!(&e.outcome, Some(Err(Failure { kind: FailureKind::Undeliverable, .. }))));
}

#[test]
fn an_only_claimed_session_gets_only_its_instances_of_the_agents_it_claims() {
    let mut h = Harness::new();
    // Queued before the session opens, ahead of what it may take: another instance's Start
    // and a call without an instance, in the same queues as its own instance's.
    let y_start = h.start("w", "y");
    let stateless = h.create(new_exec("w", "job"));
    let x_start = h.start("w", "x");
    let other_agent = h.create(new_exec("v", "job"));
    let claims = vec![("w".to_owned(), "x".to_owned())];
    let s = h.open_only_claimed(NewSession { claims, ..new_session(&["w", "v"], 10) });
    assert_eq!(h.holder(x_start), Some(s), "its claimed instance's Start runs on it");
    assert_eq!(h.holder(other_agent), Some(s), "an agent it claims nothing of is served as usual");
    assert_eq!(h.exec(y_start).status, Status::Pending, "another instance's Start waits");
    assert_eq!(h.exec(stateless).status, Status::Pending, "a call without an instance waits");
    assert!(h.grid.session(s).unwrap().only_claimed);

    h.complete(x_start, "{}");
    let on_x = h.create(on_instance("w", "x", "job"));
    assert_eq!(h.holder(on_x), Some(s), "past the stateless call waiting ahead of it");
    let on_y = h.create(on_instance("w", "y", "job"));
    assert_eq!(h.exec(on_y).status, Status::Pending);

    // A plain session takes what the claiming one may not.
    let plain = h.open(&["w"], 10);
    assert_eq!(h.holder(y_start), Some(plain));
    assert_eq!(h.holder(stateless), Some(plain));
    h.complete(y_start, "{}");
    assert_eq!(h.holder(on_y), Some(plain));

    // Its instance stopped and gone, it still takes no other instance of the agent.
    h.ok(Command::StopInstance { agent: "w".into(), instance: "x".into() });
    h.complete(on_x, "1");
    let stop = h.grid.instance("w", "x").unwrap().stop_execution.unwrap();
    assert_eq!(h.holder(stop), Some(s), "its Stop runs on it too");
    h.complete(stop, "{}");
    assert!(h.grid.instance("w", "x").is_none());
    h.ok(Command::CloseSession { session: plain, reason: "gone".into() });
    let z_start = h.start("w", "z");
    assert_eq!(h.exec(z_start).status, Status::Pending);
    let held = &h.grid.session(s).unwrap().assigned;
    assert!(held.iter().all(|id| h.exec(*id).agent == "v"), "it holds only v's work: {held:?}");
}

#[test]
fn a_plain_open_serves_every_instance_and_claims_of_missing_instances_refuse_the_open() {
    let mut h = Harness::new();
    h.start("w", "x");
    let y_start = h.start("w", "y");
    let claims = vec![("w".to_owned(), "x".to_owned())];
    let s = h.open_with(NewSession { claims: claims.clone(), ..new_session(&["w"], 10) });
    assert_eq!(h.holder(y_start), Some(s), "without only-claimed, a claim takes nothing away");
    // Claiming an instance that was never started (or is gone) opens nothing.
    let before = h.grid.clone();
    let missing = vec![("w".to_owned(), "never".to_owned())];
    let refused = h.apply(Command::OpenSessionOnlyClaimed(Box::new(NewSession {
        claims: missing,
        ..new_session(&["w"], 1)
    })));
    assert!(matches!(refused, Err(Error::UnknownInstance { .. })), "{refused:?}");
    // Claiming one activated elsewhere is refused too (single activation).
    let taken =
        h.apply(Command::OpenSessionOnlyClaimed(Box::new(NewSession { claims, ..new_session(&["w"], 1) })));
    assert!(matches!(taken, Err(Error::InstanceClaimed { .. })), "{taken:?}");
    assert_eq!(h.grid, before);
}

#[test]
fn an_instance_head_no_session_may_take_fails_only_when_nobody_may_run_it() {
    let mut h = Harness::new();
    let x_start = h.start("w", "x");
    let y_start = h.start("w", "y");
    let claims = vec![("w".to_owned(), "y".to_owned())];
    let s2 = h.open_only_claimed(NewSession { claims, ..new_session(&["w"], 5) });
    assert_eq!(h.holder(y_start), Some(s2));
    assert_eq!(h.exec(x_start).status, Status::Pending);
    let mut narrow = new_session(&["w"], 5);
    narrow.agents[0].delegates = vec!["job".into()];
    let s = h.open_with(narrow);
    assert_eq!(h.holder(x_start), Some(s), "Start is always served");
    h.complete(x_start, "{}");
    // s2 serves `other`, but only-claimed keeps it from x: x's `other` call has nowhere to
    // run while x is activated on s, so it fails rather than block x's queue.
    let other = h.create(on_instance("w", "x", "other"));
    let e = h.exec(other);
    assert_eq!(e.status, Status::Failed);
    assert!(matches!(&e.outcome, Some(Err(Failure { kind: FailureKind::Undeliverable, .. }))));
}

// ---- property tests -------------------------------------------------------------------------

const AGENTS: [&str; 2] = ["a", "b"];
const DELEGATES: [&str; 2] = ["x", "y"];
const INSTANCES: [&str; 2] = ["i1", "i2"];

/// An abstract step; the harness turns it into a concrete command from the current state
/// (which execution to complete, with its real token or a stale one).
#[derive(Debug, Clone)]
enum Step {
    Create {
        agent: usize,
        delegate: usize,
        instance: Option<usize>,
        priority: i32,
        delay: Option<u64>,
        key: Option<u8>,
    },
    Open {
        agents: Vec<usize>,
        capacity: u32,
        concurrent: bool,
        delegates: Option<usize>,
        lease: bool,
        only_claimed: bool,
        /// (which of its agents, which instance)
        claim: Option<(usize, usize)>,
    },
    Close {
        pick: usize,
    },
    Complete {
        pick: usize,
        ok: bool,
        stale: bool,
        effect: bool,
    },
    GiveBack {
        pick: usize,
    },
    Renew {
        pick: usize,
    },
    Drain {
        pick: usize,
    },
    Cancel {
        pick: usize,
    },
    Start {
        agent: usize,
        instance: usize,
    },
    Stop {
        agent: usize,
        instance: usize,
    },
    Advance {
        ms: u64,
    },
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0..2usize, 0..2usize, prop::option::weighted(0.4, 0..2usize), -1..2i32, prop::option::weighted(0.2, 1..500u64), prop::option::weighted(0.3, 0..4u8))
            .prop_map(|(agent, delegate, instance, priority, delay, key)| Step::Create { agent, delegate, instance, priority, delay, key }),
        2 => (prop::collection::vec(0..2usize, 1..3), 1..4u32, any::<bool>(), prop::option::weighted(0.2, 0..2usize), any::<bool>(), prop::bool::weighted(0.4), prop::option::weighted(0.5, (0..2usize, 0..2usize)))
            .prop_map(|(agents, capacity, concurrent, delegates, lease, only_claimed, claim)| Step::Open { agents, capacity, concurrent, delegates, lease, only_claimed, claim }),
        1 => any::<usize>().prop_map(|pick| Step::Close { pick }),
        6 => (any::<usize>(), prop::bool::weighted(0.8), prop::bool::weighted(0.1), any::<bool>())
            .prop_map(|(pick, ok, stale, effect)| Step::Complete { pick, ok, stale, effect }),
        1 => any::<usize>().prop_map(|pick| Step::GiveBack { pick }),
        1 => any::<usize>().prop_map(|pick| Step::Renew { pick }),
        1 => any::<usize>().prop_map(|pick| Step::Drain { pick }),
        1 => any::<usize>().prop_map(|pick| Step::Cancel { pick }),
        2 => (0..2usize, 0..2usize).prop_map(|(agent, instance)| Step::Start { agent, instance }),
        1 => (0..2usize, 0..2usize).prop_map(|(agent, instance)| Step::Stop { agent, instance }),
        2 => (1..800u64).prop_map(|ms| Step::Advance { ms }),
    ]
}

fn pick<T: Copy>(items: &[T], at: usize) -> Option<T> {
    (!items.is_empty()).then(|| items[at % items.len()])
}

impl Harness {
    fn assigned_ids(&self) -> Vec<ExecutionId> {
        let mut ids: Vec<_> = self.grid.sessions().flat_map(|s| s.assigned.iter().copied()).collect();
        ids.sort();
        ids
    }

    fn run(&mut self, step: &Step) {
        let command = match step {
            Step::Create { agent, delegate, instance, priority, delay, key } => {
                let mut new = new_exec(AGENTS[*agent], DELEGATES[*delegate]);
                new.instance = instance.map(|i| INSTANCES[i].to_owned());
                new.priority = *priority;
                new.delay_ms = *delay;
                new.idempotency_key = key.map(|k| format!("k{k}"));
                new.retry = Some(RetryPolicy {
                    max_attempts: 2,
                    initial_backoff_ms: 50,
                    max_backoff_ms: 100,
                    multiplier_percent: 200,
                });
                Command::CreateExecution(Box::new(new))
            }
            Step::Open { agents, capacity, concurrent, delegates, lease, only_claimed, claim } => {
                let names: Vec<&str> =
                    agents.iter().map(|a| AGENTS[*a]).collect::<BTreeSet<_>>().into_iter().collect();
                let mut new = new_session(&names, *capacity);
                if let Some((agent, instance)) = claim {
                    new.claims = vec![(names[agent % names.len()].into(), INSTANCES[*instance].into())];
                }
                for spec in &mut new.agents {
                    spec.concurrent_instances = *concurrent;
                    if let Some(d) = delegates {
                        spec.delegates = vec![DELEGATES[*d].into()];
                    }
                }
                new.lease_ms = if *lease { 300 } else { 0 };
                if *only_claimed {
                    Command::OpenSessionOnlyClaimed(Box::new(new))
                } else {
                    Command::OpenSession(Box::new(new))
                }
            }
            Step::Close { pick: p } => {
                let ids: Vec<_> = self.grid.sessions().map(|s| s.id).collect();
                let Some(session) = pick(&ids, *p) else { return };
                Command::CloseSession { session, reason: "closed".into() }
            }
            Step::Drain { pick: p } => {
                let ids: Vec<_> = self.grid.sessions().map(|s| s.id).collect();
                let Some(session) = pick(&ids, *p) else { return };
                Command::DrainSession { session }
            }
            Step::Complete { pick: p, ok, stale, effect } => {
                let Some(id) = pick(&self.assigned_ids(), *p) else { return };
                let e = self.exec(id);
                let token = if *stale { self.token(id) - 1 } else { self.token(id) };
                let outcome = if *ok {
                    Ok(Payload::json("1"))
                } else {
                    Err(HandlerError { message: "e".into(), retryable: true })
                };
                let effects = match (&e.instance, *effect && *ok) {
                    (Some(i), true) => {
                        let ns = format!("instance/{}/{i}", e.agent);
                        let version = self.grid.get(&ns, "n").map_or(0, |v| v.version);
                        vec![put_effect(&ns, "n", "1", Some(version))]
                    }
                    (None, true) => vec![Effect::Call(Box::new(new_exec(AGENTS[0], DELEGATES[0])))],
                    _ => vec![],
                };
                complete_cmd(id, token, outcome, effects)
            }
            Step::GiveBack { pick: p } => {
                let Some(id) = pick(&self.assigned_ids(), *p) else { return };
                Command::GiveBack { execution: id, token: self.token(id) }
            }
            Step::Renew { pick: p } => {
                let Some(id) = pick(&self.assigned_ids(), *p) else { return };
                Command::Renew { execution: id, token: self.token(id) }
            }
            Step::Cancel { pick: p } => {
                let live: Vec<_> = self
                    .grid
                    .list_executions(&Default::default(), None, 10_000)
                    .executions
                    .iter()
                    .filter(|e| !e.status.is_final())
                    .map(|e| e.id)
                    .collect();
                let Some(execution) = pick(&live, *p) else { return };
                Command::Cancel { execution, reason: "test".into() }
            }
            Step::Start { agent, instance } => Command::StartInstance(Box::new(NewInstance {
                agent: AGENTS[*agent].into(),
                instance: Some(INSTANCES[*instance].into()),
                payload: Payload::json("{}"),
                idempotency_key: None,
                parent: None,
                retention_ms: 1_000,
                max_deliveries: 5,
            })),
            Step::Stop { agent, instance } => {
                Command::StopInstance { agent: AGENTS[*agent].into(), instance: INSTANCES[*instance].into() }
            }
            Step::Advance { ms } => {
                self.now += ms;
                Command::Tick { limit: 1_000 }
            }
        };
        let _ = self.apply(command);
    }

    /// Every invariant the indexes and the rules promise.
    fn check(&self) -> Result<(), TestCaseError> {
        let w = &self.grid.work;
        for (id, e) in &w.executions {
            let in_ready = w.ready.values().any(|q| q.contains(&e.queue_key()));
            let in_delayed = w.delayed.iter().any(|(_, x)| x == id);
            let queued = e
                .instance_key()
                .and_then(|k| w.instances.get(&k))
                .is_some_and(|i| i.queue.contains(&e.queue_key()));
            let holders: Vec<_> =
                w.sessions.values().filter(|s| s.assigned.contains(id)).map(|s| s.id).collect();
            match e.status {
                Status::Pending => {
                    prop_assert!(holders.is_empty(), "pending {id} held by {holders:?}");
                    prop_assert!(e.lease.is_none());
                    let places =
                        usize::from(in_delayed) + usize::from(queued || (in_ready && e.instance.is_none()));
                    prop_assert_eq!(
                        places,
                        1,
                        "pending {} waits in one place (delayed {}, queued {}, ready {})",
                        id,
                        in_delayed,
                        queued,
                        in_ready
                    );
                    if in_delayed {
                        prop_assert!(
                            e.not_before_ms.is_some_and(|t| t > self.grid.now_ms()),
                            "delayed {id} is due"
                        );
                    }
                }
                Status::Assigned => {
                    let lease = e.lease.expect("assigned has a lease");
                    prop_assert_eq!(
                        &holders,
                        &vec![lease.session],
                        "assigned {} held by its lease's session",
                        id
                    );
                    prop_assert!(!in_ready && !in_delayed && !queued, "assigned {id} also waits");
                }
                _ => {
                    prop_assert!(
                        holders.is_empty() && !in_ready && !in_delayed && !queued,
                        "final {id} still somewhere"
                    );
                    prop_assert!(w.retained.iter().any(|(_, x)| x == id), "final {id} is retained");
                    prop_assert!(e.outcome.is_some());
                }
            }
        }
        for s in w.sessions.values() {
            prop_assert!(s.assigned.len() <= s.capacity as usize, "session {} over capacity", s.id);
            for key in &s.activated {
                prop_assert_eq!(w.instances.get(key).and_then(|i| i.session), Some(s.id));
                prop_assert!(s.may_take(&key.0, Some(&key.1)), "only-claimed {} activates {key:?}", s.id);
            }
            // An only-claimed session holds nothing of an agent it claims but its instances'.
            for id in &s.assigned {
                let e = &w.executions[id];
                prop_assert!(s.may_take(&e.agent, e.instance.as_deref()), "only-claimed {} holds {id}", s.id);
            }
        }
        for (key, inst) in &w.instances {
            let running: Vec<_> = w
                .executions
                .values()
                .filter(|e| e.status == Status::Assigned && e.instance_key().as_ref() == Some(key))
                .collect();
            prop_assert_eq!(inst.running as usize, running.len(), "instance {:?} running count", key);
            for e in &running {
                prop_assert_eq!(
                    Some(e.lease.unwrap().session),
                    inst.session,
                    "single activation of {:?}",
                    key
                );
            }
            let concurrent = inst
                .session
                .and_then(|s| w.sessions.get(&s))
                .and_then(|s| s.spec(&key.0))
                .is_some_and(|s| s.concurrent_instances);
            if !concurrent {
                prop_assert!(running.len() <= 1, "sequential instance {key:?} runs {}", running.len());
            }
            if let Some(s) = inst.session {
                let session = w.sessions.get(&s);
                prop_assert!(session.is_some_and(|s| s.activated.contains(key)));
                // An offered head its session cannot serve would block the instance forever.
                if let (Some((delegate, _)), Some(session)) = (&inst.offered, session) {
                    prop_assert!(session.serves(&key.0, delegate), "instance {key:?} blocked on {delegate}");
                }
            }
        }
        // Work conservation: a runnable execution (stateless, or its instance's head) never
        // waits while a session that may run it has a free slot.
        for ((agent, delegate), queue) in &w.ready {
            for (_, id) in queue {
                let e = &w.executions[id];
                prop_assert!(e.status == Status::Pending, "ready {id} is {:?}", e.status);
                let idle = match e.instance_key().and_then(|k| w.instances.get(&k)).and_then(|i| i.session) {
                    Some(s) => w.sessions.get(&s).is_some_and(|s| s.free() > 0 && s.serves(agent, delegate)),
                    None => w
                        .sessions
                        .values()
                        .any(|s| s.free() > 0 && s.may_run(agent, e.instance.as_deref(), delegate)),
                };
                prop_assert!(!idle, "ready {id} waits beside an idle session that may run it");
            }
        }
        super::demand_test::check_against_executions(&self.grid)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn dispatch_keeps_every_invariant(steps in prop::collection::vec(arb_step(), 1..80)) {
        let mut h = Harness::new();
        for step in &steps {
            h.run(step);
            h.check()?;
        }
    }

    #[test]
    fn replicas_of_one_log_agree_and_snapshots_restore(steps in prop::collection::vec(arb_step(), 1..60), cut in any::<prop::sample::Index>()) {
        let mut h = Harness::new();
        for step in &steps {
            h.run(step);
        }
        // Another replica applying the same log ends equal, with the same results and events.
        let mut replica = Grid::default();
        let mut events = Vec::new();
        for (now, command) in &h.log {
            replica.apply_batch_with_events(*now, std::slice::from_ref(command), &mut events);
        }
        prop_assert_eq!(&replica, &h.grid);
        prop_assert_eq!(&events, &h.events);
        // Restoring a snapshot taken mid-log and applying the rest ends equal too.
        let cut = cut.index(h.log.len() + 1);
        let mut first = Grid::default();
        for (now, command) in &h.log[..cut] {
            first.apply_batch(*now, std::slice::from_ref(command));
        }
        let mut restored: Grid = codec::decode(&codec::encode(&first)).unwrap();
        for (now, command) in &h.log[cut..] {
            restored.apply_batch(*now, std::slice::from_ref(command));
        }
        prop_assert_eq!(&restored, &h.grid);
    }
}

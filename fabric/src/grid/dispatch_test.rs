//! Tests of dispatch: capacity, order and load sharing, and the delivery bound; then property
//! tests that drive random sessions, executions, completions, cancels, stops and clock steps,
//! check every invariant of the indexes after each step, and check that replicas and restored
//! snapshots of the same log agree.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::execution::*;
use super::instance::NewInstance;
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
        2 => (prop::collection::vec(0..2usize, 1..3), 1..4u32, any::<bool>(), prop::option::weighted(0.2, 0..2usize), any::<bool>())
            .prop_map(|(agents, capacity, concurrent, delegates, lease)| Step::Open { agents, capacity, concurrent, delegates, lease }),
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
            Step::Open { agents, capacity, concurrent, delegates, lease } => {
                let names: BTreeSet<&str> = agents.iter().map(|a| AGENTS[*a]).collect();
                let mut new = new_session(&names.into_iter().collect::<Vec<_>>(), *capacity);
                for spec in &mut new.agents {
                    spec.concurrent_instances = *concurrent;
                    if let Some(d) = delegates {
                        spec.delegates = vec![DELEGATES[*d].into()];
                    }
                }
                new.lease_ms = if *lease { 300 } else { 0 };
                Command::OpenSession(Box::new(new))
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
                    .list_executions(None, None, None, 10_000)
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
        // Work conservation: a runnable stateless execution never waits while a session that
        // serves it has a free slot.
        for ((agent, delegate), queue) in &w.ready {
            for (_, id) in queue {
                let e = &w.executions[id];
                prop_assert!(e.status == Status::Pending, "ready {id} is {:?}", e.status);
                if e.instance.is_none() {
                    let idle = w.sessions.values().any(|s| s.free() > 0 && s.serves(agent, delegate));
                    prop_assert!(!idle, "ready {id} waits beside an idle session");
                }
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

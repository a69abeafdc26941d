//! Tests of executions, sessions, instances and dispatch: scenarios, and property tests
//! that drive random sessions and executions and check the invariants after every step.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::execution::*;
use super::instance::{Lifecycle, NewInstance};
use super::session::{AgentSpec, Host, NewSession};
use super::*;
use crate::codec;

/// A grid under test: applies commands at a clock the test moves, and keeps the events.
struct Harness {
    grid: Grid,
    now: u64,
    events: Vec<Event>,
    log: Vec<(u64, Command)>,
}

impl Harness {
    fn new() -> Self {
        Self { grid: Grid::default(), now: 1_000, events: Vec::new(), log: Vec::new() }
    }

    fn at(&mut self, now: u64) -> &mut Self {
        self.now = now;
        self
    }

    fn apply(&mut self, command: Command) -> Result<Output, Error> {
        self.log.push((self.now, command.clone()));
        let mut out =
            self.grid.apply_batch_with_events(self.now, std::slice::from_ref(&command), &mut self.events);
        out.pop().expect("one result per command")
    }

    fn ok(&mut self, command: Command) -> Output {
        let what = format!("{command:?}");
        self.apply(command).unwrap_or_else(|e| panic!("{what} was refused: {e}"))
    }

    fn create(&mut self, new: NewExecution) -> ExecutionId {
        match self.ok(Command::CreateExecution(Box::new(new))) {
            Output::Execution { id, .. } => id,
            other => panic!("create gave {other:?}"),
        }
    }

    fn open(&mut self, agents: &[&str], capacity: u32) -> SessionId {
        self.open_with(new_session(agents, capacity))
    }

    fn open_with(&mut self, new: NewSession) -> SessionId {
        match self.ok(Command::OpenSession(Box::new(new))) {
            Output::Session { id } => id,
            other => panic!("open gave {other:?}"),
        }
    }

    fn exec(&self, id: ExecutionId) -> &Execution {
        self.grid.execution(id).expect("execution exists")
    }

    fn token(&self, id: ExecutionId) -> u64 {
        self.exec(id).lease.expect("assigned").token
    }

    fn holder(&self, id: ExecutionId) -> Option<SessionId> {
        self.exec(id).lease.map(|l| l.session)
    }

    fn complete(&mut self, id: ExecutionId, result: &str) -> Output {
        let token = self.token(id);
        self.ok(complete_cmd(id, token, Ok(Payload::json(result)), vec![]))
    }

    fn fail(&mut self, id: ExecutionId, message: &str) -> Output {
        let token = self.token(id);
        let outcome = Err(HandlerError { message: message.into(), retryable: true });
        self.ok(complete_cmd(id, token, outcome, vec![]))
    }

    fn start(&mut self, agent: &str, id: &str) -> ExecutionId {
        let new = NewInstance {
            agent: agent.into(),
            instance: Some(id.into()),
            payload: Payload::json("{}"),
            idempotency_key: None,
            parent: None,
            retention_ms: 60_000,
            max_deliveries: 5,
        };
        match self.ok(Command::StartInstance(Box::new(new))) {
            Output::Instance { start_execution, .. } => start_execution,
            other => panic!("start gave {other:?}"),
        }
    }

    fn assigned_events(&self) -> Vec<ExecutionId> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Assigned { execution, .. } => Some(*execution),
                _ => None,
            })
            .collect()
    }

    fn revoked_events(&self) -> Vec<ExecutionId> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Revoked { execution, .. } => Some(*execution),
                _ => None,
            })
            .collect()
    }
}

fn new_exec(agent: &str, delegate: &str) -> NewExecution {
    NewExecution {
        agent: agent.into(),
        instance: None,
        delegate: delegate.into(),
        payload: Payload::json("1"),
        idempotency_key: None,
        timeout_ms: None,
        deadline_ms: None,
        delay_ms: None,
        not_before_ms: None,
        priority: 0,
        retry: None,
        parent: None,
        retention_ms: 60_000,
        max_deliveries: 5,
    }
}

fn on_instance(agent: &str, instance: &str, delegate: &str) -> NewExecution {
    NewExecution { instance: Some(instance.into()), ..new_exec(agent, delegate) }
}

fn new_session(agents: &[&str], capacity: u32) -> NewSession {
    NewSession {
        host: Host { node: 1, key: 7 },
        agents: agents
            .iter()
            .map(|a| AgentSpec { name: (*a).into(), delegates: vec![], concurrent_instances: false })
            .collect(),
        capacity,
        claims: vec![],
        lease_ms: 0,
        name: "test".into(),
    }
}

fn complete_cmd(
    execution: ExecutionId,
    token: u64,
    outcome: Result<Payload, HandlerError>,
    effects: Vec<Effect>,
) -> Command {
    Command::Complete(Box::new(Completion { execution, token, outcome, effects }))
}

fn put_effect(namespace: &str, key: &str, value: &str, expected_version: Option<u64>) -> Effect {
    Effect::Put {
        namespace: namespace.into(),
        key: key.into(),
        value: value.as_bytes().to_vec(),
        ttl_ms: None,
        expected_version,
    }
}

#[test]
fn an_execution_waits_for_a_session_then_runs_once() {
    let mut h = Harness::new();
    let id = h.create(new_exec("echo", "say"));
    assert_eq!(h.exec(id).status, Status::Pending, "no session serves echo yet: it waits");
    let s = h.open(&["echo"], 4);
    assert_eq!(h.exec(id).status, Status::Assigned);
    assert_eq!(h.holder(id), Some(s));
    assert_eq!(h.assigned_events(), [id]);
    assert_eq!(h.exec(id).attempts, 1);
    assert_eq!(h.complete(id, "\"hi\""), Output::Completion(Completed::Accepted));
    let e = h.exec(id);
    assert_eq!((e.status, e.outcome.clone()), (Status::Completed, Some(Ok(Payload::json("\"hi\"")))));
    assert!(h.grid.session(s).unwrap().assigned.is_empty());
}

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
fn completions_are_fenced_by_the_token() {
    let mut h = Harness::new();
    let s1 = h.open(&["w"], 1);
    let id = h.create(new_exec("w", "job"));
    let old = h.token(id);
    h.ok(Command::CloseSession { session: s1, reason: "stream closed".into() });
    assert_eq!(h.exec(id).status, Status::Pending, "back to pending when its session ends");
    let s2 = h.open(&["w"], 1);
    assert_eq!(h.holder(id), Some(s2));
    assert_eq!(h.exec(id).attempts, 2);
    let stale = h.apply(complete_cmd(id, old, Ok(Payload::json("1")), vec![]));
    assert!(matches!(stale, Err(Error::StaleLease { .. })), "{stale:?}");
    assert_eq!(h.exec(id).status, Status::Assigned, "a refused completion changes nothing");
    let token = h.token(id);
    h.complete(id, "2");
    let again = h.apply(complete_cmd(id, token, Ok(Payload::json("2")), vec![]));
    assert_eq!(again, Ok(Output::Completion(Completed::Repeated)), "the same completion again is fine");
    let late = h.apply(complete_cmd(id, old, Ok(Payload::json("1")), vec![]));
    assert!(matches!(late, Err(Error::ExecutionFinished { .. })), "{late:?}");
    let unknown = h.apply(complete_cmd(999, 1, Ok(Payload::json("1")), vec![]));
    assert!(matches!(unknown, Err(Error::UnknownExecution { id: 999 })), "{unknown:?}");
    assert_eq!(h.exec(id).outcome, Some(Ok(Payload::json("2"))));
}

#[test]
fn idempotency_keys_return_the_first_execution() {
    let mut h = Harness::new();
    let keyed = NewExecution { idempotency_key: Some("k1".into()), ..new_exec("w", "job") };
    let id = h.create(keyed.clone());
    assert_eq!(
        h.ok(Command::CreateExecution(Box::new(keyed.clone()))),
        Output::Execution { id, created: false }
    );
    let other = NewExecution { payload: Payload::json("2"), ..keyed.clone() };
    let reused = h.apply(Command::CreateExecution(Box::new(other)));
    assert!(matches!(reused, Err(Error::IdempotencyKeyReused { .. })), "{reused:?}");
    h.open(&["w"], 1);
    h.complete(id, "42");
    // Within the retention the key still names it, result included.
    h.at(50_000).ok(Command::Tick { limit: 100 });
    assert_eq!(
        h.ok(Command::CreateExecution(Box::new(keyed.clone()))),
        Output::Execution { id, created: false }
    );
    // After it the execution is forgotten and the key is free.
    h.at(1_000 + 60_000 + 1).ok(Command::Tick { limit: 100 });
    assert!(h.grid.execution(id).is_none());
    let fresh = h.create(keyed);
    assert_ne!(fresh, id);
}

#[test]
fn retries_back_off_and_give_up_after_max_attempts() {
    let mut h = Harness::new();
    h.open(&["w"], 1);
    let retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff_ms: 100,
        max_backoff_ms: 150,
        multiplier_percent: 200,
    };
    let id = h.create(NewExecution { retry: Some(retry), ..new_exec("w", "job") });
    assert_eq!(h.fail(id, "boom"), Output::Completion(Completed::Retrying { not_before_ms: 1_100 }));
    assert_eq!(h.exec(id).status, Status::Pending);
    h.at(1_099).ok(Command::Tick { limit: 10 });
    assert_eq!(h.exec(id).status, Status::Pending, "not before its back-off");
    assert_eq!(h.grid.next_timer_ms(), Some(1_100));
    h.at(1_100).ok(Command::Tick { limit: 10 });
    assert_eq!((h.exec(id).status, h.exec(id).attempts), (Status::Assigned, 2));
    assert_eq!(
        h.fail(id, "boom"),
        Output::Completion(Completed::Retrying { not_before_ms: 1_250 }),
        "capped"
    );
    h.at(1_250).ok(Command::Tick { limit: 10 });
    h.fail(id, "boom at last");
    let e = h.exec(id);
    assert_eq!(e.status, Status::Failed);
    assert_eq!(e.outcome, Some(Err(Failure { kind: FailureKind::Handler, message: "boom at last".into() })));
    // Without a policy the first error is final.
    let once = h.create(new_exec("w", "job"));
    h.fail(once, "no");
    assert_eq!(h.exec(once).status, Status::Failed);
}

#[test]
fn delayed_executions_and_deadlines_fire_on_ticks() {
    let mut h = Harness::new();
    h.open(&["w"], 10);
    let later = h.create(NewExecution { delay_ms: Some(500), ..new_exec("w", "job") });
    let at = h.create(NewExecution { not_before_ms: Some(3_000), ..new_exec("w", "job") });
    assert_eq!((h.exec(later).status, h.exec(at).status), (Status::Pending, Status::Pending));
    h.at(1_500).ok(Command::Tick { limit: 10 });
    assert_eq!((h.exec(later).status, h.exec(at).status), (Status::Assigned, Status::Pending));
    let doomed = h.create(NewExecution { timeout_ms: Some(100), ..new_exec("w", "job") });
    assert_eq!(h.exec(doomed).status, Status::Assigned);
    h.at(1_600).ok(Command::Tick { limit: 10 });
    let e = h.exec(doomed);
    assert_eq!(e.status, Status::Failed);
    assert!(matches!(&e.outcome, Some(Err(Failure { kind: FailureKind::Deadline, .. }))));
    assert!(h.revoked_events().contains(&doomed), "the holder is told to stop");
    let token = h.token(later);
    h.ok(complete_cmd(later, token, Ok(Payload::json("1")), vec![]));
    h.at(3_000).ok(Command::Tick { limit: 10 });
    assert_eq!(h.exec(at).status, Status::Assigned);
}

#[test]
fn leases_expire_unless_renewed() {
    let mut h = Harness::new();
    let s = h.open_with(NewSession { lease_ms: 1_000, ..new_session(&["w"], 2) });
    let id = h.create(new_exec("w", "job"));
    let other = h.create(new_exec("w", "job"));
    let token = h.token(id);
    h.at(1_900);
    assert_eq!(h.ok(Command::Renew { execution: id, token }), Output::Renewed { expires_ms: Some(2_900) });
    let other_token = h.token(other);
    h.ok(complete_cmd(other, other_token, Ok(Payload::json("1")), vec![]));
    h.at(2_500).ok(Command::Tick { limit: 10 });
    assert_eq!(h.holder(id), Some(s), "renewed: still held");
    h.at(2_900).ok(Command::Tick { limit: 10 });
    assert!(h.revoked_events().contains(&id));
    // A session that stopped renewing is hung or cut off: it ends, and the work waits for
    // another session instead of going back to it.
    assert!(h.grid.session(s).is_none(), "the session is closed");
    assert_eq!(h.exec(id).status, Status::Pending);
    let s2 = h.open(&["w"], 1);
    assert_eq!(h.holder(id), Some(s2));
    assert_eq!(h.exec(id).attempts, 2);
    assert_ne!(h.token(id), token);
    let stale = h.apply(Command::Renew { execution: id, token });
    assert!(matches!(stale, Err(Error::StaleLease { .. })));
}

#[test]
fn a_call_released_while_its_instance_stops_runs_before_stop() {
    let mut h = Harness::new();
    let a = h.open(&["c"], 5);
    let start = h.start("c", "x");
    h.complete(start, "null");
    let call = h.create(NewExecution { priority: i32::MAX, ..on_instance("c", "x", "inc") });
    assert_eq!(h.holder(call), Some(a));
    let stop = match h.ok(Command::StopInstance { agent: "c".into(), instance: "x".into() }) {
        Output::Stopping { stop_execution } => stop_execution,
        other => panic!("{other:?}"),
    };
    h.ok(Command::CloseSession { session: a, reason: "crashed".into() });
    let b = h.open(&["c"], 5);
    assert_eq!(h.holder(call), Some(b), "the released call runs first, whatever its priority");
    assert_eq!(h.exec(stop).status, Status::Pending);
    h.complete(call, "1");
    assert_eq!(h.holder(stop), Some(b), "then Stop");
    h.complete(stop, "null");
    assert!(h.grid.instance("c", "x").is_none());
}

#[test]
fn cancel_reaches_the_holder_and_the_children() {
    let mut h = Harness::new();
    h.open(&["w"], 10);
    let parent = h.create(new_exec("w", "job"));
    let ptoken = h.token(parent);
    let child = h.create(NewExecution {
        parent: Some(ParentRef { id: parent, token: ptoken }),
        ..new_exec("w", "part")
    });
    let grandchild = h.create(NewExecution {
        parent: Some(ParentRef { id: child, token: h.token(child) }),
        ..new_exec("w", "part")
    });
    let bad_parent = h.apply(Command::CreateExecution(Box::new(NewExecution {
        parent: Some(ParentRef { id: parent, token: ptoken + 100 }),
        ..new_exec("w", "part")
    })));
    assert!(matches!(bad_parent, Err(Error::StaleLease { .. })), "only the holder may create children");
    assert_eq!(
        h.ok(Command::Cancel { execution: parent, reason: "user".into() }),
        Output::Cancelled { count: 3 }
    );
    for id in [parent, child, grandchild] {
        assert_eq!(h.exec(id).status, Status::Cancelled, "execution {id}");
    }
    let revoked: BTreeSet<_> = h.revoked_events().into_iter().collect();
    assert_eq!(revoked, BTreeSet::from([parent, child, grandchild]));
    let again = h.apply(Command::Cancel { execution: parent, reason: String::new() });
    assert!(matches!(again, Err(Error::ExecutionFinished { .. })));
}

#[test]
fn instance_calls_run_one_at_a_time_in_order_on_one_session() {
    let mut h = Harness::new();
    let start = h.start("counter", "c1");
    let calls: Vec<_> = (0..3).map(|_| h.create(on_instance("counter", "c1", "inc"))).collect();
    let a = h.open(&["counter"], 10);
    assert_eq!(h.holder(start), Some(a), "Start runs first");
    assert!(calls.iter().all(|c| h.exec(*c).status == Status::Pending));
    h.complete(start, "null");
    assert_eq!(h.grid.instance("counter", "c1").unwrap().lifecycle, Lifecycle::Running);
    assert_eq!(h.holder(calls[0]), Some(a));
    assert_eq!(h.exec(calls[1]).status, Status::Pending, "one at a time");
    // A second session with more room does not take the instance's calls: single activation.
    let b = h.open(&["counter"], 100);
    h.complete(calls[0], "1");
    assert_eq!(h.holder(calls[1]), Some(a));
    // A session that claims the busy instance is refused.
    let claim = h.apply(Command::OpenSession(Box::new(NewSession {
        claims: vec![("counter".into(), "c1".into())],
        ..new_session(&["counter"], 1)
    })));
    assert!(matches!(claim, Err(Error::InstanceClaimed { session, .. }) if session == a), "{claim:?}");
    // When its session ends, the instance moves on, with its running call redelivered first.
    h.ok(Command::CloseSession { session: a, reason: "gone".into() });
    assert_eq!(h.holder(calls[1]), Some(b));
    assert_eq!(h.exec(calls[1]).attempts, 2);
    assert_eq!(h.exec(calls[2]).status, Status::Pending);
    assert_eq!(h.grid.instance("counter", "c1").unwrap().session, Some(b));
}

#[test]
fn a_call_the_instance_session_does_not_serve_fails_instead_of_blocking_the_instance() {
    let mut h = Harness::new();
    let mut spec = new_session(&["c"], 10);
    spec.agents[0].delegates = vec!["inc".into()];
    let s = h.open_with(spec);
    let start = h.start("c", "x");
    h.complete(start, "null");
    let typo = h.create(on_instance("c", "x", "icn"));
    let next = h.create(on_instance("c", "x", "inc"));
    let e = h.exec(typo);
    assert_eq!(e.status, Status::Failed);
    let Some(Err(failure)) = &e.outcome else { panic!("{e:?}") };
    assert_eq!(failure.kind, FailureKind::Undeliverable);
    assert!(failure.message.contains("does not serve delegate 'icn'"), "{failure:?}");
    assert_eq!(h.holder(next), Some(s), "the instance goes on");
    h.complete(next, "1");
    // A newer process that serves the delegate: the instance moves to it instead.
    let mut newer = new_session(&["c"], 10);
    newer.agents[0].delegates = vec!["inc".into(), "icn".into()];
    let t = h.open_with(newer);
    let moved = h.create(on_instance("c", "x", "icn"));
    assert_eq!(h.holder(moved), Some(t));
    assert_eq!(h.grid.instance("c", "x").unwrap().session, Some(t));
    // Without an activation (no session holds the instance) it waits, like any call nobody serves.
    h.ok(Command::CloseSession { session: t, reason: "gone".into() });
    h.ok(Command::CloseSession { session: s, reason: "gone".into() });
    let waits = h.create(on_instance("c", "x", "icn"));
    assert_eq!(h.exec(waits).status, Status::Pending);
}

#[test]
fn concurrent_instances_run_several_calls_at_once() {
    let mut h = Harness::new();
    let mut spec = new_session(&["c"], 10);
    spec.agents[0].concurrent_instances = true;
    h.open_with(spec);
    let start = h.start("c", "x");
    h.complete(start, "null");
    let calls: Vec<_> = (0..3).map(|_| h.create(on_instance("c", "x", "inc"))).collect();
    assert!(calls.iter().all(|c| h.exec(*c).status == Status::Assigned));
    assert_eq!(h.grid.instance("c", "x").unwrap().running, 3);
}

#[test]
fn calls_to_unknown_or_stopping_instances_are_refused() {
    let mut h = Harness::new();
    let r = h.apply(Command::CreateExecution(Box::new(on_instance("c", "nope", "inc"))));
    assert!(matches!(r, Err(Error::UnknownInstance { .. })), "{r:?}");
    h.open(&["c"], 1);
    let start = h.start("c", "x");
    h.complete(start, "null");
    let running = h.create(on_instance("c", "x", "inc"));
    assert_eq!(h.exec(running).status, Status::Assigned, "Stop will wait for it");
    let dup = h.apply(Command::StartInstance(Box::new(NewInstance {
        agent: "c".into(),
        instance: Some("x".into()),
        payload: Payload::json("{}"),
        idempotency_key: None,
        parent: None,
        retention_ms: 1,
        max_deliveries: 1,
    })));
    assert!(matches!(dup, Err(Error::InstanceExists { .. })), "{dup:?}");
    h.ok(Command::StopInstance { agent: "c".into(), instance: "x".into() });
    let r = h.apply(Command::CreateExecution(Box::new(on_instance("c", "x", "inc"))));
    assert!(matches!(r, Err(Error::InstanceStopping { .. })), "{r:?}");
    let reserved = h.apply(Command::CreateExecution(Box::new(new_exec("c", START_DELEGATE))));
    assert!(matches!(reserved, Err(Error::InvalidExecution { .. })));
}

#[test]
fn stop_runs_after_the_running_call_then_removes_state_and_children() {
    let mut h = Harness::new();
    let s = h.open(&["c"], 10);
    let start = h.start("c", "p");
    h.complete(start, "null");
    let child_start = match h.ok(Command::StartInstance(Box::new(NewInstance {
        agent: "c".into(),
        instance: Some("kid".into()),
        payload: Payload::json("{}"),
        idempotency_key: None,
        parent: Some(("c".into(), "p".into())),
        retention_ms: 60_000,
        max_deliveries: 5,
    }))) {
        Output::Instance { start_execution, .. } => start_execution,
        other => panic!("{other:?}"),
    };
    h.complete(child_start, "null");
    h.ok(Command::Put {
        namespace: "instance/c/p".into(),
        key: "n".into(),
        value: b"5".to_vec(),
        ttl_ms: Some(100_000),
        if_absent: false,
    });
    let running = h.create(on_instance("c", "p", "inc"));
    let queued = h.create(on_instance("c", "p", "inc"));
    assert_eq!(h.holder(running), Some(s));
    let stop = match h.ok(Command::StopInstance { agent: "c".into(), instance: "p".into() }) {
        Output::Stopping { stop_execution } => stop_execution,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        h.ok(Command::StopInstance { agent: "c".into(), instance: "p".into() }),
        Output::Stopping { stop_execution: stop },
        "stopping twice names the same Stop"
    );
    assert_eq!(h.exec(queued).status, Status::Cancelled, "waiting calls are cancelled");
    assert_eq!(h.exec(stop).status, Status::Pending, "Stop waits for the running call");
    h.complete(running, "6");
    assert_eq!(h.holder(stop), Some(s));
    assert_eq!(h.exec(stop).delegate, STOP_DELEGATE);
    h.complete(stop, "null");
    assert!(h.grid.instance("c", "p").is_none(), "removed");
    assert!(h.grid.get("instance/c/p", "n").is_none(), "with its state");
    assert_eq!(h.grid.next_expiry_ms(), None, "and the state's expiry entries");
    let kid = h.grid.instance("c", "kid").expect("the child is stopping");
    assert_eq!(kid.lifecycle, Lifecycle::Stopping);
    let kid_stop = kid.stop_execution.unwrap();
    h.complete(kid_stop, "null");
    assert!(h.grid.instance("c", "kid").is_none());
    assert!(h.grid.session(s).unwrap().activated.is_empty());
}

#[test]
fn stopping_an_instance_that_is_still_starting_cancels_its_start_and_removes_it() {
    let mut h = Harness::new();
    let start = h.start("c", "x");
    let call = h.create(on_instance("c", "x", "inc"));
    let out = h.ok(Command::StopInstance { agent: "c".into(), instance: "x".into() });
    assert_eq!(out, Output::Stopping { stop_execution: start }, "nothing to stop: the Start itself ends");
    assert_eq!(h.exec(start).status, Status::Cancelled);
    assert_eq!(h.exec(call).status, Status::Cancelled);
    assert!(h.grid.instance("c", "x").is_none(), "removed");
    // With its Start running on a session: the session is told, and nothing is left to do.
    let s = h.open(&["c"], 5);
    let start = h.start("c", "y");
    assert_eq!(h.holder(start), Some(s));
    h.ok(Command::StopInstance { agent: "c".into(), instance: "y".into() });
    assert!(h.revoked_events().contains(&start));
    assert!(h.grid.instance("c", "y").is_none());
    assert!(
        h.grid.session(s).unwrap().assigned.is_empty() && h.grid.session(s).unwrap().activated.is_empty()
    );
    assert_eq!(h.grid.pending_by_agent().get("c"), None, "no Stop left waiting");
}

#[test]
fn a_failed_start_removes_the_instance_and_its_calls() {
    let mut h = Harness::new();
    h.open(&["c"], 10);
    let start = h.start("c", "x");
    let call = h.create(on_instance("c", "x", "inc"));
    h.fail(start, "cannot start");
    assert!(h.grid.instance("c", "x").is_none());
    assert_eq!(h.exec(call).status, Status::Cancelled);
    assert!(matches!(&h.exec(call).outcome, Some(Err(Failure { kind: FailureKind::Instance, .. }))));
}

#[test]
fn effects_apply_atomically_with_the_result() {
    let mut h = Harness::new();
    h.open(&["c"], 10);
    let start = h.start("c", "x");
    h.complete(start, "null");
    let call = h.create(on_instance("c", "x", "inc"));
    let token = h.token(call);
    let effects = vec![
        put_effect("instance/c/x", "n", "1", Some(0)),
        put_effect("shared/totals", "c", "1", None),
        Effect::Call(Box::new(new_exec("c", "notify"))),
    ];
    assert_eq!(
        h.ok(complete_cmd(call, token, Ok(Payload::json("1")), effects)),
        Output::Completion(Completed::Accepted)
    );
    let n = h.grid.get("instance/c/x", "n").unwrap().clone();
    assert_eq!(n.data, b"1");
    assert_eq!(h.grid.get("shared/totals", "c").unwrap().data, b"1");
    let children = h.grid.children_of(call);
    assert_eq!(children.len(), 1, "the call effect made a child");
    assert_eq!(h.exec(children[0]).delegate, "notify");

    // A conflicting expected version: nothing applied, the call runs again.
    let second = h.create(on_instance("c", "x", "inc"));
    let token = h.token(second);
    let stale =
        vec![put_effect("instance/c/x", "n", "2", Some(0)), put_effect("shared/totals", "c", "2", None)];
    let out = h.ok(complete_cmd(second, token, Ok(Payload::json("2")), stale));
    assert_eq!(
        out,
        Output::Completion(Completed::Conflict {
            namespace: "instance/c/x".into(),
            key: "n".into(),
            expected: 0,
            current: n.version
        })
    );
    assert_eq!(h.grid.get("shared/totals", "c").unwrap().data, b"1", "no effect applied");
    assert_eq!(h.exec(second).status, Status::Assigned, "assigned again at once");
    assert_eq!(h.exec(second).attempts, 2);

    // Effects a handler may not make are refused and change nothing.
    let token = h.token(second);
    let keyed = |k: &str| {
        Effect::Call(Box::new(NewExecution { idempotency_key: Some(k.into()), ..new_exec("c", "notify") }))
    };
    for (effects, outcome) in [
        (vec![keyed("k"), keyed("k")], Ok(Payload::json("1"))),
        (vec![put_effect("instance/c/other", "n", "1", None)], Ok(Payload::json("1"))),
        (
            vec![put_effect("shared/a", "k", "1", None), put_effect("shared/a", "k", "2", None)],
            Ok(Payload::json("1")),
        ),
        (
            vec![put_effect("shared/a", "k", "1", None)],
            Err(HandlerError { message: "x".into(), retryable: false }),
        ),
    ] {
        let before = h.grid.clone();
        let r = h.apply(complete_cmd(second, token, outcome, effects));
        assert!(matches!(r, Err(Error::InvalidCompletion { .. })), "{r:?}");
        assert_eq!(h.grid, before, "a refused completion changes nothing");
    }
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
fn a_draining_session_gets_no_new_work_and_give_back_returns_it() {
    let mut h = Harness::new();
    let a = h.open(&["w"], 5);
    let first = h.create(new_exec("w", "job"));
    h.ok(Command::DrainSession { session: a });
    let second = h.create(new_exec("w", "job"));
    assert_eq!(h.exec(second).status, Status::Pending);
    let b = h.open(&["w"], 5);
    assert_eq!(h.holder(second), Some(b));
    let token = h.token(first);
    assert_eq!(h.ok(Command::GiveBack { execution: first, token }), Output::Released);
    assert_eq!(h.holder(first), Some(b), "given back, it goes to the other session");
    assert!(matches!(h.apply(Command::DrainSession { session: 99 }), Err(Error::UnknownSession { id: 99 })));
}

#[test]
fn bad_work_commands_name_the_problem_and_change_nothing() {
    let mut h = Harness::new();
    h.open(&["w"], 1);
    let before = h.grid.clone();
    let cases: Vec<(Command, &str)> = vec![
        (Command::CreateExecution(Box::new(new_exec("bad name", "x"))), "invalid agent name 'bad name'"),
        (
            Command::CreateExecution(Box::new(NewExecution {
                payload: Payload::json("{oops"),
                ..new_exec("w", "x")
            })),
            "not valid JSON",
        ),
        (
            Command::CreateExecution(Box::new(NewExecution {
                timeout_ms: Some(5),
                deadline_ms: Some(5),
                ..new_exec("w", "x")
            })),
            "not both",
        ),
        (
            Command::CreateExecution(Box::new(NewExecution {
                retry: Some(RetryPolicy {
                    max_attempts: 0,
                    initial_backoff_ms: 0,
                    max_backoff_ms: 0,
                    multiplier_percent: 200,
                }),
                ..new_exec("w", "x")
            })),
            "max_attempts",
        ),
        (
            Command::CreateExecution(Box::new(NewExecution { deadline_ms: Some(999), ..new_exec("w", "x") })),
            "has passed",
        ),
        (Command::OpenSession(Box::new(new_session(&[], 1))), "at least one agent"),
        (Command::OpenSession(Box::new(new_session(&["w"], 0))), "capacity"),
        (Command::OpenSession(Box::new(new_session(&["w", "w"], 1))), "listed twice"),
        (Command::Cancel { execution: 42, reason: String::new() }, "no execution 42"),
        (Command::StopInstance { agent: "w".into(), instance: "nope".into() }, "no instance w/nope"),
    ];
    for (command, needle) in cases {
        let e = h.apply(command).unwrap_err().to_string();
        assert!(e.contains(needle), "{e:?} should mention {needle:?}");
        assert_eq!(h.grid, before);
    }
    let limits = Limits { max_payload_bytes: 4, ..Limits::default() };
    let big = Command::CreateExecution(Box::new(NewExecution {
        payload: Payload::json("12345"),
        ..new_exec("w", "x")
    }));
    assert!(matches!(big.validate(&limits), Err(Error::PayloadTooLarge { size: 5, limit: 4 })));
}

#[test]
fn a_v1_snapshot_grid_decodes_into_an_empty_work_state() {
    #[derive(serde::Serialize)]
    struct V1 {
        revision: u64,
        now_ms: u64,
        namespaces: std::collections::BTreeMap<String, std::collections::BTreeMap<String, Value>>,
        expiries: std::collections::BTreeMap<(u64, String, String), ()>,
    }
    let mut g = Grid::default();
    g.apply_batch(
        10,
        &[Command::Put {
            namespace: "shared/a".into(),
            key: "k".into(),
            value: b"v".to_vec(),
            ttl_ms: None,
            if_absent: false,
        }],
    );
    let old = V1 {
        revision: g.revision,
        now_ms: g.now_ms,
        namespaces: g.namespaces.clone(),
        expiries: g.expiries.clone(),
    };
    let bytes = codec::encode(&old);
    assert!(codec::decode::<Grid>(&bytes).is_err(), "the new layout does not read the old one");
    let restored = Grid::from_v1(codec::decode::<GridV1>(&bytes).unwrap());
    assert_eq!(restored, g);
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
        Ok(())
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

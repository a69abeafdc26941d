//! Tests of instances: single activation and order, concurrent instances, starting, stopping
//! and removal.

use super::execution::*;
use super::instance::{Lifecycle, NewInstance};
use super::session::NewSession;
use super::test_harness::*;
use super::*;

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

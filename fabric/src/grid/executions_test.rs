//! Tests of executions: creation, completion and its fencing, idempotency keys, retries,
//! cancellation, effects, and commands refused for their shape.

use std::collections::BTreeSet;

use super::execution::*;
use super::test_harness::*;
use super::*;

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

/// A session of `agent` that serves only `delegates`.
fn serving(agent: &str, delegates: &[&str]) -> session::NewSession {
    let mut new = new_session(&[agent], 4);
    new.agents[0].delegates = delegates.iter().map(|d| (*d).to_owned()).collect();
    new
}

#[test]
fn a_delegate_no_connected_session_serves_is_refused_unless_the_caller_waits() {
    let mut h = Harness::new();
    let served = |new: NewExecution| Command::CreateServedExecution(Box::new(new));
    // No session of the agent at all: the call waits (a scaler may start one).
    let early = match h.ok(served(new_exec("img", "resize"))) {
        Output::Execution { id, .. } => id,
        other => panic!("create gave {other:?}"),
    };
    assert_eq!(h.exec(early).status, Status::Pending);

    h.open_with(serving("img", &["crop", "thumb"]));
    h.open_with(serving("img", &["crop"]));
    let before = h.grid.work_totals();
    match h.apply(served(new_exec("img", "rotate"))) {
        Err(Error::DelegateNotServed { agent, delegate, sessions, served }) => {
            assert_eq!((agent.as_str(), delegate.as_str(), sessions), ("img", "rotate", 2));
            assert_eq!(served, "crop, thumb");
        }
        other => panic!("expected DelegateNotServed, got {other:?}"),
    }
    assert_eq!(h.grid.work_totals(), before, "a refusal changes nothing");
    let message = h.apply(served(new_exec("img", "rotate"))).unwrap_err().to_string();
    assert!(message.contains("serve: crop, thumb") && message.contains("wait_for_delegate"), "{message}");

    // A delegate one of them serves is taken; the caller that waits gets a pending call.
    assert!(matches!(h.ok(served(new_exec("img", "thumb"))), Output::Execution { created: true, .. }));
    let waiting = h.create(new_exec("img", "rotate"));
    assert_eq!(h.exec(waiting).status, Status::Pending);
    // Sessions of other agents do not count, and one that serves every delegate serves it.
    assert!(h.apply(served(new_exec("other", "rotate"))).is_ok());
    h.open(&["img"], 1);
    assert!(h.apply(served(new_exec("img", "rotate"))).is_ok());
}

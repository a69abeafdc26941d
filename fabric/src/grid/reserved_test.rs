//! Tests of eager calls in the grid: blocks set aside, a reserved create honoured exactly as
//! the leader pushed it or voided without ever using its id and token, and the held stamp
//! keeping the slots of eager calls free.

use super::execution::*;
use super::reserved::{MAX_BLOCK, MAX_BLOCK_AGE_MS, MAX_BLOCKS};
use super::test_harness::*;
use super::*;

/// Reserves a block of `count`; its first id and token.
fn reserve(h: &mut Harness, count: u32) -> (ExecutionId, u64) {
    match h.ok(Command::ReserveBlock { count }) {
        Output::Block { first_id, first_token, count: c } => {
            assert_eq!(c, count);
            (first_id, first_token)
        }
        other => panic!("reserve gave {other:?}"),
    }
}

fn reserved(new: NewExecution, id: ExecutionId, token: u64, session: SessionId) -> Command {
    Command::CreateReserved(Box::new(Reserved { new, served: false, id, token, session }))
}

#[test]
fn a_block_is_never_minted_by_the_grid() {
    let mut h = Harness::new();
    let s = h.open(&["w"], 8);
    let before = h.create(new_exec("w", "a"));
    let before_token = h.token(before);
    let (first_id, first_token) = reserve(&mut h, 16);
    assert_eq!(first_id, before + 1);
    assert_eq!(first_token, before_token + 1);
    let after = h.create(new_exec("w", "b"));
    assert_eq!(after, first_id + 16, "the grid's next id skips the block");
    assert_eq!(h.token(after), first_token + 16, "and so does its next token");
    assert_eq!(h.holder(after), Some(s));
}

#[test]
fn a_reserved_create_runs_where_and_as_the_leader_pushed_it() {
    let mut h = Harness::new();
    let s = h.open(&["w"], 1);
    let (x, t) = reserve(&mut h, 4);
    let out = h.ok(reserved(new_exec("w", "job"), x + 2, t + 2, s));
    assert_eq!(out, Output::Execution { id: x + 2, created: true });
    let e = h.exec(x + 2);
    assert_eq!((e.status, e.attempts), (Status::Assigned, 1));
    assert_eq!(e.lease.map(|l| (l.session, l.token)), Some((s, t + 2)));
    assert_eq!(h.assigned_events(), [x + 2]);
    assert!(h.events.contains(&Event::Created { execution: x + 2 }));
    assert_eq!(h.complete(x + 2, "1"), Output::Completion(Completed::Accepted));
}

#[test]
fn a_create_and_its_completion_in_one_entry() {
    let mut h = Harness::new();
    let s = h.open(&["w"], 1);
    let (x, t) = reserve(&mut h, 4);
    let done = complete_cmd(x, t, Ok(Payload::json("7")), vec![put_effect("shared/n", "k", "v", None)]);
    let out = h.apply_held(&[(s, 1)], &[reserved(new_exec("w", "job"), x, t, s), done]);
    assert_eq!(out[0], Ok(Output::Execution { id: x, created: true }));
    assert_eq!(out[1], Ok(Output::Completion(Completed::Accepted)));
    assert_eq!(h.exec(x).outcome, Some(Ok(Payload::json("7"))));
    assert!(h.grid.session(s).unwrap().assigned.is_empty());
    assert!(h.grid.get("shared/n", "k").is_some(), "its effects applied");
}

/// Each case voids the pair: the call is created with a fresh id and queued as any create, the
/// pushed session is told to drop the pair, and a completion under the pair is refused.
#[test]
fn a_void_pair_is_never_used() {
    type Case = (&'static str, fn(&mut Harness, SessionId, ExecutionId, u64) -> Command);
    let cases: [Case; 8] = [
        ("a token not paired with the id", |_, s, x, t| reserved(new_exec("w", "job"), x, t + 1, s)),
        ("an id outside every block", |_, s, x, t| reserved(new_exec("w", "job"), x + 100, t + 100, s)),
        ("an id named twice", |h, s, x, t| {
            h.ok(reserved(new_exec("w", "first"), x, t, s));
            let first = h.exec(x).clone();
            h.ok(complete_cmd(x, t, Ok(Payload::json("1")), vec![]));
            assert_eq!(first.delegate, "first");
            reserved(new_exec("w", "job"), x, t, s)
        }),
        ("a block too old", |h, s, x, t| {
            h.at(h.now + MAX_BLOCK_AGE_MS + 1);
            reserved(new_exec("w", "job"), x, t, s)
        }),
        ("a session gone", |h, s, x, t| {
            h.ok(Command::CloseSession { session: s, reason: "gone".into() });
            reserved(new_exec("w", "job"), x, t, s)
        }),
        ("a session with no room", |h, s, x, t| {
            h.create(new_exec("w", "other"));
            assert_eq!(h.grid.session(s).unwrap().free(), 0);
            reserved(new_exec("w", "job"), x, t, s)
        }),
        ("an instance's call", |h, s, x, t| {
            h.start("w", "i");
            let _ = s;
            reserved(on_instance("w", "i", "job"), x, t, s)
        }),
        ("a delayed call", |_, s, x, t| {
            reserved(NewExecution { delay_ms: Some(50), ..new_exec("w", "job") }, x, t, s)
        }),
    ];
    for (name, case) in cases {
        let mut h = Harness::new();
        let s = h.open(&["w"], 1);
        let (x, t) = reserve(&mut h, 4);
        let command = case(&mut h, s, x, t);
        let (x, t) = match &command {
            Command::CreateReserved(r) => (r.id, r.token),
            _ => unreachable!(),
        };
        let holder_before = h.grid.execution(x).map(|e| e.lease);
        h.events.clear();
        let Ok(Output::Execution { id, created: true }) = h.apply(command) else {
            panic!("{name}: the call is still created");
        };
        assert_ne!(id, x, "{name}: created under a fresh id");
        assert!(h.exec(id).lease.is_none_or(|l| l.token != t), "{name}: never under the pair's token");
        assert_eq!(h.grid.execution(x).map(|e| e.lease), holder_before, "{name}: the id names nothing new");
        // The session is told to drop the pair, unless the id names the call an earlier create
        // honoured under it: then the pair is that call's, not void.
        if h.grid.session(s).is_some() {
            let told = h.revoked_events().contains(&x);
            assert_eq!(told, holder_before.is_none(), "{name}: the session is told to drop it");
        }
        let late = h.apply(complete_cmd(x, t, Ok(Payload::json("1")), vec![]));
        assert!(
            late.is_err() || h.grid.execution(x).is_some_and(|e| e.delegate != "job"),
            "{name}: {late:?}"
        );
        assert!(!matches!(late, Ok(Output::Completion(Completed::Accepted))), "{name}: {late:?}");
    }
}

#[test]
fn a_known_key_answers_the_first_execution_and_voids_the_pair() {
    let mut h = Harness::new();
    let s = h.open(&["w"], 2);
    let keyed = NewExecution { idempotency_key: Some("k".into()), ..new_exec("w", "job") };
    let first = h.create(keyed.clone());
    let (x, t) = reserve(&mut h, 4);
    h.events.clear();
    assert_eq!(h.ok(reserved(keyed, x, t, s)), Output::Execution { id: first, created: false });
    assert!(h.grid.execution(x).is_none());
    assert_eq!(h.revoked_events(), [x]);
}

/// A create that repeats an honoured pair (keyed or not) is void, but the pair is the running
/// call's: its session must not be told to drop it.
#[test]
fn a_repeated_pair_never_revokes_the_call_it_names() {
    for key in [None, Some("k".to_owned())] {
        let mut h = Harness::new();
        let s = h.open(&["w"], 2);
        let (x, t) = reserve(&mut h, 4);
        let call = NewExecution { idempotency_key: key.clone(), ..new_exec("w", "job") };
        assert_eq!(h.ok(reserved(call.clone(), x, t, s)), Output::Execution { id: x, created: true });
        h.events.clear();
        let again = h.ok(reserved(call, x, t, s));
        match &key {
            Some(_) => assert_eq!(again, Output::Execution { id: x, created: false }),
            None => assert!(matches!(again, Output::Execution { id, created: true } if id != x), "{again:?}"),
        }
        assert!(h.revoked_events().is_empty(), "key {key:?}: {:?}", h.events);
        assert_eq!(h.exec(x).lease.map(|l| (l.session, l.token)), Some((s, t)), "key {key:?}");
        assert_eq!(h.complete(x, "1"), Output::Completion(Completed::Accepted), "key {key:?}");
    }
}

#[test]
fn a_refused_reserved_create_changes_nothing() {
    let mut h = Harness::new();
    let s = h.open(&["w"], 2);
    let (x, t) = reserve(&mut h, 4);
    let orphan = NewExecution { parent: Some(ParentRef { id: 999, token: 1 }), ..new_exec("w", "job") };
    let before = h.grid.clone();
    h.events.clear();
    assert!(matches!(h.apply(reserved(orphan, x, t, s)), Err(Error::StaleLease { .. })));
    assert_eq!(h.grid, before);
    assert!(h.events.is_empty());
}

#[test]
fn the_held_stamp_keeps_eager_slots_free() {
    let mut h = Harness::new();
    let s = h.open(&["w"], 2);
    let (x, t) = reserve(&mut h, 4);
    // One eager call held on s: of two plain creates, one gets s's other slot.
    let out = h.apply_held(
        &[(s, 1)],
        &[
            Command::CreateExecution(Box::new(new_exec("w", "a"))),
            Command::CreateExecution(Box::new(new_exec("w", "b"))),
        ],
    );
    let ids: Vec<ExecutionId> = out
        .iter()
        .map(|r| match r {
            Ok(Output::Execution { id, .. }) => *id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(h.holder(ids[0]), Some(s));
    assert_eq!(h.exec(ids[1]).status, Status::Pending, "the held call's slot stays free");
    // A plain create before the held call's own create, in the entry that creates it.
    let out = h.apply_held(
        &[(s, 1)],
        &[Command::CreateExecution(Box::new(new_exec("w", "c"))), reserved(new_exec("w", "job"), x, t, s)],
    );
    assert_eq!(out[1], Ok(Output::Execution { id: x, created: true }), "honoured: its slot was kept");
    assert_eq!(h.holder(x), Some(s));
    // Without the stamp the plain creates would have taken the slot and voided the pair.
    let mut bare = Harness::new();
    let s = bare.open(&["w"], 1);
    let (x, t) = reserve(&mut bare, 4);
    bare.create(new_exec("w", "a"));
    assert!(
        matches!(bare.ok(reserved(new_exec("w", "job"), x, t, s)), Output::Execution { id, .. } if id != x)
    );
}

#[test]
fn old_blocks_are_forgotten_and_block_sizes_are_bounded() {
    let mut h = Harness::new();
    let s = h.open(&["w"], 4);
    let (x, t) = reserve(&mut h, 2);
    for _ in 0..MAX_BLOCKS {
        reserve(&mut h, 2);
    }
    assert!(matches!(h.ok(reserved(new_exec("w", "job"), x, t, s)), Output::Execution { id, .. } if id != x));
    for count in [0, MAX_BLOCK + 1] {
        let before = h.grid.clone();
        assert!(matches!(h.apply(Command::ReserveBlock { count }), Err(Error::InvalidExecution { .. })));
        assert_eq!(h.grid, before);
    }
}

/// A held call that is never created (its leader stopped leading) keeps no slot: the next
/// entry without it gives the slot to the work that waited, though nothing else touches the
/// agent.
#[test]
fn a_slot_held_for_a_call_never_created_is_given_back() {
    let mut h = Harness::new();
    let s = h.open(&["w"], 1);
    let out = h.apply_held(&[(s, 1)], &[Command::CreateExecution(Box::new(new_exec("w", "a")))]);
    let Ok(Output::Execution { id, .. }) = out[0] else { panic!("{out:?}") };
    assert_eq!(h.exec(id).status, Status::Pending, "the held call's slot stays free");
    let put = Command::Put {
        namespace: "shared/x".into(),
        key: "k".into(),
        value: b"1".to_vec(),
        ttl_ms: None,
        if_absent: false,
    };
    h.apply_held(&[], &[put]);
    assert_eq!(h.holder(id), Some(s), "the next entry, which holds nothing, gives the slot back");
}

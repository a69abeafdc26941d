//! The audit trail in the grid: a wrapped control operation is applied and recorded with who
//! asked and the outcome, a refused one is recorded with its error and changes nothing else,
//! notes are recorded, only control operations can be wrapped, and callers cannot write to
//! the fabric's streams.

use super::audit::{AUDIT_STREAM, Actor, AuditNote, Record};
use super::cursor::{CursorConfig, NewCursor};
use super::execution::Payload;
use super::stream::{Append, NewItem, NewStream, StreamConfig};
use super::test_harness::{Harness, new_exec};
use super::{Command, Error, Limits, Output};

fn actor() -> Actor {
    Actor { principal: "token t1 (ops)".into(), role: "operator".into(), node: 2 }
}

fn audited(command: Command) -> Command {
    Command::Audited { actor: actor(), command: Box::new(command) }
}

fn records(h: &Harness) -> Vec<Record> {
    let Some(stream) = h.grid.stream(AUDIT_STREAM) else { return Vec::new() };
    stream
        .items
        .values()
        .map(|i| serde_json::from_slice(&i.payload.data).expect("a record is JSON"))
        .collect()
}

#[test]
fn a_control_operation_is_applied_and_recorded_with_who_and_the_outcome() {
    let mut h = Harness::new();
    let id = h.create(new_exec("a", "slow"));
    h.at(5_000);
    assert_eq!(
        h.ok(audited(Command::Cancel { execution: id, reason: "by hand".into() })),
        Output::Cancelled { count: 1 }
    );
    assert!(h.exec(id).status.is_final(), "the cancel took effect");
    let r = records(&h);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].operation, "execution.cancel");
    assert_eq!(r[0].target, format!("execution {id}"));
    assert_eq!(r[0].principal, "token t1 (ops)");
    assert_eq!(r[0].role, "operator");
    assert_eq!(r[0].node, 2);
    assert_eq!(r[0].at_ms, 5_000);
    assert_eq!(r[0].outcome, "ok");
    let item = h.grid.stream(AUDIT_STREAM).unwrap().items.values().next().unwrap();
    assert_eq!(item.key.as_deref(), Some("execution.cancel"), "keyed by operation, for key filters");
}

#[test]
fn a_refused_control_operation_is_recorded_with_its_error_and_changes_nothing_else() {
    let mut h = Harness::new();
    let before = h.grid.instance("a", "i1").is_some();
    let e = h.apply(audited(Command::StopInstance { agent: "a".into(), instance: "i1".into() })).unwrap_err();
    assert!(matches!(e, Error::UnknownInstance { .. }), "{e:?}");
    assert_eq!(h.grid.instance("a", "i1").is_some(), before);
    let r = records(&h);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].operation, "instance.stop");
    assert_eq!(r[0].outcome, e.to_string());
}

#[test]
fn notes_are_recorded_and_only_control_operations_can_be_wrapped() {
    let mut h = Harness::new();
    let note = AuditNote {
        actor: Actor::fabric(1),
        operation: "membership.add_learner".into(),
        target: "node 4 at 127.0.0.1:7404".into(),
        outcome: "ok".into(),
    };
    assert_eq!(h.ok(Command::AuditNote(Box::new(note))), Output::Noted);
    let put = Command::Put {
        namespace: "n".into(),
        key: "k".into(),
        value: b"v".to_vec(),
        ttl_ms: None,
        if_absent: false,
    };
    let e = h.apply(audited(put)).unwrap_err();
    assert!(e.to_string().contains("only a control operation"), "{e}");
    assert!(h.grid.get("n", "k").is_none(), "the wrapped put was not applied");
    let r = records(&h);
    assert_eq!(r.len(), 1, "a refused wrapper records nothing: {r:?}");
    assert_eq!((r[0].principal.as_str(), r[0].operation.as_str()), ("fabric", "membership.add_learner"));
}

#[test]
fn callers_cannot_write_to_the_fabrics_streams() {
    let limits = Limits::default();
    let item = NewItem { key: None, payload: Payload::json("1"), headers: vec![] };
    let append = Command::Append(Box::new(Append {
        stream: AUDIT_STREAM.into(),
        items: vec![item],
        expected_last_seq: None,
        producer: None,
        msg_id: None,
    }));
    let create = Command::CreateStream(Box::new(NewStream {
        name: "weft.mine".into(),
        config: StreamConfig::default(),
    }));
    for command in [
        append,
        create,
        Command::DeleteStream { stream: AUDIT_STREAM.into() },
        Command::CloseStream { stream: AUDIT_STREAM.into(), error: None },
        audited(Command::DeleteStream { stream: AUDIT_STREAM.into() }),
    ] {
        let e = command.validate(&limits).unwrap_err().to_string();
        assert!(e.contains("belong to the fabric"), "{command:?}: {e}");
    }
    assert!(Command::DeleteStream { stream: "weftish".into() }.validate(&limits).is_ok());
    let note = AuditNote {
        actor: Actor::fabric(1),
        operation: "membership.add_learner".into(),
        target: "node 9".into(),
        outcome: "ok".into(),
    };
    assert!(Command::AuditNote(Box::new(note.clone())).validate(&limits).is_ok(), "a node's own note");
    let forged =
        AuditNote { actor: Actor { principal: "token x (admin)".into(), ..note.actor.clone() }, ..note };
    let e = Command::AuditNote(Box::new(forged)).validate(&limits).unwrap_err().to_string();
    assert!(e.contains("written by the fabric itself"), "a note that claims a caller is a forgery: {e}");
}

#[test]
fn a_cursor_cannot_dead_letter_into_the_fabrics_streams() {
    let config = CursorConfig {
        max_deliveries: Some(1),
        dead_letter: Some(AUDIT_STREAM.into()),
        ..CursorConfig::default()
    };
    let new = NewCursor { stream: "s".into(), name: "c".into(), config };
    let e = Command::CreateCursor(Box::new(new)).validate_shape().unwrap_err().to_string();
    assert!(e.contains("belong to the fabric"), "{e}");
}

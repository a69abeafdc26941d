//! The audit trail: control operations recorded, with who asked, what, when and the outcome,
//! in the system stream [`AUDIT_STREAM`].
//!
//! A control operation reaches the log wrapped in [`Command::Audited`](super::Command): apply
//! runs the operation and then appends one item to the audit stream in the same entry, so the
//! record and the change commit together, and a refused operation is recorded with its error
//! (nothing else changes). What does not go through a grid command (a Raft membership change,
//! a configuration reload) is recorded by [`Command::AuditNote`](super::Command) after it
//! happened.
//!
//! Stream names starting with [`RESERVED_PREFIX`] belong to the fabric: callers cannot create,
//! append to, close or delete them ([`check_not_reserved`], at proposal); they can read them
//! and follow them with cursors.

use serde::{Deserialize, Serialize};

use super::events::Outbox;
use super::execution::Payload;
use super::namespace;
use super::stream::{Append, Discard, Kind, NewItem, NewStream, StreamConfig};
use super::{Command, Error, Grid, Output};

/// The system stream that holds the audit trail.
pub const AUDIT_STREAM: &str = "weft.audit";
/// Stream names that start with this belong to the fabric.
pub const RESERVED_PREFIX: &str = "weft.";
/// The audit stream keeps at most this many records (the oldest go first)...
pub const AUDIT_MAX_ITEMS: u64 = 100_000;
/// ... and none older than this (90 days) ...
pub const AUDIT_MAX_AGE_MS: u64 = 90 * 24 * 3600 * 1000;
/// ... and at most this many bytes of them (64 MiB).
pub const AUDIT_MAX_BYTES: u64 = 64 << 20;
/// Longest text of one field of a record (principal, target, outcome), in bytes.
const MAX_FIELD_BYTES: usize = 512;

/// Who asked for an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// Who: `token <id> (<name>)` when tokens are on, `anonymous` when they are off,
    /// `fabric` for what the nodes do by themselves. Never a secret.
    pub principal: String,
    /// The role the principal acted in (empty when tokens are off).
    pub role: String,
    /// The node that took the request (or acted).
    pub node: u64,
}

impl Actor {
    /// The fabric itself, acting on node `node` (membership changes, reloads).
    pub fn fabric(node: u64) -> Self {
        Self { principal: "fabric".into(), role: String::new(), node }
    }
}

/// A record of something done outside the grid's commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditNote {
    pub actor: Actor,
    /// What was done, dotted: `membership.add_learner`, `config.reload`, ...
    pub operation: String,
    /// What it was done to: `node 3 at 10.0.0.3:7400`, ...
    pub target: String,
    /// `ok`, or what went wrong.
    pub outcome: String,
}

/// One record as the audit stream holds it (JSON, keyed by its operation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When it was applied (the log entry's time), in ms since the Unix epoch.
    pub at_ms: u64,
    pub principal: String,
    pub role: String,
    pub node: u64,
    pub operation: String,
    pub target: String,
    /// `ok`, or the error that refused it.
    pub outcome: String,
}

/// Whether `command` is a control operation that may be audited (what `Audited` may wrap).
pub fn is_control(command: &Command) -> bool {
    matches!(
        command,
        Command::Cancel { .. }
            | Command::StartInstance(_)
            | Command::StopInstance { .. }
            | Command::CloseStream { .. }
            | Command::DeleteStream { .. }
            | Command::DeleteCursor { .. }
            | Command::CreateToken(_)
            | Command::RevokeToken { .. }
            | Command::CreateSchedule(_)
            | Command::PauseSchedule { .. }
            | Command::ResumeSchedule { .. }
            | Command::TriggerSchedule { .. }
            | Command::DeleteSchedule { .. }
    )
}

/// The operation and target of a control command, as the record names them.
fn describe(command: &Command) -> (&'static str, String) {
    match command {
        Command::Cancel { execution, .. } => ("execution.cancel", format!("execution {execution}")),
        Command::StartInstance(new) => (
            "instance.start",
            format!("instance {}/{}", new.agent, new.instance.as_deref().unwrap_or("(new id)")),
        ),
        Command::StopInstance { agent, instance } => {
            ("instance.stop", format!("instance {agent}/{instance}"))
        }
        Command::CloseStream { stream, .. } => ("stream.close", format!("stream {stream}")),
        Command::DeleteStream { stream } => ("stream.delete", format!("stream {stream}")),
        Command::DeleteCursor { stream, cursor } => ("cursor.delete", format!("cursor {stream}/{cursor}")),
        // Never the secret's hash: who the token is for and what it may do.
        Command::CreateToken(new) => {
            ("token.create", format!("token {} ({}), role {}", new.id, new.name, new.role))
        }
        Command::RevokeToken { id } => ("token.revoke", format!("token {id}")),
        Command::CreateSchedule(new) => (
            "schedule.create",
            format!("schedule {} ({}, calls {}/{})", new.name, new.cron, new.call.agent, new.call.delegate),
        ),
        Command::PauseSchedule { name, .. } => ("schedule.pause", format!("schedule {name}")),
        Command::ResumeSchedule { name, .. } => ("schedule.resume", format!("schedule {name}")),
        Command::TriggerSchedule { name, .. } => ("schedule.trigger", format!("schedule {name}")),
        Command::DeleteSchedule { name, .. } => ("schedule.delete", format!("schedule {name}")),
        _ => ("other", String::new()),
    }
}

/// Refuses a caller's write to a stream the fabric owns.
pub fn check_not_reserved(stream: &str) -> Result<(), Error> {
    if stream.starts_with(RESERVED_PREFIX) {
        return Err(Error::InvalidName {
            what: "stream".into(),
            name: namespace::clip(stream),
            reason: format!(
                "names starting with '{RESERVED_PREFIX}' belong to the fabric: they can be read, not written"
            ),
        });
    }
    Ok(())
}

impl Grid {
    /// Applies `Audited`: the control command, then its record with the outcome.
    pub(super) fn audited(
        &mut self,
        actor: &Actor,
        command: &Command,
        out: &mut Outbox,
    ) -> Result<Output, Error> {
        let result = self.apply_command(command, out);
        let (operation, mut target) = describe(command);
        if let (Command::StartInstance(_), Ok(Output::Instance { agent, instance, .. })) = (command, &result)
        {
            target = format!("instance {agent}/{instance}");
        }
        let outcome = match &result {
            Ok(Output::Cancelled { count: 0 }) => "ok: nothing to cancel".to_owned(),
            Ok(Output::Deleted { existed: false }) => "ok: there was none".to_owned(),
            Ok(Output::Token { created: false, .. }) => "ok: it existed already".to_owned(),
            Ok(Output::TokenRevoked { existed: false }) => "ok: it was revoked already".to_owned(),
            Ok(Output::Schedule { created: false, .. }) if matches!(command, Command::CreateSchedule(_)) => {
                "ok: it existed already".to_owned()
            }
            Ok(Output::ScheduleRun { run }) => match &run.outcome {
                super::schedule::RunOutcome::Started { execution } => format!("ok: execution {execution}"),
                other => format!("ok: no run: {other:?}"),
            },
            Ok(_) => "ok".to_owned(),
            Err(e) => e.to_string(),
        };
        self.record(actor, operation, &target, &outcome, out);
        result
    }

    /// Applies `AuditNote`.
    pub(super) fn audit_note(&mut self, note: &AuditNote, out: &mut Outbox) -> Output {
        self.record(&note.actor, &note.operation, &note.target, &note.outcome, out);
        Output::Noted
    }

    /// Appends one record to the audit stream, creating the stream the first time.
    fn record(&mut self, actor: &Actor, operation: &str, target: &str, outcome: &str, out: &mut Outbox) {
        if !self.streams.streams.contains_key(AUDIT_STREAM) {
            let config = StreamConfig {
                kind: Kind::Persistent,
                max_items: Some(AUDIT_MAX_ITEMS),
                max_age_ms: Some(AUDIT_MAX_AGE_MS),
                max_bytes: Some(AUDIT_MAX_BYTES),
                discard: Discard::Old,
                ..StreamConfig::default()
            };
            if self.create_stream(&NewStream { name: AUDIT_STREAM.into(), config }, out).is_err() {
                return;
            }
        }
        let clip = |s: &str| namespace::clip_to(s, MAX_FIELD_BYTES);
        let record = Record {
            at_ms: self.now_ms,
            principal: clip(&actor.principal),
            role: clip(&actor.role),
            node: actor.node,
            operation: clip(operation),
            target: clip(target),
            outcome: clip(outcome),
        };
        let Ok(json) = serde_json::to_vec(&record) else { return };
        let item = NewItem {
            key: Some(record.operation.clone()),
            payload: Payload::json(json),
            headers: Vec::new(),
        };
        let append = Append {
            stream: AUDIT_STREAM.into(),
            items: vec![item],
            expected_last_seq: None,
            producer: None,
            msg_id: None,
        };
        // Discard-old and no producer: nothing refuses this append but a closed stream, which
        // no caller can close.
        let _ = self.append(&append, out);
    }
}

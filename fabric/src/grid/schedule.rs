//! Schedules: cron expressions kept in the grid that create executions at their due times.
//!
//! ```text
//!   CreateSchedule ──► due index (next_due_ms, name) ──Tick at the due time──► a run:
//!        │                                             an execution created in that entry
//!        ├─ PauseSchedule / ResumeSchedule (resuming skips what was due while paused)
//!        ├─ TriggerSchedule: a run now, outside the cron times
//!        └─ DeleteSchedule
//! ```
//!
//! A due time fires in the `Tick` entry that reaches it, and its entry moves the schedule to
//! its next due time: every replica applies the same log, so each due time fires once,
//! whichever leader proposed the tick and however often leaders change. Each run's execution
//! carries the idempotency key `schedule:<name>:<due_ms>` as well.
//!
//! Due times are computed inside `apply` from the expression, the time zone and the grid's
//! clock with croner and chrono-tz, whose answers depend only on their inputs (and the time
//! zone database compiled into this build: every node of a cluster runs the same build).
//!
//! Policies:
//! - **Overlap**, when a due time comes while the previous run's execution is unfinished:
//!   `Skip` it, `QueueOne` (start it as soon as the previous run finishes; one at most), or
//!   `Allow` it to run alongside.
//! - **Catch-up**, when the grid's clock reaches a due time more than [`MISSED_AFTER_MS`]
//!   late (the cluster was down or had no leader): `Skip` what was missed, or run `Once` for
//!   all of it. Either way the schedule goes on from the next due time after the clock.
//!
//! This file holds the types, bounds and due-time arithmetic; how `apply` changes schedules is
//! in `schedules.rs`.

use std::collections::VecDeque;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::execution::{ExecutionId, NewExecution, START_DELEGATE, STOP_DELEGATE};
use super::{Error, namespace};

/// Most schedules in a cluster.
pub const MAX_SCHEDULES: usize = 10_000;
/// Longest cron expression, in bytes.
pub const MAX_CRON_BYTES: usize = 256;
/// Runs (and skipped due times) each schedule remembers, newest last.
pub const MAX_RUNS_KEPT: usize = 20;
/// A due time the grid's clock passes by more than this is missed, and its schedule's
/// catch-up policy decides what to do; one reached sooner runs as usual.
pub const MISSED_AFTER_MS: u64 = 60_000;
/// The prefix of the idempotency key of each run's execution: `schedule:<name>:<due_ms>`
/// (`schedule:<name>:trigger:<id>` for a trigger). Reserved: a caller's create with a key
/// that starts with it is refused, so nobody can take a run's key before it comes.
pub const RUN_KEY_PREFIX: &str = "schedule:";

/// What to do with a due time while the previous run's execution is unfinished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Overlap {
    /// Skip the due time (recorded as skipped).
    Skip,
    /// Start it once the previous run finishes; a further due time meanwhile is skipped.
    QueueOne,
    /// Start it alongside.
    Allow,
}

/// What to do with due times missed while the cluster could not fire them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatchUp {
    /// Skip them (recorded as one skipped run) and go on from the next due time.
    Skip,
    /// Run once for all of them, then go on from the next due time.
    Once,
}

impl Overlap {
    /// Its name in the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::QueueOne => "queue_one",
            Overlap::Allow => "allow",
        }
    }

    /// Parses a name from the API or the CLI (`queue` for `queue_one` too).
    pub fn parse(name: &str) -> Result<Self, Error> {
        match name {
            "skip" | "" => Ok(Overlap::Skip),
            "queue_one" | "queue" => Ok(Overlap::QueueOne),
            "allow" => Ok(Overlap::Allow),
            other => Err(invalid(format!(
                "overlap '{}' is not a policy; expected skip, queue_one or allow",
                namespace::clip(other)
            ))),
        }
    }
}

impl CatchUp {
    /// Its name in the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::Skip => "skip",
            CatchUp::Once => "once",
        }
    }

    /// Parses a name from the API or the CLI.
    pub fn parse(name: &str) -> Result<Self, Error> {
        match name {
            "skip" | "" => Ok(CatchUp::Skip),
            "once" => Ok(CatchUp::Once),
            other => Err(invalid(format!(
                "catch_up '{}' is not a policy; expected skip or once",
                namespace::clip(other)
            ))),
        }
    }
}

/// A schedule as its creator describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewSchedule {
    /// Its name: 1-128 characters of `[A-Za-z0-9._-]`.
    pub name: String,
    /// The cron expression: five fields (minute to day of week) or six (seconds first).
    pub cron: String,
    /// An IANA time zone (`Europe/Berlin`) the expression is read in; none: UTC.
    pub time_zone: Option<String>,
    /// The execution each run creates (no idempotency key, absolute times or parent: the
    /// schedule sets the key, and times are relative to each run).
    pub call: NewExecution,
    /// What to do with a due time while the previous run is unfinished.
    pub overlap: Overlap,
    /// What to do with due times missed while the cluster was down.
    pub catch_up: CatchUp,
    /// Created paused: no run until it is resumed (or triggered).
    pub paused: bool,
}

/// Why a run happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cause {
    /// Its due time came.
    Due,
    /// For due times missed while the cluster could not fire them (catch-up `Once`).
    CatchUp,
    /// Someone triggered it.
    Trigger,
    /// It waited for the previous run to finish (overlap `QueueOne`).
    Queued,
}

impl Cause {
    /// Its name in the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Due => "due",
            Cause::CatchUp => "catch_up",
            Cause::Trigger => "trigger",
            Cause::Queued => "queued",
        }
    }
}

/// What became of a due time (or a trigger).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunOutcome {
    /// Its execution was created.
    Started { execution: ExecutionId },
    /// No execution: the reason (overlap, missed, paused).
    Skipped { reason: String },
    /// Waiting for the previous run to finish (overlap `QueueOne`).
    Queued,
    /// Creating its execution was refused: why.
    Refused { error: String },
}

/// One run of a schedule, or one due time it skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// The due time (a trigger's: the time it was triggered).
    pub due_ms: u64,
    /// When the grid fired it (the entry's time).
    pub fired_ms: u64,
    /// Why it ran.
    pub cause: Cause,
    /// What became of it.
    pub outcome: RunOutcome,
}

/// A schedule, as the grid keeps it (and as `Get` reports it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// As created.
    pub spec: NewSchedule,
    /// When it was created (leader-stamped ms).
    pub created_ms: u64,
    /// Paused: no run until resumed.
    pub paused: bool,
    /// Its next due time, unless paused or never due again.
    pub next_due_ms: Option<u64>,
    /// The execution of its latest run, for the overlap policy.
    pub running: Option<ExecutionId>,
    /// A due time waiting for `running` to finish (overlap `QueueOne`), and why it ran.
    pub queued: Option<(u64, Cause)>,
    /// Runs started, in all.
    pub started: u64,
    /// Due times skipped or refused, in all.
    pub skipped: u64,
    /// The latest runs and skipped due times, oldest first (at most [`MAX_RUNS_KEPT`]).
    pub runs: VecDeque<Run>,
}

impl Schedule {
    /// Remembers `run`, forgetting the oldest past [`MAX_RUNS_KEPT`].
    pub(super) fn record(&mut self, run: Run) {
        match run.outcome {
            RunOutcome::Started { .. } => self.started += 1,
            RunOutcome::Skipped { .. } | RunOutcome::Refused { .. } => self.skipped += 1,
            RunOutcome::Queued => {}
        }
        self.runs.push_back(run);
        while self.runs.len() > MAX_RUNS_KEPT {
            self.runs.pop_front();
        }
    }
}

/// The idempotency key of the run of schedule `name` due at `due_ms`.
pub fn run_key(name: &str, due_ms: u64) -> String {
    format!("{RUN_KEY_PREFIX}{name}:{due_ms}")
}

/// The idempotency key of a triggered run of schedule `name` whose execution gets id `id`.
pub fn trigger_key(name: &str, id: ExecutionId) -> String {
    format!("{RUN_KEY_PREFIX}{name}:trigger:{id}")
}

impl NewSchedule {
    /// Checks what does not depend on the grid's state or configuration: the name, the
    /// expression and time zone (they parse), and a call a schedule may make.
    pub fn validate_shape(&self) -> Result<(), Error> {
        super::validate_name("schedule", &self.name)?;
        parse_cron(&self.cron)?;
        parse_zone(self.time_zone.as_deref())?;
        let call = &self.call;
        call.validate_shape()?;
        if call.delegate == START_DELEGATE || call.delegate == STOP_DELEGATE {
            return Err(invalid(format!("call.delegate: a schedule cannot call '{}'", call.delegate)));
        }
        const ABSOLUTE: &str = "absolute time (give timeout_ms or delay_ms, relative to each run)";
        let taken = [
            (
                call.idempotency_key.is_some(),
                "call.idempotency_key",
                "idempotency key (each run's is schedule:<name>:<due_ms>)",
            ),
            (call.deadline_ms.is_some(), "call.deadline_ms", ABSOLUTE),
            (call.not_before_ms.is_some(), "call.not_before_ms", ABSOLUTE),
            (call.parent.is_some(), "call.parent", "parent"),
        ];
        match taken.into_iter().find(|(set, _, _)| *set) {
            Some((_, field, what)) => Err(invalid(format!("{field}: a schedule's call takes no {what}"))),
            None => Ok(()),
        }
    }

    /// A schedule `name` that calls `nightly`'s `run` every day at 02:00 UTC, skipping
    /// overlaps and missed runs.
    pub fn example(name: &str) -> Self {
        Self {
            name: name.into(),
            cron: "0 2 * * *".into(),
            time_zone: None,
            call: NewExecution::example("nightly", "run"),
            overlap: Overlap::Skip,
            catch_up: CatchUp::Skip,
            paused: false,
        }
    }

    /// The first due time after `after_ms` (exclusive), if it is ever due again.
    pub fn next_due_after(&self, after_ms: u64) -> Result<Option<u64>, Error> {
        next_due_after(&self.cron, self.time_zone.as_deref(), after_ms)
    }
}

/// The first due time of `cron` read in `time_zone` (none: UTC) after `after_ms` (exclusive),
/// in ms since the epoch; `None` if it is never due again (before the year 5000).
pub fn next_due_after(cron: &str, time_zone: Option<&str>, after_ms: u64) -> Result<Option<u64>, Error> {
    let cron = parse_cron(cron)?;
    let after =
        i64::try_from(after_ms).map_err(|_| invalid(format!("time {after_ms} ms is out of range")))?;
    let Some(after) = Utc.timestamp_millis_opt(after).single() else {
        return Err(invalid(format!("time {after_ms} ms is out of range")));
    };
    let next = match parse_zone(time_zone)? {
        Some(zone) => {
            cron.find_next_occurrence(&after.with_timezone(&zone), false).map(|t| t.timestamp_millis())
        }
        None => cron.find_next_occurrence(&after, false).map(|t: DateTime<Utc>| t.timestamp_millis()),
    };
    Ok(next.ok().and_then(|ms| u64::try_from(ms).ok()).filter(|&ms| ms > after_ms))
}

/// The next `count` due times after `after_ms`, for people (the API's `next_due_ms`).
pub fn upcoming(cron: &str, time_zone: Option<&str>, after_ms: u64, count: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(count);
    let mut at = after_ms;
    while out.len() < count
        && let Ok(Some(next)) = next_due_after(cron, time_zone, at)
    {
        out.push(next);
        at = next;
    }
    out
}

fn parse_cron(cron: &str) -> Result<croner::Cron, Error> {
    if cron.trim().is_empty() || cron.len() > MAX_CRON_BYTES {
        return Err(invalid(format!(
            "cron: the expression is {} bytes; expected 1 to {MAX_CRON_BYTES}",
            cron.len()
        )));
    }
    // Five fields, or six with seconds first; no year field.
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(cron)
        .map_err(|e| invalid(format!("cron: '{}' is not a cron expression: {e}", namespace::clip(cron))))
}

fn parse_zone(zone: Option<&str>) -> Result<Option<chrono_tz::Tz>, Error> {
    match zone {
        None => Ok(None),
        Some(name) => chrono_tz::Tz::from_str(name).map(Some).map_err(|_| {
            invalid(format!(
                "time_zone: '{}' is not an IANA time zone (such as UTC or Europe/Berlin)",
                namespace::clip(name)
            ))
        }),
    }
}

fn invalid(reason: String) -> Error {
    Error::InvalidSchedule { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000;
    /// 2026-01-05T00:00:00Z, a Monday.
    const MONDAY: u64 = 1_767_571_200_000;

    #[test]
    fn due_times_follow_the_expression_in_its_time_zone() {
        assert_eq!(next_due_after("* * * * *", None, MONDAY).unwrap(), Some(MONDAY + MINUTE));
        assert_eq!(next_due_after("* * * * *", None, MONDAY + 1).unwrap(), Some(MONDAY + MINUTE));
        assert_eq!(next_due_after("*/15 * * * * *", None, MONDAY + 500).unwrap(), Some(MONDAY + 15_000));
        assert_eq!(next_due_after("0 9 * * MON-FRI", None, MONDAY).unwrap(), Some(MONDAY + 9 * 60 * MINUTE));
        // 09:00 in Berlin is 08:00 UTC in January.
        let berlin = next_due_after("0 9 * * *", Some("Europe/Berlin"), MONDAY).unwrap();
        assert_eq!(berlin, Some(MONDAY + 8 * 60 * MINUTE));
        assert_eq!(upcoming("0 * * * *", None, MONDAY, 3), [1, 2, 3].map(|h| MONDAY + h * 60 * MINUTE));
        // February 30th never comes.
        assert_eq!(next_due_after("0 0 30 2 *", None, MONDAY).unwrap(), None);
    }

    #[test]
    fn bad_expressions_and_zones_are_refused_naming_the_field() {
        for (cron, zone, field) in [
            ("* * *", None, "cron"),
            ("0 0 0 1 1 * 2030", None, "cron"),
            ("61 * * * *", None, "cron"),
            ("", None, "cron"),
            ("* * * * *", Some("Mars/Olympus"), "time_zone"),
        ] {
            let e = next_due_after(cron, zone, MONDAY).unwrap_err();
            assert!(matches!(&e, Error::InvalidSchedule { reason } if reason.starts_with(field)), "{e}");
        }
        assert!(parse_cron(&"*".repeat(MAX_CRON_BYTES + 1)).is_err());
    }
}

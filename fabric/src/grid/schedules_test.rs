//! Tests of schedules: each due time fires once in the tick that reaches it; overlap and
//! catch-up policies; pause, resume, trigger, delete; bad input changes nothing; then property
//! tests: runs follow a model clock, and a restored snapshot plus the rest of the log equals
//! the whole log.

use proptest::prelude::*;

use super::execution::{ExecutionId, Payload, Status};
use super::schedule::*;
use super::test_harness::*;
use super::*;

/// 2026-01-05T00:00:00Z, a Monday.
const MONDAY: u64 = 1_767_571_200_000;
const MINUTE: u64 = 60_000;

fn every_minute(name: &str, overlap: Overlap, catch_up: CatchUp) -> NewSchedule {
    NewSchedule { cron: "* * * * *".into(), overlap, catch_up, ..NewSchedule::example(name) }
}

fn create(h: &mut Harness, new: NewSchedule) -> Schedule {
    match h.ok(Command::CreateSchedule(Box::new(new))) {
        Output::Schedule { schedule, created: true } => *schedule,
        other => panic!("create gave {other:?}"),
    }
}

fn tick(h: &mut Harness, at: u64) {
    h.at(at).ok(Command::Tick { limit: 1_000 });
}

fn schedule(h: &Harness, name: &str) -> Schedule {
    h.grid.schedule(name).expect("the schedule exists").clone()
}

fn started(run: &Run) -> ExecutionId {
    match run.outcome {
        RunOutcome::Started { execution } => execution,
        ref other => panic!("expected a started run, got {other:?}"),
    }
}

fn complete(h: &mut Harness, id: ExecutionId) {
    let token = h.token(id);
    h.ok(complete_cmd(id, token, Ok(Payload::json("1")), vec![]));
}

#[test]
fn each_due_time_fires_once_in_the_tick_that_reaches_it() {
    let mut h = Harness::new();
    h.at(MONDAY + 1_000);
    let s = create(&mut h, every_minute("m", Overlap::Allow, CatchUp::Skip));
    assert_eq!((s.next_due_ms, s.created_ms), (Some(MONDAY + MINUTE), MONDAY + 1_000));
    assert_eq!(h.grid.next_timer_ms(), Some(MONDAY + MINUTE), "the due time is a timer");

    tick(&mut h, MONDAY + MINUTE - 1);
    assert!(schedule(&h, "m").runs.is_empty(), "not before its due time");
    tick(&mut h, MONDAY + MINUTE + 20);
    let s = schedule(&h, "m");
    assert_eq!(s.runs.len(), 1);
    let run = &s.runs[0];
    assert_eq!((run.due_ms, run.fired_ms, run.cause), (MONDAY + MINUTE, MONDAY + MINUTE + 20, Cause::Due));
    let e = h.exec(started(run)).clone();
    assert_eq!((e.agent.as_str(), e.delegate.as_str()), ("nightly", "run"));
    assert_eq!(e.idempotency_key.as_deref(), Some(run_key("m", MONDAY + MINUTE).as_str()));
    assert_eq!(s.next_due_ms, Some(MONDAY + 2 * MINUTE));

    // The same time again (another leader's tick): nothing more.
    tick(&mut h, MONDAY + MINUTE + 30);
    assert_eq!(schedule(&h, "m").runs.len(), 1);
    // Reached 59 s late: on time. Reached 65 s late: missed (catch-up skip), and the schedule
    // goes on after the clock.
    tick(&mut h, MONDAY + 2 * MINUTE + 59_000);
    tick(&mut h, MONDAY + 4 * MINUTE + 5_000);
    let s = schedule(&h, "m");
    let dues: Vec<(u64, bool)> =
        s.runs.iter().map(|r| (r.due_ms, matches!(r.outcome, RunOutcome::Started { .. }))).collect();
    assert_eq!(dues, [(MONDAY + MINUTE, true), (MONDAY + 2 * MINUTE, true), (MONDAY + 3 * MINUTE, false)]);
    assert_eq!((s.started, s.skipped), (2, 1));
    assert_eq!(s.next_due_ms, Some(MONDAY + 5 * MINUTE));
}

#[test]
fn overlap_skips_queues_one_or_allows_a_run_while_the_last_is_unfinished() {
    let mut h = Harness::new();
    h.at(MONDAY);
    h.open(&["nightly"], 10);
    create(&mut h, every_minute("skip", Overlap::Skip, CatchUp::Skip));
    create(&mut h, every_minute("queue", Overlap::QueueOne, CatchUp::Skip));
    create(&mut h, every_minute("allow", Overlap::Allow, CatchUp::Skip));
    tick(&mut h, MONDAY + MINUTE);
    tick(&mut h, MONDAY + 2 * MINUTE);
    tick(&mut h, MONDAY + 3 * MINUTE);

    let skip = schedule(&h, "skip");
    assert!(
        matches!(skip.runs[1].outcome, RunOutcome::Skipped { ref reason } if reason.contains("overlap skip"))
    );
    assert_eq!((skip.started, skip.skipped), (1, 2));

    let queue = schedule(&h, "queue");
    let first = started(&queue.runs[0]);
    assert_eq!(queue.runs[1].outcome, RunOutcome::Queued);
    assert!(
        matches!(queue.runs[2].outcome, RunOutcome::Skipped { ref reason } if reason.contains("waits for it already"))
    );
    assert_eq!(queue.queued, Some((MONDAY + 2 * MINUTE, Cause::Due)));
    // The first run finishes: the queued one starts in the same entry.
    complete(&mut h, first);
    let queue = schedule(&h, "queue");
    let last = queue.runs.back().unwrap();
    assert_eq!(
        (last.due_ms, last.cause, last.fired_ms),
        (MONDAY + 2 * MINUTE, Cause::Queued, MONDAY + 3 * MINUTE)
    );
    let second = started(last);
    assert_eq!(h.exec(second).status, Status::Assigned);
    assert_eq!(queue.queued, None);
    assert_eq!((queue.started, queue.skipped), (2, 1));

    let allow = schedule(&h, "allow");
    assert_eq!((allow.started, allow.skipped), (3, 0));
    assert!(allow.runs.iter().all(|r| matches!(r.outcome, RunOutcome::Started { .. })));

    // Once the skip schedule's run has finished, its next due time runs.
    complete(&mut h, started(&skip.runs[0]));
    tick(&mut h, MONDAY + 4 * MINUTE);
    assert!(matches!(schedule(&h, "skip").runs.back().unwrap().outcome, RunOutcome::Started { .. }));
}

#[test]
fn due_times_missed_while_the_cluster_was_down_are_skipped_or_run_once() {
    let mut h = Harness::new();
    h.at(MONDAY);
    create(&mut h, every_minute("skip", Overlap::Allow, CatchUp::Skip));
    create(&mut h, every_minute("once", Overlap::Allow, CatchUp::Once));
    // Down from just before the first due time for ten minutes and a half.
    let back = MONDAY + 10 * MINUTE + 30_000;
    tick(&mut h, back);

    let skip = schedule(&h, "skip");
    assert_eq!(skip.runs.len(), 1, "one record for what was missed");
    assert!(matches!(skip.runs[0].outcome, RunOutcome::Skipped { ref reason } if reason.contains("missed")));
    assert_eq!(skip.next_due_ms, Some(MONDAY + 11 * MINUTE), "goes on after the clock");

    let once = schedule(&h, "once");
    assert_eq!(once.runs.len(), 1, "one run for all it missed");
    assert_eq!((once.runs[0].due_ms, once.runs[0].cause), (MONDAY + MINUTE, Cause::CatchUp));
    started(&once.runs[0]);
    assert_eq!(once.next_due_ms, Some(MONDAY + 11 * MINUTE));

    // A tick less than a minute late is on time.
    tick(&mut h, MONDAY + 11 * MINUTE + MISSED_AFTER_MS);
    assert_eq!(schedule(&h, "skip").runs.back().unwrap().cause, Cause::Due);
    started(schedule(&h, "skip").runs.back().unwrap());
}

#[test]
fn pause_resume_trigger_and_delete() {
    let mut h = Harness::new();
    h.at(MONDAY);
    create(&mut h, every_minute("m", Overlap::Skip, CatchUp::Once));
    let paused = h.ok(Command::PauseSchedule { name: "m".into(), agent: "nightly".into() });
    assert!(
        matches!(paused, Output::Schedule { ref schedule, .. } if schedule.paused && schedule.next_due_ms.is_none())
    );
    assert_eq!(h.grid.next_timer_ms(), None);
    tick(&mut h, MONDAY + 5 * MINUTE);
    assert!(schedule(&h, "m").runs.is_empty(), "no run while paused");

    // Triggered while paused: a run now.
    let out = h
        .at(MONDAY + 5 * MINUTE + 10)
        .ok(Command::TriggerSchedule { name: "m".into(), agent: "nightly".into() });
    let Output::ScheduleRun { run } = out else { panic!("{out:?}") };
    assert_eq!((run.due_ms, run.cause), (MONDAY + 5 * MINUTE + 10, Cause::Trigger));
    let id = started(&run);
    assert_eq!(h.exec(id).idempotency_key, Some(trigger_key("m", id)));
    // Triggered again while that run is unfinished: the overlap policy skips it.
    let Output::ScheduleRun { run } =
        h.ok(Command::TriggerSchedule { name: "m".into(), agent: "nightly".into() })
    else {
        panic!()
    };
    assert!(matches!(run.outcome, RunOutcome::Skipped { .. }));

    // Resumed: what was due while paused is not run; it goes on from the clock.
    let resumed = h
        .at(MONDAY + 6 * MINUTE + 1)
        .ok(Command::ResumeSchedule { name: "m".into(), agent: "nightly".into() });
    assert!(
        matches!(resumed, Output::Schedule { ref schedule, .. } if !schedule.paused && schedule.next_due_ms == Some(MONDAY + 7 * MINUTE))
    );

    assert_eq!(
        h.ok(Command::DeleteSchedule { name: "m".into(), agent: "nightly".into() }),
        Output::Deleted { existed: true }
    );
    assert_eq!(h.grid.next_timer_ms().filter(|&t| t >= MONDAY + 7 * MINUTE), None);
    assert_eq!(
        h.ok(Command::DeleteSchedule { name: "m".into(), agent: "nightly".into() }),
        Output::Deleted { existed: false }
    );
    for command in [
        Command::PauseSchedule { name: "m".into(), agent: "nightly".into() },
        Command::ResumeSchedule { name: "m".into(), agent: "nightly".into() },
        Command::TriggerSchedule { name: "m".into(), agent: "nightly".into() },
    ] {
        assert_eq!(h.apply(command), Err(Error::UnknownSchedule { name: "m".into() }));
    }
    assert_eq!(h.exec(id).status, Status::Pending, "a deleted schedule's run goes on");
}

/// A trigger never takes a due time's run (or another trigger's): each gets its own execution,
/// also two triggers in one entry and a trigger at a due time's very instant.
#[test]
fn triggers_and_due_times_never_share_a_run() {
    let mut h = Harness::new();
    h.at(MONDAY);
    create(&mut h, every_minute("m", Overlap::Allow, CatchUp::Skip));
    let trigger = || Command::TriggerSchedule { name: "m".into(), agent: "nightly".into() };
    h.at(MONDAY + MINUTE);
    let answers = h.apply_held(&[], &[trigger(), trigger(), Command::Tick { limit: 10 }]);
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let s = schedule(&h, "m");
    let ids: std::collections::BTreeSet<ExecutionId> = s.runs.iter().map(started).collect();
    assert_eq!(ids.len(), 3, "two triggers and the due time, each its own execution: {:?}", s.runs);
    assert_eq!(s.started, 3);
}

/// The agent a control command carries must be the one the schedule calls: a schedule of that
/// name deleted and created again for another agent counts as none, and nothing changes.
#[test]
fn a_control_command_for_another_agent_changes_nothing() {
    let mut h = Harness::new();
    h.at(MONDAY);
    create(&mut h, every_minute("m", Overlap::QueueOne, CatchUp::Skip));
    let before = h.grid.clone();
    for command in [
        Command::PauseSchedule { name: "m".into(), agent: "other".into() },
        Command::ResumeSchedule { name: "m".into(), agent: "other".into() },
        Command::TriggerSchedule { name: "m".into(), agent: "other".into() },
    ] {
        assert_eq!(h.apply(command), Err(Error::UnknownSchedule { name: "m".into() }));
    }
    let delete = Command::DeleteSchedule { name: "m".into(), agent: "other".into() };
    assert_eq!(h.ok(delete), Output::Deleted { existed: false });
    assert_eq!(h.grid, before);

    // And a caller's own create may not take a run's key before it comes.
    let taken = execution::NewExecution {
        idempotency_key: Some(run_key("m", MONDAY + MINUTE)),
        ..execution::NewExecution::example("nightly", "run")
    };
    let refused = Command::CreateExecution(Box::new(taken)).validate(&Limits::default());
    assert!(
        matches!(&refused, Err(Error::InvalidExecution { reason }) if reason.contains("schedule:")),
        "{refused:?}"
    );
}

/// Pausing drops a run waiting for the previous one, and records it as skipped.
#[test]
fn pausing_drops_a_queued_run_and_says_so() {
    let mut h = Harness::new();
    h.at(MONDAY);
    create(&mut h, every_minute("q", Overlap::QueueOne, CatchUp::Skip));
    tick(&mut h, MONDAY + MINUTE);
    tick(&mut h, MONDAY + 2 * MINUTE);
    assert!(schedule(&h, "q").queued.is_some());
    h.ok(Command::PauseSchedule { name: "q".into(), agent: "nightly".into() });
    let s = schedule(&h, "q");
    assert_eq!(s.queued, None);
    let last = s.runs.back().unwrap();
    assert!(matches!(&last.outcome, RunOutcome::Skipped { reason } if reason.contains("paused")), "{last:?}");
    assert_eq!((s.started, s.skipped), (1, 1));
    // Its first run finishing starts nothing now.
    let first = started(&s.runs[0]);
    h.open(&["nightly"], 1);
    complete(&mut h, first);
    assert_eq!(schedule(&h, "q").started, 1);
    assert_eq!(schedule(&h, "q").running, None, "the finished run is let go");
}

#[test]
fn bad_schedules_are_refused_naming_the_field_and_change_nothing() {
    let mut h = Harness::new();
    h.at(MONDAY);
    let good = NewSchedule::example("nightly");
    create(&mut h, good.clone());
    let before = h.grid.clone();
    let call = |f: fn(&mut execution::NewExecution)| {
        let mut new = good.clone();
        new.name = "other".into();
        f(&mut new.call);
        new
    };
    let cases: Vec<(NewSchedule, &str)> = vec![
        (NewSchedule { cron: "every day".into(), ..good.clone() }, "cron"),
        (NewSchedule { cron: "0 25 * * *".into(), ..good.clone() }, "cron"),
        (NewSchedule { time_zone: Some("Europe/Nowhere".into()), ..good.clone() }, "time_zone"),
        (NewSchedule { name: "other".into(), cron: "0 0 30 2 *".into(), ..good.clone() }, "cron"),
        (call(|c| c.idempotency_key = Some("k".into())), "call.idempotency_key"),
        (call(|c| c.deadline_ms = Some(5)), "call.deadline_ms"),
        (call(|c| c.not_before_ms = Some(5)), "call.not_before_ms"),
        (call(|c| c.delegate = "Start".into()), "call.delegate"),
    ];
    for (new, field) in cases {
        let refused = h.apply(Command::CreateSchedule(Box::new(new.clone())));
        assert!(
            matches!(&refused, Err(Error::InvalidSchedule { reason }) if reason.starts_with(field)),
            "{new:?}: {refused:?}"
        );
        assert_eq!(h.grid, before, "a refused create changes nothing");
    }
    let bad_name = NewSchedule { name: "no spaces".into(), ..good.clone() };
    assert!(matches!(h.apply(Command::CreateSchedule(Box::new(bad_name))), Err(Error::InvalidName { .. })));
    assert!(matches!(
        h.apply(Command::CreateSchedule(Box::new(NewSchedule {
            call: execution::NewExecution::example("", "run"),
            ..good.clone()
        }))),
        Err(Error::InvalidName { .. })
    ));
    // The same schedule again is found; another of the same name is refused.
    let again = h.ok(Command::CreateSchedule(Box::new(good.clone())));
    assert!(matches!(again, Output::Schedule { created: false, .. }));
    let other = NewSchedule { cron: "0 3 * * *".into(), ..good.clone() };
    assert_eq!(
        h.apply(Command::CreateSchedule(Box::new(other))),
        Err(Error::ScheduleExists { name: "nightly".into() })
    );
    assert_eq!(h.grid, before);
}

#[test]
fn at_most_max_schedules_exist() {
    let mut grid = Grid::default();
    grid.advance_clock(MONDAY);
    for i in 0..MAX_SCHEDULES {
        let new = NewSchedule::example(&format!("s{i}"));
        grid.apply(&Command::CreateSchedule(Box::new(new))).unwrap();
    }
    let over = grid.apply(&Command::CreateSchedule(Box::new(NewSchedule::example("one-more"))));
    assert!(matches!(over, Err(Error::TooMany { ref what, .. }) if what == "schedules"), "{over:?}");
    assert_eq!(grid.schedule_count(), MAX_SCHEDULES);
}

/// A model of one schedule every 10 s with overlap `Allow`: the due times it should have
/// started or skipped by each tick, given pauses and resumes.
#[derive(Debug, Default)]
struct Model {
    next: Option<u64>,
    paused: bool,
    /// (due_ms, started) of every due time handled, in order.
    handled: Vec<(u64, bool)>,
}

const EVERY: u64 = 10_000;

fn next_after(t: u64) -> u64 {
    (t / EVERY + 1) * EVERY
}

impl Model {
    fn tick(&mut self, now: u64, catch_up: CatchUp) {
        while let Some(due) = self.next.filter(|&d| d <= now) {
            let missed = now - due > MISSED_AFTER_MS;
            let start = !missed || catch_up == CatchUp::Once;
            self.handled.push((due, start));
            self.next = Some(next_after(if missed { now } else { due }));
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// Move the clock forward this much and tick.
    Tick(u64),
    Pause,
    Resume,
}

fn arb_steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        6 => (1u64..30_000).prop_map(Step::Tick),
        1 => (60_000u64..400_000).prop_map(Step::Tick),
        1 => Just(Step::Pause),
        1 => Just(Step::Resume),
    ];
    prop::collection::vec(step, 1..60)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every due time is handled once, in order, never before it is due: started when reached
    /// on time (or missed with catch-up `Once`, once for all it missed), skipped when missed
    /// with catch-up `Skip`; nothing while paused.
    #[test]
    fn runs_follow_a_model_clock(steps in arb_steps(), once in any::<bool>()) {
        let catch_up = if once { CatchUp::Once } else { CatchUp::Skip };
        let mut h = Harness::new();
        let mut now = MONDAY + 1;
        h.at(now);
        let new = NewSchedule { cron: "*/10 * * * * *".into(), overlap: Overlap::Allow, catch_up, ..NewSchedule::example("s") };
        create(&mut h, new);
        let mut model = Model { next: Some(next_after(now)), ..Model::default() };
        for step in steps {
            match step {
                Step::Tick(by) => {
                    now += by;
                    tick(&mut h, now);
                    if !model.paused {
                        model.tick(now, catch_up);
                    }
                }
                Step::Pause => {
                    h.at(now).ok(Command::PauseSchedule { name: "s".into(), agent: "nightly".into() });
                    model.paused = true;
                    model.next = None;
                }
                Step::Resume => {
                    h.at(now).ok(Command::ResumeSchedule { name: "s".into(), agent: "nightly".into() });
                    if model.paused {
                        model.paused = false;
                        model.next = Some(next_after(now));
                    }
                }
            }
            let s = schedule(&h, "s");
            prop_assert_eq!(s.next_due_ms, model.next);
            let handled: Vec<(u64, bool)> = s.runs.iter().map(|r| (r.due_ms, matches!(r.outcome, RunOutcome::Started { .. }))).collect();
            let tail = &model.handled[model.handled.len().saturating_sub(MAX_RUNS_KEPT)..];
            prop_assert_eq!(&handled[..], tail);
            let started = model.handled.iter().filter(|(_, s)| *s).count() as u64;
            prop_assert_eq!((s.started, s.skipped), (started, model.handled.len() as u64 - started));
            for run in &s.runs {
                prop_assert!(run.fired_ms >= run.due_ms, "never before its due time");
            }
        }
        // One execution per due time started: their keys are distinct.
        let keys: std::collections::BTreeSet<String> = (1..=h.grid.work.last_execution_id)
            .filter_map(|id| h.grid.execution(id).and_then(|e| e.idempotency_key.clone()))
            .collect();
        let started = model.handled.iter().filter(|(_, s)| *s).count();
        prop_assert_eq!(keys.len(), started);
    }

    #[test]
    fn replay_equals_snapshot_plus_replay(steps in arb_steps(), cut in any::<prop::sample::Index>()) {
        let mut now = MONDAY;
        let mut log = vec![(now, vec![
            Command::CreateSchedule(Box::new(NewSchedule { cron: "*/10 * * * * *".into(), overlap: Overlap::QueueOne, ..NewSchedule::example("q") })),
            Command::CreateSchedule(Box::new(NewSchedule { cron: "*/15 * * * * *".into(), catch_up: CatchUp::Once, ..NewSchedule::example("o") })),
        ])];
        for step in steps {
            let command = match step {
                Step::Tick(by) => {
                    now += by;
                    Command::Tick { limit: 1_000 }
                }
                Step::Pause => Command::PauseSchedule { name: "q".into(), agent: "nightly".into() },
                Step::Resume => Command::ResumeSchedule { name: "q".into(), agent: "nightly".into() },
            };
            log.push((now, vec![command, Command::TriggerSchedule { name: "o".into(), agent: "nightly".into() }]));
        }
        let cut = cut.index(log.len() + 1);
        check_replay(&log, cut)?;
    }
}

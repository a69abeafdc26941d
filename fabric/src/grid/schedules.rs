//! How `apply` changes schedules: create, pause, resume, trigger, delete; the `Tick` that fires
//! due times; a queued run started when the run before it finishes. Types, bounds and due-time
//! arithmetic are in `schedule.rs`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::events::Outbox;
use super::execution::{ExecutionId, NewExecution};
use super::schedule::{
    CatchUp, Cause, MAX_SCHEDULES, MISSED_AFTER_MS, NewSchedule, Overlap, Run, RunOutcome, Schedule, run_key,
    trigger_key,
};
use super::{Error, Grid, Output};

/// Schedules by name, when each is due next, and whose run each unfinished run execution is.
/// Part of the grid's snapshot; changed only through its methods, which keep the three
/// agreeing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Schedules {
    by_name: BTreeMap<String, Schedule>,
    /// (next_due_ms, name) of every schedule with a next due time.
    due: BTreeSet<(u64, String)>,
    /// The execution of each schedule's latest run, while it may be unfinished.
    running: BTreeMap<ExecutionId, String>,
}

impl Schedules {
    pub(super) fn get(&self, name: &str) -> Option<&Schedule> {
        self.by_name.get(name)
    }

    pub(super) fn len(&self) -> usize {
        self.by_name.len()
    }

    pub(super) fn iter_after<'a>(&'a self, after: Option<&str>) -> impl Iterator<Item = &'a Schedule> + 'a {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_owned()));
        self.by_name.range((start, Bound::Unbounded)).map(|(_, s)| s)
    }

    pub(super) fn next_due_ms(&self) -> Option<u64> {
        self.due.first().map(|(at, _)| *at)
    }

    /// Sets `name`'s next due time (none: not due), in the schedule and the index.
    fn set_due(&mut self, name: &str, next: Option<u64>) {
        let Some(s) = self.by_name.get_mut(name) else { return };
        if let Some(old) = s.next_due_ms.take() {
            self.due.remove(&(old, name.to_owned()));
        }
        s.next_due_ms = next;
        if let Some(at) = next {
            self.due.insert((at, name.to_owned()));
        }
    }

    /// Sets the execution of `name`'s latest run.
    fn set_running(&mut self, name: &str, execution: ExecutionId) {
        let Some(s) = self.by_name.get_mut(name) else { return };
        if let Some(old) = s.running.replace(execution) {
            self.running.remove(&old);
        }
        self.running.insert(execution, name.to_owned());
    }

    fn remove(&mut self, name: &str) -> Option<Schedule> {
        self.set_due(name, None);
        let s = self.by_name.remove(name)?;
        if let Some(running) = s.running {
            self.running.remove(&running);
        }
        Some(s)
    }
}

impl Grid {
    /// Applies `CreateSchedule`: a new schedule, due first at its next due time after the
    /// grid's clock (unless created paused); the same one again finds it.
    pub(super) fn create_schedule(&mut self, new: &NewSchedule) -> Result<Output, Error> {
        if let Some(existing) = self.schedules.get(&new.name) {
            if existing.spec == *new {
                return Ok(Output::Schedule { schedule: Box::new(existing.clone()), created: false });
            }
            return Err(Error::ScheduleExists { name: new.name.clone() });
        }
        if self.schedules.len() >= MAX_SCHEDULES {
            return Err(Error::TooMany {
                what: "schedules".into(),
                count: self.schedules.len(),
                limit: MAX_SCHEDULES,
                setting: "a fixed bound".into(),
            });
        }
        let next = new.next_due_after(self.now_ms)?;
        if next.is_none() {
            return Err(Error::InvalidSchedule {
                reason: format!("cron: '{}' is never due after now", new.cron),
            });
        }
        let schedule = Schedule {
            spec: new.clone(),
            created_ms: self.now_ms,
            paused: new.paused,
            next_due_ms: None,
            running: None,
            queued: None,
            started: 0,
            skipped: 0,
            runs: Default::default(),
        };
        self.schedules.by_name.insert(new.name.clone(), schedule);
        if !new.paused {
            self.schedules.set_due(&new.name, next);
        }
        Ok(Output::Schedule { schedule: Box::new(self.schedules.by_name[&new.name].clone()), created: true })
    }

    /// Applies `PauseSchedule`: no run until resumed (a queued run is dropped, and recorded
    /// as skipped).
    pub(super) fn pause_schedule(&mut self, name: &str, agent: &str) -> Result<Output, Error> {
        let now = self.now_ms;
        let s = self.schedule_mut(name, agent)?;
        s.paused = true;
        if let Some((due, cause)) = s.queued.take() {
            let reason = "the schedule was paused while it waited".to_owned();
            s.record(Run { due_ms: due, fired_ms: now, cause, outcome: RunOutcome::Skipped { reason } });
        }
        self.schedules.set_due(name, None);
        Ok(self.schedule_output(name))
    }

    /// Applies `ResumeSchedule`: due again from its next due time after the grid's clock
    /// (what was due while paused is skipped).
    pub(super) fn resume_schedule(&mut self, name: &str, agent: &str) -> Result<Output, Error> {
        let now = self.now_ms;
        let s = self.schedule_mut(name, agent)?;
        if s.paused {
            let next = s.spec.next_due_after(now)?;
            s.paused = false;
            self.schedules.set_due(name, next);
        }
        Ok(self.schedule_output(name))
    }

    /// Applies `TriggerSchedule`: a run now, outside the cron times (overlap policy applies).
    pub(super) fn trigger_schedule(
        &mut self,
        name: &str,
        agent: &str,
        out: &mut Outbox,
    ) -> Result<Output, Error> {
        self.schedule_mut(name, agent)?;
        let run = self.start_run(name, self.now_ms, Cause::Trigger, out);
        Ok(Output::ScheduleRun { run })
    }

    /// Applies `DeleteSchedule`: no run from now on; runs started go on.
    pub(super) fn delete_schedule(&mut self, name: &str, agent: &str) -> Output {
        let existed = self.schedule_mut(name, agent).is_ok() && self.schedules.remove(name).is_some();
        Output::Deleted { existed }
    }

    /// Fires the due times the grid's clock has reached, at most `limit`; how many.
    pub(super) fn fire_schedules(&mut self, limit: u64, out: &mut Outbox) -> u64 {
        let now = self.now_ms;
        let mut fired = 0;
        while fired < limit
            && let Some((at, _)) = self.schedules.due.first()
            && *at <= now
        {
            let Some((due, name)) = self.schedules.due.pop_first() else { break };
            fired += 1;
            let Some(s) = self.schedules.by_name.get_mut(&name) else { continue };
            s.next_due_ms = None;
            let missed = now - due > MISSED_AFTER_MS;
            // After a miss the schedule goes on from the clock, skipping the rest it missed.
            let next = s.spec.next_due_after(if missed { now } else { due }).ok().flatten();
            match (missed, s.spec.catch_up) {
                (true, CatchUp::Skip) => s.record(Run {
                    due_ms: due,
                    fired_ms: now,
                    cause: Cause::Due,
                    outcome: RunOutcome::Skipped {
                        reason: format!(
                            "missed: reached {} ms late, the cluster could not fire it (catch-up skip)",
                            now - due
                        ),
                    },
                }),
                (true, CatchUp::Once) => {
                    self.start_run(&name, due, Cause::CatchUp, out);
                }
                (false, _) => {
                    self.start_run(&name, due, Cause::Due, out);
                }
            }
            self.schedules.set_due(&name, next);
        }
        fired
    }

    /// When the next schedule is due, if any.
    pub(super) fn next_schedule_due_ms(&self) -> Option<u64> {
        self.schedules.next_due_ms()
    }

    /// Execution `id` finished: if it was a schedule's latest run and a run waits for it
    /// (overlap `QueueOne`), that run starts now.
    pub(super) fn schedule_run_finished(&mut self, id: ExecutionId, out: &mut Outbox) {
        let Some(name) = self.schedules.running.remove(&id) else { return };
        let Some(s) = self.schedules.by_name.get_mut(&name) else { return };
        if s.running == Some(id) {
            s.running = None;
        }
        if let Some((due, cause)) = s.queued.take() {
            self.start_run(&name, due, if cause == Cause::Trigger { cause } else { Cause::Queued }, out);
        }
    }

    /// Starts a run of schedule `name` for `due` (its overlap policy permitting) and records
    /// it; the run.
    fn start_run(&mut self, name: &str, due: u64, cause: Cause, out: &mut Outbox) -> Run {
        let now = self.now_ms;
        let Some(s) = self.schedules.by_name.get(name) else {
            return Run {
                due_ms: due,
                fired_ms: now,
                cause,
                outcome: RunOutcome::Refused { error: "deleted".into() },
            };
        };
        let busy = s.running.filter(|id| self.work.executions.get(id).is_some_and(|e| !e.status.is_final()));
        let outcome = match (busy, s.spec.overlap) {
            (Some(id), Overlap::Skip) => RunOutcome::Skipped {
                reason: format!("execution {id} of the previous run is unfinished (overlap skip)"),
            },
            (Some(id), Overlap::QueueOne) if s.queued.is_some() => RunOutcome::Skipped {
                reason: format!(
                    "execution {id} of the previous run is unfinished and a run waits for it already (overlap queue_one)"
                ),
            },
            (Some(_), Overlap::QueueOne) => RunOutcome::Queued,
            (None, _) | (Some(_), Overlap::Allow) => {
                // A due time's key is its own; a trigger's names the id its execution will
                // get (ids only grow), so two triggers at one clock reading differ too.
                let key = match cause {
                    Cause::Trigger => trigger_key(name, self.work.last_execution_id + 1),
                    Cause::Due | Cause::CatchUp | Cause::Queued => run_key(name, due),
                };
                let new = NewExecution { idempotency_key: Some(key), ..s.spec.call.clone() };
                match self.create_execution(&new, false, out) {
                    Ok(Output::Execution { id, created: true }) => {
                        self.schedules.set_running(name, id);
                        RunOutcome::Started { execution: id }
                    }
                    Ok(Output::Execution { id, created: false }) => {
                        RunOutcome::Skipped { reason: format!("it ran already, as execution {id}") }
                    }
                    Ok(other) => RunOutcome::Refused { error: format!("unexpected answer {other:?}") },
                    Err(e) => RunOutcome::Refused { error: e.to_string() },
                }
            }
        };
        let run = Run { due_ms: due, fired_ms: now, cause, outcome };
        if let Some(s) = self.schedules.by_name.get_mut(name) {
            if run.outcome == RunOutcome::Queued {
                s.queued = Some((due, cause));
            }
            s.record(run.clone());
        }
        run
    }

    /// Schedule `name`, if it calls `agent` (the agent the caller was allowed for).
    fn schedule_mut(&mut self, name: &str, agent: &str) -> Result<&mut Schedule, Error> {
        self.schedules
            .by_name
            .get_mut(name)
            .filter(|s| s.spec.call.agent == agent)
            .ok_or_else(|| Error::UnknownSchedule { name: name.to_owned() })
    }

    fn schedule_output(&self, name: &str) -> Output {
        Output::Schedule { schedule: Box::new(self.schedules.by_name[name].clone()), created: false }
    }
}

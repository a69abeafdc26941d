//! Timers: what a `Tick` fires once the grid's clock reaches it. Delayed executions become
//! runnable, deadlines fail executions (and cancel their children), expired leases release
//! their execution and close the session that stopped renewing, and finished executions are
//! forgotten once their retention has run out; stream deliveries whose ack wait ran out are
//! delivered again, idle unnamed cursors removed, items past their stream's age dropped,
//! leases that ran out removed, and due schedules fired (`schedules.rs`). The leader proposes
//! a `Tick` at [`Grid::next_timer_ms`]; keys with a time to live are dropped by `Expire`
//! (`kv.rs`).

use super::events::{Event, Outbox};
use super::execution::{Failure, FailureKind, Status};
use super::{Grid, Output};

impl Grid {
    /// Applies `Tick`: fires what is due at the grid's clock, at most `limit` timers: delays,
    /// then deadlines, execution leases, retention, ack waits, idle cursors, items past their
    /// age, expired leases, waits that ran out and due schedules.
    pub(super) fn tick(&mut self, limit: u64, out: &mut Outbox) -> Output {
        let now = self.now_ms;
        let mut fired = 0;
        while fired < limit
            && let Some(&(at, id)) = self.work.delayed.first()
            && at <= now
        {
            self.work.delayed.remove(&(at, id));
            self.enqueue(id, out);
            fired += 1;
        }
        if fired > 0 {
            // Delayed became pending: the demand changed even if nothing was assigned.
            out.events.push(Event::WorkChanged);
        }
        while fired < limit
            && let Some(&(at, id)) = self.work.deadlines.first()
            && at <= now
        {
            fired += 1;
            self.work.deadlines.remove(&(at, id));
            let failure = Failure { kind: FailureKind::Deadline, message: "the deadline passed".into() };
            let children = self.children_of(id);
            self.finish(id, Status::Failed, Err(failure), None, out);
            for child in children {
                self.cancel_tree(child, "its parent's deadline passed", out);
            }
        }
        while fired < limit
            && let Some(&(at, id)) = self.work.leases.first()
            && at <= now
        {
            fired += 1;
            self.work.leases.remove(&(at, id));
            let holder = self.work.executions.get(&id).and_then(|e| e.lease).map(|l| l.session);
            self.release(id, None, Some("the lease expired before it was renewed"), out);
            // A session that stops renewing is hung or cut off: giving it the instance's next
            // call (single activation) would only wait out another lease. It ends here.
            if let Some(session) = holder {
                let why = format!("the lease of execution {id} expired: the agent stopped renewing");
                self.close_session(session, &why, out);
            }
        }
        while fired < limit
            && let Some(&(at, id)) = self.work.retained.first()
            && at <= now
        {
            fired += 1;
            self.work.retained.remove(&(at, id));
            self.forget(id);
        }
        if fired < limit {
            fired += self.fire_cursor_timers(limit - fired, out);
        }
        if fired < limit {
            fired += self.expire_items(limit - fired, out);
        }
        if fired < limit {
            fired += self.expire_leases(limit - fired);
        }
        if fired < limit {
            fired += self.expire_waits(limit - fired);
        }
        if fired < limit {
            fired += self.fire_schedules(limit - fired, out);
        }
        Output::Ticked { fired }
    }
}

#[cfg(test)]
mod tests {
    use crate::grid::execution::*;
    use crate::grid::session::NewSession;
    use crate::grid::test_harness::*;
    use crate::grid::{Command, Error, Output};

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
        assert_eq!(
            h.ok(Command::Renew { execution: id, token }),
            Output::Renewed { expires_ms: Some(2_900) }
        );
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
}

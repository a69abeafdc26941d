//! How `apply` changes sessions: open one (with the instances it claims), close it (what it
//! held goes back to pending, the instances activated on it move on) and drain it. The types
//! (`Session`, `NewSession`, `Host`, `AgentSpec`) are in `session.rs`.

use std::collections::BTreeSet;

use super::events::{Event, Outbox};
use super::execution::{ExecutionId, SessionId};
use super::session::{NewSession, Session};
use super::{Error, Grid, Output, remove_pair};

impl Grid {
    /// Applies `OpenSession` and `OpenSessionOnlyClaimed`: registers the session and
    /// activates the instances it claims (which must exist and be activated nowhere else).
    pub(super) fn open_session(
        &mut self,
        new: &NewSession,
        only_claimed: bool,
        out: &mut Outbox,
    ) -> Result<Output, Error> {
        new.validate_shape()?;
        for (agent, instance) in &new.claims {
            match self.work.instances.get(&(agent.clone(), instance.clone())) {
                None => {
                    return Err(Error::UnknownInstance { agent: agent.clone(), instance: instance.clone() });
                }
                Some(inst) if inst.session.is_some() => {
                    return Err(Error::InstanceClaimed {
                        agent: agent.clone(),
                        instance: instance.clone(),
                        session: inst.session.unwrap_or_default(),
                    });
                }
                Some(_) => {}
            }
        }
        self.work.last_session_id += 1;
        let id = self.work.last_session_id;
        let session = Session {
            id,
            host: new.host,
            agents: new.agents.clone(),
            capacity: new.capacity,
            lease_ms: new.lease_ms,
            name: new.name.clone(),
            opened_ms: self.now_ms,
            assigned: BTreeSet::new(),
            activated: BTreeSet::new(),
            draining: false,
            last_token: 0,
            only_claimed,
            claims: new.claims.iter().cloned().collect(),
        };
        for spec in &session.agents {
            self.work.serving.entry(spec.name.clone()).or_default().insert(id);
            out.dirty.insert(spec.name.clone());
        }
        self.work.sessions.insert(id, session);
        out.events.push(Event::WorkChanged);
        for claim in &new.claims {
            if let Some(inst) = self.work.instances.get_mut(claim) {
                inst.session = Some(id);
            }
            if let Some(s) = self.work.sessions.get_mut(&id) {
                s.activated.insert(claim.clone());
            }
            self.offer(claim, out);
        }
        Ok(Output::Session { id })
    }

    /// Applies `CloseSession` (also called when a lease expires): what the session held goes
    /// back to pending, and the instances activated on it move on.
    pub(super) fn close_session(&mut self, id: SessionId, reason: &str, out: &mut Outbox) -> Output {
        let Some(session) = self.work.sessions.get(&id) else {
            return Output::SessionClosed { existed: false };
        };
        let held: Vec<ExecutionId> = session.assigned.iter().copied().collect();
        let activated: Vec<(String, String)> = session.activated.iter().cloned().collect();
        let host = session.host;
        for execution in held {
            self.release(execution, None, None, out);
        }
        let Some(session) = self.work.sessions.remove(&id) else {
            return Output::SessionClosed { existed: false };
        };
        for spec in &session.agents {
            remove_pair(&mut self.work.serving, &spec.name, &id);
            out.dirty.insert(spec.name.clone());
        }
        for key in activated {
            if let Some(inst) = self.work.instances.get_mut(&key)
                && inst.session == Some(id)
            {
                inst.session = None;
            }
            self.offer(&key, out);
        }
        out.events.push(Event::SessionClosed { host, session: id, reason: reason.to_owned() });
        Output::SessionClosed { existed: true }
    }

    /// Applies `DrainSession`: the session gets no new work.
    pub(super) fn drain_session(&mut self, id: SessionId, out: &mut Outbox) -> Result<Output, Error> {
        let session = self.work.sessions.get_mut(&id).ok_or(Error::UnknownSession { id })?;
        if !session.draining {
            session.draining = true;
            out.events.push(Event::WorkChanged);
        }
        Ok(Output::Drained)
    }
}

#[cfg(test)]
mod tests {
    use crate::grid::execution::Status;
    use crate::grid::test_harness::*;
    use crate::grid::{Command, Error, Output};

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
        assert!(matches!(
            h.apply(Command::DrainSession { session: 99 }),
            Err(Error::UnknownSession { id: 99 })
        ));
    }
}

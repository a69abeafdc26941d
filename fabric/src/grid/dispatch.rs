//! Dispatch: where pending executions wait, and how they are assigned to sessions (with a
//! lease and a fencing token) and released from them.
//!
//! Dispatch is part of `apply`: every command that makes work runnable (a new execution, a
//! freed slot, a new session, a timer) assigns what it can at once, in the same log entry.
//! Every replica computes the same assignments, so a new leader knows every lease and no
//! separate "assign" entry is needed per execution.
//!
//! ```text
//!   ready[(agent, delegate)]  ─► (-priority, id) in order ─► the session serving the pair
//!     ▲ stateless executions       with the most free slots (ties: least recently used);
//!     ▲ the head of each runnable  an instance's head goes to the session it is activated
//!       instance's queue           on, or activates it on the best one
//! ```
//!
//! Where a pending execution waits: in `delayed` until its `not_before_ms`; then in
//! `ready[(agent, delegate)]` (no instance) or in its instance's queue, whose head alone is
//! offered in `ready` while the instance may run it.
//!
//! A session opened *only claimed* is never given an execution of an agent it claims
//! instances of unless the execution belongs to one of those instances
//! ([`Session::may_run`](super::session::Session::may_run)); an instance head no session may
//! take waits in `ready` while the queue's other heads are assigned past it.

use std::ops::Bound;

use super::events::{Event, Held, Outbox};
use super::execution::{ExecutionId, Failure, FailureKind, Lease, SessionId, Status};
use super::instance::Lifecycle;
use super::session::Session;
use super::{Grid, remove_pair};

/// Most ready executions one dispatch pass over a queue skips (instance heads whose session
/// is full) before it stops; the next event on that queue looks again.
const MAX_DISPATCH_SKIPS: usize = 4096;
/// Most placement steps the dispatch of one command takes; what is left waits for the next
/// command that touches its agent. Far above what a command needs in practice.
const MAX_DISPATCH_STEPS: usize = 100_000;

impl Grid {
    /// Runs dispatch for every agent the command touched. Called at the end of each command.
    pub(super) fn dispatch(&mut self, out: &mut Outbox) {
        self.fail_unserved(out);
        while let Some(agent) = out.dirty.pop_first() {
            if !self.work.serving.contains_key(&agent) {
                continue;
            }
            let queues: Vec<(String, String)> = self
                .work
                .ready
                .range((agent.clone(), String::new())..)
                .take_while(|((a, _), _)| *a == agent)
                .map(|(k, _)| k.clone())
                .collect();
            for queue in queues {
                self.dispatch_queue(&queue, out);
            }
            self.fail_unserved(out);
        }
    }

    /// Fails instance queue heads that the session holding their instance does not serve:
    /// with single activation nobody else may run them, and they would block the instance's
    /// queue for good. Failing one offers the next head, which may be unserved too.
    fn fail_unserved(&mut self, out: &mut Outbox) {
        while let Some(id) = out.unserved.pop() {
            let Some(e) = self.work.executions.get(&id) else { continue };
            let Some(key) = e.instance_key().filter(|_| e.status == Status::Pending) else { continue };
            let Some((s, session)) = self
                .work
                .instances
                .get(&key)
                .and_then(|i| i.session)
                .and_then(|s| self.work.sessions.get(&s).map(|session| (s, session)))
            else {
                continue;
            };
            let elsewhere = self.work.serving.get(&key.0).is_some_and(|ids| {
                ids.iter()
                    .filter(|id| **id != s)
                    .filter_map(|id| self.work.sessions.get(id))
                    .any(|other| !other.draining && other.may_run(&key.0, Some(&key.1), &e.delegate))
            });
            if session.serves(&key.0, &e.delegate) || elsewhere {
                continue;
            }
            let failure = Failure {
                kind: FailureKind::Undeliverable,
                message: format!(
                    "instance {}/{} is served by session {s}, which does not serve delegate '{}' (nor does \
                     any other session)",
                    key.0, key.1, e.delegate
                ),
            };
            self.finish(id, Status::Failed, Err(failure), None, out);
        }
    }

    /// Puts a pending execution where it waits: delayed, its instance's queue, or ready.
    pub(super) fn enqueue(&mut self, id: ExecutionId, out: &mut Outbox) {
        let Some(e) = self.work.executions.get(&id) else { return };
        if let Some(at) = e.not_before_ms
            && at > self.now_ms
        {
            self.work.delayed.insert((at, id));
            return;
        }
        let order = e.queue_key();
        match e.instance_key() {
            Some(key) => {
                if let Some(inst) = self.work.instances.get_mut(&key) {
                    inst.queue.insert(order);
                }
                self.offer(&key, out);
            }
            None => {
                let queue = (e.agent.clone(), e.delegate.clone());
                out.dirty.insert(queue.0.clone());
                self.work.ready.entry(queue).or_default().insert(order);
            }
        }
    }

    /// Takes a pending execution out of wherever it waits.
    pub(super) fn dequeue(&mut self, id: ExecutionId, out: &mut Outbox) {
        let Some(e) = self.work.executions.get(&id) else { return };
        if let Some(at) = e.not_before_ms {
            self.work.delayed.remove(&(at, id));
        }
        let order = e.queue_key();
        match e.instance_key() {
            Some(key) => {
                if let Some(inst) = self.work.instances.get_mut(&key) {
                    inst.queue.remove(&order);
                }
                self.offer(&key, out);
            }
            None => remove_pair(&mut self.work.ready, &(e.agent.clone(), e.delegate.clone()), &order),
        }
    }

    /// Offers an instance's queue head in `ready` if the instance may run it now (and
    /// withdraws a head it may not run).
    pub(super) fn offer(&mut self, key: &(String, String), out: &mut Outbox) {
        let Some(inst) = self.work.instances.get_mut(key) else { return };
        if let Some((delegate, order)) = inst.offered.take() {
            remove_pair(&mut self.work.ready, &(key.0.clone(), delegate), &order);
        }
        let concurrent = inst
            .session
            .and_then(|s| self.work.sessions.get(&s))
            .and_then(|s| s.spec(&key.0))
            .is_some_and(|spec| spec.concurrent_instances);
        let Some(&head) = inst.queue.first() else { return };
        let runnable = match inst.lifecycle {
            Lifecycle::Starting => inst.running == 0 && head.1 == inst.start_execution,
            Lifecycle::Running => inst.running == 0 || concurrent,
            // Calls given back or redelivered after the stop began run first: Stop sorts last.
            Lifecycle::Stopping => inst.running == 0,
        };
        if !runnable {
            return;
        }
        let Some(e) = self.work.executions.get(&head.1) else { return };
        let delegate = e.delegate.clone();
        if let Some(holder) = inst.session
            && self.work.sessions.get(&holder).is_some_and(|s| !s.serves(&key.0, &delegate))
        {
            let elsewhere = self.work.serving.get(&key.0).is_some_and(|ids| {
                ids.iter()
                    .filter(|id| **id != holder)
                    .filter_map(|id| self.work.sessions.get(id))
                    .any(|s| !s.draining && s.may_run(&key.0, Some(&key.1), &delegate))
            });
            if !elsewhere {
                // Nobody may run it while the holder keeps the instance (single activation),
                // and it would block the instance's queue for good: fail it.
                out.unserved.push(head.1);
                return;
            }
            if inst.running > 0 {
                return;
            }
            // Another session serves it (a newer version of the agent, say): the instance
            // moves, with nothing running, to whoever takes its head.
            inst.session = None;
            if let Some(s) = self.work.sessions.get_mut(&holder) {
                s.activated.remove(key);
            }
        }
        inst.offered = Some((delegate.clone(), head));
        self.work.ready.entry((key.0.clone(), delegate)).or_default().insert(head);
        out.dirty.insert(key.0.clone());
    }

    /// The session that may run `(agent, delegate)` on `instance` (`None`: no instance) with
    /// the most free slots (ties: the least recently used). Slots the leader's eager calls
    /// hold (`held`, the entry's stamp) are not free.
    fn best_session(
        &self,
        agent: &str,
        instance: Option<&str>,
        delegate: &str,
        held: &Held,
    ) -> Option<SessionId> {
        self.work
            .serving
            .get(agent)?
            .iter()
            .filter_map(|id| self.work.sessions.get(id))
            .filter(|s| free(s, held) > 0 && s.may_run(agent, instance, delegate))
            .max_by(|a, b| free(a, held).cmp(&free(b, held)).then(b.last_token.cmp(&a.last_token)))
            .map(|s| s.id)
    }

    /// Whether some session serving `(agent, delegate)` has a free slot, whatever it claims.
    fn any_free_session(&self, agent: &str, delegate: &str, held: &Held) -> bool {
        self.work.serving.get(agent).is_some_and(|ids| {
            ids.iter()
                .filter_map(|id| self.work.sessions.get(id))
                .any(|s| free(s, held) > 0 && s.serves(agent, delegate))
        })
    }

    /// Assigns the executions of one `(agent, delegate)` queue, in order, while a session can
    /// take them.
    fn dispatch_queue(&mut self, queue: &(String, String), out: &mut Outbox) {
        let (agent, delegate) = queue;
        let mut cursor: Option<(i64, ExecutionId)> = None;
        let mut skips = 0;
        loop {
            out.steps += 1;
            if out.steps > MAX_DISPATCH_STEPS {
                return;
            }
            let Some(items) = self.work.ready.get(queue) else { return };
            let next = match cursor {
                None => items.first(),
                Some(c) => items.range((Bound::Excluded(c), Bound::Unbounded)).next(),
            };
            let Some(&order) = next else { return };
            let Some(e) = self.work.executions.get(&order.1) else { return };
            let activated =
                e.instance_key().and_then(|k| self.work.instances.get(&k)).and_then(|i| i.session);
            let target = match activated {
                Some(s) => self
                    .work
                    .sessions
                    .get(&s)
                    .filter(|s| free(s, out.held) > 0 && s.serves(agent, delegate))
                    .map(|s| s.id),
                None => match self.best_session(agent, e.instance.as_deref(), delegate, out.held) {
                    Some(s) => Some(s),
                    // Only sessions that claim other instances have room: a later head (of
                    // one of their instances) may be theirs.
                    None if self.any_free_session(agent, delegate, out.held) => None,
                    // No session of this queue has a free slot: nothing more to do here.
                    None => return,
                },
            };
            match target {
                Some(session) => self.assign(order.1, session, out),
                None => {
                    cursor = Some(order);
                    skips += 1;
                    if skips >= MAX_DISPATCH_SKIPS {
                        return;
                    }
                }
            }
        }
    }

    /// Gives an execution to a session under a new lease and fencing token (or fails it once it
    /// has been delivered `max_deliveries` times).
    fn assign(&mut self, id: ExecutionId, session: SessionId, out: &mut Outbox) {
        let Some(e) = self.work.executions.get(&id) else { return };
        if e.attempts >= e.max_deliveries {
            let failure = Failure {
                kind: FailureKind::Undeliverable,
                message: format!("delivered {} times without completing (max_deliveries)", e.attempts),
            };
            self.finish(id, Status::Failed, Err(failure), None, out);
            return;
        }
        let order = e.queue_key();
        let instance = e.instance_key();
        match &instance {
            Some(key) => {
                if let Some(inst) = self.work.instances.get_mut(key) {
                    inst.queue.remove(&order);
                    if let Some((delegate, o)) = inst.offered.take_if(|(_, o)| *o == order) {
                        remove_pair(&mut self.work.ready, &(key.0.clone(), delegate), &o);
                    }
                    inst.running += 1;
                    if inst.session.is_none() {
                        inst.session = Some(session);
                        if let Some(s) = self.work.sessions.get_mut(&session) {
                            s.activated.insert(key.clone());
                        }
                    }
                }
            }
            None => remove_pair(&mut self.work.ready, &(e.agent.clone(), e.delegate.clone()), &order),
        }
        self.work.last_token += 1;
        self.grant(id, session, self.work.last_token, false, out);
        if let Some(key) = instance {
            self.offer(&key, out);
        }
    }

    /// Leases a pending execution (taken from where it waited) to `session` under `token`
    /// (`pushed`: the leader has pushed it there already).
    pub(super) fn grant(
        &mut self,
        id: ExecutionId,
        session: SessionId,
        token: u64,
        pushed: bool,
        out: &mut Outbox,
    ) {
        let Some(s) = self.work.sessions.get_mut(&session) else { return };
        s.assigned.insert(id);
        s.last_token = token;
        let expires_ms = (s.lease_ms > 0).then(|| self.now_ms.saturating_add(s.lease_ms));
        let host = s.host;
        if let Some(at) = expires_ms {
            self.work.leases.insert((at, id));
        }
        if let Some(e) = self.work.executions.get_mut(&id) {
            e.status = Status::Assigned;
            e.attempts += 1;
            e.lease = Some(Lease { session, token, expires_ms });
        }
        out.events.push(Event::Assigned { host, session, execution: id, token, pushed });
        out.events.push(Event::Changed { execution: id });
    }

    /// Takes an execution from its session, back to pending (at `not_before` if given).
    /// `revoke`: tell the session's handler to stop, with this reason.
    pub(super) fn release(
        &mut self,
        id: ExecutionId,
        not_before: Option<u64>,
        revoke: Option<&str>,
        out: &mut Outbox,
    ) {
        let Some(e) = self.work.executions.get_mut(&id) else { return };
        if e.status != Status::Assigned {
            return;
        }
        let lease = e.lease.take();
        e.status = Status::Pending;
        if not_before.is_some() {
            e.not_before_ms = not_before;
        }
        let instance = e.instance_key();
        if let Some(lease) = lease {
            self.drop_lease(id, &lease, revoke, out);
        }
        if let Some(key) = &instance
            && let Some(inst) = self.work.instances.get_mut(key)
        {
            inst.running = inst.running.saturating_sub(1);
        }
        self.enqueue(id, out);
        if let Some(key) = &instance {
            self.offer(key, out);
        }
        out.events.push(Event::Changed { execution: id });
    }

    pub(super) fn drop_lease(
        &mut self,
        id: ExecutionId,
        lease: &Lease,
        revoke: Option<&str>,
        out: &mut Outbox,
    ) {
        if let Some(at) = lease.expires_ms {
            self.work.leases.remove(&(at, id));
        }
        if let Some(s) = self.work.sessions.get_mut(&lease.session) {
            s.assigned.remove(&id);
            for spec in &s.agents {
                out.dirty.insert(spec.name.clone());
            }
            if let Some(reason) = revoke {
                out.events.push(Event::Revoked {
                    host: s.host,
                    session: s.id,
                    execution: id,
                    token: lease.token,
                    reason: reason.to_owned(),
                });
            }
        }
    }
}

/// A session's free slots, less those the leader's eager calls hold on it (`held`).
pub(super) fn free(s: &Session, held: &Held) -> u32 {
    s.free().saturating_sub(held.get(&s.id).copied().unwrap_or(0))
}

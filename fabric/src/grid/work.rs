//! The grid's work: executions, sessions and instances, and dispatch between them.
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

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::execution::{
    Completion, Effect, Execution, ExecutionId, Failure, FailureKind, Lease, NewExecution, Payload,
    START_DELEGATE, STOP_DELEGATE, SessionId, Status,
};
use super::instance::{Instance, Lifecycle, NewInstance};
use super::namespace;
use super::session::{Host, NewSession, Session};
use super::{Error, Grid, Output};

/// Most ready executions one dispatch pass over a queue skips (instance heads whose session
/// is full) before it stops; the next event on that queue looks again.
pub const MAX_DISPATCH_SKIPS: usize = 4096;
/// Most placement steps the dispatch of one command takes; what is left waits for the next
/// command that touches its agent. Far above what a command needs in practice.
pub const MAX_DISPATCH_STEPS: usize = 100_000;
/// Most executions a listing scans past its filter before it ends the page early.
pub const MAX_LIST_SCAN: usize = 10_000;

/// Executions, sessions and instances. Part of the grid's snapshot; every index is kept in
/// step by the functions below.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Work {
    pub(super) last_execution_id: ExecutionId,
    pub(super) last_session_id: SessionId,
    pub(super) last_token: u64,
    pub(super) executions: BTreeMap<ExecutionId, Execution>,
    /// Runnable executions per (agent, delegate), in dispatch order.
    pub(super) ready: BTreeMap<(String, String), BTreeSet<(i64, ExecutionId)>>,
    /// Pending executions waiting for their `not_before_ms`.
    pub(super) delayed: BTreeSet<(u64, ExecutionId)>,
    /// Unfinished executions with a deadline.
    pub(super) deadlines: BTreeSet<(u64, ExecutionId)>,
    /// Assignments whose lease runs out unless renewed.
    pub(super) leases: BTreeSet<(u64, ExecutionId)>,
    /// Finished executions and when they are forgotten.
    pub(super) retained: BTreeSet<(u64, ExecutionId)>,
    /// (parent id or 0, idempotency key) to the execution created with it.
    pub(super) idempotency: BTreeMap<(ExecutionId, String), ExecutionId>,
    /// (parent, child) pairs.
    pub(super) children: BTreeSet<(ExecutionId, ExecutionId)>,
    pub(super) sessions: BTreeMap<SessionId, Session>,
    /// Sessions serving each agent.
    pub(super) serving: BTreeMap<String, BTreeSet<SessionId>>,
    pub(super) instances: BTreeMap<(String, String), Instance>,
}

/// Something nodes act on after an entry is applied: push an assignment down a session's
/// stream, tell a handler to stop, wake a caller waiting for a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `execution` was assigned to `session`, whose stream lives at `host`, under `token`.
    /// By the time a node acts on it a later entry may have moved the execution on: push it
    /// only while the lease is still `(session, token)`.
    Assigned { host: Host, session: SessionId, execution: ExecutionId, token: u64 },
    /// `session` no longer holds `execution` (cancelled, deadline, lease expired): its
    /// handler should stop; a completion with `token` will be refused.
    Revoked { host: Host, session: SessionId, execution: ExecutionId, token: u64, reason: String },
    /// `execution` changed status.
    Changed { execution: ExecutionId },
    /// `session` ended.
    SessionClosed { host: Host, session: SessionId, reason: String },
}

/// What one command leaves for the end of its apply: events, and agents to dispatch for.
pub(super) struct Outbox<'a> {
    pub events: &'a mut Vec<Event>,
    dirty: BTreeSet<String>,
    steps: usize,
    /// Instance queue heads their instance's session does not serve (see [`Grid::offer`]).
    unserved: Vec<ExecutionId>,
}

impl<'a> Outbox<'a> {
    pub fn new(events: &'a mut Vec<Event>) -> Self {
        Self { events, dirty: BTreeSet::new(), steps: 0, unserved: Vec::new() }
    }
}

/// How a completion was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Completed {
    /// The result (or final error) and the effects were applied.
    Accepted,
    /// This completion (same token) was applied before; nothing changed now.
    Repeated,
    /// An effect's expected version did not match; nothing was applied and the execution is
    /// pending again (it will run again with fresh state).
    Conflict { namespace: String, key: String, expected: u64, current: u64 },
    /// The handler's error will be retried at `not_before_ms` (its retry policy).
    Retrying { not_before_ms: u64 },
}

/// A page of executions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionPage {
    /// In id order.
    pub executions: Vec<Execution>,
    /// The last id scanned, when more may follow.
    pub next: Option<ExecutionId>,
}

/// Counts for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Executions stored (finished ones kept for retention included).
    pub executions: usize,
    /// Of which pending.
    pub pending: usize,
    /// Of which assigned.
    pub assigned: usize,
    /// Live sessions.
    pub sessions: usize,
    /// Instances.
    pub instances: usize,
}

fn instance_namespace(agent: &str, instance: &str) -> String {
    format!("instance/{agent}/{instance}")
}

fn remove_pair<K: Ord, V: Ord>(map: &mut BTreeMap<K, BTreeSet<V>>, key: &K, value: &V) {
    if let Some(set) = map.get_mut(key) {
        set.remove(value);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

impl Grid {
    // ---- reads ---------------------------------------------------------------------------

    /// One execution.
    pub fn execution(&self, id: ExecutionId) -> Option<&Execution> {
        self.work.executions.get(&id)
    }

    /// Executions after `after` (by id), filtered by agent and status, up to `limit`.
    pub fn list_executions(
        &self,
        agent: Option<&str>,
        status: Option<Status>,
        after: Option<ExecutionId>,
        limit: usize,
    ) -> ExecutionPage {
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut executions = Vec::new();
        let mut next = None;
        let mut last = None;
        for (scanned, (id, e)) in self.work.executions.range((lower, Bound::Unbounded)).enumerate() {
            if executions.len() == limit || scanned == MAX_LIST_SCAN {
                next = last;
                break;
            }
            last = Some(*id);
            if agent.is_some_and(|a| a != e.agent) || status.is_some_and(|s| s != e.status) {
                continue;
            }
            executions.push(e.clone());
        }
        ExecutionPage { executions, next }
    }

    /// The execution created with `key` (top level, or under `parent`).
    pub fn execution_by_key(&self, parent: Option<ExecutionId>, key: &str) -> Option<&Execution> {
        let id = self.work.idempotency.get(&(parent.unwrap_or(0), key.to_owned()))?;
        self.work.executions.get(id)
    }

    /// The children of an execution.
    pub fn children_of(&self, id: ExecutionId) -> Vec<ExecutionId> {
        self.work.children.range((id, 0)..=(id, u64::MAX)).map(|(_, c)| *c).collect()
    }

    /// One instance.
    pub fn instance(&self, agent: &str, id: &str) -> Option<&Instance> {
        self.work.instances.get(&(agent.to_owned(), id.to_owned()))
    }

    /// Instances after `after`, of `agent` if given, up to `limit`.
    pub fn list_instances(
        &self,
        agent: Option<&str>,
        after: Option<&(String, String)>,
        limit: usize,
    ) -> (Vec<Instance>, Option<(String, String)>) {
        let lower = match after {
            Some(a) => Bound::Excluded(a.clone()),
            None => match agent {
                Some(a) => Bound::Included((a.to_owned(), String::new())),
                None => Bound::Unbounded,
            },
        };
        let mut out = Vec::new();
        for (key, inst) in self.work.instances.range((lower, Bound::Unbounded)) {
            if agent.is_some_and(|a| a != key.0) {
                break;
            }
            if out.len() == limit {
                let last = out.last().map(|i: &Instance| (i.agent.clone(), i.id.clone()));
                return (out, last);
            }
            out.push(inst.clone());
        }
        (out, None)
    }

    /// One session.
    pub fn session(&self, id: SessionId) -> Option<&Session> {
        self.work.sessions.get(&id)
    }

    /// Every live session.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.work.sessions.values()
    }

    /// Pending executions per agent (for scaling and `/metrics`).
    pub fn pending_by_agent(&self) -> BTreeMap<String, usize> {
        let mut out: BTreeMap<String, usize> = BTreeMap::new();
        for e in self.work.executions.values().filter(|e| e.status == Status::Pending) {
            *out.entry(e.agent.clone()).or_default() += 1;
        }
        out
    }

    /// Counts for `/metrics`.
    pub fn work_totals(&self) -> Totals {
        let w = &self.work;
        let assigned = w.sessions.values().map(|s| s.assigned.len()).sum();
        let finished = w.retained.len();
        Totals {
            executions: w.executions.len(),
            pending: w.executions.len().saturating_sub(assigned + finished),
            assigned,
            sessions: w.sessions.len(),
            instances: w.instances.len(),
        }
    }

    /// The earliest time a timer is due (a delayed execution, a deadline, a lease, a
    /// retention), if any: the leader proposes [`super::Command::Tick`] then.
    pub fn next_timer_ms(&self) -> Option<u64> {
        let w = &self.work;
        [w.delayed.first(), w.deadlines.first(), w.leases.first(), w.retained.first()]
            .into_iter()
            .flatten()
            .map(|(at, _)| *at)
            .min()
    }

    // ---- commands --------------------------------------------------------------------------

    pub(super) fn create_execution(&mut self, new: &NewExecution, out: &mut Outbox) -> Result<Output, Error> {
        new.validate_shape()?;
        if new.delegate == START_DELEGATE || new.delegate == STOP_DELEGATE {
            return Err(Error::InvalidExecution {
                reason: format!("'{}' runs only when an instance starts or stops", new.delegate),
            });
        }
        let parent = self.check_parent(new)?;
        if let Some(id) = self.check_idempotency(new, parent)? {
            return Ok(Output::Execution { id, created: false });
        }
        if let Some(deadline) = new.deadline_ms
            && deadline <= self.now_ms
        {
            return Err(Error::InvalidExecution {
                reason: format!(
                    "the deadline {deadline} ms has passed (the fabric's clock is at {} ms)",
                    self.now_ms
                ),
            });
        }
        self.check_instance_open(new)?;
        let id = self.insert_execution(new, parent, false, out);
        Ok(Output::Execution { id, created: true })
    }

    pub(super) fn open_session(&mut self, new: &NewSession, out: &mut Outbox) -> Result<Output, Error> {
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
        };
        for spec in &session.agents {
            self.work.serving.entry(spec.name.clone()).or_default().insert(id);
            out.dirty.insert(spec.name.clone());
        }
        self.work.sessions.insert(id, session);
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

    pub(super) fn drain_session(&mut self, id: SessionId) -> Result<Output, Error> {
        let session = self.work.sessions.get_mut(&id).ok_or(Error::UnknownSession { id })?;
        session.draining = true;
        Ok(Output::Drained)
    }

    pub(super) fn complete(&mut self, c: &Completion, out: &mut Outbox) -> Result<Output, Error> {
        let e = self.work.executions.get(&c.execution).ok_or(Error::UnknownExecution { id: c.execution })?;
        if e.status.is_final() {
            if e.completed_token == Some(c.token) {
                return Ok(Output::Completion(Completed::Repeated));
            }
            return Err(Error::ExecutionFinished { id: c.execution, status: e.status.as_str().into() });
        }
        self.check_lease(c.execution, c.token)?;
        if c.outcome.is_err() && !c.effects.is_empty() {
            return Err(Error::InvalidCompletion {
                reason: "effects go only with a successful result".into(),
            });
        }
        if let Some((namespace, key, expected, current)) = self.check_effects(c)? {
            self.release(c.execution, None, None, out);
            return Ok(Output::Completion(Completed::Conflict { namespace, key, expected, current }));
        }
        for effect in &c.effects {
            match effect {
                Effect::Put { namespace, key, value, ttl_ms, .. } => {
                    self.write(namespace, key, value.clone(), *ttl_ms);
                }
                Effect::Delete { namespace, key, .. } => {
                    if self.live(namespace, key).is_some() {
                        self.revision += 1;
                    }
                    self.remove(namespace, key);
                }
                Effect::Call(new) => {
                    // Checked above: either a fresh key, or one naming this same call.
                    if matches!(self.check_idempotency(new, Some(c.execution)), Ok(None)) {
                        self.insert_execution(new, Some(c.execution), false, out);
                    }
                }
            }
        }
        let e = &self.work.executions[&c.execution];
        match &c.outcome {
            Ok(payload) => {
                self.finish(c.execution, Status::Completed, Ok(payload.clone()), Some(c.token), out);
                Ok(Output::Completion(Completed::Accepted))
            }
            Err(handler) => {
                if let Some(policy) = e.retry
                    && handler.retryable
                    && e.attempts < policy.max_attempts
                {
                    let at = self.now_ms.saturating_add(policy.backoff_ms(e.attempts));
                    self.release(c.execution, Some(at), None, out);
                    return Ok(Output::Completion(Completed::Retrying { not_before_ms: at }));
                }
                let failure = Failure { kind: FailureKind::Handler, message: handler.message.clone() };
                self.finish(c.execution, Status::Failed, Err(failure), Some(c.token), out);
                Ok(Output::Completion(Completed::Accepted))
            }
        }
    }

    pub(super) fn renew(&mut self, id: ExecutionId, token: u64) -> Result<Output, Error> {
        self.check_lease(id, token)?;
        let now = self.now_ms;
        let e = self.work.executions.get_mut(&id).ok_or(Error::UnknownExecution { id })?;
        let Some(lease) = e.lease.as_mut() else { return Err(Error::UnknownExecution { id }) };
        let lease_ms = self.work.sessions.get(&lease.session).map_or(0, |s| s.lease_ms);
        if let Some(old) = lease.expires_ms {
            self.work.leases.remove(&(old, id));
        }
        lease.expires_ms = (lease_ms > 0).then(|| now.saturating_add(lease_ms));
        if let Some(at) = lease.expires_ms {
            self.work.leases.insert((at, id));
        }
        Ok(Output::Renewed { expires_ms: lease.expires_ms })
    }

    pub(super) fn give_back(
        &mut self,
        id: ExecutionId,
        token: u64,
        out: &mut Outbox,
    ) -> Result<Output, Error> {
        self.check_lease(id, token)?;
        self.release(id, None, None, out);
        Ok(Output::Released)
    }

    pub(super) fn cancel(
        &mut self,
        id: ExecutionId,
        reason: &str,
        out: &mut Outbox,
    ) -> Result<Output, Error> {
        let e = self.work.executions.get(&id).ok_or(Error::UnknownExecution { id })?;
        if e.status.is_final() {
            return Err(Error::ExecutionFinished { id, status: e.status.as_str().into() });
        }
        let reason = if reason.is_empty() { "cancelled".to_owned() } else { namespace::clip(reason) };
        Ok(Output::Cancelled { count: self.cancel_tree(id, &reason, out) })
    }

    pub(super) fn start_instance(&mut self, new: &NewInstance, out: &mut Outbox) -> Result<Output, Error> {
        super::validate_name("agent", &new.agent)?;
        if let Some(id) = &new.instance {
            super::validate_name("instance", id)?;
        }
        if let Some(key) = &new.idempotency_key
            && let Some(&start) = self.work.idempotency.get(&(0, key.clone()))
        {
            let e = &self.work.executions[&start];
            if e.delegate == START_DELEGATE
                && e.agent == new.agent
                && new.instance.as_ref().is_none_or(|i| Some(i) == e.instance.as_ref())
                && e.payload == new.payload
            {
                return Ok(Output::Instance {
                    agent: e.agent.clone(),
                    instance: e.instance.clone().unwrap_or_default(),
                    start_execution: start,
                    created: false,
                });
            }
            return Err(Error::IdempotencyKeyReused { key: namespace::clip(key), id: start });
        }
        if let Some(parent) = &new.parent
            && !self.work.instances.contains_key(parent)
        {
            return Err(Error::UnknownInstance { agent: parent.0.clone(), instance: parent.1.clone() });
        }
        let id = match &new.instance {
            Some(id) => {
                if self.work.instances.contains_key(&(new.agent.clone(), id.clone())) {
                    return Err(Error::InstanceExists { agent: new.agent.clone(), instance: id.clone() });
                }
                id.clone()
            }
            None => self.fresh_instance_id(&new.agent),
        };
        let key = (new.agent.clone(), id.clone());
        let start = NewExecution {
            agent: new.agent.clone(),
            instance: Some(id.clone()),
            delegate: START_DELEGATE.into(),
            payload: new.payload.clone(),
            idempotency_key: new.idempotency_key.clone(),
            timeout_ms: None,
            deadline_ms: None,
            delay_ms: None,
            not_before_ms: None,
            priority: i32::MAX,
            retry: None,
            parent: None,
            retention_ms: new.retention_ms,
            max_deliveries: new.max_deliveries,
        };
        start.validate_shape()?;
        self.work.instances.insert(
            key.clone(),
            Instance {
                agent: new.agent.clone(),
                id: id.clone(),
                lifecycle: Lifecycle::Starting,
                session: None,
                queue: BTreeSet::new(),
                offered: None,
                running: 0,
                live: BTreeSet::new(),
                start_execution: self.work.last_execution_id + 1,
                start_result: None,
                stop_execution: None,
                parent: new.parent.clone(),
                children: BTreeSet::new(),
                created_ms: self.now_ms,
                retention_ms: new.retention_ms,
                max_deliveries: new.max_deliveries,
            },
        );
        if let Some(parent) = &new.parent
            && let Some(p) = self.work.instances.get_mut(parent)
        {
            p.children.insert(key);
        }
        let start_execution = self.insert_execution(&start, None, true, out);
        Ok(Output::Instance { agent: new.agent.clone(), instance: id, start_execution, created: true })
    }

    pub(super) fn stop_instance(
        &mut self,
        agent: &str,
        instance: &str,
        out: &mut Outbox,
    ) -> Result<Output, Error> {
        let key = (agent.to_owned(), instance.to_owned());
        let inst = self
            .work
            .instances
            .get(&key)
            .ok_or_else(|| Error::UnknownInstance { agent: agent.into(), instance: instance.into() })?;
        if let Some(stop_execution) = inst.stop_execution {
            return Ok(Output::Stopping { stop_execution });
        }
        Ok(Output::Stopping { stop_execution: self.begin_stop(&key, out) })
    }

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
        Output::Ticked { fired }
    }

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
                    .any(|other| !other.draining && other.serves(&key.0, &e.delegate))
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

    // ---- internals -------------------------------------------------------------------------

    fn check_parent(&self, new: &NewExecution) -> Result<Option<ExecutionId>, Error> {
        let Some(parent) = new.parent else { return Ok(None) };
        self.check_lease(parent.id, parent.token).map_err(|_| Error::StaleLease {
            id: parent.id,
            reason: "a child can only be created by the parent's current holder".into(),
        })?;
        Ok(Some(parent.id))
    }

    /// The existing execution for the request's idempotency key, or an error if the key was
    /// used for a different call.
    fn check_idempotency(
        &self,
        new: &NewExecution,
        parent: Option<ExecutionId>,
    ) -> Result<Option<ExecutionId>, Error> {
        let Some(key) = &new.idempotency_key else { return Ok(None) };
        let Some(&id) = self.work.idempotency.get(&(parent.unwrap_or(0), key.clone())) else {
            return Ok(None);
        };
        if new.same_call(&self.work.executions[&id]) {
            Ok(Some(id))
        } else {
            Err(Error::IdempotencyKeyReused { key: namespace::clip(key), id })
        }
    }

    fn check_instance_open(&self, new: &NewExecution) -> Result<(), Error> {
        let Some(instance) = &new.instance else { return Ok(()) };
        match self.work.instances.get(&(new.agent.clone(), instance.clone())) {
            None => Err(Error::UnknownInstance { agent: new.agent.clone(), instance: instance.clone() }),
            Some(inst) if inst.lifecycle == Lifecycle::Stopping => {
                Err(Error::InstanceStopping { agent: new.agent.clone(), instance: instance.clone() })
            }
            Some(_) => Ok(()),
        }
    }

    fn check_lease(&self, id: ExecutionId, token: u64) -> Result<(), Error> {
        let e = self.work.executions.get(&id).ok_or(Error::UnknownExecution { id })?;
        match (&e.status, &e.lease) {
            (Status::Assigned, Some(lease)) if lease.token == token => Ok(()),
            (status, _) if status.is_final() => {
                Err(Error::ExecutionFinished { id, status: status.as_str().into() })
            }
            _ => Err(Error::StaleLease {
                id,
                reason: format!(
                    "token {token} is not its current assignment (it was given back or reassigned)"
                ),
            }),
        }
    }

    /// Checks a completion's effects; the first version conflict, if any.
    #[allow(clippy::type_complexity)]
    fn check_effects(&self, c: &Completion) -> Result<Option<(String, String, u64, u64)>, Error> {
        let e = &self.work.executions[&c.execution];
        let own = e.instance.as_ref().map(|i| instance_namespace(&e.agent, i));
        let mut touched = BTreeSet::new();
        let mut call_keys = BTreeSet::new();
        let mut conflict = None;
        for effect in &c.effects {
            let (ns, key, expected) = match effect {
                Effect::Put { namespace, key, expected_version, .. }
                | Effect::Delete { namespace, key, expected_version } => (namespace, key, expected_version),
                Effect::Call(new) => {
                    new.validate_shape()?;
                    if new.delegate == START_DELEGATE || new.delegate == STOP_DELEGATE {
                        return Err(Error::InvalidCompletion {
                            reason: format!("an effect cannot call '{}'", new.delegate),
                        });
                    }
                    self.check_instance_open(new)?;
                    self.check_idempotency(new, Some(c.execution))?;
                    if let Some(key) = &new.idempotency_key
                        && !call_keys.insert(key.as_str())
                    {
                        return Err(Error::InvalidCompletion {
                            reason: format!(
                                "two call effects share the idempotency key '{}'",
                                namespace::clip(key)
                            ),
                        });
                    }
                    continue;
                }
            };
            let kind = namespace::parse(ns)?;
            if key.is_empty() {
                return Err(Error::InvalidKey { reason: "the key is empty".into() });
            }
            if matches!(kind, namespace::Kind::Instance { .. }) && own.as_deref() != Some(ns.as_str()) {
                return Err(Error::InvalidCompletion {
                    reason: format!(
                        "an effect writes '{}': a handler may write its own instance's namespace ({}) \
                         or shared/<name> namespaces",
                        namespace::clip(ns),
                        own.as_deref().unwrap_or("none: not an instance execution")
                    ),
                });
            }
            if !touched.insert((ns.as_str(), key.as_str())) {
                return Err(Error::InvalidCompletion {
                    reason: format!("two effects write {}/{}", namespace::clip(ns), namespace::clip(key)),
                });
            }
            if let Some(expected) = expected {
                let current = self.live(ns, key).map_or(0, |v| v.version);
                if current != *expected && conflict.is_none() {
                    conflict = Some((ns.clone(), key.clone(), *expected, current));
                }
            }
        }
        Ok(conflict)
    }

    fn fresh_instance_id(&self, agent: &str) -> String {
        let base = format!("i{}", self.work.last_execution_id + 1);
        let mut id = base.clone();
        let mut n = 0;
        while self.work.instances.contains_key(&(agent.to_owned(), id.clone())) {
            n += 1;
            id = format!("{base}-{n}");
        }
        id
    }

    /// Stores a new pending execution and queues it. `reserved`: an instance's own `Start`
    /// (priority `i32::MAX`: before anything else in its queue) or `Stop` (`i32::MIN`: after
    /// everything); other executions have their priority clamped between the two.
    fn insert_execution(
        &mut self,
        new: &NewExecution,
        parent: Option<ExecutionId>,
        reserved: bool,
        out: &mut Outbox,
    ) -> ExecutionId {
        self.work.last_execution_id += 1;
        let id = self.work.last_execution_id;
        let now = self.now_ms;
        let deadline_ms = new.deadline_ms.or_else(|| new.timeout_ms.map(|t| now.saturating_add(t)));
        let not_before_ms =
            new.not_before_ms.or_else(|| new.delay_ms.map(|d| now.saturating_add(d))).filter(|at| *at > now);
        let execution = Execution {
            id,
            agent: new.agent.clone(),
            instance: new.instance.clone(),
            delegate: new.delegate.clone(),
            payload: new.payload.clone(),
            idempotency_key: new.idempotency_key.clone(),
            status: Status::Pending,
            attempts: 0,
            lease: None,
            outcome: None,
            created_ms: now,
            deadline_ms,
            not_before_ms,
            priority: if reserved { new.priority } else { new.priority.clamp(i32::MIN + 1, i32::MAX - 1) },
            parent,
            retry: new.retry,
            finished_ms: None,
            completed_token: None,
            retention_ms: new.retention_ms,
            max_deliveries: new.max_deliveries,
        };
        if let Some(key) = &new.idempotency_key {
            self.work.idempotency.insert((parent.unwrap_or(0), key.clone()), id);
        }
        if let Some(p) = parent {
            self.work.children.insert((p, id));
        }
        if let Some(at) = deadline_ms {
            self.work.deadlines.insert((at, id));
        }
        if let Some(key) = execution.instance_key()
            && let Some(inst) = self.work.instances.get_mut(&key)
        {
            inst.live.insert(id);
        }
        self.work.executions.insert(id, execution);
        self.enqueue(id, out);
        out.events.push(Event::Changed { execution: id });
        id
    }

    /// Puts a pending execution where it waits: delayed, its instance's queue, or ready.
    fn enqueue(&mut self, id: ExecutionId, out: &mut Outbox) {
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
    fn dequeue(&mut self, id: ExecutionId, out: &mut Outbox) {
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
    fn offer(&mut self, key: &(String, String), out: &mut Outbox) {
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
                    .any(|s| !s.draining && s.serves(&key.0, &delegate))
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

    fn best_session(&self, agent: &str, delegate: &str) -> Option<SessionId> {
        self.work
            .serving
            .get(agent)?
            .iter()
            .filter_map(|id| self.work.sessions.get(id))
            .filter(|s| s.free() > 0 && s.serves(agent, delegate))
            .max_by(|a, b| a.free().cmp(&b.free()).then(b.last_token.cmp(&a.last_token)))
            .map(|s| s.id)
    }

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
                    .filter(|s| s.free() > 0 && s.serves(agent, delegate))
                    .map(|s| s.id),
                None => match self.best_session(agent, delegate) {
                    Some(s) => Some(s),
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
        let token = self.work.last_token;
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
        out.events.push(Event::Assigned { host, session, execution: id, token });
        out.events.push(Event::Changed { execution: id });
        if let Some(key) = instance {
            self.offer(&key, out);
        }
    }

    /// Takes an execution from its session, back to pending (at `not_before` if given).
    /// `revoke`: tell the session's handler to stop, with this reason.
    fn release(&mut self, id: ExecutionId, not_before: Option<u64>, revoke: Option<&str>, out: &mut Outbox) {
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

    fn drop_lease(&mut self, id: ExecutionId, lease: &Lease, revoke: Option<&str>, out: &mut Outbox) {
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

    /// Gives an unfinished execution its final status and outcome.
    fn finish(
        &mut self,
        id: ExecutionId,
        status: Status,
        outcome: Result<Payload, Failure>,
        token: Option<u64>,
        out: &mut Outbox,
    ) {
        let Some(e) = self.work.executions.get(&id) else { return };
        let was = e.status;
        if was.is_final() {
            return;
        }
        if was == Status::Pending {
            self.dequeue(id, out);
        }
        let now = self.now_ms;
        let Some(e) = self.work.executions.get_mut(&id) else { return };
        let lease = e.lease.take();
        let revoke = outcome.as_ref().err().map(|f| f.message.clone());
        e.status = status;
        e.outcome = Some(outcome);
        e.finished_ms = Some(now);
        e.completed_token = token;
        let retain_until = now.saturating_add(e.retention_ms);
        let deadline = e.deadline_ms;
        let instance = e.instance_key();
        let succeeded = status == Status::Completed;
        let result = e.outcome.clone().and_then(Result::ok);
        if let Some(lease) = lease {
            // A completion ends its own lease; anything else interrupts the handler.
            let revoke = if token.is_some() { None } else { revoke.as_deref() };
            self.drop_lease(id, &lease, revoke, out);
        }
        if let Some(at) = deadline {
            self.work.deadlines.remove(&(at, id));
        }
        self.work.retained.insert((retain_until, id));
        out.events.push(Event::Changed { execution: id });
        let Some(key) = instance else { return };
        let Some(inst) = self.work.instances.get_mut(&key) else { return };
        inst.live.remove(&id);
        if was == Status::Assigned {
            inst.running = inst.running.saturating_sub(1);
        }
        if id == inst.start_execution && inst.start_result.is_none() {
            // A Start that did not succeed (failed, or cancelled by a stop while the instance
            // was starting) leaves nothing to run or to stop.
            if succeeded && inst.lifecycle == Lifecycle::Starting {
                inst.lifecycle = Lifecycle::Running;
                inst.start_result = result;
            } else if !succeeded {
                self.remove_instance(&key, "its Start did not succeed", out);
                return;
            }
        } else if Some(id) == inst.stop_execution {
            self.remove_instance(&key, "it was stopped", out);
            return;
        }
        self.offer(&key, out);
    }

    /// Cancels an execution and its unfinished descendants; how many were cancelled.
    fn cancel_tree(&mut self, root: ExecutionId, reason: &str, out: &mut Outbox) -> u64 {
        let mut stack = vec![(root, reason.to_owned())];
        let mut count = 0;
        while let Some((id, why)) = stack.pop() {
            for child in self.children_of(id) {
                if self.work.executions.get(&child).is_some_and(|c| !c.status.is_final()) {
                    stack.push((child, format!("its parent {id} was cancelled")));
                }
            }
            if self.work.executions.get(&id).is_some_and(|e| !e.status.is_final()) {
                let failure = Failure { kind: FailureKind::Cancelled, message: why };
                self.finish(id, Status::Cancelled, Err(failure), None, out);
                count += 1;
            }
        }
        count
    }

    /// Marks an instance stopping: cancels what waits, and queues its `Stop`.
    fn begin_stop(&mut self, key: &(String, String), out: &mut Outbox) -> ExecutionId {
        let Some(inst) = self.work.instances.get_mut(key) else { return 0 };
        inst.lifecycle = Lifecycle::Stopping;
        let retention_ms = inst.retention_ms;
        let max_deliveries = inst.max_deliveries;
        let start = inst.start_execution;
        let live: Vec<ExecutionId> = inst.live.iter().copied().collect();
        for id in live {
            let waiting = self.work.executions.get(&id).is_some_and(|e| e.status == Status::Pending);
            if waiting || id == start {
                let failure =
                    Failure { kind: FailureKind::Cancelled, message: "the instance is stopping".into() };
                self.finish(id, Status::Cancelled, Err(failure), None, out);
            }
        }
        // A cancelled Start removes the instance at once; then there is nothing to stop.
        if !self.work.instances.contains_key(key) {
            return start;
        }
        let stop = NewExecution {
            agent: key.0.clone(),
            instance: Some(key.1.clone()),
            delegate: STOP_DELEGATE.into(),
            payload: Payload::json(Vec::new()),
            idempotency_key: None,
            timeout_ms: None,
            deadline_ms: None,
            delay_ms: None,
            not_before_ms: None,
            priority: i32::MIN,
            retry: None,
            parent: None,
            retention_ms,
            max_deliveries,
        };
        let next_id = self.work.last_execution_id + 1;
        if let Some(inst) = self.work.instances.get_mut(key) {
            inst.stop_execution = Some(next_id);
        }
        self.insert_execution(&stop, None, true, out)
    }

    /// Removes an instance: its unfinished executions, its state and its activation; stops
    /// its children.
    fn remove_instance(&mut self, key: &(String, String), reason: &str, out: &mut Outbox) {
        let Some(inst) = self.work.instances.remove(key) else { return };
        if let Some((delegate, order)) = &inst.offered {
            remove_pair(&mut self.work.ready, &(key.0.clone(), delegate.clone()), order);
        }
        for id in &inst.live {
            let failure = Failure {
                kind: FailureKind::Instance,
                message: format!("instance {}/{}: {reason}", key.0, key.1),
            };
            self.finish(*id, Status::Cancelled, Err(failure), None, out);
        }
        if let Some(s) = inst.session.and_then(|s| self.work.sessions.get_mut(&s)) {
            s.activated.remove(key);
        }
        if let Some(parent) = &inst.parent
            && let Some(p) = self.work.instances.get_mut(parent)
        {
            p.children.remove(key);
        }
        self.remove_namespace(&instance_namespace(&key.0, &key.1));
        for child in &inst.children {
            if self.work.instances.get(child).is_some_and(|c| c.stop_execution.is_none()) {
                self.begin_stop(child, out);
            }
        }
    }

    /// Forgets a finished execution whose retention ran out.
    fn forget(&mut self, id: ExecutionId) {
        let Some(e) = self.work.executions.remove(&id) else { return };
        if let Some(key) = &e.idempotency_key {
            let scope = (e.parent.unwrap_or(0), key.clone());
            if self.work.idempotency.get(&scope) == Some(&id) {
                self.work.idempotency.remove(&scope);
            }
        }
        if let Some(parent) = e.parent {
            self.work.children.remove(&(parent, id));
        }
        let children: Vec<(ExecutionId, ExecutionId)> =
            self.work.children.range((id, 0)..=(id, u64::MAX)).copied().collect();
        for pair in children {
            self.work.children.remove(&pair);
        }
    }
}

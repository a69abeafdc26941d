//! How `apply` changes executions: create, complete (with its effects, or a retry), renew,
//! give back and cancel; finish one with its final outcome, and forget it once its retention
//! has run out. The types themselves (`Execution`, `NewExecution`, `Completion`, `Effect`,
//! ...) and the lifecycle diagram are in `execution.rs`; assigning executions to sessions and
//! releasing them is in `dispatch.rs`.

use std::collections::BTreeSet;

use super::events::{Event, Outbox};
use super::execution::{
    Completion, Effect, Execution, ExecutionId, Failure, FailureKind, NewExecution, Payload, START_DELEGATE,
    STOP_DELEGATE, Status,
};
use super::instance::Lifecycle;
use super::instances::instance_namespace;
use super::{Completed, Error, Grid, Output, namespace};

/// What the checks of a create found.
pub(super) enum Creating {
    /// The idempotency key names this execution, for the same call.
    Existing(ExecutionId),
    /// A new execution, a child of `parent` if any.
    New { parent: Option<ExecutionId> },
}

/// Most delegate names a `DelegateNotServed` error lists.
const MAX_DELEGATES_NAMED: usize = 32;

impl Grid {
    /// Applies `CreateExecution` and `CreateServedExecution` (`served`): stores a new
    /// execution, or finds the one its idempotency key names.
    pub(super) fn create_execution(
        &mut self,
        new: &NewExecution,
        served: bool,
        out: &mut Outbox,
    ) -> Result<Output, Error> {
        let parent = match self.check_create(new, served)? {
            Creating::Existing(id) => return Ok(Output::Execution { id, created: false }),
            Creating::New { parent } => parent,
        };
        let id = self.insert_execution(new, parent, false, out);
        Ok(Output::Execution { id, created: true })
    }

    /// The checks of a create (`served`: `CreateServedExecution`'s too): whether the call is
    /// new, with its parent, or names an existing execution by its idempotency key.
    pub(super) fn check_create(&self, new: &NewExecution, served: bool) -> Result<Creating, Error> {
        new.validate_shape()?;
        if new.delegate == START_DELEGATE || new.delegate == STOP_DELEGATE {
            return Err(Error::InvalidExecution {
                reason: format!("'{}' runs only when an instance starts or stops", new.delegate),
            });
        }
        let parent = self.check_parent(new)?;
        if let Some(id) = self.check_idempotency(new, parent)? {
            return Ok(Creating::Existing(id));
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
        if served {
            self.check_delegate_served(&new.agent, &new.delegate)?;
        }
        Ok(Creating::New { parent })
    }

    /// Refuses `delegate` of `agent` when sessions of the agent are connected and none serves
    /// it. With no session of the agent at all the call waits (a scaler starts one).
    fn check_delegate_served(&self, agent: &str, delegate: &str) -> Result<(), Error> {
        let mut sessions = 0;
        let mut served = BTreeSet::new();
        for spec in self.work.sessions.values().filter_map(|s| s.spec(agent)) {
            if spec.serves(delegate) {
                return Ok(());
            }
            sessions += 1;
            served.extend(spec.delegates.iter().map(String::as_str));
        }
        if sessions == 0 {
            return Ok(());
        }
        // Bounded: delegates per session and sessions are bounded, the message is clipped.
        let mut list = served.into_iter().take(MAX_DELEGATES_NAMED).collect::<Vec<_>>().join(", ");
        if list.is_empty() {
            list = "(none)".into();
        }
        Err(Error::DelegateNotServed {
            agent: namespace::clip(agent),
            delegate: namespace::clip(delegate),
            sessions,
            served: list,
        })
    }

    /// Applies `Complete`: a session reports a result or an error, with effects, under the token
    /// of its current lease.
    pub(super) fn complete(&mut self, c: &Completion, out: &mut Outbox) -> Result<Output, Error> {
        let e = self.work.executions.get(&c.execution).ok_or(Error::UnknownExecution { id: c.execution })?;
        if e.status.is_final() {
            if e.completed_token == Some(c.token) {
                return Ok(Output::Completion(Completed::Repeated));
            }
            return Err(Error::ExecutionFinished { id: c.execution, status: e.status.as_str().into() });
        }
        self.check_lease(c.execution, c.token)?;
        if c.outcome.is_err() && c.effects.iter().any(Effect::changes) {
            return Err(Error::InvalidCompletion {
                reason: "effects go only with a successful result (an error may carry a fence)".into(),
            });
        }
        // A lost lock first: whatever else is wrong with the effects now (a conflict, a
        // stale ack, a closed stream) may be the next holder's doing.
        for effect in &c.effects {
            if let Effect::Fence { lease, .. } = effect {
                super::lease::validate_lease_name(lease)?;
            }
        }
        if let Some(lost) = self.lost_fence(&c.effects) {
            self.release(c.execution, None, None, out);
            return Ok(Output::Completion(lost));
        }
        if let Some(conflict) = self.check_effects(c)? {
            self.release(c.execution, None, None, out);
            return Ok(Output::Completion(conflict));
        }
        for effect in &c.effects {
            match effect {
                Effect::Fence { .. } => {}
                Effect::Put { .. } | Effect::Delete { .. } => self.apply_state_effect(effect),
                Effect::Call(new) => {
                    // Checked above: either a fresh key, or one naming this same call.
                    if matches!(self.check_idempotency(new, Some(c.execution)), Ok(None)) {
                        self.insert_execution(new, Some(c.execution), false, out);
                    }
                }
                Effect::Append { .. } | Effect::Ack { .. } => self.apply_stream_effect(effect, out),
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

    /// Applies `Renew`: extends the lease of the current assignment.
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

    /// Applies `GiveBack`: the holder hands the execution back unfinished; it goes back to
    /// pending.
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

    /// Applies `Cancel`: ends an unfinished execution and its unfinished descendants.
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

    /// Stores a new pending execution and queues it. `reserved`: an instance's own `Start`
    /// (priority `i32::MAX`: before anything else in its queue) or `Stop` (`i32::MIN`: after
    /// everything); other executions have their priority clamped between the two.
    pub(super) fn insert_execution(
        &mut self,
        new: &NewExecution,
        parent: Option<ExecutionId>,
        reserved: bool,
        out: &mut Outbox,
    ) -> ExecutionId {
        self.work.last_execution_id += 1;
        let id = self.work.last_execution_id;
        self.store_execution(id, new, parent, reserved, out);
        self.enqueue(id, out);
        id
    }

    /// Stores a new pending execution under `id` with its indexes, not yet queued.
    pub(super) fn store_execution(
        &mut self,
        id: ExecutionId,
        new: &NewExecution,
        parent: Option<ExecutionId>,
        reserved: bool,
        out: &mut Outbox,
    ) {
        let execution = pending_execution(id, new, parent, reserved, self.now_ms);
        let deadline_ms = execution.deadline_ms;
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
        out.events.push(Event::Created { execution: id });
        out.events.push(Event::Changed { execution: id });
    }

    /// Gives an unfinished execution its final status and outcome.
    pub(super) fn finish(
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
        let generator_error = outcome.as_ref().err().map(|f| format!("its generator failed: {}", f.message));
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
        self.generator_finished(id, generator_error.as_deref(), out);
        self.schedule_run_finished(id, out);
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
    pub(super) fn cancel_tree(&mut self, root: ExecutionId, reason: &str, out: &mut Outbox) -> u64 {
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

    /// Forgets a finished execution whose retention ran out.
    pub(super) fn forget(&mut self, id: ExecutionId) {
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

    /// Checks a completion's effects; the first version conflict, if any (fences are checked by
    /// [`Grid::lost_fence`]).
    fn check_effects(&self, c: &Completion) -> Result<Option<Completed>, Error> {
        let e = &self.work.executions[&c.execution];
        let own = e.instance.as_ref().map(|i| instance_namespace(&e.agent, i));
        let mut touched = BTreeSet::new();
        let mut call_keys = BTreeSet::new();
        let mut conflict = None;
        let mut appending = super::streams::Adding::default();
        for effect in &c.effects {
            let (ns, key, expected) = match effect {
                Effect::Append { .. } | Effect::Ack { .. } => {
                    self.check_stream_effect(effect, &mut appending)?;
                    continue;
                }
                Effect::Put { namespace, key, expected_version, .. }
                | Effect::Delete { namespace, key, expected_version } => (namespace, key, expected_version),
                // Checked before (`lost_fence`).
                Effect::Fence { .. } => continue,
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
                    conflict = Some(Completed::Conflict {
                        namespace: ns.clone(),
                        key: key.clone(),
                        expected: *expected,
                        current,
                    });
                }
            }
        }
        Ok(conflict)
    }
}

/// A new pending execution `id` for `new` at `now` (`reserved`: a lifecycle call of the
/// fabric's, whose priority is not clipped).
pub(super) fn pending_execution(
    id: ExecutionId,
    new: &NewExecution,
    parent: Option<ExecutionId>,
    reserved: bool,
    now: u64,
) -> Execution {
    let deadline_ms = new.deadline_ms.or_else(|| new.timeout_ms.map(|t| now.saturating_add(t)));
    let not_before_ms =
        new.not_before_ms.or_else(|| new.delay_ms.map(|d| now.saturating_add(d))).filter(|at| *at > now);
    Execution {
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
    }
}

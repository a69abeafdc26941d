//! How `apply` changes instances: start one (and queue its `Start`), stop it (cancel what
//! waits, queue its `Stop`), remove it (its unfinished calls, its state, its children); which
//! calls an instance takes. The types (`Instance`, `NewInstance`, `Lifecycle`) and the
//! lifecycle diagram are in `instance.rs`; running an instance's queue one call at a time is
//! in `dispatch.rs`.

use std::collections::BTreeSet;

use super::events::Outbox;
use super::execution::{
    ExecutionId, Failure, FailureKind, NewExecution, Payload, START_DELEGATE, STOP_DELEGATE, Status,
};
use super::instance::{Instance, Lifecycle, NewInstance};
use super::{Error, Grid, Output, namespace, remove_pair};

/// The namespace that holds an instance's own state.
pub(super) fn instance_namespace(agent: &str, instance: &str) -> String {
    format!("instance/{agent}/{instance}")
}

impl Grid {
    /// Applies `StartInstance`: creates the instance and queues its `Start` (or finds the start
    /// its idempotency key names).
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

    /// Applies `StopInstance`: the instance stops taking calls and queues its `Stop` (stopping
    /// twice names the same `Stop`).
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

    /// Refuses a call to an instance that does not exist or is stopping.
    pub(super) fn check_instance_open(&self, new: &NewExecution) -> Result<(), Error> {
        let Some(instance) = &new.instance else { return Ok(()) };
        match self.work.instances.get(&(new.agent.clone(), instance.clone())) {
            None => Err(Error::UnknownInstance { agent: new.agent.clone(), instance: instance.clone() }),
            Some(inst) if inst.lifecycle == Lifecycle::Stopping => {
                Err(Error::InstanceStopping { agent: new.agent.clone(), instance: instance.clone() })
            }
            Some(_) => Ok(()),
        }
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
    pub(super) fn remove_instance(&mut self, key: &(String, String), reason: &str, out: &mut Outbox) {
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
}

//! Clients: concurrent workers, each talking to one node over gRPC and recording every
//! operation as invoke + ok/fail/info.
//!
//! How a gRPC outcome becomes a history type (see `state.proto`):
//!
//! | outcome | read | write / cas / add |
//! |---|---|---|
//! | reply | ok | ok |
//! | an error [`weft_proto::wire::Outcome`] calls definite (not applied, overloaded, refused: e.g. FAILED_PRECONDITION when the version did not match) | fail | fail (nothing changed) |
//! | any other error, timeout, transport error | fail | info (may have been applied) |
//!
//! Increments of the executions workload map `Executions/Call` outcomes as
//! [`crate::counter`] says. A worker with an odd id calls an increment whose outcome is
//! unknown again with the same idempotency key (up to [`MAX_KEY_RETRIES`] times), which must
//! return the same execution and never apply it twice.
//!
//! Failover: a worker that sees [`FAILOVER_AFTER`] errors in a row moves to the next node,
//! as the SDK will do, and goes back to its home node after
//! [`crate::placement::RETURN_HOME_AFTER`] operations elsewhere ([`crate::placement`]).
//! After an `info` it carries on under a new process id (the old one may still be in
//! flight), so each process has at most one operation open.
//!
//! Nodes come and go under the membership nemesis: workers take their home node from the
//! [`Roster`], which keeps homes balanced (a worker whose home is stopped for good moves to
//! the least used node; a fresh node takes a worker from the busiest), never go back to a
//! node stopped for good, and fail over only to nodes still there.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::db::Channel;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::executions_client::ExecutionsClient;
use weft_proto::fabric::v1::state_client::StateClient;

use crate::db::Roster;
use crate::final_read;
use crate::history::{Op, Type};
use crate::outcome::{Done, code_message, failed};
use crate::placement::Placement;
use crate::recorder::Recorder;
use crate::rng::Rng;

/// Namespace of the register workload's keys.
pub const REGISTER_NAMESPACE: &str = "shared/jepsen-register";
/// Namespace of the set workload's elements.
pub const SET_NAMESPACE: &str = "shared/jepsen-set";
/// Errors in a row after which a worker moves to the next node.
pub const FAILOVER_AFTER: u32 = 3;
/// Most times a retrying worker calls an indeterminate increment again with its key.
pub const MAX_KEY_RETRIES: u32 = 3;

/// How reads are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Reads {
    /// Linearizable (read-index through the leader): what the fabric promises.
    Linearizable,
    /// Served from the contacted node's replica: deliberately unsafe, to show the checker
    /// catches it.
    Stale,
}

/// The workload a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Read / write / compare-and-set on a few keys; checked for linearizability.
    Register,
    /// Unique adds, then one final read; every acknowledged add must be present.
    Set,
    /// `increment` executions with fresh idempotency keys against a counter agent that
    /// applies them through atomic completion, then one final read of its state; every
    /// acknowledged increment must be applied exactly once.
    Executions,
    /// Exactly-once producers append to one stream while competing consumers listen on a
    /// durable cursor; then a final read and a drain. Promise 3 ([`crate::streams`]).
    Streams,
}

impl Workload {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Register => "register",
            Workload::Set => "set",
            Workload::Executions => "executions",
            Workload::Streams => "streams",
        }
    }
}

/// What every worker shares.
#[derive(Debug, Clone)]
pub struct Options {
    pub workload: Workload,
    pub reads: Reads,
    /// Keys of the register workload.
    pub keys: usize,
    /// Per-operation timeout (the op is `info` after it, unless it is a read).
    pub timeout: Duration,
    /// Pause between one worker's operations (each is jittered by ±50%).
    pub pause: Duration,
    /// Executions: what increments call.
    pub target: crate::counter::Target,
}

/// What the worker knows of each key: the value and version it last read or wrote.
type Known = HashMap<String, (Option<u64>, u64)>;

/// A worker: one at a time, operations against its node until `until`.
pub struct Worker {
    id: u64,
    workers: u64,
    process: u64,
    /// The node this worker talks to.
    placement: Placement,
    /// One client per node used so far.
    clients: HashMap<u64, StateClient<Channel>>,
    /// One executions client per node used so far (executions workload).
    calls: HashMap<u64, ExecutionsClient<Channel>>,
    /// An indeterminate increment to call again with its key, and how often it was.
    retry: Option<(String, u32)>,
    rng: Rng,
    recorder: Recorder,
    options: Options,
    errors_in_a_row: u32,
    seq: u64,
    known: Known,
}

fn parse_value(bytes: &[u8]) -> u64 {
    // A value the workload never wrote (u64::MAX) makes the checker report it.
    std::str::from_utf8(bytes).ok().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX)
}

impl Worker {
    /// Worker `id` of `workers`, starting on the `id % n`-th of the roster's `n` nodes.
    pub fn new(
        id: u64,
        workers: u64,
        roster: Roster,
        rng: Rng,
        recorder: Recorder,
        options: Options,
    ) -> Self {
        Self {
            id,
            workers,
            process: id,
            placement: Placement::new(id, roster),
            clients: HashMap::new(),
            calls: HashMap::new(),
            retry: None,
            rng,
            recorder,
            options,
            errors_in_a_row: 0,
            seq: 0,
            known: Known::new(),
        }
    }

    /// Runs operations until `until`.
    pub async fn run(mut self, until: Instant) {
        loop {
            let pause = self.options.pause.mul_f64(0.5 + self.rng.fraction());
            if Instant::now() + pause >= until {
                return;
            }
            tokio::time::sleep(pause).await;
            let op = self.next_op();
            self.invoke(op).await;
        }
    }

    fn next_op(&mut self) -> Op {
        self.seq += 1;
        match self.options.workload {
            Workload::Set => Op::Add { element: format!("e{}-{}", self.id, self.seq) },
            Workload::Executions => {
                let key = match &self.retry {
                    Some((key, _)) => key.clone(),
                    None => format!("w{}-{}", self.id, self.seq),
                };
                Op::Increment { key, count: None, execution: None, attempts: None }
            }
            Workload::Streams => {
                unreachable!("the streams workload runs producers and consumers, not workers")
            }
            Workload::Register => {
                let key = format!("k{}", self.rng.below(self.options.keys as u64));
                // Unique across workers and runs of this worker: the worker in the high bits.
                let value = ((self.id + 1) << 40) | self.seq;
                let roll = self.rng.below(10);
                match self.known.get(&key) {
                    Some(&(from, version)) if roll < 3 => {
                        Op::Cas { key, from, expected_version: version, to: value, version: None }
                    }
                    _ if roll < 6 => Op::Write { key, value, version: None },
                    _ => Op::Read { key, value: None, version: None },
                }
            }
        }
    }

    async fn invoke(&mut self, op: Op) {
        if self.placement.follow_roster() {
            self.errors_in_a_row = 0;
        }
        let node = self.placement.node();
        self.recorder.record(Some(self.process), Type::Invoke, op.clone(), Some(node), None);
        let done =
            match tokio::time::timeout(self.options.timeout + Duration::from_secs(1), self.call(op.clone()))
                .await
            {
                Ok(done) => done,
                Err(_) => match op {
                    Op::Read { .. } => Done::Fail(op, "client timeout".into()),
                    _ => Done::Info(op, "client timeout".into()),
                },
            };
        let (ty, op, error) = match done {
            Done::Ok(op) => (Type::Ok, op, None),
            Done::Fail(op, e) => (Type::Fail, op, Some(e)),
            Done::Info(op, e) => (Type::Info, op, Some(e)),
        };
        self.recorder.record(Some(self.process), ty, op.clone(), Some(node), error);
        if self.placement.count_op() {
            self.errors_in_a_row = 0;
        }
        match ty {
            Type::Ok => self.errors_in_a_row = 0,
            Type::Fail if matches!(op, Op::Cas { .. }) => {}
            _ => {
                self.errors_in_a_row += 1;
                if self.errors_in_a_row >= FAILOVER_AFTER {
                    self.errors_in_a_row = 0;
                    self.placement.fail_over();
                }
            }
        }
        if ty == Type::Info {
            self.process += self.workers;
        }
        if let Op::Increment { key, .. } = &op {
            let tries = match &self.retry {
                Some((k, n)) if k == key => *n,
                _ => 0,
            };
            let again = ty == Type::Info && self.id % 2 == 1 && tries < MAX_KEY_RETRIES;
            self.retry = again.then(|| (key.clone(), tries + 1));
        }
        // Remember what this worker saw, for its next compare-and-set.
        if ty == Type::Ok {
            match &op {
                Op::Read { key, value, version } => {
                    self.known.insert(key.clone(), (*value, version.unwrap_or(0)));
                }
                Op::Write { key, value, version: Some(v) }
                | Op::Cas { key, to: value, version: Some(v), .. } => {
                    self.known.insert(key.clone(), (Some(*value), *v));
                }
                _ => {}
            }
        }
    }

    async fn call(&mut self, op: Op) -> Done {
        let timeout = self.options.timeout;
        let node = self.placement.node();
        let addr = self.placement.addr();
        if let Op::Increment { key, .. } = &op {
            let client = match (self.calls.contains_key(&node), addr) {
                (true, _) => self.calls.get_mut(&node).expect("checked"),
                (false, Some(addr)) => self.calls.entry(node).or_insert_with(|| {
                    ExecutionsClient::new(crate::db::channel(&addr, crate::counter::call_deadline(timeout)))
                }),
                (false, None) => return Done::Fail(op, format!("node {node} is gone and no node is left")),
            };
            return crate::counter::call(client, self.options.target, key, timeout).await;
        }
        let client = match (self.clients.contains_key(&node), addr) {
            (true, _) => self.clients.get_mut(&node).expect("checked"),
            (false, Some(addr)) => self
                .clients
                .entry(node)
                .or_insert_with(|| StateClient::new(crate::db::channel(&addr, timeout))),
            (false, None) => return Done::Fail(op, format!("node {node} is gone and no node is left")),
        };
        fn req<M>(m: M, timeout: Duration) -> tonic::Request<M> {
            let mut r = tonic::Request::new(m);
            r.set_timeout(timeout);
            r
        }
        match op {
            Op::Read { key, .. } => {
                let consistency = match self.options.reads {
                    Reads::Linearizable => pb::Consistency::Linearizable,
                    Reads::Stale => pb::Consistency::Stale,
                };
                let m = pb::GetRequest {
                    namespace: REGISTER_NAMESPACE.into(),
                    key: key.clone(),
                    consistency: consistency as i32,
                };
                match client.get(req(m, timeout)).await {
                    Ok(r) => {
                        let entry = r.into_inner().entry;
                        Done::Ok(Op::Read {
                            key,
                            value: entry.as_ref().map(|e| parse_value(&e.value)),
                            version: Some(entry.map_or(0, |e| e.version)),
                        })
                    }
                    Err(s) => Done::Fail(Op::Read { key, value: None, version: None }, code_message(&s)),
                }
            }
            Op::Write { key, value, .. } => {
                let m = pb::PutRequest {
                    namespace: REGISTER_NAMESPACE.into(),
                    key: key.clone(),
                    value: value.to_string().into_bytes(),
                    ttl_ms: None,
                    if_absent: false,
                    fence: None,
                };
                match client.put(req(m, timeout)).await {
                    Ok(r) => Done::Ok(Op::Write { key, value, version: Some(r.into_inner().version) }),
                    Err(s) => failed(Op::Write { key, value, version: None }, &s),
                }
            }
            Op::Cas { key, from, expected_version, to, .. } => {
                let m = pb::CompareAndSetRequest {
                    namespace: REGISTER_NAMESPACE.into(),
                    key: key.clone(),
                    expected_version,
                    value: to.to_string().into_bytes(),
                    ttl_ms: None,
                    fence: None,
                };
                let op = |version| Op::Cas { key: key.clone(), from, expected_version, to, version };
                match client.compare_and_set(req(m, timeout)).await {
                    Ok(r) => Done::Ok(op(Some(r.into_inner().version))),
                    Err(s) => failed(op(None), &s),
                }
            }
            Op::Add { element } => {
                let m = pb::PutRequest {
                    namespace: SET_NAMESPACE.into(),
                    key: element.clone(),
                    value: b"1".to_vec(),
                    ttl_ms: None,
                    if_absent: false,
                    fence: None,
                };
                match client.put(req(m, timeout)).await {
                    Ok(_) => Done::Ok(Op::Add { element }),
                    Err(s) => failed(Op::Add { element }, &s),
                }
            }
            other => Done::Fail(other, "not a client operation".into()),
        }
    }
}

/// The set's final read: a linearizable list of every element, tried on each node in turn
/// until one answers or `patience` runs out. Recorded as one operation.
pub async fn read_all(nodes: &[(u64, String)], recorder: &Recorder, process: u64, patience: Duration) {
    let invoke = Op::ReadAll { elements: None };
    final_read::until_answered(nodes, recorder, process, patience, invoke, |addr| async move {
        let entries = final_read::list_namespace(&addr, SET_NAMESPACE).await?;
        Ok(Op::ReadAll { elements: Some(entries.into_iter().map(|e| e.key).collect()) })
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::kind;

    #[test]
    fn write_errors_map_to_fail_only_when_nothing_can_have_changed() {
        let op = || Op::Add { element: "e".into() };
        let not_applied = weft_proto::wire::not_applied("no leader", None);
        assert_eq!(kind(&failed(op(), &not_applied)), "fail");
        assert_eq!(kind(&failed(op(), &tonic::Status::failed_precondition("version mismatch"))), "fail");
        assert_eq!(kind(&failed(op(), &tonic::Status::resource_exhausted("full"))), "fail");
        assert_eq!(kind(&failed(op(), &tonic::Status::unavailable("leader lost"))), "info");
        assert_eq!(kind(&failed(op(), &tonic::Status::deadline_exceeded("slow"))), "info");
        assert_eq!(kind(&failed(op(), &tonic::Status::cancelled("timeout"))), "info");
        assert_eq!(kind(&failed(op(), &tonic::Status::unknown("transport error"))), "info");
        // The error text keeps the code first: the register checker keys on it.
        assert!(code_message(&tonic::Status::failed_precondition("x")).starts_with("FailedPrecondition"));
    }

    #[test]
    fn unparsable_values_become_a_value_no_one_wrote() {
        assert_eq!(parse_value(b"42"), 42);
        assert_eq!(parse_value(b"garbage"), u64::MAX);
    }
}

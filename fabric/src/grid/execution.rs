//! Executions: one call of an agent's delegate, from creation to its final outcome.
//!
//! ```text
//!            create ──► Pending ──assign (lease + token)──► Assigned ──complete──► Completed
//!                        ▲  │ (not_before, back-off:              │  └─handler error─► Failed
//!                        │  │  waits in `delayed`)                │     (or Pending again
//!                        │  └──────────cancel / deadline──────────┴──►  under a retry policy)
//!                        └── session closed, lease expired, given back, state conflict
//!                                                                     Cancelled / Failed
//! ```
//!
//! Every assignment gets a fresh fencing token. A completion must carry the token of the
//! current assignment; one from an earlier assignment (a session that lost its lease) is
//! refused, so an execution completes at most once.
//!
//! This file holds the types: what the log stores (`NewExecution`, `Completion`, `Effect`)
//! and the grid keeps (`Execution`), with their shape checks. How `apply` changes executions
//! is in `executions.rs`.

use serde::{Deserialize, Serialize};

use super::Error;

/// An execution's id: assigned by the grid, dense and never reused.
pub type ExecutionId = u64;
/// A session's id: assigned by the grid, never reused.
pub type SessionId = u64;

/// Delegate every agent answers when an instance starts.
pub const START_DELEGATE: &str = "Start";
/// Delegate every agent answers when an instance stops.
pub const STOP_DELEGATE: &str = "Stop";

/// How a payload's bytes are encoded. The fabric never decodes payloads, apart from checking
/// that `Json` ones are JSON; the SDK decodes them into the handler's types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Codec {
    /// UTF-8 JSON (the CLI, HTTP and other languages).
    Json,
    /// bincode 2, standard configuration, serde mode (Rust to Rust).
    Bincode,
}

impl Codec {
    /// Parses a codec name as the protocol spells it.
    pub fn parse(name: &str) -> Result<Self, Error> {
        match name {
            "json" => Ok(Codec::Json),
            "bincode" => Ok(Codec::Bincode),
            other => Err(Error::InvalidPayload {
                reason: format!(
                    "unknown codec '{}'; expected 'json' or 'bincode'",
                    super::namespace::clip(other)
                ),
            }),
        }
    }

    /// The codec's protocol name.
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::Json => "json",
            Codec::Bincode => "bincode",
        }
    }
}

/// Encoded arguments or results, with the codec that encoded them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// How `data` is encoded.
    pub codec: Codec,
    /// The encoded bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl Payload {
    /// A JSON payload of `text`.
    pub fn json(text: impl Into<Vec<u8>>) -> Self {
        Self { codec: Codec::Json, data: text.into() }
    }

    /// Checks that a JSON payload is well-formed JSON. Shape only: bincode payloads are
    /// opaque to the fabric.
    pub fn validate(&self) -> Result<(), Error> {
        if self.codec == Codec::Json && !self.data.is_empty() {
            serde_json::from_slice::<serde::de::IgnoredAny>(&self.data).map_err(|e| {
                Error::InvalidPayload {
                    reason: format!("the payload's codec is 'json' but it is not valid JSON: {e}"),
                }
            })?;
        }
        Ok(())
    }
}

/// What to do when a handler returns an error: try again, up to `max_attempts` deliveries in
/// all, waiting `initial_backoff_ms × (multiplier_percent / 100)^(n - 1)` (at most
/// `max_backoff_ms`) before the n-th retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Deliveries in all, the first included (1 means no retry).
    pub max_attempts: u32,
    /// Wait before the first retry.
    pub initial_backoff_ms: u64,
    /// Longest wait between retries.
    pub max_backoff_ms: u64,
    /// Growth of the wait per retry, in percent (200 doubles it).
    pub multiplier_percent: u32,
}

// A retry policy's bounds are part of the wire contract: clients check them before sending.
pub use weft_proto::wire::{MAX_BACKOFF_MS, MAX_RETRY_ATTEMPTS};

impl RetryPolicy {
    /// Checks the policy's numbers.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |reason: String| Err(Error::InvalidExecution { reason: format!("retry policy: {reason}") });
        if self.max_attempts == 0 || self.max_attempts > MAX_RETRY_ATTEMPTS {
            return bad(format!("max_attempts is {}; expected 1 to {MAX_RETRY_ATTEMPTS}", self.max_attempts));
        }
        if self.max_backoff_ms > MAX_BACKOFF_MS || self.initial_backoff_ms > self.max_backoff_ms {
            return bad(format!(
                "expected initial_backoff_ms ({}) <= max_backoff_ms ({}) <= {MAX_BACKOFF_MS}",
                self.initial_backoff_ms, self.max_backoff_ms
            ));
        }
        if !(100..=1000).contains(&self.multiplier_percent) {
            return bad(format!("multiplier_percent is {}; expected 100 to 1000", self.multiplier_percent));
        }
        Ok(())
    }

    /// The wait before the delivery that follows delivery `attempt` (1-based). Integer
    /// arithmetic only, so every replica computes the same.
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        let mut wait = self.initial_backoff_ms;
        for _ in 1..attempt {
            wait = (wait.saturating_mul(u64::from(self.multiplier_percent)) / 100).min(self.max_backoff_ms);
            if wait == self.max_backoff_ms {
                break;
            }
        }
        wait.min(self.max_backoff_ms)
    }
}

/// Where an execution is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Status {
    /// Waiting for a session (or for its `not_before` or back-off time).
    Pending,
    /// Held by one session under a lease.
    Assigned,
    /// Finished with a result.
    Completed,
    /// Finished with an error.
    Failed,
    /// Cancelled before it finished.
    Cancelled,
}

impl Status {
    /// Whether the execution has its final outcome.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }

    /// The status's name in the protocol and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Assigned => "assigned",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// Parses a status name.
    pub fn parse(name: &str) -> Option<Self> {
        [Status::Pending, Status::Assigned, Status::Completed, Status::Failed, Status::Cancelled]
            .into_iter()
            .find(|s| s.as_str() == name)
    }
}

/// The session that holds an execution, and the token its completion must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The holding session.
    pub session: SessionId,
    /// The fencing token of this assignment; unique across the grid.
    pub token: u64,
    /// When the lease runs out unless renewed (leader-stamped ms); `None`: it lasts as long
    /// as the session.
    pub expires_ms: Option<u64>,
}

/// Why an execution failed or was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// The handler returned an error.
    Handler,
    /// The deadline passed first.
    Deadline,
    /// Someone cancelled it (or its parent, or its instance stopped).
    Cancelled,
    /// It was delivered `max_deliveries` times without completing (sessions kept dying).
    Undeliverable,
    /// Its instance went away (a failed start).
    Instance,
}

impl FailureKind {
    /// The kind's name in the protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Handler => "handler",
            FailureKind::Deadline => "deadline",
            FailureKind::Cancelled => "cancelled",
            FailureKind::Undeliverable => "undeliverable",
            FailureKind::Instance => "instance",
        }
    }
}

/// An execution's error outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// What happened, in words (the handler's message for `Handler`).
    pub message: String,
}

/// An error a handler returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerError {
    /// The handler's message.
    pub message: String,
    /// Whether a retry policy may try again (false: fail now whatever the policy says).
    pub retryable: bool,
}

/// A parent execution, named by a handler that creates a child while it holds the parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRef {
    /// The parent execution.
    pub id: ExecutionId,
    /// The parent's current fencing token: only its current holder may create children.
    pub token: u64,
}

/// A request for a new execution, as stored in the log. Times are relative to the entry's
/// leader-stamped clock or absolute (ms since the Unix epoch), never both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewExecution {
    /// The agent to run it.
    pub agent: String,
    /// The agent instance, for instance executions.
    pub instance: Option<String>,
    /// The delegate (handler) to run.
    pub delegate: String,
    /// The arguments.
    pub payload: Payload,
    /// Creating again with this key returns the first execution (scoped by `parent`).
    pub idempotency_key: Option<String>,
    /// Fail the execution if it has not finished this long after creation.
    pub timeout_ms: Option<u64>,
    /// Fail the execution if it has not finished by this time.
    pub deadline_ms: Option<u64>,
    /// Do not deliver it before this long after creation.
    pub delay_ms: Option<u64>,
    /// Do not deliver it before this time.
    pub not_before_ms: Option<u64>,
    /// Higher runs first; ties run oldest first.
    pub priority: i32,
    /// Retries after handler errors; none: a handler error is final.
    pub retry: Option<RetryPolicy>,
    /// The execution whose handler creates this one.
    pub parent: Option<ParentRef>,
    /// How long the outcome (and the idempotency key) is kept after it finishes. Set by the
    /// proposing node from its configuration, so every replica keeps it equally long.
    pub retention_ms: u64,
    /// Most deliveries before it fails as undeliverable. Set by the proposing node.
    pub max_deliveries: u32,
}

/// A `Call`'s execution that the leader handed to a session before creating it, from ids and
/// tokens a [`Command::ReserveBlock`](super::Command::ReserveBlock) set aside ("eager calls",
/// `docs/architecture.md#eager-calls`). Proposed only by the leader's proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserved {
    /// The call, as `CreateExecution` would carry it.
    pub new: NewExecution,
    /// Refuse it as `CreateServedExecution` does when no connected session serves it.
    pub served: bool,
    /// The id the session was given, from a reserved block.
    pub id: ExecutionId,
    /// The fencing token the session was given, from the same block.
    pub token: u64,
    /// The session it was pushed to.
    pub session: SessionId,
}

/// Longest relative time (timeout or delay) an execution may name: one year.
pub const MAX_RELATIVE_MS: u64 = 365 * 86_400_000;
/// Longest idempotency key, in bytes.
const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

impl NewExecution {
    /// Checks what does not depend on configuration (names, times, policy, payload codec).
    pub fn validate_shape(&self) -> Result<(), Error> {
        super::validate_name("agent", &self.agent)?;
        super::validate_name("delegate", &self.delegate)?;
        if let Some(instance) = &self.instance {
            super::validate_name("instance", instance)?;
        }
        if let Some(key) = &self.idempotency_key
            && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES)
        {
            return Err(Error::InvalidExecution {
                reason: format!(
                    "the idempotency key is {} bytes; expected 1 to {}",
                    key.len(),
                    MAX_IDEMPOTENCY_KEY_BYTES
                ),
            });
        }
        if self.timeout_ms.is_some() && self.deadline_ms.is_some() {
            return Err(Error::InvalidExecution { reason: "give a timeout or a deadline, not both".into() });
        }
        if self.delay_ms.is_some() && self.not_before_ms.is_some() {
            return Err(Error::InvalidExecution {
                reason: "give a delay or a not-before time, not both".into(),
            });
        }
        for (what, value) in [("timeout_ms", self.timeout_ms), ("delay_ms", self.delay_ms)] {
            if let Some(v) = value
                && (v == 0 || v > MAX_RELATIVE_MS)
            {
                return Err(Error::InvalidExecution {
                    reason: format!("{what} is {v}; expected 1 to {MAX_RELATIVE_MS} (one year)"),
                });
            }
        }
        if let Some(retry) = &self.retry {
            retry.validate()?;
        }
        if self.max_deliveries == 0 {
            return Err(Error::InvalidExecution { reason: "max_deliveries must be at least 1".into() });
        }
        self.payload.validate()
    }

    /// Whether `other` asks for the same call (used for idempotency keys: the same key with a
    /// different call is an error, not a silent match).
    pub fn same_call(&self, other: &Execution) -> bool {
        self.agent == other.agent
            && self.instance == other.instance
            && self.delegate == other.delegate
            && self.payload == other.payload
    }
}

/// What tests (the grid's and the cluster's) and the fuzz targets build executions from.
impl NewExecution {
    /// A call of `agent`'s `delegate` with JSON `1`, no options, a minute's retention and five
    /// deliveries.
    pub fn example(agent: &str, delegate: &str) -> Self {
        Self {
            agent: agent.into(),
            instance: None,
            delegate: delegate.into(),
            payload: Payload::json("1"),
            idempotency_key: None,
            timeout_ms: None,
            deadline_ms: None,
            delay_ms: None,
            not_before_ms: None,
            priority: 0,
            retry: None,
            parent: None,
            retention_ms: 60_000,
            max_deliveries: 5,
        }
    }
}

/// A session's report that an execution finished, as stored in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    /// The execution.
    pub execution: ExecutionId,
    /// The fencing token of the assignment being completed.
    pub token: u64,
    /// The handler's result or error.
    pub outcome: Result<Payload, HandlerError>,
    /// Applied atomically with a successful result, or not at all.
    pub effects: Vec<Effect>,
}

/// A change a completion makes together with its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// Write a key of the execution's own instance namespace or of a `shared/` namespace,
    /// only if its version is `expected_version` when given (0: absent).
    Put {
        namespace: String,
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        expected_version: Option<u64>,
    },
    /// Remove a key, only if its version is `expected_version` when given.
    Delete { namespace: String, key: String, expected_version: Option<u64> },
    /// Create an execution, a child of the completing one.
    Call(Box<NewExecution>),
    /// Append items to a stream (refused, with the whole completion, if the stream is
    /// missing or closed or a discard-new limit would be passed).
    Append { stream: String, items: Vec<super::stream::NewItem> },
    /// Acknowledge a delivery of a cursor (refused, with the whole completion, if the token
    /// is not the delivery's current one).
    Ack { stream: String, cursor: String, seq: super::stream::Seq, token: u64 },
    /// Apply the completion only while the grant `token` holds lease `lease`: a holder that
    /// lost its lock (expired, released, taken over) has nothing of its completion applied,
    /// and the execution runs again; an ack with a lost fence is refused. The one effect an
    /// error result may carry too.
    Fence { lease: String, token: u64 },
}

impl Effect {
    /// Whether this effect changes something (every effect but a [`Effect::Fence`], which
    /// only guards the others).
    pub fn changes(&self) -> bool {
        !matches!(self, Effect::Fence { .. })
    }
}

/// One execution, as the grid holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Execution {
    /// Its id.
    pub id: ExecutionId,
    /// The agent that runs it.
    pub agent: String,
    /// The instance, for instance executions.
    pub instance: Option<String>,
    /// The delegate.
    pub delegate: String,
    /// The arguments.
    pub payload: Payload,
    /// The key it was created with, if any.
    pub idempotency_key: Option<String>,
    /// Where it is in its life.
    pub status: Status,
    /// How many times it has been delivered to a session.
    pub attempts: u32,
    /// The current assignment, while `Assigned`.
    pub lease: Option<Lease>,
    /// The result or error, once final.
    pub outcome: Option<Result<Payload, Failure>>,
    /// When it was created (leader-stamped ms).
    pub created_ms: u64,
    /// When it fails unless finished.
    pub deadline_ms: Option<u64>,
    /// Not delivered before this time (from `not_before` or a retry's back-off).
    pub not_before_ms: Option<u64>,
    /// Higher runs first.
    pub priority: i32,
    /// The execution that created it.
    pub parent: Option<ExecutionId>,
    /// Its retry policy.
    pub retry: Option<RetryPolicy>,
    /// When it finished.
    pub finished_ms: Option<u64>,
    /// The token of the completion that finished it, so a repeated completion is recognised.
    pub completed_token: Option<u64>,
    /// How long the outcome is kept after it finishes.
    pub retention_ms: u64,
    /// Most deliveries before it fails as undeliverable.
    pub max_deliveries: u32,
}

impl Execution {
    /// The `(agent, instance)` pair of an instance execution.
    pub fn instance_key(&self) -> Option<(String, String)> {
        self.instance.as_ref().map(|i| (self.agent.clone(), i.clone()))
    }

    /// The order key in a queue: higher priority first, then older first.
    pub(super) fn queue_key(&self) -> (i64, ExecutionId) {
        (-i64::from(self.priority), self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(initial: u64, max: u64, percent: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff_ms: initial,
            max_backoff_ms: max,
            multiplier_percent: percent,
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = policy(100, 1_000, 200);
        let waits: Vec<u64> = (1..=6).map(|a| p.backoff_ms(a)).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(policy(0, 0, 200).backoff_ms(3), 0);
        assert_eq!(policy(u64::MAX / 2, MAX_BACKOFF_MS, 1000).backoff_ms(80), MAX_BACKOFF_MS);
    }

    #[test]
    fn bad_policies_name_the_field() {
        for (p, needle) in [
            (RetryPolicy { max_attempts: 0, ..policy(1, 2, 200) }, "max_attempts"),
            (policy(5, 2, 200), "initial_backoff_ms"),
            (policy(1, 2, 50), "multiplier_percent"),
        ] {
            let e = p.validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn json_payloads_must_be_json() {
        assert!(Payload::json("{\"a\":1}").validate().is_ok());
        assert!(Payload::json("").validate().is_ok(), "empty means no arguments");
        let e = Payload::json("{nope").validate().unwrap_err().to_string();
        assert!(e.contains("not valid JSON"), "{e}");
        assert!(Payload { codec: Codec::Bincode, data: vec![0xff, 0] }.validate().is_ok());
        assert!(Codec::parse("yaml").unwrap_err().to_string().contains("unknown codec 'yaml'"));
    }
}

//! Plain data the SDK hands out: executions as the fabric reports them, retry policies.

use std::time::Duration;

use serde::de::DeserializeOwned;
use weft_proto::fabric::v1 as pb;

use crate::{Error, codec};

/// Where an execution is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Waiting for a session with room (or for its delay, or a retry's back-off).
    Pending,
    /// Held by one agent session.
    Assigned,
    /// Finished with a result.
    Completed,
    /// Finished with an error.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl Status {
    fn parse(s: &str) -> Self {
        match s {
            "assigned" => Status::Assigned,
            "completed" => Status::Completed,
            "failed" => Status::Failed,
            "cancelled" => Status::Cancelled,
            _ => Status::Pending,
        }
    }

    /// Whether the execution has its final outcome.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }
}

/// An execution as the fabric reports it.
///
/// ```no_run
/// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
/// let e = client.execution(42).await?;
/// if e.status.is_final() {
///     let answer: u64 = e.result()?;
///     println!("execution 42 said {answer}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    /// Its id.
    pub id: u64,
    /// The agent.
    pub agent: String,
    /// The instance, if it belongs to one.
    pub instance: Option<String>,
    /// The delegate.
    pub delegate: String,
    /// Where it is in its life.
    pub status: Status,
    /// How many times it was delivered.
    pub attempts: u32,
    /// The idempotency key it was created with, if any.
    pub idempotency_key: Option<String>,
    pub(crate) raw: pb::Execution,
}

impl Execution {
    pub(crate) fn from_pb(raw: pb::Execution) -> Self {
        Self {
            id: raw.id,
            agent: raw.agent.clone(),
            instance: (!raw.instance.is_empty()).then(|| raw.instance.clone()),
            delegate: raw.delegate.clone(),
            status: Status::parse(&raw.status),
            attempts: raw.attempts,
            idempotency_key: (!raw.idempotency_key.is_empty()).then(|| raw.idempotency_key.clone()),
            raw,
        }
    }

    /// The result, decoded; the execution's error if it failed or was cancelled.
    pub fn result<R: DeserializeOwned>(&self) -> Result<R, Error> {
        outcome(&self.raw)
    }
}

/// The outcome of a final execution, decoded.
pub(crate) fn outcome<R: DeserializeOwned>(e: &pb::Execution) -> Result<R, Error> {
    let error = || e.error.clone().unwrap_or_default();
    match e.status.as_str() {
        "completed" => codec::decode(e.result.as_ref().unwrap_or(&pb::Payload::default())),
        "failed" => Err(Error::Failed { execution: e.id, kind: error().kind, message: error().message }),
        "cancelled" => Err(Error::Cancelled { execution: e.id, message: error().message }),
        other => Err(Error::Unknown(format!("execution {} is still {other}", e.id))),
    }
}

/// Retries after handler errors: up to `max_attempts` deliveries in all, waiting
/// `initial_backoff`, then `multiplier` times longer each time, at most `max_backoff`.
///
/// ```
/// use std::time::Duration;
/// use weft_agent::RetryPolicy;
/// let policy = RetryPolicy::new(5).backoff(Duration::from_millis(100), Duration::from_secs(10));
/// assert_eq!(policy.max_attempts, 5);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Deliveries in all, the first included (1 to 100).
    pub max_attempts: u32,
    /// Wait before the first retry.
    pub initial_backoff: Duration,
    /// Longest wait.
    pub max_backoff: Duration,
    /// Growth per retry in percent (200 doubles; 100 to 1000).
    pub multiplier_percent: u32,
}

impl RetryPolicy {
    /// `max_attempts` deliveries, waiting 100 ms doubling up to 10 s.
    pub fn new(max_attempts: u32) -> Self {
        Self {
            max_attempts,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            multiplier_percent: 200,
        }
    }

    /// Sets the first and the longest wait.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    pub(crate) fn to_pb(self) -> pb::RetryPolicy {
        pb::RetryPolicy {
            max_attempts: self.max_attempts,
            initial_backoff_ms: self.initial_backoff.as_millis() as u64,
            max_backoff_ms: self.max_backoff.as_millis() as u64,
            multiplier_percent: self.multiplier_percent,
        }
    }
}

/// A started instance and its `Start` delegate's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Started<R> {
    /// The agent.
    pub agent: String,
    /// The instance id.
    pub id: String,
    /// What `Start` returned.
    pub result: R,
    /// False when the idempotency key named an instance started before.
    pub created: bool,
}

//! The wire contract beyond the `.proto` files: the metadata a node puts on a status, and what
//! a failed call's status says about whether its request was applied. The fabric writes it;
//! the SDK, `weft-jepsen`, the CLI (metadata names, limits) and the tests read it from here,
//! so they cannot disagree.
//!
//! | status | [`Outcome`] | meaning |
//! |---|---|---|
//! | `UNAVAILABLE` with `weft-not-applied: true` | [`Outcome::NotApplied`] | the node says the request took no effect (no leader, not the leader, no quorum for a read, shutting down) |
//! | `UNAVAILABLE` "tcp connect error", "Connection refused", "error trying to connect" | [`Outcome::NotApplied`] | the connection never opened: the request never left the caller |
//! | `RESOURCE_EXHAUSTED` | [`Outcome::Overloaded`] | a limit refused it before it was proposed (a full queue, `max_executions`, `max_waiters`) |
//! | `INVALID_ARGUMENT`, `FAILED_PRECONDITION`, `ALREADY_EXISTS`, `NOT_FOUND`, `PERMISSION_DENIED`, `UNAUTHENTICATED`, `UNIMPLEMENTED` | [`Outcome::Refused`] | the fabric's rules refused it; nothing changed, and the same request gets the same answer |
//! | anything else (`UNAVAILABLE` without the header, `DEADLINE_EXCEEDED`, `CANCELLED`, `UNKNOWN`, `ABORTED`, `INTERNAL`, `DATA_LOSS`, `OUT_OF_RANGE`) | [`Outcome::Unknown`] | it may or may not have been applied |
//!
//! `OUT_OF_RANGE` is a message over a size limit: a request refused before it was served, or a
//! reply (an execution's result, say) too large to send or to read after the call ran; the
//! code alone does not say which.
//!
//! A caller may send a request again anywhere after `NotApplied` and (later) after
//! `Overloaded`; after `Unknown` only when sending it twice is harmless (a read, or a create
//! that carries an idempotency key).

use tonic::Status;
use tonic::metadata::MetadataValue;

/// Metadata on an `UNAVAILABLE` status: `true` when the request was certainly not applied.
pub const NOT_APPLIED_HEADER: &str = "weft-not-applied";
/// Metadata on an `UNAVAILABLE` "not the leader" status: the leader's `HOST:PORT`, when known.
pub const LEADER_HEADER: &str = "weft-leader";
/// Metadata on the status of a wait that ran out (`DEADLINE_EXCEEDED`), or of a call whose
/// execution was created but cannot be answered for: the execution, which goes on.
pub const EXECUTION_HEADER: &str = "weft-execution-id";

/// Most deliveries a retry policy may ask for (`RetryPolicy.max_attempts`).
pub const MAX_RETRY_ATTEMPTS: u32 = 100;
/// Longest back-off a retry policy may ask for (`RetryPolicy.max_backoff_ms`): one day.
pub const MAX_BACKOFF_MS: u64 = 86_400_000;

/// What a failed call's status says about its request (see the module docs for the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Certainly not applied; the same request may be sent again, to any node.
    NotApplied,
    /// Refused at a limit before it was proposed; not applied, and may succeed later.
    Overloaded,
    /// Refused by the fabric's rules; not applied, and sending it again changes nothing.
    Refused,
    /// It may or may not have been applied.
    Unknown,
}

impl Outcome {
    /// The outcome `status` reports.
    pub fn of(status: &Status) -> Self {
        use tonic::Code;
        match status.code() {
            Code::Unavailable if is_not_applied(status) || never_sent(status) => Outcome::NotApplied,
            Code::ResourceExhausted => Outcome::Overloaded,
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::NotFound
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unimplemented => Outcome::Refused,
            _ => Outcome::Unknown,
        }
    }

    /// Whether the request certainly took no effect.
    pub fn is_definite(self) -> bool {
        self != Outcome::Unknown
    }
}

/// Whether the node marked `status` as certainly not applied (`weft-not-applied: true`).
pub fn is_not_applied(status: &Status) -> bool {
    status.metadata().get(NOT_APPLIED_HEADER).is_some_and(|v| v == "true")
}

/// Whether `status` is a failure to connect: the request never left the caller.
pub fn never_sent(status: &Status) -> bool {
    const CONNECT_FAILURES: [&str; 3] =
        ["tcp connect error", "Connection refused", "error trying to connect"];
    status.code() == tonic::Code::Unavailable && CONNECT_FAILURES.iter().any(|m| status.message().contains(m))
}

/// An `UNAVAILABLE` status marked as certainly not applied, naming the leader when known.
pub fn not_applied(message: impl Into<String>, leader: Option<&str>) -> Status {
    let mut status = Status::unavailable(message);
    let md = status.metadata_mut();
    md.insert(NOT_APPLIED_HEADER, MetadataValue::from_static("true"));
    if let Some(leader) = leader.and_then(|l| l.parse().ok()) {
        md.insert(LEADER_HEADER, leader);
    }
    status
}

/// `status` naming the execution it is about.
pub fn with_execution(mut status: Status, id: u64) -> Status {
    status.metadata_mut().insert(EXECUTION_HEADER, MetadataValue::from(id));
    status
}

/// The execution a status names, if any.
pub fn execution_of(status: &Status) -> Option<u64> {
    status.metadata().get(EXECUTION_HEADER)?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn outcomes_follow_the_table() {
        assert_eq!(Outcome::of(&not_applied("no leader", None)), Outcome::NotApplied);
        for connect in [
            "tcp connect error: Connection refused (os error 111)",
            "error trying to connect: dns error",
            "transport error: Connection refused",
        ] {
            assert_eq!(Outcome::of(&Status::unavailable(connect)), Outcome::NotApplied, "{connect}");
        }
        assert_eq!(Outcome::of(&Status::unavailable("outcome unknown: timeout")), Outcome::Unknown);
        assert_eq!(Outcome::of(&Status::resource_exhausted("queue full")), Outcome::Overloaded);
        for code in [Code::InvalidArgument, Code::FailedPrecondition, Code::AlreadyExists, Code::NotFound] {
            assert_eq!(Outcome::of(&Status::new(code, "no")), Outcome::Refused, "{code:?}");
        }
        for code in [
            Code::DeadlineExceeded,
            Code::Cancelled,
            Code::Unknown,
            Code::Internal,
            Code::DataLoss,
            Code::OutOfRange,
        ] {
            assert_eq!(Outcome::of(&Status::new(code, "?")), Outcome::Unknown, "{code:?}");
            assert!(!Outcome::of(&Status::new(code, "?")).is_definite());
        }
        // The header counts only on UNAVAILABLE, and only as "true".
        let mut odd = Status::deadline_exceeded("late");
        odd.metadata_mut().insert(NOT_APPLIED_HEADER, MetadataValue::from_static("true"));
        assert_eq!(Outcome::of(&odd), Outcome::Unknown);
        let mut no = Status::unavailable("x");
        no.metadata_mut().insert(NOT_APPLIED_HEADER, MetadataValue::from_static("false"));
        assert_eq!(Outcome::of(&no), Outcome::Unknown);
    }

    #[test]
    fn headers_round_trip() {
        let s = not_applied("not the leader", Some("127.0.0.1:7401"));
        assert!(is_not_applied(&s));
        assert_eq!(s.metadata().get(LEADER_HEADER).unwrap(), "127.0.0.1:7401");
        let s = with_execution(Status::deadline_exceeded("still pending"), 42);
        assert_eq!(execution_of(&s), Some(42));
        assert_eq!(execution_of(&Status::deadline_exceeded("x")), None);
    }
}

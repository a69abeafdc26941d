//! Why a call failed, and the one place that becomes a `tonic::Status`.

use weft_proto::wire;

use crate::grid;

/// How the message of a status that says "certainly not applied" starts.
pub(crate) const NOT_APPLIED_PREFIX: &str = "not applied: ";
/// How the message of a status that says "outcome unknown" starts.
pub(crate) const UNKNOWN_PREFIX: &str = "outcome unknown (the write may or may not have been applied): ";

/// Why a call failed. Clone, so that one read-index round's error reaches every read of it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The caller's request was refused by the grid's rules. Nothing changed.
    #[error(transparent)]
    Grid(#[from] grid::Error),
    /// This node is not the leader. Nothing changed; retry at `leader`.
    #[error("this node is not the leader")]
    NotLeader { leader: Option<String> },
    /// The request could not be served right now (no leader, shutting down). Nothing changed.
    #[error("{0}")]
    Unavailable(String),
    /// Too many writes are waiting on this node. Nothing changed.
    #[error("{0}")]
    Overloaded(String),
    /// What a read asked for does not exist. Nothing changed.
    #[error("{0}")]
    NotFound(String),
    /// The write was handed to Raft but its outcome is unknown (timeout, leader lost,
    /// shutdown). It may or may not be applied.
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    /// The caller's token does not allow the request (`crate::auth`). Nothing changed.
    #[error(transparent)]
    Denied(#[from] crate::auth::Denied),
}

impl Error {
    /// The one place domain errors become gRPC statuses (see [`weft_proto::wire`] for what
    /// a caller reads from them).
    pub fn into_status(self) -> tonic::Status {
        use grid::Error as G;
        match self {
            Error::Grid(
                e @ (G::InvalidNamespace { .. }
                | G::InvalidKey { .. }
                | G::ValueTooLarge { .. }
                | G::InvalidPageSize { .. }
                | G::InvalidName { .. }
                | G::InvalidPayload { .. }
                | G::PayloadTooLarge { .. }
                | G::InvalidExecution { .. }
                | G::InvalidSession { .. }
                | G::InvalidCompletion { .. }
                | G::InvalidStream { .. }
                | G::InvalidItem { .. }
                | G::InvalidFilter { .. }
                | G::InvalidCursor { .. }
                | G::InvalidLease { .. }
                | G::InvalidToken { .. }
                | G::InvalidSchedule { .. }),
            ) => tonic::Status::invalid_argument(e.to_string()),
            Error::Grid(
                e @ (G::VersionMismatch { .. }
                | G::ExecutionFinished { .. }
                | G::StaleLease { .. }
                | G::InstanceStopping { .. }
                | G::InstanceClaimed { .. }
                | G::IdempotencyKeyReused { .. }
                | G::StreamClosed { .. }
                | G::LastSeqMismatch { .. }
                | G::ProducerRefused { .. }
                | G::StaleAck { .. }
                | G::LeaseHeld { .. }
                | G::LeaseAwaited { .. }
                | G::LeaseLost { .. }
                | G::DelegateNotServed { .. }),
            ) => tonic::Status::failed_precondition(e.to_string()),
            Error::Grid(
                e @ (G::AlreadyExists { .. }
                | G::InstanceExists { .. }
                | G::StreamExists { .. }
                | G::CursorExists { .. }
                | G::TokenExists { .. }
                | G::ScheduleExists { .. }),
            ) => tonic::Status::already_exists(e.to_string()),
            Error::Grid(
                e @ (G::UnknownExecution { .. }
                | G::UnknownSession { .. }
                | G::UnknownInstance { .. }
                | G::UnknownStream { .. }
                | G::UnknownCursor { .. }
                | G::UnknownListener { .. }
                | G::StreamReplaced { .. }
                | G::UnknownToken { .. }
                | G::UnknownSchedule { .. }),
            ) => tonic::Status::not_found(e.to_string()),
            Error::Grid(e @ (G::TooMany { .. } | G::StreamLimit { .. })) => {
                tonic::Status::resource_exhausted(e.to_string())
            }
            Error::NotLeader { leader } => {
                let message = match &leader {
                    Some(addr) => {
                        format!("{NOT_APPLIED_PREFIX}this node is not the leader; the leader is at {addr}")
                    }
                    None => format!("{NOT_APPLIED_PREFIX}this node is not the leader and no leader is known"),
                };
                wire::not_applied(message, leader.as_deref())
            }
            Error::Unavailable(m) => wire::not_applied(format!("{NOT_APPLIED_PREFIX}{m}"), None),
            Error::Overloaded(m) => tonic::Status::resource_exhausted(m),
            Error::NotFound(m) => tonic::Status::not_found(m),
            Error::Indeterminate(m) => tonic::Status::unavailable(format!("{UNKNOWN_PREFIX}{m}")),
            Error::Denied(d) => d.into(),
        }
    }
}

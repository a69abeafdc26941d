//! What can go wrong when calling the fabric, and what a handler reports.

use std::fmt;

/// Why a call to the fabric did not give a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The fabric refused the request: bad input, a missing execution or instance, a stale
    /// lease, a full queue. Nothing changed. `code` is the gRPC status code.
    #[error("refused ({code:?}): {message}")]
    Refused {
        /// The gRPC status code.
        code: tonic::Code,
        /// The fabric's message, naming the problem.
        message: String,
    },
    /// No node answered in time, on any endpoint. Nothing changed.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The fabric is at a limit (a full write queue, `max_executions`, `max_sessions`,
    /// `max_waiters`) and did not take the request; it was retried until the client's
    /// `retry_for` ran out. Nothing changed.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// A write was sent but its outcome is unknown (it may or may not have been applied).
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The execution ran and failed: its handler returned an error, its deadline passed, or
    /// it could not be delivered.
    #[error("execution {execution} failed ({kind}): {message}")]
    Failed {
        /// The execution.
        execution: u64,
        /// `handler`, `deadline`, `undeliverable` or `instance`.
        kind: String,
        /// What happened.
        message: String,
    },
    /// The execution was cancelled.
    #[error("execution {execution} was cancelled: {message}")]
    Cancelled {
        /// The execution.
        execution: u64,
        /// Why.
        message: String,
    },
    /// The wait ran out before the execution finished; it goes on, and
    /// [`crate::Client::wait`] can wait for it again.
    #[error("execution {execution} did not finish in time; it goes on")]
    Timeout {
        /// The execution that goes on.
        execution: u64,
    },
    /// The stream was closed with an error (its producer or generator failed): a listener
    /// yields this after the last item, then ends.
    #[error("stream '{stream}' was closed with an error: {message}")]
    StreamFailed {
        /// The stream.
        stream: String,
        /// The error it was closed with.
        message: String,
    },
    /// The stream was deleted (perhaps created again since, as another stream), or the
    /// cursor the listener was on was deleted or expired: a listener yields this, then ends.
    #[error("stream '{stream}' is gone: {message}")]
    StreamDeleted {
        /// The stream.
        stream: String,
        /// What the fabric said.
        message: String,
    },
    /// Arguments or a result could not be encoded or decoded.
    #[error("codec: {0}")]
    Codec(String),
    /// A TLS connection to a node could not be made because of how TLS is set up (the node's
    /// certificate is not signed by the CA the client trusts, names another host, the node
    /// refused the client's certificate, or the node requires TLS and the client has none).
    /// Not retried: the message says what to change. Nothing changed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The node did not accept this client's credentials: no token was given to a node with
    /// auth on, or the token is malformed, unknown, expired or revoked (see
    /// [`Token`](crate::Token)). The message names what is missing. Not retried, on this node
    /// or another. Nothing changed.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The token is valid but its role or scopes do not allow this request; the message
    /// names the token, what it may not do and what would allow it. Not retried. Nothing
    /// changed.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The SDK was used in a way that cannot work (for example instance state outside an
    /// instance execution, or a worker with no agents).
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// What a failed call's status means for the caller, by the wire contract's one table
    /// ([`weft_proto::wire::Outcome`]).
    pub(crate) fn from_status(status: &tonic::Status) -> Self {
        use weft_proto::wire::Outcome;
        if let Some(problem) = crate::tls::setup_problem(status) {
            return Error::Tls(problem);
        }
        let message = status.message().to_owned();
        match status.code() {
            tonic::Code::Unauthenticated => return Error::Unauthenticated(message),
            tonic::Code::PermissionDenied => {
                // The fabric's message already says "permission denied: ...".
                let message =
                    message.strip_prefix("permission denied: ").map_or(message.clone(), str::to_owned);
                return Error::PermissionDenied(message);
            }
            _ => {}
        }
        match Outcome::of(status) {
            Outcome::NotApplied => Error::Unavailable(message),
            Outcome::Overloaded => Error::Overloaded(message),
            Outcome::Refused => Error::Refused { code: status.code(), message },
            Outcome::Unknown => Error::Unknown(message),
        }
    }

    /// Whether the fabric refused the request by its rules ([`Error::Refused`],
    /// [`Error::Unauthenticated`], [`Error::PermissionDenied`]): nothing changed, and the same
    /// request, on this node or another, gets the same answer.
    ///
    /// ```
    /// use weft_agent::Error;
    /// assert!(Error::PermissionDenied("token t1 may not".into()).is_refusal());
    /// assert!(!Error::Unavailable("no leader".into()).is_refusal());
    /// ```
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::Refused { .. } | Error::Unauthenticated(_) | Error::PermissionDenied(_))
    }
}

/// An error a handler returns to the fabric. Any error type that implements `Display`
/// converts into a retryable one; use [`Fail::permanent`] for an error that no retry
/// policy should try again.
///
/// ```
/// use weft_agent::Fail;
/// let e = Fail::permanent("the order does not exist");
/// assert!(!e.is_retryable());
/// assert!(Fail::new("timeout talking to the bank").is_retryable());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fail {
    message: String,
    retryable: bool,
}

impl Fail {
    /// A retryable failure (retried if the execution has a retry policy).
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: true }
    }

    /// A failure that is final whatever the retry policy says.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: false }
    }

    /// Whether a retry policy may try again.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Fail {}

impl From<Error> for Fail {
    /// An SDK error inside a handler (a failed child call, a state read) becomes a
    /// retryable handler failure, unless the child itself failed for good.
    fn from(e: Error) -> Self {
        let retryable = !e.is_refusal()
            && !matches!(
                e,
                Error::Codec(_) | Error::Usage(_) | Error::StreamFailed { .. } | Error::StreamDeleted { .. }
            );
        Self { message: e.to_string(), retryable }
    }
}

/// What a handler's error becomes on the wire: a message and whether it may be retried.
pub(crate) fn describe<E: fmt::Display + 'static>(e: &E) -> (String, bool) {
    match (e as &dyn std::any::Any).downcast_ref::<Fail>() {
        Some(fail) => (fail.message.clone(), fail.retryable),
        None => (e.to_string(), true),
    }
}

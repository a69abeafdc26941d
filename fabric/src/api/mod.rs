//! The gRPC services agents and tools call, and the routing every call goes through.
//!
//! Any node accepts any call. A write or a linearizable read that lands on a follower is
//! forwarded once to the leader; while there is no leader (an election) the node waits, up to
//! `request_timeout_ms`, and retries what is safe to retry:
//!
//! ```text
//!   client ──► node ──leader is me?──► proposer ──► raft.client_write(Batch) ──► apply
//!                 │ no
//!                 └──forward (metadata weft-forwarded)──► leader node (never forwards again)
//! ```
//!
//! Domain errors become `tonic::Status` in one place, [`Error::into_status`]. The State service
//! forwards whole requests; the execution and instance services route single grid commands
//! and read indexes through [`routing`].

pub mod cluster_service;
pub mod convert;
pub mod execution_service;
pub mod forward_service;
pub mod instance_service;
pub mod proposer;
pub mod routing;
pub mod state_service;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};

use crate::NodeId;
use crate::grid;
use crate::raft::Raft;
use crate::raft::state_machine;

/// Metadata a node sets on a request it forwards, so the receiver never forwards it again.
pub const FORWARDED_HEADER: &str = "weft-forwarded";
/// Metadata on an UNAVAILABLE status: the leader's address, when known.
pub const LEADER_HEADER: &str = "weft-leader";
/// Metadata on an UNAVAILABLE status: "true" when the request was certainly not applied, so
/// the caller may retry it anywhere. Without it a failed write's outcome is unknown.
pub const NOT_APPLIED_HEADER: &str = "weft-not-applied";

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
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
    /// The write was handed to Raft but its outcome is unknown (timeout, leader lost,
    /// shutdown). It may or may not be applied.
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
}

impl Error {
    /// The one place domain errors become gRPC statuses.
    pub fn into_status(self) -> tonic::Status {
        use grid::Error as G;
        let not_applied = |message: String, leader: Option<String>| {
            let mut status = tonic::Status::unavailable(message);
            let md = status.metadata_mut();
            md.insert(NOT_APPLIED_HEADER, "true".parse().expect("ascii"));
            if let Some(leader) = leader.and_then(|l| l.parse().ok()) {
                md.insert(LEADER_HEADER, leader);
            }
            status
        };
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
                | G::InvalidCompletion { .. }),
            ) => tonic::Status::invalid_argument(e.to_string()),
            Error::Grid(
                e @ (G::VersionMismatch { .. }
                | G::ExecutionFinished { .. }
                | G::StaleLease { .. }
                | G::InstanceStopping { .. }
                | G::InstanceClaimed { .. }
                | G::IdempotencyKeyReused { .. }),
            ) => tonic::Status::failed_precondition(e.to_string()),
            Error::Grid(e @ (G::AlreadyExists { .. } | G::InstanceExists { .. })) => {
                tonic::Status::already_exists(e.to_string())
            }
            Error::Grid(
                e @ (G::UnknownExecution { .. } | G::UnknownSession { .. } | G::UnknownInstance { .. }),
            ) => tonic::Status::not_found(e.to_string()),
            Error::Grid(e @ G::TooMany { .. }) => tonic::Status::resource_exhausted(e.to_string()),
            Error::NotLeader { leader } => {
                let message = match &leader {
                    Some(addr) => {
                        format!("not applied: this node is not the leader; the leader is at {addr}")
                    }
                    None => "not applied: this node is not the leader and no leader is known".to_owned(),
                };
                not_applied(message, leader)
            }
            Error::Unavailable(m) => not_applied(format!("not applied: {m}"), None),
            Error::Overloaded(m) => tonic::Status::resource_exhausted(m),
            Error::Indeterminate(m) => tonic::Status::unavailable(format!(
                "outcome unknown (the write may or may not have been applied): {m}"
            )),
        }
    }
}

/// Where the leader is, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leader {
    /// This node leads.
    Local,
    /// Another node leads, at this address.
    Remote { id: NodeId, addr: String },
    /// No leader is known (an election is under way or the cluster has no quorum).
    Unknown,
}

/// Counters the API keeps for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Writes accepted by this node (local or forwarded).
    pub writes: AtomicU64,
    /// Reads served by this node.
    pub reads: AtomicU64,
    /// Requests this node forwarded to the leader.
    pub forwarded: AtomicU64,
    /// Requests refused with an error status.
    pub errors: AtomicU64,
}

/// What every service needs, cheap to clone.
#[derive(Clone)]
pub struct Context {
    /// This node's id.
    pub node_id: NodeId,
    /// This node's cluster name.
    pub cluster: String,
    /// The local Raft node.
    pub raft: Raft,
    /// Read access to the applied grid.
    pub applied: state_machine::Handle,
    /// The write batcher (used only while this node leads).
    pub proposer: proposer::Handle,
    /// Limits on commands and queries.
    pub limits: grid::Limits,
    /// The deadline of one request, including finding the leader.
    pub request_timeout: Duration,
    /// Largest gRPC message for forwarded calls.
    pub max_message_bytes: usize,
    /// API counters.
    pub counters: Arc<Counters>,
    /// Gossip view and join state.
    pub membership: crate::membership::Handle,
    /// Where applied entries' events arrive: assignments to push, results to wait for.
    pub hub: crate::watch::Hub,
    /// Settings of executions and sessions.
    pub work: WorkOptions,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

/// Settings of executions and sessions, from the node's configuration.
#[derive(Debug, Clone, Copy)]
pub struct WorkOptions {
    /// How long a finished execution is kept.
    pub execution_retention_ms: u64,
    /// Deliveries before an execution fails as undeliverable.
    pub max_deliveries: u32,
    /// Most executions stored.
    pub max_executions: usize,
    /// Most live sessions.
    pub max_sessions: usize,
    /// Most executions one session may hold.
    pub max_session_capacity: u32,
    /// A silent session is closed after this long.
    pub session_timeout: Duration,
    /// Longest wait for a result in one call.
    pub max_wait: Duration,
    /// Most callers waiting on this node at once.
    pub max_waiters: usize,
}

/// Most distinct peer addresses whose channels are cached for forwarding.
const MAX_CACHED_CHANNELS: usize = 64;

impl Context {
    /// A context for the services of one node.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node_id: NodeId,
        cluster: String,
        raft: Raft,
        applied: state_machine::Handle,
        proposer: proposer::Handle,
        limits: grid::Limits,
        request_timeout: Duration,
        max_message_bytes: usize,
        membership: crate::membership::Handle,
        hub: crate::watch::Hub,
        work: WorkOptions,
    ) -> Self {
        Self {
            node_id,
            cluster,
            raft,
            applied,
            proposer,
            limits,
            request_timeout,
            max_message_bytes,
            counters: Arc::default(),
            membership,
            hub,
            work,
            channels: Arc::default(),
        }
    }

    /// Where the leader is.
    pub fn leader(&self) -> Leader {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        match m.current_leader {
            Some(id) if id == self.node_id => Leader::Local,
            Some(id) => match m.membership_config.membership().get_node(&id) {
                Some(node) => Leader::Remote { id, addr: node.addr.clone() },
                None => Leader::Unknown,
            },
            None => Leader::Unknown,
        }
    }

    /// A shared channel to a peer's API, for forwarding.
    pub fn channel(&self, addr: &str) -> Result<Channel, Error> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        if channels.len() >= MAX_CACHED_CHANNELS {
            channels.clear();
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Error::Unavailable(format!("bad leader address '{addr}': {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }

    /// Waits until this node knows a leader, or `deadline` passes.
    pub async fn wait_for_leader(&self, deadline: Instant) -> Leader {
        let mut metrics = self.raft.metrics();
        loop {
            let leader = self.leader();
            if leader != Leader::Unknown {
                return leader;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Leader::Unknown;
            };
            // Wake on any metrics change (a new leader), but poll too: the leader's address
            // may arrive with a later membership entry.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), metrics.changed()).await;
        }
    }

    /// Resolves with the new leader's id once this node follows a leader other than `old`.
    pub async fn leader_moved_from(&self, old: NodeId) -> NodeId {
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(new) = metrics.borrow_and_update().current_leader
                && new != old
            {
                return new;
            }
            if metrics.changed().await.is_err() {
                // Raft stopped: never resolve; the request's own deadline ends the wait.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Confirms this node still leads with a quorum and waits until its state machine has
    /// applied everything committed before now (read-index), so a local read is linearizable.
    pub async fn read_index(&self) -> Result<(), Error> {
        use openraft::error::{CheckIsLeaderError, RaftError};
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(Error::NotLeader { leader: f.leader_node.map(|n| n.addr) })
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => {
                Err(Error::Unavailable(format!("leader cannot reach a quorum: {q}")))
            }
            Err(RaftError::Fatal(f)) => Err(Error::Unavailable(format!("raft stopped: {f}"))),
        }
    }

    /// Counts an outcome for `/metrics`.
    pub fn count<T>(&self, result: &Result<T, tonic::Status>) {
        if result.is_err() {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Pause between attempts while a leader is being elected.
pub const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// A failure to connect: the request never left this node.
pub fn never_sent(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
        && (status.message().contains("tcp connect error")
            || status.message().contains("Connection refused")
            || status.message().contains("error trying to connect"))
}

/// Whether a status from a forwarded call says the request was certainly not applied.
pub fn is_not_applied(status: &tonic::Status) -> bool {
    status.metadata().get(NOT_APPLIED_HEADER).is_some_and(|v| v == "true")
}

/// Whether a request arrived forwarded from another node.
pub fn is_forwarded<T>(request: &tonic::Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_HEADER)
}

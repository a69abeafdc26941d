//! [`Context`]: what every service of a node needs, cheap to clone; where the leader is.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::Channel;

use super::{Error, proposer, read_rounds};
use crate::NodeId;
use crate::config::{StreamOptions, WorkOptions};
use crate::grid;
use crate::raft::Raft;
use crate::raft::state_machine;

/// Pause between attempts while a leader is being elected.
pub const RETRY_PAUSE: Duration = Duration::from_millis(25);

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
    /// Writes received by this node from its callers (a hand-over from a follower is not
    /// counted again on the leader).
    pub writes: AtomicU64,
    /// Reads served by this node.
    pub reads: AtomicU64,
    /// Hand-overs to the leader: `Forward/Propose` and `Forward/ReadIndex` calls, retries
    /// included (one `Forward/ReadIndex` call serves every read waiting when it is sent).
    pub forwarded: AtomicU64,
    /// Read-index rounds this node ran as leader: one quorum confirmation each, shared by
    /// every linearizable read (local or forwarded) waiting when it started.
    pub read_rounds: AtomicU64,
    /// Requests refused with an error status.
    pub errors: AtomicU64,
}

/// Where linearizable reads wait for a read index, one round for many reads
/// ([`read_rounds`]).
#[derive(Clone)]
pub struct ReadRounds {
    /// Rounds this node runs as leader: a quorum confirmation each
    /// ([`super::forward::confirm_read_index`]). Local reads and `Forward/ReadIndex` calls
    /// from followers share them.
    pub leader: read_rounds::Handle<u64>,
    /// Rounds this node runs as follower: one `Forward/ReadIndex` call to the leader each
    /// ([`super::forward::ask_leader_read_index`]).
    pub forwarded: read_rounds::Handle<u64>,
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
    /// Where linearizable reads wait for a read index.
    pub reads: ReadRounds,
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
    /// Settings of streams and listeners.
    pub streams: StreamOptions,
    /// The node's Prometheus metrics.
    pub metrics: Arc<crate::metrics::Registry>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
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
        reads: ReadRounds,
        limits: grid::Limits,
        request_timeout: Duration,
        max_message_bytes: usize,
        membership: crate::membership::Handle,
        hub: crate::watch::Hub,
        work: WorkOptions,
        streams: StreamOptions,
        metrics: Arc<crate::metrics::Registry>,
    ) -> Self {
        Self {
            node_id,
            cluster,
            raft,
            applied,
            proposer,
            reads,
            limits,
            request_timeout,
            max_message_bytes,
            counters: Arc::default(),
            membership,
            hub,
            work,
            streams,
            metrics,
            channels: Arc::default(),
        }
    }

    /// When `caller`'s token stops being valid on this node: every long call (session, wait,
    /// listener, watch, tail) selects on it and ends then. Never, for an open caller.
    pub fn lapse(&self, caller: &crate::auth::Caller) -> crate::auth::Lapse {
        crate::auth::Lapse::new(caller, &self.hub, &self.applied, &self.metrics)
    }

    /// Where the leader is.
    pub fn leader(&self) -> Leader {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        match m.current_leader {
            Some(id) if id == self.node_id => Leader::Local,
            Some(id) => match m.membership_config.membership().get_node(&id) {
                Some(node) => Leader::Remote { id, addr: self.membership.addresses.resolve(id, &node.addr) },
                None => Leader::Unknown,
            },
            None => Leader::Unknown,
        }
    }

    /// Where a client should go for leader `id`, known at `node` in the membership: its
    /// current address when it moved.
    pub fn leader_hint(&self, id: Option<NodeId>, node: Option<openraft::BasicNode>) -> Option<String> {
        let node = node?;
        Some(match id {
            Some(id) => self.membership.addresses.resolve(id, &node.addr),
            None => node.addr,
        })
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
        let channel = self
            .membership
            .dialer
            .channel(addr, |e| e.connect_timeout(Duration::from_secs(1)).tcp_nodelay(true))
            .map_err(|e| Error::Unavailable(format!("bad leader address '{addr}': {e}")))?;
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

    /// Refuses a create once the cluster stores `max_executions` (checked at proposal: the
    /// grid's `apply` does not, so replicas with other settings apply the same log alike).
    pub fn check_room(&self) -> Result<(), Error> {
        let stored = self.applied.read(|a| a.grid.work_totals().executions);
        if stored >= self.work.max_executions {
            return Err(Error::Grid(grid::Error::TooMany {
                what: "executions".into(),
                count: stored,
                limit: self.work.max_executions,
                setting: "max_executions".into(),
            }));
        }
        Ok(())
    }

    /// Counts an outcome for `/metrics`.
    pub fn count<T>(&self, result: &Result<T, tonic::Status>) {
        if result.is_err() {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

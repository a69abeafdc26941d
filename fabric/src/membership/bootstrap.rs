//! Forming a new cluster from gossip (`--bootstrap-expect N`), or joining an existing one.
//!
//! While a node holds no Raft log it looks at gossip every [`CHECK_INTERVAL`]:
//!
//! ```text
//!   seen < N nodes ───────────────────────────────► wait ("waiting for k more nodes")
//!   any seen node already in a cluster ───────────► wait for its leader to add us (learner)
//!   lowest id seen is not me ─────────────────────► wait for that node to form the cluster
//!   I am the lowest: choose the N lowest ids ─────► PrepareBootstrap to each of them
//!        every one promised (to me, and no other) ─► raft.initialize(those N as voters)
//!        any refused ──────────────────────────────► withdraw, back off, look again
//! ```
//!
//! A node promises one bootstrapper at a time ([`PROMISE_TTL`]) and a bootstrapper promises
//! nobody else, so two bootstrappers can never both gather the same node: two clusters could
//! only form from two disjoint groups of N nodes that never saw each other.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::cluster_client::ClusterClient;

use super::gossip;
use crate::NodeId;
use crate::raft::Raft;

/// How often an unformed node looks at gossip.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(300);
/// How long a promise to a bootstrapper holds.
pub const PROMISE_TTL: Duration = Duration::from_secs(10);
/// How long a peer has to answer a status or promise request.
const PEER_TIMEOUT: Duration = Duration::from_millis(800);
/// With seeds configured, a node with `--bootstrap-expect 1` waits this long for a seed to
/// answer before it forms a cluster of its own (a seed may lead to an existing cluster).
pub const LONE_BOOTSTRAP_WAIT: Duration = Duration::from_secs(3);

/// How this node joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `--initial-members`: the static list forms the cluster.
    Static,
    /// Form a cluster once this many nodes see each other (or join one that exists).
    Expect(usize),
    /// Only join an existing cluster (seeds but no `--bootstrap-expect`).
    JoinOnly,
}

/// Bootstrap state shared by the bootstrap task and the `PrepareBootstrap` RPC.
#[derive(Debug)]
pub struct State {
    me: NodeId,
    cluster: String,
    mode: Mode,
    has_seeds: bool,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The bootstrapper this node promised to, until when.
    promise: Option<(NodeId, Instant)>,
    /// Where this node stands, in words.
    join_state: String,
}

impl State {
    /// The state of node `me` of `cluster`.
    pub fn new(me: NodeId, cluster: String, mode: Mode, has_seeds: bool) -> Arc<Self> {
        let join_state = match mode {
            Mode::Static => "static membership".to_owned(),
            _ => "starting".to_owned(),
        };
        Arc::new(Self {
            me,
            cluster,
            mode,
            has_seeds,
            inner: Mutex::new(Inner { promise: None, join_state }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The number of nodes this node waits for to form a cluster (0: it never forms one).
    pub fn expect(&self) -> u32 {
        match self.mode {
            Mode::Expect(n) => n as u32,
            Mode::Static | Mode::JoinOnly => 0,
        }
    }

    /// Where this node stands in joining a cluster, in words.
    pub fn join_state(&self) -> String {
        self.lock().join_state.clone()
    }

    fn set_join_state(&self, words: String) {
        let mut inner = self.lock();
        if inner.join_state != words {
            tracing::info!(node_id = self.me, state = %words, "membership: join state");
            inner.join_state = words;
        }
    }

    /// Answers a bootstrapper's request to promise to join its new cluster.
    pub fn prepare(&self, req: &pb::PrepareBootstrapRequest, initialized: bool) -> Result<(), String> {
        if req.cluster != self.cluster {
            return Err(format!("this node is of cluster '{}', not '{}'", self.cluster, req.cluster));
        }
        if initialized {
            return Err("this node already belongs to a cluster".into());
        }
        if self.mode == Mode::Static {
            return Err("this node forms its cluster from a static member list".into());
        }
        if self.mode == Mode::JoinOnly {
            return Err("this node only joins existing clusters (no --bootstrap-expect)".into());
        }
        if !req.members.iter().any(|m| m.id == self.me) {
            return Err(format!("node {} is not among the proposed members", self.me));
        }
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.promise {
            Some((other, until)) if other != req.bootstrapper_id && until > now => {
                Err(format!("promised to node {other} already"))
            }
            _ => {
                inner.promise = Some((req.bootstrapper_id, now + PROMISE_TTL));
                Ok(())
            }
        }
    }

    /// Takes the promise for ourselves (we are bootstrapping); false if promised to another.
    fn claim(&self) -> bool {
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.promise {
            Some((other, until)) if other != self.me && until > now => false,
            _ => {
                inner.promise = Some((self.me, now + PROMISE_TTL));
                true
            }
        }
    }

    fn withdraw(&self) {
        let mut inner = self.lock();
        if inner.promise.is_some_and(|(id, _)| id == self.me) {
            inner.promise = None;
        }
    }

    fn promised_to_other(&self) -> Option<NodeId> {
        let inner = self.lock();
        inner.promise.filter(|(id, until)| *id != self.me && *until > Instant::now()).map(|(id, _)| id)
    }
}

/// Whether this node's Raft holds a log: it belongs (or belonged) to a cluster.
pub fn is_initialized(raft: &Raft) -> bool {
    initialized_in(&raft.metrics().borrow())
}

/// [`is_initialized`] on metrics already borrowed.
///
/// A node that has voted counts too (as in openraft's own `is_initialized`): it took part in
/// some cluster's election and must not help form another.
pub fn initialized_in(m: &openraft::RaftMetrics<NodeId, openraft::BasicNode>) -> bool {
    m.last_log_index.is_some()
        || m.current_leader.is_some()
        || m.vote != openraft::Vote::default()
        || m.membership_config.membership().nodes().next().is_some()
}

/// Runs until this node belongs to a cluster (formed by it or another) or `shutdown`.
pub async fn run(
    state: Arc<State>,
    raft: Raft,
    gossip: gossip::Handle,
    dialer: crate::tls::Dialer,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
    let mut backoff = CHECK_INTERVAL;
    loop {
        if is_initialized(&raft) {
            state.set_join_state("member".into());
            return;
        }
        let words = step(&state, &raft, &gossip, &dialer, started).await;
        match words {
            Ok(()) => {
                state.set_join_state("member (formed the cluster)".into());
                return;
            }
            Err(words) => state.set_join_state(words),
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = if state.promised_to_other().is_some() { CHECK_INTERVAL * 2 } else { CHECK_INTERVAL };
    }
}

/// One look: forms the cluster (Ok) or says why not yet (Err, in words).
async fn step(
    state: &State,
    raft: &Raft,
    gossip: &gossip::Handle,
    dialer: &crate::tls::Dialer,
    started: Instant,
) -> Result<(), String> {
    let view = gossip.view();
    if let Some(since) = view.seeds_silent_since
        && view.members.len() <= 1
    {
        let waited = since.elapsed();
        let lone_ok = state.mode == Mode::Expect(1) && started.elapsed() >= LONE_BOOTSTRAP_WAIT;
        if !lone_ok {
            return Err(format!("waiting for seeds to answer (none has for {} s)", waited.as_secs()));
        }
    }
    let up: Vec<(NodeId, SocketAddr)> = view.up().collect();
    // Anyone already in a cluster? Then we join it: its leader adds us as a learner. Who may
    // found a new one? Only nodes that expect to (join-only nodes never initialize).
    let statuses = futures::future::join_all(
        up.iter()
            .filter(|(id, _)| *id != state.me)
            .map(|(_, addr)| super::peer_status(dialer, *addr, PEER_TIMEOUT)),
    )
    .await;
    let mut founders: Vec<(NodeId, SocketAddr)> = Vec::new();
    if state.expect() > 0
        && let Some(m) = view.members.get(&state.me)
    {
        founders.push((state.me, m.addr));
    }
    let mut unanswered = 0;
    for ((id, addr), status) in up.iter().filter(|(id, _)| *id != state.me).zip(statuses) {
        match status {
            Some(s) if s.initialized => {
                return Err(format!(
                    "found an existing cluster (node {id}); waiting for its leader to add this node"
                ));
            }
            Some(s) if s.bootstrap_expect > 0 && s.id == *id => founders.push((*id, *addr)),
            Some(_) => {}
            None => unanswered += 1,
        }
    }
    founders.sort_unstable();
    let expect = match state.mode {
        Mode::Expect(n) => n,
        Mode::JoinOnly => return Err("waiting for a cluster's leader to add this node".into()),
        Mode::Static => return Err("static membership".into()),
    };
    if state.mode == Mode::Expect(1) && state.has_seeds && started.elapsed() < LONE_BOOTSTRAP_WAIT {
        return Err("looking for an existing cluster before forming one alone".into());
    }
    if founders.len() < expect || unanswered > 0 {
        return Err(format!(
            "waiting for {} more node(s) to form a cluster of {expect} (seen {})",
            expect.saturating_sub(founders.len()),
            founders.len()
        ));
    }
    let lowest = founders[0].0;
    if lowest != state.me {
        return Err(format!("waiting for node {lowest} to form the cluster"));
    }
    if let Some(other) = state.promised_to_other() {
        return Err(format!("promised to join node {other}'s new cluster"));
    }
    let chosen: Vec<(NodeId, SocketAddr)> = founders.iter().copied().take(expect).collect();
    if !state.claim() {
        return Err("promised to join another node's new cluster".into());
    }
    let claimed_at = Instant::now();
    let req = pb::PrepareBootstrapRequest {
        cluster: state.cluster.clone(),
        bootstrapper_id: state.me,
        members: chosen
            .iter()
            .map(|(id, a)| pb::BootstrapMember { id: *id, address: a.to_string() })
            .collect(),
    };
    let answers =
        futures::future::join_all(chosen.iter().filter(|(id, _)| *id != state.me).map(|(id, addr)| {
            let req = req.clone();
            async move {
                let mut c = ClusterClient::new(super::peer_channel(dialer, *addr, PEER_TIMEOUT));
                let answer = tokio::time::timeout(PEER_TIMEOUT, c.prepare_bootstrap(req)).await;
                let refused = match answer {
                    Ok(Ok(r)) if r.get_ref().accepted => None,
                    Ok(Ok(r)) => Some(r.into_inner().reason),
                    Ok(Err(status)) => Some(status.message().to_owned()),
                    Err(_) => Some("no answer".to_owned()),
                };
                refused.map(|reason| (*id, reason))
            }
        }))
        .await;
    if let Some((id, reason)) = answers.into_iter().flatten().next() {
        state.withdraw();
        return Err(format!("node {id} would not join a new cluster yet: {reason}"));
    }
    // Every promise must still hold when Raft starts (they last PROMISE_TTL from when given).
    if claimed_at.elapsed() >= PROMISE_TTL / 2 {
        state.withdraw();
        return Err("the promises took too long to gather; trying again".into());
    }
    let nodes = chosen
        .iter()
        .map(|(id, a)| (*id, openraft::BasicNode { addr: a.to_string() }))
        .collect::<std::collections::BTreeMap<_, _>>();
    tracing::info!(node_id = state.me, members = ?nodes.keys().collect::<Vec<_>>(), "forming a new cluster");
    match raft.initialize(nodes).await {
        Ok(()) => Ok(()),
        Err(e) => {
            state.withdraw();
            Err(format!("cannot initialize the cluster: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(bootstrapper: NodeId, members: &[NodeId]) -> pb::PrepareBootstrapRequest {
        pb::PrepareBootstrapRequest {
            cluster: "c".into(),
            bootstrapper_id: bootstrapper,
            members: members
                .iter()
                .map(|id| pb::BootstrapMember { id: *id, address: String::new() })
                .collect(),
        }
    }

    #[test]
    fn a_node_promises_one_bootstrapper_at_a_time() {
        let s = State::new(5, "c".into(), Mode::Expect(3), true);
        assert!(s.prepare(&req(1, &[1, 2, 5]), false).is_ok());
        assert!(s.prepare(&req(1, &[1, 2, 5]), false).is_ok(), "the same bootstrapper may ask again");
        let err = s.prepare(&req(2, &[2, 5, 6]), false).unwrap_err();
        assert!(err.contains("promised to node 1"), "{err}");
        assert!(!s.claim(), "a promised node does not bootstrap itself");
        assert!(s.prepare(&req(1, &[1, 2, 3]), false).unwrap_err().contains("not among"));
        assert!(s.prepare(&req(1, &[1, 5]), true).unwrap_err().contains("already belongs"));
        let mut other = req(1, &[1, 5]);
        other.cluster = "d".into();
        assert!(s.prepare(&other, false).unwrap_err().contains("cluster 'c'"));
    }

    #[test]
    fn join_only_nodes_promise_nothing() {
        let s = State::new(1, "c".into(), Mode::JoinOnly, true);
        assert_eq!(s.expect(), 0);
        assert!(s.prepare(&req(2, &[1, 2, 3]), false).unwrap_err().contains("only joins"));
    }

    #[test]
    fn a_bootstrapper_promises_nobody_else() {
        let s = State::new(1, "c".into(), Mode::Expect(3), true);
        assert!(s.claim());
        assert!(s.prepare(&req(2, &[1, 2, 3]), false).unwrap_err().contains("promised to node 1"));
        s.withdraw();
        assert!(s.prepare(&req(2, &[1, 2, 3]), false).is_ok());
        let st = State::new(1, "c".into(), Mode::Static, false);
        assert!(st.prepare(&req(2, &[1, 2]), false).unwrap_err().contains("static"));
    }
}

//! The reconciler: on the leader, turns what gossip sees into Raft membership changes.
//!
//! ```text
//!   gossip View ─┐
//!   Raft metrics ┼─► plan() ─► one Change ─► raft.add_learner / raft.change_membership ─► wait
//!   (leader)    ─┘     pure       at a time
//! ```
//!
//! [`plan`] is pure: given the membership, the view and the replication progress it picks at
//! most one change, in this order:
//! 1. finish a joint configuration left by a previous leader;
//! 2. remove a voter that has been down for the grace period (at once if it left), promoting
//!    a healthy caught-up learner in the same change when the voters fall below the target;
//! 3. remove a learner that has been down for the grace period (or left);
//! 4. add a new alive node as a learner;
//! 5. point Raft at a member's new address when gossip sees it alive elsewhere;
//! 6. promote caught-up learners while the voters are below the target;
//! 7. above the target, never keep an even number of voters: demote one to a learner (four
//!    voters tolerate no more failures than three, and a 2/2 split stops them).
//!
//! Gossip alone never removes or adds a node: before a removal the driver asks the node over
//! TCP and keeps it if it answers (its UDP may be blocked), and before an addition it checks
//! that the node is not of another cluster instance (same name, different cluster uid). An
//! address is rewritten only once the node at the new address proves to be that member
//! ([`relocation::verify_move`](super::relocation::verify_move)); the leader's own entry is
//! rewritten too (a lone node restarted on another port).
//!
//! It never proposes a change after which the old or the new voters lack a majority that is
//! up: such a change could not commit, and would leave the cluster stuck in a joint config.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::gossip::{self, Health, View};
use crate::NodeId;
use crate::raft::Raft;

/// How the reconciler acts.
#[derive(Debug, Clone)]
pub struct Options {
    /// This node's cluster name (a moved member must answer as one of it).
    pub cluster: String,
    /// Voters the cluster should have (odd).
    pub target_voters: usize,
    /// How long a node must be down before it is removed (a node that left goes at once).
    pub grace: Duration,
    /// How often the leader looks for a change to make.
    pub interval: Duration,
    /// How long one membership change may take before the reconciler gives up on it.
    pub change_timeout: Duration,
    /// A learner within this many entries of the leader's log counts as caught up.
    pub caught_up_lag: u64,
    /// How the leader dials the nodes it vets.
    pub dialer: crate::tls::Dialer,
}

/// Everything [`plan`] looks at.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// This node, the leader.
    pub leader: NodeId,
    /// Current voters (of the last config when joint).
    pub voters: BTreeSet<NodeId>,
    /// Current learners.
    pub learners: BTreeSet<NodeId>,
    /// Whether the membership is a joint configuration.
    pub joint: bool,
    /// Gossip's view.
    pub view: &'a View,
    /// Raft members that gossip has never shown, and since when the leader noticed.
    pub absent_since: &'a BTreeMap<NodeId, Instant>,
    /// Highest log index each follower and learner has matched.
    pub matched: &'a BTreeMap<NodeId, u64>,
    /// The leader's last log index.
    pub last_log_index: u64,
    /// Raft's address of each member.
    pub addrs: &'a BTreeMap<NodeId, String>,
    /// Nodes the driver found must not be touched for now (they answer over TCP although
    /// gossip says down, or they belong to another cluster instance).
    pub excluded: &'a BTreeSet<NodeId>,
    /// Now.
    pub now: Instant,
}

/// One membership change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Leave a joint configuration for its last config.
    FinishJoint { voters: BTreeSet<NodeId> },
    /// Remove voter `remove` (and promote `promote`): the voters become `voters`.
    ReplaceVoter { remove: NodeId, promote: Option<NodeId>, voters: BTreeSet<NodeId> },
    /// Remove a learner.
    RemoveLearner { id: NodeId },
    /// Add an alive node as a learner.
    AddLearner { id: NodeId, addr: String },
    /// Promote learners: the voters become `voters`.
    Promote { ids: BTreeSet<NodeId>, voters: BTreeSet<NodeId> },
    /// A member is alive at another address than Raft knows: point Raft there.
    UpdateAddress { id: NodeId, addr: String },
    /// Make voter `id` a learner: the voters become `voters` (an odd number).
    Demote { id: NodeId, voters: BTreeSet<NodeId> },
}

/// A node that announced its leave still runs for this long (it waits for its removal), so
/// it still counts toward a quorum of the change that removes it.
pub const LEAVE_LINGER: Duration = Duration::from_secs(3);

impl<'a> Inputs<'a> {
    fn health(&self, id: NodeId) -> Option<Health> {
        self.view.members.get(&id).map(|m| m.health)
    }

    fn is_up(&self, id: NodeId) -> bool {
        match self.view.members.get(&id) {
            _ if id == self.leader => true,
            Some(m) if m.health == Health::Left => self.now.duration_since(m.since) < LEAVE_LINGER,
            Some(m) => m.health.is_up(),
            None => false,
        }
    }

    /// Down long enough to remove (or left).
    fn is_gone(&self, id: NodeId, grace: Duration) -> bool {
        if id == self.leader || self.excluded.contains(&id) {
            return false;
        }
        match self.view.members.get(&id) {
            Some(m) if m.health == Health::Left => true,
            Some(m) if m.health == Health::Down => self.now.duration_since(m.since) >= grace,
            Some(_) => false,
            None => self.absent_since.get(&id).is_some_and(|at| self.now.duration_since(*at) >= grace),
        }
    }

    fn caught_up(&self, id: NodeId, lag: u64) -> bool {
        self.health(id) == Some(Health::Alive)
            && self.matched.get(&id).is_some_and(|m| m.saturating_add(lag) >= self.last_log_index)
    }

    fn has_up_majority(&self, voters: &BTreeSet<NodeId>) -> bool {
        let up = voters.iter().filter(|v| self.is_up(**v)).count();
        up > voters.len() / 2
    }

    /// Both the old and the new voters keep a majority that is up.
    fn safe(&self, new: &BTreeSet<NodeId>) -> bool {
        !new.is_empty() && self.has_up_majority(&self.voters) && self.has_up_majority(new)
    }
}

/// The one change to make now, if any.
pub fn plan(inputs: &Inputs<'_>, options: &Options) -> Option<Change> {
    if inputs.joint {
        return inputs.safe(&inputs.voters).then(|| Change::FinishJoint { voters: inputs.voters.clone() });
    }
    let healthy_learners: Vec<NodeId> = inputs
        .learners
        .iter()
        .copied()
        .filter(|l| !inputs.is_gone(*l, options.grace) && inputs.caught_up(*l, options.caught_up_lag))
        .collect();

    for &voter in &inputs.voters {
        if !inputs.is_gone(voter, options.grace) {
            continue;
        }
        let mut voters = inputs.voters.clone();
        voters.remove(&voter);
        let promote =
            (voters.len() < options.target_voters).then(|| healthy_learners.first().copied()).flatten();
        if let Some(p) = promote {
            voters.insert(p);
        }
        if inputs.safe(&voters) {
            return Some(Change::ReplaceVoter { remove: voter, promote, voters });
        }
    }
    if let Some(&id) = inputs.learners.iter().find(|l| inputs.is_gone(**l, options.grace)) {
        return Some(Change::RemoveLearner { id });
    }
    for (&id, m) in &inputs.view.members {
        if id != 0
            && m.health == Health::Alive
            && !inputs.excluded.contains(&id)
            && !inputs.voters.contains(&id)
            && !inputs.learners.contains(&id)
        {
            return Some(Change::AddLearner { id, addr: m.addr.to_string() });
        }
    }
    for (&id, known) in inputs.addrs {
        // Only addresses Raft holds as IP:PORT are compared; host names are left alone.
        if let (Ok(known), Some(m)) = (known.parse::<std::net::SocketAddr>(), inputs.view.members.get(&id))
            && m.health == Health::Alive
            && m.addr != known
            && !inputs.excluded.contains(&id)
        {
            return Some(Change::UpdateAddress { id, addr: m.addr.to_string() });
        }
    }
    if inputs.voters.len() > options.target_voters && inputs.voters.len().is_multiple_of(2) {
        // The highest id that is not the leader: deterministic, so leaders agree.
        if let Some(&id) = inputs.voters.iter().rev().find(|v| **v != inputs.leader) {
            let voters: BTreeSet<NodeId> = inputs.voters.iter().copied().filter(|v| *v != id).collect();
            if inputs.safe(&voters) {
                return Some(Change::Demote { id, voters });
            }
        }
    }
    if inputs.voters.len() < options.target_voters && !healthy_learners.is_empty() {
        let ids: BTreeSet<NodeId> =
            healthy_learners.iter().copied().take(options.target_voters - inputs.voters.len()).collect();
        let voters: BTreeSet<NodeId> = inputs.voters.union(&ids).copied().collect();
        if inputs.safe(&voters) {
            return Some(Change::Promote { ids, voters });
        }
    }
    None
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Membership changes this node made as leader.
    pub changes: std::sync::atomic::AtomicU64,
    /// Changes that failed or timed out.
    pub failed: std::sync::atomic::AtomicU64,
}

/// How long a node that answered over TCP although gossip says it is down is left alone.
const KEEP_ANSWERING_FOR: Duration = Duration::from_secs(30);
/// How long a node of another cluster instance is left alone before it is asked again.
const FOREIGN_RECHECK: Duration = Duration::from_secs(30);
/// How long a node gossip shows alive but that does not answer over TCP waits to be added.
const SILENT_RECHECK: Duration = Duration::from_secs(2);
/// How long the driver waits for a node's answer before a change.
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// Runs the reconciler until `shutdown`; it acts only while this node leads.
pub async fn run(
    raft: Raft,
    applied: crate::raft::state_machine::Handle,
    gossip: gossip::Handle,
    options: Options,
    counters: std::sync::Arc<Counters>,
    shutdown: CancellationToken,
) {
    use std::sync::atomic::Ordering;
    let me = gossip.node_id();
    let mut absent_since: BTreeMap<NodeId, Instant> = BTreeMap::new();
    let mut excluded_until: BTreeMap<NodeId, Instant> = BTreeMap::new();
    let mut again = false;
    // The last change that failed, and why: its repeats are not recorded again.
    let mut last_failure: Option<(String, String)> = None;
    loop {
        // Right after a committed change, look again at once (a cluster forming adds several
        // learners in a row); otherwise wait for the interval.
        let wait = if std::mem::take(&mut again) { Duration::ZERO } else { options.interval };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let view = gossip.view();
        let Some(state) = leader_state(&raft, me) else {
            absent_since.clear();
            excluded_until.clear();
            continue;
        };
        if applied.cluster_uid() == 0 {
            record_cluster_uid(&raft, &options).await;
            continue;
        }
        let now = Instant::now();
        absent_since.retain(|id, _| state.addrs.contains_key(id) && !view.members.contains_key(id));
        for id in state.addrs.keys() {
            if !view.members.contains_key(id) {
                absent_since.entry(*id).or_insert(now);
            }
        }
        excluded_until.retain(|_, until| *until > now);
        let excluded: BTreeSet<NodeId> = excluded_until.keys().copied().collect();
        let inputs = Inputs {
            leader: me,
            voters: state.voters,
            learners: state.learners,
            joint: state.joint,
            view: &view,
            absent_since: &absent_since,
            matched: &state.matched,
            last_log_index: state.last_log_index,
            addrs: &state.addrs,
            excluded: &excluded,
            now,
        };
        let Some(change) = plan(&inputs, &options) else { continue };
        if let Some((id, until, why)) =
            vet(&change, me, &view, &state.addrs, &options, applied.cluster_uid()).await
        {
            tracing::warn!(node_id = id, reason = %why, "membership: not changing the membership for this node now");
            excluded_until.insert(id, until);
            continue;
        }
        tracing::info!(?change, "membership: changing the Raft membership");
        let result = tokio::time::timeout(options.change_timeout, apply(&raft, &change)).await;
        counters.changes.fetch_add(1, Ordering::Relaxed);
        let outcome = match result {
            Ok(Ok(())) => {
                tracing::info!(?change, "membership: change committed");
                again = true;
                last_failure = None;
                "ok".to_owned()
            }
            Ok(Err(e)) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(?change, error = %e, "membership: change failed");
                e
            }
            Err(_) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    ?change,
                    timeout_ms = options.change_timeout.as_millis() as u64,
                    "membership: change did not commit in time"
                );
                format!(
                    "not committed within {} ms (it may still commit)",
                    options.change_timeout.as_millis()
                )
            }
        };
        // A change that keeps failing is tried again every interval: its first failure is
        // recorded, not each repeat.
        if outcome != "ok" {
            let failure = (format!("{change:?}"), outcome.clone());
            if last_failure.as_ref() == Some(&failure) {
                continue;
            }
            last_failure = Some(failure);
        }
        record_change(&raft, me, &change, outcome).await;
    }
}

/// How long recording a membership change in the audit trail may hold the reconciler up.
const RECORD_TIMEOUT: Duration = Duration::from_secs(2);

/// Records a membership change and its outcome in the audit trail (best effort: a leader
/// that lost its quorum cannot record it).
async fn record_change(raft: &Raft, me: NodeId, change: &Change, outcome: String) {
    let (operation, target) = match change {
        Change::FinishJoint { voters } => ("membership.finish_joint", format!("voters {voters:?}")),
        Change::ReplaceVoter { remove, promote, voters } => (
            "membership.replace_voter",
            format!("remove node {remove}, promote {promote:?}: voters {voters:?}"),
        ),
        Change::RemoveLearner { id } => ("membership.remove_learner", format!("node {id}")),
        Change::AddLearner { id, addr } => ("membership.add_learner", format!("node {id} at {addr}")),
        Change::Promote { ids, voters } => {
            ("membership.promote", format!("nodes {ids:?}: voters {voters:?}"))
        }
        Change::UpdateAddress { id, addr } => ("membership.update_address", format!("node {id} to {addr}")),
        Change::Demote { id, voters } => ("membership.demote", format!("node {id}: voters {voters:?}")),
    };
    let note = crate::grid::audit::AuditNote {
        actor: crate::grid::audit::Actor::fabric(me),
        operation: operation.into(),
        target,
        outcome,
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let request = crate::raft::Request::Batch {
        now_ms,
        commands: vec![crate::grid::Command::AuditNote(Box::new(note))],
    };
    match tokio::time::timeout(RECORD_TIMEOUT, raft.client_write(request)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "cannot record a membership change in the audit trail"),
        Err(_) => tracing::debug!("recording a membership change in the audit trail timed out"),
    }
}

/// What the leader's metrics say about the membership.
struct LeaderState {
    voters: BTreeSet<NodeId>,
    learners: BTreeSet<NodeId>,
    joint: bool,
    matched: BTreeMap<NodeId, u64>,
    last_log_index: u64,
    addrs: BTreeMap<NodeId, String>,
}

fn leader_state(raft: &Raft, me: NodeId) -> Option<LeaderState> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    if m.current_leader != Some(me) || m.state != openraft::ServerState::Leader {
        return None;
    }
    let membership = m.membership_config.membership();
    let configs = membership.get_joint_config();
    let voters: BTreeSet<NodeId> = configs.last().cloned().unwrap_or_default();
    let addrs: BTreeMap<NodeId, String> = membership.nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
    let learners = addrs.keys().copied().filter(|id| !configs.iter().any(|c| c.contains(id))).collect();
    let matched = m
        .replication
        .as_ref()
        .map(|r| r.iter().filter_map(|(id, l)| Some((*id, l.as_ref()?.index))).collect())
        .unwrap_or_default();
    Some(LeaderState {
        voters,
        learners,
        joint: configs.len() > 1,
        matched,
        last_log_index: m.last_log_index.unwrap_or(0),
        addrs,
    })
}

/// The first leader records a random cluster instance id in the grid (first one wins).
async fn record_cluster_uid(raft: &Raft, options: &Options) {
    let uid = rand::random_range(1..u64::MAX);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let request =
        crate::raft::Request::Batch { now_ms, commands: vec![crate::grid::Command::SetClusterUid { uid }] };
    match tokio::time::timeout(options.change_timeout, raft.client_write(request)).await {
        Ok(Ok(_)) => tracing::info!("membership: recorded this cluster's instance id"),
        Ok(Err(e)) => tracing::debug!(error = %e, "cannot record the cluster instance id yet"),
        Err(_) => tracing::debug!("recording the cluster instance id timed out"),
    }
}

/// Checks a change against the node itself, over TCP: a node gossip calls down but that
/// answers is kept; a node is added only if it is of no other cluster instance. Returns the
/// node to leave alone, until when, and why.
async fn vet(
    change: &Change,
    me: NodeId,
    view: &View,
    addrs: &BTreeMap<NodeId, String>,
    options: &Options,
    our_uid: u64,
) -> Option<(NodeId, Instant, String)> {
    let dialer = &options.dialer;
    let now = Instant::now();
    if let Change::UpdateAddress { id, addr } = change {
        let old = addrs.get(id).and_then(|a| a.parse::<std::net::SocketAddr>().ok());
        let new = addr.parse::<std::net::SocketAddr>().ok();
        return match (old, new) {
            _ if *id == me => None,
            (Some(old), Some(new)) => {
                super::relocation::verify_move(dialer, *id, old, new, &options.cluster, our_uid)
                    .await
                    .err()
                    .map(|why| (*id, now + SILENT_RECHECK, why))
            }
            // plan() compares IP:PORT addresses only.
            _ => Some((*id, now + FOREIGN_RECHECK, format!("not an IP:PORT address: {addr}"))),
        };
    }
    let (id, removing) = match change {
        Change::ReplaceVoter { remove, .. } => (*remove, true),
        Change::RemoveLearner { id } => (*id, true),
        Change::AddLearner { id, .. } => (*id, false),
        _ => return None,
    };
    let gossip_addr = view.members.get(&id).map(|m| m.addr);
    if removing {
        if view.members.get(&id).is_some_and(|m| m.health == Health::Left) {
            return None;
        }
        let raft_addr = addrs.get(&id).and_then(|a| a.parse::<std::net::SocketAddr>().ok());
        for addr in [raft_addr, gossip_addr].into_iter().flatten() {
            if let Some(status) = super::peer_status(dialer, addr, PROBE_TIMEOUT).await
                && status.id == id
            {
                return Some((
                    id,
                    now + KEEP_ANSWERING_FOR,
                    "gossip says it is down, but it answers over TCP (is its UDP port blocked?)".into(),
                ));
            }
        }
        return None;
    }
    let Some(addr) = gossip_addr else {
        return Some((id, now + SILENT_RECHECK, "not in the gossip view".into()));
    };
    match super::peer_status(dialer, addr, PROBE_TIMEOUT).await {
        None => Some((id, now + SILENT_RECHECK, "alive in gossip but does not answer over TCP".into())),
        Some(s) if s.id != id => Some((id, now + SILENT_RECHECK, format!("answers as node {}", s.id))),
        Some(s) if s.cluster_uid != 0 && s.cluster_uid != our_uid => Some((
            id,
            now + FOREIGN_RECHECK,
            format!(
                "it belongs to another cluster of the same name (uid {:016x}, ours {our_uid:016x})",
                s.cluster_uid
            ),
        )),
        Some(_) => None,
    }
}

async fn apply(raft: &Raft, change: &Change) -> Result<(), String> {
    let result = match change {
        Change::FinishJoint { voters } | Change::ReplaceVoter { voters, .. } => {
            raft.change_membership(ChangeMembers::ReplaceAllVoters(voters.clone()), false).await
        }
        Change::Promote { voters, .. } | Change::Demote { voters, .. } => {
            raft.change_membership(ChangeMembers::ReplaceAllVoters(voters.clone()), true).await
        }
        Change::RemoveLearner { id } => {
            raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([*id])), false).await
        }
        Change::AddLearner { id, addr } => {
            raft.add_learner(*id, BasicNode { addr: addr.clone() }, false).await
        }
        Change::UpdateAddress { id, addr } => {
            let nodes = BTreeMap::from([(*id, BasicNode { addr: addr.clone() })]);
            raft.change_membership(ChangeMembers::SetNodes(nodes), true).await
        }
    };
    result.map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::gossip::MemberView;

    const GRACE: Duration = Duration::from_secs(10);

    fn options() -> Options {
        Options {
            cluster: "c".into(),
            target_voters: 3,
            grace: GRACE,
            interval: Duration::from_millis(100),
            change_timeout: Duration::from_secs(5),
            caught_up_lag: 10,
            dialer: crate::tls::Dialer::plain(),
        }
    }

    struct World {
        now: Instant,
        view: View,
        voters: BTreeSet<NodeId>,
        learners: BTreeSet<NodeId>,
        matched: BTreeMap<NodeId, u64>,
        absent: BTreeMap<NodeId, Instant>,
        joint: bool,
        addrs: BTreeMap<NodeId, String>,
        excluded: BTreeSet<NodeId>,
    }

    impl World {
        fn new(voters: &[NodeId], learners: &[NodeId]) -> Self {
            let now = Instant::now() + Duration::from_secs(3600);
            let mut w = World {
                now,
                view: View::default(),
                voters: voters.iter().copied().collect(),
                learners: learners.iter().copied().collect(),
                matched: BTreeMap::new(),
                absent: BTreeMap::new(),
                joint: false,
                addrs: BTreeMap::new(),
                excluded: BTreeSet::new(),
            };
            for &id in voters.iter().chain(learners) {
                w.set(id, Health::Alive, Duration::from_secs(60));
                w.matched.insert(id, 100);
                w.addrs.insert(id, format!("127.0.0.1:{}", 7400 + id));
            }
            w
        }

        fn set(&mut self, id: NodeId, health: Health, for_: Duration) {
            self.view.members.insert(
                id,
                MemberView {
                    addr: format!("127.0.0.1:{}", 7400 + id).parse().unwrap(),
                    health,
                    incarnation: 0,
                    generation: 1,
                    since: self.now - for_,
                },
            );
        }

        fn plan(&self) -> Option<Change> {
            let inputs = Inputs {
                leader: 1,
                voters: self.voters.clone(),
                learners: self.learners.clone(),
                joint: self.joint,
                view: &self.view,
                absent_since: &self.absent,
                matched: &self.matched,
                last_log_index: 100,
                addrs: &self.addrs,
                excluded: &self.excluded,
                now: self.now,
            };
            plan(&inputs, &options())
        }
    }

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_healthy_cluster_needs_nothing() {
        assert_eq!(World::new(&[1, 2, 3], &[4, 5]).plan(), None);
    }

    #[test]
    fn a_dead_voter_is_replaced_by_a_caught_up_learner_after_the_grace() {
        let mut w = World::new(&[1, 2, 3], &[4, 5]);
        w.set(3, Health::Down, GRACE - Duration::from_millis(1));
        assert_eq!(w.plan(), None, "within the grace period nothing happens");
        w.set(3, Health::Down, GRACE);
        w.matched.insert(4, 50); // lagging: not a candidate
        assert_eq!(
            w.plan(),
            Some(Change::ReplaceVoter { remove: 3, promote: Some(5), voters: set(&[1, 2, 5]) })
        );
    }

    #[test]
    fn a_node_that_left_goes_at_once() {
        let mut w = World::new(&[1, 2, 3], &[]);
        w.set(2, Health::Left, Duration::ZERO);
        assert_eq!(w.plan(), Some(Change::ReplaceVoter { remove: 2, promote: None, voters: set(&[1, 3]) }));
        let mut w = World::new(&[1, 2, 3], &[4]);
        w.set(4, Health::Left, Duration::ZERO);
        assert_eq!(w.plan(), Some(Change::RemoveLearner { id: 4 }));
    }

    #[test]
    fn never_a_change_without_a_live_majority() {
        // Two of three voters down: removing either would need the dead ones to commit.
        let mut w = World::new(&[1, 2, 3], &[4]);
        w.set(2, Health::Down, GRACE * 2);
        w.set(3, Health::Down, GRACE * 2);
        assert_eq!(w.plan(), None);
        // The plan a careless reconciler would make (replace 3 by 4) is refused by the check.
        let inputs = Inputs {
            leader: 1,
            voters: w.voters.clone(),
            learners: w.learners.clone(),
            joint: false,
            view: &w.view,
            absent_since: &w.absent,
            matched: &w.matched,
            last_log_index: 100,
            addrs: &w.addrs,
            excluded: &w.excluded,
            now: w.now,
        };
        assert!(!inputs.safe(&set(&[1, 3, 4])));
        assert!(!inputs.safe(&set(&[1])), "the old config has no live majority");
    }

    #[test]
    fn new_nodes_join_as_learners_and_are_promoted_when_caught_up() {
        let mut w = World::new(&[1], &[]);
        w.set(7, Health::Alive, Duration::ZERO);
        assert_eq!(w.plan(), Some(Change::AddLearner { id: 7, addr: "127.0.0.1:7407".into() }));
        w.set(7, Health::Suspect, Duration::ZERO);
        assert_eq!(w.plan(), None, "a suspect node is not added");
        w.set(7, Health::Alive, Duration::ZERO);
        w.learners.insert(7);
        w.matched.insert(7, 95);
        w.set(8, Health::Alive, Duration::ZERO);
        w.learners.insert(8);
        w.matched.insert(8, 100);
        assert_eq!(w.plan(), Some(Change::Promote { ids: set(&[7, 8]), voters: set(&[1, 7, 8]) }));
        w.voters = set(&[1, 7, 8]);
        w.learners.clear();
        w.set(9, Health::Alive, Duration::ZERO);
        w.learners.insert(9);
        assert_eq!(w.plan(), None, "at the target, learners stay learners");
    }

    #[test]
    fn members_gossip_never_saw_are_removed_after_the_grace() {
        let mut w = World::new(&[1, 2, 3], &[]);
        w.view.members.remove(&3);
        w.absent.insert(3, w.now - GRACE / 2);
        assert_eq!(w.plan(), None);
        w.absent.insert(3, w.now - GRACE);
        assert_eq!(w.plan(), Some(Change::ReplaceVoter { remove: 3, promote: None, voters: set(&[1, 2]) }));
    }

    #[test]
    fn a_joint_config_is_finished_first() {
        let mut w = World::new(&[1, 2, 3], &[]);
        w.joint = true;
        w.set(9, Health::Alive, Duration::ZERO);
        assert_eq!(w.plan(), Some(Change::FinishJoint { voters: set(&[1, 2, 3]) }));
    }

    #[test]
    fn excluded_nodes_are_neither_removed_nor_added() {
        let mut w = World::new(&[1, 2, 3], &[]);
        w.set(3, Health::Down, GRACE * 2);
        w.set(9, Health::Alive, Duration::ZERO);
        w.excluded = set(&[3, 9]);
        assert_eq!(w.plan(), None);
    }

    #[test]
    fn a_leaving_node_counts_toward_the_quorum_that_removes_it_for_a_moment() {
        // Two voters: removing the leaver needs its own ack for the joint config.
        let mut w = World::new(&[1, 2], &[]);
        w.set(2, Health::Left, Duration::from_millis(500));
        assert_eq!(w.plan(), Some(Change::ReplaceVoter { remove: 2, promote: None, voters: set(&[1]) }));
        w.set(2, Health::Left, LEAVE_LINGER);
        assert_eq!(w.plan(), None, "long gone: the change could not commit");
    }

    #[test]
    fn a_member_alive_at_a_new_address_is_followed() {
        let mut w = World::new(&[1, 2, 3], &[]);
        w.addrs.insert(2, "127.0.0.1:9999".into());
        assert_eq!(w.plan(), Some(Change::UpdateAddress { id: 2, addr: "127.0.0.1:7402".into() }));
        w.addrs.insert(2, "node-2.example:7402".into());
        assert_eq!(w.plan(), None, "host names are left alone");
        w.addrs.insert(1, "127.0.0.1:9998".into());
        assert_eq!(
            w.plan(),
            Some(Change::UpdateAddress { id: 1, addr: "127.0.0.1:7401".into() }),
            "the leader's own entry is rewritten too (a lone node restarted on another port)"
        );
        w.excluded = set(&[1]);
        assert_eq!(w.plan(), None, "a move the driver refused waits");
    }

    #[test]
    fn above_the_target_an_even_count_of_voters_is_made_odd() {
        // Five founders (bootstrap-expect 5, voters 3); one leaves: four voters remain.
        let mut w = World::new(&[1, 2, 3, 4, 5], &[]);
        w.set(5, Health::Left, Duration::ZERO);
        assert_eq!(
            w.plan(),
            Some(Change::ReplaceVoter { remove: 5, promote: None, voters: set(&[1, 2, 3, 4]) })
        );
        let mut w = World::new(&[1, 2, 3, 4], &[]);
        assert_eq!(w.plan(), Some(Change::Demote { id: 4, voters: set(&[1, 2, 3]) }));
        w.set(4, Health::Down, Duration::ZERO);
        w.set(3, Health::Down, Duration::ZERO);
        assert_eq!(w.plan(), None, "two of four down: no change can commit");
        let w = World::new(&[1, 2], &[]);
        assert_eq!(w.plan(), None, "below the target an even count waits for learners");
    }

    #[test]
    fn the_leader_never_removes_itself() {
        let mut w = World::new(&[1, 2, 3], &[]);
        w.set(1, Health::Left, Duration::ZERO);
        assert_eq!(w.plan(), None);
    }
}

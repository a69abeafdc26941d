//! Keeps a node that was removed while it was away from disrupting the cluster when it
//! comes back.
//!
//! A node removed from Raft while down still holds the old config, in which it is a voter.
//! Restarted, it would stand for election again and again with ever higher terms; when the
//! leader then adds it back as a learner, the first reply carries that higher term and the
//! leader steps down (openraft 0.9 has no pre-vote). So a restarted node starts with elections
//! off and turns them on only when no up peer reports a leader with a newer config that leaves
//! it out:
//!
//! ```text
//!   leader known ──────────────────────────────────────────► elections on
//!   I am not a voter in my own config ─────────────────────► (learners never elect)
//!   a peer has a leader and a newer config without me ─────► elections off: wait to be re-added
//!   otherwise (peers leaderless, or none up for a while) ──► elections on
//! ```

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::gossip;
use crate::NodeId;
use crate::raft::Raft;

/// How often the guard looks.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// How long a peer has to answer.
const PEER_TIMEOUT: Duration = Duration::from_millis(500);
/// With no peer up in gossip for this long after start, elections go on (a lone survivor must
/// still be able to lead).
pub const QUIET_START: Duration = Duration::from_secs(2);

/// Runs until `shutdown`. Call [`hold`] first on a node that restarts with a log.
pub async fn run(
    raft: Raft,
    gossip: gossip::Handle,
    dialer: crate::tls::Dialer,
    shutdown: CancellationToken,
) {
    let me = gossip.node_id();
    let started = Instant::now();
    let mut enabled: Option<bool> = None;
    loop {
        let decision = decide(&raft, &gossip, &dialer, me, started).await;
        if let Some(on) = decision
            && enabled != Some(on)
        {
            raft.runtime_config().elect(on);
            if on {
                tracing::debug!(node_id = me, "elections on");
            } else {
                tracing::warn!(
                    node_id = me,
                    "this node was removed from the cluster while away; \
                    not standing for election until the leader adds it back"
                );
            }
            enabled = Some(on);
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(CHECK_INTERVAL) => {}
        }
    }
}

/// Turns elections off until the guard has looked (for a node that restarts with a log).
pub fn hold(raft: &Raft) {
    raft.runtime_config().elect(false);
}

async fn decide(
    raft: &Raft,
    gossip: &gossip::Handle,
    dialer: &crate::tls::Dialer,
    me: NodeId,
    started: Instant,
) -> Option<bool> {
    let (leader_known, voters, my_index) = {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        (m.current_leader.is_some(), voters, m.membership_config.log_id().as_ref().map_or(0, |l| l.index))
    };
    if leader_known {
        return Some(true);
    }
    if !voters.contains(&me) {
        return None;
    }
    if voters.len() == 1 {
        return Some(true);
    }
    let view = gossip.view();
    let peers: Vec<_> = view.up().filter(|(id, _)| *id != me).map(|(_, addr)| addr).collect();
    if peers.is_empty() {
        return (started.elapsed() >= QUIET_START).then_some(true);
    }
    let replies = futures::future::join_all(
        peers.into_iter().map(|addr| super::peer_status(dialer, addr, PEER_TIMEOUT)),
    )
    .await;
    let removed = replies
        .iter()
        .flatten()
        .any(|r| r.leader_id != 0 && r.membership_index.unwrap_or(0) > my_index && !r.voters.contains(&me));
    Some(!removed)
}

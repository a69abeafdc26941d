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
//!   I am not a voter in my own config ─────────────────────► (learners never elect)
//!   I am the only voter ───────────────────────────────────► elections on
//!   a leader is known and a peer has confirmed me before ──► elections on
//!   a peer has a leader and a newer config without me ─────► elections off: wait to be re-added
//!   peers answered and none says so ───────────────────────► elections on (confirmed)
//!   no peer up in gossip for 2 s, or none answering for 10 s ► elections on (a lone survivor)
//! ```
//!
//! A leader known from this node's own state is not proof that it is still a member: openraft
//! reports the leader of the committed vote it read back from disk, so a restarted node "knows"
//! its old leader before anyone has spoken to it, and would stand for election once that
//! leader's lease ran out without a word (the leader no longer sends to a removed node). So
//! after a restart the shortcut is taken only once a peer has answered that this node is still
//! in the newest config.

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
/// With peers up in gossip but none answering for this long after start, elections go on.
pub const NO_ANSWER_LIMIT: Duration = Duration::from_secs(10);

/// Runs until `shutdown`. Call [`hold`] first on a node that restarts with a log, and pass
/// `held` so that the guard asks its peers before it trusts the leader it read from disk.
pub async fn run(
    raft: Raft,
    gossip: gossip::Handle,
    dialer: crate::tls::Dialer,
    held: bool,
    shutdown: CancellationToken,
) {
    let me = gossip.node_id();
    let started = Instant::now();
    let mut confirmed = !held;
    let mut enabled: Option<bool> = None;
    loop {
        let local = Local::of(&raft);
        let decision = match before_asking(me, &local, confirmed) {
            Some(decision) => decision,
            None => {
                let heard = ask_peers(&gossip, &dialer, me).await;
                let (decision, now_confirmed) = after_asking(me, &local, started.elapsed(), &heard);
                confirmed = now_confirmed;
                decision
            }
        };
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

/// What this node knows from its own Raft state.
struct Local {
    leader_known: bool,
    voters: BTreeSet<NodeId>,
    /// The log index of the membership config this node holds.
    config_index: u64,
}

impl Local {
    fn of(raft: &Raft) -> Self {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        Local {
            leader_known: m.current_leader.is_some(),
            voters: m.membership_config.membership().voter_ids().collect(),
            config_index: m.membership_config.log_id().as_ref().map_or(0, |l| l.index),
        }
    }
}

/// What a peer said of its cluster.
struct PeerView {
    leader_id: NodeId,
    config_index: u64,
    voters: Vec<NodeId>,
}

/// What the guard heard this round.
enum Heard {
    /// No peer is up in gossip.
    NoPeerUp,
    /// The views of the peers that answered (empty when none did).
    Answers(Vec<PeerView>),
}

async fn ask_peers(gossip: &gossip::Handle, dialer: &crate::tls::Dialer, me: NodeId) -> Heard {
    let view = gossip.view();
    let peers: Vec<_> = view.up().filter(|(id, _)| *id != me).map(|(_, addr)| addr).collect();
    if peers.is_empty() {
        return Heard::NoPeerUp;
    }
    let replies = futures::future::join_all(
        peers.into_iter().map(|addr| super::peer_status(dialer, addr, PEER_TIMEOUT)),
    )
    .await;
    Heard::Answers(
        replies
            .into_iter()
            .flatten()
            .map(|r| PeerView {
                leader_id: r.leader_id,
                config_index: r.membership_index.unwrap_or(0),
                voters: r.voters,
            })
            .collect(),
    )
}

/// The decision when it needs no peer: `Some(Some(on))` to set, `Some(None)` to leave as it
/// is, `None` to ask the peers.
fn before_asking(me: NodeId, local: &Local, confirmed: bool) -> Option<Option<bool>> {
    if !local.voters.contains(&me) {
        return Some(None);
    }
    if local.voters.len() == 1 || (local.leader_known && confirmed) {
        return Some(Some(true));
    }
    None
}

/// The decision from what the peers said (`None`: leave as it is), and whether this node is
/// now confirmed a member.
fn after_asking(me: NodeId, local: &Local, since_start: Duration, heard: &Heard) -> (Option<bool>, bool) {
    match heard {
        Heard::NoPeerUp => ((since_start >= QUIET_START).then_some(true), false),
        Heard::Answers(answers) if answers.is_empty() => {
            ((since_start >= NO_ANSWER_LIMIT).then_some(true), false)
        }
        Heard::Answers(answers) => {
            let removed = answers
                .iter()
                .any(|p| p.leader_id != 0 && p.config_index > local.config_index && !p.voters.contains(&me));
            (Some(!removed), !removed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(leader_known: bool, voters: &[NodeId], config_index: u64) -> Local {
        Local { leader_known, voters: voters.iter().copied().collect(), config_index }
    }

    fn peer(leader_id: NodeId, config_index: u64, voters: &[NodeId]) -> PeerView {
        PeerView { leader_id, config_index, voters: voters.to_vec() }
    }

    #[test]
    fn a_restarted_node_does_not_trust_the_leader_it_read_from_disk() {
        // Restarted with a committed vote: openraft reports the old leader at once.
        let restarted = local(true, &[1, 2, 3], 5);
        assert_eq!(before_asking(3, &restarted, false), None, "must ask the peers first");
        // The leader removed node 3 at index 9 while it was away.
        let heard = Heard::Answers(vec![peer(1, 9, &[1, 2, 4]), peer(1, 9, &[1, 2, 4])]);
        assert_eq!(after_asking(3, &restarted, Duration::from_secs(30), &heard), (Some(false), false));
    }

    #[test]
    fn a_member_confirmed_by_its_peers_elects_and_then_trusts_the_leader() {
        let restarted = local(true, &[1, 2, 3], 5);
        let heard = Heard::Answers(vec![peer(1, 5, &[1, 2, 3])]);
        assert_eq!(after_asking(3, &restarted, Duration::ZERO, &heard), (Some(true), true));
        assert_eq!(before_asking(3, &restarted, true), Some(Some(true)));
        // A whole cluster restarting: peers with no leader never hold it back.
        let heard = Heard::Answers(vec![peer(0, 9, &[1, 2, 4])]);
        assert_eq!(after_asking(3, &restarted, Duration::ZERO, &heard), (Some(true), true));
    }

    #[test]
    fn silence_keeps_the_decision_until_its_limit() {
        let restarted = local(true, &[1, 2, 3], 5);
        let none_up = Heard::NoPeerUp;
        assert_eq!(after_asking(3, &restarted, Duration::from_millis(500), &none_up), (None, false));
        assert_eq!(after_asking(3, &restarted, QUIET_START, &none_up), (Some(true), false));
        let no_answer = Heard::Answers(Vec::new());
        assert_eq!(after_asking(3, &restarted, QUIET_START, &no_answer), (None, false));
        assert_eq!(after_asking(3, &restarted, NO_ANSWER_LIMIT, &no_answer), (Some(true), false));
    }

    #[test]
    fn learners_and_lone_voters_need_no_peer() {
        assert_eq!(before_asking(3, &local(false, &[1, 2], 5), false), Some(None));
        assert_eq!(before_asking(3, &local(false, &[3], 5), false), Some(Some(true)));
        assert_eq!(before_asking(3, &local(false, &[1, 2, 3], 5), true), None, "no leader: ask");
    }
}

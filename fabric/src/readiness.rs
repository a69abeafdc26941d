//! Whether this node can serve requests now: the one rule behind `GET /readyz` and the gRPC
//! `grpc.health.v1.Health` service.
//!
//! openraft's metrics alone do not say it. A node restarted from a cluster's data dir names a
//! leader from its persisted vote before it has heard from anyone (a former leader even
//! resumes leading, with no quorum ack yet), so the rule asks for recent evidence instead:
//!
//! ```text
//!   in no cluster yet ──────────────────────────────────────────────► not ready (join state)
//!   knows no leader ────────────────────────────────────────────────► not ready
//!   leads    a quorum acked within quorum_timeout ──────────────────► ready
//!            none acked yet, and leading for less than quorum_timeout ► ready (just elected)
//!            otherwise ─────────────────────────────────────────────► not ready
//!   follows  heard from that leader within quorum_timeout ──────────► ready
//!            otherwise ─────────────────────────────────────────────► not ready
//! ```
//!
//! `quorum_timeout` is 2 × `election_timeout_max_ms` (1 s by default): a leader heartbeats
//! every `heartbeat_interval_ms`, so a live leader and its followers never come near it.
//!
//! [`run`] re-judges on Raft metrics changes (at most every [`MIN_CHECK_GAP`]) and every
//! [`TICK`], so that a leader's start is noticed when it happens and [`Probe::subscribe`] sees
//! a change within a tick.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::NodeId;
use crate::membership;
use crate::raft::Raft;
use crate::raft::leader_contact::{Contact, LeaderContact};

/// How often [`run`] judges readiness when Raft's metrics do not change.
pub const TICK: Duration = Duration::from_millis(250);
/// The least time between two judgements of [`run`]: openraft publishes its metrics after
/// every batch of messages it handles, thousands of times a second under load.
pub const MIN_CHECK_GAP: Duration = Duration::from_millis(50);

/// Whether this node can serve, and why (a line for an operator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// True when requests sent here can be served.
    pub ready: bool,
    /// `ready: ...` or `not ready: ...`, saying why.
    pub reason: String,
}

/// Judges this node's readiness. Cheap to clone.
#[derive(Clone)]
pub struct Probe(Arc<Inner>);

struct Inner {
    raft: Raft,
    cluster: String,
    membership: membership::Handle,
    contact: LeaderContact,
    quorum_timeout: Duration,
    /// The term this node leads in and when it was first seen leading in it.
    leading: Mutex<Option<(u64, Instant)>>,
    verdict: watch::Sender<Verdict>,
}

impl Probe {
    /// A probe of `raft`'s node in `cluster`. A leader must have heard from a quorum, and a
    /// follower from its leader (through `contact`), within `quorum_timeout`.
    pub fn new(
        raft: Raft,
        cluster: String,
        membership: membership::Handle,
        contact: LeaderContact,
        quorum_timeout: Duration,
    ) -> Self {
        let (verdict, _) = watch::channel(Verdict { ready: false, reason: "not ready: starting\n".into() });
        Self(Arc::new(Inner {
            raft,
            cluster,
            membership,
            contact,
            quorum_timeout,
            leading: Mutex::new(None),
            verdict,
        }))
    }

    /// Judges readiness now, and tells [`subscribe`](Self::subscribe)rs if it changed.
    pub fn check(&self) -> Verdict {
        let now = Instant::now();
        let verdict = {
            let metrics = self.0.raft.metrics();
            let m = metrics.borrow();
            let leader = m.current_leader;
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            let gossip = self.0.membership.gossip.view();
            let voters_alive = voters
                .iter()
                .filter(|v| {
                    **v == m.id
                        || gossip
                            .members
                            .get(v)
                            .is_some_and(|g| g.health == membership::gossip::Health::Alive)
                })
                .count();
            let view = View {
                id: m.id,
                cluster: &self.0.cluster,
                term: m.current_term,
                leader,
                millis_since_quorum_ack: m.millis_since_quorum_ack,
                leading_since: self.leading_since(leader == Some(m.id), m.current_term, now),
                contact: self.0.contact.last(),
                initialized: membership::bootstrap::initialized_in(&m),
                voters: voters.len(),
                voters_alive,
            };
            assess(&view, now, self.0.quorum_timeout, || self.0.membership.bootstrap.join_state())
        };
        self.0.verdict.send_if_modified(|last| {
            let changed = last.ready != verdict.ready;
            if changed {
                *last = verdict.clone();
            }
            changed
        });
        verdict
    }

    /// The latest verdict, updated when readiness turns (not when only the reason's figures
    /// change). Kept current by [`run`].
    pub fn subscribe(&self) -> watch::Receiver<Verdict> {
        self.0.verdict.subscribe()
    }

    /// When this node started leading in `term` (as far as a check saw), or `None` when it does
    /// not lead.
    fn leading_since(&self, leads: bool, term: u64, now: Instant) -> Option<Instant> {
        let mut leading = self.0.leading.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !leads {
            *leading = None;
            return None;
        }
        match *leading {
            Some((t, since)) if t == term => Some(since),
            _ => {
                *leading = Some((term, now));
                Some(now)
            }
        }
    }
}

/// Judges readiness until `shutdown`: on a Raft metrics change and every [`TICK`], at most
/// once per [`MIN_CHECK_GAP`].
pub async fn run(probe: Probe, shutdown: CancellationToken) {
    let mut metrics = probe.0.raft.metrics();
    loop {
        probe.check();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(MIN_CHECK_GAP) => {}
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() {
                // Raft stopped: the node is shutting down.
                return;
            },
            _ = tokio::time::sleep(TICK - MIN_CHECK_GAP) => {}
        }
    }
}

/// What readiness is judged on.
struct View<'a> {
    id: NodeId,
    cluster: &'a str,
    term: u64,
    leader: Option<NodeId>,
    millis_since_quorum_ack: Option<u64>,
    /// Set when this node leads.
    leading_since: Option<Instant>,
    contact: Option<Contact>,
    initialized: bool,
    /// Voters of the membership this node holds, and how many of them its gossip sees alive
    /// (itself included).
    voters: usize,
    voters_alive: usize,
}

/// The rule (see the module doc); pure, so it can be tested on any clock.
fn assess(
    view: &View<'_>,
    now: Instant,
    quorum_timeout: Duration,
    join_state: impl FnOnce() -> String,
) -> Verdict {
    let id = view.id;
    let timeout_ms = quorum_timeout.as_millis();
    let not_ready = |why: String| Verdict { ready: false, reason: format!("not ready: node {id} {why}\n") };
    let Some(leader) = view.leader else {
        if !view.initialized {
            return not_ready(format!("is in no cluster yet: {}", join_state()));
        }
        return not_ready(format!(
            "knows no leader (term {}); waiting for an election or for peers",
            view.term
        ));
    };
    if leader == id {
        match (view.millis_since_quorum_ack, view.leading_since) {
            (Some(ms), _) if u128::from(ms) > timeout_ms => {
                return not_ready(format!("leads but has not heard from a quorum for {ms} ms"));
            }
            (None, Some(since)) if now.duration_since(since) > quorum_timeout => {
                return not_ready(format!(
                    "leads (term {}) but has not heard from a quorum since it took the lead {} ms \
                     ago; are the other voters up?",
                    view.term,
                    now.duration_since(since).as_millis()
                ));
            }
            _ => {}
        }
    } else {
        match view.contact {
            Some(c) if c.leader == leader && now.duration_since(c.at) <= quorum_timeout => {}
            Some(c) if c.leader == leader => {
                return not_ready(format!(
                    "follows node {leader} but has not heard from it for {} ms",
                    now.duration_since(c.at).as_millis()
                ));
            }
            _ => {
                return not_ready(format!(
                    "follows node {leader} (term {}) but has not heard from it since this node \
                     started; is it up?",
                    view.term
                ));
            }
        }
        // openraft's leader does not step down without a quorum and keeps sending heartbeats
        // to whom it still reaches: a follower (or learner) cut off with it would otherwise
        // stay ready while every write through it fails.
        if view.voters > 0 && view.voters_alive * 2 <= view.voters {
            return not_ready(format!(
                "follows node {leader}, but gossip sees only {} of the {} voters alive: the \
                 leader cannot reach a quorum",
                view.voters_alive, view.voters
            ));
        }
    }
    Verdict {
        ready: true,
        reason: format!("ready: node {id} of cluster '{}', leader is node {leader}\n", view.cluster),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(1000);

    fn view(leader: Option<NodeId>) -> View<'static> {
        View {
            id: 1,
            cluster: "c",
            term: 7,
            leader,
            millis_since_quorum_ack: None,
            leading_since: None,
            contact: None,
            initialized: true,
            voters: 3,
            voters_alive: 3,
        }
    }

    fn judge(v: &View<'_>, now: Instant) -> Verdict {
        assess(v, now, TIMEOUT, || "waiting for seeds".into())
    }

    #[test]
    fn a_leader_is_ready_while_a_quorum_acks() {
        let now = Instant::now();
        let mut v = view(Some(1));
        v.leading_since = Some(now - Duration::from_secs(60));
        v.millis_since_quorum_ack = Some(40);
        let verdict = judge(&v, now);
        assert!(verdict.ready, "{verdict:?}");
        assert_eq!(verdict.reason, "ready: node 1 of cluster 'c', leader is node 1\n");
        v.millis_since_quorum_ack = Some(1001);
        let verdict = judge(&v, now);
        assert!(!verdict.ready);
        assert!(verdict.reason.contains("has not heard from a quorum for 1001 ms"), "{verdict:?}");
    }

    #[test]
    fn a_leader_no_quorum_ever_acked_is_ready_only_within_the_timeout() {
        let now = Instant::now();
        let mut v = view(Some(1));
        v.leading_since = Some(now - Duration::from_millis(300));
        assert!(judge(&v, now).ready, "just elected: its voters granted the vote a moment ago");
        v.leading_since = Some(now - Duration::from_millis(1500));
        let verdict = judge(&v, now);
        assert!(!verdict.ready);
        assert!(verdict.reason.contains("since it took the lead 1500 ms ago"), "{verdict:?}");
    }

    #[test]
    fn a_follower_is_ready_only_while_it_hears_from_its_leader() {
        let now = Instant::now();
        let mut v = view(Some(2));
        let verdict = judge(&v, now);
        assert!(!verdict.ready);
        assert!(
            verdict.reason.contains("follows node 2 (term 7) but has not heard from it since"),
            "{verdict:?}"
        );
        v.contact = Some(Contact { leader: 2, at: now - Duration::from_millis(100) });
        assert!(judge(&v, now).ready);
        v.contact = Some(Contact { leader: 2, at: now - Duration::from_millis(1200) });
        let verdict = judge(&v, now);
        assert!(!verdict.ready);
        assert!(verdict.reason.contains("has not heard from it for 1200 ms"), "{verdict:?}");
        // A message from an earlier leader says nothing about this one.
        v.contact = Some(Contact { leader: 3, at: now });
        assert!(!judge(&v, now).ready);
    }

    #[test]
    fn a_follower_of_a_leader_without_a_quorum_is_not_ready() {
        // The leader still sends heartbeats to the followers it reaches, but most voters are
        // gone: writes through this node would fail.
        let now = Instant::now();
        let mut v = view(Some(2));
        v.contact = Some(Contact { leader: 2, at: now - Duration::from_millis(50) });
        v.voters = 5;
        v.voters_alive = 3;
        assert!(judge(&v, now).ready, "3 of 5 alive: a quorum");
        v.voters_alive = 2;
        let verdict = judge(&v, now);
        assert!(!verdict.ready);
        assert!(verdict.reason.contains("gossip sees only 2 of the 5 voters alive"), "{verdict:?}");
        v.voters = 4;
        assert!(!judge(&v, now).ready, "2 of 4 is no majority");
    }

    #[test]
    fn without_a_leader_the_reason_says_whether_the_node_is_in_a_cluster() {
        let now = Instant::now();
        let mut v = view(None);
        assert!(judge(&v, now).reason.contains("knows no leader (term 7)"));
        v.initialized = false;
        let verdict = judge(&v, now);
        assert!(!verdict.ready);
        assert_eq!(verdict.reason, "not ready: node 1 is in no cluster yet: waiting for seeds\n");
    }
}

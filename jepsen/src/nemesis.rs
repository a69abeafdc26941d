//! Nemeses: the faults, and the schedule that starts and heals them.
//!
//! Each window: wait `interval`, take the next group of the `--nemesis` list in turn (a
//! group is one fault, or several joined with `+` that start together; taking them in turn
//! makes sure a short run sees every one), start it on random targets, wait `duration`,
//! heal it. Starts and stops go into the history as nemesis events, which the
//! report shades on its plots. At the end everything is healed: partitions removed, paused
//! nodes resumed, killed nodes restarted.
//!
//! Membership churn ([`Kind::Membership`], needs `--membership gossip`): its start stops
//! one node for good, alternately with SIGTERM (a graceful leave: the leader removes it at
//! once) and SIGKILL (gossip declares it down; the leader removes it after the grace); its
//! stop starts a fresh node (new id, spare host, empty data directory, seeded with live
//! nodes) that joins as a learner. It never stops a node when that would leave fewer than
//! [`MIN_RUNNING`] nodes running or less than a majority of the leader's voters running.
//!
//! Agent kills ([`Kind::KillAgent`], executions workload only): its start `kill -9`s the
//! agent process that applied the latest increment (the counter's `serving` record, read
//! stale from any node), or a random running one when that is unknown; its stop starts
//! every agent that is not running.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::agents::Agents;
use crate::db::Db;
use crate::history::{Op, Phase, Type};
use crate::net::{Grudge, Network};
use crate::recorder::Recorder;
use crate::rng::Rng;

/// A fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `kill -9` a minority of nodes; restart them when healed.
    Kill,
    /// SIGSTOP a minority of nodes; SIGCONT when healed.
    Pause,
    /// Cut the nodes into two random halves (a minority and a majority).
    PartitionHalves,
    /// Cut the current leader off from every other node.
    PartitionLeader,
    /// Arrange the nodes in a random ring; each hears only from its nearest neighbours, which
    /// with itself make a majority, but no two nodes see the same majority.
    PartitionRing,
    /// Two halves that cannot talk to each other, joined by one node that talks to both.
    PartitionBridge,
    /// Stop a node for good (SIGTERM or SIGKILL, alternately); when healed, add a fresh node
    /// on a spare host. Gossip membership only.
    Membership,
    /// `kill -9` the agent process serving the counter (else a random one); restart it when
    /// healed. Executions workload only.
    KillAgent,
}

/// The membership nemesis never leaves fewer nodes running than this.
pub const MIN_RUNNING: usize = 3;

impl Kind {
    /// Every fault, for `--nemesis all`.
    pub const ALL: [Kind; 6] = [
        Kind::Kill,
        Kind::Pause,
        Kind::PartitionHalves,
        Kind::PartitionLeader,
        Kind::PartitionRing,
        Kind::PartitionBridge,
    ];

    /// The name used on the command line and in histories.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Pause => "pause",
            Kind::PartitionHalves => "partition-halves",
            Kind::PartitionLeader => "partition-leader",
            Kind::PartitionRing => "partition-ring",
            Kind::PartitionBridge => "partition-bridge",
            Kind::Membership => "membership",
            Kind::KillAgent => "kill-agent",
        }
    }

    fn is_partition(self) -> bool {
        matches!(
            self,
            Kind::PartitionHalves | Kind::PartitionLeader | Kind::PartitionRing | Kind::PartitionBridge
        )
    }
}

/// A `--nemesis` value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The name is not a fault.
    #[error(
        "unknown nemesis '{0}': expected none, all, kill, pause, partition (= partition-halves), partition-halves, partition-leader, partition-ring, partition-bridge, membership or kill-agent, joined with ',' (one per window) or '+' (together)"
    )]
    Unknown(String),
    /// A kill or pause of a minority in the same window as a node stopped for good could
    /// leave no live majority of voters; refused before anything starts.
    #[error(
        "nemesis group '{0}' joins membership with kill or pause: a minority down plus a node stopped for good can leave no live majority of voters; put them in separate windows (e.g. membership,kill)"
    )]
    UnsafeChurn(String),
    /// Two partitions in one group would replace each other.
    #[error("nemesis group '{0}' holds two partitions; only one partition can be in force at a time")]
    TwoPartitions(String),
    /// Controlling the nodes or network failed.
    #[error(transparent)]
    Db(#[from] crate::db::Error),
    /// Changing the network failed.
    #[error(transparent)]
    Net(#[from] crate::net::Error),
    /// Restarting an agent failed.
    #[error(transparent)]
    Agents(#[from] crate::agents::Error),
}

/// The parsed `--nemesis` list: one group is chosen per window.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Spec {
    pub groups: Vec<Vec<Kind>>,
}

impl Spec {
    /// Whether some group churns the membership (needs gossip mode and spare hosts).
    pub fn churns(&self) -> bool {
        self.groups.iter().flatten().any(|k| *k == Kind::Membership)
    }

    /// Whether some group kills agent processes (needs the executions workload).
    pub fn kills_agents(&self) -> bool {
        self.groups.iter().flatten().any(|k| *k == Kind::KillAgent)
    }

    /// The spec's text, as `kill,partition-halves+pause`.
    pub fn name(&self) -> String {
        if self.groups.is_empty() {
            return "none".into();
        }
        self.groups
            .iter()
            .map(|g| g.iter().map(|k| k.name()).collect::<Vec<_>>().join("+"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl FromStr for Spec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let mut groups = Vec::new();
        for group in s.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            if group == "none" {
                continue;
            }
            if group == "all" {
                groups.extend(Kind::ALL.iter().map(|k| vec![*k]));
                continue;
            }
            let mut kinds = Vec::new();
            for name in group.split('+').map(str::trim) {
                let kind = match name {
                    "kill" => Kind::Kill,
                    "pause" => Kind::Pause,
                    "partition" | "partition-halves" => Kind::PartitionHalves,
                    "partition-leader" => Kind::PartitionLeader,
                    "partition-ring" => Kind::PartitionRing,
                    "partition-bridge" => Kind::PartitionBridge,
                    "membership" | "churn" => Kind::Membership,
                    "kill-agent" | "kill-agents" => Kind::KillAgent,
                    other => return Err(Error::Unknown(other.into())),
                };
                if !kinds.contains(&kind) {
                    kinds.push(kind);
                }
            }
            if kinds.iter().filter(|k| k.is_partition()).count() > 1 {
                return Err(Error::TwoPartitions(group.into()));
            }
            if kinds.contains(&Kind::Membership) {
                if kinds.iter().any(|k| matches!(k, Kind::Kill | Kind::Pause)) {
                    return Err(Error::UnsafeChurn(group.into()));
                }
                // Stop the node before a partition is cut, so the safety check sees the
                // whole cluster; the fresh node then joins after the partition is healed.
                kinds.sort_by_key(|k| *k != Kind::Membership);
            }
            groups.push(kinds);
        }
        Ok(Spec { groups })
    }
}

/// When faults happen.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Quiet time before each fault.
    pub interval: Duration,
    /// How long each fault lasts.
    pub duration: Duration,
}

/// Nodes `0..n` split into two random halves; the first is the smaller.
fn halves(ids: &[u64], rng: &mut Rng) -> (Vec<u64>, Vec<u64>) {
    let mut v = ids.to_vec();
    rng.shuffle(&mut v);
    let b = v.split_off(v.len() / 2);
    (v, b)
}

/// A grudge in which the nodes of `a` and of `b` cannot hear each other.
fn split(a: &[u64], b: &[u64]) -> Grudge {
    let mut g = Grudge::new();
    for x in a {
        g.entry(*x).or_default().extend(b.iter().copied());
    }
    for y in b {
        g.entry(*y).or_default().extend(a.iter().copied());
    }
    g
}

/// The grudge of a majority ring over `ids` in random order.
fn ring(ids: &[u64], rng: &mut Rng) -> Grudge {
    let mut v = ids.to_vec();
    rng.shuffle(&mut v);
    let n = v.len();
    let reach = (n / 2).div_ceil(2);
    let mut g = Grudge::new();
    for i in 0..n {
        let near: BTreeSet<u64> =
            (1..=reach).flat_map(|d| [v[(i + d) % n], v[(i + n - d % n) % n]]).collect();
        let far: BTreeSet<u64> = v.iter().copied().filter(|x| *x != v[i] && !near.contains(x)).collect();
        if !far.is_empty() {
            g.insert(v[i], far);
        }
    }
    g
}

/// The grudge of a bridge: two halves that cannot talk, one node that talks to both.
fn bridge(ids: &[u64], rng: &mut Rng) -> (Grudge, u64) {
    let mut v = ids.to_vec();
    rng.shuffle(&mut v);
    let mid = v.len() / 2;
    let (a, rest) = v.split_at(mid);
    (split(a, &rest[1..]), rest[0])
}

/// Up to a minority of random nodes (at least one).
fn minority(ids: &[u64], rng: &mut Rng) -> Vec<u64> {
    let mut v = ids.to_vec();
    rng.shuffle(&mut v);
    let most = ((v.len().saturating_sub(1)) / 2).max(1);
    v.truncate(1 + rng.below(most as u64) as usize);
    v.sort();
    v
}

/// What the schedule remembers between windows.
#[derive(Debug, Default)]
struct State {
    /// Nodes stopped for good so far (graceful and killed alternate).
    stopped: u64,
}

/// Stops one node for good, if that keeps [`MIN_RUNNING`] nodes and a majority of the
/// leader's voters running.
async fn churn_out(db: &mut Db, rng: &mut Rng, state: &mut State) -> Result<String, Error> {
    let running: Vec<u64> = db
        .nodes()
        .iter()
        .filter(|n| !n.is_gone() && n.is_running() && !n.is_paused())
        .map(|n| n.id)
        .collect();
    if running.len() <= MIN_RUNNING {
        return Ok(format!("nobody stopped: only {} nodes running", running.len()));
    }
    let Some(leader) = db.leader().await else {
        return Ok("nobody stopped: no leader known".into());
    };
    let voters = db.voters_seen_by(leader).await;
    if voters.is_empty() {
        return Ok("nobody stopped: the leader did not say its voters".into());
    }
    let live_voters = |without: u64| voters.iter().filter(|v| **v != without && running.contains(v)).count();
    let candidates: Vec<u64> =
        running.iter().copied().filter(|id| live_voters(*id) > voters.len() / 2).collect();
    if candidates.is_empty() {
        return Ok(format!("nobody stopped: voters {voters:?}, running {running:?}: no one can go"));
    }
    let victim = candidates[rng.below(candidates.len() as u64) as usize];
    let graceful = state.stopped.is_multiple_of(2);
    state.stopped += 1;
    let role = if voters.contains(&victim) { "voter" } else { "learner" };
    db.stop_for_good(victim, graceful).await?;
    let how = if graceful { "left (SIGTERM)" } else { "killed for good (SIGKILL)" };
    Ok(format!("removed {victim} ({role}): {how}; voters were {voters:?}, leader {leader}"))
}

/// Starts a fresh node on the first unused spare host, seeded with the running nodes.
fn churn_in(db: &mut Db, net: &Network) -> Result<String, Error> {
    let used: BTreeSet<u64> = db.nodes().iter().map(|n| n.id).collect();
    let Some(host) = net.spares().iter().find(|h| !used.contains(&h.id)).cloned() else {
        return Ok("nobody added: no spare host left".into());
    };
    let seeds: Vec<String> = db
        .nodes()
        .iter()
        .filter(|n| !n.is_gone() && n.is_running() && !n.is_paused())
        .map(|n| n.addr.clone())
        .collect();
    db.add(&host, &seeds)?;
    Ok(format!("added {} on {} (seeds {seeds:?})", host.id, host.ip))
}

/// What the nemesis acts on: the nodes, the agent processes (none outside the executions
/// workload) and the network.
pub struct Targets<'a> {
    pub db: &'a mut Db,
    pub agents: &'a mut Agents,
    pub net: &'a Network,
}

/// Starts a fault; returns a description of what it did.
async fn start(kind: Kind, t: &mut Targets<'_>, rng: &mut Rng, state: &mut State) -> Result<String, Error> {
    let (db, net) = (&mut *t.db, t.net);
    let ids: Vec<u64> = db.member_ids();
    Ok(match kind {
        Kind::KillAgent => t.agents.kill_serving(rng).await,
        Kind::Membership => churn_out(db, rng, state).await?,
        Kind::Kill => {
            let victims = minority(&ids, rng);
            for id in &victims {
                db.kill(*id);
            }
            format!("killed {victims:?}")
        }
        Kind::Pause => {
            let victims = minority(&ids, rng);
            for id in &victims {
                db.pause(*id)?;
            }
            format!("paused {victims:?}")
        }
        Kind::PartitionHalves => {
            let (a, b) = halves(&ids, rng);
            net.cut(&split(&a, &b))?;
            format!("{a:?} | {b:?}")
        }
        Kind::PartitionLeader => {
            let (leader, how) = match db.leader().await {
                Some(l) => (l, "leader"),
                None => (ids[rng.below(ids.len() as u64) as usize], "no leader known; random node"),
            };
            let others: Vec<u64> = ids.iter().copied().filter(|x| *x != leader).collect();
            net.cut(&split(&[leader], &others))?;
            format!("isolated {leader} ({how}) from {others:?}")
        }
        Kind::PartitionRing => {
            let g = ring(&ids, rng);
            net.cut(&g)?;
            format!("ring, each drops {:?}", g)
        }
        Kind::PartitionBridge => {
            let (g, b) = bridge(&ids, rng);
            net.cut(&g)?;
            format!("bridge {b}, drops {g:?}")
        }
    })
}

/// Heals a fault.
fn stop(kind: Kind, t: &mut Targets<'_>) -> Result<String, Error> {
    let (db, net) = (&mut *t.db, t.net);
    Ok(match kind {
        Kind::KillAgent => format!("restarted agents {:?}", t.agents.heal()?),
        Kind::Membership => churn_in(db, net)?,
        Kind::Kill => {
            let dead: Vec<u64> =
                db.nodes().iter().filter(|n| !n.is_running() && !n.is_gone()).map(|n| n.id).collect();
            for id in &dead {
                db.restart(*id)?;
            }
            format!("restarted {dead:?}")
        }
        Kind::Pause => {
            let paused: Vec<u64> = db.nodes().iter().filter(|n| n.is_paused()).map(|n| n.id).collect();
            for id in &paused {
                db.resume(*id)?;
            }
            format!("resumed {paused:?}")
        }
        _ => {
            net.heal()?;
            "healed".into()
        }
    })
}

fn record(recorder: &Recorder, phase: Phase, kind: Kind, detail: String) {
    tracing::info!(nemesis = kind.name(), ?phase, %detail, "nemesis");
    recorder.record(None, Type::Info, Op::Nemesis { phase, name: kind.name().into(), detail }, None, None);
}

/// Runs the schedule until `until`, then heals everything.
pub async fn run(
    spec: &Spec,
    schedule: Schedule,
    t: &mut Targets<'_>,
    recorder: &Recorder,
    rng: &mut Rng,
    until: Instant,
) -> Result<(), Error> {
    let result = windows(spec, schedule, t, recorder, rng, until).await;
    // Whatever happened, leave a whole cluster behind.
    t.net.heal()?;
    t.db.heal()?;
    t.agents.heal()?;
    result
}

async fn windows(
    spec: &Spec,
    schedule: Schedule,
    t: &mut Targets<'_>,
    recorder: &Recorder,
    rng: &mut Rng,
    until: Instant,
) -> Result<(), Error> {
    if spec.groups.is_empty() {
        tokio::time::sleep_until(until.into()).await;
        return Ok(());
    }
    let mut state = State::default();
    for window in 0.. {
        let quiet_end = Instant::now() + schedule.interval;
        if quiet_end >= until {
            tokio::time::sleep_until(until.into()).await;
            return Ok(());
        }
        tokio::time::sleep_until(quiet_end.into()).await;
        let group = &spec.groups[window % spec.groups.len()];
        let mut started = Vec::new();
        for kind in group {
            let detail = start(*kind, t, rng, &mut state).await?;
            record(recorder, Phase::Start, *kind, detail);
            started.push(*kind);
        }
        let end = (Instant::now() + schedule.duration).min(until);
        tokio::time::sleep_until(end.into()).await;
        for kind in started.iter().rev() {
            let detail = stop(*kind, t)?;
            record(recorder, Phase::Stop, *kind, detail);
        }
    }
    Ok(())
}

/// The grudges the partition faults build, for tests and docs.
pub fn describe(kind: Kind, ids: &[u64], seed: u64) -> Option<Grudge> {
    let mut rng = Rng::new(seed);
    match kind {
        Kind::PartitionHalves => {
            let (a, b) = halves(ids, &mut rng);
            Some(split(&a, &b))
        }
        Kind::PartitionRing => Some(ring(ids, &mut rng)),
        Kind::PartitionBridge => Some(bridge(ids, &mut rng).0),
        _ => None,
    }
}

/// Which nodes each node can hear under `grudge` (itself included).
pub fn reachable(ids: &[u64], grudge: &Grudge) -> BTreeMap<u64, BTreeSet<u64>> {
    ids.iter()
        .map(|a| (*a, ids.iter().copied().filter(|b| grudge.get(a).is_none_or(|g| !g.contains(b))).collect()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_groups_and_refuses_what_is_not_there() {
        let s: Spec = "kill, partition+pause".parse().unwrap();
        assert_eq!(s.groups, vec![vec![Kind::Kill], vec![Kind::PartitionHalves, Kind::Pause]]);
        assert_eq!(s.name(), "kill,partition-halves+pause");
        assert_eq!("none".parse::<Spec>().unwrap().groups.len(), 0);
        assert_eq!("all".parse::<Spec>().unwrap().groups.len(), Kind::ALL.len());
        let m: Spec = "partition-ring+membership,kill".parse().unwrap();
        assert_eq!(m.groups[0], vec![Kind::Membership, Kind::PartitionRing], "membership starts first");
        assert!(m.churns() && !s.churns());
        assert!(matches!("membership+kill".parse::<Spec>(), Err(Error::UnsafeChurn(_))));
        assert!(matches!("pause+churn".parse::<Spec>(), Err(Error::UnsafeChurn(_))));
        assert!(!"all".parse::<Spec>().unwrap().churns(), "all is every single fault of a static cluster");
        assert!(matches!("explode".parse::<Spec>(), Err(Error::Unknown(_))));
        assert!(matches!("partition-ring+partition-leader".parse::<Spec>(), Err(Error::TwoPartitions(_))));
        let a: Spec = "kill+kill-agent,partition-halves".parse().unwrap();
        assert_eq!(a.groups[0], vec![Kind::Kill, Kind::KillAgent]);
        assert!(a.kills_agents() && !s.kills_agents());
        assert!(!"all".parse::<Spec>().unwrap().kills_agents(), "all is every fault of the nodes");
    }

    #[test]
    fn partitions_have_the_promised_shapes() {
        let ids = [1, 2, 3, 4, 5];
        for seed in 0..50 {
            // Halves: two sides of 2 and 3 that hear only themselves.
            let r = reachable(&ids, &describe(Kind::PartitionHalves, &ids, seed).unwrap());
            let mut sizes: Vec<usize> = r.values().map(|s| s.len()).collect();
            sizes.sort();
            assert_eq!(sizes, vec![2, 2, 3, 3, 3]);
            // Ring: everyone hears exactly a majority (3 of 5), and not all the same one.
            let r = reachable(&ids, &describe(Kind::PartitionRing, &ids, seed).unwrap());
            assert!(r.values().all(|s| s.len() == 3), "{r:?}");
            assert!(r.values().collect::<BTreeSet<_>>().len() == 5);
            // Bridge: one node hears everyone, the others hear 3.
            let r = reachable(&ids, &describe(Kind::PartitionBridge, &ids, seed).unwrap());
            let mut sizes: Vec<usize> = r.values().map(|s| s.len()).collect();
            sizes.sort();
            assert_eq!(sizes, vec![3, 3, 3, 3, 5]);
        }
    }

    #[test]
    fn minorities_are_minorities() {
        let mut rng = Rng::new(3);
        for _ in 0..100 {
            let m = minority(&[1, 2, 3, 4, 5], &mut rng);
            assert!((1..=2).contains(&m.len()));
        }
        assert_eq!(minority(&[1], &mut rng).len(), 1);
    }
}

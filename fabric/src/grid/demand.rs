//! Demand: what a scaler needs to know per agent, read from the grid in one pass under the
//! read lock. Served by `weft.fabric.v1.Scaling/WatchDemand` on every node from its replica.
//!
//! ```text
//!   pending   = Σ ready[(agent, *)]                     executions offered to sessions now
//!             + Σ queue of instances no session holds   (their heads sit in `ready` too:
//!                 minus their offered head                counted once)
//!   delayed   = executions of the agent in `delayed`    (not before their time)
//!   running   = what the agent's sessions hold now      (a one-agent session: `assigned.len()`)
//!   generator_listeners = listeners of generator streams whose execution is still pending
//! ```
//!
//! Cost of one picture, from the indexes the grid keeps for dispatch and timers: the `ready`
//! queues' sizes, one pass over the agent's instances (their queues' sizes), one pass over the
//! sessions that serve it (a session serving several agents looks up what it holds), one pass
//! over `delayed` for all agents together (no index by agent: it is a timer queue), and one
//! over the running generators. It never scans the executions table. Lists are bounded
//! ([`MAX_LISTED_INSTANCES`], [`MAX_LISTED_SESSIONS`], [`MAX_LISTED_CLAIMS`]); counts never are.

use std::collections::{BTreeMap, BTreeSet};

use super::Grid;
use super::execution::{SessionId, Status};
use super::instance::Lifecycle;
use crate::NodeId;

/// Most agents a watch may name.
pub const MAX_WATCHED_AGENTS: usize = 1000;
/// Most agents a picture of "every agent" holds (in name order): a scaler that manages more
/// names its agents.
pub const MAX_PICTURED_AGENTS: usize = 10_000;
/// Most instances listed per agent (counts cover all of them).
pub const MAX_LISTED_INSTANCES: usize = 10_000;
/// Most sessions listed per agent.
pub const MAX_LISTED_SESSIONS: usize = 10_000;
/// Most instance ids listed as one session's `claimed` (a per-instance process claims one).
pub const MAX_LISTED_CLAIMS: usize = super::session::MAX_CLAIMS_PER_SESSION;

/// Which agents a picture covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Agents {
    /// Every agent with pending, running or delayed work, an instance or a session (at most
    /// [`MAX_PICTURED_AGENTS`]).
    All,
    /// These agents (each present, with zeros if it has nothing), in name order.
    Named(BTreeSet<String>),
}

/// The demand of one agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentDemand {
    /// The agent.
    pub agent: String,
    /// Executions ready to run that no session holds (see the module docs).
    pub pending: u64,
    /// Executions assigned to sessions now.
    pub running: u64,
    /// Pending executions whose not-before time has not come.
    pub delayed: u64,
    /// The agent's live instances, in id order (at most [`MAX_LISTED_INSTANCES`]).
    pub instances: Vec<InstanceDemand>,
    /// Whether instances were left out of `instances`.
    pub instances_truncated: bool,
    /// Listeners waiting on generator streams of this agent whose execution is not assigned.
    pub generator_listeners: u64,
    /// The live sessions serving the agent, in id order (at most [`MAX_LISTED_SESSIONS`]).
    pub sessions: Vec<SessionLoad>,
    /// Whether sessions were left out of `sessions`.
    pub sessions_truncated: bool,
}

impl AgentDemand {
    fn new(agent: &str) -> Self {
        Self { agent: agent.to_owned(), ..Self::default() }
    }
}

/// One live instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceDemand {
    /// The instance id.
    pub id: String,
    /// Where it is in its life.
    pub lifecycle: Lifecycle,
    /// The session it is activated on; `None`: no live session serves it.
    pub session: Option<SessionId>,
    /// Its executions not finished (queued, delayed or running).
    pub unfinished: u64,
}

/// One live session serving an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLoad {
    /// Its id.
    pub id: SessionId,
    /// Its label (a scaler's processes carry the name the scaler gave them).
    pub name: String,
    /// The node its stream is on.
    pub node: NodeId,
    /// Most executions it holds at once.
    pub capacity: u32,
    /// Executions it holds now, of every agent it serves.
    pub assigned: u32,
    /// It takes no new work.
    pub draining: bool,
    /// It serves only the instances it claimed.
    pub only_claimed: bool,
    /// Instances of this agent activated on it (claimed when it opened, or taken since), in
    /// id order, at most [`MAX_LISTED_CLAIMS`].
    pub claimed: Vec<String>,
}

impl Grid {
    /// The demand of `agents`, as of this grid. See the module docs for what is counted and
    /// what it costs.
    pub fn demand(&self, agents: &Agents) -> Vec<AgentDemand> {
        let w = &self.work;
        let delayed = self.delayed_by_agent();
        let generators = self.generator_listeners_by_agent();
        let names: Vec<&str> = match agents {
            Agents::Named(names) => names.iter().map(String::as_str).collect(),
            Agents::All => {
                let mut all: BTreeSet<&str> = BTreeSet::new();
                all.extend(w.ready.keys().map(|(agent, _)| agent.as_str()));
                all.extend(w.instances.keys().map(|(agent, _)| agent.as_str()));
                all.extend(w.serving.keys().map(String::as_str));
                all.extend(delayed.keys().copied());
                all.extend(generators.keys().copied());
                all.into_iter().take(MAX_PICTURED_AGENTS).collect()
            }
        };
        names
            .into_iter()
            .map(|agent| {
                let mut d = self.agent_demand(agent);
                d.delayed = delayed.get(agent).copied().unwrap_or(0);
                d.generator_listeners = generators.get(agent).copied().unwrap_or(0);
                d
            })
            .collect()
    }

    /// Everything but `delayed` and `generator_listeners`, which are counted for all agents
    /// at once.
    fn agent_demand(&self, agent: &str) -> AgentDemand {
        let w = &self.work;
        let mut d = AgentDemand::new(agent);
        let from = (agent.to_owned(), String::new());
        d.pending = w
            .ready
            .range(from.clone()..)
            .take_while(|((a, _), _)| a == agent)
            .map(|(_, q)| q.len() as u64)
            .sum();
        for (_, inst) in w.instances.range(from..).take_while(|((a, _), _)| a == agent) {
            if inst.session.is_none() {
                // Its offered head waits in `ready` as well, counted there.
                d.pending += inst.queue.len().saturating_sub(usize::from(inst.offered.is_some())) as u64;
            }
            if d.instances.len() == MAX_LISTED_INSTANCES {
                d.instances_truncated = true;
                continue;
            }
            d.instances.push(InstanceDemand {
                id: inst.id.clone(),
                lifecycle: inst.lifecycle,
                session: inst.session,
                unfinished: inst.live.len() as u64,
            });
        }
        let Some(serving) = w.serving.get(agent) else { return d };
        for s in serving.iter().filter_map(|id| w.sessions.get(id)) {
            d.running += if s.agents.len() == 1 {
                s.assigned.len() as u64
            } else {
                s.assigned.iter().filter(|id| w.executions.get(id).is_some_and(|e| e.agent == agent)).count()
                    as u64
            };
            if d.sessions.len() == MAX_LISTED_SESSIONS {
                d.sessions_truncated = true;
                continue;
            }
            let claimed = s
                .activated
                .range((agent.to_owned(), String::new())..)
                .take_while(|(a, _)| a == agent)
                .take(MAX_LISTED_CLAIMS)
                .map(|(_, id)| id.clone())
                .collect();
            d.sessions.push(SessionLoad {
                id: s.id,
                name: s.name.clone(),
                node: s.host.node,
                capacity: s.capacity,
                assigned: s.assigned.len() as u32,
                draining: s.draining,
                // leases branch: the lead wires `Session::only_claimed` here once it lands.
                only_claimed: false,
                claimed,
            });
        }
        d
    }

    /// Delayed executions per agent: one pass over the timer queue.
    fn delayed_by_agent(&self) -> BTreeMap<&str, u64> {
        let mut out: BTreeMap<&str, u64> = BTreeMap::new();
        for (_, id) in &self.work.delayed {
            if let Some(e) = self.work.executions.get(id) {
                *out.entry(e.agent.as_str()).or_default() += 1;
            }
        }
        out
    }

    /// Listeners attached to generator streams whose generator execution waits for a session,
    /// per the generator's agent.
    fn generator_listeners_by_agent(&self) -> BTreeMap<&str, u64> {
        let mut out: BTreeMap<&str, u64> = BTreeMap::new();
        for (id, stream) in &self.streams.generators {
            let Some(e) = self.work.executions.get(id).filter(|e| e.status == Status::Pending) else {
                continue;
            };
            let Some(s) = self.streams.streams.get(stream) else { continue };
            let listeners: usize = s.cursors.values().map(|c| c.listeners.len()).sum();
            if listeners > 0 {
                *out.entry(e.agent.as_str()).or_default() += listeners as u64;
            }
        }
        out
    }
}

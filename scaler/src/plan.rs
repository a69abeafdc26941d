//! How many replicas each agent should have, and which to start and stop: a pure function of
//! the agent's configuration, its demand, its replicas and the time, plus a little memory
//! carried from one call to the next (when the demand fell).
//!
//! ```text
//!  pool:          load = pending + running + generator_listeners
//!                 need = ceil(load / backlog_per_replica)       (0 -> 1 only with scale_from_zero,
//!                        clamped to [min_replicas, max_replicas] else once load ≥ one backlog)
//!                 up at once; down only after need stayed below the target for idle_ms,
//!                 then to the most needed meanwhile; stops: waiting, idle, starting, busy
//!                 (replicas this scaler can stop before remote ones)
//!  per-instance:  one replica per live instance that no session serves (not stopping);
//!                 a replica whose instance is gone is stopped; above max_replicas
//!                 (a reload lowered it, more were adopted) the excess is stopped:
//!                 starting ones first, then the newest
//!  both:          alive (starting + running + stopping) never above max_replicas; at most
//!                 `starts_allowed` starts (the scale-up rate)
//! ```

use std::collections::BTreeSet;

use crate::backend::ReplicaId;
use crate::config::{AgentConfig, Mode};
use crate::fabric::AgentDemand;

/// Where a replica is in its life, as the plan sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No process: it crashed or failed to start and waits for its back-off to start again.
    Waiting {
        /// When it may start again, ms since the epoch.
        not_before_ms: u64,
    },
    /// Started; its session is not open yet.
    Starting,
    /// Its session is open.
    Running,
    /// Asked to stop (draining); it still runs until it exits.
    Stopping,
}

/// A replica as the plan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// Its id.
    pub id: ReplicaId,
    /// The instance it serves alone (per-instance mode).
    pub instance: Option<String>,
    /// Its phase.
    pub phase: Phase,
    /// Executions its session holds now; `None` without a session.
    pub assigned: Option<u32>,
    /// Not visible to this scaler (another host): it cannot stop it, so it is chosen for a
    /// stop only when no other will do.
    pub remote: bool,
}

impl Replica {
    /// Whether a process runs for it (it counts against `max_replicas`).
    pub fn alive(&self) -> bool {
        !matches!(self.phase, Phase::Waiting { .. })
    }
}

/// What the plan remembers about an agent between calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    /// The replicas the agent is meant to have (pool); `None` before the first plan.
    target: Option<u32>,
    /// Since when the need has been below the target.
    below_since_ms: Option<u64>,
    /// The most needed since then.
    below_peak: u32,
}

/// Everything one plan looks at.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The agent's configuration.
    pub config: &'a AgentConfig,
    /// Its demand.
    pub demand: &'a AgentDemand,
    /// Its replicas (in any order).
    pub replicas: &'a [Replica],
    /// Now, ms since the epoch.
    pub now_ms: u64,
    /// Most starts allowed now (what the scale-up rate leaves).
    pub starts_allowed: u32,
}

/// What to do for one agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// How many replicas the agent should have.
    pub desired: u32,
    /// New replicas to start: `None` for a pool replica, the instance for a per-instance one.
    pub start: Vec<Option<String>>,
    /// Waiting replicas whose back-off is over, to start again now.
    pub restart: Vec<ReplicaId>,
    /// Replicas to stop; a waiting one is simply forgotten.
    pub stop: Vec<ReplicaId>,
}

/// The plan for one agent (see the module docs).
pub fn plan(input: Input<'_>, memory: &mut Memory) -> Decision {
    match input.config.mode {
        Mode::Pool => pool(input, memory),
        Mode::PerInstance => per_instance(input),
    }
}

/// Replicas the agent needs for `load`, before the idle delay.
fn pool_need(config: &AgentConfig, load: u64, alive: u32) -> u32 {
    let backlog = u64::from(config.backlog_per_replica.max(1));
    let mut need = load.div_ceil(backlog).min(u64::from(u32::MAX)) as u32;
    if alive == 0 && !config.scale_from_zero && load < backlog {
        need = 0;
    }
    need.clamp(config.min_replicas, config.max_replicas.max(config.min_replicas))
}

fn pool(input: Input<'_>, memory: &mut Memory) -> Decision {
    let Input { config, demand, replicas, now_ms, starts_allowed } = input;
    let max = config.max_replicas;
    let load = demand.pending.saturating_add(demand.running).saturating_add(demand.generator_listeners);
    let alive = replicas.iter().filter(|r| r.alive()).count() as u32;
    let kept: Vec<&Replica> = replicas.iter().filter(|r| r.phase != Phase::Stopping).collect();
    let need = pool_need(config, load, alive);

    // The target: up at once; down once the need stayed below it for idle_ms. A fresh scaler
    // (or one that just adopted replicas) starts from what exists, so adopted replicas are
    // not stopped before the idle time either.
    let mut target = memory.target.unwrap_or(kept.len() as u32).clamp(config.min_replicas, max);
    if need >= target {
        target = need;
        memory.below_since_ms = None;
        memory.below_peak = 0;
    } else {
        let since = *memory.below_since_ms.get_or_insert(now_ms);
        memory.below_peak = memory.below_peak.max(need);
        if now_ms.saturating_sub(since) >= config.idle_ms {
            target = memory.below_peak;
            memory.below_since_ms = None;
            memory.below_peak = 0;
        }
    }
    memory.target = Some(target);

    let mut decision = Decision { desired: target, ..Decision::default() };
    let have = kept.len() as u32;
    if have > target {
        // Stop the cheapest first: waiting ones (no process), idle ones, ones still
        // starting, then the least busy; the newest (highest id) among equals. Remote ones
        // (this scaler cannot stop them) only when nothing else is left.
        let mut order: Vec<&Replica> = kept.clone();
        order.sort_by_key(|r| {
            let rank = match (r.phase, r.assigned) {
                (Phase::Waiting { .. }, _) => 0,
                (Phase::Running, Some(0) | None) => 1,
                (Phase::Starting, _) => 2,
                _ => 3,
            };
            (r.remote, rank, r.assigned.unwrap_or(0), std::cmp::Reverse(r.id.clone()))
        });
        decision.stop = order.iter().take((have - target) as usize).map(|r| r.id.clone()).collect();
    }
    let stopped: BTreeSet<&ReplicaId> = decision.stop.iter().collect();
    let mut room = max.saturating_sub(alive).min(starts_allowed);
    let mut due: Vec<&Replica> = kept
        .iter()
        .copied()
        .filter(|r| !stopped.contains(&r.id))
        .filter(|r| matches!(r.phase, Phase::Waiting { not_before_ms } if not_before_ms <= now_ms))
        .collect();
    due.sort_by(|a, b| a.id.cmp(&b.id));
    for r in due {
        if room == 0 {
            break;
        }
        decision.restart.push(r.id.clone());
        room -= 1;
    }
    let new = target.saturating_sub(have).min(room);
    decision.start = vec![None; new as usize];
    decision
}

fn per_instance(input: Input<'_>) -> Decision {
    let Input { config, demand, replicas, now_ms, starts_allowed } = input;
    let max = config.max_replicas;
    let alive = replicas.iter().filter(|r| r.alive()).count() as u32;
    let mut decision = Decision::default();
    let listed = |id: &str| demand.instances.iter().find(|i| i.id == id);
    // An instance needs a process when it is live, not stopping, and no session serves it.
    let needs = |id: &str| listed(id).is_some_and(|i| i.session.is_none() && i.lifecycle != "stopping");
    let mut covered: BTreeSet<&str> = BTreeSet::new();
    let mut kept = 0u32;
    let mut sorted: Vec<&Replica> = replicas.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut due = Vec::new();
    let mut kept_alive: Vec<&Replica> = Vec::new();
    for r in sorted {
        let Some(instance) = r.instance.as_deref() else {
            // A replica without an instance does not belong to a per-instance agent (the mode
            // changed): it goes.
            if r.phase != Phase::Stopping {
                decision.stop.push(r.id.clone());
            }
            continue;
        };
        if r.phase == Phase::Stopping {
            continue;
        }
        let keep = match r.phase {
            // No process: worth starting again only while the instance still needs one.
            Phase::Waiting { .. } => needs(instance) && !covered.contains(instance),
            // With a truncated list, an instance missing from it may still be live.
            _ => (listed(instance).is_some() || demand.instances_truncated) && !covered.contains(instance),
        };
        if keep {
            covered.insert(instance);
            kept += 1;
            if r.alive() {
                kept_alive.push(r);
            }
            if let Phase::Waiting { not_before_ms } = r.phase
                && not_before_ms <= now_ms
            {
                due.push(r.id.clone());
            }
        } else {
            decision.stop.push(r.id.clone());
        }
    }
    // More kept processes than max (a reload lowered it, more were adopted): the excess goes,
    // starting ones first (no work yet), then the newest.
    let excess = (kept_alive.len() as u32).saturating_sub(max);
    if excess > 0 {
        kept_alive.sort_by_key(|r| (r.remote, r.phase != Phase::Starting, std::cmp::Reverse(r.id.clone())));
        for r in kept_alive.iter().take(excess as usize) {
            decision.stop.push(r.id.clone());
            if let Some(instance) = r.instance.as_deref() {
                covered.remove(instance);
            }
        }
        kept -= excess;
    }
    let mut room = max.saturating_sub(alive).min(starts_allowed);
    for id in due {
        if room == 0 {
            break;
        }
        decision.restart.push(id);
        room -= 1;
    }
    let mut wanted: Vec<&str> = demand
        .instances
        .iter()
        .map(|i| i.id.as_str())
        .filter(|id| needs(id) && !covered.contains(id))
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    decision.desired = (kept + wanted.len() as u32).min(max);
    for id in wanted {
        if room == 0 {
            break;
        }
        decision.start.push(Some(id.to_owned()));
        room -= 1;
    }
    decision
}

#[cfg(test)]
#[path = "plan_test.rs"]
mod tests;

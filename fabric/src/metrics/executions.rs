//! Executions by agent and delegate: counted where the grid applies them.
//!
//! Every replica applies every entry, so every node counts every execution of the cluster
//! once: each node's counters are the cluster's (aggregate with `max`, not `sum`). Times come
//! from the entries' leader-stamped clock, so replicas agree on them too.
//!
//! After each applied entry the state machine hands over the entry's events and the grid
//! after it. Executions change only at four points, each with an [`Event::Changed`]: created,
//! assigned, released (back to pending), finished. So an execution named in the entry's
//! events whose id is above the last id before the entry was created by it; one that is
//! assigned after it was (re)assigned by it; one that is final after it finished in it.
//!
//! Bounds: at most [`MAX_PAIRS`] (agent, delegate) pairs and [`MAX_AGENTS`] agents get
//! series of their own, the rest share `agent="other"` (and `delegate="other"`); at most
//! [`MAX_RUNNING`] assignment times are remembered for run times.

use std::collections::HashMap;
use std::sync::Mutex;

use super::histogram::{EXECUTION_BUCKETS_S, Histogram};
use super::text::{Kind, Text};
use crate::grid::execution::{ExecutionId, Status};
use crate::grid::{Event, Grid};

/// Most (agent, delegate) pairs with counters of their own.
pub const MAX_PAIRS: usize = 1000;
/// Most agents with histograms of their own.
pub const MAX_AGENTS: usize = 200;
/// Most assigned executions whose assignment time is remembered (for run times).
pub const MAX_RUNNING: usize = 100_000;
/// The label value of series beyond the bounds.
pub const OTHER: &str = "other";

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    created: u64,
    completed: u64,
    failed: u64,
    cancelled: u64,
    retried: u64,
}

#[derive(Debug)]
struct Times {
    queue_wait: Histogram,
    run_time: Histogram,
}

impl Default for Times {
    fn default() -> Self {
        Self {
            queue_wait: Histogram::new(EXECUTION_BUCKETS_S),
            run_time: Histogram::new(EXECUTION_BUCKETS_S),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// agent -> delegate -> counts.
    pairs: HashMap<String, HashMap<String, Counts>>,
    pair_count: usize,
    other_pair: Counts,
    agents: HashMap<String, Times>,
    other_agent: Times,
    /// Assigned executions: when (leader ms) their current assignment began.
    running: HashMap<ExecutionId, u64>,
}

impl Inner {
    fn counts(&mut self, agent: &str, delegate: &str) -> &mut Counts {
        let known = self.pairs.get(agent).is_some_and(|d| d.contains_key(delegate));
        if !known {
            if self.pair_count >= MAX_PAIRS {
                return &mut self.other_pair;
            }
            self.pair_count += 1;
            self.pairs.entry(agent.to_owned()).or_default().insert(delegate.to_owned(), Counts::default());
        }
        self.pairs.get_mut(agent).and_then(|d| d.get_mut(delegate)).expect("inserted above")
    }

    fn times(&mut self, agent: &str) -> &Times {
        if !self.agents.contains_key(agent) {
            if self.agents.len() >= MAX_AGENTS {
                return &self.other_agent;
            }
            self.agents.insert(agent.to_owned(), Times::default());
        }
        &self.agents[agent]
    }
}

/// A counter family: name, help, and which count it reports.
type CounterFamily = (&'static str, &'static str, fn(&Counts) -> u64);

/// Execution counters and histograms of one node.
#[derive(Debug, Default)]
pub struct Tracker {
    inner: Mutex<Inner>,
}

impl Tracker {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// One entry was applied: `events` are its events, `grid` is the grid after it.
    pub fn entry_applied(&self, grid: &Grid, events: &[Event]) {
        let created: std::collections::HashSet<ExecutionId> = events
            .iter()
            .filter_map(|e| match e {
                Event::Created { execution } => Some(*execution),
                _ => None,
            })
            .collect();
        let mut ids: Vec<ExecutionId> = events
            .iter()
            .filter_map(|e| match e {
                Event::Changed { execution } => Some(*execution),
                _ => None,
            })
            .collect();
        if ids.is_empty() {
            return;
        }
        ids.sort_unstable();
        ids.dedup();
        let now = grid.now_ms();
        self.with(|m| {
            for id in ids {
                let Some(e) = grid.execution(id) else {
                    m.running.remove(&id);
                    continue;
                };
                if created.contains(&id) {
                    m.counts(&e.agent, &e.delegate).created += 1;
                }
                match e.status {
                    Status::Pending => {
                        m.running.remove(&id);
                    }
                    Status::Assigned => {
                        if e.attempts <= 1 {
                            let ready = e.created_ms.max(e.not_before_ms.unwrap_or(0));
                            m.times(&e.agent).queue_wait.observe_ms(now.saturating_sub(ready));
                        } else {
                            m.counts(&e.agent, &e.delegate).retried += 1;
                        }
                        if m.running.len() < MAX_RUNNING || m.running.contains_key(&id) {
                            m.running.insert(id, now);
                        }
                    }
                    Status::Completed | Status::Failed | Status::Cancelled => {
                        let c = m.counts(&e.agent, &e.delegate);
                        match e.status {
                            Status::Completed => c.completed += 1,
                            Status::Failed => c.failed += 1,
                            _ => c.cancelled += 1,
                        }
                        if let Some(at) = m.running.remove(&id) {
                            m.times(&e.agent).run_time.observe_ms(now.saturating_sub(at));
                        }
                    }
                }
            }
        });
    }

    /// A snapshot replaced the grid: the remembered assignments may be gone.
    pub fn grid_replaced(&self) {
        self.with(|m| m.running.clear());
    }

    /// Writes the families.
    pub fn render(&self, t: &mut Text, node: &str) {
        self.with(|m| {
            let mut pairs: Vec<(&str, &str, Counts)> = m
                .pairs
                .iter()
                .flat_map(|(a, ds)| ds.iter().map(move |(d, c)| (a.as_str(), d.as_str(), *c)))
                .collect();
            pairs.sort_by(|x, y| (x.0, x.1).cmp(&(y.0, y.1)));
            if m.pair_count >= MAX_PAIRS {
                pairs.push((OTHER, OTHER, m.other_pair));
            }
            let families: [CounterFamily; 5] = [
                ("weft_executions_created_total", "Executions created (the cluster's, as this node applied them).", |c| c.created),
                ("weft_executions_completed_total", "Executions finished with a result.", |c| c.completed),
                ("weft_executions_failed_total", "Executions finished with an error (handler, deadline, undeliverable).", |c| c.failed),
                ("weft_executions_cancelled_total", "Executions cancelled before they finished.", |c| c.cancelled),
                ("weft_executions_retried_total", "Deliveries after the first (a retry after an error, or a redelivery after a session was lost).", |c| c.retried),
            ];
            for (name, help, value) in families {
                t.family(name, help, Kind::Counter);
                for (agent, delegate, c) in &pairs {
                    t.sample(name, &[("node", node), ("agent", agent), ("delegate", delegate)], value(c));
                }
            }
            let mut agents: Vec<(&str, &Times)> = m.agents.iter().map(|(a, t)| (a.as_str(), t)).collect();
            agents.sort_by(|x, y| x.0.cmp(y.0));
            if m.agents.len() >= MAX_AGENTS {
                agents.push((OTHER, &m.other_agent));
            }
            let name = "weft_execution_queue_wait_seconds";
            t.family(
                name,
                "From an execution's creation (or its not-before time) to its first assignment, by the leader's clock.",
                Kind::Histogram,
            );
            for (agent, times) in &agents {
                t.histogram(name, &[("node", node), ("agent", agent)], &times.queue_wait.snapshot());
            }
            let name = "weft_execution_run_seconds";
            t.family(
                name,
                "From an execution's assignment to its end (completed, failed or cancelled while assigned), by the leader's clock.",
                Kind::Histogram,
            );
            for (agent, times) in &agents {
                t.histogram(name, &[("node", node), ("agent", agent)], &times.run_time.snapshot());
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_beyond_the_bound_share_other() {
        let mut m = Inner::default();
        for i in 0..MAX_PAIRS + 5 {
            m.counts("a", &format!("d{i}")).created += 1;
        }
        assert_eq!(m.pair_count, MAX_PAIRS);
        assert_eq!(m.other_pair.created, 5);
        m.counts("a", "d0").created += 1;
        assert_eq!(m.pairs["a"]["d0"].created, 2, "a known pair keeps its own series");
        for i in 0..MAX_AGENTS + 1 {
            m.times(&format!("agent{i}")).queue_wait.observe_ms(1);
        }
        assert_eq!(m.agents.len(), MAX_AGENTS);
        assert_eq!(m.other_agent.queue_wait.snapshot().count, 1);
    }
}

//! Sessions: an agent process's connection to one node, with the agents it serves and how
//! many executions it may hold at once.
//!
//! A session is registered by the node the agent connected to (its *host*). It ends when its
//! stream closes, when its host is declared dead, or when its host restarts; whatever it
//! still held then goes back to pending.
//!
//! A session may claim instances when it opens: they must exist (a claim of an instance that
//! was never started, or has been removed, refuses the open) and be activated on no other
//! session; they are activated on it at once, so their queues, `Start` included, run there.
//! Opened *only claimed*, it serves of each agent it claims instances of only those
//! instances: no other instance of such an agent, and no call to such an agent without an
//! instance, is ever given to it, even once its claimed instances are gone. Agents it
//! serves without claims are served as usual. That is a per-instance process: started for
//! one instance, it serves that one.
//!
//! This file holds the types (`NewSession` as the log stores it, `Session` as the grid keeps
//! it) and their shape checks. How `apply` opens, closes and drains sessions is in
//! `sessions.rs`.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::Error;
use super::execution::{ExecutionId, SessionId};
use crate::NodeId;

/// Most agents one session may serve.
pub const MAX_AGENTS_PER_SESSION: usize = 64;
/// Most delegates one agent spec may list.
pub const MAX_DELEGATES_PER_AGENT: usize = 256;
/// Most instances one session may claim when it opens.
pub const MAX_CLAIMS_PER_SESSION: usize = 1024;
/// Longest session label, in bytes.
pub const MAX_SESSION_NAME_BYTES: usize = 256;

/// Where a session's stream lives: the node and that node's own key for it. A node that
/// restarts forgets its keys, so it can tell its live sessions from ones it hosted before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Host {
    /// The node that holds the stream.
    pub node: NodeId,
    /// The node's key for the stream (random, chosen by the node).
    pub key: u64,
}

/// One agent a session serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSpec {
    /// The agent's name.
    pub name: String,
    /// The delegates served; empty: every delegate. `Start` and `Stop` are always served.
    pub delegates: Vec<String>,
    /// Whether this agent's instances may run several executions at once on this session
    /// (otherwise one at a time, in order).
    pub concurrent_instances: bool,
}

impl AgentSpec {
    /// Whether the spec covers `delegate`.
    pub fn serves(&self, delegate: &str) -> bool {
        self.delegates.is_empty()
            || delegate == super::execution::START_DELEGATE
            || delegate == super::execution::STOP_DELEGATE
            || self.delegates.iter().any(|d| d == delegate)
    }
}

/// A request to open a session, as stored in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewSession {
    /// The node that holds the stream.
    pub host: Host,
    /// What it serves.
    pub agents: Vec<AgentSpec>,
    /// Most executions it holds at once.
    pub capacity: u32,
    /// Instances it claims (single activation: no other session may serve them meanwhile).
    pub claims: Vec<(String, String)>,
    /// How long an assignment's lease lasts unless renewed; 0: as long as the session.
    pub lease_ms: u64,
    /// A label for people (process name, host).
    pub name: String,
}

impl NewSession {
    /// Checks what does not depend on configuration.
    pub fn validate_shape(&self) -> Result<(), Error> {
        let bad = |reason: String| Err(Error::InvalidSession { reason });
        if self.agents.is_empty() {
            return bad("a session must serve at least one agent".into());
        }
        if self.agents.len() > MAX_AGENTS_PER_SESSION {
            return bad(format!("{} agents; at most {MAX_AGENTS_PER_SESSION}", self.agents.len()));
        }
        let mut names = BTreeSet::new();
        for spec in &self.agents {
            super::validate_name("agent", &spec.name)?;
            if !names.insert(spec.name.as_str()) {
                return bad(format!("agent '{}' is listed twice", spec.name));
            }
            if spec.delegates.len() > MAX_DELEGATES_PER_AGENT {
                return bad(format!(
                    "agent '{}' lists {} delegates; at most {MAX_DELEGATES_PER_AGENT}",
                    spec.name,
                    spec.delegates.len()
                ));
            }
            for d in &spec.delegates {
                super::validate_name("delegate", d)?;
            }
        }
        if self.capacity == 0 {
            return bad("capacity must be at least 1".into());
        }
        if self.claims.len() > MAX_CLAIMS_PER_SESSION {
            return bad(format!("{} claimed instances; at most {MAX_CLAIMS_PER_SESSION}", self.claims.len()));
        }
        for (agent, instance) in &self.claims {
            super::validate_name("instance", instance)?;
            if !names.contains(agent.as_str()) {
                return bad(format!("claims instance {agent}/{instance} of an agent it does not serve"));
            }
        }
        if self.name.len() > MAX_SESSION_NAME_BYTES {
            return bad(format!("the name is {} bytes; at most {MAX_SESSION_NAME_BYTES}", self.name.len()));
        }
        Ok(())
    }
}

/// A live session, as the grid holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Its id.
    pub id: SessionId,
    /// Where its stream lives.
    pub host: Host,
    /// What it serves.
    pub agents: Vec<AgentSpec>,
    /// Most executions it holds at once.
    pub capacity: u32,
    /// Lease length for its assignments; 0: as long as the session.
    pub lease_ms: u64,
    /// Its label.
    pub name: String,
    /// When it opened (leader-stamped ms).
    pub opened_ms: u64,
    /// Executions it holds now.
    pub assigned: BTreeSet<ExecutionId>,
    /// Instances activated on it.
    pub activated: BTreeSet<(String, String)>,
    /// No new assignments: it is shutting down.
    pub draining: bool,
    /// The token of its latest assignment (spreads work round-robin among equal sessions).
    pub last_token: u64,
    /// It serves, of the agents in `claims`, only the instances in `claims`.
    pub only_claimed: bool,
    /// The instances it claimed when it opened.
    pub claims: BTreeSet<(String, String)>,
}

impl Session {
    /// The spec of `agent`, if the session serves it.
    pub fn spec(&self, agent: &str) -> Option<&AgentSpec> {
        self.agents.iter().find(|s| s.name == agent)
    }

    /// Whether the session serves `delegate` of `agent`.
    pub fn serves(&self, agent: &str, delegate: &str) -> bool {
        self.spec(agent).is_some_and(|s| s.serves(delegate))
    }

    /// Whether dispatch may give it `delegate` of `agent` on `instance` (`None`: a call
    /// without an instance): it serves the delegate, and only-claimed does not keep it from
    /// the instance.
    pub fn may_run(&self, agent: &str, instance: Option<&str>, delegate: &str) -> bool {
        self.serves(agent, delegate) && self.may_take(agent, instance)
    }

    /// Whether only-claimed keeps it from `instance` of `agent` (`None`: calls without an
    /// instance): true unless it is only-claimed, claims instances of `agent`, and this is not
    /// one of them.
    pub fn may_take(&self, agent: &str, instance: Option<&str>) -> bool {
        if !self.only_claimed || !self.claims.iter().any(|(a, _)| a == agent) {
            return true;
        }
        instance.is_some_and(|i| self.claims.iter().any(|(a, c)| a == agent && c == i))
    }

    /// How many more executions it may take now.
    pub fn free(&self) -> u32 {
        if self.draining { 0 } else { self.capacity.saturating_sub(self.assigned.len() as u32) }
    }
}

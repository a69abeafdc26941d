//! What the scaler needs from the fabric, behind one trait so the controller can be tested
//! on an in-memory fake: the demand watch, the group's lease, intents written with the
//! lease's fence, and the published status.
//!
//! ```text
//!   controller ──► Fabric ──► Sdk (over weft-agent: Client::watch_demand, Client::lease,
//!                         │         State::fenced, State::list)
//!                         └──► fake::Fake (tests: a map, a lease, a demand channel)
//! ```
//!
//! Everything of a group lives in one state namespace, [`namespace`]`(group)`
//! (`shared/weft.scaler.<group>`): the intents under `replica/<id>` and the status under
//! `status`; its lease is [`lease_name`]`(group)` (`weft.scaler.<group>`).

use std::future::Future;
use std::time::Duration;

use crate::backend::ReplicaId;
use crate::intent::Intent;
use crate::status::Status;

pub use sdk::Sdk;
pub use weft_agent::{AgentDemand, Demand, Fence, Grant, InstanceDemand, SessionLoad};

/// The state namespace of scaler group `group`.
pub fn namespace(group: &str) -> String {
    format!("shared/weft.scaler.{group}")
}

/// The lease of scaler group `group`.
pub fn lease_name(group: &str) -> String {
    format!("weft.scaler.{group}")
}

/// What went wrong talking to the fabric.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The lease is held by another holder, or was lost: a fenced write, a renewal or a
    /// release was refused. Nothing changed.
    #[error("lease refused: {0}")]
    Lease(String),
    /// No node answered, or the outcome of a write is unknown.
    #[error("fabric unavailable: {0}")]
    Unavailable(String),
    /// The fabric does not accept this scaler's credentials: its token is unknown, revoked or
    /// expired, lacks a permission the scaler needs, or the nodes require TLS and the scaler
    /// has no TLS settings. Nothing changed, and nothing will until the scaler is restarted
    /// with other credentials.
    #[error("credentials refused: {0}")]
    Credentials(String),
    /// Anything else the fabric refused (bad input, a value over a limit) or could not
    /// decode. Nothing changed.
    #[error("{0}")]
    Other(String),
}

/// An agent with no demand at all (what the fabric reports for an agent it knows nothing of).
pub fn no_demand(agent: &str) -> AgentDemand {
    AgentDemand {
        agent: agent.to_owned(),
        pending: 0,
        running: 0,
        delayed: 0,
        instances: Vec::new(),
        instances_truncated: false,
        generator_listeners: 0,
        sessions: Vec::new(),
        sessions_truncated: false,
    }
}

/// A picture with these agents' demand (tests and fakes).
pub fn picture(agents: Vec<AgentDemand>) -> Demand {
    Demand { node_id: 1, applied_index: 0, now_ms: 0, agents }
}

/// A stream of demand pictures.
pub trait DemandWatch: Send + 'static {
    /// The next full picture; an error only once no node answered for a while, or at once
    /// when the fabric refuses the watch ([`Error::Credentials`] among others).
    fn next(&mut self) -> impl Future<Output = Result<Demand, Error>> + Send;
}

/// The fabric as the scaler uses it (one scaler group).
pub trait Fabric: Clone + Send + Sync + 'static {
    /// The demand watch.
    type Watch: DemandWatch;

    /// Watches the demand of `agents`.
    fn watch_demand(&self, agents: Vec<String>) -> Self::Watch;
    /// Takes (or, held by `holder`, renews) the group's lease for `ttl`.
    fn acquire(&self, holder: &str, ttl: Duration) -> impl Future<Output = Result<Grant, Error>> + Send;
    /// Renews the lease held with `token`.
    fn renew(&self, token: u64, ttl: Duration) -> impl Future<Output = Result<Grant, Error>> + Send;
    /// Gives the lease up; whether it was still held.
    fn release(&self, token: u64) -> impl Future<Output = Result<bool, Error>> + Send;
    /// Every recorded intent.
    fn list_intents(&self) -> impl Future<Output = Result<Vec<(ReplicaId, Intent)>, Error>> + Send;
    /// Records replica `id`'s intent, fenced.
    fn put_intent(
        &self,
        fence: &Fence,
        id: &str,
        intent: &Intent,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Removes replica `id`'s intent, fenced.
    fn delete_intent(&self, fence: &Fence, id: &str) -> impl Future<Output = Result<(), Error>> + Send;
    /// Publishes the status, fenced.
    fn publish_status(
        &self,
        fence: &Fence,
        status: &Status,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Reads the published status (for the scaler's own `status` delegate).
    fn read_status(&self) -> impl Future<Output = Result<Option<serde_json::Value>, Error>> + Send;
}

#[cfg(test)]
pub(crate) mod fake;
mod sdk;

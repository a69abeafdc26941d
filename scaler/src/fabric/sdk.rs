//! [`Sdk`]: the fabric over the agent SDK (`weft-agent`): `Client::watch_demand`,
//! `Client::lease`, `State::fenced` and `State::list`.

use std::time::Duration;

use weft_agent::{Client, Lease, State};

use super::{Demand, DemandWatch, Error, Fabric, Fence, Grant, lease_name, namespace};
use crate::backend::ReplicaId;
use crate::intent::{self, Intent};
use crate::status::{self, Status};

/// What an SDK error means to the scaler.
fn error(e: weft_agent::Error) -> Error {
    match e {
        weft_agent::Error::Refused { code: tonic::Code::FailedPrecondition, message } => {
            Error::Lease(message)
        }
        weft_agent::Error::Unavailable(m)
        | weft_agent::Error::Overloaded(m)
        | weft_agent::Error::Unknown(m) => Error::Unavailable(m),
        e @ (weft_agent::Error::Unauthenticated(_)
        | weft_agent::Error::PermissionDenied(_)
        | weft_agent::Error::Tls(_)) => Error::Credentials(e.to_string()),
        other => Error::Other(other.to_string()),
    }
}

/// The fabric of one scaler group, over an SDK client; cheap to clone.
#[derive(Debug, Clone)]
pub struct Sdk {
    client: Client,
    lease: Lease,
    state: State,
}

impl Sdk {
    /// The fabric of scaler group `group`, reached through `client`.
    pub fn new(client: Client, group: &str) -> Self {
        let lease = client.lease(&lease_name(group));
        let state = client.state(&namespace(group));
        Self { client, lease, state }
    }
}

/// The SDK's demand watch.
pub struct Watch(weft_agent::DemandWatch);

impl DemandWatch for Watch {
    async fn next(&mut self) -> Result<Demand, Error> {
        self.0.next().await.map_err(error)
    }
}

impl Fabric for Sdk {
    type Watch = Watch;

    fn watch_demand(&self, agents: Vec<String>) -> Watch {
        Watch(self.client.watch_demand(&agents))
    }

    async fn acquire(&self, holder: &str, ttl: Duration) -> Result<Grant, Error> {
        self.lease.acquire(holder, ttl).await.map_err(error)
    }

    async fn renew(&self, token: u64, ttl: Duration) -> Result<Grant, Error> {
        self.lease.renew(token, ttl).await.map_err(error)
    }

    async fn release(&self, token: u64) -> Result<bool, Error> {
        self.lease.release(token).await.map_err(error)
    }

    async fn list_intents(&self) -> Result<Vec<(ReplicaId, Intent)>, Error> {
        let entries: Vec<(String, serde_json::Value, u64)> =
            self.state.list(intent::KEY_PREFIX).await.map_err(error)?;
        let mut intents = Vec::with_capacity(entries.len());
        for (key, value, _) in entries {
            let Some(id) = key.strip_prefix(intent::KEY_PREFIX) else { continue };
            match serde_json::from_value::<Intent>(value) {
                Ok(intent) => intents.push((id.to_owned(), intent)),
                // One unreadable record must not keep the scaler from adopting the rest.
                Err(e) => tracing::warn!(%key, error = %e, "skipping an intent that cannot be read"),
            }
        }
        Ok(intents)
    }

    async fn put_intent(&self, fence: &Fence, id: &str, intent: &Intent) -> Result<(), Error> {
        self.state.fenced(fence.clone()).put(&intent::key(id), intent).await.map(|_| ()).map_err(error)
    }

    async fn delete_intent(&self, fence: &Fence, id: &str) -> Result<(), Error> {
        self.state.fenced(fence.clone()).delete(&intent::key(id)).await.map(|_| ()).map_err(error)
    }

    async fn publish_status(&self, fence: &Fence, status: &Status) -> Result<(), Error> {
        let value = status.to_bounded_json();
        self.state.fenced(fence.clone()).put(status::KEY, &value).await.map(|_| ()).map_err(error)
    }

    async fn read_status(&self) -> Result<Option<serde_json::Value>, Error> {
        self.state.get(status::KEY).await.map_err(error)
    }
}

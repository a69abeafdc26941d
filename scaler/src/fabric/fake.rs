//! An in-memory fabric for the controller's unit tests: one lease, a map of intents, the
//! status, and demand pictures the test pushes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::{Demand, DemandWatch, Error, Fabric, Fence, Grant};
use crate::backend::ReplicaId;
use crate::clock::Clock;
use crate::intent::Intent;
use crate::status::Status;

#[derive(Debug, Default)]
struct Inner {
    /// Holder, token, expiry.
    lease: Option<(String, u64, u64)>,
    last_token: u64,
    intents: BTreeMap<ReplicaId, Intent>,
    status: Option<Status>,
    unavailable: bool,
    /// How long an accepted intent write takes to return.
    slow_writes: Option<Duration>,
    /// The credentials were refused (why): the demand watch ends with it.
    refused: Option<String>,
    /// The demand watch's next picture fails with this, once.
    watch_fails: Option<String>,
}

/// The fake fabric; clones share it.
#[derive(Debug, Clone)]
pub struct Fake {
    inner: Arc<Mutex<Inner>>,
    demand: Arc<watch::Sender<Demand>>,
    clock: Clock,
}

pub struct Watch {
    demand: watch::Receiver<Demand>,
    first: bool,
    inner: Arc<Mutex<Inner>>,
}

impl DemandWatch for Watch {
    async fn next(&mut self) -> Result<Demand, Error> {
        if self.first {
            self.first = false;
        } else if self.demand.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        let mut inner = self.inner.lock().unwrap();
        if let Some(why) = &inner.refused {
            return Err(Error::Credentials(why.clone()));
        }
        if let Some(why) = inner.watch_fails.take() {
            return Err(Error::Unavailable(why));
        }
        Ok(self.demand.borrow_and_update().clone())
    }
}

const LEASE: &str = "weft.scaler.test";

impl Fake {
    pub fn new(clock: Clock) -> Self {
        Self { inner: Arc::default(), demand: Arc::new(watch::channel(super::picture(Vec::new())).0), clock }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    pub fn set_demand(&self, demand: Demand) {
        self.demand.send_replace(demand);
    }

    pub fn intents(&self) -> BTreeMap<ReplicaId, Intent> {
        self.inner().intents.clone()
    }

    pub fn status(&self) -> Option<Status> {
        self.inner().status.clone()
    }

    pub fn holder(&self) -> Option<String> {
        let now = self.clock.now_ms();
        self.inner().lease.clone().filter(|l| l.2 > now).map(|l| l.0)
    }

    /// Someone else takes the lease (as if ours expired).
    pub fn steal_lease(&self, holder: &str) {
        let mut i = self.inner();
        i.last_token += 1;
        i.lease = Some((holder.to_owned(), i.last_token, u64::MAX));
    }

    /// Test control: an accepted intent write returns only after `delay`.
    pub fn set_slow_writes(&self, delay: Option<Duration>) {
        self.inner().slow_writes = delay;
    }

    /// Test control: a record some earlier scaler left.
    pub fn plant_intent(&self, id: &str, intent: Intent) {
        self.inner().intents.insert(id.to_owned(), intent);
    }

    /// Test control: the fabric refuses the scaler's credentials from now on (the demand
    /// watch ends with [`Error::Credentials`] at once).
    pub fn refuse_credentials(&self, why: &str) {
        self.inner().refused = Some(why.to_owned());
        self.demand.send_modify(|_| {});
    }

    /// Test control: credentials are accepted again (a scaler started with new ones).
    pub fn allow_credentials(&self) {
        self.inner().refused = None;
    }

    /// Test control: the demand watch's next picture fails as a lost node would.
    pub fn fail_watch_once(&self, why: &str) {
        self.inner().watch_fails = Some(why.to_owned());
    }

    pub fn set_unavailable(&self, down: bool) {
        self.inner().unavailable = down;
    }

    fn check(&self, i: &Inner, fence: &Fence) -> Result<(), Error> {
        if i.unavailable {
            return Err(Error::Unavailable("fake fabric is down".into()));
        }
        match &i.lease {
            Some((_, token, expires)) if *token == fence.token && *expires > self.clock.now_ms() => Ok(()),
            _ => Err(Error::Lease(format!("lease {} not held with token {}", fence.lease, fence.token))),
        }
    }
}

impl Fabric for Fake {
    type Watch = Watch;

    fn watch_demand(&self, _agents: Vec<String>) -> Watch {
        Watch { demand: self.demand.subscribe(), first: true, inner: self.inner.clone() }
    }

    async fn acquire(&self, holder: &str, ttl: Duration) -> Result<Grant, Error> {
        let now = self.clock.now_ms();
        let mut i = self.inner();
        if i.unavailable {
            return Err(Error::Unavailable("fake fabric is down".into()));
        }
        let token = match &i.lease {
            Some((h, token, expires)) if *expires > now => {
                if h != holder {
                    return Err(Error::Lease(format!("held by {h}")));
                }
                *token
            }
            _ => {
                i.last_token += 1;
                i.last_token
            }
        };
        let expires_at_ms = now + ttl.as_millis() as u64;
        i.lease = Some((holder.to_owned(), token, expires_at_ms));
        Ok(Grant { name: LEASE.into(), holder: holder.into(), token, expires_at_ms })
    }

    async fn renew(&self, token: u64, ttl: Duration) -> Result<Grant, Error> {
        let now = self.clock.now_ms();
        let mut i = self.inner();
        if i.unavailable {
            return Err(Error::Unavailable("fake fabric is down".into()));
        }
        match i.lease.clone() {
            Some((holder, t, expires)) if t == token && expires > now => {
                let expires_at_ms = now + ttl.as_millis() as u64;
                i.lease = Some((holder.clone(), t, expires_at_ms));
                Ok(Grant { name: LEASE.into(), holder, token, expires_at_ms })
            }
            _ => Err(Error::Lease(format!("token {token} is not current"))),
        }
    }

    async fn release(&self, token: u64) -> Result<bool, Error> {
        let mut i = self.inner();
        if i.lease.as_ref().is_some_and(|l| l.1 == token) {
            i.lease = None;
            return Ok(true);
        }
        Ok(false)
    }

    async fn list_intents(&self) -> Result<Vec<(ReplicaId, Intent)>, Error> {
        let i = self.inner();
        if i.unavailable {
            return Err(Error::Unavailable("fake fabric is down".into()));
        }
        Ok(i.intents.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    async fn put_intent(&self, fence: &Fence, id: &str, intent: &Intent) -> Result<(), Error> {
        let slow = {
            let mut i = self.inner();
            self.check(&i, fence)?;
            i.intents.insert(id.to_owned(), intent.clone());
            i.slow_writes
        };
        if let Some(delay) = slow {
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }

    async fn delete_intent(&self, fence: &Fence, id: &str) -> Result<(), Error> {
        let mut i = self.inner();
        self.check(&i, fence)?;
        i.intents.remove(id);
        Ok(())
    }

    async fn publish_status(&self, fence: &Fence, status: &Status) -> Result<(), Error> {
        let mut i = self.inner();
        self.check(&i, fence)?;
        i.status = Some(status.clone());
        Ok(())
    }

    async fn read_status(&self) -> Result<Option<serde_json::Value>, Error> {
        Ok(self.inner().status.as_ref().map(|s| serde_json::to_value(s).unwrap()))
    }
}

//! Leases: named, time-limited ownership kept in the fabric, each grant with a fencing token.
//!
//! One process at a time holds a lease; it keeps it by renewing before it runs out, and
//! whoever asks while it is held is refused. Every grant carries a token greater than every
//! token the cluster granted before, and state writes made through
//! [`State::fenced`](crate::State::fenced) apply only while that grant still holds: a holder
//! that paused past its expiry, or was cut off while a standby took over, cannot overwrite
//! its successor's work.
//!
//! ```text
//!   active:  acquire ─► grant(token 7) ─► renew, renew, ...   writes fenced by token 7
//!   standby: acquire ─► refused (held by the active) ... the active stops renewing
//!            acquire ─► grant(token 9)                        token 7's writes: refused
//! ```
//!
//! - [`Lease`]: one lease by name, from [`Client::lease`](crate::Client::lease).
//! - [`Grant`]: who holds it, with which token, until when.
//! - [`Fence`]: the condition a fenced write carries.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::leases_client::LeasesClient;

use crate::Error;
use crate::connection::Connection;

/// One named lease. See [`Client::lease`](crate::Client::lease).
///
/// ```no_run
/// use std::time::Duration;
/// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
/// let lease = client.lease("scaler");
/// let grant = lease.acquire("scaler-1", Duration::from_secs(10)).await?;
/// let state = client.state("shared/scaler").fenced(grant.fence());
/// state.put("intent", &"start worker-3").await?; // refused once the lease is lost
/// let grant = lease.renew(grant.token, Duration::from_secs(10)).await?;
/// lease.release(grant.token).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Lease {
    conn: Connection,
    name: String,
}

/// A grant of a lease: who holds it, its fencing token, and when it runs out unless renewed.
///
/// ```
/// let grant = weft_agent::Grant {
///     name: "scaler".into(),
///     holder: "scaler-1".into(),
///     token: 7,
///     expires_at_ms: 1_700_000_000_000,
/// };
/// assert_eq!(grant.fence(), weft_agent::Fence { lease: "scaler".into(), token: 7 });
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The lease's name.
    pub name: String,
    /// Who holds it.
    pub holder: String,
    /// The fencing token of this grant.
    pub token: u64,
    /// When it runs out unless renewed: milliseconds since the Unix epoch, by the fabric
    /// leader's clock.
    pub expires_at_ms: u64,
}

impl Grant {
    /// The fence that makes a write apply only while this grant holds the lease (see
    /// [`State::fenced`](crate::State::fenced)).
    pub fn fence(&self) -> Fence {
        Fence { lease: self.name.clone(), token: self.token }
    }

    fn from_pb(g: pb::LeaseGrant) -> Self {
        Self { name: g.name, holder: g.holder, token: g.token, expires_at_ms: g.expires_at_ms }
    }
}

/// A write's condition on a lease: it applies only if, when it is applied, lease `lease` is
/// held with token `token`.
///
/// ```
/// let fence = weft_agent::Fence { lease: "scaler".into(), token: 7 };
/// assert_eq!(fence.token, 7);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fence {
    /// The lease's name.
    pub lease: String,
    /// The token of the grant that must hold it.
    pub token: u64,
}

impl Fence {
    pub(crate) fn to_pb(&self) -> pb::Fence {
        pb::Fence { lease: self.lease.clone(), token: self.token }
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

impl Lease {
    pub(crate) fn new(conn: Connection, name: &str) -> Self {
        Self { conn, name: name.to_owned() }
    }

    /// The lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Takes the lease for `holder` (a name unique to this process) for `ttl`, if it is free:
    /// never held, released, or run out. If `holder` holds it already, this renews it with
    /// the same token. Held by another: [`Error::Refused`] with `FailedPrecondition`, naming
    /// the holder and how long it still holds it.
    ///
    /// Retried across nodes like a read: if an attempt was applied but its answer lost, the
    /// retry finds `holder` holding the lease and renews it.
    pub async fn acquire(&self, holder: &str, ttl: Duration) -> Result<Grant, Error> {
        let req = pb::AcquireLeaseRequest {
            name: self.name.clone(),
            holder: holder.to_owned(),
            ttl_ms: ttl_ms(ttl),
            wait_ms: 0,
        };
        let grant = self
            .conn
            .call(true, &req, |channel, request| async move {
                Ok(LeasesClient::new(channel).acquire(request).await?.into_inner())
            })
            .await?;
        Ok(Grant::from_pb(grant))
    }

    /// As [`Lease::acquire`], but while another holder holds the lease, waits for it in the
    /// lease's queue for up to `wait` (at most ten minutes): holders are granted it in the
    /// order they asked, when it is released or runs out. Not granted within `wait`:
    /// [`Error::Refused`] with `FailedPrecondition`, naming who holds it. Too many waiting:
    /// [`Error::Overloaded`].
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
    /// let lock = client.lease("reports");
    /// let grant = lock.acquire_waiting("job-7", Duration::from_secs(30), Duration::from_secs(60)).await?;
    /// // ... the work only one process may do at a time, with writes fenced by grant.fence()
    /// lock.release(grant.token).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// A retry after a lost answer asks again and keeps its place in the queue. If this call
    /// is dropped while it waits, the node it reached takes the holder out of the queue; only
    /// if that node fails too may the holder still be granted the lease later, and the grant
    /// then runs out after `ttl`.
    pub async fn acquire_waiting(&self, holder: &str, ttl: Duration, wait: Duration) -> Result<Grant, Error> {
        let wait_ms = ttl_ms(wait).max(1);
        let req = pb::AcquireLeaseRequest {
            name: self.name.clone(),
            holder: holder.to_owned(),
            ttl_ms: ttl_ms(ttl),
            wait_ms,
        };
        let timeout = self.conn.attempt_timeout() + wait;
        let grant = self
            .conn
            .run(true, |channel| {
                let mut request = tonic::Request::new(req.clone());
                request.set_timeout(timeout);
                async move { Ok(LeasesClient::new(channel).acquire(request).await?.into_inner()) }
            })
            .await?;
        Ok(Grant::from_pb(grant))
    }

    /// Extends the grant `token` to `ttl` from now. If the lease was lost (it ran out,
    /// was released, or another holder took it): [`Error::Refused`] with
    /// `FailedPrecondition`, saying which.
    pub async fn renew(&self, token: u64, ttl: Duration) -> Result<Grant, Error> {
        let req = pb::RenewLeaseRequest { name: self.name.clone(), token, ttl_ms: ttl_ms(ttl) };
        let grant = self
            .conn
            .call(true, &req, |channel, request| async move {
                Ok(LeasesClient::new(channel).renew(request).await?.into_inner())
            })
            .await?;
        Ok(Grant::from_pb(grant))
    }

    /// Gives the lease up now, so another may take it without waiting for it to run out.
    /// `false` when the grant `token` did not hold it (already lost or released; an attempt
    /// retried after a lost answer may also find it released by the attempt before).
    pub async fn release(&self, token: u64) -> Result<bool, Error> {
        let req = pb::ReleaseLeaseRequest { name: self.name.clone(), token };
        self.conn
            .call(true, &req, |channel, request| async move {
                Ok(LeasesClient::new(channel).release(request).await?.into_inner().released)
            })
            .await
    }

    /// Who holds the lease now (a linearizable read); `None` when nobody does.
    pub async fn get(&self) -> Result<Option<Grant>, Error> {
        let req = pb::GetLeaseRequest {
            name: self.name.clone(),
            consistency: pb::Consistency::Linearizable as i32,
        };
        let grant = self
            .conn
            .call(true, &req, |channel, request| async move {
                Ok(LeasesClient::new(channel).get(request).await?.into_inner().grant)
            })
            .await?;
        Ok(grant.map(Grant::from_pb))
    }
}

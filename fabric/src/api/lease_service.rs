//! `weft.fabric.v1.Leases`: named leases with fencing tokens, kept in the grid.
//!
//! Acquire, renew and release are grid commands proposed through [`routing::propose`], like
//! every write; `Get` waits for [`routing::read_barrier`] and reads this node's replica (at
//! once when it asks for a stale read). Whether a lease is held is judged by the grid's
//! clock, the time of the last entry applied: a lease whose expiry has passed on the leader's
//! clock still shows until the `Tick` the leader proposes at that expiry is applied, and is
//! free for `Acquire` as soon as its expiry has passed.
//!
//! An `Acquire` with a wait proposes `AwaitLease`; when that queues the holder, the request
//! waits on this node: each entry applied here wakes it to look whether the lease went to the
//! holder (a release or expiry grants it to the first waiter in the same entry). When the
//! wait runs out it proposes `StopWaiting`, whose answer says whether the lease came after
//! all. At most [`MAX_WAITING_REQUESTS`] wait at once on a node.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Semaphore;

use tonic::{Request, Response, Status};
use weft_proto::fabric::v1 as pb;

use super::authz::permits;
use crate::auth::{Denied, Permission};
use crate::convert;
use crate::grid::{self, Command, Output};
use crate::routing::{self, Context, Error};

/// Most `Acquire` requests waiting in lease queues at once on one node.
pub const MAX_WAITING_REQUESTS: usize = 1024;
/// Most leases one `List` answers.
pub const MAX_LIST_LIMIT: usize = 1000;
/// How often a waiting request looks again even without an entry applied.
const WAIT_POLL: Duration = Duration::from_millis(100);

/// Proposes `StopWaiting` for a holder whose waiting request was dropped, unless disarmed
/// (`ctx` taken).
struct LeaveOnDrop {
    ctx: Option<Context>,
    name: String,
    holder: String,
}

impl Drop for LeaveOnDrop {
    fn drop(&mut self) {
        let Some(ctx) = self.ctx.take() else { return };
        let command = Command::StopWaiting {
            name: std::mem::take(&mut self.name),
            holder: std::mem::take(&mut self.holder),
        };
        tracing::debug!(?command, "a waiting lease request was dropped; leaving the queue");
        tokio::spawn(async move {
            if let Err(e) = routing::propose(&ctx, command).await {
                tracing::debug!(error = %e, "leaving a lease queue failed; the wait runs out instead");
            }
        });
    }
}

/// Serves `weft.fabric.v1.Leases` on one node.
#[derive(Clone)]
pub struct LeaseService {
    ctx: Context,
    waiting: Arc<Semaphore>,
}

impl LeaseService {
    /// The service for a node.
    pub fn new(ctx: Context) -> Self {
        Self { ctx, waiting: Arc::new(Semaphore::new(MAX_WAITING_REQUESTS)) }
    }

    /// Waits until lease `name` is granted to `holder` (after `queued_ms`, the time of the
    /// entry that queued it), or `wait_ms` runs out; then leaves the queue.
    async fn wait_for_grant(
        &self,
        name: String,
        holder: String,
        queued_ms: u64,
        wait_ms: u64,
    ) -> Result<Response<pb::LeaseGrant>, Status> {
        let mut applied = self.ctx.raft.metrics();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        // A request dropped while it waits (the client went away, its deadline passed) takes
        // its holder out of the queue, so the lock never goes to a process that left.
        let mut leave =
            LeaveOnDrop { ctx: Some(self.ctx.clone()), name: name.clone(), holder: holder.clone() };
        loop {
            let granted = self.ctx.applied.read(|a| {
                a.grid.lease(&name).filter(|l| l.holder == holder && l.acquired_ms >= queued_ms).cloned()
            });
            if let Some(lease) = granted {
                leave.ctx = None;
                return Ok(Response::new(convert::lease_grant(lease)));
            }
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(WAIT_POLL) => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        tracing::debug!(lease = %name, %holder, "wait for lease ran out");
        leave.ctx = None;
        let stop = Command::StopWaiting { name: name.clone(), holder: holder.clone() };
        match self.write(stop, Ok(())).await? {
            Output::WaitEnded { grant: Some(lease) } => Ok(Response::new(convert::lease_grant(lease))),
            Output::WaitEnded { grant: None } => {
                let now = self.ctx.applied.read(|a| a.grid.lease(&name).cloned());
                let held = now
                    .map_or_else(String::new, |l| format!("; '{}' holds it (token {})", l.holder, l.token));
                Err(Status::failed_precondition(format!(
                    "lease '{name}' was not granted to '{holder}' within wait_ms {wait_ms}{held}"
                )))
            }
            other => Err(Status::internal(format!("unexpected answer to a lease wait: {other:?}"))),
        }
    }

    /// Checks `command`, then whether the caller may use the lease (`allowed`), and proposes
    /// it where the leader is.
    async fn write(&self, command: Command, allowed: Result<(), Denied>) -> Result<Output, Status> {
        self.ctx.counters.writes.fetch_add(1, Ordering::Relaxed);
        let result = async {
            command.validate(&self.ctx.limits)?;
            allowed?;
            routing::propose(&self.ctx, command).await
        }
        .await
        .map_err(Error::into_status);
        self.ctx.count(&result);
        result
    }

    /// A grant from the answer to an acquire or a renew.
    fn grant(output: Output) -> Result<Response<pb::LeaseGrant>, Status> {
        match output {
            Output::Leased(lease) => Ok(Response::new(convert::lease_grant(lease))),
            other => Err(Status::internal(format!("unexpected answer to a lease request: {other:?}"))),
        }
    }
}

#[tonic::async_trait]
impl pb::leases_server::Leases for LeaseService {
    async fn acquire(
        &self,
        request: Request<pb::AcquireLeaseRequest>,
    ) -> Result<Response<pb::LeaseGrant>, Status> {
        let allowed = permits(&request, Permission::Lease { name: &request.get_ref().name })?;
        let req = request.into_inner();
        tracing::debug!(lease = %req.name, holder = %req.holder, ttl_ms = req.ttl_ms, wait_ms = req.wait_ms, "acquire lease");
        if req.wait_ms == 0 {
            return Self::grant(self.write(convert::acquire_lease(req), allowed).await?);
        }
        let Ok(_slot) = self.waiting.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "{MAX_WAITING_REQUESTS} requests wait for leases on this node (MAX_WAITING_REQUESTS); retry later or ask another node"
            )));
        };
        let (name, holder, wait_ms) = (req.name.clone(), req.holder.clone(), req.wait_ms);
        match self.write(convert::acquire_lease(req), allowed).await? {
            Output::LeaseQueued { until_ms, .. } => {
                self.wait_for_grant(name, holder, until_ms.saturating_sub(wait_ms), wait_ms).await
            }
            other => Self::grant(other),
        }
    }

    async fn renew(
        &self,
        request: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::LeaseGrant>, Status> {
        let allowed = permits(&request, Permission::Lease { name: &request.get_ref().name })?;
        Self::grant(self.write(convert::renew_lease(request.into_inner()), allowed).await?)
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseLeaseRequest>,
    ) -> Result<Response<pb::ReleaseLeaseResponse>, Status> {
        let allowed = permits(&request, Permission::Lease { name: &request.get_ref().name })?;
        let req = request.into_inner();
        tracing::debug!(lease = %req.name, token = req.token, "release lease");
        match self.write(convert::release_lease(req), allowed).await? {
            Output::LeaseReleased { released } => Ok(Response::new(pb::ReleaseLeaseResponse { released })),
            other => Err(Status::internal(format!("unexpected answer to a lease release: {other:?}"))),
        }
    }

    async fn get(
        &self,
        request: Request<pb::GetLeaseRequest>,
    ) -> Result<Response<pb::GetLeaseResponse>, Status> {
        self.ctx.counters.reads.fetch_add(1, Ordering::Relaxed);
        let allowed = permits(&request, Permission::Lease { name: &request.get_ref().name })?;
        let req = request.into_inner();
        let result = async {
            grid::lease::validate_lease_name(&req.name)?;
            allowed?;
            if !convert::is_stale(req.consistency) {
                routing::read_barrier(&self.ctx).await?;
            }
            let (grant, waiters) = self.ctx.applied.read(|a| {
                let waiters = a
                    .grid
                    .lease_waiters(&req.name)
                    .into_iter()
                    .map(|w| pb::LeaseWaiter { holder: w.holder.clone(), until_ms: w.until_ms });
                (a.grid.lease(&req.name).cloned(), waiters.collect())
            });
            Ok(Response::new(pb::GetLeaseResponse { grant: grant.map(convert::lease_grant), waiters }))
        }
        .await
        .map_err(Error::into_status);
        self.ctx.count(&result);
        result
    }

    async fn list(
        &self,
        request: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesResponse>, Status> {
        self.ctx.counters.reads.fetch_add(1, Ordering::Relaxed);
        let caller = crate::auth::Caller::of(&request)?;
        let req = request.into_inner();
        let result = async {
            let limit = super::page_size(req.limit, 100, MAX_LIST_LIMIT)?;
            if !convert::is_stale(req.consistency) {
                routing::read_barrier(&self.ctx).await?;
            }
            let (leases, next) = self.ctx.applied.read(|a| {
                let (page, next) = a.grid.leases_page(&req.after, limit);
                let leases: Vec<pb::ListedLease> = page
                    .into_iter()
                    // Only the leases the caller may use.
                    .filter(|(l, _)| {
                        crate::auth::authorize(&caller, Permission::Lease { name: &l.name }).is_ok()
                    })
                    .map(|(l, waiting)| pb::ListedLease {
                        grant: Some(convert::lease_grant(l.clone())),
                        waiting: waiting as u32,
                    })
                    .collect();
                (leases, next.unwrap_or_default())
            });
            Ok(Response::new(pb::ListLeasesResponse { leases, next }))
        }
        .await
        .map_err(Error::into_status);
        self.ctx.count(&result);
        result
    }
}

//! `weft.fabric.v1.Leases`: named leases with fencing tokens, kept in the grid.
//!
//! Acquire, renew and release are grid commands proposed through [`routing::propose`], like
//! every write; `Get` waits for [`routing::read_barrier`] and reads this node's replica (at
//! once when it asks for a stale read). Whether a lease is held is judged by the grid's
//! clock, the time of the last entry applied: a lease whose expiry has passed on the leader's
//! clock still shows until the `Tick` the leader proposes at that expiry is applied, and is
//! free for `Acquire` as soon as its expiry has passed.

use std::sync::atomic::Ordering;

use tonic::{Request, Response, Status};
use weft_proto::fabric::v1 as pb;

use super::authz::permits;
use crate::auth::{Denied, Permission};
use crate::convert;
use crate::grid::{self, Command, Output};
use crate::routing::{self, Context, Error};

/// Serves `weft.fabric.v1.Leases` on one node.
#[derive(Clone)]
pub struct LeaseService {
    ctx: Context,
}

impl LeaseService {
    /// The service for a node.
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
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
        tracing::debug!(lease = %req.name, holder = %req.holder, ttl_ms = req.ttl_ms, "acquire lease");
        Self::grant(self.write(convert::acquire_lease(req), allowed).await?)
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
            let grant = self.ctx.applied.read(|a| a.grid.lease(&req.name).cloned());
            Ok(Response::new(pb::GetLeaseResponse { grant: grant.map(convert::lease_grant) }))
        }
        .await
        .map_err(Error::into_status);
        self.ctx.count(&result);
        result
    }
}

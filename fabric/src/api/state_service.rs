//! `weft.fabric.v1.State`: key/value state in the grid.
//!
//! Writes are grid commands proposed through [`routing::propose`]; linearizable reads wait
//! for [`routing::read_barrier`] and then read this node's replica; stale reads read the
//! replica at once. Every request is checked before anything is routed or proposed.

use std::sync::atomic::Ordering;

use tonic::{Request, Response, Status};
use weft_proto::fabric::v1 as pb;

use super::authz::permits;
use crate::auth::{Denied, Permission};
use crate::convert;
use crate::grid::{self, Command, Output};
use crate::routing::{self, Context, Error};

/// Serves `weft.fabric.v1.State` on one node.
#[derive(Clone)]
pub struct StateService {
    ctx: Context,
}

impl StateService {
    /// The service for a node.
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    /// Checks `command`, then whether the caller may make it (`allowed`: its permission to
    /// write the namespace), and proposes it where the leader is.
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

    /// Checks a read, then whether the caller may make it (`allowed`: its permission to read
    /// the namespace), waits until this replica may serve it (unless it asked for a stale
    /// read) and reads.
    async fn read<T>(
        &self,
        consistency: i32,
        check: impl FnOnce() -> Result<(), grid::Error>,
        allowed: Result<(), Denied>,
        read: impl FnOnce(&Context) -> Result<T, Error>,
    ) -> Result<Response<T>, Status> {
        self.ctx.counters.reads.fetch_add(1, Ordering::Relaxed);
        let result = async {
            check()?;
            allowed?;
            if !convert::is_stale(consistency) {
                routing::read_barrier(&self.ctx).await?;
            }
            read(&self.ctx)
        }
        .await
        .map(Response::new)
        .map_err(Error::into_status);
        self.ctx.count(&result);
        result
    }
}

fn version_of(output: Output) -> u64 {
    match output {
        Output::Written { version } => version,
        _ => 0,
    }
}

fn page_size(ctx: &Context, req: &pb::ListRequest) -> usize {
    if req.limit == 0 { ctx.limits.max_list_page } else { req.limit as usize }
}

#[tonic::async_trait]
impl pb::state_server::State for StateService {
    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let allowed = permits(&request, Permission::ReadState { namespace: &request.get_ref().namespace })?;
        let req = request.into_inner();
        self.read(
            req.consistency,
            || grid::validate_key(&req.namespace, &req.key, &self.ctx.limits),
            allowed,
            |ctx| {
                let entry = ctx.applied.read(|a| a.grid.get(&req.namespace, &req.key).cloned());
                Ok(pb::GetResponse { entry: entry.map(|v| convert::key_value(req.key.clone(), v)) })
            },
        )
        .await
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let allowed = permits(&request, Permission::WriteState { namespace: &request.get_ref().namespace })?;
        let output = self.write(convert::put(request.into_inner()), allowed).await?;
        Ok(Response::new(pb::PutResponse { version: version_of(output) }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let allowed = permits(&request, Permission::WriteState { namespace: &request.get_ref().namespace })?;
        let output = self.write(convert::delete(request.into_inner()), allowed).await?;
        Ok(Response::new(pb::DeleteResponse { deleted: matches!(output, Output::Deleted { existed: true }) }))
    }

    async fn compare_and_set(
        &self,
        request: Request<pb::CompareAndSetRequest>,
    ) -> Result<Response<pb::CompareAndSetResponse>, Status> {
        let allowed = permits(&request, Permission::WriteState { namespace: &request.get_ref().namespace })?;
        let output = self.write(convert::compare_and_set(request.into_inner()), allowed).await?;
        Ok(Response::new(pb::CompareAndSetResponse { version: version_of(output) }))
    }

    async fn list(&self, request: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        let allowed = permits(&request, Permission::ReadState { namespace: &request.get_ref().namespace })?;
        let req = request.into_inner();
        let limit = page_size(&self.ctx, &req);
        let after = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
        self.read(
            req.consistency,
            // Listing an empty grid checks the namespace and page size without reading anything.
            || {
                grid::Grid::default()
                    .list(&req.namespace, &req.prefix, None, limit, &self.ctx.limits)
                    .map(drop)
            },
            allowed,
            |ctx| {
                let page = ctx
                    .applied
                    .read(|a| a.grid.list(&req.namespace, &req.prefix, after, limit, &ctx.limits))?;
                Ok(pb::ListResponse {
                    next_page_token: page.next.unwrap_or_default(),
                    entries: page.entries.into_iter().map(|(k, v)| convert::key_value(k, v)).collect(),
                })
            },
        )
        .await
    }
}

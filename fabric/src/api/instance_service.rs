//! `weft.fabric.v1.Instances`: start and stop agent instances (waiting for their `Start` and
//! `Stop` delegates), read and list them.

use std::time::Instant;

use tonic::{Request, Response, Status};
use weft_proto::fabric::v1 as pb;

use super::authz::{self, permits};
use super::wait::{Watch, check_waiters, unfinished, wait_deadline};
use crate::auth::{Caller, Permission};
use crate::convert;
use crate::grid::execution::ExecutionId;
use crate::grid::{self, Command, Output};
use crate::routing::{self, Context, Error};

/// Serves `weft.fabric.v1.Instances` on one node.
#[derive(Clone)]
pub struct InstanceService {
    ctx: Context,
}

impl InstanceService {
    /// The service for a node.
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    /// Waits until `deadline` for a Start or Stop execution to finish on this replica (or
    /// until `caller`'s token lapses).
    async fn finished(
        &self,
        caller: &Caller,
        id: ExecutionId,
        started: Instant,
        deadline: Instant,
    ) -> Result<pb::Execution, Status> {
        let mut watch = Watch::after_create(&self.ctx, id)?.for_caller(&self.ctx, caller);
        match watch.until_final(&self.ctx, deadline).await {
            Ok(e) => Ok(convert::pb_execution(e)),
            Err(why) => Err(unfinished(id, why, started.elapsed())),
        }
    }

    async fn consistent(&self, consistency: i32) -> Result<(), Status> {
        if convert::is_stale(consistency) {
            return Ok(());
        }
        routing::read_barrier(&self.ctx).await.map_err(Error::into_status)
    }
}

fn bad(e: grid::Error) -> Status {
    Error::Grid(e).into_status()
}

#[tonic::async_trait]
impl pb::instances_server::Instances for InstanceService {
    async fn start(
        &self,
        request: Request<pb::StartInstanceRequest>,
    ) -> Result<Response<pb::StartInstanceResponse>, Status> {
        self.ctx.counters.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let actor = super::actor(&self.ctx, &request);
        let allowed = permits(&request, Permission::ManageInstances { agent: &request.get_ref().agent })?;
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let started = Instant::now();
        let deadline = wait_deadline(&self.ctx, req.timeout_ms);
        let result = async {
            let new = convert::new_instance(req, &self.ctx.work).map_err(bad)?;
            let command = super::audited(actor, Command::StartInstance(Box::new(new)));
            command.validate(&self.ctx.limits).map_err(bad)?;
            allowed?;
            self.ctx.check_room().map_err(Error::into_status)?;
            check_waiters(&self.ctx).map_err(Error::into_status)?;
            match routing::propose(&self.ctx, command).await.map_err(Error::into_status)? {
                Output::Instance { agent, instance, start_execution, created } => {
                    let start = self.finished(&caller, start_execution, started, deadline).await?;
                    Ok(Response::new(pb::StartInstanceResponse {
                        agent,
                        instance,
                        start: Some(start),
                        created,
                    }))
                }
                other => Err(Status::internal(format!("unexpected answer to a start: {other:?}"))),
            }
        }
        .await;
        self.ctx.count(&result);
        result
    }

    async fn stop(
        &self,
        request: Request<pb::StopInstanceRequest>,
    ) -> Result<Response<pb::StopInstanceResponse>, Status> {
        self.ctx.counters.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let actor = super::actor(&self.ctx, &request);
        let allowed = permits(&request, Permission::ManageInstances { agent: &request.get_ref().agent })?;
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let started = Instant::now();
        let deadline = wait_deadline(&self.ctx, req.timeout_ms);
        let result = async {
            let command =
                super::audited(actor, Command::StopInstance { agent: req.agent, instance: req.instance });
            command.validate(&self.ctx.limits).map_err(bad)?;
            allowed?;
            check_waiters(&self.ctx).map_err(Error::into_status)?;
            match routing::propose(&self.ctx, command).await.map_err(Error::into_status)? {
                Output::Stopping { stop_execution } => {
                    let stop = self.finished(&caller, stop_execution, started, deadline).await?;
                    Ok(Response::new(pb::StopInstanceResponse { stop: Some(stop) }))
                }
                other => Err(Status::internal(format!("unexpected answer to a stop: {other:?}"))),
            }
        }
        .await;
        self.ctx.count(&result);
        result
    }

    async fn get(&self, request: Request<pb::GetInstanceRequest>) -> Result<Response<pb::Instance>, Status> {
        self.ctx.counters.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let allowed = permits(&request, Permission::ReadAgent { agent: &request.get_ref().agent })?;
        let req = request.into_inner();
        let result = async {
            grid::validate_name("agent", &req.agent).map_err(bad)?;
            grid::validate_name("instance", &req.instance).map_err(bad)?;
            allowed?;
            self.consistent(req.consistency).await?;
            self.ctx
                .applied
                .read(|a| a.grid.instance(&req.agent, &req.instance).cloned())
                .map(|i| Response::new(convert::pb_instance(i)))
                .ok_or_else(|| {
                    bad(grid::Error::UnknownInstance {
                        agent: req.agent.clone(),
                        instance: req.instance.clone(),
                    })
                })
        }
        .await;
        self.ctx.count(&result);
        result
    }

    async fn list(
        &self,
        request: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        self.ctx.counters.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let caller = crate::auth::Caller::of(&request)?;
        let req = request.into_inner();
        let result = async {
            let max = self.ctx.limits.max_list_page;
            let limit = match req.limit as usize {
                0 => max,
                n if n > max => return Err(bad(grid::Error::InvalidPageSize { requested: n, limit: max })),
                n => n,
            };
            if !req.agent.is_empty() {
                grid::validate_name("agent", &req.agent).map_err(bad)?;
            }
            authz::check_list(&caller, &req.agent, "instances")?;
            self.consistent(req.consistency).await?;
            let agent = (!req.agent.is_empty()).then_some(req.agent.as_str());
            let after = req.page_token.map(|p| (p.agent, p.instance));
            let (instances, next) =
                self.ctx.applied.read(|a| a.grid.list_instances(agent, after.as_ref(), limit));
            Ok(Response::new(pb::ListInstancesResponse {
                instances: instances.into_iter().map(convert::pb_instance).collect(),
                next_page_token: next.map(|(agent, instance)| pb::InstanceRef { agent, instance }),
            }))
        }
        .await;
        self.ctx.count(&result);
        result
    }
}

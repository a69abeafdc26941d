//! `weft.fabric.v1.Schedules`: cron schedules kept in the grid that create executions at their
//! due times.
//!
//! Create, pause, resume, trigger and delete are grid commands (audited control operations)
//! proposed through [`routing::propose`]; the runs themselves happen in the `Tick` entries
//! the leader proposes at each due time (`grid/schedules.rs`). `Get` and `List` wait for
//! [`routing::read_barrier`] (unless asked for a stale read) and read this node's replica.
//!
//! Permissions: a schedule makes calls, so creating, pausing, resuming, triggering or deleting
//! one needs `Call` of its agent, and reading it `ReadAgent` of its agent.

use std::sync::atomic::Ordering;

use tonic::{Request, Response, Status};
use weft_proto::fabric::v1 as pb;

use super::authz::permits;
use crate::auth::{Caller, Denied, Permission, authorize};
use crate::convert;
use crate::grid::schedule::{self, Schedule};
use crate::grid::{self, Command, Grid, Output};
use crate::routing::{self, Context, Error};

/// Most schedules one `List` answers.
pub const MAX_LIST_LIMIT: usize = 1000;
/// Most next due times one `Get` lists.
pub const MAX_UPCOMING: u32 = 100;

/// Serves `weft.fabric.v1.Schedules` on one node.
#[derive(Clone)]
pub struct ScheduleService {
    ctx: Context,
}

impl ScheduleService {
    /// The service for a node.
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    /// Checks `command`, then `allowed`, and proposes it where the leader is.
    async fn write(&self, command: Command, allowed: Result<(), Denied>) -> Result<Output, Error> {
        self.ctx.counters.writes.fetch_add(1, Ordering::Relaxed);
        command.validate(&self.ctx.limits)?;
        allowed?;
        routing::propose(&self.ctx, command).await
    }

    /// The agent schedule `name` calls: from this replica, or after a read barrier when the
    /// replica does not have it yet (created an instant ago through another node).
    async fn agent_of(&self, name: &str) -> Result<Option<String>, Error> {
        grid::validate_name("schedule", name)?;
        let read = || self.ctx.applied.read(|a| a.grid.schedule(name).map(|s| s.spec.call.agent.clone()));
        if let Some(agent) = read() {
            return Ok(Some(agent));
        }
        routing::read_barrier(&self.ctx).await?;
        Ok(read())
    }

    /// A control operation on schedule `name`: needs `Call` of its agent (`NOT_FOUND` when
    /// there is no such schedule).
    async fn control(
        &self,
        request: Request<pb::ScheduleRef>,
        command: fn(String, String) -> Command,
    ) -> Result<Output, Status> {
        let actor = super::actor(&self.ctx, &request);
        let caller = Caller::of(&request)?;
        let name = request.into_inner().name;
        let result = async {
            let Some(agent) = self.agent_of(&name).await? else {
                return Err(Error::Grid(grid::Error::UnknownSchedule { name }));
            };
            let allowed = authorize(&caller, Permission::Call { agent: &agent });
            // The agent goes with the command: if the name was deleted and created again
            // for another agent meanwhile, the grid refuses it.
            self.write(super::audited(actor, command(name, agent)), allowed).await
        }
        .await
        .map_err(Error::into_status);
        self.ctx.count(&result);
        result
    }

    /// The schedule a create, pause or resume answered, as the protocol shows it.
    fn shown(&self, output: Output) -> Result<pb::Schedule, Status> {
        match output {
            Output::Schedule { schedule, .. } => {
                Ok(self.ctx.applied.read(|a| show(&schedule, &a.grid, DEFAULT_UPCOMING)))
            }
            other => Err(Status::internal(format!("unexpected answer to a schedule request: {other:?}"))),
        }
    }
}

/// Next due times a create, pause, resume or a `Get` without `upcoming` shows.
const DEFAULT_UPCOMING: usize = 5;

/// Schedule `s` as the protocol shows it, with its next `upcoming` due times.
fn show(s: &Schedule, grid: &Grid, upcoming: usize) -> pb::Schedule {
    let upcoming_ms = match s.next_due_ms {
        Some(next) if upcoming > 0 => {
            let mut times = vec![next];
            times.extend(schedule::upcoming(&s.spec.cron, s.spec.time_zone.as_deref(), next, upcoming - 1));
            times
        }
        _ => Vec::new(),
    };
    convert::pb_schedule(s, upcoming_ms, |id| status(grid, id))
}

/// Execution `id`'s status on this replica ("forgotten" once its retention ran out).
fn status(grid: &Grid, id: u64) -> String {
    grid.execution(id).map_or_else(|| "forgotten".to_owned(), |e| e.status.as_str().to_owned())
}

#[tonic::async_trait]
impl pb::schedules_server::Schedules for ScheduleService {
    async fn create(
        &self,
        request: Request<pb::CreateScheduleRequest>,
    ) -> Result<Response<pb::CreateScheduleResponse>, Status> {
        let actor = super::actor(&self.ctx, &request);
        let agent = request.get_ref().call.as_ref().map(|c| c.agent.clone()).unwrap_or_default();
        let allowed = permits(&request, Permission::Call { agent: &agent })?;
        let req = request.into_inner();
        tracing::debug!(schedule = %req.name, cron = %req.cron, %agent, "create schedule");
        let result = async {
            let new = convert::new_schedule(req, &self.ctx.work)?;
            self.write(super::audited(actor, Command::CreateSchedule(Box::new(new))), allowed).await
        }
        .await
        .map_err(Error::into_status);
        self.ctx.count(&result);
        let created = matches!(result, Ok(Output::Schedule { created: true, .. }));
        let schedule = self.shown(result?)?;
        Ok(Response::new(pb::CreateScheduleResponse { schedule: Some(schedule), created }))
    }

    async fn get(&self, request: Request<pb::GetScheduleRequest>) -> Result<Response<pb::Schedule>, Status> {
        self.ctx.counters.reads.fetch_add(1, Ordering::Relaxed);
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let result = async {
            grid::validate_name("schedule", &req.name)?;
            let upcoming = match req.upcoming {
                0 => DEFAULT_UPCOMING,
                n if n <= MAX_UPCOMING => n as usize,
                n => {
                    return Err(Error::Grid(grid::Error::InvalidSchedule {
                        reason: format!("upcoming {n} is over the limit of {MAX_UPCOMING}"),
                    }));
                }
            };
            if !convert::is_stale(req.consistency) {
                routing::read_barrier(&self.ctx).await?;
            }
            let shown = self.ctx.applied.read(|a| {
                let s = a.grid.schedule(&req.name)?;
                Some((s.spec.call.agent.clone(), show(s, &a.grid, upcoming)))
            });
            let Some((agent, schedule)) = shown else {
                return Err(Error::Grid(grid::Error::UnknownSchedule { name: req.name }));
            };
            authorize(&caller, Permission::ReadAgent { agent: &agent })?;
            Ok(Response::new(schedule))
        }
        .await
        .map_err(Error::into_status);
        self.ctx.count(&result);
        result
    }

    async fn list(
        &self,
        request: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        self.ctx.counters.reads.fetch_add(1, Ordering::Relaxed);
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let result = async {
            let limit = super::page_size(req.limit, 100, MAX_LIST_LIMIT)?;
            if !req.agent.is_empty() {
                grid::validate_name("agent", &req.agent)?;
                authorize(&caller, Permission::ReadAgent { agent: &req.agent })?;
            }
            if !convert::is_stale(req.consistency) {
                routing::read_barrier(&self.ctx).await?;
            }
            let after = (!req.after.is_empty()).then_some(req.after.as_str());
            let (schedules, next) = self.ctx.applied.read(|a| {
                let page = a.grid.schedules_after(after, limit);
                let next = if page.len() == limit { page.last().map(|s| s.spec.name.clone()) } else { None };
                let shown = page
                    .into_iter()
                    .filter(|s| req.agent.is_empty() || s.spec.call.agent == req.agent)
                    // Only the schedules the caller may read.
                    .filter(|s| {
                        authorize(&caller, Permission::ReadAgent { agent: &s.spec.call.agent }).is_ok()
                    })
                    .map(|s| show(s, &a.grid, 0))
                    .collect();
                (shown, next.unwrap_or_default())
            });
            Ok(Response::new(pb::ListSchedulesResponse { schedules, next }))
        }
        .await
        .map_err(Error::into_status);
        self.ctx.count(&result);
        result
    }

    async fn pause(&self, request: Request<pb::ScheduleRef>) -> Result<Response<pb::Schedule>, Status> {
        let output = self.control(request, |name, agent| Command::PauseSchedule { name, agent }).await?;
        Ok(Response::new(self.shown(output)?))
    }

    async fn resume(&self, request: Request<pb::ScheduleRef>) -> Result<Response<pb::Schedule>, Status> {
        let output = self.control(request, |name, agent| Command::ResumeSchedule { name, agent }).await?;
        Ok(Response::new(self.shown(output)?))
    }

    async fn trigger(&self, request: Request<pb::ScheduleRef>) -> Result<Response<pb::ScheduleRun>, Status> {
        match self.control(request, |name, agent| Command::TriggerSchedule { name, agent }).await? {
            Output::ScheduleRun { run } => Ok(Response::new(
                self.ctx.applied.read(|a| convert::pb_schedule_run(&run, |id| status(&a.grid, id))),
            )),
            other => Err(Status::internal(format!("unexpected answer to a trigger: {other:?}"))),
        }
    }

    async fn delete(
        &self,
        request: Request<pb::ScheduleRef>,
    ) -> Result<Response<pb::DeleteScheduleResponse>, Status> {
        match self.control(request, |name, agent| Command::DeleteSchedule { name, agent }).await {
            Ok(Output::Deleted { existed }) => {
                Ok(Response::new(pb::DeleteScheduleResponse { deleted: existed }))
            }
            // Nothing to delete: answered as such (deleting is idempotent).
            Err(status) if status.code() == tonic::Code::NotFound => {
                Ok(Response::new(pb::DeleteScheduleResponse { deleted: false }))
            }
            Ok(other) => Err(Status::internal(format!("unexpected answer to a delete: {other:?}"))),
            Err(status) => Err(status),
        }
    }
}

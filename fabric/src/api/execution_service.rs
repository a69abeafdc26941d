//! `weft.fabric.v1.Executions`: create, call, wait for, read, list and cancel executions;
//! agent sessions (`Listen`, served by [`crate::sessions`]); completions outside a stream.
//!
//! Waiting happens on the node the caller contacted: it registers with the watch hub, then
//! reads its own replica, and reads again on every change the hub reports, until the
//! execution is final or the wait's deadline passes.

use std::pin::Pin;
use std::time::Instant;

use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use weft_proto::fabric::v1 as pb;

use super::authz;
use super::wait::{Watch, check_waiters, created_but, still_running, unfinished, wait_deadline};
use crate::auth::{Caller, Permission, authorize};
use crate::convert;
use crate::grid::execution::{Execution, ExecutionId, Status as ExecStatus};
use crate::grid::{self, Command, Output};
use crate::routing::{self, Context, Error};

/// Changes of one execution a `Wait` stream may have queued for a slow reader.
const WAIT_STREAM_BUFFER: usize = 16;

fn created_id(output: Output) -> Result<(ExecutionId, bool), Error> {
    match output {
        Output::Execution { id, created } => Ok((id, created)),
        other => Err(Error::Indeterminate(format!("unexpected answer to a create: {other:?}"))),
    }
}

/// Gives an execution created without a timeout or a deadline the node's default timeout
/// (`default_ms`, 0: none), counted from when it may first run: nothing waits pending
/// forever, and a delayed call is not failed before it is due. Only calls from the API get
/// it: a generator's call runs as long as its stream, and a handler's children are its own.
fn default_timeout(new: &mut grid::execution::NewExecution, default_ms: u64) {
    if default_ms == 0 || new.timeout_ms.is_some() || new.deadline_ms.is_some() {
        return;
    }
    match new.not_before_ms {
        Some(at) => new.deadline_ms = Some(at.saturating_add(default_ms)),
        None => {
            let from_creation = default_ms.saturating_add(new.delay_ms.unwrap_or(0));
            new.timeout_ms = Some(from_creation.min(grid::execution::MAX_RELATIVE_MS));
        }
    }
}

/// Serves `weft.fabric.v1.Executions` on one node.
#[derive(Clone)]
pub struct ExecutionService {
    ctx: Context,
    shutdown: tokio_util::sync::CancellationToken,
}

impl ExecutionService {
    /// The service for a node; sessions end when `shutdown` fires.
    pub fn new(ctx: Context, shutdown: tokio_util::sync::CancellationToken) -> Self {
        Self { ctx, shutdown }
    }

    /// Creates an execution `caller` may call (checked once the request is, before anything is
    /// proposed).
    async fn create(
        &self,
        caller: &Caller,
        req: pb::CreateExecutionRequest,
        kind: routing::Kind,
    ) -> Result<(ExecutionId, bool), Error> {
        let wait_for_delegate = req.wait_for_delegate;
        let mut new = convert::new_execution(req, &self.ctx.work)?;
        default_timeout(&mut new, self.ctx.work.default_execution_timeout_ms);
        let agent = new.agent.clone();
        let command = if wait_for_delegate {
            Command::CreateExecution(Box::new(new))
        } else {
            Command::CreateServedExecution(Box::new(new))
        };
        command.validate(&self.ctx.limits)?;
        authorize(caller, Permission::Call { agent: &agent })?;
        self.ctx.check_room()?;
        created_id(routing::propose_as(&self.ctx, command, kind).await?)
    }

    fn counted<T>(&self, result: Result<T, Status>) -> Result<T, Status> {
        self.ctx.count(&result);
        result
    }

    fn read(&self, id: ExecutionId) -> Result<Execution, Status> {
        self.ctx
            .applied
            .read(|a| a.grid.execution(id).cloned())
            .ok_or_else(|| Error::Grid(grid::Error::UnknownExecution { id }).into_status())
    }

    /// Execution `id` from this replica, if `caller` may read its agent's executions.
    fn read_for(&self, caller: &Caller, id: ExecutionId) -> Result<Execution, Status> {
        let e = self.read(id)?;
        authorize(caller, Permission::ReadAgent { agent: &e.agent })?;
        Ok(e)
    }

    /// A list request's page size: 0 is the largest, more than that is refused.
    fn page_limit(&self, requested: u32) -> Result<usize, Status> {
        let max = self.ctx.limits.max_list_page;
        match requested as usize {
            0 => Ok(max),
            n if n > max => {
                Err(Error::Grid(grid::Error::InvalidPageSize { requested: n, limit: max }).into_status())
            }
            n => Ok(n),
        }
    }

    async fn consistent(&self, consistency: i32) -> Result<(), Status> {
        if convert::is_stale(consistency) {
            return Ok(());
        }
        routing::read_barrier(&self.ctx).await.map_err(Error::into_status)
    }
}

type WaitStream = Pin<Box<dyn Stream<Item = Result<pb::Execution, Status>> + Send>>;
type ListenStream = Pin<Box<dyn Stream<Item = Result<pb::FabricMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::executions_server::Executions for ExecutionService {
    async fn create(
        &self,
        request: Request<pb::CreateExecutionRequest>,
    ) -> Result<Response<pb::CreateExecutionResponse>, Status> {
        self.ctx.counters.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let result = async {
            let caller = Caller::of(&request)?;
            check_waiters(&self.ctx).map_err(Error::into_status)?;
            let (id, created) = self
                .create(&caller, request.into_inner(), routing::Kind::Plain)
                .await
                .map_err(Error::into_status)?;
            // The entry is applied on the leader; wait until this replica has it too.
            let mut watch = Watch::after_create(&self.ctx, id)?;
            let deadline = Instant::now() + self.ctx.request_timeout;
            loop {
                if let Some(e) = watch.current(&self.ctx) {
                    return Ok(Response::new(pb::CreateExecutionResponse {
                        execution: Some(convert::pb_execution(e)),
                        created,
                    }));
                }
                // A short wait (the request timeout) with no lapse to end it: never `Err`.
                if !watch.changed(deadline).await.unwrap_or(false) {
                    return Err(created_but(id, "this node has not applied it yet"));
                }
            }
        }
        .await;
        self.counted(result)
    }

    async fn call(&self, request: Request<pb::CallRequest>) -> Result<Response<pb::Execution>, Status> {
        self.ctx.counters.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let result = async {
            let caller = Caller::of(&request)?;
            let req = request.into_inner();
            let create =
                req.create.ok_or_else(|| Status::invalid_argument("a call needs a create request"))?;
            let started = Instant::now();
            let deadline = wait_deadline(&self.ctx, req.timeout_ms);
            check_waiters(&self.ctx).map_err(Error::into_status)?;
            // A call waits for its result: the leader may push it to a session before
            // creating it, and create it with its completion (eager calls).
            let (id, _) =
                self.create(&caller, create, routing::Kind::Call).await.map_err(Error::into_status)?;
            let mut watch = Watch::after_create(&self.ctx, id)?.for_caller(&self.ctx, &caller);
            match watch.until_final(&self.ctx, deadline).await {
                Ok(e) => Ok(Response::new(convert::pb_execution(e))),
                Err(why) => Err(unfinished(id, why, started.elapsed())),
            }
        }
        .await;
        self.counted(result)
    }

    type WaitStream = WaitStream;

    async fn wait(&self, request: Request<pb::WaitRequest>) -> Result<Response<Self::WaitStream>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let started = Instant::now();
        let deadline = wait_deadline(&self.ctx, req.timeout_ms);
        let mut watch =
            Watch::new(&self.ctx, req.id).map_err(Error::into_status)?.for_caller(&self.ctx, &caller);
        let agent = match watch.current(&self.ctx) {
            Some(e) => e.agent,
            None => {
                // Perhaps created an instant ago through another node: confirm with the leader.
                self.consistent(0).await?;
                self.read(req.id)?.agent
            }
        };
        authorize(&caller, Permission::ReadAgent { agent: &agent })?;
        let (tx, rx) = mpsc::channel(WAIT_STREAM_BUFFER);
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            let mut last: Option<Execution> = None;
            loop {
                let now = watch.current(&ctx);
                if now != last
                    && let Some(e) = &now
                {
                    let done = e.status.is_final();
                    if tx.send(Ok(convert::pb_execution(e.clone()))).await.is_err() || done {
                        return;
                    }
                }
                last = now;
                let changed = tokio::select! {
                    // The caller went away: stop waiting (and free the waiter slot).
                    _ = tx.closed() => return,
                    changed = watch.changed(deadline) => changed,
                };
                match changed {
                    Ok(true) => {}
                    Ok(false) => {
                        let _ = tx.send(Err(still_running(req.id, last, started.elapsed()))).await;
                        return;
                    }
                    // Its token was revoked or expired: the stream ends UNAUTHENTICATED.
                    Err(why) => return crate::auth::end_stream(&tx, &why),
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream_from(rx))))
    }

    async fn get(
        &self,
        request: Request<pb::GetExecutionRequest>,
    ) -> Result<Response<pb::Execution>, Status> {
        self.ctx.counters.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let result = async {
            let caller = Caller::of(&request)?;
            let req = request.into_inner();
            self.consistent(req.consistency).await?;
            Ok(Response::new(convert::pb_execution(self.read_for(&caller, req.id)?)))
        }
        .await;
        self.counted(result)
    }

    async fn list(
        &self,
        request: Request<pb::ListExecutionsRequest>,
    ) -> Result<Response<pb::ListExecutionsResponse>, Status> {
        self.ctx.counters.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let result = async {
            let caller = Caller::of(&request)?;
            let req = request.into_inner();
            let limit = self.page_limit(req.limit)?;
            let status = match req.status.as_str() {
                "" => None,
                name => Some(ExecStatus::parse(name).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "unknown status '{}'; expected pending, assigned, completed, failed or cancelled",
                        grid::namespace::clip(name)
                    ))
                })?),
            };
            if !req.agent.is_empty() {
                grid::validate_name("agent", &req.agent).map_err(|e| Error::Grid(e).into_status())?;
            }
            authz::check_list(&caller, &req.agent, "executions")?;
            let agent = (!req.agent.is_empty()).then_some(req.agent.as_str());
            let after = (req.page_token != 0).then_some(req.page_token);
            self.consistent(req.consistency).await?;
            let query = grid::ExecutionQuery {
                agent,
                status,
                created_since_ms: req.created_since_ms,
                newest_first: req.newest_first,
            };
            let page = self.ctx.applied.read(|a| a.grid.list_executions(&query, after, limit));
            Ok(Response::new(pb::ListExecutionsResponse {
                executions: page.executions.into_iter().map(convert::pb_execution).collect(),
                next_page_token: page.next.unwrap_or(0),
            }))
        }
        .await;
        self.counted(result)
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelExecutionRequest>,
    ) -> Result<Response<pb::CancelExecutionResponse>, Status> {
        self.ctx.counters.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let actor = super::actor(&self.ctx, &request);
        let result = async {
            let caller = Caller::of(&request)?;
            let req = request.into_inner();
            let agent = authz::execution_agent(&self.ctx, req.id).await.map_err(Error::into_status)?;
            authorize(&caller, Permission::Cancel { agent: &agent })?;
            let command = super::audited(actor, Command::Cancel { execution: req.id, reason: req.reason });
            match routing::propose(&self.ctx, command).await.map_err(Error::into_status)? {
                Output::Cancelled { count } => {
                    Ok(Response::new(pb::CancelExecutionResponse { cancelled: count }))
                }
                other => Err(Status::internal(format!("unexpected answer to a cancel: {other:?}"))),
            }
        }
        .await;
        self.counted(result)
    }

    type ListenStream = ListenStream;

    async fn listen(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::ListenStream>, Status> {
        let caller = Caller::of(&request)?;
        let rx = crate::sessions::host::open(
            self.ctx.clone(),
            caller,
            request.into_inner(),
            self.shutdown.clone(),
        )
        .await?;
        Ok(Response::new(Box::pin(tokio_stream_from(rx))))
    }

    async fn complete(
        &self,
        request: Request<pb::Completion>,
    ) -> Result<Response<pb::CompletionAck>, Status> {
        self.ctx.counters.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let result = async {
            let caller = Caller::of(&request)?;
            let req = request.into_inner();
            let (id, token) = (req.execution_id, req.token);
            let creates = req.effects.iter().any(|e| matches!(e.kind, Some(pb::effect::Kind::Call(_))));
            let completion =
                convert::completion(req, &self.ctx.work).map_err(|e| Error::Grid(e).into_status())?;
            let command = Command::Complete(Box::new(completion));
            command.validate(&self.ctx.limits).map_err(|e| Error::Grid(e).into_status())?;
            if let Command::Complete(c) = &command {
                authz::check_completion(&self.ctx, &caller, id, &c.effects)
                    .await
                    .map_err(Error::into_status)?;
            }
            if creates {
                self.ctx.check_room().map_err(Error::into_status)?;
            }
            let answer = routing::propose(&self.ctx, command).await;
            match answer {
                Err(Error::Grid(_)) | Ok(_) => Ok(Response::new(convert::completion_ack(id, token, &answer))),
                Err(e) => Err(e.into_status()),
            }
        }
        .await;
        self.counted(result)
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        self.ctx.counters.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let result = async {
            crate::auth::check(&request, Permission::ReadCluster)?;
            let req = request.into_inner();
            let limit = self.page_limit(req.limit)?;
            let agent = (!req.agent.is_empty()).then_some(req.agent.as_str());
            let after = (req.page_token != 0).then_some(req.page_token);
            self.consistent(req.consistency).await?;
            let (sessions, next) = self.ctx.applied.read(|a| a.grid.list_sessions(agent, after, limit));
            Ok(Response::new(pb::ListSessionsResponse {
                sessions: sessions.into_iter().map(convert::pb_session).collect(),
                next_page_token: next.unwrap_or(0),
            }))
        }
        .await;
        self.counted(result)
    }
}

/// A stream of what arrives on `rx`.
pub fn tokio_stream_from<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> impl Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

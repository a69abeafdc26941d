//! `weft.fabric.v1.Executions`: create, call, wait for, read, list and cancel executions;
//! agent sessions (`Listen`, served by [`crate::sessions`]); completions outside a stream.
//!
//! Waiting happens on the node the caller contacted: it registers with the watch hub, then
//! reads its own replica, and reads again on every change the hub reports, until the
//! execution is final or the wait's deadline passes.

use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use weft_proto::fabric::v1 as pb;

use super::{Context, Error, convert, routing};
use crate::grid::execution::{Execution, ExecutionId, Status as ExecStatus};
use crate::grid::{self, Command, Output};

/// Metadata on a DEADLINE_EXCEEDED status of `Call`: the execution that goes on, so the
/// caller can wait for it again.
pub const EXECUTION_HEADER: &str = "weft-execution-id";
/// Changes of one execution a `Wait` stream may have queued for a slow reader.
const WAIT_STREAM_BUFFER: usize = 16;

/// Watches one execution on this node's replica.
pub struct Watch {
    waiter: crate::watch::Waiter,
    id: ExecutionId,
}

impl Watch {
    /// Registers interest in `id` (before reading it, so no change is missed).
    pub fn new(ctx: &Context, id: ExecutionId) -> Result<Self, Error> {
        let waiter = ctx.hub.wait(id).map_err(|e| Error::Overloaded(e.to_string()))?;
        Ok(Self { waiter, id })
    }

    /// [`Watch::new`] for an execution this request just created: a refusal now must not
    /// read as "nothing changed".
    pub fn after_create(ctx: &Context, id: ExecutionId) -> Result<Self, Status> {
        Self::new(ctx, id).map_err(|e| created_but(id, &e.to_string()))
    }

    /// The execution as this replica has it now.
    pub fn current(&self, ctx: &Context) -> Option<Execution> {
        ctx.applied.read(|a| a.grid.execution(self.id).cloned())
    }

    /// Waits for the next change; false when `deadline` passed first.
    pub async fn changed(&mut self, deadline: Instant) -> bool {
        tokio::time::timeout_at(deadline.into(), self.waiter.changed()).await.is_ok()
    }

    /// Waits until the execution is final here, or the deadline passes (then the latest
    /// state, if this replica has it).
    pub async fn until_final(
        &mut self,
        ctx: &Context,
        deadline: Instant,
    ) -> Result<Execution, Option<Execution>> {
        loop {
            let now = self.current(ctx);
            if let Some(e) = &now
                && e.status.is_final()
            {
                return Ok(now.unwrap_or_else(|| unreachable!()));
            }
            if !self.changed(deadline).await {
                return Err(self.current(ctx));
            }
        }
    }
}

/// How long a wait may last: what the caller asked, at most `max_wait`.
pub fn wait_deadline(ctx: &Context, timeout_ms: u64) -> Instant {
    let asked = if timeout_ms == 0 { ctx.work.max_wait } else { Duration::from_millis(timeout_ms) };
    Instant::now() + asked.min(ctx.work.max_wait)
}

/// The status of a wait that ran out.
pub fn still_running(id: ExecutionId, latest: Option<Execution>, waited: Duration) -> Status {
    let state =
        latest.map_or_else(|| "not yet visible on this node".to_owned(), |e| e.status.as_str().to_owned());
    let mut status = Status::deadline_exceeded(format!(
        "execution {id} is still {state} after {} ms; it goes on (wait for it again, or cancel it)",
        waited.as_millis()
    ));
    if let Ok(v) = id.to_string().parse() {
        status.metadata_mut().insert(EXECUTION_HEADER, v);
    }
    status
}

/// The status of a request whose execution was created but that cannot answer for it: not
/// `weft-not-applied` (it was applied), and naming the execution.
pub fn created_but(id: ExecutionId, why: &str) -> Status {
    let mut status = Status::unavailable(format!(
        "execution {id} was created, but {why}; it goes on (wait for it, or create it again with the same \
         idempotency key)"
    ));
    if let Ok(v) = id.to_string().parse() {
        status.metadata_mut().insert(EXECUTION_HEADER, v);
    }
    status
}

/// Refuses a request that would wait for a result when this node already has `max_waiters`
/// callers waiting (checked before anything is created).
pub fn check_waiters(ctx: &Context) -> Result<(), Error> {
    let waiting = ctx.hub.waiter_count();
    if waiting >= ctx.work.max_waiters {
        return Err(Error::Overloaded(format!(
            "{waiting} callers already wait for results on this node; the limit is {} (max_waiters)",
            ctx.work.max_waiters
        )));
    }
    Ok(())
}

/// Refuses a create once the cluster stores `max_executions` (checked here, at proposal).
pub fn check_room(ctx: &Context) -> Result<(), Error> {
    let stored = ctx.applied.read(|a| a.grid.work_totals().executions);
    if stored >= ctx.work.max_executions {
        return Err(Error::Grid(grid::Error::TooMany {
            what: "executions".into(),
            count: stored,
            limit: ctx.work.max_executions,
            setting: "max_executions".into(),
        }));
    }
    Ok(())
}

fn created_id(output: Output) -> Result<(ExecutionId, bool), Error> {
    match output {
        Output::Execution { id, created } => Ok((id, created)),
        other => Err(Error::Indeterminate(format!("unexpected answer to a create: {other:?}"))),
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

    async fn create(&self, req: pb::CreateExecutionRequest) -> Result<(ExecutionId, bool), Error> {
        let new = convert::new_execution(req, &self.ctx.work)?;
        let command = Command::CreateExecution(Box::new(new));
        command.validate(&self.ctx.limits)?;
        check_room(&self.ctx)?;
        created_id(routing::propose(&self.ctx, command).await?)
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
            check_waiters(&self.ctx).map_err(Error::into_status)?;
            let (id, created) = self.create(request.into_inner()).await.map_err(Error::into_status)?;
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
                if !watch.changed(deadline).await {
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
            let req = request.into_inner();
            let create =
                req.create.ok_or_else(|| Status::invalid_argument("a call needs a create request"))?;
            let started = Instant::now();
            let deadline = wait_deadline(&self.ctx, req.timeout_ms);
            check_waiters(&self.ctx).map_err(Error::into_status)?;
            let (id, _) = self.create(create).await.map_err(Error::into_status)?;
            let mut watch = Watch::after_create(&self.ctx, id)?;
            match watch.until_final(&self.ctx, deadline).await {
                Ok(e) => Ok(Response::new(convert::pb_execution(e))),
                Err(latest) => Err(still_running(id, latest, started.elapsed())),
            }
        }
        .await;
        self.counted(result)
    }

    type WaitStream = WaitStream;

    async fn wait(&self, request: Request<pb::WaitRequest>) -> Result<Response<Self::WaitStream>, Status> {
        let req = request.into_inner();
        let started = Instant::now();
        let deadline = wait_deadline(&self.ctx, req.timeout_ms);
        let mut watch = Watch::new(&self.ctx, req.id).map_err(Error::into_status)?;
        if watch.current(&self.ctx).is_none() {
            // Perhaps created an instant ago through another node: confirm with the leader.
            self.consistent(0).await?;
            self.read(req.id)?;
        }
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
                if !changed {
                    let _ = tx.send(Err(still_running(req.id, last, started.elapsed()))).await;
                    return;
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
        let req = request.into_inner();
        let result = async {
            self.consistent(req.consistency).await?;
            Ok(Response::new(convert::pb_execution(self.read(req.id)?)))
        }
        .await;
        self.counted(result)
    }

    async fn list(
        &self,
        request: Request<pb::ListExecutionsRequest>,
    ) -> Result<Response<pb::ListExecutionsResponse>, Status> {
        self.ctx.counters.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let req = request.into_inner();
        let result = async {
            let limit = match req.limit as usize {
                0 => self.ctx.limits.max_list_page,
                n if n > self.ctx.limits.max_list_page => {
                    return Err(Error::Grid(grid::Error::InvalidPageSize {
                        requested: n,
                        limit: self.ctx.limits.max_list_page,
                    })
                    .into_status());
                }
                n => n,
            };
            let status = match req.status.as_str() {
                "" => None,
                name => Some(ExecStatus::parse(name).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "unknown status '{}'; expected pending, assigned, completed, failed or cancelled",
                        grid::namespace::clip(name)
                    ))
                })?),
            };
            let agent = (!req.agent.is_empty()).then_some(req.agent.as_str());
            let after = (req.page_token != 0).then_some(req.page_token);
            self.consistent(req.consistency).await?;
            let page = self.ctx.applied.read(|a| a.grid.list_executions(agent, status, after, limit));
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
        let req = request.into_inner();
        let result = async {
            let command = Command::Cancel { execution: req.id, reason: req.reason };
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
        let rx = crate::sessions::host::open(self.ctx.clone(), request.into_inner(), self.shutdown.clone())
            .await?;
        Ok(Response::new(Box::pin(tokio_stream_from(rx))))
    }

    async fn complete(
        &self,
        request: Request<pb::Completion>,
    ) -> Result<Response<pb::CompletionAck>, Status> {
        self.ctx.counters.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let req = request.into_inner();
        let (id, token) = (req.execution_id, req.token);
        let creates = req.effects.iter().any(|e| matches!(e.kind, Some(pb::effect::Kind::Call(_))));
        let result = async {
            let completion =
                convert::completion(req, &self.ctx.work).map_err(|e| Error::Grid(e).into_status())?;
            let command = Command::Complete(Box::new(completion));
            command.validate(&self.ctx.limits).map_err(|e| Error::Grid(e).into_status())?;
            if creates {
                check_room(&self.ctx).map_err(Error::into_status)?;
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
}

/// A stream of what arrives on `rx`.
pub fn tokio_stream_from<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> impl Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

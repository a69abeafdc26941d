//! Waiting on this node's replica: a caller registers with the watch hub before it reads, then
//! reads again on every change the hub reports, until the execution is final or the wait's
//! deadline passes. Used by the execution and instance services.

use std::time::{Duration, Instant};

use tonic::Status;
use weft_proto::wire;

use crate::grid::execution::{Execution, ExecutionId};
use crate::routing::{Context, Error};

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
    let status = Status::deadline_exceeded(format!(
        "execution {id} is still {state} after {} ms; it goes on (wait for it again, or cancel it)",
        waited.as_millis()
    ));
    wire::with_execution(status, id)
}

/// The status of a request whose execution was created but that cannot answer for it: not
/// `weft-not-applied` (it was applied), and naming the execution.
pub fn created_but(id: ExecutionId, why: &str) -> Status {
    let status = Status::unavailable(format!(
        "execution {id} was created, but {why}; it goes on (wait for it, or create it again with the same \
         idempotency key)"
    ));
    wire::with_execution(status, id)
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

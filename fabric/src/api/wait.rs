//! Waiting on this node's replica: a caller registers with the watch hub before it reads, then
//! reads again on every change the hub reports, until the execution is final or the wait's
//! deadline passes, or the token of the caller who waits is revoked or expires (a wait made
//! [`Watch::for_caller`]). Used by the execution and instance services.

use std::time::{Duration, Instant};

use tonic::Status;
use weft_proto::wire;

use crate::auth::{Caller, Lapse, Unauthenticated};
use crate::grid::execution::{Execution, ExecutionId};
use crate::routing::{Context, Error};

/// Watches one execution on this node's replica.
pub struct Watch {
    waiter: crate::watch::Waiter,
    id: ExecutionId,
    /// Ends the wait when the waiting caller's token stops being valid (never by default).
    lapse: Lapse,
}

/// Why a wait ended before its execution was final.
#[derive(Debug)]
pub enum Unfinished {
    /// The deadline passed first; the execution as this replica has it then.
    Deadline(Option<Box<Execution>>),
    /// The token of the caller who waits was revoked or expired.
    Lapsed(Unauthenticated),
}

impl Watch {
    /// Registers interest in `id` (before reading it, so no change is missed).
    pub fn new(ctx: &Context, id: ExecutionId) -> Result<Self, Error> {
        let waiter = ctx.hub.wait(id).map_err(|e| Error::Overloaded(e.to_string()))?;
        Ok(Self { waiter, id, lapse: Lapse::never() })
    }

    /// The same watch, ending when `caller`'s token is revoked or expires: for waits a caller
    /// may hold long (`Wait`, `Call`, `Instances/Start` and `Stop`).
    pub fn for_caller(mut self, ctx: &Context, caller: &Caller) -> Self {
        self.lapse = ctx.lapse(caller);
        self
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

    /// Waits for the next change: `Ok(false)` when `deadline` passed first, the reason when
    /// the caller's token lapsed first.
    pub async fn changed(&mut self, deadline: Instant) -> Result<bool, Unauthenticated> {
        let change = tokio::time::timeout_at(deadline.into(), self.waiter.changed());
        self.lapse.guard(change).await.map(|changed| changed.is_ok())
    }

    /// Waits until the execution is final here; or the deadline passes (then the latest
    /// state, if this replica has it), or the caller's token lapses.
    pub async fn until_final(&mut self, ctx: &Context, deadline: Instant) -> Result<Execution, Unfinished> {
        loop {
            let now = self.current(ctx);
            if let Some(e) = &now
                && e.status.is_final()
            {
                return Ok(now.unwrap_or_else(|| unreachable!()));
            }
            match self.changed(deadline).await {
                Ok(true) => {}
                Ok(false) => return Err(Unfinished::Deadline(self.current(ctx).map(Box::new))),
                Err(why) => return Err(Unfinished::Lapsed(why)),
            }
        }
    }
}

/// The status of a call that created execution `id` and then waited for it until it was not
/// finished: the wait ran out ([`still_running`]), or the caller's token lapsed. The latter is
/// not `UNAUTHENTICATED`, which would say nothing was applied: the execution was created and
/// goes on ([`created_but`]), and the message names the token and why.
pub fn unfinished(id: ExecutionId, why: Unfinished, waited: Duration) -> Status {
    match why {
        Unfinished::Deadline(latest) => still_running(id, latest.map(|e| *e), waited),
        Unfinished::Lapsed(why) => created_but(id, &format!("{why} while the call waited")),
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

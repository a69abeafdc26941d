//! The gRPC services agents and tools call: `weft.fabric.v1.{State, Cluster, Executions,
//! Instances, Streams, Scaling, Leases, Schedules, Tokens}`.
//!
//! Each service checks its input, turns a request into grid commands or reads, and sends
//! them down the one path to the leader, [`crate::routing`]; generated types become domain
//! types in [`crate::convert`], and domain errors become statuses in
//! [`crate::routing::Error::into_status`]. Agent sessions (`Executions/Listen`) are served by
//! [`crate::sessions`].
//!
//! # Layout
//! - [`state_service`]: key/value state: writes (fenced by a lease when they carry a fence)
//!   are proposed, linearizable reads wait for a read barrier, stale reads read this node's
//!   replica.
//! - [`lease_service`]: leases with fencing tokens: acquire, renew, release, get.
//! - [`schedule_service`]: cron schedules that create executions: create, get, list, pause,
//!   resume, trigger, delete.
//! - [`execution_service`]: create, call, wait for, read, list and cancel executions;
//!   completions outside a session.
//! - [`instance_service`]: start and stop agent instances, read and list them.
//! - [`stream_service`]: streams and cursors: create, append, read, close, delete, acks;
//!   listeners (`Listen`) are served by [`crate::sessions::listener`].
//! - [`scaling_service`]: the demand for agent processes, pushed to scalers (`WatchDemand`).
//! - [`cluster_service`]: the cluster's status and the gossip view.
//! - [`token_service`]: bearer tokens: create (the secret shown once), list, revoke (and wait
//!   until every member applied it).
//! - [`wait`]: waiting on this node's replica for an execution to change or finish.
//!
//! Control operations (cancel, instance start and stop, stream close and delete, cursor
//! delete, token create and revoke, schedule changes) are proposed [`audited`]: the grid records who asked and the outcome in the audit
//! stream (`grid::audit`).

pub(crate) mod authz;
pub mod cluster_service;
pub mod execution_service;
pub mod instance_service;
pub mod lease_service;
pub mod scaling_service;
pub mod schedule_service;
pub mod state_service;
pub mod stream_service;
pub mod token_service;
pub mod wait;

pub use cluster_service::ClusterService;
pub use execution_service::ExecutionService;
pub use instance_service::InstanceService;
pub use lease_service::LeaseService;
pub use scaling_service::ScalingService;
pub use schedule_service::ScheduleService;
pub use state_service::StateService;
pub use stream_service::StreamService;
pub use token_service::TokenService;

use crate::grid::Command;
use crate::grid::audit::Actor;

/// Who sent `request`, for the audit trail: the principal the auth gate found (`anonymous`
/// with auth off) and the node that took it.
pub(crate) fn actor<T>(ctx: &crate::routing::Context, request: &tonic::Request<T>) -> Actor {
    let (principal, role) = crate::auth::Caller::of(request)
        .map(|c| c.audit_identity())
        .unwrap_or_else(|_| ("anonymous".into(), String::new()));
    Actor { principal, role, node: ctx.node_id }
}

/// A list request's page size: `default` for 0, refused (`INVALID_ARGUMENT`, naming the
/// bound) over `max`.
pub(crate) fn page_size(requested: u32, default: usize, max: usize) -> Result<usize, crate::routing::Error> {
    match requested as usize {
        0 => Ok(default),
        n if n > max => {
            Err(crate::routing::Error::Grid(crate::grid::Error::InvalidPageSize { requested: n, limit: max }))
        }
        n => Ok(n),
    }
}

/// `command`, a control operation, wrapped so that applying it records it in the audit
/// stream with `actor` and the outcome.
pub(crate) fn audited(actor: Actor, command: Command) -> Command {
    Command::Audited { actor, command: Box::new(command) }
}

//! Token scopes in the services: the checks a request needs beyond the one [`Permission`] its
//! method names, shared by the services and the sessions they host.
//!
//! Every check runs before anything is proposed, so a refusal changes nothing:
//! - a request about an execution by id (get, wait, cancel, complete) reads the execution's
//!   agent from this node's replica first (confirmed with the leader when this replica does
//!   not have it) and asks for the agent's permission; an id that does not exist is
//!   `NOT_FOUND` whatever the caller may do (ids are dense numbers, so that the id exists is no
//!   secret), and a refusal names the agent (which any token may also read from the sessions
//!   list);
//! - what a completion or an ack does besides its result (effects) needs the permission each
//!   effect would need as a request of its own: a state write, a call, an append, an ack;
//! - a list not filtered by agent needs [`Permission::ReadAll`]; with an agent named it needs
//!   [`Permission::ReadAgent`] for that agent ([`check_list`]). Streams have no such filter:
//!   their list shows the streams the caller may read ([`readable_streams`]).

use tonic::Status;

use crate::auth::{Caller, Denied, Permission, authorize};
use crate::grid::cursor::CursorConfig;
use crate::grid::execution::{Effect, ExecutionId};
use crate::grid::stream::Stream;
use crate::grid::{self, Grid};
use crate::routing::{self, Context, Error};

/// Most streams a filtered stream list looks at for one page; a page that stops there is
/// short (or empty) and its token says where to go on.
pub(crate) const MAX_STREAM_SCAN: usize = 10_000;

/// Whether the caller of `request` has `permission`, as a result for the request to return
/// once its input is checked (so a refusal never carries an unchecked name); an error at once
/// when the request has no caller.
pub(crate) fn permits<T>(
    request: &tonic::Request<T>,
    permission: Permission<'_>,
) -> Result<Result<(), Denied>, Status> {
    Ok(authorize(&Caller::of(request)?, permission))
}

/// The agent of execution `id`: from this node's replica, or after a read barrier when the
/// replica does not have it yet (created an instant ago through another node). `NOT_FOUND`
/// when there is no such execution.
pub(crate) async fn execution_agent(ctx: &Context, id: ExecutionId) -> Result<String, Error> {
    let read = || ctx.applied.read(|a| a.grid.execution(id).map(|e| e.agent.clone()));
    if let Some(agent) = read() {
        return Ok(agent);
    }
    routing::read_barrier(ctx).await?;
    read().ok_or(Error::Grid(grid::Error::UnknownExecution { id }))
}

/// Checks that `caller` may make every effect in `effects`.
pub(crate) fn check_effects(caller: &Caller, effects: &[Effect]) -> Result<(), Denied> {
    for effect in effects {
        let permission = match effect {
            Effect::Put { namespace, .. } | Effect::Delete { namespace, .. } => {
                Permission::WriteState { namespace }
            }
            Effect::Call(new) => Permission::Call { agent: &new.agent },
            Effect::Append { stream, .. } => Permission::WriteStream { stream },
            Effect::Ack { stream, .. } => Permission::ReadStream { stream },
            Effect::Fence { lease, .. } => Permission::Lease { name: lease },
        };
        authorize(caller, permission)?;
    }
    Ok(())
}

/// Checks that `caller` may complete execution `id` (serve its agent) with `effects`. An
/// unknown execution passes: the grid refuses its completion as stale, and nothing changes.
pub(crate) async fn check_completion(
    ctx: &Context,
    caller: &Caller,
    id: ExecutionId,
    effects: &[Effect],
) -> Result<(), Error> {
    match execution_agent(ctx, id).await {
        Ok(agent) => authorize(caller, Permission::Serve { agent: &agent })?,
        Err(Error::Grid(grid::Error::UnknownExecution { .. })) => {}
        Err(e) => return Err(e),
    }
    Ok(check_effects(caller, effects)?)
}

/// A cursor may move items to a dead-letter stream: that is a write to it.
pub(crate) fn check_cursor(caller: &Caller, config: &CursorConfig) -> Result<(), Denied> {
    if let Some(stream) = &config.dead_letter {
        authorize(caller, Permission::WriteStream { stream })?;
    }
    Ok(())
}

/// Checks a list of executions, instances or sessions: every agent's needs
/// [`Permission::ReadAll`] (the refusal says to name an agent), one agent's needs
/// [`Permission::ReadAgent`] for it. `agent` is empty for every agent.
pub(crate) fn check_list(caller: &Caller, agent: &str, what: &str) -> Result<(), Status> {
    if agent.is_empty() {
        authorize(caller, Permission::ReadAll)
            .map_err(|d| Denied {
                hint: format!("{}; or list the {what} of one agent it may read", d.hint),
                ..d
            })
            .map_err(Into::into)
    } else {
        authorize(caller, Permission::ReadAgent { agent }).map_err(Into::into)
    }
}

/// A page of the streams after `after` that `caller` may read, at most `limit`, and where the
/// next page starts (empty: none). With [`Permission::ReadAll`] every stream is listed;
/// otherwise at most [`MAX_STREAM_SCAN`] streams are looked at, and a page cut short by that
/// bound names the last one looked at as where to go on.
pub(crate) fn readable_streams<'g>(
    grid: &'g Grid,
    caller: &Caller,
    after: Option<&str>,
    limit: usize,
) -> (Vec<&'g Stream>, String) {
    let all = authorize(caller, Permission::ReadAll).is_ok();
    let scan = if all { limit.saturating_add(1) } else { MAX_STREAM_SCAN.max(limit.saturating_add(1)) };
    let looked_at = grid.streams_after(after, scan);
    let mut page = Vec::new();
    let mut more = false;
    for s in &looked_at {
        if !all && authorize(caller, Permission::ReadStream { stream: &s.name }).is_err() {
            continue;
        }
        if page.len() == limit {
            more = true;
            break;
        }
        page.push(*s);
    }
    let next = if more {
        page.last().map(|s| s.name.clone())
    } else if looked_at.len() == scan {
        looked_at.last().map(|s| s.name.clone())
    } else {
        None
    };
    (page, next.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    /// The "Permissions" section of docs/protocol.md: the table of what each method needs.
    fn permissions_section() -> &'static str {
        let doc = include_str!("../../../docs/protocol.md");
        let start = doc.find("\n## Permissions\n").expect("docs/protocol.md has a Permissions section");
        let rest = &doc[start + 1..];
        let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
        &rest[..end]
    }

    /// `Service/Method` of every method of the public services (the node-only ones, which no
    /// token reaches, left out).
    fn public_methods() -> Vec<String> {
        let set =
            prost_types::FileDescriptorSet::decode(weft_proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
        let mut methods = Vec::new();
        for file in &set.file {
            let package = file.package();
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{package}.{}/{}", service.name(), method.name());
                    if !crate::tls::is_node_only(&path) {
                        methods.push(format!("{}/{}", service.name(), method.name()));
                    }
                }
            }
        }
        methods
    }

    #[test]
    fn every_public_method_has_its_permission_documented() {
        let section = permissions_section();
        let methods = public_methods();
        assert!(methods.len() >= 40, "the descriptor set lists the public methods: {methods:?}");
        let missing: Vec<&String> = methods.iter().filter(|m| !section.contains(&format!("`{m}`"))).collect();
        assert!(
            missing.is_empty(),
            "methods without a row in docs/protocol.md#permissions (add the row, and the check in the \
             service): {missing:?}"
        );
        // And no row names a method that is gone.
        let table_rows = section.lines().filter(|l| l.starts_with("| `"));
        for row in table_rows {
            let first_cell = row.split(" | ").next().unwrap_or_default();
            for named in first_cell.split('`').skip(1).step_by(2) {
                assert!(
                    methods.iter().any(|m| m == named)
                        || crate::tls::is_node_only(&format!("/weft.fabric.v1.{named}")),
                    "docs/protocol.md#permissions names {named}, which is no public method"
                );
            }
        }
    }
}

//! Tokens with scopes: who may do what on a node with auth on.
//!
//! A caller presents a bearer token (`authorization: Bearer weft_<id>_<secret>`, on gRPC and
//! HTTP alike). The node looks the token up in the grid (tokens are kept hashed there, and
//! created and revoked by log entries, so every node agrees on them), and the caller becomes a
//! [`Principal`]: a role and the scopes it was given. Each handler then asks [`authorize`]
//! for the one [`Permission`] its operation needs. A refusal is `UNAUTHENTICATED` (HTTP 401)
//! when the credential is missing, malformed, unknown, expired or revoked, and
//! `PERMISSION_DENIED` (HTTP 403) when the principal lacks the permission; either way the
//! message names what is missing and nothing changes. A long call (an agent session, a wait,
//! a listener, a watch, a tail) ends with `UNAUTHENTICATED` when its token is revoked or
//! expires while it runs ([`Lapse`]).
//!
//! With auth off every caller is [`Caller::Open`] and everything is allowed (`weft dev` on
//! loopback says so). Node-only methods (Raft, Forward, PrepareBootstrap) are not behind
//! tokens: mutual TLS with the cluster CA guards them (`crate::tls::require_node`).
//!
//! # Roles
//! - `admin`: everything, including tokens and membership.
//! - `operator`: reads everything (status, executions, instances, state, streams, the audit
//!   trail, metrics, demand), cancels executions, starts and stops instances, closes and
//!   deletes streams. Writes no state and serves no agent.
//! - `agent`: serves the agents in its `serve` list (listens, completes, reads the
//!   executions and instances of those agents, reads and writes those agents' instance
//!   state); calls the agents in its `call` list; state namespaces and streams by prefix.
//! - `client`: calls the agents in its `call` list (create, call, wait, get, cancel their
//!   executions); state namespaces and streams by prefix.
//!
//! A scope entry `*` matches every name. Agent lists match whole agent names; namespace and
//! stream lists match by prefix (`shared/orders` matches `shared/orders` and
//! `shared/orders-eu`). Streams whose names start with `weft.` (the audit trail) are readable
//! by admins and operators only, whatever the prefixes say.
//!
//! # Layout
//! - here: roles, scopes, [`Principal`], [`Caller`], [`Permission`] and [`authorize`].
//! - `gate`: the middleware in front of every route, the [`Verifier`] it asks, and why a
//!   credential was refused ([`Unauthenticated`]).
//! - `credential`: [`Credential`], the token text `weft_<id>_<secret>`: made, read, hashed,
//!   compared in constant time.
//! - `verify`: [`TokenVerifier`], the verifier over this node's replica of the grid.
//! - `lapse`: [`Lapse`], when the token behind a long call (a session, a wait, a listener, a
//!   watch, a tail) is revoked or expires, so the call ends then rather than live on.
//! - `bootstrap`: the first admin token of a cluster, from `auth_bootstrap_token_file`.

pub(crate) mod bootstrap;
mod credential;
mod gate;
mod lapse;
mod verify;

pub use credential::Credential;
pub use gate::{Gate, Unauthenticated, Verifier, gate};
pub(crate) use lapse::{END_SEND_WAIT, Lapse, end_stream};
pub use verify::{Clock, TokenVerifier, wall_clock_ms};

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// What a token may do, before its scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Admin,
    Operator,
    Agent,
    Client,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Agent, Role::Client];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Agent => "agent",
            Role::Client => "client",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}: expected admin, operator, agent or client"))
    }
}

/// The names a token reaches, beyond what its role gives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scopes {
    /// Agents it may serve (whole names, or `*`).
    pub serve: Vec<String>,
    /// Agents it may call (whole names, or `*`).
    pub call: Vec<String>,
    /// State namespaces it may read and write (prefixes of `shared/<name>` or
    /// `instance/<agent>/<id>`, or `*`).
    pub namespaces: Vec<String>,
    /// Streams it may create, append to, read and follow (prefixes, or `*`).
    pub streams: Vec<String>,
}

/// Who a verified token says the caller is. Never holds the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's id (public: the part of the token before the secret).
    pub token_id: String,
    /// The name it was created with (for people: `ci-deployer`, `orders-agent`).
    pub name: String,
    pub role: Role,
    pub scopes: Scopes,
}

impl Principal {
    /// How the audit trail and the logs name this principal: `token <id> (<name>)`.
    pub fn audit_name(&self) -> String {
        format!("token {} ({})", self.token_id, self.name)
    }
}

/// Who sent a request, as the auth gate found it (a request extension).
#[derive(Debug, Clone)]
pub enum Caller {
    /// Auth is off on this node: everything is allowed.
    Open,
    /// A caller with a valid token.
    Token(Arc<Principal>),
}

impl Caller {
    /// The caller the gate left on `request`. A request the gate did not see (which would be
    /// a wiring mistake) is refused rather than let through.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
        request.extensions().get::<Caller>().cloned().ok_or_else(no_caller)
    }

    /// What the audit trail records as the principal and the role.
    pub fn audit_identity(&self) -> (String, String) {
        match self {
            Caller::Open => ("anonymous".into(), String::new()),
            Caller::Token(p) => (p.audit_name(), p.role.as_str().into()),
        }
    }
}

fn no_caller() -> tonic::Status {
    tonic::Status::unauthenticated("no credentials were checked for this request (the auth gate did not run)")
}

/// Checks that the caller of `request` may do what `permission` names.
pub fn check<T>(request: &tonic::Request<T>, permission: Permission<'_>) -> Result<(), tonic::Status> {
    authorize(&Caller::of(request)?, permission).map_err(Into::into)
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = axum::response::Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        use axum::response::IntoResponse as _;
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| crate::rest::error::ApiError(no_caller()).into_response())
    }
}

/// What one operation needs. Handlers name the most specific permission they can: the agent
/// of the execution, the namespace of the key, the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission<'a> {
    /// Cluster status, members, node status, sessions, the dashboard's overview.
    ReadCluster,
    /// The `/metrics` endpoint.
    ReadMetrics,
    /// Create, list and revoke tokens.
    ManageTokens,
    /// Change membership.
    ManageMembership,
    /// List every execution, instance, stream (not filtered by agent).
    ReadAll,
    /// Listen for executions of `agent`, complete them, renew its sessions.
    Serve { agent: &'a str },
    /// Create or call an execution of `agent`, wait for it, read it.
    Call { agent: &'a str },
    /// Read an execution or instance of `agent` (callers, servers, operators).
    ReadAgent { agent: &'a str },
    /// Cancel an execution of `agent`.
    Cancel { agent: &'a str },
    /// Start or stop an instance of `agent`.
    ManageInstances { agent: &'a str },
    /// Read keys of a state namespace.
    ReadState { namespace: &'a str },
    /// Write keys of a state namespace.
    WriteState { namespace: &'a str },
    /// Read a stream's items and info, follow it, create and use cursors on it.
    ReadStream { stream: &'a str },
    /// Create a stream and append to it.
    WriteStream { stream: &'a str },
    /// Close or delete a stream, delete its cursors.
    ManageStream { stream: &'a str },
    /// Watch demand for agent processes (scalers).
    WatchDemand,
    /// Acquire, renew, release and read a lease.
    Lease { name: &'a str },
}

impl fmt::Display for Permission<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Permission::ReadCluster => f.write_str("reading the cluster's status"),
            Permission::ReadMetrics => f.write_str("reading metrics"),
            Permission::ManageTokens => f.write_str("managing tokens"),
            Permission::ManageMembership => f.write_str("changing membership"),
            Permission::ReadAll => f.write_str("listing everything"),
            Permission::Serve { agent } => write!(f, "serving agent {agent:?}"),
            Permission::Call { agent } => write!(f, "calling agent {agent:?}"),
            Permission::ReadAgent { agent } => {
                write!(f, "reading executions and instances of agent {agent:?}")
            }
            Permission::Cancel { agent } => write!(f, "cancelling executions of agent {agent:?}"),
            Permission::ManageInstances { agent } => {
                write!(f, "starting and stopping instances of agent {agent:?}")
            }
            Permission::ReadState { namespace } => write!(f, "reading state namespace {namespace:?}"),
            Permission::WriteState { namespace } => write!(f, "writing state namespace {namespace:?}"),
            Permission::ReadStream { stream } => write!(f, "reading stream {stream:?}"),
            Permission::WriteStream { stream } => write!(f, "writing stream {stream:?}"),
            Permission::ManageStream { stream } => write!(f, "closing or deleting stream {stream:?}"),
            Permission::WatchDemand => f.write_str("watching demand"),
            Permission::Lease { name } => write!(f, "using lease {name:?}"),
        }
    }
}

/// Why [`authorize`] refused: the principal lacks the permission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("permission denied: {principal} (role {role}) may not do this: {permission}; {hint}")]
pub struct Denied {
    pub principal: String,
    pub role: Role,
    pub permission: String,
    /// What would allow it (`needs role admin`, `needs "orders" in its call list`).
    pub hint: String,
}

impl From<Denied> for tonic::Status {
    fn from(d: Denied) -> Self {
        tracing::debug!(principal = %d.principal, permission = %d.permission, "permission denied");
        tonic::Status::permission_denied(d.to_string())
    }
}

/// The agent every scaler serves: an `agent` token that may serve it may also watch demand,
/// so a scaler needs no admin or operator token.
pub const SCALER_AGENT: &str = "weft.scaler";

/// Prefix of the streams only admins and operators may read.
pub const SYSTEM_STREAM_PREFIX: &str = "weft.";

fn agent_listed(list: &[String], agent: &str) -> bool {
    list.iter().any(|a| a == "*" || a == agent)
}

fn prefix_listed(list: &[String], name: &str) -> bool {
    list.iter().any(|p| p == "*" || name.starts_with(p.as_str()))
}

/// The agent whose instance state `namespace` is (`instance/<agent>/<id>`), if it is one.
fn instance_agent(namespace: &str) -> Option<&str> {
    let rest = namespace.strip_prefix("instance/")?;
    rest.split('/').next()
}

/// Whether `caller` may do what `permission` names; the refusal says what would allow it.
pub fn authorize(caller: &Caller, permission: Permission<'_>) -> Result<(), Denied> {
    let principal = match caller {
        Caller::Open => return Ok(()),
        Caller::Token(p) => p,
    };
    let s = &principal.scopes;
    let role = principal.role;
    use Permission as P;
    use Role::*;
    let (allowed, hint): (bool, String) = match permission {
        _ if role == Admin => (true, String::new()),
        P::ManageTokens | P::ManageMembership => (false, "needs role admin".into()),
        P::ReadCluster => (true, String::new()),
        P::ReadMetrics | P::ReadAll => (role == Operator, "needs role admin or operator".into()),
        P::WatchDemand => (
            role == Operator || (role == Agent && agent_listed(&s.serve, SCALER_AGENT)),
            format!("needs role admin or operator, or role agent with {SCALER_AGENT:?} in its serve list"),
        ),
        P::Serve { agent } => (
            role == Agent && agent_listed(&s.serve, agent),
            format!("needs role agent with {agent:?} in its serve list"),
        ),
        P::Call { agent } => (
            matches!(role, Agent | Client) && agent_listed(&s.call, agent),
            format!("needs {agent:?} in its call list"),
        ),
        P::ReadAgent { agent } => (
            role == Operator
                || agent_listed(&s.call, agent)
                || (role == Agent && agent_listed(&s.serve, agent)),
            format!("needs role operator, or {agent:?} in its call or serve list"),
        ),
        P::Cancel { agent } => (
            role == Operator || (matches!(role, Agent | Client) && agent_listed(&s.call, agent)),
            format!("needs role operator, or {agent:?} in its call list"),
        ),
        P::ManageInstances { agent } => (
            role == Operator,
            format!("needs role admin or operator to start or stop instances of {agent:?}"),
        ),
        P::ReadState { namespace } => (
            role == Operator
                || prefix_listed(&s.namespaces, namespace)
                || (role == Agent && instance_agent(namespace).is_some_and(|a| agent_listed(&s.serve, a))),
            format!("needs a prefix of {namespace:?} in its namespaces list"),
        ),
        P::WriteState { namespace } => (
            prefix_listed(&s.namespaces, namespace)
                || (role == Agent && instance_agent(namespace).is_some_and(|a| agent_listed(&s.serve, a))),
            format!("needs a prefix of {namespace:?} in its namespaces list"),
        ),
        P::ReadStream { stream } if stream.starts_with(SYSTEM_STREAM_PREFIX) => {
            (role == Operator, format!("{stream:?} is a system stream: needs role admin or operator"))
        }
        P::ReadStream { stream } => (
            role == Operator || prefix_listed(&s.streams, stream),
            format!("needs a prefix of {stream:?} in its streams list"),
        ),
        P::WriteStream { stream } => {
            (prefix_listed(&s.streams, stream), format!("needs a prefix of {stream:?} in its streams list"))
        }
        P::ManageStream { stream } => {
            (role == Operator, format!("needs role admin or operator to close or delete {stream:?}"))
        }
        P::Lease { name } => (
            role == Operator || matches!(role, Agent) && prefix_listed(&s.namespaces, name),
            format!("needs role operator, or a prefix of lease {name:?} in its namespaces list"),
        ),
    };
    if allowed {
        Ok(())
    } else {
        Err(Denied { principal: principal.audit_name(), role, permission: permission.to_string(), hint })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role, scopes: Scopes) -> Caller {
        Caller::Token(Arc::new(Principal { token_id: "t1".into(), name: "test".into(), role, scopes }))
    }

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn open_and_admin_may_do_everything() {
        let admin = caller(Role::Admin, Scopes::default());
        for p in [
            Permission::ManageTokens,
            Permission::ReadStream { stream: "weft.audit" },
            Permission::WriteState { namespace: "shared/x" },
        ] {
            assert!(authorize(&Caller::Open, p).is_ok());
            assert!(authorize(&admin, p).is_ok());
        }
    }

    #[test]
    fn operators_read_and_control_but_do_not_write_or_manage_tokens() {
        let op = caller(Role::Operator, Scopes::default());
        assert!(authorize(&op, Permission::ReadStream { stream: "weft.audit" }).is_ok());
        assert!(authorize(&op, Permission::Cancel { agent: "a" }).is_ok());
        assert!(authorize(&op, Permission::ManageInstances { agent: "a" }).is_ok());
        let denied = authorize(&op, Permission::ManageTokens).unwrap_err();
        assert!(denied.to_string().contains("needs role admin"), "{denied}");
        assert!(authorize(&op, Permission::WriteState { namespace: "shared/x" }).is_err());
        assert!(authorize(&op, Permission::Serve { agent: "a" }).is_err());
    }

    #[test]
    fn agents_serve_their_agents_and_own_their_instance_state() {
        let agent = caller(Role::Agent, Scopes { serve: list(&["orders"]), ..Scopes::default() });
        assert!(authorize(&agent, Permission::Serve { agent: "orders" }).is_ok());
        assert!(authorize(&agent, Permission::Serve { agent: "billing" }).is_err());
        assert!(authorize(&agent, Permission::WriteState { namespace: "instance/orders/i1" }).is_ok());
        assert!(authorize(&agent, Permission::WriteState { namespace: "instance/billing/i1" }).is_err());
        assert!(authorize(&agent, Permission::Call { agent: "orders" }).is_err());
        assert!(authorize(&agent, Permission::WatchDemand).is_err());
    }

    #[test]
    fn a_scaler_needs_only_an_agent_token_that_serves_the_scaler_agent() {
        // What weft-scaler does: serve weft.scaler, watch demand, hold its group's lease and
        // write its intents in shared/weft.scaler.<group>.
        let scaler = caller(
            Role::Agent,
            Scopes {
                serve: list(&[SCALER_AGENT]),
                namespaces: list(&["shared/weft.scaler.", "weft.scaler."]),
                ..Scopes::default()
            },
        );
        for ok in [
            Permission::Serve { agent: SCALER_AGENT },
            Permission::WatchDemand,
            Permission::Lease { name: "weft.scaler.prod" },
            Permission::WriteState { namespace: "shared/weft.scaler.prod" },
            Permission::ReadState { namespace: "shared/weft.scaler.prod" },
        ] {
            assert!(authorize(&scaler, ok).is_ok(), "{ok}");
        }
        for refused in [
            Permission::ReadAll,
            Permission::ReadMetrics,
            Permission::ManageInstances { agent: "orders" },
            Permission::Serve { agent: "orders" },
            Permission::WriteState { namespace: "shared/orders" },
        ] {
            assert!(authorize(&scaler, refused).is_err(), "{refused}");
        }
        // The serve list is what grants it, not the role alone; clients never get it.
        let client = caller(Role::Client, Scopes { serve: list(&[SCALER_AGENT]), ..Scopes::default() });
        let denied = authorize(&client, Permission::WatchDemand).unwrap_err();
        assert!(denied.hint.contains("weft.scaler"), "{denied}");
    }

    #[test]
    fn clients_call_listed_agents_and_reach_names_by_prefix() {
        let client = caller(
            Role::Client,
            Scopes {
                call: list(&["echo"]),
                namespaces: list(&["shared/app"]),
                streams: list(&["app."]),
                ..Scopes::default()
            },
        );
        assert!(authorize(&client, Permission::Call { agent: "echo" }).is_ok());
        assert!(authorize(&client, Permission::Call { agent: "other" }).is_err());
        assert!(authorize(&client, Permission::Serve { agent: "echo" }).is_err());
        assert!(authorize(&client, Permission::WriteState { namespace: "shared/app-eu" }).is_ok());
        assert!(authorize(&client, Permission::ReadState { namespace: "shared/other" }).is_err());
        assert!(authorize(&client, Permission::WriteStream { stream: "app.events" }).is_ok());
        assert!(authorize(&client, Permission::ReadStream { stream: "other" }).is_err());
        assert!(authorize(&client, Permission::ManageStream { stream: "app.events" }).is_err());
        assert!(authorize(&client, Permission::ReadAll).is_err());
        assert!(authorize(&client, Permission::ReadCluster).is_ok());
    }

    #[test]
    fn system_streams_need_admin_or_operator_even_with_a_wildcard() {
        let client = caller(Role::Client, Scopes { streams: list(&["*"]), ..Scopes::default() });
        assert!(authorize(&client, Permission::ReadStream { stream: "app" }).is_ok());
        let denied = authorize(&client, Permission::ReadStream { stream: "weft.audit" }).unwrap_err();
        assert!(denied.to_string().contains("system stream"), "{denied}");
    }

    #[test]
    fn a_refusal_names_the_principal_the_permission_and_the_fix() {
        let client = caller(Role::Client, Scopes::default());
        let status: tonic::Status =
            authorize(&client, Permission::Call { agent: "echo" }).unwrap_err().into();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        let m = status.message();
        assert!(
            m.contains("token t1 (test)") && m.contains("calling agent \"echo\"") && m.contains("call list"),
            "{m}"
        );
    }
}

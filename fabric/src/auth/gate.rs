//! The auth gate: the one middleware in front of every gRPC method and HTTP route. It reads
//! the caller's bearer token, has the [`Verifier`] check it, and leaves the [`Caller`] in the
//! request's extensions for the handler's [`authorize`](super::authorize) check; a request
//! with a missing or bad credential is answered here, before its body is read.
//!
//! Open without a token: node-only methods (mutual TLS guards them), health and readiness,
//! the dashboard's static page and the OpenAPI document. With auth off every request is
//! [`Caller::Open`].

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};

use super::{Caller, Principal};

/// Why a credential was not accepted (`UNAUTHENTICATED`, HTTP 401). Each message names what
/// is missing or wrong and never repeats the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    #[error("no credentials: this node requires a bearer token (header `authorization: Bearer <token>`)")]
    Missing,
    #[error("malformed credentials: {0}")]
    Malformed(String),
    #[error("unknown token {id:?}: no such token in this cluster")]
    Unknown { id: String },
    #[error("token {id:?} is not valid: the secret does not match")]
    BadSecret { id: String },
    #[error("token {id:?} expired at {expired_at_ms} ms since the epoch")]
    Expired { id: String, expired_at_ms: u64 },
    #[error("token {id:?} was revoked")]
    Revoked { id: String },
}

impl Unauthenticated {
    /// A short label for metrics (`missing`, `malformed`, `unknown`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            Unauthenticated::Missing => "missing",
            Unauthenticated::Malformed(_) => "malformed",
            Unauthenticated::Unknown { .. } => "unknown",
            Unauthenticated::BadSecret { .. } => "bad_secret",
            Unauthenticated::Expired { .. } => "expired",
            Unauthenticated::Revoked { .. } => "revoked",
        }
    }

    /// The status that ends a long call (a stream, a wait) whose token was revoked or expired
    /// after the call opened: `UNAUTHENTICATED`, naming the token and why, as the gate's
    /// refusals do.
    pub fn ending(&self) -> tonic::Status {
        tonic::Status::unauthenticated(format!(
            "{self}; the call it opened ends here (open it again with a valid token)"
        ))
    }
}

/// Checks a presented token (the text after `Bearer `) and says who it belongs to.
pub trait Verifier: Send + Sync + 'static {
    fn verify(&self, token: &str) -> Result<Principal, Unauthenticated>;

    /// Told of every request the gate refused (for metrics); by default nothing.
    fn refused(&self, _why: &Unauthenticated) {}
}

/// What the gate checks tokens with: `None` when auth is off.
pub type Gate = Option<Arc<dyn Verifier>>;

/// Paths served without a token. `Cluster/NodeStatus` is one: nodes ask it of each other
/// (joining, elections, relocation, the cluster's status), and they hold no token.
fn is_open_path(path: &str) -> bool {
    crate::tls::is_node_only(path)
        || matches!(
            path,
            "/healthz"
                | "/readyz"
                | "/"
                | "/ui"
                | "/ui/"
                | "/openapi.json"
                | "/weft.fabric.v1.Cluster/NodeStatus"
        )
        || path.starts_with("/ui/")
        || path.starts_with("/grpc.health.v1.Health/")
}

fn is_grpc(request: &Request) -> bool {
    request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// The bearer token of `request`, if it has an `authorization` header.
fn bearer(request: &Request) -> Result<Option<&str>, Unauthenticated> {
    let Some(value) = request.headers().get(AUTHORIZATION) else { return Ok(None) };
    let value = value
        .to_str()
        .map_err(|_| Unauthenticated::Malformed("the authorization header is not ASCII".into()))?;
    let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).ok_or_else(|| {
        Unauthenticated::Malformed("the authorization header must be `Bearer <token>`".into())
    })?;
    Ok(Some(token.trim()))
}

/// The refusal as the caller's protocol expects it: a gRPC status, or HTTP 401 with the API's
/// JSON error body.
fn refuse(grpc: bool, why: &Unauthenticated) -> Response {
    let status = tonic::Status::unauthenticated(why.to_string());
    if grpc {
        status.into_http::<axum::body::Body>().into_response()
    } else {
        crate::rest::error::ApiError(status).into_response()
    }
}

/// Axum middleware over the node's whole router.
pub async fn gate(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    let caller = match &gate {
        None => Caller::Open,
        Some(_) if is_open_path(request.uri().path()) => Caller::Open,
        Some(verifier) => {
            let checked = bearer(&request)
                .and_then(|t| t.ok_or(Unauthenticated::Missing))
                .and_then(|t| verifier.verify(t));
            match checked {
                Ok(principal) => Caller::Token(Arc::new(principal)),
                Err(why) => {
                    verifier.refused(&why);
                    tracing::debug!(path = %request.uri().path(), reason = why.reason(), "refused a request without valid credentials");
                    return refuse(is_grpc(&request), &why);
                }
            }
        }
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

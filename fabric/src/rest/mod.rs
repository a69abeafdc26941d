//! The HTTP/JSON API, on the node's one port beside gRPC, for callers in any language: state,
//! executions, instances, sessions, the cluster, streams (with a live tail as Server-Sent
//! Events) and bearer tokens, and the OpenAPI document that describes it, generated from these handlers and
//! types (`GET /openapi.json`).
//!
//! ```text
//!   HTTP request ── handler (this module) ── the gRPC service's method, in process ── grid
//!        ▲                                             │
//!        └──────── JSON, or {"error": {code, message}} ◄┘  (the same codes and messages)
//! ```
//!
//! Every handler calls the same service method a gRPC caller reaches, so checks, limits,
//! routing to the leader and errors are the gRPC API's; only the shapes differ. That includes
//! token scopes: a handler takes the [`Caller`] the auth gate found and hands it to the service
//! in the request ([`request`]), so a refusal is the service's (403, or 401 from the gate).
//!
//! # Layout
//! - [`model`]: the JSON shapes and how protocol messages become them.
//! - [`error`]: a gRPC status as an HTTP status and a JSON body.
//! - [`handlers`]: the routes.
//! - [`body`]: reading JSON bodies and query strings with clear 4xx errors.

pub(crate) mod body;
pub(crate) mod error;
mod handlers;
pub(crate) mod model;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

use crate::api::{
    ClusterService, ExecutionService, InstanceService, StateService, StreamService, TokenService,
};
use crate::auth::Caller;
use crate::routing::Context;

pub use error::ErrorBody;

/// Where the OpenAPI document is served.
pub const OPENAPI_PATH: &str = "/openapi.json";

/// Most live tails (`GET /v1/streams/{name}/tail`) one node serves at once.
pub const MAX_TAILS: usize = 256;

/// The services the handlers call, and the node's limits.
#[derive(Clone)]
pub struct Api {
    pub(crate) ctx: Context,
    pub(crate) state: StateService,
    pub(crate) executions: ExecutionService,
    pub(crate) instances: InstanceService,
    pub(crate) streams: StreamService,
    pub(crate) cluster: ClusterService,
    pub(crate) tokens: TokenService,
    pub(crate) tails: Arc<tokio::sync::Semaphore>,
    pub(crate) shutdown: CancellationToken,
}

/// A request to a gRPC service, made in process on behalf of `caller` (the service checks its
/// permissions as for a gRPC caller).
pub(crate) fn request<T>(caller: &Caller, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(caller.clone());
    request
}

/// The OpenAPI document of this API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Weft HTTP/JSON API",
        description = "State, executions, instances, sessions, the cluster, streams and bearer tokens of a Weft fabric node. \
Every operation calls the same service a gRPC caller reaches; errors carry the gRPC code and message.",
        license(name = "Apache-2.0")
    ),
    paths(
        handlers::cluster,
        handlers::members,
        handlers::sessions,
        handlers::list_executions,
        handlers::create_execution,
        handlers::get_execution,
        handlers::wait_execution,
        handlers::cancel_execution,
        handlers::call,
        handlers::list_instances,
        handlers::get_instance,
        handlers::start_instance,
        handlers::stop_instance,
        handlers::list_shared,
        handlers::get_shared,
        handlers::put_shared,
        handlers::delete_shared,
        handlers::list_instance_keys,
        handlers::get_instance_key,
        handlers::put_instance_key,
        handlers::delete_instance_key,
        handlers::list_streams,
        handlers::append,
        handlers::read_items,
        handlers::tail,
        handlers::create_token,
        handlers::list_tokens,
        handlers::revoke_token,
    ),
    components(schemas(ErrorBody, error::ErrorDetail)),
    modifiers(&CommonErrors),
    tags(
        (name = "cluster", description = "Members, leader, gossip"),
        (name = "executions", description = "Calls of agents' delegates"),
        (name = "instances", description = "Agent instances"),
        (name = "state", description = "Key/value state"),
        (name = "streams", description = "Streams: append, read, live tail"),
        (name = "tokens", description = "Bearer tokens: create (the secret shown once), list, revoke; admins only")
    )
)]
pub struct ApiDoc;

/// Adds the errors any operation may answer to every operation of the document: bad input
/// (400, 413, 415), no or a bad token (401), a token without the permission (403), overload
/// (429) and no leader or quorum (503); and the bearer token scheme, required by every
/// operation when the node runs with auth on.
struct CommonErrors;

impl utoipa::Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
                )
                .build()
        };
        let common = [
            ("400", "Bad input: the message names the problem; nothing changed"),
            ("413", "The body is over the node's max_message_bytes"),
            ("415", "The body is not JSON"),
            ("401", "Auth is on and the bearer token is missing, malformed, unknown, expired or revoked"),
            (
                "403",
                "The token's role and scopes do not allow this; the message names the permission; nothing changed",
            ),
            ("429", "Overloaded (a bound such as max_waiters or max_pending_writes); nothing changed"),
            ("503", "No leader, no quorum, or the node is stopping; see not_applied"),
        ];
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A Weft token (`weft_<id>_<secret>`), needed when the node runs with auth on",
                    ))
                    .build(),
            ),
        );
        openapi.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
        for item in openapi.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.put, &mut item.post, &mut item.delete].into_iter().flatten() {
                for (code, description) in common {
                    op.responses
                        .responses
                        .entry(code.to_owned())
                        .or_insert_with(|| error(description).into());
                }
            }
        }
    }
}

/// The routes of the API, and the OpenAPI document.
pub fn router(ctx: Context, shutdown: CancellationToken, max_body_bytes: usize) -> Router {
    let api = Api {
        state: StateService::new(ctx.clone()),
        executions: ExecutionService::new(ctx.clone(), shutdown.clone()),
        instances: InstanceService::new(ctx.clone()),
        streams: StreamService::new(ctx.clone(), shutdown.clone()),
        cluster: ClusterService::new(ctx.clone()),
        tokens: TokenService::new(ctx.clone()),
        tails: Arc::new(tokio::sync::Semaphore::new(MAX_TAILS)),
        shutdown,
        ctx,
    };
    let doc = ApiDoc::openapi().to_pretty_json().unwrap_or_else(|_| "{}".into());
    Router::new()
        .route(OPENAPI_PATH, get(move || async move { ([("content-type", "application/json")], doc) }))
        .route("/v1/cluster", get(handlers::cluster))
        .route("/v1/cluster/members", get(handlers::members))
        .route("/v1/sessions", get(handlers::sessions))
        .route("/v1/executions", get(handlers::list_executions).post(handlers::create_execution))
        .route("/v1/executions/{id}", get(handlers::get_execution))
        .route("/v1/executions/{id}/wait", get(handlers::wait_execution))
        .route("/v1/executions/{id}/cancel", post(handlers::cancel_execution))
        .route("/v1/call/{agent}/{delegate}", post(handlers::call))
        .route("/v1/instances", get(handlers::list_instances))
        .route(
            "/v1/instances/{agent}/{id}",
            get(handlers::get_instance).post(handlers::start_instance).delete(handlers::stop_instance),
        )
        .route("/v1/state/shared/{name}", get(handlers::list_shared))
        .route(
            "/v1/state/shared/{name}/{key}",
            get(handlers::get_shared).put(handlers::put_shared).delete(handlers::delete_shared),
        )
        .route("/v1/state/instance/{agent}/{instance}", get(handlers::list_instance_keys))
        .route(
            "/v1/state/instance/{agent}/{instance}/{key}",
            get(handlers::get_instance_key)
                .put(handlers::put_instance_key)
                .delete(handlers::delete_instance_key),
        )
        .route("/v1/streams", get(handlers::list_streams))
        .route("/v1/streams/{name}/items", get(handlers::read_items).post(handlers::append))
        .route("/v1/streams/{name}/tail", get(handlers::tail))
        .route("/v1/tokens", get(handlers::list_tokens).post(handlers::create_token))
        .route("/v1/tokens/{id}", delete(handlers::revoke_token))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(api)
}

/// A path the node does not serve (the whole node's fallback): for a gRPC request, gRPC's
/// UNIMPLEMENTED, as tonic answers; otherwise the API's JSON 404.
pub async fn not_found(method: Method, uri: Uri, headers: axum::http::HeaderMap) -> Response {
    let grpc = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if grpc {
        return tonic::Status::unimplemented(format!("no such service or method: {}", uri.path()))
            .into_http::<axum::body::Body>()
            .into_response();
    }
    error::plain(
        StatusCode::NOT_FOUND,
        tonic::Code::NotFound,
        format!("no such path: {method} {}; the API is described at {OPENAPI_PATH}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error::plain(
        StatusCode::METHOD_NOT_ALLOWED,
        tonic::Code::Unimplemented,
        format!("{method} is not allowed on {}; see {OPENAPI_PATH}", uri.path()),
    )
    .into_response()
}

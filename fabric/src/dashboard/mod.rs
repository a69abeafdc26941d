//! The web dashboard every node serves on its one port: a static page embedded in the binary
//! (no build step, nothing fetched from elsewhere, so it works offline) and the JSON it reads.
//!
//! ```text
//!  browser                          this node
//!  GET /ui/, /ui/app.js, /ui/app.css ──► the embedded assets
//!  GET /v1/dashboard/events ─────────► SSE: a `snapshot` event at once, then one whenever
//!      (EventSource)                    what the page shows changed (applied entries, the
//!                                       gossip view, each checked at least every second),
//!                                       at most 4 a second; keep-alive comments between
//!  GET /v1/dashboard/snapshot ───────► the same snapshot, once
//!  GET /v1/dashboard/executions/{id} ► one execution with its payloads (less clipped)
//! ```
//!
//! A snapshot reads this node's replica of the grid (no round trip to the leader: the page
//! shows what this node has applied) and the cluster status that `weft status` prints
//! (refreshed at most once per [`CLUSTER_REFRESH`]). Every list in it is bounded
//! ([`snapshot`]'s constants). The page builds its DOM with `textContent` only: payloads,
//! names and errors are user data.
//!
//! The JSON routes show everything (every agent's executions, every stream): with auth on
//! they need [`Permission::ReadAll`] (an admin or operator token); the page and its assets
//! are open. The page's two actions (cancel an execution, call a delegate) use the HTTP/JSON API
//! (`POST /v1/executions/{id}/cancel`, `POST /v1/call/{agent}/{delegate}`), not routes of
//! this module.
//!
//! # Layout
//! - [`snapshot`]: what the page shows, read from the grid, bounded.
//! - [`events`]: the SSE stream of snapshots, debounced, with a bound on concurrent streams.

pub mod events;
pub mod snapshot;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::cluster_server::Cluster as _;

use crate::auth::{Caller, Permission, authorize};
use crate::routing::Context;
use snapshot::{DETAIL_PAYLOAD_BYTES, ExecutionView, Filter, GridPart, Snapshot};

/// Most dashboard event streams (`/v1/dashboard/events`) one node serves at once; past it a
/// new one gets 503.
pub const MAX_EVENT_STREAMS: usize = 16;
/// Longest time the cluster status in a snapshot is reused before peers are asked again.
pub const CLUSTER_REFRESH: Duration = Duration::from_secs(1);

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The page may load only what this node serves; nothing inline runs, so a payload that
/// slipped into the DOM as markup still could not run script.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What the dashboard's handlers share.
#[derive(Clone)]
pub struct Dashboard {
    ctx: Context,
    shutdown: CancellationToken,
    streams: Arc<Semaphore>,
    cluster: Arc<Mutex<Option<(Instant, pb::ClusterStatus)>>>,
}

/// The dashboard's routes: `/` (redirects to `/ui/`), `/ui/` and its assets, and
/// `/v1/dashboard/{snapshot,events,executions/{id}}`. Event streams end when `shutdown` fires.
pub fn router(ctx: Context, shutdown: CancellationToken) -> Router {
    let dashboard = Dashboard {
        ctx,
        shutdown,
        streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
        cluster: Arc::default(),
    };
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route(
            "/ui/",
            get(|headers: HeaderMap| async move { asset(&headers, INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/app.js",
            get(
                |headers: HeaderMap| async move { asset(&headers, APP_JS, "text/javascript; charset=utf-8") },
            ),
        )
        .route(
            "/ui/app.css",
            get(|headers: HeaderMap| async move { asset(&headers, APP_CSS, "text/css; charset=utf-8") }),
        )
        .route("/v1/dashboard/snapshot", get(snapshot_json))
        .route("/v1/dashboard/events", get(events::events))
        .route("/v1/dashboard/executions/{id}", get(execution_json))
        .with_state(dashboard)
}

/// An embedded asset. Browsers revalidate each load (`no-cache`) and get 304 while the
/// binary, and so the asset, is the same.
fn asset(headers: &HeaderMap, body: &'static str, content_type: &'static str) -> Response {
    let etag = format!("\"{:016x}\"", fnv1a(body.as_bytes()));
    let common = [
        (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (HeaderName::from_static("x-content-type-options"), HeaderValue::from_static("nosniff")),
        (
            HeaderName::from_static("content-security-policy"),
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (HeaderName::from_static("referrer-policy"), HeaderValue::from_static("no-referrer")),
        (ETAG, HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\""))),
    ];
    if headers.get(IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == etag.as_bytes()) {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (common, [(CONTENT_TYPE, content_type)], body).into_response()
}

/// FNV-1a: a stable fingerprint of an asset for its `ETag`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// A JSON body with `status`, in the HTTP API's error shape:
/// `{"error": {"code": "INVALID_ARGUMENT", "message": "..."}}`.
pub(crate) fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    (status, [(CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn json_ok(body: &impl serde::Serialize) -> Response {
    match serde_json::to_string(body) {
        Ok(text) => ([(CONTENT_TYPE, "application/json"), (CACHE_CONTROL, "no-store")], text).into_response(),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", &format!("encoding failed: {e}")),
    }
}

/// The query of `snapshot` and `events`: `status`, `agent`, `limit`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct FilterQuery {
    status: Option<String>,
    agent: Option<String>,
    limit: Option<String>,
}

impl FilterQuery {
    fn parse(
        query: Result<Query<FilterQuery>, axum::extract::rejection::QueryRejection>,
    ) -> Result<Filter, String> {
        let Query(q) = query.map_err(|e| e.body_text())?;
        Filter::parse(q.status.as_deref(), q.agent.as_deref(), q.limit.as_deref())
    }
}

/// The refusal (403) of a caller that may not read everything, which the JSON routes show.
fn refused(caller: &Caller) -> Option<Response> {
    let denied = authorize(caller, Permission::ReadAll).err()?;
    Some(crate::rest::error::ApiError(denied.into()).into_response())
}

impl Dashboard {
    /// A snapshot as of now, not stamped with the time (so two can be compared).
    async fn snapshot(&self, filter: Filter, caller: &Caller) -> Snapshot {
        let status = self.cluster_status(caller).await;
        let applied_index = self.ctx.raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        let grid = self.ctx.applied.read(|a| GridPart::read(&a.grid, &filter));
        Snapshot::assemble(self.ctx.node_id, self.ctx.cluster.clone(), applied_index, &status, filter, grid)
    }

    /// The cluster status `weft status` prints (every member asked for its progress, each
    /// within a short timeout), reused for [`CLUSTER_REFRESH`].
    async fn cluster_status(&self, caller: &Caller) -> pb::ClusterStatus {
        let mut cached = self.cluster.lock().await;
        if let Some((at, status)) = cached.as_ref()
            && at.elapsed() < CLUSTER_REFRESH
        {
            return status.clone();
        }
        let service = crate::api::ClusterService::new(self.ctx.clone());
        let status = match service.status(crate::rest::request(caller, pb::StatusRequest {})).await {
            Ok(reply) => reply.into_inner(),
            Err(e) => {
                tracing::debug!(error = %e, "dashboard: no cluster status");
                pb::ClusterStatus { cluster: self.ctx.cluster.clone(), ..Default::default() }
            }
        };
        *cached = Some((Instant::now(), status.clone()));
        status
    }
}

async fn snapshot_json(
    State(d): State<Dashboard>,
    caller: Caller,
    query: Result<Query<FilterQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Some(refusal) = refused(&caller) {
        return refusal;
    }
    match FilterQuery::parse(query) {
        Ok(filter) => json_ok(&d.snapshot(filter, &caller).await.stamped()),
        Err(message) => json_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", &message),
    }
}

async fn execution_json(State(d): State<Dashboard>, caller: Caller, Path(id): Path<String>) -> Response {
    if let Some(refusal) = refused(&caller) {
        return refusal;
    }
    let Ok(id) = id.parse::<u64>() else {
        let message = format!("execution id must be a number, not '{}'", snapshot::clip(&id, 64));
        return json_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", &message);
    };
    match d.ctx.applied.read(|a| a.grid.execution(id).map(|e| ExecutionView::new(e, DETAIL_PAYLOAD_BYTES))) {
        Some(view) => json_ok(&view),
        None => json_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("no execution {id} on this node's replica"),
        ),
    }
}

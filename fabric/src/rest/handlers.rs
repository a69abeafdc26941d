//! The routes of the HTTP/JSON API: each reads its request, calls the gRPC service's method
//! in process, and shapes the answer (see the module docs of [`super`]).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::cluster_server::Cluster as _;
use weft_proto::fabric::v1::executions_server::Executions as _;
use weft_proto::fabric::v1::instances_server::Instances as _;
use weft_proto::fabric::v1::state_server::State as _;
use weft_proto::fabric::v1::streams_server::Streams as _;

use super::body::{JsonBody, PathOf, QueryOf, RawBody};
use super::error::{ApiError, ErrorBody};
use super::model::{self, required};
use super::{Api, request};
use crate::auth::Caller;

/// How long a call or a wait waits for the outcome when the request does not say.
const DEFAULT_WAIT_MS: u64 = 30_000;
/// The header of an idempotency key.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// How often a live tail sends a comment when nothing happens (proxies close idle streams).
const TAIL_KEEP_ALIVE: Duration = Duration::from_secs(15);

type Answer<T> = Result<Json<T>, ApiError>;

/// A wait's length: absent or 0 is the default; the node caps it at its `max_wait_ms`.
fn wait_ms(asked: Option<u64>) -> u64 {
    asked.filter(|ms| *ms > 0).unwrap_or(DEFAULT_WAIT_MS)
}

fn consistency(stale: bool) -> i32 {
    if stale { pb::Consistency::Stale as i32 } else { pb::Consistency::Linearizable as i32 }
}

/// An optional body's text as a JSON value (empty: null), checked as the API's JSON bodies.
fn args_of(body: Option<serde_json::Value>) -> serde_json::Value {
    body.unwrap_or(serde_json::Value::Null)
}

// ---- cluster ---------------------------------------------------------------------------------

/// The cluster as Raft sees it: leader, term, and each member's role, progress and gossip
/// state.
#[utoipa::path(get, path = "/v1/cluster", tag = "cluster",
    responses((status = 200, body = model::Cluster), (status = 503, body = ErrorBody)))]
pub async fn cluster(State(api): State<Api>, caller: Caller) -> Answer<model::Cluster> {
    let status = api.cluster.status(request(&caller, pb::StatusRequest {})).await?.into_inner();
    Ok(Json(status.into()))
}

/// Every node the answering node's gossip knows, and its state.
#[utoipa::path(get, path = "/v1/cluster/members", tag = "cluster",
    responses((status = 200, body = model::Members)))]
pub async fn members(State(api): State<Api>, caller: Caller) -> Answer<model::Members> {
    let members = api.cluster.members(request(&caller, pb::MembersRequest {})).await?.into_inner();
    Ok(Json(members.into()))
}

/// The live agent sessions: node, agents and delegates served, capacity, work held.
#[utoipa::path(get, path = "/v1/sessions", tag = "executions", params(model::ListSessionsQuery),
    responses((status = 200, body = model::SessionPage), (status = 400, body = ErrorBody)))]
pub async fn sessions(
    State(api): State<Api>,
    caller: Caller,
    QueryOf(q): QueryOf<model::ListSessionsQuery>,
) -> Answer<model::SessionPage> {
    let req = pb::ListSessionsRequest {
        agent: q.agent.unwrap_or_default(),
        page_token: q.page_token.unwrap_or(0),
        limit: q.limit.unwrap_or(0),
        consistency: consistency(false),
    };
    let page = api.executions.list_sessions(request(&caller, req)).await?.into_inner();
    Ok(Json(model::SessionPage {
        sessions: page.sessions.into_iter().map(Into::into).collect(),
        next_page_token: (page.next_page_token != 0).then_some(page.next_page_token),
    }))
}

// ---- executions ------------------------------------------------------------------------------

/// Executions by id, filtered by agent and status.
#[utoipa::path(get, path = "/v1/executions", tag = "executions", params(model::ListExecutionsQuery),
    responses((status = 200, body = model::ExecutionPage), (status = 400, body = ErrorBody)))]
pub async fn list_executions(
    State(api): State<Api>,
    caller: Caller,
    QueryOf(q): QueryOf<model::ListExecutionsQuery>,
) -> Answer<model::ExecutionPage> {
    let req = pb::ListExecutionsRequest {
        agent: q.agent.unwrap_or_default(),
        status: q.status.unwrap_or_default(),
        page_token: q.page_token.unwrap_or(0),
        limit: q.limit.unwrap_or(0),
        consistency: consistency(q.stale),
        created_since_ms: q.created_since_ms.unwrap_or(0),
        newest_first: q.newest_first,
    };
    let page = api.executions.list(request(&caller, req)).await?.into_inner();
    Ok(Json(model::ExecutionPage {
        executions: page.executions.into_iter().map(Into::into).collect(),
        next_page_token: (page.next_page_token != 0).then_some(page.next_page_token),
    }))
}

/// The `Idempotency-Key` header, if any.
fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    match headers.get(IDEMPOTENCY_KEY) {
        None => Ok(String::new()),
        Some(v) => v
            .to_str()
            .map(str::to_owned)
            .map_err(|_| ApiError::invalid("the Idempotency-Key header must be visible ASCII")),
    }
}

/// Creates an execution (201), or returns the one its `Idempotency-Key` names (200).
#[utoipa::path(post, path = "/v1/executions", tag = "executions",
    request_body = model::CreateExecution,
    params(("Idempotency-Key" = Option<String>, Header, description = "Creating again with this key returns the first execution")),
    responses((status = 201, body = model::Created), (status = 200, body = model::Created),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn create_execution(
    State(api): State<Api>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<model::CreateExecution>,
) -> Result<Response, ApiError> {
    required("agent", &body.agent)?;
    required("delegate", &body.delegate)?;
    let req = body.into_pb(idempotency_key(&headers)?);
    let answer = api.executions.create(request(&caller, req)).await?.into_inner();
    let execution =
        answer.execution.ok_or_else(|| tonic::Status::internal("a create answered no execution"))?;
    let status = if answer.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(model::Created { execution: execution.into(), created: answer.created }))
        .into_response())
}

/// One execution.
#[utoipa::path(get, path = "/v1/executions/{id}", tag = "executions",
    params(("id" = u64, Path, description = "The execution's id")),
    responses((status = 200, body = model::Execution), (status = 404, body = ErrorBody)))]
pub async fn get_execution(
    State(api): State<Api>,
    caller: Caller,
    PathOf(id): PathOf<u64>,
) -> Answer<model::Execution> {
    let req = pb::GetExecutionRequest { id, consistency: consistency(false) };
    Ok(Json(api.executions.get(request(&caller, req)).await?.into_inner().into()))
}

/// The execution as it is when the wait ended: 200 when final, 202 while it goes on.
async fn outcome_or_progress(
    api: &Api,
    caller: &Caller,
    result: Result<pb::Execution, tonic::Status>,
) -> Result<Response, ApiError> {
    let (status, e) = settled(api, caller, result).await?;
    Ok((status, Json(model::Execution::from(e))).into_response())
}

/// 200 and the execution a wait returned; or, when the wait ran out (DEADLINE_EXCEEDED naming
/// the execution, which goes on), 202 and the execution as it is now.
async fn settled(
    api: &Api,
    caller: &Caller,
    result: Result<pb::Execution, tonic::Status>,
) -> Result<(StatusCode, pb::Execution), ApiError> {
    match result {
        Ok(e) => Ok((StatusCode::OK, e)),
        Err(status) if status.code() == tonic::Code::DeadlineExceeded => {
            let id = status
                .metadata()
                .get(weft_proto::wire::EXECUTION_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .ok_or(ApiError(status))?;
            let req = pb::GetExecutionRequest { id, consistency: consistency(true) };
            Ok((StatusCode::ACCEPTED, api.executions.get(request(caller, req)).await?.into_inner()))
        }
        Err(status) => Err(ApiError(status)),
    }
}

/// Waits for an execution to finish: 200 with it once final, 202 with it as it is when the
/// wait runs out (it goes on).
#[utoipa::path(get, path = "/v1/executions/{id}/wait", tag = "executions",
    params(("id" = u64, Path, description = "The execution's id"), model::WaitQuery),
    responses((status = 200, body = model::Execution), (status = 202, body = model::Execution),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn wait_execution(
    State(api): State<Api>,
    caller: Caller,
    PathOf(id): PathOf<u64>,
    QueryOf(q): QueryOf<model::WaitQuery>,
) -> Result<Response, ApiError> {
    let req = pb::WaitRequest { id, timeout_ms: wait_ms(q.timeout_ms) };
    let mut stream = api.executions.wait(request(&caller, req)).await?.into_inner();
    let mut last = None;
    while let Some(change) = stream.next().await {
        match change {
            Ok(e) if e.status == "pending" || e.status == "assigned" => last = Some(e),
            Ok(e) => return outcome_or_progress(&api, &caller, Ok(e)).await,
            Err(status) if status.code() == tonic::Code::DeadlineExceeded => {
                return match last {
                    Some(e) => Ok((StatusCode::ACCEPTED, Json(model::Execution::from(e))).into_response()),
                    None => outcome_or_progress(&api, &caller, Err(status)).await,
                };
            }
            Err(status) => return Err(ApiError(status)),
        }
    }
    Err(ApiError(tonic::Status::unavailable("the wait ended without an outcome (the node is stopping)")))
}

/// Cancels an unfinished execution and its unfinished children.
#[utoipa::path(post, path = "/v1/executions/{id}/cancel", tag = "executions",
    params(("id" = u64, Path, description = "The execution's id")),
    request_body(content = Option<model::CancelBody>, description = "Optional: why"),
    responses((status = 200, body = model::Cancelled), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn cancel_execution(
    State(api): State<Api>,
    caller: Caller,
    PathOf(id): PathOf<u64>,
    JsonBody(body): JsonBody<Option<model::CancelBody>>,
) -> Answer<model::Cancelled> {
    let reason = body.unwrap_or_default().reason;
    let req = pb::CancelExecutionRequest { id, reason };
    let answer = api.executions.cancel(request(&caller, req)).await?.into_inner();
    Ok(Json(model::Cancelled { cancelled: answer.cancelled }))
}

/// Calls an agent's delegate with the body as its arguments (JSON; empty: null) and waits:
/// 200 with the execution once final (completed, failed or cancelled), 202 with it while it
/// goes on after `timeout_ms`.
#[utoipa::path(post, path = "/v1/call/{agent}/{delegate}", tag = "executions",
    params(("agent" = String, Path), ("delegate" = String, Path), model::CallQuery,
        ("Idempotency-Key" = Option<String>, Header, description = "Calling again with this key returns the first call's execution")),
    request_body(content = Option<serde_json::Value>, description = "The arguments, any JSON value"),
    responses((status = 200, body = model::Execution), (status = 202, body = model::Execution),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn call(
    State(api): State<Api>,
    caller: Caller,
    PathOf((agent, delegate)): PathOf<(String, String)>,
    QueryOf(q): QueryOf<model::CallQuery>,
    headers: HeaderMap,
    JsonBody(args): JsonBody<Option<serde_json::Value>>,
) -> Result<Response, ApiError> {
    let create = model::CreateExecution {
        agent,
        delegate,
        args: args_of(args),
        instance: q.instance,
        timeout_ms: None,
        delay_ms: None,
        priority: 0,
        wait_for_delegate: q.wait_for_delegate,
    };
    let req = pb::CallRequest {
        create: Some(create.into_pb(idempotency_key(&headers)?)),
        timeout_ms: wait_ms(q.timeout_ms),
    };
    let result = api.executions.call(request(&caller, req)).await.map(tonic::Response::into_inner);
    outcome_or_progress(&api, &caller, result).await
}

// ---- instances -------------------------------------------------------------------------------

/// Instances in order of agent and id.
#[utoipa::path(get, path = "/v1/instances", tag = "instances", params(model::ListInstancesQuery),
    responses((status = 200, body = model::InstancePage), (status = 400, body = ErrorBody)))]
pub async fn list_instances(
    State(api): State<Api>,
    caller: Caller,
    QueryOf(q): QueryOf<model::ListInstancesQuery>,
) -> Answer<model::InstancePage> {
    let page_token = match q.page_token.as_deref() {
        None | Some("") => None,
        Some(t) => match t.split_once('/') {
            Some((agent, instance)) if !agent.is_empty() && !instance.is_empty() => {
                Some(pb::InstanceRef { agent: agent.into(), instance: instance.into() })
            }
            _ => return Err(ApiError::invalid(format!("page_token '{t}' is not AGENT/ID"))),
        },
    };
    let req = pb::ListInstancesRequest {
        agent: q.agent.unwrap_or_default(),
        page_token,
        limit: q.limit.unwrap_or(0),
        consistency: consistency(false),
    };
    let page = api.instances.list(request(&caller, req)).await?.into_inner();
    Ok(Json(model::InstancePage {
        instances: page.instances.into_iter().map(Into::into).collect(),
        next_page_token: page.next_page_token.map(|t| format!("{}/{}", t.agent, t.instance)),
    }))
}

/// One instance.
#[utoipa::path(get, path = "/v1/instances/{agent}/{id}", tag = "instances",
    params(("agent" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = model::Instance), (status = 404, body = ErrorBody)))]
pub async fn get_instance(
    State(api): State<Api>,
    caller: Caller,
    PathOf((agent, instance)): PathOf<(String, String)>,
) -> Answer<model::Instance> {
    let req = pb::GetInstanceRequest { agent, instance, consistency: consistency(false) };
    Ok(Json(api.instances.get(request(&caller, req)).await?.into_inner().into()))
}

/// Starts an instance with the body as its Start arguments and waits for Start's outcome:
/// 200 once it finished, 202 while it goes on.
#[utoipa::path(post, path = "/v1/instances/{agent}/{id}", tag = "instances",
    params(("agent" = String, Path), ("id" = String, Path), model::WaitQuery,
        ("Idempotency-Key" = Option<String>, Header, description = "Starting again with this key returns the first start")),
    request_body(content = Option<serde_json::Value>, description = "The Start arguments, any JSON value"),
    responses((status = 200, body = model::InstanceOutcome), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 202, body = model::InstanceOutcome, description = "Start still running when the wait ran out; it goes on")))]
pub async fn start_instance(
    State(api): State<Api>,
    caller: Caller,
    PathOf((agent, instance)): PathOf<(String, String)>,
    QueryOf(q): QueryOf<model::WaitQuery>,
    headers: HeaderMap,
    JsonBody(args): JsonBody<Option<serde_json::Value>>,
) -> Result<Response, ApiError> {
    let req = pb::StartInstanceRequest {
        agent,
        instance,
        payload: Some(model::json_payload(&args_of(args))),
        idempotency_key: idempotency_key(&headers)?,
        parent: None,
        timeout_ms: wait_ms(q.timeout_ms),
    };
    let result = api.instances.start(request(&caller, req)).await.and_then(|answer| {
        answer.into_inner().start.ok_or_else(|| tonic::Status::internal("a start answered no execution"))
    });
    let (status, start) = settled(&api, &caller, result).await?;
    Ok((status, Json(model::InstanceOutcome { execution: start.into() })).into_response())
}

/// Stops an instance: waits for its Stop delegate; then it, its state and its children are
/// removed.
#[utoipa::path(delete, path = "/v1/instances/{agent}/{id}", tag = "instances",
    params(("agent" = String, Path), ("id" = String, Path), model::WaitQuery),
    responses((status = 200, body = model::InstanceOutcome), (status = 404, body = ErrorBody),
        (status = 202, body = model::InstanceOutcome, description = "Stop still running when the wait ran out; it goes on")))]
pub async fn stop_instance(
    State(api): State<Api>,
    caller: Caller,
    PathOf((agent, instance)): PathOf<(String, String)>,
    QueryOf(q): QueryOf<model::WaitQuery>,
) -> Result<Response, ApiError> {
    let req = pb::StopInstanceRequest { agent, instance, timeout_ms: wait_ms(q.timeout_ms) };
    let result = api.instances.stop(request(&caller, req)).await.and_then(|answer| {
        answer.into_inner().stop.ok_or_else(|| tonic::Status::internal("a stop answered no execution"))
    });
    let (status, stop) = settled(&api, &caller, result).await?;
    Ok((status, Json(model::InstanceOutcome { execution: stop.into() })).into_response())
}

// ---- state -----------------------------------------------------------------------------------
//
// A namespace is `shared/<name>` or `instance/<agent>/<instance>`; each kind has its routes, so
// no path segment carries a slash.

fn shared(name: &str) -> String {
    format!("shared/{name}")
}

fn of_instance(agent: &str, instance: &str) -> String {
    format!("instance/{agent}/{instance}")
}

async fn list_in(
    api: &Api,
    caller: &Caller,
    namespace: String,
    q: model::ListKeysQuery,
) -> Answer<model::KeyPage> {
    let req = pb::ListRequest {
        namespace,
        prefix: q.prefix.unwrap_or_default(),
        page_token: q.page_token.unwrap_or_default(),
        limit: q.limit.unwrap_or(0),
        consistency: consistency(q.stale),
    };
    let page = api.state.list(request(caller, req)).await?.into_inner();
    Ok(Json(model::KeyPage {
        entries: page.entries.into_iter().map(|kv| model::KeyValue::new(kv, q.keys_only)).collect(),
        next_page_token: (!page.next_page_token.is_empty()).then_some(page.next_page_token),
    }))
}

async fn get_in(
    api: &Api,
    caller: &Caller,
    namespace: String,
    key: String,
    q: model::GetKeyQuery,
) -> Answer<model::KeyValue> {
    let req =
        pb::GetRequest { namespace: namespace.clone(), key: key.clone(), consistency: consistency(q.stale) };
    match api.state.get(request(caller, req)).await?.into_inner().entry {
        Some(kv) => Ok(Json(model::KeyValue::new(kv, false))),
        None => Err(ApiError(tonic::Status::not_found(format!(
            "no key '{}' in namespace '{}'",
            crate::grid::namespace::clip(&key),
            crate::grid::namespace::clip(&namespace)
        )))),
    }
}

async fn put_in(
    api: &Api,
    caller: &Caller,
    namespace: String,
    key: String,
    q: model::PutQuery,
    value: Bytes,
) -> Answer<model::Written> {
    let version = match q.expected_version {
        Some(expected_version) => {
            if q.if_absent {
                return Err(ApiError::invalid("give if_absent or expected_version, not both"));
            }
            let req = pb::CompareAndSetRequest {
                namespace,
                key,
                expected_version,
                value: value.to_vec(),
                ttl_ms: q.ttl_ms,
                fence: None,
            };
            api.state.compare_and_set(request(caller, req)).await?.into_inner().version
        }
        None => {
            let req = pb::PutRequest {
                namespace,
                key,
                value: value.to_vec(),
                ttl_ms: q.ttl_ms,
                if_absent: q.if_absent,
                fence: None,
            };
            api.state.put(request(caller, req)).await?.into_inner().version
        }
    };
    Ok(Json(model::Written { version }))
}

async fn delete_in(
    api: &Api,
    caller: &Caller,
    namespace: String,
    key: String,
    q: model::DeleteQuery,
) -> Answer<model::Deleted> {
    let req = pb::DeleteRequest { namespace, key, expected_version: q.expected_version, fence: None };
    let answer = api.state.delete(request(caller, req)).await?.into_inner();
    Ok(Json(model::Deleted { deleted: answer.deleted }))
}

/// Keys of the shared namespace `shared/{name}` in order, optionally by prefix.
#[utoipa::path(get, path = "/v1/state/shared/{name}", tag = "state",
    params(("name" = String, Path), model::ListKeysQuery),
    responses((status = 200, body = model::KeyPage), (status = 400, body = ErrorBody)))]
pub async fn list_shared(
    State(api): State<Api>,
    caller: Caller,
    PathOf(name): PathOf<String>,
    QueryOf(q): QueryOf<model::ListKeysQuery>,
) -> Answer<model::KeyPage> {
    list_in(&api, &caller, shared(&name), q).await
}

/// One key of `shared/{name}`.
#[utoipa::path(get, path = "/v1/state/shared/{name}/{key}", tag = "state",
    params(("name" = String, Path), ("key" = String, Path), model::GetKeyQuery),
    responses((status = 200, body = model::KeyValue), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody)))]
pub async fn get_shared(
    State(api): State<Api>,
    caller: Caller,
    PathOf((name, key)): PathOf<(String, String)>,
    QueryOf(q): QueryOf<model::GetKeyQuery>,
) -> Answer<model::KeyValue> {
    get_in(&api, &caller, shared(&name), key, q).await
}

/// Writes a key of `shared/{name}`: the body is the value, stored as sent (any bytes; JSON
/// is usual).
#[utoipa::path(put, path = "/v1/state/shared/{name}/{key}", tag = "state",
    params(("name" = String, Path), ("key" = String, Path), model::PutQuery),
    request_body(content = String, description = "The value, stored as sent", content_type = "application/octet-stream"),
    responses((status = 200, body = model::Written), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn put_shared(
    State(api): State<Api>,
    caller: Caller,
    PathOf((name, key)): PathOf<(String, String)>,
    QueryOf(q): QueryOf<model::PutQuery>,
    RawBody(value): RawBody,
) -> Answer<model::Written> {
    put_in(&api, &caller, shared(&name), key, q, value).await
}

/// Deletes a key of `shared/{name}`.
#[utoipa::path(delete, path = "/v1/state/shared/{name}/{key}", tag = "state",
    params(("name" = String, Path), ("key" = String, Path), model::DeleteQuery),
    responses((status = 200, body = model::Deleted), (status = 400, body = ErrorBody)))]
pub async fn delete_shared(
    State(api): State<Api>,
    caller: Caller,
    PathOf((name, key)): PathOf<(String, String)>,
    QueryOf(q): QueryOf<model::DeleteQuery>,
) -> Answer<model::Deleted> {
    delete_in(&api, &caller, shared(&name), key, q).await
}

/// Keys of an instance's namespace in order, optionally by prefix.
#[utoipa::path(get, path = "/v1/state/instance/{agent}/{instance}", tag = "state",
    params(("agent" = String, Path), ("instance" = String, Path), model::ListKeysQuery),
    responses((status = 200, body = model::KeyPage), (status = 400, body = ErrorBody)))]
pub async fn list_instance_keys(
    State(api): State<Api>,
    caller: Caller,
    PathOf((agent, instance)): PathOf<(String, String)>,
    QueryOf(q): QueryOf<model::ListKeysQuery>,
) -> Answer<model::KeyPage> {
    list_in(&api, &caller, of_instance(&agent, &instance), q).await
}

/// One key of an instance's namespace.
#[utoipa::path(get, path = "/v1/state/instance/{agent}/{instance}/{key}", tag = "state",
    params(("agent" = String, Path), ("instance" = String, Path), ("key" = String, Path), model::GetKeyQuery),
    responses((status = 200, body = model::KeyValue), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody)))]
pub async fn get_instance_key(
    State(api): State<Api>,
    caller: Caller,
    PathOf((agent, instance, key)): PathOf<(String, String, String)>,
    QueryOf(q): QueryOf<model::GetKeyQuery>,
) -> Answer<model::KeyValue> {
    get_in(&api, &caller, of_instance(&agent, &instance), key, q).await
}

/// Writes a key of an instance's namespace (the instance must exist).
#[utoipa::path(put, path = "/v1/state/instance/{agent}/{instance}/{key}", tag = "state",
    params(("agent" = String, Path), ("instance" = String, Path), ("key" = String, Path), model::PutQuery),
    request_body(content = String, description = "The value, stored as sent", content_type = "application/octet-stream"),
    responses((status = 200, body = model::Written), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn put_instance_key(
    State(api): State<Api>,
    caller: Caller,
    PathOf((agent, instance, key)): PathOf<(String, String, String)>,
    QueryOf(q): QueryOf<model::PutQuery>,
    RawBody(value): RawBody,
) -> Answer<model::Written> {
    put_in(&api, &caller, of_instance(&agent, &instance), key, q, value).await
}

/// Deletes a key of an instance's namespace.
#[utoipa::path(delete, path = "/v1/state/instance/{agent}/{instance}/{key}", tag = "state",
    params(("agent" = String, Path), ("instance" = String, Path), ("key" = String, Path), model::DeleteQuery),
    responses((status = 200, body = model::Deleted), (status = 400, body = ErrorBody)))]
pub async fn delete_instance_key(
    State(api): State<Api>,
    caller: Caller,
    PathOf((agent, instance, key)): PathOf<(String, String, String)>,
    QueryOf(q): QueryOf<model::DeleteQuery>,
) -> Answer<model::Deleted> {
    delete_in(&api, &caller, of_instance(&agent, &instance), key, q).await
}

// ---- streams ---------------------------------------------------------------------------------

/// Streams by name.
#[utoipa::path(get, path = "/v1/streams", tag = "streams", params(model::ListStreamsQuery),
    responses((status = 200, body = model::StreamPage), (status = 400, body = ErrorBody)))]
pub async fn list_streams(
    State(api): State<Api>,
    caller: Caller,
    QueryOf(q): QueryOf<model::ListStreamsQuery>,
) -> Answer<model::StreamPage> {
    let req = pb::ListStreamsRequest {
        page_token: q.page_token.unwrap_or_default(),
        limit: q.limit.unwrap_or(0),
        consistency: consistency(false),
    };
    let page = api.streams.list(request(&caller, req)).await?.into_inner();
    Ok(Json(model::StreamPage {
        streams: page
            .streams
            .into_iter()
            .map(|s| model::StreamSummary {
                name: s.name,
                first_seq: s.first_seq,
                last_seq: s.last_seq,
                items: s.items,
                bytes: s.bytes,
                closed: s.closed,
            })
            .collect(),
        next_page_token: (!page.next_page_token.is_empty()).then_some(page.next_page_token),
    }))
}

/// Appends items to a stream, atomically.
#[utoipa::path(post, path = "/v1/streams/{name}/items", tag = "streams",
    params(("name" = String, Path)), request_body = model::Append,
    responses((status = 200, body = model::Appended), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn append(
    State(api): State<Api>,
    caller: Caller,
    PathOf(stream): PathOf<String>,
    JsonBody(body): JsonBody<model::Append>,
) -> Answer<model::Appended> {
    let req = body.into_pb(stream);
    let answer = api.streams.append(request(&caller, req)).await?.into_inner();
    Ok(Json(model::Appended { first_seq: answer.first_seq, last_seq: answer.last_seq }))
}

/// Reads stored items in order.
#[utoipa::path(get, path = "/v1/streams/{name}/items", tag = "streams",
    params(("name" = String, Path), model::ReadQuery),
    responses((status = 200, body = model::ItemPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn read_items(
    State(api): State<Api>,
    caller: Caller,
    PathOf(stream): PathOf<String>,
    QueryOf(q): QueryOf<model::ReadQuery>,
) -> Answer<model::ItemPage> {
    let req = pb::ReadRequest {
        stream,
        from_seq: q.from_seq.unwrap_or(0),
        limit: q.limit.unwrap_or(0),
        filter: q.filter.unwrap_or_default(),
        consistency: consistency(q.stale),
    };
    let page = api.streams.read(request(&caller, req)).await?.into_inner();
    Ok(Json(model::ItemPage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_seq: (page.next_seq != 0).then_some(page.next_seq),
    }))
}

/// Follows a stream live as Server-Sent Events: one `item` event per item (its JSON, with
/// `id:` its seq), from `from_seq` or from the next append; an `end` event when the stream
/// is closed or deleted, or with the error (`{"error": {"code": "UNAUTHENTICATED", ...}}`)
/// when the token that opened the tail is revoked or expires. A client that reconnects with
/// `Last-Event-ID` goes on after it.
#[utoipa::path(get, path = "/v1/streams/{name}/tail", tag = "streams",
    params(("name" = String, Path), model::TailQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Go on after this seq")),
    responses((status = 200, content_type = "text/event-stream", body = String, description = "item events"),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn tail(
    State(api): State<Api>,
    caller: Caller,
    PathOf(stream): PathOf<String>,
    QueryOf(q): QueryOf<model::TailQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let permit = api.tails.clone().try_acquire_owned().map_err(|_| {
        tonic::Status::resource_exhausted(format!(
            "this node serves {} live tails already; retry later or on another node",
            super::MAX_TAILS
        ))
    })?;
    let last_event: Option<u64> =
        headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok());
    let info_req = pb::StreamInfoRequest { name: stream.clone(), consistency: consistency(false) };
    let info = api.streams.info(request(&caller, info_req)).await?.into_inner();
    let filter = q.filter.unwrap_or_default();
    let mut next = match (last_event, q.from_seq) {
        (Some(seen), _) => seen.saturating_add(1),
        (None, Some(from)) => from,
        (None, None) => info.last_seq.saturating_add(1),
    };
    let uid = info.uid;
    // Ends the tail when the caller's token is revoked or expires.
    let mut lapse = api.ctx.lapse(&caller);
    let events = async_stream(move |tx| async move {
        let _permit = permit;
        let end = |status: tonic::Status| {
            Event::default()
                .event("end")
                .data(serde_json::to_string(&super::error::body(&status)).unwrap_or_default())
        };
        let tail = async {
            let mut applied = api.ctx.raft.metrics();
            loop {
                // The stream as it is before the read: once the read is caught up, every item up
                // to `last_seq` has been looked at (a filter may have passed over some), so the
                // next read starts after it and does not scan them again.
                let info_req = pb::StreamInfoRequest { name: stream.clone(), consistency: consistency(true) };
                let info = match api.streams.info(request(&caller, info_req)).await {
                    Ok(i) => i.into_inner(),
                    Err(status) => {
                        let _ = tx.send(end(status)).await;
                        return;
                    }
                };
                if info.uid != uid {
                    let _ = tx.send(Event::default().event("end").data("{\"reason\":\"deleted\"}")).await;
                    return;
                }
                let req = pb::ReadRequest {
                    stream: stream.clone(),
                    from_seq: next,
                    limit: 0,
                    filter: filter.clone(),
                    consistency: consistency(true),
                };
                let page = match api.streams.read(request(&caller, req)).await {
                    Ok(page) => page.into_inner(),
                    Err(status) => {
                        let _ = tx.send(end(status)).await;
                        return;
                    }
                };
                for item in page.items {
                    next = item.seq.saturating_add(1);
                    let id = item.seq.to_string();
                    let data = serde_json::to_string(&model::Item::from(item)).unwrap_or_default();
                    if tx.send(Event::default().event("item").id(id).data(data)).await.is_err() {
                        return;
                    }
                }
                if page.next_seq != 0 {
                    next = next.max(page.next_seq);
                    continue;
                }
                next = next.max(info.last_seq.saturating_add(1));
                if info.closed {
                    let _ = tx.send(Event::default().event("end").data("{\"reason\":\"closed\"}")).await;
                    return;
                }
                // Wait until this node applies another entry (Raft publishes metrics far more often:
                // heartbeats, ticks).
                let seen = applied.borrow().last_applied.map(|l| l.index);
                loop {
                    tokio::select! {
                        _ = api.shutdown.cancelled() => return,
                        _ = tx.closed() => return,
                        changed = applied.changed() => if changed.is_err() { return },
                    }
                    if applied.borrow().last_applied.map(|l| l.index) != seen {
                        break;
                    }
                }
            }
        };
        // The tail holds no state in the grid: it may stop wherever it waits.
        if let Err(why) = lapse.guard(tail).await {
            let _ = tokio::time::timeout(crate::auth::END_SEND_WAIT, tx.send(end(why.ending()))).await;
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(TAIL_KEEP_ALIVE)))
}

/// Events a tail may have waiting for a slow client.
const TAIL_BUFFER: usize = 64;

/// A stream fed by `produce` through a bounded channel; it ends when `produce` returns.
fn async_stream<F, Fut>(produce: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(TAIL_BUFFER);
    tokio::spawn(produce(tx));
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|e| e.map(Ok)))
}

//! Token scopes on every RPC and HTTP route: one table of all of them, driven against a node
//! with auth on. For each: without a token it is refused (`UNAUTHENTICATED`, 401); with a
//! token that lacks the permission it is refused (`PERMISSION_DENIED`, 403) and nothing is
//! proposed (the Raft log does not grow); with a token that has it, it is not refused. The
//! table is compared with the methods of the descriptor set and the routes of the OpenAPI
//! document (and the few routes outside it), so a new RPC or route without a row fails here,
//! and a row without a check in its handler fails the refusal.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::cluster_client::ClusterClient;
use weft_proto::fabric::v1::executions_client::ExecutionsClient;
use weft_proto::fabric::v1::instances_client::InstancesClient;
use weft_proto::fabric::v1::leases_client::LeasesClient;
use weft_proto::fabric::v1::scaling_client::ScalingClient;
use weft_proto::fabric::v1::schedules_client::SchedulesClient;
use weft_proto::fabric::v1::state_client::StateClient;
use weft_proto::fabric::v1::streams_client::StreamsClient;
use weft_proto::fabric::v1::tokens_client::TokensClient;

use crate::support::*;

/// Who calls: a token of each kind the table needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Admin,
    Operator,
    /// Role agent: serves `echo`; lease and namespace prefix `app-`.
    Agent,
    /// Role client: calls `echo`; namespace `shared/app`; streams `app.`.
    Client,
    /// Role client over other names: calls `other`; namespace `shared/other`; streams `other.`.
    Outsider,
}

/// What the rows work on, made by the admin before the table runs.
struct Fixture {
    addr: String,
    channel: Channel,
    /// The token of each kind.
    tokens: Vec<(Who, String)>,
    /// An execution of `echo` (the agent's session holds it): read, waited for, cancelled.
    execution: u64,
    /// Another execution of `echo` the agent's session holds, and its fencing token: completed.
    assigned: (u64, u64),
    /// A token id the admin may revoke (over gRPC).
    spare_token: String,
    /// Another, for the HTTP route that revokes.
    spare_http_token: String,
    /// Keeps the agent's session open.
    _session: (tokio::sync::mpsc::Sender<pb::AgentMessage>, tonic::Streaming<pb::FabricMessage>),
}

impl Fixture {
    fn token(&self, who: Who) -> String {
        self.tokens.iter().find(|(w, _)| *w == who).map(|(_, t)| t.clone()).expect("a token of each kind")
    }
}

type Fix = Arc<Fixture>;
type Answer = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

/// One gRPC method: who must be refused (none: every valid token may call it), who may call
/// it, and the call.
struct Row {
    method: &'static str,
    denied: Option<Who>,
    allowed: Who,
    call: Box<dyn Fn(Fix, Option<String>) -> Answer + Send + Sync>,
}

fn row<F, Fut>(method: &'static str, denied: Option<Who>, allowed: Who, call: F) -> Row
where
    F: Fn(Fix, Option<String>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Status>> + Send + 'static,
{
    Row { method, denied, allowed, call: Box::new(move |f, t| Box::pin(call(f, t))) }
}

/// `message` with `token` as its bearer token, if any.
pub(crate) fn req<T>(token: &Option<String>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    }
    request
}

fn create(agent: &str) -> pb::CreateExecutionRequest {
    pb::CreateExecutionRequest {
        agent: agent.into(),
        delegate: "say".into(),
        payload: json("1"),
        ..Default::default()
    }
}

/// A paused schedule `name` that calls `echo` (once a year).
fn schedule(name: &str) -> pb::CreateScheduleRequest {
    pb::CreateScheduleRequest {
        name: name.into(),
        cron: "0 0 1 1 *".into(),
        call: Some(create("echo")),
        paused: true,
        ..Default::default()
    }
}

fn grpc_rows() -> Vec<Row> {
    use Who::*;
    let ns = "shared/app";
    vec![
        // ---- State
        row("State/Get", Some(Outsider), Client, move |f, t| async move {
            let r = pb::GetRequest { namespace: ns.into(), key: "k".into(), ..Default::default() };
            StateClient::new(f.channel.clone()).get(req(&t, r)).await.map(drop)
        }),
        row("State/Put", Some(Outsider), Client, move |f, t| async move {
            let r = pb::PutRequest {
                namespace: ns.into(),
                key: "k".into(),
                value: b"1".to_vec(),
                ..Default::default()
            };
            StateClient::new(f.channel.clone()).put(req(&t, r)).await.map(drop)
        }),
        row("State/Delete", Some(Outsider), Client, move |f, t| async move {
            let r = pb::DeleteRequest { namespace: ns.into(), key: "gone".into(), ..Default::default() };
            StateClient::new(f.channel.clone()).delete(req(&t, r)).await.map(drop)
        }),
        row("State/CompareAndSet", Some(Outsider), Client, move |f, t| async move {
            let r = pb::CompareAndSetRequest {
                namespace: ns.into(),
                key: "cas".into(),
                expected_version: 0,
                value: b"1".to_vec(),
                ..Default::default()
            };
            StateClient::new(f.channel.clone()).compare_and_set(req(&t, r)).await.map(drop)
        }),
        row("State/List", Some(Outsider), Client, move |f, t| async move {
            let r = pb::ListRequest { namespace: ns.into(), ..Default::default() };
            StateClient::new(f.channel.clone()).list(req(&t, r)).await.map(drop)
        }),
        // ---- Cluster
        row("Cluster/Status", None, Client, |f, t| async move {
            ClusterClient::new(f.channel.clone()).status(req(&t, pb::StatusRequest {})).await.map(drop)
        }),
        row("Cluster/Members", None, Client, |f, t| async move {
            ClusterClient::new(f.channel.clone()).members(req(&t, pb::MembersRequest {})).await.map(drop)
        }),
        row("Cluster/NodeStatus", None, Client, |f, t| async move {
            ClusterClient::new(f.channel.clone()).node_status(req(&t, pb::StatusRequest {})).await.map(drop)
        }),
        // ---- Executions
        row("Executions/Create", Some(Outsider), Client, |f, t| async move {
            ExecutionsClient::new(f.channel.clone()).create(req(&t, create("echo"))).await.map(drop)
        }),
        row("Executions/Call", Some(Outsider), Client, |f, t| async move {
            let r = pb::CallRequest { create: Some(create("echo")), timeout_ms: 100 };
            ExecutionsClient::new(f.channel.clone()).call(req(&t, r)).await.map(drop)
        }),
        row("Executions/Wait", Some(Outsider), Client, |f, t| async move {
            let r = pb::WaitRequest { id: f.execution, timeout_ms: 100 };
            ExecutionsClient::new(f.channel.clone()).wait(req(&t, r)).await.map(drop)
        }),
        row("Executions/Get", Some(Outsider), Client, |f, t| async move {
            let r = pb::GetExecutionRequest { id: f.execution, ..Default::default() };
            ExecutionsClient::new(f.channel.clone()).get(req(&t, r)).await.map(drop)
        }),
        row("Executions/List", Some(Client), Operator, |f, t| async move {
            let r = pb::ListExecutionsRequest::default();
            ExecutionsClient::new(f.channel.clone()).list(req(&t, r)).await.map(drop)
        }),
        row("Executions/Cancel", Some(Outsider), Client, |f, t| async move {
            let r = pb::CancelExecutionRequest { id: f.execution, reason: "authz test".into() };
            ExecutionsClient::new(f.channel.clone()).cancel(req(&t, r)).await.map(drop)
        }),
        row("Executions/Listen", Some(Client), Agent, |f, t| async move {
            // The open, then the end of the agent's side: an opened session closes at once.
            let stream = futures::stream::iter([open_msg("echo", 100)]);
            let mut answer =
                ExecutionsClient::new(f.channel.clone()).listen(req(&t, stream)).await?.into_inner();
            answer.message().await.map(drop)
        }),
        row("Executions/Complete", Some(Client), Agent, |f, t| async move {
            let (execution_id, token) = f.assigned;
            let r = pb::Completion {
                execution_id,
                token,
                outcome: Some(pb::completion::Outcome::Result(pb::Payload {
                    codec: "json".into(),
                    data: b"1".to_vec(),
                })),
                effects: vec![],
            };
            ExecutionsClient::new(f.channel.clone()).complete(req(&t, r)).await.map(drop)
        }),
        row("Executions/ListSessions", None, Client, |f, t| async move {
            let r = pb::ListSessionsRequest::default();
            ExecutionsClient::new(f.channel.clone()).list_sessions(req(&t, r)).await.map(drop)
        }),
        // ---- Instances (of `inst`, which no session serves: starts and stops wait, briefly)
        row("Instances/Start", Some(Client), Operator, |f, t| async move {
            let r = pb::StartInstanceRequest {
                agent: "inst".into(),
                instance: "i1".into(),
                payload: json("1"),
                timeout_ms: 100,
                ..Default::default()
            };
            InstancesClient::new(f.channel.clone()).start(req(&t, r)).await.map(drop)
        }),
        row("Instances/Stop", Some(Client), Operator, |f, t| async move {
            let r = pb::StopInstanceRequest { agent: "inst".into(), instance: "i1".into(), timeout_ms: 100 };
            InstancesClient::new(f.channel.clone()).stop(req(&t, r)).await.map(drop)
        }),
        row("Instances/Get", Some(Outsider), Operator, |f, t| async move {
            let r =
                pb::GetInstanceRequest { agent: "inst".into(), instance: "i1".into(), ..Default::default() };
            InstancesClient::new(f.channel.clone()).get(req(&t, r)).await.map(drop)
        }),
        row("Instances/List", Some(Client), Operator, |f, t| async move {
            InstancesClient::new(f.channel.clone())
                .list(req(&t, pb::ListInstancesRequest::default()))
                .await
                .map(drop)
        }),
        // ---- Streams
        row("Streams/Create", Some(Outsider), Client, |f, t| async move {
            let r = pb::CreateStreamRequest { name: "app.new".into(), ..Default::default() };
            StreamsClient::new(f.channel.clone()).create(req(&t, r)).await.map(drop)
        }),
        row("Streams/Append", Some(Outsider), Client, |f, t| async move {
            let r = pb::AppendRequest {
                stream: "app.events".into(),
                items: vec![pb::NewItem { key: "k".into(), payload: json("2"), headers: vec![] }],
                ..Default::default()
            };
            StreamsClient::new(f.channel.clone()).append(req(&t, r)).await.map(drop)
        }),
        row("Streams/Read", Some(Outsider), Client, |f, t| async move {
            let r = pb::ReadRequest { stream: "app.events".into(), ..Default::default() };
            StreamsClient::new(f.channel.clone()).read(req(&t, r)).await.map(drop)
        }),
        row("Streams/LastByKey", Some(Outsider), Client, |f, t| async move {
            let r =
                pb::LastByKeyRequest { stream: "app.events".into(), key: "k".into(), ..Default::default() };
            StreamsClient::new(f.channel.clone()).last_by_key(req(&t, r)).await.map(drop)
        }),
        row("Streams/Info", Some(Outsider), Client, |f, t| async move {
            let r = pb::StreamInfoRequest { name: "app.events".into(), ..Default::default() };
            StreamsClient::new(f.channel.clone()).info(req(&t, r)).await.map(drop)
        }),
        row("Streams/List", None, Outsider, |f, t| async move {
            StreamsClient::new(f.channel.clone())
                .list(req(&t, pb::ListStreamsRequest::default()))
                .await
                .map(drop)
        }),
        row("Streams/Close", Some(Client), Operator, |f, t| async move {
            let r = pb::CloseStreamRequest { name: "app.closing".into(), ..Default::default() };
            StreamsClient::new(f.channel.clone()).close(req(&t, r)).await.map(drop)
        }),
        row("Streams/Delete", Some(Client), Operator, |f, t| async move {
            let r = pb::DeleteStreamRequest { name: "app.deleting".into() };
            StreamsClient::new(f.channel.clone()).delete(req(&t, r)).await.map(drop)
        }),
        row("Streams/CreateCursor", Some(Outsider), Client, |f, t| async move {
            let r = pb::CreateCursorRequest { stream: "app.events".into(), name: "c2".into(), config: None };
            StreamsClient::new(f.channel.clone()).create_cursor(req(&t, r)).await.map(drop)
        }),
        row("Streams/CursorInfo", Some(Outsider), Client, |f, t| async move {
            let r = pb::CursorInfoRequest {
                stream: "app.events".into(),
                name: "c1".into(),
                ..Default::default()
            };
            StreamsClient::new(f.channel.clone()).cursor_info(req(&t, r)).await.map(drop)
        }),
        row("Streams/ListCursors", Some(Outsider), Client, |f, t| async move {
            let r = pb::ListCursorsRequest { stream: "app.events".into(), ..Default::default() };
            StreamsClient::new(f.channel.clone()).list_cursors(req(&t, r)).await.map(drop)
        }),
        row("Streams/DeleteCursor", Some(Client), Operator, |f, t| async move {
            let r = pb::DeleteCursorRequest { stream: "app.events".into(), name: "c-deleting".into() };
            StreamsClient::new(f.channel.clone()).delete_cursor(req(&t, r)).await.map(drop)
        }),
        row("Streams/Ack", Some(Outsider), Client, |f, t| async move {
            let r = pb::AckRequest {
                stream: "app.events".into(),
                cursor: "c1".into(),
                acks: vec![pb::Delivery { seq: 1, token: 1 }],
                effects: vec![],
            };
            StreamsClient::new(f.channel.clone()).ack(req(&t, r)).await.map(drop)
        }),
        row("Streams/Listen", Some(Outsider), Client, |f, t| async move {
            let start = pb::ListenerMessage {
                kind: Some(pb::listener_message::Kind::Start(pb::StartListener {
                    stream: "app.events".into(),
                    ..Default::default()
                })),
            };
            let stream = futures::stream::iter([start]);
            StreamsClient::new(f.channel.clone()).listen(req(&t, stream)).await.map(drop)
        }),
        // ---- Leases
        row("Leases/Acquire", Some(Client), Agent, |f, t| async move {
            let r = pb::AcquireLeaseRequest {
                name: "app-lease".into(),
                holder: "h".into(),
                ttl_ms: 3_600_000,
                wait_ms: 0,
            };
            LeasesClient::new(f.channel.clone()).acquire(req(&t, r)).await.map(drop)
        }),
        row("Leases/Renew", Some(Client), Agent, |f, t| async move {
            let r = pb::RenewLeaseRequest { name: "app-lease".into(), token: 1, ttl_ms: 3_600_000 };
            LeasesClient::new(f.channel.clone()).renew(req(&t, r)).await.map(drop)
        }),
        row("Leases/Release", Some(Client), Agent, |f, t| async move {
            let r = pb::ReleaseLeaseRequest { name: "app-lease".into(), token: 1 };
            LeasesClient::new(f.channel.clone()).release(req(&t, r)).await.map(drop)
        }),
        row("Leases/Get", Some(Client), Agent, |f, t| async move {
            let r = pb::GetLeaseRequest { name: "app-lease".into(), ..Default::default() };
            LeasesClient::new(f.channel.clone()).get(req(&t, r)).await.map(drop)
        }),
        // Answers only the leases the caller may use.
        row("Leases/List", None, Outsider, |f, t| async move {
            LeasesClient::new(f.channel.clone())
                .list(req(&t, pb::ListLeasesRequest::default()))
                .await
                .map(drop)
        }),
        // ---- Schedules (a schedule makes calls: Call of its agent to change, ReadAgent to read)
        row("Schedules/Create", Some(Outsider), Client, |f, t| async move {
            SchedulesClient::new(f.channel.clone()).create(req(&t, schedule("app-made"))).await.map(drop)
        }),
        row("Schedules/Get", Some(Outsider), Client, |f, t| async move {
            let r = pb::GetScheduleRequest { name: "app-sched".into(), ..Default::default() };
            SchedulesClient::new(f.channel.clone()).get(req(&t, r)).await.map(drop)
        }),
        // Answers only the schedules the caller may read.
        row("Schedules/List", None, Outsider, |f, t| async move {
            let r = pb::ListSchedulesRequest::default();
            SchedulesClient::new(f.channel.clone()).list(req(&t, r)).await.map(drop)
        }),
        row("Schedules/Pause", Some(Outsider), Client, |f, t| async move {
            let r = pb::ScheduleRef { name: "app-sched".into() };
            SchedulesClient::new(f.channel.clone()).pause(req(&t, r)).await.map(drop)
        }),
        row("Schedules/Resume", Some(Outsider), Client, |f, t| async move {
            let r = pb::ScheduleRef { name: "app-sched".into() };
            SchedulesClient::new(f.channel.clone()).resume(req(&t, r)).await.map(drop)
        }),
        row("Schedules/Trigger", Some(Outsider), Client, |f, t| async move {
            let r = pb::ScheduleRef { name: "app-sched".into() };
            SchedulesClient::new(f.channel.clone()).trigger(req(&t, r)).await.map(drop)
        }),
        row("Schedules/Delete", Some(Outsider), Client, |f, t| async move {
            let r = pb::ScheduleRef { name: "app-sched-gone".into() };
            SchedulesClient::new(f.channel.clone()).delete(req(&t, r)).await.map(drop)
        }),
        // ---- Scaling
        row("Scaling/WatchDemand", Some(Client), Operator, |f, t| async move {
            let r = pb::WatchDemandRequest::default();
            ScalingClient::new(f.channel.clone()).watch_demand(req(&t, r)).await.map(drop)
        }),
        // ---- Tokens
        row("Tokens/Create", Some(Operator), Admin, |f, t| async move {
            let r =
                pb::CreateTokenRequest { name: "made".into(), role: "client".into(), ..Default::default() };
            TokensClient::new(f.channel.clone()).create(req(&t, r)).await.map(drop)
        }),
        row("Tokens/List", Some(Operator), Admin, |f, t| async move {
            TokensClient::new(f.channel.clone())
                .list(req(&t, pb::ListTokensRequest::default()))
                .await
                .map(drop)
        }),
        row("Tokens/Revoke", Some(Operator), Admin, |f, t| async move {
            let r = pb::RevokeTokenRequest { id: f.spare_token.clone() };
            TokensClient::new(f.channel.clone()).revoke(req(&t, r)).await.map(drop)
        }),
    ]
}

/// Every method of the descriptor set a token reaches (`Service/Method`): all but the
/// node-only ones.
fn public_methods() -> BTreeSet<String> {
    let set =
        prost_types::FileDescriptorSet::decode(weft_proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let mut methods = BTreeSet::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                if !weft_fabric::tls::is_node_only(&path) {
                    methods.insert(format!("{}/{}", service.name(), method.name()));
                }
            }
        }
    }
    methods
}

/// One HTTP route: method, the path as the OpenAPI document writes it, a concrete path and
/// body, who must be refused and who may.
struct Route {
    method: &'static str,
    template: &'static str,
    path: String,
    body: &'static str,
    denied: Option<Who>,
    allowed: Who,
}

fn http_routes(f: &Fixture) -> Vec<Route> {
    use Who::*;
    let e = f.execution;
    let route = |method, template, path: String, body, denied, allowed| Route {
        method,
        template,
        path,
        body,
        denied,
        allowed,
    };
    vec![
        route("GET", "/v1/cluster", "/v1/cluster".into(), "", None, Client),
        route("GET", "/v1/cluster/members", "/v1/cluster/members".into(), "", None, Client),
        route("GET", "/v1/sessions", "/v1/sessions".into(), "", None, Client),
        route("GET", "/v1/executions", "/v1/executions".into(), "", Some(Client), Operator),
        route(
            "POST",
            "/v1/executions",
            "/v1/executions".into(),
            r#"{"agent":"echo","delegate":"say"}"#,
            Some(Outsider),
            Client,
        ),
        route("GET", "/v1/executions/{id}", format!("/v1/executions/{e}"), "", Some(Outsider), Client),
        route(
            "GET",
            "/v1/executions/{id}/wait",
            format!("/v1/executions/{e}/wait?timeout_ms=100"),
            "",
            Some(Outsider),
            Client,
        ),
        route(
            "POST",
            "/v1/executions/{id}/cancel",
            format!("/v1/executions/{e}/cancel"),
            "{}",
            Some(Outsider),
            Client,
        ),
        route(
            "POST",
            "/v1/call/{agent}/{delegate}",
            "/v1/call/echo/say?timeout_ms=100".into(),
            "1",
            Some(Outsider),
            Client,
        ),
        route("GET", "/v1/instances", "/v1/instances".into(), "", Some(Client), Operator),
        route(
            "GET",
            "/v1/instances/{agent}/{id}",
            "/v1/instances/inst/i2".into(),
            "",
            Some(Outsider),
            Operator,
        ),
        route(
            "POST",
            "/v1/instances/{agent}/{id}",
            "/v1/instances/inst/i2?timeout_ms=100".into(),
            "1",
            Some(Client),
            Operator,
        ),
        route(
            "DELETE",
            "/v1/instances/{agent}/{id}",
            "/v1/instances/inst/i2?timeout_ms=100".into(),
            "",
            Some(Client),
            Operator,
        ),
        route("GET", "/v1/state/shared/{name}", "/v1/state/shared/app".into(), "", Some(Outsider), Client),
        route(
            "GET",
            "/v1/state/shared/{name}/{key}",
            "/v1/state/shared/app/k".into(),
            "",
            Some(Outsider),
            Client,
        ),
        route(
            "PUT",
            "/v1/state/shared/{name}/{key}",
            "/v1/state/shared/app/k".into(),
            "1",
            Some(Outsider),
            Client,
        ),
        route(
            "DELETE",
            "/v1/state/shared/{name}/{key}",
            "/v1/state/shared/app/k".into(),
            "",
            Some(Outsider),
            Client,
        ),
        route(
            "GET",
            "/v1/state/instance/{agent}/{instance}",
            "/v1/state/instance/echo/i1".into(),
            "",
            Some(Client),
            Agent,
        ),
        route(
            "GET",
            "/v1/state/instance/{agent}/{instance}/{key}",
            "/v1/state/instance/echo/i1/k".into(),
            "",
            Some(Client),
            Agent,
        ),
        route(
            "PUT",
            "/v1/state/instance/{agent}/{instance}/{key}",
            "/v1/state/instance/echo/i1/k".into(),
            "1",
            Some(Client),
            Agent,
        ),
        route(
            "DELETE",
            "/v1/state/instance/{agent}/{instance}/{key}",
            "/v1/state/instance/echo/i1/k".into(),
            "",
            Some(Client),
            Agent,
        ),
        route("GET", "/v1/streams", "/v1/streams".into(), "", None, Outsider),
        route(
            "POST",
            "/v1/streams/{name}/items",
            "/v1/streams/app.events/items".into(),
            r#"{"items":[{"payload":1}]}"#,
            Some(Outsider),
            Client,
        ),
        route(
            "GET",
            "/v1/streams/{name}/items",
            "/v1/streams/app.events/items".into(),
            "",
            Some(Outsider),
            Client,
        ),
        route(
            "GET",
            "/v1/streams/{name}/tail",
            "/v1/streams/app.events/tail".into(),
            "",
            Some(Outsider),
            Client,
        ),
        route(
            "POST",
            "/v1/tokens",
            "/v1/tokens".into(),
            r#"{"name":"made-http","role":"client"}"#,
            Some(Operator),
            Admin,
        ),
        route("GET", "/v1/tokens", "/v1/tokens".into(), "", Some(Operator), Admin),
        route(
            "DELETE",
            "/v1/tokens/{id}",
            format!("/v1/tokens/{}", f.spare_http_token),
            "",
            Some(Operator),
            Admin,
        ),
        // Outside the OpenAPI document.
        route("GET", "/metrics", "/metrics".into(), "", Some(Client), Operator),
        route("GET", "/v1/dashboard/snapshot", "/v1/dashboard/snapshot".into(), "", Some(Client), Operator),
        route("GET", "/v1/dashboard/events", "/v1/dashboard/events".into(), "", Some(Client), Operator),
        route(
            "GET",
            "/v1/dashboard/executions/{id}",
            format!("/v1/dashboard/executions/{e}"),
            "",
            Some(Client),
            Operator,
        ),
    ]
}

/// Routes served without a token.
const OPEN_ROUTES: &[&str] = &["/healthz", "/readyz", "/openapi.json", "/ui/", "/ui/app.js"];

/// The routes the OpenAPI document describes, as `METHOD template`.
async fn documented_routes(addr: &str) -> BTreeSet<String> {
    let (status, body) = http(addr, "GET", "/openapi.json", None, "", true).await;
    assert_eq!(status, 200, "the OpenAPI document is served without a token");
    let doc: serde_json::Value = serde_json::from_slice(&body).expect("the OpenAPI document is JSON");
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                routes.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    routes
}

/// One HTTP/1.1 request: the status, and the body when `whole` (else only the head is read, so
/// an event stream does not keep it waiting).
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
    whole: bool,
) -> (u16, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if !body.is_empty() {
        let content_type =
            if path.starts_with("/v1/state/") { "application/octet-stream" } else { "application/json" };
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).await.expect("send");
    stream.write_all(body.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let read = async {
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            raw.extend_from_slice(&buf[..n]);
            if n == 0 || (!whole && raw.windows(4).any(|w| w == b"\r\n\r\n")) {
                break;
            }
        }
    };
    tokio::time::timeout(PATIENCE, read).await.expect("an answer in time");
    let text = String::from_utf8_lossy(&raw);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let body = raw.windows(4).position(|w| w == b"\r\n\r\n").map_or(Vec::new(), |at| raw[at + 4..].to_vec());
    (status, body)
}

/// The node's last log index once it has been still for a moment (earlier rows' effects, such
/// as a session closing, are in by then).
async fn quiet_log(cluster: &Cluster) -> u64 {
    let index = || cluster.node(1).raft().metrics().borrow().last_log_index.unwrap_or(0);
    let mut last = index();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = index();
        if now == last {
            return now;
        }
        last = now;
    }
}

fn refused(code: Code) -> bool {
    matches!(code, Code::Unauthenticated | Code::PermissionDenied)
}

/// Writes a fresh admin token to a file for `auth_bootstrap_token_file`; returns the token.
pub(crate) fn bootstrap_token(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let token = weft_fabric::auth::Credential::generate().reveal();
    let path = dir.join("bootstrap.token");
    std::fs::write(&path, &token).expect("write the bootstrap token");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod 600");
    (path, token)
}

/// A token of `role` with the scope lists `[serve, call, namespaces, streams]`, made by
/// `admin`, expiring after `expires_in_ms` if given: (its text, its id).
pub(crate) async fn create_token(
    channel: &Channel,
    admin: &str,
    name: &str,
    role: &str,
    scopes: [&[&str]; 4],
    expires_in_ms: Option<u64>,
) -> (String, String) {
    let [serve, call, namespaces, streams] =
        scopes.map(|l| l.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let r = pb::CreateTokenRequest {
        name: name.into(),
        role: role.into(),
        serve,
        call,
        namespaces,
        streams,
        expires_in_ms,
    };
    let reply = TokensClient::new(channel.clone())
        .create(req(&Some(admin.to_owned()), r))
        .await
        .unwrap_or_else(|e| panic!("create token {name}: {e}"))
        .into_inner();
    (reply.token, reply.record.expect("a record").id)
}

async fn make_token(
    channel: &Channel,
    admin: &str,
    name: &str,
    role: &str,
    scopes: [&[&str]; 4],
) -> (String, String) {
    create_token(channel, admin, name, role, scopes, None).await
}

/// Waits until the bootstrap `admin` token works through `channel` (the leader makes it once
/// it leads).
pub(crate) async fn admin_ready(channel: &Channel, admin: &str) {
    let a = Some(admin.to_owned());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while TokensClient::new(channel.clone()).list(req(&a, pb::ListTokensRequest::default())).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the bootstrap admin token works in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn setup(cluster: &Cluster, admin: String) -> Fixture {
    let addr = cluster.node(1).addr().to_string();
    let channel = channel(&addr).await;
    let a = Some(admin.clone());
    admin_ready(&channel, &admin).await;
    let none: &[&str] = &[];
    let (operator, _) = make_token(&channel, &admin, "ops", "operator", [none, none, none, none]).await;
    let (agent, _) =
        make_token(&channel, &admin, "echo-agent", "agent", [&["echo"], none, &["app-"], none]).await;
    let (client, _) =
        make_token(&channel, &admin, "app-client", "client", [none, &["echo"], &["shared/app"], &["app."]])
            .await;
    let (outsider, _) = make_token(
        &channel,
        &admin,
        "outsider",
        "client",
        [none, &["other"], &["shared/other"], &["other."]],
    )
    .await;
    let (_, spare_token) = make_token(&channel, &admin, "spare", "client", [none, none, none, none]).await;
    let (_, spare_http_token) =
        make_token(&channel, &admin, "spare-http", "client", [none, none, none, none]).await;

    tracing::info!("fixtures: streams, a cursor, an execution, an agent session holding another");
    let streams = StreamsClient::new(channel.clone());
    for name in ["app.events", "app.closing", "app.deleting"] {
        streams
            .clone()
            .create(req(&a, pb::CreateStreamRequest { name: name.into(), ..Default::default() }))
            .await
            .expect("create stream");
    }
    let item = pb::NewItem { key: "k".into(), payload: json("1"), headers: vec![] };
    streams
        .clone()
        .append(req(
            &a,
            pb::AppendRequest { stream: "app.events".into(), items: vec![item], ..Default::default() },
        ))
        .await
        .expect("append");
    for cursor in ["c1", "c-deleting"] {
        let r = pb::CreateCursorRequest { stream: "app.events".into(), name: cursor.into(), config: None };
        streams.clone().create_cursor(req(&a, r)).await.expect("create cursor");
    }
    let executions = ExecutionsClient::new(channel.clone());
    let execution = executions.clone().create(req(&a, create("echo"))).await.expect("create").into_inner();
    let execution = execution.execution.expect("an execution").id;
    // The agent's own session: it is assigned the execution above, and holds it.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(open_msg("echo", 100)).await.expect("open");
    let outbound = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut inbound = executions
        .clone()
        .listen(req(&Some(agent.clone()), outbound))
        .await
        .expect("the agent token opens a session of echo")
        .into_inner();
    // Heartbeats keep it open past session_timeout_ms (its close would be a log entry).
    let heartbeats = tx.clone();
    tokio::spawn(async move {
        let beat = pb::AgentMessage { kind: Some(pb::agent_message::Kind::Heartbeat(pb::Heartbeat {})) };
        while heartbeats.send(beat.clone()).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    // Two assignments: the execution above (which rows wait for and cancel), and one the
    // `Complete` rows complete.
    let second = executions.clone().create(req(&a, create("echo"))).await.expect("create").into_inner();
    let second = second.execution.expect("an execution").id;
    let mut assigned = None;
    while assigned.is_none() {
        if let pb::fabric_message::Kind::Assignment(a) = next_kind(&mut inbound).await {
            assigned = a.execution.filter(|e| e.id == second).map(|e| (e.id, a.token));
        }
    }
    let schedules = SchedulesClient::new(channel.clone());
    for name in ["app-sched", "app-sched-gone"] {
        schedules.clone().create(req(&a, schedule(name))).await.expect("create schedule");
    }
    Fixture {
        addr,
        channel,
        tokens: vec![
            (Who::Admin, admin),
            (Who::Operator, operator),
            (Who::Agent, agent),
            (Who::Client, client),
            (Who::Outsider, outsider),
        ],
        execution,
        assigned: assigned.expect("an assignment"),
        spare_token,
        spare_http_token,
        _session: (tx, inbound),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_scopes_are_enforced_on_every_rpc_and_http_route() {
    init_tracing();
    let dir = tempfile::tempdir().expect("temp dir");
    let (file, admin) = bootstrap_token(dir.path());
    let cluster = Cluster::start(1, move |c| {
        c.auth = true;
        c.auth_bootstrap_token_file = Some(file.clone());
    })
    .await;
    let f = Arc::new(setup(&cluster, admin).await);

    tracing::info!("phase: the tables cover every public method and every route");
    let rows = grpc_rows();
    let listed: BTreeSet<String> = rows.iter().map(|r| r.method.to_owned()).collect();
    assert_eq!(rows.len(), listed.len(), "each method has one row");
    let public = public_methods();
    let missing: Vec<&String> = public.difference(&listed).collect();
    let stale: Vec<&String> = listed.difference(&public).collect();
    assert!(
        missing.is_empty(),
        "public methods with no row in this test (add one, and the check): {missing:?}"
    );
    assert!(stale.is_empty(), "rows for methods that do not exist: {stale:?}");
    let routes = http_routes(&f);
    let route_names: BTreeSet<String> =
        routes.iter().map(|r| format!("{} {}", r.method, r.template)).collect();
    let documented = documented_routes(&f.addr).await;
    let undocumented: Vec<&String> = documented.difference(&route_names).collect();
    assert!(
        undocumented.is_empty(),
        "routes of the OpenAPI document with no row in this test: {undocumented:?}"
    );

    tracing::info!("phase: every gRPC method");
    for row in &rows {
        let m = row.method;
        let before = quiet_log(&cluster).await;
        let anonymous = (row.call)(f.clone(), None).await;
        if m == "Cluster/NodeStatus" {
            // Nodes ask it of each other and hold no token: open, read-only.
            assert!(anonymous.is_ok(), "{m} is open: {anonymous:?}");
        } else {
            let e = anonymous.expect_err(&format!("{m} without a token"));
            assert_eq!(e.code(), Code::Unauthenticated, "{m} without a token: {e:?}");
        }
        if let Some(who) = row.denied {
            let e = (row.call)(f.clone(), Some(f.token(who))).await.expect_err(&format!("{m} as {who:?}"));
            assert_eq!(e.code(), Code::PermissionDenied, "{m} as {who:?}: {e:?}");
            assert!(e.message().contains("permission denied"), "{m}: the refusal says why: {e:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = cluster.node(1).raft().metrics().borrow().last_log_index.unwrap_or(0);
        assert_eq!(before, after, "{m}: the refused calls proposed nothing");
        let allowed = (row.call)(f.clone(), Some(f.token(row.allowed))).await;
        if let Err(e) = &allowed {
            assert!(!refused(e.code()), "{m} as {:?} is allowed: {e:?}", row.allowed);
        }
        tracing::info!(method = m, outcome = ?allowed.as_ref().map_err(|e| e.code()), "checked");
    }

    tracing::info!("phase: every HTTP route");
    for path in OPEN_ROUTES {
        let (status, _) = http(&f.addr, "GET", path, None, "", false).await;
        assert_eq!(status, 200, "{path} is open");
    }
    for r in &routes {
        let name = format!("{} {}", r.method, r.path);
        let before = quiet_log(&cluster).await;
        let (status, _) = http(&f.addr, r.method, &r.path, None, r.body, false).await;
        assert_eq!(status, 401, "{name} without a token");
        if let Some(who) = r.denied {
            let (status, body) = http(&f.addr, r.method, &r.path, Some(&f.token(who)), r.body, true).await;
            assert_eq!(status, 403, "{name} as {who:?}: {}", String::from_utf8_lossy(&body));
            assert!(
                String::from_utf8_lossy(&body).contains("PERMISSION_DENIED"),
                "{name}: a JSON error body"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = cluster.node(1).raft().metrics().borrow().last_log_index.unwrap_or(0);
        assert_eq!(before, after, "{name}: the refused requests proposed nothing");
        let (status, _) = http(&f.addr, r.method, &r.path, Some(&f.token(r.allowed)), r.body, false).await;
        assert!(status != 401 && status != 403, "{name} as {:?} is allowed, got {status}", r.allowed);
        tracing::info!(route = %name, status, "checked");
    }

    tracing::info!("phase: lists show what the token may read");
    let client = Some(f.token(Who::Client));
    let outsider = Some(f.token(Who::Outsider));
    let mine = pb::ListExecutionsRequest { agent: "echo".into(), ..Default::default() };
    let page = ExecutionsClient::new(f.channel.clone())
        .list(req(&client, mine))
        .await
        .expect("a client lists its agent's executions");
    assert!(page.into_inner().executions.iter().all(|e| e.agent == "echo"));
    let names = |page: pb::ListStreamsResponse| page.streams.into_iter().map(|s| s.name).collect::<Vec<_>>();
    let seen = names(
        StreamsClient::new(f.channel.clone())
            .list(req(&client, Default::default()))
            .await
            .expect("list")
            .into_inner(),
    );
    assert!(
        seen.contains(&"app.events".to_owned()) && seen.iter().all(|n| n.starts_with("app.")),
        "{seen:?}"
    );
    let seen = names(
        StreamsClient::new(f.channel.clone())
            .list(req(&outsider, Default::default()))
            .await
            .expect("list")
            .into_inner(),
    );
    assert!(seen.is_empty(), "the outsider may read no stream here: {seen:?}");
    let unknown = pb::GetExecutionRequest { id: 999_999, ..Default::default() };
    let e = ExecutionsClient::new(f.channel.clone())
        .get(req(&outsider, unknown))
        .await
        .expect_err("no such execution");
    assert_eq!(e.code(), Code::NotFound, "an unknown id is NOT_FOUND for everyone: {e:?}");
    let scheduled = |token: Option<String>| {
        let channel = f.channel.clone();
        async move {
            let page =
                SchedulesClient::new(channel).list(req(&token, pb::ListSchedulesRequest::default())).await;
            page.expect("list").into_inner().schedules.into_iter().map(|s| s.name).collect::<Vec<_>>()
        }
    };
    let seen = scheduled(client).await;
    assert!(seen.contains(&"app-sched".to_owned()), "the client reads echo's schedules: {seen:?}");
    let seen = scheduled(outsider).await;
    assert!(seen.is_empty(), "the outsider may read no schedule here: {seen:?}");

    cluster.shutdown().await;
}

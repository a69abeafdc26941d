//! Readiness: `/readyz` and the gRPC health service say whether a node can serve requests;
//! gRPC reflection describes the Weft services.

use std::time::{Duration, Instant};

use prost::Message as _;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::support::*;
use crate::writes::http_get;

/// Every Weft service a node serves, by its full gRPC name.
const WEFT_SERVICES: [&str; 9] = [
    "weft.cluster.v1.Raft",
    "weft.cluster.v1.Forward",
    "weft.fabric.v1.State",
    "weft.fabric.v1.Cluster",
    "weft.fabric.v1.Executions",
    "weft.fabric.v1.Instances",
    "weft.fabric.v1.Streams",
    "weft.fabric.v1.Leases",
    "weft.fabric.v1.Scaling",
];

async fn health_client(addr: &str) -> HealthClient<Channel> {
    HealthClient::new(channel(addr).await)
}

/// `grpc.health.v1.Health/Check` of `service` ("" for the whole server).
async fn health_check(addr: &str, service: &str) -> Result<ServingStatus, tonic::Status> {
    let reply = health_client(addr).await.check(HealthCheckRequest { service: service.into() }).await?;
    Ok(reply.into_inner().status())
}

/// Checks that the whole server and every Weft service report `want` on `addr`.
async fn assert_health(addr: &str, want: ServingStatus) {
    for service in std::iter::once("").chain(WEFT_SERVICES) {
        let got =
            health_check(addr, service).await.unwrap_or_else(|e| panic!("health of '{service}': {e:?}"));
        assert_eq!(got, want, "health of '{service}' on {addr}");
    }
}

/// How soon a node restarted alone must answer not ready once it serves HTTP: its quorum
/// timeout (2 × `election_timeout_max_ms`, 1 s by default) and a margin for a loaded machine.
const VERDICT_WITHIN: Duration = Duration::from_secs(2);
/// How long it must then stay not ready (it is alone: nothing can make it ready).
const STAYS_FOR: Duration = Duration::from_secs(3);
/// How often the test asks.
const ASK_EVERY: Duration = Duration::from_millis(100);

/// `GET path` once the node at `addr` accepts connections (waits up to [`PATIENCE`]).
async fn http_get_when_up(addr: &str, path: &str) -> (u16, String) {
    let deadline = Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "{addr} did not accept connections within {PATIENCE:?}");
        tokio::time::sleep(ASK_EVERY).await;
    }
    http_get(addr, path).await
}

/// Restarts node `id` of `procs` with the others down and checks that `/readyz` answers 503
/// within [`VERDICT_WITHIN`] of its first answer and keeps doing so for [`STAYS_FOR`]; the
/// last answer's body.
async fn restart_alone_and_expect_not_ready(procs: &mut ProcessCluster, id: u64) -> String {
    let addr = procs.addrs()[id as usize - 1].clone();
    procs.nodes_mut()[id as usize - 1].restart().unwrap();
    let (mut code, mut body) = http_get_when_up(&addr, "/readyz").await;
    let serving = Instant::now();
    tracing::info!(id, code, body = body.trim(), "first /readyz answer of the lone node");
    while code != 503 {
        assert!(
            serving.elapsed() < VERDICT_WITHIN,
            "node {id}, restarted without its peers, still answers {code} {body:?} {:?} after its \
             first answer",
            serving.elapsed()
        );
        tokio::time::sleep(ASK_EVERY).await;
        (code, body) = http_get(&addr, "/readyz").await;
    }
    tracing::info!(id, after = ?serving.elapsed(), body = body.trim(), "not ready");
    let until = Instant::now() + STAYS_FOR;
    while Instant::now() < until {
        tokio::time::sleep(ASK_EVERY).await;
        (code, body) = http_get(&addr, "/readyz").await;
        assert_eq!(code, 503, "node {id} is alone, yet became ready: {body}");
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_restarted_without_its_peers_is_not_ready() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut procs = spawn_cluster(dir.path(), 3, |o| o.args(["--cluster", "alone"]));
    let addrs = procs.addrs().to_vec();
    let leader = wait_for_leader_at(&addrs).await;
    put_retrying(&addrs[0], "shared/alone", "k", "v").await.unwrap().expect("acknowledged");
    tracing::info!(leader, "phase: a formed cluster: every node is ready");
    for addr in &addrs {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (code, body) = http_get(addr, "/readyz").await;
            if code == 200 {
                assert!(body.contains(&format!("leader is node {leader}")), "{body}");
                break;
            }
            assert!(Instant::now() < deadline, "{addr} not ready in a formed cluster: {body}");
            tokio::time::sleep(ASK_EVERY).await;
        }
        assert_health(addr, ServingStatus::Serving).await;
    }
    let unknown = health_check(&addrs[0], "weft.fabric.v1.NoSuchService").await;
    assert_eq!(unknown.map_err(|e| e.code()), Err(tonic::Code::NotFound), "an unknown service name");

    // kill -9, as a crash would: a graceful stop leaves the cluster (leave_on_shutdown).
    tracing::info!("phase: kill -9 every node; restart the old leader alone");
    procs.kill9_all();
    let body = restart_alone_and_expect_not_ready(&mut procs, leader).await;
    assert!(body.contains("has not heard from a quorum"), "{body}");
    assert_health(&addrs[leader as usize - 1], ServingStatus::NotServing).await;

    let follower = (1..=3u64).find(|id| *id != leader).unwrap();
    tracing::info!(follower, "phase: kill it; restart a former follower alone");
    procs.nodes_mut()[leader as usize - 1].kill9();
    let body = restart_alone_and_expect_not_ready(&mut procs, follower).await;
    assert!(body.starts_with("not ready: "), "{body}");
    assert_health(&addrs[follower as usize - 1], ServingStatus::NotServing).await;
    drop(procs);
}

/// The next status a `Watch` stream reports other than `skip`.
async fn next_status_other_than(
    stream: &mut tonic::Streaming<HealthCheckResponse>,
    skip: ServingStatus,
) -> ServingStatus {
    let next = async {
        loop {
            let reply = stream.message().await.expect("watch stream").expect("watch stream ended");
            if reply.status() != skip {
                return reply.status();
            }
        }
    };
    tokio::time::timeout(PATIENCE, next).await.unwrap_or_else(|_| panic!("no change from {skip:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_watch_follows_the_quorum() {
    init_tracing();
    let mut cluster = Cluster::start(3, |_| {}).await;
    let leader = cluster.wait_for_leader().await;
    let addr = cluster.addrs[leader as usize - 1].clone();
    put_retrying(&addr, "shared/watch", "k", "v").await.unwrap().unwrap();

    tracing::info!(leader, "phase: watch the leader's health");
    let mut client = health_client(&addr).await;
    let mut watch = client
        .watch(HealthCheckRequest { service: "weft.fabric.v1.State".into() })
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(next_status_other_than(&mut watch, ServingStatus::NotServing).await, ServingStatus::Serving);

    tracing::info!("phase: stop both followers; the watch sees NOT_SERVING");
    for id in (1..=3).filter(|id| *id != leader) {
        cluster.stop(id).await;
    }
    assert_eq!(next_status_other_than(&mut watch, ServingStatus::Serving).await, ServingStatus::NotServing);
    let (code, body) = http_get(&addr, "/readyz").await;
    assert_eq!(code, 503, "/readyz and health agree: {body}");

    tracing::info!("phase: the followers come back; SERVING again");
    for id in (1..=3).filter(|id| *id != leader) {
        cluster.restart(id).await;
    }
    let status = next_status_other_than(&mut watch, ServingStatus::NotServing).await;
    assert_eq!(status, ServingStatus::Serving);
    drop(watch);
    cluster.shutdown().await;
}

/// Asks one reflection version (`v1` or `v1alpha`, same messages) for the service list and
/// for the file that defines `weft.fabric.v1.State`; the service names and that file.
macro_rules! reflect {
    ($version:ident, $addr:expr) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
        let ask = |request| ServerReflectionRequest { host: String::new(), message_request: Some(request) };
        let requests = vec![
            ask(MessageRequest::ListServices(String::new())),
            ask(MessageRequest::FileContainingSymbol("weft.fabric.v1.State".into())),
        ];
        let mut client = ServerReflectionClient::new(channel($addr).await);
        let mut replies = client
            .server_reflection_info(futures::stream::iter(requests))
            .await
            .expect("reflection call")
            .into_inner();
        let mut services = Vec::new();
        let mut files = Vec::new();
        while let Some(reply) = replies.message().await.expect("reflection reply") {
            match reply.message_response.expect("a response") {
                MessageResponse::ListServicesResponse(list) => {
                    services.extend(list.service.into_iter().map(|s| s.name))
                }
                MessageResponse::FileDescriptorResponse(fd) => files.extend(
                    fd.file_descriptor_proto
                        .iter()
                        .map(|b| prost_types::FileDescriptorProto::decode(b.as_slice()).expect("a file")),
                ),
                other => panic!("unexpected reflection reply {other:?}"),
            }
        }
        (services, files)
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha_describe_the_weft_services() {
    init_tracing();
    let cluster = Cluster::start(1, |_| {}).await;
    let addr = cluster.addrs[0].clone();
    let v1 = reflect!(v1, &addr);
    let v1alpha = reflect!(v1alpha, &addr);
    for (version, (services, files)) in [("v1", v1), ("v1alpha", v1alpha)] {
        tracing::info!(version, ?services, "phase: reflection lists the services");
        for name in WEFT_SERVICES.iter().chain(&["grpc.health.v1.Health"]) {
            assert!(services.iter().any(|s| s == name), "{version}: {name} missing from {services:?}");
        }
        let state = files.iter().find(|f| f.name() == "weft/fabric/v1/state.proto").unwrap_or_else(|| {
            panic!("{version}: no state.proto among {:?}", files.iter().map(|f| f.name()).collect::<Vec<_>>())
        });
        assert_eq!(state.package(), "weft.fabric.v1");
        assert!(state.service.iter().any(|s| s.name() == "State"), "{version}: {state:?}");
        let put = state.service.iter().flat_map(|s| &s.method).find(|m| m.name() == "Put");
        assert!(put.is_some(), "{version}: State has no Put method");
    }
    cluster.shutdown().await;
}

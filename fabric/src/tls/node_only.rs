//! Services only nodes may call: with TLS on, a request to one of them is answered before its
//! body is read unless the connection presented a node certificate of the cluster CA
//! (`UNAUTHENTICATED` without a certificate, `PERMISSION_DENIED` with another one).
//!
//! The node-only services: `weft.cluster.v1.Raft` (votes, replication, snapshots),
//! `weft.cluster.v1.Forward` (writes and read indexes forwarded to the leader), and
//! `weft.fabric.v1.Cluster/PrepareBootstrap` (a node's promise to join a new cluster).
//! `Cluster/NodeStatus`, which nodes also ask each other, stays open to clients: it is a
//! read-only report that tools (the jepsen harness, tests) use, and a node checks the
//! certificate of the peer it asks (it must be a node certificate).

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};

use super::{NODE_MARKER, PeerAddr};

/// Path prefixes of the gRPC methods only nodes may call.
pub fn node_only_paths() -> [String; 3] {
    use weft_proto::cluster::v1::{forward_server, raft_server};
    use weft_proto::fabric::v1::cluster_server;
    [
        format!("/{}/", raft_server::SERVICE_NAME),
        format!("/{}/", forward_server::SERVICE_NAME),
        format!("/{}/PrepareBootstrap", cluster_server::SERVICE_NAME),
    ]
}

/// The services whose every method is node-only.
const NODE_ONLY_SERVICES: [&str; 2] = {
    use weft_proto::cluster::v1::{forward_server, raft_server};
    [raft_server::SERVICE_NAME, forward_server::SERVICE_NAME]
};
/// The node-only method of a service that clients may otherwise call: (service, method).
const NODE_ONLY_METHOD: (&str, &str) =
    (weft_proto::fabric::v1::cluster_server::SERVICE_NAME, "PrepareBootstrap");

/// Whether `path` names a node-only method (one of [`node_only_paths`]). It runs on every
/// request of a node with TLS or auth on, so it compares slices and allocates nothing.
pub fn is_node_only(path: &str) -> bool {
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return false;
    };
    NODE_ONLY_SERVICES.contains(&service)
        || (service == NODE_ONLY_METHOD.0 && method.starts_with(NODE_ONLY_METHOD.1))
}

/// Axum middleware for the gRPC routes of a node with TLS on: refuses node-only methods to
/// callers without a node certificate.
pub async fn require_node(request: Request, next: Next) -> Response {
    if !is_node_only(request.uri().path()) {
        return next.run(request).await;
    }
    let peer = request.extensions().get::<ConnectInfo<PeerAddr>>().map(|c| &c.0);
    let status = match peer.and_then(|p| p.identity.as_deref()) {
        Some(id) if id.node => return next.run(request).await,
        Some(id) => tonic::Status::permission_denied(format!(
            "{} is for cluster nodes only: the client certificate ({}) is not a node certificate (no URI SAN \
             {NODE_MARKER})",
            request.uri().path(),
            id.describe()
        )),
        None => tonic::Status::unauthenticated(format!(
            "{} is for cluster nodes only: connect with a node certificate of the cluster CA (none was presented)",
            request.uri().path()
        )),
    };
    tracing::debug!(path = %request.uri().path(), remote = ?peer.map(|p| p.remote), %status, "refused a node-only call");
    status.into_http::<axum::body::Body>().into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_node_only_agrees_with_the_listed_prefixes() {
        let paths = [
            "/weft.cluster.v1.Raft/AppendEntries",
            "/weft.cluster.v1.Raft/",
            "/weft.cluster.v1.Forward/Write",
            "/weft.fabric.v1.Cluster/PrepareBootstrap",
            "/weft.fabric.v1.Cluster/NodeStatus",
            "/weft.fabric.v1.Cluster/Status",
            "/weft.fabric.v1.State/Put",
            "/weft.cluster.v1.Raft",
            "/weft.cluster.v1.RaftX/AppendEntries",
            "weft.cluster.v1.Raft/AppendEntries",
            "/healthz",
            "/",
            "",
        ];
        for path in paths {
            let listed = node_only_paths().iter().any(|p| path.starts_with(p.as_str()));
            assert_eq!(is_node_only(path), listed, "{path}");
        }
        assert!(is_node_only("/weft.cluster.v1.Raft/Vote"));
        assert!(!is_node_only("/weft.fabric.v1.Executions/Call"));
    }
}

//! Asking nodes for the cluster status (the `Cluster/Status` RPC), and bounded waits until a
//! node reports what the caller needs: a leader, a membership.

use std::time::{Duration, Instant};

use tonic::transport::Endpoint;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::cluster_client::ClusterClient;

use super::Error;

/// Bound on one node's answer, connecting included: a node that takes longer counts as not
/// answering.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a wait asks the nodes again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The cluster status as the node at `addr` reports it; `None` if it does not answer within
/// [`STATUS_TIMEOUT`].
pub async fn status_at(addr: &str) -> Option<pb::ClusterStatus> {
    status_over(addr, None).await
}

/// [`status_at`] over TLS with `tls` when given.
pub async fn status_over(addr: &str, tls: Option<&weft_agent::Tls>) -> Option<pb::ClusterStatus> {
    let ask = async {
        let endpoint = Endpoint::from_shared(weft_agent::endpoint_uri(addr, tls.is_some()).ok()?)
            .ok()?
            .connect_timeout(STATUS_TIMEOUT);
        let channel = match tls {
            Some(tls) => tls.connect(endpoint).await.ok()?,
            None => endpoint.connect().await.ok()?,
        };
        let mut request = tonic::Request::new(pb::StatusRequest {});
        // The node gives up too, rather than keep asking its members for a caller that left.
        request.set_timeout(STATUS_TIMEOUT);
        ClusterClient::new(channel).status(request).await.ok().map(tonic::Response::into_inner)
    };
    tokio::time::timeout(STATUS_TIMEOUT, ask).await.ok().flatten()
}

/// The cluster status the first of `addrs` to answer reports (they are asked in turn).
pub async fn cluster_status(addrs: &[String]) -> Option<pb::ClusterStatus> {
    for addr in addrs {
        if let Some(status) = status_at(addr).await {
            return Some(status);
        }
    }
    None
}

/// Asks the nodes at `addrs` in turn, again every [`POLL_INTERVAL`], until one reports a
/// status that passes `check`, and returns it; [`Error::Timeout`] naming `what` after `within`.
pub async fn wait_for_status(
    addrs: &[String],
    within: Duration,
    what: &str,
    check: impl Fn(&pb::ClusterStatus) -> bool,
) -> Result<pb::ClusterStatus, Error> {
    let deadline = Instant::now() + within;
    let mut last = None;
    loop {
        for addr in addrs {
            if let Some(status) = status_at(addr).await {
                if check(&status) {
                    return Ok(status);
                }
                last = Some(status);
            }
        }
        if Instant::now() >= deadline {
            let details = match last {
                Some(s) => format!(" at {addrs:?}; last status: {s:?}"),
                None => format!(" at {addrs:?}; no node answered"),
            };
            return Err(Error::Timeout { what: what.into(), within, details });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits until a node of `addrs` reports a leader; the leader's id.
pub async fn wait_for_leader(addrs: &[String], within: Duration) -> Result<u64, Error> {
    let status = wait_for_status(addrs, within, "a leader", |s| s.leader_id != 0).await?;
    Ok(status.leader_id)
}

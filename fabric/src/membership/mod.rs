//! Membership: nodes find each other by SWIM gossip (foca over UDP), a new cluster forms from
//! gossip, and the leader turns gossip into Raft membership changes.
//!
//! ```text
//!   node A ◄──UDP gossip──► node B ◄──UDP gossip──► node C      (every node: gossip::Service)
//!     │ no Raft log yet?  bootstrap: wait for N, one node initializes Raft with N voters
//!     │ leader?           reconciler: alive → learner → voter; down > grace (or left) → removed
//!     │ member moved?     relocation: reach it at its new address; the reconciler rewrites it
//!     ▼
//!   openraft membership (replicated in the log)
//! ```
//!
//! # Layout
//! - [`identity`]: a node's gossip identity (id, address, generation, leaving).
//! - [`codec`]: foca's messages on bincode.
//! - [`packet`]: the frame around them on the wire: format, cluster, and the MAC or encryption
//!   with the cluster's gossip key; refuses what fails before foca sees it.
//! - [`keys`]: gossip keys: parsing (file or list), derivation, making a fresh one.
//! - [`gossip`]: the UDP service driving foca; publishes the [`gossip::View`].
//! - `bootstrap`: forming a cluster (`--bootstrap-expect`) or waiting to be added.
//! - `election_guard`: a node removed while away does not disrupt the cluster on return.
//! - `reconciler`: on the leader, one membership change at a time.
//! - `relocation`: a member restarted at another address is reached there at once.

pub(crate) mod bootstrap;
pub mod codec;
pub(crate) mod election_guard;
pub mod gossip;
pub mod identity;
pub mod keys;
pub mod packet;
pub(crate) mod reconciler;
pub(crate) mod relocation;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::cluster_client::ClusterClient;

/// What the rest of the node sees of membership; cheap to clone.
#[derive(Clone)]
pub struct Handle {
    /// The gossip service.
    pub gossip: gossip::Handle,
    /// Joining and bootstrap state.
    pub(crate) bootstrap: Arc<bootstrap::State>,
    /// The reconciler's counters.
    pub(crate) reconciler: Arc<reconciler::Counters>,
    /// Verified current addresses of members whose Raft membership entry is stale.
    pub(crate) addresses: crate::raft::addresses::Addresses,
    /// How this node dials its peers (plain, or mutual TLS).
    pub(crate) dialer: crate::tls::Dialer,
}

/// A lazily connecting channel to a peer's gRPC port, every call bounded by `timeout`.
fn peer_channel(
    dialer: &crate::tls::Dialer,
    addr: SocketAddr,
    timeout: Duration,
) -> tonic::transport::Channel {
    dialer
        .channel(&addr.to_string(), |e| e.connect_timeout(timeout).timeout(timeout))
        .expect("a socket address is a valid URI")
}

/// A peer's own status, or None if it does not answer within `timeout`.
async fn peer_status(
    dialer: &crate::tls::Dialer,
    addr: SocketAddr,
    timeout: Duration,
) -> Option<pb::NodeStatusReply> {
    let mut client = ClusterClient::new(peer_channel(dialer, addr, timeout));
    let reply = tokio::time::timeout(timeout, client.node_status(pb::StatusRequest {})).await.ok()?.ok()?;
    Some(reply.into_inner())
}

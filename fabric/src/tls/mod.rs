//! TLS on the node's one port, mutual TLS between nodes, and development certificates.
//!
//! ```text
//!   client / agent ──TLS (client cert optional)──┐
//!                                                ├─► Listener ─► axum (gRPC + HTTP)
//!   peer node ──mTLS (node certificate)──────────┘       │ ConnectInfo<PeerAddr>
//!                                                         ▼
//!                          node-only methods (Raft, Forward, PrepareBootstrap):
//!                          refused unless the peer's certificate is a node certificate
//!   this node ──Dialer (https, own node cert; peer must present a node cert)──► peers
//! ```
//!
//! Every certificate is checked against the cluster CA (`tls_ca_file`): one from another CA
//! fails the handshake. A node certificate is one of that CA carrying the URI SAN
//! [`NODE_MARKER`] (`weft certs node` puts it in); client certificates (`weft certs client`)
//! carry [`CLIENT_MARKER`] instead, which grants nothing more than having no certificate.
//!
//! # Layout
//! - `store`: [`Store`], the CA, certificate and key read from their [`Files`], read again
//!   when they change on disk.
//! - `listener`: [`Listener`], plain or TLS connections for `axum::serve`, handshakes off
//!   the accept loop; [`PeerAddr`], who is at the other end.
//! - `identity`: [`PeerIdentity`], what a verified certificate says (node or not, name, serial).
//! - `node_only`: the middleware that keeps node-to-node methods for nodes.
//! - [`issue`]: making a development CA and node and client certificates (`weft certs`).

mod identity;
pub mod issue;
mod listener;
mod node_only;
mod store;

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

pub use identity::PeerIdentity;
pub use listener::{HANDSHAKE_TIMEOUT, Io, Listener, MAX_HANDSHAKES, PeerAddr};
pub use node_only::{is_node_only, node_only_paths, require_node};
pub use store::{Error, Files, Reload, Store};

/// The URI SAN that makes a certificate of the cluster CA a node certificate.
pub const NODE_MARKER: &str = "urn:weft:node";
/// The URI SAN `weft certs client` puts in client certificates (informative only).
pub const CLIENT_MARKER: &str = "urn:weft:client";

/// Shortest interval between looks at the TLS files.
pub const MIN_RELOAD_INTERVAL: Duration = Duration::from_millis(100);

/// How this node dials its peers (Raft, forwarding, status probes, bootstrap): plain
/// `http://`, or `https://` presenting its node certificate and accepting only peers with a
/// node certificate of the cluster CA. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Dialer {
    tls: Option<weft_agent::Tls>,
}

impl Dialer {
    /// Plain connections.
    pub fn plain() -> Self {
        Self { tls: None }
    }

    /// TLS connections with `store`'s certificate and CA (as they are at each handshake).
    pub fn tls(store: &Store) -> Self {
        Self { tls: Some(weft_agent::Tls::from_config(store.client_config())) }
    }

    /// Whether connections are TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A lazily connecting channel to the peer at `addr` (HOST:PORT), with the settings
    /// `configure` adds (timeouts, keep-alive).
    pub fn channel(
        &self,
        addr: &str,
        configure: impl FnOnce(Endpoint) -> Endpoint,
    ) -> Result<Channel, tonic::transport::Error> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let endpoint = configure(Endpoint::from_shared(format!("{scheme}://{addr}"))?);
        Ok(match &self.tls {
            Some(tls) => tls.channel(endpoint),
            None => endpoint.connect_lazy(),
        })
    }
}

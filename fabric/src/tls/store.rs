//! The node's TLS material, read from its files (CA, certificate, key) and read again when
//! they change on disk.
//!
//! ```text
//!   tls_ca_file ─┐   load: parse, key matches cert, cert chains to the CA and is a node
//!   tls_cert_file├─► certificate ──► Loaded { server config, own key, CA roots }
//!   tls_key_file ┘        ▲                      │ swapped whole (RwLock<Arc<_>>)
//!                         │ every tls_reload_interval_ms: mtime or size changed?
//!   reload task ──────────┘   a bad new set is refused with a warning; the old one stays
//! ```
//!
//! The server takes the current configuration for each new connection; the node's own
//! client side (Raft, forwarding, probes) has one rustls configuration whose certificate
//! resolver and verifier read the current material on each handshake. Connections already
//! open keep what they were opened with.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use tokio_util::sync::CancellationToken;
use weft_agent::tls::{parse_certs, parse_key, provider, read_pem, roots};

use super::{NODE_MARKER, PeerIdentity};

/// ALPN protocols the server offers: gRPC needs HTTP/2; browsers and curl may use HTTP/1.1.
const SERVER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The node's TLS files (config `tls_ca_file`, `tls_cert_file`, `tls_key_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// PEM: the cluster CA (one or more certificates), which every node and client
    /// certificate must chain to.
    pub ca: PathBuf,
    /// PEM: this node's certificate (a node certificate, see [`NODE_MARKER`]), then any
    /// intermediates.
    pub cert: PathBuf,
    /// PEM: the private key of `cert`.
    pub key: PathBuf,
}

/// Why TLS files were refused. The message names the file and the problem, never a key.
#[derive(Debug, Clone, thiserror::Error)]
#[error("TLS: {0}")]
pub struct Error(String);

/// What was read from the files, and when they were last changed.
struct Loaded {
    stamp: Stamp,
    key: Arc<CertifiedKey>,
    roots: Arc<rustls::RootCertStore>,
    server_config: Arc<ServerConfig>,
    own: PeerIdentity,
}

/// The modification time and size of each file: a change in any means read them again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp([(Option<SystemTime>, u64); 3]);

impl Stamp {
    fn of(files: &Files) -> std::io::Result<Self> {
        let one = |p: &Path| std::fs::metadata(p).map(|m| (m.modified().ok(), m.len()));
        Ok(Self([one(&files.ca)?, one(&files.cert)?, one(&files.key)?]))
    }
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("Loaded").field("own", &self.own).finish_non_exhaustive()
    }
}

type Current = Arc<RwLock<Arc<Loaded>>>;

/// The node's TLS material; cheap to clone.
#[derive(Clone)]
pub struct Store {
    files: Files,
    current: Current,
    /// The stamp of the last set of files refused, so one bad set is warned about once.
    refused: Arc<Mutex<Option<Stamp>>>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("files", &self.files).field("serial", &self.serial()).finish()
    }
}

/// What a look at the files found.
#[derive(Debug)]
pub enum Reload {
    /// Nothing changed (or the change was refused before).
    Unchanged,
    /// New files were read and are used from now on; the new certificate's serial.
    Reloaded(String),
    /// New files were refused; the old ones stay.
    Refused(Error),
}

fn load(files: &Files) -> Result<Loaded, Error> {
    let stamp = Stamp::of(files).map_err(|e| Error(format!("cannot read the TLS files: {e}")))?;
    let provider = provider();
    let ca_what = format!("tls_ca_file {}", files.ca.display());
    let cert_what = format!("tls_cert_file {}", files.cert.display());
    let key_what = format!("tls_key_file {}", files.key.display());
    let ca = parse_certs(&read_pem(&files.ca, "tls_ca_file").map_err(Error)?, &ca_what).map_err(Error)?;
    let chain =
        parse_certs(&read_pem(&files.cert, "tls_cert_file").map_err(Error)?, &cert_what).map_err(Error)?;
    let key = parse_key(&read_pem(&files.key, "tls_key_file").map_err(Error)?, &key_what).map_err(Error)?;
    let roots = Arc::new(roots(&ca, &ca_what).map_err(Error)?);
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error(format!("{ca_what}: {e}")))?;
    let certified = CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider)
        .map_err(|e| Error(format!("{key_what} is not the key of {cert_what}: {e}")))?;
    let own = PeerIdentity::from_der(&chain[0])
        .ok_or_else(|| Error(format!("{cert_what}: the certificate does not parse")))?;
    if !own.node {
        return Err(Error(format!(
            "{cert_what} is not a node certificate (it has no URI SAN {NODE_MARKER}), so other nodes would \
             refuse it: make one with `weft certs node`"
        )));
    }
    // Peers check this node's certificate as a client certificate too: check it the same way.
    client_verifier
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map_err(|e| Error(format!("{cert_what} does not verify against {ca_what}: {e}")))?;
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error(e.to_string()))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain, key)
        .map_err(|e| Error(format!("{cert_what}: {e}")))?;
    server.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Loaded { stamp, key: Arc::new(certified), roots, server_config: Arc::new(server), own })
}

impl Store {
    /// Reads `files`; refused if one is missing or unreadable, the key does not match the
    /// certificate, or the certificate is not a node certificate of the CA.
    pub fn load(files: Files) -> Result<Self, Error> {
        let loaded = load(&files)?;
        let current: Current = Arc::new(RwLock::new(Arc::new(loaded)));
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerVerifier {
                current: current.clone(),
                algorithms: provider().signature_verification_algorithms,
            }))
            .with_client_cert_resolver(Arc::new(OwnCertificate { current: current.clone() }));
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self { files, current, refused: Arc::default(), client: Arc::new(client) })
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The server configuration for a new connection.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.loaded().server_config.clone()
    }

    /// The configuration this node dials its peers with: it presents its own certificate and
    /// accepts only node certificates of the cluster CA (whatever name they carry: peers
    /// are dialed at gossip's IP addresses).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    /// The serial number of the certificate in use.
    pub fn serial(&self) -> String {
        self.loaded().own.serial.clone()
    }

    /// The files.
    pub fn files(&self) -> &Files {
        &self.files
    }

    /// Reads the files again if they changed since they were last read (or refused).
    pub fn reload_if_changed(&self) -> Reload {
        let Ok(stamp) = Stamp::of(&self.files) else {
            // Mid-replacement (a file renamed away); the next look will see the new one.
            return Reload::Unchanged;
        };
        if stamp == self.loaded().stamp {
            return Reload::Unchanged;
        }
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if refused.as_ref() == Some(&stamp) {
            return Reload::Unchanged;
        }
        match load(&self.files) {
            Ok(loaded) => {
                let serial = loaded.own.serial.clone();
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
                *refused = None;
                Reload::Reloaded(serial)
            }
            Err(e) => {
                *refused = Some(stamp);
                Reload::Refused(e)
            }
        }
    }

    /// Looks at the files every `interval` until `shutdown`, logging what changed.
    /// Each change (taken or refused) is a configuration reload, noted in the audit trail.
    pub(crate) async fn run(
        self,
        interval: Duration,
        notes: crate::audit_notes::Notes,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let store = self.clone();
            // File reads and certificate checks are blocking work.
            let Ok(outcome) = tokio::task::spawn_blocking(move || store.reload_if_changed()).await else {
                continue;
            };
            match outcome {
                Reload::Unchanged => {}
                Reload::Reloaded(serial) => {
                    tracing::info!(%serial, "TLS files changed: new connections use the new certificate");
                    notes.record(
                        "config.reload",
                        format!("TLS files: certificate serial {serial}"),
                        "ok".into(),
                    );
                }
                Reload::Refused(error) => {
                    tracing::warn!(
                        %error,
                        serial = %self.serial(),
                        "TLS files changed but were refused; keeping the current certificate"
                    );
                    notes.record(
                        "config.reload",
                        format!("TLS files: kept certificate serial {}", self.serial()),
                        format!("refused: {error}"),
                    );
                }
            }
        }
    }
}

/// The node's own certificate, for the client side of node-to-node connections.
#[derive(Debug)]
struct OwnCertificate {
    current: Current,
}

impl rustls::client::ResolvesClientCert for OwnCertificate {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Checks a peer's server certificate: it chains to the current CA and is a node
/// certificate. The name is not checked: peers dial each other at the IP addresses gossip
/// reports, so a node is recognised by its certificate's node marker, not by its name.
#[derive(Debug)]
struct PeerVerifier {
    current: Current,
    algorithms: WebPkiSupportedAlgorithms,
}

/// A peer presented a certificate of the cluster CA that is not a node certificate.
#[derive(Debug, thiserror::Error)]
#[error("the peer's certificate ({0}) is not a node certificate (no URI SAN {NODE_MARKER})")]
struct NotANode(String);

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let roots = self.current.read().unwrap_or_else(|p| p.into_inner()).roots.clone();
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(&cert, &roots, intermediates, now, self.algorithms.all)?;
        match PeerIdentity::from_der(end_entity) {
            Some(id) if id.node => Ok(ServerCertVerified::assertion()),
            Some(id) => Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                rustls::OtherError(Arc::new(NotANode(id.describe()))),
            ))),
            None => Err(rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

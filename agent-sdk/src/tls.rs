//! TLS to the fabric: [`Tls`] holds what a client trusts (the cluster's CA) and, optionally,
//! the certificate it presents; endpoints then use `https://`.
//!
//! ```text
//!   Client / Worker ──https──► node:7400     the node's certificate must chain to the CA
//!     (Tls: CA, optional client cert+key)    (and name the host or IP the endpoint gives)
//! ```
//!
//! The SDK does TLS itself (rustls with the ring provider, through a connector of its own),
//! not through tonic's TLS features, so that a failed handshake says why (which certificate,
//! which check) and is not retried as if the node were down.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use crate::Error;

/// Environment variables [`Tls::from_env`] reads (workers read them in
/// [`WorkerBuilder::from_env`](crate::WorkerBuilder::from_env); the `weft` CLI too).
pub mod env {
    /// PEM file of the CA that signed the nodes' certificates. Setting it turns TLS on.
    pub const CA: &str = "WEFT_TLS_CA";
    /// PEM file of this process's certificate (optional; with [`KEY`]).
    pub const CERT: &str = "WEFT_TLS_CERT";
    /// PEM file of the private key of [`CERT`].
    pub const KEY: &str = "WEFT_TLS_KEY";
}

/// Largest PEM file read (a CA bundle, a certificate chain, a key).
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// ALPN protocols offered: gRPC is HTTP/2.
const ALPN_H2: &[u8] = b"h2";

/// TLS settings of a client: the CA the nodes' certificates must chain to, and optionally a
/// client certificate. Cheap to clone; its `Debug` shows no key.
///
/// ```no_run
/// # fn demo() -> Result<(), weft_agent::Error> {
/// use weft_agent::{Client, Tls};
/// let tls = Tls::from_files("certs/ca.pem", None)?;
/// let client = Client::builder(["node1.example:7400"]).tls(Some(tls)).build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Tls {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("client_certificate", &self.config.client_auth_cert_resolver.has_certs())
            .finish()
    }
}

/// The ring provider: the one crypto backend Weft builds with (rustls 0.23.48 deprecates it
/// for lacking post-quantum key exchange; aws-lc-rs, which has that, needs cmake and a C
/// toolchain to build, so Weft stays on ring for now).
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM file of at most [`MAX_PEM_BYTES`]; the error names the file and `what` it is.
pub fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot read the {what} file {}: {e}", path.display()))?;
    if meta.len() > MAX_PEM_BYTES {
        return Err(format!(
            "the {what} file {} is {} bytes; at most {MAX_PEM_BYTES}",
            path.display(),
            meta.len()
        ));
    }
    std::fs::read(path).map_err(|e| format!("cannot read the {what} file {}: {e}", path.display()))
}

/// Every certificate in PEM `bytes`; an error if there is none or one does not parse.
pub fn parse_certs(bytes: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what}: not a PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(certs)
}

/// The private key in PEM `bytes` (PKCS#8, PKCS#1 or SEC1). The error never shows the key.
pub fn parse_key(bytes: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("{what}: holds no PEM private key (-----BEGIN PRIVATE KEY-----)")
        }
        _ => format!("{what}: not a readable PEM private key"),
    })
}

/// A root store holding every certificate of the CA file.
pub fn roots(ca: &[CertificateDer<'static>], what: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca {
        roots.add(cert.clone()).map_err(|e| format!("{what}: not a usable CA certificate: {e}"))?;
    }
    Ok(roots)
}

impl Tls {
    /// Trust the CA in PEM `ca_pem`; present the certificate chain and key in
    /// `identity` (PEM certificate(s), PEM key) when given.
    pub fn from_pem(ca_pem: &[u8], identity: Option<(&[u8], &[u8])>) -> Result<Self, Error> {
        Self::build(ca_pem, "the CA", identity.map(|(c, k)| (c, k, "the certificate", "the key")))
    }

    /// Trust the CA in the PEM file `ca`; present the certificate and key in the PEM files
    /// `identity` (certificate, key) when given.
    pub fn from_files(ca: impl AsRef<Path>, identity: Option<(PathBuf, PathBuf)>) -> Result<Self, Error> {
        let ca = ca.as_ref();
        let ca_pem = read_pem(ca, "CA").map_err(Error::Usage)?;
        let ca_what = format!("CA file {}", ca.display());
        match identity {
            None => Self::build(&ca_pem, &ca_what, None),
            Some((cert, key)) => {
                let cert_pem = read_pem(&cert, "certificate").map_err(Error::Usage)?;
                let key_pem = read_pem(&key, "key").map_err(Error::Usage)?;
                let cert_what = format!("certificate file {}", cert.display());
                let key_what = format!("key file {}", key.display());
                Self::build(&ca_pem, &ca_what, Some((&cert_pem, &key_pem, &cert_what, &key_what)))
            }
        }
    }

    /// The settings of the environment ([`env`]): `WEFT_TLS_CA` turns TLS on;
    /// `WEFT_TLS_CERT` and `WEFT_TLS_KEY` (both or neither) add a client certificate. `None`
    /// when `WEFT_TLS_CA` is unset or empty.
    pub fn from_env() -> Result<Option<Self>, Error> {
        Self::from_vars(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    /// [`from_env`](Self::from_env) over any source of variables.
    pub(crate) fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, Error> {
        let identity = match (var(env::CERT), var(env::KEY)) {
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            (None, None) => None,
            _ => {
                return Err(Error::Usage(format!(
                    "{} and {} go together: set both (a client certificate) or neither",
                    env::CERT,
                    env::KEY
                )));
            }
        };
        match var(env::CA) {
            Some(ca) => Self::from_files(ca, identity)
                .map(Some)
                .map_err(|e| Error::Usage(format!("{}: {e}", env::CA))),
            None if identity.is_some() => Err(Error::Usage(format!(
                "{} and {} are set but {} is not: give the CA that signed the nodes' certificates",
                env::CERT,
                env::KEY,
                env::CA
            ))),
            None => Ok(None),
        }
    }

    /// TLS with a rustls configuration of the caller's (its own verifier, say). It must use
    /// the ring provider and offer ALPN `h2`.
    pub fn from_config(config: Arc<rustls::ClientConfig>) -> Self {
        Self { config }
    }

    fn build(
        ca_pem: &[u8],
        ca_what: &str,
        identity: Option<(&[u8], &[u8], &str, &str)>,
    ) -> Result<Self, Error> {
        let roots =
            roots(&parse_certs(ca_pem, ca_what).map_err(Error::Usage)?, ca_what).map_err(Error::Usage)?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Usage(format!("TLS: {e}")))?
            .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key, cert_what, key_what)) => {
                let chain = parse_certs(cert, cert_what).map_err(Error::Usage)?;
                let key = parse_key(key, key_what).map_err(Error::Usage)?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    Error::Usage(format!("{cert_what} and {key_what} do not make a usable pair: {e}"))
                })?
            }
        };
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Self { config: Arc::new(config) })
    }

    /// The rustls configuration (for a caller's own TLS connections, an HTTP client say;
    /// it offers ALPN `h2` only).
    pub fn rustls_config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }

    /// A lazily connecting channel over TLS for `endpoint` (its URI's host is the name the
    /// node's certificate must carry). The endpoint's connect timeout covers the handshake.
    pub fn channel(&self, endpoint: Endpoint) -> Channel {
        endpoint.connect_with_connector_lazy(Connector { config: self.config.clone() })
    }

    /// A channel over TLS for `endpoint`, connected now: a failed handshake is this call's
    /// error (its root cause a [`HandshakeError`] that says why).
    pub async fn connect(&self, endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
        endpoint.connect_with_connector(Connector { config: self.config.clone() }).await
    }
}

/// Why a TLS connection to a node could not be made. Nothing was sent.
#[derive(Debug)]
pub struct HandshakeError {
    addr: String,
    reason: String,
    /// A certificate was refused (by either side): a setup problem, not a node that is down.
    certificate: bool,
}

impl HandshakeError {
    /// Whether a certificate was refused (rather than the connection failing).
    pub fn is_certificate_problem(&self) -> bool {
        self.certificate
    }
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS handshake with {} failed: {}", self.addr, self.reason)
    }
}

impl std::error::Error for HandshakeError {}

/// What a rustls error means for whoever set up the client.
fn explain(error: &rustls::Error) -> (String, bool) {
    use rustls::{AlertDescription, CertificateError, Error as E};
    match error {
        E::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => (
            format!(
                "{error}: the node's certificate is not signed by the CA this client trusts (is {} the \
                 cluster's CA?)",
                env::CA
            ),
            true,
        ),
        E::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => (
            format!(
                "{error}: the node's certificate does not name the host or IP of this endpoint (reissue it with \
                 that name, or use the name it has)"
            ),
            true,
        ),
        E::InvalidCertificate(_) => (format!("{error}: the node's certificate was refused"), true),
        E::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::AccessDenied,
        ) => (format!("{error}: the node refused this client's certificate (or its lack of one)"), true),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
            (format!("{error}: the other end does not speak TLS (is TLS on at the node?)"), false)
        }
        _ => (error.to_string(), false),
    }
}

/// Opens TCP connections and runs a TLS handshake on them for tonic.
#[derive(Clone)]
struct Connector {
    config: Arc<rustls::ClientConfig>,
}

impl tonic::codegen::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move {
            let host = uri.host().ok_or("the endpoint names no host")?.trim_matches(['[', ']']).to_owned();
            let port = uri.port_u16().ok_or("the endpoint names no port")?;
            let addr = format!("{host}:{port}");
            let name = ServerName::try_from(host.clone())
                .map_err(|_| format!("'{host}' is not a host name or IP address TLS can check"))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| {
                let (reason, certificate) = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
                {
                    Some(rustls) => explain(rustls),
                    None if e.kind() == std::io::ErrorKind::UnexpectedEof
                        || e.kind() == std::io::ErrorKind::ConnectionReset =>
                    {
                        (format!("{e} (the node closed the connection: is TLS on there?)"), false)
                    }
                    None => (e.to_string(), false),
                };
                HandshakeError { addr: addr.clone(), reason, certificate }
            })?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// The TLS problem behind a failed call, if it is a setup problem (a refused certificate, a
/// node that wants TLS from a client without it): what to tell the user.
pub fn setup_problem(status: &tonic::Status) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<HandshakeError>()
            && h.is_certificate_problem()
        {
            return Some(h.to_string());
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>()
            && h2.reason() == Some(h2::Reason::INADEQUATE_SECURITY)
        {
            return Some(requires_tls_problem());
        }
        source = err.source();
    }
    None
}

/// What to tell a user whose plain-text client reached a node that requires TLS.
pub fn requires_tls_problem() -> String {
    format!(
        "the node requires TLS: give the CA that signed its certificate ({} or Tls::from_files) and use https:// \
         endpoints",
        env::CA
    )
}

/// Longest wait of [`requires_tls`] for the node's answer.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Most bytes of the node's answer [`requires_tls`] reads.
const PROBE_MAX_BYTES: usize = 4096;

/// Whether the node at `endpoint` (`HOST:PORT` or `http://HOST:PORT`) refuses plain HTTP/2
/// because it requires TLS: a fresh connection sends the HTTP/2 preface and looks for the
/// node's GOAWAY with INADEQUATE_SECURITY (a node that speaks plain HTTP/2 acknowledges the
/// preface's SETTINGS instead, which ends the probe at once). For telling a user why a
/// plain-text call failed when the failure itself did not say (a client that saw the
/// connection end before it read the GOAWAY reports a cancelled call); bounded by a 2 s
/// timeout, false when unsure. [`plain_failure_requires_tls`] decides when to ask.
pub async fn requires_tls(endpoint: &str) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = endpoint.strip_prefix("http://").unwrap_or(endpoint).trim_end_matches('/');
    let probe = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        // The client preface, then an empty SETTINGS frame.
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.ok()?;
        let mut seen = Vec::new();
        let mut buf = [0u8; 512];
        while seen.len() < PROBE_MAX_BYTES {
            let n = tcp.read(&mut buf).await.ok()?;
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if let Some(verdict) = h2_verdict(&seen) {
                return Some(verdict);
            }
        }
        h2_verdict(&seen)
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe).await.ok().flatten().unwrap_or(false)
}

/// Whether a call made without TLS to `endpoint` that failed with `status` failed because the
/// node requires TLS, though the status does not say so: when the connection ended under the
/// call (hyper's "operation was canceled", a transport error) rather than the node answering,
/// the caller's own deadline running out or the status already naming a TLS problem
/// ([`setup_problem`]), it asks the node with [`requires_tls`] (at most 2 s). The `weft` CLI
/// and the SDK's client and worker decide alike with it; a true answer is reported as
/// [`requires_tls_problem`].
pub async fn plain_failure_requires_tls(endpoint: &str, status: &tonic::Status) -> bool {
    connection_cut(status) && setup_problem(status).is_none() && requires_tls(endpoint).await
}

/// Whether `status` says that the connection failed under the call, not that a node answered
/// or that the caller's deadline passed: a transport error behind it (its source), with code
/// CANCELLED (hyper's "operation was canceled"), UNKNOWN or INTERNAL (a connection closed or
/// reset mid-call). UNAVAILABLE is left out: a connection that never opened, a keep-alive that
/// went unanswered, or a node's own answer.
fn connection_cut(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    if source.is_none() {
        return false;
    }
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() {
            return false;
        }
        source = err.source();
    }
    matches!(status.code(), tonic::Code::Cancelled | tonic::Code::Unknown | tonic::Code::Internal)
}

/// What the HTTP/2 frames a node sent in answer to a plain preface say: `Some(true)` for a
/// GOAWAY with INADEQUATE_SECURITY (the node requires TLS), `Some(false)` for another GOAWAY
/// or an acknowledgement of the client's SETTINGS (the node speaks plain HTTP/2), `None` while
/// neither has come (a frame cut short is not read past).
fn h2_verdict(mut frames: &[u8]) -> Option<bool> {
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    const ACK: u8 = 0x1;
    while frames.len() >= 9 {
        let len = u32::from_be_bytes([0, frames[0], frames[1], frames[2]]) as usize;
        let (kind, flags) = (frames[3], frames[4]);
        let payload = frames.get(9..9 + len)?;
        match kind {
            GOAWAY if payload.len() >= 8 => {
                let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                return Some(code == u32::from(h2::Reason::INADEQUATE_SECURITY));
            }
            SETTINGS if flags & ACK != 0 => return Some(false),
            _ => {}
        }
        frames = &frames[9 + len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_settings_go_together() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        };
        assert!(Tls::from_vars(vars(&[])).unwrap().is_none());
        let e = Tls::from_vars(vars(&[(env::CERT, "c.pem")])).unwrap_err().to_string();
        assert!(e.contains("WEFT_TLS_CERT and WEFT_TLS_KEY go together"), "{e}");
        let e = Tls::from_vars(vars(&[(env::CERT, "c.pem"), (env::KEY, "k.pem")])).unwrap_err().to_string();
        assert!(e.contains("WEFT_TLS_CA is not"), "{e}");
        let e = Tls::from_vars(vars(&[(env::CA, "/nonexistent/ca.pem")])).unwrap_err().to_string();
        assert!(e.contains("WEFT_TLS_CA") && e.contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn a_goaway_or_a_settings_ack_decides_after_other_frames() {
        let mut frames = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0]; // SETTINGS
        frames.extend_from_slice(&[0, 0, 10, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xc, b'h', b'i']);
        assert_eq!(h2_verdict(&frames), Some(true), "GOAWAY INADEQUATE_SECURITY");
        assert_eq!(h2_verdict(&frames[..9]), None, "a SETTINGS that is no ack says nothing yet");
        assert_eq!(h2_verdict(&frames[..15]), None, "a cut frame is not read past");
        let mut other = frames.clone();
        other[9 + 9 + 7] = 0x2; // INTERNAL_ERROR
        assert_eq!(h2_verdict(&other), Some(false), "another GOAWAY");
        let mut plain = vec![0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]; // SETTINGS, one value
        plain.extend_from_slice(&[0, 0, 0, 0x4, 0x1, 0, 0, 0, 0]); // SETTINGS ack
        assert_eq!(h2_verdict(&plain), Some(false), "a node that speaks plain HTTP/2");
    }

    #[test]
    fn only_a_connection_cut_under_the_call_is_probed() {
        let transport = |code: tonic::Code, source: Box<dyn std::error::Error + Send + Sync>| {
            let mut status = tonic::Status::new(code, "x");
            status.set_source(source.into());
            status
        };
        let io = || Box::new(std::io::Error::other("connection closed"));
        assert!(connection_cut(&transport(tonic::Code::Cancelled, io())));
        assert!(connection_cut(&transport(tonic::Code::Unknown, io())));
        assert!(!connection_cut(&tonic::Status::cancelled("the node's own answer")), "no transport error");
        assert!(!connection_cut(&transport(tonic::Code::Unavailable, io())), "never connected, or no ping");
        assert!(!connection_cut(&transport(tonic::Code::PermissionDenied, io())));
        let timeout = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(timeout.code(), tonic::Code::Cancelled);
        assert!(!connection_cut(&timeout), "the caller's own deadline");
    }

    #[test]
    fn bad_pem_is_named() {
        let e = Tls::from_pem(b"not a certificate", None).unwrap_err().to_string();
        assert!(e.contains("the CA") && e.contains("no PEM certificate"), "{e}");
    }
}

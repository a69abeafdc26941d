//! The node's TCP listener for `axum::serve`, plain or TLS. With TLS, handshakes run in tasks
//! of their own (at most [`MAX_HANDSHAKES`] at once, each within [`HANDSHAKE_TIMEOUT`]), so a
//! slow or silent client never holds up the accept loop; each connection's address carries
//! the identity in the certificate its peer presented ([`PeerAddr`], read by handlers and
//! middleware through `ConnectInfo<PeerAddr>`).
//!
//! ```text
//!   TcpListener ──accept──► handshake task (≤ MAX_HANDSHAKES, ≤ HANDSHAKE_TIMEOUT)
//!        ▲ waits for a permit          │ first byte 0x16?  no: plain HTTP/1 gets a 400,
//!        │ when all are busy           │                  HTTP/2 a GOAWAY (INADEQUATE_SECURITY)
//!                                      ▼ yes: TLS handshake, peer certificate → PeerIdentity
//!   axum::serve ◄──accept()── bounded channel ◄── (TlsStream, PeerAddr)
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;

use super::{PeerIdentity, Store};

/// Most TLS handshakes in progress at once; further connections wait in the kernel's backlog.
pub const MAX_HANDSHAKES: usize = 256;
/// How long a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause after a failed `accept` (out of file descriptors, say) before the next one.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// The first byte of a TLS record carrying a handshake message (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// What a plain HTTP/2 client sends first (gRPC without TLS).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// What a plain-text client is told before the connection closes.
const NEEDS_TLS: &str =
    "this Weft node requires TLS: use https:// and give the cluster's CA (WEFT_TLS_CA, --tls-ca)";

/// A connection's peer: its address, whether it came over TLS, and who its certificate says
/// it is (`None`: no certificate, or no TLS).
#[derive(Debug, Clone)]
pub struct PeerAddr {
    /// The peer's socket address.
    pub remote: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The verified certificate the peer presented, if any.
    pub identity: Option<Arc<PeerIdentity>>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Listener>> for PeerAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Listener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// The connection type: TCP, or TLS over TCP.
pub type Io = Either<TcpStream, TlsStream<TcpStream>>;

/// A listener that hands `axum::serve` plain TCP connections, or TLS connections whose
/// handshake is complete.
pub struct Listener {
    local: SocketAddr,
    inner: Inner,
}

enum Inner {
    Plain(TcpListener),
    Tls(mpsc::Receiver<(Io, PeerAddr)>),
}

impl Listener {
    /// Plain TCP connections (`TCP_NODELAY` on each).
    pub fn plain(listener: TcpListener) -> std::io::Result<Self> {
        Ok(Self { local: listener.local_addr()?, inner: Inner::Plain(listener) })
    }

    /// TLS connections with `store`'s current certificate. The accepting task ends when
    /// this listener is dropped.
    pub fn tls(listener: TcpListener, store: Store) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(MAX_HANDSHAKES);
        tokio::spawn(accept_tls(listener, store, tx));
        Ok(Self { local, inner: Inner::Tls(rx) })
    }
}

async fn accept_tcp(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((tcp, remote)) => {
                // Small RPCs must not wait for Nagle's algorithm.
                let _ = tcp.set_nodelay(true);
                return (tcp, remote);
            }
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

async fn accept_tls(listener: TcpListener, store: Store, tx: mpsc::Sender<(Io, PeerAddr)>) {
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            biased;
            _ = tx.closed() => return,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (tcp, remote) = tokio::select! {
            biased;
            _ = tx.closed() => return,
            accepted = accept_tcp(&listener) => accepted,
        };
        let config = store.server_config();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(tcp, config)).await {
                Ok(Ok(tls)) => {
                    let identity = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|cert| PeerIdentity::from_der(cert))
                        .map(Arc::new);
                    let _ = tx.send((Either::Right(tls), PeerAddr { remote, tls: true, identity })).await;
                }
                Ok(Err(Refusal::Plain(kind))) => {
                    tracing::debug!(%remote, kind, "refused a plain-text connection: TLS is required")
                }
                Ok(Err(Refusal::Handshake(e))) => {
                    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                        Some(error) => tracing::warn!(%remote, %error, "TLS handshake refused"),
                        None => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                    }
                }
                Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
            }
        });
    }
}

/// Why a connection did not become a TLS stream.
enum Refusal {
    /// It spoke plain text (`kind`: what it looked like); it was told TLS is required.
    Plain(&'static str),
    /// The handshake failed.
    Handshake(std::io::Error),
}

async fn handshake(
    mut tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
) -> Result<TlsStream<TcpStream>, Refusal> {
    let mut first = [0u8; H2_PREFACE.len()];
    let seen = tcp.peek(&mut first).await.map_err(Refusal::Handshake)?;
    if seen > 0 && first[0] != TLS_HANDSHAKE_RECORD {
        return Err(Refusal::Plain(refuse_plain(&mut tcp, &first[..seen]).await));
    }
    tokio_rustls::TlsAcceptor::from(config).accept(tcp).await.map_err(Refusal::Handshake)
}

/// Tells a plain-text client that TLS is required, in words its protocol shows: an HTTP/1
/// 400 response, or for HTTP/2 (gRPC) a GOAWAY with INADEQUATE_SECURITY and the reason as
/// debug data. Best effort; the connection closes after.
async fn refuse_plain(tcp: &mut TcpStream, first: &[u8]) -> &'static str {
    if H2_PREFACE.starts_with(first) {
        // Wait for the whole preface, so the client reads our frames as the server's.
        let mut preface = [0u8; H2_PREFACE.len()];
        if tokio::io::AsyncReadExt::read_exact(tcp, &mut preface).await.is_err() {
            return "http2";
        }
        let mut frames = Vec::with_capacity(9 + 9 + 8 + NEEDS_TLS.len());
        frames.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]); // empty SETTINGS
        let len = (8 + NEEDS_TLS.len()) as u32;
        frames.extend_from_slice(&len.to_be_bytes()[1..]);
        frames.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]); // GOAWAY on stream 0
        frames.extend_from_slice(&0u32.to_be_bytes()); // last stream id
        frames.extend_from_slice(&0xcu32.to_be_bytes()); // INADEQUATE_SECURITY
        frames.extend_from_slice(NEEDS_TLS.as_bytes());
        let _ = tcp.write_all(&frames).await;
        drain_and_close(tcp).await;
        return "http2";
    }
    let body = format!("{NEEDS_TLS}\n");
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.write_all(response.as_bytes()).await;
    drain_and_close(tcp).await;
    "http1"
}

/// Most bytes of a refused plain-text client read (and dropped) before closing.
const MAX_DRAIN_BYTES: usize = 64 << 10;
/// Longest wait for a refused plain-text client to close its side.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Closes our side, then reads what the client still sends (bounded) until it closes: closing
/// with unread bytes would reset the connection, and the client would lose our answer.
async fn drain_and_close(tcp: &mut TcpStream) {
    let _ = tcp.shutdown().await;
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let mut buf = [0u8; 4096];
        let mut read = 0;
        while read < MAX_DRAIN_BYTES {
            match tokio::io::AsyncReadExt::read(tcp, &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    })
    .await;
}

impl axum::serve::Listener for Listener {
    type Io = Io;
    type Addr = PeerAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match &mut self.inner {
            Inner::Plain(listener) => {
                let (tcp, remote) = accept_tcp(listener).await;
                (Either::Left(tcp), PeerAddr { remote, tls: false, identity: None })
            }
            Inner::Tls(rx) => match rx.recv().await {
                Some(accepted) => accepted,
                // The accepting task only stops once this listener is gone.
                None => std::future::pending().await,
            },
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(PeerAddr { remote: self.local, tls: matches!(self.inner, Inner::Tls(_)), identity: None })
    }
}

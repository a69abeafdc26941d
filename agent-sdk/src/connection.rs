//! Endpoints and failover: one lazily connected channel per node, a current one, and retries
//! that move to the next node with back-off.
//!
//! What is retried: a request the fabric certainly did not apply (`weft-not-applied`, a
//! connection that never opened) goes to the next node at once; a request whose outcome is
//! unknown is sent again only when it is idempotent (reads, and creates that carry an
//! idempotency key). Every retry loop ends after `retry_for`.
//!
//! Endpoints are `HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT`, and a list of them
//! is comma-separated ([`parse_endpoints`], as `WEFT_ENDPOINT` gives it to workers and to the
//! `weft` CLI). The port is required: without one a URI would mean port 80, which no node
//! listens on. With [`Tls`] settings every endpoint is reached over TLS (`HOST:PORT` means
//! `https://HOST:PORT`); without them an `https://` endpoint is refused, naming what is
//! missing.
//!
//! Without TLS settings, a call whose connection ended under it (hyper's "operation was
//! canceled", a reset) may have reached a node that requires TLS before the node's GOAWAY
//! saying so was read: the node is asked once more ([`crate::tls::plain_failure_requires_tls`],
//! as the `weft` CLI does), and if it requires TLS the error is [`Error::Tls`] saying so,
//! which is not retried.
//!
//! With a [`Token`] every request on every channel carries it (see [`crate::token`]); a node
//! that refuses the token (`UNAUTHENTICATED`, `PERMISSION_DENIED`) is not asked again, nor is
//! the next one.
//!
//! An error that gives up on the fabric (no answer in time, no node reachable) names the
//! endpoint it last waited on.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tonic::transport::Endpoint;

use crate::Error;
use crate::tls::Tls;
use crate::token::{Authorized, Token};

/// A channel to one node that carries the client's token (if any) on every request.
pub(crate) type Channel = Authorized<tonic::transport::Channel>;

/// First pause before trying again.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(25);
/// Longest pause between tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often an idle connection is pinged (HTTP/2 keep-alive).
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// How long a ping may go unanswered before the connection is dropped.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Most endpoints one client may list.
pub const MAX_ENDPOINTS: usize = 64;
/// Largest gRPC message the client sends or takes (the fabric's default limit).
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;

/// How a connection retries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// How long one request keeps trying (across nodes) before it gives up.
    pub retry_for: Duration,
    /// How long one try of a plain request may take.
    pub attempt_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self { retry_for: Duration::from_secs(30), attempt_timeout: Duration::from_secs(10) }
    }
}

struct Inner {
    addrs: Vec<String>,
    channels: Vec<Channel>,
    current: AtomicUsize,
    options: Options,
    /// Whether the channels use TLS.
    tls: bool,
}

/// Channels to every endpoint; cheap to clone.
#[derive(Clone)]
pub(crate) struct Connection {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("endpoints", &self.inner.addrs).finish_non_exhaustive()
    }
}

/// The pause before the next try: `pause` doubled up to [`MAX_BACKOFF`], with up to a quarter
/// of jitter. Tries start with [`INITIAL_BACKOFF`]. The SDK pauses so between nodes when it
/// fails over, and the `weft` CLI does the same.
///
/// ```
/// use weft_agent::{INITIAL_BACKOFF, MAX_BACKOFF, next_backoff};
/// let pause = next_backoff(INITIAL_BACKOFF);
/// assert!(pause >= INITIAL_BACKOFF * 2 && pause <= INITIAL_BACKOFF * 2 + INITIAL_BACKOFF / 2);
/// assert!(next_backoff(MAX_BACKOFF) <= MAX_BACKOFF + MAX_BACKOFF / 4);
/// ```
pub fn next_backoff(pause: Duration) -> Duration {
    let doubled = (pause * 2).min(MAX_BACKOFF);
    let jitter = rand::random::<u64>() % (doubled.as_millis() as u64 / 4 + 1);
    doubled + Duration::from_millis(jitter)
}

/// Parses a comma-separated list of endpoints (`HOST:PORT`, `http://` or `https://HOST:PORT`; spaces
/// around the commas and empty entries are ignored), checking each with [`check_endpoint`]
/// and the list against a bound (64 endpoints). This is the syntax of `WEFT_ENDPOINT`.
///
/// ```
/// let list = weft_agent::parse_endpoints("127.0.0.1:7400, 127.0.0.1:7401").unwrap();
/// assert_eq!(list, ["127.0.0.1:7400", "127.0.0.1:7401"]);
/// assert!(weft_agent::parse_endpoints("127.0.0.1").unwrap_err().to_string().contains("no port"));
/// ```
pub fn parse_endpoints(list: &str) -> Result<Vec<String>, Error> {
    let endpoints: Vec<String> =
        list.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_owned).collect();
    if endpoints.is_empty() {
        return Err(Error::Usage(format!("no endpoints in '{list}': give at least one node's HOST:PORT")));
    }
    if endpoints.len() > MAX_ENDPOINTS {
        return Err(Error::Usage(format!("{} endpoints; at most {MAX_ENDPOINTS}", endpoints.len())));
    }
    for endpoint in &endpoints {
        check_endpoint(endpoint)?;
    }
    Ok(endpoints)
}

/// Checks one endpoint and returns its URI (`http://` added when it has no scheme): it must
/// parse, name a host and a port, and use `http` or `https`.
///
/// ```
/// assert_eq!(weft_agent::check_endpoint("127.0.0.1:7400").unwrap(), "http://127.0.0.1:7400");
/// let e = weft_agent::check_endpoint("127.0.0.1").unwrap_err().to_string();
/// assert!(e.contains("'127.0.0.1' has no port"), "{e}");
/// ```
pub fn check_endpoint(endpoint: &str) -> Result<String, Error> {
    let uri = if endpoint.contains("://") { endpoint.to_owned() } else { format!("http://{endpoint}") };
    let parsed: tonic::codegen::http::Uri = uri
        .parse()
        .map_err(|e| Error::Usage(format!("invalid endpoint '{endpoint}': {e} (expected HOST:PORT)")))?;
    if !matches!(parsed.scheme_str(), Some("http" | "https")) {
        return Err(Error::Usage(format!(
            "invalid endpoint '{endpoint}': only http:// and https:// (or HOST:PORT) are understood"
        )));
    }
    if parsed.host().is_none_or(str::is_empty) {
        return Err(Error::Usage(format!("invalid endpoint '{endpoint}': no host (expected HOST:PORT)")));
    }
    if parsed.port_u16().is_none() {
        return Err(Error::Usage(format!(
            "endpoint '{endpoint}' has no port: add the node's port, as in {}:7400 (without one it \
             would mean port 80)",
            endpoint.trim_end_matches('/')
        )));
    }
    Ok(uri)
}

/// The URI to dial for `endpoint` ([`check_endpoint`]): `https://` when `tls` is on. A
/// scheme that contradicts the TLS settings is refused, naming what to change.
///
/// ```
/// assert_eq!(weft_agent::endpoint_uri("127.0.0.1:7400", true).unwrap(), "https://127.0.0.1:7400");
/// assert!(weft_agent::endpoint_uri("https://127.0.0.1:7400", false).is_err());
/// ```
pub fn endpoint_uri(endpoint: &str, tls: bool) -> Result<String, Error> {
    let uri = check_endpoint(endpoint)?;
    let explicit = endpoint.contains("://");
    match (uri.strip_prefix("http://"), uri.strip_prefix("https://"), tls) {
        (Some(rest), _, true) if !explicit => Ok(format!("https://{rest}")),
        (Some(_), _, true) => Err(Error::Usage(format!(
            "endpoint '{endpoint}' is plain http:// but TLS settings were given: write HOST:PORT or https://"
        ))),
        (_, Some(_), false) => Err(Error::Usage(format!(
            "endpoint '{endpoint}' is https:// but no TLS settings were given: give the CA that signed the \
             nodes' certificates ({} or Tls::from_files)",
            crate::tls::env::CA
        ))),
        _ => Ok(uri),
    }
}

/// `error` with the endpoint it came from added to its message, when it is one that gives up
/// on the fabric (no answer, no node, unknown outcome); others already say what is wrong.
fn naming_endpoint(error: Error, endpoint: &str) -> Error {
    let at = |message: String| format!("{message} (endpoint {endpoint})");
    match error {
        Error::Unavailable(m) => Error::Unavailable(at(m)),
        Error::Overloaded(m) => Error::Overloaded(at(m)),
        Error::Unknown(m) => Error::Unknown(at(m)),
        Error::Tls(m) => Error::Tls(at(m)),
        other => other,
    }
}

impl Connection {
    /// Channels to `endpoints` (see [`check_endpoint`]), over TLS when `tls` is given, with
    /// `token` on every request when given; none opened yet.
    pub fn new(
        endpoints: Vec<String>,
        options: Options,
        tls: Option<&Tls>,
        token: Option<&Token>,
    ) -> Result<Self, Error> {
        if endpoints.is_empty() {
            return Err(Error::Usage("no endpoints: give at least one node's HOST:PORT".into()));
        }
        if endpoints.len() > MAX_ENDPOINTS {
            return Err(Error::Usage(format!("{} endpoints; at most {MAX_ENDPOINTS}", endpoints.len())));
        }
        let mut channels = Vec::with_capacity(endpoints.len());
        let mut addrs = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let uri = endpoint_uri(&endpoint, tls.is_some())?;
            let builder = Endpoint::from_shared(uri)
                .map_err(|e| Error::Usage(format!("invalid endpoint '{endpoint}': {e}")))?
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                // A node that stops answering (paused, cut off) is noticed within about
                // KEEP_ALIVE_INTERVAL + KEEP_ALIVE_TIMEOUT, and the stream moves on.
                .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
                .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
                .keep_alive_while_idle(true);
            let channel = match tls {
                Some(tls) => tls.channel(builder),
                None => builder.connect_lazy(),
            };
            channels.push(Authorized::new(channel, token.cloned()));
            addrs.push(endpoint);
        }
        // Clients of one process spread over the nodes instead of all starting on the first.
        let start = rand::random::<u64>() as usize % channels.len();
        let inner = Inner { addrs, channels, current: AtomicUsize::new(start), options, tls: tls.is_some() };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The endpoint to use now, and its index.
    pub fn current(&self) -> (usize, Channel) {
        let i = self.inner.current.load(Ordering::Relaxed) % self.inner.channels.len();
        (i, self.inner.channels[i].clone())
    }

    /// The address of endpoint `i`.
    pub fn addr(&self, i: usize) -> &str {
        &self.inner.addrs[i % self.inner.addrs.len()]
    }

    /// Endpoint `i` failed: move on to the next one (unless another task already did).
    pub fn failed(&self, i: usize) {
        let n = self.inner.channels.len();
        let _ = self.inner.current.compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The retry settings.
    pub fn options(&self) -> Options {
        self.inner.options
    }

    /// How many endpoints there are.
    pub fn endpoint_count(&self) -> usize {
        self.inner.channels.len()
    }

    /// Whether the channels use TLS.
    pub fn tls(&self) -> bool {
        self.inner.tls
    }

    /// The endpoints, for an error about every one of them: `endpoint a` or `every
    /// endpoint: a, b`.
    pub fn endpoints_named(&self) -> String {
        let all: Vec<&str> = (0..self.endpoint_count()).map(|i| self.addr(i)).collect();
        match all.as_slice() {
            [one] => format!("endpoint {one}"),
            _ => format!("every endpoint: {}", all.join(", ")),
        }
    }

    /// What a call that failed with `status` on endpoint `i` means ([`Error::from_status`]);
    /// without TLS settings, a connection that ended under the call is first checked for a
    /// node that requires TLS ([`crate::tls::plain_failure_requires_tls`], the `weft` CLI's
    /// check), which is then the error: [`Error::Tls`] saying so, not an unknown outcome.
    pub async fn error_of(&self, i: usize, status: &tonic::Status) -> Error {
        if !self.inner.tls && crate::tls::plain_failure_requires_tls(self.addr(i), status).await {
            return Error::Tls(crate::tls::requires_tls_problem());
        }
        Error::from_status(status)
    }

    /// How long one attempt may take.
    pub fn attempt_timeout(&self) -> Duration {
        self.inner.options.attempt_timeout
    }

    /// Runs one unary call of `req` as [`Connection::run`] does, each attempt a fresh request
    /// bounded by the attempt timeout.
    pub async fn call<Req, T, F, Fut>(&self, idempotent: bool, req: &Req, mut op: F) -> Result<T, Error>
    where
        Req: Clone,
        F: FnMut(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let attempt = self.inner.options.attempt_timeout;
        self.run(idempotent, |channel| {
            let mut request = tonic::Request::new(req.clone());
            request.set_timeout(attempt);
            op(channel, request)
        })
        .await
    }

    /// Runs `op` on the current endpoint, failing over as the module docs say, until
    /// `retry_for` passes. `idempotent`: whether an unknown outcome may be retried.
    pub async fn run<T, F, Fut>(&self, idempotent: bool, mut op: F) -> Result<T, Error>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let until = Instant::now() + self.inner.options.retry_for;
        let mut pause = INITIAL_BACKOFF;
        loop {
            let (i, channel) = self.current();
            let error = match op(channel).await {
                Ok(value) => return Ok(value),
                Err(status) => self.error_of(i, &status).await,
            };
            let retry = match &error {
                Error::Unavailable(_) | Error::Overloaded(_) => true,
                Error::Unknown(_) => idempotent,
                _ => false,
            };
            if !retry || Instant::now() + pause >= until {
                return Err(naming_endpoint(error, self.addr(i)));
            }
            tracing::debug!(endpoint = self.addr(i), error = %error, "trying the next node");
            self.failed(i);
            tokio::time::sleep(pause).await;
            pause = next_backoff(pause);
        }
    }
}

/// Which endpoints told a client without TLS settings that they require TLS, since one last
/// served: once every endpoint has, no retry can help, and the caller stops with
/// [`Error::Tls`] naming them. A client with TLS settings never gives up on a TLS problem
/// here: a node with a bad certificate may be alone in it.
pub(crate) struct RequiresTls {
    said: Vec<bool>,
}

impl RequiresTls {
    pub(crate) fn new(conn: &Connection) -> Self {
        Self { said: vec![false; conn.endpoint_count()] }
    }

    /// Some endpoint served: what the others said may have changed since.
    pub(crate) fn served(&mut self) {
        self.said.fill(false);
    }

    /// Takes `error`, just seen on endpoint `i`; the error to stop with once every endpoint
    /// has said it requires TLS.
    pub(crate) fn stop_with(&mut self, conn: &Connection, i: usize, error: &Error) -> Option<Error> {
        let Error::Tls(problem) = error else { return None };
        if conn.tls() {
            return None;
        }
        if let Some(said) = self.said.get_mut(i) {
            *said = true;
        }
        self.said.iter().all(|s| *s).then(|| Error::Tls(format!("{problem} ({})", conn.endpoints_named())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked() {
        assert!(matches!(Connection::new(vec![], Options::default(), None, None), Err(Error::Usage(_))));
        let e = Connection::new(vec!["not a uri \n".into()], Options::default(), None, None).unwrap_err();
        assert!(e.to_string().contains("invalid endpoint"), "{e}");
        for no_port in ["127.0.0.1", "http://127.0.0.1", "localhost/"] {
            let e = Connection::new(vec![no_port.into()], Options::default(), None, None).unwrap_err();
            assert!(matches!(e, Error::Usage(_)), "{no_port}: {e}");
            assert!(e.to_string().contains(&format!("'{no_port}' has no port")), "{e}");
        }
        assert_eq!(check_endpoint("[::1]:7400").unwrap(), "http://[::1]:7400");
        assert_eq!(check_endpoint("http://h:1").unwrap(), "http://h:1");
        let list = parse_endpoints(" 127.0.0.1:1 ,, 127.0.0.1:2,").unwrap();
        assert_eq!(list, ["127.0.0.1:1", "127.0.0.1:2"]);
        let e = parse_endpoints("127.0.0.1:1,127.0.0.1").unwrap_err().to_string();
        assert!(e.contains("'127.0.0.1' has no port"), "{e}");
        assert!(parse_endpoints(" , ").is_err());
        assert!(check_endpoint("ftp://h:1").unwrap_err().to_string().contains("only http:// and https://"));
        assert_eq!(endpoint_uri("h:1", true).unwrap(), "https://h:1");
        assert_eq!(endpoint_uri("https://h:1", true).unwrap(), "https://h:1");
        assert_eq!(endpoint_uri("h:1", false).unwrap(), "http://h:1");
        let e = endpoint_uri("http://h:1", true).unwrap_err().to_string();
        assert!(e.contains("plain http://"), "{e}");
        let e = endpoint_uri("https://h:1", false).unwrap_err().to_string();
        assert!(e.contains("no TLS settings") && e.contains("WEFT_TLS_CA"), "{e}");
    }

    /// A fake node on 127.0.0.1 that drops the first connection once it has read the client's
    /// preface (a call cut short, as when a client sees the connection end before it reads a
    /// node's GOAWAY), and answers each later one, the SDK's probe, as a node that requires TLS
    /// (an empty SETTINGS, then GOAWAY INADEQUATE_SECURITY) or as one that speaks plain HTTP/2
    /// (SETTINGS and an ack of the client's).
    async fn cutting_node(requires_tls: bool) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut first = true;
            while let Ok((mut tcp, _)) = listener.accept().await {
                let cut = std::mem::replace(&mut first, false);
                tokio::spawn(async move {
                    let mut preface = [0u8; 24];
                    if tcp.read_exact(&mut preface).await.is_err() || cut {
                        return;
                    }
                    let mut frames = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0]; // SETTINGS
                    if requires_tls {
                        frames.extend_from_slice(&[0, 0, 8, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xc]);
                    } else {
                        frames.extend_from_slice(&[0, 0, 0, 0x4, 0x1, 0, 0, 0, 0]); // SETTINGS ack
                    }
                    let _ = tcp.write_all(&frames).await;
                    let mut buf = [0u8; 1024];
                    while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_plain_call_cut_short_asks_the_node_whether_it_requires_tls() {
        let options =
            Options { retry_for: Duration::from_millis(500), attempt_timeout: Duration::from_secs(2) };
        let write = |conn: Connection| async move {
            let req = weft_proto::fabric::v1::PutRequest {
                namespace: "shared/t".into(),
                key: "k".into(),
                value: b"1".to_vec(),
                ..Default::default()
            };
            conn.call(false, &req, |channel, request| async move {
                weft_proto::fabric::v1::state_client::StateClient::new(channel).put(request).await
            })
            .await
        };
        let addr = cutting_node(true).await;
        let conn = Connection::new(vec![addr.clone()], options, None, None).unwrap();
        let e = write(conn).await.unwrap_err();
        let Error::Tls(message) = &e else { panic!("a node that requires TLS: {e:?}") };
        assert!(message.contains("the node requires TLS") && message.contains("https://"), "{message}");
        assert!(message.contains(&addr), "names the endpoint: {message}");

        let addr = cutting_node(false).await;
        let conn = Connection::new(vec![addr], options, None, None).unwrap();
        let e = write(conn).await.unwrap_err();
        assert!(
            matches!(e, Error::Unknown(_)),
            "a plain node that cut a write short: unknown outcome: {e:?}"
        );
    }

    #[tokio::test]
    async fn fails_over_until_the_deadline_and_keeps_unknown_outcomes_of_writes() {
        let options =
            Options { retry_for: Duration::from_millis(300), attempt_timeout: Duration::from_secs(1) };
        let conn =
            Connection::new(vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()], options, None, None).unwrap();
        let mut seen = Vec::new();
        let out: Result<(), Error> = conn
            .run(false, |_| {
                seen.push(conn.current().0);
                let mut status = tonic::Status::unavailable("no leader");
                status.metadata_mut().insert(weft_proto::wire::NOT_APPLIED_HEADER, "true".parse().unwrap());
                async move { Err(status) }
            })
            .await;
        let Err(Error::Unavailable(message)) = out else { panic!("{out:?}") };
        assert!(message.contains("(endpoint 127.0.0.1:"), "names the endpoint: {message}");
        assert!(seen.len() >= 3, "retried: {seen:?}");
        assert!(seen.windows(2).all(|w| w[0] != w[1]), "each retry on the next node: {seen:?}");
        let mut tries = 0;
        let out: Result<(), Error> = conn
            .run(false, |_| {
                tries += 1;
                async { Err(tonic::Status::unavailable("outcome unknown")) }
            })
            .await;
        assert!(matches!(out, Err(Error::Unknown(_))));
        assert_eq!(tries, 1, "a write of unknown outcome is not sent again");
    }
}

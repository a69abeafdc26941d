//! The channel every client of the CLI sends through ([`Failover`]): the nodes of the
//! `--endpoint` list, each connected when a request first needs it, and the rule that moves a
//! request from one node to the next: the SDK's rule for a request that must not be applied
//! twice (certainly not applied: the next node; outcome unknown: never again), without its
//! retry of overloaded answers. [`weft_proto::wire`] says what a failed call's status tells
//! about its request.
//!
//! ```text
//!   generated client ──► Failover: read the request whole (≤ MAX_CLI_MESSAGE_BYTES), start
//!                          │       the clock of its time budget
//!                          ▼
//!                   tower Retry(NextOnNotApplied) ──► Attempt, from endpoint i (at first, the
//!                          ▲                          one that answered last): the first
//!                          │                          endpoint that connects (one that does
//!                          │                          not: the next, at once), then send
//!                          │   answer UNAVAILABLE with weft-not-applied: true (trailers-only)
//!                          └── and a list of two or more: pause (the SDK's back-off), then
//!                              endpoint i + 1, round the list while the time budget lasts
//!
//!   any other answer, a refusal, an unknown outcome (UNAVAILABLE without the header, a
//!   connection lost after sending), no answer within the budget: returned as it is, never
//!   sent again
//! ```
//!
//! A lone endpoint that answers not-applied is not asked again: the node has already waited its
//! `request_timeout_ms` for a leader. A request stream (`tail --follow`'s Listen) never ends, so
//! it is not read whole: it still moves past nodes it cannot connect to, but is sent once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use tokio::sync::OnceCell;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tower::ServiceExt as _;
use tower::retry::{Policy, Retry};
use weft_proto::wire;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Answer = Result<http::Response<Body>, BoxError>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Most bytes of a request read whole: one message of the CLI's limit and its gRPC frame header.
const MAX_REQUEST_BYTES: usize = crate::connect::MAX_CLI_MESSAGE_BYTES + 5;

/// A channel to the nodes of an `--endpoint` list that moves a request on as the module docs
/// say. Cheap to clone; the generated clients take it as their channel.
#[derive(Clone)]
pub struct Failover {
    nodes: Arc<Nodes>,
    /// How long a request may take in all, across nodes (`None`: as long as the server lets it).
    timeout: Option<Duration>,
    /// How long a request keeps moving to the next node.
    retry_for: Duration,
    /// Whether requests are read whole, so that one a node did not apply can go to the next.
    resend: bool,
    /// The `authorization` header every request carries (`--auth-token`), if any.
    authorization: Option<http::HeaderValue>,
}

/// The nodes of the list, and the one that answered last: where the next request starts.
struct Nodes {
    list: Vec<Node>,
    last: AtomicUsize,
}

/// One node of the list: its endpoint as given, its TLS settings if any, and its channel once
/// connected.
struct Node {
    addr: String,
    endpoint: Endpoint,
    tls: Option<weft_agent::Tls>,
    channel: OnceCell<Channel>,
}

impl Node {
    /// The node's channel, connected on first use; else why not (the root cause).
    async fn channel(&self) -> Result<Channel, String> {
        let connected = self
            .channel
            .get_or_try_init(|| async {
                match &self.tls {
                    Some(tls) => tls.connect(self.endpoint.clone()).await,
                    None => self.endpoint.connect().await,
                }
            })
            .await;
        connected.cloned().map_err(|e| anyhow::Error::from(e).root_cause().to_string())
    }
}

impl Failover {
    /// Channels, none connected yet, to `nodes` (each endpoint as given, and how to connect to
    /// it; at least one); see the fields for the rest.
    pub fn new(
        nodes: Vec<(String, Endpoint)>,
        tls: Option<weft_agent::Tls>,
        authorization: Option<http::HeaderValue>,
        timeout: Option<Duration>,
        retry_for: Duration,
        resend: bool,
    ) -> Self {
        assert!(!nodes.is_empty(), "a list of endpoints is never empty");
        let list = nodes
            .into_iter()
            .map(|(addr, endpoint)| Node { addr, endpoint, tls: tls.clone(), channel: OnceCell::new() })
            .collect();
        Self {
            nodes: Arc::new(Nodes { list, last: AtomicUsize::new(0) }),
            timeout,
            retry_for,
            resend,
            authorization,
        }
    }

    async fn send(self, request: http::Request<Body>) -> Answer {
        let started = Instant::now();
        let deadline = self.timeout.map(|t| started + t);
        let (mut parts, body) = request.into_parts();
        if let Some(value) = &self.authorization {
            parts.headers.insert(http::header::AUTHORIZATION, value.clone());
        }
        let payload = if self.resend {
            Payload::Buffered(read_whole(body, deadline).await?)
        } else {
            Payload::Stream(Some(body))
        };
        let addrs = self.nodes.list.iter().map(|n| n.addr.clone()).collect();
        let policy = NextOnNotApplied::new(addrs, started, self.retry_for);
        let attempt = Attempt { nodes: self.nodes, deadline };
        let attempts = tower::service_fn(move |request| attempt.clone().send(request));
        Retry::new(policy, attempts).oneshot(http::Request::from_parts(parts, payload)).await
    }
}

impl tower::Service<http::Request<Body>> for Failover {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Answer>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each attempt waits for its own node's channel.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(self.clone().send(request))
    }
}

/// Reads a request's body whole, up to [`MAX_REQUEST_BYTES`], by `deadline`.
async fn read_whole(body: Body, deadline: Option<Instant>) -> Result<Bytes, BoxError> {
    let read = within(deadline, Limited::new(body, MAX_REQUEST_BYTES).collect())
        .await
        .ok_or_else(|| Status::cancelled("timed out reading the request to send"))?;
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => {
            Err(Status::out_of_range(format!("the request is over {MAX_REQUEST_BYTES} bytes")).into())
        }
        Err(e) => Err(e),
    }
}

/// `future`'s output if it comes by `deadline` (`None`: no deadline).
async fn within<F: Future>(deadline: Option<Instant>, future: F) -> Option<F::Output> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline.into(), future).await.ok(),
        None => Some(future.await),
    }
}

/// A request's body: read whole, so it can be sent again, or a stream sent once.
enum Payload {
    Buffered(Bytes),
    Stream(Option<Body>),
}

impl Payload {
    /// A body to send: a copy of the one read whole, or the stream if it has not gone yet.
    fn take(&mut self) -> Option<Body> {
        match self {
            Payload::Buffered(bytes) => Some(Body::new(Full::new(bytes.clone()))),
            Payload::Stream(body) => body.take(),
        }
    }
}

/// On a request: the endpoint its next attempt starts from.
#[derive(Debug, Clone, Copy)]
struct StartAt(usize);

/// On a response: the endpoint that answered, and why the ones tried before it were not
/// reached.
#[derive(Debug, Clone)]
struct Answered {
    at: usize,
    unreached: Vec<(usize, String)>,
}

/// One try of a request: from [`StartAt`] (else the endpoint that answered last), to the first
/// endpoint that connects, within the request's deadline.
#[derive(Clone)]
struct Attempt {
    nodes: Arc<Nodes>,
    deadline: Option<Instant>,
}

impl Attempt {
    async fn send(self, request: http::Request<Payload>) -> Answer {
        let list = &self.nodes.list;
        let start =
            request.extensions().get::<StartAt>().map_or(self.nodes.last.load(Ordering::Relaxed), |s| s.0);
        let (parts, mut payload) = request.into_parts();
        let mut unreached = Vec::new();
        for i in (0..list.len()).map(|k| (start + k) % list.len()) {
            let node = &list[i];
            let channel = match within(self.deadline, node.channel()).await {
                None => {
                    return Err(Status::cancelled(format!("timed out connecting to {}", node.addr)).into());
                }
                Some(Err(why)) => {
                    tracing::debug!(endpoint = %node.addr, %why, "trying the next endpoint");
                    unreached.push((i, why));
                    continue;
                }
                Some(Ok(channel)) => channel,
            };
            let Some(body) = payload.take() else { break };
            let request = http::Request::from_parts(parts.clone(), body);
            match within(self.deadline, channel.oneshot(request)).await {
                None => return Err(timed_out(&node.addr)),
                Some(Ok(mut response)) => {
                    self.nodes.last.store(i, Ordering::Relaxed);
                    response.extensions_mut().insert(Answered { at: i, unreached });
                    return Ok(response);
                }
                Some(Err(e)) => {
                    let status = Status::from_error(e.into());
                    // A channel whose connection dropped connects again for its next request;
                    // when that fails, the request never left.
                    if !wire::never_sent(&status) {
                        return Err(why_plain_failed(node, status).await.into());
                    }
                    tracing::debug!(endpoint = %node.addr, why = status.message(), "trying the next endpoint");
                    unreached.push((i, status.message().to_owned()));
                }
            }
        }
        let each: Vec<String> =
            unreached.iter().map(|(i, why)| format!("{}: {why}", list[*i].addr)).collect();
        Err(Status::unavailable(format!(
            "cannot reach a Weft node at {} (set --endpoint or WEFT_ENDPOINT)",
            each.join("; nor at ")
        ))
        .into())
    }
}

/// `status`, or what really happened when a plain-text call to a node that requires TLS
/// was cut short before its GOAWAY was read (the call then only says it was cancelled): the
/// SDK's check, [`weft_agent::tls::plain_failure_requires_tls`].
async fn why_plain_failed(node: &Node, status: Status) -> Status {
    if node.tls.is_some() || !weft_agent::tls::plain_failure_requires_tls(&node.addr, &status).await {
        return status;
    }
    Status::unavailable(format!(
        "{} (client TLS: --tls-ca, WEFT_TLS_CA)",
        weft_agent::tls::requires_tls_problem()
    ))
}

/// The error of a request that had no answer from `addr` within its time budget.
fn timed_out(addr: &str) -> BoxError {
    Status::cancelled(format!("timed out waiting for an answer from {addr}")).into()
}

/// tower's retry [`Policy`] for the module docs' rule: an answer of UNAVAILABLE with
/// `weft-not-applied: true`, from a list of two or more, sends the request again from the next
/// endpoint after a pause, while the time budget lasts. Nothing else is sent again.
#[derive(Debug, Clone)]
struct NextOnNotApplied {
    addrs: Arc<[String]>,
    started: Instant,
    retry_for: Duration,
    pause: Duration,
    /// What each endpoint last answered, or why it was not reached.
    why: Vec<Option<String>>,
}

impl NextOnNotApplied {
    fn new(addrs: Arc<[String]>, started: Instant, retry_for: Duration) -> Self {
        let why = vec![None; addrs.len()];
        Self { addrs, started, retry_for, pause: weft_agent::INITIAL_BACKOFF, why }
    }

    /// What the endpoints said so far: each and its last answer (or why it was not reached).
    fn answers(&self) -> String {
        let each: Vec<String> = (self.why.iter().zip(self.addrs.iter()))
            .filter_map(|(why, addr)| why.as_ref().map(|why| format!("{addr}: {why}")))
            .collect();
        each.join("; ")
    }

    /// The error once the budget is spent, with the last status's code and metadata (it was
    /// not applied).
    fn gave_up(&self, last: &Status) -> Status {
        let message = format!(
            "no node of the list took the request within {} ms: {}",
            self.retry_for.as_millis(),
            self.answers()
        );
        Status::with_metadata(last.code(), message, last.metadata().clone())
    }

    /// An error that came after the request moved on (a timeout as the budget ran out, say),
    /// saying what the nodes before it answered; its code and metadata kept.
    fn after_moving_on(&self, status: &Status) -> Status {
        let message = format!("{} (before it: {})", status.message(), self.answers());
        Status::with_metadata(status.code(), message, status.metadata().clone())
    }
}

impl Policy<http::Request<Payload>, http::Response<Body>, BoxError> for NextOnNotApplied {
    type Future = tokio::time::Sleep;

    fn retry(&mut self, request: &mut http::Request<Payload>, result: &mut Answer) -> Option<Self::Future> {
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                // Every error of an attempt is a status.
                if let Some(status) = e.downcast_ref::<Status>()
                    && self.why.iter().any(Option::is_some)
                {
                    *e = self.after_moving_on(status).into();
                }
                return None;
            }
        };
        // tonic sends a handler's error as a trailers-only response: the status is in the
        // headers. One in the trailers came after data, and is the caller's to see.
        let status = Status::from_header_map(response.headers())?;
        if status.code() != Code::Unavailable || !wire::is_not_applied(&status) {
            return None;
        }
        let answered = response.extensions().get::<Answered>()?.clone();
        for (i, why) in answered.unreached {
            self.why[i] = Some(why);
        }
        self.why[answered.at] = Some(status.message().to_owned());
        if self.addrs.len() < 2 {
            return None;
        }
        if Instant::now() + self.pause >= self.started + self.retry_for {
            *result = Err(self.gave_up(&status).into());
            return None;
        }
        tracing::debug!(endpoint = %self.addrs[answered.at], why = status.message(), "not applied; trying the next endpoint");
        request.extensions_mut().insert(StartAt((answered.at + 1) % self.addrs.len()));
        let pause = self.pause;
        self.pause = weft_agent::next_backoff(pause);
        Some(tokio::time::sleep(pause))
    }

    fn clone_request(&mut self, request: &http::Request<Payload>) -> Option<http::Request<Payload>> {
        let Payload::Buffered(bytes) = request.body() else { return None };
        let mut copy = http::Request::new(Payload::Buffered(bytes.clone()));
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        Some(copy)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A node's answer, as a response tonic's client reads.
    fn answer(status: Option<Status>) -> http::Response<Body> {
        status.map_or_else(|| http::Response::new(Body::empty()), |s| s.into_http())
    }

    /// Sends a request through the retry policy to fake nodes, each answering as `answers`
    /// says; returns the result and the endpoints asked, in order.
    async fn send(
        answers: Vec<fn() -> Option<Status>>,
        payload: Payload,
        retry_for: Duration,
    ) -> (Answer, Vec<usize>) {
        let addrs: Arc<[String]> = (0..answers.len()).map(|i| format!("node-{i}:7400")).collect();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let seen = asked.clone();
        let nodes = tower::service_fn(move |request: http::Request<Payload>| {
            let at = request.extensions().get::<StartAt>().map_or(0, |s| s.0);
            seen.lock().unwrap().push(at);
            let mut response = answer(answers[at]());
            response.extensions_mut().insert(Answered { at, unreached: Vec::new() });
            std::future::ready(Ok::<_, BoxError>(response))
        });
        let policy = NextOnNotApplied::new(addrs, Instant::now(), retry_for);
        let result = Retry::new(policy, nodes).oneshot(http::Request::new(payload)).await;
        let asked = asked.lock().unwrap().clone();
        (result, asked)
    }

    fn not_applied() -> Option<Status> {
        Some(wire::not_applied("not applied: this node has not joined a cluster yet", None))
    }

    fn ok() -> Option<Status> {
        None
    }

    fn unknown() -> Option<Status> {
        Some(Status::unavailable("outcome unknown: the leader lost its quorum"))
    }

    fn buffered() -> Payload {
        Payload::Buffered(Bytes::from_static(b"\0\0\0\0\x02hi"))
    }

    #[tokio::test]
    async fn not_applied_goes_to_the_next_node_and_an_unknown_outcome_is_not_sent_again() {
        let budget = Duration::from_secs(5);
        let (result, asked) = send(vec![not_applied, ok, ok], buffered(), budget).await;
        assert!(result.unwrap().headers().get("grpc-status").is_none(), "the second node's answer");
        assert_eq!(asked, [0, 1]);

        let (result, asked) = send(vec![unknown, ok, ok], buffered(), budget).await;
        let status = Status::from_header_map(result.unwrap().headers()).unwrap();
        assert_eq!(status.message(), "outcome unknown: the leader lost its quorum");
        assert_eq!(asked, [0], "an unknown outcome is not sent again");

        let (_, asked) = send(vec![not_applied, unknown, ok], buffered(), budget).await;
        assert_eq!(asked, [0, 1], "not applied, then unknown: it stops there");

        let refused = || Some(Status::failed_precondition("version mismatch"));
        let (_, asked) = send(vec![refused, ok, ok], buffered(), budget).await;
        assert_eq!(asked, [0], "a refusal is the answer");

        let (_, asked) = send(vec![not_applied], buffered(), budget).await;
        assert_eq!(asked, [0], "a lone node is not asked again: it already waited for a leader");

        let stream = Payload::Stream(Some(Body::empty()));
        let (result, asked) = send(vec![not_applied, ok, ok], stream, budget).await;
        assert_eq!(asked, [0], "a request stream is sent once");
        assert!(wire::is_not_applied(&Status::from_header_map(result.unwrap().headers()).unwrap()));
    }

    #[tokio::test]
    async fn an_error_after_moving_on_says_what_the_nodes_before_it_answered() {
        let mut policy = NextOnNotApplied::new(
            ["a:1".into(), "b:2".into()].into(),
            Instant::now(),
            Duration::from_secs(5),
        );
        let mut request = http::Request::new(buffered());
        let mut first = answer(not_applied());
        first.extensions_mut().insert(Answered { at: 0, unreached: vec![(1, "Connection refused".into())] });
        let mut result: Answer = Ok(first);
        assert!(policy.retry(&mut request, &mut result).is_some(), "not applied: on to the next");
        assert_eq!(request.extensions().get::<StartAt>().map(|s| s.0), Some(1));
        let mut result: Answer = Err(timed_out("b:2"));
        assert!(policy.retry(&mut request, &mut result).is_none(), "a timeout is not sent again");
        let status = Status::from_error(result.unwrap_err());
        assert_eq!(status.code(), Code::Cancelled);
        assert_eq!(
            status.message(),
            "timed out waiting for an answer from b:2 (before it: a:1: not applied: this node has not \
             joined a cluster yet; b:2: Connection refused)"
        );
    }

    #[tokio::test]
    async fn round_the_list_until_the_budget_then_every_node_is_named() {
        let started = Instant::now();
        let budget = Duration::from_millis(400);
        let (result, asked) = send(vec![not_applied, not_applied, not_applied], buffered(), budget).await;
        assert!(started.elapsed() < budget + Duration::from_secs(1), "bounded: {:?}", started.elapsed());
        assert!(asked.len() > 3, "went round the list: {asked:?}");
        assert!(asked.windows(2).all(|w| w[1] == (w[0] + 1) % 3), "each try on the next node: {asked:?}");
        let status = Status::from_error(result.unwrap_err());
        assert_eq!(status.code(), Code::Unavailable);
        assert!(wire::is_not_applied(&status), "still says not applied");
        for i in 0..3 {
            assert!(
                status.message().contains(&format!("node-{i}:7400: not applied")),
                "{}",
                status.message()
            );
        }
    }
}

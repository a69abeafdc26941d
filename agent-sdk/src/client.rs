//! [`Client`]: call agents, start and stop instances, wait for and cancel executions, read
//! and write state, and reach streams, from any process.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::executions_client::ExecutionsClient;
use weft_proto::fabric::v1::instances_client::InstancesClient;

use crate::connection::{self, Channel, Connection};
use crate::lease::Lease;
use crate::state::State;
use crate::streams::{self, Stream, StreamRef};
use crate::tls::Tls;
use crate::token::Token;
use crate::types::{Execution, RetryPolicy, Started, outcome};
use crate::{Codec, Error, codec};

/// How long a call waits for its result unless told otherwise.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);
pub use crate::connection::MAX_MESSAGE_BYTES;

/// A handle on a Weft fabric: any node of a cluster, failing over between the endpoints it
/// was given. Cheap to clone; clones share connections.
///
/// ```no_run
/// # async fn demo() -> Result<(), weft_agent::Error> {
/// let client = weft_agent::Client::new(["127.0.0.1:7400", "127.0.0.1:7401"])?;
/// let pong: String = client.call("ping", "ping", &"hello").await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    pub(crate) conn: Connection,
    pub(crate) codec: Codec,
}

/// Settings of a [`Client`].
///
/// ```no_run
/// # fn demo() -> Result<(), weft_agent::Error> {
/// use std::time::Duration;
/// let client = weft_agent::Client::builder(["10.0.0.1:7400", "10.0.0.2:7400"])
///     .retry_for(Duration::from_secs(60))
///     .codec(weft_agent::Codec::Json)
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    options: connection::Options,
    codec: Codec,
    tls: Option<Tls>,
    token: Option<Token>,
}

impl ClientBuilder {
    /// How long a request keeps trying, across nodes, before it fails (default 30 s).
    pub fn retry_for(mut self, d: Duration) -> Self {
        self.options.retry_for = d;
        self
    }

    /// How long one try of a read or write may take (default 10 s; waits for results take as
    /// long as the wait).
    pub fn attempt_timeout(mut self, d: Duration) -> Self {
        self.options.attempt_timeout = d;
        self
    }

    /// How this client encodes arguments (default bincode).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Reach the nodes over TLS with these settings (see [`Tls`]): endpoints given as
    /// `HOST:PORT` then mean `https://HOST:PORT`. `None` (the default): plain connections,
    /// unless [`tls_from_env`](Self::tls_from_env) finds settings.
    pub fn tls(mut self, tls: Option<Tls>) -> Self {
        self.tls = tls;
        self
    }

    /// TLS settings from the environment (`WEFT_TLS_CA`, `WEFT_TLS_CERT`, `WEFT_TLS_KEY`; see
    /// [`Tls::from_env`]) when `WEFT_TLS_CA` is set; otherwise what was set before.
    pub fn tls_from_env(mut self) -> Result<Self, Error> {
        if let Some(tls) = Tls::from_env()? {
            self.tls = Some(tls);
        }
        Ok(self)
    }

    /// Send this bearer token on every request (see [`Token`]), for nodes with auth on.
    /// `None` (the default): no token, unless [`token_from_env`](Self::token_from_env) finds
    /// one.
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), weft_agent::Error> {
    /// use weft_agent::{Client, Token};
    /// let token = Token::from_file("secrets/orders-client.token")?;
    /// let client = Client::builder(["10.0.0.1:7400"]).token(Some(token)).build()?;
    /// # Ok(()) }
    /// ```
    pub fn token(mut self, token: Option<Token>) -> Self {
        self.token = token;
        self
    }

    /// Unless a token was given with [`token`](Self::token) (which wins, called before or
    /// after), the token of the environment: `WEFT_TOKEN`, or the file `WEFT_TOKEN_FILE` names
    /// ([`Token::explicit_or_env`]; both set is an error naming both).
    pub fn token_from_env(mut self) -> Result<Self, Error> {
        self.token = Token::explicit_or_env(self.token.take())?;
        Ok(self)
    }

    /// The client. No connection is opened until the first request.
    pub fn build(self) -> Result<Client, Error> {
        Ok(Client {
            conn: Connection::new(self.endpoints, self.options, self.tls.as_ref(), self.token.as_ref())?,
            codec: self.codec,
        })
    }
}

fn grpc_deadline(wait: Duration) -> Duration {
    wait + Duration::from_secs(5)
}

/// A status that says a wait ran out (and which execution goes on), or `None`.
fn timed_out(status: &tonic::Status) -> Option<u64> {
    if status.code() != tonic::Code::DeadlineExceeded {
        return None;
    }
    weft_proto::wire::execution_of(status)
}

/// A stable 64-bit FNV-1a hash of the parts of a call, for child idempotency keys.
pub(crate) fn call_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(&[0xff]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// A fresh idempotency key, so a create sent again after a failure cannot run twice.
pub(crate) fn fresh_key() -> String {
    format!("sdk-{:032x}", rand::random::<u128>())
}

fn millis_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Client {
    /// A client for a cluster reachable at any of `endpoints` (`HOST:PORT`), with defaults.
    pub fn new<I, S>(endpoints: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::builder(endpoints).build()
    }

    /// A client with settings.
    pub fn builder<I, S>(endpoints: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientBuilder {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            options: connection::Options::default(),
            codec: Codec::default(),
            tls: None,
            token: None,
        }
    }

    pub(crate) fn executions(&self, channel: Channel) -> ExecutionsClient<Channel> {
        ExecutionsClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn instances(&self, channel: Channel) -> InstancesClient<Channel> {
        InstancesClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Calls `delegate` of `agent` with `args` and waits (up to a minute) for its result.
    /// Safe to use across failures: the call carries an idempotency key, so it runs once.
    pub async fn call<A, R>(&self, agent: &str, delegate: &str, args: &A) -> Result<R, Error>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.request(agent, delegate).args(args).call().await
    }

    /// A call with options: instance, idempotency key, timeout, delay, priority, retries.
    ///
    /// ```no_run
    /// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
    /// use std::time::Duration;
    /// let total: u64 = client
    ///     .request("counter", "increment")
    ///     .instance("c-1")
    ///     .args(&5u64)
    ///     .idempotency_key("order-1234")
    ///     .timeout(Duration::from_secs(10))
    ///     .call()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn request(&self, agent: &str, delegate: &str) -> Call<'_> {
        Call {
            client: self,
            req: pb::CreateExecutionRequest {
                agent: agent.to_owned(),
                delegate: delegate.to_owned(),
                payload: Some(pb::Payload { codec: self.codec.as_str().to_owned(), data: Vec::new() }),
                ..Default::default()
            },
            wait: DEFAULT_WAIT,
            codec: self.codec,
            error: None,
            child: None,
        }
    }

    /// Waits up to `timeout` for execution `id` to finish and decodes its result.
    pub async fn wait<R: DeserializeOwned>(&self, id: u64, timeout: Duration) -> Result<R, Error> {
        let e = self.wait_final(id, timeout).await?;
        outcome(&e)
    }

    pub(crate) async fn wait_final(&self, id: u64, timeout: Duration) -> Result<pb::Execution, Error> {
        let timeout_ms = timeout.as_millis().max(1) as u64;
        self.conn
            .run(true, |channel| {
                let mut client = self.executions(channel);
                async move {
                    let mut request = tonic::Request::new(pb::WaitRequest { id, timeout_ms });
                    request.set_timeout(grpc_deadline(timeout));
                    let mut stream = client.wait(request).await?.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(e))
                                if matches!(e.status.as_str(), "completed" | "failed" | "cancelled") =>
                            {
                                return Ok(Ok(e));
                            }
                            Ok(Some(_)) => continue,
                            Ok(None) => {
                                return Err(tonic::Status::unavailable("the wait stream ended early"));
                            }
                            Err(status) if timed_out(&status).is_some() => {
                                return Ok(Err(Error::Timeout { execution: id }));
                            }
                            Err(status) => return Err(status),
                        }
                    }
                }
            })
            .await?
    }

    /// Execution `id` as the fabric has it now.
    pub async fn execution(&self, id: u64) -> Result<Execution, Error> {
        let attempt = self.conn.options().attempt_timeout;
        let raw = self
            .conn
            .run(true, |channel| {
                let mut client = self.executions(channel);
                async move {
                    let mut request = tonic::Request::new(pb::GetExecutionRequest { id, consistency: 0 });
                    request.set_timeout(attempt);
                    Ok(client.get(request).await?.into_inner())
                }
            })
            .await?;
        Ok(Execution::from_pb(raw))
    }

    /// Cancels execution `id` and its unfinished children; how many were cancelled. A
    /// running handler sees the cancellation through its context.
    pub async fn cancel(&self, id: u64, reason: &str) -> Result<u64, Error> {
        let attempt = self.conn.options().attempt_timeout;
        self.conn
            .run(false, |channel| {
                let mut client = self.executions(channel);
                let reason = reason.to_owned();
                async move {
                    let mut request = tonic::Request::new(pb::CancelExecutionRequest { id, reason });
                    request.set_timeout(attempt);
                    Ok(client.cancel(request).await?.into_inner().cancelled)
                }
            })
            .await
    }

    /// Starts an instance of `agent` (the fabric picks its id) and waits for its `Start`.
    pub async fn start_instance<A, R>(&self, agent: &str, args: &A) -> Result<Started<R>, Error>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.start_instance_with(agent, None, args, None, None).await
    }

    /// Starts instance `id` of `agent` and waits for its `Start`. With an idempotency key a
    /// repeated start returns the first one; without, starting an existing id is refused.
    pub async fn start_instance_with<A, R>(
        &self,
        agent: &str,
        id: Option<&str>,
        args: &A,
        idempotency_key: Option<&str>,
        parent: Option<(&str, &str)>,
    ) -> Result<Started<R>, Error>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let payload = codec::encode(self.codec, args)?;
        let key = idempotency_key.map_or_else(fresh_key, str::to_owned);
        let req = pb::StartInstanceRequest {
            agent: agent.to_owned(),
            instance: id.unwrap_or_default().to_owned(),
            payload: Some(payload),
            idempotency_key: key,
            parent: parent
                .map(|(agent, instance)| pb::InstanceRef { agent: agent.into(), instance: instance.into() }),
            timeout_ms: DEFAULT_WAIT.as_millis() as u64,
        };
        let reply = self
            .conn
            .run(true, |channel| {
                let mut client = self.instances(channel);
                let req = req.clone();
                async move {
                    let mut request = tonic::Request::new(req);
                    request.set_timeout(grpc_deadline(DEFAULT_WAIT));
                    Ok(client.start(request).await?.into_inner())
                }
            })
            .await?;
        let start = reply.start.unwrap_or_default();
        Ok(Started {
            agent: reply.agent,
            id: reply.instance,
            result: outcome(&start)?,
            created: reply.created,
        })
    }

    /// Stops instance `id` of `agent`: waits for its `Stop`, after which the instance, its
    /// state and its children are removed.
    pub async fn stop_instance(&self, agent: &str, id: &str) -> Result<(), Error> {
        let req = pb::StopInstanceRequest {
            agent: agent.to_owned(),
            instance: id.to_owned(),
            timeout_ms: DEFAULT_WAIT.as_millis() as u64,
        };
        let reply = self
            .conn
            .run(true, |channel| {
                let mut client = self.instances(channel);
                let req = req.clone();
                async move {
                    let mut request = tonic::Request::new(req);
                    request.set_timeout(grpc_deadline(DEFAULT_WAIT));
                    Ok(client.stop(request).await?.into_inner())
                }
            })
            .await?;
        let stop = reply.stop.unwrap_or_default();
        match stop.status.as_str() {
            // An instance stopped while it was starting: its Start was cancelled instead.
            "cancelled" if stop.delegate == "Start" => Ok(()),
            _ => outcome::<serde::de::IgnoredAny>(&stop).map(drop),
        }
    }

    /// Typed key/value state of `namespace` (`shared/<name>` or
    /// `instance/<agent>/<id>`); values are JSON, so `weft state get` shows them.
    pub fn state(&self, namespace: &str) -> State {
        State::new(self.conn.clone(), namespace)
    }

    /// Lease `name`: acquire, renew, release, see who holds it (see [`Lease`]). Sends nothing
    /// until used.
    ///
    /// ```no_run
    /// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
    /// let grant = client.lease("scaler").acquire("scaler-1", std::time::Duration::from_secs(10)).await?;
    /// println!("active with token {}", grant.token);
    /// # Ok(()) }
    /// ```
    pub fn lease(&self, name: &str) -> Lease {
        Lease::new(self.conn.clone(), name)
    }

    /// Schedule `name`: create it, see its next due times and runs, pause, resume, trigger,
    /// delete (see [`Schedule`](crate::Schedule)). Sends nothing until used.
    ///
    /// ```no_run
    /// use weft_agent::schedule::Spec;
    /// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
    /// client.schedule("nightly").create(&Spec::cron("0 2 * * *", "reports", "build"), &()).await?;
    /// # Ok(()) }
    /// ```
    pub fn schedule(&self, name: &str) -> crate::Schedule {
        crate::Schedule::new(self.conn.clone(), self.codec, name)
    }

    /// Stream `name`: create it, append, listen, close, delete (see [`Stream`]). Sends
    /// nothing until used.
    ///
    /// ```no_run
    /// use weft_agent::streams::Config;
    /// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
    /// let orders = client.stream("orders");
    /// orders.create(Config::new()).await?;
    /// orders.append(&"tea").await?;
    /// # Ok(()) }
    /// ```
    pub fn stream(&self, name: &str) -> Stream {
        Stream::new(self.clone(), name, None)
    }

    /// The stream a reference names; its listeners end with
    /// [`Error::StreamDeleted`] if that stream was deleted, even
    /// if one of the same name exists now.
    ///
    /// ```no_run
    /// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
    /// let numbers: weft_agent::StreamRef = client.call("numbers", "open", &10u64).await?;
    /// let listener = client.stream_from(&numbers).listener::<u64>().start().await?;
    /// # Ok(()) }
    /// ```
    pub fn stream_from(&self, reference: &StreamRef) -> Stream {
        Stream::new(self.clone(), &reference.name, Some(reference.uid))
    }

    /// One page of streams in name order, after `after` (a previous page's `next`; `None`:
    /// from the first).
    ///
    /// ```no_run
    /// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
    /// let first = client.list_streams(None).await?;
    /// println!("{} streams, more: {}", first.streams.len(), first.next.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn list_streams(&self, after: Option<&str>) -> Result<streams::Page, Error> {
        let attempt = self.conn.options().attempt_timeout;
        let req = pb::ListStreamsRequest {
            page_token: after.unwrap_or_default().to_owned(),
            limit: 0,
            consistency: 0,
        };
        let page = self
            .conn
            .run(true, |channel| {
                let mut request = tonic::Request::new(req.clone());
                request.set_timeout(attempt);
                async move { Ok(streams::grpc(channel).list(request).await?.into_inner()) }
            })
            .await?;
        Ok(streams::Page {
            streams: page.streams.into_iter().map(streams::Info::from_pb).collect(),
            next: (!page.next_page_token.is_empty()).then_some(page.next_page_token),
        })
    }
}

/// A call being prepared; see [`Client::request`].
#[must_use = "a call does nothing until `call()` or `send()`"]
pub struct Call<'a> {
    client: &'a Client,
    req: pb::CreateExecutionRequest,
    wait: Duration,
    codec: Codec,
    error: Option<Error>,
    /// For a call from a handler: its place among the handler's calls.
    child: Option<u64>,
}

impl Call<'_> {
    /// The instance to call.
    pub fn instance(mut self, id: &str) -> Self {
        self.req.instance = id.to_owned();
        self
    }

    /// The arguments, encoded with the client's codec (or the one set by [`Call::codec`]
    /// before this).
    pub fn args<A: Serialize + ?Sized>(mut self, args: &A) -> Self {
        match codec::encode(self.codec, args) {
            Ok(p) => self.req.payload = Some(p),
            Err(e) => self.error = Some(e),
        }
        self
    }

    /// Encode the arguments with `codec`.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Creating again with this key returns the first execution (and its result) for the
    /// fabric's retention time. Without one a fresh key is used for every call.
    pub fn idempotency_key(mut self, key: &str) -> Self {
        self.req.idempotency_key = key.to_owned();
        self
    }

    /// Fail the execution unless it finishes within `d` of its creation.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.req.timeout_ms = Some(d.as_millis().max(1) as u64);
        self
    }

    /// Fail the execution unless it finishes by `t`.
    pub fn deadline(mut self, t: SystemTime) -> Self {
        self.req.deadline_ms = Some(millis_since_epoch(t));
        self
    }

    /// Do not run it before `d` from now (a durable timer).
    pub fn delay(mut self, d: Duration) -> Self {
        self.req.delay_ms = Some(d.as_millis().max(1) as u64);
        self
    }

    /// Do not run it before `t`.
    pub fn not_before(mut self, t: SystemTime) -> Self {
        self.req.not_before_ms = Some(millis_since_epoch(t));
        self
    }

    /// Higher runs first (default 0).
    pub fn priority(mut self, p: i32) -> Self {
        self.req.priority = p;
        self
    }

    /// Retry handler errors.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.req.retry = Some(policy.to_pb());
        self
    }

    /// Wait, pending, for a session that serves this delegate when the agent's connected
    /// sessions do not (during a rolling deploy that adds it). Without it such a call is
    /// refused at once ([`Error::Refused`]) with the delegates those sessions serve. With no
    /// session of the agent at all a call always waits (a scaler may start one).
    pub fn wait_for_delegate(mut self) -> Self {
        self.req.wait_for_delegate = true;
        self
    }

    /// How long [`Call::call`] waits for the result (default a minute). The execution goes
    /// on after that; the error names it.
    pub fn wait(mut self, d: Duration) -> Self {
        self.wait = d;
        self
    }

    /// A child call: the `seq`-th call of the handler of execution `id`, which holds `token`.
    pub(crate) fn child(mut self, id: u64, token: u64, seq: u64) -> Self {
        self.req.parent_id = id;
        self.req.parent_token = token;
        self.child = Some(seq);
        self
    }

    fn prepared(mut self) -> Result<(pb::CreateExecutionRequest, Duration), Error> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if self.req.idempotency_key.is_empty() {
            self.req.idempotency_key = match self.child {
                // The handler's n-th call, and what it calls: a handler that runs again makes
                // the same call and finds the same child; one that runs again on other state
                // (after a conflict) and calls with other arguments gets a new child.
                Some(seq) => {
                    let payload = self.req.payload.as_ref().map_or(&[][..], |p| p.data.as_slice());
                    let codec = self.req.payload.as_ref().map_or("", |p| p.codec.as_str());
                    let hash = call_hash(&[
                        self.req.agent.as_bytes(),
                        self.req.instance.as_bytes(),
                        self.req.delegate.as_bytes(),
                        codec.as_bytes(),
                        payload,
                    ]);
                    format!("call-{seq}-{hash:016x}")
                }
                None => fresh_key(),
            };
        }
        Ok((self.req, self.wait))
    }

    /// Creates the execution and returns at once with its id (see [`Client::wait`]).
    pub async fn send(self) -> Result<u64, Error> {
        let client = self.client;
        let attempt = client.conn.options().attempt_timeout;
        let (req, _) = self.prepared()?;
        client
            .conn
            .run(true, |channel| {
                let mut grpc = client.executions(channel);
                let req = req.clone();
                async move {
                    let mut request = tonic::Request::new(req);
                    request.set_timeout(attempt);
                    let reply = grpc.create(request).await?.into_inner();
                    Ok(reply.execution.map_or(0, |e| e.id))
                }
            })
            .await
    }

    /// Creates the execution and waits for its result.
    pub async fn call<R: DeserializeOwned>(self) -> Result<R, Error> {
        let client = self.client;
        let (req, wait) = self.prepared()?;
        let e = client
            .conn
            .run(true, |channel| {
                let mut grpc = client.executions(channel);
                let call =
                    pb::CallRequest { create: Some(req.clone()), timeout_ms: wait.as_millis().max(1) as u64 };
                async move {
                    let mut request = tonic::Request::new(call);
                    request.set_timeout(grpc_deadline(wait));
                    match grpc.call(request).await {
                        Ok(reply) => Ok(Ok(reply.into_inner())),
                        Err(status) => match timed_out(&status) {
                            Some(execution) => Ok(Err(Error::Timeout { execution })),
                            None => Err(status),
                        },
                    }
                }
            })
            .await??;
        outcome(&e)
    }
}

//! [`Worker`]: runs agents' handlers for the executions the fabric assigns to this process.
//!
//! ```text
//!            ┌────────────── Listen stream to one node (fails over to the next) ──────┐
//!   fabric ──┤ assignment ─► spawn handler (at most `capacity` at once) ─► completion ├─► fabric
//!            │ revocation ─► cancel that handler's context   heartbeats, lease renewals│
//!            └─────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! When the stream breaks the worker opens a new session on the next endpoint, with back-off.
//! Handlers that were running go on; their completions are sent on the new stream, and
//! completions not yet acknowledged are sent again (the fabric recognises a repeat). The
//! fabric gives the old session's unfinished work to whoever has room, so an execution may
//! run twice; its result and effects count once.
//!
//! [`Stopper::stop`] drains: no new assignments, running handlers get `drain_timeout` to
//! finish, what remains is given back to the fabric for another process.
//! [`Worker::run_until_signal`] does the same on SIGTERM or ctrl-c.
//!
//! A process started by a scaler (or any supervisor) needs no flags: [`Worker::from_env`]
//! reads its endpoints, session name, capacity, drain time and, for a per-instance process,
//! the one instance it serves from the environment ([`env`] names the variables).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use weft_proto::fabric::v1 as pb;

use crate::agent::Agent;
use crate::client::Client;
use crate::connection::{self, INITIAL_BACKOFF, RequiresTls, next_backoff};
use crate::context::Context;
use crate::streams::Delivery;
use crate::tls::Tls;
use crate::token::Token;
use crate::{Codec, Error};

/// Messages to the fabric that may wait while the stream is busy, beyond the capacity.
const OUTBOUND_SLACK: usize = 64;
/// How long a session must have lasted for a reconnect to start from the first back-off.
const STABLE_SESSION: Duration = Duration::from_secs(5);
/// How long a revoked handler may run on before it is dropped.
const REVOKED_GRACE: Duration = Duration::from_secs(5);
/// How long a stopping worker waits for the fabric to acknowledge its last completions.
const FINAL_ACK_WAIT: Duration = Duration::from_secs(2);
/// How often completions the fabric could not take (or has not acknowledged) are looked at.
const RESEND_EVERY: Duration = Duration::from_millis(500);
/// A completion not acknowledged within this long is sent again (a repeat is recognised).
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// A completion still not taken this long after it was first sent means the node cannot get
/// work committed (cut off from the majority, say): the worker moves to another node.
const STUCK_COMPLETION: Duration = Duration::from_secs(5);

/// The environment variables [`WorkerBuilder::from_env`] reads: what a scaler (or any
/// supervisor) sets for the processes it starts.
pub mod env {
    /// The fabric's endpoints, comma-separated `HOST:PORT`s, each with its port (required;
    /// parsed by [`crate::parse_endpoints`]).
    pub const ENDPOINT: &str = "WEFT_ENDPOINT";
    /// The session's name ([`WorkerBuilder::name`](super::WorkerBuilder::name)); a scaler
    /// recognises its processes' sessions by it.
    pub const SESSION_NAME: &str = "WEFT_SESSION_NAME";
    /// Most executions the process runs at once
    /// ([`WorkerBuilder::capacity`](super::WorkerBuilder::capacity)).
    pub const CAPACITY: &str = "WEFT_CAPACITY";
    /// How long a draining worker lets running handlers finish, in milliseconds
    /// ([`WorkerBuilder::drain_timeout`](super::WorkerBuilder::drain_timeout)).
    pub const DRAIN_TIMEOUT_MS: &str = "WEFT_DRAIN_TIMEOUT_MS";
    /// With [`INSTANCE`]: the agent of the one instance this process serves.
    pub const AGENT: &str = "WEFT_AGENT";
    /// PEM file of the CA that signed the nodes' certificates: turns TLS on
    /// ([`crate::tls::env`]).
    pub const TLS_CA: &str = crate::tls::env::CA;
    /// PEM file of this process's client certificate (optional, with [`TLS_KEY`]).
    pub const TLS_CERT: &str = crate::tls::env::CERT;
    /// PEM file of the key of [`TLS_CERT`].
    pub const TLS_KEY: &str = crate::tls::env::KEY;
    /// The bearer token to send ([`crate::token::env`]): its text.
    pub const TOKEN: &str = crate::token::env::TOKEN;
    /// A file holding the bearer token (instead of [`TOKEN`]).
    pub const TOKEN_FILE: &str = crate::token::env::TOKEN_FILE;
    /// With [`AGENT`]: the one instance this process claims and serves alone
    /// ([`WorkerBuilder::claim`](super::WorkerBuilder::claim) and
    /// [`WorkerBuilder::only_claimed`](super::WorkerBuilder::only_claimed)).
    pub const INSTANCE: &str = "WEFT_INSTANCE";
}

/// Stops a running [`Worker`] gracefully; cheap to clone.
#[derive(Clone, Debug)]
pub struct Stopper(CancellationToken);

impl Stopper {
    /// Asks the worker to drain and stop.
    pub fn stop(&self) {
        self.0.cancel();
    }
}

/// Settings of a [`Worker`].
#[derive(Debug, Clone)]
pub struct WorkerBuilder {
    endpoints: Vec<String>,
    agents: Vec<Agent>,
    capacity: u32,
    lease: Option<Duration>,
    name: String,
    drain_timeout: Duration,
    codec: Codec,
    options: connection::Options,
    claims: Vec<(String, String)>,
    only_claimed: bool,
    tls: Option<Tls>,
    token: Option<Token>,
}

impl WorkerBuilder {
    /// Reach the nodes over TLS with these settings (see [`Tls`]); `None` (the default):
    /// plain connections. [`from_env`](Self::from_env) sets them from `WEFT_TLS_CA`,
    /// `WEFT_TLS_CERT` and `WEFT_TLS_KEY`.
    pub fn tls(mut self, tls: Option<Tls>) -> Self {
        self.tls = tls;
        self
    }

    /// Send this bearer token on every request (the Listen stream, its reconnects and the
    /// handlers' calls; see [`Token`]), for nodes with auth on: an `agent` token whose serve
    /// list names this worker's agents. `None` (the default): no token, unless
    /// [`from_env`](Self::from_env) finds `WEFT_TOKEN` or `WEFT_TOKEN_FILE`; a token given
    /// here wins over those.
    pub fn token(mut self, token: Option<Token>) -> Self {
        self.token = token;
        self
    }

    /// Serves `agent` (several agents may share one worker).
    pub fn agent(mut self, agent: Agent) -> Self {
        self.agents.push(agent);
        self
    }

    /// Most executions this process runs at once (default 16).
    pub fn capacity(mut self, capacity: u32) -> Self {
        self.capacity = capacity;
        self
    }

    /// Each assignment's lease: renewed every third of it while its handler runs; if this
    /// process stops renewing (hung, cut off) the execution goes to another after it. `None`:
    /// held for as long as the session lives. Default 30 s.
    pub fn lease(mut self, lease: Option<Duration>) -> Self {
        self.lease = lease;
        self
    }

    /// A label the fabric shows for this process (default `weft-agent pid N`).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// How long a stopping worker lets running handlers finish before it gives their work
    /// back (default 10 s).
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = d;
        self
    }

    /// The codec of calls made from handler contexts (default bincode).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// How long a request from a handler keeps trying across nodes (default 30 s).
    pub fn retry_for(mut self, d: Duration) -> Self {
        self.options.retry_for = d;
        self
    }

    /// Claims instance `instance` of `agent` when the session opens: it is activated on this
    /// process (the open is refused if another session serves it). With
    /// [`only_claimed`](Self::only_claimed), no other instance of `agent` comes here.
    ///
    /// ```no_run
    /// # use weft_agent::{Agent, Worker};
    /// # fn demo(agent: Agent) -> Result<(), weft_agent::Error> {
    /// let worker = Worker::builder(["127.0.0.1:7400"])
    ///     .agent(agent)
    ///     .claim("counter", "c-1")
    ///     .only_claimed(true)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn claim(mut self, agent: &str, instance: &str) -> Self {
        self.claims.push((agent.to_owned(), instance.to_owned()));
        self
    }

    /// Serve only the claimed instances of the agents that have claims (a per-instance
    /// process); agents without claims are served as usual. Default false.
    pub fn only_claimed(mut self, only: bool) -> Self {
        self.only_claimed = only;
        self
    }

    /// Takes settings from the environment (the variables in [`env`]), on top of what was
    /// set before: `WEFT_ENDPOINT` (comma-separated; required unless endpoints were given),
    /// `WEFT_SESSION_NAME`, `WEFT_CAPACITY`, `WEFT_DRAIN_TIMEOUT_MS`, `WEFT_AGENT` with
    /// `WEFT_INSTANCE` (claim that instance and serve only it), TLS: `WEFT_TLS_CA`, with
    /// `WEFT_TLS_CERT` and `WEFT_TLS_KEY` for a client certificate ([`Tls::from_env`]), and the
    /// bearer token: `WEFT_TOKEN` or `WEFT_TOKEN_FILE` ([`Token::from_env`]; both set is an
    /// error), unless a token was given to the builder, which wins ([`Token::explicit_or_env`]).
    /// A variable that is set but empty counts as unset. A bad value is [`Error::Usage`]
    /// naming the variable.
    ///
    /// ```no_run
    /// # use weft_agent::{Agent, Worker};
    /// # async fn demo(agent: Agent) -> Result<(), weft_agent::Error> {
    /// Worker::from_env()?.agent(agent).build()?.run_until_signal().await
    /// # }
    /// ```
    pub fn from_env(self) -> Result<Self, Error> {
        self.with_vars(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    /// [`from_env`](Self::from_env) over any source of variables (tests give a map).
    fn with_vars(mut self, var: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        if let Some(endpoints) = var(env::ENDPOINT) {
            self.endpoints = crate::parse_endpoints(&endpoints)
                .map_err(|e| Error::Usage(format!("{}='{endpoints}': {e}", env::ENDPOINT)))?;
        }
        if self.endpoints.is_empty() {
            return Err(Error::Usage(format!(
                "no endpoints: set {} to the fabric's HOST:PORT list (comma-separated)",
                env::ENDPOINT
            )));
        }
        if let Some(name) = var(env::SESSION_NAME) {
            self.name = name;
        }
        let number = |name: &str, value: String| {
            value
                .trim()
                .parse::<u64>()
                .map_err(|_| Error::Usage(format!("{name}='{value}' is not a whole number")))
        };
        if let Some(capacity) = var(env::CAPACITY) {
            let n = number(env::CAPACITY, capacity)?;
            self.capacity =
                u32::try_from(n).map_err(|_| Error::Usage(format!("{}={n} is too large", env::CAPACITY)))?;
        }
        if let Some(drain) = var(env::DRAIN_TIMEOUT_MS) {
            self.drain_timeout = Duration::from_millis(number(env::DRAIN_TIMEOUT_MS, drain)?);
        }
        if let Some(tls) = Tls::from_vars(&var)? {
            self.tls = Some(tls);
        }
        // A token given to the builder wins over the environment's (crate::token's rule).
        self.token = Token::explicit_or_vars(self.token.take(), &var)?;
        match (var(env::AGENT), var(env::INSTANCE)) {
            (Some(agent), Some(instance)) => {
                self = self.claim(&agent, &instance).only_claimed(true);
            }
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::Usage(format!(
                    "{} and {} go together: set both (a per-instance process) or neither",
                    env::AGENT,
                    env::INSTANCE
                )));
            }
        }
        Ok(self)
    }

    /// The worker.
    pub fn build(self) -> Result<Worker, Error> {
        if self.agents.is_empty() {
            return Err(Error::Usage("a worker needs at least one agent".into()));
        }
        if self.capacity == 0 {
            return Err(Error::Usage("a worker's capacity must be at least 1".into()));
        }
        let client = Client::builder(self.endpoints)
            .retry_for(self.options.retry_for)
            .attempt_timeout(self.options.attempt_timeout)
            .codec(self.codec)
            .tls(self.tls)
            .token(self.token)
            .build()?;
        let agents = self.agents.into_iter().map(|a| (a.name.clone(), a)).collect();
        Ok(Worker {
            client,
            agents: Arc::new(agents),
            capacity: self.capacity,
            lease: self.lease,
            name: self.name,
            drain_timeout: self.drain_timeout,
            stop: CancellationToken::new(),
            claims: self.claims,
            only_claimed: self.only_claimed,
        })
    }
}

/// Runs agent handlers: connects to any node, opens a session and serves what it is given.
///
/// ```no_run
/// use weft_agent::{Agent, Context, Fail, Worker};
///
/// async fn pong(_ctx: Context, n: u32) -> Result<u32, Fail> {
///     Ok(n + 1)
/// }
///
/// # async fn demo() -> Result<(), weft_agent::Error> {
/// let worker = Worker::builder(["127.0.0.1:7400"])
///     .agent(Agent::new("pong").delegate("pong", pong))
///     .capacity(64)
///     .build()?;
/// let stopper = worker.stopper();
/// tokio::spawn(async move {
///     let _ = tokio::signal::ctrl_c().await;
///     stopper.stop();
/// });
/// worker.run().await
/// # }
/// ```
pub struct Worker {
    client: Client,
    agents: Arc<HashMap<String, Agent>>,
    capacity: u32,
    lease: Option<Duration>,
    name: String,
    drain_timeout: Duration,
    stop: CancellationToken,
    claims: Vec<(String, String)>,
    only_claimed: bool,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("agents", &self.agents.keys().collect::<Vec<_>>())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// A handler running in this process.
struct Running {
    token: u64,
    /// The session that was given it.
    session: u64,
    cancel: CancellationToken,
    last_renewed: Instant,
}

/// A completion sent and not yet acknowledged.
struct Unacked {
    completion: pb::Completion,
    /// Stream deliveries its effects ack: their listeners live until it is taken.
    _held: Vec<Delivery>,
    /// When it was last sent; `None`: the fabric could not take it, send it again.
    sent: Option<Instant>,
    /// When this session first sent it.
    first_sent: Instant,
}

/// What a finished handler hands back to the worker loop.
struct Done {
    execution: u64,
    token: u64,
    completion: Option<pb::Completion>,
    held: Vec<Delivery>,
}

/// Why one session ended.
enum SessionEnd {
    /// Stop was asked and the drain is done.
    Stopped,
    /// The stream broke or the fabric closed the session: connect again.
    Lost(String),
}

fn agent_message(kind: pb::agent_message::Kind) -> pb::AgentMessage {
    pb::AgentMessage { kind: Some(kind) }
}

impl Worker {
    /// A worker for a cluster reachable at any of `endpoints` (`HOST:PORT`).
    pub fn builder<I, S>(endpoints: I) -> WorkerBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        WorkerBuilder {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            agents: Vec::new(),
            capacity: 16,
            lease: Some(Duration::from_secs(30)),
            name: format!("weft-agent pid {}", std::process::id()),
            drain_timeout: Duration::from_secs(10),
            codec: Codec::default(),
            options: connection::Options::default(),
            claims: Vec::new(),
            only_claimed: false,
            tls: None,
            token: None,
        }
    }

    /// A worker configured from the environment: endpoints, session name, capacity, drain
    /// time and the claimed instance (see [`WorkerBuilder::from_env`]); add its agents and
    /// build it.
    ///
    /// ```no_run
    /// # use weft_agent::{Agent, Worker};
    /// # async fn demo(agent: Agent) -> Result<(), weft_agent::Error> {
    /// // WEFT_ENDPOINT=127.0.0.1:7400 WEFT_CAPACITY=4 ./my-agent
    /// Worker::from_env()?.agent(agent).build()?.run_until_signal().await
    /// # }
    /// ```
    pub fn from_env() -> Result<WorkerBuilder, Error> {
        Self::builder(Vec::<String>::new()).from_env()
    }

    /// A handle that stops this worker.
    pub fn stopper(&self) -> Stopper {
        Stopper(self.stop.clone())
    }

    /// The client handlers use; for callers in the same process.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs until SIGTERM or ctrl-c (or a [`Stopper`]), then drains: no new work, running
    /// handlers get the drain timeout to finish, what is left goes back to the fabric.
    pub async fn run_until_signal(self) -> Result<(), Error> {
        let stopper = self.stopper();
        let signal = tokio::spawn(async move {
            termination().await;
            tracing::info!("signal received; draining");
            stopper.stop();
        });
        let result = self.run().await;
        signal.abort();
        result
    }

    /// Runs until stopped. Connection failures are retried forever, with back-off; a
    /// session the fabric refuses (bad agent names, a claimed instance, a token it does not
    /// accept) ends the run with that error, and so does a token revoked or expired while the
    /// session runs ([`Error::Unauthenticated`], naming the token and why): the fabric ends
    /// the session, gives its work to other sessions, and would refuse a new one. A worker
    /// without TLS settings also stops once every endpoint has answered that it requires TLS
    /// ([`Error::Tls`]: "the node requires TLS: give the CA ... and use https:// endpoints"); a
    /// node whose certificate is refused is passed over for the next.
    pub async fn run(self) -> Result<(), Error> {
        let mut state = LoopState {
            running: HashMap::new(),
            unacked: HashMap::new(),
            permits: Arc::new(Semaphore::new(self.capacity as usize)),
            done: mpsc::channel(self.capacity as usize + OUTBOUND_SLACK),
        };
        let mut pause = INITIAL_BACKOFF;
        let mut stop_by: Option<Instant> = None;
        // The endpoints that answered that they require TLS since a session last opened.
        let mut require_tls = RequiresTls::new(&self.client.conn);
        loop {
            if self.stop.is_cancelled() {
                let by = *stop_by.get_or_insert_with(|| Instant::now() + self.drain_timeout + FINAL_ACK_WAIT);
                if (state.running.is_empty() && state.unacked.is_empty()) || Instant::now() >= by {
                    // What is left runs again elsewhere (at least once).
                    for r in state.running.values() {
                        r.cancel.cancel();
                    }
                    return Ok(());
                }
            }
            let started = Instant::now();
            let (endpoint, _) = self.client.conn.current();
            match self.session(&mut state).await {
                Ok(SessionEnd::Stopped) => return Ok(()),
                Ok(SessionEnd::Lost(reason)) => {
                    require_tls.served();
                    tracing::info!(%reason, "agent session lost; reconnecting");
                }
                // Bad agent names, a capacity over the limit, a claimed instance, a token the
                // fabric does not accept for these agents (or revoked, or expired, while the
                // session ran): retrying cannot help. Overload and unavailability can: they are
                // retried below. The handlers still running hold leases the fabric released.
                Err(e) if e.is_refusal() || matches!(e, Error::Usage(_)) => {
                    for r in state.running.values() {
                        r.cancel.cancel();
                    }
                    return Err(e);
                }
                // Without TLS settings the one TLS problem is a node that requires TLS: once
                // every endpoint has said so, no retry can help.
                Err(e @ Error::Tls(_)) if !self.client.conn.tls() => {
                    if let Some(stop) = require_tls.stop_with(&self.client.conn, endpoint, &e) {
                        return Err(stop);
                    }
                    let endpoint = self.client.conn.addr(endpoint);
                    tracing::warn!(error = %e, endpoint, "cannot open an agent session; trying the next node");
                }
                // A node with a bad certificate may be alone in it: the next one may do.
                Err(e @ Error::Tls(_)) => {
                    tracing::warn!(error = %e, "cannot open an agent session; trying the next node")
                }
                Err(e) => tracing::info!(error = %e, "cannot open an agent session; trying the next node"),
            }
            if started.elapsed() >= STABLE_SESSION {
                pause = INITIAL_BACKOFF;
            }
            let (i, _) = self.client.conn.current();
            self.client.conn.failed(i);
            tokio::select! {
                biased;
                _ = self.stop.cancelled(), if state.running.is_empty() => return Ok(()),
                _ = tokio::time::sleep(pause) => {}
            }
            pause = next_backoff(pause);
        }
    }

    fn open_message(&self) -> pb::AgentMessage {
        let lease_ms = self.lease.map_or(0, |d| d.as_millis().clamp(1_000, 86_400_000) as u64);
        agent_message(pb::agent_message::Kind::Open(pb::OpenSession {
            agents: self.agents.values().map(Agent::spec).collect(),
            capacity: self.capacity,
            claims: self
                .claims
                .iter()
                .map(|(agent, instance)| pb::InstanceRef { agent: agent.clone(), instance: instance.clone() })
                .collect(),
            lease_ms,
            name: self.name.clone(),
            only_claimed: self.only_claimed,
        }))
    }

    /// One session on the current endpoint, until it is lost or the worker stops.
    async fn session(&self, state: &mut LoopState) -> Result<SessionEnd, Error> {
        let (endpoint, channel) = self.client.conn.current();
        let (out, out_rx) = mpsc::channel::<pb::AgentMessage>(self.capacity as usize * 2 + OUTBOUND_SLACK);
        out.try_send(self.open_message())
            .map_err(|_| Error::Usage("cannot queue the open message".into()))?;
        let outbound =
            futures::stream::unfold(out_rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let mut grpc = self.client.executions(channel);
        let mut inbound = match grpc.listen(outbound).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(self.client.conn.error_of(endpoint, &status).await),
        };
        let opened = match inbound.message().await {
            Ok(Some(pb::FabricMessage { kind: Some(pb::fabric_message::Kind::Opened(o)) })) => o,
            Ok(_) => return Ok(SessionEnd::Lost("the fabric did not open the session".into())),
            Err(status) => return Err(self.client.conn.error_of(endpoint, &status).await),
        };
        tracing::info!(session = opened.session_id, node = opened.node_id, "agent session open");
        for u in state.unacked.values_mut() {
            u.sent = Some(Instant::now());
            u.first_sent = Instant::now();
            let _ = out.send(agent_message(pb::agent_message::Kind::Complete(u.completion.clone()))).await;
        }
        let session_id = opened.session_id;
        let mut resend = tokio::time::interval(RESEND_EVERY);
        let heartbeat_every = Duration::from_millis((opened.session_timeout_ms / 3).max(100));
        let mut heartbeat = tokio::time::interval(heartbeat_every);
        let renew_every = self.lease.map(|l| l / 3);
        let mut renew = tokio::time::interval(renew_every.unwrap_or(Duration::from_secs(3600)));
        let mut draining: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled(), if draining.is_none() => {
                    tracing::info!(running = state.running.len(), "draining");
                    let _ = out.send(agent_message(pb::agent_message::Kind::Drain(pb::Drain {}))).await;
                    draining = Some(Instant::now() + self.drain_timeout);
                    if state.running.is_empty() {
                        self.await_acks(state, &mut inbound).await;
                        return Ok(SessionEnd::Stopped);
                    }
                }
                _ = sleep_until_opt(draining), if draining.is_some() => {
                    // The drain time is up: hand back what still runs.
                    for (id, r) in state.running.drain() {
                        r.cancel.cancel();
                        let lease = pb::Lease { execution_id: id, token: r.token };
                        let _ = out.send(agent_message(pb::agent_message::Kind::GiveBack(lease))).await;
                    }
                    self.await_acks(state, &mut inbound).await;
                    return Ok(SessionEnd::Stopped);
                }
                message = inbound.message() => match message {
                    Ok(Some(m)) => {
                        if let Some(end) = self.on_message(state, m, session_id, &out).await {
                            return Ok(end);
                        }
                    }
                    Ok(None) => return Ok(SessionEnd::Lost("the fabric ended the stream".into())),
                    Err(status) => {
                        let error = Error::from_status(&status);
                        // The token was revoked or expired while the session ran: the fabric
                        // closed the session (its work goes to other sessions), and every node
                        // would refuse a new one.
                        if matches!(error, Error::Unauthenticated(_) | Error::PermissionDenied(_)) {
                            return Err(error);
                        }
                        return Ok(SessionEnd::Lost(format!("stream error: {}", status.message())));
                    }
                },
                Some(done) = state.done.1.recv() => {
                    if state.running.get(&done.execution).is_some_and(|r| r.token == done.token) {
                        state.running.remove(&done.execution);
                    }
                    if let Some(completion) = done.completion {
                        let now = Instant::now();
                        let unacked = Unacked { completion: completion.clone(), _held: done.held, sent: Some(now), first_sent: now };
                        state.unacked.insert(done.execution, unacked);
                        let _ = out.send(agent_message(pb::agent_message::Kind::Complete(completion))).await;
                    }
                    if draining.is_some() && state.running.is_empty() {
                        self.await_acks(state, &mut inbound).await;
                        return Ok(SessionEnd::Stopped);
                    }
                }
                _ = resend.tick() => {
                    if state.unacked.values().any(|u| u.first_sent.elapsed() >= STUCK_COMPLETION) {
                        return Ok(SessionEnd::Lost(format!(
                            "a completion was not taken within {} s; trying another node",
                            STUCK_COMPLETION.as_secs()
                        )));
                    }
                    for u in state.unacked.values_mut() {
                        if u.sent.is_none_or(|at| at.elapsed() >= ACK_TIMEOUT) {
                            u.sent = Some(Instant::now());
                            let _ = out.send(agent_message(pb::agent_message::Kind::Complete(u.completion.clone()))).await;
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    let _ = out.send(agent_message(pb::agent_message::Kind::Heartbeat(pb::Heartbeat {}))).await;
                }
                _ = renew.tick(), if renew_every.is_some() => {
                    let every = renew_every.unwrap_or_default();
                    for (id, r) in state.running.iter_mut() {
                        if r.last_renewed.elapsed() >= every {
                            r.last_renewed = Instant::now();
                            let lease = pb::Lease { execution_id: *id, token: r.token };
                            let _ = out.send(agent_message(pb::agent_message::Kind::Renew(lease))).await;
                        }
                    }
                }
            }
        }
    }

    /// After the last completions: wait a little for their acknowledgements.
    async fn await_acks(&self, state: &mut LoopState, inbound: &mut tonic::Streaming<pb::FabricMessage>) {
        let until = Instant::now() + FINAL_ACK_WAIT;
        while !state.unacked.is_empty() {
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, inbound.message()).await {
                Ok(Ok(Some(pb::FabricMessage { kind: Some(pb::fabric_message::Kind::Completed(ack)) }))) => {
                    if state.unacked.get(&ack.execution_id).is_some_and(|u| u.completion.token == ack.token) {
                        state.unacked.remove(&ack.execution_id);
                    }
                }
                Ok(Ok(Some(_))) => {}
                _ => return,
            }
        }
    }

    async fn on_message(
        &self,
        state: &mut LoopState,
        m: pb::FabricMessage,
        session: u64,
        out: &mpsc::Sender<pb::AgentMessage>,
    ) -> Option<SessionEnd> {
        use pb::fabric_message::Kind;
        match m.kind? {
            Kind::Assignment(a) => {
                let execution = a.execution?;
                if state.running.get(&execution.id).is_some_and(|r| r.token == a.token) {
                    return None;
                }
                if let Some(old) = state.running.remove(&execution.id) {
                    // Reassigned to this process under a new token: the old run is stale.
                    old.cancel.cancel();
                }
                let generator = (!a.generator_stream.is_empty()).then_some(a.generator_stream);
                self.spawn_handler(state, execution, a.token, session, generator);
            }
            Kind::Revoked(r) => {
                if let Some(running) = state.running.get(&r.execution_id)
                    && running.token == r.token
                {
                    tracing::debug!(execution = r.execution_id, reason = %r.reason, "revoked");
                    running.cancel.cancel();
                    state.running.remove(&r.execution_id);
                }
            }
            Kind::Completed(ack) => self.on_ack(state, ack, out).await,
            Kind::Renewed(_) | Kind::Opened(_) => {}
            Kind::Closed(c) => {
                // The fabric released everything this session held: those handlers' tokens
                // are dead, and their slots are better used by the next session's work.
                state.running.retain(|_, r| {
                    if r.session == session {
                        r.cancel.cancel();
                    }
                    r.session != session
                });
                return Some(SessionEnd::Lost(format!("the fabric closed the session: {}", c.reason)));
            }
        }
        None
    }

    async fn on_ack(
        &self,
        state: &mut LoopState,
        ack: pb::CompletionAck,
        out: &mpsc::Sender<pb::AgentMessage>,
    ) {
        let id = ack.execution_id;
        // An answer to an earlier completion of the same execution (another token) is not
        // about the one waiting now.
        let Some(waiting) = state.unacked.get_mut(&id).filter(|u| u.completion.token == ack.token) else {
            return;
        };
        match ack.outcome.as_str() {
            "accepted" | "repeated" | "retrying" => {
                state.unacked.remove(&id);
            }
            "conflict" => {
                tracing::debug!(execution = id, error = %ack.error, "state conflict; it runs again");
                state.unacked.remove(&id);
            }
            "lock_lost" => {
                tracing::info!(execution = id, error = %ack.error, "the lock its result required was lost; it runs again");
                state.unacked.remove(&id);
            }
            "stale" => {
                tracing::debug!(execution = id, error = %ack.error, "completion too late");
                state.unacked.remove(&id);
            }
            "invalid" if matches!(waiting.completion.outcome, Some(pb::completion::Outcome::Result(_))) => {
                // The result or its effects cannot be applied (an effect the handler may not
                // make, a value over the limits): end the execution with that error instead
                // of letting it run again and again.
                tracing::warn!(execution = id, error = %ack.error, "completion refused; failing the execution");
                let message = format!("the fabric refused the handler's completion: {}", ack.error);
                waiting.completion.outcome =
                    Some(pb::completion::Outcome::Error(pb::HandlerError { message, retryable: false }));
                // Its fences stay: a holder that lost its lock must not fail it either.
                waiting.completion.effects.retain(|e| matches!(e.kind, Some(pb::effect::Kind::Fence(_))));
                waiting.sent = Some(Instant::now());
                let _ = out
                    .send(agent_message(pb::agent_message::Kind::Complete(waiting.completion.clone())))
                    .await;
            }
            "unavailable" => {
                tracing::debug!(execution = id, error = %ack.error, "the fabric could not take the completion; sending it again");
                waiting.sent = None;
            }
            _ => {
                tracing::warn!(execution = id, outcome = %ack.outcome, error = %ack.error, "completion refused");
                state.unacked.remove(&id);
            }
        }
    }

    fn spawn_handler(
        &self,
        state: &mut LoopState,
        e: pb::Execution,
        token: u64,
        session: u64,
        generator: Option<String>,
    ) {
        let cancel = CancellationToken::new();
        state
            .running
            .insert(e.id, Running { token, session, cancel: cancel.clone(), last_renewed: Instant::now() });
        let handler = self.agents.get(&e.agent).and_then(|a| a.handler(&e.delegate));
        let ctx = Context::new(self.client.clone(), &e, token, cancel.clone(), generator);
        let permits = state.permits.clone();
        let done = state.done.0.clone();
        let id = e.id;
        let payload = e.payload.unwrap_or_default();
        let name = format!("{}.{}", e.agent, e.delegate);
        tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else { return };
            let outcome = match handler {
                None => Err((format!("this process has no handler for {name}"), false)),
                Some(handler) => {
                    let run = AssertUnwindSafe(handler(ctx.clone(), payload)).catch_unwind();
                    tokio::pin!(run);
                    tokio::select! {
                        outcome = &mut run => outcome.unwrap_or_else(|_| Err((format!("the handler of {name} panicked"), true))),
                        _ = cancel.cancelled() => {
                            // Revoked: whatever it returns now is refused. Let it see the
                            // cancellation and finish, within a grace period.
                            let _ = tokio::time::timeout(REVOKED_GRACE, &mut run).await;
                            let _ = done.send(Done { execution: id, token, completion: None, held: Vec::new() }).await;
                            return;
                        }
                    }
                }
            };
            if cancel.is_cancelled() {
                // Revoked while it returned: the fabric would refuse the completion.
                let _ = done.send(Done { execution: id, token, completion: None, held: Vec::new() }).await;
                return;
            }
            let (outcome, (effects, held)) = match outcome {
                Ok(payload) => (pb::completion::Outcome::Result(payload), ctx.take_effects()),
                Err((message, retryable)) => (
                    pb::completion::Outcome::Error(pb::HandlerError { message, retryable }),
                    (ctx.take_fences(), Vec::new()),
                ),
            };
            let completion =
                pb::Completion { execution_id: id, token: ctx.token(), outcome: Some(outcome), effects };
            let _ = done.send(Done { execution: id, token, completion: Some(completion), held }).await;
        });
    }
}

struct LoopState {
    running: HashMap<u64, Running>,
    unacked: HashMap<u64, Unacked>,
    permits: Arc<Semaphore>,
    done: (mpsc::Sender<Done>, mpsc::Receiver<Done>),
}

/// SIGTERM or ctrl-c, whichever comes first (ctrl-c alone where there is no SIGTERM).
async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch for SIGTERM; only ctrl-c stops this worker");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<WorkerBuilder, Error> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        Worker::builder(Vec::<String>::new()).with_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn the_environment_sets_endpoints_name_capacity_drain_and_the_claim() {
        let b = from(&[
            (env::ENDPOINT, "127.0.0.1:1, 127.0.0.1:2"),
            (env::SESSION_NAME, "work-1a2b"),
            (env::CAPACITY, "4"),
            (env::DRAIN_TIMEOUT_MS, "1500"),
            (env::AGENT, "counter"),
            (env::INSTANCE, "c-1"),
            (env::TOKEN, "weft_0123456789ab_00112233445566778899aabbccddeeff"),
        ])
        .unwrap();
        assert_eq!(b.token.as_ref().and_then(|t| t.id()), Some("0123456789ab"));
        assert_eq!(b.endpoints, ["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(b.name, "work-1a2b");
        assert_eq!(b.capacity, 4);
        assert_eq!(b.drain_timeout, Duration::from_millis(1500));
        assert_eq!(b.claims, [("counter".to_owned(), "c-1".to_owned())]);
        assert!(b.only_claimed);

        let plain = from(&[(env::ENDPOINT, "127.0.0.1:1")]).unwrap();
        assert!(plain.claims.is_empty() && !plain.only_claimed && plain.token.is_none());
        assert_eq!(plain.capacity, 16, "defaults stay");
    }

    #[test]
    fn a_token_given_to_the_builder_beats_the_environments() {
        let mine = Token::new("weft_aaaaaaaaaaaa_00112233445566778899aabbccddeeff").unwrap();
        let env_token = (env::TOKEN, "weft_0123456789ab_00112233445566778899aabbccddeeff");
        let with = |vars: &[(&str, &str)]| {
            let vars: HashMap<String, String> =
                vars.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
            Worker::builder(["127.0.0.1:1"])
                .token(Some(mine.clone()))
                .with_vars(|name| vars.get(name).cloned())
        };
        let b = with(&[env_token]).unwrap();
        assert_eq!(b.token.as_ref().and_then(|t| t.id()), Some("aaaaaaaaaaaa"), "the builder's token");
        let b = with(&[env_token, (env::TOKEN_FILE, "/nonexistent/agent.token")]).unwrap();
        assert_eq!(
            b.token.as_ref().and_then(|t| t.id()),
            Some("aaaaaaaaaaaa"),
            "the environment is not read"
        );
        // Without one, both variables set is an error naming both.
        let e = from(&[(env::ENDPOINT, "a:1"), env_token, (env::TOKEN_FILE, "/nonexistent/agent.token")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("WEFT_TOKEN and WEFT_TOKEN_FILE are both set"), "{e}");
    }

    #[test]
    fn bad_environment_names_the_variable() {
        let e = from(&[]).unwrap_err();
        assert!(e.to_string().contains(env::ENDPOINT), "{e}");
        let e = from(&[(env::ENDPOINT, "a:1"), (env::CAPACITY, "many")]).unwrap_err();
        assert!(e.to_string().contains("WEFT_CAPACITY='many'"), "{e}");
        let e = from(&[(env::ENDPOINT, "a:1"), (env::AGENT, "counter")]).unwrap_err();
        assert!(e.to_string().contains("WEFT_INSTANCE"), "{e}");
        let e = from(&[(env::ENDPOINT, "127.0.0.1:1,127.0.0.1")]).unwrap_err().to_string();
        assert!(e.contains("WEFT_ENDPOINT=") && e.contains("'127.0.0.1' has no port"), "{e}");
        let e = from(&[(env::ENDPOINT, "a:1"), (env::DRAIN_TIMEOUT_MS, "-1")]).unwrap_err();
        assert!(e.to_string().contains(env::DRAIN_TIMEOUT_MS), "{e}");
        let e = from(&[(env::ENDPOINT, "a:1"), (env::TOKEN_FILE, "/nonexistent/agent.token")]).unwrap_err();
        assert!(e.to_string().contains("WEFT_TOKEN_FILE: token file /nonexistent/agent.token"), "{e}");
    }

    #[tokio::test]
    async fn claims_go_into_the_open_message() {
        let worker = Worker::builder(["127.0.0.1:1"])
            .agent(Agent::new("counter"))
            .claim("counter", "c-1")
            .only_claimed(true)
            .build()
            .unwrap();
        let Some(pb::agent_message::Kind::Open(open)) = worker.open_message().kind else {
            panic!("not an open message")
        };
        assert_eq!(open.claims, [pb::InstanceRef { agent: "counter".into(), instance: "c-1".into() }]);
        assert!(open.only_claimed);
    }
}

//! [`Listener`]: a stream's items as a [`futures::Stream`], on a cursor or as a plain reader,
//! following the fabric across node failures.
//!
//! ```text
//!   fabric node ──Listen──► task: items ──► inbox (≤ buffer) ──► poll_next ──► the user
//!        ▲                   acked ──► resolves Item::ack            │
//!        └── start, acks, nacks, credit (readers, ack-none) ◄────────┘
//!   stream lost (UNAVAILABLE, transport, no heartbeat): inbox emptied, start again on the
//!   next endpoint with back-off: the same cursor (its unacked items come again), or a
//!   reader from one past the last item taken; the stream's uid makes a replaced stream an
//!   error instead of a silent switch.
//! ```
//!
//! Flow control is the fabric's: it sends a listener at most `buffer` items it has not
//! acknowledged (explicit acks) or given credit for (readers, ack-none cursors, credited as
//! the user takes items), so the inbox never holds more than that.
//!
//! The listener lives while its [`Listener`] or any item it handed out does (the items it
//! has not acknowledged must stay its deliveries until they are); then the task stops and
//! the fabric detaches it.

use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use weft_proto::fabric::v1 as pb;
use weft_proto::wire::Outcome;

use super::config::CursorConfig;
use super::item::Item;
use super::stream::{Stream, grpc};
use crate::connection::{Channel, INITIAL_BACKOFF, RequiresTls, next_backoff};
use crate::{Client, Error};

/// Items a listener holds when not told otherwise: what the fabric may send before the
/// listener acknowledges or takes some.
pub const DEFAULT_BUFFER: u32 = 256;
/// Largest buffer a listener may ask for (the fabric's limit on a listener's window).
pub const MAX_BUFFER: u32 = 10_000;
/// Room in the outbound channel beyond the buffer: credit, nacks, the start.
const OUTBOUND_SLACK: usize = 16;
/// A listener that hears nothing (not even a heartbeat) for this many heartbeat periods
/// takes its node for gone.
const MISSED_HEARTBEATS: u32 = 3;
/// The shortest silence taken for a lost node, whatever the heartbeat period.
const MIN_SILENCE: Duration = Duration::from_secs(2);
/// How long a connection must have lasted for the next one to start from the first back-off.
const STABLE_CONNECTION: Duration = Duration::from_secs(5);

/// What a listener starts on.
#[derive(Debug, Clone)]
enum Mode {
    /// A plain reader from a seq (0: the first stored).
    Reader { from_seq: u64 },
    /// A durable named cursor, created with the config if missing.
    Named(String),
    /// A cursor of the listener's own.
    Unnamed,
}

/// A listener being prepared; see [`Stream::listener`]. Without [`Listen::cursor`] or
/// [`Listen::unnamed`] it is a plain reader from the first stored item.
///
/// ```no_run
/// use std::time::Duration;
/// use futures::StreamExt;
/// use weft_agent::streams::{CursorConfig, Deliver};
/// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
/// let orders = client.stream("orders");
/// // A durable cursor shared by competing consumers, created if missing.
/// let billing = orders
///     .listener::<String>()
///     .cursor("billing")
///     .config(CursorConfig::new().ack_wait(Duration::from_secs(60)).max_deliveries(5))
///     .buffer(64)
///     .start()
///     .await?;
/// // A cursor of this listener's own, for new items only.
/// let tail = orders.listener::<String>().unnamed().config(CursorConfig::new().deliver(Deliver::New)).start().await?;
/// // A plain reader from seq 100 (no acks; nothing kept in the fabric).
/// let mut replay = orders.listener::<String>().from_seq(100).start().await?;
/// while let Some(item) = replay.next().await {
///     println!("{}", item?.value);
/// }
/// # Ok(()) }
/// ```
#[must_use = "a listener does nothing until `start()`"]
pub struct Listen<T> {
    stream: Stream,
    mode: Mode,
    config: Option<CursorConfig>,
    filter: Option<String>,
    buffer: u32,
    _items: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Listen<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listen")
            .field("stream", &self.stream.name())
            .field("mode", &self.mode)
            .field("config", &self.config)
            .field("buffer", &self.buffer)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned + Send + 'static> Listen<T> {
    pub(crate) fn new(stream: Stream) -> Self {
        Self {
            stream,
            mode: Mode::Reader { from_seq: 0 },
            config: None,
            filter: None,
            buffer: DEFAULT_BUFFER,
            _items: PhantomData,
        }
    }

    /// Listen on the durable cursor `name` (created with [`Listen::config`] if it does not
    /// exist). Listeners that share a cursor are competing consumers: each item goes to one
    /// of them.
    pub fn cursor(mut self, name: &str) -> Self {
        self.mode = Mode::Named(name.to_owned());
        self
    }

    /// Listen on a cursor of this listener's own (the fabric names it; it is removed once
    /// the listener has been gone for a while).
    pub fn unnamed(mut self) -> Self {
        self.mode = Mode::Unnamed;
        self
    }

    /// Read without a cursor, from `seq` on (0: the first stored item): nothing is kept in
    /// the fabric and nothing is acknowledged.
    pub fn from_seq(mut self, seq: u64) -> Self {
        self.mode = Mode::Reader { from_seq: seq };
        self
    }

    /// The cursor's settings, used if it is created (default: every item, explicit acks).
    pub fn config(mut self, config: CursorConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// For a plain reader: only items whose key matches `filter` (a cursor's filter is in its
    /// [`CursorConfig`]).
    pub fn filter(mut self, filter: &str) -> Self {
        self.filter = Some(filter.to_owned());
        self
    }

    /// How many items the fabric may send before this listener acknowledges or takes some
    /// (1 to [`MAX_BUFFER`], default [`DEFAULT_BUFFER`]).
    pub fn buffer(mut self, items: u32) -> Self {
        self.buffer = items;
        self
    }

    /// Starts listening: returns once the fabric has started the listener (an unknown
    /// stream, a bad filter or settings are errors here), then yields items as they come.
    pub async fn start(self) -> Result<Listener<T>, Error> {
        if self.buffer == 0 || self.buffer > MAX_BUFFER {
            return Err(Error::Usage(format!(
                "a listener's buffer must be 1 to {MAX_BUFFER}, not {}",
                self.buffer
            )));
        }
        let reader = matches!(self.mode, Mode::Reader { .. });
        if reader && self.config.is_some() {
            return Err(Error::Usage(
                "a plain reader has no cursor settings; name a cursor or use unnamed()".into(),
            ));
        }
        if !reader && self.filter.is_some() {
            return Err(Error::Usage("a cursor's key filter is part of its CursorConfig".into()));
        }
        let from_seq = match self.mode {
            Mode::Reader { from_seq } => from_seq,
            _ => 0,
        };
        let core = Arc::new(Core {
            client: self.stream.client().clone(),
            stream: self.stream.name().to_owned(),
            cursor: Mutex::new(match &self.mode {
                Mode::Named(name) => name.clone(),
                _ => String::new(),
            }),
            credit_every: (self.buffer / 4).max(1),
            node: AtomicU64::new(0),
            inbox: Mutex::new(Inbox {
                items: VecDeque::new(),
                end: None,
                waker: None,
                connection: 0,
                outbound: None,
                acks: HashMap::new(),
                taken: 0,
                next_seq: from_seq,
            }),
        });
        let task = Task {
            core: core.clone(),
            mode: self.mode,
            config: self.config.map(|c| c.to_pb()),
            filter: self.filter.unwrap_or_default(),
            buffer: self.buffer,
            uid: self.stream.uid().unwrap_or(0),
            started: false,
        };
        let (started_tx, started_rx) = oneshot::channel();
        let task = tokio::spawn(task.run(started_tx)).abort_handle();
        let shared = Arc::new(Shared { core, task });
        match started_rx.await {
            Ok(Ok(uid)) => Ok(Listener { shared, uid, _items: PhantomData }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Unavailable("the listener's task ended before it started".into())),
        }
    }
}

/// A stream's items as they come, as a [`futures::Stream`] of `Result<Item<T>, Error>`. It
/// ends (`None`) when the stream is closed and everything was delivered (and, on a cursor
/// with explicit acks, acknowledged). An `Err` is yielded, then the end, when the stream was
/// closed with an error ([`Error::StreamFailed`]), deleted ([`Error::StreamDeleted`]), or no
/// node could be reached for the client's `retry_for`. An item that does not decode as `T`
/// is an `Err` ([`Error::Codec`]) and the listener goes on.
///
/// Dropping the listener ends it; items it had not acknowledged are delivered again.
///
/// ```no_run
/// use futures::StreamExt;
/// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
/// let mut jobs = client.stream("jobs").listener::<u64>().cursor("workers").start().await?;
/// while let Some(job) = jobs.next().await {
///     let job = job?;
///     println!("job {} (seq {})", job.value, job.seq);
///     job.ack().await?;
/// }
/// println!("the stream was closed and every job is done");
/// # Ok(()) }
/// ```
pub struct Listener<T> {
    shared: Arc<Shared>,
    uid: u64,
    _items: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Listener<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("stream", &self.shared.core.stream)
            .field("cursor", &self.cursor())
            .field("uid", &self.uid)
            .finish_non_exhaustive()
    }
}

impl<T> Listener<T> {
    /// The stream's name.
    pub fn stream(&self) -> &str {
        &self.shared.core.stream
    }

    /// The stream's uid when the listener started.
    pub fn uid(&self) -> u64 {
        self.uid
    }

    /// The cursor's name (an unnamed cursor's as the fabric named it); `None` for a plain
    /// reader.
    pub fn cursor(&self) -> Option<String> {
        let name = self.shared.core.cursor();
        (!name.is_empty()).then_some(name)
    }

    /// The id of the node serving the listener now (it changes when the listener moves to
    /// another node); 0 while it has none.
    pub fn node(&self) -> u64 {
        self.shared.core.node.load(Ordering::Relaxed)
    }
}

impl<T: DeserializeOwned> futures::Stream for Listener<T> {
    type Item = Result<Item<T>, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let shared = &self.shared;
        let core = &shared.core;
        let mut inbox = core.inbox();
        if let Some(raw) = inbox.items.pop_front() {
            let item = raw.item.unwrap_or_default();
            inbox.next_seq = item.seq + 1;
            // Items without a token (readers, ack-none cursors) come back as credit; the
            // others as acks.
            if raw.token == 0 {
                inbox.taken += 1;
                if inbox.taken >= core.credit_every
                    && let Some(tx) = &inbox.outbound
                {
                    let credit = pb::Credit { items: inbox.taken };
                    if tx.try_send(message(pb::listener_message::Kind::Credit(credit))).is_ok() {
                        inbox.taken = 0;
                    }
                }
            }
            let delivery = (raw.token != 0).then(|| Delivery {
                shared: shared.clone(),
                seq: item.seq,
                token: raw.token,
                connection: inbox.connection,
            });
            drop(inbox);
            return Poll::Ready(Some(Item::decode(&core.stream, item, raw.deliveries, delivery)));
        }
        match &mut inbox.end {
            Some(end) => Poll::Ready(end.take().map(Err)),
            None => {
                inbox.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

fn message(kind: pb::listener_message::Kind) -> pb::ListenerMessage {
    pb::ListenerMessage { kind: Some(kind) }
}

/// What the listener, its items and its task share.
struct Core {
    client: Client,
    stream: String,
    /// The cursor's name once known; empty for a reader.
    cursor: Mutex<String>,
    /// Credit is given once this many items that need no ack were taken.
    credit_every: u32,
    /// The node serving the listener now (0 while it has none).
    node: AtomicU64,
    inbox: Mutex<Inbox>,
}

impl Core {
    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cursor(&self) -> String {
        self.cursor.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What the listener and its items hold: when the last of them goes, the task stops and the
/// request stream ends, so the fabric detaches the listener (what it had not acknowledged
/// is delivered again).
pub(crate) struct Shared {
    core: Arc<Core>,
    task: tokio::task::AbortHandle,
}

impl Shared {
    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.core.inbox()
    }

    fn cursor(&self) -> String {
        self.core.cursor()
    }

    pub(crate) fn client(&self) -> &Client {
        &self.core.client
    }

    pub(crate) fn stream(&self) -> &str {
        &self.core.stream
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.task.abort();
        self.core.inbox().outbound = None;
    }
}

/// Items received and not yet taken, and the connection now.
struct Inbox {
    items: VecDeque<pb::StreamItem>,
    /// Set when the listener ends: the error to yield first, if any.
    end: Option<Option<Error>>,
    waker: Option<Waker>,
    /// Which connection this is (counts up), and what sends on it while it lasts.
    connection: u64,
    outbound: Option<mpsc::Sender<pb::ListenerMessage>>,
    /// Acks sent on this connection, waiting for the fabric's answer.
    acks: HashMap<(u64, u64), oneshot::Sender<String>>,
    /// Items taken since the last credit.
    taken: u32,
    /// One past the last item taken: where a reader resumes.
    next_seq: u64,
}

impl Inbox {
    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// One delivery on a cursor with explicit acks: what acknowledges it.
#[derive(Clone)]
pub(crate) struct Delivery {
    shared: Arc<Shared>,
    pub(crate) seq: u64,
    pub(crate) token: u64,
    /// The connection it came on: acks go on it while it lasts.
    connection: u64,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("stream", &self.shared.stream())
            .field("seq", &self.seq)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    pub(crate) fn cursor(&self) -> String {
        self.shared.cursor()
    }

    pub(crate) fn to_pb(&self) -> pb::Delivery {
        pb::Delivery { seq: self.seq, token: self.token }
    }

    /// Acks on the listener's stream while the connection it came on lasts (the fabric
    /// batches them); otherwise, or when that answer is not a plain yes, with a unary `Ack`,
    /// whose status says for sure. Acking twice is harmless, so it is retried like a read.
    pub(crate) async fn ack(&self) -> Result<(), Error> {
        let key = (self.seq, self.token);
        let sent = {
            let mut inbox = self.shared.inbox();
            match &inbox.outbound {
                Some(tx) if inbox.connection == self.connection => {
                    let tx = tx.clone();
                    let (answer_tx, answer_rx) = oneshot::channel();
                    inbox.acks.insert(key, answer_tx);
                    Some((tx, answer_rx))
                }
                _ => None,
            }
        };
        if let Some((tx, answer)) = sent
            && tx.send(message(pb::listener_message::Kind::Ack(self.to_pb()))).await.is_ok()
        {
            let wait = self.shared.client().conn.options().attempt_timeout;
            match tokio::time::timeout(wait, answer).await {
                Ok(Ok(error)) if error.is_empty() => return Ok(()),
                Ok(Ok(error)) => {
                    tracing::debug!(seq = self.seq, %error, "ack refused on the stream; asking again")
                }
                Ok(Err(_)) => tracing::debug!(seq = self.seq, "the connection went before the ack's answer"),
                Err(_) => {
                    self.shared.inbox().acks.remove(&key);
                }
            }
        }
        self.ack_unary().await
    }

    async fn ack_unary(&self) -> Result<(), Error> {
        let attempt = self.shared.client().conn.options().attempt_timeout;
        let req = pb::AckRequest {
            stream: self.shared.stream().to_owned(),
            cursor: self.cursor(),
            acks: vec![self.to_pb()],
            effects: Vec::new(),
        };
        self.shared
            .client()
            .conn
            .run(true, |channel| {
                let req = req.clone();
                async move {
                    let mut request = tonic::Request::new(req);
                    request.set_timeout(attempt);
                    grpc(channel).ack(request).await.map(drop)
                }
            })
            .await
    }

    pub(crate) fn nack(&self) {
        let inbox = self.shared.inbox();
        if let Some(tx) = &inbox.outbound
            && inbox.connection == self.connection
        {
            let _ = tx.try_send(message(pb::listener_message::Kind::Nack(self.to_pb())));
        }
    }
}

/// Sends an `Ack` with `acks` and `effects`: after a try whose outcome is unknown, it is sent
/// again (the fabric applies an ack with effects once: a repeat of an applied one is
/// refused), and a refusal then is reported as unknown, since the first try may have been
/// applied.
pub(crate) async fn ack_with_effects(client: &Client, req: pb::AckRequest) -> Result<(), Error> {
    let attempt = client.conn.options().attempt_timeout;
    let maybe_applied = AtomicBool::new(false);
    let result = client
        .conn
        .run(true, |channel| {
            let req = req.clone();
            let maybe_applied = &maybe_applied;
            async move {
                let mut request = tonic::Request::new(req);
                request.set_timeout(attempt);
                let answer = grpc(channel).ack(request).await.map(drop);
                if let Err(status) = &answer
                    && Outcome::of(status) == Outcome::Unknown
                {
                    maybe_applied.store(true, Ordering::Relaxed);
                }
                answer
            }
        })
        .await;
    match result {
        Err(refused) if refused.is_refusal() && maybe_applied.load(Ordering::Relaxed) => {
            Err(Error::Unknown(format!(
                "a try's outcome was unknown and sending it again was refused ({refused}): it may have been applied"
            )))
        }
        other => other,
    }
}

/// How one connection ended.
enum Ended {
    /// The stream ended for good: `None` ok, or with this error.
    Done(Option<Error>),
    /// The connection was lost; `lasted`: how long it served, if it started at all.
    Lost { reason: String, lasted: Option<Duration> },
    /// The connection could not be made for a TLS reason ([`Error::Tls`]): lost, unless
    /// every endpoint has said it requires TLS from a client without TLS settings.
    Tls(Error),
}

/// The task behind a listener: connects, forwards, and resumes elsewhere.
struct Task {
    core: Arc<Core>,
    mode: Mode,
    config: Option<pb::CursorConfig>,
    filter: String,
    buffer: u32,
    /// The stream's uid once known (0: any).
    uid: u64,
    /// Whether any connection has started.
    started: bool,
}

impl Task {
    async fn run(mut self, started_tx: oneshot::Sender<Result<u64, Error>>) {
        let mut started_tx = Some(started_tx);
        let conn = self.core.client.conn.clone();
        let retry_for = conn.options().retry_for;
        let mut pause = INITIAL_BACKOFF;
        let mut failing_since: Option<Instant> = None;
        let mut require_tls = RequiresTls::new(&conn);
        let end = loop {
            let (i, channel) = conn.current();
            let (reason, lasted) = match self.connection(i, channel, &mut started_tx).await {
                Ended::Done(end) => break end,
                Ended::Tls(error) => match require_tls.stop_with(&conn, i, &error) {
                    Some(stop) => break Some(stop),
                    None => (error.to_string(), None),
                },
                Ended::Lost { reason, lasted } => (reason, lasted),
            };
            // It served: the trouble is new. One that keeps starting and failing backs off,
            // but does not give up while it starts.
            if let Some(lasted) = lasted {
                failing_since = None;
                require_tls.served();
                if lasted >= STABLE_CONNECTION {
                    pause = INITIAL_BACKOFF;
                }
            }
            let since = *failing_since.get_or_insert_with(Instant::now);
            if since.elapsed() + pause >= retry_for {
                break Some(Error::Unavailable(format!(
                    "listener on stream '{}' could not resume within {retry_for:?}: {reason}",
                    self.core.stream
                )));
            }
            tracing::debug!(stream = %self.core.stream, endpoint = conn.addr(i), %reason, "listener lost; resuming on the next node");
            conn.failed(i);
            tokio::time::sleep(pause).await;
            pause = next_backoff(pause);
        };
        match started_tx.take() {
            Some(tx) => {
                let _ = tx.send(Err(
                    end.unwrap_or_else(|| Error::Unavailable("the listener ended at once".into()))
                ));
            }
            None => {
                let mut inbox = self.core.inbox();
                inbox.end = Some(end);
                inbox.wake();
            }
        }
    }

    fn start_message(&self) -> pb::ListenerMessage {
        let cursor = self.core.cursor();
        let (config, from_seq) = match &self.mode {
            Mode::Reader { .. } => (None, self.core.inbox().next_seq),
            Mode::Named(_) => (Some(self.config.clone().unwrap_or_default()), 0),
            // Resuming on its cursor by the name the fabric gave it; the first time, made.
            Mode::Unnamed if !cursor.is_empty() => (None, 0),
            Mode::Unnamed => (Some(self.config.clone().unwrap_or_default()), 0),
        };
        message(pb::listener_message::Kind::Start(pb::StartListener {
            stream: self.core.stream.clone(),
            cursor,
            config,
            from_seq,
            uid: self.uid,
            credit: self.buffer,
            filter: self.filter.clone(),
        }))
    }

    /// What a failed start or stream means: the stream (or cursor) gone, another refusal, a
    /// node that requires TLS (nothing else will work either), or a lost connection.
    fn refused(&self, error: Error) -> Ended {
        match error {
            Error::Refused { code: tonic::Code::NotFound, message } if self.started || self.uid != 0 => {
                Ended::Done(Some(Error::StreamDeleted { stream: self.core.stream.clone(), message }))
            }
            refused if refused.is_refusal() => Ended::Done(Some(refused)),
            tls @ Error::Tls(_) => Ended::Tls(tls),
            other => Ended::Lost { reason: other.to_string(), lasted: None },
        }
    }

    /// What a start that failed with `status` on endpoint `endpoint` means; a plain client's
    /// start cut off by a node that requires TLS is [`Error::Tls`]
    /// ([`Connection::error_of`](crate::connection::Connection::error_of)).
    async fn start_error(&self, endpoint: usize, status: &tonic::Status) -> Error {
        self.core.client.conn.error_of(endpoint, status).await
    }

    /// One connection, from its start until it ends or is lost.
    async fn connection(
        &mut self,
        endpoint: usize,
        channel: Channel,
        started_tx: &mut Option<oneshot::Sender<Result<u64, Error>>>,
    ) -> Ended {
        let (tx, rx) = mpsc::channel(self.buffer as usize + OUTBOUND_SLACK);
        let _ = tx.try_send(self.start_message());
        let outbound = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let attempt = self.core.client.conn.options().attempt_timeout;
        let mut inbound = match tokio::time::timeout(attempt, grpc(channel).listen(outbound)).await {
            Err(_) => {
                return Ended::Lost { reason: "no answer to the listener's start".into(), lasted: None };
            }
            Ok(Err(status)) => return self.refused(self.start_error(endpoint, &status).await),
            Ok(Ok(response)) => response.into_inner(),
        };
        let started = match tokio::time::timeout(attempt, inbound.message()).await {
            Ok(Ok(Some(pb::StreamMessage { kind: Some(pb::stream_message::Kind::Started(s)) }))) => s,
            Ok(Ok(_)) => {
                return Ended::Lost { reason: "the fabric did not start the listener".into(), lasted: None };
            }
            Ok(Err(status)) => return self.refused(self.start_error(endpoint, &status).await),
            Err(_) => {
                return Ended::Lost { reason: "no answer to the listener's start".into(), lasted: None };
            }
        };
        if self.uid == 0 {
            self.uid = started.uid;
        }
        if !started.cursor.is_empty() {
            *self.core.cursor.lock().unwrap_or_else(|p| p.into_inner()) = started.cursor.clone();
        }
        self.started = true;
        self.core.node.store(started.node_id, Ordering::Relaxed);
        {
            let mut inbox = self.core.inbox();
            inbox.connection += 1;
            inbox.outbound = Some(tx);
            inbox.taken = 0;
        }
        if let Some(started_tx) = started_tx.take() {
            let _ = started_tx.send(Ok(started.uid));
        }
        tracing::debug!(stream = %self.core.stream, cursor = %started.cursor, node = started.node_id, "listener started");
        let since = Instant::now();
        let silence = (Duration::from_millis(started.heartbeat_ms) * MISSED_HEARTBEATS).max(MIN_SILENCE);
        let ended = loop {
            let next = match tokio::time::timeout(silence, inbound.message()).await {
                Err(_) => {
                    break Ended::Lost { reason: format!("nothing heard for {silence:?}"), lasted: None };
                }
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) => {
                    break Ended::Lost { reason: "the fabric ended the stream".into(), lasted: None };
                }
                // The connection served: a TLS problem now is no node requiring TLS, just a
                // lost connection.
                Ok(Err(status)) => match self.refused(Error::from_status(&status)) {
                    Ended::Lost { reason, .. } => break Ended::Lost { reason, lasted: None },
                    Ended::Tls(e) => break Ended::Lost { reason: e.to_string(), lasted: None },
                    done @ Ended::Done(_) => break done,
                },
            };
            if let Some(end) = self.on_message(next) {
                break end;
            }
        };
        self.core.node.store(0, Ordering::Relaxed);
        let ended = match ended {
            Ended::Lost { reason, .. } => Ended::Lost { reason, lasted: Some(since.elapsed()) },
            done => done,
        };
        let mut inbox = self.core.inbox();
        inbox.outbound = None;
        inbox.acks.clear();
        if matches!(ended, Ended::Lost { .. }) {
            // A cursor delivers them again; a reader reads on from the last item taken.
            inbox.items.clear();
        }
        ended
    }

    fn on_message(&mut self, m: pb::StreamMessage) -> Option<Ended> {
        use pb::stream_message::Kind;
        match m.kind? {
            Kind::Item(item) => {
                let mut inbox = self.core.inbox();
                inbox.items.push_back(item);
                inbox.wake();
            }
            Kind::Acked(result) => {
                if let Some(answer) = self.core.inbox().acks.remove(&(result.seq, result.token)) {
                    let _ = answer.send(result.error);
                }
            }
            Kind::End(end) => {
                let stream = self.core.stream.clone();
                return Some(match end.reason.as_str() {
                    "closed" if end.error.is_empty() => Ended::Done(None),
                    "closed" => Ended::Done(Some(Error::StreamFailed { stream, message: end.error })),
                    "deleted" => Ended::Done(Some(Error::StreamDeleted { stream, message: end.error })),
                    // The fabric let go of this listener (its node is leaving, it fell
                    // behind): resume elsewhere.
                    other => Ended::Lost {
                        reason: format!("the fabric ended the listener ({other}): {}", end.error),
                        lasted: None,
                    },
                });
            }
            Kind::Started(_) | Kind::Heartbeat(_) => {}
        }
        None
    }
}

//! One stream listener on the node that hosts it: on a cursor, or a plain reader.
//!
//! ```text
//!   cursor listener:  Attach (registers a hub key first) ──► the grid delivers items up to
//!                     the window ──► hub ──► this task ──► the client
//!                     client acks / nacks / credit ──► batched, proposed ──► room again
//!   plain reader:     reads this node's replica from a seq on, woken by the hub when the
//!                     stream changes; no grid state; the client's credit bounds what is sent
//! ```
//!
//! Both send heartbeats with the lag and end with an explicit end: the stream closed (after
//! every item), or deleted. A cursor listener detaches when its stream ends, the node shuts
//! down or loses its leader for a while (the client resumes on another node at its cursor);
//! what it had not acked is delivered again. Both end with `UNAUTHENTICATED`, naming the
//! token and why, when the token that started them is revoked or expires (a cursor listener
//! detaches then too).

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use weft_proto::fabric::v1 as pb;

use crate::auth::{Caller, Permission, authorize};
use crate::convert;
use crate::grid::cursor::{AckCheck, ListenerId, MAX_WINDOW, NewListener};
use crate::grid::session::Host;
use crate::grid::stream::{Seq, validate_filter, validate_stream_name};
use crate::grid::{self, Command, ListenerEnd, Output, validate_listener_cursor};
use crate::routing::{self, Context, Error};
use crate::watch::ListenerEvent;

/// A listener's window when it asks for none.
pub const DEFAULT_CREDIT: u32 = 256;
/// Room in the outbound stream beyond the window (heartbeats, ack results, the end).
const OUTBOUND_SLACK: usize = 64;
/// Most acks waiting to be proposed for one listener; more are refused until some commit.
const MAX_PENDING_ACKS: usize = 4 * MAX_WINDOW as usize;
/// Most items a reader sends per look at the replica.
const READ_BATCH: usize = 256;
/// How long this node may go without a leader before its listeners end (their clients
/// resume elsewhere).
const MAX_LEADERLESS: Duration = crate::sessions::host::MAX_LEADERLESS;
const LEADER_CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long a listener ending because its node shuts down tries to detach.
const SHUTDOWN_DETACH_WAIT: Duration = Duration::from_secs(1);

type Outbound = mpsc::Sender<Result<pb::StreamMessage, Status>>;

fn message(kind: pb::stream_message::Kind) -> Result<pb::StreamMessage, Status> {
    Ok(pb::StreamMessage { kind: Some(kind) })
}

fn end_message(end: &ListenerEnd) -> pb::stream_message::Kind {
    let (reason, error) = match end {
        ListenerEnd::Closed(e) => ("closed", e.error().unwrap_or_default().to_owned()),
        ListenerEnd::Deleted(why) => ("deleted", why.clone()),
        ListenerEnd::Removed(why) => ("removed", why.clone()),
    };
    pb::stream_message::Kind::End(pb::StreamEnd { reason: reason.into(), error })
}

/// Starts a listener from the stream's first message, if `caller` may read its stream (and
/// write the dead-letter stream of the cursor it creates); returns what the fabric sends.
pub async fn start(
    ctx: Context,
    caller: Caller,
    mut inbound: Streaming<pb::ListenerMessage>,
    shutdown: CancellationToken,
) -> Result<mpsc::Receiver<Result<pb::StreamMessage, Status>>, Status> {
    let wait = ctx.request_timeout;
    let first = tokio::time::timeout(wait, inbound.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no start message in time"))??
        .ok_or_else(|| Status::invalid_argument("the stream ended before the listener started"))?;
    let Some(pb::listener_message::Kind::Start(start)) = first.kind else {
        return Err(Status::invalid_argument("the first message of a listener must be `start`"));
    };
    let window = if start.credit == 0 { DEFAULT_CREDIT } else { start.credit };
    let checked = (|| {
        validate_stream_name(&start.stream)?;
        if window > MAX_WINDOW {
            return Err(grid::Error::InvalidCursor {
                reason: format!("credit {window} is over {MAX_WINDOW}"),
            });
        }
        if !start.cursor.is_empty() {
            validate_listener_cursor(&start.cursor)?;
        }
        if !start.filter.is_empty() {
            validate_filter(&start.filter)?;
        }
        let dead_letter = start.config.as_ref().map_or("", |c| c.dead_letter.as_str());
        if !dead_letter.is_empty() {
            validate_stream_name(dead_letter)?;
        }
        Ok(())
    })();
    checked.map_err(|e| Error::Grid(e).into_status())?;
    authorize(&caller, Permission::ReadStream { stream: &start.stream })?;
    if let Some(stream) = start.config.as_ref().map(|c| c.dead_letter.as_str()).filter(|d| !d.is_empty()) {
        authorize(&caller, Permission::WriteStream { stream })?;
    }
    let (tx, rx) = mpsc::channel(window as usize + OUTBOUND_SLACK);
    let lapse = ctx.lapse(&caller);
    if start.cursor.is_empty() && start.config.is_none() {
        let reader = Reader::new(ctx, start, window, inbound, tx, shutdown).await?;
        tokio::spawn(reader.run(lapse));
    } else {
        let listener = CursorListener::attach(ctx, start, window, inbound, tx, shutdown).await?;
        tokio::spawn(listener.run(lapse));
    }
    Ok(rx)
}

/// A listener on a cursor: the grid decides what it gets.
struct CursorListener {
    ctx: Context,
    id: ListenerId,
    key: u64,
    stream: String,
    cursor: String,
    inbound: Streaming<pb::ListenerMessage>,
    events: mpsc::Receiver<ListenerEvent>,
    tx: Outbound,
    shutdown: CancellationToken,
    /// Acks received and not yet proposed, and whether a proposal is in flight.
    acks: Vec<(Seq, u64)>,
    credit: u32,
    proposing: bool,
    done_tx: mpsc::Sender<()>,
    done_rx: mpsc::Receiver<()>,
}

impl CursorListener {
    async fn attach(
        ctx: Context,
        start: pb::StartListener,
        window: u32,
        inbound: Streaming<pb::ListenerMessage>,
        tx: Outbound,
        shutdown: CancellationToken,
    ) -> Result<Self, Status> {
        let named = !start.cursor.is_empty();
        let idle_ms = (!named).then_some(ctx.streams.unnamed_cursor_idle_ms);
        let config = start
            .config
            .map(|c| convert::cursor_config(c, idle_ms))
            .transpose()
            .map_err(|e| Error::Grid(e).into_status())?;
        let key: u64 = rand::random();
        let new = NewListener {
            stream: start.stream.clone(),
            cursor: named.then(|| start.cursor.clone()),
            config,
            uid: (start.uid != 0).then_some(start.uid),
            host: Host { node: ctx.node_id, key },
            window,
        };
        let command = Command::Attach(Box::new(new));
        command.validate(&ctx.limits).map_err(|e| Error::Grid(e).into_status())?;
        // Registered before the attach is proposed: the entry that attaches it delivers.
        let events = ctx
            .hub
            .register_listener(key, window as usize)
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        let (id, cursor, uid) = match routing::propose(&ctx, command).await {
            Ok(Output::Listener { id, cursor, uid }) => (id, cursor, uid),
            Ok(other) => {
                ctx.hub.unregister_listener(key);
                return Err(Status::internal(format!("unexpected answer to an attach: {other:?}")));
            }
            Err(e) => {
                // If it was applied after all, the reaper detaches it: its key is gone.
                ctx.hub.unregister_listener(key);
                return Err(e.into_status());
            }
        };
        let started = pb::ListenerStarted {
            uid,
            cursor: cursor.clone(),
            node_id: ctx.node_id,
            heartbeat_ms: ctx.streams.listener_heartbeat.as_millis() as u64,
        };
        let _ = tx.try_send(message(pb::stream_message::Kind::Started(started)));
        tracing::debug!(listener = id, stream = %start.stream, %cursor, "listener attached");
        let (done_tx, done_rx) = mpsc::channel(1);
        Ok(Self {
            ctx,
            id,
            key,
            stream: start.stream,
            cursor,
            inbound,
            events,
            tx,
            shutdown,
            acks: Vec::new(),
            credit: 0,
            proposing: false,
            done_tx,
            done_rx,
        })
    }

    /// Serves the listener until it ends; `lapse` ends it when its token does.
    async fn run(mut self, mut lapse: crate::auth::Lapse) {
        let mut heartbeat = tokio::time::interval(self.ctx.streams.listener_heartbeat);
        let mut leader_check = tokio::time::interval(LEADER_CHECK_EVERY);
        let mut leaderless_since: Option<Instant> = None;
        let why = loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    let _ = self.tx.try_send(Err(Status::unavailable("the node is shutting down; resume on another node")));
                    break "the node is shutting down".to_owned();
                }
                why = lapse.lapsed() => {
                    crate::auth::end_stream(&self.tx, &why);
                    break why.to_string();
                }
                event = self.events.recv() => match event {
                    Some(ListenerEvent::Item { item, token, count }) => {
                        let item = pb::StreamItem { item: Some(convert::pb_item(&item)), token, deliveries: count };
                        if self.tx.send(message(pb::stream_message::Kind::Item(item))).await.is_err() {
                            break "the client stopped reading".into();
                        }
                    }
                    Some(ListenerEvent::End(end)) => {
                        let _ = self.tx.send(message(end_message(&end))).await;
                        break format!("the listener ended: {end:?}");
                    }
                    Some(ListenerEvent::Reset) => {
                        if self.ctx.applied.read(|a| a.grid.listener(self.id).is_none()) {
                            let end = ListenerEnd::Removed("the listener is no longer attached".into());
                            let _ = self.tx.send(message(end_message(&end))).await;
                            break "detached while this node caught up".into();
                        }
                    }
                    None => {
                        let _ = self.tx.try_send(Err(Status::resource_exhausted("the listener did not keep up; resume at its cursor")));
                        break "the listener did not keep up".into();
                    }
                },
                _ = self.done_rx.recv() => {
                    self.proposing = false;
                    self.flush();
                }
                received = self.inbound.message() => match received {
                    Ok(Some(m)) => {
                        if let Err(status) = self.on_message(m) {
                            let reason = status.message().to_owned();
                            let _ = self.tx.try_send(Err(status));
                            break reason;
                        }
                    }
                    Ok(None) => {
                        self.settle_acks().await;
                        break "the client closed the stream".into();
                    }
                    Err(status) => break format!("the stream failed: {}", status.message()),
                },
                _ = heartbeat.tick() => {
                    let beat = self.ctx.applied.read(|a| {
                        let s = a.grid.stream(&self.stream)?;
                        let c = s.cursors.get(&self.cursor)?;
                        Some(pb::ListenerHeartbeat {
                            last_seq: s.last_seq,
                            lag: (s.last_seq + 1).saturating_sub(c.next_seq),
                            ack_pending: c.unacked.len() as u64,
                        })
                    });
                    if let Some(beat) = beat {
                        let _ = self.tx.try_send(message(pb::stream_message::Kind::Heartbeat(beat)));
                    }
                }
                _ = leader_check.tick() => {
                    if self.ctx.leader() != routing::Leader::Unknown {
                        leaderless_since = None;
                    } else if leaderless_since.get_or_insert_with(Instant::now).elapsed() >= MAX_LEADERLESS {
                        let why = format!("node {} has had no leader for {} s; resume on another node", self.ctx.node_id, MAX_LEADERLESS.as_secs());
                        let _ = self.tx.try_send(Err(Status::unavailable(why.clone())));
                        break why;
                    }
                }
            }
        };
        self.ctx.hub.unregister_listener(self.key);
        tracing::debug!(listener = self.id, reason = %why, "listener ends");
        if self.shutdown.is_cancelled() {
            // One quick try, so its items go to other listeners now rather than after the
            // reaper hears this node left (a leader shutting down has no proposer left: then
            // the reaper on the next leader does it).
            let command = Command::Detach { listener: self.id, reason: why };
            let _ = tokio::time::timeout(SHUTDOWN_DETACH_WAIT, routing::propose(&self.ctx, command)).await;
        } else {
            let command = Command::Detach { listener: self.id, reason: why };
            tokio::spawn(super::end_in_grid(self.ctx.clone(), command, self.shutdown.clone()));
        }
    }

    /// The client closed its side: the acks it sent before still count. Proposes what waits
    /// and reports the results (for at most the request timeout), so none is lost silently.
    async fn settle_acks(&mut self) {
        let until = tokio::time::Instant::now() + self.ctx.request_timeout;
        while self.proposing || !self.acks.is_empty() || self.credit > 0 {
            if !self.proposing {
                self.flush();
            }
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                _ = self.done_rx.recv() => self.proposing = false,
                _ = tokio::time::sleep_until(until) => return,
            }
        }
    }

    fn on_message(&mut self, m: pb::ListenerMessage) -> Result<(), Status> {
        use pb::listener_message::Kind;
        match m.kind {
            None => Ok(()),
            Some(Kind::Start(_)) => Err(Status::failed_precondition("this listener has started already")),
            Some(Kind::Ack(d)) => {
                if self.acks.len() >= MAX_PENDING_ACKS {
                    let result = pb::AckResult {
                        seq: d.seq,
                        token: d.token,
                        error: format!("{MAX_PENDING_ACKS} acks wait already; send it again later"),
                    };
                    let _ = self.tx.try_send(message(pb::stream_message::Kind::Acked(result)));
                    return Ok(());
                }
                self.acks.push((d.seq, d.token));
                self.flush();
                Ok(())
            }
            Some(Kind::Nack(d)) => {
                let command = Command::Nack {
                    stream: self.stream.clone(),
                    cursor: self.cursor.clone(),
                    seq: d.seq,
                    token: d.token,
                };
                let ctx = self.ctx.clone();
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    if let Err(e) = routing::propose(&ctx, command).await {
                        let result =
                            pb::AckResult { seq: d.seq, token: d.token, error: format!("nack: {e}") };
                        let _ = tx.send(message(pb::stream_message::Kind::Acked(result))).await;
                    }
                });
                Ok(())
            }
            Some(Kind::Credit(c)) => {
                self.credit = self.credit.saturating_add(c.items);
                self.flush();
                Ok(())
            }
        }
    }

    /// Proposes the acks and credit gathered so far, unless a proposal is in flight (then
    /// they leave together once it is answered: one entry for many acks).
    fn flush(&mut self) {
        if self.proposing || (self.acks.is_empty() && self.credit == 0) {
            return;
        }
        self.proposing = true;
        let acks = std::mem::take(&mut self.acks);
        let credit = std::mem::take(&mut self.credit);
        let (ctx, tx, done) = (self.ctx.clone(), self.tx.clone(), self.done_tx.clone());
        let (stream, cursor, id) = (self.stream.clone(), self.cursor.clone(), self.id);
        tokio::spawn(async move {
            if credit > 0 {
                let _ = routing::propose(&ctx, Command::Credit { listener: id, items: credit }).await;
            }
            if !acks.is_empty() {
                // Only acks this replica cannot answer go to the leader: one stale token refuses
                // a whole batch, and while a refused batch is retried ack by ack, the acks
                // queued behind it go stale too (see `sort_acks`).
                let (acks, mut results) = sort_acks(&ctx, &stream, &cursor, acks);
                let answer = if acks.is_empty() {
                    Ok(())
                } else {
                    let all = Command::Ack {
                        stream: stream.clone(),
                        cursor: cursor.clone(),
                        acks: acks.clone(),
                        effects: Vec::new(),
                    };
                    routing::propose(&ctx, all).await.map(|_| ())
                };
                match answer {
                    Ok(_) => results.extend(acks.iter().map(|(s, t)| (*s, *t, String::new()))),
                    // One stale delivery refuses the whole batch: ack them one by one to learn
                    // which, each first against this replica, which has applied the refusal's
                    // cause by now, most likely.
                    Err(Error::Grid(_)) if acks.len() > 1 => {
                        for (seq, token) in acks {
                            let (one, known) = sort_acks(&ctx, &stream, &cursor, vec![(seq, token)]);
                            results.extend(known);
                            if one.is_empty() {
                                continue;
                            }
                            let one = Command::Ack {
                                stream: stream.clone(),
                                cursor: cursor.clone(),
                                acks: one,
                                effects: Vec::new(),
                            };
                            let error = routing::propose(&ctx, one)
                                .await
                                .err()
                                .map(|e| e.to_string())
                                .unwrap_or_default();
                            results.push((seq, token, error));
                        }
                    }
                    Err(e) => {
                        let error = e.to_string();
                        results.extend(acks.iter().map(|(s, t)| (*s, *t, error.clone())));
                    }
                }
                for (seq, token, error) in results {
                    let result = pb::AckResult { seq, token, error };
                    if tx.send(message(pb::stream_message::Kind::Acked(result))).await.is_err() {
                        break;
                    }
                }
            }
            let _ = done.send(()).await;
        });
    }
}

/// An ack's answer: the delivery, and "" or why it was not acknowledged.
type AckAnswer = (Seq, u64, String);

/// Splits `acks` by what this node's replica knows: an ack of a stale token, or of an item
/// done already, is answered here (the error, or ""), without a proposal; the rest goes to
/// the leader. Sound because the listener got each delivery from this replica, and a token
/// found stale here is never current again ([`Cursor::check_ack`]): on the leader the ack
/// would change nothing either (it is stale there too, or the item was acked through its
/// newer delivery meanwhile, which the leader would answer with "").
///
/// Without it, a listener whose acks fell behind its ack wait never caught up: each batch
/// held a stale token, each refused batch went ack by ack, one Raft round trip each, and the
/// acks queued meanwhile went stale too (jepsen `streams`, docs/jepsen.md, finding 9).
///
/// [`Cursor::check_ack`]: crate::grid::cursor::Cursor::check_ack
fn sort_acks(
    ctx: &Context,
    stream: &str,
    cursor: &str,
    acks: Vec<(Seq, u64)>,
) -> (Vec<(Seq, u64)>, Vec<AckAnswer>) {
    ctx.applied.read(|a| {
        let Some(c) = a.grid.stream(stream).and_then(|s| s.cursors.get(cursor)) else {
            return (acks, Vec::new());
        };
        let mut to_leader = Vec::with_capacity(acks.len());
        let mut answered = Vec::new();
        for (seq, token) in acks {
            match c.check_ack(stream, seq, token) {
                Ok(AckCheck::Current) => to_leader.push((seq, token)),
                Ok(AckCheck::Done) => answered.push((seq, token, String::new())),
                Err(e) => answered.push((seq, token, e.to_string())),
            }
        }
        (to_leader, answered)
    })
}

/// A plain reader: reads this node's replica from a seq on; nothing in the grid.
struct Reader {
    ctx: Context,
    stream: String,
    uid: u64,
    filter: Option<String>,
    next: Seq,
    window: u32,
    in_flight: u32,
    inbound: Streaming<pb::ListenerMessage>,
    watch: crate::watch::StreamWatch,
    tx: Outbound,
    shutdown: CancellationToken,
}

/// What a reader's look at the replica found.
enum Look {
    Items(Vec<pb::Item>, Seq),
    Ended(ListenerEnd),
    Nothing,
}

impl Reader {
    async fn new(
        ctx: Context,
        start: pb::StartListener,
        window: u32,
        inbound: Streaming<pb::ListenerMessage>,
        tx: Outbound,
        shutdown: CancellationToken,
    ) -> Result<Self, Status> {
        // Registered before the first read: nothing applied after it is missed.
        let watch =
            ctx.hub.watch_stream(&start.stream).map_err(|e| Status::resource_exhausted(e.to_string()))?;
        // The stream may have been created an instant ago through another node.
        if ctx.applied.read(|a| a.grid.stream(&start.stream).is_none()) {
            routing::read_barrier(&ctx).await.map_err(Error::into_status)?;
        }
        // A generator stream starts its generator when its first listener comes.
        let unstarted = ctx.applied.read(|a| {
            a.grid.stream(&start.stream).is_some_and(|s| {
                s.config.generator.is_some() && s.generator_execution.is_none() && s.closed.is_none()
            })
        });
        if unstarted {
            routing::propose(&ctx, Command::StartGenerator { stream: start.stream.clone() })
                .await
                .map_err(Error::into_status)?;
            routing::read_barrier(&ctx).await.map_err(Error::into_status)?;
        }
        let uid = ctx.applied.read(|a| a.grid.stream(&start.stream).map(|s| s.uid));
        let uid = match uid {
            None => {
                return Err(
                    Error::Grid(grid::Error::UnknownStream { name: start.stream.clone() }).into_status()
                );
            }
            Some(uid) if start.uid != 0 && uid != start.uid => {
                return Err(
                    Error::Grid(grid::Error::StreamReplaced { name: start.stream.clone() }).into_status()
                );
            }
            Some(uid) => uid,
        };
        let started = pb::ListenerStarted {
            uid,
            cursor: String::new(),
            node_id: ctx.node_id,
            heartbeat_ms: ctx.streams.listener_heartbeat.as_millis() as u64,
        };
        let _ = tx.try_send(message(pb::stream_message::Kind::Started(started)));
        Ok(Self {
            ctx,
            stream: start.stream,
            uid,
            filter: (!start.filter.is_empty()).then_some(start.filter),
            next: start.from_seq.max(1),
            window,
            in_flight: 0,
            inbound,
            watch,
            tx,
            shutdown,
        })
    }

    fn look(&self) -> Look {
        let room = (self.window - self.in_flight.min(self.window)) as usize;
        self.ctx.applied.read(|a| {
            let Some(s) = a.grid.stream(&self.stream).filter(|s| s.uid == self.uid) else {
                return Look::Ended(ListenerEnd::Deleted(format!("stream '{}' was deleted", self.stream)));
            };
            if room > 0 && self.next <= s.last_seq {
                let Ok((items, next)) =
                    a.grid.read_items(&self.stream, self.next, room.min(READ_BATCH), self.filter.as_deref())
                else {
                    return Look::Nothing;
                };
                let next = next.unwrap_or(s.last_seq + 1);
                return Look::Items(items.into_iter().map(convert::pb_item).collect(), next);
            }
            match &s.closed {
                Some(end) if self.next > s.last_seq => Look::Ended(ListenerEnd::Closed(end.clone())),
                _ => Look::Nothing,
            }
        })
    }

    /// Serves the reader until it ends; `lapse` ends it when its token does.
    async fn run(mut self, mut lapse: crate::auth::Lapse) {
        let mut heartbeat = tokio::time::interval(self.ctx.streams.listener_heartbeat);
        loop {
            match self.look() {
                Look::Items(items, next) => {
                    // A client that keeps up with a busy stream may never let this loop reach
                    // its select below: look at the token here too.
                    if let Some(why) = lapse.check() {
                        return crate::auth::end_stream(&self.tx, &why);
                    }
                    self.next = next;
                    for item in items {
                        self.in_flight += 1;
                        let item = pb::StreamItem { item: Some(item), token: 0, deliveries: 1 };
                        if self.tx.send(message(pb::stream_message::Kind::Item(item))).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                Look::Ended(end) => {
                    let _ = self.tx.send(message(end_message(&end))).await;
                    return;
                }
                Look::Nothing => {}
            }
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    let _ = self.tx.try_send(Err(Status::unavailable("the node is shutting down; resume on another node")));
                    return;
                }
                why = lapse.lapsed() => return crate::auth::end_stream(&self.tx, &why),
                _ = self.watch.changed() => {}
                received = self.inbound.message() => match received {
                    Ok(Some(pb::ListenerMessage { kind: Some(pb::listener_message::Kind::Credit(c)) })) => {
                        self.in_flight = self.in_flight.saturating_sub(c.items);
                    }
                    Ok(Some(pb::ListenerMessage { kind: None })) => {}
                    Ok(Some(_)) => {
                        let _ = self.tx.try_send(Err(Status::invalid_argument("a plain reader takes only credit (no start again, acks or nacks)")));
                        return;
                    }
                    Ok(None) | Err(_) => return,
                },
                _ = heartbeat.tick() => {
                    let last_seq = self.ctx.applied.read(|a| a.grid.stream(&self.stream).map(|s| s.last_seq));
                    if let Some(last_seq) = last_seq {
                        let beat = pb::ListenerHeartbeat { last_seq, lag: (last_seq + 1).saturating_sub(self.next), ack_pending: 0 };
                        let _ = self.tx.try_send(message(pb::stream_message::Kind::Heartbeat(beat)));
                    }
                }
            }
        }
    }
}

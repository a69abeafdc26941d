//! A consumer: one listener at a time on the durable cursor, shared with the other consumers
//! (competing consumers: each delivery goes to one of them).
//!
//! ```text
//!   connect to its node ──Listen{start: cursor, config, uid, credit}──► started (node id)
//!     item (seq, value, deliveries, token) ──► `deliver` invoked ──► ack on the stream
//!     acked (seq, token, error) ──► `deliver` ok ("" ) / fail (stale token) / info (other)
//!   the stream fails, ends, or is silent for 3 heartbeats ──► `listen` info; every delivery
//!   whose ack had no answer: info ──► the next node, a new session, at the cursor
//!   away from its home node for GO_HOME_AFTER ──► closes the session (`listen` ok; what it
//!   held is delivered again) ──► a new session on its home node
//! ```
//!
//! Going home keeps the consumers spread over the nodes (without it, after a few faults all
//! of them listened on one node and no fault hit a listener any more), and it detaches
//! listeners with items in flight on purpose, which the cursor must deliver again.
//!
//! A paused node is noticed by HTTP/2 keep-alive ([`crate::db::stream_channel`]), a node
//! without a leader ends its listeners itself, and a killed one drops the connection. The
//! run stops the consumers after the drain; a session it stops waits up to [`STOP_GRACE`]
//! for the answers to its last acks and ends `ok`.
//!
//! Each delivery is an operation of its own process (many are in flight at once, one per
//! unanswered ack), numbered from [`PROCESS_BASE`] + consumer × [`PROCESS_STRIDE`]; each
//! session's `listen` operation too.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::listener_message::Kind as Out;
use weft_proto::fabric::v1::stream_message::Kind as In;
use weft_proto::fabric::v1::streams_client::StreamsClient;

use super::{CURSOR, Options, STREAM, cursor_config, value_of};
use crate::db::Roster;
use crate::history::{Op, Type};
use crate::outcome::{Done, code_message, failed};
use crate::placement::Placement;
use crate::recorder::Recorder;

/// Process ids of consumers start here (far above any producer's).
pub const PROCESS_BASE: u64 = 1 << 48;
/// Process ids of one consumer (its sessions and deliveries) are within this of each other.
pub const PROCESS_STRIDE: u64 = 1 << 36;
/// A started listener that has sent nothing (not even a heartbeat) for three heartbeats,
/// and at least this long, is given up.
pub const MIN_SILENCE: Duration = Duration::from_secs(3);
/// How long a session the run stops waits for the answers to its last acks.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long a consumer listens away from its home node before it goes back.
pub const GO_HOME_AFTER: Duration = Duration::from_secs(8);
/// Pause before listening again after a session ended.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);
/// Messages to the fabric that may wait beyond one ack per item in flight (the start).
const OUTBOUND_SLACK: usize = 8;
/// How an ack refused because the item was delivered again since reads (`grid::Error::StaleAck`).
const STALE_ACK: &str = "stale fencing token";

/// One consumer: listens (again and again) until the run stops it.
pub struct Consumer {
    /// Its number.
    id: u64,
    placement: Placement,
    next_process: u64,
    session: u64,
    /// The stream's uid, once a listener has started: later sessions resume on that stream.
    uid: u64,
    recorder: Recorder,
    options: Options,
    stop: watch::Receiver<bool>,
}

/// Why a session ended: how its `listen` operation completes, and where the consumer goes.
struct Ended {
    ty: Type,
    why: String,
    next: Next,
}

/// What a consumer does after a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// The run stopped it.
    Stop,
    /// Listen again on its home node.
    Home,
    /// Listen again on the next node.
    FailOver,
}

impl Ended {
    fn broke(why: impl Into<String>) -> Self {
        Self { ty: Type::Info, why: why.into(), next: Next::FailOver }
    }
}

impl Consumer {
    /// Consumer `id`, at home where the roster puts client `client` (after the producers).
    pub fn new(
        id: u64,
        client: u64,
        roster: Roster,
        recorder: Recorder,
        options: Options,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            id,
            placement: Placement::new(client, roster),
            next_process: 0,
            session: 0,
            uid: 0,
            recorder,
            options,
            stop,
        }
    }

    fn process(&mut self) -> u64 {
        let p = PROCESS_BASE + self.id * PROCESS_STRIDE + self.next_process;
        self.next_process += 1;
        p
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow() || self.stop.has_changed().is_err()
    }

    /// Listens until the run stops it, on the next node after each session that ends.
    pub async fn run(mut self) {
        loop {
            if self.stopped() {
                return;
            }
            self.placement.follow_roster();
            match self.listen().await {
                Next::Stop => return,
                Next::Home => self.placement.go_home(),
                Next::FailOver => self.placement.fail_over(),
            }
            tokio::select! {
                biased;
                _ = self.stop.changed() => {}
                _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
            }
        }
    }

    /// One session; what to do next.
    async fn listen(&mut self) -> Next {
        self.session += 1;
        let (consumer, session) = (self.id, self.session);
        let node = self.placement.node();
        let process = self.process();
        let op = move |started_on: Option<u64>, received: Option<u64>, ended: Option<String>| Op::Listen {
            consumer,
            session,
            started_on,
            received,
            ended,
        };
        self.recorder.record(Some(process), Type::Invoke, op(None, None, None), Some(node), None);
        let never = |why: String| op(None, Some(0), Some(why));
        let Some(addr) = self.placement.addr() else {
            let error = format!("node {node} is gone and no node is left");
            self.recorder.record(Some(process), Type::Fail, never(error.clone()), Some(node), Some(error));
            return Next::FailOver;
        };
        // At most one ack per item in flight, twice over for the redeliveries of a window.
        let (tx, rx) = mpsc::channel(2 * self.options.credit as usize + OUTBOUND_SLACK);
        let start = pb::StartListener {
            stream: STREAM.into(),
            cursor: CURSOR.into(),
            config: Some(cursor_config(self.options.ack_wait)),
            uid: self.uid,
            credit: self.options.credit,
            ..Default::default()
        };
        tx.try_send(pb::ListenerMessage { kind: Some(Out::Start(start)) })
            .expect("room for the first message");
        let outbound = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let mut client = StreamsClient::new(crate::db::stream_channel(&addr));
        let mut inbound = match tokio::time::timeout(self.options.timeout, client.listen(outbound)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => {
                let error = code_message(&s);
                let ty = match failed(never(error.clone()), &s) {
                    Done::Fail(..) => Type::Fail,
                    Done::Info(..) | Done::Ok(_) => Type::Info,
                };
                self.recorder.record(Some(process), ty, never(error.clone()), Some(node), Some(error));
                return Next::FailOver;
            }
            Err(_) => {
                let error = format!("the listener did not start within {:?}", self.options.timeout);
                self.recorder.record(
                    Some(process),
                    Type::Info,
                    never(error.clone()),
                    Some(node),
                    Some(error),
                );
                return Next::FailOver;
            }
        };

        // Deliveries whose ack has no answer yet: (seq, token) -> (process, op).
        let mut pending: BTreeMap<(u64, u64), (u64, Op)> = BTreeMap::new();
        let mut started_on = None;
        let mut received = 0u64;
        let mut silence = self.options.timeout;
        let mut stopping: Option<Instant> = None;
        let home_at = (!self.placement.is_home()).then(|| Instant::now() + GO_HOME_AFTER);
        let ended = loop {
            let now = Instant::now();
            if let Some(deadline) = stopping
                && (pending.is_empty() || now >= deadline)
            {
                break Ended {
                    ty: Type::Ok,
                    why: "stopped by the run after the drain".into(),
                    next: Next::Stop,
                };
            }
            let wait = stopping.map_or(silence, |d| d.saturating_duration_since(now));
            let stop_seen = stopping.is_some();
            let message = tokio::select! {
                biased;
                _ = self.stop.changed(), if !stop_seen => {
                    if self.stopped() {
                        stopping = Some(Instant::now() + STOP_GRACE);
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(home_at.unwrap_or(now).into()), if home_at.is_some() && !stop_seen => {
                    let why = format!("closed after {GO_HOME_AFTER:?} away from its home node");
                    break Ended { ty: Type::Ok, why, next: Next::Home };
                }
                m = tokio::time::timeout(wait, inbound.message()) => m,
            };
            let kind = match message {
                Err(_) if stopping.is_some() => continue,
                Err(_) => break Ended::broke(format!("nothing from the node for {silence:?}")),
                Ok(Err(s)) => break Ended::broke(code_message(&s)),
                Ok(Ok(None)) => break Ended::broke("the node closed the stream"),
                Ok(Ok(Some(pb::StreamMessage { kind: None }))) => continue,
                Ok(Ok(Some(pb::StreamMessage { kind: Some(kind) }))) => kind,
            };
            match kind {
                In::Started(s) => {
                    started_on = Some(s.node_id);
                    self.uid = s.uid;
                    silence = Duration::from_millis(s.heartbeat_ms.saturating_mul(3)).max(MIN_SILENCE);
                }
                In::Item(pb::StreamItem { item: Some(item), token, deliveries }) => {
                    received += 1;
                    let p = self.process();
                    let deliver = Op::Deliver {
                        consumer,
                        session,
                        seq: item.seq,
                        value: value_of(&item),
                        deliveries,
                        token,
                    };
                    self.recorder.record(Some(p), Type::Invoke, deliver.clone(), Some(node), None);
                    pending.insert((item.seq, token), (p, deliver));
                    let ack = pb::Delivery { seq: item.seq, token };
                    if tx.try_send(pb::ListenerMessage { kind: Some(Out::Ack(ack)) }).is_err() {
                        tracing::warn!(
                            consumer,
                            seq = item.seq,
                            "no room to send an ack; it stays unanswered"
                        );
                    }
                }
                In::Item(_) => tracing::warn!(consumer, "an item message without an item"),
                In::Heartbeat(_) => {}
                In::Acked(a) => {
                    if let Some((p, deliver)) = pending.remove(&(a.seq, a.token)) {
                        let (ty, error) = match a.error.as_str() {
                            "" => (Type::Ok, None),
                            e if e.contains(STALE_ACK) => (Type::Fail, Some(e.to_owned())),
                            e => (Type::Info, Some(e.to_owned())),
                        };
                        self.recorder.record(Some(p), ty, deliver, Some(node), error);
                    }
                }
                In::End(e) => {
                    let why = format!("the node ended the listener: {} {}", e.reason, e.error);
                    break Ended::broke(why.trim_end());
                }
            }
        };
        drop(tx);
        let why = ended.why;
        for (_, (p, deliver)) in pending {
            let error = format!("the listener ended before the ack was answered: {why}");
            self.recorder.record(Some(p), Type::Info, deliver, Some(node), Some(error));
        }
        tracing::debug!(consumer, session, node, received, why, "listener session ends");
        let error = (ended.ty != Type::Ok).then(|| why.clone());
        self.recorder.record(
            Some(process),
            ended.ty,
            op(started_on, Some(received), Some(why)),
            Some(node),
            error,
        );
        ended.next
    }
}

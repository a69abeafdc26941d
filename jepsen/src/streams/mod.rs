//! The streams workload: exactly-once producers append to one persistent stream while
//! competing consumers listen on one durable cursor; after the faults, a final read of the
//! whole stream and a drain of the cursor. [`crate::checker::streams`] holds the result to
//! promise 3.
//!
//! ```text
//!  producer p1..pP ──Append{items: 1-3 unique values, producer: (p, epoch, sequence)}──► any node
//!     (one append in flight; an unknown or not-applied outcome sends the SAME sequence and
//!      values again, to the next node; `--appends plain` leaves the producer out)
//!
//!  stream "jepsen-stream" (seqs 1, 2, 3, ... assigned at apply)
//!     └─ cursor "jepsen" (explicit acks, ack wait 2 s) ──► listeners on several nodes
//!  consumer c1..cC ◄──Listen(cursor)── node k: items (seq, value, deliveries, token)
//!     each item: recorded, acked on the listen stream, the ack's answer recorded;
//!     the stream broke, ended or went silent ──► listen again on the next node
//!
//!  after the faults are healed:
//!     final read: linearizable Read pages from seq 1 ──► (seq, value) of every item
//!     drain: consumers go on until the cursor's ack floor reaches the read's last seq
//! ```
//!
//! Layout: [`producer`] (appends and how their outcomes are recorded), [`consumer`]
//! (listeners, deliveries and acks); this file: names, setup, the final read and the drain.

pub mod consumer;
pub mod producer;

pub use consumer::Consumer;
pub use producer::Producer;

use std::time::{Duration, Instant};

use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::streams_client::StreamsClient;

use crate::final_read;
use crate::history::{Op, Type};
use crate::outcome::code_message;
use crate::recorder::Recorder;

/// The stream every producer appends to.
pub const STREAM: &str = "jepsen-stream";
/// The durable cursor every consumer listens on.
pub const CURSOR: &str = "jepsen";
/// Most items in one append (each append has 1 to this many).
pub const MAX_BATCH: u64 = 3;
/// The ack wait of the cursor when `--ack-wait-ms` is not given.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(2);
/// A listener's credit when `--credit` is not given: the fabric's default window.
pub const DEFAULT_CREDIT: u32 = 256;
/// Most credit a listener may ask for (the fabric's `MAX_WINDOW`).
pub const MAX_CREDIT: u32 = 10_000;
/// How long one request of the setup, the final read or the drain may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two tries of the setup or two looks of the drain.
const RETRY_PAUSE: Duration = Duration::from_millis(300);

/// How producers append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Appends {
    /// Each append carries the producer's id, epoch and sequence, and a retry carries the
    /// same ones: the fabric stores it once (promise 3).
    #[default]
    ExactlyOnce,
    /// No producer id: a retry of an append that was applied after all appends it again.
    /// Deliberately unsafe, to show the checker catches duplicates.
    Plain,
}

impl Appends {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Appends::ExactlyOnce => "exactly-once",
            Appends::Plain => "plain",
        }
    }
}

/// What producers and consumers share.
#[derive(Debug, Clone)]
pub struct Options {
    pub appends: Appends,
    /// Per-append timeout (the append is `info` after it); also how long a listener has to
    /// start.
    pub timeout: Duration,
    /// Pause between one producer's appends (each is jittered by ±50%).
    pub pause: Duration,
    /// The cursor's ack wait.
    pub ack_wait: Duration,
    /// Items the fabric may send one listener before it acks some.
    pub credit: u32,
}

/// The cursor's settings: every item from the first, explicit acks, a short ack wait.
pub fn cursor_config(ack_wait: Duration) -> pb::CursorConfig {
    pb::CursorConfig {
        deliver: pb::DeliverPolicy::DeliverAll as i32,
        ack: pb::AckPolicy::AckExplicit as i32,
        ack_wait_ms: ack_wait.as_millis() as u64,
        ..Default::default()
    }
}

/// An item's payload: its value as a JSON string.
pub fn payload(value: &str) -> pb::Payload {
    pb::Payload { codec: "json".into(), data: serde_json::to_vec(value).expect("a string encodes") }
}

/// The value an item carries; one no producer appends when it is not a JSON string (the
/// checker then reports it).
pub fn value_of(item: &pb::Item) -> String {
    item.payload
        .as_ref()
        .filter(|p| p.codec == "json")
        .and_then(|p| serde_json::from_slice::<String>(&p.data).ok())
        .unwrap_or_else(|| format!("<not a value of this run at seq {}>", item.seq))
}

fn request<M>(m: M, timeout: Duration) -> tonic::Request<M> {
    let mut r = tonic::Request::new(m);
    r.set_timeout(timeout);
    r
}

/// Creates the stream and its cursor (both idempotent with the same settings), trying each
/// of `nodes` in turn for up to `patience`; the last error when it could not.
pub async fn setup(nodes: &[(u64, String)], ack_wait: Duration, patience: Duration) -> Result<(), String> {
    if nodes.is_empty() {
        return Err("no node to set the stream up on".into());
    }
    let deadline = Instant::now() + patience;
    for (node, addr) in nodes.iter().cycle() {
        let mut client = StreamsClient::new(crate::db::channel(addr, REQUEST_TIMEOUT));
        let create = pb::CreateStreamRequest {
            name: STREAM.into(),
            kind: pb::StreamKind::Persistent as i32,
            limits: None,
            generator: None,
        };
        let cursor = pb::CreateCursorRequest {
            stream: STREAM.into(),
            name: CURSOR.into(),
            config: Some(cursor_config(ack_wait)),
        };
        let result = match client.create(request(create, REQUEST_TIMEOUT)).await {
            Ok(_) => client.create_cursor(request(cursor, REQUEST_TIMEOUT)).await.map(|_| ()),
            Err(s) => Err(s),
        };
        match result {
            Ok(()) => {
                tracing::info!(node, stream = STREAM, cursor = CURSOR, "stream and cursor created");
                return Ok(());
            }
            Err(s) if Instant::now() < deadline => {
                tracing::debug!(node, error = %code_message(&s), "stream setup failed; trying the next node");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(s) => return Err(format!("node {node}: {}", code_message(&s))),
        }
    }
    unreachable!("cycle over a non-empty list never ends")
}

/// Every item of the stream, `(seq, value)`, by linearizable reads through `addr`.
async fn read_all(addr: &str) -> Result<Vec<(u64, String)>, tonic::Status> {
    let mut client = StreamsClient::new(crate::db::channel(addr, final_read::PAGE_TIMEOUT));
    let mut out = Vec::new();
    let mut from_seq = 1;
    loop {
        let m = pb::ReadRequest {
            stream: STREAM.into(),
            from_seq,
            // The server's page size.
            limit: 0,
            filter: String::new(),
            consistency: pb::Consistency::Linearizable as i32,
        };
        let page = client.read(request(m, final_read::PAGE_TIMEOUT)).await?.into_inner();
        out.extend(page.items.iter().map(|i| (i.seq, value_of(i))));
        if page.next_seq == 0 {
            return Ok(out);
        }
        if page.next_seq <= from_seq {
            return Err(tonic::Status::internal(format!(
                "a read from seq {from_seq} said the next page starts at {}",
                page.next_seq
            )));
        }
        from_seq = page.next_seq;
    }
}

/// The final read: the whole stream, tried on each node in turn until one answers or
/// `patience` runs out; recorded as one operation. The last seq read, if one answered.
pub async fn read_stream(
    nodes: &[(u64, String)],
    recorder: &Recorder,
    process: u64,
    patience: Duration,
) -> Option<u64> {
    let invoke = Op::ReadStream { items: None };
    let read = final_read::until_answered(nodes, recorder, process, patience, invoke, |addr| async move {
        Ok(Op::ReadStream { items: Some(read_all(&addr).await?) })
    })
    .await;
    match read {
        Some(Op::ReadStream { items: Some(items) }) => Some(items.last().map_or(0, |(seq, _)| *seq)),
        _ => None,
    }
}

/// The drain: waits (up to `patience`, asking each of `nodes` in turn) until the cursor's
/// ack floor reaches `want`, i.e. every item up to the final read's last seq was delivered
/// and acknowledged. Recorded as one operation; whether it got there.
pub async fn drain(
    nodes: &[(u64, String)],
    recorder: &Recorder,
    process: u64,
    want: u64,
    patience: Duration,
) -> bool {
    let op = |info: Option<&pb::CursorInfo>| Op::Drain {
        want,
        ack_floor: info.map(|c| c.ack_floor),
        last_seq: info.map(|c| c.next_seq.saturating_sub(1) + c.lag),
        delivered: info.map(|c| c.delivered),
        redelivered: info.map(|c| c.redelivered),
    };
    let Some(first) = nodes.first() else { return false };
    recorder.record(Some(process), Type::Invoke, op(None), Some(first.0), None);
    let deadline = Instant::now() + patience;
    let mut last: Option<(u64, pb::CursorInfo)> = None;
    let mut at = 0;
    loop {
        let (node, addr) = &nodes[at % nodes.len()];
        let mut client = StreamsClient::new(crate::db::channel(addr, REQUEST_TIMEOUT));
        let m = pb::CursorInfoRequest {
            stream: STREAM.into(),
            name: CURSOR.into(),
            consistency: pb::Consistency::Linearizable as i32,
        };
        let error = match client.cursor_info(request(m, REQUEST_TIMEOUT)).await {
            Ok(r) => {
                let info = r.into_inner();
                if info.ack_floor >= want {
                    recorder.record(Some(process), Type::Ok, op(Some(&info)), Some(*node), None);
                    return true;
                }
                let error = format!(
                    "the ack floor is {} of {want}: {} waiting for an ack, {} for redelivery, {} listeners",
                    info.ack_floor, info.ack_pending, info.redelivery_pending, info.listeners
                );
                last = Some((*node, info));
                error
            }
            Err(s) => {
                at += 1;
                code_message(&s)
            }
        };
        if Instant::now() > deadline {
            let node = last.as_ref().map_or(*node, |(n, _)| *n);
            let figures = op(last.as_ref().map(|(_, i)| i));
            let why = format!("not drained after {patience:?}: {error}");
            tracing::warn!(%why, "drain");
            recorder.record(Some(process), Type::Info, figures, Some(node), Some(why));
            return false;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_payloads_and_others_are_marked() {
        let item = pb::Item { seq: 4, payload: Some(payload("p1-1-7-0")), ..Default::default() };
        assert_eq!(value_of(&item), "p1-1-7-0");
        let odd = pb::Item {
            seq: 5,
            payload: Some(pb::Payload { codec: "json".into(), data: b"12".to_vec() }),
            ..Default::default()
        };
        assert!(value_of(&odd).starts_with("<not a value"));
        assert!(value_of(&pb::Item { seq: 6, ..Default::default() }).contains("seq 6"));
    }
}

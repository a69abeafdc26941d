//! What the fabric reports about streams and cursors.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weft_proto::fabric::v1 as pb;

use super::StreamRef;
use super::config::{Config, CursorConfig};

/// How a closed stream ended.
///
/// ```
/// use weft_agent::streams::Closed;
/// let failed = Closed::Failed("the source went away".into());
/// assert_ne!(failed, Closed::Ok);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// Closed normally: listeners end after the last item.
    Ok,
    /// Closed with an error: listeners get [`Error::StreamFailed`](crate::Error::StreamFailed)
    /// after the last item.
    Failed(String),
}

/// A stream as the fabric has it.
///
/// ```no_run
/// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
/// let info = client.stream("orders").info().await?;
/// println!("{}: seqs {}..={}, {} items, {} bytes", info.name, info.first_seq, info.last_seq, info.items, info.bytes);
/// for cursor in &info.cursors {
///     println!("  cursor {}: {} behind, {} unacknowledged", cursor.name, cursor.lag, cursor.ack_pending);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Info {
    /// Its name.
    pub name: String,
    /// Tells it from an earlier stream of the same name (deleted since).
    pub uid: u64,
    /// Its settings.
    pub config: Config,
    /// The first stored seq (greater than `last_seq` when it holds no items).
    pub first_seq: u64,
    /// The last seq assigned (0: none yet).
    pub last_seq: u64,
    /// Items stored.
    pub items: u64,
    /// Bytes stored (payloads, keys, headers).
    pub bytes: u64,
    /// `Some` once closed.
    pub closed: Option<Closed>,
    /// When it was created.
    pub created: SystemTime,
    /// Its cursors.
    pub cursors: Vec<CursorInfo>,
    /// A generator stream's execution, once started.
    pub generator_execution: Option<u64>,
}

impl Info {
    /// A reference to this stream, to hand to other agents.
    pub fn reference(&self) -> StreamRef {
        StreamRef { name: self.name.clone(), uid: self.uid }
    }

    pub(crate) fn from_pb(i: pb::StreamInfo) -> Self {
        let closed = i.closed.then(|| match i.close_error.as_str() {
            "" => Closed::Ok,
            e => Closed::Failed(e.to_owned()),
        });
        Self {
            config: Config::from_pb(&i),
            uid: i.uid,
            first_seq: i.first_seq,
            last_seq: i.last_seq,
            items: i.items,
            bytes: i.bytes,
            closed,
            created: UNIX_EPOCH + Duration::from_millis(i.created_ms),
            cursors: i.cursors.into_iter().map(CursorInfo::from_pb).collect(),
            generator_execution: (i.generator_execution > 0).then_some(i.generator_execution),
            name: i.name,
        }
    }
}

/// A cursor as the fabric has it.
///
/// ```no_run
/// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
/// let billing = client.stream("orders").cursor("billing").await?;
/// assert!(billing.ack_floor <= billing.next_seq);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorInfo {
    /// The stream.
    pub stream: String,
    /// Its name (an unnamed cursor's starts with `~`).
    pub name: String,
    /// Its settings.
    pub config: CursorConfig,
    /// Every item at or below this seq is acknowledged.
    pub ack_floor: u64,
    /// The next seq it looks at.
    pub next_seq: u64,
    /// Items it has not delivered yet.
    pub lag: u64,
    /// Items delivered and not acknowledged.
    pub ack_pending: u64,
    /// Items waiting to be delivered again.
    pub redelivery_pending: u64,
    /// Deliveries so far.
    pub delivered: u64,
    /// Deliveries that were redeliveries.
    pub redelivered: u64,
    /// Items that ran out of deliveries.
    pub dead_lettered: u64,
    /// Listeners attached now.
    pub listeners: u32,
    /// Whether it is one listener's own (removed once idle).
    pub unnamed: bool,
}

impl CursorInfo {
    pub(crate) fn from_pb(c: pb::CursorInfo) -> Self {
        Self {
            config: CursorConfig::from_pb(&c.config.unwrap_or_default()),
            stream: c.stream,
            name: c.name,
            ack_floor: c.ack_floor,
            next_seq: c.next_seq,
            lag: c.lag,
            ack_pending: c.ack_pending,
            redelivery_pending: c.redelivery_pending,
            delivered: c.delivered,
            redelivered: c.redelivered,
            dead_lettered: c.dead_lettered,
            listeners: c.listeners,
            unnamed: c.unnamed,
        }
    }
}

/// One page of [`Client::list_streams`](crate::Client::list_streams).
///
/// ```no_run
/// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
/// let mut after = None;
/// loop {
///     let page = client.list_streams(after.as_deref()).await?;
///     for s in &page.streams {
///         println!("{} ({} items)", s.name, s.items);
///     }
///     match page.next {
///         Some(next) => after = Some(next),
///         None => break,
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Streams in name order.
    pub streams: Vec<Info>,
    /// Where the next page starts; `None` at the end.
    pub next: Option<String>,
}

//! Streams: append-only sequences of items with dense sequence numbers from 1, assigned at
//! apply, so every replica holds one order.
//!
//! ```text
//!   Append{items, expected_last_seq?, producer?, msg_id?}
//!     ── refused: closed, stale expected_last_seq, producer gap / older epoch, a limit
//!        reached with discard New ─► nothing changes
//!     ── duplicate (same producer sequence, or msg id inside the window) ─► the first seqs
//!     ── else: seqs last+1 ..= last+n; the oldest items go if a limit is passed (discard
//!        Old); cursors with listeners get the new items (`cursors.rs`)
//! ```
//!
//! A stream's kind says when items leave besides its limits: never (`Persistent`), once
//! every cursor has acknowledged them (`Ephemeral`), or once its one cursor has
//! (`Workqueue`). `Close` ends a stream with a final status; `DeleteStream` removes it and its
//! cursors.
//!
//! This file holds the types the log stores and the grid keeps, with their shape checks; how
//! `apply` changes streams is in `streams.rs`, cursors in `cursor.rs` and `cursors.rs`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::Error;
use super::cursor::Cursor;
use super::execution::Payload;
use super::namespace;

/// An item's sequence number in its stream: dense from 1, never reused.
pub type Seq = u64;

/// Longest item key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Most headers one item may carry.
pub const MAX_HEADERS: usize = 32;
/// Longest header name, in bytes.
pub const MAX_HEADER_NAME_BYTES: usize = 64;
/// Longest message id or producer id, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// The dedup window when a stream does not name one.
pub const DEFAULT_DEDUP_WINDOW_MS: u64 = 120_000;
/// Longest dedup window.
pub const MAX_DEDUP_WINDOW_MS: u64 = 7 * 24 * 3_600_000;
/// Message ids a stream remembers at most; the oldest are forgotten first.
pub const MAX_MSG_IDS: usize = 100_000;
/// Producers a stream remembers at most; the one idle longest is forgotten first.
pub const MAX_PRODUCERS: usize = 10_000;
/// Longest close error, in bytes (longer ones are clipped).
pub const MAX_CLOSE_ERROR_BYTES: usize = 1024;

/// When items leave a stream besides its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Kept until the limits remove them.
    Persistent,
    /// Interest retention: removed once every cursor acknowledged them; kept (up to the
    /// limits) while the stream has no cursor.
    Ephemeral,
    /// Each item goes to one consumer of the stream's one cursor and is removed when acked.
    Workqueue,
}

impl Kind {
    /// The kind's name as the CLI and docs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Persistent => "persistent",
            Kind::Ephemeral => "ephemeral",
            Kind::Workqueue => "workqueue",
        }
    }
}

/// What a limit reached does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Discard {
    /// Remove the oldest items.
    Old,
    /// Refuse the append.
    New,
}

/// A stream's kind and limits. `None`: no limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamConfig {
    pub kind: Kind,
    pub max_items: Option<u64>,
    pub max_bytes: Option<u64>,
    pub max_age_ms: Option<u64>,
    pub discard: Discard,
    /// How long a message id is remembered.
    pub dedup_window_ms: u64,
    /// The execution whose output the stream is, if it is a generator stream.
    pub generator: Option<Box<Generator>>,
}

/// What backs a generator stream: a delegate of an agent whose appends are the stream. It
/// starts when the first listener attaches (or at creation, if `eager`); its appends carry
/// its execution as producer identity, so a run after a crash appends nothing twice; when it
/// returns the stream closes ok, when it fails the stream closes with its error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generator {
    pub call: super::execution::NewExecution,
    pub eager: bool,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            kind: Kind::Persistent,
            max_items: None,
            max_bytes: None,
            max_age_ms: None,
            discard: Discard::Old,
            dedup_window_ms: DEFAULT_DEDUP_WINDOW_MS,
            generator: None,
        }
    }
}

impl StreamConfig {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |reason: &str| Err(Error::InvalidStream { reason: reason.to_owned() });
        if self.max_items == Some(0) || self.max_bytes == Some(0) || self.max_age_ms == Some(0) {
            return bad("a limit of 0 is not allowed (leave it out for no limit)");
        }
        if self.dedup_window_ms == 0 || self.dedup_window_ms > MAX_DEDUP_WINDOW_MS {
            return bad(&format!("dedup_window_ms must be 1..={MAX_DEDUP_WINDOW_MS}"));
        }
        if let Some(g) = &self.generator {
            g.call.validate_shape()?;
            let d = g.call.delegate.as_str();
            if d == super::execution::START_DELEGATE
                || d == super::execution::STOP_DELEGATE
                || g.call.parent.is_some()
            {
                return bad("a generator runs a delegate other than Start and Stop, with no parent");
            }
        }
        Ok(())
    }
}

/// A stream to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewStream {
    pub name: String,
    pub config: StreamConfig,
}

/// One item to append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewItem {
    pub key: Option<String>,
    pub payload: Payload,
    pub headers: Vec<(String, String)>,
}

impl NewItem {
    /// The bytes the item counts for against the limits: payload, key and headers.
    pub fn size(&self) -> usize {
        self.payload.data.len()
            + self.key.as_ref().map_or(0, String::len)
            + self.headers.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>()
    }

    /// The bytes of its headers.
    pub fn header_bytes(&self) -> usize {
        self.headers.iter().map(|(n, v)| n.len() + v.len()).sum()
    }

    /// Checks the key, headers and payload codec (not sizes: those are limits).
    pub fn validate_shape(&self) -> Result<(), Error> {
        if let Some(key) = &self.key {
            validate_item_key(key)?;
        }
        if self.headers.len() > MAX_HEADERS {
            return Err(Error::InvalidItem {
                reason: format!("{} headers; the limit is {MAX_HEADERS}", self.headers.len()),
            });
        }
        for (name, _) in &self.headers {
            if name.is_empty()
                || name.len() > MAX_HEADER_NAME_BYTES
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(Error::InvalidItem {
                    reason: format!(
                        "header name '{}': expected 1-{MAX_HEADER_NAME_BYTES} characters of [A-Za-z0-9._-]",
                        namespace::clip(name)
                    ),
                });
            }
        }
        self.payload.validate()
    }
}

/// An exactly-once producer's place: appends carry `(id, epoch, sequence)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerSeq {
    pub id: String,
    pub epoch: u64,
    pub sequence: u64,
}

/// An append: one item or an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Append {
    pub stream: String,
    pub items: Vec<NewItem>,
    /// Only if the stream's last seq is this (0: empty).
    pub expected_last_seq: Option<Seq>,
    pub producer: Option<ProducerSeq>,
    /// Deduplicates the whole append within the stream's dedup window.
    pub msg_id: Option<String>,
}

impl Append {
    /// Checks names and items (not sizes: those are limits, checked at proposal).
    pub fn validate_shape(&self) -> Result<(), Error> {
        validate_stream_name(&self.stream)?;
        if self.items.is_empty() {
            return Err(Error::InvalidItem { reason: "an append needs at least one item".into() });
        }
        for item in &self.items {
            item.validate_shape()?;
        }
        if let Some(p) = &self.producer {
            validate_id("producer id", &p.id)?;
            if p.sequence == 0 {
                return Err(Error::InvalidItem { reason: "producer sequences start at 1".into() });
            }
        }
        if let Some(id) = &self.msg_id {
            validate_id("message id", id)?;
        }
        Ok(())
    }

    /// The bytes the append adds.
    pub fn size(&self) -> usize {
        self.items.iter().map(NewItem::size).sum()
    }
}

/// An item as the stream keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub seq: Seq,
    pub key: Option<String>,
    pub payload: Payload,
    pub headers: Vec<(String, String)>,
    /// The entry's time when it was appended.
    pub time_ms: u64,
}

impl Item {
    /// The bytes it counts for.
    pub fn size(&self) -> u64 {
        (self.payload.data.len()
            + self.key.as_ref().map_or(0, String::len)
            + self.headers.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>()) as u64
    }
}

/// How a stream ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum End {
    /// Closed normally.
    Ok,
    /// Closed with an error.
    Failed(String),
}

/// What a stream remembers of a producer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Producer {
    pub epoch: u64,
    /// The last sequence applied, and the seqs it was given.
    pub sequence: u64,
    pub first_seq: Seq,
    pub last_seq: Seq,
    pub last_ms: u64,
}

/// A stream as the grid keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stream {
    pub name: String,
    /// The grid's revision when it was created: tells it from an earlier stream of that name.
    pub uid: u64,
    pub config: StreamConfig,
    pub created_ms: u64,
    /// The last seq assigned (0: none yet).
    pub last_seq: Seq,
    pub items: BTreeMap<Seq, Item>,
    /// Bytes of the items kept.
    pub bytes: u64,
    pub closed: Option<End>,
    /// A generator stream's execution, once started.
    pub generator_execution: Option<super::execution::ExecutionId>,
    pub producers: BTreeMap<String, Producer>,
    /// (last append time, producer id), oldest first.
    pub(super) producer_order: BTreeSet<(u64, String)>,
    /// Message id to (first seq, last seq, append time).
    pub(super) msg_ids: BTreeMap<String, (Seq, Seq, u64)>,
    /// (append time, message id), oldest first.
    pub(super) msg_id_order: BTreeSet<(u64, String)>,
    /// The last seq kept of each key.
    pub(super) last_by_key: BTreeMap<String, Seq>,
    pub cursors: BTreeMap<String, Cursor>,
}

impl Stream {
    /// A new empty stream.
    pub fn new(name: String, uid: u64, config: StreamConfig, created_ms: u64) -> Self {
        Self {
            name,
            uid,
            config,
            created_ms,
            last_seq: 0,
            items: BTreeMap::new(),
            bytes: 0,
            closed: None,
            generator_execution: None,
            producers: BTreeMap::new(),
            producer_order: BTreeSet::new(),
            msg_ids: BTreeMap::new(),
            msg_id_order: BTreeSet::new(),
            last_by_key: BTreeMap::new(),
            cursors: BTreeMap::new(),
        }
    }

    /// The first seq kept, or `last_seq + 1` when empty.
    pub fn first_seq(&self) -> Seq {
        self.items.first_key_value().map_or(self.last_seq + 1, |(s, _)| *s)
    }

    /// The last item kept with exactly this key.
    pub fn last_by_key(&self, key: &str) -> Option<&Item> {
        self.last_by_key.get(key).and_then(|s| self.items.get(s))
    }
}

/// Checks a stream name: 1-128 characters of `[A-Za-z0-9._-]`.
pub fn validate_stream_name(name: &str) -> Result<(), Error> {
    if namespace::valid_segment(name) {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what: "stream".into(),
            name: namespace::clip(name),
            reason: "expected 1-128 characters of [A-Za-z0-9._-]".into(),
        })
    }
}

fn validate_id(what: &str, id: &str) -> Result<(), Error> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(Error::InvalidItem { reason: format!("{what} must be 1-{MAX_ID_BYTES} bytes") });
    }
    Ok(())
}

fn valid_token(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks an item key: dot-separated tokens of `[A-Za-z0-9_-]`, at most [`MAX_KEY_BYTES`].
pub fn validate_item_key(key: &str) -> Result<(), Error> {
    if key.len() > MAX_KEY_BYTES || !key.split('.').all(valid_token) {
        return Err(Error::InvalidItem {
            reason: format!(
                "key '{}': expected dot-separated tokens of [A-Za-z0-9_-], at most {MAX_KEY_BYTES} bytes",
                namespace::clip(key)
            ),
        });
    }
    Ok(())
}

/// Checks a key filter: tokens as in keys, `*` for any one token, `>` (last) for one or
/// more.
pub fn validate_filter(filter: &str) -> Result<(), Error> {
    let tokens: Vec<&str> = filter.split('.').collect();
    let ok = filter.len() <= MAX_KEY_BYTES
        && tokens
            .iter()
            .enumerate()
            .all(|(i, t)| valid_token(t) || *t == "*" || (*t == ">" && i == tokens.len() - 1));
    if !ok {
        return Err(Error::InvalidFilter {
            filter: namespace::clip(filter),
            reason: format!(
                "expected dot-separated tokens of [A-Za-z0-9_-], '*' for one token, '>' last for the rest; at most {MAX_KEY_BYTES} bytes"
            ),
        });
    }
    Ok(())
}

/// Whether `key` matches `filter` (both checked). An item without a key matches no filter.
pub fn filter_matches(filter: &str, key: Option<&str>) -> bool {
    let Some(key) = key else { return false };
    let mut keys = key.split('.');
    for f in filter.split('.') {
        if f == ">" {
            return keys.next().is_some();
        }
        match keys.next() {
            Some(k) if f == "*" || f == k => {}
            _ => return false,
        }
    }
    keys.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_like_subjects() {
        assert!(filter_matches("a.b", Some("a.b")));
        assert!(!filter_matches("a.b", Some("a.b.c")));
        assert!(filter_matches("a.*", Some("a.x")));
        assert!(!filter_matches("a.*", Some("a.x.y")));
        assert!(filter_matches("a.>", Some("a.x.y")));
        assert!(!filter_matches("a.>", Some("a")));
        assert!(filter_matches("*.b.>", Some("z.b.c")));
        assert!(!filter_matches("a", None));
    }

    #[test]
    fn keys_and_filters_are_checked() {
        assert!(validate_item_key("orders.eu.42").is_ok());
        for bad in ["", "a..b", "a.*", "a.>", "a b", &"k".repeat(MAX_KEY_BYTES + 1)] {
            assert!(validate_item_key(bad).is_err(), "{bad:?}");
        }
        assert!(validate_filter("a.*.>").is_ok());
        for bad in ["", "a.>.b", "a..b", "a.b*", "a.**"] {
            assert!(validate_filter(bad).is_err(), "{bad:?}");
        }
    }
}

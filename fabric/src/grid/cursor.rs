//! Cursors: durable positions on a stream, kept in the grid, and the listeners attached to
//! them.
//!
//! ```text
//!   next_seq ──scan (filter)──► deliver to the attached listener with the most room
//!   queued (redeliveries) ──►─┘      │ (token, ack wait)
//!                                    ▼
//!                              unacked{seq: listener, token, deliveries, expires}
//!      ack (token matches) ──► done: the ack floor moves; ephemeral / workqueue items go
//!      nack, ack wait over, listener detached ──► queued again, or after max_deliveries
//!                                               to the dead-letter stream
//! ```
//!
//! Listeners that share a cursor are competing consumers: each item is delivered to one of
//! them under a fresh fencing token; an ack must carry the token of the item's current
//! delivery. A listener holds at most `window` items it has not acked (or, with `AckPolicy::
//! None`, not given credit for): that is the flow control between the grid and a slow
//! listener.
//!
//! This file holds the types; how `apply` changes cursors is in `cursors.rs`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::Error;
use super::session::Host;
use super::stream::{Seq, validate_filter, validate_stream_name};

/// A listener's id: assigned by the grid, never reused.
pub type ListenerId = u64;

/// The ack wait when a cursor does not name one.
pub const DEFAULT_ACK_WAIT_MS: u64 = 30_000;
/// Longest ack wait.
pub const MAX_ACK_WAIT_MS: u64 = 24 * 3_600_000;
/// Max ack pending when a cursor does not name one.
pub const DEFAULT_MAX_ACK_PENDING: u32 = 1000;
/// Highest max ack pending.
pub const MAX_ACK_PENDING: u32 = 100_000;
/// Most cursors one stream may have (named and unnamed): each costs every delivery pass.
pub const MAX_CURSORS_PER_STREAM: usize = 1000;
/// Largest window one listener may ask for.
pub const MAX_WINDOW: u32 = 10_000;
/// How an unnamed cursor's name starts (no user name can: `~` is not a name character).
pub const UNNAMED_PREFIX: &str = "~";

/// Where a cursor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliverPolicy {
    All,
    New,
    Last,
    LastPerKey,
    FromSeq(Seq),
    FromTime(u64),
}

/// Whether deliveries must be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckPolicy {
    Explicit,
    None,
}

/// A cursor's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorConfig {
    pub deliver: DeliverPolicy,
    pub filter: Option<String>,
    pub ack: AckPolicy,
    pub ack_wait_ms: u64,
    /// Deliveries of one item before it goes to the dead-letter stream (or is dropped).
    pub max_deliveries: Option<u32>,
    pub dead_letter: Option<String>,
    pub max_ack_pending: u32,
    /// For an unnamed cursor: removed after this long without listeners.
    pub idle_ms: Option<u64>,
}

impl Default for CursorConfig {
    fn default() -> Self {
        Self {
            deliver: DeliverPolicy::All,
            filter: None,
            ack: AckPolicy::Explicit,
            ack_wait_ms: DEFAULT_ACK_WAIT_MS,
            max_deliveries: None,
            dead_letter: None,
            max_ack_pending: DEFAULT_MAX_ACK_PENDING,
            idle_ms: None,
        }
    }
}

impl CursorConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |reason: String| Err(Error::InvalidCursor { reason });
        if let Some(filter) = &self.filter {
            validate_filter(filter)?;
        }
        if self.ack_wait_ms == 0 || self.ack_wait_ms > MAX_ACK_WAIT_MS {
            return bad(format!("ack_wait_ms must be 1..={MAX_ACK_WAIT_MS}"));
        }
        if self.max_ack_pending == 0 || self.max_ack_pending > MAX_ACK_PENDING {
            return bad(format!("max_ack_pending must be 1..={MAX_ACK_PENDING}"));
        }
        if self.max_deliveries == Some(0) {
            return bad("max_deliveries of 0 is not allowed (leave it out for no limit)".into());
        }
        if let Some(dlq) = &self.dead_letter {
            validate_stream_name(dlq)?;
            super::audit::check_not_reserved(dlq)?;
        }
        if self.idle_ms == Some(0) {
            return bad("idle_ms of 0 is not allowed".into());
        }
        Ok(())
    }
}

/// A cursor to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewCursor {
    pub stream: String,
    pub name: String,
    pub config: CursorConfig,
}

/// A listener to attach: to a named cursor (created with `config` if absent), or, with no
/// name, to a new unnamed cursor of its own made with `config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewListener {
    pub stream: String,
    pub cursor: Option<String>,
    pub config: Option<CursorConfig>,
    /// The stream's uid the listener expects (a resume); `None`: any.
    pub uid: Option<u64>,
    pub host: Host,
    /// Items it may hold unacknowledged (or without credit) at once.
    pub window: u32,
}

/// One delivery of an item, waiting for its ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub listener: ListenerId,
    pub token: u64,
    /// Deliveries of the item to this cursor, this one included.
    pub count: u32,
    pub expires_ms: u64,
}

/// A cursor as the grid keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub name: String,
    pub config: CursorConfig,
    pub created_ms: u64,
    /// The next seq the cursor looks at.
    pub next_seq: Seq,
    /// Items to deliver (again) before `next_seq`, with their deliveries so far.
    pub queued: BTreeMap<Seq, u32>,
    pub unacked: BTreeMap<Seq, Delivery>,
    pub listeners: BTreeSet<ListenerId>,
    /// Since when an unnamed cursor has had no listener.
    pub idle_since_ms: Option<u64>,
    pub delivered: u64,
    pub redelivered: u64,
    pub dead_lettered: u64,
}

/// What acknowledging a delivery would do, when it is not stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCheck {
    /// It is the item's current delivery: the ack completes it.
    Current,
    /// The item is done already (acknowledged, or skipped by the filter): acking it again
    /// changes nothing.
    Done,
}

impl Cursor {
    /// Checks an ack of `(seq, token)` against this cursor: the current delivery, an item
    /// done already, or (an error) a stale token. Along the log, a delivered token that is
    /// not current never is again (it stays stale, or the item gets done by another
    /// delivery's ack) and a done item stays done; so when a replica behind the leader finds
    /// such an ack stale or done, applying it on the leader would change nothing either.
    pub fn check_ack(&self, stream: &str, seq: Seq, token: u64) -> Result<AckCheck, Error> {
        let stale = |reason: String| {
            Err(Error::StaleAck { stream: stream.to_owned(), cursor: self.name.clone(), seq, reason })
        };
        match self.unacked.get(&seq) {
            Some(d) if d.token == token => Ok(AckCheck::Current),
            Some(d) => {
                stale(format!("it was delivered again since (token {} is current, not {token})", d.token))
            }
            None if self.queued.contains_key(&seq) => {
                stale("its ack wait ran out; it waits to be delivered again".into())
            }
            None if seq >= self.next_seq => stale("it has not been delivered".into()),
            None => Ok(AckCheck::Done),
        }
    }

    /// Every item at or below this seq is done (acknowledged, or skipped by the filter).
    pub fn ack_floor(&self) -> Seq {
        let first = [self.unacked.keys().next(), self.queued.keys().next()]
            .into_iter()
            .flatten()
            .copied()
            .min()
            .unwrap_or(self.next_seq)
            .min(self.next_seq);
        first.saturating_sub(1)
    }

    /// Whether the cursor was made for one listener.
    pub fn unnamed(&self) -> bool {
        self.name.starts_with(UNNAMED_PREFIX)
    }

    /// Whether everything up to `last_seq` is delivered and acknowledged.
    pub fn caught_up(&self, last_seq: Seq) -> bool {
        self.queued.is_empty() && self.unacked.is_empty() && self.next_seq > last_seq
    }
}

/// A listener as the grid keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    pub id: ListenerId,
    pub stream: String,
    pub cursor: String,
    /// Where its gRPC stream lives.
    pub host: Host,
    pub opened_ms: u64,
    pub window: u32,
    /// Items delivered and not yet acked (or credited).
    pub in_flight: u32,
}

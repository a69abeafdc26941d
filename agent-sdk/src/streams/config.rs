//! Settings: a stream's kind and limits ([`Config`]) and its generator ([`Generator`]); a
//! cursor's ([`CursorConfig`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use weft_proto::fabric::v1 as pb;

use crate::{Codec, Error, RetryPolicy, codec};

/// When items leave a stream, besides its limits.
///
/// ```
/// use weft_agent::streams::{Config, Kind};
/// let jobs = Config::new().kind(Kind::Workqueue);
/// assert_eq!(jobs.kind, Kind::Workqueue);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    /// Items stay until the limits remove them (the default).
    #[default]
    Persistent,
    /// Interest retention: an item goes once every cursor has acknowledged it (it stays, up
    /// to the limits, while the stream has no cursor).
    Ephemeral,
    /// A work queue: each item goes to one listener of the stream's one cursor and is
    /// removed once acknowledged.
    Workqueue,
}

/// What a stream at one of its limits does when more is appended.
///
/// ```
/// use weft_agent::streams::{Config, Discard};
/// let bounded = Config::new().max_items(1_000).discard(Discard::New);
/// assert_eq!(bounded.discard, Discard::New);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Discard {
    /// The oldest items go (the default).
    #[default]
    Old,
    /// The append is refused (`Error::Overloaded` once the client's `retry_for` runs out,
    /// naming the limit): back-pressure on producers.
    New,
}

/// A stream's settings, for [`Stream::create`](crate::Stream::create). Creating a stream that
/// exists with the same settings finds it; with other settings it is refused.
///
/// ```
/// use std::time::Duration;
/// use weft_agent::streams::{Config, Discard, Kind};
/// let config = Config::new()
///     .kind(Kind::Persistent)
///     .max_items(100_000)
///     .max_bytes(64 << 20)
///     .max_age(Duration::from_secs(24 * 3600))
///     .discard(Discard::Old)
///     .dedup_window(Duration::from_secs(600));
/// assert_eq!(config.max_items, Some(100_000));
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    /// When items leave besides the limits.
    pub kind: Kind,
    /// Most items kept; `None`: no limit.
    pub max_items: Option<u64>,
    /// Most bytes kept (payloads, keys, headers); `None`: no limit.
    pub max_bytes: Option<u64>,
    /// How long an item is kept; `None`: no limit.
    pub max_age: Option<Duration>,
    /// What a limit reached does.
    pub discard: Discard,
    /// How long a message id ([`Append::msg_id`](super::Append::msg_id)) is remembered;
    /// `None`: the fabric's default (2 minutes).
    pub dedup_window: Option<Duration>,
    /// The delegate whose output the stream is, for a generator stream.
    pub generator: Option<Generator>,
}

impl Config {
    /// A persistent stream without limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the kind.
    pub fn kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }

    /// Keeps at most `n` items.
    pub fn max_items(mut self, n: u64) -> Self {
        self.max_items = Some(n);
        self
    }

    /// Keeps at most `n` bytes.
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = Some(n);
        self
    }

    /// Keeps items at most this long.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// What a limit reached does.
    pub fn discard(mut self, discard: Discard) -> Self {
        self.discard = discard;
        self
    }

    /// How long message ids are remembered for deduplication.
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.dedup_window = Some(window);
        self
    }

    /// Makes it a generator stream: the output of `generator`'s delegate.
    pub fn generator(mut self, generator: Generator) -> Self {
        self.generator = Some(generator);
        self
    }

    pub(crate) fn to_request(&self, name: &str) -> Result<pb::CreateStreamRequest, Error> {
        let generator = match &self.generator {
            None => None,
            Some(g) => Some(g.to_pb()?),
        };
        Ok(pb::CreateStreamRequest {
            name: name.to_owned(),
            kind: match self.kind {
                Kind::Persistent => pb::StreamKind::Persistent,
                Kind::Ephemeral => pb::StreamKind::Ephemeral,
                Kind::Workqueue => pb::StreamKind::Workqueue,
            } as i32,
            limits: Some(pb::StreamLimits {
                max_items: self.max_items.unwrap_or(0),
                max_bytes: self.max_bytes.unwrap_or(0),
                max_age_ms: self.max_age.map_or(0, millis),
                discard: match self.discard {
                    Discard::Old => pb::Discard::Old,
                    Discard::New => pb::Discard::New,
                } as i32,
                dedup_window_ms: self.dedup_window.map_or(0, millis),
            }),
            generator,
        })
    }

    pub(crate) fn from_pb(info: &pb::StreamInfo) -> Self {
        let limits = info.limits.unwrap_or_default();
        let some = |v: u64| (v > 0).then_some(v);
        Self {
            kind: match pb::StreamKind::try_from(info.kind) {
                Ok(pb::StreamKind::Ephemeral) => Kind::Ephemeral,
                Ok(pb::StreamKind::Workqueue) => Kind::Workqueue,
                _ => Kind::Persistent,
            },
            max_items: some(limits.max_items),
            max_bytes: some(limits.max_bytes),
            max_age: some(limits.max_age_ms).map(Duration::from_millis),
            discard: match pb::Discard::try_from(limits.discard) {
                Ok(pb::Discard::New) => Discard::New,
                _ => Discard::Old,
            },
            dedup_window: some(limits.dedup_window_ms).map(Duration::from_millis),
            generator: info.generator.clone().map(Generator::from_pb),
        }
    }
}

/// Milliseconds of a duration, at least 1.
fn millis(d: Duration) -> u64 {
    d.as_millis().clamp(1, u64::MAX as u128) as u64
}

/// The delegate behind a generator stream: the fabric calls it when the first listener
/// attaches (or at creation, with [`Generator::start_on_create`]); what it emits is the
/// stream, and its return closes the stream (ok, or with its error). Serve it with
/// [`Agent::generator`](crate::Agent::generator).
///
/// ```
/// use weft_agent::streams::{Config, Generator};
/// let numbers = Config::new().generator(Generator::new("numbers", "count").args(&10u64));
/// assert_eq!(numbers.generator.unwrap().delegate(), "count");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Generator {
    call: pb::CreateExecutionRequest,
    start_on_create: bool,
    codec: Codec,
    error: Option<Error>,
}

impl Generator {
    /// A generator that calls `delegate` of `agent` with no arguments (`()`).
    pub fn new(agent: &str, delegate: &str) -> Self {
        Self {
            call: pb::CreateExecutionRequest {
                agent: agent.to_owned(),
                delegate: delegate.to_owned(),
                payload: Some(pb::Payload { codec: Codec::default().as_str().to_owned(), data: Vec::new() }),
                ..Default::default()
            },
            start_on_create: false,
            codec: Codec::default(),
            error: None,
        }
    }

    /// The arguments of the call, encoded with bincode (or the codec set by
    /// [`Generator::codec`] before this). Items the generator emits use the same codec.
    pub fn args<A: Serialize + ?Sized>(mut self, args: &A) -> Self {
        match codec::encode(self.codec, args) {
            Ok(p) => self.call.payload = Some(p),
            Err(e) => self.error = Some(e),
        }
        self
    }

    /// Encode the arguments (and so the items) with `codec`.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Call an instance's delegate (it must exist when the generator starts).
    pub fn instance(mut self, id: &str) -> Self {
        self.call.instance = id.to_owned();
        self
    }

    /// Retry the generator's errors (a retried run appends nothing twice).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.call.retry = Some(policy.to_pb());
        self
    }

    /// Fail the generator (closing the stream with that error) unless it finishes within `d`
    /// of its start.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.call.timeout_ms = Some(millis(d));
        self
    }

    /// Start it when the stream is created, not when the first listener attaches.
    pub fn start_on_create(mut self, yes: bool) -> Self {
        self.start_on_create = yes;
        self
    }

    /// The agent it calls.
    pub fn agent(&self) -> &str {
        &self.call.agent
    }

    /// The delegate it calls.
    pub fn delegate(&self) -> &str {
        &self.call.delegate
    }

    fn to_pb(&self) -> Result<pb::GeneratorSpec, Error> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        Ok(pb::GeneratorSpec { call: Some(self.call.clone()), start_on_create: self.start_on_create })
    }

    fn from_pb(spec: pb::GeneratorSpec) -> Self {
        let call = spec.call.unwrap_or_default();
        let codec = call.payload.as_ref().map_or_else(Codec::default, codec::codec_of);
        Self { call, start_on_create: spec.start_on_create, codec, error: None }
    }
}

/// Where a new cursor starts.
///
/// ```
/// use weft_agent::streams::{CursorConfig, Deliver};
/// let tail = CursorConfig::new().deliver(Deliver::New);
/// assert_eq!(tail.deliver, Deliver::New);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Deliver {
    /// Every stored item (the default).
    #[default]
    All,
    /// Items appended after the cursor is created.
    New,
    /// The last item, then new ones.
    Last,
    /// The last item of each key, then new ones.
    LastPerKey,
    /// From this seq on.
    FromSeq(u64),
    /// From the first item appended at or after this time.
    FromTime(SystemTime),
}

/// Whether a cursor's deliveries must be acknowledged.
///
/// ```
/// use weft_agent::streams::{AckPolicy, CursorConfig};
/// let fire_and_forget = CursorConfig::new().ack(AckPolicy::None);
/// assert_eq!(fire_and_forget.ack, AckPolicy::None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckPolicy {
    /// Each item must be acknowledged; one that is not comes back after the ack wait (the
    /// default).
    #[default]
    Explicit,
    /// Delivered is done: at most once.
    None,
}

/// A cursor's settings: where it starts, which keys, acknowledgements and redelivery. Used
/// when a listener's cursor does not exist yet (or by
/// [`Stream::create_cursor`](crate::Stream::create_cursor)).
///
/// ```
/// use std::time::Duration;
/// use weft_agent::streams::{CursorConfig, Deliver};
/// let billing = CursorConfig::new()
///     .deliver(Deliver::All)
///     .filter("orders.eu.>")
///     .ack_wait(Duration::from_secs(30))
///     .max_deliveries(5)
///     .dead_letter("orders-dead")
///     .max_ack_pending(500);
/// assert_eq!(billing.max_deliveries, Some(5));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CursorConfig {
    /// Where it starts.
    pub deliver: Deliver,
    /// Only items whose key matches (`"a.*.c"`: one token, `"a.>"`: the rest); `None`: all.
    pub filter: Option<String>,
    /// Whether deliveries must be acknowledged.
    pub ack: AckPolicy,
    /// How long a delivery waits for its ack before it goes out again; `None`: 30 s.
    pub ack_wait: Option<Duration>,
    /// Deliveries of one item before it moves to the dead-letter stream (or is dropped);
    /// `None`: no limit.
    pub max_deliveries: Option<u32>,
    /// Where items that ran out of deliveries go (they carry `weft-dead-letter-*` headers);
    /// `None`: they are dropped.
    pub dead_letter: Option<String>,
    /// Most items delivered and not yet acknowledged, over all listeners; `None`: 1000.
    pub max_ack_pending: Option<u32>,
}

impl CursorConfig {
    /// Every item, explicit acks, the fabric's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where it starts.
    pub fn deliver(mut self, deliver: Deliver) -> Self {
        self.deliver = deliver;
        self
    }

    /// Only items whose key matches `filter`.
    pub fn filter(mut self, filter: &str) -> Self {
        self.filter = Some(filter.to_owned());
        self
    }

    /// Whether deliveries must be acknowledged.
    pub fn ack(mut self, ack: AckPolicy) -> Self {
        self.ack = ack;
        self
    }

    /// How long a delivery waits for its ack.
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = Some(wait);
        self
    }

    /// Deliveries of one item before it is dead-lettered.
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = Some(n);
        self
    }

    /// The dead-letter stream.
    pub fn dead_letter(mut self, stream: &str) -> Self {
        self.dead_letter = Some(stream.to_owned());
        self
    }

    /// Most items delivered and not yet acknowledged.
    pub fn max_ack_pending(mut self, n: u32) -> Self {
        self.max_ack_pending = Some(n);
        self
    }

    pub(crate) fn to_pb(&self) -> pb::CursorConfig {
        use pb::DeliverPolicy as D;
        let (deliver, from_seq, from_time_ms) = match self.deliver {
            Deliver::All => (D::DeliverAll, 0, 0),
            Deliver::New => (D::DeliverNew, 0, 0),
            Deliver::Last => (D::DeliverLast, 0, 0),
            Deliver::LastPerKey => (D::DeliverLastPerKey, 0, 0),
            Deliver::FromSeq(seq) => (D::DeliverFromSeq, seq, 0),
            Deliver::FromTime(t) => {
                (D::DeliverFromTime, 0, t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
            }
        };
        pb::CursorConfig {
            deliver: deliver as i32,
            from_seq,
            from_time_ms,
            filter: self.filter.clone().unwrap_or_default(),
            ack: match self.ack {
                AckPolicy::Explicit => pb::AckPolicy::AckExplicit,
                AckPolicy::None => pb::AckPolicy::AckNone,
            } as i32,
            ack_wait_ms: self.ack_wait.map_or(0, millis),
            max_deliveries: self.max_deliveries.unwrap_or(0),
            dead_letter: self.dead_letter.clone().unwrap_or_default(),
            max_ack_pending: self.max_ack_pending.unwrap_or(0),
        }
    }

    pub(crate) fn from_pb(c: &pb::CursorConfig) -> Self {
        use pb::DeliverPolicy as D;
        Self {
            deliver: match D::try_from(c.deliver) {
                Ok(D::DeliverNew) => Deliver::New,
                Ok(D::DeliverLast) => Deliver::Last,
                Ok(D::DeliverLastPerKey) => Deliver::LastPerKey,
                Ok(D::DeliverFromSeq) => Deliver::FromSeq(c.from_seq),
                Ok(D::DeliverFromTime) => {
                    Deliver::FromTime(UNIX_EPOCH + Duration::from_millis(c.from_time_ms))
                }
                _ => Deliver::All,
            },
            filter: (!c.filter.is_empty()).then(|| c.filter.clone()),
            ack: match pb::AckPolicy::try_from(c.ack) {
                Ok(pb::AckPolicy::AckNone) => AckPolicy::None,
                _ => AckPolicy::Explicit,
            },
            ack_wait: (c.ack_wait_ms > 0).then(|| Duration::from_millis(c.ack_wait_ms)),
            max_deliveries: (c.max_deliveries > 0).then_some(c.max_deliveries),
            dead_letter: (!c.dead_letter.is_empty()).then(|| c.dead_letter.clone()),
            max_ack_pending: (c.max_ack_pending > 0).then_some(c.max_ack_pending),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_through_the_wire_types() {
        let c = CursorConfig::new()
            .deliver(Deliver::FromSeq(7))
            .filter("a.>")
            .ack(AckPolicy::Explicit)
            .ack_wait(Duration::from_secs(3))
            .max_deliveries(4)
            .dead_letter("dlq")
            .max_ack_pending(9);
        assert_eq!(CursorConfig::from_pb(&c.to_pb()), c);
        let s = Config::new()
            .kind(Kind::Ephemeral)
            .max_items(5)
            .max_age(Duration::from_secs(60))
            .discard(Discard::New)
            .generator(Generator::new("a", "d").args(&3u8).start_on_create(true));
        let req = s.to_request("s").unwrap();
        let info = pb::StreamInfo {
            name: req.name,
            kind: req.kind,
            limits: req.limits,
            generator: req.generator,
            ..Default::default()
        };
        assert_eq!(Config::from_pb(&info), s);
    }
}

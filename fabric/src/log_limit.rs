//! Repeated warnings and errors, rate-limited: a `tracing` filter for the `weft` binary's log.
//!
//! While a peer is down, openraft warns about every replication and heartbeat attempt to it
//! (every ~50 ms), and so would the log. [`RepeatLimit`] lets the first occurrence of a
//! warning or error through, drops the repeats, and lets one more through with a summary line
//! before it once [`RepeatLimit::every`] has passed:
//!
//! ```text
//!   WARN openraft::...: heartbeat error: Unreachable node ...           (first: logged)
//!   ... repeats for 10 s: dropped, counted ...
//!   WARN weft_fabric::log_limit: 198 more like this in the last 10s  target=openraft::... peer=...
//!   WARN openraft::...: heartbeat error: Unreachable node ...           (logged again)
//! ```
//!
//! A repeat is the same call site with the same peer: the event's `target`, `peer`, `addr` or
//! `node_id` field if it has one, else a `HOST:PORT` named in its message (openraft's errors
//! name the peer's address). Info and below are never limited. The table of keys is bounded
//! ([`MAX_KEYS`]); when full, new keys are not limited.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata};
use tracing_subscriber::layer::{Context, Filter};

/// Most distinct (call site, peer) keys tracked at once.
pub const MAX_KEYS: usize = 1024;

/// How often a repeated warning is let through again with its count, by default.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(10);

/// What is known of one key.
struct Seen {
    /// When its current window began (its last logged occurrence).
    since: Instant,
    /// Repeats dropped since then.
    dropped: u64,
}

/// A per-layer filter that rate-limits repeated warnings and errors (see the module docs).
pub struct RepeatLimit {
    every: Duration,
    seen: Mutex<HashMap<u64, Seen>>,
}

impl Default for RepeatLimit {
    fn default() -> Self {
        Self::every(DEFAULT_EVERY)
    }
}

impl RepeatLimit {
    /// A limit that lets a repeat through at most once per `every`, with its count.
    pub fn every(every: Duration) -> Self {
        Self { every, seen: Mutex::new(HashMap::new()) }
    }

    /// Whether an occurrence of `key` at `now` is logged, and how many repeats were dropped
    /// before it (a summary says so when that is more than 0).
    fn admit(&self, key: u64, now: Instant) -> (bool, u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = seen.get_mut(&key) {
            if now.duration_since(s.since) < self.every {
                s.dropped += 1;
                return (false, 0);
            }
            let dropped = std::mem::take(&mut s.dropped);
            s.since = now;
            return (true, dropped);
        }
        if seen.len() >= MAX_KEYS {
            // Forget keys whose window is over; if none is, stop limiting new ones.
            let every = self.every;
            seen.retain(|_, s| now.duration_since(s.since) < every);
            if seen.len() >= MAX_KEYS {
                return (true, 0);
            }
        }
        seen.insert(key, Seen { since: now, dropped: 0 });
        (true, 0)
    }
}

/// The peer an event is about: a `target`, `peer`, `addr` or `node_id` field, else the first
/// `HOST:PORT`-looking word of its text.
#[derive(Default)]
struct PeerOf {
    field: Option<String>,
    text: String,
}

impl Visit for PeerOf {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if matches!(field.name(), "target" | "peer" | "addr" | "node_id") && self.field.is_none() {
            self.field = Some(format!("{value:?}"));
        } else if self.text.len() < 4096 {
            let _ = write!(self.text, " {value:?}");
        }
    }
}

impl PeerOf {
    fn peer(&self) -> Option<&str> {
        if let Some(f) = &self.field {
            return Some(f);
        }
        self.text.split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')' || c == '"').find(
            |w| {
                w.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty()
                        && host.contains('.')
                        && !port.is_empty()
                        && port.chars().all(|c| c.is_ascii_digit())
                })
            },
        )
    }
}

impl<S> Filter<S> for RepeatLimit {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() > Level::WARN || meta.target() == module_path!() {
            return true;
        }
        let mut peer = PeerOf::default();
        event.record(&mut peer);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        meta.callsite().hash(&mut hasher);
        peer.peer().hash(&mut hasher);
        let (logged, dropped) = self.admit(hasher.finish(), Instant::now());
        if logged && dropped > 0 {
            // The lock is released: this event passes through this filter again, unlimited.
            tracing::warn!(
                target: module_path!(),
                dropped,
                of = meta.target(),
                peer = peer.peer().unwrap_or("-"),
                "{dropped} more like this in the last {}s",
                self.every.as_secs()
            );
        }
        logged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_occurrence_passes_then_one_per_window_with_a_count() {
        let limit = RepeatLimit::every(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limit.admit(1, t0), (true, 0));
        for i in 1..=5 {
            assert_eq!(limit.admit(1, t0 + Duration::from_millis(50 * i)), (false, 0));
        }
        assert_eq!(limit.admit(2, t0), (true, 0), "another key is not limited by the first");
        assert_eq!(limit.admit(1, t0 + Duration::from_secs(10)), (true, 5));
        assert_eq!(limit.admit(1, t0 + Duration::from_secs(11)), (false, 0));
    }

    #[test]
    fn the_table_is_bounded() {
        let limit = RepeatLimit::every(Duration::from_secs(10));
        let t0 = Instant::now();
        for key in 0..(MAX_KEYS as u64 + 10) {
            assert!(limit.admit(key, t0).0);
        }
        assert!(limit.seen.lock().unwrap().len() <= MAX_KEYS);
    }

    #[test]
    fn the_peer_is_a_field_or_an_address_in_the_text() {
        let p = PeerOf {
            field: None,
            text: " heartbeat error: ConnectError(\"tcp\", 127.0.0.1:17433, Os".into(),
        };
        assert_eq!(p.peer(), Some("127.0.0.1:17433"));
        let p = PeerOf { field: Some("3".into()), text: String::new() };
        assert_eq!(p.peer(), Some("3"));
        assert_eq!(PeerOf::default().peer(), None);
    }
}

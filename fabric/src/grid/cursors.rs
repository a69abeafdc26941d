//! How `apply` changes cursors and listeners: create and delete cursors, attach and detach
//! listeners, acks, nacks and credit, the delivery pass that hands items to listeners, and
//! the timers of cursors (ack waits, idle unnamed cursors). Types in `cursor.rs`.

use super::cursor::{
    AckPolicy, Cursor, CursorConfig, DeliverPolicy, Delivery, Listener, ListenerId, MAX_CURSORS_PER_STREAM,
    MAX_WINDOW, NewCursor, NewListener, UNNAMED_PREFIX,
};
use super::events::{Event, ListenerEnd, Outbox};
use super::execution::Effect;
use super::stream::{End, Item, Kind, Seq, Stream, filter_matches};
use super::streams::remove_item;
use super::{Error, Grid, Output, Streams};

/// Header names a dead-lettered item gets.
pub const DEAD_LETTER_STREAM_HEADER: &str = "weft-dead-letter-stream";
pub const DEAD_LETTER_SEQ_HEADER: &str = "weft-dead-letter-seq";
pub const DEAD_LETTER_DELIVERIES_HEADER: &str = "weft-dead-letter-deliveries";

impl Grid {
    /// Applies `CreateCursor`: one of that name with the same settings is found; with other
    /// settings it is refused.
    pub(super) fn create_cursor(&mut self, new: &NewCursor, out: &mut Outbox) -> Result<Output, Error> {
        let now = self.now_ms;
        let stream = self.streams.streams.get_mut(&new.stream).ok_or_else(|| unknown_stream(&new.stream))?;
        if let Some(c) = stream.cursors.get(&new.name) {
            if c.config != new.config {
                return Err(Error::CursorExists { stream: new.stream.clone(), name: new.name.clone() });
            }
            return Ok(Output::Cursor { created: false });
        }
        add_cursor(stream, new.name.clone(), new.config.clone(), now)?;
        out.streams.insert(new.stream.clone());
        Ok(Output::Cursor { created: true })
    }

    /// Applies `DeleteCursor`: its listeners are told and removed; its unacked items are
    /// let go (an ephemeral stream may drop them now).
    pub(super) fn delete_cursor(
        &mut self,
        stream: &str,
        name: &str,
        out: &mut Outbox,
    ) -> Result<Output, Error> {
        let s = self.streams.streams.get_mut(stream).ok_or_else(|| unknown_stream(stream))?;
        let Some(cursor) = s.cursors.remove(name) else {
            return Ok(Output::Deleted { existed: false });
        };
        for id in &cursor.listeners {
            if let Some(l) = self.streams.listeners.remove(id) {
                let end = ListenerEnd::Deleted(format!("cursor '{name}' of stream '{stream}' was deleted"));
                out.events.push(Event::ListenerEnded { host: l.host, listener: l.id, end });
            }
        }
        out.streams.insert(stream.to_owned());
        Ok(Output::Deleted { existed: true })
    }

    /// Applies `Attach`: a listener on a named cursor (made from `config` if absent) or on an
    /// unnamed cursor of its own.
    pub(super) fn attach(&mut self, new: &NewListener, out: &mut Outbox) -> Result<Output, Error> {
        let now = self.now_ms;
        if new.window == 0 || new.window > MAX_WINDOW {
            return Err(Error::InvalidCursor {
                reason: format!("a listener's window must be 1..={MAX_WINDOW}"),
            });
        }
        let Streams { streams, listeners, last_listener_id, idle, .. } = &mut self.streams;
        let stream = streams.get_mut(&new.stream).ok_or_else(|| unknown_stream(&new.stream))?;
        if new.uid.is_some_and(|uid| uid != stream.uid) {
            return Err(Error::StreamReplaced { name: new.stream.clone() });
        }
        let id = *last_listener_id + 1;
        let name = match &new.cursor {
            Some(name) => {
                if !stream.cursors.contains_key(name) {
                    // An unnamed cursor is resumed by its name, never made by it: it went idle
                    // and was removed, and the grid may give the name to another listener.
                    if name.starts_with(UNNAMED_PREFIX) {
                        return Err(Error::UnknownCursor { stream: new.stream.clone(), name: name.clone() });
                    }
                    let Some(config) = &new.config else {
                        return Err(Error::UnknownCursor { stream: new.stream.clone(), name: name.clone() });
                    };
                    add_cursor(stream, name.clone(), config.clone(), now)?;
                }
                name.clone()
            }
            None => {
                let Some(config) = &new.config else {
                    return Err(Error::InvalidCursor {
                        reason: "a listener without a cursor name needs a cursor config".into(),
                    });
                };
                if config.idle_ms.is_none() {
                    return Err(Error::InvalidCursor { reason: "an unnamed cursor needs idle_ms".into() });
                }
                let name = format!("{UNNAMED_PREFIX}{id}");
                add_cursor(stream, name.clone(), config.clone(), now)?;
                name
            }
        };
        *last_listener_id = id;
        let cursor = stream.cursors.get_mut(&name).expect("found or made above");
        if let Some(since) = cursor.idle_since_ms.take()
            && let Some(idle_ms) = cursor.config.idle_ms
        {
            idle.remove(&(since.saturating_add(idle_ms), new.stream.clone(), name.clone()));
        }
        cursor.listeners.insert(id);
        let listener = Listener {
            id,
            stream: new.stream.clone(),
            cursor: name.clone(),
            host: new.host,
            opened_ms: now,
            window: new.window,
            in_flight: 0,
        };
        listeners.insert(id, listener);
        out.streams.insert(new.stream.clone());
        let uid = stream.uid;
        if stream.config.generator.is_some() {
            // One more listener waits for the generator's process.
            out.events.push(Event::WorkChanged);
        }
        self.start_generator(&new.stream, out)?;
        Ok(Output::Listener { id, cursor: name, uid })
    }

    /// Applies `Detach`: what the listener held and had not acked is delivered again.
    pub(super) fn detach(&mut self, id: ListenerId, reason: &str, out: &mut Outbox) -> Output {
        let now = self.now_ms;
        let Some(listener) = self.streams.listeners.remove(&id) else {
            return Output::Detached { existed: false };
        };
        out.events.push(Event::ListenerEnded {
            host: listener.host,
            listener: id,
            end: ListenerEnd::Removed(reason.to_owned()),
        });
        let Streams { streams, idle, ack_timers, .. } = &mut self.streams;
        let Some(stream) = streams.get_mut(&listener.stream) else {
            return Output::Detached { existed: true };
        };
        let Some(cursor) = stream.cursors.get_mut(&listener.cursor) else {
            return Output::Detached { existed: true };
        };
        cursor.listeners.remove(&id);
        let held: Vec<(Seq, u32)> =
            cursor.unacked.iter().filter(|(_, d)| d.listener == id).map(|(s, d)| (*s, d.count)).collect();
        for (seq, _) in &held {
            if let Some(d) = cursor.unacked.remove(seq) {
                ack_timers.remove(&(d.expires_ms, listener.stream.clone(), listener.cursor.clone(), *seq));
            }
        }
        if cursor.listeners.is_empty()
            && let Some(idle_ms) = cursor.config.idle_ms
        {
            cursor.idle_since_ms = Some(now);
            idle.insert((now.saturating_add(idle_ms), listener.stream.clone(), listener.cursor.clone()));
        }
        let name = listener.cursor.clone();
        for (seq, count) in held {
            self.requeue(&listener.stream, &name, seq, count, out);
        }
        out.streams.insert(listener.stream);
        Output::Detached { existed: true }
    }

    /// Checks that `(seq, token)` may be acked with effects on the cursor, without changing
    /// anything: it must be the item's current delivery, still waiting for its ack. An item
    /// acknowledged already is refused too (unlike a plain ack, which changes nothing then):
    /// its effects were applied with that ack (this one sent again after an unknown outcome)
    /// or with another delivery's, and must not be applied twice.
    pub(super) fn check_ack(&self, stream: &str, cursor: &str, seq: Seq, token: u64) -> Result<(), Error> {
        let s = self.streams.streams.get(stream).ok_or_else(|| unknown_stream(stream))?;
        let c = s.cursors.get(cursor).ok_or_else(|| unknown_cursor(stream, cursor))?;
        if c.config.ack == AckPolicy::None {
            return Err(Error::InvalidCursor {
                reason: format!("cursor '{cursor}' takes no acks (ack policy none)"),
            });
        }
        check_current(stream, cursor, c, seq, token)?;
        if c.unacked.get(&seq).is_none_or(|d| d.token != token) {
            return Err(Error::StaleAck {
                stream: stream.to_owned(),
                cursor: cursor.to_owned(),
                seq,
                reason: "it was acknowledged already (with effects, an item is acknowledged once)".into(),
            });
        }
        Ok(())
    }

    /// Applies `Ack`: every delivery named must be current (or acknowledged already), and
    /// every effect must apply, else nothing changes. The effects (state writes in shared
    /// namespaces, appends, more acks) commit with the acks: a listener that consumes an item
    /// and writes what it made of it does both or neither.
    pub(super) fn ack(
        &mut self,
        stream: &str,
        cursor: &str,
        acks: &[(Seq, u64)],
        effects: &[Effect],
        out: &mut Outbox,
    ) -> Result<Output, Error> {
        if !effects.is_empty() {
            for &(seq, token) in acks {
                self.check_ack(stream, cursor, seq, token)?;
            }
            self.check_ack_effects(effects)?;
            for effect in effects {
                self.apply_ack_effect(effect, out);
            }
        }
        let Streams { streams, listeners, bytes, ack_timers, .. } = &mut self.streams;
        let s = streams.get_mut(stream).ok_or_else(|| unknown_stream(stream))?;
        let kind = s.config.kind;
        let c = s.cursors.get_mut(cursor).ok_or_else(|| unknown_cursor(stream, cursor))?;
        if c.config.ack == AckPolicy::None {
            return Err(Error::InvalidCursor {
                reason: format!("cursor '{cursor}' takes no acks (ack policy none)"),
            });
        }
        for &(seq, token) in acks {
            check_current(stream, cursor, c, seq, token)?;
        }
        let mut done = Vec::new();
        for &(seq, _) in acks {
            let Some(d) = c.unacked.remove(&seq) else { continue };
            ack_timers.remove(&(d.expires_ms, stream.to_owned(), cursor.to_owned(), seq));
            done.push(seq);
            if let Some(l) = listeners.get_mut(&d.listener) {
                l.in_flight = l.in_flight.saturating_sub(1);
            }
        }
        let count = done.len() as u64;
        if kind == Kind::Workqueue {
            for seq in done {
                *bytes -= remove_item(s, seq);
            }
        }
        out.streams.insert(stream.to_owned());
        Ok(Output::Acked { count })
    }

    /// Checks an ack's effects: state writes only in shared namespaces, at their expected
    /// versions; appends and acks as for a completion; no new executions.
    fn check_ack_effects(&self, effects: &[Effect]) -> Result<(), Error> {
        let mut adding = super::streams::Adding::default();
        let mut touched = std::collections::BTreeSet::new();
        for effect in effects {
            match effect {
                Effect::Put { namespace: ns, key, expected_version, .. }
                | Effect::Delete { namespace: ns, key, expected_version } => {
                    if !matches!(super::namespace::parse(ns)?, super::namespace::Kind::Shared { .. }) {
                        return Err(Error::InvalidCompletion {
                            reason: format!(
                                "an ack's effect writes '{}': a listener may write shared/<name> namespaces only",
                                super::namespace::clip(ns)
                            ),
                        });
                    }
                    if key.is_empty() {
                        return Err(Error::InvalidKey { reason: "the key is empty".into() });
                    }
                    if !touched.insert((ns.as_str(), key.as_str())) {
                        return Err(Error::InvalidCompletion {
                            reason: format!(
                                "two effects write {}/{}",
                                super::namespace::clip(ns),
                                super::namespace::clip(key)
                            ),
                        });
                    }
                    if let Some(expected) = expected_version {
                        let current = self.live(ns, key).map_or(0, |v| v.version);
                        if current != *expected {
                            return Err(Error::VersionMismatch { expected: *expected, current });
                        }
                    }
                }
                Effect::Call(_) => {
                    return Err(Error::InvalidCompletion {
                        reason: "an ack's effects cannot create executions (call from an execution instead)"
                            .into(),
                    });
                }
                Effect::Append { .. } | Effect::Ack { .. } => {
                    self.check_stream_effect(effect, &mut adding)?
                }
                Effect::Fence { lease, token } => self.check_fence(lease, *token)?,
            }
        }
        Ok(())
    }

    fn apply_ack_effect(&mut self, effect: &Effect, out: &mut Outbox) {
        match effect {
            Effect::Put { .. } | Effect::Delete { .. } => self.apply_state_effect(effect),
            Effect::Call(_) | Effect::Fence { .. } => {}
            Effect::Append { .. } | Effect::Ack { .. } => self.apply_stream_effect(effect, out),
        }
    }

    /// Applies `Nack`: the item is delivered again now (or dead-lettered).
    pub(super) fn nack(
        &mut self,
        stream: &str,
        cursor: &str,
        seq: Seq,
        token: u64,
        out: &mut Outbox,
    ) -> Result<Output, Error> {
        let s = self.streams.streams.get_mut(stream).ok_or_else(|| unknown_stream(stream))?;
        let c = s.cursors.get_mut(cursor).ok_or_else(|| unknown_cursor(stream, cursor))?;
        check_current(stream, cursor, c, seq, token)?;
        let Some(d) = c.unacked.remove(&seq) else { return Ok(Output::Acked { count: 0 }) };
        self.streams.ack_timers.remove(&(d.expires_ms, stream.to_owned(), cursor.to_owned(), seq));
        if let Some(l) = self.streams.listeners.get_mut(&d.listener) {
            l.in_flight = l.in_flight.saturating_sub(1);
        }
        self.requeue(stream, cursor, seq, d.count, out);
        out.streams.insert(stream.to_owned());
        Ok(Output::Acked { count: 0 })
    }

    /// Applies `Credit`: a listener of an ack-none cursor has processed `items`.
    pub(super) fn credit(&mut self, id: ListenerId, items: u32, out: &mut Outbox) -> Result<Output, Error> {
        let l = self.streams.listeners.get_mut(&id).ok_or(Error::UnknownListener { id })?;
        l.in_flight = l.in_flight.saturating_sub(items);
        out.streams.insert(l.stream.clone());
        Ok(Output::Credited)
    }

    /// Puts an item back for delivery, or, once it has had its deliveries, moves it to the
    /// dead-letter stream (or drops it).
    fn requeue(&mut self, stream: &str, cursor: &str, seq: Seq, count: u32, out: &mut Outbox) {
        let Some(s) = self.streams.streams.get_mut(stream) else { return };
        let Some(c) = s.cursors.get_mut(cursor) else { return };
        if c.config.max_deliveries.is_none_or(|max| count < max) {
            c.queued.insert(seq, count);
            return;
        }
        c.dead_lettered += 1;
        let dead_letter = c.config.dead_letter.clone();
        let kind = s.config.kind;
        let item = s.items.get(&seq).cloned();
        if kind == Kind::Workqueue {
            self.streams.bytes -= remove_item(s, seq);
        }
        if let (Some(target), Some(item)) = (dead_letter, item) {
            self.dead_letter(&target, stream, item, count, out);
        }
    }

    /// Appends a copy of `item` to `target`, with headers that say where it came from; a
    /// missing, closed or full target drops it, and so does one of the fabric's streams
    /// (`weft.`: refused at proposal too), which callers must not be able to write into.
    fn dead_letter(&mut self, target: &str, stream: &str, item: Item, count: u32, out: &mut Outbox) {
        if target.starts_with(super::audit::RESERVED_PREFIX) {
            return;
        }
        let mut headers = item.headers;
        headers.retain(|(n, _)| !n.starts_with("weft-dead-letter-"));
        headers.push((DEAD_LETTER_STREAM_HEADER.into(), stream.to_owned()));
        headers.push((DEAD_LETTER_SEQ_HEADER.into(), item.seq.to_string()));
        headers.push((DEAD_LETTER_DELIVERIES_HEADER.into(), count.to_string()));
        let append = super::stream::Append {
            stream: target.to_owned(),
            items: vec![super::stream::NewItem { key: item.key, payload: item.payload, headers }],
            expected_last_seq: None,
            producer: None,
            msg_id: None,
        };
        // Refused (no such stream, closed, full): the item is dropped, and counted as dead.
        let _ = self.append(&append, out);
    }

    /// The delivery pass of one stream: hands items to listeners with room, tells listeners
    /// of a closed stream that they have everything, and lets an ephemeral stream drop what
    /// every cursor has acknowledged.
    pub(super) fn deliver(&mut self, name: &str, out: &mut Outbox) {
        let now = self.now_ms;
        let Streams { streams, listeners, ack_timers, last_token, bytes, .. } = &mut self.streams;
        let Some(stream) = streams.get_mut(name) else { return };
        let mut removed = Vec::new();
        for cursor in stream.cursors.values_mut() {
            if cursor.listeners.is_empty() {
                continue;
            }
            loop {
                let explicit = cursor.config.ack == AckPolicy::Explicit;
                if explicit && cursor.unacked.len() >= cursor.config.max_ack_pending as usize {
                    break;
                }
                let Some(lid) = cursor
                    .listeners
                    .iter()
                    .filter_map(|id| listeners.get(id).map(|l| (l.in_flight, *id, l.window)))
                    .filter(|(in_flight, _, window)| in_flight < window)
                    .min()
                    .map(|(_, id, _)| id)
                else {
                    break;
                };
                let Some((seq, prior)) = next_candidate(&stream.items, stream.last_seq, cursor) else {
                    break;
                };
                let count = prior + 1;
                *last_token += 1;
                let token = if explicit { *last_token } else { 0 };
                let listener = listeners.get_mut(&lid).expect("picked from the map");
                listener.in_flight += 1;
                cursor.delivered += 1;
                if count > 1 {
                    cursor.redelivered += 1;
                }
                if explicit {
                    let expires_ms = now.saturating_add(cursor.config.ack_wait_ms);
                    cursor.unacked.insert(seq, Delivery { listener: lid, token, count, expires_ms });
                    ack_timers.insert((expires_ms, name.to_owned(), cursor.name.clone(), seq));
                } else if stream.config.kind == Kind::Workqueue {
                    removed.push(seq);
                }
                out.events.push(Event::Delivered {
                    host: listener.host,
                    listener: lid,
                    stream: name.to_owned(),
                    seq,
                    token,
                    count,
                });
            }
            if let Some(end) = &stream.closed
                && cursor.caught_up(stream.last_seq)
            {
                for id in &cursor.listeners {
                    if let Some(l) = listeners.get(id) {
                        let end = ListenerEnd::Closed(end.clone());
                        out.events.push(Event::ListenerEnded { host: l.host, listener: *id, end });
                    }
                }
            }
        }
        // Workqueue items delivered under ack none are done: the stream is the queue. Removed
        // only after the pass, so the node that pushes them still finds them in the grid.
        for seq in removed {
            *bytes -= remove_item(stream, seq);
        }
        if stream.config.kind == Kind::Ephemeral
            && let Some(floor) = stream.cursors.values().map(Cursor::ack_floor).min()
        {
            while let Some((&seq, _)) = stream.items.first_key_value()
                && seq <= floor
            {
                *bytes -= remove_item(stream, seq);
            }
        }
    }

    /// Fires due ack waits (the item is delivered again) and removes unnamed cursors idle
    /// past their time; at most `limit`; returns how many fired.
    pub(super) fn fire_cursor_timers(&mut self, limit: u64, out: &mut Outbox) -> u64 {
        let now = self.now_ms;
        let mut fired = 0;
        while fired < limit
            && let Some((at, ..)) = self.streams.ack_timers.first()
            && *at <= now
        {
            let (at, stream, cursor, seq) = self.streams.ack_timers.pop_first().expect("checked above");
            fired += 1;
            let Streams { streams, listeners, .. } = &mut self.streams;
            let Some(c) = streams.get_mut(&stream).and_then(|s| s.cursors.get_mut(&cursor)) else { continue };
            // A timer of a delivery acked or replaced since is stale.
            if c.unacked.get(&seq).is_none_or(|d| d.expires_ms != at) {
                continue;
            }
            let d = c.unacked.remove(&seq).expect("checked above");
            if let Some(l) = listeners.get_mut(&d.listener) {
                l.in_flight = l.in_flight.saturating_sub(1);
            }
            self.requeue(&stream, &cursor, seq, d.count, out);
            out.streams.insert(stream);
        }
        while fired < limit
            && let Some((at, ..)) = self.streams.idle.first()
            && *at <= now
        {
            let (at, stream, cursor) = self.streams.idle.pop_first().expect("checked above");
            fired += 1;
            let Some(s) = self.streams.streams.get_mut(&stream) else { continue };
            let idle = s.cursors.get(&cursor).is_some_and(|c| {
                c.listeners.is_empty()
                    && c.idle_since_ms
                        .zip(c.config.idle_ms)
                        .is_some_and(|(since, ms)| since.saturating_add(ms) == at)
            });
            if idle {
                s.cursors.remove(&cursor);
                out.streams.insert(stream);
            }
        }
        fired
    }

    /// When the next cursor timer is due.
    pub(super) fn next_cursor_timer_ms(&self) -> Option<u64> {
        [self.streams.ack_timers.first().map(|t| t.0), self.streams.idle.first().map(|t| t.0)]
            .into_iter()
            .flatten()
            .min()
    }
}

/// Adds a cursor to a stream, placed by its deliver policy.
fn add_cursor(stream: &mut Stream, name: String, config: CursorConfig, now: u64) -> Result<(), Error> {
    if stream.cursors.len() >= MAX_CURSORS_PER_STREAM {
        return Err(Error::TooMany {
            what: format!("cursors of stream '{}'", stream.name),
            count: stream.cursors.len(),
            limit: MAX_CURSORS_PER_STREAM,
            setting: "MAX_CURSORS_PER_STREAM, fixed".into(),
        });
    }
    if stream.config.kind == Kind::Workqueue
        && let Some(other) = stream.cursors.keys().next()
    {
        return Err(Error::InvalidCursor {
            reason: format!(
                "workqueue stream '{}' has its one cursor '{other}' already; share it between listeners",
                stream.name
            ),
        });
    }
    let mut queued = std::collections::BTreeMap::new();
    let after_last = stream.last_seq + 1;
    let matches =
        |item: &Item| config.filter.as_deref().is_none_or(|f| filter_matches(f, item.key.as_deref()));
    let next_seq = match config.deliver {
        DeliverPolicy::All => stream.first_seq(),
        DeliverPolicy::New => after_last,
        DeliverPolicy::Last => stream.items.values().rev().find(|i| matches(i)).map_or(after_last, |i| i.seq),
        DeliverPolicy::LastPerKey => {
            for &seq in stream.last_by_key.values() {
                if stream.items.get(&seq).is_some_and(&matches) {
                    queued.insert(seq, 0);
                }
            }
            after_last
        }
        DeliverPolicy::FromSeq(seq) => seq.max(1),
        DeliverPolicy::FromTime(t) => {
            stream.items.values().find(|i| i.time_ms >= t).map_or(after_last, |i| i.seq)
        }
    };
    let cursor = Cursor {
        name: name.clone(),
        config,
        created_ms: now,
        next_seq,
        queued,
        unacked: std::collections::BTreeMap::new(),
        listeners: std::collections::BTreeSet::new(),
        idle_since_ms: None,
        delivered: 0,
        redelivered: 0,
        dead_lettered: 0,
    };
    stream.cursors.insert(name, cursor);
    Ok(())
}

/// The next item for a cursor: a queued redelivery, else the next stored item at or after
/// `next_seq` that matches the filter (the cursor moves past what it skips).
fn next_candidate(
    items: &std::collections::BTreeMap<Seq, Item>,
    last_seq: Seq,
    cursor: &mut Cursor,
) -> Option<(Seq, u32)> {
    while let Some((seq, prior)) = cursor.queued.pop_first() {
        if items.contains_key(&seq) {
            return Some((seq, prior));
        }
    }
    let filter = cursor.config.filter.clone();
    let found = items
        .range(cursor.next_seq..)
        .find(|(_, i)| filter.as_deref().is_none_or(|f| filter_matches(f, i.key.as_deref())))
        .map(|(s, _)| *s);
    match found {
        Some(seq) => {
            cursor.next_seq = seq + 1;
            Some((seq, 0))
        }
        None => {
            cursor.next_seq = cursor.next_seq.max(last_seq + 1);
            None
        }
    }
}

/// Checks that `(seq, token)` is the item's current delivery, or that the item is done.
fn check_current(stream: &str, cursor: &str, c: &Cursor, seq: Seq, token: u64) -> Result<(), Error> {
    debug_assert_eq!(c.name, cursor);
    c.check_ack(stream, seq, token).map(|_| ())
}

fn unknown_stream(name: &str) -> Error {
    Error::UnknownStream { name: name.to_owned() }
}

fn unknown_cursor(stream: &str, name: &str) -> Error {
    Error::UnknownCursor { stream: stream.to_owned(), name: name.to_owned() }
}

impl End {
    /// The close error, if it closed with one.
    pub fn error(&self) -> Option<&str> {
        match self {
            End::Ok => None,
            End::Failed(e) => Some(e),
        }
    }
}

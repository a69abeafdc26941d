//! How `apply` changes streams: create, append (dedup, optimistic concurrency, limits), close,
//! delete, and items leaving by age. Types in `stream.rs`; cursors and delivery in
//! `cursors.rs`.

use std::collections::BTreeMap;

use super::events::{Event, ListenerEnd, Outbox};
use super::execution::Effect;
use super::namespace;
use super::stream::{
    Append, Discard, End, Item, MAX_CLOSE_ERROR_BYTES, MAX_MSG_IDS, MAX_PRODUCERS, NewStream, Producer, Seq,
    Stream,
};
use super::{Error, Grid, Output};

impl Grid {
    /// Applies `CreateStream`: a stream of that name with the same settings is found, not
    /// made again; one with other settings is refused.
    pub(super) fn create_stream(&mut self, new: &NewStream, out: &mut Outbox) -> Result<Output, Error> {
        if let Some(s) = self.streams.streams.get(&new.name) {
            if s.config != new.config {
                return Err(Error::StreamExists { name: new.name.clone() });
            }
            return Ok(Output::Stream { uid: s.uid, created: false });
        }
        self.revision += 1;
        let uid = self.revision;
        let stream = Stream::new(new.name.clone(), uid, new.config.clone(), self.now_ms);
        self.streams.streams.insert(new.name.clone(), stream);
        if new.config.generator.as_ref().is_some_and(|g| g.eager) {
            self.start_generator(&new.name, out)?;
        }
        Ok(Output::Stream { uid, created: true })
    }

    /// Applies `StartGenerator` (and runs when a listener attaches): creates a generator
    /// stream's execution unless it has one or is closed. If its instance cannot take calls,
    /// the stream closes with that error.
    pub(super) fn start_generator(&mut self, name: &str, out: &mut Outbox) -> Result<Output, Error> {
        let s = self.streams.streams.get(name).ok_or_else(|| unknown(name))?;
        let Some(generator) = s.config.generator.clone() else {
            return Ok(Output::Generator { execution: None });
        };
        if s.generator_execution.is_some() || s.closed.is_some() {
            return Ok(Output::Generator { execution: s.generator_execution });
        }
        if let Err(e) = self.check_instance_open(&generator.call) {
            let message = format!("its generator could not start: {e}");
            self.close_stream(name, Some(&message), out)?;
            return Ok(Output::Generator { execution: None });
        }
        let id = self.insert_execution(&generator.call, None, false, out);
        self.streams.generators.insert(id, name.to_owned());
        if let Some(s) = self.streams.streams.get_mut(name) {
            s.generator_execution = Some(id);
        }
        Ok(Output::Generator { execution: Some(id) })
    }

    /// A generator's execution finished: its stream closes, ok or with its error.
    pub(super) fn generator_finished(
        &mut self,
        id: super::execution::ExecutionId,
        error: Option<&str>,
        out: &mut Outbox,
    ) {
        if let Some(stream) = self.streams.generators.remove(&id) {
            // Closed by hand already: that status stands.
            let _ = self.close_stream(&stream, error, out);
        }
    }

    /// Applies `Append`.
    pub(super) fn append(&mut self, a: &Append, out: &mut Outbox) -> Result<Output, Error> {
        let now = self.now_ms;
        let stream = self.streams.streams.get_mut(&a.stream).ok_or_else(|| unknown(&a.stream))?;
        if stream.closed.is_some() {
            return Err(Error::StreamClosed { name: a.stream.clone() });
        }
        // A message id past its dedup window no longer counts; it is forgotten below, once the
        // append is stored (a refused command changes nothing).
        if let Some(id) = &a.msg_id
            && let Some(&(first_seq, last_seq, at)) = stream.msg_ids.get(id)
            && at.saturating_add(stream.config.dedup_window_ms) > now
        {
            return Ok(Output::Appended { first_seq, last_seq, duplicate: true });
        }
        if let Some(p) = &a.producer {
            let refuse = |reason: String| {
                Err(Error::ProducerRefused {
                    stream: a.stream.clone(),
                    producer: namespace::clip(&p.id),
                    reason,
                })
            };
            match stream.producers.get(&p.id) {
                Some(known) if p.epoch < known.epoch => {
                    return refuse(format!(
                        "epoch {} is older than the producer's epoch {}",
                        p.epoch, known.epoch
                    ));
                }
                Some(known) if p.epoch == known.epoch => {
                    if p.sequence == known.sequence {
                        let (first_seq, last_seq) = (known.first_seq, known.last_seq);
                        return Ok(Output::Appended { first_seq, last_seq, duplicate: true });
                    }
                    // Applied before, but only the last sequence's seqs are kept: a duplicate
                    // whose seqs are unknown (0). A generator that runs again after a crash
                    // appends its items again from the first: these are skipped.
                    if p.sequence < known.sequence {
                        return Ok(Output::Appended { first_seq: 0, last_seq: 0, duplicate: true });
                    }
                    if p.sequence > known.sequence + 1 {
                        return refuse(format!(
                            "sequence gap: expected {}, got {}",
                            known.sequence + 1,
                            p.sequence
                        ));
                    }
                }
                _ if p.sequence != 1 => {
                    return refuse(format!(
                        "a new producer or epoch starts at sequence 1, got {}",
                        p.sequence
                    ));
                }
                _ => {}
            }
        }
        if let Some(expected) = a.expected_last_seq
            && expected != stream.last_seq
        {
            return Err(Error::LastSeqMismatch {
                stream: a.stream.clone(),
                expected,
                current: stream.last_seq,
            });
        }
        check_limits(stream, a)?;
        forget_old_msg_ids(stream, now);

        let first_seq = stream.last_seq + 1;
        for new in &a.items {
            stream.last_seq += 1;
            let item = Item {
                seq: stream.last_seq,
                key: new.key.clone(),
                payload: new.payload.clone(),
                headers: new.headers.clone(),
                time_ms: now,
            };
            if let Some(key) = &item.key {
                stream.last_by_key.insert(key.clone(), item.seq);
            }
            let size = item.size();
            stream.bytes += size;
            self.streams.bytes += size;
            stream.items.insert(item.seq, item);
        }
        let last_seq = stream.last_seq;
        if let Some(p) = &a.producer {
            if let Some(old) = stream.producers.get(&p.id) {
                stream.producer_order.remove(&(old.last_ms, p.id.clone()));
            } else if stream.producers.len() >= MAX_PRODUCERS
                && let Some((_, oldest)) = stream.producer_order.pop_first()
            {
                stream.producers.remove(&oldest);
            }
            let known = Producer { epoch: p.epoch, sequence: p.sequence, first_seq, last_seq, last_ms: now };
            stream.producers.insert(p.id.clone(), known);
            stream.producer_order.insert((now, p.id.clone()));
        }
        if let Some(id) = &a.msg_id {
            if stream.msg_ids.len() >= MAX_MSG_IDS
                && let Some((_, oldest)) = stream.msg_id_order.pop_first()
            {
                stream.msg_ids.remove(&oldest);
            }
            stream.msg_ids.insert(id.clone(), (first_seq, last_seq, now));
            stream.msg_id_order.insert((now, id.clone()));
        }
        // Discard Old: the oldest go until the stream is within its limits again.
        let removed = trim(stream, now, usize::MAX);
        self.streams.bytes -= removed;
        out.streams.insert(a.stream.clone());
        out.events.push(Event::StreamChanged { stream: a.stream.clone() });
        Ok(Output::Appended { first_seq, last_seq, duplicate: false })
    }

    /// Applies `CloseStream`: closing again with the same status changes nothing; with
    /// another, it is refused.
    pub(super) fn close_stream(
        &mut self,
        name: &str,
        error: Option<&str>,
        out: &mut Outbox,
    ) -> Result<Output, Error> {
        let stream = self.streams.streams.get_mut(name).ok_or_else(|| unknown(name))?;
        let end = match error {
            None => End::Ok,
            Some(e) => End::Failed(namespace::clip_to(e, MAX_CLOSE_ERROR_BYTES)),
        };
        match &stream.closed {
            Some(closed) if *closed == end => return Ok(Output::StreamClosed { already: true }),
            Some(_) => return Err(Error::StreamClosed { name: name.to_owned() }),
            None => stream.closed = Some(end),
        }
        out.streams.insert(name.to_owned());
        out.events.push(Event::StreamChanged { stream: name.to_owned() });
        Ok(Output::StreamClosed { already: false })
    }

    /// Applies `DeleteStream`: the stream, its items and cursors go; its listeners are told.
    pub(super) fn delete_stream(&mut self, name: &str, out: &mut Outbox) -> Output {
        let Some(stream) = self.streams.streams.remove(name) else {
            return Output::Deleted { existed: false };
        };
        self.streams.bytes -= stream.bytes;
        if let Some(id) = stream.generator_execution
            && self.streams.generators.remove(&id).is_some()
        {
            self.cancel_tree(id, &format!("its stream '{name}' was deleted"), out);
        }
        for cursor in stream.cursors.values() {
            for id in &cursor.listeners {
                if let Some(l) = self.streams.listeners.remove(id) {
                    let end = ListenerEnd::Deleted(format!("stream '{name}' was deleted"));
                    out.events.push(Event::ListenerEnded { host: l.host, listener: l.id, end });
                }
            }
        }
        out.events.push(Event::StreamChanged { stream: name.to_owned() });
        Output::Deleted { existed: true }
    }

    /// Removes items older than their stream's max age, at most `limit`; returns how many.
    pub(super) fn expire_items(&mut self, limit: u64, out: &mut Outbox) -> u64 {
        let now = self.now_ms;
        let mut fired = 0;
        for (name, stream) in self.streams.streams.iter_mut() {
            if fired >= limit {
                break;
            }
            let Some(age) = stream.config.max_age_ms else { continue };
            let before = stream.items.len();
            while fired < limit
                && let Some((&seq, item)) = stream.items.first_key_value()
                && item.time_ms.saturating_add(age) <= now
            {
                self.streams.bytes -= remove_item(stream, seq);
                fired += 1;
            }
            if stream.items.len() != before {
                out.streams.insert(name.clone());
            }
        }
        fired
    }

    /// When the next item leaves by age, over all streams.
    pub(super) fn next_item_expiry_ms(&self) -> Option<u64> {
        self.streams
            .streams
            .values()
            .filter_map(|s| {
                let age = s.config.max_age_ms?;
                let (_, first) = s.items.first_key_value()?;
                Some(first.time_ms.saturating_add(age))
            })
            .min()
    }
}

/// What the append effects checked so far add to each stream: (items, bytes).
#[derive(Default)]
pub(super) struct Adding(BTreeMap<String, (u64, u64)>);

impl Grid {
    /// Checks a stream effect (an append or an ack) of a completion or an ack, counting what
    /// earlier appends of the same completion add, without changing anything.
    pub(super) fn check_stream_effect(&self, effect: &Effect, adding: &mut Adding) -> Result<(), Error> {
        match effect {
            Effect::Append { stream, items } => {
                super::stream::validate_stream_name(stream)?;
                if items.is_empty() {
                    return Err(Error::InvalidItem {
                        reason: "an append effect needs at least one item".into(),
                    });
                }
                for item in items {
                    item.validate_shape()?;
                }
                let s = self.streams.streams.get(stream).ok_or_else(|| unknown(stream))?;
                if s.closed.is_some() {
                    return Err(Error::StreamClosed { name: stream.clone() });
                }
                let (count, size) = adding.0.entry(stream.clone()).or_default();
                *count += items.len() as u64;
                *size += items.iter().map(|i| i.size() as u64).sum::<u64>();
                check_room(s, *count, *size)
            }
            Effect::Ack { stream, cursor, seq, token } => self.check_ack(stream, cursor, *seq, *token),
            _ => Ok(()),
        }
    }

    /// Applies a stream effect checked by [`Grid::check_stream_effect`].
    pub(super) fn apply_stream_effect(&mut self, effect: &Effect, out: &mut Outbox) {
        let applied = match effect {
            Effect::Append { stream, items } => {
                let append = Append {
                    stream: stream.clone(),
                    items: items.clone(),
                    expected_last_seq: None,
                    producer: None,
                    msg_id: None,
                };
                self.append(&append, out).map(drop)
            }
            Effect::Ack { stream, cursor, seq, token } => {
                self.ack(stream, cursor, &[(*seq, *token)], &[], out).map(drop)
            }
            _ => Ok(()),
        };
        debug_assert!(applied.is_ok(), "a checked stream effect applies: {applied:?}");
    }
}

fn unknown(name: &str) -> Error {
    Error::UnknownStream { name: name.to_owned() }
}

/// Refuses an append that can never fit, or that passes a limit of a discard-New stream.
fn check_limits(stream: &Stream, a: &Append) -> Result<(), Error> {
    check_room(stream, a.items.len() as u64, a.size() as u64)
}

/// Refuses adding `count` items of `size` bytes if they can never fit, or if they pass a
/// limit of a discard-New stream.
fn check_room(stream: &Stream, count: u64, size: u64) -> Result<(), Error> {
    let c = &stream.config;
    let refuse = |limit: &str, reason: String| {
        Err(Error::StreamLimit { stream: stream.name.clone(), limit: limit.to_owned(), reason })
    };
    // More than the stream can ever hold is the caller's mistake, not a full stream.
    let never = |reason: String| Err(Error::InvalidItem { reason });
    if let Some(max) = c.max_items {
        if count > max {
            return never(format!(
                "the append has {count} items; stream '{}' holds at most {max} (max_items)",
                stream.name
            ));
        }
        if c.discard == Discard::New && stream.items.len() as u64 + count > max {
            return refuse("max_items", format!("the stream holds {} of {max} items", stream.items.len()));
        }
    }
    if let Some(max) = c.max_bytes {
        if size > max {
            return never(format!(
                "the append is {size} bytes; stream '{}' holds at most {max} (max_bytes)",
                stream.name
            ));
        }
        if c.discard == Discard::New && stream.bytes + size > max {
            return refuse(
                "max_bytes",
                format!("the stream holds {} of {max} bytes; the append adds {size}", stream.bytes),
            );
        }
    }
    Ok(())
}

/// Removes the oldest items while the stream is over a limit (items, bytes, age), at most
/// `limit` of them; returns the bytes removed.
fn trim(stream: &mut Stream, now: u64, limit: usize) -> u64 {
    let mut removed = 0;
    let mut count = 0;
    while count < limit
        && let Some((&seq, first)) = stream.items.first_key_value()
    {
        let c = &stream.config;
        let over = c.max_items.is_some_and(|m| stream.items.len() as u64 > m)
            || c.max_bytes.is_some_and(|m| stream.bytes > m)
            || c.max_age_ms.is_some_and(|age| first.time_ms.saturating_add(age) <= now);
        if !over {
            break;
        }
        removed += remove_item(stream, seq);
        count += 1;
    }
    removed
}

/// Removes one item and its index entries; returns its bytes (0 if it was gone already).
pub(super) fn remove_item(stream: &mut Stream, seq: Seq) -> u64 {
    let Some(item) = stream.items.remove(&seq) else { return 0 };
    if let Some(key) = &item.key
        && stream.last_by_key.get(key) == Some(&seq)
    {
        stream.last_by_key.remove(key);
    }
    let size = item.size();
    stream.bytes -= size;
    size
}

/// Forgets message ids older than the dedup window.
fn forget_old_msg_ids(stream: &mut Stream, now: u64) {
    let window = stream.config.dedup_window_ms;
    while let Some((at, _)) = stream.msg_id_order.first()
        && at.saturating_add(window) <= now
    {
        let (_, id) = stream.msg_id_order.pop_first().expect("checked above");
        stream.msg_ids.remove(&id);
    }
}

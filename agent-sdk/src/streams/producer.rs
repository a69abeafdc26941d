//! [`Producer`]: exactly-once appends, numbered, retried with the same number.

use std::sync::{Mutex, MutexGuard};

use serde::Serialize;
use weft_proto::fabric::v1 as pb;

use super::append::{Appended, send};
use super::item::NewItem;
use super::stream::Stream;
use crate::Error;

/// An exactly-once producer: its appends carry `(id, epoch, sequence)` with the sequence
/// counting 1, 2, 3, ... The fabric stores each sequence once: an append sent again after a
/// failure whose outcome is unknown (a node died while it committed) answers with the first
/// one's seqs instead of appending twice, so the producer retries such failures on the next
/// node by itself, for the client's `retry_for`.
///
/// Appends of one producer are sent one at a time, in order. If one still ends with
/// [`Error::Unknown`], the producer keeps it: the next append sends it again first (or is
/// it, when it carries the same items), so it is stored once and nothing after it is lost
/// or reordered. A refused append ([`Error::Refused`]) appended nothing and its number is
/// used by the next.
///
/// A producer restarted with a *higher epoch* starts at sequence 1 again, and the fabric
/// refuses appends of the old epoch (fencing off a zombie). One restarted with the same
/// epoch starts at 1 too and its first appends are taken for repeats and skipped — right
/// for a deterministic replay (a generator does that), wrong otherwise: resume with
/// [`Producer::starting_at`].
///
/// ```no_run
/// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
/// let orders = client.stream("orders");
/// // Epoch: this process's incarnation (a counter kept in state, a deploy number, ...).
/// let producer = orders.producer("importer-1", 7);
/// for order in ["tea", "cake", "jam"] {
///     let appended = producer.append(&order).await?; // stored exactly once
///     println!("{order} is #{}", appended.first_seq);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Producer {
    stream: Stream,
    id: String,
    epoch: u64,
    /// Held while an append is sent: one at a time, in order.
    turn: tokio::sync::Mutex<()>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    next: u64,
    /// An append whose outcome is unknown: its sequence and items.
    pending: Option<(u64, Vec<pb::NewItem>)>,
}

impl Producer {
    pub(crate) fn new(stream: Stream, id: &str, epoch: u64) -> Self {
        Self {
            stream,
            id: id.to_owned(),
            epoch,
            turn: tokio::sync::Mutex::new(()),
            state: Mutex::new(State { next: 1, pending: None }),
        }
    }

    /// Continues at `sequence` (the next append's number): for a producer that knows where
    /// it stopped.
    pub fn starting_at(self, sequence: u64) -> Self {
        self.state().next = sequence.max(1);
        self
    }

    pub(crate) fn stream_name(&self) -> &str {
        self.stream.name()
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The last sequence stored (0: none yet).
    pub fn sequence(&self) -> u64 {
        self.state().next - 1
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one item (a `&value`, or a [`NewItem`]) exactly once.
    pub async fn append<'a, T: Serialize + ?Sized + 'a>(
        &self,
        item: impl Into<NewItem<'a, T>>,
    ) -> Result<Appended, Error> {
        let item = item.into().encode(self.stream.client().codec)?;
        self.append_encoded(vec![item]).await
    }

    /// Appends several items atomically, exactly once.
    pub async fn append_batch<'a, T, I>(&self, items: I) -> Result<Appended, Error>
    where
        T: Serialize + ?Sized + 'a,
        I: IntoIterator,
        I::Item: Into<NewItem<'a, T>>,
    {
        let codec = self.stream.client().codec;
        let items = items.into_iter().map(|i| i.into().encode(codec)).collect::<Result<Vec<_>, _>>()?;
        if items.is_empty() {
            return Err(Error::Usage("an append needs at least one item".into()));
        }
        self.append_encoded(items).await
    }

    pub(crate) async fn append_encoded(&self, items: Vec<pb::NewItem>) -> Result<Appended, Error> {
        let _turn = self.turn.lock().await;
        let pending = self.state().pending.take();
        if let Some((sequence, earlier)) = pending {
            if earlier == items {
                return self.send(sequence, items).await;
            }
            self.send(sequence, earlier).await?;
        }
        let sequence = self.state().next;
        self.send(sequence, items).await
    }

    async fn send(&self, sequence: u64, items: Vec<pb::NewItem>) -> Result<Appended, Error> {
        let req = pb::AppendRequest {
            stream: self.stream.name().to_owned(),
            items,
            expected_last_seq: None,
            producer: Some(pb::Producer { id: self.id.clone(), epoch: self.epoch, sequence }),
            msg_id: String::new(),
        };
        let items = req.items.clone();
        // The same sequence again is recognised: safe to send after any failure.
        let result = send(&self.stream, req, true).await;
        let mut state = self.state();
        match &result {
            Ok(_) => state.next = state.next.max(sequence + 1),
            // Refused by the fabric's rules: nothing was appended, the number is free.
            Err(refused) if refused.is_refusal() => {}
            Err(_) => state.pending = Some((sequence, items)),
        }
        result
    }
}

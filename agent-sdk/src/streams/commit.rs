//! [`Commit`]: an item's ack together with what was made of it, applied atomically.

use std::time::Duration;

use serde::Serialize;
use weft_proto::fabric::v1 as pb;

use super::item::{Item, NewItem};
use super::listener::{Delivery, ack_with_effects};
use crate::Error;

/// An acknowledgement with effects, from [`Item::commit`]: state writes in `shared/`
/// namespaces, appends to streams and acks of other items, applied in one log entry together
/// with the item's ack — or nothing is. If the item was delivered again meanwhile (its ack
/// wait ran out) the whole commit is refused, so each item's effects apply exactly once,
/// whichever listener commits it.
///
/// State values are JSON (as everywhere in state); appended items use the client's codec.
///
/// ```no_run
/// use futures::StreamExt;
/// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
/// let totals = client.state("shared/totals");
/// let mut orders = client.stream("orders").listener::<u64>().cursor("totals").start().await?;
/// while let Some(order) = orders.next().await {
///     let order = order?;
///     let (total, version) = totals.get_versioned::<u64>("cents").await?.unwrap_or((0, 0));
///     let result = order
///         .commit()
///         .compare_and_set("shared/totals", "cents", &(total + order.value), version)
///         .append("receipts", &format!("order of {} cents counted", order.value))
///         .send()
///         .await;
///     match result {
///         Ok(()) => {}
///         // Refused: delivered again meanwhile (someone else counts it), or the total moved
///         // on (it comes again and is counted then). Nothing was applied.
///         Err(weft_agent::Error::Refused { message, .. }) => eprintln!("not counted now: {message}"),
///         Err(e) => return Err(e),
///     }
/// }
/// # Ok(()) }
/// ```
#[must_use = "a commit does nothing until `send()`"]
#[derive(Debug)]
pub struct Commit {
    delivery: Option<Delivery>,
    acks: Vec<pb::Delivery>,
    effects: Vec<pb::Effect>,
    error: Option<Error>,
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|e| Error::Codec(format!("cannot encode the value as JSON: {e}")))
}

impl Commit {
    pub(crate) fn new(delivery: Option<Delivery>) -> Self {
        let error = delivery.is_none().then(|| {
            Error::Usage(
                "this item needs no ack (a plain reader's, an ack-none cursor's or a read's), so it cannot be committed; use a cursor with explicit acks".into(),
            )
        });
        let acks = delivery.iter().map(Delivery::to_pb).collect();
        Self { delivery, acks, effects: Vec::new(), error }
    }

    fn state(
        mut self,
        namespace: &str,
        key: &str,
        value: Option<Vec<u8>>,
        ttl: Option<Duration>,
        expected: Option<u64>,
    ) -> Self {
        self.effects.push(pb::Effect {
            kind: Some(pb::effect::Kind::State(pb::StateEffect {
                namespace: namespace.to_owned(),
                key: key.to_owned(),
                value,
                ttl_ms: ttl.map(|d| d.as_millis().max(1) as u64),
                expected_version: expected,
            })),
        });
        self
    }

    fn fail(mut self, e: Error) -> Self {
        self.error.get_or_insert(e);
        self
    }

    /// Writes `key` of `namespace` (`shared/<name>`).
    pub fn put<V: Serialize + ?Sized>(self, namespace: &str, key: &str, value: &V) -> Self {
        match to_json(value) {
            Ok(v) => self.state(namespace, key, Some(v), None, None),
            Err(e) => self.fail(e),
        }
    }

    /// Writes `key` of `namespace` with a time to live.
    pub fn put_with_ttl<V: Serialize + ?Sized>(
        self,
        namespace: &str,
        key: &str,
        value: &V,
        ttl: Duration,
    ) -> Self {
        match to_json(value) {
            Ok(v) => self.state(namespace, key, Some(v), Some(ttl), None),
            Err(e) => self.fail(e),
        }
    }

    /// Writes `key` of `namespace` only if it is at `expected_version` then (0: absent);
    /// otherwise the whole commit is refused (`FailedPrecondition`) and nothing is applied.
    pub fn compare_and_set<V: Serialize + ?Sized>(
        self,
        namespace: &str,
        key: &str,
        value: &V,
        expected_version: u64,
    ) -> Self {
        match to_json(value) {
            Ok(v) => self.state(namespace, key, Some(v), None, Some(expected_version)),
            Err(e) => self.fail(e),
        }
    }

    /// Removes `key` of `namespace`.
    pub fn delete(self, namespace: &str, key: &str) -> Self {
        self.state(namespace, key, None, None, None)
    }

    /// Appends an item to `stream` (encoded with the client's codec).
    pub fn append<'a, T: Serialize + ?Sized + 'a>(
        mut self,
        stream: &str,
        item: impl Into<NewItem<'a, T>>,
    ) -> Self {
        let Some(codec) = self.delivery.as_ref().map(|d| d.shared().client().codec) else { return self };
        match item.into().encode(codec) {
            Ok(item) => {
                // Consecutive appends to one stream go as one effect.
                if let Some(pb::Effect { kind: Some(pb::effect::Kind::Append(last)) }) =
                    self.effects.last_mut()
                    && last.stream == stream
                {
                    last.items.push(item);
                } else {
                    self.effects.push(pb::Effect {
                        kind: Some(pb::effect::Kind::Append(pb::AppendEffect {
                            stream: stream.to_owned(),
                            items: vec![item],
                        })),
                    });
                }
                self
            }
            Err(e) => self.fail(e),
        }
    }

    /// Acknowledges `other` too (an item of this cursor, or of another cursor or stream).
    pub fn ack<U>(mut self, other: &Item<U>) -> Self {
        let Some(theirs) = other.delivery() else {
            return self.fail(Error::Usage(format!(
                "item {} needs no ack, so it cannot be acknowledged",
                other.seq
            )));
        };
        let Some(mine) = &self.delivery else { return self };
        if theirs.shared().stream() == mine.shared().stream() && theirs.cursor() == mine.cursor() {
            self.acks.push(theirs.to_pb());
        } else {
            self.effects.push(pb::Effect {
                kind: Some(pb::effect::Kind::Ack(pb::AckEffect {
                    stream: theirs.shared().stream().to_owned(),
                    cursor: theirs.cursor(),
                    seq: theirs.seq,
                    token: theirs.token,
                })),
            });
        }
        self
    }

    /// Applies the commit. An error says nothing was applied, except [`Error::Unknown`]: a
    /// try's outcome was unknown and the commit may have been applied (its item will not be
    /// delivered again either way). [`Error::Refused`] with `FailedPrecondition`: the item
    /// was delivered again meanwhile (and will be, or was, committed by that delivery), or a
    /// [`Commit::compare_and_set`] did not match.
    pub async fn send(self) -> Result<(), Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let Some(delivery) = self.delivery else {
            return Err(Error::Usage("nothing to commit".into()));
        };
        let req = pb::AckRequest {
            stream: delivery.shared().stream().to_owned(),
            cursor: delivery.cursor(),
            acks: self.acks,
            effects: self.effects,
        };
        ack_with_effects(delivery.shared().client(), req).await
    }
}

//! Items: [`NewItem`] to append, [`Item`] as a listener or a read hands it out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;
use weft_proto::fabric::v1 as pb;

use super::commit::Commit;
use super::listener::Delivery;
use crate::{Codec, Error, codec};

/// An item to append: a value, and optionally a key (dot-separated tokens, for cursor
/// filters) and headers. A plain `&value` converts into one, so appends take either.
///
/// ```no_run
/// use weft_agent::streams::NewItem;
/// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
/// let orders = client.stream("orders");
/// orders.append(&"just a value").await?;
/// orders.append(NewItem::new(&"a keyed value").key("orders.eu.paris").header("trace", "4bf92f")).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct NewItem<'a, T: ?Sized> {
    value: &'a T,
    key: Option<String>,
    headers: Vec<(String, String)>,
}

impl<'a, T: ?Sized> NewItem<'a, T> {
    /// An item holding `value`, without key or headers.
    pub fn new(value: &'a T) -> Self {
        Self { value, key: None, headers: Vec::new() }
    }

    /// Its key: dot-separated tokens of `[A-Za-z0-9_-]` (`"orders.eu.paris"`).
    pub fn key(mut self, key: &str) -> Self {
        self.key = Some(key.to_owned());
        self
    }

    /// Adds a header (names: `[A-Za-z0-9._-]`; `weft-` names are the fabric's).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

impl<'a, T: ?Sized> From<&'a T> for NewItem<'a, T> {
    fn from(value: &'a T) -> Self {
        NewItem::new(value)
    }
}

impl<T: Serialize + ?Sized> NewItem<'_, T> {
    /// The item on the wire, its value encoded with `codec`.
    pub(crate) fn encode(&self, codec: Codec) -> Result<pb::NewItem, Error> {
        Ok(pb::NewItem {
            key: self.key.clone().unwrap_or_default(),
            payload: Some(codec::encode(codec, self.value)?),
            headers: self
                .headers
                .iter()
                .map(|(name, value)| pb::Header { name: name.clone(), value: value.clone() })
                .collect(),
        })
    }
}

/// An item of a stream, its value decoded. From a listener it may be acknowledged:
/// [`Item::ack`], [`Item::nack`], or [`Item::commit`] to acknowledge it together with what
/// was made of it.
///
/// ```no_run
/// use futures::StreamExt;
/// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
/// let mut orders = client.stream("orders").listener::<String>().cursor("audit").start().await?;
/// while let Some(item) = orders.next().await {
///     let item = item?;
///     println!("#{} {:?} (delivery {}): {}", item.seq, item.key, item.deliveries, item.value);
///     item.ack().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Item<T> {
    /// Its seq in the stream: dense from 1, one order for every listener.
    pub seq: u64,
    /// Its key, if it has one.
    pub key: Option<String>,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// When it was appended (the leader's clock).
    pub time: SystemTime,
    /// How often it was delivered to this cursor, this time included (1 for readers).
    pub deliveries: u32,
    /// The value.
    pub value: T,
    pub(crate) delivery: Option<Delivery>,
}

impl<T> Item<T> {
    /// The value of header `name`, if it has one.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The value, dropping the rest (the delivery can no longer be acknowledged).
    pub fn into_value(self) -> T {
        self.value
    }

    /// Whether this item waits for an acknowledgement: it came from a cursor with explicit
    /// acks (not from a plain reader, an ack-none cursor or a read).
    pub fn needs_ack(&self) -> bool {
        self.delivery.is_some()
    }

    /// Acknowledges the item and waits for the fabric to confirm it: it will not be delivered
    /// again. An error means it was not acknowledged, and it comes again (to this listener or
    /// another one): its ack wait ran out and it was delivered again, or the stream or cursor
    /// is gone. Acknowledging an item that needs no ack does nothing.
    pub async fn ack(&self) -> Result<(), Error> {
        match &self.delivery {
            Some(d) => d.ack().await,
            None => Ok(()),
        }
    }

    /// Hands the item back: it is delivered again at once (to any listener of the cursor),
    /// or moves to the dead letters once it has had its deliveries. Without an answer from
    /// the fabric; an item whose nack is lost comes back after its ack wait.
    pub fn nack(&self) {
        if let Some(d) = &self.delivery {
            d.nack();
        }
    }

    /// Acknowledges the item together with effects — state writes in `shared/` namespaces,
    /// appends to streams, acks of other items — all applied atomically in one log entry, or
    /// none: a consumer that writes what it made of an item does so exactly once.
    ///
    /// ```no_run
    /// # async fn demo(item: weft_agent::streams::Item<u64>) -> Result<(), weft_agent::Error> {
    /// item.commit()
    ///     .put("shared/totals", "orders", &(item.value + 1))
    ///     .append("invoices", &format!("invoice for order {}", item.value))
    ///     .send()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn commit(&self) -> Commit {
        Commit::new(self.delivery.clone())
    }

    pub(crate) fn delivery(&self) -> Option<&Delivery> {
        self.delivery.as_ref()
    }
}

impl<T: DeserializeOwned> Item<T> {
    /// Decodes an item from the fabric.
    pub(crate) fn decode(
        stream: &str,
        raw: pb::Item,
        deliveries: u32,
        delivery: Option<Delivery>,
    ) -> Result<Self, Error> {
        let payload = raw.payload.unwrap_or_default();
        let value = codec::decode(&payload)
            .map_err(|e| Error::Codec(format!("stream '{stream}' item {}: {e}", raw.seq)))?;
        Ok(Item {
            seq: raw.seq,
            key: (!raw.key.is_empty()).then_some(raw.key),
            headers: raw.headers.into_iter().map(|h| (h.name, h.value)).collect(),
            time: UNIX_EPOCH + Duration::from_millis(raw.time_ms),
            deliveries,
            value,
            delivery,
        })
    }
}

//! [`Emitter`]: how a generator delegate makes its stream's items.

use std::marker::PhantomData;

use serde::Serialize;

use super::append::Appended;
use super::item::NewItem;
use super::producer::Producer;
use super::stream::Stream;
use crate::Error;

/// What a generator delegate ([`Agent::generator`](crate::Agent::generator)) emits its items
/// with. Each [`Emitter::emit`] appends one item as the exactly-once producer
/// `execution-<id>` (epoch 1), numbered 1, 2, 3, ... in the order the handler emits. When the
/// execution runs again (its process died), the handler emits from the start again and the
/// fabric skips what the first run stored: the stream gets each item once. So a generator
/// must emit the same items in the same order every time it runs.
///
/// Items are encoded in the codec of the generator's arguments (bincode from Rust, JSON from
/// the command line).
///
/// ```no_run
/// use std::time::Duration;
/// use weft_agent::streams::{Emitter, NewItem};
/// use weft_agent::{Agent, Context, Fail};
///
/// async fn countdown(_ctx: Context, out: Emitter<u64>, from: u64) -> Result<(), Fail> {
///     for n in (1..=from).rev() {
///         out.emit(NewItem::new(&n).key("countdown")).await?;
///         tokio::time::sleep(Duration::from_millis(100)).await;
///     }
///     Ok(()) // closes the stream; an error would close it with that error
/// }
///
/// let agent = Agent::new("clock").generator("countdown", countdown);
/// ```
#[derive(Debug)]
pub struct Emitter<T: ?Sized> {
    producer: Producer,
    _items: PhantomData<fn(&T)>,
}

impl<T: Serialize + ?Sized> Emitter<T> {
    /// The emitter of execution `execution`, feeding `stream`.
    pub(crate) fn new(stream: Stream, execution: u64) -> Self {
        Self { producer: stream.producer(&format!("execution-{execution}"), 1), _items: PhantomData }
    }

    /// The stream this generator feeds.
    pub fn stream(&self) -> &str {
        self.producer.stream_name()
    }

    /// How many items this run has emitted (skipped repeats of an earlier run included).
    pub fn emitted(&self) -> u64 {
        self.producer.sequence()
    }

    /// Appends an item (a `&value`, or a [`NewItem`] with key and headers), as a
    /// [`Producer`] does: failures of unknown outcome are sent again with the same number
    /// (on the next node, for the client's `retry_for`), so it is stored once. `duplicate`
    /// in the answer: an earlier run of this execution stored it already.
    pub async fn emit<'a>(&self, item: impl Into<NewItem<'a, T>>) -> Result<Appended, Error>
    where
        T: 'a,
    {
        self.producer.append(item).await
    }
}

//! Streams: append-only sequences of items with dense seqs, one order for every listener.
//!
//! ```text
//!   Producer / Stream::append ──► stream "orders" ──► cursor "billing" ──► Listener (×N, competing)
//!   (exactly once: producer         seqs 1, 2, 3 …     (durable place,      item.ack() / nack()
//!    sequence, or msg id)                               acks, redelivery)   item.commit(): ack +
//!                                                                           state + appends, atomic
//!   Emitter (a generator delegate's output) ──► generator stream, closed by its return
//! ```
//!
//! - [`Stream`]: a handle by name, from [`Client::stream`](crate::Client::stream) or
//!   [`Context::stream`](crate::Context::stream): create ([`Config`]), info ([`Info`]),
//!   append ([`NewItem`], [`Append`]), [`Producer`], listen ([`Listen`]), read, close, delete,
//!   cursors ([`CursorConfig`], [`CursorInfo`]).
//! - [`Listener`]: a [`futures::Stream`] of [`Item`]s that follows the fabric across node
//!   failures; [`Item::ack`], [`Item::nack`], and [`Item::commit`] ([`Commit`]): the ack with
//!   state writes and appends, atomically, for exactly-once processing.
//! - In a handler, [`Context::append`](crate::Context::append) and
//!   [`Context::ack`](crate::Context::ack) are applied with its result, like its state writes.
//! - [`Emitter`]: what a generator delegate
//!   ([`Agent::generator`](crate::Agent::generator)) emits with; [`Generator`] names it in a
//!   stream's [`Config`].
//! - [`StreamRef`]: a stream as a value (name and uid), to return from a call.
//!
//! # What the fabric promises
//! - One order: every listener sees the same items in the same order, without gaps; an
//!   acknowledged append is never lost.
//! - Appends from a [`Producer`], an [`Emitter`], or with a message id are stored once,
//!   however often they are sent.
//! - A cursor delivers each item to one of its listeners at a time and again until it is
//!   acknowledged (at least once); [`Item::commit`] applies an item's effects once.

mod append;
mod commit;
mod config;
mod emitter;
mod info;
mod item;
mod listener;
mod producer;
mod reference;
mod stream;

pub use append::{Append, Appended};
pub use commit::Commit;
pub use config::{AckPolicy, Config, CursorConfig, Deliver, Discard, Generator, Kind};
pub use emitter::Emitter;
pub use info::{Closed, CursorInfo, Info, Page};
pub use item::{Item, NewItem};
pub use listener::{DEFAULT_BUFFER, Listen, Listener, MAX_BUFFER};
pub use producer::Producer;
pub use reference::StreamRef;
pub use stream::Stream;

pub(crate) use listener::Delivery;
pub(crate) use stream::grpc;

//! `weft-agent`: write agents for a Weft fabric, and call them.
//!
//! An agent process builds a [`Worker`] with the [`Agent`]s it serves; each agent has a
//! handler per delegate, `async fn(Context, A) -> Result<R, E>` on serde types. The worker
//! connects to any node of the fabric (failing over between the endpoints it was given),
//! opens a session and runs what the fabric assigns to it. A caller uses a [`Client`] to call
//! agents, start and stop instances, read and write state, and append to and listen to
//! [`streams`]; a scaler watches the [`demand`] for agent processes.
//!
//! ```no_run
//! use weft_agent::{Agent, Client, Context, Fail, Worker};
//!
//! async fn increment(ctx: Context, by: u64) -> Result<u64, Fail> {
//!     let state = ctx.state()?;
//!     let count: u64 = state.get("count").await?.unwrap_or(0);
//!     state.put("count", &(count + by))?; // applied with the result, exactly once
//!     Ok(count + by)
//! }
//!
//! # async fn demo() -> Result<(), weft_agent::Error> {
//! let endpoints = ["127.0.0.1:7400", "127.0.0.1:7401", "127.0.0.1:7402"];
//! let worker = Worker::builder(endpoints)
//!     .agent(Agent::new("counter").delegate("increment", increment))
//!     .build()?;
//! tokio::spawn(worker.run());
//!
//! let client = Client::new(endpoints)?;
//! let counter = client.start_instance::<_, ()>("counter", &()).await?;
//! let total: u64 = client.request("counter", "increment").instance(&counter.id).args(&5u64).call().await?;
//! assert_eq!(total, 5);
//! # Ok(()) }
//! ```
//!
//! # What the fabric promises, and what the SDK adds
//! - An execution is delivered at least once and completed at most once: if a process dies
//!   while it runs one, another runs it, and only one completion counts.
//! - State written through [`Context::state`] / [`Context::shared`] and executions created
//!   with [`Context::send`] are applied atomically with the handler's result, so they
//!   happen exactly once however often the handler runs.
//! - Calls from a [`Client`] carry an idempotency key, so retrying them after a failure (the
//!   client does) never runs them twice.
//! - Stream appends from a [`Producer`] or an [`Emitter`] are stored once however often they
//!   are sent; a listener's [`Item::commit`](streams::Item::commit), and a handler's
//!   [`Context::append`] / [`Context::ack`], apply what was made of an item exactly once.
//!
//! # Layout
//! - [`client`]: [`Client`], calls and their options, instances, waiting, cancelling.
//! - [`worker`]: [`Worker`], the runtime that serves agents' handlers.
//! - [`agent`]: [`Agent`], handlers registered by delegate.
//! - [`context`]: [`Context`], what a handler can see and do.
//! - [`state`]: typed key/value state for clients ([`State`], fenced or not) and handlers
//!   ([`Scope`]).
//! - [`lease`]: leases with fencing tokens ([`Lease`], [`Grant`], [`Fence`]): one active
//!   process among several, and writes that stop once it is not.
//! - [`schedule`]: cron schedules that call a delegate at each due time ([`Schedule`],
//!   [`schedule::Spec`]).
//! - [`streams`]: streams ([`Stream`]), appends and [`Producer`]s, listeners, commits,
//!   generators ([`Emitter`]), [`StreamRef`].
//! - [`demand`]: the demand for agent processes the fabric pushes ([`Client::watch_demand`],
//!   [`DemandWatch`], [`Demand`]).
//! - [`codec`]: payload encodings (bincode, JSON).
//! - [`types`]: executions as the fabric reports them, retry policies.
//! - [`error`]: [`Error`] and [`Fail`].
//! - [`tls`]: [`Tls`], TLS settings (the cluster's CA, an optional client certificate) and
//!   the connector that reaches nodes over `https://`.
//! - [`token`]: [`Token`], the bearer token sent on every request to nodes with auth on, and
//!   the channel wrapper that sends it.
//! - `connection`: endpoints, failover and back-off.

#![deny(missing_docs)]

pub mod agent;
pub mod client;
pub mod codec;
mod connection;
pub mod context;
pub mod demand;
pub mod error;
pub mod lease;
pub mod schedule;
pub mod state;
pub mod streams;
pub mod tls;
pub mod token;
pub mod types;
pub mod worker;

pub use agent::Agent;
pub use client::{Call, Client, ClientBuilder};
pub use codec::Codec;
pub use connection::{
    INITIAL_BACKOFF, MAX_BACKOFF, check_endpoint, endpoint_uri, next_backoff, parse_endpoints,
};
pub use context::Context;
pub use demand::{AgentDemand, Demand, DemandWatch, InstanceDemand, SessionLoad};
pub use error::{Error, Fail};
pub use lease::{Fence, Grant, Lease};
pub use schedule::Schedule;
pub use state::{Scope, State};
pub use streams::{Emitter, Producer, Stream, StreamRef};
pub use tls::Tls;
pub use token::Token;
pub use types::{Execution, RetryPolicy, Started, Status};
pub use worker::{Stopper, Worker, WorkerBuilder};

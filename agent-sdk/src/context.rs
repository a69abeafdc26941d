//! [`Context`]: what a handler knows about its execution and what it can do from it.
//!
//! Calls and instance starts made from a context are children of the execution and carry
//! idempotency keys made of their place in the order the handler makes them and a hash of
//! what they call. When an execution runs again (its agent died) the handler makes the same
//! calls in the same order and gets the same children back, with their results, instead of
//! new ones: keep the order of fabric calls in a handler deterministic. A run on other state
//! (after an effect conflict) that calls with other arguments gets new children.
//!
//! Stream appends and acks made through the context ([`Context::append`], [`Context::ack`])
//! are buffered like state writes and applied with the handler's result, so a handler that
//! consumes an item and appends what it made of it does both exactly once. Through
//! [`Context::stream`] a handler reaches streams directly (create, listen, append at once).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use weft_proto::fabric::v1 as pb;

use crate::client::{Call, Client, call_hash};
use crate::state::{Buffer, Scope, SharedBuffer, State};
use crate::streams::{Delivery, Item, NewItem, Stream, StreamRef};
use crate::types::Started;
use crate::{Codec, Error, codec};

struct Inner {
    client: Client,
    id: u64,
    token: u64,
    agent: String,
    instance: Option<String>,
    delegate: String,
    attempt: u32,
    cancel: CancellationToken,
    buffer: SharedBuffer,
    seq: AtomicU64,
    /// For a generator's execution: the stream it feeds.
    generator: Option<String>,
}

/// The context of one running execution. Cheap to clone.
///
/// ```no_run
/// use weft_agent::{Context, Fail};
///
/// async fn checkout(ctx: Context, order: u64) -> Result<String, Fail> {
///     if ctx.is_cancelled() {
///         return Err(Fail::permanent("cancelled"));
///     }
///     // A typed call of another agent, a child of this execution.
///     let paid: bool = ctx.call("payments", "charge", &order).await?;
///     Ok(format!("order {order}: paid {paid}, attempt {}", ctx.attempt()))
/// }
/// ```
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("execution", &self.inner.id)
            .field("agent", &self.inner.agent)
            .field("instance", &self.inner.instance)
            .field("delegate", &self.inner.delegate)
            .field("attempt", &self.inner.attempt)
            .finish_non_exhaustive()
    }
}

impl Context {
    pub(crate) fn new(
        client: Client,
        e: &pb::Execution,
        token: u64,
        cancel: CancellationToken,
        generator: Option<String>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                id: e.id,
                token,
                agent: e.agent.clone(),
                instance: (!e.instance.is_empty()).then(|| e.instance.clone()),
                delegate: e.delegate.clone(),
                attempt: e.attempts,
                cancel,
                buffer: SharedBuffer::default(),
                seq: AtomicU64::new(0),
                generator,
            }),
        }
    }

    /// The execution's id.
    pub fn execution_id(&self) -> u64 {
        self.inner.id
    }

    /// The agent running it.
    pub fn agent(&self) -> &str {
        &self.inner.agent
    }

    /// The instance, for instance executions.
    pub fn instance(&self) -> Option<&str> {
        self.inner.instance.as_deref()
    }

    /// The delegate running.
    pub fn delegate(&self) -> &str {
        &self.inner.delegate
    }

    /// Which delivery this is: 1 the first time, more after a crash or a retry.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// Whether the execution was cancelled (or its deadline passed, or its lease was lost):
    /// nothing this handler returns will count any more.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Resolves when the execution is cancelled; `select!` on it in long handlers.
    pub async fn cancelled(&self) {
        self.inner.cancel.cancelled().await;
    }

    /// A client on the same fabric, for calls outside this execution's exactly-once
    /// bookkeeping.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    pub(crate) fn token(&self) -> u64 {
        self.inner.token
    }

    pub(crate) fn buffer(&self) -> MutexGuard<'_, Buffer> {
        self.inner.buffer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes what the handler buffered, for its completion: the effects, and the deliveries
    /// they ack (to hold until the completion is applied).
    pub(crate) fn take_effects(&self) -> (Vec<pb::Effect>, Vec<Delivery>) {
        std::mem::take(&mut *self.buffer()).into_effects()
    }

    fn next_seq(&self) -> u64 {
        self.inner.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Calls another agent and waits for its typed result; the call is a child of this
    /// execution (cancelling this one cancels it). The handler should not hold every slot of
    /// an agent it then calls: a child waits for a free slot like any execution.
    pub async fn call<A, R>(&self, agent: &str, delegate: &str, args: &A) -> Result<R, Error>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.request(agent, delegate).args(args).call().await
    }

    /// A child call with options (instance, timeout, retries, ...); see [`Client::request`].
    pub fn request(&self, agent: &str, delegate: &str) -> Call<'_> {
        let seq = self.next_seq();
        self.inner.client.request(agent, delegate).child(self.inner.id, self.inner.token, seq)
    }

    /// Creates an execution when this handler succeeds, atomically with its result (once,
    /// whatever happens to this process), without waiting for it.
    pub fn send<A: Serialize + ?Sized>(&self, agent: &str, delegate: &str, args: &A) -> Result<(), Error> {
        self.send_to(agent, None, delegate, args)
    }

    /// [`Context::send`] to an instance.
    pub fn send_to<A: Serialize + ?Sized>(
        &self,
        agent: &str,
        instance: Option<&str>,
        delegate: &str,
        args: &A,
    ) -> Result<(), Error> {
        let payload = codec::encode(self.inner.client.codec, args)?;
        let hash = call_hash(&[
            agent.as_bytes(),
            instance.unwrap_or_default().as_bytes(),
            delegate.as_bytes(),
            &payload.data,
        ]);
        let key = format!("send-{}-{hash:016x}", self.next_seq());
        self.buffer().calls.push(pb::CreateExecutionRequest {
            agent: agent.to_owned(),
            instance: instance.unwrap_or_default().to_owned(),
            delegate: delegate.to_owned(),
            payload: Some(payload),
            idempotency_key: key,
            ..Default::default()
        });
        Ok(())
    }

    /// Starts an instance of `agent` and waits for its `Start`; when this execution
    /// belongs to an instance, the new one is its child (stopping this one stops it).
    pub async fn start_instance<A, R>(&self, agent: &str, args: &A) -> Result<Started<R>, Error>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let payload = codec::encode(self.inner.client.codec, args)?;
        let hash = call_hash(&[agent.as_bytes(), &payload.data]);
        let key = format!("weft-{}-start-{}-{hash:016x}", self.inner.id, self.next_seq());
        let parent = self.inner.instance.as_deref().map(|i| (self.inner.agent.as_str(), i));
        self.inner.client.start_instance_with(agent, None, args, Some(&key), parent).await
    }

    /// Stops an instance and waits for its `Stop`.
    pub async fn stop_instance(&self, agent: &str, id: &str) -> Result<(), Error> {
        self.next_seq();
        self.inner.client.stop_instance(agent, id).await
    }

    /// This instance's own state (`instance/<agent>/<id>`); writes are applied with the
    /// handler's result. An error outside an instance execution.
    pub fn state(&self) -> Result<Scope, Error> {
        match &self.inner.instance {
            Some(id) => Ok(self.scope(&format!("instance/{}/{id}", self.inner.agent))),
            None => Err(Error::Usage(format!(
                "execution {} of {}.{} belongs to no instance, so it has no instance state; use shared()",
                self.inner.id, self.inner.agent, self.inner.delegate
            ))),
        }
    }

    /// A shared namespace (`shared/<name>`); writes are applied with the handler's result.
    pub fn shared(&self, name: &str) -> Scope {
        self.scope(&format!("shared/{name}"))
    }

    fn scope(&self, namespace: &str) -> Scope {
        Scope::new(self.inner.buffer.clone(), State::new(self.inner.client.conn.clone(), namespace))
    }

    /// The codec the client side of this context uses.
    pub fn codec(&self) -> Codec {
        self.inner.client.codec
    }

    /// The stream a generator's execution feeds; `None` for other executions.
    pub(crate) fn generator_stream(&self) -> Option<&str> {
        self.inner.generator.as_deref()
    }

    /// Stream `name`, reached directly: what it does happens at once, not with the result
    /// (an append through it may happen again if the handler runs again; see
    /// [`Context::append`] for one applied with the result).
    ///
    /// ```no_run
    /// use weft_agent::streams::Config;
    /// use weft_agent::{Context, Fail, StreamRef};
    ///
    /// async fn open_report(ctx: Context, quarter: String) -> Result<StreamRef, Fail> {
    ///     let report = ctx.stream(&format!("report-{quarter}")).create(Config::new()).await?;
    ///     ctx.append(&report.name, &format!("report for {quarter}"))?; // with the result
    ///     Ok(report.reference())
    /// }
    /// ```
    pub fn stream(&self, name: &str) -> Stream {
        self.inner.client.stream(name)
    }

    /// The stream a reference names, reached directly; see [`Client::stream_from`].
    pub fn stream_from(&self, reference: &StreamRef) -> Stream {
        self.inner.client.stream_from(reference)
    }

    /// Appends an item (a `&value`, or a [`NewItem`]) to `stream` when this handler
    /// succeeds, atomically with its result and its other effects: once, however often the
    /// handler runs. If the stream is missing or closed then, or at a discard-new limit,
    /// the completion is refused and the execution fails with that reason.
    ///
    /// ```no_run
    /// use weft_agent::{Context, Fail};
    ///
    /// async fn place(ctx: Context, order: String) -> Result<(), Fail> {
    ///     ctx.shared("orders").put(&order, &"placed")?;
    ///     ctx.append("order-events", &format!("placed {order}"))?; // both, or neither
    ///     Ok(())
    /// }
    /// ```
    pub fn append<'a, T: Serialize + ?Sized + 'a>(
        &self,
        stream: &str,
        item: impl Into<NewItem<'a, T>>,
    ) -> Result<(), Error> {
        let item = item.into().encode(self.inner.client.codec)?;
        self.buffer().append(stream, item);
        Ok(())
    }

    /// Acknowledges a listener's `item` when this handler succeeds, atomically with its
    /// result and its other effects (state writes, appends): consuming an item and recording
    /// what it made of it happen exactly once. If the item was delivered again meanwhile
    /// (its ack wait ran out), the completion is refused and the execution fails with that
    /// reason: give the cursor an ack wait longer than the handler takes. The item's
    /// listener stays open (even if the handler drops it) until the result is applied, so
    /// the item stays its delivery; items the listener is sent meanwhile are delivered again
    /// afterwards.
    ///
    /// ```no_run
    /// use futures::StreamExt;
    /// use weft_agent::{Context, Fail};
    ///
    /// async fn take_one(ctx: Context, (): ()) -> Result<u64, Fail> {
    ///     let mut jobs = ctx.stream("jobs").listener::<u64>().cursor("takers").start().await?;
    ///     let job = jobs.next().await.ok_or_else(|| Fail::new("no jobs"))??;
    ///     ctx.shared("done").put(&job.seq.to_string(), &job.value)?;
    ///     ctx.ack(&job)?; // with the state write and the result
    ///     Ok(job.value)
    /// }
    /// ```
    pub fn ack<T>(&self, item: &Item<T>) -> Result<(), Error> {
        let Some(delivery) = item.delivery() else {
            return Err(Error::Usage(format!(
                "item {} needs no ack (a plain reader's, an ack-none cursor's or a read's)",
                item.seq
            )));
        };
        let mut buffer = self.buffer();
        buffer.acks.push(pb::AckEffect {
            stream: delivery.shared().stream().to_owned(),
            cursor: delivery.cursor(),
            seq: delivery.seq,
            token: delivery.token,
        });
        // Its listener must not let go of it (which delivers it again) before the result
        // with its ack is applied.
        buffer.held.push(delivery.clone());
        Ok(())
    }

    /// Applies this handler's result only while `fence`'s grant still holds its lease (a
    /// lock taken with [`Lease::acquire`](crate::Lease::acquire)): once the lock is lost
    /// (expired, released, taken over), nothing of the result is applied (no state write,
    /// call, append or ack) and the execution runs again, as after a state conflict. Also
    /// guards an error result, so a holder that lost its lock cannot fail the execution
    /// either. Checked when the completion is applied, against the fabric's clock.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use weft_agent::{Context, Fail};
    ///
    /// async fn rebuild(ctx: Context, (): ()) -> Result<(), Fail> {
    ///     let lock = ctx.client().lease("index-rebuild");
    ///     let grant = lock.acquire(&ctx.execution_id().to_string(), Duration::from_secs(30)).await?;
    ///     ctx.require(&grant.fence());
    ///     ctx.shared("index").put("built", &true)?; // applied only while the lock holds
    ///     Ok(())
    /// }
    /// ```
    pub fn require(&self, fence: &crate::Fence) {
        self.buffer().fences.push(fence.to_pb());
    }

    /// Takes the fences the handler required, for an error result (which carries no other
    /// effect).
    pub(crate) fn take_fences(&self) -> Vec<pb::Effect> {
        let fences = std::mem::take(&mut self.buffer().fences);
        fences.into_iter().map(|f| pb::Effect { kind: Some(pb::effect::Kind::Fence(f)) }).collect()
    }
}

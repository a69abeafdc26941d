//! [`Agent`]: the handlers one agent serves, registered by delegate name.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use weft_proto::fabric::v1 as pb;

use crate::context::Context;
use crate::streams::Emitter;
use crate::{Client, codec, error};

/// The delegate that runs when an instance starts.
pub const START: &str = "Start";
/// The delegate that runs when an instance stops.
pub const STOP: &str = "Stop";

/// What a handler produced: an encoded result, or an error message and whether a retry
/// policy may try again.
pub(crate) type Outcome = Result<pb::Payload, (String, bool)>;

/// A handler with its types erased.
pub(crate) type Handler = Arc<dyn Fn(Context, pb::Payload) -> BoxFuture<'static, Outcome> + Send + Sync>;

/// One agent: a name and a handler per delegate. `Start` and `Stop` answer with `()` unless
/// given handlers.
///
/// ```no_run
/// use weft_agent::{Agent, Context, Fail};
///
/// async fn greet(_ctx: Context, name: String) -> Result<String, Fail> {
///     Ok(format!("hello, {name}"))
/// }
///
/// let agent = Agent::new("greeter").delegate("greet", greet);
/// ```
#[derive(Clone)]
pub struct Agent {
    pub(crate) name: String,
    pub(crate) handlers: BTreeMap<String, Handler>,
    pub(crate) concurrent_instances: bool,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("name", &self.name)
            .field("delegates", &self.handlers.keys().collect::<Vec<_>>())
            .field("concurrent_instances", &self.concurrent_instances)
            .finish()
    }
}

impl Agent {
    /// An agent called `name` (1-128 characters of `[A-Za-z0-9._-]`) with no handlers yet.
    pub fn new(name: &str) -> Self {
        Self { name: name.to_owned(), handlers: BTreeMap::new(), concurrent_instances: false }
    }

    /// Serves `delegate` with `handler`: `async fn(Context, A) -> Result<R, E>`. Arguments
    /// arrive in whatever codec the caller used (bincode from Rust, JSON from the CLI) and
    /// the result goes back in the same codec. An error of any `Display` type is retryable
    /// (under a retry policy); return [`crate::Fail::permanent`] for one that is not.
    pub fn delegate<A, R, E, F, Fut>(mut self, delegate: &str, handler: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        E: Display + Send + 'static,
        F: Fn(Context, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let name = format!("{}.{delegate}", self.name);
        let erased: Handler = Arc::new(move |ctx: Context, payload: pb::Payload| {
            let handler = handler.clone();
            let name = name.clone();
            Box::pin(async move {
                let args: A = codec::decode(&payload)
                    .map_err(|e| (format!("cannot decode the arguments of {name}: {e}"), false))?;
                match handler(ctx, args).await {
                    Ok(result) => codec::encode(codec::codec_of(&payload), &result)
                        .map_err(|e| (format!("cannot encode the result of {name}: {e}"), false)),
                    Err(e) => Err(error::describe(&e)),
                }
            })
        });
        self.handlers.insert(delegate.to_owned(), erased);
        self
    }

    /// Serves `delegate` as a generator: the output of a generator stream (see
    /// [`Generator`](crate::streams::Generator)). `handler` is `async fn(Context,
    /// Emitter<T>, A) -> Result<(), E>`: it emits the stream's items with the [`Emitter`]
    /// (each stored once, even when the execution runs again after a crash), and its return
    /// closes the stream — ok, or with its error once no retry is left. Called other than
    /// for a generator stream, it fails at once.
    ///
    /// ```no_run
    /// use weft_agent::streams::{Config, Emitter, Generator};
    /// use weft_agent::{Agent, Client, Context, Fail, StreamRef};
    ///
    /// /// Emits 1..=n.
    /// async fn count(_ctx: Context, out: Emitter<u64>, n: u64) -> Result<(), Fail> {
    ///     for i in 1..=n {
    ///         out.emit(&i).await?;
    ///     }
    ///     Ok(())
    /// }
    ///
    /// /// Makes a generator stream of `count(n)` and returns it.
    /// async fn open(ctx: Context, n: u64) -> Result<StreamRef, Fail> {
    ///     let name = format!("count-{}", ctx.execution_id());
    ///     let config = Config::new().generator(Generator::new("numbers", "count").args(&n));
    ///     Ok(ctx.stream(&name).create(config).await?.reference())
    /// }
    ///
    /// let numbers = Agent::new("numbers").generator("count", count).delegate("open", open);
    /// ```
    pub fn generator<A, T, E, F, Fut>(mut self, delegate: &str, handler: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        T: Serialize + Send + Sync + 'static,
        E: Display + Send + 'static,
        F: Fn(Context, Emitter<T>, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let name = format!("{}.{delegate}", self.name);
        let erased: Handler = Arc::new(move |ctx: Context, payload: pb::Payload| {
            let handler = handler.clone();
            let name = name.clone();
            Box::pin(async move {
                let Some(stream) = ctx.generator_stream().map(str::to_owned) else {
                    return Err((
                        format!("{name} is a generator: it runs for a generator stream, not as a call"),
                        false,
                    ));
                };
                let args: A = codec::decode(&payload)
                    .map_err(|e| (format!("cannot decode the arguments of {name}: {e}"), false))?;
                // Items go in the codec the generator was given its arguments in.
                let codec = codec::codec_of(&payload);
                let client = Client { conn: ctx.client().conn.clone(), codec };
                let emitter = Emitter::new(client.stream(&stream), ctx.execution_id());
                match handler(ctx, emitter, args).await {
                    Ok(()) => codec::encode(codec, &())
                        .map_err(|e| (format!("cannot encode the result of {name}: {e}"), false)),
                    Err(e) => Err(error::describe(&e)),
                }
            })
        });
        self.handlers.insert(delegate.to_owned(), erased);
        self
    }

    /// Runs `handler` when an instance starts; its result is what
    /// [`crate::Client::start_instance`] returns.
    pub fn on_start<A, R, E, F, Fut>(self, handler: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        E: Display + Send + 'static,
        F: Fn(Context, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
    {
        self.delegate(START, handler)
    }

    /// Runs `handler` when an instance stops (its arguments are `()`); after it the
    /// instance's state is removed.
    pub fn on_stop<R, E, F, Fut>(self, handler: F) -> Self
    where
        R: Serialize + Send + 'static,
        E: Display + Send + 'static,
        F: Fn(Context, ()) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
    {
        self.delegate(STOP, handler)
    }

    /// Lets this agent's instances run several executions at once on one process
    /// (otherwise an instance runs one execution at a time, in order).
    pub fn concurrent_instances(mut self, yes: bool) -> Self {
        self.concurrent_instances = yes;
        self
    }

    /// The handler of `delegate`; `Start` and `Stop` default to one that returns `()`.
    pub(crate) fn handler(&self, delegate: &str) -> Option<Handler> {
        if let Some(h) = self.handlers.get(delegate) {
            return Some(h.clone());
        }
        if delegate == START || delegate == STOP {
            let unit: Handler = Arc::new(|_ctx, payload: pb::Payload| {
                Box::pin(async move {
                    codec::encode(codec::codec_of(&payload), &()).map_err(|e| (e.to_string(), false))
                })
            });
            return Some(unit);
        }
        None
    }

    pub(crate) fn spec(&self) -> pb::AgentSpec {
        let mut delegates: Vec<String> = self.handlers.keys().cloned().collect();
        for d in [START, STOP] {
            if !delegates.iter().any(|x| x == d) {
                delegates.push(d.to_owned());
            }
        }
        pb::AgentSpec { name: self.name.clone(), delegates, concurrent_instances: self.concurrent_instances }
    }
}

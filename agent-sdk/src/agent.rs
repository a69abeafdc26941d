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
use crate::{codec, error};

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

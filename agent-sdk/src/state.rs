//! Typed key/value state. Values are JSON, so the CLI (`weft state get`) shows them.
//!
//! - [`State`]: a namespace as a plain client sees it; every call goes to the fabric. A
//!   handle from [`State::fenced`] writes only while a lease's grant holds (see
//!   [`lease`](crate::lease)).
//! - [`Scope`]: a namespace inside a handler. Reads go to the fabric (linearizable) and
//!   remember the version they saw; writes are buffered and applied with the handler's
//!   result in one log entry, each conditional on the version the handler read. If anyone
//!   changed such a key meanwhile, nothing is applied and the execution runs again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use serde::de::DeserializeOwned;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::state_client::StateClient;

use crate::connection::{Channel, Connection, MAX_MESSAGE_BYTES};
use crate::{Error, Fence};

/// Most keys [`State::list`] returns; a prefix that holds more is refused (list a narrower
/// one).
pub const MAX_LIST_KEYS: usize = 10_000;

fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|e| Error::Codec(format!("cannot encode the value as JSON: {e}")))
}

fn from_json<T: DeserializeOwned>(namespace: &str, key: &str, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Codec(format!("{namespace} {key} does not hold the expected JSON value: {e}")))
}

/// One namespace of state, for a plain client. See [`Client::state`](crate::Client::state).
///
/// ```no_run
/// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
/// let config = client.state("shared/config");
/// config.put("greeting", &"hello").await?;
/// let greeting: Option<String> = config.get("greeting").await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct State {
    conn: Connection,
    namespace: String,
    /// What every write of this handle carries, if it is fenced.
    fence: Option<Fence>,
}

impl State {
    pub(crate) fn new(conn: Connection, namespace: &str) -> Self {
        Self { conn, namespace: namespace.to_owned(), fence: None }
    }

    /// A handle on the same namespace whose writes ([`State::put`],
    /// [`State::compare_and_set`], [`State::delete`]) apply only while `fence`'s grant holds
    /// its lease. Once the lease is lost (run out, released, taken by another holder) they
    /// are refused with [`Error::Refused`] `FailedPrecondition`, naming the lease and why, and
    /// change nothing. Reads are not fenced.
    ///
    /// ```no_run
    /// # async fn demo(client: weft_agent::Client, grant: weft_agent::Grant) -> Result<(), weft_agent::Error> {
    /// let intents = client.state("shared/scaler").fenced(grant.fence());
    /// match intents.put("worker-3", &"starting").await {
    ///     Ok(_) => {} // still the active one
    ///     Err(weft_agent::Error::Refused { code: tonic::Code::FailedPrecondition, message }) => {
    ///         eprintln!("lost the lease: {message}");
    ///     }
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn fenced(&self, fence: Fence) -> State {
        State { fence: Some(fence), ..self.clone() }
    }

    fn pb_fence(&self) -> Option<pb::Fence> {
        self.fence.as_ref().map(Fence::to_pb)
    }

    fn grpc(channel: Channel) -> StateClient<Channel> {
        StateClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub(crate) async fn get_raw(&self, key: &str) -> Result<Option<pb::KeyValue>, Error> {
        let attempt = self.conn.options().attempt_timeout;
        self.conn
            .run(true, |channel| {
                let req =
                    pb::GetRequest { namespace: self.namespace.clone(), key: key.to_owned(), consistency: 0 };
                async move {
                    let mut request = tonic::Request::new(req);
                    request.set_timeout(attempt);
                    Ok(Self::grpc(channel).get(request).await?.into_inner().entry)
                }
            })
            .await
    }

    /// The value of `key`, if any (a linearizable read).
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        Ok(self.get_versioned(key).await?.map(|(v, _)| v))
    }

    /// The value of `key` and its version (for [`State::compare_and_set`]).
    pub async fn get_versioned<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(T, u64)>, Error> {
        match self.get_raw(key).await? {
            None => Ok(None),
            Some(kv) => Ok(Some((from_json(&self.namespace, key, &kv.value)?, kv.version))),
        }
    }

    /// Writes `key`; its new version.
    pub async fn put<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<u64, Error> {
        let value = to_json(value)?;
        let attempt = self.conn.options().attempt_timeout;
        self.conn
            .run(false, |channel| {
                let req = pb::PutRequest {
                    namespace: self.namespace.clone(),
                    key: key.to_owned(),
                    value: value.clone(),
                    ttl_ms: None,
                    if_absent: false,
                    fence: self.pb_fence(),
                };
                async move {
                    let mut request = tonic::Request::new(req);
                    request.set_timeout(attempt);
                    Ok(Self::grpc(channel).put(request).await?.into_inner().version)
                }
            })
            .await
    }

    /// Writes `key` only if it is at `expected_version` (0: only if absent); its new version.
    /// A mismatch is [`Error::Refused`] with `FailedPrecondition`.
    pub async fn compare_and_set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        expected_version: u64,
    ) -> Result<u64, Error> {
        let value = to_json(value)?;
        let attempt = self.conn.options().attempt_timeout;
        self.conn
            .run(false, |channel| {
                let req = pb::CompareAndSetRequest {
                    namespace: self.namespace.clone(),
                    key: key.to_owned(),
                    expected_version,
                    value: value.clone(),
                    ttl_ms: None,
                    fence: self.pb_fence(),
                };
                async move {
                    let mut request = tonic::Request::new(req);
                    request.set_timeout(attempt);
                    Ok(Self::grpc(channel).compare_and_set(request).await?.into_inner().version)
                }
            })
            .await
    }

    /// Every key that starts with `prefix`, in order, with its value and version: all pages,
    /// each a linearizable read (a key written between two pages may or may not be seen).
    /// More than [`MAX_LIST_KEYS`] keys: [`Error::Usage`], asking for a narrower prefix.
    ///
    /// ```no_run
    /// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
    /// let intents: Vec<(String, String, u64)> = client.state("shared/scaler").list("intent/").await?;
    /// for (key, intent, version) in intents {
    ///     println!("{key} = {intent} (version {version})");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn list<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T, u64)>, Error> {
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let req = pb::ListRequest {
                namespace: self.namespace.clone(),
                prefix: prefix.to_owned(),
                page_token: page_token.clone(),
                limit: 0,
                consistency: pb::Consistency::Linearizable as i32,
            };
            let page = self
                .conn
                .call(true, &req, |channel, request| async move {
                    Ok(Self::grpc(channel).list(request).await?.into_inner())
                })
                .await?;
            if out.len() + page.entries.len() > MAX_LIST_KEYS {
                return Err(Error::Usage(format!(
                    "more than {MAX_LIST_KEYS} keys of {} start with '{prefix}' (MAX_LIST_KEYS); list a narrower prefix",
                    self.namespace
                )));
            }
            for kv in page.entries {
                let value = from_json(&self.namespace, &kv.key, &kv.value)?;
                out.push((kv.key, value, kv.version));
            }
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            page_token = page.next_page_token;
        }
    }

    /// Removes `key`; whether it existed.
    pub async fn delete(&self, key: &str) -> Result<bool, Error> {
        let attempt = self.conn.options().attempt_timeout;
        self.conn
            .run(false, |channel| {
                let req = pb::DeleteRequest {
                    namespace: self.namespace.clone(),
                    key: key.to_owned(),
                    expected_version: None,
                    fence: self.pb_fence(),
                };
                async move {
                    let mut request = tonic::Request::new(req);
                    request.set_timeout(attempt);
                    Ok(Self::grpc(channel).delete(request).await?.into_inner().deleted)
                }
            })
            .await
    }
}

/// A buffered write: a value, or a delete.
#[derive(Debug, Clone)]
struct Write {
    value: Option<Vec<u8>>,
    ttl_ms: Option<u64>,
}

/// A namespace and key.
type Key = (String, String);

/// What a handler read and wrote, applied with its result; shared by its context and
/// scopes.
pub(crate) type SharedBuffer = Arc<Mutex<Buffer>>;

/// What a handler read and wrote, applied with its result.
#[derive(Debug, Default)]
pub(crate) struct Buffer {
    /// Version (0: absent) and bytes of every key read, as first read.
    reads: HashMap<Key, (u64, Option<Vec<u8>>)>,
    writes: BTreeMap<Key, Write>,
    pub(crate) calls: Vec<pb::CreateExecutionRequest>,
    /// Stream appends, in order (consecutive ones to one stream as one effect).
    pub(crate) appends: Vec<pb::AppendEffect>,
    pub(crate) acks: Vec<pb::AckEffect>,
    /// Leases whose grants must still hold when the result is applied.
    pub(crate) fences: Vec<pb::Fence>,
    /// The deliveries acked with the result: their listeners must live until it is applied.
    pub(crate) held: Vec<crate::streams::Delivery>,
}

impl Buffer {
    /// The effects to send with a successful result, and the deliveries they ack.
    pub(crate) fn into_effects(mut self) -> (Vec<pb::Effect>, Vec<crate::streams::Delivery>) {
        let held = std::mem::take(&mut self.held);
        (self.effects(), held)
    }

    fn effects(self) -> Vec<pb::Effect> {
        let mut effects: Vec<pb::Effect> = self
            .writes
            .into_iter()
            .map(|((namespace, key), w)| {
                let expected_version = self.reads.get(&(namespace.clone(), key.clone())).map(|(v, _)| *v);
                pb::Effect {
                    kind: Some(pb::effect::Kind::State(pb::StateEffect {
                        namespace,
                        key,
                        value: w.value,
                        ttl_ms: w.ttl_ms,
                        expected_version,
                    })),
                }
            })
            .collect();
        effects.extend(self.calls.into_iter().map(|c| pb::Effect { kind: Some(pb::effect::Kind::Call(c)) }));
        effects
            .extend(self.appends.into_iter().map(|a| pb::Effect { kind: Some(pb::effect::Kind::Append(a)) }));
        effects.extend(self.acks.into_iter().map(|a| pb::Effect { kind: Some(pb::effect::Kind::Ack(a)) }));
        effects
            .extend(self.fences.into_iter().map(|f| pb::Effect { kind: Some(pb::effect::Kind::Fence(f)) }));
        effects
    }

    /// Buffers an item to append to `stream`.
    pub(crate) fn append(&mut self, stream: &str, item: pb::NewItem) {
        match self.appends.last_mut() {
            Some(last) if last.stream == stream => last.items.push(item),
            _ => self.appends.push(pb::AppendEffect { stream: stream.to_owned(), items: vec![item] }),
        }
    }
}

/// One namespace of state inside a handler: reads see the handler's own writes; writes
/// are applied atomically with its result (see the module docs). From
/// [`Context::state`](crate::Context::state) or [`Context::shared`](crate::Context::shared).
///
/// ```no_run
/// # async fn increment(ctx: weft_agent::Context, by: u64) -> Result<u64, weft_agent::Fail> {
/// let state = ctx.state()?;
/// let count: u64 = state.get("count").await?.unwrap_or(0);
/// state.put("count", &(count + by))?;
/// Ok(count + by) // the put is applied with this result, exactly once
/// # }
/// ```
#[derive(Clone)]
pub struct Scope {
    buffer: SharedBuffer,
    /// Where reads the handler has not made before go.
    state: State,
}

impl Scope {
    pub(crate) fn new(buffer: SharedBuffer, state: State) -> Self {
        Self { buffer, state }
    }

    fn buffer(&self) -> MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The namespace's name.
    pub fn namespace(&self) -> &str {
        &self.state.namespace
    }

    /// The value of `key`: the handler's own write if it made one, else the fabric's (read
    /// once, linearizably, and remembered).
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        let id = (self.state.namespace.clone(), key.to_owned());
        let known = {
            let buffer = self.buffer();
            match buffer.writes.get(&id) {
                Some(w) => Some(w.value.clone()),
                None => buffer.reads.get(&id).map(|(_, bytes)| bytes.clone()),
            }
        };
        let bytes = match known {
            Some(bytes) => bytes,
            None => {
                let kv = self.state.get_raw(key).await?;
                let (version, bytes) = kv.map_or((0, None), |kv| (kv.version, Some(kv.value)));
                self.buffer().reads.entry(id).or_insert((version, bytes.clone()));
                bytes
            }
        };
        bytes.map(|b| from_json(&self.state.namespace, key, &b)).transpose()
    }

    /// The value of `key` and the version the fabric holds it at (0: absent), as
    /// [`Scope::get`] reads it; for [`Scope::compare_and_set`].
    pub async fn get_versioned<T: DeserializeOwned>(&self, key: &str) -> Result<(Option<T>, u64), Error> {
        let value = self.get(key).await?;
        let id = (self.state.namespace.clone(), key.to_owned());
        let version = self.buffer().reads.get(&id).map_or(0, |(v, _)| *v);
        Ok((value, version))
    }

    /// Writes `key` when the handler succeeds. If the handler read `key` first, the write
    /// is conditional on the version it read.
    pub fn put<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), Error> {
        self.write(key, Some(to_json(value)?), None)
    }

    /// Writes `key` when the handler succeeds, only if the fabric still holds it at
    /// `expected_version` then (0: absent); otherwise nothing of the completion is applied
    /// and the execution runs again.
    pub fn compare_and_set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        expected_version: u64,
    ) -> Result<(), Error> {
        let value = to_json(value)?;
        let mut buffer = self.buffer();
        let id = (self.state.namespace.clone(), key.to_owned());
        match buffer.reads.get_mut(&id) {
            Some((version, _)) => *version = expected_version,
            None => {
                buffer.reads.insert(id.clone(), (expected_version, None));
            }
        }
        buffer.writes.insert(id, Write { value: Some(value), ttl_ms: None });
        Ok(())
    }

    /// Writes `key` with a time to live when the handler succeeds.
    pub fn put_with_ttl<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: std::time::Duration,
    ) -> Result<(), Error> {
        self.write(key, Some(to_json(value)?), Some(ttl.as_millis().max(1) as u64))
    }

    /// Removes `key` when the handler succeeds.
    pub fn delete(&self, key: &str) -> Result<(), Error> {
        self.write(key, None, None)
    }

    fn write(&self, key: &str, value: Option<Vec<u8>>, ttl_ms: Option<u64>) -> Result<(), Error> {
        if key.is_empty() {
            return Err(Error::Usage("a state key must not be empty".into()));
        }
        self.buffer().writes.insert((self.state.namespace.clone(), key.to_owned()), Write { value, ttl_ms });
        Ok(())
    }
}

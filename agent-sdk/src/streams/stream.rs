//! [`Stream`]: a handle on one stream by name.

use serde::Serialize;
use serde::de::DeserializeOwned;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::streams_client::StreamsClient;

use super::append::{Append, Appended};
use super::config::{Config, CursorConfig};
use super::info::{CursorInfo, Info};
use super::item::{Item, NewItem};
use super::listener::Listen;
use super::producer::Producer;
use super::reference::StreamRef;
use crate::connection::{Channel, MAX_MESSAGE_BYTES};
use crate::{Client, Error};

/// The Streams service on `channel`, with the SDK's message limits.
pub(crate) fn grpc(channel: Channel) -> StreamsClient<Channel> {
    StreamsClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// A stream by name, on a client's fabric: create it, append to it, listen to it, look at it,
/// close and delete it. Cheap to clone; making one sends nothing. From
/// [`Client::stream`] (or [`Client::stream_from`] a [`StreamRef`]), or in a handler
/// [`Context::stream`](crate::Context::stream).
///
/// ```no_run
/// use futures::StreamExt;
/// use weft_agent::streams::Config;
/// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
/// let orders = client.stream("orders");
/// orders.create(Config::new().max_items(1_000_000)).await?;
/// orders.append(&"tea").await?;
/// let mut audit = orders.listener::<String>().cursor("audit").start().await?;
/// let first = audit.next().await.expect("an item")?;
/// first.ack().await?;
/// orders.close().await?; // listeners end once they have everything
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Stream {
    client: Client,
    name: String,
    uid: Option<u64>,
}

impl Stream {
    pub(crate) fn new(client: Client, name: &str, uid: Option<u64>) -> Self {
        Self { client, name: name.to_owned(), uid }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The uid it was opened with (from a [`StreamRef`]), if any: listeners then end with
    /// [`Error::StreamDeleted`] if the stream of that name is another one now.
    pub fn uid(&self) -> Option<u64> {
        self.uid
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Runs a request that is safe to send again (a read, or a write with the same effect
    /// twice), failing over between nodes.
    async fn request<T, F, Fut>(&self, op: F) -> Result<T, Error>
    where
        F: Fn(StreamsClient<Channel>, std::time::Duration) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let attempt = self.client.conn.options().attempt_timeout;
        self.client.conn.run(true, |channel| op(grpc(channel), attempt)).await
    }

    /// Creates the stream; finding one of that name with the same settings is not an error
    /// (with other settings it is, `AlreadyExists`).
    ///
    /// ```no_run
    /// use weft_agent::streams::{Config, Kind};
    /// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
    /// let jobs = client.stream("jobs").create(Config::new().kind(Kind::Workqueue)).await?;
    /// println!("stream {} (uid {})", jobs.name, jobs.uid);
    /// # Ok(()) }
    /// ```
    pub async fn create(&self, config: Config) -> Result<Info, Error> {
        let req = config.to_request(&self.name)?;
        let info = self
            .request(|mut grpc, attempt| {
                let mut request = tonic::Request::new(req.clone());
                request.set_timeout(attempt);
                async move { Ok(grpc.create(request).await?.into_inner()) }
            })
            .await?;
        Ok(Info::from_pb(info))
    }

    /// The stream as the fabric has it now (a linearizable read).
    pub async fn info(&self) -> Result<Info, Error> {
        let req = pb::StreamInfoRequest { name: self.name.clone(), consistency: 0 };
        let info = self
            .request(|mut grpc, attempt| {
                let mut request = tonic::Request::new(req.clone());
                request.set_timeout(attempt);
                async move { Ok(grpc.info(request).await?.into_inner()) }
            })
            .await
            .map_err(|e| self.gone(e))?;
        self.check_uid(info.uid)?;
        Ok(Info::from_pb(info))
    }

    /// A NOT_FOUND for a handle opened from a reference: the referenced stream is gone.
    fn gone(&self, e: Error) -> Error {
        match e {
            Error::Refused { code: tonic::Code::NotFound, message } if self.uid.is_some() => {
                Error::StreamDeleted { stream: self.name.clone(), message }
            }
            other => other,
        }
    }

    fn check_uid(&self, uid: u64) -> Result<(), Error> {
        match self.uid {
            Some(expected) if expected != uid => Err(Error::StreamDeleted {
                stream: self.name.clone(),
                message: format!(
                    "the stream was deleted; a stream of that name now is another one (uid {uid}, not {expected})"
                ),
            }),
            _ => Ok(()),
        }
    }

    /// A reference to the stream, to hand to another agent (its uid is read from the
    /// fabric unless the handle was opened from one).
    pub async fn reference(&self) -> Result<StreamRef, Error> {
        match self.uid {
            Some(uid) => Ok(StreamRef { name: self.name.clone(), uid }),
            None => Ok(self.info().await?.reference()),
        }
    }

    /// Closes the stream: appends are refused from now on; listeners get what is left, then
    /// their end. Closing again (the same way) is not an error.
    pub async fn close(&self) -> Result<Info, Error> {
        self.close_with(String::new()).await
    }

    /// Closes the stream with an error: listeners get what is left, then
    /// [`Error::StreamFailed`] with `error`.
    ///
    /// ```no_run
    /// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
    /// client.stream("prices").close_with_error("the feed went away").await?;
    /// # Ok(()) }
    /// ```
    pub async fn close_with_error(&self, error: &str) -> Result<Info, Error> {
        if error.is_empty() {
            return Err(Error::Usage("a close error must not be empty (use close() to close ok)".into()));
        }
        self.close_with(error.to_owned()).await
    }

    async fn close_with(&self, error: String) -> Result<Info, Error> {
        let req = pb::CloseStreamRequest { name: self.name.clone(), error };
        let info = self
            .request(|mut grpc, attempt| {
                let mut request = tonic::Request::new(req.clone());
                request.set_timeout(attempt);
                async move { Ok(grpc.close(request).await?.into_inner()) }
            })
            .await?;
        Ok(Info::from_pb(info))
    }

    /// Deletes the stream with its items and cursors; live listeners end with
    /// [`Error::StreamDeleted`], a generator still running is cancelled. Whether it existed
    /// (after a retry, a delete that went through at the first try reads as `false`).
    pub async fn delete(&self) -> Result<bool, Error> {
        let req = pb::DeleteStreamRequest { name: self.name.clone() };
        self.request(|mut grpc, attempt| {
            let mut request = tonic::Request::new(req.clone());
            request.set_timeout(attempt);
            async move { Ok(grpc.delete(request).await?.into_inner().existed) }
        })
        .await
    }

    /// Appends one item (a `&value`, or a [`NewItem`] with key and headers), encoded with the
    /// client's codec; its seq. Not sent again after a failure whose outcome is unknown (that
    /// could append it twice): see [`Stream::batch`] with a message id, or
    /// [`Stream::producer`], for appends that must happen once.
    ///
    /// ```no_run
    /// use weft_agent::streams::NewItem;
    /// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
    /// let prices = client.stream("prices");
    /// let appended = prices.append(NewItem::new(&101.5f64).key("prices.eur.usd")).await?;
    /// println!("seq {}", appended.first_seq);
    /// # Ok(()) }
    /// ```
    pub async fn append<'a, T: Serialize + ?Sized + 'a>(
        &self,
        item: impl Into<NewItem<'a, T>>,
    ) -> Result<Appended, Error> {
        self.batch().item(item).send().await
    }

    /// An append with options: several items at once (atomically), expected last seq,
    /// message id. See [`Append`](super::Append).
    pub fn batch(&self) -> Append<'_> {
        Append::new(self)
    }

    /// An exactly-once producer named `id` in its `epoch`; see [`Producer`].
    pub fn producer(&self, id: &str, epoch: u64) -> Producer {
        Producer::new(self.clone(), id, epoch)
    }

    /// Listens to the stream: on a cursor, or as a plain reader; see
    /// [`Listen`](super::Listen).
    ///
    /// ```no_run
    /// use futures::StreamExt;
    /// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
    /// let mut ticks = client.stream("ticks").listener::<u64>().start().await?; // every item, no acks
    /// while let Some(tick) = ticks.next().await {
    ///     println!("tick {}", tick?.value);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn listener<T: DeserializeOwned + Send + 'static>(&self) -> Listen<T> {
        Listen::new(self.clone())
    }

    /// Up to `limit` stored items from `from_seq` on (0: the first stored), decoded: a page
    /// of history. Continue from the last one's seq + 1. `limit` is at most the fabric's page
    /// size (`max_list_page`, 1000 by default; more is refused, naming it).
    ///
    /// ```no_run
    /// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
    /// let first: Vec<weft_agent::streams::Item<String>> = client.stream("orders").read(0, 10).await?;
    /// # Ok(()) }
    /// ```
    pub async fn read<T: DeserializeOwned>(&self, from_seq: u64, limit: u32) -> Result<Vec<Item<T>>, Error> {
        if limit == 0 {
            return Err(Error::Usage("a read takes at least 1 item".into()));
        }
        let req = pb::ReadRequest {
            stream: self.name.clone(),
            from_seq,
            limit,
            filter: String::new(),
            consistency: 0,
        };
        let page = self
            .request(|mut grpc, attempt| {
                let mut request = tonic::Request::new(req.clone());
                request.set_timeout(attempt);
                async move { Ok(grpc.read(request).await?.into_inner()) }
            })
            .await
            .map_err(|e| self.gone(e))?;
        page.items.into_iter().map(|i| Item::decode(&self.name, i, 1, None)).collect()
    }

    /// Creates cursor `name` with `config` (finding one with the same settings is not an
    /// error). Listeners create their cursor themselves; this is for a cursor that must
    /// exist (and keep its place) before anyone listens.
    ///
    /// ```no_run
    /// use weft_agent::streams::{CursorConfig, Deliver};
    /// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
    /// client.stream("orders").create_cursor("billing", CursorConfig::new().deliver(Deliver::New)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn create_cursor(&self, name: &str, config: CursorConfig) -> Result<CursorInfo, Error> {
        let req = pb::CreateCursorRequest {
            stream: self.name.clone(),
            name: name.to_owned(),
            config: Some(config.to_pb()),
        };
        let info = self
            .request(|mut grpc, attempt| {
                let mut request = tonic::Request::new(req.clone());
                request.set_timeout(attempt);
                async move { Ok(grpc.create_cursor(request).await?.into_inner()) }
            })
            .await?;
        Ok(CursorInfo::from_pb(info))
    }

    /// Cursor `name` as the fabric has it now.
    pub async fn cursor(&self, name: &str) -> Result<CursorInfo, Error> {
        let req = pb::CursorInfoRequest { stream: self.name.clone(), name: name.to_owned(), consistency: 0 };
        let info = self
            .request(|mut grpc, attempt| {
                let mut request = tonic::Request::new(req.clone());
                request.set_timeout(attempt);
                async move { Ok(grpc.cursor_info(request).await?.into_inner()) }
            })
            .await?;
        Ok(CursorInfo::from_pb(info))
    }

    /// Deletes cursor `name`; its listeners end with [`Error::StreamDeleted`]. Whether it
    /// existed.
    pub async fn delete_cursor(&self, name: &str) -> Result<bool, Error> {
        let req = pb::DeleteCursorRequest { stream: self.name.clone(), name: name.to_owned() };
        self.request(|mut grpc, attempt| {
            let mut request = tonic::Request::new(req.clone());
            request.set_timeout(attempt);
            async move { Ok(grpc.delete_cursor(request).await?.into_inner().existed) }
        })
        .await
    }
}

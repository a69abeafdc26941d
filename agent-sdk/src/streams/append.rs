//! [`Append`]: one item or an atomic batch, with the options of an append.

use serde::Serialize;
use weft_proto::fabric::v1 as pb;

use super::item::NewItem;
use super::stream::{Stream, grpc};
use crate::Error;

/// What an append was given: the seqs of its items, first to last (a batch's are
/// contiguous).
///
/// ```no_run
/// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
/// let appended = client.stream("orders").batch().items(&["a", "b", "c"]).send().await?;
/// assert_eq!(appended.last_seq - appended.first_seq, 2);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The first item's seq.
    pub first_seq: u64,
    /// The last item's seq.
    pub last_seq: u64,
    /// The append had been applied before (the same message id within the dedup window, or
    /// a producer's sequence sent again): nothing was appended now, and the seqs are the
    /// first append's — or 0, when the fabric no longer knows them (an older producer
    /// sequence).
    pub duplicate: bool,
}

impl Appended {
    pub(crate) fn from_pb(r: pb::AppendResponse) -> Self {
        Self { first_seq: r.first_seq, last_seq: r.last_seq, duplicate: r.duplicate }
    }
}

/// An append being prepared: several items (appended atomically, with contiguous seqs), keys
/// and headers, optimistic concurrency, deduplication. From [`Stream::batch`].
///
/// An append whose outcome is unknown (the node died while it committed) is sent again only
/// when it carries a message id: the fabric then recognises the repeat. Without one the
/// error is [`Error::Unknown`]; use a message id, or a [`Producer`](super::Producer), for
/// appends that must happen exactly once across failures.
///
/// ```no_run
/// use weft_agent::streams::NewItem;
/// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
/// let orders = client.stream("orders");
/// let info = orders.info().await?;
/// let appended = orders
///     .batch()
///     .item(NewItem::new(&"order 1").key("orders.eu").header("source", "web"))
///     .item(&"order 2")
///     .expected_last_seq(info.last_seq) // only if nobody appended since
///     .msg_id("import-2024-07-01")      // once, however often it is sent
///     .send()
///     .await?;
/// println!("seqs {}..={}", appended.first_seq, appended.last_seq);
/// # Ok(()) }
/// ```
#[must_use = "an append does nothing until `send()`"]
#[derive(Debug)]
pub struct Append<'s> {
    stream: &'s Stream,
    req: pb::AppendRequest,
    error: Option<Error>,
}

impl<'s> Append<'s> {
    pub(crate) fn new(stream: &'s Stream) -> Self {
        Self {
            stream,
            req: pb::AppendRequest { stream: stream.name().to_owned(), ..Default::default() },
            error: None,
        }
    }

    /// Adds an item (a `&value`, or a [`NewItem`] with a key and headers), encoded with the
    /// client's codec.
    pub fn item<'a, T: Serialize + ?Sized + 'a>(mut self, item: impl Into<NewItem<'a, T>>) -> Self {
        match item.into().encode(self.stream.client().codec) {
            Ok(item) => self.req.items.push(item),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self
    }

    /// Adds several items.
    pub fn items<'a, T, I>(mut self, items: I) -> Self
    where
        T: Serialize + ?Sized + 'a,
        I: IntoIterator,
        I::Item: Into<NewItem<'a, T>>,
    {
        for item in items {
            self = self.item(item);
        }
        self
    }

    /// Appends only if the stream's last seq is `seq` then (0: empty); otherwise it is
    /// refused (`FailedPrecondition`) and nothing is appended.
    pub fn expected_last_seq(mut self, seq: u64) -> Self {
        self.req.expected_last_seq = Some(seq);
        self
    }

    /// Deduplicates the append: sending it again with the same id within the stream's dedup
    /// window appends nothing and answers with the first append's seqs (`duplicate`). The
    /// SDK then retries it after failures whose outcome is unknown.
    pub fn msg_id(mut self, id: &str) -> Self {
        self.req.msg_id = id.to_owned();
        self
    }

    /// Appends the items.
    pub async fn send(self) -> Result<Appended, Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.req.items.is_empty() {
            return Err(Error::Usage("an append needs at least one item".into()));
        }
        let idempotent = !self.req.msg_id.is_empty();
        send(self.stream, self.req, idempotent).await
    }
}

/// Sends an append, failing over between nodes; `idempotent`: whether one of unknown outcome
/// may be sent again.
pub(crate) async fn send(
    stream: &Stream,
    req: pb::AppendRequest,
    idempotent: bool,
) -> Result<Appended, Error> {
    let conn = &stream.client().conn;
    let attempt = conn.options().attempt_timeout;
    conn.run(idempotent, |channel| {
        let req = req.clone();
        async move {
            let mut request = tonic::Request::new(req);
            request.set_timeout(attempt);
            Ok(Appended::from_pb(grpc(channel).append(request).await?.into_inner()))
        }
    })
    .await
}

//! What the streams phases need of a system under test, so one driver measures Weft and NATS
//! JetStream alike: streams to create and delete, producers connected to the node that leads
//! a stream, listeners on a node that does not, and the processes behind it all.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

/// How a listener consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ListenKind {
    /// Weft's plain reader (credit back per item); JetStream's ordered push consumer.
    Reader,
    /// A durable cursor with explicit acks, one ack per item; JetStream's durable pull
    /// consumer with explicit acks.
    Cursor,
}

impl ListenKind {
    pub fn name(self) -> &'static str {
        match self {
            ListenKind::Reader => "plain reader",
            ListenKind::Cursor => "durable cursor, explicit acks",
        }
    }
}

/// One connection's way to append; producers that share a connection share one of these.
#[tonic::async_trait]
pub trait Appender: Send + Sync {
    /// Appends `payloads` to `stream` (one payload: a single-item append; more: a batch) and
    /// returns once every item is acknowledged as stored.
    async fn append(&self, stream: &str, payloads: &[Bytes]) -> anyhow::Result<()>;
}

/// A live listener.
#[tonic::async_trait]
pub trait Listener: Send {
    /// The next item's payload (credit given back or acked as it is taken); `None` when the
    /// listener ended.
    async fn next(&mut self) -> anyhow::Result<Option<Bytes>>;
}

/// A process of the system under test, for RSS and disk figures.
#[derive(Debug, Clone)]
pub struct Process {
    pub name: String,
    /// Leads the stream measured (for Weft: the Raft leader).
    pub leader: bool,
    pub pid: Option<u32>,
    pub data_dir: PathBuf,
}

/// A running 3-node system: a Weft cluster or a NATS JetStream cluster.
#[tonic::async_trait]
pub trait Target: Send + Sync {
    /// Creates an empty stream with 3 replicas.
    async fn create_stream(&self, name: &str) -> anyhow::Result<()>;
    /// Deletes a stream and its items.
    async fn delete_stream(&self, name: &str) -> anyhow::Result<()>;
    /// `connections` connections to the node that leads `stream`.
    async fn appenders(&self, stream: &str, connections: usize) -> anyhow::Result<Vec<Arc<dyn Appender>>>;
    /// A listener on a node that does not lead `stream`, from the next item appended on;
    /// with it, where it runs, for the report.
    async fn listen(&self, stream: &str, kind: ListenKind) -> anyhow::Result<(Box<dyn Listener>, String)>;
    /// Items `stream` holds, as its leader knows.
    async fn items(&self, stream: &str) -> anyhow::Result<u64>;
    /// Waits until every replica has stored all of `stream` (and background work it causes,
    /// such as snapshots, has settled), within a bound; says what it saw when not.
    async fn settle(&self, stream: &str) -> anyhow::Result<()>;
    /// The processes, with which one leads `stream`.
    async fn processes(&self, stream: &str) -> anyhow::Result<Vec<Process>>;
    /// Prints what the processes logged that looks like trouble.
    fn report_log_problems(&self) {}
}

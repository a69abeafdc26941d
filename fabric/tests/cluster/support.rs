//! Test support: clusters of real nodes on 127.0.0.1 ephemeral ports, in-process or as
//! separate `weft` processes (both from `weft_fabric::testing`), and clients that talk to them
//! over gRPC.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};
use weft_fabric::Config;
use weft_fabric::testing::LocalCluster;
pub use weft_fabric::testing::{
    ClusterOptions, Membership, NodeCommand, NodeProcess, ProcessCluster, cluster_status, wait_for_leader,
    wait_for_status,
};
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::cluster_client::ClusterClient;
use weft_proto::fabric::v1::state_client::StateClient;
use weft_proto::wire::Outcome;

/// Generous bound for anything a healthy cluster does "soon": tests run in parallel on 2 cores.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,cluster=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Ports for `n` nodes: bound now, so no other test can take them before the nodes start.
pub async fn listeners(n: usize) -> Vec<TcpListener> {
    weft_fabric::testing::listeners(n).await.expect("bind ephemeral ports")
}

/// An in-process cluster with its data dir. Node `i` (1-based) lives in `nodes[i - 1]`
/// while it runs (the fields of [`LocalCluster`] are reached through `Deref`).
pub struct Cluster {
    /// Holds the nodes' data dirs until the cluster is dropped.
    pub _dir: tempfile::TempDir,
    inner: LocalCluster,
}

impl std::ops::Deref for Cluster {
    type Target = LocalCluster;
    fn deref(&self) -> &LocalCluster {
        &self.inner
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut LocalCluster {
        &mut self.inner
    }
}

impl Cluster {
    /// Starts `n` nodes with the static membership of all of them; `tweak` adjusts each config.
    pub async fn start(n: usize, tweak: impl Fn(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let inner = LocalCluster::start(dir.path(), n, tweak).await.expect("nodes start");
        let cluster = Self { _dir: dir, inner };
        cluster.wait_for_leader().await;
        cluster
    }

    /// Waits until every running node agrees on one leader, and returns its id.
    pub async fn wait_for_leader(&self) -> u64 {
        match self.inner.wait_for_leader(PATIENCE).await {
            Some(leader) => leader,
            None => {
                let leaders: Vec<Option<u64>> =
                    self.nodes.iter().flatten().map(|n| n.raft().metrics().borrow().current_leader).collect();
                panic!("no agreed leader within {PATIENCE:?}: {leaders:?}")
            }
        }
    }

    /// Starts node `id` again on its data dir and address.
    pub async fn restart(&mut self, id: u64) {
        self.inner.restart(id).await.expect("node restarts");
    }

    /// Waits until node `id` has applied at least `index`.
    pub async fn wait_applied(&self, id: u64, index: u64) {
        let mut metrics = self.node(id).raft().metrics();
        let ok = tokio::time::timeout(PATIENCE, async {
            while metrics.borrow_and_update().last_applied.map_or(0, |l| l.index) < index {
                let _ = metrics.changed().await;
            }
        })
        .await;
        assert!(ok.is_ok(), "node {id} did not apply index {index} within {PATIENCE:?}");
    }

    /// Waits until node `id` has applied everything the current leader has in its log.
    pub async fn wait_caught_up(&self, id: u64) {
        let leader = self.wait_for_leader().await;
        let last = self.node(leader).raft().metrics().borrow().last_log_index.unwrap_or(0);
        self.wait_applied(id, last).await;
    }

    pub async fn shutdown(self) {
        self.inner.shutdown().await;
    }
}

pub async fn client(addr: &str) -> StateClient<Channel> {
    StateClient::new(channel(addr).await)
}

pub async fn cluster_client(addr: &str) -> ClusterClient<Channel> {
    ClusterClient::new(channel(addr).await)
}

pub async fn channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(20))
        .connect_lazy()
}

pub fn put_req(ns: &str, key: &str, value: &str) -> pb::PutRequest {
    pb::PutRequest {
        namespace: ns.into(),
        key: key.into(),
        value: value.as_bytes().to_vec(),
        ttl_ms: None,
        if_absent: false,
        fence: None,
    }
}

pub fn get_req(ns: &str, key: &str) -> pb::GetRequest {
    pb::GetRequest {
        namespace: ns.into(),
        key: key.into(),
        consistency: pb::Consistency::Linearizable as i32,
    }
}

pub fn stale_get_req(ns: &str, key: &str) -> pb::GetRequest {
    pb::GetRequest { namespace: ns.into(), key: key.into(), consistency: pb::Consistency::Stale as i32 }
}

/// The value of a key by linearizable read, as a string.
pub async fn get(addr: &str, ns: &str, key: &str) -> Option<String> {
    let reply = client(addr).await.get(get_req(ns, key)).await.expect("linearizable get").into_inner();
    reply.entry.map(|kv| String::from_utf8(kv.value).expect("utf8 value"))
}

pub use weft_proto::wire::is_not_applied;

/// A put that retries only what was certainly not applied. `Ok(None)` when the outcome is
/// unknown.
pub async fn put_retrying(addr: &str, ns: &str, key: &str, value: &str) -> anyhow::Result<Option<u64>> {
    let deadline = Instant::now() + PATIENCE;
    let mut c = client(addr).await;
    loop {
        match c.put(put_req(ns, key, value)).await {
            Ok(r) => return Ok(Some(r.into_inner().version)),
            Err(s) if Outcome::of(&s) == Outcome::NotApplied && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::DeadlineExceeded => {
                return Ok(None);
            }
            Err(s) => bail!("put {key} failed: {s:?}"),
        }
    }
}

/// Most time one `weft` client process may take.
pub const CLI_PATIENCE: Duration = Duration::from_secs(40);

/// `weft ARGS` against `endpoint`, as a child process (so nodes in this process keep running
/// while it does), without the test's `RUST_LOG`.
fn weft_command(endpoint: &str, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(weft_bin());
    command.args(args).env("WEFT_ENDPOINT", endpoint).env_remove("RUST_LOG").kill_on_drop(true);
    command
}

/// Runs `weft ARGS` against `endpoint`: (exit code, stdout, stderr).
pub async fn weft(endpoint: &str, args: &[&str]) -> (i32, String, String) {
    weft_with_stdin(endpoint, args, None).await
}

/// Runs `weft ARGS` against `endpoint` with `stdin` as its standard input (none: empty).
pub async fn weft_with_stdin(endpoint: &str, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use tokio::io::AsyncWriteExt as _;
    let mut command = weft_command(endpoint, args);
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("run weft");
    let mut input = child.stdin.take().expect("piped stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.expect("write weft's stdin");
    }
    drop(input);
    let out = tokio::time::timeout(CLI_PATIENCE, child.wait_with_output())
        .await
        .expect("weft finishes in time")
        .expect("run weft");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `weft ARGS --json` and parses its stdout: (exit code, JSON).
pub async fn weft_json(endpoint: &str, args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = weft(endpoint, &all).await;
    let v = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("{args:?} --json: not JSON ({e}): {out:?} {err}"));
    (code, v)
}

/// `weft ARGS` running in the background, its output read line by line as it comes.
pub struct WeftProcess {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl WeftProcess {
    pub fn spawn(endpoint: &str, args: &[&str]) -> Self {
        use tokio::io::AsyncBufReadExt as _;
        let mut command = weft_command(endpoint, args);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("run weft");
        let lines = tokio::io::BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        Self { child, lines }
    }

    /// The next line it prints (within [`CLI_PATIENCE`]); empty once it closed its stdout.
    pub async fn next_line(&mut self) -> String {
        let next = tokio::time::timeout(CLI_PATIENCE, self.lines.next_line()).await;
        next.expect("a line in time").expect("readable stdout").unwrap_or_default()
    }

    /// The next line, parsed as JSON.
    pub async fn next_json(&mut self) -> serde_json::Value {
        let line = self.next_line().await;
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"))
    }

    /// Sends it a signal (`INT`, `TERM`).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let sent = std::process::Command::new("kill").args([&format!("-{signal}"), &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -{signal} {pid}");
    }

    /// Waits for it to exit: (exit code, the lines it printed after those read, stderr).
    pub async fn finish(mut self) -> (i32, Vec<String>, String) {
        use tokio::io::AsyncReadExt as _;
        let mut rest = Vec::new();
        loop {
            let line = self.next_line().await;
            if line.is_empty() {
                break;
            }
            rest.push(line);
        }
        let status = tokio::time::timeout(CLI_PATIENCE, self.child.wait())
            .await
            .expect("weft exits in time")
            .expect("wait for weft");
        let mut err = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut err).await;
        }
        (status.code().unwrap_or(-1), rest, err)
    }
}

/// The built `weft` binary.
pub fn weft_bin() -> PathBuf {
    weft_fabric::testing::weft_binary().unwrap_or_else(|e| panic!("{e}"))
}

/// A free port of 127.0.0.1: bound and released. (Processes cannot inherit a bound socket here.)
pub fn free_port() -> u16 {
    weft_fabric::testing::free_ports(1).unwrap_or_else(|e| panic!("{e}"))[0]
}

/// `weft node ARGS` with `RUST_LOG=info`, its output appended to `log`; killed when dropped.
pub fn spawn_node(args: Vec<String>, log: PathBuf) -> NodeProcess {
    NodeCommand::node(weft_bin(), log)
        .args(args)
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `n` `weft node` processes with static membership, data and logs under `dir`, `RUST_LOG=info`;
/// `options` adds arguments and environment.
pub fn spawn_cluster(
    dir: &Path,
    n: usize,
    options: impl FnOnce(ClusterOptions) -> ClusterOptions,
) -> ProcessCluster {
    let options = options(ClusterOptions::new(weft_bin(), dir, n).env("RUST_LOG", "info"));
    ProcessCluster::start(options).unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until some node of `addrs` reports a leader, and returns the leader's id.
pub async fn wait_for_leader_at(addrs: &[String]) -> u64 {
    wait_for_leader(addrs, PATIENCE).await.unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until some node of `addrs` reports a leader other than `not`.
pub async fn wait_for_new_leader_at(addrs: &[String], not: u64) -> u64 {
    let status = wait_for_status(addrs, PATIENCE, "a new leader", |s| s.leader_id != 0 && s.leader_id != not)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    status.leader_id
}

/// Writers that put unique keys (`w<writer>-<n>`) into `ns` until stopped, one per address,
/// and remember which puts were acknowledged and when.
pub struct Writers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(String, Instant)>>>,
}

impl Writers {
    pub fn start(addrs: &[String], ns: &'static str) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = addrs
            .iter()
            .cloned()
            .enumerate()
            .map(|(w, addr)| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    let mut i = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let key = format!("w{w}-{i}");
                        i += 1;
                        // A writer whose node is gone sees unknown outcomes: it moves on.
                        match put_retrying(&addr, ns, &key, "v").await {
                            Ok(Some(_)) => acked.push((key, Instant::now())),
                            _ => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                    }
                    acked
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops the writers; returns every acknowledged key with the time it was acknowledged.
    pub async fn stop(self) -> Vec<(String, Instant)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut acked = Vec::new();
        for t in self.tasks {
            acked.extend(t.await.expect("writer task"));
        }
        acked
    }
}

/// A JSON payload.
pub fn json(s: &str) -> Option<pb::Payload> {
    Some(pb::Payload { codec: "json".into(), data: s.as_bytes().to_vec() })
}

/// The first message of a raw agent session serving every delegate of `agent`.
pub fn open_msg(agent: &str, capacity: u32) -> pb::AgentMessage {
    pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Open(pb::OpenSession {
            agents: vec![pb::AgentSpec {
                name: agent.into(),
                delegates: vec![],
                concurrent_instances: false,
            }],
            capacity,
            claims: vec![],
            lease_ms: 0,
            name: "raw-test".into(),
            only_claimed: false,
        })),
    }
}

/// A raw agent session: the sender of agent messages and the stream of fabric messages.
pub async fn listen(
    addr: &str,
    open: pb::AgentMessage,
) -> Result<(tokio::sync::mpsc::Sender<pb::AgentMessage>, tonic::Streaming<pb::FabricMessage>), tonic::Status>
{
    listen_as(addr, None, open).await
}

/// [`listen`] with `token` as its bearer token, if any.
pub async fn listen_as(
    addr: &str,
    token: Option<&str>,
    open: pb::AgentMessage,
) -> Result<(tokio::sync::mpsc::Sender<pb::AgentMessage>, tonic::Streaming<pb::FabricMessage>), tonic::Status>
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(open).await.expect("the channel is open");
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut request = tonic::Request::new(stream);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    }
    let mut client = weft_proto::fabric::v1::executions_client::ExecutionsClient::new(channel(addr).await);
    let inbound = client.listen(request).await?.into_inner();
    Ok((tx, inbound))
}

/// The next message a raw session receives (within `PATIENCE`).
pub async fn next_kind(inbound: &mut tonic::Streaming<pb::FabricMessage>) -> pb::fabric_message::Kind {
    tokio::time::timeout(PATIENCE, inbound.message())
        .await
        .expect("a message in time")
        .expect("stream ok")
        .expect("stream open")
        .kind
        .expect("a kind")
}

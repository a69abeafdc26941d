//! TLS on the node's port and mutual TLS between nodes: a cluster formed by gossip over TLS
//! serves the SDK and HTTP; clients without the cluster's CA, "nodes" of another CA and
//! non-node certificates are refused, and nothing they send reaches Raft; SDK clients and
//! workers without TLS settings are told the nodes require TLS; certificates changed on disk
//! are picked up, broken ones refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use weft_agent::{Agent, Client, Context, Tls, Worker};
use weft_fabric::tls::issue::{self, Kind};
use weft_fabric::{Config, Node};
use weft_proto::cluster::v1 as cpb;

use crate::support::*;

/// A CA and certificates under one directory (`NAME.pem`, `NAME.key`).
pub struct Certs {
    pub dir: PathBuf,
    ca: issue::Issued,
}

impl Certs {
    /// A new CA in `dir`, named after it.
    pub fn new(dir: &Path) -> Self {
        let name = format!("test CA {}", dir.file_name().unwrap().to_string_lossy());
        let ca = issue::ca(&name, 30).expect("a CA");
        issue::write(dir, "ca", &ca, false).expect("write the CA");
        Self { dir: dir.to_owned(), ca }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues a `kind` certificate `name` for 127.0.0.1 and localhost; its (cert, key) paths.
    pub fn issue(&self, kind: Kind, name: &str) -> (PathBuf, PathBuf) {
        let hosts = ["127.0.0.1".to_owned(), "localhost".to_owned()];
        let issued =
            issue::leaf(kind, &self.ca.cert_pem, &self.ca.key_pem, name, &hosts, 30).expect("a leaf");
        issue::write(&self.dir, name, &issued, true).expect("write the leaf")
    }

    /// `config` with TLS on: the CA and a new node certificate `name`.
    pub fn node_config(&self, config: Config, name: &str) -> Config {
        let (cert, key) = self.issue(Kind::Node, name);
        Config { tls_ca_file: Some(self.ca()), tls_cert_file: Some(cert), tls_key_file: Some(key), ..config }
    }

    /// SDK settings trusting this CA, presenting `identity` (a certificate name) if given.
    pub fn client(&self, identity: Option<&str>) -> Tls {
        let identity =
            identity.map(|n| (self.dir.join(format!("{n}.pem")), self.dir.join(format!("{n}.key"))));
        Tls::from_files(self.ca(), identity).expect("client TLS settings")
    }
}

/// A rustls client configuration trusting `ca`, presenting `identity` (cert, key) if given.
fn rustls_client(ca: &Path, identity: Option<(PathBuf, PathBuf)>) -> Arc<rustls::ClientConfig> {
    let pem = |p: &Path| std::fs::read(p).unwrap();
    let roots = weft_agent::tls::roots(&weft_agent::tls::parse_certs(&pem(ca), "ca").unwrap(), "ca").unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(weft_agent::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                weft_agent::tls::parse_certs(&pem(&cert), "cert").unwrap(),
                weft_agent::tls::parse_key(&pem(&key), "key").unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// An HTTP/1.1 GET over TLS trusting `ca` (a curl with `--cacert`): (status, body).
async fn https_get(addr: &str, ca: &Path, path: &str) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(rustls_client(ca, None))
        .connect(name, tcp)
        .await
        .expect("handshake");
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (code, body)
}

/// The DER of the certificate the node at `addr` presents to a new connection.
async fn presented_certificate(addr: &str, ca: &Path) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(rustls_client(ca, None))
        .connect(name, tcp)
        .await
        .expect("handshake");
    tls.get_ref().1.peer_certificates().expect("a server certificate")[0].to_vec()
}

fn file_der(path: &Path) -> Vec<u8> {
    weft_agent::tls::parse_certs(&std::fs::read(path).unwrap(), "cert").unwrap()[0].to_vec()
}

/// A gossip-mode config like the membership tests use, with TLS on.
fn gossip_tls_config(certs: &Certs, root: &Path, id: u64, addr: &str, seeds: &str) -> Config {
    let name: String =
        root.file_name().unwrap().to_string_lossy().chars().filter(char::is_ascii_alphanumeric).collect();
    let config = Config {
        node_id: id,
        cluster: format!("t{name}"),
        data_dir: root.join(format!("node-{id}")),
        listen: addr.into(),
        seeds: seeds.into(),
        bootstrap_expect: 3,
        gossip_preset: "test".into(),
        request_timeout_ms: 10_000,
        ..Config::default()
    };
    certs.node_config(config, &format!("n{id}"))
}

async fn wait_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {PATIENCE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_form_by_gossip_over_mutual_tls_and_serve_the_sdk_and_http() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&dir.path().join("certs"));
    let mut listeners = listeners(4).await.into_iter();
    let addrs: Vec<String> =
        listeners.as_slice().iter().map(|l| l.local_addr().unwrap().to_string()).collect();
    let key = weft_fabric::membership::keys::generate();
    tracing::info!("phase: three TLS nodes with a gossip key, told only of node 1, form a cluster by gossip");
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..3 {
        let config = Config {
            gossip_key_file: Some(crate::gossip_keys::write_keys(dir.path(), i as u64 + 1, &[&key])),
            ..gossip_tls_config(&certs, dir.path(), i as u64 + 1, &addrs[i], &addrs[0])
        };
        nodes.push(Node::start_on(config, listeners.next().unwrap()).await.expect("node starts"));
    }
    wait_for("three voters and one leader", async || {
        let leaders: Vec<_> = nodes.iter().map(|n| n.raft().metrics().borrow().current_leader).collect();
        let m = nodes[0].raft().metrics().borrow().membership_config.membership().voter_ids().count();
        (leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0]) && m == 3).then_some(())
    })
    .await;

    tracing::info!("phase: a write and a call through the SDK over TLS (a worker with a client certificate)");
    certs.issue(Kind::Client, "worker");
    let client = Client::builder(addrs[..3].to_vec()).tls(Some(certs.client(None))).build().unwrap();
    client.state("shared/tls").put("k", &"v".to_owned()).await.expect("put over TLS");
    let read: Option<String> = client.state("shared/tls").get("k").await.expect("get over TLS");
    assert_eq!(read.as_deref(), Some("v"));
    let agent = Agent::new("echo").delegate("say", |_: Context, s: String| async move { Ok::<_, String>(s) });
    let worker = Worker::builder(addrs[..3].to_vec())
        .agent(agent)
        .tls(Some(certs.client(Some("worker"))))
        .build()
        .unwrap();
    let stopper = worker.stopper();
    let running = tokio::spawn(worker.run());
    let answer: String =
        client.request("echo", "say").args("hello").wait_for_delegate().call().await.expect("call over TLS");
    assert_eq!(answer, "hello");

    tracing::info!("phase: HTTP over TLS: /readyz and /v1/cluster; plain HTTP is told TLS is required");
    let (code, body) = https_get(&addrs[1], &certs.ca(), "/readyz").await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = https_get(&addrs[2], &certs.ca(), "/v1/cluster").await;
    assert_eq!(code, 200, "{body}");
    let cluster: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(cluster["members"].as_array().map(Vec::len), Some(3), "{cluster}");
    let (code, body) = crate::writes::http_get(&addrs[0], "/readyz").await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("requires TLS"), "{body}");

    tracing::info!("phase: a node with a good certificate but another gossip key never joins");
    let wrong = weft_fabric::membership::keys::generate();
    let config = Config {
        gossip_key_file: Some(crate::gossip_keys::write_keys(dir.path(), 4, &[&wrong])),
        ..gossip_tls_config(&certs, dir.path(), 4, &addrs[3], &addrs[0])
    };
    let outsider = Node::start_on(config, listeners.next().unwrap()).await.expect("node 4 starts");
    let bad_mac =
        || nodes[0].membership().gossip.counters().dropped_bad_mac.load(std::sync::atomic::Ordering::Relaxed);
    wait_for("node 1 drops node 4's packets", async || (bad_mac() >= 3).then_some(())).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // 15 probe periods of the test preset
    for node in &nodes {
        assert!(
            !crate::gossip_keys::gossip_ids(node).contains(&4),
            "node {} sees node 4 in gossip",
            node.id()
        );
        assert!(
            !crate::gossip_keys::in_raft(node, 4),
            "node 4 got into node {}'s Raft membership",
            node.id()
        );
    }
    outsider.shutdown().await;

    stopper.stop();
    let _ = running.await;
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_the_clusters_ca_fail_and_say_why() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&dir.path().join("certs"));
    let other = Certs::new(&dir.path().join("other"));
    let listener = listeners(1).await.remove(0);
    let addr = listener.local_addr().unwrap().to_string();
    let config = certs.node_config(weft_fabric::testing::test_config(dir.path(), 1, &addr, ""), "n1");
    let node = Node::start_on(config, listener).await.expect("node starts");
    let quick = |b: weft_agent::ClientBuilder| b.retry_for(Duration::from_secs(2)).build().unwrap();

    tracing::info!("phase: the right CA works");
    quick(Client::builder([addr.clone()]).tls(Some(certs.client(None))))
        .state("shared/c")
        .put("k", &1u32)
        .await
        .expect("put with the cluster's CA");

    tracing::info!("phase: another CA: the node's certificate is refused, and the error says so");
    let e = quick(Client::builder([addr.clone()]).tls(Some(other.client(None))))
        .state("shared/c")
        .put("k", &2u32)
        .await
        .unwrap_err();
    assert!(matches!(e, weft_agent::Error::Tls(_)), "{e:?}");
    assert!(e.to_string().contains("not signed by the CA this client trusts"), "{e}");

    tracing::info!("phase: no TLS at all: the node says it requires TLS, to a read and to a write");
    // Under load hyper may report the connection as "operation was canceled" before it reads
    // the node's GOAWAY; the SDK then asks the node (weft_agent::tls::requires_tls).
    let e = quick(Client::builder([addr.clone()])).state("shared/c").get::<u32>("k").await.unwrap_err();
    assert!(matches!(e, weft_agent::Error::Tls(_)), "{e:?}");
    assert!(e.to_string().contains("the node requires TLS"), "{e}");
    let e = quick(Client::builder([addr.clone()])).state("shared/c").put("k", &3u32).await.unwrap_err();
    assert!(matches!(e, weft_agent::Error::Tls(_)), "{e:?}");
    assert!(e.to_string().contains("the node requires TLS"), "{e}");

    tracing::info!("phase: an https:// endpoint without TLS settings is refused before anything is sent");
    let e = Client::builder([format!("https://{addr}")]).build().unwrap_err();
    assert!(e.to_string().contains("no TLS settings"), "{e}");

    tracing::info!("phase: the value is the one the good client wrote");
    let c = quick(Client::builder([addr.clone()]).tls(Some(certs.client(None))));
    assert_eq!(c.state("shared/c").get::<u32>("k").await.unwrap(), Some(1));
    node.shutdown().await;
}

/// Asserts that `e` tells a client without TLS settings that the node requires TLS.
fn says_tls_is_required(e: &weft_agent::Error) {
    assert!(matches!(e, weft_agent::Error::Tls(_)), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("the node requires TLS") && text.contains("https://"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plain_sdk_clients_and_workers_are_told_the_nodes_require_tls() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&dir.path().join("certs"));
    let listeners = listeners(2).await;
    let addrs: Vec<String> = listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
    let members = weft_fabric::testing::members_of(&addrs);
    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let config = weft_fabric::testing::test_config(dir.path(), id, &addrs[i], &members);
        let config = certs.node_config(config, &format!("n{id}"));
        nodes.push(Node::start_on(config, listener).await.expect("node starts"));
    }
    let echo =
        || Agent::new("echo").delegate("say", |_: Context, s: String| async move { Ok::<_, String>(s) });

    tracing::info!("phase: a plain client of both nodes: each write and read is told TLS is required");
    let client = Client::builder(addrs.clone()).retry_for(Duration::from_secs(2)).build().unwrap();
    for i in 0..20u32 {
        says_tls_is_required(&client.state("shared/p").put("k", &i).await.unwrap_err());
        says_tls_is_required(&client.state("shared/p").get::<u32>("k").await.unwrap_err());
    }

    tracing::info!("phase: a plain worker of both nodes ends with that error, naming both");
    let worker = Worker::builder(addrs.clone()).agent(echo()).build().unwrap();
    let e = tokio::time::timeout(PATIENCE, worker.run()).await.expect("the worker gives up").unwrap_err();
    says_tls_is_required(&e);
    assert!(e.to_string().contains(&format!("every endpoint: {}, {}", addrs[0], addrs[1])), "{e}");
    let worker = Worker::builder([addrs[1].clone()]).agent(echo()).build().unwrap();
    let e = tokio::time::timeout(PATIENCE, worker.run()).await.expect("the worker gives up").unwrap_err();
    says_tls_is_required(&e);
    assert!(e.to_string().contains(&format!("(endpoint {})", addrs[1])), "{e}");

    tracing::info!("phase: a plain stream listener and demand watch of both nodes end with that error too");
    let e = tokio::time::timeout(PATIENCE, client.stream("plain").listener::<u32>().start())
        .await
        .expect("the listener gives up")
        .unwrap_err();
    says_tls_is_required(&e);
    assert!(e.to_string().contains(&format!("every endpoint: {}, {}", addrs[0], addrs[1])), "{e}");
    let e = tokio::time::timeout(PATIENCE, client.watch_demand(&[]).next())
        .await
        .expect("the demand watch gives up")
        .unwrap_err();
    says_tls_is_required(&e);
    assert!(e.to_string().contains(&format!("every endpoint: {}, {}", addrs[0], addrs[1])), "{e}");

    tracing::info!("phase: with the CA the same worker serves the nodes, and a client calls it");
    let worker = Worker::builder(addrs.clone()).agent(echo()).tls(Some(certs.client(None))).build().unwrap();
    let stopper = worker.stopper();
    let running = tokio::spawn(worker.run());
    let client = Client::builder(addrs.clone()).tls(Some(certs.client(None))).build().unwrap();
    let answer: String =
        client.request("echo", "say").args("over TLS").wait_for_delegate().call().await.expect("a call");
    assert_eq!(answer, "over TLS");
    stopper.stop();
    running.await.expect("the worker task").expect("the worker ran until stopped");
    for node in nodes {
        node.shutdown().await;
    }
}

/// A Raft append from a leader that does not exist, at a higher term, right after the
/// node's last entry: a node that read it would take it (and follow that "leader").
fn forged_append(node: &Node, cluster: &str) -> cpb::RaftPayload {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
    let m = node.raft().metrics().borrow().clone();
    assert_eq!(m.last_applied.map(|l| l.index), m.last_log_index, "a quiet follower: applied all it has");
    let term = m.current_term + 5;
    let forger = 999;
    let next = LogId::new(CommittedLeaderId::new(term, forger), m.last_log_index.unwrap_or(0) + 1);
    let request = openraft::raft::AppendEntriesRequest::<weft_fabric::raft::TypeConfig> {
        vote: Vote::new_committed(term, forger),
        prev_log_id: m.last_applied,
        entries: vec![Entry { log_id: next, payload: EntryPayload::Blank }],
        leader_commit: Some(next),
    };
    let mut payload = vec![1u8]; // the codec's format tag
    bincode::serde::encode_into_std_write(&request, &mut payload, bincode::config::standard()).unwrap();
    cpb::RaftPayload {
        format: 1,
        payload,
        cluster: cluster.into(),
        cluster_uid: node.applied().cluster_uid(),
        target_id: node.id(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_takes_only_node_certificates_of_the_clusters_ca() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&dir.path().join("certs"));
    let other = Certs::new(&dir.path().join("other"));
    let cluster = Cluster::start(3, |c| {
        let name = format!("n{}", c.node_id);
        *c = certs.node_config(c.clone(), &name);
    })
    .await;
    let leader = cluster.wait_for_leader().await;
    let follower = if leader == 1 { 2 } else { 1 };
    let addr = cluster.addrs[follower as usize - 1].clone();
    put_retrying_tls(&certs, &cluster.addrs[leader as usize - 1]).await;
    // The first leader records the cluster's instance id in an entry of its own, which may
    // come after the put: wait for it, so that the follower's log is quiet from here on.
    wait_for("the cluster's instance id recorded", async || {
        (cluster.node(leader).applied().read(|a| a.grid.cluster_uid()) != 0).then_some(())
    })
    .await;
    cluster.wait_caught_up(follower).await;
    let node = cluster.node(follower);
    let before = node.raft().metrics().borrow().clone();
    let raft_client = |tls: Tls| {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10));
        cpb::raft_client::RaftClient::new(tls.channel(endpoint))
    };

    tracing::info!("phase: no client certificate: UNAUTHENTICATED, even for bytes that would not decode");
    let status =
        raft_client(certs.client(None)).append_entries(forged_append(node, "test")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("for cluster nodes only"), "{status:?}");
    let garbage = cpb::RaftPayload { payload: vec![0xff; 16], ..forged_append(node, "test") };
    let status = raft_client(certs.client(None)).append_entries(garbage).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "refused before the payload is read: {status:?}");

    tracing::info!(
        "phase: a client certificate of the cluster's CA that is not a node certificate: PERMISSION_DENIED"
    );
    certs.issue(Kind::Client, "alice");
    let status = raft_client(certs.client(Some("alice")))
        .append_entries(forged_append(node, "test"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("not a node certificate"), "{status:?}");
    let status = raft_client(certs.client(Some("alice")))
        .vote(cpb::RaftPayload { payload: vec![1], ..forged_append(node, "test") })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let mut forward = cpb::forward_client::ForwardClient::new(
        certs
            .client(Some("alice"))
            .channel(tonic::transport::Endpoint::from_shared(format!("https://{addr}")).unwrap()),
    );
    let status = forward
        .propose(cpb::ProposeRequest { cluster: "test".into(), command: vec![1, 2, 3] })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    tracing::info!("phase: a node certificate of another CA fails the TLS handshake");
    other.issue(Kind::Node, "intruder");
    let config =
        rustls_client(&certs.ca(), Some((other.dir.join("intruder.pem"), other.dir.join("intruder.key"))));
    let refused = raft_client(Tls::from_config(config)).append_entries(forged_append(node, "test")).await;
    assert!(refused.is_err(), "{refused:?}");
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let config =
        rustls_client(&certs.ca(), Some((other.dir.join("intruder.pem"), other.dir.join("intruder.key"))));
    let mut tls =
        tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.expect("client side done");
    // TLS 1.3: the server checks the client's certificate after the client's last flight.
    let _ = tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut buf = Vec::new();
    let read = tls.read_to_end(&mut buf).await;
    let alert = read.expect_err("the server ends the handshake with an alert").to_string();
    // UnknownCA; DecryptError when the other CA has the same name (the signature fails).
    assert!(["UnknownCA", "BadCertificate", "DecryptError"].iter().any(|a| alert.contains(a)), "{alert}");

    tracing::info!("phase: nothing reached Raft: the follower's log, term and vote did not move");
    let after = node.raft().metrics().borrow().clone();
    assert_eq!(after.current_term, before.current_term);
    assert_eq!(after.last_log_index, before.last_log_index);
    assert_eq!(after.vote, before.vote);
    assert_eq!(after.current_leader, Some(leader));

    tracing::info!("phase: the control: the same forged append with a node certificate of the CA is read");
    certs.issue(Kind::Node, "n-control");
    let reply =
        raft_client(certs.client(Some("n-control"))).append_entries(forged_append(node, "test")).await;
    assert!(reply.is_ok(), "a node certificate passes the gate: {reply:?}");
    cluster.shutdown().await;
}

/// A put through the SDK over TLS to `addr`, retried until it is acknowledged.
async fn put_retrying_tls(certs: &Certs, addr: &str) {
    let client = Client::builder([addr.to_owned()]).tls(Some(certs.client(None))).build().unwrap();
    client.state("shared/r").put("k", &1u32).await.expect("put over TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_changed_on_disk_are_used_and_broken_ones_refused() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&dir.path().join("certs"));
    let listener = listeners(1).await.remove(0);
    let addr = listener.local_addr().unwrap().to_string();
    let config = Config {
        tls_reload_interval_ms: 100,
        ..certs.node_config(weft_fabric::testing::test_config(dir.path(), 1, &addr, ""), "n1")
    };
    let node = Node::start_on(config, listener).await.expect("node starts");
    let cert = certs.dir.join("n1.pem");
    let first = file_der(&cert);
    assert_eq!(presented_certificate(&addr, &certs.ca()).await, first);

    tracing::info!("phase: a new certificate written over the old one is presented to new connections");
    certs.issue(Kind::Node, "n1");
    let second = file_der(&cert);
    assert_ne!(first, second);
    wait_for("the new certificate is presented", async || {
        (presented_certificate(&addr, &certs.ca()).await == second).then_some(())
    })
    .await;

    tracing::info!("phase: a broken certificate is refused and the last good one kept");
    std::fs::write(&cert, b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await; // ten looks at the files
    assert_eq!(presented_certificate(&addr, &certs.ca()).await, second);
    let c = Client::builder([addr.clone()]).tls(Some(certs.client(None))).build().unwrap();
    c.state("shared/rot").put("k", &1u32).await.expect("still serving");

    tracing::info!("phase: both reloads, the taken one and the refused one, are in the audit trail");
    wait_for("the reloads in weft.audit", async || {
        let records: Vec<serde_json::Value> =
            c.stream("weft.audit").read(1, 100).await.ok()?.into_iter().map(|i| i.value).collect();
        let reloads: Vec<_> =
            records.iter().filter(|r| r["operation"] == "config.reload" && r["node"] == 1).collect();
        let taken = reloads
            .iter()
            .any(|r| r["outcome"] == "ok" && r["target"].as_str().is_some_and(|t| t.contains("TLS files")));
        let refused = reloads.iter().any(|r| r["outcome"].as_str().is_some_and(|o| o.starts_with("refused")));
        (taken && refused).then_some(())
    })
    .await;

    tracing::info!("phase: a client certificate (not a node's) is refused as the node's own");
    let (client_cert, client_key) = certs.issue(Kind::Client, "not-a-node");
    std::fs::copy(&client_key, certs.dir.join("n1.key")).unwrap();
    std::fs::copy(&client_cert, &cert).unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(presented_certificate(&addr, &certs.ca()).await, second);

    tracing::info!("phase: a good one after the bad ones is taken");
    certs.issue(Kind::Node, "n1");
    let third = file_der(&cert);
    wait_for("the third certificate is presented", async || {
        (presented_certificate(&addr, &certs.ca()).await == third).then_some(())
    })
    .await;
    node.shutdown().await;
}

#[test]
fn a_broken_replacement_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(dir.path());
    let (cert, key) = certs.issue(Kind::Node, "n1");
    let files = weft_fabric::tls::Files { ca: certs.ca(), cert: cert.clone(), key: key.clone() };
    let store = weft_fabric::tls::Store::load(files.clone()).expect("loads");
    let serial = store.serial();
    assert!(matches!(store.reload_if_changed(), weft_fabric::tls::Reload::Unchanged));
    // A key of another certificate: the pair does not match.
    let (_, other_key) = certs.issue(Kind::Node, "n2");
    std::fs::copy(&other_key, &key).unwrap();
    match store.reload_if_changed() {
        weft_fabric::tls::Reload::Refused(e) => {
            let e = e.to_string();
            assert!(e.contains("tls_key_file") && e.contains("is not the key of"), "{e}");
            assert!(!e.contains("PRIVATE KEY"), "no key in errors: {e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.serial(), serial, "the old certificate stays");
    assert!(matches!(store.reload_if_changed(), weft_fabric::tls::Reload::Unchanged), "warned once");
    let e = weft_fabric::tls::Store::load(files).unwrap_err().to_string();
    assert!(e.contains("is not the key of"), "a node refuses to start on them: {e}");
}

/// `weft ARGS` without any `WEFT_*` variable of the test's environment: (exit code, stdout,
/// stderr).
async fn weft_cmd(args: &[&str]) -> (i32, String, String) {
    let mut command = tokio::process::Command::new(weft_bin());
    command.args(args).env_remove("RUST_LOG").kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WEFT_") {
            command.env_remove(key);
        }
    }
    let out =
        tokio::time::timeout(CLI_PATIENCE, command.output()).await.expect("weft in time").expect("run weft");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_certs_files_run_a_node_that_the_cli_reaches_over_tls() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let d = certs.to_str().unwrap();
    tracing::info!("phase: weft certs makes a CA, a node certificate and a client certificate");
    for args in [
        &["certs", "ca", "--dir", d][..],
        &["certs", "node", "n1", "--dir", d, "--host", "127.0.0.1,localhost"],
        &["certs", "client", "cli", "--dir", d],
    ] {
        let (code, out, err) = weft_cmd(args).await;
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        assert!(out.contains("mode 0600"), "{out}");
    }
    #[cfg(unix)]
    for key in ["ca.key", "n1.key", "cli.key"] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(certs.join(key)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    let (code, _, err) = weft_cmd(&["certs", "node", "n1", "--dir", d]).await;
    assert_eq!(code, 1);
    assert!(err.contains("exists already"), "{err}");
    let (code, _, err) =
        weft_cmd(&["certs", "node", "x", "--dir", dir.path().join("none").to_str().unwrap()]).await;
    assert_eq!(code, 1);
    assert!(err.contains("make a CA first"), "{err}");

    tracing::info!(
        "phase: a node started on them; the CLI reaches it with the CA (and a client certificate)"
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let file = |n: &str| certs.join(n).display().to_string();
    let _node = spawn_node(
        vec![
            "--listen".into(),
            addr.clone(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
            "--tls-ca-file".into(),
            file("ca.pem"),
            "--tls-cert-file".into(),
            file("n1.pem"),
            "--tls-key-file".into(),
            file("n1.key"),
        ],
        dir.path().join("n1.log"),
    );
    let ca = file("ca.pem");
    wait_for("the node answers over TLS", async || {
        let (code, out, _) = weft_cmd(&["--tls-ca", &ca, "status", "--endpoint", &addr]).await;
        (code == 0 && out.contains("leader")).then_some(())
    })
    .await;
    let (cert, key) = (file("cli.pem"), file("cli.key"));
    let tls = ["--tls-ca", ca.as_str(), "--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    let (code, out, err) =
        weft_cmd(&[&tls[..], &["state", "put", "shared/c", "k", "v", "--endpoint", &addr]].concat()).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) =
        weft_cmd(&["--tls-ca", &ca, "state", "get", "shared/c", "k", "--endpoint", &addr]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("k = v"), "{out}");

    tracing::info!("phase: without the CA the CLI is told the node requires TLS; with a wrong one, why");
    let (code, _, err) = weft_cmd(&["state", "get", "shared/c", "k", "--endpoint", &addr]).await;
    assert_eq!(code, 1);
    // Under load hyper sometimes ends the request "operation was canceled" before it reads the
    // node's GOAWAY; the CLI then asks the node again (weft_agent::tls::requires_tls).
    assert!(err.contains("requires TLS") && err.contains("--tls-ca"), "{err}");
    let (code, _, err) = weft_cmd(&["--tls-ca", &file("cli.pem"), "status", "--endpoint", &addr]).await;
    assert_eq!(code, 1);
    assert!(err.contains("not signed by the CA"), "{err}");

    tracing::info!("phase: a client certificate will not do as a node's own");
    let (code, _, err) = weft_cmd(&[
        "node",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().join("data2").to_str().unwrap(),
        "--tls-ca-file",
        &ca,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
    ])
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a node certificate") && err.contains("weft certs node"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_node_on_an_exposed_address_needs_tls_or_insecure() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let advertise = format!("127.0.0.1:{port}");
    let data = dir.path().join("data");
    let args = ["node", "--listen", &listen, "--advertise", &advertise, "--data-dir", data.to_str().unwrap()];

    tracing::info!("phase: 0.0.0.0 without TLS is refused, saying what to do, and nothing is created");
    let (code, out, err) = weft_cmd(&args).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("reachable from other machines but TLS is off"), "{err}");
    assert!(err.contains("tls_ca_file") && err.contains("--insecure"), "{err}");
    assert!(!data.exists(), "a refused node creates no data dir");

    tracing::info!("phase: with --insecure it starts");
    let _node = spawn_node(
        args[1..].iter().map(|a| (*a).to_owned()).chain(["--insecure".to_owned()]).collect(),
        dir.path().join("n.log"),
    );
    wait_for("the node answers", async || {
        let s = tokio::net::TcpStream::connect(&advertise).await.ok()?;
        drop(s);
        let (code, _) = crate::writes::http_get(&advertise, "/healthz").await;
        (code == 200).then_some(())
    })
    .await;
}

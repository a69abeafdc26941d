//! Bad input gets a clear error that names the problem, and changes nothing.

use std::process::Command;

use weft_proto::fabric::v1 as pb;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_change_nothing() {
    init_tracing();
    let cluster = Cluster::start(3, |c| {
        c.max_value_bytes = 1024;
        c.max_key_bytes = 16;
        c.max_list_page = 10;
        c.max_payload_bytes = 1024;
        c.max_item_bytes = 1024;
        c.max_message_bytes = 1024 + 16 + 4096;
    })
    .await;
    let leader = cluster.wait_for_leader().await;
    let addr = &cluster.addrs[0];
    let version = put_retrying(addr, "shared/b", "k", "original").await.unwrap().unwrap();
    let last_log = cluster.node(leader).raft().metrics().borrow().last_log_index;
    let revision = cluster.node(leader).applied().read(|a| a.grid.revision());
    let mut c = client(addr).await;

    let expect =
        |r: Result<tonic::Response<pb::PutResponse>, tonic::Status>, code: tonic::Code, words: &str| {
            let e = r.expect_err("must be refused");
            assert_eq!(e.code(), code, "{e:?}");
            assert!(e.message().contains(words), "'{}' should mention '{words}'", e.message());
        };
    tracing::info!("phase: refused before anything is proposed");
    expect(
        c.put(put_req("shared/b", "k", &"x".repeat(1025))).await,
        tonic::Code::InvalidArgument,
        "max_value_bytes",
    );
    expect(c.put(put_req("nope", "k", "v")).await, tonic::Code::InvalidArgument, "invalid namespace 'nope'");
    expect(
        c.put(put_req("shared/a/b", "k", "v")).await,
        tonic::Code::InvalidArgument,
        "instance/<agent>/<instance-id>",
    );
    expect(c.put(put_req("shared/b", "", "v")).await, tonic::Code::InvalidArgument, "key is empty");
    expect(
        c.put(put_req("shared/b", &"k".repeat(17), "v")).await,
        tonic::Code::InvalidArgument,
        "limit is 16",
    );
    let big = c.put(put_req("shared/b", "k", &"x".repeat(8000))).await.unwrap_err();
    assert!(
        matches!(
            big.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::InvalidArgument
        ),
        "{big:?}"
    );
    let list = c
        .list(pb::ListRequest {
            namespace: "shared/b".into(),
            prefix: String::new(),
            page_token: String::new(),
            limit: 11,
            consistency: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(list.code(), tonic::Code::InvalidArgument);
    assert!(list.message().contains("page size 11"), "{}", list.message());
    assert_eq!(
        cluster.node(leader).raft().metrics().borrow().last_log_index,
        last_log,
        "nothing was proposed"
    );

    tracing::info!("phase: refused by the grid's rules; the grid is unchanged");
    let cas = c
        .compare_and_set(pb::CompareAndSetRequest {
            namespace: "shared/b".into(),
            key: "k".into(),
            expected_version: version + 100,
            value: b"new".to_vec(),
            ttl_ms: None,
            fence: None,
        })
        .await
        .unwrap_err();
    assert_eq!(cas.code(), tonic::Code::FailedPrecondition);
    assert!(
        cas.message().contains(&format!("expected {}, current is {version}", version + 100)),
        "{}",
        cas.message()
    );
    expect(
        c.put(pb::PutRequest { if_absent: true, ..put_req("shared/b", "k", "v") }).await,
        tonic::Code::AlreadyExists,
        "already exists",
    );
    let del = c
        .delete(pb::DeleteRequest {
            namespace: "shared/b".into(),
            key: "k".into(),
            expected_version: Some(version + 1),
            fence: None,
        })
        .await
        .unwrap_err();
    assert_eq!(del.code(), tonic::Code::FailedPrecondition);
    assert_eq!(get(addr, "shared/b", "k").await.as_deref(), Some("original"));
    assert_eq!(cluster.node(leader).applied().read(|a| a.grid.revision()), revision);
    cluster.shutdown().await;
}

/// Limits are configuration and may differ between nodes: a write forwarded to the leader is
/// checked against the leader's limits too, so the stricter of the two applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_is_checked_against_the_leaders_limits_too() {
    init_tracing();
    let cluster = Cluster::start(3, |c| {
        if c.node_id == 1 {
            c.max_value_bytes = 100;
            c.max_payload_bytes = 100;
        }
    })
    .await;
    tracing::info!("phase: make node 1, the strict one, the leader");
    let deadline = std::time::Instant::now() + PATIENCE;
    while cluster.wait_for_leader().await != 1 {
        assert!(std::time::Instant::now() < deadline, "node 1 did not become the leader");
        let _ = cluster.node(1).raft().trigger().elect().await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    settle(&cluster, 1).await;
    let follower = &cluster.addrs[1];
    let last_log = cluster.node(1).raft().metrics().borrow().last_log_index;

    tracing::info!("phase: a put and a create within the follower's limits, over the leader's");
    let mut c = client(follower).await;
    let e =
        c.put(put_req("shared/strict", "k", &"v".repeat(200))).await.expect_err("over the leader's limit");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("max_value_bytes"), "{e:?}");
    let mut x = weft_proto::fabric::v1::executions_client::ExecutionsClient::new(channel(follower).await);
    let create = pb::CreateExecutionRequest {
        agent: "a".into(),
        delegate: "d".into(),
        payload: json(&format!("\"{}\"", "x".repeat(200))),
        ..Default::default()
    };
    let e = x.create(create).await.expect_err("over the leader's limit");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("max_payload_bytes"), "{e:?}");

    tracing::info!("phase: nothing reached the log; within both limits is fine");
    assert_eq!(cluster.node(1).raft().metrics().borrow().last_log_index, last_log);
    put_retrying(follower, "shared/strict", "k", "small").await.unwrap().expect("acknowledged");
    cluster.shutdown().await;
}

/// Eager calls' commands are made only by the leader's own proposer, from the block it
/// reserved: forwarded by a peer (alone, audited or fenced), the leader refuses them before it
/// proposes anything. The same request carrying an ordinary write is applied, so the refusal is
/// about the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_refuses_eager_call_commands_forwarded_by_a_peer() {
    use weft_fabric::grid::Command;
    use weft_fabric::grid::audit::Actor;
    use weft_fabric::grid::execution::{NewExecution, Reserved};
    use weft_fabric::testing::{forward_answer, forward_request};
    use weft_proto::cluster::v1::forward_client::ForwardClient;

    init_tracing();
    let cluster = Cluster::start(1, |_| {}).await;
    let leader = cluster.wait_for_leader().await;
    settle(&cluster, leader).await;
    let node = cluster.node(leader);
    let last_log = node.raft().metrics().borrow().last_log_index;
    let revision = node.applied().read(|a| a.grid.revision());
    let mut forward = ForwardClient::new(channel(&cluster.addrs[leader as usize - 1]).await);

    tracing::info!("phase: ReserveBlock and CreateReserved from a peer are refused, wrapped or not");
    let call = NewExecution::example("a", "d");
    let reserved =
        Command::CreateReserved(Box::new(Reserved { new: call, served: false, id: 1, token: 1, session: 1 }));
    let block = Command::ReserveBlock { count: 16 };
    let cases = [
        ("ReserveBlock", block.clone()),
        ("CreateReserved", reserved.clone()),
        ("CreateReserved", Command::Audited { actor: Actor::fabric(2), command: Box::new(reserved) }),
        ("ReserveBlock", Command::Fenced { lease: "l".into(), token: 1, command: Box::new(block) }),
    ];
    for (name, command) in cases {
        let status = forward.propose(forward_request("test", &command)).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        let words = format!("{name} is proposed only by the leader's proposer");
        assert!(status.message().contains(&words), "'{}' should say '{words}'", status.message());
    }

    tracing::info!("phase: nothing reached the log or the grid");
    assert_eq!(node.raft().metrics().borrow().last_log_index, last_log, "nothing was proposed");
    assert_eq!(node.applied().read(|a| a.grid.revision()), revision);

    tracing::info!("phase: an ordinary write forwarded the same way is applied");
    let put = Command::Put {
        namespace: "shared/b".into(),
        key: "k".into(),
        value: b"v".to_vec(),
        ttl_ms: None,
        if_absent: false,
    };
    let reply = forward.propose(forward_request("test", &put)).await.expect("accepted").into_inner();
    assert!(matches!(forward_answer(&reply), Some(Ok(_))), "{:?}", forward_answer(&reply));
    assert!(node.raft().metrics().borrow().last_log_index > last_log);
    cluster.shutdown().await;
}

/// Waits until node `id` leads and has applied its first entry as leader: a leader that has just
/// won appends a blank entry of its term, which would land after a count of the log taken
/// earlier and look like a write that got in.
async fn settle(cluster: &Cluster, id: u64) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let m = cluster.node(id).raft().metrics().borrow().clone();
        let settled = m.current_leader == Some(id)
            && m.last_applied.is_some_and(|l| l.leader_id.term == m.current_term)
            && m.last_applied.map(|l| l.index) == m.last_log_index;
        if settled {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "node {id}'s first entry as leader was not applied");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn weft(args: &[&str]) -> (i32, String) {
    let out = Command::new(weft_bin()).args(args).env_remove("WEFT_ENDPOINT").output().expect("run weft");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn invalid_configuration_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let data = data.to_str().unwrap();
    let cases: [(&[&str], &str); 9] = [
        (&["--listen", "nowhere"], "listen"),
        (&["--node-id", "0", "--initial-members", "1=127.0.0.1:9"], "node_id"),
        (&["--node-id", "1", "--initial-members", "1=a:1,1=b:2"], "listed twice"),
        (&["--node-id", "1", "--initial-members", "2=127.0.0.1:9"], "does not list this node"),
        (&["--cluster", "bad name"], "cluster"),
        (&["--seeds", "no-port"], "seeds"),
        (&["--voters", "2"], "voters"),
        (&["--gossip-preset", "wan"], "gossip_preset"),
        (
            &["--node-id", "1", "--initial-members", "1=127.0.0.1:9", "--bootstrap-expect", "3"],
            "bootstrap_expect",
        ),
    ];
    for (args, words) in cases {
        let mut all = vec!["node", "--data-dir", data];
        all.extend_from_slice(args);
        let (code, text) = weft(&all);
        assert_eq!(code, 2, "{args:?}: {text}");
        assert!(text.contains(words), "{args:?}: '{text}' should name {words}");
    }
    assert!(!dir.path().join("d").exists(), "a refused config must not create the data dir");

    let file = dir.path().join("weft.toml");
    std::fs::write(&file, "node_id = 4\nmax_valeu_bytes = 3\n").unwrap();
    let (code, text) = weft(&["node", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("max_valeu_bytes"), "{text}");
}

#[test]
fn dump_config_shows_the_layers() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weft.toml");
    std::fs::write(&file, "node_id = 4\ncluster = \"from-file\"\nmax_list_page = 77\n").unwrap();
    let out = Command::new(weft_bin())
        .args(["node", "--config", file.to_str().unwrap(), "--node-id", "5", "--dump-config"])
        .env("WEFT_CLUSTER", "from-env")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("node_id = 5"), "flag beats file: {text}");
    assert!(text.contains("cluster = \"from-env\""), "env beats file: {text}");
    assert!(text.contains("max_list_page = 77"), "file beats default: {text}");
}

#[test]
fn gossip_keys_are_made_checked_and_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(weft_bin()).arg("gossip-key").output().unwrap();
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let id = weft_fabric::membership::keys::Keys::parse_list(&key).expect("a valid key").sender().id();
    assert!(String::from_utf8_lossy(&out.stderr).contains(&id), "the id goes to stderr");

    let file = dir.path().join("gossip.keys");
    std::fs::write(&file, format!("{key}\n{}\n", &key[..20])).unwrap();
    let (code, text) = weft(&["node", "--gossip-key-file", file.to_str().unwrap(), "--dump-config"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("gossip_key_file: line 2: decodes to 15 bytes"), "{text}");
    assert!(!text.contains(&key[..20]), "the error shows the key: {text}");

    let out = Command::new(weft_bin())
        .args(["node", "--gossip-encrypt", "--dump-config"])
        .env("WEFT_GOSSIP_KEYS", &key)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("gossip_keys = \"<redacted>\"") && text.contains("gossip_encrypt = true"),
        "{text}"
    );
    assert!(!text.contains(&key), "--dump-config shows the key: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_in_use_and_foreign_data_dirs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = dir.path().join("n1");
    let (code, text) = weft(&["node", "--listen", &addr, "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(&format!("cannot listen on {addr}")), "{text}");
    drop(taken);

    // A data dir of cluster 'a' refuses a node of cluster 'b', and is left as it was.
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let mut first = spawn_node(
        vec![
            "--node-id".into(),
            "1".into(),
            "--cluster".into(),
            "a".into(),
            "--listen".into(),
            listen.clone(),
            "--data-dir".into(),
            data.to_str().unwrap().into(),
        ],
        dir.path().join("first.log"),
    );
    wait_for_leader_at(std::slice::from_ref(&listen)).await;
    first.kill9();
    let before = list_files(&data);
    let (code, text) =
        weft(&["node", "--cluster", "b", "--listen", &listen, "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("belongs to cluster 'a' node 1"), "{text}");
    let (code, text) = weft(&[
        "node",
        "--cluster",
        "a",
        "--node-id",
        "2",
        "--listen",
        &listen,
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("this node is cluster 'a' node 2"), "{text}");
    assert_eq!(list_files(&data), before, "the refused starts changed the data dir");

    // A directory with someone else's files, and a path that is a file.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let (code, text) = weft(&["node", "--listen", &listen, "--data-dir", other.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("not a Weft data dir"), "{text}");
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1);
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let (code, text) = weft(&["node", "--listen", &listen, "--data-dir", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("cannot create"), "{text}");
}

fn list_files(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        if m.is_dir() {
            out.extend(list_files(&e.path()));
        } else {
            out.push((e.path().display().to_string(), m.len()));
        }
    }
    out.sort();
    out
}

//! Bearer tokens on real nodes: a 3-node cluster with auth on and a bootstrap admin token;
//! tokens made, listed and revoked with the CLI; missing, malformed, unknown, wrong-secret,
//! expired and revoked tokens refused on gRPC (UNAUTHENTICATED) and HTTP (401) naming why; a
//! token made through one node works on another; a revoke through one node is refused by
//! every node once the CLI returns; creates and revokes in the audit trail without secrets;
//! refusals counted in `/metrics`; tokens kept across a restart of the whole cluster; the same
//! through the HTTP API (`POST /v1/tokens`, `GET /v1/tokens`, `DELETE /v1/tokens/{id}`); the
//! CLI taking a flag's token over the environment's, and refusing two at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::Request;
use weft_fabric::Config;
use weft_fabric::auth::Credential;
use weft_proto::fabric::v1 as pb;

use crate::http_api::http;
use crate::support::*;

/// Writes a fresh admin token to `dir/admin.token`; returns the file and the token.
fn bootstrap_file(dir: &Path) -> (PathBuf, Credential) {
    let credential = Credential::generate();
    let path = dir.join("admin.token");
    std::fs::write(&path, format!("{}\n", credential.reveal())).unwrap();
    (path, credential)
}

fn auth_on(file: &Path) -> impl Fn(&mut Config) + '_ {
    move |c: &mut Config| {
        c.auth = true;
        c.auth_bootstrap_token_file = Some(file.to_owned());
    }
}

/// Waits until node `id` of `cluster` holds token `id`.
async fn wait_for_token(cluster: &Cluster, node: u64, id: &str) {
    let held = tokio::time::timeout(PATIENCE, async {
        while !cluster.node(node).applied().read(|a| a.grid.token(id).is_some()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(held.is_ok(), "node {node} does not hold token {id} within {PATIENCE:?}");
}

/// `weft ARGS` against `endpoint` with the token in `file`.
async fn weft_as(file: &Path, endpoint: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--auth-token-file", file.to_str().unwrap()];
    all.extend_from_slice(args);
    weft(endpoint, &all).await
}

/// `Cluster/Status` on `addr` over gRPC with `authorization: <header>` (none: no header).
async fn grpc_status(addr: &str, header: Option<&str>) -> Result<(), tonic::Status> {
    let mut request = Request::new(pb::StatusRequest {});
    if let Some(h) = header {
        request.metadata_mut().insert("authorization", h.parse().unwrap());
    }
    cluster_client(addr).await.status(request).await.map(|_| ())
}

/// `GET /v1/cluster` on `addr` with `authorization: <header>`: (status, error message).
async fn http_status(addr: &str, header: Option<&str>) -> (u16, String) {
    let headers: Vec<(&str, &str)> = header.map(|h| ("Authorization", h)).into_iter().collect();
    let answer = http(addr, "GET", "/v1/cluster", &headers, b"").await;
    let message = match answer.status {
        200 => String::new(),
        _ => answer.json()["error"]["message"].as_str().unwrap_or_default().to_owned(),
    };
    (answer.status, message)
}

/// Asserts that `header` is refused by `addr` on gRPC and HTTP with a message that says
/// `why`, and never repeats `secret`.
async fn refused_everywhere(addr: &str, header: Option<&str>, why: &str, secret: &str) {
    let status = grpc_status(addr, header).await.expect_err("refused over gRPC");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{header:?} at {addr}: {status:?}");
    assert!(status.message().contains(why), "{header:?} at {addr}: {} should say {why:?}", status.message());
    let (code, message) = http_status(addr, header).await;
    assert_eq!(code, 401, "{header:?} at {addr} over HTTP: {message}");
    assert!(message.contains(why), "{header:?} at {addr} over HTTP: {message} should say {why:?}");
    assert!(!status.message().contains(secret) && !message.contains(secret), "a refusal shows the secret");
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The audit trail's records, read with the admin token through `endpoint`, as raw JSON text.
async fn audit_text(file: &Path, endpoint: &str) -> String {
    let (code, out, err) = weft_as(file, endpoint, &["streams", "read", "weft.audit", "--json"]).await;
    assert_eq!(code, 0, "{out} {err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_are_made_used_refused_and_revoked_on_every_node() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (admin_file, admin) = bootstrap_file(dir.path());
    let cluster = Cluster::start(3, auth_on(&admin_file)).await;
    let addrs = cluster.addrs.clone();

    tracing::info!("phase: the leader creates the bootstrap admin token; every node holds it");
    for node in 1..=3 {
        wait_for_token(&cluster, node, admin.id()).await;
    }
    let (code, out, err) = weft_as(&admin_file, &addrs[2], &["status"]).await;
    assert_eq!(code, 0, "the admin token works on node 3: {out} {err}");

    tracing::info!("phase: without a token the CLI, gRPC and HTTP are refused, saying so");
    let (code, out, err) = weft(&addrs[0], &["status"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("Unauthenticated") && err.contains("no credentials"), "{err}");
    refused_everywhere(&addrs[0], None, "no credentials", "-").await;
    let (code, out, _) = weft(&addrs[0], &["tokens", "list"]).await;
    assert_eq!(code, 1, "tokens list without a token: {out}");
    // Health stays open (load balancers and probes hold no token).
    assert_eq!(http(&addrs[0], "GET", "/healthz", &[], b"").await.status, 200);

    tracing::info!("phase: an admin creates a client token through node 1; it works on node 3");
    let (code, created) = weft_json(
        &addrs[0],
        &[
            "--auth-token-file",
            admin_file.to_str().unwrap(),
            "tokens",
            "create",
            "--name",
            "app",
            "--role",
            "client",
            "--call",
            "echo,billing",
            "--namespaces",
            "shared/app",
            "--expires-in",
            "30d",
        ],
    )
    .await;
    assert_eq!(code, 0, "{created}");
    let client = created["token"].as_str().expect("the token text").to_owned();
    let client = Credential::parse(&client).expect("a well-formed token");
    let record = &created["record"];
    assert_eq!(record["id"], client.id());
    assert_eq!((record["name"].as_str(), record["role"].as_str()), (Some("app"), Some("client")));
    assert_eq!(record["call"], serde_json::json!(["echo", "billing"]));
    let expires = record["expires_at_ms"].as_u64().expect("an expiry");
    let created_at = record["created_at_ms"].as_u64().unwrap();
    assert_eq!(expires - created_at, 30 * 86_400_000);
    assert!(record.get("secret_hash").is_none() && !created["record"].to_string().contains("hash"));
    grpc_status(&addrs[2], Some(&bearer(&client.reveal()))).await.expect("the client token works on node 3");
    assert_eq!(http_status(&addrs[2], Some(&bearer(&client.reveal()))).await.0, 200);
    // The Tokens service wants an admin.
    let client_text = client.reveal();
    for op in [&["tokens", "list"][..], &["tokens", "create", "--name", "mine", "--role", "admin"]] {
        let mut args = vec!["--auth-token", client_text.as_str()];
        args.extend_from_slice(op);
        let (code, out, err) = weft(&addrs[2], &args).await;
        assert_eq!(code, 1, "{op:?}: {out}");
        assert!(err.contains("PermissionDenied") && err.contains("needs role admin"), "{op:?}: {err}");
    }

    tracing::info!("phase: malformed, unknown, wrong-secret and expired tokens are refused, naming why");
    let (code, short, err) = weft_as(
        &admin_file,
        &addrs[1],
        &["tokens", "create", "--name", "short", "--role", "client", "--expires-in", "1s"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let short = Credential::parse(short.trim()).unwrap();
    let unknown = Credential::generate();
    let wrong_secret = format!("weft_{}_{}", client.id(), "5".repeat(64));
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let secret_of = |c: &Credential| c.reveal()[5 + c.id().len() + 1..].to_owned();
    for addr in &addrs {
        refused_everywhere(addr, Some("Bearer nonsense"), "malformed credentials", "nonsense").await;
        refused_everywhere(addr, Some("Basic abc"), "must be `Bearer <token>`", "abc").await;
        refused_everywhere(addr, Some(&bearer(&unknown.reveal())), "unknown token", &secret_of(&unknown))
            .await;
        refused_everywhere(addr, Some(&bearer(&wrong_secret)), "the secret does not match", "5555555555")
            .await;
        refused_everywhere(addr, Some(&bearer(&short.reveal())), "expired at", &secret_of(&short)).await;
    }
    let (code, _, err) = weft(&addrs[0], &["--auth-token", &short.reveal(), "status"]).await;
    assert!(code == 1 && err.contains("Unauthenticated") && err.contains("expired at"), "{err}");

    tracing::info!("phase: bad create requests are refused naming the field");
    for (args, expected) in [
        (vec!["--name", "x y", "--role", "client"], "invalid token name 'x y'"),
        (vec!["--name", "x", "--role", "boss"], "role: unknown role \"boss\""),
        (vec!["--name", "x", "--role", "client", "--serve", "echo"], "serve: only role agent"),
        (vec!["--name", "x", "--role", "client", "--streams", "a b"], "streams: 'a b'"),
    ] {
        let mut all = vec!["tokens", "create"];
        all.extend(args);
        let (code, out, err) = weft_as(&admin_file, &addrs[0], &all).await;
        assert_eq!(code, 1, "{out}");
        assert!(err.contains("InvalidArgument") && err.contains(expected), "{err} should say {expected:?}");
    }

    tracing::info!("phase: the list shows every token, and no secret");
    let (code, listed) =
        weft_json(&addrs[1], &["--auth-token-file", admin_file.to_str().unwrap(), "tokens", "list"]).await;
    assert_eq!(code, 0, "{listed}");
    let ids: Vec<&str> =
        listed["tokens"].as_array().unwrap().iter().filter_map(|t| t["id"].as_str()).collect();
    for id in [admin.id(), client.id(), short.id()] {
        assert!(ids.contains(&id), "{id} listed: {listed}");
    }
    let text = listed.to_string();
    assert!(!text.contains(&secret_of(&client)) && !text.contains(&secret_of(&admin)), "{text}");
    let bootstrap = listed["tokens"].as_array().unwrap().iter().find(|t| t["id"] == admin.id()).unwrap();
    assert_eq!((bootstrap["name"].as_str(), bootstrap["role"].as_str()), (Some("bootstrap"), Some("admin")));

    tracing::info!("phase: revoked through node 2, every node refuses it as soon as the CLI returns");
    let (code, out, err) = weft_as(&admin_file, &addrs[1], &["tokens", "revoke", client.id()]).await;
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains(&format!("revoked token {}", client.id())), "{out}");
    assert!(!err.contains("had not applied"), "every member applied it: {err}");
    for addr in &addrs {
        refused_everywhere(addr, Some(&bearer(&client.reveal())), "was revoked", &secret_of(&client)).await;
    }
    let (code, again) = weft_json(
        &addrs[2],
        &["--auth-token-file", admin_file.to_str().unwrap(), "tokens", "revoke", client.id()],
    )
    .await;
    assert_eq!((code, again["existed"].as_bool()), (0, Some(false)), "{again}");
    let (code, _, err) = weft_as(&admin_file, &addrs[0], &["tokens", "revoke", "nosuchid"]).await;
    assert!(code == 1 && err.contains("NotFound") && err.contains("no token 'nosuchid'"), "{err}");

    tracing::info!("phase: creates and revokes are in the audit trail with the admin, and no secret");
    let audit = audit_text(&admin_file, &addrs[2]).await;
    let records: Vec<serde_json::Value> = serde_json::from_str::<serde_json::Value>(&audit).unwrap()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["payload"].clone())
        .collect();
    let find = |op: &str, target: &str| {
        records
            .iter()
            .find(|r| r["operation"] == op && r["target"].as_str().is_some_and(|t| t.starts_with(target)))
            .unwrap_or_else(|| panic!("no {op} of {target} in {records:#?}"))
            .clone()
    };
    let admin_name = format!("token {} (bootstrap)", admin.id());
    let made = find("token.create", &format!("token {} (app), role client", client.id()));
    assert_eq!(
        (made["principal"].as_str(), made["role"].as_str()),
        (Some(admin_name.as_str()), Some("admin"))
    );
    assert_eq!(made["outcome"], "ok");
    let gone = find("token.revoke", &format!("token {}", client.id()));
    assert_eq!((gone["principal"].as_str(), gone["node"].as_u64()), (Some(admin_name.as_str()), Some(2)));
    let boot = find("token.create", &format!("token {} (bootstrap), role admin", admin.id()));
    assert_eq!(boot["principal"], "fabric");
    let hash_hex: String = client.hash().0.iter().map(|b| format!("{b:02x}")).collect();
    for secret in [secret_of(&client), secret_of(&admin), secret_of(&short), hash_hex] {
        assert!(!audit.contains(&secret), "the audit trail holds a secret or a hash");
    }

    tracing::info!("phase: refusals are counted by reason in /metrics (which itself needs a token)");
    assert_eq!(http(&addrs[0], "GET", "/metrics", &[], b"").await.status, 401);
    let admin_header = bearer(&admin.reveal());
    let metrics = http(&addrs[0], "GET", "/metrics", &[("Authorization", &admin_header)], b"").await;
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    for reason in ["missing", "malformed", "unknown", "bad_secret", "expired", "revoked"] {
        let line = format!("weft_auth_refused_total{{node=\"1\",reason=\"{reason}\"}}");
        assert!(text.lines().any(|l| l.starts_with(&line)), "{line} missing:\n{text}");
    }
    assert!(!text.contains(&secret_of(&admin)), "metrics show a secret");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_and_revokes_survive_a_restart_of_the_whole_cluster() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (admin_file, admin) = bootstrap_file(dir.path());
    let mut cluster = Cluster::start(3, |c| {
        auth_on(&admin_file)(c);
        // Snapshots every few entries, so the restart loads tokens from a snapshot.
        c.snapshot_after_entries = 8;
        c.log_entries_kept_after_snapshot = 0;
    })
    .await;
    let addrs = cluster.addrs.clone();
    wait_for_token(&cluster, 1, admin.id()).await;

    tracing::info!("phase: make two tokens; with node 3 down, revoke one: the answer names node 3");
    let make = async |name: &str| {
        let (code, out, err) =
            weft_as(&admin_file, &addrs[0], &["tokens", "create", "--name", name, "--role", "operator"])
                .await;
        assert_eq!(code, 0, "{err}");
        Credential::parse(out.trim()).unwrap()
    };
    let kept = make("kept").await;
    let revoked = make("revoked").await;
    cluster.stop(3).await;
    let started = std::time::Instant::now();
    let (code, out, err) =
        weft_as(&admin_file, &addrs[1], &["tokens", "revoke", revoked.id(), "--json"]).await;
    assert_eq!(code, 0, "{out} {err}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((answer["existed"].as_bool(), &answer["not_applied"]), (Some(true), &serde_json::json!([3])));
    assert!(err.contains("node(s) 3 had not applied the revoke"), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(9), "it waited for node 3: {:?}", started.elapsed());
    cluster.restart(3).await;

    tracing::info!("phase: write until every node has snapshotted");
    for i in 0..12 {
        let (code, _, err) =
            weft_as(&admin_file, &addrs[0], &["state", "put", "shared/fill", &format!("k{i}"), "v"]).await;
        assert_eq!(code, 0, "{err}");
    }
    for node in 1..=3 {
        cluster.wait_caught_up(node).await;
    }
    let snapshots = (1..=3)
        .map(|n| {
            cluster.node(n).applied().counters().snapshots_built.load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum::<u64>();
    assert!(snapshots > 0, "some node built a snapshot");

    tracing::info!("phase: stop and start every node");
    for node in 1..=3 {
        cluster.stop(node).await;
    }
    for node in 1..=3 {
        cluster.restart(node).await;
    }
    cluster.wait_for_leader().await;

    tracing::info!("phase: the kept token works on every node, the revoked one is refused as revoked");
    for (i, addr) in addrs.iter().enumerate() {
        wait_for_token(&cluster, i as u64 + 1, kept.id()).await;
        grpc_status(addr, Some(&bearer(&kept.reveal()))).await.expect("the kept token works");
        let status = grpc_status(addr, Some(&bearer(&revoked.reveal()))).await.expect_err("refused");
        assert!(status.message().contains("was revoked"), "{status:?}");
    }
    tracing::info!("phase: the bootstrap token was not created again: one create record");
    let audit = audit_text(&admin_file, &addrs[2]).await;
    let boot = format!("token {} (bootstrap), role admin", admin.id());
    assert_eq!(audit.matches(&boot).count(), 1, "{audit}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_dev_auth_writes_an_admin_token_and_requires_it() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = dir.path().join("data");
    let log = dir.path().join("dev.log");
    let _dev = NodeCommand::new(weft_bin(), &log)
        .args(["dev", "--auth", "--port", &port.to_string(), "--data-dir"])
        .arg(&data)
        .spawn()
        .unwrap();
    let endpoint = format!("127.0.0.1:{port}");
    let token_file = data.join("admin.token");

    tracing::info!("phase: the banner names the token file; the file is the user's only");
    let export = format!("export WEFT_TOKEN_FILE={}", token_file.display());
    let banner = tokio::time::timeout(PATIENCE, async {
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains(&export) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("weft dev --auth prints where its token is");
    let token = std::fs::read_to_string(&token_file).unwrap();
    let credential = Credential::parse(&token).expect("a token");
    let secret = &token.trim()[5 + credential.id().len() + 1..];
    assert!(!banner.contains(secret), "the secret is printed or logged: {banner}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the token file is readable by others");

    tracing::info!("phase: requests need the token, and the token works");
    let (code, _, err) = weft(&endpoint, &["status"]).await;
    assert!(code == 1 && err.contains("no credentials"), "{err}");
    let (code, out, err) = weft_as(&token_file, &endpoint, &["status"]).await;
    assert_eq!(code, 0, "{out} {err}");
    let (code, listed) =
        weft_json(&endpoint, &["--auth-token-file", token_file.to_str().unwrap(), "tokens", "list"]).await;
    assert_eq!(code, 0, "{listed}");
    assert_eq!(listed["tokens"][0]["name"], "bootstrap");
}

/// `METHOD path` on `addr` with `bearer` as its token and `body` as JSON: (status, JSON body).
async fn http_as(
    addr: &str,
    bearer_token: &str,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let auth = bearer(bearer_token);
    let mut headers = vec![("Authorization", auth.as_str())];
    if !body.is_empty() {
        headers.push(("Content-Type", "application/json"));
    }
    let answer = http(addr, method, path, &headers, body.as_bytes()).await;
    (answer.status, answer.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_are_made_listed_and_revoked_over_http() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (admin_file, admin) = bootstrap_file(dir.path());
    let cluster = Cluster::start(3, auth_on(&admin_file)).await;
    let addrs = cluster.addrs.clone();
    for node in 1..=3 {
        wait_for_token(&cluster, node, admin.id()).await;
    }
    let admin_text = admin.reveal();

    tracing::info!("phase: an admin creates a client token over HTTP through node 1: 201, the secret once");
    let (status, created) = http_as(
        &addrs[0],
        &admin_text,
        "POST",
        "/v1/tokens",
        r#"{"name": "http-app", "role": "client", "call": ["echo"], "namespaces": ["shared/app"],
            "expires_in_ms": 86400000}"#,
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let text = created["token"].as_str().expect("the token text").to_owned();
    let token = Credential::parse(&text).expect("a well-formed token");
    let secret = text[5 + token.id().len() + 1..].to_owned();
    let record = &created["record"];
    assert_eq!(record["id"], token.id());
    assert_eq!((record["name"].as_str(), record["role"].as_str()), (Some("http-app"), Some("client")));
    assert_eq!(record["call"], serde_json::json!(["echo"]));
    assert_eq!(record["serve"], serde_json::json!([]));
    let created_at = record["created_at_ms"].as_u64().expect("created_at_ms");
    assert_eq!(record["expires_at_ms"].as_u64(), Some(created_at + 86_400_000));
    assert_eq!(created["not_applied"], serde_json::json!([]), "every member applied it");
    assert!(!record.to_string().contains(&secret) && !record.to_string().contains("hash"), "{record}");

    tracing::info!("phase: the new token works over gRPC and HTTP on every node, within its scopes");
    for addr in &addrs {
        grpc_status(addr, Some(&bearer(&text))).await.expect("the new token works over gRPC");
        assert_eq!(http_status(addr, Some(&bearer(&text))).await.0, 200, "over HTTP at {addr}");
    }
    let put =
        http(&addrs[2], "PUT", "/v1/state/shared/app/k", &[("Authorization", &bearer(&text))], b"v").await;
    assert_eq!(put.status, 200, "its namespace: {}", String::from_utf8_lossy(&put.body));
    let (status, body) = http_as(&addrs[2], &text, "GET", "/v1/tokens", "").await;
    assert_eq!(status, 403, "a client token may not list tokens: {body}");
    assert_eq!(body["error"]["code"], "PERMISSION_DENIED");
    assert!(body["error"]["message"].as_str().unwrap().contains("needs role admin"), "{body}");

    tracing::info!("phase: the list (through node 3) shows it, and no secret");
    let (status, listed) = http_as(&addrs[2], &admin_text, "GET", "/v1/tokens", "").await;
    assert_eq!(status, 200, "{listed}");
    let tokens = listed["tokens"].as_array().expect("tokens");
    let mine = tokens.iter().find(|t| t["id"] == token.id()).unwrap_or_else(|| panic!("listed: {listed}"));
    assert_eq!(mine, record, "the list shows the record the create answered");
    assert!(tokens.iter().any(|t| t["id"] == admin.id() && t["name"] == "bootstrap"), "{listed}");
    assert!(listed["next_page_token"].is_null(), "{listed}");
    let admin_secret = &admin_text[5 + admin.id().len() + 1..];
    assert!(!listed.to_string().contains(&secret) && !listed.to_string().contains(admin_secret), "{listed}");
    let (status, page) = http_as(&addrs[2], &admin_text, "GET", "/v1/tokens?limit=1", "").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["tokens"].as_array().map(Vec::len), Some(1));
    let next = page["next_page_token"].as_str().expect("a next page").to_owned();
    let (status, rest) =
        http_as(&addrs[2], &admin_text, "GET", &format!("/v1/tokens?limit=100&page_token={next}"), "").await;
    assert_eq!(status, 200, "{rest}");
    assert_eq!(rest["tokens"].as_array().map(Vec::len), Some(tokens.len() - 1), "{rest}");

    tracing::info!("phase: bad requests get 400 naming the field, 401, 403 and 404; nothing is made");
    let count = |cluster: &Cluster| cluster.node(1).applied().read(|a| a.grid.tokens_after(None).count());
    let before = count(&cluster);
    for (body, expected) in [
        (r#"{"name": "x y", "role": "client"}"#, "invalid token name 'x y'"),
        (r#"{"name": "x", "role": "boss"}"#, "role: unknown role \"boss\""),
        (r#"{"name": "x", "role": "client", "serve": ["echo"]}"#, "serve: only role agent"),
        (r#"{"name": "x", "role": "client", "streams": ["a b"]}"#, "streams: 'a b'"),
        (r#"{"name": "x", "role": "client", "expires_in_ms": 0}"#, "expires_in_ms"),
        (r#"{"role": "client"}"#, "missing field `name`"),
        (r#"{"name": "x", "role": "client", "secret": "mine"}"#, "unknown field `secret`"),
    ] {
        let (status, answer) = http_as(&addrs[0], &admin_text, "POST", "/v1/tokens", body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{body}: {message} should say {expected:?}");
    }
    let none = http(
        &addrs[0],
        "POST",
        "/v1/tokens",
        &[("Content-Type", "application/json")],
        br#"{"name": "x", "role": "admin"}"#,
    )
    .await;
    assert_eq!(none.status, 401, "no token");
    let (status, answer) =
        http_as(&addrs[0], &text, "POST", "/v1/tokens", r#"{"name": "mine", "role": "admin"}"#).await;
    assert_eq!(status, 403, "a client token may not make tokens: {answer}");
    let (status, answer) =
        http_as(&addrs[0], &text, "DELETE", &format!("/v1/tokens/{}", admin.id()), "").await;
    assert_eq!(status, 403, "nor revoke them: {answer}");
    let (status, answer) = http_as(&addrs[0], &admin_text, "DELETE", "/v1/tokens/nosuchid", "").await;
    assert_eq!(status, 404, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("no token 'nosuchid'"), "{answer}");
    let (status, answer) = http_as(&addrs[0], &admin_text, "DELETE", "/v1/tokens/not-an-id", "").await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("id: 'not-an-id'"), "{answer}");
    let (status, answer) = http_as(&addrs[0], &admin_text, "GET", "/v1/tokens?limit=101", "").await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(count(&cluster), before, "no refused request made a token");
    grpc_status(&addrs[0], Some(&bearer(&admin_text))).await.expect("the admin token still works");

    tracing::info!("phase: revoked over HTTP through node 2: every node refuses it once the answer is in");
    let (status, revoked) =
        http_as(&addrs[1], &admin_text, "DELETE", &format!("/v1/tokens/{}", token.id()), "").await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked, serde_json::json!({"existed": true, "not_applied": []}));
    for addr in &addrs {
        refused_everywhere(addr, Some(&bearer(&text)), "was revoked", &secret).await;
    }
    let (status, again) =
        http_as(&addrs[2], &admin_text, "DELETE", &format!("/v1/tokens/{}", token.id()), "").await;
    assert_eq!((status, &again["existed"]), (200, &serde_json::json!(false)), "{again}");
    let (_, listed) = http_as(&addrs[0], &admin_text, "GET", "/v1/tokens", "").await;
    assert!(listed["tokens"].as_array().unwrap().iter().all(|t| t["id"] != token.id()), "{listed}");

    tracing::info!("phase: the HTTP create and revoke are in the audit trail with the admin");
    let audit = audit_text(&admin_file, &addrs[0]).await;
    let admin_name = format!("token {} (bootstrap)", admin.id());
    for target in [format!("token {} (http-app), role client", token.id()), format!("token {}", token.id())] {
        assert!(audit.contains(&target), "{target} in the audit trail: {audit}");
    }
    assert!(audit.contains(&admin_name) && !audit.contains(&secret), "{audit}");
    cluster.shutdown().await;
}

/// `weft ARGS` against `endpoint` with exactly the token variables `vars` in its environment:
/// (exit code, stdout, stderr).
async fn weft_with_env(endpoint: &str, vars: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut command = tokio::process::Command::new(weft_bin());
    command
        .args(args)
        .env("WEFT_ENDPOINT", endpoint)
        .env_remove("RUST_LOG")
        .env_remove("WEFT_TOKEN")
        .env_remove("WEFT_TOKEN_FILE")
        .envs(vars.iter().copied())
        .kill_on_drop(true);
    let out =
        tokio::time::timeout(CLI_PATIENCE, command.output()).await.expect("weft in time").expect("run weft");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_takes_a_flags_token_over_the_environments_and_refuses_two_at_once() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (admin_file, admin) = bootstrap_file(dir.path());
    let cluster = Cluster::start(1, auth_on(&admin_file)).await;
    wait_for_token(&cluster, 1, admin.id()).await;
    let addr = cluster.addrs[0].clone();
    let admin_path = admin_file.to_str().unwrap();
    let unknown = Credential::generate().reveal();
    let unknown_file = dir.path().join("unknown.token");
    std::fs::write(&unknown_file, &unknown).unwrap();
    let unknown_path = unknown_file.to_str().unwrap();

    tracing::info!("phase: a flag wins over either variable");
    for (vars, flag) in [
        (vec![("WEFT_TOKEN", unknown.as_str())], ["--auth-token-file", admin_path]),
        (vec![("WEFT_TOKEN_FILE", unknown_path)], ["--auth-token", &admin.reveal()]),
        (
            vec![("WEFT_TOKEN", unknown.as_str()), ("WEFT_TOKEN_FILE", unknown_path)],
            ["--auth-token-file", admin_path],
        ),
    ] {
        let (code, out, err) = weft_with_env(&addr, &vars, &[flag[0], flag[1], "tokens", "list"]).await;
        assert_eq!(code, 0, "{vars:?} {}: {out} {err}", flag[0]);
    }

    tracing::info!("phase: without a flag, the one variable set is used");
    let (code, _, err) = weft_with_env(&addr, &[("WEFT_TOKEN_FILE", admin_path)], &["tokens", "list"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = weft_with_env(&addr, &[("WEFT_TOKEN", unknown.as_str())], &["status"]).await;
    assert!(code == 1 && err.contains("unknown token"), "the variable's token was sent: {err}");

    tracing::info!("phase: both variables, or both flags, are refused naming both, before anything is sent");
    let both = [("WEFT_TOKEN", admin.reveal()), ("WEFT_TOKEN_FILE", admin_path.to_owned())];
    let both: Vec<(&str, &str)> = both.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, _, err) = weft_with_env(&addr, &both, &["status"]).await;
    assert!(code == 1 && err.contains("WEFT_TOKEN and WEFT_TOKEN_FILE are both set"), "{err}");
    let (code, _, err) = weft_with_env(
        &addr,
        &[],
        &["--auth-token", &admin.reveal(), "--auth-token-file", admin_path, "status"],
    )
    .await;
    assert!(code == 1 && err.contains("--auth-token and --auth-token-file are both given"), "{err}");
    let secret = &admin.reveal()[5 + admin.id().len() + 1..];
    assert!(!err.contains(secret), "the refusal repeats no secret: {err}");
    cluster.shutdown().await;
}

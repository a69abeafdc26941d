//! Auth: against a node with auth on, the scaler presents its own token (`WEFT_TOKEN_FILE`), an
//! `agent` token that serves `weft.scaler` and nothing else it does not need; each agent's
//! replicas the token of their agent's `token_file`, and a replica of an agent without one has
//! no token: it never inherits the scaler's. A revoke of the scaler's token makes it exit 1,
//! leaving its replicas to a successor.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_agent::token::Authorized;
use weft_agent::{Client, Codec, Token};
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::tokens_client::TokensClient;

use crate::support::*;

/// Creates a token with `admin` (retried while the leader has not created the admin token
/// yet) and writes it to `file`.
async fn create(fabric: &Fabric, admin: &Token, request: pb::CreateTokenRequest, file: &Path) -> Token {
    let endpoint = format!("http://{}", fabric.endpoints()[0]);
    let channel = tonic::transport::Endpoint::from_shared(endpoint).unwrap().connect_lazy();
    let mut tokens = TokensClient::new(Authorized::new(channel, Some(admin.clone())));
    let deadline = Instant::now() + PATIENCE;
    let text = loop {
        match tokens.create(request.clone()).await {
            Ok(reply) => break reply.into_inner().token,
            Err(status) => {
                assert!(Instant::now() < deadline, "no token {}: {status:?}", request.name);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    std::fs::write(file, format!("{text}\n")).unwrap();
    Token::new(text).unwrap()
}

fn client(fabric: &Fabric, token: &Token) -> Client {
    Client::builder(fabric.endpoints())
        .retry_for(PATIENCE)
        .codec(Codec::Json)
        .token(Some(token.clone()))
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_present_their_agents_token_and_never_the_scalers() {
    init_tracing();
    let admin_text = weft_fabric::auth::Credential::generate().reveal();
    let fabric = Fabric::start_with(|c, root| {
        let file = root.join("admin.token");
        std::fs::write(&file, format!("{admin_text}\n")).unwrap();
        c.auth = true;
        c.auth_bootstrap_token_file = Some(file);
    })
    .await;
    let admin = Token::new(&admin_text).unwrap();
    let work_file = fabric.root().join("work.token");
    create(
        &fabric,
        &admin,
        pb::CreateTokenRequest {
            name: "work-agent".into(),
            role: "agent".into(),
            serve: vec!["work".into()],
            ..Default::default()
        },
        &work_file,
    )
    .await;
    let caller = create(
        &fabric,
        &admin,
        pb::CreateTokenRequest {
            name: "caller".into(),
            role: "client".into(),
            call: vec!["work".into(), "other".into()],
            ..Default::default()
        },
        &fabric.root().join("caller.token"),
    )
    .await;

    // The least the scaler needs: serve weft.scaler (which lets it watch demand), its group's
    // lease and intents. No admin or operator token.
    let scaler_file = fabric.root().join("scaler.token");
    let scaler_token = create(
        &fabric,
        &admin,
        pb::CreateTokenRequest {
            name: "scaler".into(),
            role: "agent".into(),
            serve: vec!["weft.scaler".into()],
            namespaces: vec!["shared/weft.scaler.".into(), "weft.scaler.".into()],
            ..Default::default()
        },
        &scaler_file,
    )
    .await;

    let group = Group::new("auth");
    let backoff =
        "max_replicas = 1\nrestart_initial_ms = 300\nrestart_cap_ms = 1000\ncrash_loop_threshold = 2";
    let config = config_head(&fabric, &group)
        + &scaled_agent("work", &format!("max_replicas = 1\ntoken_file = \"{}\"", work_file.display()))
        + &scaled_agent("other", backoff);
    // The scaler's own token comes from its environment, which its replicas would inherit.
    let mut scaler = start_scaler_with(&fabric, "scaler", &config, &[("WEFT_TOKEN_FILE", &scaler_file)]);
    let operator = client(&fabric, &admin);
    wait_status(&operator, &group, "the scaler publishes with its token", |s| {
        s["agents"]["work"].is_object()
    })
    .await;

    tracing::info!("phase: a caller with a client token starts a replica, which serves with its agent token");
    let who: Value = client(&fabric, &caller)
        .request("work", "whoami")
        .timeout(PATIENCE)
        .call()
        .await
        .expect("the call is served");
    assert!(who["session"].as_str().is_some_and(|s| s.starts_with("work-")), "{who}");

    tracing::info!("phase: the replica of an agent without token_file has no token, and says so");
    client(&fabric, &caller).request("other", "echo").args(&1).send().await.expect("a pending call");
    wait_status(&operator, &group, "other crash-looping", |s| {
        s["agents"]["other"]["crash_looping"].is_object()
    })
    .await;
    let log = std::fs::read_to_string(fabric.root().join("logs/other.log")).expect("the agent's log");
    assert!(log.contains("unauthenticated: no credentials"), "{log}");
    assert!(!log.contains(scaler_token.secret()), "the scaler's token never reached it");
    assert!(!log.contains(&admin_text));
    let work_log = std::fs::read_to_string(fabric.root().join("logs/work.log")).expect("the agent's log");
    assert!(!work_log.contains("unauthenticated"), "{work_log}");

    tracing::info!(
        "phase: the scaler's token is revoked: it exits 1 saying why, leaving its replicas running"
    );
    let before: Vec<String> = group.running().into_iter().map(|f| f.handle).collect();
    assert!(!before.is_empty(), "the work replica runs");
    let endpoint = format!("http://{}", fabric.endpoints()[0]);
    let channel = tonic::transport::Endpoint::from_shared(endpoint).unwrap().connect_lazy();
    TokensClient::new(Authorized::new(channel, Some(admin.clone())))
        .revoke(pb::RevokeTokenRequest { id: scaler_token.id().unwrap().to_owned() })
        .await
        .expect("revoke the scaler's token");
    let exit = scaler.wait_exit(PATIENCE).await.expect("the scaler exits instead of watching again");
    assert_eq!(exit.code(), Some(1), "{}", scaler.log_tail(20));
    let log = scaler.log_tail(20);
    assert!(
        log.contains("the scaler stopped: credentials refused")
            && log.contains(&format!("token \"{}\" was revoked", scaler_token.id().unwrap())),
        "{log}"
    );
    let after: Vec<String> = group.running().into_iter().map(|f| f.handle).collect();
    assert!(before.iter().any(|h| after.contains(h)), "left running: {before:?} then {after:?}");
    let who: Value = client(&fabric, &caller)
        .request("work", "whoami")
        .timeout(PATIENCE)
        .call()
        .await
        .expect("the replica, with its own token, still serves");
    assert!(who["session"].as_str().is_some_and(|s| s.starts_with("work-")), "{who}");
}

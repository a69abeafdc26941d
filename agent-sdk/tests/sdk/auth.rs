//! Tokens against real nodes with auth on: an agent with an agent token serves, a client
//! with a client token calls it; no token, an unknown one and one out of its scopes fail with
//! the node's message, at once (not retried).

use std::time::{Duration, Instant};

use weft_agent::token::Authorized;
use weft_agent::{Agent, Client, Context, Error, Fail, Token, Worker};
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::tokens_client::TokensClient;

use crate::support::*;

/// A 3-node cluster with auth on whose bootstrap admin token is the one returned.
async fn cluster_with_auth() -> (TestCluster, Token, tempfile::TempDir) {
    let secrets = tempfile::tempdir().expect("temp dir");
    let text = weft_fabric::auth::Credential::generate().reveal();
    let file = secrets.path().join("admin.token");
    std::fs::write(&file, format!("{text}\n")).unwrap();
    let c = TestCluster::start(3, |config| {
        config.auth = true;
        config.auth_bootstrap_token_file = Some(file.clone());
    })
    .await;
    (c, Token::new(&text).unwrap(), secrets)
}

/// Creates a token with the admin token; retried while the leader has not created the admin
/// token yet.
async fn create(c: &TestCluster, admin: &Token, request: pb::CreateTokenRequest) -> Token {
    let deadline = Instant::now() + PATIENCE;
    loop {
        for endpoint in c.endpoints() {
            let channel =
                tonic::transport::Endpoint::from_shared(format!("http://{endpoint}")).unwrap().connect_lazy();
            let mut tokens = TokensClient::new(Authorized::new(channel, Some(admin.clone())));
            match tokens.create(request.clone()).await {
                Ok(reply) => return Token::new(reply.into_inner().token).unwrap(),
                Err(status) => {
                    assert!(
                        Instant::now() < deadline,
                        "no token {} within {PATIENCE:?}: {status:?}",
                        request.name
                    );
                    tracing::debug!(?status, "token not created yet");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn echo() -> Agent {
    Agent::new("echo").delegate("say", |_ctx: Context, text: String| async move { Ok::<_, Fail>(text) })
}

fn client(c: &TestCluster, token: Option<Token>) -> Client {
    Client::builder(c.endpoints()).token(token).retry_for(Duration::from_secs(5)).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_and_clients_present_their_tokens_and_bad_ones_are_refused() {
    init_tracing();
    let (c, admin, _secrets) = cluster_with_auth().await;
    let agent_token = create(
        &c,
        &admin,
        pb::CreateTokenRequest {
            name: "echo-agent".into(),
            role: "agent".into(),
            serve: vec!["echo".into()],
            ..Default::default()
        },
    )
    .await;
    let client_token = create(
        &c,
        &admin,
        pb::CreateTokenRequest {
            name: "echo-client".into(),
            role: "client".into(),
            call: vec!["echo".into()],
            ..Default::default()
        },
    )
    .await;

    tracing::info!("an agent with an agent token serves; a client with a client token calls it");
    let worker = Worker::builder(c.endpoints())
        .token(Some(agent_token))
        .agent(echo())
        .drain_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let stopper = worker.stopper();
    let serving = tokio::spawn(worker.run());
    let caller = client(&c, Some(client_token.clone()));
    let said: String = caller.call("echo", "say", &"hello").await.expect("the call is served");
    assert_eq!(said, "hello");

    tracing::info!("no token: refused at once, naming what is missing");
    let started = Instant::now();
    let e = client(&c, None).call::<_, String>("echo", "say", &"hi").await.unwrap_err();
    let Error::Unauthenticated(message) = &e else { panic!("{e:?}") };
    assert!(message.contains("requires a bearer token"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(2), "not retried: {:?}", started.elapsed());

    tracing::info!("a token the cluster does not know: refused, naming it");
    let stranger = Token::new(weft_fabric::auth::Credential::generate().reveal()).unwrap();
    let id = stranger.id().unwrap().to_owned();
    let e = client(&c, Some(stranger.clone())).call::<_, String>("echo", "say", &"hi").await.unwrap_err();
    let Error::Unauthenticated(message) = &e else { panic!("{e:?}") };
    assert!(message.contains("unknown token") && message.contains(&id), "{message}");
    assert!(!message.contains(stranger.secret()), "the secret is not repeated: {message}");

    tracing::info!("a worker with an unknown token stops with the refusal instead of retrying");
    let refused = Worker::builder(c.endpoints()).token(Some(stranger)).agent(echo()).build().unwrap();
    let e = tokio::time::timeout(PATIENCE, refused.run()).await.expect("it stops").unwrap_err();
    assert!(matches!(e, Error::Unauthenticated(_)), "{e:?}");

    stopper.stop();
    tokio::time::timeout(PATIENCE, serving).await.expect("the worker stops").unwrap().unwrap();
    c.cluster.shutdown().await;
}

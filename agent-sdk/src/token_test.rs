//! The token on the wire: a local gRPC server on 127.0.0.1 records the `authorization`
//! header of every request and refuses it as a node with auth on would, so each kind of call
//! (unary, server-streaming, both bidirectional Listen streams, failover to another node) is
//! seen to carry the token, and each refusal to come back as a clear, final error.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};

use crate::{Agent, Client, Error, Fail, Token, Worker};

const TEXT: &str = "weft_0123456789ab_00112233445566778899aabbccddeeff";
const SECRET: &str = "00112233445566778899aabbccddeeff";

/// How the fake node answers.
#[derive(Clone, Copy)]
enum Mode {
    /// As a node with auth on: UNAUTHENTICATED without a token, PERMISSION_DENIED with one.
    Refuse,
    /// The first request: UNAVAILABLE with `weft-not-applied` (a node without a leader), so
    /// the caller fails over; later ones as `Refuse`.
    UnavailableFirst,
}

/// A request as the fake node saw it: its gRPC path and `authorization` header.
type Seen = (String, Option<String>);

#[derive(Clone)]
struct Fake {
    mode: Mode,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn answer(State(fake): State<Fake>, request: Request) -> Response {
    let auth = request.headers().get("authorization").map(|v| v.to_str().unwrap_or("?").to_owned());
    let first = {
        let mut seen = fake.seen.lock().unwrap();
        seen.push((request.uri().path().to_owned(), auth.clone()));
        seen.len() == 1
    };
    let status = match (fake.mode, auth) {
        (Mode::UnavailableFirst, _) if first => {
            let mut status = tonic::Status::unavailable("no leader");
            status.metadata_mut().insert(weft_proto::wire::NOT_APPLIED_HEADER, "true".parse().unwrap());
            status
        }
        (_, None) => tonic::Status::unauthenticated(
            "no credentials: this node requires a bearer token (header `authorization: Bearer <token>`)",
        ),
        (_, Some(_)) => tonic::Status::permission_denied(
            "permission denied: token 0123456789ab (test) (role client) may not do this: calling agent \
             \"echo\"; needs \"echo\" in its call list",
        ),
    };
    status.into_http::<axum::body::Body>().into_response()
}

/// A fake node on 127.0.0.1 (HTTP/2 without TLS, as the SDK speaks to a plain node).
async fn fake_node(mode: Mode) -> (String, Fake) {
    let fake = Fake { mode, seen: Arc::default() };
    let app = axum::Router::new().fallback(answer).with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, fake)
}

fn client(endpoints: Vec<String>, token: Option<Token>) -> Client {
    Client::builder(endpoints).retry_for(Duration::from_secs(5)).token(token).build().unwrap()
}

fn token() -> Option<Token> {
    Some(Token::new(TEXT).unwrap())
}

/// Every kind of call, made with `token`, each with what it came back with.
async fn every_kind_of_call(endpoint: String, token: Option<Token>) -> Vec<(&'static str, Error)> {
    let client = client(vec![endpoint.clone()], token.clone());
    let mut out = Vec::new();
    out.push(("unary Get", client.execution(1).await.unwrap_err()));
    out.push(("unary Call", client.call::<_, ()>("echo", "echo", &"hi").await.unwrap_err()));
    out.push(("unary State.Get", client.state("shared/x").get::<String>("k").await.unwrap_err()));
    out.push(("server-streaming Wait", client.wait::<()>(1, Duration::from_secs(1)).await.unwrap_err()));
    out.push(("server-streaming WatchDemand", client.watch_demand(&[]).next().await.unwrap_err()));
    out.push(("bidi Streams.Listen", client.stream("s").listener::<String>().start().await.unwrap_err()));
    let worker = Worker::builder([endpoint]).agent(Agent::new("echo")).token(token).build().unwrap();
    let run = tokio::time::timeout(Duration::from_secs(10), worker.run()).await;
    out.push(("bidi Executions.Listen", run.expect("a refused worker stops").unwrap_err()));
    out
}

const PATHS: [&str; 7] = [
    "/weft.fabric.v1.Executions/Get",
    "/weft.fabric.v1.Executions/Call",
    "/weft.fabric.v1.State/Get",
    "/weft.fabric.v1.Executions/Wait",
    "/weft.fabric.v1.Scaling/WatchDemand",
    "/weft.fabric.v1.Streams/Listen",
    "/weft.fabric.v1.Executions/Listen",
];

#[tokio::test]
async fn every_kind_of_call_carries_the_token_and_a_refusal_is_final() {
    let (addr, fake) = fake_node(Mode::Refuse).await;
    for (call, error) in every_kind_of_call(addr, token()).await {
        let Error::PermissionDenied(message) = &error else { panic!("{call}: {error:?}") };
        assert!(
            message.starts_with("token 0123456789ab (test)") && message.contains("call list"),
            "{call}: {message}"
        );
        assert_eq!(error.to_string(), format!("permission denied: {message}"), "said once");
        assert!(!Fail::from(error.clone()).is_retryable(), "{call}: a handler does not retry it");
    }
    let seen = fake.seen();
    let paths: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, PATHS, "each call sent once: a refusal is not retried");
    for (path, auth) in &seen {
        assert_eq!(auth.as_deref(), Some(format!("Bearer {TEXT}").as_str()), "{path}");
    }
}

#[tokio::test]
async fn without_a_token_the_refusal_names_what_is_missing() {
    let (addr, fake) = fake_node(Mode::Refuse).await;
    for (call, error) in every_kind_of_call(addr, None).await {
        let Error::Unauthenticated(message) = &error else { panic!("{call}: {error:?}") };
        assert!(message.contains("requires a bearer token"), "{call}: {message}");
    }
    let seen = fake.seen();
    assert_eq!(seen.len(), PATHS.len(), "not retried: {seen:?}");
    assert!(seen.iter().all(|(_, auth)| auth.is_none()), "{seen:?}");
}

#[tokio::test]
async fn failover_to_the_next_node_carries_the_token() {
    let (a, fake_a) = fake_node(Mode::UnavailableFirst).await;
    let (b, fake_b) = fake_node(Mode::UnavailableFirst).await;
    let client = client(vec![a.clone(), b.clone()], token());
    let e = client.execution(1).await.unwrap_err();
    assert!(matches!(e, Error::PermissionDenied(_)), "{e:?}");
    let worker = Worker::builder([a, b]).agent(Agent::new("echo")).token(token()).build().unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), worker.run()).await.unwrap().unwrap_err();
    assert!(matches!(e, Error::PermissionDenied(_)), "{e:?}");
    let (seen_a, seen_b) = (fake_a.seen(), fake_b.seen());
    assert!(!seen_a.is_empty() && !seen_b.is_empty(), "both nodes asked: {seen_a:?} {seen_b:?}");
    assert!(seen_a.len() + seen_b.len() >= 3, "a node that was unavailable asked again");
    for (path, auth) in seen_a.iter().chain(&seen_b) {
        assert_eq!(auth.as_deref(), Some(format!("Bearer {TEXT}").as_str()), "{path}");
    }
}

#[tokio::test]
async fn the_secret_is_not_in_debug_output() {
    let builder = Client::builder(["127.0.0.1:1"]).token(token());
    let client = builder.clone().build().unwrap();
    let worker = Worker::builder(["127.0.0.1:1"]).agent(Agent::new("echo")).token(token());
    let shown = format!("{builder:?} {client:?} {worker:?} {:?} {}", token().unwrap(), token().unwrap());
    assert!(shown.contains("0123456789ab"), "the id is shown: {shown}");
    assert!(!shown.contains(SECRET), "{shown}");
}

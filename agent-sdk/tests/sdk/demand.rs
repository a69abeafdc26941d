//! The demand watch: pictures pushed as work comes and is served, a watch that moves to
//! another node when its node stops, and a refused watch.

use std::time::Duration;

use weft_agent::{Agent, Client, Context, Demand, DemandWatch, Error, Fail};

use crate::support::*;

/// Pictures until one that satisfies `f` (within [`PATIENCE`]).
async fn until(watch: &mut DemandWatch, what: &str, f: impl Fn(&Demand) -> bool) -> Demand {
    let found = tokio::time::timeout(PATIENCE, async {
        loop {
            let picture = watch.next().await.expect("the watch goes on");
            if f(&picture) {
                return picture;
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no picture where {what} within {PATIENCE:?}"))
}

fn pending(picture: &Demand, agent: &str) -> u64 {
    picture.agent(agent).map_or(0, |a| a.pending)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_watch_survives_its_node_stopping_and_sees_work_come_and_go() {
    init_tracing();
    let mut c = TestCluster::start(3, |_| {}).await;
    let client = Client::builder(c.endpoints()).retry_for(PATIENCE).build().unwrap();
    let mut watch = client.watch_demand(&["echo".to_owned()]);
    let first = watch.next().await.expect("a first picture");
    let echo = first.agent("echo").expect("a named agent is always there");
    assert_eq!((echo.pending, echo.running, echo.sessions.len()), (0, 0, 0));
    let watched = first.node_id;

    tracing::info!(watched, "the watched node stops; a call comes meanwhile");
    c.cluster.stop(watched).await;
    let id = client.request("echo", "say").args(&"hi").send().await.expect("the call is created");
    let picture = until(&mut watch, "pending 1", |p| pending(p, "echo") == 1).await;
    assert_ne!(picture.node_id, watched, "served by another node");

    tracing::info!("a worker serves echo: the call runs, then nothing waits");
    let agent =
        Agent::new("echo").delegate("say", |_ctx: Context, what: String| async move { Ok::<_, Fail>(what) });
    let worker = spawn_worker(c.endpoints(), vec![agent], 2);
    let picture =
        until(&mut watch, "a session", |p| p.agent("echo").is_some_and(|a| !a.sessions.is_empty())).await;
    let session = &picture.agent("echo").unwrap().sessions[0];
    assert_eq!(session.capacity, 2);
    assert!(session.name.starts_with("weft-agent pid"), "{session:?}");
    assert_eq!(client.wait::<String>(id, PATIENCE).await.unwrap(), "hi");
    let picture = until(&mut watch, "nothing pending or running", |p| {
        p.agent("echo").is_some_and(|a| a.pending + a.running == 0)
    })
    .await;
    assert_eq!(picture.agent("echo").unwrap().sessions.len(), 1);
    worker.stop().await.unwrap();
    c.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_watch_is_refused_and_no_node_at_all_is_unavailable() {
    init_tracing();
    let c = TestCluster::start(1, |_| {}).await;
    let client = Client::new(c.endpoints()).unwrap();
    let e = client.watch_demand(&["not ok!".to_owned()]).next().await.expect_err("refused");
    assert!(
        matches!(&e, Error::Refused { code: tonic::Code::InvalidArgument, message } if message.contains("invalid agent name 'not ok!'")),
        "{e:?}"
    );
    let all = client.watch_demand(&[]).next().await.expect("every agent");
    assert!(all.agents.is_empty(), "nothing yet: {all:?}");
    c.cluster.shutdown().await;

    let nobody = Client::builder(["127.0.0.1:1"]).retry_for(Duration::from_millis(500)).build().unwrap();
    let e = nobody.watch_demand(&[]).next().await.expect_err("no node");
    assert!(matches!(&e, Error::Unavailable(m) if m.contains("no node served the demand watch")), "{e:?}");
}

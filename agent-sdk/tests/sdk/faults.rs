//! Faults: durable timers across a restart of every node, and a leader killed (`kill -9`)
//! in the middle of a call.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use weft_agent::{Agent, Client, Context, Fail, Status};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timers_fire_after_a_restart_of_every_node() {
    init_tracing();
    let mut c = TestCluster::start(3, |_| {}).await;
    let client = Client::new(c.endpoints()).unwrap();
    let created = Instant::now();
    let delayed =
        client.request("clock", "ring").args(&"delayed").delay(Duration::from_secs(4)).send().await.unwrap();
    let at = SystemTime::now() + Duration::from_secs(5);
    let scheduled = client.request("clock", "ring").args(&"scheduled").not_before(at).send().await.unwrap();

    tracing::info!("every node stops and starts again; nothing serves the agent yet");
    for id in 1..=3 {
        c.cluster.stop(id).await;
    }
    for id in 1..=3 {
        c.cluster.restart(id).await.expect("node restarts");
    }
    c.leader().await;
    assert_eq!(client.execution(delayed).await.unwrap().status, Status::Pending);

    let (rang_tx, mut rang) = mpsc::unbounded_channel::<(String, Instant)>();
    let agent = Agent::new("clock").delegate("ring", move |_ctx: Context, what: String| {
        let rang = rang_tx.clone();
        async move {
            let _ = rang.send((what.clone(), Instant::now()));
            Ok::<_, Fail>(what)
        }
    });
    let worker = spawn_worker(c.endpoints(), vec![agent], 4);
    assert_eq!(client.wait::<String>(delayed, PATIENCE).await.unwrap(), "delayed");
    assert_eq!(client.wait::<String>(scheduled, PATIENCE).await.unwrap(), "scheduled");
    let mut rings = [rang.recv().await.unwrap(), rang.recv().await.unwrap()];
    rings.sort_by_key(|(_, t)| *t);
    tracing::info!(
        delayed_after = ?(rings[0].1 - created),
        scheduled_after = ?(rings[1].1 - created),
        "timers fired"
    );
    assert_eq!(rings[0].0, "delayed");
    assert!(rings[0].1 - created >= Duration::from_secs(4), "not before its delay");
    assert!(rings[1].1 - created >= Duration::from_millis(4_900), "not before its time");
    worker.stop().await.unwrap();
    c.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_killed_mid_call_still_gives_the_caller_one_result() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = node_processes(dir.path(), 3);
    let addrs = nodes.addrs().to_vec();
    let leader = leader_of(&addrs).await;
    let client = Client::new(addrs.clone()).unwrap();
    let started = client.start_instance_with::<_, ()>("tally", Some("t"), &(), None, None);
    let (running_tx, mut running) = mpsc::unbounded_channel::<u64>();
    let runs = Arc::new(AtomicU32::new(0));
    let counted = runs.clone();
    let agent = Agent::new("tally").delegate("add", move |ctx: Context, (): ()| {
        let (running, runs) = (running_tx.clone(), counted.clone());
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            let state = ctx.state()?;
            let n: u64 = state.get("n").await?.unwrap_or(0);
            let _ = running.send(ctx.execution_id());
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            state.put("n", &(n + 1))?;
            Ok::<_, Fail>(n + 1)
        }
    });
    let worker = spawn_worker(addrs.clone(), vec![agent], 4);
    tokio::time::timeout(PATIENCE, started).await.expect("started in time").expect("the instance starts");

    tracing::info!(leader, "a call runs; the leader is killed while its handler works");
    let call = {
        let client = client.clone();
        tokio::spawn(async move {
            client.request("tally", "add").instance("t").wait(PATIENCE).call::<u64>().await
        })
    };
    let execution = tokio::time::timeout(PATIENCE, running.recv()).await.unwrap().unwrap();
    nodes.nodes_mut()[leader as usize - 1].kill9();
    let killed = Instant::now();
    let result = tokio::time::timeout(PATIENCE * 2, call).await.expect("the call ends").unwrap();
    tracing::info!(?result, after = ?killed.elapsed(), runs = runs.load(Ordering::SeqCst), "the caller's answer");
    assert_eq!(result.expect("one result despite the dead leader"), 1);
    let survivors: Vec<String> =
        addrs.iter().enumerate().filter(|(i, _)| *i as u64 + 1 != leader).map(|(_, a)| a.clone()).collect();
    let reader = Client::new(survivors).unwrap();
    assert_eq!(reader.state("instance/tally/t").get::<u64>("n").await.unwrap(), Some(1), "applied once");
    let e = reader.execution(execution).await.unwrap();
    assert_eq!(e.status, Status::Completed);
    tracing::info!(attempts = e.attempts, "deliveries of the call");

    tracing::info!("the old leader comes back and everything goes on");
    nodes.nodes_mut()[leader as usize - 1].restart().expect("the old leader restarts");
    let again: u64 = client.request("tally", "add").instance("t").call().await.unwrap();
    assert_eq!(again, 2);
    worker.stop().await.unwrap();
}

/// A node that accepts connections and never answers: the error names the endpoint the
/// client waited on. An endpoint without a port is refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_names_the_endpoint_and_a_missing_port_is_refused() {
    init_tracing();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    // Holds every connection open, reading nothing and sending nothing.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });

    tracing::info!("a read against a node that never answers");
    let client = Client::builder([addr.as_str()])
        .attempt_timeout(Duration::from_millis(300))
        .retry_for(Duration::from_secs(1))
        .build()
        .unwrap();
    let e = client.state("shared/t").get::<String>("k").await.unwrap_err().to_string();
    assert!(e.contains(&format!("(endpoint {addr})")), "the error names the endpoint: {e}");
    holder.abort();

    tracing::info!("an endpoint without a port");
    let e = Client::new(["127.0.0.1"]).unwrap_err();
    assert!(matches!(e, weft_agent::Error::Usage(_)), "{e}");
    assert!(e.to_string().contains("'127.0.0.1' has no port"), "{e}");
}

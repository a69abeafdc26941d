//! Eager calls: a call that a worker on the leader takes at once is pushed before it is
//! created and created in the entry that carries its completion (one log entry per call); a
//! slow handler, a child call, a repeated idempotency key and a worker that goes away while
//! its call is held all still give one run and one right result.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use weft_agent::{Agent, Client, Context, Fail, Status};

use crate::support::*;

/// Runs of a handler: (execution id, attempt).
type Runs = Arc<Mutex<Vec<(u64, u32)>>>;

fn counting(name: &str, delay: Duration, runs: Runs) -> Agent {
    Agent::new(name).delegate("double", move |ctx: Context, x: u64| {
        let runs = runs.clone();
        async move {
            runs.lock().unwrap().push((ctx.execution_id(), ctx.attempt()));
            tokio::time::sleep(delay).await;
            Ok::<_, Fail>(2 * x)
        }
    })
}

fn last_log_index(c: &TestCluster, id: u64) -> u64 {
    c.cluster.node(id).raft().metrics().borrow().last_log_index.unwrap_or(0)
}

/// Log entries that `calls` sequential calls through the leader to a worker on the leader
/// cost, on a cluster of `nodes` with eager calls `on` or off.
async fn entries_per_call(nodes: usize, on: bool, calls: u64) -> (u64, Runs) {
    let c = TestCluster::start(nodes, |cfg| cfg.eager_calls = on).await;
    let leader = c.leader().await;
    let at_leader = vec![c.cluster.addrs[leader as usize - 1].clone()];
    let runs: Runs = Arc::default();
    let worker = spawn_worker(at_leader.clone(), vec![counting("eager", Duration::ZERO, runs.clone())], 4);
    let client = Client::new(at_leader).unwrap();
    // The first call waits for the worker's session; the first that finds the session asks
    // for the leader's first block (both go the old way).
    for x in [1u64, 2] {
        let warm: u64 = client.call("eager", "double", &x).await.unwrap();
        assert_eq!(warm, 2 * x);
    }
    let before = last_log_index(&c, leader);
    for x in 0..calls {
        let got: u64 = client.call("eager", "double", &x).await.unwrap();
        assert_eq!(got, 2 * x);
    }
    let used = last_log_index(&c, leader) - before;
    worker.stop().await.unwrap();
    c.cluster.shutdown().await;
    (used, runs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fast_call_is_one_log_entry() {
    init_tracing();
    for nodes in [1, 3] {
        let (eager, runs) = entries_per_call(nodes, true, 20).await;
        // A block reserved meanwhile may add one.
        assert!(eager <= 21, "{nodes} nodes: 20 eager calls took {eager} entries");
        let runs = runs.lock().unwrap().clone();
        assert_eq!(runs.len(), 22, "{nodes} nodes: one run per call: {runs:?}");
        assert!(runs.iter().all(|(_, attempt)| *attempt == 1), "{runs:?}");
        let (plain, _) = entries_per_call(nodes, false, 20).await;
        assert!(plain >= 40, "{nodes} nodes: without eager calls, 20 calls took only {plain} entries");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handler_slower_than_the_linger_runs_once() {
    init_tracing();
    let c = TestCluster::start(1, |cfg| cfg.eager_linger_ms = 5).await;
    let runs: Runs = Arc::default();
    let worker =
        spawn_worker(c.endpoints(), vec![counting("slow", Duration::from_millis(150), runs.clone())], 4);
    let client = Client::new(c.endpoints()).unwrap();
    for x in 0..5u64 {
        let got: u64 = client.call("slow", "double", &x).await.unwrap();
        assert_eq!(got, 2 * x);
    }
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 5, "one run per call: {runs:?}");
    for (id, attempt) in runs {
        assert_eq!(attempt, 1);
        let e = client.execution(id).await.unwrap();
        assert_eq!((e.status, e.attempts), (Status::Completed, 1), "execution {id}");
    }
    worker.stop().await.unwrap();
    c.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_call_may_call_a_child() {
    init_tracing();
    let c = TestCluster::start(1, |_| {}).await;
    let parent = Agent::new("parent").delegate("sum", |ctx: Context, x: u64| async move {
        let doubled: u64 = ctx.call("child", "double", &x).await.map_err(|e| Fail::new(e.to_string()))?;
        Ok::<_, Fail>(doubled + 1)
    });
    let runs: Runs = Arc::default();
    let worker =
        spawn_worker(c.endpoints(), vec![parent, counting("child", Duration::ZERO, runs.clone())], 8);
    let client = Client::new(c.endpoints()).unwrap();
    for x in 0..5u64 {
        let got: u64 = client.call("parent", "sum", &x).await.unwrap();
        assert_eq!(got, 2 * x + 1);
    }
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 5, "{runs:?}");
    for (child, _) in runs {
        let e = client.execution(child).await.unwrap();
        assert_eq!(
            (e.agent.as_str(), e.status, e.attempts),
            ("child", Status::Completed, 1),
            "child {child}"
        );
    }
    worker.stop().await.unwrap();
    c.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_key_twice_while_held_is_one_execution() {
    init_tracing();
    let c = TestCluster::start(1, |_| {}).await;
    let runs: Runs = Arc::default();
    let worker =
        spawn_worker(c.endpoints(), vec![counting("keyed", Duration::from_millis(100), runs.clone())], 4);
    let client = Client::new(c.endpoints()).unwrap();
    for round in 0..3 {
        let key = format!("k-{round}");
        let (a, b) = tokio::join!(
            client.request("keyed", "double").args(&7u64).idempotency_key(&key).call::<u64>(),
            client.request("keyed", "double").args(&7u64).idempotency_key(&key).call::<u64>(),
        );
        assert_eq!((a.unwrap(), b.unwrap()), (14, 14));
    }
    let runs = runs.lock().unwrap().clone();
    let mut ids: Vec<u64> = runs.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "one execution per key: {runs:?}");
    worker.stop().await.unwrap();
    c.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_held_by_a_worker_that_goes_away_runs_elsewhere() {
    init_tracing();
    let c = TestCluster::start(1, |cfg| cfg.eager_linger_ms = 200).await;
    let (started_tx, mut started) = tokio::sync::mpsc::channel::<u64>(4);
    // The first worker's handler never finishes: it tells the test it started, then hangs.
    let hang = Agent::new("moved").delegate("double", move |ctx: Context, _x: u64| {
        let started_tx = started_tx.clone();
        async move {
            let _ = started_tx.send(ctx.execution_id()).await;
            std::future::pending::<()>().await;
            Ok::<u64, Fail>(0)
        }
    });
    let first = spawn_worker(c.endpoints(), vec![hang], 1);
    let client = Client::new(c.endpoints()).unwrap();
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.call::<_, u64>("moved", "double", &21u64).await }
    });
    tokio::time::timeout(PATIENCE, started.recv()).await.expect("the first worker runs it");
    first.stopper.stop();
    first.task.abort();
    let runs: Runs = Arc::default();
    let second = spawn_worker(c.endpoints(), vec![counting("moved", Duration::ZERO, runs.clone())], 1);
    let got = tokio::time::timeout(PATIENCE, call).await.expect("an answer").unwrap().unwrap();
    assert_eq!(got, 42);
    assert_eq!(runs.lock().unwrap().len(), 1, "the second worker ran it once");
    second.stop().await.unwrap();
    c.cluster.shutdown().await;
}

/// A call with the key of a create not yet applied is not held: the first of two calls with
/// one key is delayed (never held), the second comes while the first's create waits for its
/// entry. Held, the second would run at once under a pair the grid then voids (the key names
/// the delayed call), and the key would run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_waiting_to_be_applied_is_not_held() {
    init_tracing();
    let c = TestCluster::start(1, |_| {}).await;
    let runs: Runs = Arc::default();
    let worker = spawn_worker(c.endpoints(), vec![counting("later", Duration::ZERO, runs.clone())], 4);
    let client = Client::new(c.endpoints()).unwrap();
    let _: u64 = client.call("later", "double", &1u64).await.unwrap();
    runs.lock().unwrap().clear();
    let keys = 10u64;
    for k in 0..keys {
        let key = format!("d-{k}");
        let (a, b) = tokio::join!(
            client
                .request("later", "double")
                .args(&k)
                .idempotency_key(&key)
                .delay(Duration::from_millis(50))
                .call::<u64>(),
            client.request("later", "double").args(&k).idempotency_key(&key).call::<u64>(),
        );
        assert_eq!((a.unwrap(), b.unwrap()), (2 * k, 2 * k));
    }
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), keys as usize, "one run per key: {runs:?}");
    worker.stop().await.unwrap();
    c.cluster.shutdown().await;
}

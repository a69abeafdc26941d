//! Calls: round trips through any node in both codecs, idempotency, cancellation, retries,
//! executions that wait for an agent, limits, and a worker's graceful stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use weft_agent::{Agent, Client, Codec, Context, Error, Fail, RetryPolicy, Status};

use crate::support::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    items: Vec<String>,
}

async fn total(_ctx: Context, order: Order) -> Result<String, Fail> {
    Ok(format!("order {} has {} items", order.id, order.items.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_go_through_any_node_in_either_codec() {
    init_tracing();
    let c = TestCluster::start(3, |_| {}).await;
    let leader = c.leader().await;
    let follower = (1..=3u64).find(|i| *i != leader).unwrap();
    tracing::info!(leader, follower, "the worker talks to a follower only, the callers to every node");
    let worker = spawn_worker(
        vec![c.cluster.addrs[follower as usize - 1].clone()],
        vec![Agent::new("shop").delegate("total", total)],
        8,
    );
    let order = Order { id: 7, items: vec!["tea".into(), "milk".into()] };
    for addr in &c.cluster.addrs {
        for codec in [Codec::Bincode, Codec::Json] {
            let client = Client::builder([addr.clone()]).codec(codec).build().unwrap();
            let said: String = client.call("shop", "total", &order).await.expect("a result");
            assert_eq!(said, "order 7 has 2 items", "via {addr} in {codec:?}");
        }
    }
    tracing::info!("a result in JSON for a JSON caller (what `weft call` does)");
    let client = Client::builder(c.endpoints()).codec(Codec::Json).build().unwrap();
    let id = client.request("shop", "total").args(&order).send().await.unwrap();
    let e = client.execution(id).await.unwrap();
    let _: String = client.wait(id, PATIENCE).await.unwrap();
    assert_eq!(e.agent, "shop");
    assert!(client.execution(id).await.unwrap().status.is_final());
    worker.stop().await.unwrap();
    c.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotency_key_gives_one_execution_and_one_result() {
    init_tracing();
    let c = TestCluster::start(1, |_| {}).await;
    let runs = Arc::new(AtomicU32::new(0));
    let counted = runs.clone();
    let agent = Agent::new("once").delegate("run", move |_ctx: Context, x: u32| {
        let runs = counted.clone();
        async move { Ok::<_, Fail>(x + runs.fetch_add(1, Ordering::SeqCst)) }
    });
    let worker = spawn_worker(c.endpoints(), vec![agent], 4);
    let client = Client::new(c.endpoints()).unwrap();
    let first: u32 = client.request("once", "run").args(&10u32).idempotency_key("k-1").call().await.unwrap();
    let again: u32 = client.request("once", "run").args(&10u32).idempotency_key("k-1").call().await.unwrap();
    assert_eq!((first, again), (10, 10), "the same result");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "run once");
    let a = client.request("once", "run").args(&10u32).idempotency_key("k-2").send().await.unwrap();
    let b = client.request("once", "run").args(&10u32).idempotency_key("k-2").send().await.unwrap();
    assert_eq!(a, b, "the same execution");
    let reused = client.request("once", "run").args(&11u32).idempotency_key("k-2").send().await.unwrap_err();
    assert!(
        matches!(&reused, Error::Refused { code: tonic::Code::FailedPrecondition, message } if message.contains("different call")),
        "{reused:?}"
    );
    worker.stop().await.unwrap();
    c.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancellation_reaches_the_running_handler_and_its_children() {
    init_tracing();
    let c = TestCluster::start(3, |_| {}).await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<String>();
    let parent_seen = seen_tx.clone();
    let agents = vec![
        Agent::new("slow")
            .delegate("parent", move |ctx: Context, (): ()| {
                let seen = parent_seen.clone();
                async move {
                    // The child's call ends when the child is cancelled; the parent's own
                    // revocation may arrive just before or just after that.
                    let child = ctx.request("slow", "child").call::<()>().await;
                    assert!(matches!(child, Err(Error::Cancelled { .. })), "{child:?}");
                    if tokio::time::timeout(PATIENCE, ctx.cancelled()).await.is_ok() {
                        let _ = seen.send(format!("parent {} cancelled", ctx.execution_id()));
                    }
                    Err::<(), _>(Fail::permanent("cancelled"))
                }
            })
            .delegate("child", move |ctx: Context, (): ()| {
                let seen = seen_tx.clone();
                async move {
                    let _ = seen.send("child started".to_owned());
                    ctx.cancelled().await;
                    let _ = seen.send(format!("child {} cancelled", ctx.execution_id()));
                    Ok::<_, Fail>(())
                }
            }),
    ];
    let worker = spawn_worker(c.endpoints(), agents, 4);
    let client = Client::new(c.endpoints()).unwrap();
    let id = client.request("slow", "parent").send().await.unwrap();
    assert_eq!(tokio::time::timeout(PATIENCE, seen.recv()).await.unwrap().unwrap(), "child started");
    tracing::info!(id, "cancel the parent while parent and child run");
    assert_eq!(client.cancel(id, "the user gave up").await.unwrap(), 2, "parent and child");
    let mut got = vec![
        tokio::time::timeout(PATIENCE, seen.recv()).await.unwrap().unwrap(),
        tokio::time::timeout(PATIENCE, seen.recv()).await.unwrap().unwrap(),
    ];
    got.sort();
    assert!(got[0].starts_with("child ") && got[0].ends_with("cancelled"), "{got:?}");
    assert_eq!(got[1], format!("parent {id} cancelled"));
    let result = client.wait::<()>(id, PATIENCE).await.unwrap_err();
    assert!(matches!(&result, Error::Cancelled { message, .. } if message.contains("gave up")), "{result:?}");
    let again = client.cancel(id, "twice").await.unwrap_err();
    assert!(matches!(again, Error::Refused { code: tonic::Code::FailedPrecondition, .. }), "{again:?}");
    worker.stop().await.unwrap();
    c.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handler_errors_retry_with_back_off_under_a_policy_and_are_final_without() {
    init_tracing();
    let c = TestCluster::start(1, |_| {}).await;
    let times = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let seen = times.clone();
    let agent = Agent::new("flaky").delegate("work", move |ctx: Context, fail_until: u32| {
        let times = seen.clone();
        async move {
            times.lock().unwrap().push(Instant::now());
            if ctx.attempt() < fail_until {
                return Err(Fail::new(format!("attempt {} fails", ctx.attempt())));
            }
            Ok(ctx.attempt())
        }
    });
    let worker = spawn_worker(c.endpoints(), vec![agent], 4);
    let client = Client::new(c.endpoints()).unwrap();
    let policy = RetryPolicy::new(4).backoff(Duration::from_millis(300), Duration::from_secs(1));
    let attempt: u32 = client.request("flaky", "work").args(&3u32).retry(policy).call().await.unwrap();
    assert_eq!(attempt, 3, "succeeded on the third delivery");
    let times = times.lock().unwrap().clone();
    assert_eq!(times.len(), 3);
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    tracing::info!(?gaps, "back-off between attempts");
    assert!(gaps[0] >= Duration::from_millis(280), "first back-off {:?}", gaps[0]);
    assert!(gaps[1] >= Duration::from_millis(580), "the second doubles: {:?}", gaps[1]);

    let once = client.request("flaky", "work").args(&2u32).call::<u32>().await.unwrap_err();
    assert!(
        matches!(&once, Error::Failed { kind, message, .. } if kind == "handler" && message == "attempt 1 fails"),
        "{once:?}"
    );
    let permanent = Agent::new("strict")
        .delegate("work", |_ctx: Context, (): ()| async { Err::<(), _>(Fail::permanent("no")) });
    let strict = spawn_worker(c.endpoints(), vec![permanent], 1);
    let e = client.request("strict", "work").retry(RetryPolicy::new(5)).call::<()>().await.unwrap_err();
    assert!(matches!(&e, Error::Failed { .. }), "{e:?}");
    let id = match e {
        Error::Failed { execution, .. } => execution,
        _ => unreachable!(),
    };
    assert_eq!(client.execution(id).await.unwrap().attempts, 1, "a permanent error is not retried");
    strict.stop().await.unwrap();
    worker.stop().await.unwrap();
    c.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_execution_for_an_agent_nobody_serves_waits_until_one_does() {
    init_tracing();
    let c = TestCluster::start(1, |_| {}).await;
    let client = Client::new(c.endpoints()).unwrap();
    let id = client.request("late", "hello").args(&"world").send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(client.execution(id).await.unwrap().status, Status::Pending);
    let agent = Agent::new("late")
        .delegate("hello", |_ctx: Context, who: String| async move { Ok::<_, Fail>(format!("hello {who}")) });
    let worker = spawn_worker(c.endpoints(), vec![agent], 1);
    let said: String = client.wait(id, PATIENCE).await.unwrap();
    assert_eq!(said, "hello world");
    let timeout =
        client.request("nobody", "x").wait(Duration::from_millis(300)).call::<()>().await.unwrap_err();
    assert!(matches!(timeout, Error::Timeout { .. }), "{timeout:?}");
    worker.stop().await.unwrap();
    c.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_and_malformed_input_is_refused_and_changes_nothing() {
    init_tracing();
    let c = TestCluster::start(1, |config| config.max_payload_bytes = 1000).await;
    let client = Client::new(c.endpoints()).unwrap();
    let big = vec![7u8; 2000];
    let e = client.request("any", "thing").args(&big).send().await.unwrap_err();
    assert!(
        matches!(&e, Error::Refused { code: tonic::Code::InvalidArgument, message } if message.contains("max_payload_bytes")),
        "{e:?}"
    );
    let e = client.request("bad name", "thing").send().await.unwrap_err();
    assert!(matches!(&e, Error::Refused { message, .. } if message.contains("invalid agent name")), "{e:?}");
    let e = client.request("x", "y").instance("nope").send().await.unwrap_err();
    assert!(
        matches!(&e, Error::Refused { code: tonic::Code::NotFound, message } if message.contains("never started")),
        "{e:?}"
    );
    let stored = c.cluster.node(1).applied().read(|a| a.grid.work_totals().executions);
    assert_eq!(stored, 0, "nothing was created");
    let e = weft_agent::Worker::builder(c.endpoints()).build().unwrap_err();
    assert!(e.to_string().contains("at least one agent"), "{e}");
    c.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_worker_finishes_short_work_and_gives_back_long_work() {
    init_tracing();
    let c = TestCluster::start(1, |_| {}).await;
    let (started_tx, mut started) = mpsc::unbounded_channel::<u64>();
    let sleepy = move |tag: &'static str| {
        let started = started_tx.clone();
        Agent::new("sleepy").delegate("nap", move |ctx: Context, ms: u64| {
            let started = started.clone();
            async move {
                let _ = started.send(ms);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok::<_, Fail>(format!("{tag} napped {ms} ms")),
                    _ = ctx.cancelled() => Err(Fail::new("interrupted")),
                }
            }
        })
    };
    let first = spawn_worker(c.endpoints(), vec![sleepy("first")], 4);
    let client = Client::new(c.endpoints()).unwrap();
    let short = client.request("sleepy", "nap").args(&500u64).send().await.unwrap();
    let long = client.request("sleepy", "nap").args(&60_000u64).send().await.unwrap();
    for _ in 0..2 {
        tokio::time::timeout(PATIENCE, started.recv()).await.unwrap();
    }
    tracing::info!("stop the worker with a 2 s drain: the short nap finishes, the long one is given back");
    first.stop().await.unwrap();
    assert_eq!(client.wait::<String>(short, PATIENCE).await.unwrap(), "first napped 500 ms");
    // The give-back is sent as the drain ends and has no answer: it is applied a moment after
    // the worker stopped.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let status = client.execution(long).await.unwrap().status;
        if status == Status::Pending {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not given back: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = spawn_worker(c.endpoints(), vec![sleepy("second")], 4);
    let e = client.execution(long).await.unwrap();
    tracing::info!(attempts = e.attempts, "the long one runs again on the second worker");
    client.cancel(long, "done with the test").await.unwrap();
    second.stop().await.unwrap();
    c.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_completion_the_fabric_cannot_apply_fails_the_execution_with_the_reason() {
    init_tracing();
    let c = TestCluster::start(1, |config| config.max_value_bytes = 100).await;
    let agent = Agent::new("writer")
        .delegate("bad_namespace", |ctx: Context, (): ()| async move {
            ctx.shared("not a valid name").put("k", &1u8)?;
            Ok::<_, Fail>(())
        })
        .delegate("too_big", |ctx: Context, (): ()| async move {
            ctx.shared("blobs").put("k", &"x".repeat(500))?;
            Ok::<_, Fail>(())
        });
    let worker = spawn_worker(c.endpoints(), vec![agent], 2);
    let client = Client::new(c.endpoints()).unwrap();
    for (delegate, needle) in [("bad_namespace", "invalid namespace"), ("too_big", "max_value_bytes")] {
        let started = Instant::now();
        let e = client.request("writer", delegate).retry(RetryPolicy::new(5)).call::<()>().await.unwrap_err();
        tracing::info!(delegate, error = %e, after = ?started.elapsed(), "refused completion");
        assert!(
            matches!(&e, Error::Failed { kind, message, .. } if kind == "handler" && message.contains(needle)),
            "{delegate}: {e:?}"
        );
        let id = match e {
            Error::Failed { execution, .. } => execution,
            _ => unreachable!(),
        };
        assert_eq!(client.execution(id).await.unwrap().attempts, 1, "failed at once, not redelivered");
    }
    assert_eq!(client.state("shared/blobs").get::<String>("k").await.unwrap(), None, "nothing applied");
    worker.stop().await.unwrap();
    c.cluster.shutdown().await;
}

//! Instances: start and stop, per-instance state applied with results, conflicts that run a
//! handler again, children stopped with their parent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use weft_agent::{Agent, Client, Context, Error, Fail};

use crate::support::*;

async fn start(ctx: Context, initial: u64) -> Result<String, Fail> {
    ctx.state()?.put("count", &initial)?;
    Ok(format!("{} starts at {initial}", ctx.instance().unwrap_or("?")))
}

async fn add(ctx: Context, by: u64) -> Result<u64, Fail> {
    let state = ctx.state()?;
    let count: u64 = state.get("count").await?.unwrap_or(0);
    state.put("count", &(count + by))?;
    Ok(count + by)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_keeps_its_state_and_stopping_removes_it() {
    init_tracing();
    let c = TestCluster::start(3, |_| {}).await;
    let stops = Arc::new(AtomicU32::new(0));
    let counted = stops.clone();
    let agent = Agent::new("counter")
        .on_start(start)
        .delegate("add", add)
        .delegate("spawn", |ctx: Context, (): ()| async move {
            let child = ctx.start_instance::<_, String>("counter", &100u64).await?;
            Ok::<_, Fail>(child.id)
        })
        .on_stop(move |_ctx: Context, (): ()| {
            let stops = counted.clone();
            async move {
                stops.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Fail>(())
            }
        });
    let worker = spawn_worker(c.endpoints(), vec![agent], 8);
    let client = Client::new(c.endpoints()).unwrap();
    let started =
        client.start_instance_with::<_, String>("counter", Some("c1"), &5u64, None, None).await.unwrap();
    assert_eq!((started.id.as_str(), started.result.as_str()), ("c1", "c1 starts at 5"));
    for (by, expected) in [(1u64, 6u64), (2, 8), (3, 11)] {
        let got: u64 = client.request("counter", "add").instance("c1").args(&by).call().await.unwrap();
        assert_eq!(got, expected);
    }
    let state = client.state("instance/counter/c1");
    assert_eq!(state.get::<u64>("count").await.unwrap(), Some(11), "the state a plain client reads");
    let child: String = client.request("counter", "spawn").instance("c1").call().await.unwrap();
    assert!(
        client.state(&format!("instance/counter/{child}")).get::<u64>("count").await.unwrap() == Some(100)
    );

    tracing::info!(child, "stopping c1 runs its Stop, removes its state, and stops its child");
    client.stop_instance("counter", "c1").await.unwrap();
    assert_eq!(state.get::<u64>("count").await.unwrap(), None);
    let gone = client.request("counter", "add").instance("c1").args(&1u64).send().await.unwrap_err();
    assert!(matches!(gone, Error::Refused { code: tonic::Code::NotFound, .. }), "{gone:?}");
    let child_state = client.state(&format!("instance/counter/{child}"));
    for _ in 0..600 {
        if child_state.get::<u64>("count").await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(child_state.get::<u64>("count").await.unwrap(), None, "the child went with its parent");
    assert_eq!(stops.load(Ordering::SeqCst), 2, "Stop ran for the parent and the child");
    worker.stop().await.unwrap();
    c.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_that_lost_a_race_is_not_applied_and_the_handler_runs_again() {
    init_tracing();
    let c = TestCluster::start(1, |_| {}).await;
    let gate = Arc::new(Notify::new());
    let runs = Arc::new(AtomicU32::new(0));
    let (g, r) = (gate.clone(), runs.clone());
    let agent = Agent::new("counter").on_start(start).delegate("add_slowly", move |ctx: Context, by: u64| {
        let (gate, runs) = (g.clone(), r.clone());
        async move {
            let state = ctx.state()?;
            let count: u64 = state.get("count").await?.unwrap_or(0);
            if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                // The first run waits while someone else writes the count.
                gate.notified().await;
            }
            state.put("count", &(count + by))?;
            Ok::<_, Fail>(count + by)
        }
    });
    let worker = spawn_worker(c.endpoints(), vec![agent], 4);
    let client = Client::new(c.endpoints()).unwrap();
    client.start_instance_with::<_, String>("counter", Some("c"), &0u64, None, None).await.unwrap();
    let call = {
        let client = client.clone();
        tokio::spawn(async move {
            client.request("counter", "add_slowly").instance("c").args(&1u64).call::<u64>().await
        })
    };
    eventually("the first run read the count", || runs.load(Ordering::SeqCst) == 1).await;
    tracing::info!("an outside write lands between the handler's read and its completion");
    client.state("instance/counter/c").put("count", &10u64).await.unwrap();
    gate.notify_one();
    let result = call.await.unwrap().unwrap();
    assert_eq!(result, 11, "the second run saw the outside write");
    assert_eq!(runs.load(Ordering::SeqCst), 2, "the conflicting completion ran it again");
    assert_eq!(client.state("instance/counter/c").get::<u64>("count").await.unwrap(), Some(11));
    worker.stop().await.unwrap();
    c.cluster.shutdown().await;
}

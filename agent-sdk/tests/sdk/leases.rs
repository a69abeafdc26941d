//! Leases from the SDK: one holder at a time, renewals that keep the token, a takeover after
//! expiry with a greater token, fenced state writes refused once the lease is lost, release;
//! `State::list` across pages; waiting for a lock; a handler's result that required a lock it
//! lost is not applied and the handler runs again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use weft_agent::{Agent, Client, Context, Error, Fail, Fence};

use crate::support::*;

fn refused_precondition(result: Result<impl std::fmt::Debug, Error>) -> String {
    match result {
        Err(Error::Refused { code: tonic::Code::FailedPrecondition, message }) => message,
        other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_holder_at_a_time_and_fenced_writes_stop_with_the_lease() {
    init_tracing();
    let c = TestCluster::start(3, |config| config.max_list_page = 2).await;
    let a = Client::new(c.endpoints()).unwrap();
    let b = Client::new(c.endpoints()).unwrap();

    tracing::info!("a acquires and writes fenced by its grant");
    let lease = a.lease("scaler");
    assert_eq!(lease.name(), "scaler");
    let first = lease.acquire("a", Duration::from_millis(1_500)).await.unwrap();
    assert_eq!((first.name.as_str(), first.holder.as_str()), ("scaler", "a"));
    assert_eq!(lease.get().await.unwrap(), Some(first.clone()));
    let a_state = a.state("shared/scaler").fenced(first.fence());
    let v1 = a_state.put("intent/1", &"start").await.unwrap();
    a_state.put("intent/2", &"start").await.unwrap();
    a_state.put("intent/3", &"stop").await.unwrap();
    let renewed = lease.renew(first.token, Duration::from_millis(1_500)).await.unwrap();
    assert_eq!(renewed.token, first.token, "a renewal keeps the token");

    tracing::info!("b is refused while a holds it, and told who does");
    let message = refused_precondition(b.lease("scaler").acquire("b", Duration::from_secs(60)).await);
    assert!(message.contains("held by 'a'"), "{message}");

    tracing::info!("a stops renewing; b takes over once the lease runs out");
    let deadline = Instant::now() + PATIENCE;
    let taken = loop {
        match b.lease("scaler").acquire("b", Duration::from_secs(60)).await {
            Ok(grant) => break grant,
            Err(Error::Refused { code: tonic::Code::FailedPrecondition, .. })
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("b could not take over: {e}"),
        }
    };
    assert_eq!(taken.holder, "b");
    assert!(taken.token > first.token);
    assert_eq!(taken.fence(), Fence { lease: "scaler".into(), token: taken.token });

    tracing::info!("a's fenced writes are refused and change nothing");
    let message = refused_precondition(a_state.put("intent/1", &"duplicate").await);
    assert!(message.contains("scaler"), "{message}");
    refused_precondition(a_state.compare_and_set("intent/1", &"duplicate", v1).await);
    refused_precondition(a_state.delete("intent/2").await);
    let intents: Vec<(String, String, u64)> = a.state("shared/scaler").list("intent/").await.unwrap();
    let keys: Vec<(&str, &str)> = intents.iter().map(|(k, v, _)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        keys,
        [("intent/1", "start"), ("intent/2", "start"), ("intent/3", "stop")],
        "three pages of 2"
    );
    assert_eq!(intents[0].2, v1);
    assert!(a.state("shared/scaler").list::<String>("nothing/").await.unwrap().is_empty());

    tracing::info!("b's fenced writes apply; stale renew and release do nothing");
    let b_state = b.state("shared/scaler").fenced(taken.fence());
    b_state.compare_and_set("intent/1", &"adopted", v1).await.unwrap();
    assert!(b_state.delete("intent/3").await.unwrap());
    refused_precondition(lease.renew(first.token, Duration::from_secs(1)).await);
    assert!(!lease.release(first.token).await.unwrap());
    assert_eq!(lease.get().await.unwrap().map(|g| g.holder), Some("b".into()));
    assert!(b.lease("scaler").release(taken.token).await.unwrap());
    assert_eq!(lease.get().await.unwrap(), None);
    refused_precondition(b_state.put("intent/4", &"late").await);

    tracing::info!("bad input is refused with a clear error");
    match a.lease("scaler").acquire("a", Duration::ZERO).await {
        Err(Error::Refused { code: tonic::Code::InvalidArgument, message }) => {
            assert!(message.contains("ttl_ms 0"), "{message}");
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    match a.lease("not a name").get().await {
        Err(Error::Refused { code: tonic::Code::InvalidArgument, .. }) => {}
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

/// `acquire_waiting` queues behind the holder: released, the lock goes to the waiter at once
/// with a greater token; a wait that runs out is refused, naming the holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_acquire_gets_the_lock_when_it_is_released() {
    init_tracing();
    let c = TestCluster::start(3, |_| {}).await;
    let client = Client::new(c.endpoints()).unwrap();
    let lock = client.lease("sdk-lock");
    let ttl = Duration::from_secs(30);
    let first = lock.acquire("one", ttl).await.unwrap();
    let waiting = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire_waiting("two", ttl, Duration::from_secs(20)).await }
    });
    let late = lock.acquire_waiting("three", ttl, Duration::from_millis(200)).await.unwrap_err();
    assert!(
        matches!(&late, Error::Refused { code: tonic::Code::FailedPrecondition, message } if message.contains("'one' holds it")),
        "{late:?}"
    );
    assert!(!waiting.is_finished(), "granted while held");
    assert!(lock.release(first.token).await.unwrap());
    let second = tokio::time::timeout(PATIENCE, waiting).await.expect("in time").unwrap().unwrap();
    assert_eq!(second.holder, "two");
    assert!(second.token > first.token);
    assert_eq!(lock.get().await.unwrap().map(|g| g.holder), Some("two".into()));
    c.cluster.shutdown().await;
}

/// A handler takes a lock and requires it for its result (`Context::require`). The first run's
/// lock runs out and another holder takes it before the run completes: nothing of its result
/// is applied and it runs again; the second run, holding the lock, is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_result_that_required_a_lost_lock_is_not_applied_and_runs_again() {
    init_tracing();
    let c = TestCluster::start(3, |_| {}).await;
    let gate = Arc::new(Notify::new());
    let runs = Arc::new(AtomicU32::new(0));
    let (g, r) = (gate.clone(), runs.clone());
    let agent = Agent::new("indexer").delegate("rebuild", move |ctx: Context, (): ()| {
        let (gate, runs) = (g.clone(), r.clone());
        async move {
            let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
            // The first run's lock is short, and it waits past it.
            let ttl = if run == 1 { Duration::from_millis(500) } else { Duration::from_secs(30) };
            let lock = ctx.client().lease("index");
            let grant = lock.acquire_waiting(&format!("run-{run}"), ttl, Duration::from_secs(20)).await?;
            ctx.require(&grant.fence());
            ctx.shared("index").put("built-by", &run)?;
            if run == 1 {
                gate.notified().await;
            }
            Ok::<_, Fail>(run)
        }
    });
    let worker = spawn_worker(c.endpoints(), vec![agent], 4);
    let client = Client::new(c.endpoints()).unwrap();
    let call = {
        let client = client.clone();
        tokio::spawn(async move { client.request("indexer", "rebuild").call::<u32>().await })
    };
    eventually("the first run took the lock", || runs.load(Ordering::SeqCst) == 1).await;
    tracing::info!("the first run's lock runs out; another holder takes it and lets it go");
    let lock = client.lease("index");
    let other =
        lock.acquire_waiting("outsider", Duration::from_secs(30), Duration::from_secs(20)).await.unwrap();
    assert!(lock.release(other.token).await.unwrap());
    gate.notify_one();
    let result = tokio::time::timeout(PATIENCE, call).await.expect("in time").unwrap().unwrap();
    assert_eq!(result, 2, "the first run's result was not applied; the second run's was");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let built: Option<u32> = client.state("shared/index").get("built-by").await.unwrap();
    assert_eq!(built, Some(2), "the first run's state write was not applied");
    worker.stop().await.unwrap();
    c.cluster.shutdown().await;
}

//! Schedules from the SDK: a schedule created with typed arguments calls its delegate at each
//! due time; `get` shows its runs and next due times; trigger, pause, resume and delete; bad
//! expressions refused naming the field.

use std::sync::{Arc, Mutex};

use weft_agent::schedule::{Overlap, Spec};
use weft_agent::{Agent, Client, Context, Error, Fail};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_schedule_calls_its_delegate_at_each_due_time() {
    init_tracing();
    let c = TestCluster::start(3, |_| {}).await;
    let seen: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let record = seen.clone();
    let agent = Agent::new("reports").delegate("build", move |ctx: Context, kind: String| {
        let record = record.clone();
        async move {
            record.lock().unwrap().push((ctx.execution_id(), kind));
            Ok::<_, Fail>(())
        }
    });
    let worker = spawn_worker(c.endpoints(), vec![agent], 4);
    let client = Client::new(c.endpoints()).unwrap();
    let schedule = client.schedule("every-second");
    let spec = Spec::cron("* * * * * *", "reports", "build").overlap(Overlap::Allow);
    let created = schedule.create(&spec, "full").await.unwrap();
    assert_eq!((created.agent.as_str(), created.delegate.as_str()), ("reports", "build"));
    assert!(created.next_due_ms.is_some() && !created.paused);
    let again = schedule.create(&spec, "full").await.unwrap();
    assert_eq!(again.name, "every-second", "the same schedule again is found");
    let other = schedule.create(&Spec::cron("0 * * * *", "reports", "build"), "full").await.unwrap_err();
    assert!(matches!(other, Error::Refused { code: tonic::Code::AlreadyExists, .. }), "{other:?}");

    eventually("two runs reached the agent", || seen.lock().unwrap().len() >= 2).await;
    assert!(seen.lock().unwrap().iter().all(|(_, kind)| kind == "full"), "the typed arguments arrive");
    let info = schedule.get().await.unwrap().expect("it exists");
    assert!(info.started >= 2, "{info:?}");
    assert_eq!(info.upcoming_ms.len(), 5);
    assert!(info.upcoming_ms.windows(2).all(|w| w[1] == w[0] + 1_000), "{:?}", info.upcoming_ms);
    let ran: Vec<u64> = seen.lock().unwrap().iter().map(|(id, _)| *id).collect();
    assert!(info.runs.iter().any(|r| r.outcome == "started" && ran.contains(&r.execution_id)), "{info:?}");

    let paused = schedule.pause().await.unwrap();
    assert!(paused.paused && paused.next_due_ms.is_none());
    let run = schedule.trigger().await.unwrap();
    assert_eq!((run.cause.as_str(), run.outcome.as_str()), ("trigger", "started"));
    eventually("the triggered run reached the agent", || {
        seen.lock().unwrap().iter().any(|(id, _)| *id == run.execution_id)
    })
    .await;
    assert!(!schedule.resume().await.unwrap().paused);
    assert!(schedule.delete().await.unwrap());
    assert!(!schedule.delete().await.unwrap());
    assert_eq!(schedule.get().await.unwrap(), None);

    let bad = client.schedule("bad").create(&Spec::cron("0 25 * * *", "reports", "build"), &()).await;
    match bad {
        Err(Error::Refused { code: tonic::Code::InvalidArgument, message }) => {
            assert!(message.contains("cron"), "{message}");
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    let zone = Spec::cron("0 9 * * *", "reports", "build").time_zone("Nowhere/Else");
    let bad = client.schedule("bad").create(&zone, &()).await.unwrap_err();
    assert!(
        matches!(&bad, Error::Refused { code: tonic::Code::InvalidArgument, message } if message.contains("time_zone")),
        "{bad:?}"
    );
    assert_eq!(client.schedule("bad").get().await.unwrap(), None, "nothing was created");
    worker.stop().await.unwrap();
    c.cluster.shutdown().await;
}

//! Schedules over real nodes and a real agent: with `weft node` processes, an every-second
//! schedule created with the CLI fires exactly once per due time, without a gap, while the
//! leader is killed with `kill -9`, and every run is executed; a queue-one schedule starts its
//! queued run when the slow run before it finishes; bad schedules are refused by the CLI
//! naming the field, and nothing is created.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use weft_agent::{Agent, Context, Fail, Worker};
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::executions_client::ExecutionsClient;
use weft_proto::fabric::v1::schedules_client::SchedulesClient;

use crate::support::*;

/// Every execution of `agent` as `addr` answers: (idempotency key, status).
async fn executions_of(addr: &str, agent: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut page_token = 0;
    loop {
        let req =
            pb::ListExecutionsRequest { agent: agent.into(), page_token, limit: 500, ..Default::default() };
        let page = ExecutionsClient::new(channel(addr).await).list(req).await.expect("list").into_inner();
        out.extend(page.executions.into_iter().map(|e| (e.idempotency_key, e.status)));
        if page.next_page_token == 0 {
            return out;
        }
        page_token = page.next_page_token;
    }
}

async fn get(addr: &str, name: &str) -> pb::Schedule {
    let req = pb::GetScheduleRequest { name: name.into(), ..Default::default() };
    SchedulesClient::new(channel(addr).await).get(req).await.expect("get schedule").into_inner()
}

/// Runs `weft ARGS` on `addrs` (every node, so it fails over) until it exits 0.
async fn weft_ok(addrs: &[String], args: &[&str]) -> String {
    let endpoints = addrs.join(",");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (code, out, err) = weft(&endpoints, args).await;
        if code == 0 {
            return out;
        }
        assert!(Instant::now() < deadline, "weft {args:?}: {code} {out} {err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_every_second_schedule_fires_once_per_due_time_across_a_leader_kill() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut procs = spawn_cluster(dir.path(), 3, |o| o);
    let addrs = procs.addrs().to_vec();
    let leader = wait_for_leader_at(&addrs).await;

    let runs = Arc::new(AtomicU32::new(0));
    let counted = runs.clone();
    let agent = Agent::new("ticker").delegate("tick", move |_ctx: Context, (): ()| {
        let runs = counted.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Fail>(())
        }
    });
    let worker = Worker::builder(addrs.clone()).capacity(8).agent(agent).build().expect("a worker");
    let stopper = worker.stopper();
    let running = tokio::spawn(worker.run());

    let out = weft_ok(
        &addrs,
        &["schedules", "create", "ticks", "ticker", "tick", "--cron", "* * * * * *", "--overlap", "allow"],
    )
    .await;
    assert!(out.starts_with("created ticks"), "{out}");
    tokio::time::sleep(Duration::from_secs(4)).await;

    tracing::info!(leader, "kill -9 the leader while the schedule fires every second");
    procs.nodes_mut()[leader as usize - 1].kill9();
    let live: Vec<String> =
        (1..=3u64).filter(|&id| id != leader).map(|id| addrs[id as usize - 1].clone()).collect();
    let new_leader = wait_for_new_leader_at(&live, leader).await;
    tracing::info!(new_leader, "the new leader's ticks go on");
    tokio::time::sleep(Duration::from_secs(4)).await;
    weft_ok(&live, &["schedules", "pause", "ticks"]).await;

    let schedule = get(&live[0], "ticks").await;
    assert!(schedule.paused);
    let keys: Vec<(String, String)> = executions_of(&live[0], "ticker").await;
    let dues: Vec<u64> = keys
        .iter()
        .map(|(key, _)| {
            let due = key.strip_prefix("schedule:ticks:").unwrap_or_else(|| panic!("a run's key: {key}"));
            due.parse().expect("a due time")
        })
        .collect();
    let distinct: BTreeSet<u64> = dues.iter().copied().collect();
    assert_eq!(distinct.len(), dues.len(), "one execution per due time: {dues:?}");
    assert_eq!(schedule.started, dues.len() as u64, "every run started made its own execution");
    assert_eq!(schedule.skipped, 0, "nothing skipped: {:?}", schedule.runs);
    assert!(dues.len() >= 6, "it fired through the kill: {dues:?}");
    let (first, last) = (*distinct.first().unwrap(), *distinct.last().unwrap());
    let every_second: BTreeSet<u64> = (first..=last).step_by(1_000).collect();
    assert_eq!(distinct, every_second, "every due time from the first to the last, no gap");
    for run in &schedule.runs {
        assert!(run.fired_ms >= run.due_ms, "never before its due time: {run:?}");
        assert_eq!((run.cause.as_str(), run.outcome.as_str()), ("due", "started"), "{run:?}");
    }

    tracing::info!("every run is executed");
    let deadline = Instant::now() + PATIENCE;
    while executions_of(&live[0], "ticker").await.iter().any(|(_, status)| status != "completed") {
        assert!(Instant::now() < deadline, "runs left unfinished");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(runs.load(Ordering::SeqCst) as usize >= dues.len(), "the agent ran each (at least once)");
    stopper.stop();
    let _ = tokio::time::timeout(PATIENCE, running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queued_run_starts_when_the_slow_run_before_it_finishes_and_bad_schedules_are_refused() {
    init_tracing();
    let cluster = Cluster::start(1, |_| {}).await;
    cluster.wait_for_leader().await;
    let addr = cluster.addrs[0].clone();

    tracing::info!("bad input: refused naming the field, nothing created");
    for (args, field) in [
        (vec!["--cron", "61 * * * *"], "cron"),
        (vec!["--cron", "0 0 30 2 *"], "never due"),
        (vec!["--cron", "* * * * *", "--tz", "Mars/Olympus"], "time_zone"),
        (vec!["--cron", "* * * * *", "--overlap", "sometimes"], "overlap"),
        (vec!["--cron", "* * * * *", "--catch-up", "twice"], "catch_up"),
    ] {
        let mut all = vec!["schedules", "create", "bad", "slow", "work"];
        all.extend(args.iter().copied());
        let (code, out, err) = weft(&addr, &all).await;
        assert_eq!(code, 1, "{all:?}: {out}");
        assert!(err.contains("InvalidArgument") && err.contains(field), "{all:?}: {err}");
    }
    let (code, out, _) = weft(&addr, &["schedules", "list", "--json"]).await;
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(listed["schedules"], serde_json::json!([]), "nothing was created");
    let (code, _, err) = weft(&addr, &["schedules", "get", "bad"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("NotFound"), "{err}");

    tracing::info!("a slow agent: each run takes 2.5 s; the schedule is due every second");
    let gate = Arc::new(AtomicU32::new(0));
    let started = gate.clone();
    let agent = Agent::new("slow").delegate("work", move |_ctx: Context, (): ()| {
        let started = started.clone();
        async move {
            started.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2_500)).await;
            Ok::<_, Fail>(())
        }
    });
    let worker = Worker::builder(cluster.endpoints()).capacity(8).agent(agent).build().expect("a worker");
    let stopper = worker.stopper();
    let running = tokio::spawn(worker.run());
    let (code, out, err) = weft(
        &addr,
        &["schedules", "create", "q", "slow", "work", "--cron", "* * * * * *", "--overlap", "queue-one"],
    )
    .await;
    assert_eq!(code, 0, "{out} {err}");
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    let (code, _, _) = weft(&addr, &["schedules", "pause", "q"]).await;
    assert_eq!(code, 0);

    let s = get(&addr, "q").await;
    let started_runs: Vec<&pb::ScheduleRun> = s.runs.iter().filter(|r| r.outcome == "started").collect();
    assert!(started_runs.len() >= 2, "{:?}", s.runs);
    assert!(s.runs.iter().any(|r| r.outcome == "queued"), "a due time waited: {:?}", s.runs);
    assert!(s.runs.iter().any(|r| r.outcome == "skipped"), "further ones were skipped: {:?}", s.runs);
    // Each queued run started only once the run before it finished (2.5 s each): the runs
    // never overlapped.
    for pair in started_runs.windows(2) {
        assert!(pair[1].fired_ms >= pair[0].fired_ms + 2_000, "{pair:?}");
        assert_eq!(pair[1].cause, "queued", "{pair:?}");
    }
    let (code, out, _) = weft(&addr, &["schedules", "get", "q", "--json"]).await;
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(shown["overlap"], "queue_one");
    assert_eq!(shown["paused"], true);

    tracing::info!("trigger, resume, delete from the CLI");
    let (code, out, err) = weft(&addr, &["schedules", "trigger", "q", "--json"]).await;
    let run: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    assert!(code == 0 && (run["outcome"] == "queued" || run["outcome"] == "started"), "{out} {err}");
    let (code, _, _) = weft(&addr, &["schedules", "delete", "q"]).await;
    assert_eq!(code, 0);
    let (code, _, _) = weft(&addr, &["schedules", "delete", "q"]).await;
    assert_eq!(code, 1, "nothing left to delete");
    stopper.stop();
    let _ = tokio::time::timeout(PATIENCE, running).await;
    cluster.shutdown().await;
}

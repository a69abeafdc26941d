//! The controller on the in-memory fabric and the fake backend, in tokio's paused time.

use std::collections::BTreeMap;

use super::*;
use crate::backend::fake;
use crate::config::AgentConfig;
use crate::fabric::fake::Fake;
use crate::fabric::{InstanceDemand, SessionLoad, no_demand, picture};

const START: u64 = 1_700_000_000_000;

struct Scaler {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), FabricError>>,
    configs: watch::Sender<Arc<Config>>,
}

fn config(agent: AgentConfig) -> Config {
    let mut c = Config::parse("").unwrap();
    c.lease_ttl_ms = 1500;
    c.agents.insert("work".into(), agent);
    c
}

fn agent(max: u32) -> AgentConfig {
    AgentConfig {
        restart_initial_ms: 1000,
        restart_cap_ms: 4000,
        crash_loop_threshold: 2,
        start_timeout_ms: 5000,
        idle_ms: 2000,
        backlog_per_replica: 10,
        ..AgentConfig::process("scaled", max)
    }
}

fn start(
    fabric: &Fake,
    backend: &fake::Backend,
    config: Config,
    holder: &str,
    clock: Clock,
) -> (Scaler, fake::Backend) {
    let (exits_tx, exits) = mpsc::channel(MAX_PENDING_EXITS);
    let backend = backend.sharing(exits_tx);
    let backends = BTreeMap::from([(BackendKind::Process, Backend::Fake(backend.clone()))]);
    let (configs, rx) = watch::channel(Arc::new(config));
    let options = Options {
        holder: holder.into(),
        host: "here".into(),
        endpoints: vec!["127.0.0.1:1".into()],
        tls_env: vec![("WEFT_TLS_CA".into(), "/etc/weft/ca.pem".into())],
    };
    let controller = Controller::new(fabric.clone(), backends, exits, rx, clock, options, Metrics::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(controller.run(stop.clone()));
    (Scaler { stop, task, configs }, backend)
}

fn rig(config: Config) -> (Fake, fake::Backend, Scaler, Clock) {
    let clock = Clock::at(START);
    let fabric = Fake::new(clock);
    let (tx, _rx) = mpsc::channel(1);
    let backend = fake::Backend::new(tx);
    let (scaler, backend) = start(&fabric, &backend, config, "a", clock);
    (fabric, backend, scaler, clock)
}

/// The demand of agent `work`: `pending` executions and a session per name in `sessions`.
fn demand(pending: u64, sessions: &[String]) -> Demand {
    picture(vec![AgentDemand {
        pending,
        sessions: sessions
            .iter()
            .enumerate()
            .map(|(i, name)| SessionLoad {
                id: i as u64 + 1,
                name: name.clone(),
                node_id: 1,
                capacity: 16,
                assigned: 0,
                draining: false,
                only_claimed: false,
                claimed: Vec::new(),
            })
            .collect(),
        ..no_demand("work")
    }])
}

/// Waits (in paused time) until `cond` holds, at most a virtual minute.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within a minute: {what}");
}

fn ids(launches: &[Launch]) -> Vec<String> {
    launches.iter().map(|l| l.replica.clone()).collect()
}

#[tokio::test(start_paused = true)]
async fn scales_from_zero_recording_the_intent_first() {
    let (fabric, backend, _scaler, _) = rig(config(agent(3)));
    fabric.set_demand(demand(0, &[]));
    until("the lease", || fabric.holder().as_deref() == Some("a")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(backend.running().is_empty(), "no demand, no replica");

    fabric.set_demand(demand(1, &[]));
    until("a replica", || backend.running().len() == 1).await;
    let launch = &backend.running()[0];
    let env: BTreeMap<_, _> = launch.env.iter().cloned().collect();
    assert_eq!(env["WEFT_SESSION_NAME"], launch.replica);
    assert_eq!(env["WEFT_SCALER_REPLICA"], launch.replica);
    assert_eq!(env["WEFT_ENDPOINT"], "127.0.0.1:1");
    assert_eq!(env["WEFT_TLS_CA"], "/etc/weft/ca.pem", "replicas get the scaler's TLS settings");
    assert_eq!(env["WEFT_CAPACITY"], "16");
    assert!(!env.contains_key("WEFT_INSTANCE"));
    assert_eq!(launch.token_file, None, "no token_file: no token");
    until("the handle recorded", || {
        fabric.intents().get(&launch.replica).is_some_and(|i| !i.handle.is_empty())
    })
    .await;
    assert_eq!(fabric.intents()[&launch.replica].phase, intent::Phase::Starting);

    fabric.set_demand(demand(1, std::slice::from_ref(&launch.replica)));
    until("running", || fabric.intents()[&launch.replica].phase == intent::Phase::Running).await;
    until("status", || fabric.status().is_some_and(|s| s.agents["work"].running == 1)).await;
    let status = fabric.status().unwrap();
    assert_eq!((status.holder.as_str(), status.agents["work"].desired), ("a", 1));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(backend.starts().len(), 1, "no second start");
}

#[tokio::test(start_paused = true)]
async fn a_crash_backs_off_and_a_crash_loop_is_reported() {
    let (fabric, backend, _scaler, clock) = rig(config(agent(1)));
    fabric.set_demand(demand(1, &[]));
    until("a replica", || backend.running().len() == 1).await;
    let first = backend.running()[0].replica.clone();
    backend.crash(&first, 3, "boom\n");
    let crashed_at = clock.now_ms();
    until("a restart", || backend.running().len() == 1).await;
    assert!(clock.now_ms() - crashed_at >= 1000, "restarted after the initial delay");
    assert!(!fabric.intents().contains_key(&first), "the crashed replica's record goes");
    let status = fabric.status().unwrap();
    assert!(status.agents["work"].crash_looping.is_none(), "one failure is not a loop");

    let second = backend.running()[0].replica.clone();
    backend.crash(&second, 3, "boom again\n");
    until("a crash loop", || fabric.status().is_some_and(|s| s.agents["work"].crash_looping.is_some())).await;
    let lp = fabric.status().unwrap().agents["work"].crash_looping.clone().unwrap();
    assert_eq!((lp.failures, lp.exit_code), (2, Some(3)));
    assert_eq!(lp.output_tail, "boom again\n");
    assert_eq!(lp.reason, "exited with code 3");
    let waited = lp.next_retry_at_ms - clock.now_ms();
    assert!((1500..=2000).contains(&waited), "the second delay doubles: {waited}");
}

#[tokio::test(start_paused = true)]
async fn a_failed_start_is_reported_with_its_cause_and_never_retried_in_a_tight_loop() {
    let (fabric, backend, _scaler, _) = rig(config(agent(2)));
    backend.fail_starts(Some("No such file or directory (os error 2)"));
    fabric.set_demand(demand(1, &[]));
    until("a crash loop", || fabric.status().is_some_and(|s| s.agents["work"].crash_looping.is_some())).await;
    let status = fabric.status().unwrap();
    let work = &status.agents["work"];
    assert!(work.last_error.as_deref().unwrap().contains("command 'scaled'"), "{work:?}");
    assert!(work.crash_looping.as_ref().unwrap().reason.contains("No such file"), "{work:?}");
    assert!(fabric.intents().is_empty());
    // 20 s: delays 1, 2, 4, 4, 4 … s: a handful of tries, not thousands.
    let tries = || fabric.status().unwrap().agents["work"].crash_looping.as_ref().unwrap().failures;
    let before = tries();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let after = tries();
    assert!((4..=7).contains(&(after - before)), "{before} -> {after}");
    backend.fail_starts(None);
    until("it starts once the command exists", || backend.running().len() == 1).await;
}

#[tokio::test(start_paused = true)]
async fn no_session_within_the_start_timeout_is_a_failed_start() {
    let (fabric, backend, _scaler, _) = rig(config(agent(1)));
    fabric.set_demand(demand(1, &[]));
    until("a replica", || backend.running().len() == 1).await;
    let first = backend.running()[0].replica.clone();
    until("stopped", || backend.stops().contains(&first)).await;
    until("reported", || {
        fabric.status().is_some_and(|s| {
            s.agents["work"]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("no session within start_timeout_ms"))
        })
    })
    .await;
    until("started again", || backend.starts().len() == 2).await;
}

#[tokio::test(start_paused = true)]
async fn backlog_scales_up_to_max_and_idle_back_down() {
    let (fabric, backend, _scaler, _) = rig(config(AgentConfig { min_replicas: 1, ..agent(3) }));
    fabric.set_demand(demand(0, &[]));
    until("min replicas", || backend.running().len() == 1).await;
    fabric.set_demand(demand(500, &ids(&backend.running())));
    until("max replicas", || backend.running().len() == 3).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(backend.starts().len(), 3, "never beyond max");
    fabric.set_demand(demand(0, &ids(&backend.running())));
    until("back to min", || backend.running().len() == 1).await;
    assert_eq!(fabric.intents().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_lost_lease_stops_all_action_and_keeps_the_processes() {
    let (fabric, backend, _scaler, _) = rig(config(agent(3)));
    fabric.set_demand(demand(1, &[]));
    until("a replica", || backend.running().len() == 1).await;
    fabric.steal_lease("b");
    fabric.set_demand(demand(500, &ids(&backend.running())));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(backend.starts().len(), 1, "nothing started without the lease");
    assert!(backend.stops().is_empty(), "nothing stopped either");
    assert_eq!(backend.running().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_standby_takes_over_adopts_and_starts_no_duplicates() {
    let clock = Clock::at(START);
    let fabric = Fake::new(clock);
    let (tx, _rx) = mpsc::channel(1);
    let shared = fake::Backend::new(tx);
    let (a, backend) = start(&fabric, &shared, config(agent(3)), "a", clock);
    fabric.set_demand(demand(25, &[]));
    until("three replicas", || backend.running().len() == 3).await;
    let running = ids(&backend.running());
    fabric.set_demand(demand(25, &running));
    until("recorded running", || fabric.intents().values().all(|i| i.phase == intent::Phase::Running)).await;
    let (_b, _) = start(&fabric, &shared, config(agent(3)), "b", clock);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(fabric.holder().as_deref(), Some("a"), "b stands by");

    // a dies (kill -9: no shutdown). A process it spawned but never recorded, and a record
    // of a start whose process never came (older than the start timeout, so it is not
    // counted any more), are left behind.
    a.task.abort();
    let orphan =
        Launch { replica: "work-orphan".into(), agent: "work".into(), ..backend.running()[0].clone() };
    backend.plant(orphan);
    let ghost = Intent {
        agent: "work".into(),
        instance: None,
        backend: BackendKind::Process,
        handle: String::new(),
        host: "here".into(),
        phase: intent::Phase::Starting,
        started_at_ms: clock.now_ms() - 6000,
        slot: Some(7),
    };
    {
        let token = fabric.status().unwrap().token;
        let fence = crate::fabric::Fence { lease: "weft.scaler.test".into(), token };
        fabric.put_intent(&fence, "work-ghost", &ghost).await.unwrap();
    }
    until("b holds the lease", || fabric.holder().as_deref() == Some("b")).await;
    until("adopted", || {
        fabric.intents().contains_key("work-orphan") && !fabric.intents().contains_key("work-ghost")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(backend.starts().len(), 3, "no duplicate started");
    // Four ran with max 3 (the orphan was a surprise): b stops one, never starts one.
    until("back to max", || backend.running().len() == 3).await;
    let mut expected = running.clone();
    expected.push("work-orphan".into());
    assert!(ids(&backend.running()).iter().all(|id| expected.contains(id)));
    assert_eq!(backend.starts().len(), 3);
    let status = fabric.status().unwrap();
    assert_eq!(status.holder, "b");
}

#[tokio::test(start_paused = true)]
async fn per_instance_follows_instances() {
    let c = config(AgentConfig { mode: Mode::PerInstance, ..agent(5) });
    let (fabric, backend, _scaler, _) = rig(c);
    let with = |instances: Vec<InstanceDemand>| picture(vec![AgentDemand { instances, ..no_demand("work") }]);
    let i1 = InstanceDemand { id: "i1".into(), lifecycle: "running".into(), session: None, unfinished: 1 };
    fabric.set_demand(with(vec![i1.clone()]));
    until("a replica for i1", || backend.running().len() == 1).await;
    let env: BTreeMap<_, _> = backend.running()[0].env.iter().cloned().collect();
    assert_eq!((env["WEFT_AGENT"].as_str(), env["WEFT_INSTANCE"].as_str()), ("work", "i1"));
    fabric.set_demand(with(vec![]));
    until("stopped with its instance", || backend.running().is_empty()).await;
    assert!(fabric.intents().is_empty());
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_the_replicas_and_releases_the_lease_unless_told_to_leave_them() {
    let (fabric, backend, scaler, _) = rig(config(agent(2)));
    fabric.set_demand(demand(15, &[]));
    until("two replicas", || backend.running().len() == 2).await;
    scaler.stop.cancel();
    scaler.task.await.unwrap().unwrap();
    assert!(backend.running().is_empty());
    assert!(fabric.intents().is_empty());
    assert_eq!(fabric.holder(), None);

    let mut c = config(agent(2));
    c.leave_running_on_exit = true;
    let (fabric, backend, scaler, _) = rig(c);
    fabric.set_demand(demand(15, &[]));
    until("two replicas", || backend.running().len() == 2).await;
    scaler.stop.cancel();
    scaler.task.await.unwrap().unwrap();
    assert_eq!(backend.running().len(), 2);
    assert_eq!(fabric.intents().len(), 2, "kept for the successor");
    assert_eq!(fabric.holder(), None, "released: a standby need not wait for it to expire");
}

#[tokio::test(start_paused = true)]
async fn a_reload_applies_new_limits() {
    let (fabric, backend, scaler, _) = rig(config(agent(1)));
    fabric.set_demand(demand(50, &[]));
    until("one replica", || backend.running().len() == 1).await;
    scaler.configs.send_replace(Arc::new(config(agent(4))));
    until("four", || backend.running().len() == 4).await;
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_fabric_stops_action_until_the_lease_is_back() {
    let (fabric, backend, _scaler, _) = rig(config(agent(3)));
    fabric.set_demand(demand(1, &[]));
    until("a replica", || backend.running().len() == 1).await;
    fabric.set_unavailable(true);
    fabric.set_demand(demand(500, &ids(&backend.running())));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(backend.starts().len(), 1);
    fabric.set_unavailable(false);
    until("acting again", || backend.running().len() == 3).await;
    assert_eq!(fabric.intents().len(), 3, "the first replica was adopted again, not duplicated");
}

#[tokio::test(start_paused = true)]
async fn an_agent_on_a_backend_this_scaler_lacks_backs_off_like_a_failed_start() {
    let docker = AgentConfig {
        backend: BackendKind::Docker,
        command: None,
        image: Some("weft/scaled".into()),
        ..agent(1)
    };
    let (fabric, backend, _scaler, _) = rig(config(docker));
    fabric.set_demand(demand(1, &[]));
    until("reported", || {
        fabric
            .status()
            .is_some_and(|s| s.agents["work"].last_error.as_deref().is_some_and(|e| e.contains("docker")))
    })
    .await;
    let failures =
        || fabric.status().unwrap().agents["work"].crash_looping.as_ref().map_or(0, |c| c.failures);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!((3..=8).contains(&failures()), "backed off, not a tight loop: {}", failures());
    assert!(backend.starts().is_empty());
    assert!(fabric.intents().is_empty());
}

fn recorded(phase: intent::Phase, host: &str, started_at_ms: u64) -> Intent {
    Intent {
        agent: "work".into(),
        instance: None,
        backend: BackendKind::Process,
        handle: String::new(),
        host: host.into(),
        phase,
        started_at_ms,
        slot: Some(0),
    }
}

#[tokio::test(start_paused = true)]
async fn an_unconfirmed_start_counts_towards_max_until_its_start_timeout() {
    let clock = Clock::at(START);
    let fabric = Fake::new(clock);
    fabric.plant_intent("work-ghost", recorded(intent::Phase::Starting, "here", START));
    let (tx, _rx) = mpsc::channel(1);
    let (_scaler, backend) = start(&fabric, &fake::Backend::new(tx), config(agent(1)), "a", clock);
    fabric.set_demand(demand(1, &[]));
    until("the lease", || fabric.holder().as_deref() == Some("a")).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(backend.starts().is_empty(), "the recorded start may still come: max 1 is full");
    assert!(fabric.intents().contains_key("work-ghost"), "its record is kept meanwhile");
    until("a start once the ghost timed out", || backend.running().len() == 1).await;
    assert!(clock.now_ms() >= START + 5000, "not before the start timeout");
    assert!(!fabric.intents().contains_key("work-ghost"));
    assert_eq!(backend.starts().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_remote_replica_survives_a_picture_without_its_session() {
    let clock = Clock::at(START);
    let fabric = Fake::new(clock);
    fabric.plant_intent("work-far", recorded(intent::Phase::Running, "elsewhere", START));
    let far = ["work-far".to_owned()];
    fabric.set_demand(demand(1, &far));
    let (tx, _rx) = mpsc::channel(1);
    let (_scaler, backend) = start(&fabric, &fake::Backend::new(tx), config(agent(1)), "a", clock);
    until("counted", || fabric.status().is_some_and(|s| s.agents["work"].running == 1)).await;
    // Its worker reconnects (a node failed): one picture without its session, then back.
    fabric.set_demand(demand(1, &[]));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(fabric.intents().contains_key("work-far"), "kept through a missing session");
    fabric.set_demand(demand(1, &far));
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(backend.starts().is_empty(), "max 1 stays full");
    // Gone for good: after a start timeout unseen it goes, and a replica takes its place.
    fabric.set_demand(demand(1, &[]));
    until("replaced", || backend.running().len() == 1).await;
    assert!(!fabric.intents().contains_key("work-far"));
}

#[tokio::test(start_paused = true)]
async fn the_lease_is_checked_again_between_the_record_and_the_spawn() {
    let (fabric, backend, _scaler, _) = rig(config(agent(1)));
    until("the lease", || fabric.holder().as_deref() == Some("a")).await;
    // The start's record is accepted but takes longer than the lease to return.
    fabric.set_slow_writes(Some(Duration::from_secs(2)));
    fabric.set_demand(demand(1, &[]));
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(backend.starts().is_empty(), "nothing spawned on a lapsed lease");
    fabric.set_slow_writes(None);
    until("a start once writes are quick", || backend.running().len() == 1).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(backend.running().len(), 1, "max 1");
}

#[tokio::test(start_paused = true)]
async fn the_back_off_of_a_gone_instance_is_forgotten() {
    let c = config(AgentConfig { mode: Mode::PerInstance, ..agent(5) });
    let (fabric, backend, _scaler, _) = rig(c);
    let with = |instances: Vec<InstanceDemand>| picture(vec![AgentDemand { instances, ..no_demand("work") }]);
    let i1 = InstanceDemand { id: "i1".into(), lifecycle: "running".into(), session: None, unfinished: 1 };
    fabric.set_demand(with(vec![i1.clone()]));
    for _ in 0..2 {
        until("a replica for i1", || backend.running().len() == 1).await;
        backend.crash(&backend.running()[0].replica, 3, "boom\n");
        until("the failure counted", || {
            fabric.status().is_some_and(|s| s.agents["work"].waiting == 1 && s.agents["work"].starting == 0)
        })
        .await;
    }
    until("a crash loop", || fabric.status().is_some_and(|s| s.agents["work"].crash_looping.is_some())).await;
    // The instance is stopped: its waiting replica goes, and so does its crash loop.
    fabric.set_demand(with(vec![]));
    until("no crash loop of a gone instance", || {
        fabric
            .status()
            .is_some_and(|s| s.agents["work"].waiting == 0 && s.agents["work"].crash_looping.is_none())
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn replicas_get_their_agents_token_file_as_an_absolute_path() {
    let (fabric, backend, _scaler, _) =
        rig(config(AgentConfig { token_file: Some("secrets/work.token".into()), ..agent(1) }));
    fabric.set_demand(demand(1, &[]));
    until("a replica", || backend.running().len() == 1).await;
    let expected = std::env::current_dir().unwrap().join("secrets/work.token");
    assert_eq!(backend.running()[0].token_file.as_deref(), Some(expected.as_path()));
}

#[tokio::test(start_paused = true)]
async fn adoption_waits_for_a_backend_that_cannot_look() {
    let clock = Clock::at(START);
    let fabric = Fake::new(clock);
    let (tx, _rx) = mpsc::channel(1);
    let shared = fake::Backend::new(tx);
    // A predecessor's replica runs and is recorded; the backend cannot look for it yet.
    let running = Launch {
        replica: "work-old".into(),
        agent: "work".into(),
        instance: None,
        env: Vec::new(),
        command: Some("scaled".into()),
        args: Vec::new(),
        image: None,
        token_file: None,
    };
    shared.plant(running);
    fabric.plant_intent("work-old", recorded(intent::Phase::Running, "here", START));
    shared.fail_finds(true);
    let (_scaler, backend) = start(&fabric, &shared, config(agent(1)), "a", clock);
    fabric.set_demand(demand(1, &[]));
    until("the lease", || fabric.holder().as_deref() == Some("a")).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(fabric.intents().contains_key("work-old"), "not taken for gone");
    assert!(backend.starts().is_empty(), "nothing started on an empty list");
    backend.fail_finds(false);
    until("adopted", || {
        fabric.status().is_some_and(|s| s.agents["work"].replicas.iter().any(|r| r.id == "work-old"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(backend.starts().is_empty(), "no duplicate");
    assert_eq!(backend.running().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_backend_no_agent_uses_does_not_hold_adoption_up() {
    // The Docker backend of a scaler whose agents are all processes, with no engine to ask.
    let clock = Clock::at(START);
    let fabric = Fake::new(clock);
    let (exits_tx, exits) = mpsc::channel(MAX_PENDING_EXITS);
    let process = fake::Backend::new(exits_tx.clone());
    let unused = fake::Backend::new(exits_tx);
    unused.fail_finds(true);
    let backends = BTreeMap::from([
        (BackendKind::Process, Backend::Fake(process.clone())),
        (BackendKind::Docker, Backend::Fake(unused)),
    ]);
    let (_configs, rx) = watch::channel(Arc::new(config(agent(1))));
    let options = Options {
        holder: "a".into(),
        host: "here".into(),
        endpoints: vec!["127.0.0.1:1".into()],
        tls_env: Vec::new(),
    };
    let controller = Controller::new(fabric.clone(), backends, exits, rx, clock, options, Metrics::default());
    let stop = CancellationToken::new();
    let _task = tokio::spawn(controller.run(stop.clone()));
    fabric.set_demand(demand(1, &[]));
    until("a replica started", || process.starts().len() == 1).await;
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_lease_blip_keeps_the_back_off() {
    let slow = AgentConfig { restart_initial_ms: 20_000, restart_cap_ms: 60_000, ..agent(1) };
    let (fabric, backend, _scaler, clock) = rig(config(slow));
    fabric.set_demand(demand(1, &[]));
    until("a replica", || backend.running().len() == 1).await;
    let first = backend.running()[0].replica.clone();
    backend.crash(&first, 3, "boom\n");
    let crashed_at = clock.now_ms();
    tokio::time::sleep(Duration::from_secs(1)).await;

    tracing::info!("phase: the fabric is out of reach past the lease, then back");
    fabric.set_unavailable(true);
    tokio::time::sleep(Duration::from_secs(4)).await;
    fabric.set_unavailable(false);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(backend.running().is_empty(), "the slot still backs off: a lease blip is not a fresh start");
    until("the restart after the delay", || backend.running().len() == 1).await;
    assert!(
        clock.now_ms() - crashed_at >= 20_000,
        "restarted {} ms after the crash",
        clock.now_ms() - crashed_at
    );
}

#[tokio::test(start_paused = true)]
async fn a_session_for_another_agent_is_no_start_and_the_failure_names_it() {
    let (fabric, backend, _scaler, _) = rig(config(agent(1)));
    fabric.set_demand(demand(1, &[]));
    until("a replica", || backend.running().len() == 1).await;
    let first = backend.running()[0].replica.clone();

    tracing::info!("phase: its process opens a session named after it, but serving agent 'other'");
    let mut wrong = demand(1, &[]);
    let other =
        AgentDemand { agent: "other".into(), ..demand(0, std::slice::from_ref(&first)).agents[0].clone() };
    wrong.agents.push(other);
    fabric.set_demand(wrong);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fabric.intents()[&first].phase, intent::Phase::Starting, "not running: work has no session");

    until("stopped as a failed start", || backend.stops().contains(&first)).await;
    until("reported, naming the agent it serves", || {
        fabric.status().is_some_and(|s| {
            s.agents["work"]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("session for agent 'other', not 'work'"))
        })
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn refused_credentials_stop_the_scaler_with_the_error_and_leave_the_replicas_to_a_successor() {
    let (fabric, backend, scaler, clock) = rig(config(agent(2)));
    fabric.set_demand(demand(15, &[]));
    until("two replicas", || backend.running().len() == 2).await;
    let running = ids(&backend.running());
    fabric.set_demand(demand(15, &running));
    until("recorded running", || fabric.intents().values().all(|i| i.phase == intent::Phase::Running)).await;
    fabric.refuse_credentials("token 0123456789ab was revoked");
    let ended = tokio::time::timeout(Duration::from_secs(5), scaler.task)
        .await
        .expect("the scaler stops instead of watching again")
        .unwrap();
    assert_eq!(ended, Err(FabricError::Credentials("token 0123456789ab was revoked".into())));
    assert_eq!(backend.running().len(), 2, "nothing it cannot record is done");
    assert_eq!(fabric.intents().len(), 2, "kept for the successor");

    // A successor with good credentials adopts them once the lease expired.
    fabric.allow_credentials();
    let (_successor, _) = start(&fabric, &backend, config(agent(2)), "b", clock);
    until("the successor holds the lease", || fabric.holder().as_deref() == Some("b")).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ids(&backend.running()), running, "adopted");
    assert_eq!(backend.starts().len(), 2, "none started twice");
}

#[tokio::test(start_paused = true)]
async fn an_unavailable_demand_watch_is_watched_again_not_fatal() {
    let (fabric, backend, scaler, _) = rig(config(agent(2)));
    fabric.fail_watch_once("node 1 is gone");
    fabric.set_demand(demand(15, &[]));
    until("two replicas after the watch came back", || backend.running().len() == 2).await;
    assert!(!scaler.task.is_finished());
}

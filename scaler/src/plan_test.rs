use proptest::prelude::*;

use super::*;
use crate::fabric::InstanceDemand;

fn pool_config(min: u32, max: u32, backlog: u32) -> AgentConfig {
    AgentConfig {
        min_replicas: min,
        backlog_per_replica: backlog,
        idle_ms: 1000,
        ..AgentConfig::process("x", max)
    }
}

fn load(pending: u64, running: u64) -> AgentDemand {
    AgentDemand { pending, running, ..crate::fabric::no_demand("work") }
}

fn replica(id: &str, phase: Phase, assigned: Option<u32>) -> Replica {
    Replica { id: id.into(), instance: None, phase, assigned, remote: false }
}

fn run(
    config: &AgentConfig,
    demand: &AgentDemand,
    replicas: &[Replica],
    now_ms: u64,
    memory: &mut Memory,
) -> Decision {
    plan(Input { config, demand, replicas, now_ms, starts_allowed: 100 }, memory)
}

#[test]
fn scale_from_zero_on_the_first_pending_execution() {
    let config = pool_config(0, 4, 10);
    let mut memory = Memory::default();
    let d = run(&config, &load(0, 0), &[], 0, &mut memory);
    assert_eq!((d.desired, d.start.len()), (0, 0));
    let d = run(&config, &load(1, 0), &[], 10, &mut memory);
    assert_eq!((d.desired, d.start.len()), (1, 1));

    let no_zero = AgentConfig { scale_from_zero: false, ..config.clone() };
    let d = run(&no_zero, &load(9, 0), &[], 0, &mut Memory::default());
    assert_eq!(d.desired, 0, "below one backlog: stays at zero");
    let d = run(&no_zero, &load(10, 0), &[], 0, &mut Memory::default());
    assert_eq!(d.desired, 1);
}

#[test]
fn backlog_scales_up_to_max_counting_starting_and_stopping_ones() {
    let config = pool_config(0, 4, 10);
    let mut memory = Memory::default();
    let d = run(&config, &load(25, 0), &[], 0, &mut memory);
    assert_eq!((d.desired, d.start.len()), (3, 3));
    let d = run(&config, &load(1000, 0), &[], 0, &mut memory);
    assert_eq!((d.desired, d.start.len()), (4, 4));
    // Two starting, one stopping: room for one more only.
    let replicas = [
        replica("a", Phase::Starting, None),
        replica("b", Phase::Starting, None),
        replica("c", Phase::Stopping, Some(3)),
    ];
    let d = run(&config, &load(1000, 0), &replicas, 0, &mut memory);
    assert_eq!(d.start.len(), 1);
    // The scale-up rate.
    let d = plan(
        Input { config: &config, demand: &load(1000, 0), replicas: &[], now_ms: 0, starts_allowed: 2 },
        &mut Memory::default(),
    );
    assert_eq!((d.desired, d.start.len()), (4, 2));
}

#[test]
fn scale_down_waits_for_idle_ms_and_stops_idle_replicas_first() {
    let config = pool_config(1, 4, 10);
    let mut memory = Memory::default();
    let replicas = [
        replica("a", Phase::Running, Some(5)),
        replica("b", Phase::Running, Some(0)),
        replica("c", Phase::Starting, None),
        replica("d", Phase::Running, Some(2)),
    ];
    let d = run(&config, &load(30, 10), &replicas, 0, &mut memory);
    assert_eq!(d.desired, 4);
    // The load falls to one replica's worth: nothing happens before idle_ms...
    let d = run(&config, &load(3, 4), &replicas, 100, &mut memory);
    assert_eq!((d.desired, d.stop.len()), (4, 0));
    let d = run(&config, &load(3, 4), &replicas, 1099, &mut memory);
    assert!(d.stop.is_empty());
    // ...then it drops to the most needed meanwhile (1), idle first, then starting, then the
    // least busy.
    let d = run(&config, &load(3, 4), &replicas, 1100, &mut memory);
    assert_eq!(d.desired, 1);
    assert_eq!(d.stop, ["b", "c", "d"]);
    // Never below min.
    let d = run(&config, &load(0, 0), &replicas[..1], 5000, &mut memory);
    let d2 = run(&config, &load(0, 0), &replicas[..1], 9000, &mut memory);
    assert_eq!((d.desired, d2.desired), (1, 1));
    assert!(d2.stop.is_empty());
}

#[test]
fn a_rise_during_the_idle_time_resets_it() {
    let config = pool_config(0, 4, 10);
    let mut memory = Memory::default();
    let two = [replica("a", Phase::Running, Some(1)), replica("b", Phase::Running, Some(1))];
    run(&config, &load(20, 0), &two, 0, &mut memory);
    run(&config, &load(1, 0), &two, 500, &mut memory);
    run(&config, &load(20, 0), &two, 900, &mut memory);
    let d = run(&config, &load(1, 0), &two, 1600, &mut memory);
    assert_eq!(d.desired, 2, "the idle time started again at 1600");
}

#[test]
fn adopted_replicas_are_not_stopped_before_the_idle_time() {
    let config = pool_config(0, 4, 10);
    let mut memory = Memory::default();
    let three = [
        replica("a", Phase::Running, Some(0)),
        replica("b", Phase::Running, Some(0)),
        replica("c", Phase::Running, Some(0)),
    ];
    let d = run(&config, &load(0, 0), &three, 0, &mut memory);
    assert_eq!((d.desired, d.stop.len()), (3, 0));
    let d = run(&config, &load(0, 0), &three, 1000, &mut memory);
    assert_eq!((d.desired, d.stop.len()), (0, 3));
}

#[test]
fn waiting_replicas_restart_when_due_and_go_first_on_scale_down() {
    let config = pool_config(0, 2, 10);
    let mut memory = Memory::default();
    let replicas =
        [replica("a", Phase::Waiting { not_before_ms: 500 }, None), replica("b", Phase::Running, Some(3))];
    let d = run(&config, &load(15, 0), &replicas, 100, &mut memory);
    assert_eq!((d.desired, d.start.len(), d.restart.len()), (2, 0, 0), "the waiting one holds its place");
    let d = run(&config, &load(15, 0), &replicas, 500, &mut memory);
    assert_eq!(d.restart, ["a"]);
    let d = run(&config, &load(1, 0), &replicas, 2000, &mut memory);
    let d = if d.stop.is_empty() { run(&config, &load(1, 0), &replicas, 3100, &mut memory) } else { d };
    assert_eq!(d.stop, ["a"]);
}

fn instance(id: &str, lifecycle: &str, session: Option<u64>) -> InstanceDemand {
    InstanceDemand { id: id.into(), lifecycle: lifecycle.into(), session, unfinished: 0 }
}

fn per_instance_replica(id: &str, instance: &str, phase: Phase) -> Replica {
    Replica { id: id.into(), instance: Some(instance.into()), phase, assigned: None, remote: false }
}

#[test]
fn per_instance_starts_one_per_unserved_instance_and_stops_gone_ones() {
    let config = AgentConfig { mode: Mode::PerInstance, ..pool_config(0, 3, 10) };
    let demand = AgentDemand {
        agent: "room".into(),
        instances: vec![
            instance("i1", "starting", None),
            instance("i2", "running", Some(7)),
            instance("i3", "stopping", None),
            instance("i4", "running", None),
            instance("i5", "running", None),
        ],
        ..crate::fabric::no_demand("a")
    };
    let replicas =
        [per_instance_replica("r4", "i4", Phase::Starting), per_instance_replica("r9", "i9", Phase::Running)];
    let d = run(&config, &demand, &replicas, 0, &mut Memory::default());
    // i1 and i5 need one, i4 has one; i2 is served, i3 is stopping; i9 is gone. Max 3 alive:
    // r4 and r9 (still stopping) leave room for one.
    assert_eq!(d.stop, ["r9"]);
    assert_eq!(d.start, [Some("i1".to_owned())]);
    assert_eq!(d.desired, 3);

    let truncated = AgentDemand { instances_truncated: true, ..demand.clone() };
    let d = run(&config, &truncated, &replicas, 0, &mut Memory::default());
    assert!(d.stop.is_empty(), "an instance missing from a truncated list may be live");
}

#[test]
fn per_instance_trims_down_to_max() {
    let config = AgentConfig { mode: Mode::PerInstance, ..pool_config(0, 2, 10) };
    let demand = AgentDemand {
        agent: "room".into(),
        instances: ["i1", "i2", "i3", "i4"].iter().map(|i| instance(i, "running", None)).collect(),
        ..crate::fabric::no_demand("a")
    };
    // Max lowered to 2 by a reload (or four adopted): two go, the starting one first, then
    // the newest; nothing starts in their place.
    let replicas = [
        per_instance_replica("r1", "i1", Phase::Running),
        per_instance_replica("r2", "i2", Phase::Starting),
        per_instance_replica("r3", "i3", Phase::Running),
        per_instance_replica("r4", "i4", Phase::Running),
    ];
    let d = run(&config, &demand, &replicas, 0, &mut Memory::default());
    assert_eq!(d.stop, ["r2", "r4"]);
    assert!(d.start.is_empty() && d.restart.is_empty(), "{d:?}");
    assert_eq!(d.desired, 2);
}

#[test]
fn scale_down_stops_what_this_scaler_can_stop_before_remote_replicas() {
    let config = pool_config(0, 3, 10);
    let mut memory = Memory::default();
    // Two idle replicas; the newest (first choice otherwise) runs on another host.
    let replicas = [
        replica("a", Phase::Running, Some(0)),
        Replica { remote: true, ..replica("b", Phase::Running, Some(0)) },
    ];
    run(&config, &load(20, 0), &replicas, 0, &mut memory);
    let d = run(&config, &load(1, 0), &replicas, 0, &mut memory);
    let d = if d.stop.is_empty() { run(&config, &load(1, 0), &replicas, 3100, &mut memory) } else { d };
    assert_eq!(d.stop, ["a"]);
    // Per-instance trimming too.
    let config = AgentConfig { mode: Mode::PerInstance, ..pool_config(0, 1, 10) };
    let demand = AgentDemand {
        instances: vec![instance("i1", "running", None), instance("i2", "running", None)],
        ..crate::fabric::no_demand("a")
    };
    let replicas = [
        per_instance_replica("r1", "i1", Phase::Running),
        Replica { remote: true, ..per_instance_replica("r2", "i2", Phase::Starting) },
    ];
    assert_eq!(run(&config, &demand, &replicas, 0, &mut Memory::default()).stop, ["r1"]);
}

fn arb_phase() -> impl Strategy<Value = Phase> {
    prop_oneof![
        (0u64..3000).prop_map(|t| Phase::Waiting { not_before_ms: t }),
        Just(Phase::Starting),
        Just(Phase::Running),
        Just(Phase::Stopping),
    ]
}

proptest! {
    #[test]
    fn never_above_max_never_below_min_and_deterministic(
        min in 0u32..4,
        extra in 0u32..6,
        backlog in 1u32..20,
        per_instance in any::<bool>(),
        steps in proptest::collection::vec(
            (0u64..200, 0u64..50, proptest::collection::vec((arb_phase(), 0u32..10, 0u8..8), 0..10),
             proptest::collection::vec((0u8..8, any::<bool>(), 0u8..3), 0..10), 0u32..10, 0u64..700),
            1..20),
    ) {
        let max = min + extra + 1;
        let mode = if per_instance { Mode::PerInstance } else { Mode::Pool };
        let config = AgentConfig {
            mode,
            min_replicas: if per_instance { 0 } else { min },
            ..pool_config(0, max, backlog)
        };
        let mut memory = Memory::default();
        let mut now = 0;
        for (pending, running, replicas, instances, starts_allowed, dt) in steps {
            now += dt;
            let replicas: Vec<Replica> = replicas
                .into_iter()
                .enumerate()
                .map(|(i, (phase, assigned, inst))| Replica {
                    id: format!("r{i}"),
                    instance: per_instance.then(|| format!("i{inst}")),
                    phase,
                    assigned: Some(assigned),
                    remote: i % 3 == 2,
                })
                .collect();
            let demand = AgentDemand {
                agent: "a".into(),
                pending,
                running,
                instances: instances
                    .into_iter()
                    .map(|(i, served, lc)| instance(
                        &format!("i{i}"),
                        ["starting", "running", "stopping"][lc as usize],
                        served.then_some(1),
                    ))
                    .collect(),
                ..crate::fabric::no_demand("a")
            };
            let input = Input { config: &config, demand: &demand, replicas: &replicas, now_ms: now, starts_allowed };
            let mut again = memory.clone();
            let d = plan(input, &mut memory);
            prop_assert_eq!(&plan(input, &mut again), &d, "deterministic");
            prop_assert_eq!(&again, &memory);
            prop_assert!(d.desired <= max);
            if !per_instance {
                prop_assert!(d.desired >= min);
            }
            let alive = replicas.iter().filter(|r| r.alive()).count() as u32;
            let starts = (d.start.len() + d.restart.len()) as u32;
            prop_assert!(starts <= starts_allowed);
            prop_assert!(alive <= max && alive + starts <= max || starts == 0,
                "alive {} + starts {} above max {}", alive, starts, max);
            let staying = replicas
                .iter()
                .filter(|r| r.alive() && r.phase != Phase::Stopping && !d.stop.contains(&r.id))
                .count() as u32;
            prop_assert!(staying <= max, "{} processes stay, above max {}", staying, max);
            for id in d.stop.iter().chain(&d.restart) {
                prop_assert!(replicas.iter().any(|r| &r.id == id));
            }
        }
    }
}

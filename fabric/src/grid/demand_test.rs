//! The demand query: what is pending, running and delayed per agent, unserved instances,
//! generator listeners and sessions; the filter; the bounds; and the `WorkChanged` events that
//! tell watchers to look again.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::cursor::{CursorConfig, NewListener};
use super::demand::{AgentDemand, Agents, MAX_LISTED_INSTANCES};
use super::execution::{NewExecution, SessionId, Status};
use super::instance::Lifecycle;
use super::session::{Host, NewSession};
use super::stream::{Generator, NewStream, StreamConfig};
use super::test_harness::*;
use super::{Command, Event, Grid};

fn named(agents: &[&str]) -> Agents {
    Agents::Named(agents.iter().map(|a| (*a).to_owned()).collect::<BTreeSet<_>>())
}

/// The demand of one agent.
fn of(h: &Harness, agent: &str) -> AgentDemand {
    h.grid.demand(&named(&[agent])).pop().expect("a named agent is always in the picture")
}

fn counts(d: &AgentDemand) -> (u64, u64, u64) {
    (d.pending, d.running, d.delayed)
}

fn work_changed(h: &mut Harness) -> bool {
    let seen = h.events.iter().any(|e| matches!(e, Event::WorkChanged));
    h.events.clear();
    seen
}

#[test]
fn a_call_waits_as_pending_until_a_session_runs_it() {
    let mut h = Harness::new();
    h.create(new_exec("w", "job"));
    assert_eq!(counts(&of(&h, "w")), (1, 0, 0));
    let all = h.grid.demand(&Agents::All);
    assert_eq!(all.iter().map(|d| d.agent.as_str()).collect::<Vec<_>>(), ["w"], "only agents with demand");

    h.events.clear();
    let s = h.open_with(NewSession { name: "proc-1".into(), ..new_session(&["w"], 4) });
    assert!(work_changed(&mut h), "a session opened");
    let d = of(&h, "w");
    assert_eq!(counts(&d), (0, 1, 0), "assigned at once");
    assert_eq!(d.sessions.len(), 1);
    let load = &d.sessions[0];
    assert_eq!((load.id, load.name.as_str(), load.node), (s, "proc-1", 1));
    assert_eq!((load.capacity, load.assigned, load.draining, load.only_claimed), (4, 1, false, false));

    h.ok(Command::DrainSession { session: s });
    assert!(work_changed(&mut h), "draining changes the demand");
    h.ok(Command::DrainSession { session: s });
    assert!(!work_changed(&mut h), "draining again changes nothing");
    assert!(of(&h, "w").sessions[0].draining);
}

#[test]
fn named_agents_are_always_there_with_zeros_and_in_name_order() {
    let mut h = Harness::new();
    h.create(new_exec("b", "job"));
    let picture = h.grid.demand(&named(&["zed", "b", "a"]));
    let names: Vec<&str> = picture.iter().map(|d| d.agent.as_str()).collect();
    assert_eq!(names, ["a", "b", "zed"]);
    assert_eq!(picture[0], AgentDemand { agent: "a".into(), ..AgentDemand::default() });
    assert_eq!(picture[1].pending, 1);
    assert!(h.grid.demand(&Agents::All).iter().all(|d| d.agent == "b"));
}

#[test]
fn delayed_executions_are_not_pending_until_their_time() {
    let mut h = Harness::new();
    h.create(NewExecution { delay_ms: Some(500), ..new_exec("w", "job") });
    assert_eq!(counts(&of(&h, "w")), (0, 0, 1));
    assert_eq!(h.grid.demand(&Agents::All).len(), 1, "a delayed execution is demand too");
    h.events.clear();
    h.at(1_600).ok(Command::Tick { limit: 10 });
    assert!(work_changed(&mut h), "it became ready, though nobody took it");
    assert_eq!(counts(&of(&h, "w")), (1, 0, 0));
}

#[test]
fn instances_without_a_session_are_unserved_and_their_queue_is_pending() {
    let mut h = Harness::new();
    let start = h.start("counter", "c1");
    let d = of(&h, "counter");
    assert_eq!(d.pending, 1, "the Start, counted once though it is offered and queued");
    assert_eq!(d.instances.len(), 1);
    let i = &d.instances[0];
    assert_eq!((i.id.as_str(), i.lifecycle, i.session, i.unfinished), ("c1", Lifecycle::Starting, None, 1));
    h.create(on_instance("counter", "c1", "add"));
    h.create(on_instance("counter", "c1", "add"));
    assert_eq!(of(&h, "counter").pending, 3, "calls queued behind the Start of an unserved instance");

    tracing::info!("a session takes the Start: the instance is served, its queue is its session's");
    let s = h.open(&["counter"], 1);
    assert_eq!(h.holder(start), Some(s));
    let d = of(&h, "counter");
    assert_eq!(counts(&d), (0, 1, 0), "the queue waits for the instance's own session");
    assert_eq!(d.instances[0].session, Some(s));
    assert_eq!(d.instances[0].unfinished, 3);
    assert_eq!(d.sessions[0].claimed, ["c1"], "activated on it");

    tracing::info!("the session goes: the instance is unserved again");
    h.ok(Command::CloseSession { session: s, reason: "gone".into() });
    let d = of(&h, "counter");
    assert_eq!(counts(&d), (3, 0, 0));
    assert_eq!(d.instances[0].session, None);
    assert!(d.sessions.is_empty());
}

#[test]
fn a_claimed_instance_is_listed_on_its_session() {
    let mut h = Harness::new();
    h.start("counter", "c1");
    h.start("counter", "c2");
    let claims = vec![("counter".to_owned(), "c2".to_owned())];
    let s = h.open_with(NewSession { claims, ..new_session(&["counter"], 4) });
    let d = of(&h, "counter");
    assert_eq!(d.sessions[0].claimed, ["c1", "c2"], "claimed c2, and took c1's Start");
    assert!(d.instances.iter().all(|i| i.session == Some(s)));
}

#[test]
fn running_counts_only_the_agents_own_executions_on_shared_sessions() {
    let mut h = Harness::new();
    h.open(&["a", "b"], 10);
    h.create(new_exec("a", "job"));
    h.create(new_exec("b", "job"));
    h.create(new_exec("b", "job"));
    let picture = h.grid.demand(&Agents::All);
    let running: Vec<(&str, u64, u32)> =
        picture.iter().map(|d| (d.agent.as_str(), d.running, d.sessions[0].assigned)).collect();
    assert_eq!(running, [("a", 1, 3), ("b", 2, 3)], "assigned counts every agent's");
}

#[test]
fn generator_listeners_wait_until_the_generator_runs() {
    let mut h = Harness::new();
    let generator = Generator { call: new_exec("gen", "numbers"), eager: false };
    let config = StreamConfig { generator: Some(Box::new(generator)), ..StreamConfig::default() };
    h.ok(Command::CreateStream(Box::new(NewStream { name: "nums".into(), config })));
    h.ok(Command::CreateStream(Box::new(NewStream {
        name: "plain".into(),
        config: StreamConfig::default(),
    })));
    let attach = |cursor: &str, stream: &str, key| {
        Command::Attach(Box::new(NewListener {
            stream: stream.into(),
            cursor: Some(cursor.into()),
            config: Some(CursorConfig::default()),
            uid: None,
            host: Host { node: 1, key },
            window: 10,
        }))
    };
    h.events.clear();
    h.ok(attach("c", "plain", 1));
    assert!(!work_changed(&mut h), "a listener of a plain stream is no demand");
    h.ok(attach("c", "nums", 2));
    h.ok(attach("d", "nums", 3));
    assert!(work_changed(&mut h));
    let d = of(&h, "gen");
    assert_eq!((d.generator_listeners, d.pending), (2, 1), "two listeners wait on one generator");

    h.open(&["gen"], 1);
    let d = of(&h, "gen");
    assert_eq!((d.generator_listeners, d.pending, d.running), (0, 0, 1), "the generator runs");
}

#[test]
fn lists_are_bounded_but_counts_are_not() {
    let mut h = Harness::new();
    for i in 0..=MAX_LISTED_INSTANCES {
        h.start("many", &format!("i{i:05}"));
    }
    h.open(&["many"], 1);
    let d = of(&h, "many");
    assert_eq!(d.instances.len(), MAX_LISTED_INSTANCES);
    assert!(d.instances_truncated);
    assert_eq!(d.instances.last().map(|i| i.id.as_str()), Some("i09999"), "the first ones, in id order");
    assert!(!d.sessions_truncated);
    assert_eq!(counts(&d), (MAX_LISTED_INSTANCES as u64, 1, 0), "every Start counted");
}

/// The demand the indexes give equals a count over every execution (the model): running is
/// what is assigned; delayed what waits for its time; pending what waits anywhere else except
/// behind the head of an instance some session holds. The dispatch property tests call it
/// after every step of their random logs.
pub(super) fn check_against_executions(grid: &Grid) -> Result<(), TestCaseError> {
    let w = &grid.work;
    let mut model: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
    for e in w.executions.values() {
        let counts = model.entry(e.agent.as_str()).or_default();
        let instance = e.instance_key().and_then(|k| w.instances.get(&k));
        let delayed = e.not_before_ms.is_some_and(|at| w.delayed.contains(&(at, e.id)));
        match e.status {
            Status::Assigned => counts.1 += 1,
            Status::Pending if delayed => counts.2 += 1,
            Status::Pending => {
                let offered = instance.is_some_and(|i| i.offered.as_ref().is_some_and(|(_, o)| o.1 == e.id));
                if instance.is_none_or(|i| i.session.is_none()) || offered {
                    counts.0 += 1;
                }
            }
            _ => {}
        }
    }
    let picture = grid.demand(&Agents::All);
    for d in &picture {
        let expected = model.get(d.agent.as_str()).copied().unwrap_or_default();
        prop_assert_eq!(counts(d), expected, "demand of {}", d.agent);
        let listed: Vec<&str> = d.instances.iter().map(|i| i.id.as_str()).collect();
        let instances: Vec<&str> =
            w.instances.keys().filter(|(a, _)| *a == d.agent).map(|(_, i)| i.as_str()).collect();
        prop_assert_eq!(listed, instances);
        let sessions: Vec<SessionId> = d.sessions.iter().map(|s| s.id).collect();
        let serving: Vec<SessionId> =
            w.sessions.values().filter(|s| s.spec(&d.agent).is_some()).map(|s| s.id).collect();
        prop_assert_eq!(sessions, serving);
    }
    for (agent, counts) in model {
        if counts != (0, 0, 0) {
            prop_assert!(picture.iter().any(|d| d.agent == agent), "{agent} has demand but is not pictured");
        }
    }
    Ok(())
}

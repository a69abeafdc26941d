//! Tests of dispatch: capacity, order and load sharing, and the delivery bound; then property
//! tests that drive random sessions, executions, completions, cancels, stops and clock steps,
//! and eager calls (reserved blocks, creates under pairs from them, valid, forged or repeated,
//! entries stamped with held slots), check every invariant of the indexes after each step and
//! of eager calls after each command, and check that replicas and restored snapshots of the
//! same log agree.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::events::Held;
use super::execution::*;
use super::instance::NewInstance;
use super::session::NewSession;
use super::test_harness::*;
use super::*;
use crate::codec;

#[test]
fn capacity_bounds_assignments_and_priority_then_age_orders_them() {
    let mut h = Harness::new();
    let s = h.open(&["w"], 2);
    let low = h.create(new_exec("w", "job"));
    let _second = h.create(new_exec("w", "job"));
    let third = h.create(new_exec("w", "job"));
    let high = h.create(NewExecution { priority: 5, ..new_exec("w", "job") });
    assert_eq!(h.grid.session(s).unwrap().assigned.len(), 2, "capacity 2");
    assert_eq!(h.exec(third).status, Status::Pending);
    h.complete(low, "1");
    assert_eq!(h.exec(high).status, Status::Assigned, "the higher priority goes first");
    assert_eq!(h.exec(third).status, Status::Pending, "then the older: not yet");
}

#[test]
fn competing_sessions_share_the_load() {
    let mut h = Harness::new();
    let a = h.open(&["w"], 10);
    let b = h.open(&["w"], 10);
    let ids: Vec<_> = (0..10).map(|_| h.create(new_exec("w", "job"))).collect();
    let on_a = ids.iter().filter(|id| h.holder(**id) == Some(a)).count();
    let on_b = ids.iter().filter(|id| h.holder(**id) == Some(b)).count();
    assert_eq!((on_a, on_b), (5, 5));
}

#[test]
fn delegates_a_session_does_not_serve_wait() {
    let mut h = Harness::new();
    let mut new = new_session(&["w"], 4);
    new.agents[0].delegates = vec!["a".into()];
    h.open_with(new);
    let a = h.create(new_exec("w", "a"));
    let b = h.create(new_exec("w", "b"));
    assert_eq!((h.exec(a).status, h.exec(b).status), (Status::Assigned, Status::Pending));
}

#[test]
fn undeliverable_after_max_deliveries() {
    let mut h = Harness::new();
    let id = h.create(NewExecution { max_deliveries: 2, ..new_exec("w", "job") });
    for _ in 0..2 {
        let s = h.open(&["w"], 1);
        assert_eq!(h.holder(id), Some(s));
        h.ok(Command::CloseSession { session: s, reason: "crashed".into() });
    }
    h.open(&["w"], 1);
    let e = h.exec(id);
    assert_eq!(e.status, Status::Failed);
    assert!(matches!(&e.outcome, Some(Err(Failure { kind: FailureKind::Undeliverable, .. }))));
}

#[test]
fn an_only_claimed_session_gets_only_its_instances_of_the_agents_it_claims() {
    let mut h = Harness::new();
    // Queued before the session opens, ahead of what it may take: another instance's Start
    // and a call without an instance, in the same queues as its own instance's.
    let y_start = h.start("w", "y");
    let stateless = h.create(new_exec("w", "job"));
    let x_start = h.start("w", "x");
    let other_agent = h.create(new_exec("v", "job"));
    let claims = vec![("w".to_owned(), "x".to_owned())];
    let s = h.open_only_claimed(NewSession { claims, ..new_session(&["w", "v"], 10) });
    assert_eq!(h.holder(x_start), Some(s), "its claimed instance's Start runs on it");
    assert_eq!(h.holder(other_agent), Some(s), "an agent it claims nothing of is served as usual");
    assert_eq!(h.exec(y_start).status, Status::Pending, "another instance's Start waits");
    assert_eq!(h.exec(stateless).status, Status::Pending, "a call without an instance waits");
    assert!(h.grid.session(s).unwrap().only_claimed);

    h.complete(x_start, "{}");
    let on_x = h.create(on_instance("w", "x", "job"));
    assert_eq!(h.holder(on_x), Some(s), "past the stateless call waiting ahead of it");
    let on_y = h.create(on_instance("w", "y", "job"));
    assert_eq!(h.exec(on_y).status, Status::Pending);

    // A plain session takes what the claiming one may not.
    let plain = h.open(&["w"], 10);
    assert_eq!(h.holder(y_start), Some(plain));
    assert_eq!(h.holder(stateless), Some(plain));
    h.complete(y_start, "{}");
    assert_eq!(h.holder(on_y), Some(plain));

    // Its instance stopped and gone, it still takes no other instance of the agent.
    h.ok(Command::StopInstance { agent: "w".into(), instance: "x".into() });
    h.complete(on_x, "1");
    let stop = h.grid.instance("w", "x").unwrap().stop_execution.unwrap();
    assert_eq!(h.holder(stop), Some(s), "its Stop runs on it too");
    h.complete(stop, "{}");
    assert!(h.grid.instance("w", "x").is_none());
    h.ok(Command::CloseSession { session: plain, reason: "gone".into() });
    let z_start = h.start("w", "z");
    assert_eq!(h.exec(z_start).status, Status::Pending);
    let held = &h.grid.session(s).unwrap().assigned;
    assert!(held.iter().all(|id| h.exec(*id).agent == "v"), "it holds only v's work: {held:?}");
}

#[test]
fn a_plain_open_serves_every_instance_and_claims_of_missing_instances_refuse_the_open() {
    let mut h = Harness::new();
    h.start("w", "x");
    let y_start = h.start("w", "y");
    let claims = vec![("w".to_owned(), "x".to_owned())];
    let s = h.open_with(NewSession { claims: claims.clone(), ..new_session(&["w"], 10) });
    assert_eq!(h.holder(y_start), Some(s), "without only-claimed, a claim takes nothing away");
    // Claiming an instance that was never started (or is gone) opens nothing.
    let before = h.grid.clone();
    let missing = vec![("w".to_owned(), "never".to_owned())];
    let refused = h.apply(Command::OpenSessionOnlyClaimed(Box::new(NewSession {
        claims: missing,
        ..new_session(&["w"], 1)
    })));
    assert!(matches!(refused, Err(Error::UnknownInstance { .. })), "{refused:?}");
    // Claiming one activated elsewhere is refused too (single activation).
    let taken =
        h.apply(Command::OpenSessionOnlyClaimed(Box::new(NewSession { claims, ..new_session(&["w"], 1) })));
    assert!(matches!(taken, Err(Error::InstanceClaimed { .. })), "{taken:?}");
    assert_eq!(h.grid, before);
}

#[test]
fn an_instance_head_no_session_may_take_fails_only_when_nobody_may_run_it() {
    let mut h = Harness::new();
    let x_start = h.start("w", "x");
    let y_start = h.start("w", "y");
    let claims = vec![("w".to_owned(), "y".to_owned())];
    let s2 = h.open_only_claimed(NewSession { claims, ..new_session(&["w"], 5) });
    assert_eq!(h.holder(y_start), Some(s2));
    assert_eq!(h.exec(x_start).status, Status::Pending);
    let mut narrow = new_session(&["w"], 5);
    narrow.agents[0].delegates = vec!["job".into()];
    let s = h.open_with(narrow);
    assert_eq!(h.holder(x_start), Some(s), "Start is always served");
    h.complete(x_start, "{}");
    // s2 serves `other`, but only-claimed keeps it from x: x's `other` call has nowhere to
    // run while x is activated on s, so it fails rather than block x's queue.
    let other = h.create(on_instance("w", "x", "other"));
    let e = h.exec(other);
    assert_eq!(e.status, Status::Failed);
    assert!(matches!(&e.outcome, Some(Err(Failure { kind: FailureKind::Undeliverable, .. }))));
}

// ---- property tests -------------------------------------------------------------------------

const AGENTS: [&str; 2] = ["a", "b"];
const DELEGATES: [&str; 2] = ["x", "y"];
const INSTANCES: [&str; 2] = ["i1", "i2"];

/// An abstract step; the history turns it into concrete commands from the current state
/// (which execution to complete, with its real token or a stale one; which reserved pair).
#[derive(Debug, Clone)]
enum Step {
    Create(Call),
    Open {
        agents: Vec<usize>,
        capacity: u32,
        concurrent: bool,
        delegates: Option<usize>,
        lease: bool,
        only_claimed: bool,
        /// (which of its agents, which instance)
        claim: Option<(usize, usize)>,
    },
    Close {
        pick: usize,
    },
    Complete {
        pick: usize,
        ok: bool,
        stale: bool,
        effect: bool,
    },
    GiveBack {
        pick: usize,
    },
    Renew {
        pick: usize,
    },
    Drain {
        pick: usize,
    },
    Cancel {
        pick: usize,
    },
    Start {
        agent: usize,
        instance: usize,
    },
    Stop {
        agent: usize,
        instance: usize,
    },
    Advance {
        ms: u64,
    },
    /// `ReserveBlock`: the next `count` ids and tokens set aside.
    Reserve {
        count: u32,
    },
    /// `CreateReserved`, as the leader proposes an eager call it pushed to a session (or a
    /// forged or repeated one); with the call's completion in the same entry if `complete`.
    /// Alone, its entry is stamped with the call held on its session, as the proposer stamps it.
    Reserved {
        call: Call,
        /// Which session: mostly one the leader would pick (it may run the call and has a free
        /// slot), else any, now and then one that does not exist.
        session: usize,
        pair: Pair,
        complete: bool,
    },
    /// Steps applied as one entry, stamped with eager calls held on sessions (which, how many).
    Entry {
        held: Vec<(usize, u32)>,
        steps: Vec<Step>,
    },
}

/// A call to create, plainly or under a reserved pair.
#[derive(Debug, Clone)]
struct Call {
    agent: usize,
    delegate: usize,
    instance: Option<usize>,
    priority: i32,
    delay: Option<u64>,
    key: Option<u8>,
}

/// Which (id, token) a `CreateReserved` names.
#[derive(Debug, Clone)]
enum Pair {
    /// An id of a block that no create named yet, with its own token.
    Fresh(usize),
    /// An id of a block with a token that is not its own.
    WrongToken(usize, u64),
    /// An id in no block (one the grid made, or 0) with a token the grid gave out (or 0).
    Outside(usize),
    /// A pair a create named before.
    Again(usize),
}

fn arb_call(instance: f64, delay: f64) -> impl Strategy<Value = Call> {
    (
        0..2usize,
        0..2usize,
        prop::option::weighted(instance, 0..2usize),
        -1..2i32,
        prop::option::weighted(delay, 1..500u64),
        prop::option::weighted(0.3, 0..4u8),
    )
        .prop_map(|(agent, delegate, instance, priority, delay, key)| Call {
            agent,
            delegate,
            instance,
            priority,
            delay,
            key,
        })
}

fn arb_pair() -> impl Strategy<Value = Pair> {
    prop_oneof![
        6 => any::<usize>().prop_map(Pair::Fresh),
        1 => (any::<usize>(), 1..4u64).prop_map(|(pick, off)| Pair::WrongToken(pick, off)),
        1 => any::<usize>().prop_map(Pair::Outside),
        2 => any::<usize>().prop_map(Pair::Again),
    ]
}

/// A step that is not an entry of several.
fn arb_single_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => arb_call(0.4, 0.2).prop_map(Step::Create),
        2 => (prop::collection::vec(0..2usize, 1..3), 1..4u32, any::<bool>(), prop::option::weighted(0.2, 0..2usize), any::<bool>(), prop::bool::weighted(0.4), prop::option::weighted(0.5, (0..2usize, 0..2usize)))
            .prop_map(|(agents, capacity, concurrent, delegates, lease, only_claimed, claim)| Step::Open { agents, capacity, concurrent, delegates, lease, only_claimed, claim }),
        1 => any::<usize>().prop_map(|pick| Step::Close { pick }),
        6 => (any::<usize>(), prop::bool::weighted(0.8), prop::bool::weighted(0.1), any::<bool>())
            .prop_map(|(pick, ok, stale, effect)| Step::Complete { pick, ok, stale, effect }),
        1 => any::<usize>().prop_map(|pick| Step::GiveBack { pick }),
        1 => any::<usize>().prop_map(|pick| Step::Renew { pick }),
        1 => any::<usize>().prop_map(|pick| Step::Drain { pick }),
        1 => any::<usize>().prop_map(|pick| Step::Cancel { pick }),
        2 => (0..2usize, 0..2usize).prop_map(|(agent, instance)| Step::Start { agent, instance }),
        1 => (0..2usize, 0..2usize).prop_map(|(agent, instance)| Step::Stop { agent, instance }),
        // Now and then past a block's age (MAX_BLOCK_AGE_MS).
        2 => prop_oneof![12 => 1..800u64, 1 => 20_000..70_000u64].prop_map(|ms| Step::Advance { ms }),
        2 => (1..6u32).prop_map(|count| Step::Reserve { count }),
        6 => (arb_call(0.1, 0.1), any::<usize>(), arb_pair(), prop::bool::weighted(0.3))
            .prop_map(|(call, session, pair, complete)| Step::Reserved { call, session, pair, complete }),
    ]
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        10 => arb_single_step(),
        2 => (prop::collection::vec((any::<usize>(), 0..3u32), 0..3), prop::collection::vec(arb_single_step(), 1..5))
            .prop_map(|(held, steps)| Step::Entry { held, steps }),
    ]
}

fn pick<T: Copy>(items: &[T], at: usize) -> Option<T> {
    (!items.is_empty()).then(|| items[at % items.len()])
}

impl Call {
    fn new_execution(&self) -> NewExecution {
        let mut new = new_exec(AGENTS[self.agent], DELEGATES[self.delegate]);
        new.instance = self.instance.map(|i| INSTANCES[i].to_owned());
        new.priority = self.priority;
        new.delay_ms = self.delay;
        new.idempotency_key = self.key.map(|k| format!("k{k}"));
        new.retry = Some(RetryPolicy {
            max_attempts: 2,
            initial_backoff_ms: 50,
            max_backoff_ms: 100,
            multiplier_percent: 200,
        });
        new
    }
}

impl Harness {
    fn assigned_ids(&self) -> Vec<ExecutionId> {
        let mut ids: Vec<_> = self.grid.sessions().flat_map(|s| s.assigned.iter().copied()).collect();
        ids.sort();
        ids
    }

    /// The command of a step that needs nothing but the grid (not an entry, nor an eager
    /// call's); `None` when it has nothing to act on.
    fn command(&mut self, step: &Step) -> Option<Command> {
        Some(match step {
            Step::Create(call) => Command::CreateExecution(Box::new(call.new_execution())),
            Step::Open { agents, capacity, concurrent, delegates, lease, only_claimed, claim } => {
                let names: Vec<&str> =
                    agents.iter().map(|a| AGENTS[*a]).collect::<BTreeSet<_>>().into_iter().collect();
                let mut new = new_session(&names, *capacity);
                if let Some((agent, instance)) = claim {
                    new.claims = vec![(names[agent % names.len()].into(), INSTANCES[*instance].into())];
                }
                for spec in &mut new.agents {
                    spec.concurrent_instances = *concurrent;
                    if let Some(d) = delegates {
                        spec.delegates = vec![DELEGATES[*d].into()];
                    }
                }
                new.lease_ms = if *lease { 300 } else { 0 };
                if *only_claimed {
                    Command::OpenSessionOnlyClaimed(Box::new(new))
                } else {
                    Command::OpenSession(Box::new(new))
                }
            }
            Step::Close { pick: p } => {
                let ids: Vec<_> = self.grid.sessions().map(|s| s.id).collect();
                Command::CloseSession { session: pick(&ids, *p)?, reason: "closed".into() }
            }
            Step::Drain { pick: p } => {
                let ids: Vec<_> = self.grid.sessions().map(|s| s.id).collect();
                Command::DrainSession { session: pick(&ids, *p)? }
            }
            Step::Complete { pick: p, ok, stale, effect } => {
                let id = pick(&self.assigned_ids(), *p)?;
                let e = self.exec(id);
                let token = if *stale { self.token(id) - 1 } else { self.token(id) };
                let outcome = if *ok {
                    Ok(Payload::json("1"))
                } else {
                    Err(HandlerError { message: "e".into(), retryable: true })
                };
                let effects = match (&e.instance, *effect && *ok) {
                    (Some(i), true) => {
                        let ns = format!("instance/{}/{i}", e.agent);
                        let version = self.grid.get(&ns, "n").map_or(0, |v| v.version);
                        vec![put_effect(&ns, "n", "1", Some(version))]
                    }
                    (None, true) => vec![Effect::Call(Box::new(new_exec(AGENTS[0], DELEGATES[0])))],
                    _ => vec![],
                };
                complete_cmd(id, token, outcome, effects)
            }
            Step::GiveBack { pick: p } => {
                let id = pick(&self.assigned_ids(), *p)?;
                Command::GiveBack { execution: id, token: self.token(id) }
            }
            Step::Renew { pick: p } => {
                let id = pick(&self.assigned_ids(), *p)?;
                Command::Renew { execution: id, token: self.token(id) }
            }
            Step::Cancel { pick: p } => {
                let live: Vec<_> = self
                    .grid
                    .list_executions(&Default::default(), None, 10_000)
                    .executions
                    .iter()
                    .filter(|e| !e.status.is_final())
                    .map(|e| e.id)
                    .collect();
                Command::Cancel { execution: pick(&live, *p)?, reason: "test".into() }
            }
            Step::Start { agent, instance } => Command::StartInstance(Box::new(NewInstance {
                agent: AGENTS[*agent].into(),
                instance: Some(INSTANCES[*instance].into()),
                payload: Payload::json("{}"),
                idempotency_key: None,
                parent: None,
                retention_ms: 1_000,
                max_deliveries: 5,
            })),
            Step::Stop { agent, instance } => {
                Command::StopInstance { agent: AGENTS[*agent].into(), instance: INSTANCES[*instance].into() }
            }
            Step::Advance { ms } => {
                self.now += ms;
                Command::Tick { limit: 1_000 }
            }
            Step::Reserve { count } => Command::ReserveBlock { count: *count },
            Step::Reserved { .. } | Step::Entry { .. } => return None,
        })
    }
}

/// A block of ids and tokens as `Output::Block` announced it, and when.
#[derive(Debug, Clone, Copy)]
struct Reservation {
    first_id: ExecutionId,
    first_token: u64,
    count: u32,
    reserved_ms: u64,
}

impl Reservation {
    fn holds_id(&self, id: ExecutionId) -> bool {
        id >= self.first_id && id - self.first_id < u64::from(self.count)
    }

    fn holds_token(&self, token: u64) -> bool {
        token >= self.first_token && token - self.first_token < u64::from(self.count)
    }

    fn pairs(&self) -> impl Iterator<Item = (ExecutionId, u64)> + '_ {
        (0..u64::from(self.count)).map(|i| (self.first_id + i, self.first_token + i))
    }
}

/// A random history under way: the grid under test, and what the invariants over the whole
/// history remember ([`History::observe`] checks each command as it applies; [`History::check`]
/// checks the grid between steps).
struct History {
    h: Harness,
    /// Every block reserved, oldest first.
    blocks: Vec<Reservation>,
    /// Pairs `CreateReserved` commands named, in order (a repeated one names one again).
    named: Vec<(ExecutionId, u64)>,
    /// Ids named by a `CreateReserved` that was not refused: used up, never honoured again.
    used: BTreeSet<ExecutionId>,
    /// Every id an execution was created under.
    created: BTreeSet<ExecutionId>,
    /// Every token granted (`Event::Assigned`), with the execution it was granted for.
    granted: BTreeMap<u64, ExecutionId>,
    /// Sessions some entry's stamp held slots on. Dispatch leaves held slots free, and nothing
    /// looks at them again until something touches their agents: ready work may wait beside
    /// them, so work conservation is not asked of them.
    stamped: BTreeSet<SessionId>,
}

impl History {
    fn new() -> Self {
        Self {
            h: Harness::new(),
            blocks: Vec::new(),
            named: Vec::new(),
            used: BTreeSet::new(),
            created: BTreeSet::new(),
            granted: BTreeMap::new(),
            stamped: BTreeSet::new(),
        }
    }

    fn block_of_id(&self, id: ExecutionId) -> Option<Reservation> {
        self.blocks.iter().copied().find(|b| b.holds_id(id))
    }

    fn block_of_token(&self, token: u64) -> Option<Reservation> {
        self.blocks.iter().copied().find(|b| b.holds_token(token))
    }

    /// Applies one step as one entry, checking each of its commands as it applies.
    fn run(&mut self, step: &Step) -> Result<(), TestCaseError> {
        let (held, commands) = match step {
            Step::Entry { held, steps } => {
                let ids: Vec<_> = self.h.grid.sessions().map(|s| s.id).collect();
                let held: BTreeMap<SessionId, u32> =
                    held.iter().filter_map(|(p, n)| Some((pick(&ids, *p)?, *n))).collect();
                let commands: Vec<_> = steps.iter().flat_map(|step| self.commands(step)).collect();
                (held.into_iter().collect(), commands)
            }
            _ => {
                let commands = self.commands(step);
                // The proposer stamps an eager call's entry with the call, held until then.
                let held = match commands.first() {
                    Some(Command::CreateReserved(r)) => vec![(r.session, 1)],
                    _ => Vec::new(),
                };
                (held, commands)
            }
        };
        if commands.is_empty() {
            return Ok(());
        }
        self.apply_entry(&held, &commands)
    }

    /// The commands of one step that is not an entry.
    fn commands(&mut self, step: &Step) -> Vec<Command> {
        let Step::Reserved { call, session, pair, complete } = step else {
            return self.h.command(step).into_iter().collect();
        };
        // Mostly a session the leader would pick: one that may run the call, with a free slot.
        let new = call.new_execution();
        let sessions: Vec<_> = self.h.grid.sessions().map(|s| s.id).collect();
        let eligible: Vec<_> = self
            .h
            .grid
            .sessions()
            .filter(|s| s.free() > 0 && s.may_run(&new.agent, None, &new.delegate))
            .map(|s| s.id)
            .collect();
        let session = match (pick(&eligible, *session), pick(&sessions, *session)) {
            _ if session % 16 == 15 => 9_999,
            (Some(s), _) if session % 16 < 12 => s,
            (_, Some(s)) => s,
            _ => 9_999,
        };
        let all: Vec<(ExecutionId, u64)> = self.blocks.iter().flat_map(Reservation::pairs).collect();
        let (id, token) = match pair {
            Pair::Fresh(p) => {
                let fresh: Vec<_> = all.iter().copied().filter(|(id, _)| !self.used.contains(id)).collect();
                let Some(pair) = pick(&fresh, *p) else { return Vec::new() };
                pair
            }
            Pair::WrongToken(p, off) => {
                let Some((id, token)) = pick(&all, *p) else { return Vec::new() };
                (id, token + off)
            }
            Pair::Outside(p) => {
                // Ids and tokens the grid gave out already (or 0, which it never gives): not
                // ones it gives next, which a void create could happen to match.
                let minted: Vec<_> =
                    self.created.iter().copied().filter(|id| self.block_of_id(*id).is_none()).collect();
                let tokens: Vec<_> = self.granted.keys().copied().collect();
                (pick(&minted, *p).unwrap_or(0), pick(&tokens, *p / 2).unwrap_or(0))
            }
            Pair::Again(p) => {
                let Some(pair) = pick(&self.named, *p) else { return Vec::new() };
                pair
            }
        };
        let mut commands =
            vec![Command::CreateReserved(Box::new(Reserved { new, served: false, id, token, session }))];
        if *complete {
            commands.push(complete_cmd(id, token, Ok(Payload::json("1")), vec![]));
        }
        commands
    }

    /// Applies `commands` as one entry stamped with `held`, one command at a time as
    /// `Grid::apply_batch_held` does (the replay property checks that it is the same), so each
    /// is checked with the slots still held when it applied.
    fn apply_entry(&mut self, held: &[(SessionId, u32)], commands: &[Command]) -> Result<(), TestCaseError> {
        let h = &mut self.h;
        h.log.push(Entry { now: h.now, held: held.to_vec(), commands: commands.to_vec() });
        h.grid.advance_clock(h.now);
        let mut left: Held = held.iter().copied().filter(|(_, n)| *n > 0).collect();
        // Slots held by this entry's stamp stay free until the next entry.
        self.stamped = left.keys().copied().collect();
        // The entry's start gives back slots the last entry held and this one does not; what
        // that assigns is checked like a command's (one that writes nothing itself).
        let from = self.h.events.len();
        self.h.grid.restamp(&mut left, &mut self.h.events);
        self.observe(&Command::Expire { limit: 0 }, &Ok(Output::Expired { count: 0 }), from, &left, None)?;
        for command in commands {
            let honourable = match command {
                Command::CreateReserved(r) => Some(self.honourable(r, &left)),
                _ => None,
            };
            let from = self.h.events.len();
            let result = self.h.grid.apply_held(command, &mut self.h.events, &mut left);
            self.observe(command, &result, from, &left, honourable)?;
        }
        Ok(())
    }

    /// Whether the rules of eager calls honour `r` if it passes a create's checks, from the
    /// grid before it applies and the slots held then (`left`, counting `r` itself): a fresh
    /// id of a young block the grid still keeps, with its own token, for a call that needs no
    /// waiting, pushed to a session that may run it with a slot besides the other held calls.
    fn honourable(&self, r: &Reserved, left: &Held) -> bool {
        let grid = &self.h.grid;
        let now = grid.now_ms();
        let kept = &self.blocks[self.blocks.len().saturating_sub(reserved::MAX_BLOCKS)..];
        let Some(b) = kept.iter().find(|b| b.holds_id(r.id)) else { return false };
        let others = left.get(&r.session).copied().unwrap_or(0).saturating_sub(1) as usize;
        let new = &r.new;
        r.token == b.first_token + (r.id - b.first_id)
            && now - b.reserved_ms <= reserved::MAX_BLOCK_AGE_MS
            && !self.used.contains(&r.id)
            && grid.execution(r.id).is_none()
            && new.instance.is_none()
            && new.delay_ms.is_none()
            && new.not_before_ms.is_none_or(|at| at <= now)
            && grid.session(r.session).is_some_and(|s| {
                s.may_run(&new.agent, None, &new.delegate)
                    && (s.capacity as usize).saturating_sub(s.assigned.len()) > others
            })
    }

    /// What one command may do, given all that came before: its events from `from` on, the
    /// slots still held per session after it (`left`), and for a `CreateReserved` whether the
    /// rules honour it (`honourable`).
    fn observe(
        &mut self,
        command: &Command,
        result: &Result<Output, Error>,
        from: usize,
        left: &Held,
        honourable: Option<bool>,
    ) -> Result<(), TestCaseError> {
        let grid = &self.h.grid;
        let events = &self.h.events[from..];
        let now = grid.now_ms();
        let reserved = match command {
            Command::CreateReserved(r) => Some(&**r),
            _ => None,
        };
        let granted = |id: ExecutionId, token: u64, session: SessionId| {
            events.iter().any(|e| {
                matches!(e, Event::Assigned { execution, token: t, session: s, .. }
                    if *execution == id && *t == token && *s == session)
            })
        };
        // A block sets aside ids and tokens nobody has had yet.
        if let Ok(Output::Block { first_id, first_token, count }) = result {
            let max_id = self
                .created
                .last()
                .copied()
                .max(self.blocks.last().map(|b| b.first_id + u64::from(b.count) - 1));
            let max_token = self
                .granted
                .keys()
                .next_back()
                .copied()
                .max(self.blocks.last().map(|b| b.first_token + u64::from(b.count) - 1));
            prop_assert!(
                max_id.is_none_or(|m| *first_id > m),
                "block from id {first_id} overlaps id {max_id:?}"
            );
            prop_assert!(
                max_token.is_none_or(|m| *first_token > m),
                "block from token {first_token} overlaps token {max_token:?}"
            );
            self.blocks.push(Reservation {
                first_id: *first_id,
                first_token: *first_token,
                count: *count,
                reserved_ms: now,
            });
        }
        for event in events {
            match event {
                Event::Created { execution } => {
                    prop_assert!(self.created.insert(*execution), "id {execution} created twice");
                    // A block's id names an execution only as the create the leader pushed,
                    // honoured: leased at once to its session under the id's own token.
                    if let Some(b) = self.block_of_id(*execution) {
                        let honoured = reserved.is_some_and(|r| {
                            r.id == *execution
                                && r.token == b.first_token + (r.id - b.first_id)
                                && granted(r.id, r.token, r.session)
                        });
                        prop_assert!(
                            honoured,
                            "block id {execution} created by {command:?}, not honoured as pushed"
                        );
                    }
                }
                Event::Assigned { execution, token, session, .. } => {
                    // (a) A pair is granted at most once; a token too, whatever the execution.
                    let before = self.granted.insert(*token, *execution);
                    prop_assert!(
                        before.is_none(),
                        "token {token} granted twice: to {before:?}, then to {execution} on {session} by {command:?}"
                    );
                    // (b) A block's token is granted only with its own id, to the session the
                    // call was pushed to, as the create that honours it.
                    if let Some(b) = self.block_of_token(*token) {
                        let honoured = reserved.is_some_and(|r| {
                            r.id == *execution
                                && r.token == *token
                                && r.session == *session
                                && b.holds_id(r.id)
                                && *token == b.first_token + (r.id - b.first_id)
                        }) && events.contains(&Event::Created { execution: *execution });
                        prop_assert!(honoured, "block token {token} granted to {execution} by {command:?}");
                    }
                    // (c) A session given work holds no more than its capacity, less the slots
                    // eager calls still hold on it in this entry.
                    if let Some(s) = grid.session(*session) {
                        let held = left.get(session).copied().unwrap_or(0) as usize;
                        prop_assert!(
                            s.assigned.len() + held <= s.capacity as usize,
                            "session {session} holds {} with {held} held, capacity {} (after {command:?})",
                            s.assigned.len(),
                            s.capacity
                        );
                    }
                }
                // A void pair is revoked, never the pair the grid leases its execution under.
                Event::Revoked { execution, token, session, .. } => {
                    let leased = grid.execution(*execution).and_then(|e| e.lease);
                    prop_assert!(
                        leased.is_none_or(|l| (l.session, l.token) != (*session, *token)),
                        "revoked ({execution}, {token}) on {session}, which the grid still leases (by {command:?})"
                    );
                }
                _ => {}
            }
        }
        let Some(r) = reserved else { return Ok(()) };
        self.named.push((r.id, r.token));
        let Ok(output) = result else { return Ok(()) };
        // The grid never makes a block's id itself: created under it, the pair was honoured.
        let in_block = self.block_of_id(r.id).is_some();
        let honoured = in_block && matches!(output, Output::Execution { id, created: true } if *id == r.id);
        if matches!(output, Output::Execution { created: true, .. }) {
            prop_assert_eq!(
                Some(honoured),
                honourable,
                "({}, {}) pushed to {}: honoured or not, against the rules",
                r.id,
                r.token,
                r.session
            );
        }
        if honoured {
            prop_assert!(granted(r.id, r.token, r.session), "honoured {} but not leased as pushed", r.id);
        } else if in_block {
            prop_assert!(
                !events.contains(&Event::Created { execution: r.id }),
                "void {} created under its id",
                r.id
            );
        }
        self.used.insert(r.id);
        Ok(())
    }

    /// Every invariant the indexes and the rules promise.
    fn check(&self) -> Result<(), TestCaseError> {
        let grid = &self.h.grid;
        let w = &grid.work;
        for (id, e) in &w.executions {
            let in_ready = w.ready.values().any(|q| q.contains(&e.queue_key()));
            let in_delayed = w.delayed.iter().any(|(_, x)| x == id);
            let queued = e
                .instance_key()
                .and_then(|k| w.instances.get(&k))
                .is_some_and(|i| i.queue.contains(&e.queue_key()));
            let holders: Vec<_> =
                w.sessions.values().filter(|s| s.assigned.contains(id)).map(|s| s.id).collect();
            match e.status {
                Status::Pending => {
                    prop_assert!(holders.is_empty(), "pending {id} held by {holders:?}");
                    prop_assert!(e.lease.is_none());
                    let places =
                        usize::from(in_delayed) + usize::from(queued || (in_ready && e.instance.is_none()));
                    prop_assert_eq!(
                        places,
                        1,
                        "pending {} waits in one place (delayed {}, queued {}, ready {})",
                        id,
                        in_delayed,
                        queued,
                        in_ready
                    );
                    if in_delayed {
                        prop_assert!(
                            e.not_before_ms.is_some_and(|t| t > grid.now_ms()),
                            "delayed {id} is due"
                        );
                    }
                }
                Status::Assigned => {
                    let lease = e.lease.expect("assigned has a lease");
                    prop_assert_eq!(
                        &holders,
                        &vec![lease.session],
                        "assigned {} held by its lease's session",
                        id
                    );
                    prop_assert!(!in_ready && !in_delayed && !queued, "assigned {id} also waits");
                }
                _ => {
                    prop_assert!(
                        holders.is_empty() && !in_ready && !in_delayed && !queued,
                        "final {id} still somewhere"
                    );
                    prop_assert!(w.retained.iter().any(|(_, x)| x == id), "final {id} is retained");
                    prop_assert!(e.outcome.is_some());
                }
            }
        }
        for s in w.sessions.values() {
            prop_assert!(s.assigned.len() <= s.capacity as usize, "session {} over capacity", s.id);
            for key in &s.activated {
                prop_assert_eq!(w.instances.get(key).and_then(|i| i.session), Some(s.id));
                prop_assert!(s.may_take(&key.0, Some(&key.1)), "only-claimed {} activates {key:?}", s.id);
            }
            // An only-claimed session holds nothing of an agent it claims but its instances'.
            for id in &s.assigned {
                let e = &w.executions[id];
                prop_assert!(s.may_take(&e.agent, e.instance.as_deref()), "only-claimed {} holds {id}", s.id);
            }
        }
        for (key, inst) in &w.instances {
            let running: Vec<_> = w
                .executions
                .values()
                .filter(|e| e.status == Status::Assigned && e.instance_key().as_ref() == Some(key))
                .collect();
            prop_assert_eq!(inst.running as usize, running.len(), "instance {:?} running count", key);
            for e in &running {
                prop_assert_eq!(
                    Some(e.lease.unwrap().session),
                    inst.session,
                    "single activation of {:?}",
                    key
                );
            }
            let concurrent = inst
                .session
                .and_then(|s| w.sessions.get(&s))
                .and_then(|s| s.spec(&key.0))
                .is_some_and(|s| s.concurrent_instances);
            if !concurrent {
                prop_assert!(running.len() <= 1, "sequential instance {key:?} runs {}", running.len());
            }
            if let Some(s) = inst.session {
                let session = w.sessions.get(&s);
                prop_assert!(session.is_some_and(|s| s.activated.contains(key)));
                // An offered head its session cannot serve would block the instance forever.
                if let (Some((delegate, _)), Some(session)) = (&inst.offered, session) {
                    prop_assert!(session.serves(&key.0, delegate), "instance {key:?} blocked on {delegate}");
                }
            }
        }
        // Work conservation: a runnable execution (stateless, or its instance's head) never
        // waits while a session that may run it has a free slot (unless a stamp held it).
        let idle = |s: &session::Session| s.free() > 0 && !self.stamped.contains(&s.id);
        for ((agent, delegate), queue) in &w.ready {
            for (_, id) in queue {
                let e = &w.executions[id];
                prop_assert!(e.status == Status::Pending, "ready {id} is {:?}", e.status);
                let idle = match e.instance_key().and_then(|k| w.instances.get(&k)).and_then(|i| i.session) {
                    Some(s) => w.sessions.get(&s).is_some_and(|s| idle(s) && s.serves(agent, delegate)),
                    None => w
                        .sessions
                        .values()
                        .any(|s| idle(s) && s.may_run(agent, e.instance.as_deref(), delegate)),
                };
                prop_assert!(!idle, "ready {id} waits beside an idle session that may run it");
            }
        }
        super::demand_test::check_against_executions(grid)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn dispatch_keeps_every_invariant(steps in prop::collection::vec(arb_step(), 1..80)) {
        let mut history = History::new();
        for step in &steps {
            history.run(step)?;
            history.check()?;
        }
    }

    #[test]
    fn replicas_of_one_log_agree_and_snapshots_restore(steps in prop::collection::vec(arb_step(), 1..60), cut in any::<prop::sample::Index>()) {
        let mut history = History::new();
        for step in &steps {
            history.run(step)?;
        }
        let h = &history.h;
        // Another replica applying the same log, entry by entry as the state machine does,
        // ends equal, with the same events.
        let mut replica = Grid::default();
        let mut events = Vec::new();
        for entry in &h.log {
            replica.apply_batch_held(entry.now, &entry.held, &entry.commands, &mut events);
        }
        prop_assert_eq!(&replica, &h.grid);
        prop_assert_eq!(&events, &h.events);
        // Restoring a snapshot taken mid-log and applying the rest ends equal too.
        let apply = |grid: &mut Grid, entries: &[Entry]| {
            for entry in entries {
                grid.apply_batch_held(entry.now, &entry.held, &entry.commands, &mut Vec::new());
            }
        };
        let cut = cut.index(h.log.len() + 1);
        let mut first = Grid::default();
        apply(&mut first, &h.log[..cut]);
        let mut restored: Grid = codec::decode(&codec::encode(&first)).unwrap();
        apply(&mut restored, &h.log[cut..]);
        prop_assert_eq!(&restored, &h.grid);
    }
}

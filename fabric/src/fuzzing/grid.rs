//! A grid with something of everything in it (sessions, executions pending, delayed and
//! assigned, an instance, streams with items, cursors and listeners, a generator, a lease, the
//! audit stream, a block reserved for eager calls and one created under it), for the targets
//! to apply decoded commands to; and the checked apply.

use std::sync::OnceLock;

use crate::grid::audit::{Actor, AuditNote};
use crate::grid::cursor::{AckPolicy, CursorConfig, NewCursor, NewListener};
use crate::grid::execution::{
    Codec, Completion, Effect, ExecutionId, NewExecution, Payload, Reserved, RetryPolicy, SessionId,
};
use crate::grid::instance::NewInstance;
use crate::grid::session::{AgentSpec, Host, NewSession};
use crate::grid::stream::{Append, Discard, Generator, Kind, NewItem, NewStream, ProducerSeq, StreamConfig};
use crate::grid::{Command, Event, Grid, Output};
use crate::raft::state_machine::{SnapshotFile, decode_snapshot, encode_snapshot};

/// The leader's clock when the grid was built.
pub(super) const NOW_MS: u64 = 1_700_000_000_000;
const HOST: Host = Host { node: 1, key: 7 };

/// The grid the targets start from: [`basics`], then an only-claimed session, a lease, a
/// fenced write, the audit stream, and a reserved block with an eager call created under its
/// first pair (in an entry stamped with the call held).
pub(super) fn populated() -> &'static Grid {
    static GRID: OnceLock<Grid> = OnceLock::new();
    GRID.get_or_init(|| Built::new().grid)
}

/// A grid being built, with what its commands answered and caused.
pub(super) struct Built {
    pub(super) grid: Grid,
    pub(super) outputs: Vec<Output>,
    pub(super) events: Vec<Event>,
    /// The grid after [`basics`] only: what snapshot formats 1 to 3 can hold.
    pub(super) basic: Grid,
    /// The grid before its reserved block: what snapshot format 5 can hold.
    pub(super) before_eager: Grid,
    /// The grid before a holder waits for a lease: what snapshot format 6 can hold.
    pub(super) before_waiting: Grid,
    /// The grid before its schedule: what snapshot format 7 can hold.
    pub(super) before_schedules: Grid,
}

impl Built {
    pub(super) fn new() -> Self {
        let mut built = Self {
            grid: Grid::default(),
            outputs: Vec::new(),
            events: Vec::new(),
            basic: Grid::default(),
            before_eager: Grid::default(),
            before_waiting: Grid::default(),
            before_schedules: Grid::default(),
        };
        for command in basics() {
            built.apply(command);
        }
        built.basic = built.grid.clone();
        built.apply(start_pinned());
        built.apply(open_only_claimed());
        built.apply(Command::AcquireLease { name: "leader".into(), holder: "node-1".into(), ttl_ms: 10_000 });
        let token = built.grid.lease("leader").expect("the lease was just acquired").token;
        built.apply(Command::Fenced {
            lease: "leader".into(),
            token,
            command: Box::new(put("shared/config", "owner", "1", None)),
        });
        built.apply(Command::AuditNote(Box::new(AuditNote {
            actor: Actor::fabric(1),
            operation: "config.reload".into(),
            target: "node 1".into(),
            outcome: "ok".into(),
        })));
        built.apply(open_eager());
        built.before_eager = built.grid.clone();
        built.apply(Command::ReserveBlock { count: 8 });
        let (id, token) = built.block().expect("the block was just reserved");
        let session = built.eager_session();
        built.apply_held(&[(session, 1)], eager_call(id, token, session, Some("eager")));
        built.before_waiting = built.grid.clone();
        built.apply(Command::AwaitLease {
            name: "leader".into(),
            holder: "node-2".into(),
            ttl_ms: 10_000,
            wait_ms: 60_000,
        });
        built.before_schedules = built.grid.clone();
        let schedule = crate::grid::schedule::NewSchedule::example("nightly");
        built.apply(Command::CreateSchedule(Box::new(schedule)));
        built.apply(Command::TriggerSchedule { name: "nightly".into(), agent: "nightly".into() });
        built
    }

    fn apply(&mut self, command: Command) {
        self.apply_held(&[], command);
    }

    /// Applies `command` as an entry stamped with eager calls held per session (`held`).
    fn apply_held(&mut self, held: &[(SessionId, u32)], command: Command) {
        let what = format!("{command:?}");
        let mut result = self.grid.apply_batch_held(NOW_MS, held, &[command], &mut self.events);
        let output = result.pop().expect("one result per command");
        self.outputs.push(output.unwrap_or_else(|e| panic!("{what} was refused: {e}")));
    }

    /// The first id and token of the last block reserved.
    pub(super) fn block(&self) -> Option<(ExecutionId, u64)> {
        self.outputs.iter().rev().find_map(|o| match o {
            Output::Block { first_id, first_token, .. } => Some((*first_id, *first_token)),
            _ => None,
        })
    }

    /// The session eager calls are pushed to ([`open_eager`]).
    pub(super) fn eager_session(&self) -> SessionId {
        self.grid.sessions().find(|s| s.name == "eager").map_or(1, |s| s.id)
    }
}

/// A session with room for eager calls: it serves only `worker`'s `eager`, so opening it takes
/// none of the work waiting in the grid.
fn open_eager() -> Command {
    Command::OpenSession(Box::new(NewSession {
        host: HOST,
        agents: vec![spec("worker", &["eager"])],
        capacity: 2,
        claims: vec![],
        lease_ms: 30_000,
        name: "eager".into(),
    }))
}

/// `worker`'s `eager` call pushed to `session` under `(id, token)`, as the leader proposes it.
fn eager_call(id: ExecutionId, token: u64, session: SessionId, key: Option<&str>) -> Command {
    Command::CreateReserved(Box::new(Reserved {
        new: NewExecution { idempotency_key: key.map(Into::into), ..new_exec("worker", "eager") },
        served: true,
        id,
        token,
        session,
    }))
}

fn json(text: &str) -> Payload {
    Payload::json(text)
}

fn new_exec(agent: &str, delegate: &str) -> NewExecution {
    NewExecution { payload: json(r#"{"n":1}"#), ..NewExecution::example(agent, delegate) }
}

fn spec(name: &str, delegates: &[&str]) -> AgentSpec {
    AgentSpec {
        name: name.into(),
        delegates: delegates.iter().map(|d| (*d).into()).collect(),
        concurrent_instances: false,
    }
}

fn item(key: &str, payload: &str) -> NewItem {
    NewItem { key: Some(key.into()), payload: json(payload), headers: vec![("trace".into(), "t1".into())] }
}

fn stream(name: &str, config: StreamConfig) -> Command {
    Command::CreateStream(Box::new(NewStream { name: name.into(), config }))
}

fn listener(stream: &str, cursor: Option<&str>, config: Option<CursorConfig>, window: u32) -> Command {
    Command::Attach(Box::new(NewListener {
        stream: stream.into(),
        cursor: cursor.map(Into::into),
        config,
        uid: None,
        host: HOST,
        window,
    }))
}

fn put(namespace: &str, key: &str, value: &str, ttl_ms: Option<u64>) -> Command {
    Command::Put {
        namespace: namespace.into(),
        key: key.into(),
        value: value.into(),
        ttl_ms,
        if_absent: false,
    }
}

/// The commands of the grid that snapshot formats 1 to 3 can hold too.
pub(super) fn basics() -> Vec<Command> {
    let retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff_ms: 100,
        max_backoff_ms: 1000,
        multiplier_percent: 200,
    };
    vec![
        Command::SetClusterUid { uid: 0x5eed },
        put("shared/config", "mode", r#""fast""#, None),
        put("shared/config", "session", "1", Some(60_000)),
        Command::OpenSession(Box::new(NewSession {
            host: HOST,
            agents: vec![spec("worker", &["job", "produce"]), spec("counter", &[])],
            capacity: 3,
            claims: vec![],
            lease_ms: 30_000,
            name: "fuzz".into(),
        })),
        Command::StartInstance(Box::new(NewInstance {
            agent: "counter".into(),
            instance: Some("c1".into()),
            payload: json("{}"),
            idempotency_key: Some("start-c1".into()),
            parent: None,
            retention_ms: 60_000,
            max_deliveries: 5,
        })),
        put("instance/counter/c1", "n", "41", None),
        Command::CreateExecution(Box::new(NewExecution {
            idempotency_key: Some("once".into()),
            retry: Some(retry),
            timeout_ms: Some(30_000),
            ..new_exec("worker", "job")
        })),
        Command::CreateServedExecution(Box::new(NewExecution { priority: 5, ..new_exec("worker", "job") })),
        Command::CreateExecution(Box::new(NewExecution {
            delay_ms: Some(5_000),
            ..new_exec("mailer", "send")
        })),
        Command::CreateExecution(Box::new(NewExecution {
            instance: Some("c1".into()),
            payload: Payload { codec: Codec::Bincode, data: vec![2, 0, 1] },
            ..new_exec("counter", "add")
        })),
        stream("orders", StreamConfig { max_items: Some(100), ..StreamConfig::default() }),
        stream(
            "jobs",
            StreamConfig {
                kind: Kind::Workqueue,
                max_bytes: Some(1 << 20),
                discard: Discard::New,
                ..StreamConfig::default()
            },
        ),
        stream(
            "gen",
            StreamConfig {
                kind: Kind::Ephemeral,
                generator: Some(Box::new(Generator { call: new_exec("worker", "produce"), eager: false })),
                ..StreamConfig::default()
            },
        ),
        Command::Append(Box::new(Append {
            stream: "orders".into(),
            items: vec![item("orders.eu", r#"{"id":1}"#), item("orders.us", r#"{"id":2}"#)],
            expected_last_seq: Some(0),
            producer: Some(ProducerSeq { id: "p1".into(), epoch: 1, sequence: 1 }),
            msg_id: Some("m1".into()),
        })),
        Command::Append(Box::new(Append {
            stream: "jobs".into(),
            items: vec![item("jobs.a", "[1,2]")],
            expected_last_seq: None,
            producer: None,
            msg_id: None,
        })),
        Command::CreateCursor(Box::new(NewCursor {
            stream: "orders".into(),
            name: "billing".into(),
            config: CursorConfig {
                filter: Some("orders.*".into()),
                max_deliveries: Some(3),
                dead_letter: Some("dead".into()),
                ..CursorConfig::default()
            },
        })),
        listener("orders", Some("billing"), None, 10),
        listener(
            "orders",
            None,
            Some(CursorConfig { ack: AckPolicy::None, idle_ms: Some(60_000), ..CursorConfig::default() }),
            5,
        ),
        listener("jobs", Some("workers"), Some(CursorConfig::default()), 1),
        listener("gen", Some("readers"), Some(CursorConfig::default()), 4),
    ]
}

fn open_only_claimed() -> Command {
    Command::OpenSessionOnlyClaimed(Box::new(NewSession {
        host: HOST,
        agents: vec![spec("pinned", &[])],
        capacity: 2,
        claims: vec![("pinned".into(), "p1".into())],
        lease_ms: 0,
        name: "pinned".into(),
    }))
}

fn operator() -> Actor {
    Actor { principal: "token 3 (ops)".into(), role: "operator".into(), node: 1 }
}

/// An audited start of the instance the only-claimed session claims.
fn start_pinned() -> Command {
    Command::Audited {
        actor: operator(),
        command: Box::new(Command::StartInstance(Box::new(NewInstance {
            agent: "pinned".into(),
            instance: Some("p1".into()),
            payload: json("null"),
            idempotency_key: None,
            parent: None,
            retention_ms: 60_000,
            max_deliveries: 5,
        }))),
    }
}

/// Commands against the built grid's state, with its real ids and tokens: what the fuzzer
/// starts from to reach completions, acks and renewals that the grid accepts.
pub(super) fn follow_ups(built: &Built) -> Vec<Command> {
    let mut commands = Vec::new();
    let lease_token = built.grid.lease("leader").map_or(1, |l| l.token);
    let (block_id, block_token) = built.block().unwrap_or((1, 1));
    let eager = built.eager_session();
    for event in &built.events {
        match event {
            Event::Assigned { execution, token, session, .. } => {
                let (execution, token) = (*execution, *token);
                commands.push(Command::Complete(Box::new(Completion {
                    execution,
                    token,
                    outcome: Ok(json(r#""done""#)),
                    effects: vec![
                        Effect::Put {
                            namespace: "shared/config".into(),
                            key: "done".into(),
                            value: b"true".to_vec(),
                            ttl_ms: None,
                            expected_version: Some(0),
                        },
                        Effect::Append { stream: "orders".into(), items: vec![item("orders.eu", "3")] },
                        Effect::Call(Box::new(new_exec("mailer", "send"))),
                        Effect::Delete {
                            namespace: "shared/config".into(),
                            key: "mode".into(),
                            expected_version: None,
                        },
                    ],
                })));
                commands.push(Command::Complete(Box::new(Completion {
                    execution,
                    token,
                    outcome: Err(crate::grid::execution::HandlerError {
                        message: "boom".into(),
                        retryable: true,
                    }),
                    effects: vec![Effect::Fence { lease: "leader".into(), token: 1 }],
                })));
                commands.push(Command::Renew { execution, token });
                commands.push(Command::GiveBack { execution, token });
                commands.push(Command::Cancel { execution, reason: "no longer needed".into() });
                commands.push(Command::DrainSession { session: *session });
                commands.push(Command::CloseSession { session: *session, reason: "gone".into() });
            }
            Event::Delivered { listener, stream, seq, token, .. } => {
                let cursor = built.grid.listener(*listener).map_or_else(String::new, |l| l.cursor.clone());
                commands.push(Command::Ack {
                    stream: stream.clone(),
                    cursor: cursor.clone(),
                    acks: vec![(*seq, *token)],
                    effects: vec![Effect::Ack {
                        stream: stream.clone(),
                        cursor: cursor.clone(),
                        seq: *seq,
                        token: *token,
                    }],
                });
                commands.push(Command::Nack { stream: stream.clone(), cursor, seq: *seq, token: *token });
                commands.push(Command::Credit { listener: *listener, items: 1 });
                commands.push(Command::Detach { listener: *listener, reason: "closed".into() });
            }
            _ => {}
        }
    }
    commands.extend([
        Command::CompareAndSet {
            namespace: "shared/config".into(),
            key: "mode".into(),
            expected_version: built.grid.get("shared/config", "mode").map_or(0, |v| v.version),
            value: b"\"slow\"".to_vec(),
            ttl_ms: Some(1_000),
        },
        Command::Delete { namespace: "instance/counter/c1".into(), key: "n".into(), expected_version: None },
        Command::Expire { limit: 100 },
        Command::Tick { limit: 100 },
        Command::StopInstance { agent: "counter".into(), instance: "c1".into() },
        Command::CloseStream { stream: "orders".into(), error: Some("closed by test".into()) },
        Command::DeleteStream { stream: "jobs".into() },
        Command::StartGenerator { stream: "gen".into() },
        Command::DeleteCursor { stream: "orders".into(), cursor: "billing".into() },
        // Eager calls: another block; a fresh pair of the built grid's block (honoured: the
        // session has room); a token not the id's own; an id in no block; the pair the built
        // grid created already, repeated with its key and without; one pushed to a session
        // that does not exist.
        Command::ReserveBlock { count: 16 },
        eager_call(block_id + 1, block_token + 1, eager, None),
        eager_call(block_id + 2, block_token + 3, eager, None),
        eager_call(built.grid.last_execution_id() + 100, block_token + 100, eager, None),
        eager_call(block_id, block_token, eager, Some("eager")),
        eager_call(block_id, block_token, eager, None),
        eager_call(block_id + 3, block_token + 3, 9_999, None),
        Command::RenewLease { name: "leader".into(), token: lease_token, ttl_ms: 20_000 },
        // Lease queues: a third holder waits, the queue's second leaves, the lease is released
        // (the first waiter is granted it), and a holder that never waited stops waiting.
        Command::AwaitLease {
            name: "leader".into(),
            holder: "node-3".into(),
            ttl_ms: 5_000,
            wait_ms: 30_000,
        },
        Command::StopWaiting { name: "leader".into(), holder: "node-3".into() },
        Command::ReleaseLease { name: "leader".into(), token: lease_token },
        Command::StopWaiting { name: "leader".into(), holder: "nobody".into() },
        Command::Audited {
            actor: operator(),
            command: Box::new(Command::DeleteCursor { stream: "orders".into(), cursor: "billing".into() }),
        },
    ]);
    commands
}

/// Applies `commands` to `grid` in order, checking after each what `apply` promises: a replica
/// that applies it too ends equal (same result, events and grid), and a refused command (other
/// than an audited one, whose refusal is recorded) changes nothing and yields no event. Then
/// the grid survives a snapshot round trip, and its timers fire an hour on.
pub(super) fn apply_checked(grid: &mut Grid, commands: &[Command]) {
    for command in commands {
        let before = grid.clone();
        let mut events = Vec::new();
        let result = grid.apply_with_events(command, &mut events);
        let mut replica = before.clone();
        let mut replica_events = Vec::new();
        let replica_result = replica.apply_with_events(command, &mut replica_events);
        assert_eq!(result, replica_result, "two replicas answered {command:?} differently");
        assert_eq!(events, replica_events, "two replicas' events differ for {command:?}");
        assert!(replica == *grid, "two replicas differ after {command:?}");
        if let Err(e) = &result
            && !matches!(command, Command::Audited { .. })
        {
            assert!(*grid == before, "{command:?} was refused ({e}) but changed the grid");
            assert!(events.is_empty(), "{command:?} was refused ({e}) but caused {events:?}");
        }
    }
    check_snapshot_and_timers(grid, commands);
}

/// Applies an entry stamped with the eager calls the leader held per session (`held`) as the
/// state machine does (`Grid::apply_batch_held`), checking that a replica applying it too ends
/// equal (same results, events and grid); then the checks of [`apply_checked`] after the last
/// command.
pub(super) fn apply_checked_held(
    grid: &mut Grid,
    now_ms: u64,
    held: &[(SessionId, u32)],
    commands: &[Command],
) {
    let mut replica = grid.clone();
    let mut events = Vec::new();
    let results = grid.apply_batch_held(now_ms, held, commands, &mut events);
    let mut replica_events = Vec::new();
    let replica_results = replica.apply_batch_held(now_ms, held, commands, &mut replica_events);
    assert_eq!(results, replica_results, "two replicas answered {commands:?} held {held:?} differently");
    assert_eq!(events, replica_events, "two replicas' events differ for {commands:?} held {held:?}");
    assert!(replica == *grid, "two replicas differ after {commands:?} held {held:?}");
    check_snapshot_and_timers(grid, commands);
}

/// The grid survives a snapshot round trip, and its timers fire an hour on.
fn check_snapshot_and_timers(grid: &mut Grid, commands: &[Command]) {
    let file = SnapshotFile { meta: Default::default(), grid: grid.clone() };
    let restored = decode_snapshot(&encode_snapshot(&file)).expect("a written snapshot reads");
    assert!(restored.grid == *grid, "the grid changed in a snapshot round trip after {commands:?}");
    let later = grid.now_ms().saturating_add(3_600_000);
    grid.apply_batch(later, &[Command::Tick { limit: 10_000 }, Command::Expire { limit: 10_000 }]);
}

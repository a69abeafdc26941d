//! A grid under test for the work tests (executions, sessions, instances, dispatch, timers):
//! applies commands at a clock the test moves, keeps the events and the log, and builds the
//! requests the tests send. The watch hub's tests build their commands with it too. Also the
//! replay property the concepts' property tests share ([`check_replay`]).

use super::execution::*;
use super::instance::NewInstance;
use super::session::{AgentSpec, Host, NewSession};
use super::{Command, Error, Event, Grid, Output};

/// A grid under test: applies commands at a clock the test moves, and keeps the events.
pub(super) struct Harness {
    pub(super) grid: Grid,
    pub(super) now: u64,
    pub(super) events: Vec<Event>,
    /// Every entry applied, in order: what another replica applies to end equal.
    pub(super) log: Vec<Entry>,
}

/// One log entry as the harness applied it: the leader's clock, the eager calls it held per
/// session (the stamp of `Grid::apply_batch_held`; empty for a plain entry), the commands.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) now: u64,
    pub(super) held: Vec<(SessionId, u32)>,
    pub(super) commands: Vec<Command>,
}

impl Harness {
    pub(super) fn new() -> Self {
        Self { grid: Grid::default(), now: 1_000, events: Vec::new(), log: Vec::new() }
    }

    pub(super) fn at(&mut self, now: u64) -> &mut Self {
        self.now = now;
        self
    }

    pub(super) fn apply(&mut self, command: Command) -> Result<Output, Error> {
        let mut out = self.apply_held(&[], std::slice::from_ref(&command));
        out.pop().expect("one result per command")
    }

    /// Applies `commands` as one entry stamped with `held` (eager calls held per session).
    pub(super) fn apply_held(
        &mut self,
        held: &[(SessionId, u32)],
        commands: &[Command],
    ) -> Vec<Result<Output, Error>> {
        self.log.push(Entry { now: self.now, held: held.to_vec(), commands: commands.to_vec() });
        self.grid.apply_batch_held(self.now, held, commands, &mut self.events)
    }

    pub(super) fn ok(&mut self, command: Command) -> Output {
        let what = format!("{command:?}");
        self.apply(command).unwrap_or_else(|e| panic!("{what} was refused: {e}"))
    }

    pub(super) fn create(&mut self, new: NewExecution) -> ExecutionId {
        match self.ok(Command::CreateExecution(Box::new(new))) {
            Output::Execution { id, .. } => id,
            other => panic!("create gave {other:?}"),
        }
    }

    pub(super) fn open(&mut self, agents: &[&str], capacity: u32) -> SessionId {
        self.open_with(new_session(agents, capacity))
    }

    pub(super) fn open_with(&mut self, new: NewSession) -> SessionId {
        match self.ok(Command::OpenSession(Box::new(new))) {
            Output::Session { id } => id,
            other => panic!("open gave {other:?}"),
        }
    }

    /// Opens a session that serves only its claimed instances of the agents it claims.
    pub(super) fn open_only_claimed(&mut self, new: NewSession) -> SessionId {
        match self.ok(Command::OpenSessionOnlyClaimed(Box::new(new))) {
            Output::Session { id } => id,
            other => panic!("open gave {other:?}"),
        }
    }

    pub(super) fn exec(&self, id: ExecutionId) -> &Execution {
        self.grid.execution(id).expect("execution exists")
    }

    pub(super) fn token(&self, id: ExecutionId) -> u64 {
        self.exec(id).lease.expect("assigned").token
    }

    pub(super) fn holder(&self, id: ExecutionId) -> Option<SessionId> {
        self.exec(id).lease.map(|l| l.session)
    }

    pub(super) fn complete(&mut self, id: ExecutionId, result: &str) -> Output {
        let token = self.token(id);
        self.ok(complete_cmd(id, token, Ok(Payload::json(result)), vec![]))
    }

    pub(super) fn fail(&mut self, id: ExecutionId, message: &str) -> Output {
        let token = self.token(id);
        let outcome = Err(HandlerError { message: message.into(), retryable: true });
        self.ok(complete_cmd(id, token, outcome, vec![]))
    }

    pub(super) fn start(&mut self, agent: &str, id: &str) -> ExecutionId {
        let new = NewInstance {
            agent: agent.into(),
            instance: Some(id.into()),
            payload: Payload::json("{}"),
            idempotency_key: None,
            parent: None,
            retention_ms: 60_000,
            max_deliveries: 5,
        };
        match self.ok(Command::StartInstance(Box::new(new))) {
            Output::Instance { start_execution, .. } => start_execution,
            other => panic!("start gave {other:?}"),
        }
    }

    pub(super) fn assigned_events(&self) -> Vec<ExecutionId> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Assigned { execution, .. } => Some(*execution),
                _ => None,
            })
            .collect()
    }

    pub(super) fn revoked_events(&self) -> Vec<ExecutionId> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Revoked { execution, .. } => Some(*execution),
                _ => None,
            })
            .collect()
    }
}

pub(crate) fn new_exec(agent: &str, delegate: &str) -> NewExecution {
    NewExecution::example(agent, delegate)
}

pub(super) fn on_instance(agent: &str, instance: &str, delegate: &str) -> NewExecution {
    NewExecution { instance: Some(instance.into()), ..new_exec(agent, delegate) }
}

pub(crate) fn new_session(agents: &[&str], capacity: u32) -> NewSession {
    NewSession {
        host: Host { node: 1, key: 7 },
        agents: agents
            .iter()
            .map(|a| AgentSpec { name: (*a).into(), delegates: vec![], concurrent_instances: false })
            .collect(),
        capacity,
        claims: vec![],
        lease_ms: 0,
        name: "test".into(),
    }
}

pub(super) fn complete_cmd(
    execution: ExecutionId,
    token: u64,
    outcome: Result<Payload, HandlerError>,
    effects: Vec<Effect>,
) -> Command {
    Command::Complete(Box::new(Completion { execution, token, outcome, effects }))
}

pub(super) fn put_effect(namespace: &str, key: &str, value: &str, expected_version: Option<u64>) -> Effect {
    Effect::Put {
        namespace: namespace.into(),
        key: key.into(),
        value: value.as_bytes().to_vec(),
        ttl_ms: None,
        expected_version,
    }
}

/// The property every concept's log keeps: two replicas that apply `log` (batches stamped with
/// their times) agree, grid and answers; and restoring a snapshot taken after the first `cut`
/// batches, then replaying the rest, gives the grid and the answers the whole log gave.
pub(super) fn check_replay(
    log: &[(u64, Vec<Command>)],
    cut: usize,
) -> Result<(), proptest::test_runner::TestCaseError> {
    use proptest::prop_assert_eq;
    let replay = |grid: &mut Grid, batches: &[(u64, Vec<Command>)]| -> Vec<Vec<Result<Output, Error>>> {
        batches.iter().map(|(now, commands)| grid.apply_batch(*now, commands)).collect()
    };
    let mut full = Grid::default();
    let full_out = replay(&mut full, log);
    let mut twin = Grid::default();
    let twin_out = replay(&mut twin, log);
    prop_assert_eq!(&twin, &full);
    prop_assert_eq!(&twin_out, &full_out);
    let mut before = Grid::default();
    replay(&mut before, &log[..cut]);
    let mut restored: Grid = crate::codec::decode(&crate::codec::encode(&before)).unwrap();
    let rest_out = replay(&mut restored, &log[cut..]);
    prop_assert_eq!(&restored, &full);
    prop_assert_eq!(&rest_out[..], &full_out[cut..]);
    Ok(())
}

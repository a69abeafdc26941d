//! The proposer: batches the leader's writes into log entries.
//!
//! Writes queue in a bounded channel (`max_pending_writes`; a full queue refuses new writes
//! with RESOURCE_EXHAUSTED). Up to `max_inflight_batches` entries replicate at once; when one of
//! those slots is free, the loop takes what is waiting, up to `max_batch_commands` and
//! `max_batch_bytes`, stamps it with the leader's clock and proposes it as one entry. One
//! fsync'd append then carries many clients' writes.
//!
//! Calls (`Executions/Call`) queue in a channel of their own, as big, which the loop reads at
//! once: it may hold a call and push it to a session before creating it ([`super::eager`]).
//! What the loop has taken in and not yet proposed waits in `staged`, at most
//! `max_pending_writes` commands plus the creates of held calls (`max_eager_calls`).
//!
//! The loop also expires keys and fires execution timers: when the grid's next expiry (or
//! delay, deadline, lease, retention) has passed by the leader's clock, it proposes
//! `Command::Expire` (or `Command::Tick`), so time passing is an ordinary replicated entry.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::Error;
use super::eager::{self, Eager, Held, Revoke, Unapplied, Weight};
use crate::NodeId;
use crate::grid::{Command, Output};
use crate::metrics::Registry;
use crate::raft::state_machine;
use crate::raft::{Raft, Request};
use crate::watch::Hub;

/// Most keys one expiry entry removes; the next check proposes another for the rest.
pub const MAX_EXPIRED_PER_ENTRY: u64 = 10_000;
/// Most execution timers one tick entry fires; the next check proposes another.
pub const MAX_TIMERS_PER_ENTRY: u64 = 10_000;
/// How often the leader looks for due timers (delays, retries' back-off, deadlines, leases,
/// schedules); a timer due before the next look is proposed at its time.
pub const TIMER_CHECK_INTERVAL: Duration = Duration::from_millis(20);

/// Sizes of the proposer's queue and batches.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Writes that may wait in the queue.
    pub max_pending_writes: usize,
    /// Most commands per entry.
    pub max_batch_commands: usize,
    /// Most payload bytes per entry.
    pub max_batch_bytes: usize,
    /// Entries replicating at once.
    pub max_inflight_batches: usize,
    /// How long a proposed entry may take to commit before its writers are told the outcome
    /// is unknown and its in-flight slot is freed. (openraft answers an entry that a snapshot
    /// install purged without truncating only at shutdown, so without this bound slots leak.)
    pub commit_timeout: Duration,
    /// How often to look for expired keys.
    pub ttl_check_interval: Duration,
}

struct Proposal {
    command: Command,
    bytes: usize,
    reply: oneshot::Sender<Result<Output, Error>>,
    kind: Kind,
    /// The create of a held call: the pair its session is told to drop when the create is
    /// certainly not applied.
    revoke: Option<Revoke>,
}

/// What the proposer may do with a write besides proposing it (see [`super::eager`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Propose it.
    Plain,
    /// A `Call`'s create: it may be held and pushed before it is created.
    Call,
    /// A completion the host of its session authorized for `agent` from an eager push.
    EagerCompletion { agent: String },
}

/// Submits writes to the proposer.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Proposal>,
    /// Calls that may be held: the loop takes them in even while every slot is busy.
    calls: mpsc::Sender<Proposal>,
}

impl Handle {
    /// Proposes one command and waits for its result. The command must already be validated.
    pub async fn propose(&self, command: Command) -> Result<Output, Error> {
        self.propose_as(command, Kind::Plain).await
    }

    /// Proposes one command that the proposer may treat as `kind` says, and waits for its
    /// result.
    pub async fn propose_as(&self, command: Command, kind: Kind) -> Result<Output, Error> {
        let (reply, rx) = oneshot::channel();
        let bytes = command_bytes(&command);
        let tx = if kind == Kind::Call { &self.calls } else { &self.tx };
        tx.try_send(Proposal { command, bytes, reply, kind, revoke: None }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::Overloaded(
                "too many writes waiting on this node (max_pending_writes); retry later".into(),
            ),
            mpsc::error::TrySendError::Closed(_) => Error::Unavailable("node is shutting down".into()),
        })?;
        rx.await.map_err(|_| Error::Indeterminate("node shut down while the write was in flight".into()))?
    }
}

/// An estimate of a command's encoded size (payload plus a little framing), for batching.
fn command_bytes(command: &Command) -> usize {
    use crate::grid::execution::Effect;
    match command {
        Command::Put { namespace, key, value, .. } | Command::CompareAndSet { namespace, key, value, .. } => {
            namespace.len() + key.len() + value.len() + 32
        }
        Command::Delete { namespace, key, .. } => namespace.len() + key.len() + 32,
        Command::CreateExecution(new) | Command::CreateServedExecution(new) => {
            new.payload.data.len() + new.agent.len() + new.delegate.len() + 96
        }
        Command::StartInstance(new) => new.payload.data.len() + new.agent.len() + 96,
        Command::Complete(c) => {
            let result = match &c.outcome {
                Ok(p) => p.data.len(),
                Err(e) => e.message.len(),
            };
            let effects: usize = c
                .effects
                .iter()
                .map(|e| match e {
                    Effect::Put { namespace, key, value, .. } => {
                        namespace.len() + key.len() + value.len() + 32
                    }
                    Effect::Delete { namespace, key, .. } => namespace.len() + key.len() + 32,
                    Effect::Call(new) => new.payload.data.len() + new.agent.len() + new.delegate.len() + 96,
                    Effect::Append { stream, items } => {
                        stream.len() + items.iter().map(|i| i.size() + 48).sum::<usize>() + 16
                    }
                    Effect::Ack { stream, cursor, .. } => stream.len() + cursor.len() + 32,
                    Effect::Fence { lease, .. } => lease.len() + 16,
                })
                .sum();
            result + effects + 32
        }
        Command::OpenSession(new) | Command::OpenSessionOnlyClaimed(new) => {
            64 + new.agents.iter().map(|a| a.name.len() + 16).sum::<usize>()
        }
        Command::CloseSession { reason, .. } | Command::Cancel { reason, .. } => reason.len() + 16,
        Command::StopInstance { agent, instance } => agent.len() + instance.len() + 16,
        Command::Expire { .. }
        | Command::SetClusterUid { .. }
        | Command::Renew { .. }
        | Command::GiveBack { .. }
        | Command::DrainSession { .. }
        | Command::Tick { .. } => 16,
        Command::Append(a) => a.stream.len() + a.size() + 48 * a.items.len() + 64,
        Command::CreateStream(new) => {
            new.name.len() + new.config.generator.as_ref().map_or(0, |g| g.call.payload.data.len() + 128) + 64
        }
        Command::CloseStream { stream, error } => stream.len() + error.as_ref().map_or(0, String::len) + 16,
        Command::DeleteStream { stream } => stream.len() + 16,
        Command::CreateCursor(new) => new.stream.len() + new.name.len() + 96,
        Command::DeleteCursor { stream, cursor } => stream.len() + cursor.len() + 16,
        Command::Attach(new) => new.stream.len() + 128,
        Command::Detach { reason, .. } => reason.len() + 16,
        Command::Ack { stream, cursor, acks, effects } => {
            stream.len() + cursor.len() + 16 * acks.len() + 64 * effects.len() + 16
        }
        Command::Nack { stream, cursor, .. } => stream.len() + cursor.len() + 32,
        Command::Credit { .. } => 16,
        Command::StartGenerator { stream } => stream.len() + 16,
        Command::AcquireLease { name, holder, .. }
        | Command::AwaitLease { name, holder, .. }
        | Command::StopWaiting { name, holder } => name.len() + holder.len() + 32,
        Command::RenewLease { name, .. } | Command::ReleaseLease { name, .. } => name.len() + 32,
        Command::CreateSchedule(new) => {
            new.name.len() + new.cron.len() + new.call.payload.data.len() + new.call.agent.len() + 160
        }
        Command::PauseSchedule { name, agent }
        | Command::ResumeSchedule { name, agent }
        | Command::TriggerSchedule { name, agent }
        | Command::DeleteSchedule { name, agent } => name.len() + agent.len() + 16,
        Command::Fenced { lease, command, .. } => lease.len() + 16 + command_bytes(command),
        Command::Audited { actor, command } => {
            actor.principal.len() + actor.role.len() + 16 + command_bytes(command)
        }
        Command::AuditNote(note) => {
            note.actor.principal.len()
                + note.actor.role.len()
                + note.operation.len()
                + note.target.len()
                + note.outcome.len()
                + 32
        }
        Command::CreateToken(new) => {
            let s = &new.scopes;
            let scopes: usize = [&s.serve, &s.call, &s.namespaces, &s.streams]
                .iter()
                .flat_map(|l| l.iter())
                .map(|e| e.len() + 8)
                .sum();
            new.id.len() + new.name.len() + scopes + 64
        }
        Command::RevokeToken { id } => id.len() + 16,
        Command::ReserveBlock { .. } => 16,
        Command::CreateReserved(r) => {
            r.new.payload.data.len() + r.new.agent.len() + r.new.delegate.len() + 128
        }
    }
}

/// The proposer's loop.
pub struct Service {
    node_id: NodeId,
    raft: Raft,
    /// Where commit latencies go.
    metrics: Arc<Registry>,
    applied: state_machine::Handle,
    options: Options,
    rx: mpsc::Receiver<Proposal>,
    calls: mpsc::Receiver<Proposal>,
    eager: Eager,
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Commands that go into one entry together, in order (a held call's create and its
/// completion), with what they add to the counts of unapplied work.
struct Unit {
    proposals: Vec<Proposal>,
    bytes: usize,
    weight: Weight,
    /// The idempotency keys that count from when the unit is staged (a held call's own key
    /// counts from its hold).
    new_keys: Vec<(crate::grid::execution::ExecutionId, String)>,
}

impl Unit {
    fn of(p: Proposal) -> Self {
        let keys = eager::create_keys(&p.command);
        let weight = Weight { reserved: None, assigning: eager::assigning(&p.command), keys: keys.clone() };
        Self { bytes: p.bytes, proposals: vec![p], weight, new_keys: keys }
    }

    /// The create of a held call, and the proposal that completes it if any.
    fn held(held: Held, completion: Option<Proposal>) -> Self {
        let session = held.reserved.session;
        let key = eager::idempotency_key(&held.reserved.new);
        let revoke = Some(held.revoke());
        let command = Command::CreateReserved(Box::new(held.reserved));
        let create = Proposal {
            bytes: command_bytes(&command),
            command,
            reply: held.reply,
            kind: Kind::Plain,
            revoke,
        };
        let new_keys = completion.as_ref().map_or_else(Vec::new, |c| eager::create_keys(&c.command));
        let weight = Weight {
            reserved: Some(session),
            assigning: completion.as_ref().map_or(0, |c| eager::assigning(&c.command)),
            keys: key.into_iter().chain(new_keys.iter().cloned()).collect(),
        };
        let mut proposals = vec![create];
        proposals.extend(completion);
        Self { bytes: proposals.iter().map(|p| p.bytes).sum(), proposals, weight, new_keys }
    }
}

impl Service {
    /// A proposer for `raft` and the handle that submits writes to it. Only handles keep
    /// the queue open: it closes when the last one is dropped. Eager calls are pushed through
    /// `hub`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node_id: NodeId,
        raft: Raft,
        applied: state_machine::Handle,
        options: Options,
        eager: eager::Options,
        hub: Hub,
        metrics: Arc<Registry>,
    ) -> (Self, Handle) {
        let (tx, rx) = mpsc::channel(options.max_pending_writes);
        let (calls_tx, calls) = mpsc::channel(options.max_pending_writes);
        let eager = Eager::new(eager, node_id, hub, applied.clone(), metrics.clone());
        (Self { node_id, raft, metrics, applied, options, rx, calls, eager }, Handle { tx, calls: calls_tx })
    }

    /// Runs until `shutdown`; writes still queued then are answered "not applied".
    pub async fn run(mut self, shutdown: CancellationToken) {
        let inflight = Arc::new(Semaphore::new(self.options.max_inflight_batches));
        let expiring = Arc::new(AtomicBool::new(false));
        let ticking = Arc::new(AtomicBool::new(false));
        let mut ttl_tick = tokio::time::interval(self.options.ttl_check_interval);
        ttl_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut timer_tick = tokio::time::interval(TIMER_CHECK_INTERVAL);
        timer_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A timer due before the next check: the moment to look again, so that it is proposed
        // when it is due rather than up to a check interval later.
        let mut timer_due: Option<Instant> = None;
        // What waits for an entry, in the order it came. As before eager calls, the loop takes
        // a slot first and then the writes that wait, so writes that arrive while the slots are
        // busy join the next entry without waking the loop one by one. Calls are the exception:
        // they are taken in at once (a held call's push must not wait for a slot), up to
        // `max_pending_writes` commands staged.
        let mut staged: VecDeque<Unit> = VecDeque::new();
        let mut staged_commands = 0usize;
        let mut permit: Option<tokio::sync::OwnedSemaphorePermit> = None;
        let mut block: Option<(u64, oneshot::Receiver<Result<Output, Error>>)> = None;
        self.watch_leadership(&mut staged, &mut staged_commands, &mut block);
        'entries: loop {
            if !staged.is_empty()
                && let Some(slot) = permit.take()
            {
                self.take_waiting(&mut staged, &mut staged_commands);
                self.propose_entry(slot, &mut staged, &mut staged_commands).await;
                continue;
            }
            let room = staged_commands < self.options.max_pending_writes;
            let linger = self.eager.next_linger();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break 'entries,
                slot = inflight.clone().acquire_owned(), if permit.is_none() => {
                    permit = Some(slot.expect("semaphore never closed"));
                }
                _ = tokio::time::sleep_until(linger.unwrap_or_else(Instant::now).into()), if linger.is_some() => {
                    // A completion waiting for a slot pairs with its call rather than follow it.
                    self.take_waiting(&mut staged, &mut staged_commands);
                    for held in self.eager.lingered(Instant::now()) {
                        stage(&mut self.eager, &mut staged, &mut staged_commands, Unit::held(held, None));
                    }
                }
                answer = async { (&mut block.as_mut().expect("guarded").1).await }, if block.is_some() => {
                    let (term, _) = block.take().expect("guarded");
                    let answer = answer.unwrap_or_else(|_| Err(Error::Unavailable("no answer".into())));
                    self.eager.reserved(term, answer);
                }
                _ = ttl_tick.tick() => self.maybe_expire(&expiring),
                _ = tokio::time::sleep_until(timer_due.unwrap_or_else(Instant::now).into()), if timer_due.is_some() => {
                    timer_due = None;
                    self.maybe_tick(&ticking);
                }
                _ = timer_tick.tick() => {
                    self.maybe_tick(&ticking);
                    timer_due = self.timer_due_before_next_check();
                    self.watch_leadership(&mut staged, &mut staged_commands, &mut block);
                }
                p = self.rx.recv(), if permit.is_some() && room => match p {
                    Some(p) => self.intake(p, &mut staged, &mut staged_commands),
                    None => break 'entries,
                },
                p = self.calls.recv(), if room => match p {
                    Some(p) => {
                        // The first call of a leadership finds the leadership known, and asks
                        // for a block at once.
                        self.watch_leadership(&mut staged, &mut staged_commands, &mut block);
                        self.intake(p, &mut staged, &mut staged_commands);
                        self.watch_leadership(&mut staged, &mut staged_commands, &mut block);
                    }
                    None => break 'entries,
                },
            }
        }
        // Answer what is held or still queued: it was never proposed.
        self.eager.drop_all("the node is shutting down");
        self.rx.close();
        self.calls.close();
        let queued = staged.into_iter().flat_map(|u| u.proposals);
        let waiting = std::iter::from_fn(|| self.rx.try_recv().ok().or_else(|| self.calls.try_recv().ok()));
        let hub = self.eager.hub();
        for p in queued.chain(waiting) {
            if let Some(revoke) = p.revoke {
                revoke.send(&hub, "the node is shutting down");
            }
            let _ = p.reply.send(Err(Error::Unavailable("node is shutting down".into())));
        }
    }

    /// Takes in the writes waiting in both queues, up to `max_pending_writes` staged.
    fn take_waiting(&mut self, staged: &mut VecDeque<Unit>, staged_commands: &mut usize) {
        while *staged_commands < self.options.max_pending_writes {
            match self.rx.try_recv().or_else(|_| self.calls.try_recv()) {
                Ok(p) => self.intake(p, staged, staged_commands),
                Err(_) => break,
            }
        }
    }

    /// Follows leadership for eager calls; stages a `ReserveBlock` when a block is wanted.
    fn watch_leadership(
        &mut self,
        staged: &mut VecDeque<Unit>,
        staged_commands: &mut usize,
        block: &mut Option<(u64, oneshot::Receiver<Result<Output, Error>>)>,
    ) {
        let (leader, term) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_leader == Some(self.node_id), m.current_term)
        };
        if self.eager.observe(leader, term) {
            let (reply, rx) = oneshot::channel();
            let command = Command::ReserveBlock { count: eager::BLOCK_SIZE };
            let p =
                Proposal { bytes: command_bytes(&command), command, reply, kind: Kind::Plain, revoke: None };
            self.eager.reserving = true;
            *block = Some((term, rx));
            *staged_commands += 1;
            // Behind what is staged: the creates already waiting get their ids below the
            // block's, so ids still follow the order calls came in when nothing is held.
            staged.push_back(Unit::of(p));
        }
    }

    /// Takes one write in: pairs a held call's completion with its create, creates first the
    /// held calls it names, holds a call that may go eagerly, or stages it.
    fn intake(&mut self, p: Proposal, staged: &mut VecDeque<Unit>, staged_commands: &mut usize) {
        if let (Kind::EagerCompletion { .. }, Command::Complete(c)) = (&p.kind, &p.command)
            && let Some(held) = self.eager.take_completed(c.execution, c.token)
        {
            stage(&mut self.eager, staged, staged_commands, Unit::held(held, Some(p)));
            return;
        }
        if let Some(held) = self.eager.take_keyed(&p.command) {
            stage(&mut self.eager, staged, staged_commands, Unit::held(held, None));
        }
        let mut named_held = false;
        for id in eager::named(&p.command) {
            if let Some(held) = self.eager.take_named(id) {
                named_held = true;
                stage(&mut self.eager, staged, staged_commands, Unit::held(held, None));
            }
        }
        if named_held && matches!((&p.kind, &p.command), (Kind::Plain, Command::Complete(_))) {
            // Its sender was authorized against a grid that did not hold the call yet: it
            // sends again once it does.
            let id = eager::named(&p.command)[0];
            let _ = p.reply.send(Err(Error::Overloaded(format!(
                "execution {id} is being created; send the completion again"
            ))));
            return;
        }
        let p = match p.kind {
            Kind::Call => match self.eager.try_hold(&p.command, p.reply) {
                Ok(()) => return,
                Err(reply) => Proposal { reply, ..p },
            },
            _ => p,
        };
        stage(&mut self.eager, staged, staged_commands, Unit::of(p));
    }

    /// Proposes the staged units that fit one entry, stamped with the eager calls held.
    async fn propose_entry(
        &mut self,
        permit: tokio::sync::OwnedSemaphorePermit,
        staged: &mut VecDeque<Unit>,
        staged_commands: &mut usize,
    ) {
        let held = self.eager.stamp();
        let (mut proposals, mut bytes, mut weights) = (Vec::new(), 0usize, Vec::new());
        while let Some(unit) = staged.front() {
            let fits = proposals.len() + unit.proposals.len() <= self.options.max_batch_commands
                && bytes + unit.bytes <= self.options.max_batch_bytes;
            if !proposals.is_empty() && !fits {
                break;
            }
            let unit = staged.pop_front().expect("front exists");
            *staged_commands -= unit.proposals.len();
            bytes += unit.bytes;
            unstage(&mut self.eager, &unit.weight);
            weights.push(unit.weight);
            proposals.extend(unit.proposals);
        }
        {
            let mut unapplied = self.eager.unapplied.lock().unwrap_or_else(|p| p.into_inner());
            for w in &weights {
                unapplied.add(w);
            }
        }
        let unapplied = self.eager.unapplied.clone();
        let hub = self.eager.hub();
        let metrics = self.metrics.clone();
        let commit_timeout = self.options.commit_timeout;
        let (commands, replies): (Vec<_>, Vec<_>) =
            proposals.into_iter().map(|p| (p.command, (p.reply, p.revoke))).unzip();
        let proposed = std::time::Instant::now();
        let request = if held.is_empty() {
            Request::Batch { now_ms: now_ms(), commands }
        } else {
            Request::BatchHeld { now_ms: now_ms(), held, commands }
        };
        // The entry goes to RaftCore from this loop, so entries reach the log in the order
        // they were formed (a held call's create before a later completion of it) and without
        // a task's hand-off first; only the wait for the commit runs in a task of its own.
        let write = match self.raft.client_write_ff(request).await {
            Ok(rx) => rx,
            Err(fatal) => {
                forget(&unapplied, &weights);
                deliver(Err(RaftError::Fatal(fatal)), replies, &hub);
                return;
            }
        };
        tokio::spawn(async move {
            let write = async {
                match write.await {
                    Ok(result) => result.map_err(RaftError::APIError),
                    Err(_) => Err(RaftError::Fatal(openraft::error::Fatal::Stopped)),
                }
            };
            let result = tokio::time::timeout(commit_timeout, write).await;
            drop(permit);
            forget(&unapplied, &weights);
            if let Ok(Ok(_)) = &result {
                metrics.raft_commit.observe(proposed.elapsed());
            }
            match result {
                Ok(result) => deliver(result, replies, &hub),
                Err(_) => {
                    for (reply, _) in replies {
                        let _ = reply.send(Err(Error::Indeterminate(format!(
                            "not committed within {} ms; the leader may have lost its quorum",
                            commit_timeout.as_millis()
                        ))));
                    }
                }
            }
        });
    }

    fn maybe_expire(&self, expiring: &Arc<AtomicBool>) {
        let due = self.applied.read(|a| a.grid.next_expiry_ms());
        self.propose_timer(due, expiring, Command::Expire { limit: MAX_EXPIRED_PER_ENTRY });
    }

    fn maybe_tick(&self, ticking: &Arc<AtomicBool>) {
        let due = self.applied.read(|a| a.grid.next_timer_ms());
        self.propose_timer(due, ticking, Command::Tick { limit: MAX_TIMERS_PER_ENTRY });
    }

    /// When the grid's next timer is due, if that is before the next check (by this
    /// machine's wall clock, which stamps the entries; a millisecond late so the stamp has
    /// reached it).
    fn timer_due_before_next_check(&self) -> Option<Instant> {
        let due = self.applied.read(|a| a.grid.next_timer_ms())?;
        let wait = due.checked_sub(now_ms()).filter(|&ms| ms < TIMER_CHECK_INTERVAL.as_millis() as u64)?;
        Some(Instant::now() + Duration::from_millis(wait + 1))
    }

    /// On the leader, proposes `command` when `due` has passed, one at a time per kind.
    fn propose_timer(&self, due: Option<u64>, busy: &Arc<AtomicBool>, command: Command) {
        if self.raft.metrics().borrow().current_leader != Some(self.node_id) {
            return;
        }
        if due.is_none_or(|at| at > now_ms()) || busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let raft = self.raft.clone();
        let busy = busy.clone();
        let commit_timeout = self.options.commit_timeout;
        // Stamped like the loop's entries, so what a tick makes runnable does not take the
        // slots of held calls.
        let held = self.eager.stamp();
        let request = if held.is_empty() {
            Request::Batch { now_ms: now_ms(), commands: vec![command] }
        } else {
            Request::BatchHeld { now_ms: now_ms(), held, commands: vec![command] }
        };
        tokio::spawn(async move {
            let write = raft.client_write(request);
            match tokio::time::timeout(commit_timeout, write).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "timer proposal failed; the next check retries"),
                Err(_) => tracing::debug!("timer proposal not committed in time; the next check retries"),
            }
            busy.store(false, Ordering::Release);
        });
    }
}

/// Adds a unit to the staged writes and to the counts of what is staged.
fn stage(eager: &mut Eager, staged: &mut VecDeque<Unit>, staged_commands: &mut usize, unit: Unit) {
    if let Some(s) = unit.weight.reserved {
        *eager.staged_reserved.entry(s).or_default() += 1;
    }
    eager.staged_assigning = eager.staged_assigning.saturating_add(unit.weight.assigning);
    if !unit.new_keys.is_empty() {
        let mut unapplied = eager.unapplied.lock().unwrap_or_else(|p| p.into_inner());
        for k in &unit.new_keys {
            unapplied.count_key(k.clone());
        }
    }
    *staged_commands += unit.proposals.len();
    staged.push_back(unit);
}

/// Takes a unit that goes into an entry off the counts of what is staged.
fn unstage(eager: &mut Eager, w: &Weight) {
    if let Some(s) = w.reserved
        && let Some(n) = eager.staged_reserved.get_mut(&s)
    {
        *n = n.saturating_sub(1);
        if *n == 0 {
            eager.staged_reserved.remove(&s);
        }
    }
    eager.staged_assigning = eager.staged_assigning.saturating_sub(w.assigning);
}

/// An entry was applied (or given up on): its units no longer count as unapplied.
fn forget(unapplied: &Mutex<Unapplied>, weights: &[Weight]) {
    let mut unapplied = unapplied.lock().unwrap_or_else(|p| p.into_inner());
    for w in weights {
        unapplied.remove(w);
    }
}

type WriteResult = Result<
    openraft::raft::ClientWriteResponse<crate::raft::TypeConfig>,
    RaftError<NodeId, ClientWriteError<NodeId, openraft::BasicNode>>,
>;

/// A writer's reply, and the pair to revoke if its command is certainly not applied.
type Reply = (oneshot::Sender<Result<Output, Error>>, Option<Revoke>);

fn deliver(result: WriteResult, replies: Vec<Reply>, hub: &Hub) {
    let n = replies.len();
    let results: Vec<Result<Output, Error>> = match result {
        Ok(response) => {
            let mut results = response.data.results.into_iter();
            (0..n)
                .map(|_| match results.next() {
                    Some(r) => r.map_err(Error::Grid),
                    None => {
                        Err(Error::Indeterminate("the entry returned fewer results than commands".into()))
                    }
                })
                .collect()
        }
        Err(e) => {
            let error = || match &e {
                // openraft answers ForwardToLeader only for entries it never appended or has
                // truncated: they are certainly not applied, so the caller may retry.
                RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                    Error::NotLeader { leader: f.leader_node.as_ref().map(|n| n.addr.clone()) }
                }
                other => Error::Indeterminate(other.to_string()),
            };
            (0..n).map(|_| Err(error())).collect()
        }
    };
    for ((reply, revoke), r) in replies.into_iter().zip(results) {
        if let (Some(revoke), Err(e @ (Error::Grid(_) | Error::NotLeader { .. }))) = (revoke, &r) {
            revoke.send(hub, &format!("the call was not created: {e}"));
        }
        let _ = reply.send(r);
    }
}

#[cfg(test)]
mod tests {
    use openraft::error::ForwardToLeader;
    use openraft::raft::ClientWriteResponse;
    use openraft::{CommittedLeaderId, LogId};

    use super::*;
    use crate::grid;
    use crate::raft::Response;
    use crate::watch::SessionEvent;

    fn reply(execution: u64) -> (Reply, oneshot::Receiver<Result<Output, Error>>) {
        let (tx, rx) = oneshot::channel();
        ((tx, Some(Revoke { host_key: 7, execution, token: execution + 1000 })), rx)
    }

    fn revoked(events: &mut mpsc::Receiver<SessionEvent>) -> Vec<u64> {
        std::iter::from_fn(|| events.try_recv().ok())
            .filter_map(|e| match e {
                SessionEvent::Revoked { execution, token, .. } => {
                    assert_eq!(token, execution + 1000);
                    Some(execution)
                }
                _ => None,
            })
            .collect()
    }

    /// A held call's create that the grid refused, or that was never appended, has its pair
    /// revoked; one that was applied, or whose outcome is unknown, does not.
    #[test]
    fn a_create_certainly_not_applied_revokes_its_pair() {
        let hub = Hub::new(1, 16);
        let mut events = hub.register_session(7, 16);
        let (refused, refused_rx) = reply(1);
        let (created, _created_rx) = reply(2);
        let response = ClientWriteResponse::<crate::raft::TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 5),
            data: Response {
                results: vec![
                    Err(grid::Error::InvalidKey { reason: "test".into() }),
                    Ok(Output::Execution { id: 2, created: true }),
                ],
            },
            membership: None,
        };
        deliver(Ok(response), vec![refused, created], &hub);
        assert_eq!(revoked(&mut events), vec![1]);
        assert!(matches!(refused_rx.blocking_recv(), Ok(Err(Error::Grid(_)))));

        let (not_appended, rx) = reply(3);
        let forward = ClientWriteError::ForwardToLeader(ForwardToLeader::empty());
        deliver(Err(RaftError::APIError(forward)), vec![not_appended], &hub);
        assert_eq!(revoked(&mut events), vec![3]);
        assert!(matches!(rx.blocking_recv(), Ok(Err(Error::NotLeader { .. }))));

        let (unknown, rx) = reply(4);
        deliver(Err(RaftError::Fatal(openraft::error::Fatal::Stopped)), vec![unknown], &hub);
        assert_eq!(revoked(&mut events), Vec::<u64>::new());
        assert!(matches!(rx.blocking_recv(), Ok(Err(Error::Indeterminate(_)))));
    }
}

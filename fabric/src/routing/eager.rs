//! Eager calls: the leader's proposer pushes a `Call` to a session hosted here *before*
//! creating it, and creates it in the entry that carries its completion: one commit on the
//! caller's path instead of two (`docs/architecture.md#eager-calls`).
//!
//! ```text
//!   Call ─► proposer: may hold? ── no ─► staged as any create
//!                       │ yes: id x, token T from a block the grid set aside; session S
//!                       ▼      hosted here with a free slot
//!           hub.push_eager(S, x, T) ─► agent runs it          held[x] = {call, S, T, reply}
//!   agent's Complete{x, T}, authorized by S's host ─► staged [CreateReserved{x,T,S}, Complete]
//!   the linger runs out first, or a command names x ─► staged [CreateReserved{x,T,S}] first
//!   this node stops leading ─► the caller hears "not applied"; S is told to drop (x, T)
//! ```
//!
//! What keeps it safe is the grid: a pair (x, T) comes from a block reserved by a committed
//! `ReserveBlock`, which the grid never mints itself; this process hands each pair out once
//! (a new process reserves a new block); and `CreateReserved` is honoured only for a fresh pair
//! in a young block, on a session with room, or else the call is created under an id of the
//! grid's own and the pair is void. So a completion under (x, T) completes the call it was
//! pushed for or nothing. What the proposer guesses (room on S, the leader staying leader)
//! only decides how often calls take the fast path.
//!
//! Bounds: at most `max_eager_calls` held; each for at most the linger; blocks of
//! [`BLOCK_SIZE`] with one spare.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::Error;
use crate::NodeId;
use crate::grid::execution::{Effect, ExecutionId, NewExecution, Reserved, SessionId};
use crate::grid::{Command, Output};
use crate::metrics::Registry;
use crate::raft::state_machine;
use crate::watch::Hub;

/// Ids (and tokens) one block sets aside.
pub const BLOCK_SIZE: u32 = 1024;

/// Settings of eager calls.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Whether the leader holds calls at all.
    pub enabled: bool,
    /// How long a held call waits for its completion before it is created alone.
    pub linger: Duration,
    /// Most calls held at once.
    pub max_held: usize,
}

pub(super) type Reply = oneshot::Sender<Result<Output, Error>>;

/// A call pushed to a session and not yet created.
pub(super) struct Held {
    pub(super) reserved: Reserved,
    host_key: u64,
    pub(super) reply: Reply,
}

impl Held {
    /// What tells its session to drop it.
    pub(super) fn revoke(&self) -> Revoke {
        Revoke { host_key: self.host_key, execution: self.reserved.id, token: self.reserved.token }
    }
}

/// A pair pushed to a session hosted here. Its session is told to drop it when the create is
/// certainly not applied (refused by the grid, or never appended: this node stopped leading);
/// not when the outcome is unknown, since an entry that does commit leases the call to it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Revoke {
    pub(super) host_key: u64,
    pub(super) execution: ExecutionId,
    pub(super) token: u64,
}

impl Revoke {
    pub(super) fn send(&self, hub: &Hub, why: &str) {
        hub.revoke_eager(self.host_key, self.execution, self.token, why);
    }
}

/// The ids and tokens left of a block.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    next_id: ExecutionId,
    end_id: ExecutionId,
    /// The token paired with `next_id`.
    next_token: u64,
    /// After this the block is not used: the grid honours a block's ids only while it is
    /// younger than `MAX_BLOCK_AGE_MS`, and a pair handed out must reach the log before that.
    until: Instant,
}

/// How long after its reservation was answered a block is used: well inside the grid's
/// `MAX_BLOCK_AGE_MS` (60 s), leaving time for the linger, a wait for a slot and the commit.
const BLOCK_USE: Duration = Duration::from_secs(40);

impl Cursor {
    fn left(&self) -> u64 {
        self.end_id - self.next_id
    }

    /// Pairs left, and still young enough to hand out.
    fn usable(&self, now: Instant) -> bool {
        self.left() > 0 && now < self.until
    }
}

/// Proposed commands not yet applied that may fill sessions' slots (shared with the tasks that
/// wait for entries), and the idempotency keys of creates not yet applied.
#[derive(Debug, Default)]
pub(super) struct Unapplied {
    /// `CreateReserved` per session.
    pub(super) reserved: HashMap<SessionId, u32>,
    /// Other commands that may assign executions anywhere (creates, effects' calls).
    pub(super) assigning: u64,
    /// (parent or 0, key) of creates (and of calls a completion's effects make) from their
    /// hold (eager calls) or their intake (the rest) until the entry that creates them is
    /// applied, or its commit times out: a call with a key in that time is not held (it would
    /// run twice: the grid finds the key only once that entry applies).
    pub(super) keys: HashMap<(ExecutionId, String), u32>,
}

/// What a staged unit adds to the counts, so the entry that carries it can take it off.
#[derive(Debug, Default, Clone)]
pub(super) struct Weight {
    pub(super) reserved: Option<SessionId>,
    pub(super) assigning: u64,
    pub(super) keys: Vec<(ExecutionId, String)>,
}

impl Unapplied {
    pub(super) fn add(&mut self, w: &Weight) {
        if let Some(s) = w.reserved {
            *self.reserved.entry(s).or_default() += 1;
        }
        self.assigning += w.assigning;
    }

    pub(super) fn count_key(&mut self, key: (ExecutionId, String)) {
        *self.keys.entry(key).or_default() += 1;
    }

    fn forget_key(&mut self, key: &(ExecutionId, String)) {
        if let Some(n) = self.keys.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.keys.remove(key);
            }
        }
    }

    pub(super) fn remove(&mut self, w: &Weight) {
        for k in &w.keys {
            self.forget_key(k);
        }
        if let Some(s) = w.reserved
            && let Some(n) = self.reserved.get_mut(&s)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.reserved.remove(&s);
            }
        }
        self.assigning = self.assigning.saturating_sub(w.assigning);
    }
}

/// How many executions a command may assign to some session when applied (an over-count:
/// a session close may return many).
pub(super) fn assigning(command: &Command) -> u64 {
    match command {
        Command::CreateExecution(_) | Command::CreateServedExecution(_) | Command::StartInstance(_) => 1,
        Command::Complete(c) => c.effects.iter().filter(|e| matches!(e, Effect::Call(_))).count() as u64,
        Command::CloseSession { .. } | Command::Tick { .. } => u64::from(u32::MAX),
        Command::Audited { command, .. } | Command::Fenced { command, .. } => assigning(command),
        _ => 0,
    }
}

/// The held executions a command names: they must be created before it applies.
pub(super) fn named(command: &Command) -> Vec<ExecutionId> {
    match command {
        Command::CreateExecution(new) | Command::CreateServedExecution(new) => {
            new.parent.iter().map(|p| p.id).collect()
        }
        Command::Complete(c) => vec![c.execution],
        Command::Renew { execution, .. }
        | Command::GiveBack { execution, .. }
        | Command::Cancel { execution, .. } => {
            vec![*execution]
        }
        Command::Audited { command, .. } | Command::Fenced { command, .. } => named(command),
        _ => Vec::new(),
    }
}

/// The leader's eager calls: blocks, held calls and the counts that estimate sessions' room.
pub(super) struct Eager {
    options: Options,
    node_id: NodeId,
    hub: Hub,
    applied: state_machine::Handle,
    metrics: Arc<Registry>,
    /// The term the blocks were reserved in; they are dropped when it changes.
    term: Option<u64>,
    cursor: Option<Cursor>,
    spare: Option<Cursor>,
    /// A `ReserveBlock` is on its way.
    pub(super) reserving: bool,
    /// A call found no block: reserve one (a leader reserves none before calls come, so a
    /// cluster that makes none has no such entries).
    asked: bool,
    held: HashMap<ExecutionId, Held>,
    /// Held ids in the order their linger runs out.
    lingers: VecDeque<(Instant, ExecutionId)>,
    per_session: HashMap<SessionId, u32>,
    /// Held calls by (parent or 0, idempotency key).
    by_key: HashMap<(ExecutionId, String), ExecutionId>,
    /// `CreateReserved` staged and not yet in an entry, per session.
    pub(super) staged_reserved: HashMap<SessionId, u32>,
    /// Commands staged and not yet in an entry that may assign executions.
    pub(super) staged_assigning: u64,
    pub(super) unapplied: Arc<Mutex<Unapplied>>,
}

impl Eager {
    pub(super) fn new(
        options: Options,
        node_id: NodeId,
        hub: Hub,
        applied: state_machine::Handle,
        metrics: Arc<Registry>,
    ) -> Self {
        Self {
            options,
            node_id,
            hub,
            applied,
            metrics,
            term: None,
            cursor: None,
            spare: None,
            reserving: false,
            asked: false,
            held: HashMap::new(),
            lingers: VecDeque::new(),
            per_session: HashMap::new(),
            by_key: HashMap::new(),
            staged_reserved: HashMap::new(),
            staged_assigning: 0,
            unapplied: Arc::default(),
        }
    }

    /// Follows leadership: on a new term or a lost leadership the blocks go and every held call
    /// is answered not applied. Returns whether a block should be reserved now: a call found
    /// none, or the one in use is half spent and there is no spare.
    pub(super) fn observe(&mut self, leader: bool, term: u64) -> bool {
        if !self.options.enabled {
            return false;
        }
        if !leader || self.term != Some(term) {
            self.drop_all("this node stopped leading before the call was created");
            self.cursor = None;
            self.spare = None;
            self.term = leader.then_some(term);
        }
        let now = Instant::now();
        if self.spare.is_some_and(|c| !c.usable(now)) {
            self.spare = None;
        }
        leader
            && !self.reserving
            && self.spare.is_none()
            && match self.cursor.filter(|c| c.usable(now)) {
                None => self.asked,
                Some(c) => c.left() < u64::from(BLOCK_SIZE) / 2,
            }
    }

    /// A `ReserveBlock` proposed in `term` was answered.
    pub(super) fn reserved(&mut self, term: u64, answer: Result<Output, Error>) {
        self.reserving = false;
        let Ok(Output::Block { first_id, first_token, count }) = answer else { return };
        self.asked = false;
        if self.term != Some(term) {
            return;
        }
        let now = Instant::now();
        let block = Cursor {
            next_id: first_id,
            end_id: first_id + u64::from(count),
            next_token: first_token,
            until: now + BLOCK_USE,
        };
        if self.cursor.is_none_or(|c| !c.usable(now)) {
            self.cursor = Some(block);
        } else {
            self.spare = Some(block);
        }
    }

    fn take_pair(&mut self) -> Option<(ExecutionId, u64)> {
        let now = Instant::now();
        if self.cursor.is_none_or(|c| !c.usable(now)) {
            self.cursor = self.spare.take();
        }
        let c = self.cursor.as_mut()?;
        if !c.usable(now) {
            self.cursor = None;
            return None;
        }
        let pair = (c.next_id, c.next_token);
        c.next_id += 1;
        c.next_token += 1;
        Some(pair)
    }

    /// Holds `command` (a call's create) and pushes it to a session hosted here, if it may:
    /// gives the reply back otherwise.
    pub(super) fn try_hold(&mut self, command: &Command, reply: Reply) -> Result<(), Reply> {
        let (new, served) = match command {
            Command::CreateExecution(new) => (new, false),
            Command::CreateServedExecution(new) => (new, true),
            _ => return Err(reply),
        };
        if !self.options.enabled || self.term.is_none() || self.held.len() >= self.options.max_held {
            return Err(reply);
        }
        if new.instance.is_some() || new.delay_ms.is_some() || new.not_before_ms.is_some() {
            return Err(reply);
        }
        if new.parent.is_some_and(|p| self.held.contains_key(&p.id)) {
            return Err(reply);
        }
        let key = idempotency_key(new);
        if key
            .as_ref()
            .is_some_and(|k| self.unapplied.lock().unwrap_or_else(|p| p.into_inner()).keys.contains_key(k))
        {
            return Err(reply);
        }
        let Some((session, host_key)) = self.pick_session(new) else { return Err(reply) };
        let Some((id, token)) = self.take_pair() else {
            self.asked = true;
            return Err(reply);
        };
        let reserved = Reserved { new: (**new).clone(), served, id, token, session };
        let now = super::proposer::now_ms();
        let execution = self.applied.read(|a| a.grid.reserved_preview(&reserved, now));
        if !self.hub.push_eager(host_key, execution, token) {
            // The pair is never named again: a gap in the ids, nothing more.
            return Err(reply);
        }
        *self.per_session.entry(session).or_default() += 1;
        if let Some(k) = key {
            self.unapplied.lock().unwrap_or_else(|p| p.into_inner()).count_key(k.clone());
            self.by_key.insert(k, id);
        }
        self.lingers.push_back((Instant::now() + self.options.linger, id));
        self.held.insert(id, Held { reserved, host_key, reply });
        Ok(())
    }

    /// The session hosted here with the most room for `new`, by the applied grid less what
    /// is held, staged or proposed and not yet applied.
    fn pick_session(&self, new: &NewExecution) -> Option<(SessionId, u64)> {
        let candidates = self.applied.read(|a| a.grid.eager_candidates(new));
        let unapplied = self.unapplied.lock().unwrap_or_else(|p| p.into_inner());
        let elsewhere = unapplied.assigning.saturating_add(self.staged_assigning);
        candidates
            .into_iter()
            .filter(|(_, host, _)| host.node == self.node_id)
            .filter_map(|(s, host, free)| {
                let taken = u64::from(self.per_session.get(&s).copied().unwrap_or(0))
                    + u64::from(self.staged_reserved.get(&s).copied().unwrap_or(0))
                    + u64::from(unapplied.reserved.get(&s).copied().unwrap_or(0))
                    + elsewhere;
                let room = u64::from(free).saturating_sub(taken);
                (room > 0).then_some((room, s, host.key))
            })
            .max()
            .map(|(_, s, key)| (s, key))
    }

    /// Takes held call `id` out to be created, if held.
    fn take(&mut self, id: ExecutionId) -> Option<Held> {
        let held = self.held.remove(&id)?;
        if let Some(k) = idempotency_key(&held.reserved.new) {
            self.by_key.remove(&k);
        }
        if let Some(n) = self.per_session.get_mut(&held.reserved.session) {
            *n -= 1;
            if *n == 0 {
                self.per_session.remove(&held.reserved.session);
            }
        }
        Some(held)
    }

    /// The held call a completion under `(id, token)` finishes, for one entry with it.
    pub(super) fn take_completed(&mut self, id: ExecutionId, token: u64) -> Option<Held> {
        if self.held.get(&id)?.reserved.token != token {
            return None;
        }
        self.metrics.eager.combined.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.take(id)
    }

    /// The held call another command names (it is created first).
    pub(super) fn take_named(&mut self, id: ExecutionId) -> Option<Held> {
        let held = self.take(id)?;
        self.metrics.eager.named.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(held)
    }

    /// The held call whose idempotency key a create names (it is created first, so the create
    /// finds it by its key).
    pub(super) fn take_keyed(&mut self, command: &Command) -> Option<Held> {
        let new = match command {
            Command::CreateExecution(new) | Command::CreateServedExecution(new) => new,
            _ => return None,
        };
        let id = *self.by_key.get(&idempotency_key(new)?)?;
        self.take_named(id)
    }

    /// When the next linger runs out.
    pub(super) fn next_linger(&mut self) -> Option<Instant> {
        while let Some(&(at, id)) = self.lingers.front() {
            if self.held.contains_key(&id) {
                return Some(at);
            }
            self.lingers.pop_front();
        }
        None
    }

    /// The held calls whose linger has run out by `now`.
    pub(super) fn lingered(&mut self, now: Instant) -> Vec<Held> {
        let mut out = Vec::new();
        while let Some(&(at, id)) = self.lingers.front() {
            if at > now {
                break;
            }
            self.lingers.pop_front();
            if let Some(held) = self.take(id) {
                self.metrics.eager.lingered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                out.push(held);
            }
        }
        out
    }

    /// Answers every held call not applied (they never reached the log) and tells their
    /// sessions to drop them.
    pub(super) fn drop_all(&mut self, why: &str) {
        let ids: Vec<ExecutionId> = self.held.keys().copied().collect();
        for id in ids {
            let Some(held) = self.take(id) else { continue };
            self.metrics.eager.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.hub.revoke_eager(held.host_key, id, held.reserved.token, why);
            let key = idempotency_key(&held.reserved.new);
            if let Some(k) = &key {
                self.unapplied.lock().unwrap_or_else(|p| p.into_inner()).forget_key(k);
            }
            let _ = held.reply.send(Err(Error::NotLeader { leader: None }));
        }
        self.lingers.clear();
    }

    /// The hub eager calls are pushed through.
    pub(super) fn hub(&self) -> Hub {
        self.hub.clone()
    }

    /// Held calls per session plus `CreateReserved` staged: the stamp of an entry formed now.
    pub(super) fn stamp(&self) -> Vec<(SessionId, u32)> {
        let mut stamp: HashMap<SessionId, u32> = self.per_session.clone();
        for (s, n) in &self.staged_reserved {
            *stamp.entry(*s).or_default() += n;
        }
        let mut stamp: Vec<(SessionId, u32)> = stamp.into_iter().filter(|(_, n)| *n > 0).collect();
        stamp.sort_unstable();
        stamp
    }
}

/// The (parent or 0, idempotency key) of a create, wrapped or not.
pub(super) fn create_keys(command: &Command) -> Vec<(ExecutionId, String)> {
    match command {
        Command::CreateExecution(new) | Command::CreateServedExecution(new) => {
            idempotency_key(new).into_iter().collect()
        }
        // A completion's calls are children of the execution it completes.
        Command::Complete(c) => c
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::Call(new) => new.idempotency_key.clone().map(|k| (c.execution, k)),
                _ => None,
            })
            .collect(),
        Command::Audited { command, .. } | Command::Fenced { command, .. } => create_keys(command),
        _ => Vec::new(),
    }
}

/// The (parent or 0, key) an idempotency key of `new` is scoped by.
pub(super) fn idempotency_key(new: &NewExecution) -> Option<(ExecutionId, String)> {
    new.idempotency_key.as_ref().map(|k| (new.parent.map_or(0, |p| p.id), k.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::Grid;

    fn eager() -> Eager {
        let options = Options { enabled: true, linger: Duration::from_millis(10), max_held: 16 };
        let applied = state_machine::Handle::with_grid(Grid::default());
        Eager::new(options, 1, Hub::new(1, 16), applied, Arc::new(Registry::default()))
    }

    fn block(first_id: ExecutionId) -> Result<Output, Error> {
        Ok(Output::Block { first_id, first_token: first_id + 1000, count: 4 })
    }

    /// A block is asked for only once a call found none, used for [`BLOCK_USE`] at most (the
    /// grid honours its ids for 60 s) and only in the term it was reserved in.
    #[test]
    fn a_block_is_used_only_while_young_and_in_its_term() {
        let mut e = eager();
        assert!(!e.observe(true, 3), "no block before a call asks for one");
        e.asked = true;
        assert!(e.observe(true, 3));
        e.reserving = true;
        e.reserved(3, block(100));
        assert_eq!(e.take_pair(), Some((100, 1100)));
        assert_eq!(e.take_pair(), Some((101, 1101)));

        e.cursor.as_mut().expect("a block").until = Instant::now() - Duration::from_millis(1);
        assert_eq!(e.take_pair(), None, "a block past its use is not used");
        e.asked = true;
        assert!(e.observe(true, 3), "and another is asked for");

        e.reserving = true;
        e.reserved(2, block(200));
        assert_eq!(e.take_pair(), None, "a block reserved in an earlier term is not used");

        e.reserving = true;
        e.reserved(3, block(300));
        assert!(!e.observe(true, 4), "a new term drops the block");
        assert_eq!(e.take_pair(), None);
    }
}

//! Eager calls: how `apply` sets ids and tokens aside for the leader, and creates a call the
//! leader already handed to a session (`docs/architecture.md#eager-calls`).
//!
//! ```text
//!   ReserveBlock{count} ─► ids  last_execution_id+1 ..= +count ┐ never minted by the grid:
//!                          tokens  last_token+1 ..= +count     ┘ both counters jump past them
//!   leader: id x, token T (= first_token + (x − first_id)) ─► push to session S ─► agent runs
//!   CreateReserved{x, T, S} ─► honoured: x created, leased to S under T (one attempt)
//!                            └► void: created as CreateExecution would, with a fresh id;
//!                                     x and T are never used; S is told to drop (x, T)
//! ```
//!
//! The fence: a pair (x, T) reaches an agent before its create is applied only from a block,
//! and the grid honours each id of a block at most once, with its own token only, while the
//! block is young. So a completion under (x, T) is accepted for the call it was pushed for or
//! for nothing, whatever the leader guessed about the session's room, and across leader changes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::events::{Event, Held, Outbox};
use super::execution::{Execution, ExecutionId, Lease, NewExecution, Reserved, SessionId, Status};
use super::executions::{Creating, pending_execution};
use super::session::Host;
use super::{Error, Grid, Output};

/// Most ids (and tokens) one block sets aside.
pub const MAX_BLOCK: u32 = 4096;
/// Blocks the grid remembers; an older one's ids are no longer honoured.
pub const MAX_BLOCKS: usize = 8;
/// How long after its reservation a block's ids are honoured (by the leader-stamped clock).
pub const MAX_BLOCK_AGE_MS: u64 = 60_000;

/// The blocks set aside for eager calls. Part of the grid's snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Blocks {
    /// The newest [`MAX_BLOCKS`], oldest first.
    blocks: VecDeque<Block>,
    /// The stamp of the last entry: slots held per session for eager calls.
    stamped: BTreeMap<SessionId, u32>,
}

/// Ids `first_id..first_id + count` and tokens `first_token..first_token + count`, paired in
/// order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Block {
    first_id: ExecutionId,
    first_token: u64,
    count: u32,
    /// When it was reserved (the grid's clock).
    reserved_ms: u64,
    /// Ids a `CreateReserved` named already (honoured or not): none is honoured twice.
    used: BTreeSet<ExecutionId>,
}

impl Block {
    fn holds(&self, id: ExecutionId) -> bool {
        id >= self.first_id && id - self.first_id < u64::from(self.count)
    }
}

impl Grid {
    /// Starts an entry stamped with `held`. A session the entry holds fewer slots on than the
    /// last entry did gets its agents' queues dispatched again: a held call that is never
    /// created (its leader stopped leading) leaves no other trace, and work kept from its slot
    /// would otherwise wait for the next command that touches the agent.
    pub(super) fn restamp(&mut self, held: &mut Held, events: &mut Vec<Event>) {
        if self.eager.stamped.is_empty() && held.is_empty() {
            return;
        }
        let before = std::mem::replace(&mut self.eager.stamped, held.clone());
        let mut out = Outbox::new(events, held);
        for (s, n) in before {
            if out.held.get(&s).copied().unwrap_or(0) < n
                && let Some(session) = self.work.sessions.get(&s)
            {
                out.dirty.extend(session.agents.iter().map(|a| a.name.clone()));
            }
        }
        self.dispatch(&mut out);
    }

    /// Applies `ReserveBlock`: the next `count` ids and tokens, which the grid's own counters
    /// skip.
    pub(super) fn reserve_block(&mut self, count: u32) -> Output {
        let first_id = self.work.last_execution_id + 1;
        let first_token = self.work.last_token + 1;
        self.work.last_execution_id += u64::from(count);
        self.work.last_token += u64::from(count);
        let blocks = &mut self.eager.blocks;
        blocks.push_back(Block {
            first_id,
            first_token,
            count,
            reserved_ms: self.now_ms,
            used: BTreeSet::new(),
        });
        while blocks.len() > MAX_BLOCKS {
            blocks.pop_front();
        }
        Output::Block { first_id, first_token, count }
    }

    /// Applies `CreateReserved`: the checks of a create; then the call is created as the leader
    /// pushed it if the grid agrees ([`Grid::honours`]), or as `CreateExecution` would.
    pub(super) fn create_reserved(&mut self, r: &Reserved, out: &mut Outbox) -> Result<Output, Error> {
        // This call was counted in the entry's stamp until here.
        if let Some(n) = out.held.get_mut(&r.session) {
            *n = n.saturating_sub(1);
        }
        // A refusal changes nothing (the pair stays unused, and the leader never names it
        // again); otherwise the pair is used up, whether honoured or not.
        let checked = self.check_create(&r.new, r.served)?;
        let fresh = self.take_reserved(r);
        let parent = match checked {
            Creating::Existing(id) => {
                self.revoke_reserved(r, "the idempotency key names an execution already", out);
                return Ok(Output::Execution { id, created: false });
            }
            Creating::New { parent } => parent,
        };
        if fresh && self.honours(r, out) {
            self.store_execution(r.id, &r.new, parent, false, out);
            self.grant(r.id, r.session, r.token, true, out);
            return Ok(Output::Execution { id: r.id, created: true });
        }
        self.revoke_reserved(r, "the call was created under another id", out);
        let id = self.insert_execution(&r.new, parent, false, out);
        Ok(Output::Execution { id, created: true })
    }

    /// Marks `r`'s id used in its block; whether it was fresh there, with its own token, in a
    /// block young enough.
    fn take_reserved(&mut self, r: &Reserved) -> bool {
        let now = self.now_ms;
        let Some(block) = self.eager.blocks.iter_mut().rev().find(|b| b.holds(r.id)) else { return false };
        let fresh = block.used.insert(r.id);
        fresh
            && r.token == block.first_token + (r.id - block.first_id)
            && now.saturating_sub(block.reserved_ms) <= MAX_BLOCK_AGE_MS
            && !self.work.executions.contains_key(&r.id)
    }

    /// Whether the call may run where the leader pushed it: nothing to wait for, and the
    /// session exists, may run it and has a slot besides the other eager calls it holds (a
    /// draining session too: it was pushed before the drain, and a draining session finishes
    /// what it holds).
    fn honours(&self, r: &Reserved, out: &Outbox) -> bool {
        let new = &r.new;
        if new.instance.is_some()
            || new.delay_ms.is_some()
            || new.not_before_ms.is_some_and(|at| at > self.now_ms)
        {
            return false;
        }
        let Some(s) = self.work.sessions.get(&r.session) else { return false };
        let room = s.capacity.saturating_sub(s.assigned.len() as u32);
        let others = out.held.get(&s.id).copied().unwrap_or(0);
        s.may_run(&new.agent, None, &new.delegate) && room > others
    }

    /// Tells the session `r` was pushed to that its pair is void. Not when `r.id` names an
    /// execution: the grid never makes a block's id itself, so an earlier create honoured that
    /// id with its own token, and this one only repeats it (or names an id that is no block's).
    /// The agent may be running that execution under the pair now; the grid's own revocations
    /// speak for it.
    fn revoke_reserved(&self, r: &Reserved, reason: &str, out: &mut Outbox) {
        if self.work.executions.contains_key(&r.id) {
            return;
        }
        if let Some(s) = self.work.sessions.get(&r.session) {
            out.events.push(Event::Revoked {
                host: s.host,
                session: s.id,
                execution: r.id,
                token: r.token,
                reason: reason.into(),
            });
        }
    }
}

/// What the leader reads to hold a call (`routing::eager`).
impl Grid {
    /// The sessions that may take `new` as an eager call, with their free slots (a draining
    /// one has none): none while an execution of its `(agent, delegate)` waits ready (the call
    /// would overtake it), nor when its idempotency key names an execution already.
    pub fn eager_candidates(&self, new: &NewExecution) -> Vec<(SessionId, Host, u32)> {
        let queue = (new.agent.clone(), new.delegate.clone());
        if self.work.ready.get(&queue).is_some_and(|q| !q.is_empty()) {
            return Vec::new();
        }
        if let Some(key) = &new.idempotency_key
            && self.work.idempotency.contains_key(&(new.parent.map_or(0, |p| p.id), key.clone()))
        {
            return Vec::new();
        }
        let Some(ids) = self.work.serving.get(&new.agent) else { return Vec::new() };
        ids.iter()
            .filter_map(|id| self.work.sessions.get(id))
            .filter(|s| s.free() > 0 && s.may_run(&new.agent, None, &new.delegate))
            .map(|s| (s.id, s.host, s.free()))
            .collect()
    }

    /// The execution a `CreateReserved` of `r` honoured at `now_ms` holds: what the leader
    /// pushes to the session (apply stamps its own times, up to the linger later).
    pub fn reserved_preview(&self, r: &Reserved, now_ms: u64) -> Execution {
        let mut e = pending_execution(r.id, &r.new, r.new.parent.map(|p| p.id), false, now_ms);
        let lease_ms = self.work.sessions.get(&r.session).map_or(0, |s| s.lease_ms);
        e.status = Status::Assigned;
        e.attempts = 1;
        e.lease = Some(Lease {
            session: r.session,
            token: r.token,
            expires_ms: (lease_ms > 0).then(|| now_ms.saturating_add(lease_ms)),
        });
        e
    }
}

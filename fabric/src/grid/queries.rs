//! Reads: what the API, `/metrics` and the leader's timers ask of the grid. Each takes `&self`
//! and sees the grid as of its clock (an expired key is absent even before `Expire` drops
//! it); listings are bounded in what they return and in what they scan.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::cursor::{Listener, ListenerId};
use super::execution::{Execution, ExecutionId, SessionId, Status};
use super::instance::Instance;
use super::kv::{CLUSTER_UID_KEY, SYSTEM_NAMESPACE, Value, uid_of};
use super::lease::{self, Lease};
use super::session::Session;
use super::stream::{Item, Seq, Stream, filter_matches};
use super::token::Token;
use super::{Error, Grid, Limits, namespace};

/// Most items a stream read scans past its filter before it ends the page early.
const MAX_READ_SCAN: usize = 100_000;

/// Most expired-but-not-yet-removed keys one list page skips before it ends early (with a
/// page token to continue from).
pub(super) const MAX_LIST_SKIPPED: usize = 10_000;
/// Most executions a listing scans past its filter before it ends the page early.
const MAX_LIST_SCAN: usize = 10_000;

/// A page of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Keys in order, with their values.
    pub entries: Vec<(String, Value)>,
    /// The last key returned, when more keys may follow.
    pub next: Option<String>,
}

/// Which executions a listing returns, and in which order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecutionQuery<'a> {
    /// Only this agent's.
    pub agent: Option<&'a str>,
    /// Only those with this status.
    pub status: Option<Status>,
    /// Only those created at or after this time (ms since the Unix epoch); 0: any.
    pub created_since_ms: u64,
    /// Highest id first (newest), instead of lowest.
    pub newest_first: bool,
}

impl ExecutionQuery<'_> {
    fn matches(&self, e: &Execution) -> bool {
        self.agent.is_none_or(|a| a == e.agent)
            && self.status.is_none_or(|s| s == e.status)
            && e.created_ms >= self.created_since_ms
    }
}

/// A page of executions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionPage {
    /// In id order (descending for a newest-first query).
    pub executions: Vec<Execution>,
    /// The last id scanned, when more may follow.
    pub next: Option<ExecutionId>,
}

/// Counts for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Executions stored (finished ones kept for retention included).
    pub executions: usize,
    /// Of which pending.
    pub pending: usize,
    /// Of which assigned.
    pub assigned: usize,
    /// Live sessions.
    pub sessions: usize,
    /// Instances.
    pub instances: usize,
}

impl Grid {
    // ---- key/value ---------------------------------------------------------------------------

    /// Reads one key as of the grid's clock.
    pub fn get(&self, namespace: &str, key: &str) -> Option<&Value> {
        self.live(namespace, key)
    }

    /// Lists keys of a namespace that start with `prefix`, after `start_after`, up to `limit`.
    pub fn list(
        &self,
        namespace: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        limits: &Limits,
    ) -> Result<Page, Error> {
        namespace::parse(namespace)?;
        if limit == 0 || limit > limits.max_list_page {
            return Err(Error::InvalidPageSize { requested: limit, limit: limits.max_list_page });
        }
        let Some(map) = self.namespaces.get(namespace) else {
            return Ok(Page { entries: Vec::new(), next: None });
        };
        let lower = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after.to_owned()),
            _ => Bound::Included(prefix.to_owned()),
        };
        let mut entries = Vec::new();
        let mut next = None;
        let mut skipped = 0;
        for (k, v) in map.range::<String, _>((lower, Bound::Unbounded)) {
            if !k.starts_with(prefix) {
                break;
            }
            if !v.live_at(self.now_ms) {
                // Expired but not yet removed: skipped, but a page never scans unboundedly.
                skipped += 1;
                if skipped == MAX_LIST_SKIPPED {
                    next = Some(k.clone());
                    break;
                }
                continue;
            }
            if entries.len() == limit {
                next = entries.last().map(|(k, _): &(String, Value)| k.clone());
                break;
            }
            entries.push((k.clone(), v.clone()));
        }
        Ok(Page { entries, next })
    }

    /// Up to `limit` namespaces whose names start with `prefix`, in name order (expired keys
    /// not yet dropped may keep a namespace listed).
    pub fn namespaces_with_prefix(&self, prefix: &str, limit: usize) -> Vec<&str> {
        self.namespaces
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .map(|(ns, _)| ns.as_str())
            .take_while(|ns| ns.starts_with(prefix))
            .take(limit)
            .collect()
    }

    /// The grid's clock: the latest leader-stamped time applied.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The grid's revision: how many writes it has applied.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The earliest time at which some key expires, if any key has a time to live.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.expiries.keys().next().map(|(at, _, _)| *at)
    }

    /// Number of stored keys across all namespaces (expired ones not yet dropped included).
    pub fn key_count(&self) -> usize {
        self.namespaces.iter().filter(|(ns, _)| *ns != SYSTEM_NAMESPACE).map(|(_, keys)| keys.len()).sum()
    }

    /// This cluster's instance id, 0 until the first leader has recorded one.
    pub fn cluster_uid(&self) -> u64 {
        self.namespaces
            .get(SYSTEM_NAMESPACE)
            .and_then(|keys| keys.get(CLUSTER_UID_KEY))
            .map_or(0, |v| uid_of(&v.data))
    }

    // ---- executions --------------------------------------------------------------------------

    /// One execution.
    pub fn execution(&self, id: ExecutionId) -> Option<&Execution> {
        self.work.executions.get(&id)
    }

    /// Executions after `after` (by id; with `query.newest_first`, before it, highest id
    /// first), filtered by `query`, up to `limit`.
    pub fn list_executions(
        &self,
        query: &ExecutionQuery<'_>,
        after: Option<ExecutionId>,
        limit: usize,
    ) -> ExecutionPage {
        let range = if query.newest_first {
            let upper = after.map_or(Bound::Unbounded, Bound::Excluded);
            Box::new(self.work.executions.range((Bound::Unbounded, upper)).rev())
                as Box<dyn Iterator<Item = (&ExecutionId, &Execution)>>
        } else {
            let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
            Box::new(self.work.executions.range((lower, Bound::Unbounded)))
        };
        let mut executions = Vec::new();
        let mut next = None;
        let mut last = None;
        for (scanned, (id, e)) in range.enumerate() {
            if executions.len() == limit || scanned == MAX_LIST_SCAN {
                next = last;
                break;
            }
            last = Some(*id);
            if !query.matches(e) {
                continue;
            }
            executions.push(e.clone());
        }
        ExecutionPage { executions, next }
    }

    /// The newest executions (highest ids first), filtered by agent and status, up to
    /// `limit`; scans at most [`MAX_LIST_SCAN`] executions past the filter.
    pub fn recent_executions(
        &self,
        agent: Option<&str>,
        status: Option<Status>,
        limit: usize,
    ) -> Vec<&Execution> {
        self.work
            .executions
            .values()
            .rev()
            .take(MAX_LIST_SCAN)
            .filter(|e| agent.is_none_or(|a| a == e.agent) && status.is_none_or(|s| s == e.status))
            .take(limit)
            .collect()
    }

    /// The execution created with `key` (top level, or under `parent`).
    pub fn execution_by_key(&self, parent: Option<ExecutionId>, key: &str) -> Option<&Execution> {
        let id = self.work.idempotency.get(&(parent.unwrap_or(0), key.to_owned()))?;
        self.work.executions.get(id)
    }

    /// The children of an execution.
    pub fn children_of(&self, id: ExecutionId) -> Vec<ExecutionId> {
        self.work.children.range((id, 0)..=(id, u64::MAX)).map(|(_, c)| *c).collect()
    }

    /// The id of the newest execution (0: none yet); ids are dense, so executions above
    /// it are new.
    pub fn last_execution_id(&self) -> ExecutionId {
        self.work.last_execution_id
    }

    /// Pending executions per agent (for scaling and `/metrics`).
    pub fn pending_by_agent(&self) -> BTreeMap<String, usize> {
        let mut out: BTreeMap<String, usize> = BTreeMap::new();
        for e in self.work.executions.values().filter(|e| e.status == Status::Pending) {
            *out.entry(e.agent.clone()).or_default() += 1;
        }
        out
    }

    // ---- sessions and instances --------------------------------------------------------------

    /// One session.
    pub fn session(&self, id: SessionId) -> Option<&Session> {
        self.work.sessions.get(&id)
    }

    /// Every live session.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.work.sessions.values()
    }

    /// One instance.
    pub fn instance(&self, agent: &str, id: &str) -> Option<&Instance> {
        self.work.instances.get(&(agent.to_owned(), id.to_owned()))
    }

    /// Live sessions with ids after `after`, serving `agent` if given, up to `limit`; and the
    /// id to continue after when there are more.
    pub fn list_sessions(
        &self,
        agent: Option<&str>,
        after: Option<SessionId>,
        limit: usize,
    ) -> (Vec<Session>, Option<SessionId>) {
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut out: Vec<Session> = Vec::new();
        for s in self.work.sessions.range((lower, Bound::Unbounded)).map(|(_, s)| s) {
            if agent.is_some_and(|a| s.spec(a).is_none()) {
                continue;
            }
            if out.len() == limit {
                let last = out.last().map(|s| s.id);
                return (out, last);
            }
            out.push(s.clone());
        }
        (out, None)
    }

    /// Instances after `after`, of `agent` if given, up to `limit`.
    pub fn list_instances(
        &self,
        agent: Option<&str>,
        after: Option<&(String, String)>,
        limit: usize,
    ) -> (Vec<Instance>, Option<(String, String)>) {
        let lower = match after {
            Some(a) => Bound::Excluded(a.clone()),
            None => match agent {
                Some(a) => Bound::Included((a.to_owned(), String::new())),
                None => Bound::Unbounded,
            },
        };
        let mut out = Vec::new();
        for (key, inst) in self.work.instances.range((lower, Bound::Unbounded)) {
            if agent.is_some_and(|a| a != key.0) {
                break;
            }
            if out.len() == limit {
                let last = out.last().map(|i: &Instance| (i.agent.clone(), i.id.clone()));
                return (out, last);
            }
            out.push(inst.clone());
        }
        (out, None)
    }

    // ---- leases ----------------------------------------------------------------------------------

    /// The lease `name` if it is held at the grid's clock (one expired but not yet removed is
    /// not).
    pub fn lease(&self, name: &str) -> Option<&Lease> {
        self.leases.held.get(name).filter(|l| l.held_at(self.now_ms))
    }

    /// The holders waiting for lease `name` whose wait has not run out, first first.
    pub fn lease_waiters(&self, name: &str) -> Vec<&lease::Waiter> {
        let now = self.now_ms;
        self.waiting
            .queues
            .get(name)
            .map_or_else(Vec::new, |q| q.iter().filter(|w| w.until_ms > now).collect())
    }

    /// Up to `limit` leases held at the grid's clock, by name after `after`, each with how
    /// many holders wait for it; and the name to continue after, if there are more.
    pub fn leases_page(&self, after: &str, limit: usize) -> (Vec<(&Lease, usize)>, Option<String>) {
        let now = self.now_ms;
        let held = self.leases.held.range::<str, _>((Bound::Excluded(after), Bound::Unbounded));
        let mut out: Vec<(&Lease, usize)> = Vec::new();
        for (_, l) in held.filter(|(_, l)| l.held_at(now)) {
            if out.len() == limit {
                let next = out.last().map(|(l, _)| l.name.clone());
                return (out, next);
            }
            out.push((l, self.lease_waiters(&l.name).len()));
        }
        (out, None)
    }

    /// A schedule by name.
    pub fn schedule(&self, name: &str) -> Option<&super::schedule::Schedule> {
        self.schedules.get(name)
    }

    /// Up to `limit` schedules whose names come after `after`, in name order.
    pub fn schedules_after(&self, after: Option<&str>, limit: usize) -> Vec<&super::schedule::Schedule> {
        self.schedules.iter_after(after).take(limit).collect()
    }

    /// How many schedules there are.
    pub fn schedule_count(&self) -> usize {
        self.schedules.len()
    }

    /// Schedules, how many are paused, and the runs they started and due times they skipped.
    pub fn schedule_totals(&self) -> (usize, usize, u64, u64) {
        self.schedules.iter_after(None).fold((0, 0, 0, 0), |(n, paused, started, skipped), s| {
            (n + 1, paused + usize::from(s.paused), started + s.started, skipped + s.skipped)
        })
    }

    /// How many holders wait in lease queues (ones whose wait ran out, until they are skipped,
    /// too).
    pub fn lease_waiter_count(&self) -> usize {
        self.waiting.ends.len()
    }

    /// How many leases are held at the grid's clock.
    pub fn lease_count(&self) -> usize {
        self.leases.held.values().filter(|l| l.held_at(self.now_ms)).count()
    }

    // ---- tokens ------------------------------------------------------------------------------

    /// The token with id `id`, expired or not.
    pub fn token(&self, id: &str) -> Option<&Token> {
        self.tokens.held.get(id)
    }

    /// Whether `id` is one of the newest revoked ids the grid remembers.
    pub fn token_revoked(&self, id: &str) -> bool {
        self.tokens.revoked.contains(id)
    }

    /// Tokens in id order, from the first id after `after` (all with `None`).
    pub fn tokens_after(&self, after: Option<&str>) -> impl Iterator<Item = &Token> {
        let from = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_owned()));
        self.tokens.held.range::<String, _>((from, Bound::Unbounded)).map(|(_, t)| t)
    }

    /// How many tokens the grid holds.
    pub fn token_count(&self) -> usize {
        self.tokens.held.len()
    }

    // ---- totals and timers --------------------------------------------------------------------

    /// Counts for `/metrics`.
    pub fn work_totals(&self) -> Totals {
        let w = &self.work;
        let assigned = w.sessions.values().map(|s| s.assigned.len()).sum();
        let finished = w.retained.len();
        Totals {
            executions: w.executions.len(),
            pending: w.executions.len().saturating_sub(assigned + finished),
            assigned,
            sessions: w.sessions.len(),
            instances: w.instances.len(),
        }
    }

    /// The earliest time a timer is due (a delayed execution, a deadline, an execution's
    /// lease, a retention, a cursor's timer, an item's age, a lease's expiry), if any: the
    /// leader proposes [`super::Command::Tick`] then.
    pub fn next_timer_ms(&self) -> Option<u64> {
        let w = &self.work;
        [w.delayed.first(), w.deadlines.first(), w.leases.first(), w.retained.first()]
            .into_iter()
            .flatten()
            .map(|(at, _)| *at)
            .chain(self.next_cursor_timer_ms())
            .chain(self.next_item_expiry_ms())
            .chain(self.next_lease_expiry_ms())
            .chain(self.next_wait_end_ms())
            .chain(self.next_schedule_due_ms())
            .min()
    }

    /// A stream by name.
    pub fn stream(&self, name: &str) -> Option<&Stream> {
        self.streams.streams.get(name)
    }

    /// Up to `limit` streams whose names come after `after`, in name order.
    pub fn streams_after(&self, after: Option<&str>, limit: usize) -> Vec<&Stream> {
        let start = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_owned()));
        self.streams.streams.range((start, Bound::Unbounded)).take(limit).map(|(_, s)| s).collect()
    }

    /// Items of a stream from `from` on, at most `limit`, those matching `filter` (checked)
    /// only; and where the next read starts (`None`: this one reached the end).
    pub fn read_items(
        &self,
        stream: &str,
        from: Seq,
        limit: usize,
        filter: Option<&str>,
    ) -> Result<(Vec<&Item>, Option<Seq>), Error> {
        let s = self.stream(stream).ok_or_else(|| Error::UnknownStream { name: stream.to_owned() })?;
        let mut items = Vec::new();
        let mut next = None;
        for (scanned, (seq, item)) in s.items.range(from..).enumerate() {
            if items.len() >= limit || scanned >= MAX_READ_SCAN {
                next = Some(*seq);
                break;
            }
            if filter.is_none_or(|f| filter_matches(f, item.key.as_deref())) {
                items.push(item);
            }
        }
        Ok((items, next))
    }

    /// A listener by id.
    pub fn listener(&self, id: ListenerId) -> Option<&Listener> {
        self.streams.listeners.get(&id)
    }

    /// Every attached listener.
    pub fn listeners(&self) -> impl Iterator<Item = &Listener> {
        self.streams.listeners.values()
    }

    /// How many streams there are, and the bytes of all their items.
    pub fn stream_totals(&self) -> (usize, u64) {
        (self.streams.streams.len(), self.streams.bytes)
    }

    /// The stream a running generator execution feeds.
    pub fn generator_stream(&self, execution: ExecutionId) -> Option<&str> {
        self.streams.generators.get(&execution).map(String::as_str)
    }
}

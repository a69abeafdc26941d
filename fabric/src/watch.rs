//! The watch hub: every node fills it from the entries it applies, so listeners on any node
//! learn of new assignments, revocations, finished executions, stream items, changes of the
//! demand and revoked bearer tokens without polling.
//!
//! ```text
//!   state machine apply ──events──► Hub ──► session streams hosted here (assignments, revokes)
//!      (under the grid's           ├──► waiters on this node (an execution changed)
//!       write lock)                ├──► cursor listeners hosted here (items delivered, the end)
//!                                  ├──► stream readers on this node (a stream changed)
//!                                  ├──► demand watchers on this node (work, sessions,
//!                                  │    instances or listeners changed: one shared signal)
//!                                  └──► long calls opened with a token (a token was revoked:
//!                                       one shared signal, see `auth::Lapse`)
//! ```
//!
//! The state machine publishes while it holds the grid's write lock, so a waiter that
//! registers first and then reads the grid never misses a change. The hub never takes the
//! grid's lock itself; callers must not read the grid while they hold the hub's lock (they
//! cannot: it is private). Every channel is bounded; a session whose stream does not keep up
//! is dropped from the hub, which ends its stream and so the session. Demand watchers share one
//! `tokio::sync::watch` signal: a change is a counter bump, so any number of changes between
//! two looks coalesce into one wake-up and nothing queues. Token revocations are a second such
//! signal: rare, so every call opened with a token looks again at each.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch as signal};

use crate::NodeId;
use crate::grid::execution::{Execution, ExecutionId};
use crate::grid::stream::Item;
use crate::grid::{Event, Grid, ListenerEnd};

/// Room in a session's channel beyond its capacity (for revocations and the close).
pub const SESSION_CHANNEL_SLACK: usize = 64;

/// What a session stream hosted on this node is told.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// Run this execution; complete it with `token`. `generator`: the stream it feeds, if it
    /// is a generator's.
    Assigned { execution: Box<Execution>, token: u64, generator: Option<String> },
    /// Run this call, which the leader holds and has not created yet (an eager call): its
    /// create follows in the log, or a revocation of `token`.
    Eager { execution: Box<Execution>, token: u64 },
    /// Stop the handler of this execution.
    Revoked { execution: ExecutionId, token: u64, reason: String },
    /// The session ended in the grid.
    Closed { reason: String },
    /// The state was replaced by a snapshot: compare with the grid again.
    Reset,
}

/// Room in a listener's channel beyond its window (for the end, and a reset).
pub const LISTENER_CHANNEL_SLACK: usize = 8;

/// What a cursor listener hosted on this node is told.
#[derive(Debug, Clone)]
pub enum ListenerEvent {
    /// This item was delivered to the listener under `token`, for the `count`-th time.
    Item { item: Box<Item>, token: u64, count: u32 },
    /// Nothing more will come.
    End(ListenerEnd),
    /// The state was replaced by a snapshot: compare with the grid again.
    Reset,
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Too many callers wait on this node. Nothing changed.
    #[error("{count} callers already wait for results on this node; the limit is {limit} (max_waiters)")]
    TooManyWaiters { count: usize, limit: usize },
    /// Too many listeners (stream listeners, readers and demand watchers) on this node.
    /// Nothing changed.
    #[error(
        "{count} listeners (of streams, and demand watchers) are attached to this node; the limit is {limit} (max_listeners)"
    )]
    TooManyListeners { count: usize, limit: usize },
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<u64, mpsc::Sender<SessionEvent>>,
    waiters: HashMap<ExecutionId, HashMap<u64, mpsc::Sender<()>>>,
    waiter_count: usize,
    listeners: HashMap<u64, mpsc::Sender<ListenerEvent>>,
    /// Readers per stream name, woken when the stream changes.
    readers: HashMap<String, HashMap<u64, mpsc::Sender<()>>>,
    reader_count: usize,
    /// Registered [`DemandWatch`]es.
    demand_watchers: usize,
}

/// The hub; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    node_id: NodeId,
    max_waiters: usize,
    max_listeners: usize,
    inner: Arc<Mutex<Inner>>,
    next_waiter: Arc<AtomicU64>,
    /// Bumped when an applied entry changed the demand (and on a snapshot install).
    demand: Arc<signal::Sender<u64>>,
    /// Bumped when an applied entry revoked a token (and on a snapshot install).
    revocations: Arc<signal::Sender<u64>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

/// A registered waiter: resolves [`Waiter::changed`] when its execution changes. Dropping it
/// unregisters.
pub struct Waiter {
    hub: Hub,
    execution: ExecutionId,
    id: u64,
    rx: mpsc::Receiver<()>,
}

impl Waiter {
    /// Waits for the next change of the execution (changes coalesce: several may have
    /// happened). Read the grid after it returns.
    pub async fn changed(&mut self) {
        // The sender lives in the hub until this waiter is dropped.
        let _ = self.rx.recv().await;
    }
}

/// A registered stream reader: [`StreamWatch::changed`] resolves when the stream changes
/// (items appended or removed, closed, deleted). Dropping it unregisters.
pub struct StreamWatch {
    hub: Hub,
    stream: String,
    id: u64,
    rx: mpsc::Receiver<()>,
}

impl StreamWatch {
    /// Waits for the next change (changes coalesce). Read the grid after it returns.
    pub async fn changed(&mut self) {
        let _ = self.rx.recv().await;
    }
}

/// A registered demand watcher: [`DemandWatch::changed`] resolves when an applied entry
/// changed executions, sessions, instances or listeners, or a snapshot replaced the grid.
/// Dropping it unregisters.
pub struct DemandWatch {
    hub: Hub,
    rx: signal::Receiver<u64>,
}

impl DemandWatch {
    /// Waits for the next change (changes coalesce: any number since the last call wake it
    /// once). Read the grid after it returns.
    pub async fn changed(&mut self) {
        // The sender lives as long as the hub, which this watch holds.
        let _ = self.rx.changed().await;
    }
}

impl Drop for DemandWatch {
    fn drop(&mut self) {
        self.hub.lock().demand_watchers -= 1;
    }
}

impl Drop for StreamWatch {
    fn drop(&mut self) {
        let mut inner = self.hub.lock();
        if let Some(map) = inner.readers.get_mut(&self.stream) {
            if map.remove(&self.id).is_some() {
                inner.reader_count -= 1;
            }
            if inner.readers.get(&self.stream).is_some_and(HashMap::is_empty) {
                inner.readers.remove(&self.stream);
            }
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut inner = self.hub.lock();
        if let Some(map) = inner.waiters.get_mut(&self.execution) {
            if map.remove(&self.id).is_some() {
                inner.waiter_count -= 1;
            }
            if inner.waiters.get(&self.execution).is_some_and(HashMap::is_empty) {
                inner.waiters.remove(&self.execution);
            }
        }
    }
}

impl Hub {
    /// A hub for node `node_id`, with at most `max_waiters` waiters at once.
    pub fn new(node_id: NodeId, max_waiters: usize) -> Self {
        Self {
            node_id,
            max_waiters,
            max_listeners: usize::MAX,
            inner: Arc::default(),
            next_waiter: Arc::default(),
            demand: Arc::new(signal::channel(0).0),
            revocations: Arc::new(signal::channel(0).0),
        }
    }

    /// The same hub with at most `max_listeners` listeners (cursor listeners and readers).
    pub fn with_max_listeners(mut self, max_listeners: usize) -> Self {
        self.max_listeners = max_listeners;
        self
    }

    fn check_listener_room(&self, inner: &Inner) -> Result<(), Error> {
        let count = inner.listeners.len() + inner.reader_count + inner.demand_watchers;
        if count >= self.max_listeners {
            return Err(Error::TooManyListeners { count, limit: self.max_listeners });
        }
        Ok(())
    }

    /// Registers a cursor listener hosted here under its host `key`; its events arrive on the
    /// returned receiver, which holds `window` + [`LISTENER_CHANNEL_SLACK`].
    pub fn register_listener(&self, key: u64, window: usize) -> Result<mpsc::Receiver<ListenerEvent>, Error> {
        let mut inner = self.lock();
        self.check_listener_room(&inner)?;
        let (tx, rx) = mpsc::channel(window + LISTENER_CHANNEL_SLACK);
        inner.listeners.insert(key, tx);
        Ok(rx)
    }

    /// Forgets a cursor listener.
    pub fn unregister_listener(&self, key: u64) {
        self.lock().listeners.remove(&key);
    }

    /// Whether a cursor listener with host `key` is registered here.
    pub fn has_listener(&self, key: u64) -> bool {
        self.lock().listeners.contains_key(&key)
    }

    /// Registers a reader of `stream`. Register first, then read the grid: a change applied
    /// after the read wakes it.
    pub fn watch_stream(&self, stream: &str) -> Result<StreamWatch, Error> {
        let (tx, rx) = mpsc::channel(1);
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        self.check_listener_room(&inner)?;
        inner.reader_count += 1;
        inner.readers.entry(stream.to_owned()).or_default().insert(id, tx);
        drop(inner);
        Ok(StreamWatch { hub: self.clone(), stream: stream.to_owned(), id, rx })
    }

    /// Registers a demand watcher (counted against `max_listeners`). Register first, then
    /// read the grid: a change applied after the read wakes it.
    pub fn watch_demand(&self) -> Result<DemandWatch, Error> {
        let mut inner = self.lock();
        self.check_listener_room(&inner)?;
        inner.demand_watchers += 1;
        drop(inner);
        Ok(DemandWatch { hub: self.clone(), rx: self.demand.subscribe() })
    }

    /// The revocation signal: its value changes when an applied entry revoked a token, or a
    /// snapshot replaced the grid (which may have revoked some). Register first, then read
    /// the grid: a revoke applied after the read changes it. Costs no registration: a
    /// receiver of one shared value, nothing queued.
    pub fn watch_revocations(&self) -> signal::Receiver<u64> {
        self.revocations.subscribe()
    }

    /// How many demand watchers are registered here.
    pub fn demand_watcher_count(&self) -> usize {
        self.lock().demand_watchers
    }

    /// How many listeners (cursor listeners and readers) are attached here.
    pub fn listener_count(&self) -> usize {
        let inner = self.lock();
        inner.listeners.len() + inner.reader_count
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a session stream hosted here under its host `key`; its events arrive on the
    /// returned receiver, which holds `capacity` + [`SESSION_CHANNEL_SLACK`].
    pub fn register_session(&self, key: u64, capacity: usize) -> mpsc::Receiver<SessionEvent> {
        let (tx, rx) = mpsc::channel(capacity + SESSION_CHANNEL_SLACK);
        self.lock().sessions.insert(key, tx);
        rx
    }

    /// Forgets a session stream.
    pub fn unregister_session(&self, key: u64) {
        self.lock().sessions.remove(&key);
    }

    /// Pushes an eager call to the session stream with host `key` ahead of its create; false if
    /// the stream is gone or full (the caller then creates the call as any other).
    pub fn push_eager(&self, key: u64, execution: Execution, token: u64) -> bool {
        let inner = self.lock();
        let Some(tx) = inner.sessions.get(&key) else { return false };
        tx.try_send(SessionEvent::Eager { execution: Box::new(execution), token }).is_ok()
    }

    /// Tells the session stream with host `key` to drop an eager call that will not be
    /// created under `token`.
    pub fn revoke_eager(&self, key: u64, execution: ExecutionId, token: u64, reason: &str) {
        let mut inner = self.lock();
        send_or_drop(&mut inner, key, SessionEvent::Revoked { execution, token, reason: reason.into() });
    }

    /// Whether a session stream with host `key` is registered here.
    pub fn has_session(&self, key: u64) -> bool {
        self.lock().sessions.contains_key(&key)
    }

    /// Registers interest in `execution`. Register first, then read the grid: a change
    /// applied after the read wakes the waiter.
    pub fn wait(&self, execution: ExecutionId) -> Result<Waiter, Error> {
        let (tx, rx) = mpsc::channel(1);
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        if inner.waiter_count >= self.max_waiters {
            return Err(Error::TooManyWaiters { count: inner.waiter_count, limit: self.max_waiters });
        }
        inner.waiter_count += 1;
        inner.waiters.entry(execution).or_default().insert(id, tx);
        drop(inner);
        Ok(Waiter { hub: self.clone(), execution, id, rx })
    }

    /// How many session streams are registered here.
    pub fn session_count(&self) -> usize {
        self.lock().sessions.len()
    }

    /// How many callers wait now.
    pub fn waiter_count(&self) -> usize {
        self.lock().waiter_count
    }

    /// Delivers the events of applied entries. Called by the state machine with the grid
    /// they were applied to (still under its write lock).
    pub fn publish(&self, grid: &Grid, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        if events.iter().any(changes_demand) {
            self.demand.send_modify(|n| *n = n.wrapping_add(1));
        }
        if events.iter().any(|e| matches!(e, Event::TokenRevoked { .. })) {
            self.revocations.send_modify(|n| *n = n.wrapping_add(1));
        }
        let mut inner = self.lock();
        for event in events {
            match event {
                Event::Changed { execution } => {
                    if let Some(waiters) = inner.waiters.get(&execution) {
                        for tx in waiters.values() {
                            // Full: a wake-up is pending already.
                            let _ = tx.try_send(());
                        }
                    }
                }
                Event::Assigned { host, session, execution, token, pushed: false }
                    if host.node == self.node_id =>
                {
                    // The batch may have moved it on since (closed the session, expired the
                    // lease): push it only while this assignment still stands.
                    let Some(e) = grid.execution(execution) else { continue };
                    if e.lease.is_none_or(|l| l.session != session || l.token != token) {
                        continue;
                    }
                    let generator = grid.generator_stream(execution).map(str::to_owned);
                    let event = SessionEvent::Assigned { execution: Box::new(e.clone()), token, generator };
                    send_or_drop(&mut inner, host.key, event);
                }
                Event::Revoked { host, execution, token, reason, .. } if host.node == self.node_id => {
                    send_or_drop(&mut inner, host.key, SessionEvent::Revoked { execution, token, reason });
                }
                Event::SessionClosed { host, reason, .. } if host.node == self.node_id => {
                    if let Some(tx) = inner.sessions.remove(&host.key) {
                        let _ = tx.try_send(SessionEvent::Closed { reason });
                    }
                }
                Event::StreamChanged { stream } => {
                    if let Some(readers) = inner.readers.get(&stream) {
                        for tx in readers.values() {
                            let _ = tx.try_send(());
                        }
                    }
                }
                Event::Delivered { host, stream, seq, token, count, .. } if host.node == self.node_id => {
                    // Removed later in the same batch (the stream deleted, trimmed): nothing to
                    // push; an explicit-ack delivery comes back after its ack wait anyway.
                    let Some(item) = grid.stream(&stream).and_then(|s| s.items.get(&seq)) else { continue };
                    let event = ListenerEvent::Item { item: Box::new(item.clone()), token, count };
                    let Some(tx) = inner.listeners.get(&host.key) else { continue };
                    if tx.try_send(event).is_err() {
                        tracing::warn!(host_key = host.key, "a listener does not keep up; ending it");
                        inner.listeners.remove(&host.key);
                    }
                }
                Event::ListenerEnded { host, end, .. } if host.node == self.node_id => {
                    if let Some(tx) = inner.listeners.remove(&host.key) {
                        let _ = tx.try_send(ListenerEvent::End(end));
                    }
                }
                _ => {}
            }
        }
    }

    /// The grid was replaced by a snapshot: every waiter, session and watcher looks again.
    pub fn reset(&self) {
        self.demand.send_modify(|n| *n = n.wrapping_add(1));
        self.revocations.send_modify(|n| *n = n.wrapping_add(1));
        let inner = self.lock();
        for waiters in inner.waiters.values() {
            for tx in waiters.values() {
                let _ = tx.try_send(());
            }
        }
        for tx in inner.sessions.values() {
            let _ = tx.try_send(SessionEvent::Reset);
        }
        for tx in inner.listeners.values() {
            let _ = tx.try_send(ListenerEvent::Reset);
        }
        for readers in inner.readers.values() {
            for tx in readers.values() {
                let _ = tx.try_send(());
            }
        }
    }
}

/// Whether an event changes what a demand watcher sees: executions (created, assigned, given
/// back, finished), sessions, instances (their executions change with them) and listeners of
/// generator streams. Deliveries and stream changes do not.
fn changes_demand(event: &Event) -> bool {
    match event {
        Event::Changed { .. }
        | Event::Created { .. }
        | Event::Assigned { .. }
        | Event::Revoked { .. }
        | Event::SessionClosed { .. }
        | Event::ListenerEnded { .. }
        | Event::WorkChanged => true,
        Event::StreamChanged { .. } | Event::Delivered { .. } | Event::TokenRevoked { .. } => false,
    }
}

/// Sends to a session; one that cannot take it (its stream is stuck) is dropped from the hub,
/// which ends its stream.
fn send_or_drop(inner: &mut Inner, key: u64, event: SessionEvent) {
    let Some(tx) = inner.sessions.get(&key) else { return };
    if tx.try_send(event).is_err() {
        tracing::warn!(host_key = key, "a session's stream does not keep up; closing it");
        inner.sessions.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_wake_on_change_and_are_bounded() {
        let hub = Hub::new(1, 2);
        let mut a = hub.wait(7).unwrap();
        let _b = hub.wait(7).unwrap();
        assert!(matches!(hub.wait(8), Err(Error::TooManyWaiters { count: 2, limit: 2 })));
        hub.publish(&Grid::default(), vec![Event::Changed { execution: 7 }, Event::Changed { execution: 7 }]);
        tokio::time::timeout(std::time::Duration::from_secs(1), a.changed()).await.expect("woken");
        drop(a);
        assert_eq!(hub.waiter_count(), 1, "dropping unregisters");
        assert!(hub.wait(8).is_ok());
    }

    /// An assignment that a later command of the same apply moved on (to another session,
    /// with another token) is not pushed: the stream would get a token that is not its own.
    #[tokio::test]
    async fn assignments_that_moved_on_are_not_pushed() {
        use crate::grid::Command;
        use crate::grid::session::{Host, NewSession};
        use crate::grid::test_harness::{new_exec, new_session};
        let session = |key| {
            Command::OpenSession(Box::new(NewSession {
                host: Host { node: 1, key },
                ..new_session(&["w"], 1)
            }))
        };
        let create = Command::CreateExecution(Box::new(new_exec("w", "job")));
        let hub = Hub::new(1, 10);
        let mut a = hub.register_session(1, 4);
        let mut b = hub.register_session(2, 4);
        let mut grid = Grid::default();
        let mut events = Vec::new();
        // One batch: A opens and gets the execution, B opens, A closes and B gets it.
        let close_a = Command::CloseSession { session: 1, reason: "gone".into() };
        grid.apply_batch_with_events(10, &[session(1), create, session(2), close_a], &mut events);
        hub.publish(&grid, events);
        assert!(matches!(a.recv().await, Some(SessionEvent::Closed { .. })), "A only hears it closed");
        let Some(SessionEvent::Assigned { execution, token, .. }) = b.recv().await else {
            panic!("B gets it")
        };
        assert_eq!(Some(token), execution.lease.map(|l| l.token));
    }

    /// Demand watchers count against max_listeners, wake once for any number of changes that
    /// touch the demand (and on a snapshot install), and not for stream traffic.
    #[tokio::test]
    async fn demand_watchers_are_bounded_and_woken_by_work_changes_only() {
        use std::time::Duration;
        let hub = Hub::new(1, 10).with_max_listeners(2);
        let _reader = hub.watch_stream("s").unwrap();
        let mut watch = hub.watch_demand().unwrap();
        let refused = hub.watch_demand().err().expect("the third listener is refused");
        assert!(refused.to_string().contains("max_listeners"), "{refused}");
        assert_eq!(hub.demand_watcher_count(), 1);

        let quiet = |watch: &mut DemandWatch| !watch.rx.has_changed().unwrap_or(false);
        hub.publish(&Grid::default(), vec![Event::StreamChanged { stream: "s".into() }]);
        assert!(quiet(&mut watch), "stream traffic is no demand");
        hub.publish(&Grid::default(), vec![Event::WorkChanged, Event::Changed { execution: 1 }]);
        hub.publish(&Grid::default(), vec![Event::Changed { execution: 2 }]);
        tokio::time::timeout(Duration::from_secs(1), watch.changed()).await.expect("woken");
        assert!(quiet(&mut watch), "three changes, one wake-up");
        hub.reset();
        tokio::time::timeout(Duration::from_secs(1), watch.changed()).await.expect("a snapshot wakes it");

        drop(watch);
        assert_eq!(hub.demand_watcher_count(), 0, "dropping unregisters");
        assert!(hub.watch_demand().is_ok(), "room again");
    }

    /// A revoke bumps the revocation signal (once per batch), a snapshot install too;
    /// other events do not.
    #[tokio::test]
    async fn revocations_bump_their_own_signal() {
        let hub = Hub::new(1, 10);
        let mut rx = hub.watch_revocations();
        hub.publish(&Grid::default(), vec![Event::WorkChanged, Event::StreamChanged { stream: "s".into() }]);
        assert!(!rx.has_changed().unwrap(), "no revoke");
        let revoked = |id: &str| Event::TokenRevoked { id: id.into() };
        hub.publish(&Grid::default(), vec![revoked("a"), revoked("b")]);
        assert!(rx.has_changed().unwrap());
        let seen = *rx.borrow_and_update();
        hub.reset();
        assert!(rx.has_changed().unwrap(), "a snapshot may have revoked tokens");
        assert_ne!(*rx.borrow_and_update(), seen);
    }

    #[tokio::test]
    async fn sessions_of_other_nodes_are_ignored_and_closing_ends_the_channel() {
        use crate::grid::session::Host;
        let hub = Hub::new(1, 10);
        let mut rx = hub.register_session(5, 1);
        let other = Host { node: 2, key: 5 };
        hub.publish(
            &Grid::default(),
            vec![Event::SessionClosed { host: other, session: 1, reason: "x".into() }],
        );
        assert!(rx.try_recv().is_err(), "another node's session");
        let mine = Host { node: 1, key: 5 };
        hub.publish(
            &Grid::default(),
            vec![Event::SessionClosed { host: mine, session: 1, reason: "bye".into() }],
        );
        assert!(matches!(rx.recv().await, Some(SessionEvent::Closed { reason }) if reason == "bye"));
        assert!(rx.recv().await.is_none(), "the hub let go of it");
        assert!(!hub.has_session(5));
    }
}

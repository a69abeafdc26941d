//! The gossip service: foca (SWIM) driven over UDP on the node's listen port number.
//!
//! foca is sans-I/O; this service owns the socket, the timer queue and the foca instance in one
//! loop, and publishes what foca knows as a [`View`] that other subsystems watch:
//!
//! ```text
//!   UDP packet ─► unframe (cluster check) ─► foca.handle_data ─┐
//!   timer due  ─────────────────────────────► foca.handle_timer ┼─► runtime: send / schedule / notify
//!   seeds (while alone, with back-off) ──────► foca.announce    ┘            │
//!   leave command ─► change_identity(leaving) + leave_cluster                └─► View (watch)
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, State, Timer};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::codec::{self, Codec, Refused};
use super::identity::Peer;
use crate::NodeId;

/// Largest UDP datagram a node sends or accepts, frame included (RFC 8085: stay below the MTU).
pub const MAX_PACKET_BYTES: usize = 1400;
/// Most timers foca may have pending; more means a bug, and the oldest are fired early.
const MAX_TIMERS: usize = 4096;
/// First wait before announcing to the seeds again while no peer has answered.
const SEED_RETRY_MIN: Duration = Duration::from_millis(200);
/// Longest wait between announcements to silent seeds.
const SEED_RETRY_MAX: Duration = Duration::from_secs(5);
/// Most seeds a node announces to.
pub const MAX_SEEDS: usize = 64;
/// Gossip members the view keeps at most (foca itself keeps every address it has seen).
const MAX_VIEW_MEMBERS: usize = 1024;
/// At most one "refused gossip from another cluster" warning per this period.
const FOREIGN_LOG_PERIOD: Duration = Duration::from_secs(10);

/// Timing of failure detection. See [`Preset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often each node probes a random member.
    pub probe_period: Duration,
    /// How long a probe waits for a direct answer before asking others to probe indirectly.
    pub probe_rtt: Duration,
    /// How long a suspected member has to refute the suspicion before it is declared down.
    pub suspect_to_down: Duration,
    /// How often a node pushes updates to a few members besides probing.
    pub gossip_period: Duration,
}

/// Named gossip timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// A local network: probe every second, suspicion 3 s. A dead node is declared down in
    /// about 3-5 s; a pause of a second or two is tolerated.
    Lan,
    /// Tests and single-machine clusters: probe every 200 ms, suspicion 800 ms. A dead node is
    /// declared down in about 1-2 s.
    Test,
}

impl Preset {
    /// Parses `lan` or `test`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "lan" => Some(Self::Lan),
            "test" => Some(Self::Test),
            _ => None,
        }
    }

    /// The timings of this preset.
    pub fn timing(self) -> Timing {
        match self {
            Self::Lan => Timing {
                probe_period: Duration::from_millis(1000),
                probe_rtt: Duration::from_millis(400),
                suspect_to_down: Duration::from_millis(3000),
                gossip_period: Duration::from_millis(200),
            },
            Self::Test => Timing {
                probe_period: Duration::from_millis(200),
                probe_rtt: Duration::from_millis(60),
                suspect_to_down: Duration::from_millis(800),
                gossip_period: Duration::from_millis(100),
            },
        }
    }
}

/// How the gossip service runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Packets of other clusters are refused.
    pub cluster: String,
    /// This node's identity.
    pub me: Peer,
    /// HOST:PORT addresses to announce to until a peer answers.
    pub seeds: Vec<String>,
    /// Failure-detection timing.
    pub timing: Timing,
}

impl Options {
    fn foca_config(&self) -> foca::Config {
        let t = self.timing;
        foca::Config {
            probe_period: t.probe_period,
            probe_rtt: t.probe_rtt,
            num_indirect_probes: NonZeroUsize::new(3).expect("non-zero"),
            max_transmissions: NonZeroU8::new(10).expect("non-zero"),
            suspect_to_down_after: t.suspect_to_down,
            // Identities renew (new generation), so remembering old ones costs nothing.
            // Its timers count toward MAX_TIMERS: an hour keeps them few.
            remove_down_after: Some(Duration::from_secs(3600)),
            max_packet_size: NonZeroUsize::new(MAX_PACKET_BYTES - codec::MAX_FRAME_BYTES).expect("non-zero"),
            notify_down_members: true,
            periodic_announce: Some(foca::PeriodicParams {
                frequency: Duration::from_secs(10),
                num_members: NonZeroUsize::new(1).expect("non-zero"),
            }),
            periodic_announce_to_down_members: Some(foca::PeriodicParams {
                frequency: t.probe_period * 5,
                num_members: NonZeroUsize::new(2).expect("non-zero"),
            }),
            periodic_gossip: Some(foca::PeriodicParams {
                frequency: t.gossip_period,
                num_members: NonZeroUsize::new(3).expect("non-zero"),
            }),
        }
    }
}

/// A member's health as this node's gossip sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// Answering probes.
    Alive,
    /// Missed a probe; treated as alive until it refutes or is declared down.
    Suspect,
    /// Declared down by the cluster.
    Down,
    /// Announced a graceful leave.
    Left,
}

impl Health {
    /// The word used in the API and CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Alive => "alive",
            Health::Suspect => "suspect",
            Health::Down => "down",
            Health::Left => "left",
        }
    }

    /// Alive or suspect: still counts as up.
    pub fn is_up(self) -> bool {
        matches!(self, Health::Alive | Health::Suspect)
    }
}

/// One member of the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// Gossip and gRPC address.
    pub addr: SocketAddr,
    /// Health as last seen.
    pub health: Health,
    /// SWIM incarnation.
    pub incarnation: u16,
    /// The identity's generation.
    pub generation: u64,
    /// When the member entered `health` (as this node saw it).
    pub since: Instant,
}

/// What gossip knows, as published to the rest of the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Every node heard of, this one included, by node id.
    pub members: BTreeMap<NodeId, MemberView>,
    /// Set while seeds are configured and no peer has answered yet (or all went quiet).
    pub seeds_silent_since: Option<Instant>,
}

impl View {
    /// Members that are up (alive or suspect), this node included, by id.
    pub fn up(&self) -> impl Iterator<Item = (NodeId, SocketAddr)> + '_ {
        self.members.iter().filter(|(_, m)| m.health.is_up()).map(|(id, m)| (*id, m.addr))
    }
}

/// Gossip traffic counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Datagrams received.
    pub packets_in: AtomicU64,
    /// Datagrams sent.
    pub packets_out: AtomicU64,
    /// Bytes received.
    pub bytes_in: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
    /// Datagrams dropped: not a Weft gossip packet, or foca could not decode it.
    pub dropped_malformed: AtomicU64,
    /// Datagrams dropped: larger than [`MAX_PACKET_BYTES`].
    pub dropped_oversized: AtomicU64,
    /// Datagrams dropped: from another cluster.
    pub dropped_foreign_cluster: AtomicU64,
}

/// A cheap handle to the gossip service.
#[derive(Clone)]
pub struct Handle {
    view: watch::Receiver<View>,
    leave: mpsc::Sender<oneshot::Sender<()>>,
    counters: Arc<Counters>,
    me: NodeId,
}

impl Handle {
    /// The current view.
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// Traffic counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.me
    }

    /// Announces a graceful leave to the cluster and waits (bounded) until it is sent.
    pub async fn leave(&self, wait: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.leave.send(tx).await.is_ok() {
            let _ = tokio::time::timeout(wait, rx).await;
        }
    }
}

/// Why gossip could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The UDP port could not be bound. Nothing started.
    #[error("cannot bind gossip UDP {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// The gossip loop. Create with [`Service::bind`], run with [`Service::run`].
pub struct Service {
    options: Options,
    socket: UdpSocket,
    foca: Foca<Peer, Codec, StdRng, NoCustomBroadcast>,
    runtime: AccumulatingRuntime<Peer>,
    timers: BTreeMap<(Instant, u64), Timer<Peer>>,
    timer_seq: u64,
    view_tx: watch::Sender<View>,
    leave_rx: mpsc::Receiver<oneshot::Sender<()>>,
    counters: Arc<Counters>,
    seed_retry: Duration,
    next_seed_announce: Instant,
    last_foreign_log: Option<Instant>,
}

impl Service {
    /// Binds UDP `bind` and prepares the service; `seed` seeds foca's randomness (tests pass a
    /// fixed one).
    pub async fn bind(options: Options, bind: SocketAddr, seed: u64) -> Result<(Self, Handle), Error> {
        let socket = UdpSocket::bind(bind).await.map_err(|source| Error::Bind { addr: bind, source })?;
        let foca = Foca::new(options.me.clone(), options.foca_config(), StdRng::seed_from_u64(seed), Codec);
        let now = Instant::now();
        let mut members = BTreeMap::new();
        members.insert(
            options.me.id,
            MemberView {
                addr: options.me.addr,
                health: Health::Alive,
                incarnation: 0,
                generation: options.me.generation,
                since: now,
            },
        );
        let view = View { members, seeds_silent_since: (!options.seeds.is_empty()).then_some(now) };
        let (view_tx, view_rx) = watch::channel(view);
        let (leave_tx, leave_rx) = mpsc::channel(1);
        let counters = Arc::new(Counters::default());
        let handle = Handle { view: view_rx, leave: leave_tx, counters: counters.clone(), me: options.me.id };
        let service = Self {
            options,
            socket,
            foca,
            runtime: AccumulatingRuntime::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            view_tx,
            leave_rx,
            counters,
            seed_retry: SEED_RETRY_MIN,
            next_seed_announce: now,
            last_foreign_log: None,
        };
        Ok((service, handle))
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut buf = vec![0u8; 64 * 1024];
        let far = Duration::from_secs(3600);
        loop {
            let next_timer = self.timers.keys().next().map(|(at, _)| *at);
            let timer_at = next_timer.unwrap_or_else(|| Instant::now() + far);
            let seeds_at = if self.wants_seeds() { self.next_seed_announce } else { Instant::now() + far };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(done) = self.leave_rx.recv() => {
                    self.leave();
                    self.flush().await;
                    let _ = done.send(());
                }
                // Timers before packets: a flood of datagrams must not starve failure detection.
                _ = tokio::time::sleep_until(timer_at) => self.fire_due_timers(),
                _ = tokio::time::sleep_until(seeds_at) => self.announce_to_seeds().await,
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => self.receive(&buf[..len], from),
                    Err(e) => tracing::debug!(error = %e, "gossip receive failed"),
                },
            }
            self.flush().await;
        }
    }

    fn wants_seeds(&self) -> bool {
        !self.options.seeds.is_empty() && self.foca.num_members() == 0 && !self.options.me.leaving
    }

    fn receive(&mut self, packet: &[u8], from: SocketAddr) {
        self.counters.packets_in.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_in.fetch_add(packet.len() as u64, Ordering::Relaxed);
        if packet.len() > MAX_PACKET_BYTES {
            self.counters.dropped_oversized.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%from, bytes = packet.len(), "dropped an oversized gossip packet");
            return;
        }
        let payload = match codec::unframe(&self.options.cluster, packet) {
            Ok(payload) => payload,
            Err(Refused::ForeignCluster(cluster)) => {
                self.counters.dropped_foreign_cluster.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                if self.last_foreign_log.is_none_or(|at| now.duration_since(at) >= FOREIGN_LOG_PERIOD) {
                    self.last_foreign_log = Some(now);
                    tracing::warn!(%from, other_cluster = %cluster, cluster = %self.options.cluster,
                        "refused gossip from a node of another cluster");
                }
                return;
            }
            Err(e @ Refused::Malformed(_)) => {
                self.counters.dropped_malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%from, error = %e, "dropped a malformed gossip packet");
                return;
            }
        };
        if let Err(e) = self.foca.handle_data(payload, &mut self.runtime) {
            self.counters.dropped_malformed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%from, error = %e, "foca refused a gossip packet");
        }
    }

    fn fire_due_timers(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            if let Err(e) = self.foca.handle_timer(timer, &mut self.runtime) {
                tracing::debug!(error = %e, "gossip timer failed");
            }
        }
    }

    async fn announce_to_seeds(&mut self) {
        let mut announced = 0;
        for seed in self.options.seeds.iter().take(MAX_SEEDS) {
            let addrs = match tokio::net::lookup_host(seed.as_str()).await {
                Ok(addrs) => addrs,
                Err(e) => {
                    tracing::debug!(seed = %seed, error = %e, "cannot resolve seed");
                    continue;
                }
            };
            for addr in addrs.filter(|a| *a != self.options.me.addr).take(1) {
                if let Err(e) = self.foca.announce(Peer::seed(addr), &mut self.runtime) {
                    tracing::debug!(seed = %seed, error = %e, "cannot announce to seed");
                }
                announced += 1;
            }
        }
        let silent_for = self.view_tx.borrow().seeds_silent_since.map(|s| s.elapsed());
        if announced == 0 && self.seed_retry >= SEED_RETRY_MAX {
            tracing::warn!(seeds = ?self.options.seeds, "no seed resolves to an address; still trying");
        } else if self.seed_retry >= SEED_RETRY_MAX {
            tracing::warn!(seeds = ?self.options.seeds, silent_for_ms = silent_for.map(|d| d.as_millis() as u64),
                "no seed has answered yet; still trying");
        }
        self.next_seed_announce = Instant::now() + self.seed_retry;
        self.seed_retry = (self.seed_retry * 2).min(SEED_RETRY_MAX);
    }

    fn leave(&mut self) {
        if self.options.me.leaving {
            return;
        }
        // foca may have renewed our identity (a rejoin): leave as the current one.
        let leaving = self.foca.identity().leaving();
        tracing::info!(node_id = leaving.id, "leaving the cluster (gossip)");
        if let Err(e) = self.foca.change_identity(leaving.clone(), &mut self.runtime) {
            tracing::warn!(error = %e, "cannot announce the leaving identity");
        }
        if let Err(e) = self.foca.leave_cluster(&mut self.runtime) {
            tracing::warn!(error = %e, "cannot announce the leave");
        }
        self.options.me = leaving;
    }

    /// Sends what foca queued, schedules its timers and republishes the view if it changed.
    async fn flush(&mut self) {
        while let Some((to, data)) = self.runtime.to_send() {
            let packet = codec::frame(&self.options.cluster, &data);
            match self.socket.send_to(&packet, to.addr).await {
                Ok(n) => {
                    self.counters.packets_out.fetch_add(1, Ordering::Relaxed);
                    self.counters.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => tracing::debug!(to = %to.addr, error = %e, "gossip send failed"),
            }
        }
        let now = Instant::now();
        while let Some((after, timer)) = self.runtime.to_schedule() {
            if self.timers.len() >= MAX_TIMERS {
                // Never drop a timer (foca needs every one): fire the oldest now instead.
                if let Some(oldest) = self.timers.pop_first() {
                    let _ = self.foca.handle_timer(oldest.1, &mut self.runtime);
                }
            }
            self.timer_seq += 1;
            self.timers.insert((now + after, self.timer_seq), timer);
        }
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(p) => {
                    tracing::info!(node_id = p.id, addr = %p.addr, "gossip: member up")
                }
                OwnedNotification::MemberDown(p) if p.leaving => {
                    tracing::info!(node_id = p.id, addr = %p.addr, "gossip: member left")
                }
                OwnedNotification::MemberDown(p) => {
                    tracing::warn!(node_id = p.id, addr = %p.addr, "gossip: member declared down")
                }
                OwnedNotification::Rejoin(p) => {
                    tracing::warn!(
                        generation = p.generation,
                        "gossip: this node was declared down; rejoined"
                    );
                    self.options.me = p;
                }
                OwnedNotification::Idle => tracing::info!("gossip: no other member is up"),
                _ => {}
            }
        }
        // Suspicions raise no notification, so the view is rebuilt after every event; it is
        // a few dozen entries, and watchers are woken only when it changed.
        self.publish(now);
        if self.runtime.backlog() > 0 {
            tracing::debug!(backlog = self.runtime.backlog(), "gossip runtime backlog left");
        }
    }

    fn publish(&mut self, now: Instant) {
        let me = self.options.me.clone();
        let has_peers = self.foca.num_members() > 0;
        let seeds = !self.options.seeds.is_empty();
        if has_peers {
            self.seed_retry = SEED_RETRY_MIN;
        }
        self.view_tx.send_if_modified(|view| {
            let before = &*view;
            let mut members: BTreeMap<NodeId, MemberView> = BTreeMap::new();
            let mut add = |id: NodeId, addr, health, incarnation, generation| {
                if members.len() >= MAX_VIEW_MEMBERS && !members.contains_key(&id) {
                    return;
                }
                let since =
                    before.members.get(&id).filter(|old| old.health == health).map_or(now, |old| old.since);
                let entry = MemberView { addr, health, incarnation, generation, since };
                // Of two identities with one id, keep the newest.
                if members.get(&id).is_none_or(|m| m.generation <= generation) {
                    members.insert(id, entry);
                }
            };
            let my_health = if me.leaving { Health::Left } else { Health::Alive };
            add(me.id, me.addr, my_health, 0, me.generation);
            for m in self.foca.iter_membership_state() {
                let p = m.id();
                if p.id == 0 || p.id == me.id {
                    continue;
                }
                add(p.id, p.addr, health_of(p, m.state()), m.incarnation(), p.generation);
            }
            let seeds_silent_since = match (seeds, has_peers) {
                (true, false) => before.seeds_silent_since.or(Some(now)),
                _ => None,
            };
            let next = View { members, seeds_silent_since };
            if next == *before {
                return false;
            }
            *view = next;
            true
        });
    }
}

fn health_of(p: &Peer, state: State) -> Health {
    match state {
        State::Alive => Health::Alive,
        State::Suspect => Health::Suspect,
        State::Down if p.leaving => Health::Left,
        State::Down => Health::Down,
    }
}

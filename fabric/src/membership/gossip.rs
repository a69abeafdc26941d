//! The gossip service: foca (SWIM) driven over UDP on the node's listen port number.
//!
//! foca is sans-I/O; this service owns the socket, the timer queue and the foca instance in one
//! loop, and publishes what foca knows as a [`View`] that other subsystems watch:
//!
//! ```text
//!   UDP packet ─► packet::Auth::open ─► foca.handle_data ─┐
//!     (frame, cluster, MAC / decrypt)                       │
//!   timer due  ────────────────────────► foca.handle_timer ┼─► runtime: send / schedule / notify
//!   seeds (while alone, with back-off) ─► foca.announce    ┘     │ (sealed by packet::Auth)
//!   leave command ─► change_identity(leaving) + leave_cluster    └─► View (watch)
//!   key file changed (checked every second) ─► Auth::set_keys
//! ```
//!
//! A packet refused by [`Auth::open`] (not Weft gossip, another cluster, no MAC where one is
//! required, a MAC or tag no key verifies) is counted by reason in [`Counters`] and never
//! reaches foca; a warning names the sender at most once per [`DROP_LOG_PERIOD`] and reason.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::path::PathBuf;
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

use super::codec::Codec;
use super::identity::Peer;
use super::keys::Keys;
use super::packet::{self, Auth, Refused};
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
/// At most one warning about dropped packets per this period and reason (a flood of forged
/// packets must not flood the log).
pub const DROP_LOG_PERIOD: Duration = Duration::from_secs(10);
/// How often the key file is checked for new keys.
pub const KEY_FILE_CHECK_PERIOD: Duration = Duration::from_secs(1);

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
#[derive(Debug)]
pub struct Options {
    /// Packets of other clusters are refused.
    pub cluster: String,
    /// This node's identity.
    pub me: Peer,
    /// HOST:PORT addresses to announce to until a peer answers.
    pub seeds: Vec<String>,
    /// Failure-detection timing.
    pub timing: Timing,
    /// How packets are authenticated: keys, encryption, unauthenticated packets.
    pub auth: Auth,
    /// The file `auth`'s keys came from: re-read when it changes, so keys rotate without a
    /// restart. A file that no longer parses is refused and the keys in use stay.
    pub key_file: Option<PathBuf>,
    /// Where a key file reload (taken or refused) is noted for the audit trail.
    pub notes: crate::audit_notes::Notes,
}

impl Options {
    pub(crate) fn foca_config(&self) -> foca::Config {
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
            max_packet_size: NonZeroUsize::new(MAX_PACKET_BYTES - packet::MAX_FRAME_BYTES).expect("non-zero"),
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
    /// Datagrams dropped: plain (no MAC) while this node requires the gossip key.
    pub dropped_unauthenticated: AtomicU64,
    /// Datagrams dropped: a MAC or AEAD tag that no gossip key of this node verifies.
    pub dropped_bad_mac: AtomicU64,
    /// Gossip keys in use (0: gossip is not authenticated).
    pub keys: AtomicU64,
    /// Changes of the key file that were refused (the keys in use stayed).
    pub key_reload_failures: AtomicU64,
}

impl Counters {
    fn dropped(&self, refused: &Refused) -> &AtomicU64 {
        match refused {
            Refused::Malformed(_) => &self.dropped_malformed,
            Refused::ForeignCluster(_) => &self.dropped_foreign_cluster,
            Refused::Unauthenticated => &self.dropped_unauthenticated,
            Refused::BadMac => &self.dropped_bad_mac,
        }
    }
}

/// What gossip authentication looks like on this node, for status and metrics (never a key).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthStatus {
    /// What this node sends: `plain`, `mac` or `encrypted`.
    pub sends: &'static str,
    /// The ids of the keys in use (see [`super::keys::Key::id`]), the sending one first.
    pub key_ids: Vec<String>,
}

impl AuthStatus {
    fn of(auth: &Auth) -> Self {
        Self { sends: auth.sends(), key_ids: auth.keys().map(Keys::ids).unwrap_or_default() }
    }
}

/// A cheap handle to the gossip service.
#[derive(Clone)]
pub struct Handle {
    view: watch::Receiver<View>,
    leave: mpsc::Sender<oneshot::Sender<()>>,
    counters: Arc<Counters>,
    auth: watch::Receiver<AuthStatus>,
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

    /// How gossip is authenticated now (the key file may have changed since start).
    pub fn auth(&self) -> AuthStatus {
        self.auth.borrow().clone()
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
    drop_log: DropLog,
    auth_tx: watch::Sender<AuthStatus>,
    next_key_check: Instant,
    /// SHA-256 of what the key file held (or of the error reading it) at the last check.
    key_file_seen: Option<Vec<u8>>,
    scratch: Vec<u8>,
}

/// Rate-limits the warnings about dropped packets: the first of a reason is logged, then at
/// most one per [`DROP_LOG_PERIOD`], saying how many were dropped in between.
#[derive(Default)]
struct DropLog {
    last: BTreeMap<&'static str, (Instant, u64)>,
}

impl DropLog {
    /// Whether to log a drop of `reason` now, and how many went unlogged before it.
    fn admit(&mut self, reason: &'static str, now: Instant) -> Option<u64> {
        match self.last.get_mut(reason) {
            Some((at, unlogged)) if now.duration_since(*at) < DROP_LOG_PERIOD => {
                *unlogged += 1;
                None
            }
            Some((at, unlogged)) => {
                *at = now;
                Some(std::mem::take(unlogged))
            }
            None => {
                self.last.insert(reason, (now, 0));
                Some(0)
            }
        }
    }
}

impl Service {
    /// Binds UDP `bind` and prepares the service; `seed` seeds foca's randomness (tests pass a
    /// fixed one).
    pub async fn bind(options: Options, bind: SocketAddr, seed: u64) -> Result<(Self, Handle), Error> {
        let socket = UdpSocket::bind(bind).await.map_err(|source| Error::Bind { addr: bind, source })?;
        let foca = Foca::new(options.me.clone(), options.foca_config(), StdRng::seed_from_u64(seed), Codec);
        let counters = Arc::new(Counters::default());
        let key_count = options.auth.keys().map_or(0, |k| k.all().len());
        counters.keys.store(key_count as u64, Ordering::Relaxed);
        let (auth_tx, auth_rx) = watch::channel(AuthStatus::of(&options.auth));
        if let Some(keys) = options.auth.keys() {
            tracing::info!(sends = options.auth.sends(), key_ids = ?keys.ids(), "gossip authentication on");
        }
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
        let handle = Handle {
            view: view_rx,
            leave: leave_tx,
            counters: counters.clone(),
            auth: auth_rx,
            me: options.me.id,
        };
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
            drop_log: DropLog::default(),
            auth_tx,
            next_key_check: now + KEY_FILE_CHECK_PERIOD,
            // The first check reads the file again: a change since the config read it is seen.
            key_file_seen: None,
            scratch: Vec::with_capacity(MAX_PACKET_BYTES),
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
            let keys_at =
                if self.options.key_file.is_some() { self.next_key_check } else { Instant::now() + far };
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
                _ = tokio::time::sleep_until(keys_at) => self.check_key_file().await,
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
        let payload = match self.options.auth.open(&self.options.cluster, packet, &mut self.scratch) {
            Ok(payload) => payload,
            Err(refused) => {
                self.counters.dropped(&refused).fetch_add(1, Ordering::Relaxed);
                let reason = match &refused {
                    Refused::Malformed(_) => {
                        tracing::debug!(%from, error = %refused, "dropped a malformed gossip packet");
                        return;
                    }
                    Refused::ForeignCluster(_) => "foreign_cluster",
                    Refused::Unauthenticated => "unauthenticated",
                    Refused::BadMac => "bad_mac",
                };
                if let Some(unlogged) = self.drop_log.admit(reason, Instant::now()) {
                    tracing::warn!(%from, reason, error = %refused, cluster = %self.options.cluster,
                        dropped_since_last_warning = unlogged, "refused a gossip packet");
                }
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

    /// Re-reads the key file if it changed since the last check; a file that does not parse
    /// is refused (once per change) and the keys in use stay.
    async fn check_key_file(&mut self) {
        self.next_key_check = Instant::now() + KEY_FILE_CHECK_PERIOD;
        let Some(path) = self.options.key_file.clone() else { return };
        let read = tokio::task::spawn_blocking(move || super::keys::read_key_file(&path)).await;
        let read = match read {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(error = %e, "gossip key file check failed");
                return;
            }
        };
        let digest = key_file_digest(&read);
        if self.key_file_seen.as_ref() == Some(&digest) {
            return;
        }
        self.key_file_seen = Some(digest);
        let file = self.options.key_file.as_deref().map(|p| p.display().to_string());
        match read.and_then(|text| Keys::parse_file(&text)) {
            // Only comments changed, or the file was written again as it was.
            Ok(keys) if self.options.auth.keys().map(Keys::ids) == Some(keys.ids()) => {}
            Ok(keys) => {
                tracing::info!(file, key_ids = ?keys.ids(), "gossip key file changed: keys reloaded");
                self.counters.keys.store(keys.all().len() as u64, Ordering::Relaxed);
                self.options.notes.record(
                    "config.reload",
                    format!("gossip key file {}: key ids {:?}", file.as_deref().unwrap_or("?"), keys.ids()),
                    "ok".into(),
                );
                self.options.auth.set_keys(keys);
                self.auth_tx.send_replace(AuthStatus::of(&self.options.auth));
            }
            Err(e) => {
                self.counters.key_reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(file, error = %e, "gossip key file changed but is refused; the keys in use stay");
                self.options.notes.record(
                    "config.reload",
                    format!("gossip key file {}", file.as_deref().unwrap_or("?")),
                    format!("refused: {e}"),
                );
            }
        }
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
            let packet = self.options.auth.seal(&self.options.cluster, &data);
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

/// A digest of what reading the key file gave (its text, or the error), so a change is seen
/// without keeping a copy of the keys.
fn key_file_digest(read: &Result<String, super::keys::Error>) -> Vec<u8> {
    let digest = |bytes: &[u8]| ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().to_vec();
    match read {
        Ok(text) => digest(text.as_bytes()),
        Err(e) => digest(e.to_string().as_bytes()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::keys::{Keys, generate};
    use crate::membership::packet::{Unauthenticated, frame_plain};

    const PATIENCE: Duration = Duration::from_secs(10);

    /// A gossip service of cluster "c" on a free 127.0.0.1 port, running until the token fires.
    async fn start(auth: Auth, key_file: Option<PathBuf>) -> (Handle, SocketAddr, CancellationToken) {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let options = Options {
            cluster: "c".into(),
            me: Peer { id: 1, addr, generation: 1, leaving: false },
            seeds: Vec::new(),
            timing: Preset::Test.timing(),
            auth,
            key_file,
            notes: crate::audit_notes::Notes::none(),
        };
        let (service, handle) = Service::bind(options, addr, 1).await.unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(service.run(shutdown.clone()));
        (handle, addr, shutdown)
    }

    fn keyed(keys: &str) -> Auth {
        Auth::new(Keys::parse_list(keys).unwrap(), false, Unauthenticated::Refuse)
    }

    async fn wait_until(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !check() {
            assert!(Instant::now() < deadline, "not within {PATIENCE:?}: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn refused_packets_are_counted_by_reason_and_never_reach_foca() {
        let key = generate();
        let (handle, addr, shutdown) = start(keyed(&key), None).await;
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Garbage for foca: if a packet's payload reached foca, it would count as malformed.
        let garbage = b"\xff\xff\xff\xff";
        let good = keyed(&key).seal("c", garbage);
        let mut tampered = good.clone();
        tampered[6] ^= 0x20;
        let packets: [(&str, Vec<u8>); 6] = [
            ("valid MAC, garbage payload: reaches foca, which refuses it", good.clone()),
            ("one byte changed", tampered),
            ("cut short", good[..good.len() - 1].to_vec()),
            ("another key", keyed(&generate()).seal("c", garbage)),
            ("no MAC", frame_plain("c", garbage)),
            ("another cluster", keyed(&key).seal("d", garbage)),
        ];
        for (_, packet) in &packets {
            sock.send_to(packet, addr).await.unwrap();
        }
        let c = handle.counters();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        wait_until("every packet received", || load(&c.packets_in) == packets.len() as u64).await;
        wait_until("every packet counted", || {
            load(&c.dropped_malformed)
                + load(&c.dropped_bad_mac)
                + load(&c.dropped_unauthenticated)
                + load(&c.dropped_foreign_cluster)
                == packets.len() as u64
        })
        .await;
        let counted = [
            ("malformed", load(&c.dropped_malformed)),
            ("bad_mac", load(&c.dropped_bad_mac)),
            ("unauthenticated", load(&c.dropped_unauthenticated)),
            ("foreign_cluster", load(&c.dropped_foreign_cluster)),
        ];
        let expected = [("malformed", 1), ("bad_mac", 3), ("unauthenticated", 1), ("foreign_cluster", 1)];
        assert_eq!(counted, expected, "only the authenticated packet reached foca");
        assert_eq!(handle.view().members.len(), 1, "nobody joined");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_changed_key_file_is_reloaded_and_a_broken_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gossip.keys");
        let (k1, k2) = (generate(), generate());
        let id = |k: &str| Keys::parse_list(k).unwrap().sender().id();
        std::fs::write(&file, format!("{k1}\n")).unwrap();
        let auth = Auth::new(Keys::read_file(&file).unwrap(), false, Unauthenticated::Refuse);
        let (handle, addr, shutdown) = start(auth, Some(file.clone())).await;
        assert_eq!(handle.auth().key_ids, vec![id(&k1)]);

        std::fs::write(&file, format!("{k2}\n{k1}\n")).unwrap();
        wait_until("the new keys are in use", || handle.auth().key_ids == vec![id(&k2), id(&k1)]).await;
        assert_eq!(handle.counters().keys.load(Ordering::Relaxed), 2);

        std::fs::write(&file, format!("{k2}\nshort\n")).unwrap();
        wait_until("the broken file is refused", || {
            handle.counters().key_reload_failures.load(Ordering::Relaxed) == 1
        })
        .await;
        assert_eq!(handle.auth().key_ids, vec![id(&k2), id(&k1)], "the keys in use stay");
        tokio::time::sleep(KEY_FILE_CHECK_PERIOD * 2).await;
        assert_eq!(
            handle.counters().key_reload_failures.load(Ordering::Relaxed),
            1,
            "an unchanged broken file is refused once"
        );

        tracing::info!("the reloaded keys are the ones checked: k1 still verifies, a third key does not");
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.send_to(&keyed(&k1).seal("c", b"\xff"), addr).await.unwrap();
        sock.send_to(&keyed(&generate()).seal("c", b"\xff"), addr).await.unwrap();
        let c = handle.counters();
        wait_until("both counted", || {
            c.dropped_malformed.load(Ordering::Relaxed) == 1 && c.dropped_bad_mac.load(Ordering::Relaxed) == 1
        })
        .await;
        shutdown.cancel();
    }
}

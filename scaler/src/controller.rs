//! The controller: the scaler's loop. It holds (or waits for) the group's lease, adopts what
//! a predecessor left, and turns demand into starts and stops, recording each intent in the
//! grid, fenced by the lease, before it acts.
//!
//! ```text
//!        ┌──────────── standby ◄──────────── lease lost / refused (processes kept) ─┐
//!        │ acquire every ttl/3                                                     │
//!        ▼ granted                                                                 │
//!      adopt: intents (grid) × backend.find()                                      │
//!        recorded + found ─► adopt   found only ─► adopt + record                  │
//!        recorded only ─► session, starting or other host? keep (remote) until  │
//!          unseen for its start timeout : delete record                            │
//!        ▼                                                                         │
//!      active: renew every ttl/3 ──────────────────────────────────────────────────┘
//!        on demand / exit / config / tick: sessions ─► running; start timeouts;
//!        plan per agent ─► stop (intent stopping, TERM … KILL), restart, start
//!        (intent starting ─► spawn ─► intent with handle ─► session ─► intent running)
//!        crash ─► back-off per slot ─► waiting ─► restart; status published on change
//! ```
//!
//! Nothing is started or stopped unless the lease is held by this scaler's local reckoning
//! (renewed less than a ttl ago, less a margin) and the fenced intent write that comes first
//! was accepted: a scaler that paused past its lease cannot act on a stale view.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::backend::{
    self, AGENT_ENV, Backend, Exited, Found, GROUP_ENV, INSTANCE_ENV, Launch, REPLICA_ENV, ReplicaId,
};
use crate::backoff::{Backoff, Failure};
use crate::clock::Clock;
use crate::config::{AgentConfig, BackendKind, Config, Mode};
use crate::fabric::{AgentDemand, Demand, DemandWatch, Error as FabricError, Fabric, Grant};
use crate::intent::{self, Intent};
use crate::metrics::Metrics;
use crate::plan::{self, Phase};
use crate::status::{self, AgentStatus, CrashLoop, ReplicaStatus, Status};

/// How often the controller looks at time-driven work (start timeouts, back-offs ending,
/// idle scale-down) when nothing else happens.
pub const TICK: Duration = Duration::from_millis(250);
/// How often an active scaler looks for unrecorded replicas of its group (a predecessor
/// killed between a spawn and its record).
pub const ORPHAN_SCAN_INTERVAL: Duration = Duration::from_secs(5);
/// Exits that may wait to be handled.
pub const MAX_PENDING_EXITS: usize = 1024;
/// How long a stopping scaler waits, past the longest drain grace, for its replicas to exit.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(5);
/// The first and the longest wait before adoption is tried again after it failed (doubling).
const ADOPT_RETRY_INITIAL_MS: u64 = 500;
const ADOPT_RETRY_CAP_MS: u64 = 10_000;

/// Why adoption could not be done (nothing was adopted or forgotten).
#[derive(Debug, thiserror::Error)]
enum AdoptError {
    /// The grid refused or did not answer.
    #[error(transparent)]
    Fabric(#[from] FabricError),
    /// A backend could not look for running replicas.
    #[error("the {} backend cannot look for running replicas: {source}", kind.as_str())]
    Backend {
        /// The backend.
        kind: BackendKind,
        /// What it said.
        source: backend::Error,
    },
}

/// How often a replica that cannot be stopped here (remote) is warned about, at most.
const CANNOT_STOP_WARN_INTERVAL: Duration = Duration::from_secs(60);
/// The start timeout for a replica of an agent no longer configured.
const DEFAULT_START_TIMEOUT_MS: u64 = 30_000;

/// A replica the controller knows.
#[derive(Debug, Clone)]
struct Replica {
    agent: String,
    instance: Option<String>,
    slot: Option<u32>,
    backend: BackendKind,
    phase: Phase,
    handle: String,
    started_at_ms: u64,
    /// Its session: id and executions held.
    session: Option<(u64, u32)>,
    running_since_ms: Option<u64>,
    /// Stopped because it opened no session in time: its exit is a failed start.
    timed_out: bool,
    /// When it timed out: the agent its session served instead of its own.
    serves_other: Option<String>,
    /// Not on this host (or not visible to the backend): known only by its session, or by
    /// its record while it may still be starting or its worker reconnecting.
    remote: bool,
    /// When it was last known alive (its session seen, its recorded start, its adoption): a
    /// remote replica unseen for its agent's start timeout is gone.
    seen_ms: u64,
    /// When a stop of it (remote) was last refused with a warning.
    warned_ms: Option<u64>,
    /// What its intent says now (`None`: no intent recorded).
    recorded: Option<intent::Phase>,
}

/// An agent's state beyond its replicas.
#[derive(Debug, Default)]
struct AgentState {
    memory: plan::Memory,
    /// Back-off per slot: `pool/N` or `instance/ID`.
    backoff: BTreeMap<String, Backoff>,
    /// Start times within the rate window (at most `max_starts_per_interval`).
    starts: VecDeque<u64>,
    desired: u32,
    last_error: Option<String>,
}

fn slot_key(slot: Option<u32>, instance: Option<&str>) -> String {
    match (slot, instance) {
        (_, Some(i)) => format!("instance/{i}"),
        (Some(s), None) => format!("pool/{s}"),
        (None, None) => "pool/?".into(),
    }
}

/// The controller's settings that do not come from the configuration file.
#[derive(Debug, Clone)]
pub struct Options {
    /// The lease holder name: `<host>-<pid>-<random>`.
    pub holder: String,
    /// This host's name (recorded in intents).
    pub host: String,
    /// The endpoints replicas are given (`WEFT_ENDPOINT`).
    pub endpoints: Vec<String>,
    /// TLS settings replicas are given (`WEFT_TLS_CA`, ...) unless their agent's `env` sets
    /// them.
    pub tls_env: Vec<(String, String)>,
}

/// The controller: see the module docs.
pub struct Controller<F: Fabric> {
    fabric: F,
    backends: BTreeMap<BackendKind, Backend>,
    clock: Clock,
    options: Options,
    metrics: Metrics,
    config: Arc<Config>,
    configs: watch::Receiver<Arc<Config>>,
    exits: mpsc::Receiver<Exited>,
    grant: Option<Grant>,
    /// When the last successful acquire or renew was sent (local clock).
    lease_sent_at_ms: u64,
    adopted: bool,
    /// When adoption may be tried again after a failure, and the delay it waited.
    adopt_retry_at_ms: u64,
    adopt_retry_ms: u64,
    last_orphan_scan_ms: u64,
    replicas: BTreeMap<ReplicaId, Replica>,
    agents: BTreeMap<String, AgentState>,
    demand: Option<Demand>,
    published: Option<Status>,
    published_at_ms: u64,
}

impl<F: Fabric> Controller<F> {
    /// A controller over `fabric` and `backends`, whose exits arrive on `exits`.
    pub fn new(
        fabric: F,
        backends: BTreeMap<BackendKind, Backend>,
        exits: mpsc::Receiver<Exited>,
        configs: watch::Receiver<Arc<Config>>,
        clock: Clock,
        options: Options,
        metrics: Metrics,
    ) -> Self {
        let config = configs.borrow().clone();
        Self {
            fabric,
            backends,
            clock,
            options,
            metrics,
            config,
            configs,
            exits,
            grant: None,
            lease_sent_at_ms: 0,
            adopted: false,
            adopt_retry_at_ms: 0,
            adopt_retry_ms: 0,
            last_orphan_scan_ms: 0,
            replicas: BTreeMap::new(),
            agents: BTreeMap::new(),
            demand: None,
            published: None,
            published_at_ms: 0,
        }
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn ttl(&self) -> Duration {
        self.config.lease_ttl()
    }

    /// Whether the lease is held by this scaler's own reckoning: granted, and the last
    /// successful renewal was sent less than a ttl ago, less a tenth for clock drift.
    fn lease_valid(&self) -> bool {
        let ttl = self.config.lease_ttl_ms;
        self.grant.is_some() && self.now() < self.lease_sent_at_ms + ttl - ttl / 10
    }

    /// Runs until `shutdown`, then stops the replicas (unless told to leave them running)
    /// and releases the lease. Ends with the error when the fabric refuses the scaler's
    /// credentials ([`FabricError::Credentials`]: a revoked or expired token, TLS required):
    /// no retry can help, and a supervisor should see the scaler fail. It then leaves the
    /// replicas running: it can no longer record what it does (every action is recorded in
    /// its intents first), and a successor with valid credentials adopts them once the lease
    /// expires.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), FabricError> {
        let (demand_tx, mut demand_rx) = watch::channel::<Option<Demand>>(None);
        let demand_tx = Arc::new(demand_tx);
        let mut agents: Vec<String> = self.config.agents.keys().cloned().collect();
        let mut watcher = spawn_watch(&self.fabric, agents.clone(), demand_tx.clone());
        let mut lease_tick = tokio::time::interval(self.ttl() / 3);
        lease_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut refused = None;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                ended = &mut watcher => {
                    match ended {
                        Ok(e) => {
                            tracing::error!(error = %e, "the fabric refuses this scaler's credentials; stopping");
                            refused = Some(e);
                            break;
                        }
                        // It panicked: watch again.
                        Err(e) => {
                            tracing::error!(error = %e, "the demand watch failed; watching again");
                            watcher = spawn_watch(&self.fabric, agents.clone(), demand_tx.clone());
                        }
                    }
                }
                _ = lease_tick.tick() => self.on_lease_tick().await,
                Some(exit) = self.exits.recv() => {
                    self.on_exit(exit).await;
                    self.act().await;
                }
                Ok(()) = demand_rx.changed() => {
                    self.demand = demand_rx.borrow_and_update().clone();
                    self.act().await;
                }
                Ok(()) = self.configs.changed() => {
                    let config = self.configs.borrow_and_update().clone();
                    let names: Vec<String> = config.agents.keys().cloned().collect();
                    if names != agents {
                        agents = names;
                        watcher.abort();
                        watcher = spawn_watch(&self.fabric, agents.clone(), demand_tx.clone());
                    }
                    tracing::info!(agents = config.agents.len(), "configuration applied");
                    self.config = config;
                    self.act().await;
                }
                _ = tick.tick() => self.act().await,
            }
        }
        watcher.abort();
        match refused {
            None => {
                self.shutdown().await;
                Ok(())
            }
            Some(e) => {
                tracing::warn!(
                    replicas = self.replicas.len(),
                    "leaving the replicas running for a successor; the lease expires on its own"
                );
                self.metrics.set_active(false);
                Err(e)
            }
        }
    }

    async fn on_lease_tick(&mut self) {
        let ttl = self.ttl();
        let sent = self.now();
        match self.grant.clone() {
            Some(grant) => match self.fabric.renew(grant.token, ttl).await {
                Ok(g) => {
                    self.grant = Some(g);
                    self.lease_sent_at_ms = sent;
                }
                Err(FabricError::Lease(reason)) => self.lose(&reason),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the lease");
                    if !self.lease_valid() {
                        self.lose("not renewed within its ttl");
                    }
                }
            },
            None => match self.fabric.acquire(&self.options.holder, ttl).await {
                Ok(g) => {
                    tracing::info!(holder = %g.holder, token = g.token, "lease acquired: this scaler is active");
                    self.grant = Some(g);
                    self.lease_sent_at_ms = sent;
                    self.adopted = false;
                    self.metrics.set_active(true);
                    self.act().await;
                }
                Err(FabricError::Lease(reason)) => tracing::debug!(%reason, "standing by"),
                Err(e) => tracing::warn!(error = %e, "cannot ask for the lease"),
            },
        }
    }

    /// The lease is gone: stop acting at once. The processes keep running for whoever
    /// holds the lease next (this scaler too, if it takes it again: it adopts them).
    fn lose(&mut self, reason: &str) {
        if self.grant.take().is_some() {
            tracing::warn!(%reason, "lease lost: standing by, replicas left running for the successor");
        }
        self.adopted = false;
        self.replicas.clear();
        // Back-off and the start rate are this process's memory of failures: a lease that
        // lapses and comes back must not reset them, or a flapping lease would restart crash
        // loops at once. Slots that are gone by then are pruned as usual.
        for state in self.agents.values_mut() {
            *state = AgentState {
                backoff: std::mem::take(&mut state.backoff),
                starts: std::mem::take(&mut state.starts),
                ..AgentState::default()
            };
        }
        self.published = None;
        self.metrics.set_active(false);
    }

    /// A fabric error from a fenced write: a refusal means the lease is gone.
    fn fabric_failed(&mut self, agent: &str, what: &str, e: FabricError) {
        match e {
            FabricError::Lease(reason) => self.lose(&reason),
            e => {
                tracing::warn!(agent, error = %e, "{what}");
                self.agents.entry(agent.to_owned()).or_default().last_error = Some(format!("{what}: {e}"));
            }
        }
    }

    fn demand_of(&self, agent: &str) -> AgentDemand {
        self.demand
            .as_ref()
            .and_then(|d| d.agents.iter().find(|a| a.agent == agent).cloned())
            .unwrap_or_else(|| crate::fabric::no_demand(agent))
    }

    fn session_named(&self, agent: &str, name: &str) -> Option<(u64, u32)> {
        let demand = self.demand.as_ref()?;
        let found = |a: &AgentDemand| a.sessions.iter().find(|s| s.name == name).map(|s| (s.id, s.assigned));
        if let Some(s) = demand.agents.iter().filter(|a| a.agent == agent).find_map(found) {
            return Some(s);
        }
        // A configured agent's replica counts only by a session that serves that agent: one
        // that serves another (a command that runs the wrong agent) is no start at all, and
        // times out as a failed start naming it. A stale intent of an agent no longer
        // configured matches any agent's list.
        if self.config.agents.contains_key(agent) {
            return None;
        }
        demand.agents.iter().find_map(found)
    }

    /// The agent a session named `name` serves, when it is not `agent`.
    fn serves_other(&self, agent: &str, name: &str) -> Option<String> {
        let demand = self.demand.as_ref()?;
        demand
            .agents
            .iter()
            .find(|a| a.agent != agent && a.sessions.iter().any(|s| s.name == name))
            .map(|a| a.agent.clone())
    }

    /// Adopts what the grid records and the backends find (see the module docs).
    async fn adopt(&mut self) -> Result<(), AdoptError> {
        let Some(fence) = self.grant.as_ref().map(Grant::fence) else { return Ok(()) };
        let intents = self.fabric.list_intents().await?;
        let mut found: BTreeMap<ReplicaId, (BackendKind, Found)> = BTreeMap::new();
        for (kind, backend) in &self.backends {
            match backend.find().await {
                Ok(list) => found.extend(list.into_iter().map(|f| (f.replica.clone(), (*kind, f)))),
                // Without the list every recorded replica of it would look gone and be
                // replaced: adoption waits until a backend that matters answers. One that no
                // agent uses and no intent names (the Docker backend of a scaler of processes,
                // with no engine running) is skipped: whatever unrecorded it runs is adopted
                // by the orphan scan once it answers.
                Err(source) => {
                    let used = self.config.agents.values().any(|a| a.backend == *kind)
                        || intents.iter().any(|(_, i)| i.backend == *kind);
                    if used {
                        return Err(AdoptError::Backend { kind: *kind, source });
                    }
                    tracing::debug!(backend = ?kind, error = %source, "an unused backend cannot look; adopting without it");
                }
            }
        }
        let now = self.now();
        let recorded: BTreeSet<ReplicaId> = intents.iter().map(|(id, _)| id.clone()).collect();
        for (id, intent) in intents {
            let session = self.session_named(&intent.agent, &id);
            let mut replica = Replica {
                agent: intent.agent.clone(),
                instance: intent.instance.clone(),
                slot: intent.slot,
                backend: intent.backend,
                phase: match intent.phase {
                    intent::Phase::Starting => Phase::Starting,
                    intent::Phase::Running => Phase::Running,
                    intent::Phase::Stopping => Phase::Stopping,
                },
                handle: intent.handle.clone(),
                started_at_ms: intent.started_at_ms,
                session,
                running_since_ms: session.map(|_| now),
                timed_out: false,
                serves_other: None,
                remote: false,
                seen_ms: now,
                warned_ms: None,
                recorded: Some(intent.phase),
            };
            if let Some((kind, f)) = found.get(&id) {
                let backend = &self.backends[kind];
                if let Err(e) = backend.adopt(f).await {
                    tracing::warn!(replica = %id, error = %e, "cannot adopt a recorded replica");
                    continue;
                }
                tracing::info!(replica = %id, agent = %intent.agent, handle = %f.handle, "adopted");
                replica.handle = f.handle.clone();
                if intent.handle != f.handle {
                    let updated = Intent { handle: f.handle.clone(), ..intent.clone() };
                    self.fabric.put_intent(&fence, &id, &updated).await?;
                }
                let stopping = replica.phase == Phase::Stopping;
                self.replicas.insert(id.clone(), replica);
                if stopping {
                    let grace = self.grace(&intent.agent);
                    let _ = backend.stop(&id, grace).await;
                }
            } else if session.is_some()
                || intent.phase == intent::Phase::Starting
                || intent.host != self.options.host
            {
                // Alive where this scaler cannot see it (another host), or maybe: a start
                // whose process is not seen yet, a worker reconnecting after a node failed.
                // It counts (towards max) until it has been unseen for its start timeout:
                // a start since its recorded start, anything else since now.
                replica.remote = true;
                if session.is_none() && intent.phase == intent::Phase::Starting {
                    replica.seen_ms = intent.started_at_ms;
                }
                if self.unseen_too_long(&replica, now) {
                    tracing::info!(replica = %id, agent = %intent.agent, phase = ?intent.phase, "recorded replica never showed up; removing its record");
                    self.fabric.delete_intent(&fence, &id).await?;
                    continue;
                }
                tracing::info!(replica = %id, agent = %intent.agent, host = %intent.host, session = session.is_some(), "recorded replica is not visible here; counted as remote");
                self.replicas.insert(id.clone(), replica);
            } else {
                tracing::info!(replica = %id, agent = %intent.agent, phase = ?intent.phase, "recorded replica is gone; removing its record");
                self.fabric.delete_intent(&fence, &id).await?;
            }
        }
        for (id, (kind, f)) in found {
            if recorded.contains(&id) {
                continue;
            }
            self.adopt_unrecorded(kind, f).await?;
        }
        self.adopted = true;
        self.last_orphan_scan_ms = now;
        Ok(())
    }

    /// A replica of this group runs but nothing records it (its scaler was killed between
    /// the spawn and the record, or it is this scaler's own from before it lost the lease):
    /// adopt it and record it.
    async fn adopt_unrecorded(&mut self, kind: BackendKind, f: Found) -> Result<(), FabricError> {
        let Some(fence) = self.grant.as_ref().map(Grant::fence) else { return Ok(()) };
        if let Some(r) = self.replicas.get(&f.replica) {
            // Counted as remote (recorded, not seen) and now visible here: take charge of it.
            if r.remote && r.backend == kind {
                if let Err(e) = self.backends[&kind].adopt(&f).await {
                    tracing::warn!(replica = %f.replica, error = %e, "cannot adopt a recorded replica");
                    return Ok(());
                }
                let now = self.now();
                let phase = r.recorded.unwrap_or(intent::Phase::Starting);
                if let Some(r) = self.replicas.get_mut(&f.replica) {
                    r.remote = false;
                    r.handle = f.handle.clone();
                    r.seen_ms = now;
                }
                tracing::info!(replica = %f.replica, agent = %f.agent, handle = %f.handle, "a recorded replica showed up here: adopted");
                self.record(&f.replica, phase).await;
            }
            return Ok(());
        }
        if let Err(e) = self.backends[&kind].adopt(&f).await {
            tracing::warn!(replica = %f.replica, error = %e, "cannot adopt an unrecorded replica");
            return Ok(());
        }
        let now = self.now();
        let session = self.session_named(&f.agent, &f.replica);
        let slot = if f.instance.is_none() { Some(self.free_slot(&f.agent)) } else { None };
        let phase = if session.is_some() { intent::Phase::Running } else { intent::Phase::Starting };
        let intent = Intent {
            agent: f.agent.clone(),
            instance: f.instance.clone(),
            backend: kind,
            handle: f.handle.clone(),
            host: self.options.host.clone(),
            phase,
            started_at_ms: now,
            slot,
        };
        self.fabric.put_intent(&fence, &f.replica, &intent).await?;
        tracing::info!(replica = %f.replica, agent = %f.agent, handle = %f.handle, "adopted an unrecorded replica");
        self.replicas.insert(
            f.replica.clone(),
            Replica {
                agent: f.agent,
                instance: f.instance,
                slot,
                backend: kind,
                phase: if session.is_some() { Phase::Running } else { Phase::Starting },
                handle: f.handle,
                started_at_ms: now,
                session,
                running_since_ms: session.map(|_| now),
                timed_out: false,
                serves_other: None,
                remote: false,
                seen_ms: now,
                warned_ms: None,
                recorded: Some(phase),
            },
        );
        Ok(())
    }

    /// Whether a remote replica has been unseen (no session) for its agent's start timeout.
    fn unseen_too_long(&self, r: &Replica, now: u64) -> bool {
        let timeout =
            self.config.agents.get(&r.agent).map_or(DEFAULT_START_TIMEOUT_MS, |a| a.start_timeout_ms);
        r.session.is_none() && now.saturating_sub(r.seen_ms) >= timeout
    }

    fn grace(&self, agent: &str) -> Duration {
        Duration::from_millis(self.config.agents.get(agent).map_or(15_000, |a| a.drain_grace_ms))
    }

    /// The lowest pool slot of `agent` that no replica (waiting ones included) holds.
    fn free_slot(&self, agent: &str) -> u32 {
        let held: BTreeSet<u32> = self
            .replicas
            .values()
            .filter(|r| r.agent == agent && r.instance.is_none())
            .filter_map(|r| r.slot)
            .collect();
        (0..).find(|s| !held.contains(s)).unwrap_or(0)
    }

    /// Does what the demand asks, if this scaler is active.
    async fn act(&mut self) {
        if !self.lease_valid() || self.demand.is_none() {
            return;
        }
        if !self.adopted {
            if self.now() < self.adopt_retry_at_ms {
                return;
            }
            if let Err(e) = self.adopt().await {
                match e {
                    AdoptError::Fabric(FabricError::Lease(reason)) => self.lose(&reason),
                    e => {
                        self.adopt_retry_ms =
                            (self.adopt_retry_ms * 2).clamp(ADOPT_RETRY_INITIAL_MS, ADOPT_RETRY_CAP_MS);
                        self.adopt_retry_at_ms = self.now() + self.adopt_retry_ms;
                        tracing::warn!(error = %e, retry_in_ms = self.adopt_retry_ms, "cannot adopt yet; acting on nothing until adoption succeeds");
                    }
                }
                return;
            }
            self.adopt_retry_ms = 0;
            self.adopt_retry_at_ms = 0;
        } else if self.now().saturating_sub(self.last_orphan_scan_ms)
            >= ORPHAN_SCAN_INTERVAL.as_millis() as u64
        {
            self.last_orphan_scan_ms = self.now();
            let mut orphans = Vec::new();
            for (kind, backend) in &self.backends {
                if let Ok(found) = backend.find().await {
                    orphans.extend(
                        found
                            .into_iter()
                            .filter(|f| self.replicas.get(&f.replica).is_none_or(|r| r.remote))
                            .map(|f| (*kind, f)),
                    );
                }
            }
            for (kind, f) in orphans {
                if let Err(e) = self.adopt_unrecorded(kind, f).await {
                    self.fabric_failed("", "cannot record an adopted replica", e);
                    return;
                }
            }
        }
        self.observe_sessions().await;
        self.check_start_timeouts().await;
        let names: Vec<String> = self.config.agents.keys().cloned().collect();
        for agent in names {
            if !self.lease_valid() {
                return;
            }
            self.act_on(&agent).await;
        }
        // The state of agents no longer configured goes with their last replica.
        let replicas = &self.replicas;
        let configured = &self.config.agents;
        self.agents.retain(|a, _| configured.contains_key(a) || replicas.values().any(|r| &r.agent == a));
        // Replicas of agents no longer configured go.
        let orphaned: Vec<ReplicaId> = self
            .replicas
            .iter()
            .filter(|(_, r)| !self.config.agents.contains_key(&r.agent) && r.phase != Phase::Stopping)
            .map(|(id, _)| id.clone())
            .collect();
        for id in orphaned {
            self.stop_replica(&id).await;
        }
        self.publish().await;
    }

    /// Matches sessions to replicas by name: a replica whose session opened is running.
    async fn observe_sessions(&mut self) {
        let now = self.now();
        let ids: Vec<ReplicaId> = self.replicas.keys().cloned().collect();
        for id in ids {
            let Some(r) = self.replicas.get(&id) else { continue };
            let session = self.session_named(&r.agent, &id);
            let (agent, phase, remote) = (r.agent.clone(), r.phase, r.remote);
            let unseen = Replica { session, ..r.clone() };
            if remote && self.unseen_too_long(&unseen, now) {
                // A remote replica is known only by its session (or its record while it
                // starts): gone once unseen for a start timeout, not on one picture without
                // it (a worker reconnecting after a node failed is briefly sessionless).
                tracing::info!(replica = %id, agent = %agent, "remote replica unseen for its start timeout; removing its record");
                self.replicas.remove(&id);
                if let Some(fence) = self.grant.as_ref().map(Grant::fence)
                    && let Err(e) = self.fabric.delete_intent(&fence, &id).await
                {
                    self.fabric_failed(&agent, "cannot remove a replica's record", e);
                }
                continue;
            }
            let Some(r) = self.replicas.get_mut(&id) else { continue };
            r.session = session;
            if session.is_some() {
                r.seen_ms = now;
            }
            if phase == Phase::Starting && session.is_some() {
                r.phase = Phase::Running;
                r.running_since_ms = Some(now);
                let cold_ms = now.saturating_sub(r.started_at_ms);
                tracing::info!(replica = %id, agent = %agent, cold_start_ms = cold_ms, "replica's session is open");
                self.metrics.cold_start(&agent, cold_ms);
                self.record(&id, intent::Phase::Running).await;
            }
            if let Some(r) = self.replicas.get(&id)
                && let (Some(since), Some(config)) = (r.running_since_ms, self.config.agents.get(&agent))
            {
                let key = slot_key(r.slot, r.instance.as_deref());
                let policy = config.backoff();
                if let Some(b) = self.agents.entry(agent.clone()).or_default().backoff.get_mut(&key) {
                    b.running(&policy, since, now);
                }
            }
        }
    }

    /// A replica started longer ago than its start timeout without a session: a failed
    /// start; it is stopped, and its exit counts as a failure.
    async fn check_start_timeouts(&mut self) {
        let now = self.now();
        let late: Vec<ReplicaId> = self
            .replicas
            .iter()
            .filter(|(_, r)| r.phase == Phase::Starting && !r.remote)
            .filter(|(_, r)| {
                let timeout = self.config.agents.get(&r.agent).map_or(u64::MAX, |a| a.start_timeout_ms);
                now.saturating_sub(r.started_at_ms) >= timeout
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in late {
            tracing::warn!(replica = %id, "no session within the start timeout: a failed start");
            let other = self.replicas.get(&id).and_then(|r| self.serves_other(&r.agent, &id));
            if let Some(r) = self.replicas.get_mut(&id) {
                r.timed_out = true;
                r.serves_other = other;
            }
            self.stop_replica(&id).await;
        }
    }

    async fn act_on(&mut self, agent: &str) {
        let Some(config) = self.config.agents.get(agent).cloned() else { return };
        let now = self.now();
        let demand = self.demand_of(agent);
        let views: Vec<plan::Replica> = self
            .replicas
            .iter()
            .filter(|(_, r)| r.agent == agent)
            .map(|(id, r)| plan::Replica {
                id: id.clone(),
                instance: r.instance.clone(),
                phase: r.phase,
                assigned: r.session.map(|(_, a)| a),
                remote: r.remote,
            })
            .collect();
        let state = self.agents.entry(agent.to_owned()).or_default();
        while state.starts.front().is_some_and(|t| now.saturating_sub(*t) >= config.start_interval_ms) {
            state.starts.pop_front();
        }
        let starts_allowed = config.max_starts_per_interval.saturating_sub(state.starts.len() as u32);
        let input =
            plan::Input { config: &config, demand: &demand, replicas: &views, now_ms: now, starts_allowed };
        let decision = plan::plan(input, &mut state.memory);
        state.desired = decision.desired;
        for id in &decision.stop {
            if matches!(self.replicas.get(id).map(|r| r.phase), Some(Phase::Waiting { .. })) {
                self.replicas.remove(id);
            } else {
                self.stop_replica(id).await;
            }
        }
        for id in &decision.restart {
            let Some(r) = self.replicas.get(id).cloned() else { continue };
            self.start_replica(agent, &config, id.clone(), r.slot, r.instance.clone()).await;
        }
        for instance in decision.start {
            if !self.lease_valid() {
                return;
            }
            let slot = match &instance {
                Some(_) => None,
                None => Some(self.free_slot(agent)),
            };
            let key = slot_key(slot, instance.as_deref());
            let state = self.agents.entry(agent.to_owned()).or_default();
            if let Some(b) = state.backoff.get(&key)
                && !b.may_start(now)
            {
                // This slot's replica failed lately: it waits in place (counted, no process).
                let id = new_replica_id(agent);
                self.replicas.insert(id, waiting(agent, slot, instance, b.not_before_ms(), &config));
                continue;
            }
            self.start_replica(agent, &config, new_replica_id(agent), slot, instance).await;
        }
        self.prune_backoff(agent, &demand);
    }

    /// Forgets the back-off of slots that no longer exist: a pool slot no replica holds (it
    /// was scaled away), an instance no replica holds that the demand no longer lists. The
    /// map stays bounded, and the status shows no crash loop of something gone.
    fn prune_backoff(&mut self, agent: &str, demand: &AgentDemand) {
        let held: BTreeSet<String> = self
            .replicas
            .values()
            .filter(|r| r.agent == agent)
            .map(|r| slot_key(r.slot, r.instance.as_deref()))
            .collect();
        let Some(state) = self.agents.get_mut(agent) else { return };
        state.backoff.retain(|key, _| {
            held.contains(key)
                || key
                    .strip_prefix("instance/")
                    .is_some_and(|i| demand.instances_truncated || demand.instances.iter().any(|d| d.id == i))
        });
    }

    /// Records `id`'s new phase (fenced); a refusal means the lease is gone.
    async fn record(&mut self, id: &str, phase: intent::Phase) -> bool {
        let Some(fence) = self.grant.as_ref().map(Grant::fence) else { return false };
        let Some(r) = self.replicas.get(id) else { return false };
        let intent = Intent {
            agent: r.agent.clone(),
            instance: r.instance.clone(),
            backend: r.backend,
            handle: r.handle.clone(),
            host: self.options.host.clone(),
            phase,
            started_at_ms: r.started_at_ms,
            slot: r.slot,
        };
        let agent = r.agent.clone();
        match self.fabric.put_intent(&fence, id, &intent).await {
            Ok(()) => {
                if let Some(r) = self.replicas.get_mut(id) {
                    r.recorded = Some(phase);
                }
                true
            }
            Err(e) => {
                self.fabric_failed(&agent, "cannot record a replica's intent", e);
                false
            }
        }
    }

    async fn start_replica(
        &mut self,
        agent: &str,
        config: &AgentConfig,
        id: ReplicaId,
        slot: Option<u32>,
        instance: Option<String>,
    ) {
        let now = self.now();
        let Some(backend) = self.backends.get(&config.backend).cloned() else {
            // Counted like any failed start, so it is tried again at the back-off's pace.
            let e = backend::Error::Unavailable {
                backend: config.backend.as_str(),
                reason: "not built into this scaler".into(),
            };
            // A waiting replica being restarted gives way to the new waiting one.
            self.replicas.remove(&id);
            self.failed_start(agent, config, slot, instance, &e);
            return;
        };
        self.replicas.insert(
            id.clone(),
            Replica {
                agent: agent.to_owned(),
                instance: instance.clone(),
                slot,
                backend: config.backend,
                phase: Phase::Starting,
                handle: String::new(),
                started_at_ms: now,
                session: None,
                running_since_ms: None,
                timed_out: false,
                serves_other: None,
                remote: false,
                seen_ms: now,
                warned_ms: None,
                recorded: None,
            },
        );
        // The intent first: a successor must know of a process before it can exist.
        if !self.record(&id, intent::Phase::Starting).await {
            self.replicas.remove(&id);
            return;
        }
        if !self.lease_valid() {
            // The write took long enough for the lease to lapse by this scaler's reckoning:
            // a successor may act already. Spawn nothing; the record (counted by a successor
            // until its start timeout) and this book entry (timed out here if the lease
            // holds after all) clean up after themselves.
            tracing::warn!(replica = %id, agent, "lease not valid after recording the start; not spawning");
            return;
        }
        self.agents.entry(agent.to_owned()).or_default().starts.push_back(now);
        self.metrics.started(agent);
        let launch = self.launch(agent, config, &id, instance.as_deref());
        match backend.start(&launch).await {
            Ok(handle) => {
                tracing::info!(replica = %id, agent, handle = %handle, instance = ?instance, "replica started");
                if let Some(r) = self.replicas.get_mut(&id) {
                    r.handle = handle;
                }
                self.record(&id, intent::Phase::Starting).await;
            }
            Err(e) => {
                self.forget(&id).await;
                self.failed_start(agent, config, slot, instance, &e);
            }
        }
    }

    /// A start that failed before any process ran: the slot backs off and waits.
    fn failed_start(
        &mut self,
        agent: &str,
        config: &AgentConfig,
        slot: Option<u32>,
        instance: Option<String>,
        e: &backend::Error,
    ) {
        let now = self.now();
        tracing::warn!(agent, error = %e, "failed start");
        self.metrics.failed_start(agent);
        let failure = Failure { reason: e.to_string(), at_ms: now, ..Failure::default() };
        let key = slot_key(slot, instance.as_deref());
        let state = self.agents.entry(agent.to_owned()).or_default();
        state.last_error = Some(e.to_string());
        let not_before = state.backoff.entry(key).or_default().failed(&config.backoff(), 0, failure);
        self.replicas.insert(new_replica_id(agent), waiting(agent, slot, instance, not_before, config));
    }

    fn launch(&self, agent: &str, config: &AgentConfig, id: &str, instance: Option<&str>) -> Launch {
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("WEFT_ENDPOINT".into(), self.options.endpoints.join(","));
        env.insert("WEFT_DRAIN_TIMEOUT_MS".into(), config.worker_drain_timeout_ms().to_string());
        env.extend(self.options.tls_env.iter().cloned());
        env.extend(config.env.clone());
        env.insert("WEFT_SESSION_NAME".into(), id.to_owned());
        env.insert("WEFT_CAPACITY".into(), config.capacity.to_string());
        env.insert(REPLICA_ENV.into(), id.to_owned());
        env.insert(GROUP_ENV.into(), self.config.group.clone());
        env.insert(AGENT_ENV.into(), agent.to_owned());
        if config.mode == Mode::PerInstance
            && let Some(instance) = instance
        {
            env.insert("WEFT_AGENT".into(), agent.to_owned());
            env.insert(INSTANCE_ENV.into(), instance.to_owned());
        }
        Launch {
            replica: id.to_owned(),
            agent: agent.to_owned(),
            instance: instance.map(str::to_owned),
            env: env.into_iter().collect(),
            command: config.command.clone(),
            args: config.args.clone(),
            image: config.image.clone(),
            token_file: config.token_file_absolute(),
        }
    }

    /// Removes a replica from the books and its intent from the grid.
    async fn forget(&mut self, id: &str) {
        let Some(r) = self.replicas.remove(id) else { return };
        if r.recorded.is_none() {
            return;
        }
        if let Some(fence) = self.grant.as_ref().map(Grant::fence)
            && let Err(e) = self.fabric.delete_intent(&fence, id).await
        {
            self.fabric_failed(&r.agent, "cannot remove a replica's record", e);
        }
    }

    async fn stop_replica(&mut self, id: &str) {
        let Some(r) = self.replicas.get(id).cloned() else { return };
        if r.phase == Phase::Stopping {
            return;
        }
        if r.remote {
            // Chosen only when no other would do; the plan asks again every tick, so the
            // warning is rate-limited per replica.
            let now = self.now();
            if r.warned_ms
                .is_none_or(|t| now.saturating_sub(t) >= CANNOT_STOP_WARN_INTERVAL.as_millis() as u64)
            {
                tracing::warn!(replica = %id, agent = %r.agent, "cannot stop a replica this scaler cannot see (another host); it is counted until its session ends");
                if let Some(r) = self.replicas.get_mut(id) {
                    r.warned_ms = Some(now);
                }
            }
            return;
        }
        if !self.record(id, intent::Phase::Stopping).await {
            return;
        }
        if let Some(r) = self.replicas.get_mut(id) {
            r.phase = Phase::Stopping;
        }
        let grace = self.grace(&r.agent);
        let Some(backend) = self.backends.get(&r.backend).cloned() else { return };
        tracing::info!(replica = %id, agent = %r.agent, "stopping replica");
        match backend.stop(id, grace).await {
            Ok(()) => {}
            Err(backend::Error::Unknown(_)) => self.forget(id).await,
            Err(e) => {
                tracing::warn!(replica = %id, error = %e, "cannot stop replica");
                self.agents.entry(r.agent.clone()).or_default().last_error = Some(e.to_string());
            }
        }
    }

    async fn on_exit(&mut self, exit: Exited) {
        if self.grant.is_none() {
            return;
        }
        let Some(r) = self.replicas.get(&exit.replica).cloned() else { return };
        let now = self.now();
        let asked = exit.stopped && !r.timed_out;
        self.forget(&exit.replica).await;
        if asked {
            tracing::info!(replica = %exit.replica, agent = %r.agent, "replica stopped");
            return;
        }
        let Some(config) = self.config.agents.get(&r.agent).cloned() else { return };
        let reason = if r.timed_out {
            self.metrics.failed_start(&r.agent);
            match &r.serves_other {
                Some(other) => format!(
                    "opened a session for agent '{other}', not '{}', within start_timeout_ms ({} ms): \
                     its command serves the wrong agent",
                    r.agent, config.start_timeout_ms
                ),
                None => format!("opened no session within start_timeout_ms ({} ms)", config.start_timeout_ms),
            }
        } else {
            self.metrics.crashed(&r.agent);
            match (exit.code, exit.signal) {
                (Some(code), _) => format!("exited with code {code}"),
                (None, Some(signal)) => format!("killed by signal {signal}"),
                (None, None) => "exited".into(),
            }
        };
        tracing::warn!(replica = %exit.replica, agent = %r.agent, %reason, "replica failed");
        let failure = Failure {
            exit_code: exit.code,
            signal: exit.signal,
            reason: reason.clone(),
            output_tail: status::tail(&exit.output_tail, status::MAX_TAIL_BYTES).to_owned(),
            at_ms: now,
        };
        let ran = r.running_since_ms.map_or(0, |s| now.saturating_sub(s));
        let key = slot_key(r.slot, r.instance.as_deref());
        let state = self.agents.entry(r.agent.clone()).or_default();
        state.last_error = Some(format!("replica {}: {reason}", exit.replica));
        let not_before = state.backoff.entry(key).or_default().failed(&config.backoff(), ran, failure);
        self.replicas
            .insert(new_replica_id(&r.agent), waiting(&r.agent, r.slot, r.instance, not_before, &config));
    }

    fn status(&self) -> Status {
        let mut status = Status {
            group: self.config.group.clone(),
            holder: self.options.holder.clone(),
            token: self.grant.as_ref().map_or(0, |g| g.token),
            updated_at_ms: self.now(),
            agents: BTreeMap::new(),
        };
        for (agent, config) in &self.config.agents {
            let state = self.agents.get(agent);
            let mut a = AgentStatus {
                mode: config.mode.as_str().into(),
                backend: config.backend.as_str().into(),
                desired: state.map_or(0, |s| s.desired),
                last_error: state.and_then(|s| s.last_error.clone()),
                ..AgentStatus::default()
            };
            let mine: Vec<(&ReplicaId, &Replica)> =
                self.replicas.iter().filter(|(_, r)| &r.agent == agent).collect();
            for (id, r) in &mine {
                let phase = match r.phase {
                    Phase::Waiting { .. } => {
                        a.waiting += 1;
                        "waiting"
                    }
                    Phase::Starting => {
                        a.starting += 1;
                        "starting"
                    }
                    Phase::Running => {
                        a.running += 1;
                        "running"
                    }
                    Phase::Stopping => {
                        a.stopping += 1;
                        "stopping"
                    }
                };
                if a.replicas.len() < status::MAX_REPLICAS_LISTED {
                    a.replicas.push(ReplicaStatus {
                        id: (*id).clone(),
                        phase: phase.into(),
                        instance: r.instance.clone(),
                        handle: r.handle.clone(),
                        session: r.session.map(|(s, _)| s),
                        started_at_ms: r.started_at_ms,
                    });
                }
            }
            // A crash loop: the slot with most failures in a row at the threshold, unless a
            // replica of it runs now.
            if let Some(state) = state {
                let policy = config.backoff();
                let running_slots: BTreeSet<String> = mine
                    .iter()
                    .filter(|(_, r)| r.phase == Phase::Running)
                    .map(|(_, r)| slot_key(r.slot, r.instance.as_deref()))
                    .collect();
                let worst = state
                    .backoff
                    .iter()
                    .filter(|(k, b)| b.crash_looping(&policy) && !running_slots.contains(*k))
                    .max_by_key(|(_, b)| b.failures());
                if let Some((_, b)) = worst
                    && let Some(last) = b.last()
                {
                    a.crash_looping = Some(CrashLoop {
                        failures: b.failures(),
                        exit_code: last.exit_code,
                        signal: last.signal,
                        reason: last.reason.clone(),
                        output_tail: last.output_tail.clone(),
                        next_retry_at_ms: b.not_before_ms(),
                    });
                }
            }
            self.metrics.set_replicas(
                agent,
                a.desired,
                [
                    ("starting", a.starting),
                    ("running", a.running),
                    ("stopping", a.stopping),
                    ("waiting", a.waiting),
                ],
            );
            status.agents.insert(agent.clone(), a);
        }
        status
    }

    async fn publish(&mut self) {
        let Some(fence) = self.grant.as_ref().map(Grant::fence) else { return };
        let status = self.status();
        let fresh = self.now().saturating_sub(self.published_at_ms) < status::REFRESH.as_millis() as u64;
        if fresh && self.published.as_ref().is_some_and(|p| p.same_as(&status)) {
            return;
        }
        match self.fabric.publish_status(&fence, &status).await {
            Ok(()) => {
                self.published_at_ms = status.updated_at_ms;
                self.published = Some(status);
            }
            Err(FabricError::Lease(reason)) => self.lose(&reason),
            Err(e) => tracing::warn!(error = %e, "cannot publish the status"),
        }
    }

    /// On the way out: stop the replicas (unless told to leave them running), wait for them
    /// within the longest drain grace, release the lease.
    async fn shutdown(mut self) {
        let Some(grant) = self.grant.clone() else { return };
        if !self.config.leave_running_on_exit && self.lease_valid() {
            let ids: Vec<ReplicaId> = self.replicas.keys().cloned().collect();
            for id in &ids {
                if matches!(self.replicas.get(id).map(|r| r.phase), Some(Phase::Waiting { .. })) {
                    self.replicas.remove(id);
                } else {
                    self.stop_replica(id).await;
                }
            }
            let longest = self.config.agents.values().map(|a| a.drain_grace_ms).max().unwrap_or(0);
            let deadline = tokio::time::Instant::now() + Duration::from_millis(longest) + SHUTDOWN_SLACK;
            while self.replicas.values().any(|r| !r.remote) {
                match tokio::time::timeout_at(deadline, self.exits.recv()).await {
                    Ok(Some(exit)) => self.forget(&exit.replica).await,
                    _ => break,
                }
            }
            tracing::info!(left = self.replicas.len(), "replicas stopped");
        } else {
            tracing::info!(replicas = self.replicas.len(), "leaving the replicas running for a successor");
        }
        match self.fabric.release(grant.token).await {
            Ok(_) => tracing::info!("lease released"),
            Err(e) => tracing::warn!(error = %e, "cannot release the lease; it expires on its own"),
        }
    }
}

fn waiting(
    agent: &str,
    slot: Option<u32>,
    instance: Option<String>,
    not_before_ms: u64,
    config: &AgentConfig,
) -> Replica {
    Replica {
        agent: agent.to_owned(),
        instance,
        slot,
        backend: config.backend,
        phase: Phase::Waiting { not_before_ms },
        handle: String::new(),
        started_at_ms: 0,
        session: None,
        running_since_ms: None,
        timed_out: false,
        serves_other: None,
        remote: false,
        seen_ms: 0,
        warned_ms: None,
        recorded: None,
    }
}

/// A fresh replica id: the agent's name and 8 random hex digits.
pub fn new_replica_id(agent: &str) -> ReplicaId {
    format!("{agent}-{:08x}", rand::random::<u32>())
}

/// How long a failed demand watch waits before it watches again.
const WATCH_RETRY: Duration = Duration::from_secs(1);

/// Forwards demand pictures from a watch on `agents` into `tx`; watches again (after
/// [`WATCH_RETRY`]) when the watch fails, and ends with the error when the fabric refuses the
/// scaler's credentials.
fn spawn_watch<F: Fabric>(
    fabric: &F,
    agents: Vec<String>,
    tx: Arc<watch::Sender<Option<Demand>>>,
) -> tokio::task::JoinHandle<FabricError> {
    let fabric = fabric.clone();
    tokio::spawn(async move {
        loop {
            let mut demand = fabric.watch_demand(agents.clone());
            loop {
                match demand.next().await {
                    Ok(d) => {
                        tx.send_replace(Some(d));
                    }
                    Err(e @ FabricError::Credentials(_)) => return e,
                    Err(e) => {
                        tracing::warn!(error = %e, "demand watch failed; watching again");
                        break;
                    }
                }
            }
            tokio::time::sleep(WATCH_RETRY).await;
        }
    })
}

#[cfg(test)]
#[path = "controller_test.rs"]
mod tests;

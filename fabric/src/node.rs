//! A fabric node: every subsystem wired together in [`Node::start`], stopped by one signal.
//!
//! ```text
//!   TCP listen (tls::Listener: plain, or TLS with the certificate tls::Store re-reads)
//!                │  node-only methods (Raft, Forward, PrepareBootstrap) need a node certificate
//!                ├─ gRPC weft.cluster.v1.Raft    ──► raft (openraft) ─► log_store (sled)
//!                ├─ gRPC weft.fabric.v1.State    ──► api ─► proposer ─┘   state_machine (grid)
//!                ├─ gRPC weft.fabric.v1.Cluster
//!                ├─ gRPC weft.fabric.v1.Executions ─► routing ─► leader's proposer
//!                │        (Listen: sessions::host) ◄── watch hub ◄── state machine events
//!                ├─ gRPC weft.fabric.v1.Instances
//!                ├─ gRPC weft.fabric.v1.Scaling   (WatchDemand) ◄── watch hub
//!                ├─ gRPC weft.fabric.v1.Tokens    (bearer tokens; auth::bootstrap makes the first)
//!                ├─ gRPC weft.cluster.v1.Forward   (writes and read indexes from peers)
//!                ├─ gRPC grpc.health.v1.Health    ◄── health ◄── readiness ──► HTTP /readyz
//!                ├─ gRPC grpc.reflection.v1 and v1alpha (weft_proto::FILE_DESCRIPTOR_SET)
//!                └─ HTTP /healthz /readyz /metrics
//!   UDP listen ──── gossip (foca) ──► membership view ──► bootstrap (no cluster yet)
//!                                                    ├──► reconciler (leader) ──► raft membership
//!                                                    └──► relocation ──► addresses ──► raft network
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use weft_proto::cluster::v1::forward_server::ForwardServer;
use weft_proto::cluster::v1::raft_server::RaftServer;
use weft_proto::fabric::v1::cluster_server::ClusterServer;
use weft_proto::fabric::v1::executions_server::ExecutionsServer;
use weft_proto::fabric::v1::instances_server::InstancesServer;
use weft_proto::fabric::v1::leases_server::LeasesServer;
use weft_proto::fabric::v1::scaling_server::ScalingServer;
use weft_proto::fabric::v1::schedules_server::SchedulesServer;
use weft_proto::fabric::v1::state_server::StateServer;
use weft_proto::fabric::v1::streams_server::StreamsServer;
use weft_proto::fabric::v1::tokens_server::TokensServer;

use crate::NodeId;
use crate::api::{
    ClusterService, ExecutionService, InstanceService, LeaseService, ScalingService, ScheduleService,
    StateService, StreamService, TokenService,
};
use crate::config::Config;
use crate::data_dir::{self, DataDir};
use crate::http;
use crate::membership::{self, bootstrap, gossip, reconciler};
use crate::raft::Raft;
use crate::raft::leader_contact::LeaderContact;
use crate::raft::log_store::LogStore;
use crate::raft::network::NetworkFactory;
use crate::raft::raft_service::RaftService;
use crate::raft::state_machine::{self, StateMachine};
use crate::routing::{self, ForwardService, proposer};
use crate::{health, readiness, sessions, watch};

/// A member other than the lowest-id one initializes the cluster itself after this many
/// election timeouts without hearing from a leader.
pub const INIT_FALLBACK_ELECTION_TIMEOUTS: u64 = 4;

/// Why a node could not start. Existing data is never changed; a new data dir may have been
/// claimed (identity file, empty stores).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    /// The data directory is unusable or belongs to someone else.
    #[error(transparent)]
    DataDir(#[from] data_dir::Error),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr} (listen): {source}")]
    Listen { addr: String, source: std::io::Error },
    /// The Raft log could not be opened (another process may hold it).
    #[error("cannot open the Raft log in {path}: {source} (is another node running on this data dir?)")]
    Log { path: String, source: sled::Error },
    /// Raft storage failed.
    #[error("raft storage: {0}")]
    Storage(#[from] crate::raft::StorageError),
    /// Raft refused to start.
    #[error("raft: {0}")]
    Raft(String),
    /// The advertised address does not resolve to a socket address gossip can use.
    #[error("cannot resolve the advertised address '{addr}' (advertise): {reason}")]
    Advertise { addr: String, reason: String },
    /// Gossip could not start.
    #[error(transparent)]
    Gossip(#[from] gossip::Error),
    /// The TLS files could not be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::Error),
    /// The gRPC reflection service refused the compiled protos (a build defect).
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// The full gRPC names of the Weft services a node serves: each has a `grpc.health.v1.Health`
/// status of its own (the same as the whole server's).
fn weft_service_names() -> Vec<&'static str> {
    vec![
        <RaftServer<RaftService> as NamedService>::NAME,
        <StateServer<StateService> as NamedService>::NAME,
        <ClusterServer<ClusterService> as NamedService>::NAME,
        <ExecutionsServer<ExecutionService> as NamedService>::NAME,
        <InstancesServer<InstanceService> as NamedService>::NAME,
        <StreamsServer<StreamService> as NamedService>::NAME,
        <LeasesServer<LeaseService> as NamedService>::NAME,
        <SchedulesServer<ScheduleService> as NamedService>::NAME,
        <ScalingServer<ScalingService> as NamedService>::NAME,
        <TokensServer<TokenService> as NamedService>::NAME,
        <ForwardServer<ForwardService> as NamedService>::NAME,
    ]
}

/// A leader not acked by a quorum, or a follower not contacted by its leader, for this many
/// `election_timeout_max_ms` is not ready (see [`readiness`]).
pub const QUORUM_TIMEOUT_ELECTION_TIMEOUTS: u64 = 2;

/// How often the leader's reconciler looks for a membership change to make.
pub const RECONCILE_INTERVAL: Duration = Duration::from_millis(250);
/// How long one membership change may take.
pub const MEMBERSHIP_CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// A learner this close to the leader's log counts as caught up (may be promoted).
pub const CAUGHT_UP_LAG_ENTRIES: u64 = 256;
/// How long a leaving node waits for its leave to be sent.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a leaving node waits for the leader to remove it (a leader removes itself), so a
/// change that needs its vote can still commit. Matches the reconciler's `LEAVE_LINGER`.
const LEAVE_REMOVAL_WAIT: Duration = reconciler::LEAVE_LINGER;

/// A running node.
pub struct Node {
    id: NodeId,
    addr: SocketAddr,
    advertise: String,
    raft: Raft,
    applied: state_machine::Handle,
    log_store: LogStore,
    membership: membership::Handle,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl Node {
    /// Validates `config`, binds its listen address and starts the node.
    pub async fn start(config: Config) -> Result<Self, Error> {
        config.validate()?;
        let addr = config.listen_addr()?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Listen { addr: config.listen.clone(), source })?;
        Self::start_on(config, listener).await
    }

    /// Starts the node on an already bound listener (tests bind port 0 first, so they know
    /// every address before any node starts).
    pub async fn start_on(mut config: Config, listener: TcpListener) -> Result<Self, Error> {
        config.validate()?;
        if let Some(path) =
            config.gossip_key_file.as_deref().filter(|p| membership::keys::readable_by_others(p))
        {
            tracing::warn!(file = %path.display(), "the gossip key file is readable by other users (chmod 600 it)");
        }
        let bootstrap_token = config.bootstrap_credential()?;
        if let Some(path) =
            config.auth_bootstrap_token_file.as_deref().filter(|p| membership::keys::readable_by_others(p))
        {
            tracing::warn!(file = %path.display(), "the bootstrap token file is readable by other users (chmod 600 it)");
        }
        let addr =
            listener.local_addr().map_err(|source| Error::Listen { addr: config.listen.clone(), source })?;
        let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());
        let tls = config.tls_files()?.map(crate::tls::Store::load).transpose()?;
        let dialer = tls.as_ref().map_or_else(crate::tls::Dialer::plain, crate::tls::Dialer::tls);
        let gossip_addr = match tokio::net::lookup_host(advertise.as_str()).await {
            Ok(mut addrs) => addrs
                .next()
                .ok_or_else(|| Error::Advertise { addr: advertise.clone(), reason: "no address".into() })?,
            Err(e) => return Err(Error::Advertise { addr: advertise.clone(), reason: e.to_string() }),
        };
        let data_dir = DataDir::open(&config.data_dir, &config.cluster, config.node_id)?;
        config.node_id = data_dir.node_id();
        let metrics = Arc::new(crate::metrics::Registry::new(vec![
            weft_proto::cluster::v1::raft_server::SERVICE_NAME,
            weft_proto::cluster::v1::forward_server::SERVICE_NAME,
            weft_proto::fabric::v1::state_server::SERVICE_NAME,
            weft_proto::fabric::v1::cluster_server::SERVICE_NAME,
            weft_proto::fabric::v1::executions_server::SERVICE_NAME,
            weft_proto::fabric::v1::instances_server::SERVICE_NAME,
            weft_proto::fabric::v1::streams_server::SERVICE_NAME,
            weft_proto::fabric::v1::leases_server::SERVICE_NAME,
            weft_proto::fabric::v1::schedules_server::SERVICE_NAME,
            weft_proto::fabric::v1::scaling_server::SERVICE_NAME,
            weft_proto::fabric::v1::tokens_server::SERVICE_NAME,
        ]));
        let mut log_store = LogStore::open_observed(&data_dir.raft_dir(), metrics.log_fsync.clone())
            .map_err(|source| Error::Log { path: data_dir.raft_dir().display().to_string(), source })?;
        // What was committed before this start is applied again from the log: not new work.
        let committed = openraft::storage::RaftLogStorage::read_committed(&mut log_store).await?;
        metrics.set_replayed_until(committed.map_or(0, |c| c.index));
        let hub =
            watch::Hub::new(config.node_id, config.max_waiters).with_max_listeners(config.max_listeners);
        let state_machine =
            StateMachine::open_observed(&data_dir.snapshot_dir(), hub.clone(), metrics.clone())?;
        let applied = state_machine.handle();

        let raft_config = Arc::new(config.raft_config().validate().map_err(|e| Error::Raft(e.to_string()))?);
        let addresses = crate::raft::addresses::Addresses::default();
        let network = NetworkFactory::new(
            config.cluster.clone(),
            applied.clone(),
            addresses.clone(),
            config.max_raft_message_bytes,
            config.max_append_bytes,
            dialer.clone(),
        );
        let raft = Raft::new(config.node_id, raft_config, network, log_store.clone(), state_machine)
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;

        let held = bootstrap::is_initialized(&raft);
        if held {
            membership::election_guard::hold(&raft);
        }
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let (proposer, proposer_handle) = proposer::Service::new(
            config.node_id,
            raft.clone(),
            applied.clone(),
            proposer::Options {
                max_pending_writes: config.max_pending_writes,
                max_batch_commands: config.max_batch_commands,
                max_batch_bytes: config.max_batch_bytes,
                max_inflight_batches: config.max_inflight_batches,
                ttl_check_interval: Duration::from_millis(config.ttl_check_interval_ms),
                commit_timeout: Duration::from_millis(config.request_timeout_ms),
            },
            routing::eager::Options {
                enabled: config.eager_calls,
                linger: Duration::from_millis(config.eager_linger_ms),
                max_held: config.max_eager_calls,
            },
            hub.clone(),
            metrics.clone(),
        );
        let mode = config.join_mode()?;
        let members = config.members()?;
        let mut seeds = config.seed_list()?;
        for m in &members {
            if m.id != config.node_id && !seeds.contains(&m.addr) {
                seeds.push(m.addr.clone());
            }
        }
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        let (notes, notes_rx) = crate::audit_notes::channel(config.node_id);
        let (gossip_service, gossip) = gossip::Service::bind(
            gossip::Options {
                cluster: config.cluster.clone(),
                me: membership::identity::Peer {
                    id: config.node_id,
                    addr: gossip_addr,
                    generation,
                    leaving: false,
                },
                seeds: seeds.clone(),
                timing: config.gossip_timing()?,
                auth: config.gossip_auth()?,
                key_file: config.gossip_key_file.clone(),
                notes: notes.clone(),
            },
            addr,
            generation ^ config.node_id,
        )
        .await?;
        let membership = membership::Handle {
            gossip: gossip.clone(),
            bootstrap: bootstrap::State::new(config.node_id, config.cluster.clone(), mode, !seeds.is_empty()),
            reconciler: Arc::default(),
            addresses: addresses.clone(),
            dialer: dialer.clone(),
        };
        tasks.spawn(gossip_service.run(shutdown.clone()));
        tasks.spawn(membership::relocation::run(
            raft.clone(),
            applied.clone(),
            gossip.clone(),
            addresses,
            config.cluster.clone(),
            dialer.clone(),
            shutdown.clone(),
        ));
        if mode != bootstrap::Mode::Static {
            tasks.spawn(bootstrap::run(
                membership.bootstrap.clone(),
                raft.clone(),
                gossip.clone(),
                dialer.clone(),
                shutdown.clone(),
            ));
        }
        tasks.spawn(membership::election_guard::run(
            raft.clone(),
            gossip.clone(),
            dialer.clone(),
            held,
            shutdown.clone(),
        ));
        // A static cluster keeps as many voters as it was formed with (at least `voters`).
        let target_voters = match mode {
            bootstrap::Mode::Static => (config.voters as usize).max(members.len()),
            _ => config.voters as usize,
        };
        tasks.spawn(reconciler::run(
            raft.clone(),
            applied.clone(),
            gossip.clone(),
            reconciler::Options {
                cluster: config.cluster.clone(),
                target_voters,
                grace: Duration::from_millis(config.dead_node_grace_ms),
                interval: RECONCILE_INTERVAL,
                change_timeout: MEMBERSHIP_CHANGE_TIMEOUT,
                caught_up_lag: CAUGHT_UP_LAG_ENTRIES,
                dialer,
            },
            membership.reconciler.clone(),
            shutdown.clone(),
        ));

        let (leader_reads, leader_reads_handle) =
            routing::read_rounds::Service::new(config.max_pending_reads, "the leader's read-index round");
        let (forwarded_reads, forwarded_reads_handle) =
            routing::read_rounds::Service::new(config.max_pending_reads, "a read index from the leader");
        let ctx = routing::Context::new(
            config.node_id,
            config.cluster.clone(),
            raft.clone(),
            applied.clone(),
            proposer_handle,
            routing::ReadRounds { leader: leader_reads_handle, forwarded: forwarded_reads_handle },
            config.limits(),
            Duration::from_millis(config.request_timeout_ms),
            config.max_message_bytes,
            membership.clone(),
            hub,
            config.work_options(),
            config.stream_options(),
            metrics.clone(),
        );
        tasks.spawn(proposer.run(shutdown.clone()));
        let round_ctx = ctx.clone();
        tasks.spawn(leader_reads.run(
            move || {
                let ctx = round_ctx.clone();
                async move { routing::forward::confirm_read_index(&ctx).await }
            },
            shutdown.clone(),
        ));
        let round_ctx = ctx.clone();
        tasks.spawn(forwarded_reads.run(
            move || {
                let ctx = round_ctx.clone();
                async move { routing::forward::ask_leader_read_index(&ctx).await }
            },
            shutdown.clone(),
        ));
        tasks.spawn(crate::audit_notes::run(ctx.clone(), notes_rx, shutdown.clone()));
        tasks.spawn(sessions::reaper::run(ctx.clone(), shutdown.clone()));
        // With auth on, the gate checks tokens against this node's replica of the grid.
        let gate: crate::auth::Gate = if config.auth {
            tasks.spawn(crate::auth::bootstrap::run(ctx.clone(), bootstrap_token, shutdown.clone()));
            Some(Arc::new(crate::auth::TokenVerifier::new(applied.clone(), metrics.clone())))
        } else {
            None
        };
        let leader_contact = LeaderContact::default();
        let probe = readiness::Probe::new(
            raft.clone(),
            config.cluster.clone(),
            membership.clone(),
            leader_contact.clone(),
            Duration::from_millis(QUORUM_TIMEOUT_ELECTION_TIMEOUTS * config.election_timeout_max_ms),
        );
        tasks.spawn(readiness::run(probe.clone(), shutdown.clone()));
        let (health_server, health) = health::Service::new(probe.clone(), weft_service_names()).await;
        tasks.spawn(health.run(shutdown.clone()));
        // Reflection serves the Weft protos and the health service's, so grpcurl needs none.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(weft_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        let grpc = tonic::service::Routes::new(
            RaftServer::new(RaftService::new(
                config.node_id,
                raft.clone(),
                config.cluster.clone(),
                applied.clone(),
                leader_contact.clone(),
            ))
            .max_decoding_message_size(config.max_raft_message_bytes)
            .max_encoding_message_size(config.max_raft_message_bytes),
        )
        .add_service(
            StateServer::new(StateService::new(ctx.clone()))
                .max_decoding_message_size(config.max_message_bytes)
                .max_encoding_message_size(config.max_message_bytes),
        )
        .add_service(ClusterServer::new(ClusterService::new(ctx.clone())))
        .add_service(
            ExecutionsServer::new(ExecutionService::new(ctx.clone(), shutdown.clone()))
                .max_decoding_message_size(config.max_message_bytes)
                .max_encoding_message_size(config.max_message_bytes),
        )
        .add_service(
            InstancesServer::new(InstanceService::new(ctx.clone()))
                .max_decoding_message_size(config.max_message_bytes)
                .max_encoding_message_size(config.max_message_bytes),
        )
        .add_service(
            StreamsServer::new(StreamService::new(ctx.clone(), shutdown.clone()))
                .max_decoding_message_size(config.max_message_bytes)
                .max_encoding_message_size(config.max_message_bytes),
        )
        .add_service(LeasesServer::new(LeaseService::new(ctx.clone())))
        .add_service(
            SchedulesServer::new(ScheduleService::new(ctx.clone()))
                .max_decoding_message_size(config.max_message_bytes)
                .max_encoding_message_size(config.max_message_bytes),
        )
        .add_service(
            ScalingServer::new(ScalingService::new(ctx.clone(), shutdown.clone()))
                .max_decoding_message_size(config.max_message_bytes)
                .max_encoding_message_size(config.max_message_bytes),
        )
        .add_service(
            TokensServer::new(TokenService::new(ctx.clone()))
                .max_decoding_message_size(config.max_message_bytes)
                .max_encoding_message_size(config.max_message_bytes),
        )
        .add_service(
            ForwardServer::new(ForwardService::new(ctx.clone()))
                .max_decoding_message_size(config.max_message_bytes)
                .max_encoding_message_size(config.max_message_bytes),
        )
        .add_service(health_server)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .into_axum_router();
        // Node-only methods are refused before their body is read (inside the metrics layer,
        // so refusals are counted with their code).
        let grpc = if tls.is_some() {
            grpc.layer(axum::middleware::from_fn(crate::tls::require_node))
        } else {
            grpc
        };
        let grpc = if config.rpc_metrics {
            grpc.layer(axum::middleware::from_fn_with_state(
                metrics.rpcs.clone(),
                crate::metrics::grpc::track,
            ))
        } else {
            grpc
        };
        let app = grpc
            .merge(crate::dashboard::router(ctx.clone(), shutdown.clone()))
            .merge(http::router(ctx.clone(), probe))
            .merge(crate::rest::router(ctx, shutdown.clone(), config.max_message_bytes))
            .fallback(crate::rest::not_found)
            // Every request passes the auth gate, which leaves the caller for the handlers'
            // checks (everyone is let in while auth is off).
            .layer(axum::middleware::from_fn_with_state(gate, crate::auth::gate));
        let listener = match &tls {
            Some(store) => {
                tasks.spawn(store.clone().run(
                    Duration::from_millis(config.tls_reload_interval_ms),
                    notes,
                    shutdown.clone(),
                ));
                crate::tls::Listener::tls(listener, store.clone())
            }
            None => crate::tls::Listener::plain(listener),
        }
        .map_err(|source| Error::Listen { addr: config.listen.clone(), source })?;
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let app = app.into_make_service_with_connect_info::<crate::tls::PeerAddr>();
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await {
                tracing::error!(error = %e, "server stopped");
            }
        });

        let mut node = Self {
            id: config.node_id,
            addr,
            advertise,
            raft,
            applied,
            log_store,
            membership,
            shutdown,
            tasks,
        };
        if mode == bootstrap::Mode::Static {
            node.initialize(&members, config.election_timeout_max_ms).await?;
        }
        match &tls {
            Some(store) => tracing::info!(
                node_id = node.id, %addr, advertise = %node.advertise, cluster = %config.cluster,
                tls = true, serial = %store.serial(), auth = config.auth,
                "node started (TLS, mutual TLS between nodes)"
            ),
            None => tracing::info!(
                node_id = node.id, %addr, advertise = %node.advertise, cluster = %config.cluster,
                tls = false, auth = config.auth, "node started"
            ),
        }
        Ok(node)
    }

    /// Forms the cluster from the static member list if this data dir has none.
    ///
    /// Initializing with the same member list on several nodes is safe, but each node that
    /// does it stands for election at once, so starting members one by one would split votes.
    /// The member with the lowest id initializes at once; the others only if no leader has
    /// reached them after [`INIT_FALLBACK_ELECTION_TIMEOUTS`] election timeouts (the lowest
    /// member may be down on first boot).
    async fn initialize(
        &mut self,
        members: &[crate::config::Member],
        election_timeout_max_ms: u64,
    ) -> Result<(), Error> {
        if self.raft.is_initialized().await.map_err(|e| Error::Raft(e.to_string()))? {
            return Ok(());
        }
        let nodes: BTreeMap<NodeId, openraft::BasicNode> =
            members.iter().map(|m| (m.id, openraft::BasicNode { addr: m.addr.clone() })).collect();
        let first = nodes.keys().next() == Some(&self.id);
        let raft = self.raft.clone();
        let id = self.id;
        let wait = Duration::from_millis(election_timeout_max_ms * INIT_FALLBACK_ELECTION_TIMEOUTS);
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            if !first {
                let mut metrics = raft.metrics();
                let contacted = async {
                    while metrics.borrow_and_update().current_leader.is_none() {
                        if metrics.changed().await.is_err() {
                            return;
                        }
                    }
                };
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    _ = contacted => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                tracing::info!(node_id = id, "no leader reached this node; initializing the cluster");
            }
            // Once one member has started the cluster the others are refused with
            // NotAllowed, which is fine.
            match raft.initialize(nodes).await {
                Ok(()) => tracing::info!(node_id = id, "initialized a new cluster"),
                Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(
                    _,
                ))) => {}
                Err(e) => tracing::error!(node_id = id, error = %e, "cannot initialize the cluster"),
            }
        });
        Ok(())
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The Raft handle (metrics, membership).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Read access to the applied grid.
    pub fn applied(&self) -> &state_machine::Handle {
        &self.applied
    }

    /// Membership: gossip view and join state.
    pub fn membership(&self) -> &membership::Handle {
        &self.membership
    }

    /// Announces a graceful leave through gossip (the leader removes this node from Raft at
    /// once), then stops like [`Node::shutdown`].
    pub async fn leave(self) {
        self.membership.gossip.leave(LEAVE_TIMEOUT).await;
        let _ = tokio::time::timeout(LEAVE_REMOVAL_WAIT, self.await_removal()).await;
        self.shutdown().await;
    }

    /// Waits until this node is out of the Raft membership. A leader proposes that itself
    /// (openraft keeps it leading until the change commits, then it steps down); a follower
    /// waits for the leader's reconciler, which acts on the gossip leave.
    async fn await_removal(&self) {
        let mut metrics = self.raft.metrics();
        let (leading, voters) = {
            let m = metrics.borrow();
            let voters: std::collections::BTreeSet<NodeId> =
                m.membership_config.membership().voter_ids().collect();
            (m.current_leader == Some(self.id), voters)
        };
        if leading && voters.len() > 1 {
            let rest: std::collections::BTreeSet<NodeId> =
                voters.into_iter().filter(|v| *v != self.id).collect();
            tracing::info!(node_id = self.id, voters = ?rest, "leaving: the leader removes itself");
            if let Err(e) =
                self.raft.change_membership(openraft::ChangeMembers::ReplaceAllVoters(rest), false).await
            {
                tracing::warn!(node_id = self.id, error = %e, "leaving: could not remove this node");
            }
            return;
        }
        loop {
            if metrics.borrow_and_update().membership_config.membership().get_node(&self.id).is_none() {
                tracing::info!(node_id = self.id, "leaving: removed from the cluster");
                return;
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// Stops every task, Raft and the server, and flushes the log. The node stays a member:
    /// it is expected back (a restart); if it stays away the leader removes it after the
    /// grace period.
    pub async fn shutdown(mut self) {
        tracing::info!(node_id = self.id, "shutting down");
        self.shutdown.cancel();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not stop cleanly");
        }
        // Bounded: a server with stuck connections does not hold shutdown forever.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
        let closed = self.log_store.closed();
        drop(self.log_store);
        drop(self.raft);
        if tokio::time::timeout(Duration::from_secs(10), closed.wait()).await.is_err() {
            tracing::warn!(node_id = self.id, "the Raft log was not released within 10 s");
        }
        tracing::info!(node_id = self.id, "stopped");
    }
}

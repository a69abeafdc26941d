//! One test run, start to finish:
//!
//! ```text
//! clean leftovers ─► network (namespaces, bridge) ─► nodes ─► leader agreed
//!   ─► (executions: agent processes, counter instance started unless --target shared)
//!   ─► (streams: stream and cursor created, consumers listening)
//!   ─► workers (clients; streams: producers) ∥ nemesis schedule        for `time`
//!   ─► heal everything ─► (set, executions, streams: final read; streams: drain, consumers
//!      stopped; executions --target shared: every node's eager-call counters)
//!   ─► checkers ─► report ─► tear down
//! ```
//!
//! The network, the node processes and the agent processes are owned by values whose `Drop`
//! removes them, so a panic, an error or a dropped future (ctrl-c in the binary) still
//! cleans up.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::agents::{self, Agents};
use crate::checker::{self, Validity, Verdict};
use crate::client::{self, Reads, Workload};
use crate::counter::{self, Effects, Target};
use crate::db::{self, Db};
use crate::history::Type;
use crate::metrics::EagerReport;
use crate::nemesis::{self, Schedule, Spec};
use crate::net::{self, Network};
use crate::recorder::Recorder;
use crate::rng::Rng;
use crate::streams::{self, Appends};

/// How long the cluster has to agree on a leader at start and after the faults.
pub const LEADER_PATIENCE: Duration = Duration::from_secs(30);
/// How long the set's final read keeps trying.
pub const FINAL_READ_PATIENCE: Duration = Duration::from_secs(30);
/// Executions: how long the counter instance has to start once the agents run.
pub const INSTANCE_PATIENCE: Duration = Duration::from_secs(30);
/// Executions: how long, after the faults, the run waits for every increment to finish
/// before its final read.
pub const QUIESCE_PATIENCE: Duration = Duration::from_secs(20);
/// Gossip mode: how long the leader's membership has after the run to settle on the nodes
/// still there (removals of killed nodes wait for the grace period).
pub const MEMBERSHIP_PATIENCE: Duration = Duration::from_secs(15);
/// Streams: how long the drain after the final read waits for the cursor to acknowledge
/// every item read.
pub const DRAIN_PATIENCE: Duration = Duration::from_secs(30);
/// Streams: how long stopped consumers have to end their sessions before they are dropped.
pub const CONSUMERS_STOP_PATIENCE: Duration = Duration::from_secs(10);
/// Most spare hosts a churning run creates (one per membership window).
pub const MAX_SPARES: usize = 40;

/// A run failed before it could judge anything.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Net(#[from] net::Error),
    #[error(transparent)]
    Db(#[from] db::Error),
    #[error(transparent)]
    Agents(#[from] agents::Error),
    #[error(transparent)]
    Auth(#[from] crate::auth::Error),
    /// The counter instance did not start; see the agent and node logs.
    #[error("the counter instance did not start within {INSTANCE_PATIENCE:?}: {0}")]
    Instance(String),
    /// The stream or its cursor could not be created; see the node logs.
    #[error("the stream could not be set up within {LEADER_PATIENCE:?}: {0}")]
    StreamSetup(String),
    #[error(transparent)]
    Nemesis(#[from] nemesis::Error),
    #[error(transparent)]
    History(#[from] crate::history::Error),
    #[error(transparent)]
    Report(#[from] crate::report::Error),
    /// The run folder could not be created.
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// An option is out of range; nothing was started.
    #[error("invalid option: {0}")]
    Invalid(String),
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct Options {
    pub workload: Workload,
    pub nemesis: Spec,
    pub schedule: Schedule,
    /// How long clients and nemesis run.
    pub time: Duration,
    pub nodes: usize,
    /// Static or gossip membership (the membership nemesis needs gossip).
    pub membership: db::Membership,
    /// Target operations per second over all workers.
    pub rate: f64,
    /// Concurrent workers (default: one per node).
    pub workers: usize,
    pub reads: Reads,
    /// Register keys.
    pub keys: usize,
    pub op_timeout: Duration,
    pub seed: u64,
    /// The `weft` binary; found under `target/` when `None`.
    pub weft_bin: Option<PathBuf>,
    /// Parent of run folders.
    pub store: PathBuf,
    /// Extra `WEFT_*` settings for every node.
    pub node_env: Vec<(String, String)>,
    /// Keep the nodes' data directories (under the run folder) after the run.
    pub keep_data: bool,
    pub checker: checker::register::Options,
    /// Executions: agent processes.
    pub agents: usize,
    /// Executions: how the agent applies increments.
    pub effects: Effects,
    /// Executions: what increments call: the counter instance, or a stateless delegate over
    /// a shared namespace (which the leader may run as eager calls).
    pub target: Target,
    /// Executions: how long each increment takes on purpose.
    pub agent_work: Duration,
    /// Executions: the agents' lease per assignment.
    pub agent_lease: Duration,
    /// The `weft-jepsen-agent` binary; found next to this one or under `target/` when `None`.
    pub agent_bin: Option<PathBuf>,
    /// Streams: consumers listening on the cursor (producers: `workers`).
    pub consumers: usize,
    /// Streams: whether producers append exactly once.
    pub appends: Appends,
    /// Streams: the cursor's ack wait.
    pub ack_wait: Duration,
    /// Streams: each listener's credit (its window of unacknowledged items).
    pub credit: u32,
    /// TLS on the nodes (a development CA and node certificate made for the run with
    /// `weft certs`), mutual TLS between them, and every client and agent over TLS.
    pub tls: bool,
    /// Auth on the nodes (see [`crate::auth`]): agents present an agent token, the workload's
    /// clients a client token.
    pub auth: bool,
}

/// Streams: most consumers of one run.
pub const MAX_CONSUMERS: usize = 100;

/// Most operations one run may plan (`rate` × `time`).
pub const MAX_PLANNED_OPS: f64 = 5_000_000.0;

impl Options {
    /// Checks the options before anything starts.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Invalid(m.into()));
        if self.nodes == 0 || self.nodes > net::MAX_NODES {
            return bad("--nodes must be 1 to 100");
        }
        if self.rate.is_nan() || self.rate <= 0.0 || self.rate * self.time.as_secs_f64() > MAX_PLANNED_OPS {
            return bad("--rate must be more than 0, and rate × time at most 5,000,000 operations");
        }
        if self.workers == 0 || self.workers > 1000 {
            return bad("--workers must be 1 to 1000");
        }
        if self.keys == 0 || self.keys > 1000 {
            return bad("--keys must be 1 to 1000");
        }
        if self.time.is_zero() {
            return bad("--time must be more than 0");
        }
        if self.nemesis.churns() && self.membership != db::Membership::Gossip {
            return bad(
                "--nemesis membership stops nodes for good and adds new ones, which a static cluster cannot do: add --membership gossip",
            );
        }
        if self.nemesis.churns() && self.nodes < 3 {
            return bad("--nemesis membership needs --nodes 3 or more");
        }
        if self.nemesis.kills_agents() && self.workload != Workload::Executions {
            return bad("--nemesis kill-agent kills agent processes, which only --workload executions runs");
        }
        if self.target != Target::Instance && self.workload != Workload::Executions {
            return bad("--target names what increments call, which only --workload executions makes");
        }
        if self.workload == Workload::Streams {
            if self.consumers == 0 || self.consumers > MAX_CONSUMERS {
                return bad("--consumers must be 1 to 100");
            }
            if !(100..=86_400_000).contains(&self.ack_wait.as_millis()) {
                return bad("--ack-wait-ms must be 100 to 86400000");
            }
            if self.credit == 0 || self.credit > streams::MAX_CREDIT {
                return bad("--credit must be 1 to 10000");
            }
        }
        if self.workload == Workload::Executions {
            if self.agents == 0 || self.agents > net::MAX_AGENTS {
                return bad("--agents must be 1 to 50");
            }
            if !(1000..=86_400_000).contains(&self.agent_lease.as_millis()) {
                return bad("--agent-lease-ms must be 1000 to 86400000 (the fabric's bounds)");
            }
        }
        Ok(())
    }

    /// Spare hosts for nodes the membership nemesis adds: one per window that can churn.
    pub fn spares(&self) -> usize {
        if !self.nemesis.churns() {
            return 0;
        }
        let window = (self.schedule.interval + self.schedule.duration).as_secs_f64().max(1.0);
        let windows = (self.time.as_secs_f64() / window).ceil() as usize + 1;
        windows.min(MAX_SPARES).min(net::MAX_NODES - self.nodes)
    }
}

/// What a run found.
#[derive(Debug)]
pub struct Outcome {
    /// The run folder.
    pub dir: PathBuf,
    pub verdicts: Vec<Verdict>,
    pub validity: Validity,
    /// One line for humans.
    pub summary: String,
}

/// Runs the test described by `options`.
pub async fn run(options: Options) -> Result<Outcome, Error> {
    options.validate()?;
    net::require_root()?;
    let removed = net::cleanup(false)?;
    if !removed.is_empty() {
        tracing::warn!(?removed, "removed leftovers of dead runs");
    }
    let binary = db::find_binary(options.weft_bin.as_deref())?;
    let clock_seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let run_id = net::new_run_id(clock_seed ^ u64::from(std::process::id()))?;
    let dir =
        crate::report::run_dir(&options.store, options.workload.name(), &options.nemesis.name(), &run_id);
    let io = |source| Error::Io { path: dir.display().to_string(), source };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let data_root = dir.join("data");
    std::fs::create_dir_all(&data_root).map_err(io)?;
    tracing::info!(run = %run_id, dir = %dir.display(), binary = %binary.display(), seed = options.seed, "run starts");

    let executions = options.workload == Workload::Executions;
    let agent_binary =
        if executions { Some(agents::find_binary(options.agent_bin.as_deref())?) } else { None };
    let agent_hosts = if executions { options.agents } else { 0 };
    let mut network = Network::create_with_agents(&run_id, options.nodes, options.spares(), agent_hosts)?;
    let tls = if options.tls {
        let ips: Vec<String> =
            network.hosts().iter().chain(network.spares()).map(|h| h.ip.to_string()).collect();
        Some(db::TlsFiles::make(&binary, &dir.join("certs"), &ips)?)
    } else {
        None
    };
    let auth = if options.auth { Some(crate::auth::Auth::make(&binary, &dir.join("auth"))?) } else { None };
    let mut node_env = options.node_env.clone();
    if let Some(auth) = &auth {
        node_env.extend(auth.node_env());
        db::set_client_token(Some(auth.admin()));
    }
    let mut database = Db::start(
        &network,
        db::Options {
            binary: binary.clone(),
            data_root: data_root.clone(),
            log_dir: dir.clone(),
            env: node_env,
            membership: options.membership,
            tls: tls.clone(),
        },
    )?;
    let leader = database.wait_for_leader(LEADER_PATIENCE).await?;
    tracing::info!(leader, "cluster up");

    let roster = database.roster();
    // With --auth: the agents' and the workload's tokens, made with the admin token.
    let (agent_token_file, client_token) = match &auth {
        Some(auth) => {
            let addrs = database.addrs();
            let (_, agent_file) = auth
                .create(
                    &addrs,
                    "agent",
                    "agent",
                    crate::auth::Scopes {
                        serve: vec![counter::AGENT.into()],
                        // The instance's own namespace comes with serving its agent.
                        namespaces: match options.target {
                            Target::Instance => Vec::new(),
                            Target::Shared => vec![Target::Shared.namespace()],
                        },
                        ..Default::default()
                    },
                )
                .await?;
            let everything = vec!["*".to_string()];
            let (client, _) = auth
                .create(
                    &addrs,
                    "client",
                    "client",
                    crate::auth::Scopes {
                        call: vec![counter::AGENT.into()],
                        namespaces: everything.clone(),
                        streams: everything,
                        ..Default::default()
                    },
                )
                .await?;
            (Some(agent_file), Some(client))
        }
        None => (None, None),
    };
    let mut agent_processes = match agent_binary {
        Some(binary) => {
            let agents = Agents::start(
                &network,
                roster.clone(),
                agents::Options {
                    binary,
                    log_dir: dir.clone(),
                    effects: options.effects,
                    target: options.target,
                    work: options.agent_work,
                    lease: options.agent_lease,
                    tls_ca: tls.as_ref().map(|t| t.ca.clone()),
                    token_file: agent_token_file,
                },
            )?;
            if options.target == Target::Instance {
                counter::start_instance(&database.addrs(), INSTANCE_PATIENCE)
                    .await
                    .map_err(|e| Error::Instance(e.to_string()))?;
            }
            tracing::info!(agents = options.agents, target = options.target.name(), "agents up");
            agents
        }
        None => Agents::none(),
    };

    let stream_workload = options.workload == Workload::Streams;
    if stream_workload {
        streams::setup(&roster.live(), options.ack_wait, LEADER_PATIENCE)
            .await
            .map_err(Error::StreamSetup)?;
    }

    if client_token.is_some() {
        // The workload runs with the client token alone.
        db::set_client_token(client_token);
    }
    let recorder = Recorder::create(&dir.join("history.jsonl"))?;
    let mut rng = Rng::new(options.seed);
    let client_options = client::Options {
        workload: options.workload,
        reads: options.reads,
        keys: options.keys,
        timeout: options.op_timeout,
        pause: Duration::from_secs_f64(options.workers as f64 / options.rate),
        target: options.target,
    };
    let stream_options = streams::Options {
        appends: options.appends,
        timeout: options.op_timeout,
        pause: client_options.pause,
        ack_wait: options.ack_wait,
        credit: options.credit,
    };
    // Dropping the sender stops the consumers too (an early return).
    let (stop_consumers, stop) = tokio::sync::watch::channel(false);
    let consumers: Vec<_> = if stream_workload {
        (0..options.consumers as u64)
            .map(|id| {
                let client = options.workers as u64 + id;
                let c = streams::Consumer::new(
                    id,
                    client,
                    roster.clone(),
                    recorder.clone(),
                    stream_options.clone(),
                    stop.clone(),
                );
                tokio::spawn(c.run())
            })
            .collect()
    } else {
        Vec::new()
    };
    let until = Instant::now() + options.time;
    let workers: Vec<_> = (0..options.workers as u64)
        .map(|id| {
            if stream_workload {
                let p = streams::Producer::new(
                    id,
                    options.workers as u64,
                    roster.clone(),
                    rng.fork(),
                    recorder.clone(),
                    stream_options.clone(),
                );
                return tokio::spawn(p.run(until));
            }
            let w = client::Worker::new(
                id,
                options.workers as u64,
                roster.clone(),
                rng.fork(),
                recorder.clone(),
                client_options.clone(),
            );
            tokio::spawn(w.run(until))
        })
        .collect();
    let mut targets = nemesis::Targets { db: &mut database, agents: &mut agent_processes, net: &network };
    let nemesis_result =
        nemesis::run(&options.nemesis, options.schedule, &mut targets, &recorder, &mut rng, until).await;
    for w in workers {
        let _ = w.await;
    }
    nemesis_result?;

    if options.workload == Workload::Set {
        if let Err(e) = database.wait_for_leader(LEADER_PATIENCE).await {
            tracing::warn!(error = %e, "no leader after healing; the final read may fail");
        }
        client::read_all(&roster.live(), &recorder, u64::MAX, FINAL_READ_PATIENCE).await;
    }
    if executions {
        if let Err(e) = database.wait_for_leader(LEADER_PATIENCE).await {
            tracing::warn!(error = %e, "no leader after healing; the final read may fail");
        }
        counter::quiesce(&roster.live(), QUIESCE_PATIENCE).await;
        counter::read_counter(&roster.live(), options.target, &recorder, u64::MAX, FINAL_READ_PATIENCE).await;
    }
    // Before the nodes stop: their counters live in their processes. /metrics wants an admin
    // (or operator) token with --auth; the workload's client token may not read it.
    let eager = if executions && options.target == Target::Shared {
        let admin = auth.as_ref().map(|a| a.admin());
        Some(EagerReport::scrape(&roster.live(), db::client_tls().as_ref(), admin.as_ref()).await)
    } else {
        None
    };
    if stream_workload {
        if let Err(e) = database.wait_for_leader(LEADER_PATIENCE).await {
            tracing::warn!(error = %e, "no leader after healing; the final read may fail");
        }
        // The read first, then the drain up to its last seq: an append of unknown outcome
        // applied in between is delivered, not judged.
        match streams::read_stream(&roster.live(), &recorder, u64::MAX, FINAL_READ_PATIENCE).await {
            Some(last) => {
                tracing::info!(last, "stream read; draining the cursor");
                streams::drain(&roster.live(), &recorder, u64::MAX - 1, last, DRAIN_PATIENCE).await;
            }
            None => tracing::warn!("no final read of the stream; not draining"),
        }
        let _ = stop_consumers.send(true);
        for c in consumers {
            if tokio::time::timeout(CONSUMERS_STOP_PATIENCE, c).await.is_err() {
                tracing::warn!("a consumer did not stop in time");
            }
        }
    }
    let events = recorder.snapshot();
    let final_members = match options.membership {
        db::Membership::Static => serde_json::Value::Null,
        db::Membership::Gossip => final_members(&database).await,
    };

    agent_processes.stop_all();
    drop(agent_processes);
    database.stop_all();
    drop(database);
    network.destroy();

    let verdicts = match options.workload {
        Workload::Register => vec![checker::register::check(&events, options.checker)],
        Workload::Set => vec![checker::set::check(&events)],
        Workload::Executions => vec![checker::executions::check(&events)],
        Workload::Streams => vec![checker::streams::check(&events)],
    };
    let validity = verdicts.iter().fold(Validity::Valid, |v, x| v.and(x.validity));
    let ops = crate::history::operations(&events);
    let count = |ty| ops.iter().filter(|o| o.ty == ty).count();
    let windows = crate::history::windows(&events).len();
    let setting = match options.workload {
        Workload::Executions => format!(
            "{} agents, {} effects, target {}",
            options.agents,
            options.effects.name(),
            options.target.name()
        ),
        Workload::Streams => format!(
            "{} producers, {} consumers, {} appends, ack wait {} ms, credit {}",
            options.workers,
            options.consumers,
            options.appends.name(),
            options.ack_wait.as_millis(),
            options.credit,
        ),
        _ => format!("reads {:?}", options.reads),
    };
    let mut summary = format!(
        "{validity}: {} under {} for {:.0}s on {} nodes ({:?} membership, {setting}): {} ops ({} ok, {} fail, {} info), {} nemesis windows; {}",
        options.workload.name(),
        options.nemesis.name(),
        options.time.as_secs_f64(),
        options.nodes,
        options.membership,
        ops.len(),
        count(Type::Ok),
        count(Type::Fail),
        count(Type::Info),
        windows,
        verdicts
            .iter()
            .map(|v| format!("{}: {} ({})", v.checker, v.validity, v.summary))
            .collect::<Vec<_>>()
            .join("; "),
    );
    if let Some(eager) = &eager {
        summary.push_str(&format!("; {}", eager.summary()));
    }
    let described = json!({
        "workload": options.workload.name(), "nemesis": options.nemesis.name(),
        "time_s": options.time.as_secs_f64(), "nodes": options.nodes, "rate": options.rate,
        "workers": options.workers, "reads": format!("{:?}", options.reads).to_lowercase(),
        "keys": options.keys, "seed": options.seed, "run": run_id,
        "interval_s": options.schedule.interval.as_secs_f64(), "duration_s": options.schedule.duration.as_secs_f64(),
        "weft_bin": binary.display().to_string(),
        "membership": format!("{:?}", options.membership).to_lowercase(),
        "final_members": final_members,
        "agents": if executions { json!({
            "count": options.agents, "effects": options.effects.name(), "target": options.target.name(),
            "work_ms": options.agent_work.as_millis() as u64, "lease_ms": options.agent_lease.as_millis() as u64,
        }) } else { serde_json::Value::Null },
        "eager_calls": eager.as_ref().map_or(serde_json::Value::Null, EagerReport::to_json),
        "streams": if stream_workload { json!({
            "stream": streams::STREAM, "cursor": streams::CURSOR, "producers": options.workers,
            "consumers": options.consumers, "appends": options.appends.name(),
            "ack_wait_ms": options.ack_wait.as_millis() as u64, "credit": options.credit,
        }) } else { serde_json::Value::Null },
    });
    crate::report::write(&dir, &events, &verdicts, described, &summary)?;
    if !options.keep_data {
        let _ = std::fs::remove_dir_all(&data_root);
    }
    Ok(Outcome { dir, verdicts, validity, summary })
}

/// Gossip mode: the leader's membership once it settles on the nodes still there (or after
/// [`MEMBERSHIP_PATIENCE`]), as `{settled, leader, members: [{id, role, voter, gossip}], gone}`.
async fn final_members(db: &Db) -> serde_json::Value {
    let want = db.member_ids();
    let gone: Vec<u64> = db.nodes().iter().filter(|n| n.is_gone()).map(|n| n.id).collect();
    let Some(status) = db.wait_for_membership(MEMBERSHIP_PATIENCE).await else {
        tracing::warn!("no leader answered Cluster.Status after the run");
        return json!({ "settled": false, "expected": want, "gone": gone });
    };
    let members: Vec<serde_json::Value> = status
        .members
        .iter()
        .map(|m| json!({ "id": m.id, "role": m.role, "voter": m.voter, "gossip": m.gossip }))
        .collect();
    let mut have: Vec<u64> =
        status.members.iter().filter(|m| m.role != "not a member").map(|m| m.id).collect();
    have.sort();
    let settled = have == want;
    if !settled {
        tracing::warn!(?have, ?want, "the membership had not settled on the nodes still there");
    }
    json!({ "settled": settled, "leader": status.leader_id, "members": members, "expected": want, "gone": gone })
}

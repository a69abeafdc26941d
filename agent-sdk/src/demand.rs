//! The demand for agent processes, as the fabric pushes it: per agent, the executions waiting
//! for a session, those running, the delayed ones, the instances and whether a session serves
//! them, the listeners waiting on generator streams, and the live sessions with their load.
//! What a scaler decides from; `weft demand` shows the same.
//!
//! ```text
//!   Client::watch_demand(agents) ─► DemandWatch ── WatchDemand ──► any node (its replica)
//!        next() ◄── a full picture at once, then on every change (at most every 50 ms),
//!                   and the same picture again every 5 s when nothing changed
//!        the node stops, or is silent for 15 s ─► the next endpoint, with back-off
//! ```
//!
//! Each picture is whole: nothing needs to be merged, and a picture missed while the watch
//! moved to another node is never needed. Pictures come from the replica of the node the
//! watch is on, so after a move `applied_index` may be lower than before for a moment.
//!
//! ```no_run
//! # async fn demo() -> Result<(), weft_agent::Error> {
//! let client = weft_agent::Client::new(["127.0.0.1:7400", "127.0.0.1:7401"])?;
//! let mut watch = client.watch_demand(&["resizer".to_owned()]);
//! loop {
//!     let demand = watch.next().await?;
//!     for agent in &demand.agents {
//!         let room: u32 = agent.sessions.iter().filter(|s| !s.draining).map(|s| s.capacity - s.assigned.min(s.capacity)).sum();
//!         let unserved = agent.instances.iter().filter(|i| i.session.is_none()).count();
//!         println!("{}: {} pending, {} free slots, {unserved} unserved instances", agent.agent, agent.pending, room);
//!     }
//! }
//! # }
//! ```

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tonic::Streaming;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::scaling_client::ScalingClient;

use crate::connection::{Connection, INITIAL_BACKOFF, MAX_MESSAGE_BYTES, RequiresTls, next_backoff};
use crate::{Client, Error};

/// How often the fabric repeats a picture when nothing changed (asked with every watch).
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// A watch that hears nothing (no change, no repeat) for this long takes its node for lost
/// and moves to the next endpoint.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(15);

/// One picture of the demand, as one node's replica holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Demand {
    /// The node that served it.
    pub node_id: u64,
    /// The Raft log index that node's replica had applied.
    pub applied_index: u64,
    /// The grid's leader-stamped time, milliseconds since the Unix epoch.
    pub now_ms: u64,
    /// The agents asked for (each, even with nothing), or every agent with any work,
    /// instance or session; in name order.
    pub agents: Vec<AgentDemand>,
}

impl Demand {
    /// The demand of `agent`, if the picture has it.
    ///
    /// ```
    /// let demand = weft_agent::Demand { node_id: 1, applied_index: 7, now_ms: 0, agents: vec![] };
    /// assert!(demand.agent("resizer").is_none());
    /// ```
    pub fn agent(&self, agent: &str) -> Option<&AgentDemand> {
        self.agents.iter().find(|a| a.agent == agent)
    }
}

/// The demand of one agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentDemand {
    /// The agent.
    pub agent: String,
    /// Executions ready to run that no session holds: waiting for a session with room. With
    /// the calls queued on instances no session serves, and the `Start`s of new instances.
    pub pending: u64,
    /// Executions assigned to sessions now.
    pub running: u64,
    /// Pending executions whose not-before time has not come.
    pub delayed: u64,
    /// The agent's instances, in id order (at most 10 000; see `instances_truncated`).
    pub instances: Vec<InstanceDemand>,
    /// Whether instances were left out of `instances`.
    pub instances_truncated: bool,
    /// Listeners attached to generator streams of this agent whose generator has no session
    /// yet: they wait for a process to start.
    pub generator_listeners: u64,
    /// The live sessions serving the agent, in id order (at most 10 000).
    pub sessions: Vec<SessionLoad>,
    /// Whether sessions were left out of `sessions`.
    pub sessions_truncated: bool,
}

/// One instance of an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceDemand {
    /// The instance id.
    pub id: String,
    /// `starting`, `running` or `stopping`.
    pub lifecycle: String,
    /// The session it is activated on; `None`: no live session serves it.
    pub session: Option<u64>,
    /// Its executions not finished (queued, delayed or running).
    pub unfinished: u64,
}

/// One live session serving an agent, with its load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionLoad {
    /// The session's id.
    pub id: u64,
    /// Its label: the worker's [`crate::WorkerBuilder::name`] (a scaler names its processes).
    pub name: String,
    /// The node its stream is on.
    pub node_id: u64,
    /// Most executions it holds at once.
    pub capacity: u32,
    /// Executions it holds now, of every agent it serves.
    pub assigned: u32,
    /// It takes no new work (it is shutting down).
    pub draining: bool,
    /// It serves only the instances it claimed (a per-instance process).
    pub only_claimed: bool,
    /// Instances of this agent activated on it (claimed, or taken since), in id order.
    pub claimed: Vec<String>,
}

impl From<pb::Demand> for Demand {
    fn from(d: pb::Demand) -> Self {
        Self {
            node_id: d.node_id,
            applied_index: d.applied_index,
            now_ms: d.now_ms,
            agents: d.agents.into_iter().map(AgentDemand::from).collect(),
        }
    }
}

impl From<pb::AgentDemand> for AgentDemand {
    fn from(a: pb::AgentDemand) -> Self {
        Self {
            agent: a.agent,
            pending: a.pending,
            running: a.running,
            delayed: a.delayed,
            instances: a
                .instances
                .into_iter()
                .map(|i| InstanceDemand {
                    id: i.id,
                    lifecycle: i.lifecycle,
                    session: i.session,
                    unfinished: i.unfinished,
                })
                .collect(),
            instances_truncated: a.instances_truncated,
            generator_listeners: a.generator_listeners,
            sessions: a
                .sessions
                .into_iter()
                .map(|s| SessionLoad {
                    id: s.id,
                    name: s.name,
                    node_id: s.node_id,
                    capacity: s.capacity,
                    assigned: s.assigned,
                    draining: s.draining,
                    only_claimed: s.only_claimed,
                    claimed: s.claimed,
                })
                .collect(),
            sessions_truncated: a.sessions_truncated,
        }
    }
}

impl Client {
    /// Watches the demand of `agents` (none: of every agent with any work, instance or
    /// session). Nothing is sent until the first [`DemandWatch::next`].
    ///
    /// ```no_run
    /// # async fn demo(client: weft_agent::Client) -> Result<(), weft_agent::Error> {
    /// let mut watch = client.watch_demand(&[]);
    /// let demand = watch.next().await?;
    /// println!("node {} sees {} agents", demand.node_id, demand.agents.len());
    /// # Ok(()) }
    /// ```
    pub fn watch_demand(&self, agents: &[String]) -> DemandWatch {
        DemandWatch {
            conn: self.conn.clone(),
            request: pb::WatchDemandRequest {
                agents: agents.to_vec(),
                min_interval_ms: 0,
                heartbeat_ms: HEARTBEAT.as_millis() as u32,
            },
            require_tls: RequiresTls::new(&self.conn),
            stream: None,
            pause: INITIAL_BACKOFF,
            failing_since: None,
        }
    }
}

/// A watch of the demand: [`DemandWatch::next`] gives each picture the fabric pushes. It
/// moves to the next endpoint (with back-off) when its node stops or goes silent for
/// [`SILENCE_LIMIT`]; dropping it ends the watch.
pub struct DemandWatch {
    conn: Connection,
    request: pb::WatchDemandRequest,
    /// The endpoint's index and its stream of pictures, once connected.
    stream: Option<(usize, Streaming<pb::Demand>)>,
    pause: Duration,
    /// Since when no node has served a picture.
    failing_since: Option<Instant>,
    /// Which endpoints said they require TLS (without TLS settings) since one served.
    require_tls: RequiresTls,
}

impl std::fmt::Debug for DemandWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemandWatch")
            .field("agents", &self.request.agents)
            .field("connected", &self.stream.as_ref().map(|(i, _)| self.conn.addr(*i)))
            .finish_non_exhaustive()
    }
}

impl DemandWatch {
    /// The next picture: the first one at once (from whichever node answers), then each one
    /// the fabric pushes. Fails at once with [`Error::Refused`] when the fabric refuses the
    /// watch (a bad agent name, more than 1000 agents), with [`Error::Unauthenticated`] or
    /// [`Error::PermissionDenied`] when the token is refused (also when it is revoked or
    /// expires while the watch runs), with [`Error::Tls`] once every endpoint has said it
    /// requires TLS from a client without TLS settings, and with [`Error::Unavailable`] (or
    /// [`Error::Overloaded`], when nodes were at `max_listeners`) once no node served a picture
    /// for the client's `retry_for`; calling it again starts over. Cancel-safe: a call
    /// dropped before it returns loses nothing a later picture does not carry.
    pub async fn next(&mut self) -> Result<Demand, Error> {
        loop {
            let (i, lost) = match &mut self.stream {
                Some((i, stream)) => match tokio::time::timeout(SILENCE_LIMIT, stream.message()).await {
                    Ok(Ok(Some(picture))) => {
                        self.failing_since = None;
                        self.pause = INITIAL_BACKOFF;
                        self.require_tls.served();
                        return Ok(Demand::from(picture));
                    }
                    Ok(Ok(None)) => (*i, Error::Unavailable("the node ended the watch".into())),
                    Ok(Err(status)) => (*i, Error::from_status(&status)),
                    Err(_) => {
                        (*i, Error::Unavailable(format!("no picture from the node for {SILENCE_LIMIT:?}")))
                    }
                },
                None => {
                    let (i, channel) = self.conn.current();
                    let mut client = ScalingClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
                    let attempt = self.conn.options().attempt_timeout;
                    match tokio::time::timeout(attempt, client.watch_demand(self.request.clone())).await {
                        Ok(Ok(response)) => {
                            self.stream = Some((i, response.into_inner()));
                            continue;
                        }
                        Ok(Err(status)) => (i, self.conn.error_of(i, &status).await),
                        Err(_) => {
                            (i, Error::Unavailable(format!("no answer to the watch within {attempt:?}")))
                        }
                    }
                }
            };
            self.stream = None;
            // Refused: every node answers the same, so trying them changes nothing; nor once
            // every endpoint has said it requires TLS.
            if lost.is_refusal() {
                return Err(lost);
            }
            if let Some(stop) = self.require_tls.stop_with(&self.conn, i, &lost) {
                self.require_tls.served();
                return Err(stop);
            }
            let retry_for = self.conn.options().retry_for;
            let since = *self.failing_since.get_or_insert_with(Instant::now);
            if since.elapsed() + self.pause >= retry_for {
                self.failing_since = None;
                self.pause = INITIAL_BACKOFF;
                return Err(match lost {
                    Error::Overloaded(m) => Error::Overloaded(m),
                    other => Error::Unavailable(format!(
                        "no node served the demand watch within {retry_for:?}: {other}"
                    )),
                });
            }
            tracing::debug!(endpoint = self.conn.addr(i), error = %lost, "demand watch lost; trying the next node");
            self.conn.failed(i);
            tokio::time::sleep(self.pause).await;
            self.pause = next_backoff(self.pause);
        }
    }
}

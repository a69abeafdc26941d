//! One agent session's stream on the node that hosts it.
//!
//! The first message must open the session. The node registers a fresh key with the watch
//! hub, proposes `OpenSession` (so the grid can assign work to it in the same entry) and
//! answers `opened`. From then on one task serves the stream: it pushes what the hub
//! delivers (assignments, revocations, the close), proposes what the agent sends
//! (completions, renewals, give-backs), and closes the session when the stream ends, the
//! agent goes quiet for `session_timeout_ms`, the node shuts down, or the token that opened
//! it is revoked or expires (then the stream ends `UNAUTHENTICATED`, naming the token and
//! why). However it ends, the close goes through the grid (`CloseSession`), which returns
//! what the session held to pending for other sessions.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use weft_proto::fabric::v1 as pb;

use crate::auth::{Caller, Permission, authorize};
use crate::convert;
use crate::grid::execution::{ExecutionId, SessionId};
use crate::grid::session::{Host, NewSession};
use crate::grid::{self, Command, Output};
use crate::routing::{self, Context, Error};
use crate::watch::SessionEvent;

/// Room in the outbound stream beyond the session's capacity.
pub const OUTBOUND_SLACK: usize = 64;
/// Proposals (completions, renewals) one session may have in flight beyond its capacity;
/// past that the node stops reading the agent's stream until some finish.
pub const INFLIGHT_SLACK: usize = 16;
/// Shortest lease a session may ask for (0 means no lease timeout).
pub const MIN_LEASE_MS: u64 = 1_000;
/// Longest lease a session may ask for: one day.
pub const MAX_LEASE_MS: u64 = 86_400_000;
/// How long this node may go without a leader before it ends the sessions it hosts, so their
/// agents connect to a node that can commit their work (one cut off from the majority, say;
/// the leader closes such sessions on its side anyway once gossip declares this node down).
pub const MAX_LEADERLESS: Duration = Duration::from_secs(3);
/// How often a session checks that its node has a leader.
const LEADER_CHECK_EVERY: Duration = Duration::from_millis(500);

type Outbound = mpsc::Sender<Result<pb::FabricMessage, Status>>;

fn message(kind: pb::fabric_message::Kind) -> Result<pb::FabricMessage, Status> {
    Ok(pb::FabricMessage { kind: Some(kind) })
}

/// Opens a session from the stream's first message and starts serving it; returns what the
/// fabric sends to the agent. `caller` must be allowed to serve every agent the session
/// names (and claims instances of); its completions are checked against it too.
pub async fn open(
    ctx: Context,
    caller: Caller,
    mut inbound: Streaming<pb::AgentMessage>,
    shutdown: CancellationToken,
) -> Result<mpsc::Receiver<Result<pb::FabricMessage, Status>>, Status> {
    let timeout = ctx.work.session_timeout;
    let first = tokio::time::timeout(timeout, inbound.message())
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!("no open message within session_timeout_ms ({timeout:?})"))
        })??
        .ok_or_else(|| Status::invalid_argument("the stream ended before the session opened"))?;
    let Some(pb::agent_message::Kind::Open(open)) = first.kind else {
        return Err(Status::invalid_argument("the first message of a session must be `open`"));
    };
    if open.capacity > ctx.work.max_session_capacity {
        return Err(Status::invalid_argument(format!(
            "invalid session: capacity {} is over max_session_capacity ({})",
            open.capacity, ctx.work.max_session_capacity
        )));
    }
    if open.lease_ms != 0 && !(MIN_LEASE_MS..=MAX_LEASE_MS).contains(&open.lease_ms) {
        return Err(Status::invalid_argument(format!(
            "invalid session: lease_ms {} is out of range; 0 (no lease timeout) or {MIN_LEASE_MS} to {MAX_LEASE_MS}",
            open.lease_ms
        )));
    }
    let live = ctx.applied.read(|a| a.grid.work_totals().sessions);
    if live >= ctx.work.max_sessions {
        return Err(Error::Grid(grid::Error::TooMany {
            what: "sessions".into(),
            count: live,
            limit: ctx.work.max_sessions,
            setting: "max_sessions".into(),
        })
        .into_status());
    }
    let capacity = open.capacity as usize;
    let key: u64 = rand::random();
    let new = NewSession {
        host: Host { node: ctx.node_id, key },
        agents: convert::agent_specs(open.agents),
        capacity: open.capacity,
        claims: open.claims.into_iter().map(|c| (c.agent, c.instance)).collect(),
        lease_ms: open.lease_ms,
        name: open.name,
    };
    // A session that serves every instance is proposed as before the flag existed.
    let command = if open.only_claimed {
        Command::OpenSessionOnlyClaimed(Box::new(new))
    } else {
        Command::OpenSession(Box::new(new))
    };
    command.validate(&ctx.limits).map_err(|e| Error::Grid(e).into_status())?;
    let (Command::OpenSession(new) | Command::OpenSessionOnlyClaimed(new)) = &command else {
        unreachable!("a session open is one of the two commands above")
    };
    let served = new.agents.iter().map(|a| &a.name).chain(new.claims.iter().map(|(agent, _)| agent));
    for agent in served {
        authorize(&caller, Permission::Serve { agent })?;
    }
    // Registered before the open is proposed: the entry that opens it may assign it work.
    let events = ctx.hub.register_session(key, capacity);
    let id = match routing::propose(&ctx, command).await {
        Ok(Output::Session { id }) => id,
        Ok(other) => {
            ctx.hub.unregister_session(key);
            return Err(Status::internal(format!("unexpected answer to a session open: {other:?}")));
        }
        Err(e) => {
            // If it was applied after all, the reaper closes it: its key is gone.
            ctx.hub.unregister_session(key);
            return Err(e.into_status());
        }
    };
    let (tx, rx) = mpsc::channel(capacity + OUTBOUND_SLACK);
    let opened = pb::SessionOpened {
        session_id: id,
        node_id: ctx.node_id,
        session_timeout_ms: ctx.work.session_timeout.as_millis() as u64,
    };
    let _ = tx.try_send(message(pb::fabric_message::Kind::Opened(opened)));
    tracing::debug!(session = id, node_id = ctx.node_id, "session opened");
    let session = Session {
        lapse: ctx.lapse(&caller),
        caller,
        inflight: Arc::new(Semaphore::new(capacity + INFLIGHT_SLACK)),
        ctx,
        id,
        key,
        capacity,
        inbound,
        events,
        tx,
        shutdown,
        pushed: HashMap::new(),
        eager: HashMap::new(),
    };
    tokio::spawn(session.run());
    Ok(rx)
}

/// How a session's stream ended.
enum Ending {
    /// The grid closed it (the close was applied): nothing more to do.
    Grid,
    /// This node ends it: propose the close.
    Here(String),
    /// The token that opened it was revoked or expired: propose the close; the stream ends
    /// with the refusal (sent already) rather than a `closed` message.
    Lapsed(String),
}

struct Session {
    ctx: Context,
    /// Who opened it: what its completions may do.
    caller: Caller,
    /// Ends the session when `caller`'s token is revoked or expires.
    lapse: crate::auth::Lapse,
    id: SessionId,
    key: u64,
    capacity: usize,
    inbound: Streaming<pb::AgentMessage>,
    events: mpsc::Receiver<SessionEvent>,
    tx: Outbound,
    shutdown: CancellationToken,
    inflight: Arc<Semaphore>,
    /// Executions pushed to the agent and (as far as this task knows) still held.
    pushed: HashMap<ExecutionId, u64>,
    /// Eager calls pushed before their create, with their token and agent: their completion
    /// is authorized from this record (the grid may not hold them yet). An entry leaves with
    /// the completion or a revocation, or once the grid holds the execution.
    eager: HashMap<ExecutionId, (u64, String)>,
}

impl Session {
    async fn run(mut self) {
        let timeout = self.ctx.work.session_timeout;
        let mut last_seen = Instant::now();
        let mut leader_check = tokio::time::interval(LEADER_CHECK_EVERY);
        let mut leaderless_since: Option<Instant> = None;
        let ending = loop {
            let quiet = tokio::time::sleep_until((last_seen + timeout).into());
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break Ending::Here("the node is shutting down".into()),
                why = self.lapse.lapsed() => {
                    crate::auth::end_stream(&self.tx, &why);
                    break Ending::Lapsed(why.to_string());
                }
                event = self.events.recv() => match event {
                    Some(event) => {
                        if let Some(ending) = self.on_event(event).await {
                            break ending;
                        }
                    }
                    None => break Ending::Here("the session's stream did not keep up".into()),
                },
                received = self.inbound.message() => match received {
                    Ok(Some(m)) => {
                        last_seen = Instant::now();
                        if let Err(status) = self.on_message(m).await {
                            let reason = status.message().to_owned();
                            let _ = self.tx.try_send(Err(status));
                            break Ending::Here(reason);
                        }
                    }
                    Ok(None) => break Ending::Here("the agent closed the stream".into()),
                    Err(status) => break Ending::Here(format!("the stream failed: {}", status.message())),
                },
                _ = quiet => break Ending::Here(format!(
                    "nothing from the agent within session_timeout_ms ({} ms)", timeout.as_millis()
                )),
                _ = leader_check.tick() => {
                    if self.ctx.leader() != crate::routing::Leader::Unknown {
                        leaderless_since = None;
                    } else if leaderless_since.get_or_insert_with(Instant::now).elapsed() >= MAX_LEADERLESS {
                        break Ending::Here(format!(
                            "node {} has had no leader for {} s; connect to another node",
                            self.ctx.node_id,
                            MAX_LEADERLESS.as_secs()
                        ));
                    }
                }
            }
        };
        self.ctx.hub.unregister_session(self.key);
        let reason = match ending {
            Ending::Grid => return,
            Ending::Here(reason) => {
                let closed = pb::SessionClosed { reason: reason.clone() };
                let _ = self.tx.try_send(message(pb::fabric_message::Kind::Closed(closed)));
                reason
            }
            Ending::Lapsed(reason) => reason,
        };
        tracing::debug!(session = self.id, %reason, "session ends");
        // The one way a session ends in the grid: what it held goes back to pending.
        let command = Command::CloseSession { session: self.id, reason };
        tokio::spawn(super::end_in_grid(self.ctx.clone(), command, self.shutdown.clone()));
    }

    async fn send(&self, kind: pb::fabric_message::Kind) -> bool {
        self.tx.send(message(kind)).await.is_ok()
    }

    async fn on_event(&mut self, event: SessionEvent) -> Option<Ending> {
        use pb::fabric_message::Kind;
        match event {
            SessionEvent::Assigned { execution, token, generator } => {
                return self.push(execution, token, generator).await;
            }
            SessionEvent::Eager { execution, token } => {
                self.eager.insert(execution.id, (token, execution.agent.clone()));
                if self.eager.len() > 4 * self.capacity + OUTBOUND_SLACK {
                    self.prune();
                }
                return self.push(execution, token, None).await;
            }
            SessionEvent::Revoked { execution, token, reason } => {
                self.pushed.remove(&execution);
                if self.eager.get(&execution).is_some_and(|(t, _)| *t == token) {
                    self.eager.remove(&execution);
                }
                let revoked = pb::Revocation { execution_id: execution, token, reason };
                if !self.send(Kind::Revoked(revoked)).await {
                    return Some(Ending::Here("the agent stopped reading the stream".into()));
                }
            }
            SessionEvent::Closed { reason } => {
                let _ = self.send(Kind::Closed(pb::SessionClosed { reason })).await;
                return Some(Ending::Grid);
            }
            SessionEvent::Reset => return self.reconcile().await,
        }
        None
    }

    /// Sends an assignment to the agent.
    async fn push(
        &mut self,
        execution: Box<crate::grid::execution::Execution>,
        token: u64,
        generator: Option<String>,
    ) -> Option<Ending> {
        self.pushed.insert(execution.id, token);
        if self.pushed.len() > 4 * self.capacity + OUTBOUND_SLACK {
            self.prune();
        }
        let assignment = pb::Assignment {
            execution: Some(convert::pb_execution(*execution)),
            token,
            generator_stream: generator.unwrap_or_default(),
        };
        if !self.send(pb::fabric_message::Kind::Assignment(assignment)).await {
            return Some(Ending::Here("the agent stopped reading the stream".into()));
        }
        None
    }

    /// Keeps only what the grid says this session holds (and eager calls it does not hold
    /// yet).
    fn prune(&mut self) {
        let (held, created) = self.ctx.applied.read(|a| {
            let held = a.grid.session(self.id).map(|s| s.assigned.clone()).unwrap_or_default();
            let created: Vec<ExecutionId> =
                self.eager.keys().filter(|id| a.grid.execution(**id).is_some()).copied().collect();
            (held, created)
        });
        for id in created {
            self.eager.remove(&id);
        }
        let eager = &self.eager;
        self.pushed.retain(|id, _| held.contains(id) || eager.contains_key(id));
    }

    /// After a snapshot replaced the grid: push what the grid assigned to this session that
    /// the agent never saw, revoke what it no longer holds, or end if the session is gone.
    async fn reconcile(&mut self) -> Option<Ending> {
        use pb::fabric_message::Kind;
        let held = self.ctx.applied.read(|a| {
            a.grid.session(self.id).map(|s| {
                s.assigned
                    .iter()
                    .filter_map(|id| {
                        let generator = a.grid.generator_stream(*id).map(str::to_owned);
                        a.grid.execution(*id).cloned().map(|e| (e, generator))
                    })
                    .collect::<Vec<_>>()
            })
        });
        let Some(held) = held else {
            let _ = self.send(Kind::Closed(pb::SessionClosed { reason: "the session ended".into() })).await;
            return Some(Ending::Grid);
        };
        let now: HashMap<ExecutionId, u64> =
            held.iter().filter_map(|(e, _)| e.lease.map(|l| (e.id, l.token))).collect();
        for (id, token) in self.pushed.clone() {
            if now.get(&id) != Some(&token) {
                let revoked = pb::Revocation {
                    execution_id: id,
                    token,
                    reason: "no longer assigned to this session".into(),
                };
                let _ = self.send(Kind::Revoked(revoked)).await;
            }
        }
        for (e, generator) in held {
            let Some(token) = e.lease.map(|l| l.token) else { continue };
            if self.pushed.get(&e.id) != Some(&token) {
                let assignment = pb::Assignment {
                    execution: Some(convert::pb_execution(e)),
                    token,
                    generator_stream: generator.unwrap_or_default(),
                };
                let _ = self.send(Kind::Assignment(assignment)).await;
            }
        }
        self.pushed = now;
        None
    }

    async fn on_message(&mut self, m: pb::AgentMessage) -> Result<(), Status> {
        use pb::agent_message::Kind;
        match m.kind {
            None | Some(Kind::Heartbeat(_)) => Ok(()),
            Some(Kind::Open(_)) => Err(Status::failed_precondition("this stream's session is open already")),
            Some(Kind::Complete(c)) => {
                let (id, token) = (c.execution_id, c.token);
                self.pushed.remove(&id);
                let creates = c.effects.iter().any(|e| matches!(e.kind, Some(pb::effect::Kind::Call(_))));
                let command = convert::completion(c, &self.ctx.work).map_err(Error::Grid).and_then(|c| {
                    let command = Command::Complete(Box::new(c));
                    command.validate(&self.ctx.limits).map_err(Error::Grid)?;
                    // New executions made by effects count against max_executions too.
                    if creates {
                        self.ctx.check_room()?;
                    }
                    Ok(command)
                });
                // An eager call's agent is known from its push: no read of the grid, which may
                // not hold it yet.
                let eager = self.eager.remove(&id).filter(|(t, _)| *t == token).map(|(_, agent)| agent);
                let command = match (command, &eager) {
                    (Ok(Command::Complete(c)), Some(agent)) => {
                        authorize(&self.caller, Permission::Serve { agent })
                            .and_then(|()| crate::api::authz::check_effects(&self.caller, &c.effects))
                            .map(|()| Command::Complete(c))
                            .map_err(Error::Denied)
                    }
                    (Ok(Command::Complete(c)), None) => {
                        crate::api::authz::check_completion(&self.ctx, &self.caller, id, &c.effects)
                            .await
                            .map(|()| Command::Complete(c))
                    }
                    (other, _) => other,
                };
                let kind = match eager {
                    Some(agent) => ProposalKind::EagerComplete(id, token, agent),
                    None => ProposalKind::Complete(id, token),
                };
                match command {
                    Ok(command) => self.propose(command, kind).await,
                    Err(e) => {
                        let ack = convert::completion_ack(id, token, &Err(e));
                        let _ = self.send(pb::fabric_message::Kind::Completed(ack)).await;
                    }
                }
                Ok(())
            }
            Some(Kind::Renew(l)) => {
                let command = Command::Renew { execution: l.execution_id, token: l.token };
                self.propose(command, ProposalKind::Renew(l.execution_id)).await;
                Ok(())
            }
            Some(Kind::GiveBack(l)) => {
                self.pushed.remove(&l.execution_id);
                let command = Command::GiveBack { execution: l.execution_id, token: l.token };
                self.propose(command, ProposalKind::Quiet).await;
                Ok(())
            }
            Some(Kind::Drain(_)) => {
                self.propose(Command::DrainSession { session: self.id }, ProposalKind::Quiet).await;
                Ok(())
            }
        }
    }

    /// Proposes in a task of its own, bounded by the in-flight permits (waiting for one
    /// stops reading the agent's stream: backpressure), and reports the answer.
    async fn propose(&self, command: Command, kind: ProposalKind) {
        let Ok(permit) = self.inflight.clone().acquire_owned().await else { return };
        let ctx = self.ctx.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let answer = match &kind {
                ProposalKind::EagerComplete(_, _, agent) => {
                    routing::propose_as(
                        &ctx,
                        command,
                        routing::Kind::EagerCompletion { agent: agent.clone() },
                    )
                    .await
                }
                _ => routing::propose(&ctx, command).await,
            };
            drop(permit);
            let kind = match (kind, &answer) {
                (ProposalKind::Complete(id, token) | ProposalKind::EagerComplete(id, token, _), _) => {
                    Some(pb::fabric_message::Kind::Completed(convert::completion_ack(id, token, &answer)))
                }
                (ProposalKind::Renew(id), Ok(Output::Renewed { expires_ms })) => {
                    Some(pb::fabric_message::Kind::Renewed(pb::LeaseRenewed {
                        execution_id: id,
                        expires_ms: expires_ms.unwrap_or(0),
                    }))
                }
                (_, Err(e)) => {
                    tracing::debug!(error = %e, "a session's proposal failed");
                    None
                }
                _ => None,
            };
            if let Some(kind) = kind {
                let _ = tx.send(message(kind)).await;
            }
        });
    }
}

enum ProposalKind {
    Complete(ExecutionId, u64),
    /// The completion of an eager call, authorized by this host for the agent it was pushed
    /// for.
    EagerComplete(ExecutionId, u64, String),
    Renew(ExecutionId),
    Quiet,
}

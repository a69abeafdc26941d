//! The sending side of the path to the leader: [`propose`] a command, or wait for a
//! [`read_barrier`], here or through `weft.cluster.v1.Forward` (see the module docs of
//! [`super`]).
//!
//! What is retried, until the request's deadline: a write the leader certainly did not apply
//! ([`Outcome::NotApplied`]: no leader yet, a leader change, a connection that never opened),
//! and any failed read barrier (a read changes nothing). A write whose fate is unknown is
//! reported as such, never sent again.

use std::time::{Duration, Instant};

use tonic::Request;
use weft_proto::cluster::v1 as cpb;
use weft_proto::cluster::v1::forward_client::ForwardClient;

use weft_proto::wire::Outcome;

use super::context::RETRY_PAUSE;
use super::error::{NOT_APPLIED_PREFIX, UNKNOWN_PREFIX};
use super::{Context, Error, Kind, Leader};
use crate::codec;
use crate::grid::{self, Command, Output};

/// The reply of a forwarded proposal: the grid's answer.
pub type Answer = Result<Output, grid::Error>;

fn forward_client(ctx: &Context, addr: &str) -> Result<ForwardClient<tonic::transport::Channel>, Error> {
    let channel = ctx.channel(addr)?;
    Ok(ForwardClient::new(channel)
        .max_decoding_message_size(ctx.max_message_bytes)
        .max_encoding_message_size(ctx.max_message_bytes))
}

/// No leader before the deadline. A node that has not joined a cluster yet says why (its
/// join state: "waiting for seeds to answer", "waiting for 2 more node(s) ..."), since no
/// majority coming up would help it.
fn no_leader(ctx: &Context) -> Error {
    let within = ctx.request_timeout.as_millis();
    let join_state = ctx.membership.bootstrap.join_state();
    if join_state.starts_with("member") || join_state == "static membership" {
        return Error::Unavailable(format!(
            "no leader was elected within {within} ms; is a majority of the cluster up?"
        ));
    }
    Error::Unavailable(format!(
        "this node has not joined a cluster yet: {join_state} (no leader within {within} ms)"
    ))
}

/// Proposes one validated command where the leader is and returns the grid's answer, within
/// the request timeout.
pub async fn propose(ctx: &Context, command: Command) -> Result<Output, Error> {
    propose_until(ctx, command, Instant::now() + ctx.request_timeout).await
}

/// [`propose`] with what the proposer may do with it if this node leads (a call it may hold
/// eagerly, a completion the session's host authorized); a forwarded one is plain.
pub async fn propose_as(ctx: &Context, command: Command, kind: Kind) -> Result<Output, Error> {
    propose_kind(ctx, command, Instant::now() + ctx.request_timeout, kind).await
}

/// [`propose`] with an explicit deadline.
pub async fn propose_until(ctx: &Context, command: Command, deadline: Instant) -> Result<Output, Error> {
    propose_kind(ctx, command, deadline, Kind::Plain).await
}

async fn propose_kind(
    ctx: &Context,
    command: Command,
    deadline: Instant,
    kind: Kind,
) -> Result<Output, Error> {
    let mut encoded: Option<Vec<u8>> = None;
    loop {
        let last = match ctx.wait_for_leader(deadline).await {
            Leader::Local => {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, ctx.proposer.propose_as(command.clone(), kind.clone())).await
                {
                    Ok(Ok(output)) => return Ok(output),
                    Ok(Err(e @ (Error::NotLeader { .. } | Error::Unavailable(_)))) => e,
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        return Err(Error::Indeterminate(format!(
                            "not committed within request_timeout_ms ({} ms); the leader may have lost its quorum",
                            ctx.request_timeout.as_millis()
                        )));
                    }
                }
            }
            Leader::Remote { id, addr } => {
                let bytes = encoded.get_or_insert_with(|| codec::encode(&command)).clone();
                let mut request =
                    Request::new(cpb::ProposeRequest { cluster: ctx.cluster.clone(), command: bytes });
                request.set_timeout(deadline.saturating_duration_since(Instant::now()).max(RETRY_PAUSE));
                ctx.counters.forwarded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut client = forward_client(ctx, &addr)?;
                // A leader cut off from the rest answers nothing until the deadline; once this
                // node follows a new leader, stop waiting for the old one (it may have appended
                // the write, so its outcome is unknown).
                let answer = tokio::select! {
                    answer = client.propose(request) => answer,
                    new = ctx.leader_moved_from(id) => return Err(Error::Indeterminate(format!(
                        "node {new} was elected while the request was with the old leader at {addr}"
                    ))),
                };
                match answer {
                    Ok(reply) => {
                        let answer: Answer = codec::decode(&reply.into_inner().result).map_err(|e| {
                            Error::Indeterminate(format!(
                                "the leader at {addr} sent an unreadable answer: {e}"
                            ))
                        })?;
                        return answer.map_err(Error::Grid);
                    }
                    // Grid refusals come back inside a reply; a failed status is about the
                    // hand-over itself.
                    Err(status) => match Outcome::of(&status) {
                        Outcome::NotApplied => Error::Unavailable(
                            status
                                .message()
                                .strip_prefix(NOT_APPLIED_PREFIX)
                                .unwrap_or(status.message())
                                .to_owned(),
                        ),
                        Outcome::Overloaded => return Err(Error::Overloaded(status.message().to_owned())),
                        Outcome::Refused => {
                            return Err(Error::Unavailable(format!(
                                "the leader refused the write: {}",
                                status.message()
                            )));
                        }
                        Outcome::Unknown => {
                            let message = status.message();
                            return Err(Error::Indeterminate(match message.strip_prefix(UNKNOWN_PREFIX) {
                                Some(why) => format!("the leader at {addr} answered: {why}"),
                                None => format!("the leader at {addr} did not answer in time: {message}"),
                            }));
                        }
                    },
                }
            }
            Leader::Unknown => no_leader(ctx),
        };
        if Instant::now() + RETRY_PAUSE >= deadline {
            return Err(last);
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Waits until a read of this node's replica is linearizable: everything committed before
/// the call is applied here. Retries until the request timeout.
///
/// The read index comes from a round shared with every other read waiting on this node
/// ([`super::read_rounds`]): on the leader a quorum confirmation, on a follower one
/// `Forward/ReadIndex` call (which the leader answers from its own shared rounds). A round
/// only serves the reads that were waiting when it started.
pub async fn read_barrier(ctx: &Context) -> Result<(), Error> {
    let deadline = Instant::now() + ctx.request_timeout;
    loop {
        let leader = ctx.wait_for_leader(deadline).await;
        let left = deadline.saturating_duration_since(Instant::now());
        let answer = match leader {
            Leader::Local => tokio::time::timeout(left, leader_read_index(ctx)).await,
            Leader::Remote { .. } => {
                let ticket = ctx.reads.forwarded.join()?;
                tokio::time::timeout(left, ticket.wait()).await
            }
            Leader::Unknown => Ok(Err(no_leader(ctx))),
        };
        let last = match answer {
            Ok(Ok(index)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                match wait_applied(ctx, index, left).await {
                    Ok(()) => return Ok(()),
                    Err(e) => e,
                }
            }
            // A full queue refuses at once, as a full write queue does.
            Ok(Err(e @ Error::Overloaded(_))) => return Err(e),
            Ok(Err(e)) => e,
            Err(_) => Error::Unavailable(format!(
                "no read index within request_timeout_ms ({} ms); is a majority of the cluster up?",
                ctx.request_timeout.as_millis()
            )),
        };
        if Instant::now() + RETRY_PAUSE >= deadline {
            return Err(last);
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// The read index for a read that this node, as leader, serves or answers a follower with:
/// from the next shared round ([`super::Context::reads`]`.leader`). With a single voter,
/// confirming leadership sends no message, so there is nothing to share and the round is
/// run for this read alone (a queue and a hand-off would only add to its cost).
pub async fn leader_read_index(ctx: &Context) -> Result<u64, Error> {
    let single_voter = ctx.raft.metrics().borrow().membership_config.membership().voter_ids().count() == 1;
    if single_voter {
        return confirm_read_index(ctx).await;
    }
    ctx.reads.leader.confirm().await
}

/// One leader round: confirms with a quorum that this node still leads and returns the index
/// a read must see applied (openraft's read index: the commit index, or this term's first
/// entry if that is later). Every read waiting in [`super::Context::reads`]`.leader` when the
/// round started gets the answer.
pub async fn confirm_read_index(ctx: &Context) -> Result<u64, Error> {
    use openraft::error::{CheckIsLeaderError, RaftError};
    ctx.counters.read_rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match tokio::time::timeout(ctx.request_timeout, ctx.raft.get_read_log_id()).await {
        Ok(Ok((read_log_id, _applied))) => Ok(read_log_id.map_or(0, |l| l.index)),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
            Err(Error::NotLeader { leader: ctx.leader_hint(f.leader_id, f.leader_node) })
        }
        Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => {
            Err(Error::Unavailable(format!("leader cannot reach a quorum: {q}")))
        }
        Ok(Err(RaftError::Fatal(f))) => Err(Error::Unavailable(format!("raft stopped: {f}"))),
        Err(_) => Err(Error::Unavailable(format!(
            "a quorum did not confirm the leader within request_timeout_ms ({} ms)",
            ctx.request_timeout.as_millis()
        ))),
    }
}

/// One follower round: a `Forward/ReadIndex` call to the leader this node follows when the
/// round starts. Every read waiting in [`super::Context::reads`]`.forwarded` then gets the
/// answer.
pub async fn ask_leader_read_index(ctx: &Context) -> Result<u64, Error> {
    let (id, addr) = match ctx.leader() {
        Leader::Remote { id, addr } => (id, addr),
        // The reads saw another leader when they joined; they look again and retry.
        Leader::Local => return Err(Error::Unavailable("this node became the leader".into())),
        Leader::Unknown => return Err(Error::Unavailable("the leader was lost; no leader is known".into())),
    };
    let mut request = Request::new(cpb::ReadIndexRequest { cluster: ctx.cluster.clone() });
    request.set_timeout(ctx.request_timeout);
    ctx.counters.forwarded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut client = forward_client(ctx, &addr)?;
    // As for writes: a new leader ends the wait for the old one, and the reads ask the new
    // one in the next round.
    let answer = tokio::select! {
        answer = client.read_index(request) => answer,
        new = ctx.leader_moved_from(id) => Err(tonic::Status::cancelled(format!(
            "node {new} was elected while the read index was asked of the old leader at {addr}"
        ))),
    };
    match answer {
        Ok(reply) => Ok(reply.into_inner().index),
        Err(status) => Err(Error::Unavailable(format!("read index from {addr}: {}", status.message()))),
    }
}

async fn wait_applied(ctx: &Context, index: u64, left: Duration) -> Result<(), Error> {
    if index == 0 {
        return Ok(());
    }
    let mut metrics = ctx.raft.metrics();
    let reached = tokio::time::timeout(left, async {
        loop {
            if metrics.borrow_and_update().last_applied.is_some_and(|l| l.index >= index) {
                return true;
            }
            if metrics.changed().await.is_err() {
                return false;
            }
        }
    })
    .await;
    match reached {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::Unavailable("raft stopped".into())),
        Err(_) => Err(Error::Unavailable(format!("this node did not apply up to index {index} in time"))),
    }
}

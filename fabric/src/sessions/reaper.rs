//! Ends sessions and stream listeners nobody hosts any more, so what they held goes back to
//! pending (executions) or is delivered again (stream items).
//!
//! Every node closes the sessions and detaches the listeners the grid says it hosts but it
//! has no stream for (its earlier life before a restart, a close that did not get through).
//! The leader also ends those of nodes that gossip declares down or left, and of nodes that
//! are no longer Raft members: their clients must reconnect elsewhere anyway.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::NodeId;
use crate::grid::Command;
use crate::grid::session::Host;
use crate::membership::gossip::Health;
use crate::routing::{self, Context, Leader};

/// How often the reaper looks.
pub const REAP_INTERVAL: Duration = Duration::from_millis(500);
/// Most sessions and listeners one round ends.
pub const MAX_REAPED_PER_ROUND: usize = 64;

/// Runs until `shutdown`.
pub async fn run(ctx: Context, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(REAP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (command, reason, by_leader) in doomed(&ctx) {
            let what = format!("{command:?}");
            let close = async {
                if !by_leader {
                    return routing::propose(&ctx, command).await;
                }
                // Decided on this leader's own gossip view: never forwarded, so a leader that
                // has just been deposed (its view stale) cannot close healthy sessions.
                if ctx.leader() != Leader::Local {
                    return Err(crate::routing::Error::NotLeader { leader: None });
                }
                match tokio::time::timeout(ctx.request_timeout, ctx.proposer.propose(command)).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        Err(crate::routing::Error::Indeterminate("the close did not commit in time".into()))
                    }
                }
            };
            let closed = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                answer = close => answer,
            };
            match closed {
                Ok(_) => tracing::info!(%what, %reason, "ended a session or listener"),
                Err(e) => {
                    tracing::debug!(%what, error = %e, "could not end a session or listener; next round")
                }
            }
        }
    }
}

/// What to end now (a session close or a listener detach), with why, and whether the leader
/// decided it from its own view.
fn doomed(ctx: &Context) -> Vec<(Command, String, bool)> {
    let leading = ctx.leader() == Leader::Local;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let (gone, members) = if leading {
        let view = ctx.membership.gossip.view();
        // When each gone node went down or left, in wall-clock ms (the grid's clock).
        let gone: BTreeMap<NodeId, (&'static str, u64)> = view
            .members
            .iter()
            .filter_map(|(id, m)| {
                let since_ms = now_ms.saturating_sub(m.since.elapsed().as_millis() as u64);
                match m.health {
                    Health::Down => Some((*id, ("down", since_ms))),
                    Health::Left => Some((*id, ("left", since_ms))),
                    _ => None,
                }
            })
            .collect();
        let metrics = ctx.raft.metrics();
        let members: BTreeSet<NodeId> =
            metrics.borrow().membership_config.membership().nodes().map(|(id, _)| *id).collect();
        (gone, members)
    } else {
        (BTreeMap::new(), BTreeSet::new())
    };
    // Why the stream at `host`, opened at `opened_ms`, has no one behind it, if it has not.
    let orphaned =
        |host: Host, opened_ms: u64, hosted_here: &dyn Fn(u64) -> bool| -> Option<(String, bool)> {
            let node = host.node;
            if node == ctx.node_id {
                return (!hosted_here(host.key))
                    .then(|| (format!("node {node} no longer has its stream"), false));
            }
            if !leading {
                return None;
            }
            if let Some((state, since_ms)) = gone.get(&node) {
                // Opened after gossip here declared the node gone: the node was alive then, and
                // this view is behind (a heal, a restart). Wait for gossip to catch up.
                if opened_ms >= *since_ms {
                    return None;
                }
                return Some((format!("its node {node} is {state}"), true));
            }
            (!members.is_empty() && !members.contains(&node))
                .then(|| (format!("its node {node} is no longer a member of the cluster"), true))
        };
    ctx.applied.read(|a| {
        let sessions = a.grid.sessions().filter_map(|s| {
            let (reason, by_leader) = orphaned(s.host, s.opened_ms, &|key| ctx.hub.has_session(key))?;
            Some((Command::CloseSession { session: s.id, reason: reason.clone() }, reason, by_leader))
        });
        let listeners = a.grid.listeners().filter_map(|l| {
            let (reason, by_leader) = orphaned(l.host, l.opened_ms, &|key| ctx.hub.has_listener(key))?;
            Some((Command::Detach { listener: l.id, reason: reason.clone() }, reason, by_leader))
        });
        sessions.chain(listeners).take(MAX_REAPED_PER_ROUND).collect()
    })
}

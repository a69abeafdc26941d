//! Ends sessions nobody hosts any more, so what they held goes back to pending.
//!
//! Every node closes the sessions the grid says it hosts but it has no stream for (its
//! earlier life before a restart, a close that did not get through). The leader also closes
//! the sessions of nodes that gossip declares down or left, and of nodes that are no longer
//! Raft members: their agents must reconnect elsewhere anyway.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::{Context, Leader, routing};
use crate::grid::Command;
use crate::grid::execution::SessionId;
use crate::membership::gossip::Health;
use crate::raft::NodeId;

/// How often the reaper looks.
pub const REAP_INTERVAL: Duration = Duration::from_millis(500);
/// Most sessions one round closes.
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
        for (session, reason) in doomed(&ctx) {
            let command = Command::CloseSession { session, reason: reason.clone() };
            let closed = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                answer = routing::propose(&ctx, command) => answer,
            };
            match closed {
                Ok(_) => tracing::info!(session, %reason, "closed a session"),
                Err(e) => tracing::debug!(session, error = %e, "could not close a session; next round"),
            }
        }
    }
}

/// The sessions to close now, with why.
fn doomed(ctx: &Context) -> Vec<(SessionId, String)> {
    let leading = ctx.leader() == Leader::Local;
    let (gone, members) = if leading {
        let view = ctx.membership.gossip.view();
        let gone: BTreeSet<(NodeId, &'static str)> = view
            .members
            .iter()
            .filter_map(|(id, m)| match m.health {
                Health::Down => Some((*id, "down")),
                Health::Left => Some((*id, "left")),
                _ => None,
            })
            .collect();
        let metrics = ctx.raft.metrics();
        let members: BTreeSet<NodeId> =
            metrics.borrow().membership_config.membership().nodes().map(|(id, _)| *id).collect();
        (gone, members)
    } else {
        (BTreeSet::new(), BTreeSet::new())
    };
    ctx.applied.read(|a| {
        a.grid
            .sessions()
            .filter_map(|s| {
                let node = s.host.node;
                if node == ctx.node_id {
                    return (!ctx.hub.has_session(s.host.key))
                        .then(|| (s.id, format!("node {node} no longer has its stream")));
                }
                if !leading {
                    return None;
                }
                if let Some((_, state)) = gone.iter().find(|(id, _)| *id == node) {
                    return Some((s.id, format!("its node {node} is {state}")));
                }
                (!members.is_empty() && !members.contains(&node))
                    .then(|| (s.id, format!("its node {node} is no longer a member of the cluster")))
            })
            .take(MAX_REAPED_PER_ROUND)
            .collect()
    })
}

//! Following members that moved: a node restarted at another address with its data dir.
//!
//! The Raft membership keeps the address each node had when it was added. On every node this
//! task compares it with where gossip sees the node alive now, and once the node there proves
//! to be that node, points the Raft network and the routing to the leader at it (through
//! [`Addresses`]); elections and replication then work even when every node moved at once. The
//! leader's reconciler rewrites the stored entry (`SetNodes`), and the override goes away.
//!
//! ```text
//!   gossip: node 2 alive at B ─┐
//!   membership: node 2 at A  ──┼─► A != B ─► verify B ─► Addresses[2] = B ─► network uses B
//!                              │              │
//!                              │              └─ refused: B answers as another node, of
//!                              │                 another cluster, without a Raft log, or A
//!                              │                 still answers as node 2 (two claimants)
//!   membership: node 2 at B  ──┴─► drop the override
//! ```
//!
//! A node id is not taken over by just any process that claims it in gossip: the process at
//! the new address must hold a Raft log of this cluster instance (a fresh data dir with the
//! same `--node-id` does not), and the old address must no longer answer as that node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::gossip::{self, Health};
use crate::NodeId;
use crate::raft::Raft;
use crate::raft::addresses::Addresses;

/// How often the task compares gossip with the membership.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// How long a peer has to answer a status request.
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);
/// How long a refused move is left alone before the node is asked again.
const REFUSED_RECHECK: Duration = Duration::from_secs(2);

/// Runs until `shutdown`, on every node.
pub async fn run(
    raft: Raft,
    applied: crate::raft::state_machine::Handle,
    gossip: gossip::Handle,
    addresses: Addresses,
    cluster: String,
    dialer: crate::tls::Dialer,
    shutdown: CancellationToken,
) {
    let me = gossip.node_id();
    // (node, address) moves refused, until when: bounded by the membership's size.
    let mut refused: BTreeMap<NodeId, (SocketAddr, Instant)> = BTreeMap::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(CHECK_INTERVAL) => {}
        }
        let stored: BTreeMap<NodeId, String> = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            m.membership_config.membership().nodes().map(|(id, n)| (*id, n.addr.clone())).collect()
        };
        let view = gossip.view();
        for (id, addr) in addresses.all() {
            if stored.get(&id).is_none_or(|s| *s == addr) {
                addresses.remove(id);
            }
        }
        let now = Instant::now();
        refused.retain(|id, (_, until)| stored.contains_key(id) && *until > now);
        for (&id, stored_addr) in &stored {
            let Some(seen) = view.members.get(&id).filter(|m| m.health == Health::Alive) else { continue };
            let new = seen.addr;
            // Host names in the membership are left alone, as the reconciler does.
            let Ok(old) = stored_addr.parse::<SocketAddr>() else { continue };
            if id != me
                && old == new
                && let Some(elsewhere) = addresses.get(id)
            {
                // Back at its stored address before the leader rewrote the entry: the override
                // would keep every message for it going to where it no longer is.
                if let Some(s) = super::peer_status(&dialer, new, PROBE_TIMEOUT).await
                    && s.id == id
                    && s.cluster == cluster
                {
                    tracing::info!(node_id = id, at = %new, was = %elsewhere,
                        "membership: a member answers at its stored address again; reaching it there");
                    addresses.remove(id);
                }
                continue;
            }
            if id == me
                || old == new
                || addresses.get(id).as_deref() == Some(new.to_string().as_str())
                || refused.get(&id).is_some_and(|(addr, _)| *addr == new)
            {
                continue;
            }
            match verify_move(&dialer, id, old, new, &cluster, applied.cluster_uid()).await {
                Ok(()) => {
                    tracing::info!(node_id = id, from = %old, to = %new,
                        "membership: a member answers at a new address; reaching it there");
                    addresses.set(id, new.to_string());
                }
                Err(why) => {
                    tracing::warn!(node_id = id, from = %old, to = %new, reason = %why,
                        "membership: not following a member to a new address");
                    refused.insert(id, (new, now + REFUSED_RECHECK));
                }
            }
        }
    }
}

/// Whether node `id`, stored at `old`, may be reached at `new` from now on: the node at `new`
/// must answer as `id`, of `cluster` and of this cluster instance (`our_uid`, 0 when not
/// known yet), holding a Raft log; and `old` must no longer answer as `id`. The error says why
/// not.
pub async fn verify_move(
    dialer: &crate::tls::Dialer,
    id: NodeId,
    old: SocketAddr,
    new: SocketAddr,
    cluster: &str,
    our_uid: u64,
) -> Result<(), String> {
    let Some(s) = super::peer_status(dialer, new, PROBE_TIMEOUT).await else {
        return Err(format!("nothing answers over TCP at {new}"));
    };
    if s.id != id {
        return Err(format!("{new} answers as node {}", s.id));
    }
    if s.cluster != cluster {
        return Err(format!("{new} belongs to cluster '{}'", s.cluster));
    }
    if !s.initialized {
        return Err(format!(
            "node {id} at {new} holds no Raft log: a new data dir cannot take over a member's id \
             (restart the node on its own data dir, or remove node {id} from the cluster first)"
        ));
    }
    if s.cluster_uid != 0 && our_uid != 0 && s.cluster_uid != our_uid {
        return Err(format!(
            "{new} belongs to another cluster of the same name (uid {:016x}, ours {our_uid:016x})",
            s.cluster_uid
        ));
    }
    if let Some(still) = super::peer_status(dialer, old, PROBE_TIMEOUT).await
        && still.id == id
    {
        return Err(format!(
            "node {id} still answers at its old address {old}: two processes claim node {id}"
        ));
    }
    Ok(())
}

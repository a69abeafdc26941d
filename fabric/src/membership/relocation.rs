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
//! same `--node-id` does not), and the old address must stay silent as that node through
//! several probes over a second or more (a member that only blipped is not taken for gone).
//! Nothing can tell a copy of a data dir from the original: if both run, the one at the
//! stored address wins as soon as it answers there, and the other is named in an error log.

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
        // (node, stored address, address gossip sees): moves to check, one per member.
        let mut moves: Vec<(NodeId, SocketAddr, SocketAddr)> = Vec::new();
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
                    let twin = match elsewhere.parse::<SocketAddr>() {
                        Ok(e) => {
                            super::peer_status(&dialer, e, PROBE_TIMEOUT).await.is_some_and(|t| t.id == id)
                        }
                        Err(_) => false,
                    };
                    if twin {
                        tracing::error!(node_id = id, at = %new, also_at = %elsewhere,
                            "membership: two processes answer as this member (a copy of its data dir?); \
                             reaching it at its stored address only: stop the other one");
                    } else {
                        tracing::info!(node_id = id, at = %new, was = %elsewhere,
                            "membership: a member answers at its stored address again; reaching it there");
                    }
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
            moves.push((id, old, new));
        }
        // Each check takes a second or more (the old address is probed over time): members
        // that moved together are checked together.
        let uid = applied.cluster_uid();
        let checks = moves.drain(..).map(|(id, old, new)| {
            let (cluster, dialer) = (&cluster, &dialer);
            async move { (id, old, new, verify_move(dialer, id, old, new, cluster, uid).await) }
        });
        for (id, old, new, verdict) in futures::future::join_all(checks).await {
            match verdict {
                Ok(()) => {
                    tracing::info!(node_id = id, from = %old, to = %new,
                        "membership: a member answers at a new address; reaching it there");
                    addresses.set(id, new.to_string());
                }
                Err(why) => {
                    tracing::warn!(node_id = id, from = %old, to = %new, reason = %why,
                        "membership: not following a member to a new address");
                    refused.insert(id, (new, Instant::now() + REFUSED_RECHECK));
                }
            }
        }
    }
}

/// Whether node `id`, stored at `old`, may be reached at `new` from now on: the node at `new`
/// must answer as `id`, of `cluster` and of this cluster instance (`our_uid`; when it is known,
/// the node at `new` must report the same, not "none yet"), holding a Raft log; and `old` must
/// stay silent as `id` through [`OLD_SILENT_PROBES`] probes [`OLD_SILENT_GAP`] apart, so a
/// member that only blipped (paused, restarting in place) is not taken for gone while a copy
/// of its data dir answers elsewhere. The error says why not.
pub async fn verify_move(
    dialer: &crate::tls::Dialer,
    id: NodeId,
    old: SocketAddr,
    new: SocketAddr,
    cluster: &str,
    our_uid: u64,
) -> Result<(), String> {
    verify_move_with(id, old, new, cluster, our_uid, |addr| super::peer_status(dialer, addr, PROBE_TIMEOUT))
        .await
}

/// How many times the old address is asked, and must not answer as the node, before a move
/// is accepted.
pub const OLD_SILENT_PROBES: u32 = 3;
/// The pause between those probes: with them, the old address stays silent for at least
/// 2 x 500 ms.
pub const OLD_SILENT_GAP: Duration = Duration::from_millis(500);

/// [`verify_move`] with the status probe given, so tests can script what each address says.
async fn verify_move_with<F, Fut>(
    id: NodeId,
    old: SocketAddr,
    new: SocketAddr,
    cluster: &str,
    our_uid: u64,
    mut probe: F,
) -> Result<(), String>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Option<weft_proto::fabric::v1::NodeStatusReply>>,
{
    let Some(s) = probe(new).await else {
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
    if our_uid != 0 && s.cluster_uid != our_uid {
        return Err(if s.cluster_uid == 0 {
            format!("node {id} at {new} has not applied this cluster's instance id yet")
        } else {
            format!(
                "{new} belongs to another cluster of the same name (uid {:016x}, ours {our_uid:016x})",
                s.cluster_uid
            )
        });
    }
    for probe_no in 0..OLD_SILENT_PROBES {
        if probe_no > 0 {
            tokio::time::sleep(OLD_SILENT_GAP).await;
        }
        if let Some(still) = probe(old).await
            && still.id == id
        {
            return Err(format!(
                "node {id} still answers at its old address {old}: two processes claim node {id} \
                 (a copy of its data dir must never run beside it)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use weft_proto::fabric::v1::NodeStatusReply;

    use super::*;

    const OLD: &str = "127.0.0.1:7401";
    const NEW: &str = "127.0.0.1:7501";

    fn node(id: NodeId, uid: u64) -> NodeStatusReply {
        NodeStatusReply { id, cluster: "c".into(), cluster_uid: uid, initialized: true, ..Default::default() }
    }

    /// Runs verify_move for node 2 (ours uid 7) with each address answering from its script,
    /// one answer per probe (the last one repeats); returns the outcome and the probes of the
    /// old address.
    async fn verify(new: NodeStatusReply, old: Vec<Option<NodeStatusReply>>) -> (Result<(), String>, usize) {
        let (old_addr, new_addr): (SocketAddr, SocketAddr) = (OLD.parse().unwrap(), NEW.parse().unwrap());
        let asked: Mutex<BTreeMap<SocketAddr, usize>> = Mutex::default();
        let out = verify_move_with(2, old_addr, new_addr, "c", 7, |addr| {
            let n = {
                let mut asked = asked.lock().unwrap();
                let n = asked.entry(addr).or_default();
                *n += 1;
                *n - 1
            };
            let answer = if addr == new_addr {
                Some(new.clone())
            } else {
                old.get(n).or(old.last()).cloned().flatten()
            };
            async move { answer }
        })
        .await;
        let old_probes = asked.lock().unwrap().get(&old_addr).copied().unwrap_or(0);
        (out, old_probes)
    }

    #[tokio::test]
    async fn a_member_that_answers_again_at_its_old_address_is_not_followed() {
        // Silent through every probe: followed.
        let (out, probes) = verify(node(2, 7), vec![None]).await;
        assert_eq!(out, Ok(()));
        assert_eq!(probes, OLD_SILENT_PROBES as usize);
        // A blip: silent at the first probe, back at the second (a single probe took it for gone).
        let (out, _) = verify(node(2, 7), vec![None, Some(node(2, 7))]).await;
        let why = out.unwrap_err();
        assert!(why.contains("still answers at its old address"), "{why}");
        // Something else now at the old address does not hold the move up.
        let (out, _) = verify(node(2, 7), vec![Some(node(3, 7))]).await;
        assert_eq!(out, Ok(()));
    }

    #[tokio::test]
    async fn the_new_address_must_report_this_cluster_instance() {
        let (out, probes) = verify(node(2, 0), vec![None]).await;
        let why = out.unwrap_err();
        assert!(why.contains("has not applied this cluster's instance id"), "{why}");
        assert_eq!(probes, 0, "refused before the old address is asked");
        let (out, _) = verify(node(2, 9), vec![None]).await;
        assert!(out.unwrap_err().contains("another cluster of the same name"));
        let (out, _) = verify(NodeStatusReply { initialized: false, ..node(2, 7) }, vec![None]).await;
        assert!(out.unwrap_err().contains("holds no Raft log"));
        let (out, _) = verify(node(4, 7), vec![None]).await;
        assert!(out.unwrap_err().contains("answers as node 4"));
    }
}

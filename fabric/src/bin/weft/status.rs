//! `weft status` and `weft members`: the cluster as the contacted node sees it, through Raft
//! (leader, term, each member's role and progress) and through gossip (every node it knows).

use serde_json::json;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::cluster_client::ClusterClient;

use crate::connect::{self, Conn};
use crate::render::{fail, outln};

/// Flags of `weft status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub conn: Conn,
}

/// Flags of `weft members`.
#[derive(Debug, clap::Args)]
pub struct MembersArgs {
    #[command(flatten)]
    pub conn: Conn,
}

/// `weft status`.
pub async fn status(args: StatusArgs) -> anyhow::Result<i32> {
    let mut client = ClusterClient::new(connect::channel(&args.conn.endpoint)?);
    let s = match client.status(pb::StatusRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(e) => return Ok(fail(e, args.conn.json)),
    };
    if args.conn.json {
        let members: Vec<_> = s
            .members
            .iter()
            .map(|m| {
                json!({"id": m.id, "address": m.address, "role": m.role, "voter": m.voter,
                       "last_log_index": m.last_log_index, "applied_index": m.applied_index,
                       "reachable": m.reachable, "gossip": m.gossip, "lag": m.lag})
            })
            .collect();
        outln!(
            "{}",
            json!({"cluster": s.cluster, "leader_id": (s.leader_id != 0).then_some(s.leader_id),
                   "term": s.term, "reporter_id": s.reporter_id, "members": members})
        );
        return Ok(0);
    }
    let leader = if s.leader_id == 0 { "none".to_owned() } else { format!("node {}", s.leader_id) };
    outln!("cluster '{}'  term {}  leader {leader}  (as seen by node {})", s.cluster, s.term, s.reporter_id);
    outln!(
        "{:<10} {:<22} {:<12} {:<6} {:<8} {:>10} {:>10} {:>6}",
        "ID",
        "ADDRESS",
        "ROLE",
        "VOTER",
        "GOSSIP",
        "LAST LOG",
        "APPLIED",
        "LAG"
    );
    let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    for m in &s.members {
        outln!(
            "{:<10} {:<22} {:<12} {:<6} {:<8} {:>10} {:>10} {:>6}",
            m.id,
            m.address,
            m.role,
            if m.voter { "yes" } else { "no" },
            m.gossip,
            opt(m.last_log_index),
            opt(m.applied_index),
            opt(m.lag)
        );
    }
    Ok(0)
}

/// `weft members`: the contacted node's gossip view.
pub async fn members(args: MembersArgs) -> anyhow::Result<i32> {
    let mut client = ClusterClient::new(connect::channel(&args.conn.endpoint)?);
    let r = match client.members(pb::MembersRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(e) => return Ok(fail(e, args.conn.json)),
    };
    if args.conn.json {
        let members: Vec<_> = r
            .members
            .iter()
            .map(|m| {
                json!({"id": m.id, "address": m.address, "state": m.state, "incarnation": m.incarnation,
                       "generation": m.generation, "state_for_ms": m.state_for_ms, "raft": m.raft})
            })
            .collect();
        outln!(
            "{}",
            json!({"cluster": r.cluster, "reporter_id": r.reporter_id, "members": members,
                   "dropped": {"malformed": r.dropped_malformed, "oversized": r.dropped_oversized,
                               "foreign_cluster": r.dropped_foreign_cluster,
                               "unauthenticated": r.dropped_unauthenticated, "bad_mac": r.dropped_bad_mac},
                   "gossip_auth": {"sends": r.gossip_sends, "key_ids": r.gossip_key_ids}})
        );
        return Ok(0);
    }
    outln!("cluster '{}'  gossip as seen by node {}", r.cluster, r.reporter_id);
    outln!("{:<10} {:<22} {:<8} {:>10} {:<8} {:>11}", "ID", "ADDRESS", "STATE", "FOR", "RAFT", "INCARNATION");
    for m in &r.members {
        let for_ = format!("{:.1}s", m.state_for_ms as f64 / 1000.0);
        outln!(
            "{:<10} {:<22} {:<8} {:>10} {:<8} {:>11}",
            m.id,
            m.address,
            m.state,
            for_,
            m.raft,
            m.incarnation
        );
    }
    if !r.gossip_key_ids.is_empty() {
        outln!(
            "gossip authenticated: sends {}; key ids {} (the first sends)",
            r.gossip_sends,
            r.gossip_key_ids.join(", ")
        );
    }
    let dropped = r.dropped_malformed
        + r.dropped_oversized
        + r.dropped_foreign_cluster
        + r.dropped_unauthenticated
        + r.dropped_bad_mac;
    if dropped > 0 {
        outln!(
            "dropped gossip packets: {} malformed, {} oversized, {} from other clusters, {} unauthenticated, {} \
             failing the gossip key",
            r.dropped_malformed,
            r.dropped_oversized,
            r.dropped_foreign_cluster,
            r.dropped_unauthenticated,
            r.dropped_bad_mac
        );
    }
    Ok(0)
}

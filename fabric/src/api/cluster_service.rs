//! `weft.fabric.v1.Cluster`: the cluster's members and their progress.

use std::time::Duration;

use openraft::ServerState;
use tonic::{Request, Response, Status};
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::cluster_client::ClusterClient;

use crate::auth::{Permission, check};
use crate::routing::Context;

/// How long `Status` waits for each member's own report.
const MEMBER_TIMEOUT: Duration = Duration::from_millis(700);

/// Serves `weft.fabric.v1.Cluster` on one node.
#[derive(Clone)]
pub struct ClusterService {
    ctx: Context,
}

impl ClusterService {
    /// The service for a node.
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    fn local(&self) -> pb::NodeStatusReply {
        let metrics = self.ctx.raft.metrics();
        let m = metrics.borrow();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        pb::NodeStatusReply {
            id: m.id,
            role: role.into(),
            term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            cluster: self.ctx.cluster.clone(),
            initialized: crate::membership::bootstrap::initialized_in(&m),
            join_state: self.ctx.membership.bootstrap.join_state(),
            voters: m.membership_config.membership().voter_ids().collect(),
            membership_index: m.membership_config.log_id().as_ref().map(|l| l.index),
            cluster_uid: self.ctx.applied.cluster_uid(),
            bootstrap_expect: self.ctx.membership.bootstrap.expect(),
        }
    }

    /// The member at `addr`'s own report, or `None` if it does not answer in time.
    pub(crate) async fn ask(&self, addr: &str) -> Option<pb::NodeStatusReply> {
        let channel = self.ctx.channel(addr).ok()?;
        let mut req = Request::new(pb::StatusRequest {});
        req.set_timeout(MEMBER_TIMEOUT);
        let mut client = ClusterClient::new(channel);
        let reply = tokio::time::timeout(MEMBER_TIMEOUT, client.node_status(req)).await;
        reply.ok()?.ok().map(Response::into_inner)
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        check(&request, Permission::ReadCluster)?;
        let me = self.local();
        let membership = self.ctx.raft.metrics().borrow().membership_config.membership().clone();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let nodes: Vec<(u64, String)> = membership.nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
        let reports = futures::future::join_all(nodes.iter().map(|(id, addr)| async move {
            if *id == self.ctx.node_id { Some(self.local()) } else { self.ask(addr).await }
        }))
        .await;
        let newest = reports.iter().flatten().filter_map(|r| r.last_log_index).max().unwrap_or(0);
        let view = self.ctx.membership.gossip.view();
        let gossip_word = |id: u64| view.members.get(&id).map_or("unknown", |m| m.health.as_str()).to_owned();
        let mut members: Vec<pb::Member> = nodes
            .into_iter()
            .zip(reports)
            .map(|((id, address), report)| {
                let voter = voters.contains(&id);
                let gossip = gossip_word(id);
                match report {
                    Some(r) => pb::Member {
                        id,
                        address,
                        role: r.role,
                        voter,
                        last_log_index: r.last_log_index,
                        applied_index: r.applied_index,
                        reachable: true,
                        gossip,
                        lag: Some(newest.saturating_sub(r.last_log_index.unwrap_or(0))),
                    },
                    None => pb::Member {
                        id,
                        address,
                        role: "unreachable".into(),
                        voter,
                        last_log_index: None,
                        applied_index: None,
                        reachable: false,
                        gossip,
                        lag: None,
                    },
                }
            })
            .collect();
        // Nodes gossip knows that are not (yet, or no longer) in the Raft membership.
        for (id, m) in &view.members {
            if *id != 0 && !members.iter().any(|x| x.id == *id) {
                members.push(pb::Member {
                    id: *id,
                    address: m.addr.to_string(),
                    role: "not a member".into(),
                    voter: false,
                    last_log_index: None,
                    applied_index: None,
                    reachable: m.health.is_up(),
                    gossip: m.health.as_str().into(),
                    lag: None,
                });
            }
        }
        Ok(Response::new(pb::ClusterStatus {
            cluster: self.ctx.cluster.clone(),
            leader_id: me.leader_id,
            term: me.term,
            members,
            reporter_id: me.id,
        }))
    }

    async fn node_status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::NodeStatusReply>, Status> {
        // The auth gate lets this through without a token (nodes ask it of each other, and
        // hold none): then the caller is open and this passes.
        check(&request, Permission::ReadCluster)?;
        Ok(Response::new(self.local()))
    }

    async fn members(
        &self,
        request: Request<pb::MembersRequest>,
    ) -> Result<Response<pb::MembersReply>, Status> {
        use std::sync::atomic::Ordering::Relaxed;
        check(&request, Permission::ReadCluster)?;
        let view = self.ctx.membership.gossip.view();
        let membership = self.ctx.raft.metrics().borrow().membership_config.membership().clone();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let now = tokio::time::Instant::now();
        let members = view
            .members
            .iter()
            .map(|(id, m)| pb::GossipMember {
                id: *id,
                address: m.addr.to_string(),
                state: m.health.as_str().into(),
                incarnation: u32::from(m.incarnation),
                generation: m.generation,
                state_for_ms: now.saturating_duration_since(m.since).as_millis() as u64,
                raft: if voters.contains(id) {
                    "voter"
                } else if membership.get_node(id).is_some() {
                    "learner"
                } else {
                    "none"
                }
                .into(),
            })
            .collect();
        let c = self.ctx.membership.gossip.counters();
        let auth = self.ctx.membership.gossip.auth();
        Ok(Response::new(pb::MembersReply {
            cluster: self.ctx.cluster.clone(),
            reporter_id: self.ctx.node_id,
            members,
            dropped_malformed: c.dropped_malformed.load(Relaxed),
            dropped_oversized: c.dropped_oversized.load(Relaxed),
            dropped_foreign_cluster: c.dropped_foreign_cluster.load(Relaxed),
            dropped_unauthenticated: c.dropped_unauthenticated.load(Relaxed),
            dropped_bad_mac: c.dropped_bad_mac.load(Relaxed),
            gossip_sends: auth.sends.into(),
            gossip_key_ids: auth.key_ids,
        }))
    }

    /// Node-only: not behind tokens (with TLS on, only a node certificate reaches it).
    async fn prepare_bootstrap(
        &self,
        request: Request<pb::PrepareBootstrapRequest>,
    ) -> Result<Response<pb::PrepareBootstrapReply>, Status> {
        let req = request.into_inner();
        let initialized = crate::membership::bootstrap::is_initialized(&self.ctx.raft);
        let reply = match self.ctx.membership.bootstrap.prepare(&req, initialized) {
            Ok(()) => {
                tracing::info!(
                    bootstrapper = req.bootstrapper_id,
                    "membership: promised to join a new cluster"
                );
                pb::PrepareBootstrapReply { accepted: true, reason: String::new() }
            }
            Err(reason) => pb::PrepareBootstrapReply { accepted: false, reason },
        };
        Ok(Response::new(reply))
    }
}

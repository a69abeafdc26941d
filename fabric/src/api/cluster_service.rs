//! `weft.fabric.v1.Cluster`: the cluster's members and their progress.

use std::time::Duration;

use openraft::ServerState;
use tonic::{Request, Response, Status};
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::cluster_client::ClusterClient;

use super::Context;

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
        }
    }

    async fn ask(&self, addr: &str) -> Option<pb::NodeStatusReply> {
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
    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::ClusterStatus>, Status> {
        let me = self.local();
        let membership = self.ctx.raft.metrics().borrow().membership_config.membership().clone();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let nodes: Vec<(u64, String)> = membership.nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
        let reports = futures::future::join_all(nodes.iter().map(|(id, addr)| async move {
            if *id == self.ctx.node_id { Some(self.local()) } else { self.ask(addr).await }
        }))
        .await;
        let members = nodes
            .into_iter()
            .zip(reports)
            .map(|((id, address), report)| {
                let voter = voters.contains(&id);
                match report {
                    Some(r) => pb::Member {
                        id,
                        address,
                        role: r.role,
                        voter,
                        last_log_index: r.last_log_index,
                        applied_index: r.applied_index,
                        reachable: true,
                    },
                    None => pb::Member {
                        id,
                        address,
                        role: "unreachable".into(),
                        voter,
                        last_log_index: None,
                        applied_index: None,
                        reachable: false,
                    },
                }
            })
            .collect();
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
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::NodeStatusReply>, Status> {
        Ok(Response::new(self.local()))
    }
}

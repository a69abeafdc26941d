//! The gRPC service that receives peers' Raft RPCs and hands them to the local Raft node.

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest};
use openraft::{SnapshotMeta, Vote};
use serde::Serialize;
use tonic::{Request, Response, Status};
use weft_proto::cluster::v1::{RaftPayload, SnapshotChunk, raft_server};

use super::leader_contact::LeaderContact;
use super::{NodeId, Raft, TypeConfig};
use crate::codec;

/// Serves `weft.cluster.v1.Raft` for one node.
pub struct RaftService {
    id: NodeId,
    raft: Raft,
    cluster: String,
    applied: super::state_machine::Handle,
    contact: LeaderContact,
}

impl RaftService {
    /// A service feeding `raft` of node `id`, refusing messages meant for another node id, from
    /// clusters other than `cluster`, and from other instances of it once `applied` knows this
    /// cluster's instance id. It records in `contact` each message from a leader that `raft`
    /// accepts.
    pub fn new(
        id: NodeId,
        raft: Raft,
        cluster: String,
        applied: super::state_machine::Handle,
        contact: LeaderContact,
    ) -> Self {
        Self { id, raft, cluster, applied, contact }
    }

    fn check(&self, format: u32, cluster: &str, uid: u64, target: NodeId) -> Result<(), Status> {
        // Checked first: a node that took over another's old address must not answer (vote,
        // acknowledge entries) in that node's name, whatever else the message says.
        if target != 0 && target != self.id {
            tracing::debug!(target, "refused a Raft message meant for another node");
            return Err(Status::failed_precondition(format!(
                "this is node {}, not node {target}: the sender has a stale address for node {target}",
                self.id
            )));
        }
        if cluster != self.cluster {
            tracing::warn!(from_cluster = cluster, "refused Raft message from another cluster");
            return Err(Status::permission_denied(format!(
                "this node belongs to cluster '{}', not '{cluster}'",
                self.cluster
            )));
        }
        // A node that knows no instance yet is claimed by the first one that reaches it, so a
        // new node two same-named clusters both try to add ends up in one of them only.
        if uid != 0 && !self.applied.claim_cluster_uid(uid) {
            let mine = self.applied.cluster_uid();
            // Debug only: the sender retries several times a second; its leader warns instead.
            tracing::debug!(
                from_uid = uid,
                uid = mine,
                "refused Raft message from another instance of this cluster"
            );
            return Err(Status::permission_denied(format!(
                "this node belongs to another instance of cluster '{}' (uid {mine:016x}, not {uid:016x}): \
                 two clusters of one name must not share nodes",
                self.cluster
            )));
        }
        if format != u32::from(codec::FORMAT_BINCODE_V1) {
            return Err(Status::invalid_argument(format!("unknown Raft payload format {format}")));
        }
        Ok(())
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, msg: &RaftPayload) -> Result<T, Status> {
        self.check(msg.format, &msg.cluster, msg.cluster_uid, msg.target_id)?;
        codec::decode(&msg.payload)
            .map_err(|e| Status::invalid_argument(format!("malformed Raft payload: {e}")))
    }
}

impl RaftService {
    fn reply<T: Serialize>(&self, result: &T) -> Result<Response<RaftPayload>, Status> {
        Ok(Response::new(RaftPayload {
            format: u32::from(codec::FORMAT_BINCODE_V1),
            payload: codec::encode(result),
            cluster: self.cluster.clone(),
            cluster_uid: self.applied.cluster_uid(),
            target_id: 0,
        }))
    }
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let req = self.decode(request.get_ref())?;
        self.reply(&self.raft.vote(req).await)
    }

    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let req: AppendEntriesRequest<TypeConfig> = self.decode(request.get_ref())?;
        let leader = req.vote.leader_id().voted_for();
        let result = self.raft.append_entries(req).await;
        // Any answer but "my vote is higher" means this node took the sender as its leader
        // (a conflicting log is still the leader's to repair).
        if let (Some(leader), Ok(resp)) = (leader, &result)
            && !matches!(resp, AppendEntriesResponse::HigherVote(_))
        {
            self.contact.record(leader);
        }
        self.reply(&result)
    }

    async fn install_snapshot(
        &self,
        request: Request<SnapshotChunk>,
    ) -> Result<Response<RaftPayload>, Status> {
        let chunk = request.into_inner();
        self.check(chunk.format, &chunk.cluster, chunk.cluster_uid, chunk.target_id)?;
        let (vote, meta): (Vote<NodeId>, SnapshotMeta<NodeId, openraft::BasicNode>) =
            codec::decode(&chunk.meta)
                .map_err(|e| Status::invalid_argument(format!("malformed snapshot meta: {e}")))?;
        let leader = vote.leader_id().voted_for();
        let req = InstallSnapshotRequest::<TypeConfig> {
            vote,
            meta,
            offset: chunk.offset,
            data: chunk.data,
            done: chunk.done,
        };
        let result = self.raft.install_snapshot(req).await;
        // Accepted when this node's vote is now the sender's.
        if let (Some(leader), Ok(resp)) = (leader, &result)
            && resp.vote.leader_id() == vote.leader_id()
        {
            self.contact.record(leader);
        }
        self.reply(&result)
    }
}

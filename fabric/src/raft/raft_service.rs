//! The gRPC service that receives peers' Raft RPCs and hands them to the local Raft node.

use openraft::raft::InstallSnapshotRequest;
use openraft::{SnapshotMeta, Vote};
use serde::Serialize;
use tonic::{Request, Response, Status};
use weft_proto::cluster::v1::{RaftPayload, SnapshotChunk, raft_server};

use super::{NodeId, Raft, TypeConfig};
use crate::codec;

/// Serves `weft.cluster.v1.Raft` for one node.
pub struct RaftService {
    raft: Raft,
    cluster: String,
}

impl RaftService {
    /// A service feeding `raft`, refusing messages from clusters other than `cluster`.
    pub fn new(raft: Raft, cluster: String) -> Self {
        Self { raft, cluster }
    }

    fn check(&self, format: u32, cluster: &str) -> Result<(), Status> {
        if cluster != self.cluster {
            tracing::warn!(from_cluster = cluster, "refused Raft message from another cluster");
            return Err(Status::permission_denied(format!(
                "this node belongs to cluster '{}', not '{cluster}'",
                self.cluster
            )));
        }
        if format != u32::from(codec::FORMAT_BINCODE_V1) {
            return Err(Status::invalid_argument(format!("unknown Raft payload format {format}")));
        }
        Ok(())
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, msg: &RaftPayload) -> Result<T, Status> {
        self.check(msg.format, &msg.cluster)?;
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
        let req = self.decode(request.get_ref())?;
        self.reply(&self.raft.append_entries(req).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<SnapshotChunk>,
    ) -> Result<Response<RaftPayload>, Status> {
        let chunk = request.into_inner();
        self.check(chunk.format, &chunk.cluster)?;
        let (vote, meta): (Vote<NodeId>, SnapshotMeta<NodeId, openraft::BasicNode>) =
            codec::decode(&chunk.meta)
                .map_err(|e| Status::invalid_argument(format!("malformed snapshot meta: {e}")))?;
        let req = InstallSnapshotRequest::<TypeConfig> {
            vote,
            meta,
            offset: chunk.offset,
            data: chunk.data,
            done: chunk.done,
        };
        self.reply(&self.raft.install_snapshot(req).await)
    }
}

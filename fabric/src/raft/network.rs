//! The Raft network: a tonic client per peer, reusing one HTTP/2 connection per address.
//!
//! Raft messages travel as versioned opaque payloads (see `weft.cluster.v1.Raft`); snapshots
//! go in chunks of `snapshot_max_chunk_size` bytes, which openraft cuts for us.
//!
//! Every RPC resolves the target's address again through [`Addresses`] (a peer may have moved
//! since openraft made the connection), and names the node it is meant for, so a node that now
//! listens at a peer's old address refuses it instead of answering in that peer's name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use tonic::transport::Channel;
use weft_proto::cluster::v1::{RaftPayload, SnapshotChunk, raft_client::RaftClient};

use super::addresses::Addresses;
use super::{NodeId, TypeConfig};
use crate::codec;

/// Most distinct peer addresses whose channels are kept; past it the cache starts afresh.
const MAX_CHANNELS: usize = 64;

/// Creates connections to peers; channels are shared by address and reconnect on their own.
#[derive(Clone)]
pub struct NetworkFactory {
    cluster: String,
    applied: super::state_machine::Handle,
    addresses: Addresses,
    max_message_bytes: usize,
    max_append_bytes: usize,
    dialer: crate::tls::Dialer,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl NetworkFactory {
    /// A factory for the cluster named `cluster`; messages are limited to `max_message_bytes`,
    /// and a replication message holds several entries only while it stays under
    /// `max_append_bytes`. Every message carries the cluster instance id `applied` knows.
    /// A peer is reached at its address in `addresses` when it has one there, through
    /// `dialer` (mutual TLS when the node has TLS on).
    pub fn new(
        cluster: String,
        applied: super::state_machine::Handle,
        addresses: Addresses,
        max_message_bytes: usize,
        max_append_bytes: usize,
        dialer: crate::tls::Dialer,
    ) -> Self {
        Self {
            cluster,
            applied,
            addresses,
            max_message_bytes,
            max_append_bytes,
            dialer,
            channels: Arc::default(),
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        if channels.len() >= MAX_CHANNELS {
            channels.clear();
        }
        let channel = self.dialer.channel(addr, |e| {
            e.connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
        })?;
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        Connection { target, stored_addr: node.addr.clone(), addr: String::new(), factory: self.clone() }
    }
}

/// A connection to one peer.
pub struct Connection {
    target: NodeId,
    /// The peer's address in the membership openraft made this connection from.
    stored_addr: String,
    /// Where the last RPC went (for logs).
    addr: String,
    factory: NetworkFactory,
}

type RpcError<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl Connection {
    /// A client for the peer at its current address.
    fn client(&mut self) -> Result<RaftClient<Channel>, Unreachable> {
        let addr = self.factory.addresses.resolve(self.target, &self.stored_addr);
        let f = &self.factory;
        let client = f
            .channel(&addr)
            .map(|channel| {
                RaftClient::new(channel)
                    .max_decoding_message_size(f.max_message_bytes)
                    .max_encoding_message_size(f.max_message_bytes)
            })
            .map_err(|e| Unreachable::new(&std::io::Error::other(format!("bad peer address '{addr}': {e}"))));
        self.addr = addr;
        client
    }

    fn request<T>(&self, msg: T, option: &RPCOption) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(option.hard_ttl());
        req
    }

    fn payload<T: serde::Serialize>(&self, msg: &T) -> RaftPayload {
        RaftPayload {
            format: u32::from(codec::FORMAT_BINCODE_V1),
            payload: codec::encode(msg),
            cluster: self.factory.cluster.clone(),
            cluster_uid: self.factory.applied.cluster_uid(),
            target_id: self.target,
        }
    }

    fn reply<T: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        result: Result<tonic::Response<RaftPayload>, tonic::Status>,
    ) -> Result<T, RpcError<E>> {
        let reply = result.map_err(|status| status_to_rpc_error(&self.addr, status))?.into_inner();
        let decoded: Result<T, RaftError<NodeId, E>> =
            codec::decode(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn status_to_rpc_error<E: std::error::Error>(addr: &str, status: tonic::Status) -> RpcError<E> {
    match status.code() {
        // The peer is down or its port is closed, or another node listens there now: back off
        // instead of retrying hot.
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::FailedPrecondition => {
            tracing::debug!(%addr, %status, "peer unreachable");
            RPCError::Unreachable(Unreachable::new(&status))
        }
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        let mut client = self.client().map_err(RPCError::Unreachable)?;
        let payload = self.payload(&rpc);
        // openraft gives an AppendEntries one heartbeat interval to complete (including the
        // follower's fsync) and resends the same range on timeout; only PayloadTooLarge makes
        // it send fewer entries. So a message over the byte budget is refused here with a
        // hint of how many entries fit; a single entry always goes.
        let max_append_bytes = self.factory.max_append_bytes;
        if payload.payload.len() > max_append_bytes && rpc.entries.len() > 1 {
            let mut total = 0;
            let fit = rpc
                .entries
                .iter()
                .take_while(|e| {
                    total += codec::encode(e).len();
                    total <= max_append_bytes
                })
                .count();
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(fit.max(1) as u64)));
        }
        let entries = rpc.entries.len() as u64;
        let req = self.request(payload, &option);
        match client.append_entries(req).await {
            // The peer refused the message size: halve the batch.
            Err(status)
                if entries > 1
                    && matches!(status.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted) =>
            {
                Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(entries / 2)))
            }
            result => self.reply(result),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        let mut client = self.client().map_err(RPCError::Unreachable)?;
        let chunk = SnapshotChunk {
            format: u32::from(codec::FORMAT_BINCODE_V1),
            meta: codec::encode(&(&rpc.vote, &rpc.meta)),
            offset: rpc.offset,
            data: rpc.data,
            done: rpc.done,
            cluster: self.factory.cluster.clone(),
            cluster_uid: self.factory.applied.cluster_uid(),
            target_id: self.target,
        };
        let req = self.request(chunk, &option);
        self.reply(client.install_snapshot(req).await)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        let mut client = self.client().map_err(RPCError::Unreachable)?;
        let req = self.request(self.payload(&rpc), &option);
        self.reply(client.vote(req).await)
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // Retry an unreachable peer quickly at first, then every 500 ms.
        openraft::network::Backoff::new(
            [50, 100, 200].into_iter().chain(std::iter::repeat(500)).map(Duration::from_millis),
        )
    }
}

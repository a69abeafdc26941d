//! What a peer node sends the node-to-node services, for tests of what a node accepts from its
//! peers: a write forwarded to the leader (`weft.cluster.v1.Forward/Propose`), encoded as
//! `routing::forward` encodes it, and the grid's answer read back from the reply.

use weft_proto::cluster::v1 as cpb;

use crate::codec;
use crate::grid::{self, Command, Output};

/// The request a follower of `cluster` sends to hand `command` to the leader.
pub fn forward_request(cluster: &str, command: &Command) -> cpb::ProposeRequest {
    cpb::ProposeRequest { cluster: cluster.into(), command: codec::encode(command) }
}

/// The grid's answer in the leader's reply; `None` when it does not decode.
pub fn forward_answer(reply: &cpb::ProposeReply) -> Option<Result<Output, grid::Error>> {
    codec::decode(&reply.result).ok()
}

//! Raft: openraft's type configuration and the pieces the node wires together.
//!
//! The split follows openraft's examples: `log_store` (sled-backed log and vote),
//! [`state_machine`] (the grid plus snapshot files), `network` (tonic client to peers) and
//! `raft_service` (the gRPC service that receives peers' Raft RPCs, recording in
//! [`leader_contact`] when a leader was last heard from); `addresses` holds where peers whose
//! membership entry is stale are now.
//!
//! A log entry's application payload is a [`Request`]: a batch of grid commands stamped with
//! the leader's clock. Batching many client writes into one entry is how the leader turns
//! 64 concurrent clients into one fsync'd append.

pub(crate) mod addresses;
pub mod leader_contact;
#[allow(
    clippy::result_large_err,
    reason = "openraft's storage and network traits fix these error types (StorageError, RPCError), which are over clippy's size limit"
)]
pub(crate) mod log_store;
#[allow(
    clippy::result_large_err,
    reason = "openraft's storage and network traits fix these error types (StorageError, RPCError), which are over clippy's size limit"
)]
pub(crate) mod network;
pub(crate) mod raft_service;
#[allow(
    clippy::result_large_err,
    reason = "openraft's storage and network traits fix these error types (StorageError, RPCError), which are over clippy's size limit"
)]
pub mod state_machine;

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::grid;

use crate::NodeId;

openraft::declare_raft_types!(
    /// Weft's openraft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The running Raft node.
pub type Raft = openraft::Raft<TypeConfig>;

/// The application payload of a log entry. New variants are added, never changed, so old logs
/// stay readable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Grid commands applied in order at the leader-stamped time `now_ms`.
    Batch { now_ms: u64, commands: Vec<grid::Command> },
    /// A batch as above, stamped with the eager calls the leader held per session when it
    /// formed the entry (`Grid::apply_batch_held`): dispatch leaves their slots free.
    BatchHeld { now_ms: u64, held: Vec<(grid::execution::SessionId, u32)>, commands: Vec<grid::Command> },
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Batch { now_ms, commands } => {
                write!(f, "Batch(now_ms={now_ms}, commands={})", commands.len())
            }
            Request::BatchHeld { now_ms, held, commands } => {
                write!(f, "BatchHeld(now_ms={now_ms}, held={}, commands={})", held.len(), commands.len())
            }
        }
    }
}

/// What applying a [`Request`] returned: one result per command, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// One result per command of the batch (empty for membership and blank entries).
    pub results: Vec<Result<grid::Output, grid::Error>>,
}

/// Shorthand for openraft's storage error with our node id.
pub type StorageError = openraft::StorageError<NodeId>;

#[cfg(test)]
#[allow(
    clippy::result_large_err,
    reason = "openraft's storage and network traits fix these error types (StorageError, RPCError), which are over clippy's size limit"
)]
mod suite_test;

//! Weft's wire protocol: the protobuf packages and the tonic code generated from them.
//!
//! # Layout
//! - [`cluster::v1`]: node-to-node services (`Raft`: vote, append entries, chunked snapshots;
//!   `Forward`: writes handed to the leader, read indexes).
//! - [`fabric::v1`]: services for agents, tools and operators (`State`, `Cluster`,
//!   `Executions`, `Instances`, `Streams`, `Leases`, `Scaling`, `Tokens`).
//! - [`wire`]: the contract beyond the `.proto` files: metadata names, what a failed call's
//!   status says about whether it was applied, and limits clients check before sending.
//! - `etcd` (feature `etcd`): clients for a subset of etcd's v3 API (`etcdserverpb.KV` put and
//!   range, `etcdserverpb.Maintenance` status), for weft-bench's comparison with etcd.
//! - [`FILE_DESCRIPTOR_SET`]: every `.proto` file above, compiled, for gRPC server reflection.
//!
//! The generated types stay at the edge: the fabric converts them to its domain types in one
//! place (`weft_fabric::convert`).

pub mod wire;

/// The encoded `google.protobuf.FileDescriptorSet` of every Weft `.proto` file (with source
/// comments and imports): what a node's gRPC reflection service serves, so tools such as
/// `grpcurl` need no `.proto` files.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/weft_descriptor.bin"));

/// Node-to-node services.
pub mod cluster {
    /// Version 1 of the node-to-node protocol.
    pub mod v1 {
        tonic::include_proto!("weft.cluster.v1");
    }
}

/// Services for agents, tools and operators.
pub mod fabric {
    /// Version 1 of the agent-facing protocol.
    #[allow(clippy::large_enum_variant)]
    pub mod v1 {
        tonic::include_proto!("weft.fabric.v1");
    }
}

/// A hand-written subset of etcd's v3 API (`proto/etcd/`), wire-compatible with etcd 3.x:
/// what weft-bench needs to drive etcd with the same tonic client code as Weft.
#[cfg(feature = "etcd")]
pub mod etcd {
    /// `etcdserverpb`: the `KV` and `Maintenance` services (put, range, status).
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }

    /// `mvccpb`: a stored key and value.
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
}

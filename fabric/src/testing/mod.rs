//! Helpers for tests and benchmarks of code built on the fabric (the fabric's own integration
//! tests, the agent SDK, the examples, `weft-bench`): real nodes on 127.0.0.1, with data under
//! a directory the caller owns, either in the caller's process or as `weft node` processes.
//!
//! ```text
//!   test / benchmark ──spawn──► weft node (n1) ──┐   stdout + stderr → ROOT/n1.log
//!        │                      weft node (n2) ──┤   data           → ROOT/n1/
//!        │                      weft node (n3) ──┘   (killed -9 when the harness is dropped)
//!        └──Cluster/Status──► any node: the leader, the members
//! ```
//!
//! # Layout
//! - `local`: [`LocalCluster`], nodes in the caller's process on ephemeral ports.
//! - `process`: [`NodeProcess`], one `weft` child process started from a [`NodeCommand`];
//!   [`weft_binary`] finds the binary.
//! - `process_cluster`: [`ProcessCluster`], N `weft node` processes on free ports with static
//!   or gossip membership ([`ClusterOptions`]).
//! - `status`: asking nodes for the cluster status ([`status_at`], [`cluster_status`]) and
//!   bounded waits on it ([`wait_for_status`], [`wait_for_leader`]).
//! - `error`: [`Error`], what starting, stopping or waiting for a process can run into.
//! - `peer`: what a peer node sends the node-to-node services ([`forward_request`]), for tests
//!   of what a node accepts from its peers.
//! - [`exposition`]: a strict reader of the Prometheus text format, for tests that scrape
//!   `/metrics`.

mod error;
pub mod exposition;
mod local;
mod peer;
mod process;
mod process_cluster;
mod status;

pub use error::Error;
pub use local::{LocalCluster, listeners, members_of, test_config};
pub use peer::{forward_answer, forward_request};
pub use process::{NodeCommand, NodeProcess, weft_binary};
pub use process_cluster::{ClusterOptions, Membership, ProcessCluster, free_addrs, free_ports};
pub use status::{
    POLL_INTERVAL, STATUS_TIMEOUT, cluster_status, status_at, status_over, wait_for_leader, wait_for_status,
};

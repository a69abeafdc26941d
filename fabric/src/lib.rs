//! The Weft fabric node.
//!
//! # Layout
//! - [`grid`]: the replicated state machine: pure, deterministic `apply` over in-memory maps.
//! - [`codec`]: versioned binary encoding of everything persisted or sent between nodes.
pub mod codec;
pub mod grid;
pub mod raft;

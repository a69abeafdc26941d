//! What the node hosts for its clients: agent sessions (`Executions/Listen`), stream
//! listeners (`Streams/Listen`), and the reaper that ends those whose stream or node is gone.
//!
//! ```text
//!   agent ══Listen══► host (this node) ──OpenSession / Complete / Renew──► routing ─► leader
//!     ▲                 │ registers its key with the watch hub
//!     └──assignments────┘◄── hub ◄── state machine (every applied entry)
//!
//!   reaper, every node:  a session of this node whose stream is gone ─► CloseSession
//!   reaper, the leader:  a session whose node gossip declares down or left,
//!                        or that Raft no longer counts as a member      ─► CloseSession
//! ```
//!
//! Which session gets which execution is decided by the grid when entries are applied
//! (dispatch, in [`crate::grid`]); the host only carries the decision to its stream.
//!
//! # Layout
//! - [`host`]: one `Listen` stream: open the session, push assignments and revocations,
//!   propose what the agent reports, close the session when the stream ends.
//! - [`listener`]: one `Streams/Listen` stream: a listener on a cursor (attach, push what the
//!   grid delivers, propose acks and credit, detach) or a plain reader of this replica.
//! - [`reaper`]: closes sessions and detaches listeners nobody hosts any more.

pub mod host;
pub mod listener;
pub mod reaper;

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

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::grid::Command;
use crate::routing::{self, Context};

/// How long a node keeps trying to end a session or a listener it hosted (the reaper covers
/// the rest).
const END_RETRY_FOR: Duration = Duration::from_secs(30);
const END_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Proposes `command` (a session close, a listener detach), retrying for [`END_RETRY_FOR`]
/// until it is taken or the node shuts down; the reaper covers what this gives up on.
pub(crate) async fn end_in_grid(ctx: Context, command: Command, shutdown: CancellationToken) {
    let until = Instant::now() + END_RETRY_FOR;
    loop {
        let attempt = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            answer = routing::propose(&ctx, command.clone()) => answer,
        };
        match attempt {
            Ok(_) => return,
            Err(e) if Instant::now() >= until => {
                tracing::warn!(?command, error = %e, "could not end a session or listener; the reaper will");
                return;
            }
            Err(_) => tokio::time::sleep(END_RETRY_PAUSE).await,
        }
    }
}

//! Audit notes from the parts of a node below the routing layer: a changed TLS certificate or
//! gossip key file (accepted or refused) is a configuration reload, which the audit trail
//! records with the node that did it.
//!
//! A part calls [`Notes::record`]; the note waits in a bounded queue ([`CAPACITY`]) and a task
//! the node runs ([`run`]) proposes it as [`Command::AuditNote`] through the one path to the
//! leader. Recording never blocks the caller: a full queue drops the note with a warning, and
//! a note the cluster cannot take (no quorum) within [`PROPOSE_TIMEOUT`] is logged and
//! dropped. Notes never hold secrets: they name files and certificate serials or key ids.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::grid::Command;
use crate::grid::audit::{Actor, AuditNote};

/// Notes waiting to be proposed, at most.
pub const CAPACITY: usize = 32;
/// How long one note may take to commit before it is given up.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a part of the node records what it did (cheap to clone).
#[derive(Debug, Clone)]
pub struct Notes {
    node: u64,
    tx: Option<mpsc::Sender<AuditNote>>,
}

impl Notes {
    /// Notes that go nowhere (tests, tools).
    pub fn none() -> Self {
        Self { node: 0, tx: None }
    }

    /// Queues a note of `operation` on `target` with its `outcome` (`ok` or what went wrong),
    /// done by the fabric on this node.
    pub fn record(&self, operation: &str, target: String, outcome: String) {
        let Some(tx) = &self.tx else { return };
        let note =
            AuditNote { actor: Actor::fabric(self.node), operation: operation.into(), target, outcome };
        if let Err(e) = tx.try_send(note) {
            tracing::warn!(operation, error = %e, "an audit note was dropped (the queue is full or closed)");
        }
    }
}

/// A queue of notes for node `node`: the handle parts record with, and the receiving end
/// [`run`] drains.
pub fn channel(node: u64) -> (Notes, mpsc::Receiver<AuditNote>) {
    let (tx, rx) = mpsc::channel(CAPACITY);
    (Notes { node, tx: Some(tx) }, rx)
}

/// Proposes queued notes one at a time until `shutdown`.
pub(crate) async fn run(
    ctx: crate::routing::Context,
    mut rx: mpsc::Receiver<AuditNote>,
    shutdown: CancellationToken,
) {
    loop {
        let note = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            note = rx.recv() => match note {
                Some(note) => note,
                None => return,
            },
        };
        let operation = note.operation.clone();
        let deadline = Instant::now() + PROPOSE_TIMEOUT;
        let proposed = tokio::time::timeout(
            PROPOSE_TIMEOUT,
            crate::routing::forward::propose_until(&ctx, Command::AuditNote(Box::new(note)), deadline),
        )
        .await;
        match proposed {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(operation, error = %e, "cannot record a note in the audit trail"),
            Err(_) => tracing::warn!(operation, "recording a note in the audit trail timed out"),
        }
    }
}

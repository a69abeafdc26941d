//! When this node last heard from a leader it accepted.
//!
//! openraft's metrics name a follower's leader from the vote it persisted, so a follower that
//! restarts reports the leader it had before it stopped without having heard from it since.
//! The Raft service records every AppendEntries (heartbeats included) and snapshot chunk this
//! node accepts, so readiness can ask whether that leader is still there.

use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::NodeId;

/// The last accepted message from a leader: who sent it and when it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contact {
    /// The leader that sent it.
    pub leader: NodeId,
    /// When it was accepted.
    pub at: Instant,
}

/// Shared between the Raft service (which records) and readiness (which reads). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct LeaderContact(Arc<Mutex<Option<Contact>>>);

impl LeaderContact {
    /// Records that a message from `leader` was accepted now.
    pub fn record(&self, leader: NodeId) {
        *self.lock() = Some(Contact { leader, at: Instant::now() });
    }

    /// The last contact since this node started, if any.
    pub fn last(&self) -> Option<Contact> {
        *self.lock()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Contact>> {
        // A panic while holding the lock cannot leave an `Option<Contact>` half-written.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

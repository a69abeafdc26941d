//! Two sides of a comparison measured at the same time (`--side-by-side`): each side waits
//! for the other before every measured row, so the two windows overlap and see the same
//! machine. On a machine shared with other work, one-after-the-other comparisons take the
//! load's drift between their windows for a difference between the sides.
//!
//! ```text
//!   side A: start cluster ─ wait ─┬─ row 1 ─ wait ─┬─ row 2 ─ …
//!   side B: start cluster ────────┴─ row 1 ────────┴─ row 2 ─ …
//! ```
//!
//! Both sides must measure the same rows in the same order (the same arguments). Run them with
//! `tokio::try_join!`, so that a side that fails drops the other instead of leaving it waiting.

use tokio::sync::Barrier;

/// The meeting point of two sides before each row.
pub struct Lockstep {
    barrier: Barrier,
}

impl Lockstep {
    /// A meeting point for two sides.
    pub fn new() -> Self {
        Self { barrier: Barrier::new(2) }
    }

    /// Waits until the other side is ready for its next row too.
    pub async fn meet(&self) {
        self.barrier.wait().await;
    }
}

/// Waits at `lockstep` when there is one (side by side), else goes on at once.
pub async fn meet(lockstep: Option<&Lockstep>) {
    if let Some(l) = lockstep {
        l.meet().await;
    }
}

//! The scaler's clock: milliseconds since the Unix epoch, read as a start time plus tokio's
//! monotonic time since, so tests with `tokio::time::pause()` move it by hand.

use std::time::{SystemTime, UNIX_EPOCH};

/// A clock; cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_ms: u64,
    origin: tokio::time::Instant,
}

impl Clock {
    /// The system's clock (read once, then advanced monotonically).
    pub fn system() -> Self {
        let base_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Self::at(base_ms)
    }

    /// A clock that reads `base_ms` now.
    pub fn at(base_ms: u64) -> Self {
        Self { base_ms, origin: tokio::time::Instant::now() }
    }

    /// Now, ms since the epoch.
    pub fn now_ms(&self) -> u64 {
        self.base_ms + self.origin.elapsed().as_millis() as u64
    }
}

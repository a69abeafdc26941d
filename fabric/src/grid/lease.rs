//! Leases: named, time-limited ownership kept in the grid, each grant with a fencing token.
//!
//! ```text
//!   free ──Acquire(holder)──► held (token t, expires_at_ms) ──Renew(t) / Acquire(same holder)──┐
//!    ▲                          │  │                                                          │
//!    │                          │  └──────────────────────────────◄─────────────────────────┘
//!    ├──Release(t)──────────────┘
//!    └──the grid's clock passes expires_at_ms (removed by a Tick)
//! ```
//!
//! A lease is held from the entry that grants it until the grid's clock reaches its expiry
//! (unless renewed) or it is released. Each grant takes a token from one counter for all the
//! leases of the cluster, so a token is never given twice and a later grant always has a
//! greater one. A write fenced by `(lease, token)` applies only while that grant holds:
//! a holder that paused past its expiry, or was cut off while another took over, cannot
//! overwrite its successor's work.
//!
//! Expiry is judged against the entry's time: a lease whose expiry the clock has reached is
//! free for `Acquire` and lost for `Renew` and fenced writes at once, even before the `Tick`
//! that removes it is applied.
//!
//! This file holds the types and bounds; how `apply` changes leases is in `leases.rs`.

use serde::{Deserialize, Serialize};

use super::{Error, namespace};

/// Longest a grant lasts unless renewed: one hour.
pub const MAX_LEASE_TTL_MS: u64 = 3_600_000;
/// Longest holder name, in bytes.
pub const MAX_HOLDER_BYTES: usize = 256;
/// Most leases held at once in a cluster (an `Acquire` of a new one past this is refused).
pub const MAX_LEASES: usize = 10_000;
/// Most holders waiting for one lease.
pub const MAX_LEASE_WAITERS: usize = 64;
/// Most holders waiting for leases in a cluster.
pub const MAX_WAITERS: usize = 10_000;
/// Longest a holder may wait for a lease: ten minutes.
pub const MAX_LEASE_WAIT_MS: u64 = 600_000;

/// A holder waiting for a lease, in the order they asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    /// Who waits.
    pub holder: String,
    /// How long its grant will last unless renewed.
    pub ttl_ms: u64,
    /// Until when it waits (leader-stamped ms); after that it is skipped.
    pub until_ms: u64,
}

/// One held lease, as the grid keeps it (and as `Get` reports it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Its name.
    pub name: String,
    /// Who holds it.
    pub holder: String,
    /// The fencing token of this grant.
    pub token: u64,
    /// When this grant was made (leader-stamped ms).
    pub acquired_ms: u64,
    /// When it runs out unless renewed (leader-stamped ms).
    pub expires_at_ms: u64,
}

impl Lease {
    /// Whether the grant still holds at `now_ms`.
    pub fn held_at(&self, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms
    }
}

/// Checks a lease name: 1-128 characters of `[A-Za-z0-9._-]`, like a namespace segment.
pub fn validate_lease_name(name: &str) -> Result<(), Error> {
    super::validate_name("lease", name)
}

/// Checks a holder: 1 to [`MAX_HOLDER_BYTES`] bytes.
pub fn validate_holder(holder: &str) -> Result<(), Error> {
    if holder.is_empty() || holder.len() > MAX_HOLDER_BYTES {
        return Err(Error::InvalidLease {
            reason: format!(
                "the holder '{}' is {} bytes; expected 1 to {MAX_HOLDER_BYTES}",
                namespace::clip(holder),
                holder.len()
            ),
        });
    }
    Ok(())
}

/// Checks a wait: 1 ms to [`MAX_LEASE_WAIT_MS`].
pub fn validate_wait(wait_ms: u64) -> Result<(), Error> {
    if !(1..=MAX_LEASE_WAIT_MS).contains(&wait_ms) {
        return Err(Error::InvalidLease {
            reason: format!(
                "wait_ms {wait_ms} is out of range; expected 1 to {MAX_LEASE_WAIT_MS} (ten minutes)"
            ),
        });
    }
    Ok(())
}

/// Checks a time to live: 1 ms to [`MAX_LEASE_TTL_MS`].
pub fn validate_ttl(ttl_ms: u64) -> Result<(), Error> {
    if !(1..=MAX_LEASE_TTL_MS).contains(&ttl_ms) {
        return Err(Error::InvalidLease {
            reason: format!("ttl_ms {ttl_ms} is out of range; expected 1 to {MAX_LEASE_TTL_MS} (one hour)"),
        });
    }
    Ok(())
}

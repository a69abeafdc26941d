//! How `apply` changes leases: acquire (or renew by the holder), renew by token, release,
//! writes fenced by a grant, and the expiry a `Tick` fires. The types, the bounds and the
//! life of a lease are in `lease.rs`.

use super::lease::{Lease, MAX_LEASES};
use super::{Command, Error, Grid, Leases, Output};

impl Grid {
    /// Applies `AcquireLease`: a free lease (never held, released, or expired at the entry's
    /// time) is granted with a new token; the holder that holds it renews it (same token);
    /// another holder is refused.
    pub(super) fn acquire_lease(&mut self, name: &str, holder: &str, ttl_ms: u64) -> Result<Output, Error> {
        let now = self.now_ms;
        let Leases { held, timers, last_token } = &mut self.leases;
        let expires_at_ms = now.saturating_add(ttl_ms);
        let count = held.len();
        match held.get_mut(name) {
            Some(lease) if lease.held_at(now) && lease.holder == holder => {
                timers.remove(&(lease.expires_at_ms, name.to_owned()));
                lease.expires_at_ms = expires_at_ms;
                timers.insert((expires_at_ms, name.to_owned()));
                return Ok(Output::Leased(lease.clone()));
            }
            Some(lease) if lease.held_at(now) => {
                return Err(Error::LeaseHeld {
                    lease: name.to_owned(),
                    holder: lease.holder.clone(),
                    token: lease.token,
                    expires_at_ms: lease.expires_at_ms,
                    remaining_ms: lease.expires_at_ms - now,
                });
            }
            // Expired but not yet removed by a Tick: free, and replaced below.
            Some(lease) => {
                timers.remove(&(lease.expires_at_ms, name.to_owned()));
            }
            None if count >= MAX_LEASES => {
                return Err(Error::TooMany {
                    what: "leases held".into(),
                    count,
                    limit: MAX_LEASES,
                    setting: "MAX_LEASES, fixed".into(),
                });
            }
            None => {}
        }
        *last_token += 1;
        let lease = Lease {
            name: name.to_owned(),
            holder: holder.to_owned(),
            token: *last_token,
            acquired_ms: now,
            expires_at_ms,
        };
        timers.insert((expires_at_ms, name.to_owned()));
        held.insert(name.to_owned(), lease.clone());
        Ok(Output::Leased(lease))
    }

    /// Applies `RenewLease`: extends the grant `token` by `ttl_ms` from the entry's time, if it
    /// still holds the lease.
    pub(super) fn renew_lease(&mut self, name: &str, token: u64, ttl_ms: u64) -> Result<Output, Error> {
        self.check_fence(name, token)?;
        let now = self.now_ms;
        let Leases { held, timers, .. } = &mut self.leases;
        if let Some(lease) = held.get_mut(name) {
            timers.remove(&(lease.expires_at_ms, name.to_owned()));
            lease.expires_at_ms = now.saturating_add(ttl_ms);
            timers.insert((lease.expires_at_ms, name.to_owned()));
            return Ok(Output::Leased(lease.clone()));
        }
        Err(self.lease_lost(name, token))
    }

    /// Applies `ReleaseLease`: gives the lease up if the grant `token` holds it; otherwise
    /// changes nothing and says so (`released: false`), so releasing twice is harmless.
    pub(super) fn release_lease(&mut self, name: &str, token: u64) -> Output {
        if self.check_fence(name, token).is_err() {
            return Output::LeaseReleased { released: false };
        }
        if let Some(lease) = self.leases.held.remove(name) {
            self.leases.timers.remove(&(lease.expires_at_ms, name.to_owned()));
        }
        Output::LeaseReleased { released: true }
    }

    /// Applies `Fenced`: the key/value command, only while the grant `token` holds `lease`.
    pub(super) fn fenced(&mut self, lease: &str, token: u64, command: &Command) -> Result<Output, Error> {
        self.check_fence(lease, token)?;
        match command {
            Command::Put { namespace, key, value, ttl_ms, if_absent } => {
                self.put(namespace, key, value, *ttl_ms, *if_absent)
            }
            Command::CompareAndSet { namespace, key, expected_version, value, ttl_ms } => {
                self.compare_and_set(namespace, key, *expected_version, value, *ttl_ms)
            }
            Command::Delete { namespace, key, expected_version } => {
                self.delete(namespace, key, *expected_version)
            }
            // `validate_shape` refuses the rest before apply gets here.
            _ => Err(Error::InvalidLease { reason: FENCE_REFUSAL.into() }),
        }
    }

    /// Removes leases whose expiry the grid's clock has reached, at most `limit`; how many.
    pub(super) fn expire_leases(&mut self, limit: u64) -> u64 {
        let mut fired = 0;
        while fired < limit
            && let Some((at, _)) = self.leases.timers.first()
            && *at <= self.now_ms
        {
            let Some((at, name)) = self.leases.timers.pop_first() else { break };
            if self.leases.held.get(&name).is_some_and(|l| l.expires_at_ms == at) {
                self.leases.held.remove(&name);
            }
            fired += 1;
        }
        fired
    }

    /// When the next lease runs out, if any is held.
    pub(super) fn next_lease_expiry_ms(&self) -> Option<u64> {
        self.leases.timers.first().map(|(at, _)| *at)
    }

    /// Whether the grant `token` holds `lease` at the grid's clock.
    fn check_fence(&self, lease: &str, token: u64) -> Result<(), Error> {
        match self.leases.held.get(lease) {
            Some(l) if l.token == token && l.held_at(self.now_ms) => Ok(()),
            _ => Err(self.lease_lost(lease, token)),
        }
    }

    /// Why the grant `token` does not hold `lease` now.
    fn lease_lost(&self, lease: &str, token: u64) -> Error {
        let now = self.now_ms;
        let reason = match self.leases.held.get(lease) {
            Some(l) if l.token == token => {
                format!(
                    "it expired at {} ({} ms before this request)",
                    l.expires_at_ms,
                    now - l.expires_at_ms
                )
            }
            Some(l) if l.held_at(now) => {
                format!("it is held with another token, {}, by '{}'", l.token, l.holder)
            }
            Some(l) => format!(
                "it was granted with another token, {}, to '{}', and that grant expired too",
                l.token, l.holder
            ),
            None if token > self.leases.last_token => "this cluster never granted that token".to_owned(),
            None => "nobody holds it: it was released or it expired".to_owned(),
        };
        Error::LeaseLost { lease: lease.to_owned(), token, reason }
    }
}

/// Why a command other than a key/value write may not be fenced.
pub(super) const FENCE_REFUSAL: &str = "only Put, CompareAndSet and Delete may be fenced";

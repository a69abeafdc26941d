//! How `apply` changes leases: acquire (or renew by the holder), renew by token, release,
//! writes fenced by a grant, and the expiry a `Tick` fires. The types, the bounds and the
//! life of a lease are in `lease.rs`.

use super::execution::Effect;
use super::lease::{Lease, MAX_LEASE_WAITERS, MAX_LEASES, MAX_WAITERS, Waiter};
use super::{Command, Completed, Error, Grid, Leases, Output, Waiting};

impl Grid {
    /// Applies `AcquireLease`: a free lease (never held, released, or expired at the entry's
    /// time) is granted with a new token; the holder that holds it renews it (same token);
    /// another holder is refused.
    /// A free lease that holders wait for (it expired and the tick that hands it on is not
    /// applied yet) is refused: it goes to the first of them, never to a holder that asks
    /// without waiting.
    pub(super) fn acquire_lease(&mut self, name: &str, holder: &str, ttl_ms: u64) -> Result<Output, Error> {
        let now = self.now_ms;
        if !self.leases.held.get(name).is_some_and(|l| l.held_at(now))
            && let Some(first) =
                self.waiting.queues.get(name).and_then(|q| q.iter().find(|w| w.until_ms > now))
        {
            return Err(Error::LeaseAwaited {
                lease: name.to_owned(),
                waiting: self.lease_waiters(name).len(),
                first: first.holder.clone(),
            });
        }
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
        self.promote(name);
        Output::LeaseReleased { released: true }
    }

    /// Applies `AwaitLease`: as `AcquireLease`, but where that would refuse because another
    /// holder holds the lease, `holder` joins the lease's queue (or keeps its place in it,
    /// with the new times) until `wait_ms` from the entry's time.
    pub(super) fn await_lease(
        &mut self,
        name: &str,
        holder: &str,
        ttl_ms: u64,
        wait_ms: u64,
    ) -> Result<Output, Error> {
        match self.acquire_lease(name, holder, ttl_ms) {
            Err(Error::LeaseHeld { .. } | Error::LeaseAwaited { .. }) => {}
            other => return other,
        }
        let now = self.now_ms;
        let until_ms = now.saturating_add(wait_ms);
        let queue = self.waiting.queues.get(name);
        // A holder still waiting keeps its place; one whose wait ran out goes to the back.
        if let Some(at) = queue.and_then(|q| q.iter().position(|w| w.holder == holder && w.until_ms > now)) {
            self.waiting.refresh(name, at, ttl_ms, until_ms);
            return Ok(Output::LeaseQueued { position: at as u32 + 1, until_ms });
        }
        // Waiters whose wait ran out leave at the next tick; until then they take no room.
        let live = queue.map_or(0, |q| q.iter().filter(|w| w.until_ms > now).count());
        if live >= MAX_LEASE_WAITERS {
            return Err(Error::TooMany {
                what: format!("holders waiting for lease '{name}'"),
                count: live,
                limit: MAX_LEASE_WAITERS,
                setting: "MAX_LEASE_WAITERS, fixed".into(),
            });
        }
        let dead = self.waiting.ends.iter().take_while(|(at, ..)| *at <= now).count();
        let waiting = self.waiting.ends.len();
        if waiting - dead >= MAX_WAITERS {
            return Err(Error::TooMany {
                what: "holders waiting for leases".into(),
                count: waiting - dead,
                limit: MAX_WAITERS,
                setting: "MAX_WAITERS, fixed".into(),
            });
        }
        self.waiting.drop_dead(name, now);
        let position = self.waiting.push(name, Waiter { holder: holder.to_owned(), ttl_ms, until_ms });
        Ok(Output::LeaseQueued { position: position as u32, until_ms })
    }

    /// Applies `StopWaiting`: `holder` leaves the lease's queue; the answer carries the grant
    /// it holds now, if the lease went to it before.
    pub(super) fn stop_waiting(&mut self, name: &str, holder: &str) -> Output {
        if let Some(at) =
            self.waiting.queues.get(name).and_then(|q| q.iter().position(|w| w.holder == holder))
        {
            self.waiting.remove(name, at);
        }
        let now = self.now_ms;
        let grant = self.leases.held.get(name).filter(|l| l.held_at(now) && l.holder == holder).cloned();
        Output::WaitEnded { grant }
    }

    /// If lease `name` is free at the grid's clock, grants it to the first holder still
    /// waiting for it (with a new token); waiters whose wait ran out before leave the queue.
    /// Called where a lease becomes free: its release and the tick that removes it.
    fn promote(&mut self, name: &str) {
        let now = self.now_ms;
        if self.leases.held.get(name).is_some_and(|l| l.held_at(now)) {
            return;
        }
        let mut next = None;
        while let Some(w) = self.waiting.remove(name, 0) {
            if w.until_ms > now {
                next = Some(w);
                break;
            }
        }
        let Some(w) = next else { return };
        let Leases { held, timers, last_token } = &mut self.leases;
        if let Some(old) = held.remove(name) {
            timers.remove(&(old.expires_at_ms, name.to_owned()));
        }
        *last_token += 1;
        let expires_at_ms = now.saturating_add(w.ttl_ms);
        timers.insert((expires_at_ms, name.to_owned()));
        held.insert(
            name.to_owned(),
            Lease {
                name: name.to_owned(),
                holder: w.holder,
                token: *last_token,
                acquired_ms: now,
                expires_at_ms,
            },
        );
    }

    /// Removes waiters whose wait ran out by the grid's clock, at most `limit`; how many.
    pub(super) fn expire_waits(&mut self, limit: u64) -> u64 {
        let now = self.now_ms;
        let mut fired = 0;
        while fired < limit
            && let Some((at, name, holder)) = self.waiting.ends.first().cloned()
            && at <= now
        {
            let at = self.waiting.queues.get(&name).and_then(|q| q.iter().position(|w| w.holder == holder));
            match at {
                Some(at) => {
                    self.waiting.remove(&name, at);
                }
                // Not reachable while the fields agree; never loop on it.
                None => {
                    self.waiting.ends.pop_first();
                }
            }
            fired += 1;
        }
        fired
    }

    /// When the next wait runs out, if any holder waits.
    pub(super) fn next_wait_end_ms(&self) -> Option<u64> {
        self.waiting.ends.first().map(|(at, ..)| *at)
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
                self.promote(&name);
            }
            fired += 1;
        }
        fired
    }

    /// When the next lease runs out, if any is held.
    pub(super) fn next_lease_expiry_ms(&self) -> Option<u64> {
        self.leases.timers.first().map(|(at, _)| *at)
    }

    /// The first [`Effect::Fence`] of `effects` whose grant does not hold its lease now, as
    /// the completion's answer.
    pub(super) fn lost_fence(&self, effects: &[Effect]) -> Option<Completed> {
        effects.iter().find_map(|effect| match effect {
            Effect::Fence { lease, token } => match self.check_fence(lease, *token) {
                Err(Error::LeaseLost { lease, token, reason }) => {
                    Some(Completed::LockLost { lease, token, reason })
                }
                _ => None,
            },
            _ => None,
        })
    }

    /// Whether the grant `token` holds `lease` at the grid's clock.
    pub(super) fn check_fence(&self, lease: &str, token: u64) -> Result<(), Error> {
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

/// The only changes to [`Waiting`]: each keeps the queues and the end times agreeing.
impl Waiting {
    /// Appends `w` to lease `name`'s queue; its position (1 is next).
    fn push(&mut self, name: &str, w: Waiter) -> usize {
        self.ends.insert((w.until_ms, name.to_owned(), w.holder.clone()));
        let queue = self.queues.entry(name.to_owned()).or_default();
        queue.push_back(w);
        queue.len()
    }

    /// New times for the waiter at `at` of lease `name`'s queue.
    fn refresh(&mut self, name: &str, at: usize, ttl_ms: u64, until_ms: u64) {
        let Some(w) = self.queues.get_mut(name).and_then(|q| q.get_mut(at)) else { return };
        self.ends.remove(&(w.until_ms, name.to_owned(), w.holder.clone()));
        w.ttl_ms = ttl_ms;
        w.until_ms = until_ms;
        self.ends.insert((until_ms, name.to_owned(), w.holder.clone()));
    }

    /// Takes the waiter at `at` out of lease `name`'s queue.
    fn remove(&mut self, name: &str, at: usize) -> Option<Waiter> {
        let queue = self.queues.get_mut(name)?;
        let w = queue.remove(at)?;
        if queue.is_empty() {
            self.queues.remove(name);
        }
        self.ends.remove(&(w.until_ms, name.to_owned(), w.holder.clone()));
        Some(w)
    }

    /// Takes the waiters of lease `name` whose wait ran out by `now` out of its queue.
    fn drop_dead(&mut self, name: &str, now: u64) {
        while let Some(at) = self.queues.get(name).and_then(|q| q.iter().position(|w| w.until_ms <= now)) {
            self.remove(name, at);
        }
    }
}

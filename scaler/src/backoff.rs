//! Restart back-off, per replica slot (a pool slot or an instance): pure, on times given by
//! the caller.
//!
//! ```text
//!  failure (crash, failed start, start timeout) ──► failures += 1
//!      next start not before now + min(initial × 2^(failures-1), cap)
//!  a replica of the slot ran reset_after_ms ──────► failures = 0 (the next crash waits initial)
//!  failures ≥ crash_loop_threshold ───────────────► crash-looping (reported, still retried)
//! ```
//!
//! A failed start (the command does not exist, the image is missing) counts like a crash, so
//! nothing is ever retried in a tight loop.

use serde::{Deserialize, Serialize};

/// An agent's back-off settings (from its configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// First delay after a failure, in ms.
    pub initial_ms: u64,
    /// Longest delay, in ms.
    pub cap_ms: u64,
    /// Running this long forgets earlier failures, in ms.
    pub reset_after_ms: u64,
    /// Failures in a row that make a crash loop.
    pub crash_loop_threshold: u32,
}

impl Policy {
    /// The delay after `failures` failures in a row (at least one).
    pub fn delay_ms(&self, failures: u32) -> u64 {
        let doublings = failures.saturating_sub(1).min(63);
        self.initial_ms.saturating_mul(1u64 << doublings.min(62)).min(self.cap_ms)
    }
}

/// How a replica ended, as remembered for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Its exit code, if it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// What went wrong, in words (a crash, a failed start and its cause, a start timeout).
    pub reason: String,
    /// The tail of its output (bounded).
    pub output_tail: String,
    /// When, in ms since the epoch.
    pub at_ms: u64,
}

/// One slot's back-off state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
    not_before_ms: u64,
    last: Option<Failure>,
}

impl Backoff {
    /// Records a failure at `failure.at_ms` of a replica that had run `ran_ms` (0 for a
    /// failed start); returns when the slot may start again.
    pub fn failed(&mut self, policy: &Policy, ran_ms: u64, failure: Failure) -> u64 {
        if ran_ms >= policy.reset_after_ms {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        self.not_before_ms = failure.at_ms.saturating_add(policy.delay_ms(self.failures));
        self.last = Some(failure);
        self.not_before_ms
    }

    /// A replica of the slot has been running since `since_ms`; at `now_ms`, forgets the
    /// failures once it ran long enough.
    pub fn running(&mut self, policy: &Policy, since_ms: u64, now_ms: u64) {
        if self.failures > 0 && now_ms.saturating_sub(since_ms) >= policy.reset_after_ms {
            self.failures = 0;
            self.last = None;
        }
    }

    /// Whether the slot may start a replica at `now_ms`.
    pub fn may_start(&self, now_ms: u64) -> bool {
        now_ms >= self.not_before_ms
    }

    /// When the slot may start again (0: at once).
    pub fn not_before_ms(&self) -> u64 {
        self.not_before_ms
    }

    /// Failures in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether the failures in a row reach the policy's threshold.
    pub fn crash_looping(&self, policy: &Policy) -> bool {
        self.failures >= policy.crash_loop_threshold
    }

    /// The last failure, while the failures are remembered.
    pub fn last(&self) -> Option<&Failure> {
        self.last.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const POLICY: Policy =
        Policy { initial_ms: 10_000, cap_ms: 300_000, reset_after_ms: 600_000, crash_loop_threshold: 3 };

    fn crash(at_ms: u64) -> Failure {
        Failure { exit_code: Some(1), reason: "crashed".into(), at_ms, ..Failure::default() }
    }

    #[test]
    fn delays_double_from_initial_to_the_cap() {
        let delays: Vec<u64> = (1..=7).map(|n| POLICY.delay_ms(n)).collect();
        assert_eq!(delays, [10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000]);
        assert_eq!(POLICY.delay_ms(u32::MAX), 300_000);
    }

    #[test]
    fn failures_in_a_row_back_off_and_become_a_crash_loop() {
        let mut b = Backoff::default();
        assert!(b.may_start(0));
        assert_eq!(b.failed(&POLICY, 0, crash(1_000)), 11_000);
        assert!(!b.may_start(10_999) && b.may_start(11_000));
        assert!(!b.crash_looping(&POLICY));
        assert_eq!(b.failed(&POLICY, 500, crash(12_000)), 32_000);
        assert_eq!(b.failed(&POLICY, 500, crash(33_000)), 73_000);
        assert!(b.crash_looping(&POLICY));
        assert_eq!(b.last().unwrap().exit_code, Some(1));
    }

    #[test]
    fn running_long_enough_forgets_the_failures() {
        let mut b = Backoff::default();
        for at in [0, 20_000, 60_000] {
            b.failed(&POLICY, 0, crash(at));
        }
        b.running(&POLICY, 200_000, 700_000);
        assert_eq!(b.failures(), 3, "ran 500 s: not yet");
        b.running(&POLICY, 200_000, 800_000);
        assert_eq!(b.failures(), 0);
        assert!(b.last().is_none());
        // A crash after a long run waits the initial delay again.
        let mut b = Backoff::default();
        b.failed(&POLICY, 0, crash(0));
        b.failed(&POLICY, 0, crash(10_000));
        assert_eq!(b.failed(&POLICY, 700_000, crash(800_000)), 810_000);
        assert_eq!(b.failures(), 1);
    }

    proptest! {
        #[test]
        fn never_a_tight_loop(ran in proptest::collection::vec(0u64..1_000_000, 1..40)) {
            let mut b = Backoff::default();
            let mut now = 0u64;
            for r in ran {
                now += r;
                let next = b.failed(&POLICY, r, crash(now));
                prop_assert!(next >= now + POLICY.initial_ms);
                prop_assert!(next <= now + POLICY.cap_ms);
                now = next;
            }
        }
    }
}

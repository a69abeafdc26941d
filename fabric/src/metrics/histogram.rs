//! [`Histogram`]: fixed buckets of seconds, observed without locks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets for request and commit latencies: 0.5 ms to 10 s.
pub const LATENCY_BUCKETS_S: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Buckets for log fsyncs: 100 µs to 1 s.
pub const FSYNC_BUCKETS_S: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
/// Buckets for executions' queue wait and run time (leader-clock milliseconds): 1 ms to 5 min.
pub const EXECUTION_BUCKETS_S: &[f64] =
    &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
/// Buckets for snapshot builds: 10 ms to 2 min.
pub const SNAPSHOT_BUCKETS_S: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// A Prometheus histogram of durations. Each bucket counts only its own observations (one
/// atomic add per observation); the exposition makes them cumulative.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One more than `bounds`: the last counts observations above every bound.
    counts: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

/// What a histogram holds at one moment, cumulative as the exposition wants it.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// `(upper bound, observations <= bound)`, in increasing order of bound.
    pub buckets: Vec<(f64, u64)>,
    /// Every observation (the `+Inf` bucket and `_count`).
    pub count: u64,
    /// Sum of the observations, in seconds.
    pub sum_s: f64,
}

impl Histogram {
    /// An empty histogram with these upper bounds (seconds, increasing).
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds must increase");
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self.bounds.partition_point(|b| *b < s);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Records one observation of `ms` milliseconds.
    pub fn observe_ms(&self, ms: u64) {
        self.observe(Duration::from_millis(ms));
    }

    /// The histogram now. `count` is the sum of the buckets read, so the `+Inf` bucket and
    /// `_count` always agree.
    pub fn snapshot(&self) -> Snapshot {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (bound, count) in self.bounds.iter().zip(self.counts.iter()) {
            total += count.load(Ordering::Relaxed);
            buckets.push((*bound, total));
        }
        total += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        Snapshot { buckets, count: total, sum_s: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_inclusive() {
        let h = Histogram::new(&[0.001, 0.01, 0.1]);
        h.observe_ms(1); // on the bound: counts in le="0.001"
        h.observe(Duration::from_micros(5_500));
        h.observe_ms(2_000); // above every bound: only +Inf
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(0.001, 1), (0.01, 2), (0.1, 2)]);
        assert_eq!(s.count, 3);
        assert!((s.sum_s - 2.0065).abs() < 1e-9, "{}", s.sum_s);
    }
}

//! A node's Prometheus metrics: the histograms and counters the layers fill, and the text
//! format `/metrics` serves them in.
//!
//! Conventions (Prometheus): base units (seconds, bytes), counters end in `_total`, latency
//! histograms in `_seconds`; every family has `# HELP` and `# TYPE`; every `weft_*` series
//! has a `node` label. Every label set is bounded (see each part), so memory is too.
//!
//! # Layout
//! - [`Registry`] (here): one per node, shared by the layers that fill it.
//! - [`histogram`]: a lock-free fixed-bucket histogram and the bucket sets.
//! - [`grpc`]: the middleware that times gRPC requests by method and status code.
//! - [`executions`]: executions created, finished and retried by agent and delegate, queue
//!   wait and run time by agent, counted as the grid applies them.
//! - [`process`]: `process_*` from `/proc`.
//! - [`text`]: the exposition writer.
//!
//! Who fills what: the proposer times commits, the log store's flusher its fsyncs, the state
//! machine snapshot builds and executions, the gRPC middleware requests. `/metrics` (in
//! `http`) reads the rest from Raft, the grid and the hub when scraped.

pub mod executions;
pub mod grpc;
pub mod histogram;
pub mod process;
pub mod text;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use histogram::Histogram;
pub use text::{Kind, Text};

/// The `Content-Type` of `/metrics`: the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics one node fills as it works. Cheap to share (`Arc`); every part bounds its
/// memory.
#[derive(Debug)]
pub struct Registry {
    /// Request latency by RPC and code.
    pub rpcs: Arc<grpc::Rpcs>,
    /// From proposing a batch (one log entry) to its result on the leader: commit on a quorum
    /// and apply.
    pub raft_commit: Histogram,
    /// One flush of the Raft log (sled's flush plus fsyncs).
    pub log_fsync: Arc<Histogram>,
    /// Building a snapshot: serialising the grid, writing and fsyncing the file.
    pub snapshot_build: Histogram,
    /// Size of the current snapshot (built here or installed from the leader).
    pub snapshot_bytes: AtomicU64,
    /// Eager calls on this node while it led, by how their create reached the log.
    pub eager: EagerCounts,
    /// Executions, as the grid applies them.
    pub executions: executions::Tracker,
    /// Requests the auth gate refused, by reason.
    pub auth_refused: Refusals,
    /// Long calls (sessions, waits, listeners, watches, tails) ended because the token that
    /// opened them was revoked or expired, by reason.
    pub auth_ended: Refusals,
    /// Entries up to this index were applied before the process started (a restart replays
    /// them): they are not counted again.
    replayed_until: AtomicU64,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl Registry {
    /// Metrics for a node serving the gRPC `services` (their paths become `rpc` labels).
    pub fn new(services: Vec<&'static str>) -> Self {
        Self {
            rpcs: Arc::new(grpc::Rpcs::new(services)),
            raft_commit: Histogram::new(histogram::LATENCY_BUCKETS_S),
            log_fsync: Arc::new(Histogram::new(histogram::FSYNC_BUCKETS_S)),
            snapshot_build: Histogram::new(histogram::SNAPSHOT_BUCKETS_S),
            snapshot_bytes: AtomicU64::new(0),
            eager: EagerCounts::default(),
            executions: executions::Tracker::default(),
            auth_refused: Refusals::default(),
            auth_ended: Refusals::default(),
            replayed_until: AtomicU64::new(0),
        }
    }

    /// Entries up to `index` were committed before this process started: replaying them
    /// does not count executions again.
    pub fn set_replayed_until(&self, index: u64) {
        self.replayed_until.store(index, Ordering::Relaxed);
    }

    /// Whether the entry at `index` counts (it is not a replay).
    pub fn counts_entry(&self, index: u64) -> bool {
        index > self.replayed_until.load(Ordering::Relaxed)
    }

    /// Writes what the registry holds, and the process metrics.
    pub fn render(&self, t: &mut Text, node: &str) {
        let n = [("node", node)];
        self.rpcs.render(t, node);
        t.family(
            "weft_raft_commit_seconds",
            "On the leader, from proposing a log entry (a batch of writes) to its result: commit on a quorum, then apply.",
            Kind::Histogram,
        );
        t.histogram("weft_raft_commit_seconds", &n, &self.raft_commit.snapshot());
        t.family(
            "weft_raft_log_fsync_seconds",
            "One durable flush of the Raft log (sled flush and fsync).",
            Kind::Histogram,
        );
        t.histogram("weft_raft_log_fsync_seconds", &n, &self.log_fsync.snapshot());
        t.family(
            "weft_snapshot_build_seconds",
            "Building a snapshot: serialising the grid, writing and fsyncing the file.",
            Kind::Histogram,
        );
        t.histogram("weft_snapshot_build_seconds", &n, &self.snapshot_build.snapshot());
        t.single(
            "weft_snapshot_bytes",
            "Size of the current snapshot, built here or installed from the leader (0: none yet).",
            Kind::Gauge,
            &n,
            self.snapshot_bytes.load(Ordering::Relaxed),
        );
        t.family(
            "weft_eager_calls_total",
            "Calls the leader pushed to a session before creating them, by how the create reached the log: with the completion in one entry (combined), alone when the linger ran out (lingered), alone because another command named it (named), or answered not applied when this node stopped leading (dropped).",
            Kind::Counter,
        );
        for (outcome, count) in self.eager.snapshot() {
            t.sample("weft_eager_calls_total", &[("node", node), ("outcome", outcome)], count);
        }
        self.executions.render(t, node);
        t.family(
            "weft_auth_refused_total",
            "Requests refused for missing or bad credentials (UNAUTHENTICATED, HTTP 401), by reason.",
            Kind::Counter,
        );
        for (reason, n) in self.auth_refused.snapshot() {
            t.sample("weft_auth_refused_total", &[("node", node), ("reason", reason)], n);
        }
        t.family(
            "weft_auth_streams_ended_total",
            "Long calls (agent sessions, waits, listeners, demand watches, tails, dashboard streams) ended because the token that opened them was revoked or expired, by reason.",
            Kind::Counter,
        );
        for (reason, n) in self.auth_ended.snapshot() {
            t.sample("weft_auth_streams_ended_total", &[("node", node), ("reason", reason)], n);
        }
        t.single(
            "weft_build_info",
            "Always 1; the labels say which build of weft this node runs.",
            Kind::Gauge,
            &[("node", node), ("version", env!("CARGO_PKG_VERSION"))],
            1,
        );
        process::render(t);
    }
}

/// Counts by a reason from a fixed set of names (`&'static str`, so the set is bounded by the
/// code that names them).
#[derive(Debug, Default)]
pub struct Refusals {
    counts: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl Refusals {
    /// Counts one refusal for `reason`.
    pub fn count(&self, reason: &'static str) {
        *self.counts.lock().unwrap_or_else(|p| p.into_inner()).entry(reason).or_default() += 1;
    }

    /// Every reason counted so far, with its count.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(r, n)| (*r, *n)).collect()
    }
}

/// A gauge family by agent: at most [`executions::MAX_AGENTS`] agents get a series of their
/// own, the rest are summed as `agent="other"`.
pub fn agent_gauge(
    text: &mut Text,
    node: &str,
    name: &str,
    help: &str,
    by_agent: impl Iterator<Item = (String, u64)>,
) {
    text.family(name, help, Kind::Gauge);
    let mut other = None;
    for (i, (agent, n)) in by_agent.enumerate() {
        if i < executions::MAX_AGENTS {
            text.sample(name, &[("node", node), ("agent", &agent)], n);
        } else {
            *other.get_or_insert(0) += n;
        }
    }
    if let Some(n) = other {
        text.sample(name, &[("node", node), ("agent", executions::OTHER)], n);
    }
}

/// Counts of eager calls by outcome (see `routing::eager`).
#[derive(Debug, Default)]
pub struct EagerCounts {
    /// Created in one entry with their completion.
    pub combined: AtomicU64,
    /// Created alone once the linger ran out.
    pub lingered: AtomicU64,
    /// Created alone because another command named them first.
    pub named: AtomicU64,
    /// Answered not applied: this node stopped leading (or shut down) while holding them.
    pub dropped: AtomicU64,
}

impl EagerCounts {
    fn snapshot(&self) -> [(&'static str, u64); 4] {
        [
            ("combined", self.combined.load(Ordering::Relaxed)),
            ("lingered", self.lingered.load(Ordering::Relaxed)),
            ("named", self.named.load(Ordering::Relaxed)),
            ("dropped", self.dropped.load(Ordering::Relaxed)),
        ]
    }
}

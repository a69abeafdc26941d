//! `weft.fabric.v1.Scaling`: the demand for agent processes, pushed to scalers from this
//! node's replica (any node serves it; no leader is asked).
//!
//! ```text
//!   WatchDemand ─ check the request ─► hub.watch_demand() (registered before the first read)
//!     task: ┌─► read the grid's demand (read lock) ─► changed since the last picture sent,
//!           │     or heartbeat_ms passed? ──yes──► send (a bounded channel of one picture)
//!           │   wait min_interval_ms after the last picture (changes meanwhile coalesce)
//!           └── wait for the hub's signal (an applied entry changed the demand) or the
//!               heartbeat, whichever first; the node's shutdown or the caller leaving ends it,
//!               and so does the token that opened it being revoked or expiring (the stream
//!               ends UNAUTHENTICATED, naming the token and why)
//! ```
//!
//! A picture is compared without its `applied_index` and `now_ms`, so writes that do not touch
//! work (key/value state, stream items) wake nothing and send nothing; a spurious wake-up costs
//! one read of the grid. A picture larger than `max_message_bytes` has the longest instance and
//! session lists cut (their `*_truncated` flags set) until it fits; counts are never cut.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use weft_proto::fabric::v1 as pb;

use crate::convert;
use crate::grid::demand::{AgentDemand, Agents, MAX_WATCHED_AGENTS};
use crate::grid::validate_name;
use crate::routing::{Context, Error};

/// Least time between two pictures when the request names none, in milliseconds.
pub const DEFAULT_MIN_INTERVAL_MS: u32 = 50;
/// Highest `min_interval_ms` a request may ask for.
pub const MAX_MIN_INTERVAL_MS: u32 = 10_000;
/// Longest time without a picture when the request names none, in milliseconds.
pub const DEFAULT_HEARTBEAT_MS: u32 = 5_000;
/// Lowest `heartbeat_ms` a request may ask for.
pub const MIN_HEARTBEAT_MS: u32 = 100;
/// Pictures waiting to go out on one watch: a caller that reads slowly gets fresh pictures,
/// not a backlog of old ones.
const OUTBOUND_PICTURES: usize = 1;

/// What a watch asked for, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Watch {
    agents: Agents,
    min_interval: Duration,
    heartbeat: Duration,
}

/// Checks a request; the error names the problem.
fn parse(req: pb::WatchDemandRequest) -> Result<Watch, Status> {
    if req.agents.len() > MAX_WATCHED_AGENTS {
        return Err(Status::invalid_argument(format!(
            "{} agents asked for; a watch may name at most {MAX_WATCHED_AGENTS} (or none, for every agent)",
            req.agents.len()
        )));
    }
    for agent in &req.agents {
        validate_name("agent", agent).map_err(|e| Error::Grid(e).into_status())?;
    }
    let min_interval_ms = match req.min_interval_ms {
        0 => DEFAULT_MIN_INTERVAL_MS,
        ms if ms > MAX_MIN_INTERVAL_MS => {
            return Err(Status::invalid_argument(format!(
                "min_interval_ms is {ms}; expected 1 to {MAX_MIN_INTERVAL_MS} (0: {DEFAULT_MIN_INTERVAL_MS})"
            )));
        }
        ms => ms,
    };
    let heartbeat_ms = match req.heartbeat_ms {
        0 => DEFAULT_HEARTBEAT_MS,
        ms if ms < MIN_HEARTBEAT_MS => {
            return Err(Status::invalid_argument(format!(
                "heartbeat_ms is {ms}; expected at least {MIN_HEARTBEAT_MS} (0: {DEFAULT_HEARTBEAT_MS})"
            )));
        }
        ms => ms,
    };
    let agents =
        if req.agents.is_empty() { Agents::All } else { Agents::Named(req.agents.into_iter().collect()) };
    Ok(Watch {
        agents,
        min_interval: Duration::from_millis(u64::from(min_interval_ms)),
        heartbeat: Duration::from_millis(u64::from(heartbeat_ms)),
    })
}

/// Serves `weft.fabric.v1.Scaling` on one node.
#[derive(Clone)]
pub struct ScalingService {
    ctx: Context,
    shutdown: CancellationToken,
}

impl ScalingService {
    /// The service for a node; watches end when `shutdown` fires.
    pub fn new(ctx: Context, shutdown: CancellationToken) -> Self {
        Self { ctx, shutdown }
    }
}

type DemandStream = Pin<Box<dyn Stream<Item = Result<pb::Demand, Status>> + Send>>;

#[tonic::async_trait]
impl pb::scaling_server::Scaling for ScalingService {
    type WatchDemandStream = DemandStream;

    async fn watch_demand(
        &self,
        request: Request<pb::WatchDemandRequest>,
    ) -> Result<Response<DemandStream>, Status> {
        self.ctx.counters.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let result = crate::auth::check(&request, crate::auth::Permission::WatchDemand)
            .and_then(|()| crate::auth::Caller::of(&request))
            .and_then(|caller| Ok((self.ctx.lapse(&caller), parse(request.into_inner())?)))
            .and_then(|(lapse, watch)| {
                let signal = self
                    .ctx
                    .hub
                    .watch_demand()
                    .map_err(|e| Error::Overloaded(e.to_string()).into_status())?;
                let (tx, rx) = mpsc::channel(OUTBOUND_PICTURES);
                let watcher = Watcher {
                    ctx: self.ctx.clone(),
                    watch,
                    signal,
                    tx,
                    shutdown: self.shutdown.clone(),
                    lapse,
                };
                tokio::spawn(watcher.run());
                Ok(Response::new(Box::pin(super::execution_service::tokio_stream_from(rx)) as DemandStream))
            });
        self.ctx.count(&result);
        result
    }
}

/// One watch: its task reads the grid when told, and sends what changed.
struct Watcher {
    ctx: Context,
    watch: Watch,
    signal: crate::watch::DemandWatch,
    tx: mpsc::Sender<Result<pb::Demand, Status>>,
    shutdown: CancellationToken,
    /// Ends the watch when the token that opened it is revoked or expires.
    lapse: crate::auth::Lapse,
}

impl Watcher {
    async fn run(mut self) {
        tracing::debug!(agents = ?self.watch.agents, "demand watch started");
        let mut last: Option<(Vec<AgentDemand>, Instant)> = None;
        loop {
            let (agents, applied_index, now_ms) = self.ctx.applied.read(|a| {
                (a.grid.demand(&self.watch.agents), a.last_applied.map_or(0, |l| l.index), a.grid.now_ms())
            });
            let due = last
                .as_ref()
                .is_none_or(|(sent, at)| *sent != agents || at.elapsed() >= self.watch.heartbeat);
            if due {
                let mut picture = convert::pb_demand(self.ctx.node_id, applied_index, now_ms, &agents);
                fit(&mut picture, self.ctx.max_message_bytes);
                tokio::select! {
                    biased;
                    _ = self.shutdown.cancelled() => return self.shut_down(),
                    why = self.lapse.lapsed() => return crate::auth::end_stream(&self.tx, &why),
                    sent = self.tx.send(Ok(picture)) => if sent.is_err() { return },
                }
                last = Some((agents, Instant::now()));
            }
            let sent_at = last.as_ref().map_or_else(Instant::now, |(_, at)| *at);
            // Rate: at most one picture per min_interval; what changes meanwhile coalesces.
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return self.shut_down(),
                why = self.lapse.lapsed() => return crate::auth::end_stream(&self.tx, &why),
                _ = self.tx.closed() => return,
                _ = tokio::time::sleep_until(sent_at + self.watch.min_interval) => {}
            }
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return self.shut_down(),
                why = self.lapse.lapsed() => return crate::auth::end_stream(&self.tx, &why),
                _ = self.tx.closed() => return,
                _ = self.signal.changed() => {}
                _ = tokio::time::sleep_until(sent_at + self.watch.heartbeat) => {}
            }
        }
    }

    /// The node stops: the caller is told to watch on another node.
    fn shut_down(&self) {
        let status =
            Error::Unavailable("this node is shutting down; watch the demand on another node".into());
        let _ = self.tx.try_send(Err(status.into_status()));
    }
}

/// Cuts the longest instance and session lists (halving them, flags set) until the picture's
/// encoding fits in `limit` bytes, or nothing is left to cut.
fn fit(picture: &mut pb::Demand, limit: usize) {
    while picture.encoded_len() > limit {
        let Some(longest) = picture
            .agents
            .iter_mut()
            .max_by_key(|a| a.instances.len() + a.sessions.len())
            .filter(|a| !a.instances.is_empty() || !a.sessions.is_empty())
        else {
            tracing::warn!(
                bytes = picture.encoded_len(),
                limit,
                "a demand picture is over max_message_bytes"
            );
            return;
        };
        if longest.instances.len() >= longest.sessions.len() {
            let keep = longest.instances.len() / 2;
            longest.instances.truncate(keep);
            longest.instances_truncated = true;
        } else {
            let keep = longest.sessions.len() / 2;
            longest.sessions.truncate(keep);
            longest.sessions_truncated = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(agents: &[&str], min_interval_ms: u32, heartbeat_ms: u32) -> pb::WatchDemandRequest {
        pb::WatchDemandRequest {
            agents: agents.iter().map(|a| (*a).to_owned()).collect(),
            min_interval_ms,
            heartbeat_ms,
        }
    }

    #[test]
    fn requests_are_checked_and_zeros_mean_defaults() {
        let w = parse(req(&[], 0, 0)).unwrap();
        assert_eq!(w.agents, Agents::All);
        assert_eq!((w.min_interval.as_millis(), w.heartbeat.as_millis()), (50, 5_000));
        let w = parse(req(&["b", "a", "b"], 10_000, 100)).unwrap();
        assert_eq!(w.agents, Agents::Named(["a".to_owned(), "b".to_owned()].into()));
        let many: Vec<String> = (0..=MAX_WATCHED_AGENTS).map(|i| format!("a{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        for (bad, needle) in [
            (req(&["ok", "not ok!"], 0, 0), "invalid agent name 'not ok!'"),
            (req(&many, 0, 0), "1001 agents asked for; a watch may name at most 1000"),
            (req(&[], 10_001, 0), "min_interval_ms is 10001"),
            (req(&[], 0, 99), "heartbeat_ms is 99; expected at least 100"),
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(needle), "{e:?} should say {needle:?}");
        }
    }

    #[test]
    fn a_picture_over_the_limit_loses_its_longest_lists_first() {
        let instance = |i: usize| pb::InstanceDemand {
            id: format!("instance-{i:04}"),
            lifecycle: "running".into(),
            session: None,
            unfinished: 1,
        };
        let mut picture = pb::Demand {
            node_id: 1,
            applied_index: 9,
            now_ms: 5,
            agents: vec![
                pb::AgentDemand {
                    agent: "big".into(),
                    pending: 7,
                    instances: (0..1000).map(instance).collect(),
                    ..Default::default()
                },
                pb::AgentDemand {
                    agent: "small".into(),
                    instances: (0..10).map(instance).collect(),
                    ..Default::default()
                },
            ],
        };
        fit(&mut picture, 8_000);
        assert!(picture.encoded_len() <= 8_000);
        let big = &picture.agents[0];
        assert!(big.instances_truncated && big.instances.len() < 1000);
        assert_eq!(big.pending, 7, "counts stay");
        assert_eq!(picture.agents[1].instances.len(), 10, "the short list is kept");
        assert!(!picture.agents[1].instances_truncated);
    }
}

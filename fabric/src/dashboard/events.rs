//! `GET /v1/dashboard/events`: Server-Sent Events carrying [`Snapshot`]s.
//!
//! One `snapshot` event at once, then one each time the snapshot differs from the last one
//! sent. The stream wakes when this node applies entries or its leader or term changes, and
//! every [`REFRESH`] for what changes without an entry (gossip health, peers' progress);
//! events are at least [`MIN_EVENT_INTERVAL`] apart, so a busy cluster costs at most 4
//! snapshots a second per stream. Nothing is queued: each event is built when the client
//! can take it, so a slow client only sees fewer, newer snapshots. At most
//! [`super::MAX_EVENT_STREAMS`] streams per node; the stream ends when the node shuts down,
//! and when the token that opened it is revoked or expires: then with an `end` event whose
//! data is the error (`{"error": {"code": "UNAUTHENTICATED", "message": "token ... was
//! revoked; ..."}}`), as a tail ends, and the page shows it rather than reconnecting.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::snapshot::{Filter, Snapshot};
use super::{Dashboard, FilterQuery, MAX_EVENT_STREAMS, json_error, refused};

/// Least time between two snapshot events of one stream.
pub const MIN_EVENT_INTERVAL: Duration = Duration::from_millis(250);
/// Longest time between two checks for changes that no applied entry signals.
pub const REFRESH: Duration = Duration::from_secs(1);
/// Time between keep-alive comments on an idle stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub(super) async fn events(
    State(d): State<Dashboard>,
    caller: crate::auth::Caller,
    query: Result<Query<FilterQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Some(refusal) = refused(&caller) {
        return refusal;
    }
    let filter = match FilterQuery::parse(query) {
        Ok(f) => f,
        Err(message) => return json_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", &message),
    };
    let Ok(permit) = d.streams.clone().try_acquire_owned() else {
        let message = format!(
            "this node already serves {MAX_EVENT_STREAMS} dashboard event streams; close one or open the dashboard on another node"
        );
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", &message);
    };
    let lapse = d.ctx.lapse(&caller);
    let mut tick = tokio::time::interval_at(Instant::now() + REFRESH, REFRESH);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let feed = Feed {
        metrics: d.ctx.raft.metrics(),
        seen: None,
        dashboard: d,
        caller,
        filter,
        tick,
        last: None,
        last_sent: None,
        _permit: permit,
    };
    let stream = futures::stream::unfold(Some((feed, lapse)), |state| async move {
        let (mut feed, mut lapse) = state?;
        match lapse.guard(feed.next()).await {
            Ok(event) => Some((Ok::<_, Infallible>(event?), Some((feed, lapse)))),
            // The token was revoked or expired: say so, then end.
            Err(why) => Some((Ok(end_event(&why.ending())), None)),
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response()
}

/// The last event of a stream that ends with an error: `end`, with the error's JSON body.
fn end_event(status: &tonic::Status) -> Event {
    let body = serde_json::to_string(&crate::rest::error::body(status)).unwrap_or_default();
    Event::default().event("end").data(body)
}

/// One client's stream: what it was sent last, and what wakes it.
struct Feed {
    dashboard: Dashboard,
    /// Checked when the stream opened; the stream's lapse ends it if the token is revoked
    /// or expires later.
    caller: crate::auth::Caller,
    filter: Filter,
    metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<crate::NodeId, openraft::BasicNode>>,
    /// Applied index, leader and term as of the last wake-up.
    seen: Option<(u64, Option<crate::NodeId>, u64)>,
    tick: Interval,
    last: Option<Snapshot>,
    last_sent: Option<Instant>,
    /// Counts this stream against the node's bound until it is dropped.
    _permit: OwnedSemaphorePermit,
}

impl Feed {
    /// The next event, or `None` when the node shuts down.
    async fn next(&mut self) -> Option<Event> {
        let shutdown = self.dashboard.shutdown.clone();
        loop {
            if let Some(sent) = self.last_sent {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return None,
                    changed = self.metrics.changed() => {
                        if changed.is_err() {
                            return None;
                        }
                        let now = {
                            let m = self.metrics.borrow_and_update();
                            (m.last_applied.map_or(0, |l| l.index), m.current_leader, m.current_term)
                        };
                        if self.seen == Some(now) {
                            continue;
                        }
                        self.seen = Some(now);
                    }
                    _ = self.tick.tick() => {}
                }
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep_until(sent + MIN_EVENT_INTERVAL) => {}
                }
            }
            let snapshot = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return None,
                s = self.dashboard.snapshot(self.filter.clone(), &self.caller) => s,
            };
            if self.last.as_ref() == Some(&snapshot) {
                continue;
            }
            self.last_sent = Some(Instant::now());
            self.last = Some(snapshot.clone());
            let data = match serde_json::to_string(&snapshot.stamped()) {
                Ok(data) => data,
                Err(e) => {
                    tracing::warn!(error = %e, "dashboard: snapshot not encoded");
                    continue;
                }
            };
            return Some(Event::default().event("snapshot").data(data));
        }
    }
}

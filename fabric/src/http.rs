//! HTTP endpoints served on the gRPC port: `/healthz` (the process is up), `/readyz` (the node
//! can serve requests: see [`crate::readiness`]) and `/metrics` (Prometheus text format).

use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;

use crate::auth::{Caller, Permission, authorize};
use crate::readiness::Probe;
use crate::routing::Context;

/// The HTTP routes of a node; `/readyz` answers what `probe` judges.
pub fn router(ctx: Context, probe: Probe) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(move || readyz(probe)))
        .route("/metrics", get(metrics))
        .with_state(ctx)
}

async fn readyz(probe: Probe) -> (StatusCode, String) {
    let verdict = probe.check();
    let code = if verdict.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, verdict.reason)
}

/// `/metrics`: the Prometheus text format (see `crate::metrics`), with its content type, for
/// a caller allowed to read metrics (with auth on: an admin or operator token).
async fn metrics(State(ctx): State<Context>, caller: Caller) -> Response {
    match authorize(&caller, Permission::ReadMetrics) {
        Ok(()) => render(&ctx).into_response(),
        Err(denied) => crate::rest::error::ApiError(denied.into()).into_response(),
    }
}

fn render(ctx: &Context) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    let (id, term, is_leader, last_log, applied, snapshot, purged, members, quorum_ack_ms) = {
        let metrics = ctx.raft.metrics();
        let m = metrics.borrow();
        (
            m.id,
            m.current_term,
            m.current_leader == Some(m.id),
            m.last_log_index.unwrap_or(0),
            m.last_applied.map_or(0, |l| l.index),
            m.snapshot.map_or(0, |l| l.index),
            m.purged.map_or(0, |l| l.index),
            m.membership_config.membership().nodes().count() as u64,
            m.millis_since_quorum_ack.filter(|_| m.current_leader == Some(m.id)),
        )
    };
    let (keys, revision, work) =
        ctx.applied.read(|a| (a.grid.key_count(), a.grid.revision(), a.grid.work_totals()));
    let sm = ctx.applied.counters();
    let api = &ctx.counters;
    let node = id.to_string();
    let mut text = crate::metrics::Text::default();
    let mut gauge = |name: &str, help: &str, kind: &str, value: u64| {
        let kind =
            if kind == "counter" { crate::metrics::Kind::Counter } else { crate::metrics::Kind::Gauge };
        text.single(name, help, kind, &[("node", &node)], value);
    };
    gauge("weft_raft_term", "Current Raft term.", "gauge", term);
    gauge("weft_raft_is_leader", "1 when this node leads.", "gauge", u64::from(is_leader));
    gauge("weft_raft_last_log_index", "Index of the last log entry.", "gauge", last_log);
    gauge("weft_raft_applied_index", "Index of the last applied entry.", "gauge", applied);
    gauge("weft_raft_snapshot_index", "Last index covered by the current snapshot.", "gauge", snapshot);
    gauge("weft_raft_purged_index", "Last purged log index.", "gauge", purged);
    gauge("weft_raft_members", "Members (voters and learners).", "gauge", members);
    gauge("weft_grid_keys", "Keys stored in the grid.", "gauge", keys as u64);
    gauge("weft_grid_revision", "Writes applied to the grid (a revision number).", "gauge", revision);
    gauge(
        "weft_executions_stored",
        "Executions in the grid, finished ones within their retention included.",
        "gauge",
        work.executions as u64,
    );
    gauge("weft_executions_pending", "Executions waiting for a session.", "gauge", work.pending as u64);
    gauge("weft_executions_assigned", "Executions held by a session.", "gauge", work.assigned as u64);
    gauge("weft_sessions", "Live agent sessions in the cluster.", "gauge", work.sessions as u64);
    gauge("weft_instances", "Agent instances.", "gauge", work.instances as u64);
    gauge(
        "weft_sessions_hosted",
        "Agent session streams this node holds.",
        "gauge",
        ctx.hub.session_count() as u64,
    );
    gauge(
        "weft_waiters",
        "Callers waiting on this node for a result.",
        "gauge",
        ctx.hub.waiter_count() as u64,
    );
    let (streams, stream_bytes) = ctx.applied.read(|a| a.grid.stream_totals());
    gauge("weft_streams", "Streams in the cluster.", "gauge", streams as u64);
    gauge(
        "weft_stream_bytes",
        "Bytes held by the items of all streams (max_stream_bytes bounds it).",
        "gauge",
        stream_bytes,
    );
    gauge(
        "weft_listeners_hosted",
        "Stream listeners (on cursors, and plain readers) this node serves.",
        "gauge",
        ctx.hub.listener_count() as u64,
    );
    let (leases, waiting) = ctx.applied.read(|a| (a.grid.lease_count(), a.grid.lease_waiter_count()));
    gauge(
        "weft_leases_held",
        "Leases (locks) held in the cluster (see weft locks list).",
        "gauge",
        leases as u64,
    );
    gauge(
        "weft_lease_waiters",
        "Holders waiting in lease queues (weft locks acquire --wait), waits run out included until skipped.",
        "gauge",
        waiting as u64,
    );
    let (schedules, paused, started, skipped) = ctx.applied.read(|a| a.grid.schedule_totals());
    gauge("weft_schedules", "Schedules in the cluster (see weft schedules list).", "gauge", schedules as u64);
    gauge("weft_schedules_paused", "Schedules paused.", "gauge", paused as u64);
    gauge(
        "weft_schedule_runs_started",
        "Runs the schedules that exist now have started (a deleted schedule's leave the sum).",
        "gauge",
        started,
    );
    gauge(
        "weft_schedule_runs_skipped",
        "Due times the schedules that exist now skipped (overlap, missed while down) or could not start.",
        "gauge",
        skipped,
    );
    gauge(
        "weft_demand_watchers",
        "Demand watchers (Scaling/WatchDemand) this node serves; they count against max_listeners.",
        "gauge",
        ctx.hub.demand_watcher_count() as u64,
    );
    gauge(
        "weft_grid_commands_applied_total",
        "Grid commands applied.",
        "counter",
        sm.commands_applied.load(Ordering::Relaxed),
    );
    gauge(
        "weft_snapshots_built_total",
        "Snapshots built.",
        "counter",
        sm.snapshots_built.load(Ordering::Relaxed),
    );
    gauge(
        "weft_snapshots_installed_total",
        "Snapshots received and installed.",
        "counter",
        sm.snapshots_installed.load(Ordering::Relaxed),
    );
    gauge("weft_api_writes_total", "Writes received.", "counter", api.writes.load(Ordering::Relaxed));
    gauge("weft_api_reads_total", "Reads received.", "counter", api.reads.load(Ordering::Relaxed));
    gauge(
        "weft_api_forwarded_total",
        "Hand-overs to the leader: writes (Forward/Propose) and read indexes (Forward/ReadIndex).",
        "counter",
        api.forwarded.load(Ordering::Relaxed),
    );
    gauge(
        "weft_read_index_rounds_total",
        "Read-index rounds run as leader: one quorum confirmation each, shared by every linearizable read waiting when it started.",
        "counter",
        api.read_rounds.load(Ordering::Relaxed),
    );
    gauge(
        "weft_api_errors_total",
        "Requests answered with an error.",
        "counter",
        api.errors.load(Ordering::Relaxed),
    );
    let g = ctx.membership.gossip.counters();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let view = ctx.membership.gossip.view();
    for (health, help) in [
        (crate::membership::gossip::Health::Alive, "Nodes gossip sees alive (this one included)."),
        (crate::membership::gossip::Health::Suspect, "Nodes gossip suspects."),
        (crate::membership::gossip::Health::Down, "Nodes gossip declared down."),
        (crate::membership::gossip::Health::Left, "Nodes that announced a graceful leave."),
    ] {
        let n = view.members.values().filter(|m| m.health == health).count() as u64;
        gauge(&format!("weft_gossip_members_{}", health.as_str()), help, "gauge", n);
    }
    gauge("weft_gossip_packets_received_total", "Gossip datagrams received.", "counter", load(&g.packets_in));
    gauge("weft_gossip_packets_sent_total", "Gossip datagrams sent.", "counter", load(&g.packets_out));
    gauge("weft_gossip_bytes_received_total", "Gossip bytes received.", "counter", load(&g.bytes_in));
    gauge("weft_gossip_bytes_sent_total", "Gossip bytes sent.", "counter", load(&g.bytes_out));
    gauge(
        "weft_gossip_dropped_malformed_total",
        "Gossip datagrams dropped as malformed.",
        "counter",
        load(&g.dropped_malformed),
    );
    gauge(
        "weft_gossip_dropped_oversized_total",
        "Gossip datagrams dropped as oversized.",
        "counter",
        load(&g.dropped_oversized),
    );
    gauge(
        "weft_gossip_dropped_foreign_cluster_total",
        "Gossip datagrams refused: from another cluster.",
        "counter",
        load(&g.dropped_foreign_cluster),
    );
    gauge(
        "weft_gossip_dropped_unauthenticated_total",
        "Gossip datagrams refused: plain (no MAC) while this node requires the gossip key.",
        "counter",
        load(&g.dropped_unauthenticated),
    );
    gauge(
        "weft_gossip_dropped_bad_mac_total",
        "Gossip datagrams refused: no gossip key of this node verifies their MAC or tag (another key, changed or cut off).",
        "counter",
        load(&g.dropped_bad_mac),
    );
    gauge("weft_gossip_keys", "Gossip keys in use (0: gossip is not authenticated).", "gauge", load(&g.keys));
    gauge(
        "weft_gossip_key_reload_failures_total",
        "Changes of the gossip key file that were refused (the keys in use stayed).",
        "counter",
        load(&g.key_reload_failures),
    );
    let r = &ctx.membership.reconciler;
    gauge(
        "weft_membership_changes_total",
        "Raft membership changes this node made as leader.",
        "counter",
        load(&r.changes),
    );
    gauge(
        "weft_membership_changes_failed_total",
        "Membership changes that failed or timed out.",
        "counter",
        load(&r.failed),
    );
    let name = "weft_raft_quorum_ack_age_seconds";
    text.family(
        name,
        "On the leader only: time since a quorum last acknowledged it (grows while it cannot commit).",
        crate::metrics::Kind::Gauge,
    );
    if let Some(ms) = quorum_ack_ms {
        text.sample(name, &[("node", &node)], ms as f64 / 1000.0);
    }
    let (sessions, pending) = ctx.applied.read(|a| {
        let mut sessions = std::collections::BTreeMap::<String, u64>::new();
        for s in a.grid.sessions() {
            for agent in &s.agents {
                *sessions.entry(agent.name.clone()).or_default() += 1;
            }
        }
        (sessions, a.grid.pending_by_agent())
    });
    crate::metrics::agent_gauge(
        &mut text,
        &node,
        "weft_agent_sessions",
        "Live sessions that serve the agent, in the cluster.",
        sessions.into_iter(),
    );
    crate::metrics::agent_gauge(
        &mut text,
        &node,
        "weft_agent_executions_pending",
        "Executions of the agent waiting for a session (its backlog), in the cluster.",
        pending.into_iter().map(|(a, n)| (a, n as u64)),
    );
    ctx.metrics.render(&mut text, &node);
    ([(axum::http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text.finish())
}

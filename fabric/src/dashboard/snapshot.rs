//! [`Snapshot`]: everything the dashboard page shows, read from this node's replica of the
//! grid, its Raft metrics and the cluster status, and bounded in size.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use weft_proto::fabric::v1 as pb;

use crate::grid::execution::{Codec, Execution, Payload, Status};
use crate::grid::instance::Instance;
use crate::grid::session::Session;
use crate::grid::stream::{End, Stream};
use crate::grid::{Grid, Totals};

/// Most executions a snapshot lists (newest first).
pub const MAX_EXECUTIONS: usize = 200;
/// Most sessions a snapshot lists.
pub const MAX_SESSIONS: usize = 200;
/// Most instances a snapshot lists.
pub const MAX_INSTANCES: usize = 200;
/// Most streams a snapshot lists.
pub const MAX_STREAMS: usize = 100;
/// Most cursors listed per stream.
pub const MAX_CURSORS_PER_STREAM: usize = 20;
/// Most executions listed as in flight per session.
pub const MAX_IN_FLIGHT_LISTED: usize = 20;
/// Most scaler groups listed.
pub const MAX_SCALER_GROUPS: usize = 16;
/// Largest scaler status shown, in bytes of JSON (the scaler bounds its own at 512 KiB).
pub const MAX_SCALER_STATUS_BYTES: usize = 512 * 1024;
/// Bytes of a payload shown in a listing; the rest is left out (`truncated`).
pub const LIST_PAYLOAD_BYTES: usize = 2 * 1024;
/// Bytes of a payload shown in an execution's detail.
pub const DETAIL_PAYLOAD_BYTES: usize = 256 * 1024;

/// The namespace prefix under which scaler groups publish their status (`shared/weft.scaler.GROUP`).
pub const SCALER_NAMESPACE_PREFIX: &str = "shared/weft.scaler.";
/// The key of a scaler group's status in its namespace.
pub const SCALER_STATUS_KEY: &str = "status";
/// A scaler status older than this is stale (the scaler republishes at least every 10 s).
pub const SCALER_STALE_MS: u64 = 30_000;

/// Which executions a snapshot lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only executions in this status.
    pub status: Option<Status>,
    /// Only executions of this agent.
    pub agent: Option<String>,
    /// At most this many (at most [`MAX_EXECUTIONS`]).
    pub limit: usize,
}

impl Filter {
    /// Parses the query parameters `status`, `agent` and `limit`; an empty value means none.
    pub fn parse(status: Option<&str>, agent: Option<&str>, limit: Option<&str>) -> Result<Self, String> {
        let status = match status.filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(Status::parse(s).ok_or_else(|| {
                format!(
                    "unknown status '{}'; expected pending, assigned, completed, failed or cancelled",
                    clip(s, 64)
                )
            })?),
        };
        let limit = match limit.filter(|l| !l.is_empty()) {
            None => MAX_EXECUTIONS,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=MAX_EXECUTIONS).contains(&n) => n,
                _ => return Err(format!("limit must be 1 to {MAX_EXECUTIONS}, not '{}'", clip(l, 64))),
            },
        };
        Ok(Self { status, agent: agent.filter(|a| !a.is_empty()).map(str::to_owned), limit })
    }
}

/// Everything the page shows, as one JSON object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// The node that answered.
    pub node_id: u64,
    /// Its cluster's name.
    pub cluster: String,
    /// When this snapshot was taken (this node's clock, ms since the epoch).
    pub generated_ms: u64,
    /// The grid's clock: the latest leader-stamped time applied here.
    pub grid_now_ms: u64,
    /// The last log index applied here.
    pub applied_index: u64,
    /// The leader this node knows, if any.
    pub leader_id: Option<u64>,
    /// The current Raft term.
    pub term: u64,
    /// Raft members and the nodes gossip knows, as `weft status` shows them.
    pub members: Vec<MemberView>,
    /// Live agent sessions (at most [`MAX_SESSIONS`]).
    pub sessions: Vec<SessionView>,
    /// Executions matching the filter, newest first (at most `filter.limit`).
    pub executions: Vec<ExecutionView>,
    /// The filter applied to `executions`.
    pub filter: FilterView,
    /// Instances (at most [`MAX_INSTANCES`]).
    pub instances: Vec<InstanceView>,
    /// Streams and their cursors (at most [`MAX_STREAMS`]).
    pub streams: Vec<StreamView>,
    /// Scaler groups that published a status (at most [`MAX_SCALER_GROUPS`]).
    pub scalers: Vec<ScalerView>,
    /// Counts over the whole grid, so the page can say what a list left out.
    pub totals: TotalsView,
}

/// The filter a snapshot applied, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FilterView {
    /// The status asked for, if any.
    pub status: Option<&'static str>,
    /// The agent asked for, if any.
    pub agent: Option<String>,
    /// The most executions listed.
    pub limit: usize,
}

/// One node, as `weft status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberView {
    /// Its node id.
    pub id: u64,
    /// Its address.
    pub address: String,
    /// `leader`, `follower`, `candidate`, `learner`, `unreachable` or `not a member`.
    pub role: String,
    /// It votes.
    pub voter: bool,
    /// What gossip says of it: `alive`, `suspect`, `down`, `left` or `unknown`.
    pub gossip: String,
    /// It answered this node's status request.
    pub reachable: bool,
    /// Its last log index, if it answered.
    pub last_log_index: Option<u64>,
    /// Its applied index, if it answered.
    pub applied_index: Option<u64>,
    /// Entries behind the most advanced member, if it answered.
    pub lag: Option<u64>,
}

impl From<&pb::Member> for MemberView {
    fn from(m: &pb::Member) -> Self {
        Self {
            id: m.id,
            address: m.address.clone(),
            role: m.role.clone(),
            voter: m.voter,
            gossip: m.gossip.clone(),
            reachable: m.reachable,
            last_log_index: m.last_log_index,
            applied_index: m.applied_index,
            lag: m.lag,
        }
    }
}

/// Counts over the whole grid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TotalsView {
    /// Executions stored (finished ones within their retention included).
    pub executions: usize,
    /// Of which pending.
    pub pending: usize,
    /// Of which assigned.
    pub assigned: usize,
    /// Live sessions.
    pub sessions: usize,
    /// Instances.
    pub instances: usize,
    /// Streams.
    pub streams: usize,
}

/// One agent a session serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentView {
    /// The agent's name.
    pub name: String,
    /// The delegates served (empty with `all_delegates`).
    pub delegates: Vec<String>,
    /// The session serves every delegate of this agent.
    pub all_delegates: bool,
}

/// One live session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionView {
    /// The session id.
    pub id: u64,
    /// The name the agent process gave it.
    pub name: String,
    /// The node whose `Listen` stream holds it.
    pub node_id: u64,
    /// What it serves.
    pub agents: Vec<AgentView>,
    /// How many executions it may hold at once.
    pub capacity: u32,
    /// How many it holds.
    pub in_flight: usize,
    /// The first of them (at most [`MAX_IN_FLIGHT_LISTED`]).
    pub in_flight_ids: Vec<u64>,
    /// Instances activated on it.
    pub instances: usize,
    /// When it opened (leader-stamped ms).
    pub opened_ms: u64,
    /// It takes no new work.
    pub draining: bool,
}

/// A payload as the page shows it: JSON as a value, anything else as hex, clipped.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PayloadView {
    /// `json` or `bincode`.
    pub codec: &'static str,
    /// Its size in bytes.
    pub bytes: usize,
    /// The JSON value, when the codec is JSON and it was not clipped.
    pub json: Option<serde_json::Value>,
    /// The clipped start of a JSON payload's text, when it was too long to show whole.
    pub text: Option<String>,
    /// The (clipped) bytes in hex, for any other codec.
    pub hex: Option<String>,
    /// Some bytes were left out.
    pub truncated: bool,
}

impl PayloadView {
    fn new(p: &Payload, max_bytes: usize) -> Self {
        let truncated = p.data.len() > max_bytes;
        let shown = &p.data[..p.data.len().min(max_bytes)];
        let (json, text, hex) = match p.codec {
            Codec::Json if !truncated => match serde_json::from_slice(shown) {
                Ok(v) => (Some(v), None, None),
                Err(_) => (None, Some(String::from_utf8_lossy(shown).into_owned()), None),
            },
            Codec::Json => (None, Some(String::from_utf8_lossy(shown).into_owned()), None),
            Codec::Bincode => (None, None, Some(crate::rest::model::hex(shown))),
        };
        Self { codec: p.codec.as_str(), bytes: p.data.len(), json, text, hex, truncated }
    }
}

/// An execution's error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorView {
    /// `handler`, `deadline`, `cancelled`, `undeliverable` or `instance`.
    pub kind: &'static str,
    /// What went wrong.
    pub message: String,
}

/// One execution (field names as in the HTTP API's execution object).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecutionView {
    /// Its id.
    pub id: u64,
    /// The agent called.
    pub agent: String,
    /// The instance called, if any.
    pub instance: Option<String>,
    /// The delegate called.
    pub delegate: String,
    /// `pending`, `assigned`, `completed`, `failed` or `cancelled`.
    pub status: &'static str,
    /// Deliveries so far.
    pub attempts: u32,
    /// The session holding it, while assigned.
    pub session_id: Option<u64>,
    /// When it was created (leader-stamped ms).
    pub created_ms: u64,
    /// When it fails unless finished.
    pub deadline_ms: Option<u64>,
    /// Not delivered before this time.
    pub not_before_ms: Option<u64>,
    /// When it finished.
    pub finished_ms: Option<u64>,
    /// Higher runs first.
    pub priority: i32,
    /// The execution that created it.
    pub parent_id: Option<u64>,
    /// The key it was created with.
    pub idempotency_key: Option<String>,
    /// Its arguments.
    pub args: PayloadView,
    /// Its result, once completed.
    pub result: Option<PayloadView>,
    /// Its error, once failed or cancelled.
    pub error: Option<ErrorView>,
}

impl ExecutionView {
    /// The view of `e`, payloads clipped to `max_payload_bytes`.
    pub fn new(e: &Execution, max_payload_bytes: usize) -> Self {
        let (result, error) = match &e.outcome {
            None => (None, None),
            Some(Ok(p)) => (Some(PayloadView::new(p, max_payload_bytes)), None),
            Some(Err(f)) => (None, Some(ErrorView { kind: f.kind.as_str(), message: f.message.clone() })),
        };
        Self {
            id: e.id,
            agent: e.agent.clone(),
            instance: e.instance.clone(),
            delegate: e.delegate.clone(),
            status: e.status.as_str(),
            attempts: e.attempts,
            session_id: e.lease.filter(|_| e.status == Status::Assigned).map(|l| l.session),
            created_ms: e.created_ms,
            deadline_ms: e.deadline_ms,
            not_before_ms: e.not_before_ms,
            finished_ms: e.finished_ms,
            priority: e.priority,
            parent_id: e.parent,
            idempotency_key: e.idempotency_key.clone(),
            args: PayloadView::new(&e.payload, max_payload_bytes),
            result,
            error,
        }
    }
}

/// One instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceView {
    /// Its agent.
    pub agent: String,
    /// Its id.
    pub id: String,
    /// `starting`, `running` or `stopping`.
    pub lifecycle: &'static str,
    /// The session serving it, if one is.
    pub session_id: Option<u64>,
    /// Calls running on it.
    pub running: u32,
    /// Calls waiting for it.
    pub queued: usize,
    /// When it was created (leader-stamped ms).
    pub created_ms: u64,
}

impl InstanceView {
    fn new(i: &Instance) -> Self {
        Self {
            agent: i.agent.clone(),
            id: i.id.clone(),
            lifecycle: i.lifecycle.as_str(),
            session_id: i.session,
            running: i.running,
            queued: i.queue.len(),
            created_ms: i.created_ms,
        }
    }
}

/// One cursor of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CursorView {
    /// Its name.
    pub name: String,
    /// Items after its position not delivered yet.
    pub lag: u64,
    /// Deliveries not acknowledged yet.
    pub ack_pending: usize,
    /// Items waiting to be delivered again.
    pub redelivery_pending: usize,
    /// Listeners attached.
    pub listeners: usize,
    /// Items delivered, redelivered, and sent to the dead-letter stream.
    pub delivered: u64,
    /// Items delivered again.
    pub redelivered: u64,
    /// Items given up on.
    pub dead_lettered: u64,
}

/// One stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamView {
    /// Its name.
    pub name: String,
    /// `persistent`, `ephemeral` or `workqueue`.
    pub kind: &'static str,
    /// The first sequence number held.
    pub first_seq: u64,
    /// The last sequence number assigned.
    pub last_seq: u64,
    /// Items held.
    pub items: usize,
    /// Bytes held.
    pub bytes: u64,
    /// `ok` or the error it was closed with; none while open.
    pub closed: Option<String>,
    /// Its cursors (at most [`MAX_CURSORS_PER_STREAM`]).
    pub cursors: Vec<CursorView>,
    /// How many cursors it has.
    pub cursors_total: usize,
}

impl StreamView {
    fn new(s: &Stream) -> Self {
        let cursors = s
            .cursors
            .values()
            .take(MAX_CURSORS_PER_STREAM)
            .map(|c| CursorView {
                name: c.name.clone(),
                lag: (s.last_seq + 1).saturating_sub(c.next_seq),
                ack_pending: c.unacked.len(),
                redelivery_pending: c.queued.len(),
                listeners: c.listeners.len(),
                delivered: c.delivered,
                redelivered: c.redelivered,
                dead_lettered: c.dead_lettered,
            })
            .collect();
        Self {
            name: s.name.clone(),
            kind: s.config.kind.as_str(),
            first_seq: s.first_seq(),
            last_seq: s.last_seq,
            items: s.items.len(),
            bytes: s.bytes,
            closed: s.closed.as_ref().map(|end| match end {
                End::Ok => "ok".to_owned(),
                End::Failed(e) => format!("failed: {e}"),
            }),
            cursors,
            cursors_total: s.cursors.len(),
        }
    }
}

/// One scaler group: the status its active scaler published, and its lease.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScalerView {
    /// The group.
    pub group: String,
    /// The published status (see the scaler's `status.rs`), or none if it is not JSON or
    /// too large to show.
    pub status: Option<serde_json::Value>,
    /// Why `status` is missing or cannot be trusted, if it is or cannot.
    pub problem: Option<String>,
    /// The holder of the group's lease `weft.scaler.GROUP`, if it is held.
    pub lease_holder: Option<String>,
}

/// The grid's part of a snapshot, read under the replica's lock.
pub struct GridPart {
    grid_now_ms: u64,
    sessions: Vec<SessionView>,
    executions: Vec<ExecutionView>,
    instances: Vec<InstanceView>,
    streams: Vec<StreamView>,
    scalers: Vec<ScalerView>,
    totals: TotalsView,
}

impl GridPart {
    /// Reads what the page shows from `grid`; `filter` picks the executions. Everything
    /// copied is bounded, so the replica's lock is held briefly.
    pub fn read(grid: &Grid, filter: &Filter) -> Self {
        let Totals { executions, pending, assigned, sessions, instances } = grid.work_totals();
        let (stream_count, _) = grid.stream_totals();
        let (session_list, _) = grid.list_sessions(None, None, MAX_SESSIONS);
        let (instance_list, _) = grid.list_instances(None, None, MAX_INSTANCES);
        Self {
            grid_now_ms: grid.now_ms(),
            sessions: session_list.iter().map(session_view).collect(),
            executions: grid
                .recent_executions(filter.agent.as_deref(), filter.status, filter.limit)
                .into_iter()
                .map(|e| ExecutionView::new(e, LIST_PAYLOAD_BYTES))
                .collect(),
            instances: instance_list.iter().map(InstanceView::new).collect(),
            streams: grid.streams_after(None, MAX_STREAMS).into_iter().map(StreamView::new).collect(),
            scalers: scalers(grid),
            totals: TotalsView { executions, pending, assigned, sessions, instances, streams: stream_count },
        }
    }
}

fn session_view(s: &Session) -> SessionView {
    SessionView {
        id: s.id,
        name: s.name.clone(),
        node_id: s.host.node,
        agents: s
            .agents
            .iter()
            .map(|a| AgentView {
                name: a.name.clone(),
                delegates: a.delegates.clone(),
                all_delegates: a.delegates.is_empty(),
            })
            .collect(),
        capacity: s.capacity,
        in_flight: s.assigned.len(),
        in_flight_ids: s.assigned.iter().take(MAX_IN_FLIGHT_LISTED).copied().collect(),
        instances: s.activated.len(),
        opened_ms: s.opened_ms,
        draining: s.draining,
    }
}

fn scalers(grid: &Grid) -> Vec<ScalerView> {
    grid.namespaces_with_prefix(SCALER_NAMESPACE_PREFIX, MAX_SCALER_GROUPS)
        .into_iter()
        .filter_map(|ns| {
            let value = grid.get(ns, SCALER_STATUS_KEY)?;
            let group = ns[SCALER_NAMESPACE_PREFIX.len()..].to_owned();
            let lease = grid.lease(&format!("weft.scaler.{group}"));
            let (status, mut problem) = if value.data.len() > MAX_SCALER_STATUS_BYTES {
                (None, Some(format!("status of {} bytes is too large to show", value.data.len())))
            } else {
                match serde_json::from_slice::<serde_json::Value>(&value.data) {
                    Ok(v) => (Some(v), None),
                    Err(e) => (None, Some(format!("status is not JSON: {e}"))),
                }
            };
            if let Some(s) = &status {
                let token = s.get("token").and_then(serde_json::Value::as_u64);
                let updated = s.get("updated_at_ms").and_then(serde_json::Value::as_u64).unwrap_or(0);
                problem = match lease {
                    None => Some("no scaler is active (its lease is not held)".to_owned()),
                    Some(l) if Some(l.token) != token => Some(format!(
                        "the status comes from a previous scaler (token {}, the lease's is {})",
                        token.unwrap_or(0),
                        l.token
                    )),
                    Some(_) if grid.now_ms().saturating_sub(updated) > SCALER_STALE_MS => Some(format!(
                        "stale: published {} s ago",
                        grid.now_ms().saturating_sub(updated) / 1000
                    )),
                    Some(_) => None,
                };
            }
            Some(ScalerView { group, status, problem, lease_holder: lease.map(|l| l.holder.clone()) })
        })
        .collect()
}

impl Snapshot {
    /// A snapshot from this node's grid part, its Raft view and the cluster's status.
    pub fn assemble(
        node_id: u64,
        cluster: String,
        applied_index: u64,
        status: &pb::ClusterStatus,
        filter: Filter,
        grid: GridPart,
    ) -> Self {
        Self {
            node_id,
            cluster,
            generated_ms: 0,
            grid_now_ms: grid.grid_now_ms,
            applied_index,
            leader_id: Some(status.leader_id).filter(|id| *id != 0),
            term: status.term,
            members: status.members.iter().map(MemberView::from).collect(),
            sessions: grid.sessions,
            executions: grid.executions,
            filter: FilterView {
                status: filter.status.map(Status::as_str),
                agent: filter.agent,
                limit: filter.limit,
            },
            instances: grid.instances,
            streams: grid.streams,
            scalers: grid.scalers,
            totals: grid.totals,
        }
    }

    /// Stamps the snapshot with this node's clock.
    pub fn stamped(mut self) -> Self {
        self.generated_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self
    }
}

/// At most `max` bytes of `s`, cut on a character boundary.
pub fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_bad_ones_say_why() {
        let f = Filter::parse(Some("completed"), Some("echo"), Some("5")).unwrap();
        assert_eq!(f, Filter { status: Some(Status::Completed), agent: Some("echo".into()), limit: 5 });
        assert_eq!(
            Filter::parse(Some(""), Some(""), None).unwrap(),
            Filter { limit: MAX_EXECUTIONS, ..Filter::default() }
        );
        assert!(Filter::parse(Some("done"), None, None).unwrap_err().contains("unknown status 'done'"));
        assert!(Filter::parse(None, None, Some("0")).unwrap_err().contains("limit must be 1 to 200"));
        assert!(Filter::parse(None, None, Some("201")).is_err());
    }

    #[test]
    fn payloads_are_clipped_and_non_json_shown_as_hex() {
        let small = PayloadView::new(&Payload::json(r#"{"a":"<b>"}"#), 64);
        assert_eq!(small.json, Some(serde_json::json!({"a": "<b>"})));
        assert!(!small.truncated);
        let big = PayloadView::new(&Payload::json(format!("\"{}\"", "é".repeat(100))), 11);
        assert!(big.truncated && big.json.is_none());
        assert_eq!(big.bytes, 202);
        assert!(big.text.unwrap().starts_with("\"éééé"));
        let bin = PayloadView::new(&Payload { codec: Codec::Bincode, data: vec![1, 0xab, 3] }, 2);
        assert_eq!((bin.hex.as_deref(), bin.truncated), (Some("01ab"), true));
    }
}

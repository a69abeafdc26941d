//! The JSON shapes of the HTTP API, and how the protocol's messages become them. Payloads in
//! the JSON codec (what the CLI and the SDK's default send) are shown as JSON values; others
//! as their codec and hex, as `weft ... --json` does.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use weft_proto::fabric::v1 as pb;

use super::error::ApiError;

/// A payload as JSON: the value for the JSON codec; for another codec (bincode, from Rust
/// agents) `null`, with the codec and the bytes in hex beside it.
fn payload_parts(p: Option<&pb::Payload>) -> (Option<serde_json::Value>, Option<String>, Option<String>) {
    match p {
        None => (None, None, None),
        Some(p) if p.codec == "json" || p.codec.is_empty() => {
            if p.data.is_empty() {
                return (Some(serde_json::Value::Null), None, None);
            }
            match serde_json::from_slice(&p.data) {
                Ok(v) => (Some(v), None, None),
                Err(_) => (None, Some(p.codec.clone()), Some(hex(&p.data))),
            }
        }
        Some(p) => (None, Some(p.codec.clone()), Some(hex(&p.data))),
    }
}

pub fn hex(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}

/// A JSON value as a JSON-codec payload.
pub fn json_payload(v: &serde_json::Value) -> pb::Payload {
    pb::Payload { codec: "json".into(), data: serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec()) }
}

/// An execution's failure.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionError {
    /// `handler`, `deadline`, `cancelled`, `undeliverable` or `instance`.
    pub kind: String,
    pub message: String,
}

/// One call of an agent's delegate.
#[derive(Debug, Serialize, ToSchema)]
pub struct Execution {
    pub id: u64,
    pub agent: String,
    pub instance: Option<String>,
    pub delegate: String,
    /// `pending`, `assigned`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// Deliveries so far.
    pub attempts: u32,
    /// The session that holds it while assigned.
    pub session_id: Option<u64>,
    /// Leader-stamped milliseconds since the Unix epoch.
    pub created_ms: u64,
    pub deadline_ms: Option<u64>,
    pub not_before_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub priority: i32,
    pub parent_id: Option<u64>,
    pub idempotency_key: Option<String>,
    /// The arguments (JSON codec); null with `args_codec` and `args_hex` for another codec.
    pub args: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args_codec: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args_hex: Option<String>,
    /// The result once completed (same rule as `args`).
    pub result: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_codec: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_hex: Option<String>,
    /// Set when failed or cancelled.
    pub error: Option<ExecutionError>,
}

fn non_zero(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl From<pb::Execution> for Execution {
    fn from(e: pb::Execution) -> Self {
        let (args, args_codec, args_hex) = payload_parts(e.payload.as_ref());
        let (result, result_codec, result_hex) = payload_parts(e.result.as_ref());
        Self {
            id: e.id,
            agent: e.agent,
            instance: non_empty(e.instance),
            delegate: e.delegate,
            status: e.status,
            attempts: e.attempts,
            session_id: non_zero(e.session_id),
            created_ms: e.created_ms,
            deadline_ms: e.deadline_ms,
            not_before_ms: e.not_before_ms,
            finished_ms: e.finished_ms,
            priority: e.priority,
            parent_id: non_zero(e.parent_id),
            idempotency_key: non_empty(e.idempotency_key),
            args,
            args_codec,
            args_hex,
            result,
            result_codec,
            result_hex,
            error: e.error.map(|x| ExecutionError { kind: x.kind, message: x.message }),
        }
    }
}

/// `POST /v1/executions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateExecution {
    pub agent: String,
    pub delegate: String,
    /// The arguments, any JSON value (default null).
    #[serde(default)]
    pub args: serde_json::Value,
    /// An instance of the agent (it must exist).
    #[serde(default)]
    pub instance: Option<String>,
    /// Fail unless finished this long after creation (default: the node's
    /// `default_execution_timeout_ms`).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub timeout_ms: Option<u64>,
    /// Do not deliver before this long after creation.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i32,
    /// Wait for a session that serves the delegate instead of failing when the connected
    /// sessions of the agent do not.
    #[serde(default)]
    pub wait_for_delegate: bool,
}

impl CreateExecution {
    pub fn into_pb(self, idempotency_key: String) -> pb::CreateExecutionRequest {
        pb::CreateExecutionRequest {
            agent: self.agent,
            instance: self.instance.unwrap_or_default(),
            delegate: self.delegate,
            payload: Some(json_payload(&self.args)),
            idempotency_key,
            timeout_ms: self.timeout_ms,
            delay_ms: self.delay_ms,
            priority: self.priority,
            wait_for_delegate: self.wait_for_delegate,
            ..Default::default()
        }
    }
}

/// The answer to `POST /v1/executions`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Created {
    pub execution: Execution,
    /// False when the `Idempotency-Key` named an execution created before.
    pub created: bool,
}

/// A page of executions.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionPage {
    pub executions: Vec<Execution>,
    /// Pass as `page_token` for the next page; null at the end.
    pub next_page_token: Option<u64>,
}

/// Filters and paging of `GET /v1/executions`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListExecutionsQuery {
    /// Only this agent's executions.
    pub agent: Option<String>,
    /// Only `pending`, `assigned`, `completed`, `failed` or `cancelled` ones.
    pub status: Option<String>,
    /// Continue after this id (the previous page's `next_page_token`; with `newest_first`,
    /// before it).
    pub page_token: Option<u64>,
    /// Page size (default and most: the node's `max_list_page`).
    pub limit: Option<u32>,
    /// Only executions created at or after this time (ms since the Unix epoch).
    pub created_since_ms: Option<u64>,
    /// Newest first (default: oldest first).
    #[serde(default)]
    pub newest_first: bool,
    /// Read this node's replica without asking the leader (may lag).
    #[serde(default)]
    pub stale: bool,
}

/// How long to wait for an execution.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Milliseconds to wait for the outcome (absent or 0: 30 s; at most the node's
    /// `max_wait_ms`). Still running then: 202 with the execution as it is.
    pub timeout_ms: Option<u64>,
}

/// Options of `POST /v1/call/{agent}/{delegate}` (the body is the arguments).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallQuery {
    /// An instance of the agent.
    pub instance: Option<String>,
    /// Milliseconds to wait for the outcome (absent or 0: 30 s; at most the node's
    /// `max_wait_ms`). Still running then: 202 with the execution, which goes on.
    pub timeout_ms: Option<u64>,
    /// Wait for a session that serves the delegate (see `POST /v1/executions`).
    #[serde(default)]
    pub wait_for_delegate: bool,
}

/// `POST /v1/executions/{id}/cancel`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Why, for the record (at most 1 KiB kept).
    #[serde(default)]
    pub reason: String,
}

/// The answer to a cancel.
#[derive(Debug, Serialize, ToSchema)]
pub struct Cancelled {
    /// Executions cancelled, unfinished children included.
    pub cancelled: u64,
}

/// A stored key: its value as text when it is UTF-8, else in hex (as the CLI shows it).
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyValue {
    pub key: String,
    /// The value as text (when it is UTF-8).
    pub value: Option<String>,
    /// The value in hex (when it is not UTF-8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_hex: Option<String>,
    pub version: u64,
    pub expires_at_ms: Option<u64>,
}

impl KeyValue {
    pub fn new(kv: pb::KeyValue, keys_only: bool) -> Self {
        let (value, value_hex) = if keys_only {
            (None, None)
        } else {
            match String::from_utf8(kv.value) {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(hex(e.as_bytes()))),
            }
        };
        Self { key: kv.key, value, value_hex, version: kv.version, expires_at_ms: kv.expires_at_ms }
    }
}

/// A page of keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyPage {
    pub entries: Vec<KeyValue>,
    /// Pass as `page_token` for the next page; null at the end.
    pub next_page_token: Option<String>,
}

/// Paging of `GET /v1/state/{namespace}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListKeysQuery {
    /// Only keys that start with this.
    pub prefix: Option<String>,
    /// Continue after this key (the previous page's `next_page_token`).
    pub page_token: Option<String>,
    /// Page size (default and most: the node's `max_list_page`).
    pub limit: Option<u32>,
    /// Keys and versions only, no values.
    #[serde(default)]
    pub keys_only: bool,
    /// Read this node's replica without asking the leader (may lag).
    #[serde(default)]
    pub stale: bool,
}

/// How to read one key.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GetKeyQuery {
    /// Read this node's replica without asking the leader (may lag).
    #[serde(default)]
    pub stale: bool,
}

/// Conditions of `PUT /v1/state/{namespace}/{key}` (the body is the value, stored as sent).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PutQuery {
    /// Forget the key this long after the write.
    pub ttl_ms: Option<u64>,
    /// Only if the key is absent (409 ALREADY_EXISTS otherwise).
    #[serde(default)]
    pub if_absent: bool,
    /// Only if the key is at this version, 0 meaning absent (400 FAILED_PRECONDITION
    /// otherwise).
    pub expected_version: Option<u64>,
}

/// Conditions of `DELETE /v1/state/{namespace}/{key}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Only if the key is at this version.
    pub expected_version: Option<u64>,
}

/// The answer to a write of a key.
#[derive(Debug, Serialize, ToSchema)]
pub struct Written {
    /// The key's version now.
    pub version: u64,
}

/// The answer to a delete.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    /// Whether the key existed.
    pub deleted: bool,
}

/// A member of the cluster, as Raft and gossip see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Member {
    pub id: u64,
    pub address: String,
    /// `leader`, `follower`, `candidate`, `learner`, `shutdown` or `unreachable`.
    pub role: String,
    pub voter: bool,
    pub reachable: bool,
    /// `alive`, `suspect`, `down`, `left` or `unknown`, as the answering node's gossip sees it.
    pub gossip: String,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Entries behind the most advanced member that answered.
    pub lag: Option<u64>,
}

/// The cluster: its leader and members.
#[derive(Debug, Serialize, ToSchema)]
pub struct Cluster {
    pub cluster: String,
    /// Null when no leader is known.
    pub leader_id: Option<u64>,
    pub term: u64,
    /// The node that answered.
    pub reporter_id: u64,
    pub members: Vec<Member>,
}

impl From<pb::ClusterStatus> for Cluster {
    fn from(s: pb::ClusterStatus) -> Self {
        Self {
            cluster: s.cluster,
            leader_id: non_zero(s.leader_id),
            term: s.term,
            reporter_id: s.reporter_id,
            members: s
                .members
                .into_iter()
                .map(|m| Member {
                    id: m.id,
                    address: m.address,
                    role: m.role,
                    voter: m.voter,
                    reachable: m.reachable,
                    gossip: m.gossip,
                    last_log_index: m.last_log_index,
                    applied_index: m.applied_index,
                    lag: m.lag,
                })
                .collect(),
        }
    }
}

/// A node as the answering node's gossip sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct GossipMember {
    pub id: u64,
    pub address: String,
    /// `alive`, `suspect`, `down` or `left`.
    pub state: String,
    pub incarnation: u32,
    pub generation: u64,
    /// How long it has been in `state`.
    pub state_for_ms: u64,
    /// `voter`, `learner` or `none`.
    pub raft: String,
}

/// The gossip view of the answering node.
#[derive(Debug, Serialize, ToSchema)]
pub struct Members {
    pub cluster: String,
    pub reporter_id: u64,
    pub members: Vec<GossipMember>,
}

impl From<pb::MembersReply> for Members {
    fn from(r: pb::MembersReply) -> Self {
        Self {
            cluster: r.cluster,
            reporter_id: r.reporter_id,
            members: r
                .members
                .into_iter()
                .map(|m| GossipMember {
                    id: m.id,
                    address: m.address,
                    state: m.state,
                    incarnation: m.incarnation,
                    generation: m.generation,
                    state_for_ms: m.state_for_ms,
                    raft: m.raft,
                })
                .collect(),
        }
    }
}

/// An agent a session serves.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServedAgent {
    pub name: String,
    /// The delegates it serves; empty with `all_delegates` true: every delegate.
    pub delegates: Vec<String>,
    pub all_delegates: bool,
}

/// A live agent session.
#[derive(Debug, Serialize, ToSchema)]
pub struct Session {
    pub id: u64,
    pub name: String,
    /// The node whose stream it is.
    pub node_id: u64,
    pub agents: Vec<ServedAgent>,
    pub capacity: u32,
    /// Executions it holds.
    pub in_flight: u32,
    /// Instances activated on it.
    pub instances: u32,
    pub opened_ms: u64,
    pub draining: bool,
}

impl From<pb::SessionInfo> for Session {
    fn from(s: pb::SessionInfo) -> Self {
        Self {
            id: s.id,
            name: s.name,
            node_id: s.node_id,
            agents: s
                .agents
                .into_iter()
                .map(|a| ServedAgent {
                    all_delegates: a.delegates.is_empty(),
                    name: a.name,
                    delegates: a.delegates,
                })
                .collect(),
            capacity: s.capacity,
            in_flight: s.in_flight,
            instances: s.instances,
            opened_ms: s.opened_ms,
            draining: s.draining,
        }
    }
}

/// A page of sessions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionPage {
    pub sessions: Vec<Session>,
    /// Pass as `page_token` for the next page; null at the end.
    pub next_page_token: Option<u64>,
}

/// Filters and paging of `GET /v1/sessions`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListSessionsQuery {
    /// Only the sessions that serve this agent.
    pub agent: Option<String>,
    /// Continue after this session id.
    pub page_token: Option<u64>,
    /// Page size (default and most: the node's `max_list_page`).
    pub limit: Option<u32>,
}

/// An agent instance.
#[derive(Debug, Serialize, ToSchema)]
pub struct Instance {
    pub agent: String,
    pub id: String,
    /// `starting`, `running` or `stopping`.
    pub lifecycle: String,
    /// The session it is activated on.
    pub session_id: Option<u64>,
    pub created_ms: u64,
    /// Calls waiting for it.
    pub queued: u32,
    /// Calls running on it.
    pub running: u32,
    /// Its parent instance, `agent/id`.
    pub parent: Option<String>,
    /// What its Start delegate returned (JSON codec).
    pub start_result: Option<serde_json::Value>,
}

impl From<pb::Instance> for Instance {
    fn from(i: pb::Instance) -> Self {
        Self {
            agent: i.agent,
            id: i.id,
            lifecycle: i.lifecycle,
            session_id: non_zero(i.session_id),
            created_ms: i.created_ms,
            queued: i.queued,
            running: i.running,
            parent: i.parent.map(|p| format!("{}/{}", p.agent, p.instance)),
            start_result: payload_parts(i.start_result.as_ref()).0,
        }
    }
}

/// A page of instances.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstancePage {
    pub instances: Vec<Instance>,
    /// Pass as `page_token` for the next page (`agent/id`); null at the end.
    pub next_page_token: Option<String>,
}

/// Filters and paging of `GET /v1/instances`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListInstancesQuery {
    /// Only this agent's instances.
    pub agent: Option<String>,
    /// Continue after this `agent/id`.
    pub page_token: Option<String>,
    /// Page size (default and most: the node's `max_list_page`).
    pub limit: Option<u32>,
}

/// The answer to an instance start or stop.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceOutcome {
    /// The Start (or Stop) execution.
    pub execution: Execution,
}

/// A stream item.
#[derive(Debug, Serialize, ToSchema)]
pub struct Item {
    pub seq: u64,
    pub key: Option<String>,
    /// The payload (JSON codec; see `Execution.args` for others).
    pub payload: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_codec: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<String>,
    pub headers: std::collections::BTreeMap<String, String>,
    /// When it was appended (leader-stamped ms).
    pub time_ms: u64,
}

impl From<pb::Item> for Item {
    fn from(i: pb::Item) -> Self {
        let (payload, payload_codec, payload_hex) = payload_parts(i.payload.as_ref());
        Self {
            seq: i.seq,
            key: non_empty(i.key),
            payload,
            payload_codec,
            payload_hex,
            headers: i.headers.into_iter().map(|h| (h.name, h.value)).collect(),
            time_ms: i.time_ms,
        }
    }
}

/// An item to append.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    /// Dot-separated tokens of `[A-Za-z0-9_-]` (for filters and last-by-key).
    #[serde(default)]
    pub key: Option<String>,
    /// Any JSON value.
    #[serde(default)]
    pub payload: serde_json::Value,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

/// `POST /v1/streams/{name}/items`: one atomic batch.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Append {
    pub items: Vec<NewItem>,
    /// Only if the stream's last seq is this (0: empty).
    #[serde(default)]
    pub expected_last_seq: Option<u64>,
}

impl Append {
    /// The protocol's request to append these items to `stream`.
    pub fn into_pb(self, stream: String) -> pb::AppendRequest {
        let items = self
            .items
            .into_iter()
            .map(|i| pb::NewItem {
                key: i.key.unwrap_or_default(),
                payload: Some(json_payload(&i.payload)),
                headers: i.headers.into_iter().map(|(name, value)| pb::Header { name, value }).collect(),
            })
            .collect();
        pb::AppendRequest {
            stream,
            items,
            expected_last_seq: self.expected_last_seq,
            producer: None,
            msg_id: String::new(),
        }
    }
}

/// The answer to an append.
#[derive(Debug, Serialize, ToSchema)]
pub struct Appended {
    pub first_seq: u64,
    pub last_seq: u64,
}

/// A page of items.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemPage {
    pub items: Vec<Item>,
    /// Where to read on (`from_seq`); null at the end of what is stored.
    pub next_seq: Option<u64>,
}

/// Where to read a stream from.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// The first seq to read (default: the first stored).
    pub from_seq: Option<u64>,
    /// Most items (default and most: the node's `max_list_page`).
    pub limit: Option<u32>,
    /// Only items whose key matches (`orders.*`, `orders.>`).
    pub filter: Option<String>,
    /// Read this node's replica without asking the leader (may lag).
    #[serde(default)]
    pub stale: bool,
}

/// One Server-Sent Event of a live tail, as an SSE client parses it: `item` events carry an
/// item's JSON (the `Item` schema) with the item's seq as their `id`; the one `end` event says why the
/// tail ended (`{"reason": "closed"}`, `{"reason": "deleted"}`, or an error body).
#[derive(Debug, Serialize, ToSchema)]
pub struct TailEvent {
    /// `item` or `end`.
    #[schema(pattern = "^(item|end)$")]
    pub event: String,
    /// The seq of the (last) item sent: resume after it with `Last-Event-ID`.
    pub id: Option<String>,
    /// JSON text: the item, or why the tail ended.
    #[schema(content_media_type = "application/json")]
    pub data: String,
}

/// Where a live tail starts.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TailQuery {
    /// The first seq to send (default: the items appended from now on).
    pub from_seq: Option<u64>,
    /// Only items whose key matches.
    pub filter: Option<String>,
}

/// A stream, briefly.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamSummary {
    pub name: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub items: u64,
    pub bytes: u64,
    pub closed: bool,
}

/// A page of streams.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamPage {
    pub streams: Vec<StreamSummary>,
    pub next_page_token: Option<String>,
}

/// Paging of `GET /v1/streams`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListStreamsQuery {
    /// Continue after this stream name.
    pub page_token: Option<String>,
    /// Page size (default and most: the node's `max_list_page`).
    pub limit: Option<u32>,
}

/// `POST /v1/tokens`: a new bearer token. Fields as in `weft tokens create`; each bad one is
/// refused with 400 naming it, and nothing is made.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// What it is for: 1-128 characters of `[A-Za-z0-9._-]` (lists and the audit trail show it).
    #[schema(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    pub name: String,
    /// `admin`, `operator`, `agent` or `client`.
    #[schema(pattern = "^(admin|operator|agent|client)$")]
    pub role: String,
    /// Agents it may serve (role `agent` only): agent names or `*`. At most 64 entries per
    /// list.
    #[serde(default)]
    #[schema(max_items = 64)]
    pub serve: Vec<String>,
    /// Agents it may call: agent names or `*`.
    #[serde(default)]
    #[schema(max_items = 64)]
    pub call: Vec<String>,
    /// State namespace prefixes it may read and write (`shared/orders`), or `*`: 1-256 bytes
    /// without whitespace or commas.
    #[serde(default)]
    #[schema(max_items = 64)]
    pub namespaces: Vec<String>,
    /// Stream name prefixes it may create, append to and read, or `*` (as `namespaces`).
    #[serde(default)]
    #[schema(max_items = 64)]
    pub streams: Vec<String>,
    /// Refused this long after it is made (1 ms to ten years); absent: until revoked.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 315360000000_f64)] // grid::token::MAX_EXPIRES_IN_MS
    pub expires_in_ms: Option<u64>,
}

impl CreateToken {
    /// The protocol's request for this token.
    pub fn into_pb(self) -> pb::CreateTokenRequest {
        pb::CreateTokenRequest {
            name: self.name,
            role: self.role,
            serve: self.serve,
            call: self.call,
            namespaces: self.namespaces,
            streams: self.streams,
            expires_in_ms: self.expires_in_ms,
        }
    }
}

/// A token as lists show it: never its secret or hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenRecord {
    /// Public: the part of the token text between `weft_` and the secret.
    pub id: String,
    pub name: String,
    /// `admin`, `operator`, `agent` or `client`.
    pub role: String,
    pub serve: Vec<String>,
    pub call: Vec<String>,
    pub namespaces: Vec<String>,
    pub streams: Vec<String>,
    /// Leader-stamped milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// When it stops being accepted; null: never.
    pub expires_at_ms: Option<u64>,
}

impl From<pb::TokenRecord> for TokenRecord {
    fn from(t: pb::TokenRecord) -> Self {
        Self {
            id: t.id,
            name: t.name,
            role: t.role,
            serve: t.serve,
            call: t.call,
            namespaces: t.namespaces,
            streams: t.streams,
            created_at_ms: t.created_at_ms,
            expires_at_ms: t.expires_at_ms,
        }
    }
}

/// The answer to `POST /v1/tokens`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    /// `weft_<id>_<secret>`: give it to its user now; nothing shows it again.
    pub token: String,
    /// What lists show of it (null only when it was revoked before this answer).
    pub record: Option<TokenRecord>,
    /// Members that had not applied the create when the node stopped waiting (10 s); each
    /// accepts the token once it catches up. Empty: every node accepts it now.
    pub not_applied: Vec<u64>,
}

/// A page of tokens.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenPage {
    pub tokens: Vec<TokenRecord>,
    /// Pass as `page_token` for the next page; null at the end.
    pub next_page_token: Option<String>,
}

/// Paging of `GET /v1/tokens`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListTokensQuery {
    /// Continue after this token id (the previous page's `next_page_token`).
    pub page_token: Option<String>,
    /// Page size (absent or 0: 100, the most).
    #[param(maximum = 100)]
    pub limit: Option<u32>,
    /// Read this node's replica without asking the leader (may lag).
    #[serde(default)]
    pub stale: bool,
}

/// The answer to `DELETE /v1/tokens/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevokedToken {
    /// False when the token had been revoked before (nothing changed now).
    pub existed: bool,
    /// Members that had not applied the revoke when the node stopped waiting (10 s); each
    /// refuses the token once it catches up. Empty: every node refuses it now.
    pub not_applied: Vec<u64>,
}

/// Refuses a body field that must not be empty.
pub fn required(what: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() { Err(ApiError::invalid(format!("{what} is required"))) } else { Ok(()) }
}

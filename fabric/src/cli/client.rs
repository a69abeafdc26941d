//! `weft status`, `weft members`, `weft state ...`, `weft call`, `weft executions ...` and
//! `weft instances ...`: talk to any node of a cluster.

use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use tonic::transport::{Channel, Endpoint};
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::cluster_client::ClusterClient;
use weft_proto::fabric::v1::executions_client::ExecutionsClient;
use weft_proto::fabric::v1::instances_client::InstancesClient;
use weft_proto::fabric::v1::state_client::StateClient;

use crate::grid::execution::STOP_DELEGATE;

/// How to reach the cluster.
#[derive(Debug, clap::Args)]
pub struct Conn {
    /// Any node of the cluster.
    #[arg(long, env = "WEFT_ENDPOINT", default_value = crate::config::DEFAULT_LISTEN, global = true)]
    pub endpoint: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Flags of `weft status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub conn: Conn,
}

/// `weft state` and its operations.
#[derive(Debug, clap::Args)]
pub struct StateArgs {
    #[command(flatten)]
    pub conn: Conn,
    #[command(subcommand)]
    pub op: StateOp,
}

/// Key/value operations. NAMESPACE is `shared/<name>` or `instance/<agent>/<instance-id>`.
#[derive(Debug, clap::Subcommand)]
pub enum StateOp {
    /// Read a key (linearizable unless --stale).
    Get {
        namespace: String,
        key: String,
        /// Read the contacted node's replica without asking the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Write a key.
    Put {
        namespace: String,
        key: String,
        value: String,
        /// Time to live: 500ms, 30s, 5m, 2h (a bare number is milliseconds).
        #[arg(long, value_parser = parse_duration_ms)]
        ttl: Option<u64>,
        /// Only write if the key does not exist.
        #[arg(long)]
        if_absent: bool,
    },
    /// Remove a key.
    Delete {
        namespace: String,
        key: String,
        /// Only delete if the key is at this version.
        #[arg(long, value_name = "VERSION")]
        expect: Option<u64>,
    },
    /// Write a key only if it is at the expected version (0: only if absent).
    Cas {
        namespace: String,
        key: String,
        value: String,
        /// The version last seen (from get); 0 means the key must not exist.
        #[arg(long, value_name = "VERSION")]
        expect: u64,
        /// Time to live: 500ms, 30s, 5m, 2h.
        #[arg(long, value_parser = parse_duration_ms)]
        ttl: Option<u64>,
    },
    /// List keys of a namespace, in order.
    List {
        namespace: String,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Keys per page (default: the server's page size).
        #[arg(long, default_value_t = 0)]
        limit: u32,
        /// Continue after this key (printed at the end of the previous page).
        #[arg(long, default_value = "")]
        page_token: String,
        /// Fetch every page.
        #[arg(long)]
        all: bool,
        /// Read the contacted node's replica without asking the leader.
        #[arg(long)]
        stale: bool,
    },
}

/// Parses `500ms`, `30s`, `5m`, `2h` or a bare number of milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("'{s}' is not a duration like 500ms, 30s, 5m or 2h"))?;
    let factor = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!("'{s}' has an unknown unit '{unit}' (use ms, s, m or h)"));
        }
    };
    n.checked_mul(factor).ok_or_else(|| format!("'{s}' is too long"))
}

/// Most bytes a CLI call sends or receives.
const MAX_CLI_MESSAGE_BYTES: usize = 64 << 20;

/// How long a request that does not wait for an execution may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

async fn channel(endpoint: &str) -> anyhow::Result<Channel> {
    channel_with_timeout(endpoint, Some(REQUEST_TIMEOUT)).await
}

/// A channel whose requests may take `timeout` (`None`: as long as the server lets them).
async fn channel_with_timeout(endpoint: &str, timeout: Option<Duration>) -> anyhow::Result<Channel> {
    let uri = if endpoint.contains("://") { endpoint.to_owned() } else { format!("http://{endpoint}") };
    let mut builder = Endpoint::from_shared(uri.clone())
        .with_context(|| format!("'{endpoint}' is not a valid endpoint (expected HOST:PORT)"))?
        .connect_timeout(Duration::from_secs(3));
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    builder
        .connect()
        .await
        .with_context(|| format!("cannot reach a Weft node at {endpoint} (set --endpoint or WEFT_ENDPOINT)"))
}

/// Prints a failed call and returns the exit code.
fn fail(status: tonic::Status, json_out: bool) -> i32 {
    if json_out {
        let mut error = json!({"code": format!("{:?}", status.code()), "message": status.message()});
        // A wait that ran out names the execution that goes on; scripts want it as a field.
        let execution = weft_proto::wire::execution_of(&status);
        if let (Some(id), Some(o)) = (execution, error.as_object_mut()) {
            o.insert("execution_id".into(), id.into());
        }
        outln!("{}", json!({ "error": error }));
    } else {
        eprintln!("error ({:?}): {}", status.code(), status.message());
    }
    1
}

fn value_json(v: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(v) {
        Ok(s) => json!({"value": s}),
        Err(_) => json!({"value_hex": hex(v)}),
    }
}

fn hex(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}

fn value_text(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) => s.to_owned(),
        Err(_) => format!("0x{}", hex(v)),
    }
}

fn kv_json(namespace: &str, kv: &pb::KeyValue) -> serde_json::Value {
    let mut obj = json!({
        "namespace": namespace,
        "key": kv.key,
        "version": kv.version,
        "expires_at_ms": kv.expires_at_ms,
    });
    if let (Some(o), serde_json::Value::Object(v)) = (obj.as_object_mut(), value_json(&kv.value)) {
        o.extend(v);
    }
    obj
}

fn kv_text(kv: &pb::KeyValue) -> String {
    let expiry = kv.expires_at_ms.map(|at| format!(", expires at {at} ms")).unwrap_or_default();
    format!("{} = {}  (version {}{expiry})", kv.key, value_text(&kv.value), kv.version)
}

/// Prints the version a write produced, or its error; returns the exit code.
fn written(result: Result<u64, tonic::Status>, json_out: bool) -> i32 {
    match result {
        Err(e) => fail(e, json_out),
        Ok(version) if json_out => {
            outln!("{}", json!({"version": version}));
            0
        }
        Ok(version) => {
            outln!("ok: version {version}");
            0
        }
    }
}

fn consistency(stale: bool) -> i32 {
    if stale { pb::Consistency::Stale as i32 } else { pb::Consistency::Linearizable as i32 }
}

/// `weft status`.
pub async fn status(args: StatusArgs) -> anyhow::Result<i32> {
    let mut client = ClusterClient::new(channel(&args.conn.endpoint).await?);
    let s = match client.status(pb::StatusRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(e) => return Ok(fail(e, args.conn.json)),
    };
    if args.conn.json {
        let members: Vec<_> = s
            .members
            .iter()
            .map(|m| {
                json!({"id": m.id, "address": m.address, "role": m.role, "voter": m.voter,
                       "last_log_index": m.last_log_index, "applied_index": m.applied_index,
                       "reachable": m.reachable, "gossip": m.gossip, "lag": m.lag})
            })
            .collect();
        outln!(
            "{}",
            json!({"cluster": s.cluster, "leader_id": (s.leader_id != 0).then_some(s.leader_id),
                   "term": s.term, "reporter_id": s.reporter_id, "members": members})
        );
        return Ok(0);
    }
    let leader = if s.leader_id == 0 { "none".to_owned() } else { format!("node {}", s.leader_id) };
    outln!("cluster '{}'  term {}  leader {leader}  (as seen by node {})", s.cluster, s.term, s.reporter_id);
    outln!(
        "{:<10} {:<22} {:<12} {:<6} {:<8} {:>10} {:>10} {:>6}",
        "ID",
        "ADDRESS",
        "ROLE",
        "VOTER",
        "GOSSIP",
        "LAST LOG",
        "APPLIED",
        "LAG"
    );
    let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    for m in &s.members {
        outln!(
            "{:<10} {:<22} {:<12} {:<6} {:<8} {:>10} {:>10} {:>6}",
            m.id,
            m.address,
            m.role,
            if m.voter { "yes" } else { "no" },
            m.gossip,
            opt(m.last_log_index),
            opt(m.applied_index),
            opt(m.lag)
        );
    }
    Ok(0)
}

/// Flags of `weft members`.
#[derive(Debug, clap::Args)]
pub struct MembersArgs {
    #[command(flatten)]
    pub conn: Conn,
}

/// `weft members`: the contacted node's gossip view.
pub async fn members(args: MembersArgs) -> anyhow::Result<i32> {
    let mut client = ClusterClient::new(channel(&args.conn.endpoint).await?);
    let r = match client.members(pb::MembersRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(e) => return Ok(fail(e, args.conn.json)),
    };
    if args.conn.json {
        let members: Vec<_> = r
            .members
            .iter()
            .map(|m| {
                json!({"id": m.id, "address": m.address, "state": m.state, "incarnation": m.incarnation,
                       "generation": m.generation, "state_for_ms": m.state_for_ms, "raft": m.raft})
            })
            .collect();
        outln!(
            "{}",
            json!({"cluster": r.cluster, "reporter_id": r.reporter_id, "members": members,
                   "dropped": {"malformed": r.dropped_malformed, "oversized": r.dropped_oversized,
                               "foreign_cluster": r.dropped_foreign_cluster}})
        );
        return Ok(0);
    }
    outln!("cluster '{}'  gossip as seen by node {}", r.cluster, r.reporter_id);
    outln!("{:<10} {:<22} {:<8} {:>10} {:<8} {:>11}", "ID", "ADDRESS", "STATE", "FOR", "RAFT", "INCARNATION");
    for m in &r.members {
        let for_ = format!("{:.1}s", m.state_for_ms as f64 / 1000.0);
        outln!(
            "{:<10} {:<22} {:<8} {:>10} {:<8} {:>11}",
            m.id,
            m.address,
            m.state,
            for_,
            m.raft,
            m.incarnation
        );
    }
    let dropped = r.dropped_malformed + r.dropped_oversized + r.dropped_foreign_cluster;
    if dropped > 0 {
        outln!(
            "dropped gossip packets: {} malformed, {} oversized, {} from other clusters",
            r.dropped_malformed,
            r.dropped_oversized,
            r.dropped_foreign_cluster
        );
    }
    Ok(0)
}

/// `weft state ...`.
pub async fn state(args: StateArgs) -> anyhow::Result<i32> {
    let json_out = args.conn.json;
    let mut client = StateClient::new(channel(&args.conn.endpoint).await?)
        .max_decoding_message_size(MAX_CLI_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_CLI_MESSAGE_BYTES);
    match args.op {
        StateOp::Get { namespace, key, stale } => {
            let req = pb::GetRequest {
                namespace: namespace.clone(),
                key: key.clone(),
                consistency: consistency(stale),
            };
            match client.get(req).await {
                Err(e) => Ok(fail(e, json_out)),
                Ok(r) => match r.into_inner().entry {
                    Some(kv) if json_out => {
                        outln!("{}", kv_json(&namespace, &kv));
                        Ok(0)
                    }
                    Some(kv) => {
                        outln!("{}", kv_text(&kv));
                        Ok(0)
                    }
                    None => {
                        if json_out {
                            outln!("{}", json!({"namespace": namespace, "key": key, "found": false}));
                        } else {
                            eprintln!("{namespace} {key}: not found");
                        }
                        Ok(1)
                    }
                },
            }
        }
        StateOp::Put { namespace, key, value, ttl, if_absent } => {
            let req = pb::PutRequest { namespace, key, value: value.into_bytes(), ttl_ms: ttl, if_absent };
            Ok(written(client.put(req).await.map(|r| r.into_inner().version), json_out))
        }
        StateOp::Cas { namespace, key, value, expect, ttl } => {
            let req = pb::CompareAndSetRequest {
                namespace,
                key,
                expected_version: expect,
                value: value.into_bytes(),
                ttl_ms: ttl,
            };
            Ok(written(client.compare_and_set(req).await.map(|r| r.into_inner().version), json_out))
        }
        StateOp::Delete { namespace, key, expect } => {
            let req = pb::DeleteRequest { namespace, key, expected_version: expect };
            match client.delete(req).await {
                Err(e) => Ok(fail(e, json_out)),
                Ok(r) => {
                    let deleted = r.into_inner().deleted;
                    if json_out {
                        outln!("{}", json!({"deleted": deleted}));
                    } else {
                        outln!("{}", if deleted { "deleted" } else { "not found (nothing deleted)" });
                    }
                    Ok(0)
                }
            }
        }
        StateOp::List { namespace, prefix, limit, mut page_token, all, stale } => {
            let mut entries = Vec::new();
            loop {
                let req = pb::ListRequest {
                    namespace: namespace.clone(),
                    prefix: prefix.clone(),
                    page_token: page_token.clone(),
                    limit,
                    consistency: consistency(stale),
                };
                let page = match client.list(req).await {
                    Err(e) => return Ok(fail(e, json_out)),
                    Ok(r) => r.into_inner(),
                };
                entries.extend(page.entries);
                page_token = page.next_page_token;
                if !all || page_token.is_empty() {
                    break;
                }
            }
            if json_out {
                let items: Vec<_> = entries.iter().map(|kv| kv_json(&namespace, kv)).collect();
                outln!(
                    "{}",
                    json!({"entries": items, "next_page_token": (!page_token.is_empty()).then_some(&page_token)})
                );
            } else {
                for kv in &entries {
                    outln!("{}", kv_text(kv));
                }
                if entries.is_empty() {
                    eprintln!("(no keys)");
                }
                if !page_token.is_empty() {
                    eprintln!("more keys follow: --page-token '{page_token}' (or --all)");
                }
            }
            Ok(0)
        }
    }
}

// ---- executions and instances ------------------------------------------------------------

/// How long `call`, `executions wait`, `instances start` and `instances stop` wait by default.
const DEFAULT_WAIT: &str = "30s";
/// Most items `--all` gathers; past it the listing stops and prints where to continue.
const MAX_LIST_ALL_ITEMS: usize = 100_000;
/// Backoff of the retry policy `--retries` sets: first wait, longest wait, growth per retry.
const RETRY_INITIAL_BACKOFF_MS: u64 = 100;
const RETRY_MAX_BACKOFF_MS: u64 = 5_000;
const RETRY_MULTIPLIER_PERCENT: u32 = 200;
/// Most deliveries a retry policy may ask for (the fabric's bound).
const MAX_RETRY_ATTEMPTS: u32 = 100;
/// Execution statuses `executions list --status` accepts.
const STATUSES: [&str; 5] = ["pending", "assigned", "completed", "failed", "cancelled"];

/// Flags of `weft call`.
///
/// The arguments are JSON, given as the third positional argument or with `--args` (not
/// `--json`: that global flag asks for JSON output). Without either the delegate gets `null`.
#[derive(Debug, clap::Args)]
pub struct CallArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// The agent to call.
    pub agent: String,
    /// The delegate (handler) of the agent to run.
    pub delegate: String,
    /// The arguments as JSON, e.g. '"hi"' or '{"n": 1}' (same as --args).
    #[arg(value_name = "ARGS", conflicts_with = "args", allow_negative_numbers = true)]
    pub args_json: Option<String>,
    /// The arguments as JSON (default: null). Quote for the shell: --args '{"n": 1}'.
    #[arg(long, value_name = "JSON", allow_negative_numbers = true)]
    pub args: Option<String>,
    /// The instance of the agent to run on (default: none, any session of the agent).
    #[arg(long, value_name = "ID")]
    pub instance: Option<String>,
    /// Calling again with this key returns the first call's execution instead of a new one.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// How long to wait for the outcome (0: the server's longest); after that the call goes
    /// on, and `weft executions wait ID` waits again.
    #[arg(long, value_name = "DUR", value_parser = parse_duration_ms, default_value = DEFAULT_WAIT)]
    pub timeout: u64,
    /// Do not run it before this long from now: 500ms, 30s, 5m, 2h.
    #[arg(long, value_name = "DUR", value_parser = parse_duration_ms)]
    pub delay: Option<u64>,
    /// Higher runs first; ties run oldest first.
    #[arg(long, value_name = "N", default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Run it up to N times in all (1 to 100) while the handler fails retryably; backoff
    /// from 100 ms, doubling, at most 5 s. Without it a handler error is final.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=MAX_RETRY_ATTEMPTS as i64))]
    pub retries: Option<u32>,
}

/// `weft executions` and its operations.
#[derive(Debug, clap::Args)]
pub struct ExecutionsArgs {
    #[command(flatten)]
    pub conn: Conn,
    #[command(subcommand)]
    pub op: ExecutionsOp,
}

/// Operations on executions (calls of agents' delegates). ID is an execution id.
#[derive(Debug, clap::Subcommand)]
pub enum ExecutionsOp {
    /// List executions, oldest first.
    List {
        /// Only this agent's.
        #[arg(long)]
        agent: Option<String>,
        /// Only those with this status.
        #[arg(long, value_parser = STATUSES)]
        status: Option<String>,
        /// Executions per page (default: the server's page size).
        #[arg(long, default_value_t = 0)]
        limit: u32,
        /// Continue after this execution id (printed at the end of the previous page).
        #[arg(long, value_name = "ID", default_value_t = 0)]
        page_token: u64,
        /// Fetch every page.
        #[arg(long)]
        all: bool,
        /// Read the contacted node's replica without asking the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Show one execution: its status, arguments and outcome.
    Get {
        /// The execution id.
        id: u64,
        /// Read the contacted node's replica without asking the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Follow an execution until it finishes: one line per change, then its outcome.
    Wait {
        /// The execution id.
        id: u64,
        /// How long to wait (0: the server's longest); the execution goes on after that.
        #[arg(long, value_name = "DUR", value_parser = parse_duration_ms, default_value = DEFAULT_WAIT)]
        timeout: u64,
    },
    /// Cancel an unfinished execution and its unfinished children.
    Cancel {
        /// The execution id.
        id: u64,
        /// Why, for whoever reads the execution's error.
        #[arg(long, default_value = "cancelled from the command line")]
        reason: String,
    },
}

/// `weft instances` and its operations.
#[derive(Debug, clap::Args)]
pub struct InstancesArgs {
    #[command(flatten)]
    pub conn: Conn,
    #[command(subcommand)]
    pub op: InstancesOp,
}

/// Operations on agent instances: long-lived, addressable agents with their own state.
#[derive(Debug, clap::Subcommand)]
pub enum InstancesOp {
    /// List instances in order of agent and id.
    List {
        /// Only this agent's.
        #[arg(long)]
        agent: Option<String>,
        /// Instances per page (default: the server's page size).
        #[arg(long, default_value_t = 0)]
        limit: u32,
        /// Continue after this AGENT/ID (printed at the end of the previous page).
        #[arg(long, value_name = "AGENT/ID")]
        page_token: Option<String>,
        /// Fetch every page.
        #[arg(long)]
        all: bool,
        /// Read the contacted node's replica without asking the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Show one instance.
    Get {
        /// The agent.
        agent: String,
        /// The instance id.
        id: String,
        /// Read the contacted node's replica without asking the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Start an instance and wait for its Start delegate; prints AGENT/ID and Start's result.
    ///
    /// Start's arguments are JSON, as the positional ARGS or with --args (default: null).
    Start {
        /// The agent.
        agent: String,
        /// Start's arguments as JSON (same as --args).
        #[arg(value_name = "ARGS", conflicts_with = "args", allow_negative_numbers = true)]
        args_json: Option<String>,
        /// The instance id (default: the fabric makes one).
        #[arg(long)]
        id: Option<String>,
        /// Start's arguments as JSON (default: null).
        #[arg(long, value_name = "JSON", allow_negative_numbers = true)]
        args: Option<String>,
        /// Starting again with this key returns the first start.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
        /// How long to wait for Start (0: the server's longest).
        #[arg(long, value_name = "DUR", value_parser = parse_duration_ms, default_value = DEFAULT_WAIT)]
        timeout: u64,
    },
    /// Stop an instance: wait for its Stop delegate, then remove it, its state and children.
    ///
    /// It is removed even if Stop fails; that is reported, with exit status 1.
    Stop {
        /// The agent.
        agent: String,
        /// The instance id.
        id: String,
        /// How long to wait for Stop (0: the server's longest).
        #[arg(long, value_name = "DUR", value_parser = parse_duration_ms, default_value = DEFAULT_WAIT)]
        timeout: u64,
    },
}

/// The channel timeout for a request the server holds for up to `wait_ms` (0: its longest):
/// the wait plus time to reach the leader, so the server's answer arrives before we give up.
fn waiting(wait_ms: u64) -> Option<Duration> {
    (wait_ms > 0).then(|| Duration::from_millis(wait_ms) + REQUEST_TIMEOUT)
}

async fn executions_client(
    endpoint: &str,
    timeout: Option<Duration>,
) -> anyhow::Result<ExecutionsClient<Channel>> {
    Ok(ExecutionsClient::new(channel_with_timeout(endpoint, timeout).await?)
        .max_decoding_message_size(MAX_CLI_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_CLI_MESSAGE_BYTES))
}

async fn instances_client(
    endpoint: &str,
    timeout: Option<Duration>,
) -> anyhow::Result<InstancesClient<Channel>> {
    Ok(InstancesClient::new(channel_with_timeout(endpoint, timeout).await?)
        .max_decoding_message_size(MAX_CLI_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_CLI_MESSAGE_BYTES))
}

/// The JSON payload of the positional ARGS or `--args` (clap lets at most one through);
/// `null` without either. Refused here, before anything is sent, if it is not JSON.
fn json_payload(positional: Option<String>, flag: Option<String>) -> Result<pb::Payload, tonic::Status> {
    let (text, source) = match (positional, flag) {
        (Some(text), _) => (text, "ARGS"),
        (None, Some(text)) => (text, "--args"),
        (None, None) => ("null".to_owned(), ""),
    };
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&text) {
        let bare_word = text.trim().chars().next().is_some_and(|c| c.is_alphabetic());
        let hint = if bare_word {
            format!("; a string needs JSON quotes, e.g. '\"{}\"'", text.trim())
        } else {
            String::new()
        };
        return Err(tonic::Status::invalid_argument(format!(
            "{source} is not valid JSON: {e}{hint} (nothing was sent)"
        )));
    }
    // The text as given, not re-encoded: serde_json's numbers would round big ones.
    Ok(pb::Payload { codec: "json".into(), data: text.into_bytes() })
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// A JSON payload's value; an empty one (no value) is `null`.
fn parsed_json(data: &[u8]) -> Option<serde_json::Value> {
    if data.is_empty() {
        return Some(serde_json::Value::Null);
    }
    serde_json::from_slice(data).ok()
}

/// Adds a payload to a JSON object as `name` (its value, for codec json) or as
/// `name_bincode_hex`, the way `weft state` shows values as `value` or `value_hex`.
fn insert_payload(obj: &mut serde_json::Value, name: &str, payload: Option<&pb::Payload>) {
    let Some(o) = obj.as_object_mut() else { return };
    match payload {
        None => {
            o.insert(name.into(), serde_json::Value::Null);
        }
        Some(p) if p.codec == "json" => {
            let value = parsed_json(&p.data).unwrap_or_else(|| value_text(&p.data).into());
            o.insert(name.into(), value);
        }
        Some(p) => {
            o.insert(format!("{name}_{}_hex", p.codec), hex(&p.data).into());
        }
    }
}

/// A payload for people: JSON (pretty across lines, or compact on one), else its size.
fn payload_text(p: &pb::Payload, pretty: bool) -> String {
    if p.codec != "json" {
        return format!("<{} bytes, {}>", p.data.len(), p.codec);
    }
    match parsed_json(&p.data) {
        Some(v) if pretty => serde_json::to_string_pretty(&v).unwrap_or_default(),
        Some(v) => v.to_string(),
        None => value_text(&p.data),
    }
}

fn execution_json(e: &pb::Execution) -> serde_json::Value {
    let mut obj = json!({
        "id": e.id,
        "agent": e.agent,
        "instance": non_empty(&e.instance),
        "delegate": e.delegate,
        "idempotency_key": non_empty(&e.idempotency_key),
        "status": e.status,
        "attempts": e.attempts,
        "session_id": (e.session_id != 0).then_some(e.session_id),
        "created_ms": e.created_ms,
        "deadline_ms": e.deadline_ms,
        "not_before_ms": e.not_before_ms,
        "priority": e.priority,
        "parent_id": (e.parent_id != 0).then_some(e.parent_id),
        "error": e.error.as_ref().map(|x| json!({"kind": x.kind, "message": x.message})),
        "finished_ms": e.finished_ms,
        "retry": e.retry.as_ref().map(|r| json!({
            "max_attempts": r.max_attempts,
            "initial_backoff_ms": r.initial_backoff_ms,
            "max_backoff_ms": r.max_backoff_ms,
            "multiplier_percent": r.multiplier_percent,
        })),
    });
    insert_payload(&mut obj, "args", e.payload.as_ref());
    insert_payload(&mut obj, "result", e.result.as_ref());
    obj
}

fn instance_json(i: &pb::Instance) -> serde_json::Value {
    let name = |r: &pb::InstanceRef| format!("{}/{}", r.agent, r.instance);
    let mut obj = json!({
        "agent": i.agent,
        "id": i.id,
        "lifecycle": i.lifecycle,
        "session_id": (i.session_id != 0).then_some(i.session_id),
        "parent": i.parent.as_ref().map(name),
        "children": i.children.iter().map(name).collect::<Vec<_>>(),
        "created_ms": i.created_ms,
        "queued": i.queued,
        "running": i.running,
    });
    insert_payload(&mut obj, "start_result", i.start_result.as_ref());
    obj
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// How long ago a leader-stamped time was, for people: 850ms, 12s, 5m, 3h, 2d.
fn age(at_ms: u64) -> String {
    let ms = now_ms().saturating_sub(at_ms);
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{}s", ms / 1_000),
        60_000..3_600_000 => format!("{}m", ms / 60_000),
        3_600_000..86_400_000 => format!("{}h", ms / 3_600_000),
        _ => format!("{}d", ms / 86_400_000),
    }
}

/// Prints a final execution's outcome; returns the exit code (1 unless it completed).
///
/// Text: the result on stdout, or `error (<kind>): <message>` on stderr. JSON: the whole
/// execution.
fn outcome(e: &pb::Execution, json_out: bool) -> i32 {
    let code = if e.status == "completed" { 0 } else { 1 };
    if json_out {
        outln!("{}", execution_json(e));
        return code;
    }
    match (&e.result, &e.error) {
        (Some(result), _) if code == 0 => outln!("{}", payload_text(result, true)),
        (None, _) if code == 0 => outln!("null"),
        (_, Some(error)) => eprintln!("error ({}): {}", error.kind, error.message),
        (_, None) => eprintln!("error: execution {} is {}", e.id, e.status),
    }
    code
}

/// `weft call`.
pub async fn call(args: CallArgs) -> anyhow::Result<i32> {
    let json_out = args.conn.json;
    let payload = match json_payload(args.args_json, args.args) {
        Ok(p) => p,
        Err(e) => return Ok(fail(e, json_out)),
    };
    let retry = args.retries.map(|max_attempts| pb::RetryPolicy {
        max_attempts,
        initial_backoff_ms: RETRY_INITIAL_BACKOFF_MS,
        max_backoff_ms: RETRY_MAX_BACKOFF_MS,
        multiplier_percent: RETRY_MULTIPLIER_PERCENT,
    });
    let create = pb::CreateExecutionRequest {
        agent: args.agent,
        instance: args.instance.unwrap_or_default(),
        delegate: args.delegate,
        payload: Some(payload),
        idempotency_key: args.idempotency_key.unwrap_or_default(),
        delay_ms: args.delay,
        priority: args.priority,
        retry,
        ..Default::default()
    };
    let mut client = executions_client(&args.conn.endpoint, waiting(args.timeout)).await?;
    match client.call(pb::CallRequest { create: Some(create), timeout_ms: args.timeout }).await {
        Err(e) => Ok(fail(e, json_out)),
        Ok(r) => Ok(outcome(&r.into_inner(), json_out)),
    }
}

fn print_executions(executions: &[pb::Execution]) {
    outln!(
        "{:>8} {:<16} {:<12} {:<16} {:<10} {:>8} {:>6}",
        "ID",
        "AGENT",
        "INSTANCE",
        "DELEGATE",
        "STATUS",
        "ATTEMPTS",
        "AGE"
    );
    for e in executions {
        outln!(
            "{:>8} {:<16} {:<12} {:<16} {:<10} {:>8} {:>6}",
            e.id,
            e.agent,
            non_empty(&e.instance).unwrap_or("-"),
            e.delegate,
            e.status,
            e.attempts,
            age(e.created_ms)
        );
    }
}

/// One execution in detail: a headline, then one line per field it has.
fn print_execution(e: &pb::Execution) {
    outln!("execution {}  {}/{}  {}  attempts {}", e.id, e.agent, e.delegate, e.status, e.attempts);
    let line = |name: &str, value: String| outln!("  {name:<16} {value}");
    if let Some(instance) = non_empty(&e.instance) {
        line("instance", instance.to_owned());
    }
    if let Some(p) = &e.payload {
        line("args", payload_text(p, false));
    }
    line("created_ms", format!("{} ({} ago)", e.created_ms, age(e.created_ms)));
    if let Some(at) = e.not_before_ms {
        line("not_before_ms", at.to_string());
    }
    if let Some(at) = e.deadline_ms {
        line("deadline_ms", at.to_string());
    }
    if e.priority != 0 {
        line("priority", e.priority.to_string());
    }
    if let Some(r) = &e.retry {
        line(
            "retry",
            format!(
                "up to {} attempts, backoff {}..{} ms, x{}%",
                r.max_attempts, r.initial_backoff_ms, r.max_backoff_ms, r.multiplier_percent
            ),
        );
    }
    if let Some(key) = non_empty(&e.idempotency_key) {
        line("idempotency_key", key.to_owned());
    }
    if e.parent_id != 0 {
        line("parent", e.parent_id.to_string());
    }
    if e.session_id != 0 {
        line("session", e.session_id.to_string());
    }
    if let Some(at) = e.finished_ms {
        line("finished_ms", format!("{at} ({} ms after creation)", at.saturating_sub(e.created_ms)));
    }
    if let Some(p) = &e.result {
        line("result", payload_text(p, false));
    }
    if let Some(x) = &e.error {
        line("error", format!("({}) {}", x.kind, x.message));
    }
}

/// `weft executions ...`.
pub async fn executions(args: ExecutionsArgs) -> anyhow::Result<i32> {
    let json_out = args.conn.json;
    let endpoint = args.conn.endpoint;
    match args.op {
        ExecutionsOp::List { agent, status, limit, mut page_token, all, stale } => {
            let mut client = executions_client(&endpoint, Some(REQUEST_TIMEOUT)).await?;
            let mut executions = Vec::new();
            loop {
                let req = pb::ListExecutionsRequest {
                    agent: agent.clone().unwrap_or_default(),
                    status: status.clone().unwrap_or_default(),
                    page_token,
                    limit,
                    consistency: consistency(stale),
                };
                let page = match client.list(req).await {
                    Err(e) => return Ok(fail(e, json_out)),
                    Ok(r) => r.into_inner(),
                };
                executions.extend(page.executions);
                page_token = page.next_page_token;
                if !all || page_token == 0 || executions.len() >= MAX_LIST_ALL_ITEMS {
                    break;
                }
            }
            if json_out {
                let items: Vec<_> = executions.iter().map(execution_json).collect();
                outln!(
                    "{}",
                    json!({"executions": items, "next_page_token": (page_token != 0).then_some(page_token)})
                );
                return Ok(0);
            }
            if executions.is_empty() {
                eprintln!("(no executions)");
            } else {
                print_executions(&executions);
            }
            if page_token != 0 {
                eprintln!("more executions follow: --page-token {page_token} (or --all)");
            }
            Ok(0)
        }
        ExecutionsOp::Get { id, stale } => {
            let mut client = executions_client(&endpoint, Some(REQUEST_TIMEOUT)).await?;
            match client.get(pb::GetExecutionRequest { id, consistency: consistency(stale) }).await {
                Err(e) => Ok(fail(e, json_out)),
                Ok(r) if json_out => {
                    outln!("{}", execution_json(&r.into_inner()));
                    Ok(0)
                }
                Ok(r) => {
                    print_execution(&r.into_inner());
                    Ok(0)
                }
            }
        }
        ExecutionsOp::Wait { id, timeout } => {
            // The stream's headers come at once; only they are bound by the channel timeout.
            let mut client = executions_client(&endpoint, Some(REQUEST_TIMEOUT)).await?;
            let mut stream = match client.wait(pb::WaitRequest { id, timeout_ms: timeout }).await {
                Err(e) => return Ok(fail(e, json_out)),
                Ok(r) => r.into_inner(),
            };
            loop {
                match stream.message().await {
                    Err(e) => return Ok(fail(e, json_out)),
                    Ok(None) => {
                        let why =
                            format!("the stream of execution {id} ended before it finished (wait again)");
                        return Ok(fail(tonic::Status::unavailable(why), json_out));
                    }
                    Ok(Some(e)) => {
                        let done = matches!(e.status.as_str(), "completed" | "failed" | "cancelled");
                        if json_out && !done {
                            outln!("{}", execution_json(&e));
                        } else if !json_out {
                            outln!("{} {} attempts {}", e.id, e.status, e.attempts);
                        }
                        if done {
                            return Ok(outcome(&e, json_out));
                        }
                    }
                }
            }
        }
        ExecutionsOp::Cancel { id, reason } => {
            let mut client = executions_client(&endpoint, Some(REQUEST_TIMEOUT)).await?;
            match client.cancel(pb::CancelExecutionRequest { id, reason }).await {
                Err(e) => Ok(fail(e, json_out)),
                Ok(r) => {
                    let cancelled = r.into_inner().cancelled;
                    if json_out {
                        outln!("{}", json!({"cancelled": cancelled}));
                    } else {
                        outln!("cancelled {cancelled} execution(s)");
                    }
                    Ok(0)
                }
            }
        }
    }
}

fn print_instances(instances: &[pb::Instance]) {
    outln!(
        "{:<16} {:<16} {:<10} {:>8} {:>7} {:>7} {:>6}",
        "AGENT",
        "ID",
        "LIFECYCLE",
        "SESSION",
        "QUEUED",
        "RUNNING",
        "AGE"
    );
    for i in instances {
        let session = if i.session_id == 0 { "-".to_owned() } else { i.session_id.to_string() };
        outln!(
            "{:<16} {:<16} {:<10} {:>8} {:>7} {:>7} {:>6}",
            i.agent,
            i.id,
            i.lifecycle,
            session,
            i.queued,
            i.running,
            age(i.created_ms)
        );
    }
}

fn print_instance(i: &pb::Instance) {
    outln!("instance {}/{}  {}", i.agent, i.id, i.lifecycle);
    let line = |name: &str, value: String| outln!("  {name:<16} {value}");
    let session = if i.session_id == 0 { "none".to_owned() } else { i.session_id.to_string() };
    line("session", session);
    line("created_ms", format!("{} ({} ago)", i.created_ms, age(i.created_ms)));
    line("queued", i.queued.to_string());
    line("running", i.running.to_string());
    if let Some(p) = &i.start_result {
        line("start_result", payload_text(p, false));
    }
    if let Some(p) = &i.parent {
        line("parent", format!("{}/{}", p.agent, p.instance));
    }
    if !i.children.is_empty() {
        let children: Vec<_> = i.children.iter().map(|c| format!("{}/{}", c.agent, c.instance)).collect();
        line("children", children.join(", "));
    }
}

/// `AGENT/ID` as an instance reference.
fn instance_ref(s: &str) -> Result<pb::InstanceRef, tonic::Status> {
    match s.split_once('/') {
        Some((agent, instance)) if !agent.is_empty() && !instance.is_empty() => {
            Ok(pb::InstanceRef { agent: agent.into(), instance: instance.into() })
        }
        _ => Err(tonic::Status::invalid_argument(format!("'{s}' is not a page token like AGENT/ID"))),
    }
}

/// `weft instances ...`.
pub async fn instances(args: InstancesArgs) -> anyhow::Result<i32> {
    let json_out = args.conn.json;
    let endpoint = args.conn.endpoint;
    match args.op {
        InstancesOp::List { agent, limit, page_token, all, stale } => {
            let mut page_token = match page_token.as_deref().map(instance_ref).transpose() {
                Ok(t) => t,
                Err(e) => return Ok(fail(e, json_out)),
            };
            let mut client = instances_client(&endpoint, Some(REQUEST_TIMEOUT)).await?;
            let mut instances = Vec::new();
            loop {
                let req = pb::ListInstancesRequest {
                    agent: agent.clone().unwrap_or_default(),
                    page_token: page_token.clone(),
                    limit,
                    consistency: consistency(stale),
                };
                let page = match client.list(req).await {
                    Err(e) => return Ok(fail(e, json_out)),
                    Ok(r) => r.into_inner(),
                };
                instances.extend(page.instances);
                page_token = page.next_page_token;
                if !all || page_token.is_none() || instances.len() >= MAX_LIST_ALL_ITEMS {
                    break;
                }
            }
            let next = page_token.map(|t| format!("{}/{}", t.agent, t.instance));
            if json_out {
                let items: Vec<_> = instances.iter().map(instance_json).collect();
                outln!("{}", json!({"instances": items, "next_page_token": next}));
                return Ok(0);
            }
            if instances.is_empty() {
                eprintln!("(no instances)");
            } else {
                print_instances(&instances);
            }
            if let Some(next) = next {
                eprintln!("more instances follow: --page-token '{next}' (or --all)");
            }
            Ok(0)
        }
        InstancesOp::Get { agent, id, stale } => {
            let mut client = instances_client(&endpoint, Some(REQUEST_TIMEOUT)).await?;
            let req = pb::GetInstanceRequest { agent, instance: id, consistency: consistency(stale) };
            match client.get(req).await {
                Err(e) => Ok(fail(e, json_out)),
                Ok(r) if json_out => {
                    outln!("{}", instance_json(&r.into_inner()));
                    Ok(0)
                }
                Ok(r) => {
                    print_instance(&r.into_inner());
                    Ok(0)
                }
            }
        }
        InstancesOp::Start { agent, args_json, id, args, idempotency_key, timeout } => {
            let payload = match json_payload(args_json, args) {
                Ok(p) => p,
                Err(e) => return Ok(fail(e, json_out)),
            };
            let mut client = instances_client(&endpoint, waiting(timeout)).await?;
            let req = pb::StartInstanceRequest {
                agent,
                instance: id.unwrap_or_default(),
                payload: Some(payload),
                idempotency_key: idempotency_key.unwrap_or_default(),
                parent: None,
                timeout_ms: timeout,
            };
            let r = match client.start(req).await {
                Err(e) => return Ok(fail(e, json_out)),
                Ok(r) => r.into_inner(),
            };
            let started = r.start.as_ref().is_some_and(|e| e.status == "completed");
            if json_out {
                outln!(
                    "{}",
                    json!({"agent": r.agent, "instance": r.instance, "created": r.created,
                           "start": r.start.as_ref().map(execution_json)})
                );
                return Ok(if started { 0 } else { 1 });
            }
            match &r.start {
                Some(start) if started => {
                    let again = if r.created { "" } else { " (already, with this idempotency key)" };
                    outln!("started {}/{}{again}", r.agent, r.instance);
                    let result = start.result.as_ref().map(|p| payload_text(p, true));
                    if let Some(text) = result.filter(|t| t != "null") {
                        outln!("{text}");
                    }
                    Ok(0)
                }
                Some(start) => {
                    eprintln!("{}/{} did not start", r.agent, r.instance);
                    Ok(outcome(start, false))
                }
                None => {
                    eprintln!(
                        "error: the fabric did not return the Start execution of {}/{}",
                        r.agent, r.instance
                    );
                    Ok(1)
                }
            }
        }
        InstancesOp::Stop { agent, id, timeout } => {
            let mut client = instances_client(&endpoint, waiting(timeout)).await?;
            let req =
                pb::StopInstanceRequest { agent: agent.clone(), instance: id.clone(), timeout_ms: timeout };
            let stop = match client.stop(req).await {
                Err(e) => return Ok(fail(e, json_out)),
                Ok(r) => r.into_inner().stop,
            };
            // The answer is the Stop execution, or the cancelled Start of an instance that was
            // still starting; either way the instance is gone. A failed Stop is worth knowing.
            let stop_failed =
                stop.as_ref().is_some_and(|e| e.delegate == STOP_DELEGATE && e.status != "completed");
            let code = if stop_failed { 1 } else { 0 };
            if json_out {
                outln!(
                    "{}",
                    json!({"agent": agent, "instance": id, "stopped": true,
                           "stop": stop.as_ref().map(execution_json)})
                );
                return Ok(code);
            }
            let while_starting = stop.as_ref().is_some_and(|e| e.delegate != STOP_DELEGATE);
            let note = if while_starting { " (it had not finished starting)" } else { "" };
            outln!("stopped {agent}/{id}{note}");
            if stop_failed && let Some(error) = stop.as_ref().and_then(|e| e.error.as_ref()) {
                eprintln!("its Stop delegate did not complete: error ({}): {}", error.kind, error.message);
            }
            Ok(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration_ms;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("250"), Ok(250));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("3s"), Ok(3_000));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert!(parse_duration_ms("3 days").is_err());
        assert!(parse_duration_ms("s").is_err());
    }
}

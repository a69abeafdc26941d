//! `weft status`, `weft members` and `weft state ...`: talk to any node of a cluster.

use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use tonic::transport::{Channel, Endpoint};
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::cluster_client::ClusterClient;
use weft_proto::fabric::v1::state_client::StateClient;

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

async fn channel(endpoint: &str) -> anyhow::Result<Channel> {
    let uri = if endpoint.contains("://") { endpoint.to_owned() } else { format!("http://{endpoint}") };
    Endpoint::from_shared(uri.clone())
        .with_context(|| format!("'{endpoint}' is not a valid endpoint (expected HOST:PORT)"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(15))
        .connect()
        .await
        .with_context(|| format!("cannot reach a Weft node at {endpoint} (set --endpoint or WEFT_ENDPOINT)"))
}

/// Prints a failed call and returns the exit code.
fn fail(status: tonic::Status, json_out: bool) -> i32 {
    if json_out {
        println!(
            "{}",
            json!({"error": {"code": format!("{:?}", status.code()), "message": status.message()}})
        );
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
            println!("{}", json!({"version": version}));
            0
        }
        Ok(version) => {
            println!("ok: version {version}");
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
        println!(
            "{}",
            json!({"cluster": s.cluster, "leader_id": (s.leader_id != 0).then_some(s.leader_id),
                   "term": s.term, "reporter_id": s.reporter_id, "members": members})
        );
        return Ok(0);
    }
    let leader = if s.leader_id == 0 { "none".to_owned() } else { format!("node {}", s.leader_id) };
    println!(
        "cluster '{}'  term {}  leader {leader}  (as seen by node {})",
        s.cluster, s.term, s.reporter_id
    );
    println!(
        "{:<10} {:<22} {:<12} {:<6} {:<8} {:>10} {:>10} {:>6}",
        "ID", "ADDRESS", "ROLE", "VOTER", "GOSSIP", "LAST LOG", "APPLIED", "LAG"
    );
    let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    for m in &s.members {
        println!(
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
        println!(
            "{}",
            json!({"cluster": r.cluster, "reporter_id": r.reporter_id, "members": members,
                   "dropped": {"malformed": r.dropped_malformed, "oversized": r.dropped_oversized,
                               "foreign_cluster": r.dropped_foreign_cluster}})
        );
        return Ok(0);
    }
    println!("cluster '{}'  gossip as seen by node {}", r.cluster, r.reporter_id);
    println!(
        "{:<10} {:<22} {:<8} {:>10} {:<8} {:>11}",
        "ID", "ADDRESS", "STATE", "FOR", "RAFT", "INCARNATION"
    );
    for m in &r.members {
        let for_ = format!("{:.1}s", m.state_for_ms as f64 / 1000.0);
        println!(
            "{:<10} {:<22} {:<8} {:>10} {:<8} {:>11}",
            m.id, m.address, m.state, for_, m.raft, m.incarnation
        );
    }
    let dropped = r.dropped_malformed + r.dropped_oversized + r.dropped_foreign_cluster;
    if dropped > 0 {
        println!(
            "dropped gossip packets: {} malformed, {} oversized, {} from other clusters",
            r.dropped_malformed, r.dropped_oversized, r.dropped_foreign_cluster
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
                        println!("{}", kv_json(&namespace, &kv));
                        Ok(0)
                    }
                    Some(kv) => {
                        println!("{}", kv_text(&kv));
                        Ok(0)
                    }
                    None => {
                        if json_out {
                            println!("{}", json!({"namespace": namespace, "key": key, "found": false}));
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
                        println!("{}", json!({"deleted": deleted}));
                    } else {
                        println!("{}", if deleted { "deleted" } else { "not found (nothing deleted)" });
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
                println!(
                    "{}",
                    json!({"entries": items, "next_page_token": (!page_token.is_empty()).then_some(&page_token)})
                );
            } else {
                for kv in &entries {
                    println!("{}", kv_text(kv));
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

//! `weft state get|put|cas|delete|list`: read and write key/value state in the grid.

use serde_json::json;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::state_client::StateClient;

use crate::args::{Input, parse_duration_ms};
use crate::connect::{self, REQUEST_TIMEOUT, consistency};
use crate::render::{fail, hex, outln, value_text};

/// `weft state` and its operations.
pub type Args = connect::Group<Op>;

/// Key/value operations. NAMESPACE is `shared/<name>` or `instance/<agent>/<instance-id>`.
#[derive(Debug, clap::Subcommand)]
pub enum Op {
    /// Read a key (linearizable unless --stale).
    Get {
        /// `shared/<name>` or `instance/<agent>/<instance-id>`.
        namespace: String,
        /// The key.
        key: String,
        /// Read the contacted node's replica without asking the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Write a key.
    Put {
        /// `shared/<name>` or `instance/<agent>/<instance-id>`.
        namespace: String,
        /// The key.
        key: String,
        /// The value as text; `@FILE` reads it from a file, `-` from stdin (`@@...` for a
        /// value that starts with `@`).
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
        /// `shared/<name>` or `instance/<agent>/<instance-id>`.
        namespace: String,
        /// The key.
        key: String,
        /// Only delete if the key is at this version.
        #[arg(long, value_name = "VERSION")]
        expect: Option<u64>,
    },
    /// Write a key only if it is at the expected version (0: only if absent).
    Cas {
        /// `shared/<name>` or `instance/<agent>/<instance-id>`.
        namespace: String,
        /// The key.
        key: String,
        /// The value as text; `@FILE` reads it from a file, `-` from stdin (`@@...` for a
        /// value that starts with `@`).
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
        /// `shared/<name>` or `instance/<agent>/<instance-id>`.
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
        /// Print only the keys, one per line (with --json, a list of strings).
        #[arg(long)]
        keys_only: bool,
    },
}

/// A value as `--json` prints it: `value` if it is UTF-8, else `value_hex`.
fn value_json(v: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(v) {
        Ok(s) => json!({"value": s}),
        Err(_) => json!({"value_hex": hex(v)}),
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

/// `weft state ...`.
pub async fn run(args: Args) -> anyhow::Result<i32> {
    let json_out = args.conn.json;
    let mut client: StateClient<_> = connect::client(&args.conn.endpoint, Some(REQUEST_TIMEOUT))?;
    match args.op {
        Op::Get { namespace, key, stale } => {
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
        Op::Put { namespace, key, value, ttl, if_absent } => {
            let value = match Input::arg(&value).read() {
                Ok(value) => value,
                Err(e) => return Ok(fail(e, json_out)),
            };
            let req = pb::PutRequest {
                namespace,
                key,
                value: value.into_bytes(),
                ttl_ms: ttl,
                if_absent,
                fence: None,
            };
            Ok(written(client.put(req).await.map(|r| r.into_inner().version), json_out))
        }
        Op::Cas { namespace, key, value, expect, ttl } => {
            let value = match Input::arg(&value).read() {
                Ok(value) => value,
                Err(e) => return Ok(fail(e, json_out)),
            };
            let req = pb::CompareAndSetRequest {
                namespace,
                key,
                expected_version: expect,
                value: value.into_bytes(),
                ttl_ms: ttl,
                fence: None,
            };
            Ok(written(client.compare_and_set(req).await.map(|r| r.into_inner().version), json_out))
        }
        Op::Delete { namespace, key, expect } => {
            let req = pb::DeleteRequest { namespace, key, expected_version: expect, fence: None };
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
        Op::List { namespace, prefix, limit, page_token, all, stale, keys_only } => {
            let listed = connect::pages(page_token, all, async |page_token| {
                let req = pb::ListRequest {
                    namespace: namespace.clone(),
                    prefix: prefix.clone(),
                    page_token,
                    limit,
                    consistency: consistency(stale),
                };
                let page = client.list(req).await?.into_inner();
                Ok((page.entries, page.next_page_token))
            })
            .await;
            let (entries, page_token) = match listed {
                Ok(listed) => listed,
                Err(e) => return Ok(fail(e, json_out)),
            };
            if keys_only && json_out {
                let keys: Vec<&str> = entries.iter().map(|kv| kv.key.as_str()).collect();
                outln!(
                    "{}",
                    json!({"keys": keys, "next_page_token": (!page_token.is_empty()).then_some(&page_token)})
                );
            } else if json_out {
                let items: Vec<_> = entries.iter().map(|kv| kv_json(&namespace, kv)).collect();
                outln!(
                    "{}",
                    json!({"entries": items, "next_page_token": (!page_token.is_empty()).then_some(&page_token)})
                );
            } else {
                for kv in &entries {
                    if keys_only {
                        outln!("{}", kv.key);
                    } else {
                        outln!("{}", kv_text(kv));
                    }
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

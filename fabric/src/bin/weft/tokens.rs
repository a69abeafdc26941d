//! `weft tokens create|list|revoke|generate`: the bearer tokens of a cluster with auth on
//! (admins only), and a fresh admin token for `auth_bootstrap_token_file`.

use serde_json::json;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::tokens_client::TokensClient;

use crate::connect::{self, consistency};
use crate::render::{age, fail, outln, until};

/// `weft tokens` and its operations.
pub type Args = connect::Group<Op>;

/// Operations on tokens.
#[derive(Debug, clap::Subcommand)]
pub enum Op {
    /// Make a token and print it (on stdout, this once: it is not shown again).
    ///
    ///   weft tokens create --name ci --role operator
    ///   weft tokens create --name orders-agent --role agent --serve orders --streams orders.
    ///   weft tokens create --name shop --role client --call orders,billing --namespaces shared/shop --expires-in 30d
    #[command(verbatim_doc_comment)]
    Create {
        /// What it is for (1-128 characters of [A-Za-z0-9._-]); lists and the audit trail
        /// show it.
        #[arg(long)]
        name: String,
        /// admin (everything), operator (reads all, cancels, starts and stops instances),
        /// agent (serves --serve) or client (calls --call).
        #[arg(long)]
        role: String,
        /// Agents it may serve (role agent), comma-separated; `*` for all.
        #[arg(long, value_delimiter = ',', value_name = "AGENT,...")]
        serve: Vec<String>,
        /// Agents it may call, comma-separated; `*` for all.
        #[arg(long, value_delimiter = ',', value_name = "AGENT,...")]
        call: Vec<String>,
        /// State namespace prefixes it may read and write (shared/orders), comma-separated.
        #[arg(long, value_delimiter = ',', value_name = "PREFIX,...")]
        namespaces: Vec<String>,
        /// Stream name prefixes it may create, append to and read, comma-separated.
        #[arg(long, value_delimiter = ',', value_name = "PREFIX,...")]
        streams: Vec<String>,
        /// Refused this long after it is made (30d, 12h); without it, until revoked.
        #[arg(long, value_name = "DURATION", value_parser = crate::args::parse_positive_duration_ms)]
        expires_in: Option<u64>,
    },
    /// List the cluster's tokens: id, name, role, scopes, age and expiry (never secrets).
    List {
        /// Read the contacted node's replica without asking the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Revoke a token: from when this returns, every node refuses it (the command waits until
    /// each member has applied the revoke, up to 10 s, and names those that had not).
    Revoke {
        /// The token's id (the part after `weft_`, before the secret; `weft tokens list`).
        id: String,
    },
    /// Print a fresh random admin token for --auth-bootstrap-token-file (sends nothing).
    ///
    ///   weft tokens generate > admin.token && chmod 600 admin.token
    ///   weft node --auth --auth-bootstrap-token-file admin.token ...
    ///   weft --auth-token-file admin.token tokens list
    #[command(verbatim_doc_comment)]
    Generate,
}

fn record_json(t: &pb::TokenRecord) -> serde_json::Value {
    json!({
        "id": t.id,
        "name": t.name,
        "role": t.role,
        "serve": t.serve,
        "call": t.call,
        "namespaces": t.namespaces,
        "streams": t.streams,
        "created_at_ms": t.created_at_ms,
        "expires_at_ms": t.expires_at_ms,
    })
}

/// A token's scopes in one word list: `call=a,b namespaces=shared/x`, or `-`.
fn scopes_text(t: &pb::TokenRecord) -> String {
    let parts: Vec<String> =
        [("serve", &t.serve), ("call", &t.call), ("namespaces", &t.namespaces), ("streams", &t.streams)]
            .into_iter()
            .filter(|(_, l)| !l.is_empty())
            .map(|(k, l)| format!("{k}={}", l.join(",")))
            .collect();
    if parts.is_empty() { "-".into() } else { parts.join(" ") }
}

fn expiry_text(t: &pb::TokenRecord) -> String {
    match t.expires_at_ms {
        None => "never".into(),
        Some(at) if until(at) == "0ms" => "expired".into(),
        Some(at) => format!("in {}", until(at)),
    }
}

/// `weft tokens generate`: a new token on stdout, its id on stderr.
fn generate() -> i32 {
    let credential = weft_fabric::auth::Credential::generate();
    outln!("{}", credential.reveal());
    eprintln!(
        "token id {} (an admin token once a node with --auth-bootstrap-token-file creates it)",
        credential.id()
    );
    0
}

/// Warns that the members `not_applied` had not applied a create or a revoke (`what`) when
/// the node stopped waiting.
fn warn_not_applied(what: &str, not_applied: &[u64]) {
    if !not_applied.is_empty() {
        let ids: Vec<String> = not_applied.iter().map(u64::to_string).collect();
        eprintln!(
            "warning: node(s) {} had not applied the {what} within 10 s (down or behind); each does once it \
             catches up",
            ids.join(", ")
        );
    }
}

/// `weft tokens ...`.
pub async fn run(args: Args) -> anyhow::Result<i32> {
    let json_out = args.conn.json;
    let endpoint = args.conn.endpoint;
    let client = || -> anyhow::Result<TokensClient<connect::Failover>> {
        connect::client(&endpoint, Some(connect::REQUEST_TIMEOUT))
    };
    match args.op {
        Op::Generate => Ok(generate()),
        Op::Create { name, role, serve, call, namespaces, streams, expires_in } => {
            let req = pb::CreateTokenRequest {
                name,
                role,
                serve,
                call,
                namespaces,
                streams,
                expires_in_ms: expires_in,
            };
            match client()?.create(req).await {
                Err(e) => Ok(fail(e, json_out)),
                Ok(r) => {
                    let r = r.into_inner();
                    let record = r.record.unwrap_or_default();
                    warn_not_applied("create", &r.not_applied);
                    if json_out {
                        outln!(
                            "{}",
                            json!({"token": r.token, "record": record_json(&record), "not_applied": r.not_applied})
                        );
                    } else {
                        outln!("{}", r.token);
                        eprintln!(
                            "token {} ({}), role {}, expires {}: shown this once; keep it secret",
                            record.id,
                            record.name,
                            record.role,
                            expiry_text(&record)
                        );
                    }
                    Ok(0)
                }
            }
        }
        Op::List { stale } => {
            let mut client = client()?;
            let listed = connect::pages(String::new(), true, async |page_token| {
                let req = pb::ListTokensRequest { page_size: 0, page_token, consistency: consistency(stale) };
                let r = client.list(req).await?.into_inner();
                Ok((r.tokens, r.next_page_token))
            })
            .await;
            let tokens = match listed {
                Err(e) => return Ok(fail(e, json_out)),
                Ok((tokens, _)) => tokens,
            };
            if json_out {
                outln!("{}", json!({"tokens": tokens.iter().map(record_json).collect::<Vec<_>>()}));
                return Ok(0);
            }
            outln!("{:<14} {:<20} {:<9} {:<8} {:<10} SCOPES", "ID", "NAME", "ROLE", "AGE", "EXPIRES");
            for t in &tokens {
                outln!(
                    "{:<14} {:<20} {:<9} {:<8} {:<10} {}",
                    t.id,
                    t.name,
                    t.role,
                    age(t.created_at_ms),
                    expiry_text(t),
                    scopes_text(t)
                );
            }
            Ok(0)
        }
        Op::Revoke { id } => match client()?.revoke(pb::RevokeTokenRequest { id: id.clone() }).await {
            Err(e) => Ok(fail(e, json_out)),
            Ok(r) => {
                let r = r.into_inner();
                if json_out {
                    outln!("{}", json!({"id": id, "existed": r.existed, "not_applied": r.not_applied}));
                } else if r.existed {
                    outln!("revoked token {id}");
                } else {
                    outln!("token {id} was revoked already");
                }
                warn_not_applied("revoke", &r.not_applied);
                Ok(0)
            }
        },
    }
}

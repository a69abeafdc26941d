//! `weft scaler status`: what the active scaler of a group says about its agents (desired,
//! running, starting, stopping and waiting replicas, crash loops with their reason), read
//! from the status it publishes in the grid, checked against who holds its lease.
//!
//! The names are the scaler's (`weft-scaler`, `fabric` module): the group's lease is
//! `weft.scaler.<group>`, its status the key `status` in `shared/weft.scaler.<group>`.

use serde_json::{Value, json};
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::leases_client::LeasesClient;
use weft_proto::fabric::v1::state_client::StateClient;

use crate::connect::{self, consistency};
use crate::render::{age, fail, outln, until};

/// A status older than this is stale: the scaler publishes at least every 10 s.
const STALE_AFTER_MS: u64 = 30_000;
/// Most bytes of a crash's output tail printed in the table view.
const TAIL_SHOWN_BYTES: usize = 600;

/// `weft scaler` and its operations.
pub type Args = connect::Group<Op>;

/// Operations on scalers.
#[derive(Debug, clap::Subcommand)]
pub enum Op {
    /// Per agent: desired, running, starting, stopping and waiting replicas, and crash loops
    /// with their reason. Exit status 1 when no scaler of the group is active or its status
    /// is stale.
    Status {
        /// The scaler group (`group` in its configuration).
        #[arg(long, default_value = "default")]
        group: String,
        /// Read the contacted node's replica without asking the leader.
        #[arg(long)]
        stale: bool,
    },
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Why the status cannot be trusted as the active scaler's current view, if it cannot.
fn staleness(grant: Option<&pb::LeaseGrant>, status: Option<&Value>, group: &str) -> Option<String> {
    let Some(grant) = grant else {
        return Some(format!(
            "no scaler of group '{group}' is active (nobody holds lease weft.scaler.{group})"
        ));
    };
    let Some(status) = status else {
        return Some(format!("scaler {} is active but has published no status yet", grant.holder));
    };
    let holder = status["holder"].as_str().unwrap_or("");
    let token = status["token"].as_u64().unwrap_or(0);
    if holder != grant.holder || token != grant.token {
        return Some(format!(
            "the status is from {holder} (token {token}), not from the active scaler {} (token {}): it has not published yet",
            grant.holder, grant.token
        ));
    }
    let updated = status["updated_at_ms"].as_u64().unwrap_or(0);
    if now_ms().saturating_sub(updated) > STALE_AFTER_MS {
        return Some(format!(
            "the status was published {} ago: the scaler may be stuck or cut off",
            age(updated)
        ));
    }
    None
}

fn count(agent: &Value, field: &str) -> u64 {
    agent[field].as_u64().unwrap_or(0)
}

fn print_table(status: &Value) {
    outln!(
        "{:<20} {:<12} {:>7} {:>7} {:>8} {:>8} {:>7}  STATE",
        "AGENT",
        "MODE",
        "DESIRED",
        "RUNNING",
        "STARTING",
        "STOPPING",
        "WAITING"
    );
    let empty = serde_json::Map::new();
    let agents = status["agents"].as_object().unwrap_or(&empty);
    for (name, a) in agents {
        let state = match a["crash_looping"].as_object() {
            Some(c) => format!(
                "crash-looping: {} ({} failures in a row; next try in {})",
                c.get("reason").and_then(Value::as_str).unwrap_or("?"),
                c.get("failures").and_then(Value::as_u64).unwrap_or(0),
                until(c.get("next_retry_at_ms").and_then(Value::as_u64).unwrap_or(0))
            ),
            None => match a["last_error"].as_str() {
                Some(e) => format!("ok (last error: {e})"),
                None => "ok".into(),
            },
        };
        outln!(
            "{:<20} {:<12} {:>7} {:>7} {:>8} {:>8} {:>7}  {}",
            name,
            a["mode"].as_str().unwrap_or("?"),
            count(a, "desired"),
            count(a, "running"),
            count(a, "starting"),
            count(a, "stopping"),
            count(a, "waiting"),
            state
        );
    }
    for (name, a) in agents {
        if let Some(tail) = a["crash_looping"]["output_tail"].as_str().filter(|t| !t.is_empty()) {
            let mut start = tail.len().saturating_sub(TAIL_SHOWN_BYTES);
            while !tail.is_char_boundary(start) {
                start += 1;
            }
            outln!("\nlast output of {name}:");
            for line in tail[start..].lines() {
                outln!("  {line}");
            }
        }
    }
}

/// `weft scaler ...`.
pub async fn run(args: Args) -> anyhow::Result<i32> {
    let json_out = args.conn.json;
    let channel = connect::channel(&args.conn.endpoint)?;
    match args.op {
        Op::Status { group, stale } => {
            let lease = format!("weft.scaler.{group}");
            let namespace = format!("shared/weft.scaler.{group}");
            let mut leases = LeasesClient::new(channel.clone());
            let grant = match leases
                .get(pb::GetLeaseRequest { name: lease, consistency: consistency(stale) })
                .await
            {
                Err(e) => return Ok(fail(e, json_out)),
                Ok(r) => r.into_inner().grant,
            };
            let mut state: StateClient<_> = connect::Limited::on(channel);
            let req = pb::GetRequest { namespace, key: "status".into(), consistency: consistency(stale) };
            let status: Option<Value> = match state.get(req).await {
                Err(e) => return Ok(fail(e, json_out)),
                Ok(r) => r.into_inner().entry.and_then(|kv| serde_json::from_slice(&kv.value).ok()),
            };
            let problem = staleness(grant.as_ref(), status.as_ref(), &group);
            if json_out {
                let lease = grant
                    .as_ref()
                    .map(|g| json!({"holder": g.holder, "token": g.token, "expires_at_ms": g.expires_at_ms}));
                outln!(
                    "{}",
                    json!({
                        "group": group,
                        "active": grant.is_some(),
                        "lease": lease,
                        "stale": problem.is_some(),
                        "problem": problem,
                        "status": status,
                    })
                );
            } else {
                match (&grant, &status) {
                    (Some(g), _) => outln!(
                        "scaler group '{group}': active scaler {} (token {}){}",
                        g.holder,
                        g.token,
                        status
                            .as_ref()
                            .and_then(|s| s["updated_at_ms"].as_u64())
                            .map(|t| format!(", status published {} ago", age(t)))
                            .unwrap_or_default()
                    ),
                    (None, _) => outln!("scaler group '{group}': no active scaler"),
                }
                if let Some(problem) = &problem {
                    eprintln!("warning: {problem}");
                }
                if let Some(status) = &status {
                    print_table(status);
                }
            }
            Ok(if problem.is_some() { 1 } else { 0 })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_names_what_is_wrong() {
        let grant =
            pb::LeaseGrant { name: "weft.scaler.g".into(), holder: "h1".into(), token: 4, expires_at_ms: 0 };
        assert!(staleness(None, None, "g").unwrap().contains("no scaler of group 'g' is active"));
        assert!(staleness(Some(&grant), None, "g").unwrap().contains("no status yet"));
        let old = json!({"holder": "h0", "token": 3, "updated_at_ms": now_ms()});
        assert!(staleness(Some(&grant), Some(&old), "g").unwrap().contains("not from the active scaler h1"));
        let late = json!({"holder": "h1", "token": 4, "updated_at_ms": now_ms() - 60_000});
        assert!(staleness(Some(&grant), Some(&late), "g").unwrap().contains("published 1m ago"));
        let fresh = json!({"holder": "h1", "token": 4, "updated_at_ms": now_ms()});
        assert_eq!(staleness(Some(&grant), Some(&fresh), "g"), None);
    }
}

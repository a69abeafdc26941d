//! `weft agents`: the live agent sessions (`Executions/ListSessions`): the node that holds
//! each, the agents and delegates it serves, its capacity, the work it holds and since when
//! it is connected.
//!
//! ```text
//!   weft agents                   every session
//!   weft agents resizer           the sessions that serve agent `resizer`
//!   weft agents --json            one JSON object: {"sessions": [...], "next_page_token": ...}
//! ```

use serde_json::json;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::executions_client::ExecutionsClient;

use crate::connect::{self, Conn, REQUEST_TIMEOUT, consistency};
use crate::render::{age, fail, outln};

/// Flags of `weft agents`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub conn: Conn,
    /// Only the sessions that serve this agent (default: every session).
    #[arg(value_name = "AGENT")]
    pub agent: Option<String>,
    /// Sessions per page (default: the server's page size).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Continue after this session id (printed at the end of the previous page).
    #[arg(long, value_name = "ID")]
    pub page_token: Option<u64>,
    /// Fetch every page.
    #[arg(long)]
    pub all: bool,
    /// Read the contacted node's replica without asking the leader (may lag).
    #[arg(long)]
    pub stale: bool,
}

/// `weft agents`.
pub async fn run(args: Args) -> anyhow::Result<i32> {
    let json_out = args.conn.json;
    let mut client: ExecutionsClient<_> = connect::client(&args.conn.endpoint, Some(REQUEST_TIMEOUT))?;
    let listed = connect::pages(args.page_token.unwrap_or(0), args.all, async |page_token| {
        let req = pb::ListSessionsRequest {
            agent: args.agent.clone().unwrap_or_default(),
            page_token,
            limit: args.limit.unwrap_or(0),
            consistency: consistency(args.stale),
        };
        let page = client.list_sessions(req).await?.into_inner();
        Ok((page.sessions, page.next_page_token))
    })
    .await;
    let (sessions, next) = match listed {
        Ok(listed) => listed,
        Err(e) => return Ok(fail(e, json_out)),
    };
    let next = (next != 0).then_some(next);
    if json_out {
        let items: Vec<_> = sessions.iter().map(session_json).collect();
        outln!("{}", json!({"sessions": items, "next_page_token": next}));
        return Ok(0);
    }
    if sessions.is_empty() {
        match &args.agent {
            Some(agent) => eprintln!("(no session serves agent '{agent}')"),
            None => eprintln!("(no agent sessions)"),
        }
    } else {
        print_sessions(&sessions);
    }
    if let Some(next) = next {
        eprintln!("more sessions follow: --page-token {next} (or --all)");
    }
    Ok(0)
}

/// `agent(delegate, ...)`, or `agent(*)` for one that serves every delegate.
fn served(a: &pb::AgentSpec) -> String {
    if a.delegates.is_empty() {
        format!("{}(*)", a.name)
    } else {
        format!("{}({})", a.name, a.delegates.join(","))
    }
}

fn session_json(s: &pb::SessionInfo) -> serde_json::Value {
    json!({
        "id": s.id,
        "name": s.name,
        "node_id": s.node_id,
        "agents": s.agents.iter().map(|a| json!({
            "name": a.name,
            "delegates": a.delegates,
            "all_delegates": a.delegates.is_empty(),
            "concurrent_instances": a.concurrent_instances,
        })).collect::<Vec<_>>(),
        "capacity": s.capacity,
        "in_flight": s.in_flight,
        "instances": s.instances,
        "opened_ms": s.opened_ms,
        "draining": s.draining,
        "lease_ms": s.lease_ms,
        "only_claimed": s.only_claimed,
        "claims": s.claims.iter().map(|c| format!("{}/{}", c.agent, c.instance)).collect::<Vec<_>>(),
    })
}

fn print_sessions(sessions: &[pb::SessionInfo]) {
    outln!(
        "{:>8} {:<24} {:>5} {:>8} {:>9} {:>9} {:>10}  SERVES",
        "SESSION",
        "NAME",
        "NODE",
        "CAPACITY",
        "IN-FLIGHT",
        "INSTANCES",
        "CONNECTED"
    );
    for s in sessions {
        let serves: Vec<String> = s.agents.iter().map(served).collect();
        let draining = if s.draining { " (draining)" } else { "" };
        outln!(
            "{:>8} {:<24} {:>5} {:>8} {:>9} {:>9} {:>10}  {}{draining}",
            s.id,
            if s.name.is_empty() { "-" } else { &s.name },
            s.node_id,
            s.capacity,
            s.in_flight,
            s.instances,
            age(s.opened_ms),
            serves.join(" ")
        );
    }
}

//! `weft demand`: the demand for agent processes, as a scaler sees it (through the SDK's
//! [`weft_agent::DemandWatch`]): per agent what waits, runs and is delayed, the instances no
//! session serves, listeners waiting on generators, and the sessions with their load.
//!
//! ```text
//!   weft demand                   one picture from the contacted node
//!   weft demand --watch           every picture the fabric pushes, moving to another node
//!                                 of the cluster when the contacted one stops; ctrl-c ends it
//! ```

use std::time::Duration;

use weft_agent::{AgentDemand, Client, Demand, Error};

use crate::INTERRUPTED_EXIT;
use crate::connect::{self, Conn, REQUEST_TIMEOUT};
use crate::render::{fail, outln};

/// How long a watch keeps trying other nodes when none serves it.
const RESUME_FOR: Duration = Duration::from_secs(60);
/// Most unserved instances listed per agent in text (`--json` has them all).
const MAX_UNSERVED_SHOWN: usize = 20;

/// Flags of `weft demand`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub conn: Conn,
    /// Only this agent (repeat for more, at most 1000); it is shown even with nothing.
    /// Default: every agent with any work, instance or session.
    #[arg(long = "agent", value_name = "AGENT")]
    pub agents: Vec<String>,
    /// Keep printing each new picture (and the repeat every 5 s while nothing changes);
    /// with --json, one JSON object per line.
    #[arg(long)]
    pub watch: bool,
}

/// A failed watch as a status, for [`fail`].
fn status_of(e: &Error) -> tonic::Status {
    match e {
        Error::Refused { code, message } => tonic::Status::new(*code, message.clone()),
        Error::Overloaded(m) => tonic::Status::resource_exhausted(m.clone()),
        Error::Unauthenticated(m) => tonic::Status::unauthenticated(m.clone()),
        Error::PermissionDenied(m) => tonic::Status::permission_denied(m.clone()),
        other => tonic::Status::unavailable(other.to_string()),
    }
}

/// `weft demand`.
pub async fn run(args: Args) -> anyhow::Result<i32> {
    let json_out = args.conn.json;
    let (endpoints, retry_for) = if args.watch {
        (connect::cluster_endpoints(&args.conn.endpoint).await, RESUME_FOR)
    } else {
        (connect::endpoints(&args.conn.endpoint)?, REQUEST_TIMEOUT)
    };
    let client = Client::builder(endpoints)
        .retry_for(retry_for)
        .tls(crate::connect::tls()?)
        .token(crate::connect::sdk_token()?)
        .build()?;
    let mut watch = client.watch_demand(&args.agents);
    let interrupt = crate::shutdown_signal();
    tokio::pin!(interrupt);
    loop {
        let picture = tokio::select! {
            biased;
            _ = interrupt.as_mut() => return Ok(INTERRUPTED_EXIT),
            picture = watch.next() => picture,
        };
        match picture {
            Ok(picture) => print(&picture, json_out, args.watch),
            Err(e) => return Ok(fail(status_of(&e), json_out)),
        }
        if !args.watch {
            return Ok(0);
        }
    }
}

fn print(picture: &Demand, json_out: bool, watching: bool) {
    if json_out {
        outln!("{}", serde_json::to_string(picture).unwrap_or_default());
        return;
    }
    if watching {
        outln!("-- node {}, applied index {}", picture.node_id, picture.applied_index);
    }
    if picture.agents.is_empty() {
        outln!("(no agent has work, instances or sessions)");
    } else {
        print_agents(&picture.agents);
        print_sessions(&picture.agents);
        print_unserved(&picture.agents);
    }
    if watching {
        outln!();
    }
}

/// Free slots of the sessions that take work.
fn free(a: &AgentDemand) -> u64 {
    a.sessions.iter().filter(|s| !s.draining).map(|s| u64::from(s.capacity.saturating_sub(s.assigned))).sum()
}

fn unserved(a: &AgentDemand) -> impl Iterator<Item = &weft_agent::InstanceDemand> {
    a.instances.iter().filter(|i| i.session.is_none())
}

/// One line per agent.
fn print_agents(agents: &[AgentDemand]) {
    outln!(
        "{:<20} {:>8} {:>8} {:>8} {:>9} {:>8} {:>13} {:>8} {:>5}",
        "AGENT",
        "PENDING",
        "RUNNING",
        "DELAYED",
        "INSTANCES",
        "UNSERVED",
        "GEN_LISTENERS",
        "SESSIONS",
        "FREE"
    );
    for a in agents {
        let more = |truncated: bool| if truncated { "+" } else { "" };
        outln!(
            "{:<20} {:>8} {:>8} {:>8} {:>9} {:>8} {:>13} {:>8} {:>5}",
            a.agent,
            a.pending,
            a.running,
            a.delayed,
            format!("{}{}", a.instances.len(), more(a.instances_truncated)),
            format!("{}{}", unserved(a).count(), more(a.instances_truncated)),
            a.generator_listeners,
            format!("{}{}", a.sessions.len(), more(a.sessions_truncated)),
            free(a)
        );
    }
}

/// The sessions of every agent, one line each.
fn print_sessions(agents: &[AgentDemand]) {
    if agents.iter().all(|a| a.sessions.is_empty()) {
        return;
    }
    outln!();
    outln!(
        "{:<20} {:>8} {:<24} {:>5} {:>9} {:<14} CLAIMED",
        "AGENT",
        "SESSION",
        "NAME",
        "NODE",
        "LOAD",
        "FLAGS"
    );
    for a in agents {
        for s in &a.sessions {
            let mut flags = Vec::new();
            if s.draining {
                flags.push("draining");
            }
            if s.only_claimed {
                flags.push("only-claimed");
            }
            let flags = if flags.is_empty() { "-".to_owned() } else { flags.join(",") };
            let claimed = if s.claimed.is_empty() { "-".to_owned() } else { s.claimed.join(",") };
            outln!(
                "{:<20} {:>8} {:<24} {:>5} {:>9} {:<14} {}",
                a.agent,
                s.id,
                s.name,
                s.node_id,
                format!("{}/{}", s.assigned, s.capacity),
                flags,
                claimed
            );
        }
    }
}

/// The instances no session serves (what a per-instance scaler starts processes for).
fn print_unserved(agents: &[AgentDemand]) {
    if agents.iter().all(|a| unserved(a).next().is_none()) {
        return;
    }
    outln!();
    outln!("{:<20} {:<24} {:<10} {:>10}", "AGENT", "UNSERVED INSTANCE", "LIFECYCLE", "UNFINISHED");
    for a in agents {
        for (shown, i) in unserved(a).enumerate() {
            if shown == MAX_UNSERVED_SHOWN {
                outln!("{:<20} ... {} more (--json lists them)", a.agent, unserved(a).count() - shown);
                break;
            }
            outln!("{:<20} {:<24} {:<10} {:>10}", a.agent, i.id, i.lifecycle, i.unfinished);
        }
    }
}

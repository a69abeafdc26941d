//! `weft executions list|get|wait|cancel`: executions (calls of agents' delegates) as a table,
//! in detail, followed until they finish, or cancelled.

use serde_json::json;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::executions_client::ExecutionsClient;

use crate::args::{DEFAULT_WAIT, parse_duration_ms};
use crate::connect::{self, REQUEST_TIMEOUT, consistency};
use crate::render::{age, execution_json, fail, non_empty, outcome, outln, payload_text, until};

/// Execution statuses `executions list --status` accepts.
const STATUSES: [&str; 5] = ["pending", "assigned", "completed", "failed", "cancelled"];

/// `weft executions` and its operations.
pub type Args = connect::Group<Op>;

/// Operations on executions (calls of agents' delegates). ID is an execution id.
#[derive(Debug, clap::Subcommand)]
pub enum Op {
    /// List executions, newest first.
    List {
        /// Only this agent's.
        #[arg(long)]
        agent: Option<String>,
        /// Only those with this status.
        #[arg(long, value_parser = STATUSES)]
        status: Option<String>,
        /// Only those created within this long before now: 30s, 10m, 2h, 7d.
        #[arg(long, value_name = "DUR", value_parser = parse_duration_ms)]
        since: Option<u64>,
        /// Oldest first instead.
        #[arg(long)]
        oldest_first: bool,
        /// Executions per page (default: the server's page size).
        #[arg(long, default_value_t = 0)]
        limit: u32,
        /// Continue from this execution id (printed at the end of the previous page).
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

/// Executions as a table, one line each.
fn print_executions(executions: &[pb::Execution]) {
    outln!(
        "{:>8} {:<16} {:<12} {:<16} {:<22} {:>8} {:>6}",
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
            "{:>8} {:<16} {:<12} {:<16} {:<22} {:>8} {:>6}",
            e.id,
            e.agent,
            non_empty(&e.instance).unwrap_or("-"),
            e.delegate,
            status_text(e),
            e.attempts,
            age(e.created_ms)
        );
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Its status, and for a pending execution delayed into the future, when it runs.
fn status_text(e: &pb::Execution) -> String {
    match e.not_before_ms {
        Some(at) if e.status == "pending" && until(at) != "0ms" => format!("pending, runs in {}", until(at)),
        _ => e.status.clone(),
    }
}

/// One execution in detail: a headline, then one line per field it has.
fn print_execution(e: &pb::Execution) {
    outln!("execution {}  {}/{}  {}  attempts {}", e.id, e.agent, e.delegate, status_text(e), e.attempts);
    let line = |name: &str, value: String| outln!("  {name:<16} {value}");
    if let Some(instance) = non_empty(&e.instance) {
        line("instance", instance.to_owned());
    }
    if let Some(p) = &e.payload {
        line("args", payload_text(p, false));
    }
    line("created_ms", format!("{} ({} ago)", e.created_ms, age(e.created_ms)));
    if let Some(at) = e.not_before_ms {
        let when = if until(at) == "0ms" { "due".to_owned() } else { format!("runs in {}", until(at)) };
        line("not_before_ms", format!("{at} ({when})"));
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
pub async fn run(args: Args) -> anyhow::Result<i32> {
    let json_out = args.conn.json;
    let endpoint = args.conn.endpoint;
    match args.op {
        Op::List { agent, status, since, oldest_first, limit, page_token, all, stale } => {
            let created_since_ms = since.map_or(0, |ago| now_ms().saturating_sub(ago).max(1));
            let mut client: ExecutionsClient<_> = connect::client(&endpoint, Some(REQUEST_TIMEOUT))?;
            let listed = connect::pages(page_token, all, async |page_token| {
                let req = pb::ListExecutionsRequest {
                    agent: agent.clone().unwrap_or_default(),
                    status: status.clone().unwrap_or_default(),
                    page_token,
                    limit,
                    consistency: consistency(stale),
                    created_since_ms,
                    newest_first: !oldest_first,
                };
                let page = client.list(req).await?.into_inner();
                Ok((page.executions, page.next_page_token))
            })
            .await;
            let (executions, page_token) = match listed {
                Ok(listed) => listed,
                Err(e) => return Ok(fail(e, json_out)),
            };
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
        Op::Get { id, stale } => {
            let mut client: ExecutionsClient<_> = connect::client(&endpoint, Some(REQUEST_TIMEOUT))?;
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
        Op::Wait { id, timeout } => {
            // The stream's headers come at once; only they are bound by the channel timeout.
            let mut client: ExecutionsClient<_> = connect::client(&endpoint, Some(REQUEST_TIMEOUT))?;
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
        Op::Cancel { id, reason } => {
            let mut client: ExecutionsClient<_> = connect::client(&endpoint, Some(REQUEST_TIMEOUT))?;
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

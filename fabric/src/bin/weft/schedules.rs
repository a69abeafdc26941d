//! `weft schedules create|list|get|pause|resume|trigger|delete`: cron schedules kept in the
//! grid that call an agent's delegate at each due time; get shows the next due times and the
//! latest runs with their executions' status.

use serde_json::json;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::schedules_client::SchedulesClient;

use crate::args::{json_payload, parse_duration_ms};
use crate::call::{RETRY_INITIAL_BACKOFF_MS, RETRY_MAX_BACKOFF_MS, RETRY_MULTIPLIER_PERCENT};
use crate::connect::{self, consistency};
use crate::render::{fail, outln, until};

/// `weft schedules` and its operations.
pub type Args = connect::Group<Op>;

/// Operations on schedules.
#[derive(Debug, clap::Subcommand)]
pub enum Op {
    /// Create a schedule that calls AGENT's DELEGATE with ARGS at each due time of `--cron`
    /// (the same settings again: exit status 0, it exists; other settings under the name:
    /// exit status 1).
    Create(Box<CreateArgs>),
    /// List schedules (those this caller may read), with their next due time.
    List {
        /// Only schedules calling this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Start after this name.
        #[arg(long, default_value = "")]
        after: String,
        /// Most schedules to list (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Read the contacted node's replica without asking the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Show a schedule: its settings, next due times and latest runs with their executions'
    /// status (exit status 1 when there is no such schedule).
    Get {
        /// The schedule's name.
        name: String,
        /// How many next due times to show (1 to 100).
        #[arg(long, default_value_t = 5)]
        upcoming: u32,
        /// Read the contacted node's replica without asking the leader.
        #[arg(long)]
        stale: bool,
    },
    /// No run until resumed.
    Pause {
        /// The schedule's name.
        name: String,
    },
    /// Due again from the next due time after now (what was due while paused does not run).
    Resume {
        /// The schedule's name.
        name: String,
    },
    /// Run it now, outside its due times (its overlap policy applies): prints the run.
    Trigger {
        /// The schedule's name.
        name: String,
    },
    /// Remove a schedule (runs already started go on); exit status 1 when there was none.
    Delete {
        /// The schedule's name.
        name: String,
    },
}

/// What `weft schedules create` takes.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The schedule's name (1-128 characters of [A-Za-z0-9._-]).
    name: String,
    /// The agent to call.
    agent: String,
    /// Its delegate (handler).
    delegate: String,
    /// The arguments as JSON (same as --args; default null); @FILE or - reads them.
    #[arg(value_name = "ARGS", conflicts_with = "args", allow_negative_numbers = true)]
    args_json: Option<String>,
    /// The arguments as JSON.
    #[arg(long, value_name = "JSON", allow_negative_numbers = true)]
    args: Option<String>,
    /// When it is due: a cron expression of five fields (minute hour day-of-month month
    /// day-of-week) or six (seconds first), e.g. '0 2 * * *' or '*/10 * * * * *'.
    #[arg(long, value_name = "EXPR")]
    cron: String,
    /// The IANA time zone the expression is read in (default UTC), e.g. Europe/Berlin.
    #[arg(long = "tz", value_name = "ZONE")]
    time_zone: Option<String>,
    /// The instance of the agent each run calls.
    #[arg(long, value_name = "ID")]
    instance: Option<String>,
    /// Fail a run that has not finished this long after its due time.
    #[arg(long, value_name = "DUR", value_parser = parse_duration_ms)]
    timeout: Option<u64>,
    /// Higher runs first; ties run oldest first.
    #[arg(long, value_name = "N", default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Run each up to N times in all while the handler fails retryably.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=weft_proto::wire::MAX_RETRY_ATTEMPTS as i64))]
    retries: Option<u32>,
    /// A due time while the previous run is unfinished: skip it, queue-one (start it when
    /// the previous run finishes), or allow it to run alongside.
    #[arg(long, value_name = "POLICY", default_value = "skip")]
    overlap: String,
    /// Due times missed while the cluster was down (reached over a minute late): skip
    /// them, or run once for all of them.
    #[arg(long, value_name = "POLICY", default_value = "skip")]
    catch_up: String,
    /// Create it paused.
    #[arg(long)]
    paused: bool,
}

/// A time in ms since the epoch as UTC, to the second (or the ms when it has them).
fn time_text(ms: u64) -> String {
    let Some(t) = chrono::DateTime::from_timestamp_millis(ms as i64) else { return format!("{ms} ms") };
    let format =
        if ms.is_multiple_of(1_000) { chrono::SecondsFormat::Secs } else { chrono::SecondsFormat::Millis };
    t.to_rfc3339_opts(format, true)
}

fn run_json(r: &pb::ScheduleRun) -> serde_json::Value {
    json!({
        "due_ms": r.due_ms,
        "fired_ms": r.fired_ms,
        "cause": r.cause,
        "outcome": r.outcome,
        "reason": r.reason,
        "execution_id": r.execution_id,
        "status": r.status,
    })
}

fn schedule_json(s: &pb::Schedule) -> serde_json::Value {
    let call = s.call.as_ref();
    json!({
        "name": s.name,
        "cron": s.cron,
        "time_zone": if s.time_zone.is_empty() { "UTC" } else { &s.time_zone },
        "agent": call.map(|c| c.agent.as_str()),
        "delegate": call.map(|c| c.delegate.as_str()),
        "instance": call.map(|c| c.instance.as_str()).filter(|i| !i.is_empty()),
        "overlap": s.overlap,
        "catch_up": s.catch_up,
        "paused": s.paused,
        "created_ms": s.created_ms,
        "next_due_ms": s.next_due_ms,
        "upcoming_ms": s.upcoming_ms,
        "started": s.started,
        "skipped": s.skipped,
        "queued_due_ms": s.queued_due_ms,
        "runs": s.runs.iter().map(run_json).collect::<Vec<_>>(),
    })
}

fn run_line(r: &pb::ScheduleRun) -> String {
    let mut line = format!("{}  {:<8} {}", time_text(r.due_ms), r.cause, r.outcome);
    if r.execution_id != 0 {
        line.push_str(&format!(": execution {} {}", r.execution_id, r.status));
        line.push_str(&format!("  (fired {} ms after its due time)", r.fired_ms.saturating_sub(r.due_ms)));
    }
    if !r.reason.is_empty() {
        line.push_str(&format!(": {}", r.reason));
    }
    line
}

/// The one-line summary of a schedule.
fn summary(s: &pb::Schedule) -> String {
    let call = s.call.as_ref();
    let target = match call {
        Some(c) if !c.instance.is_empty() => format!("{}/{} (instance {})", c.agent, c.delegate, c.instance),
        Some(c) => format!("{}/{}", c.agent, c.delegate),
        None => "?".into(),
    };
    let zone = if s.time_zone.is_empty() { "UTC" } else { &s.time_zone };
    let state = match (s.paused, s.next_due_ms) {
        (true, _) => "paused".to_owned(),
        (false, Some(next)) => format!("next {} (in {})", time_text(next), until(next)),
        (false, None) => "never due again".to_owned(),
    };
    format!("{}  '{}' {}  calls {}  {}", s.name, s.cron, zone, target, state)
}

fn print_schedule(s: &pb::Schedule, json_out: bool) {
    if json_out {
        outln!("{}", schedule_json(s));
        return;
    }
    outln!("{}", summary(s));
    outln!(
        "  overlap {}  catch-up {}  {} started, {} skipped{}",
        s.overlap,
        s.catch_up,
        s.started,
        s.skipped,
        s.queued_due_ms.map_or_else(String::new, |q| format!(", one queued (due {})", time_text(q)))
    );
    if !s.upcoming_ms.is_empty() {
        let next: Vec<String> = s.upcoming_ms.iter().map(|&t| time_text(t)).collect();
        outln!("  next: {}", next.join(", "));
    }
    for r in &s.runs {
        outln!("  {}", run_line(r));
    }
}

/// `weft schedules ...`.
pub async fn run(args: Args) -> anyhow::Result<i32> {
    let json_out = args.conn.json;
    let mut client: SchedulesClient<_> =
        connect::client(&args.conn.endpoint, Some(connect::REQUEST_TIMEOUT))?;
    let answer = match args.op {
        Op::Create(create) => {
            let CreateArgs {
                name,
                agent,
                delegate,
                args_json,
                args,
                cron,
                time_zone,
                instance,
                timeout,
                priority,
                retries,
                overlap,
                catch_up,
                paused,
            } = *create;
            let payload = match json_payload(args_json, args) {
                Ok(p) => p,
                Err(e) => return Ok(fail(e, json_out)),
            };
            let call = pb::CreateExecutionRequest {
                agent,
                instance: instance.unwrap_or_default(),
                delegate,
                payload: Some(payload),
                timeout_ms: timeout,
                priority,
                retry: retries.map(|max_attempts| pb::RetryPolicy {
                    max_attempts,
                    initial_backoff_ms: RETRY_INITIAL_BACKOFF_MS,
                    max_backoff_ms: RETRY_MAX_BACKOFF_MS,
                    multiplier_percent: RETRY_MULTIPLIER_PERCENT,
                }),
                ..Default::default()
            };
            let req = pb::CreateScheduleRequest {
                name,
                cron,
                time_zone: time_zone.unwrap_or_default(),
                call: Some(call),
                overlap: overlap.replace('-', "_"),
                catch_up: catch_up.replace('-', "_"),
                paused,
            };
            client.create(req).await.map(|r| {
                let r = r.into_inner();
                let Some(s) = r.schedule else { return 1 };
                if json_out {
                    let mut v = schedule_json(&s);
                    v["created"] = json!(r.created);
                    outln!("{v}");
                } else {
                    outln!("{} {}", if r.created { "created" } else { "exists:" }, summary(&s));
                }
                0
            })
        }
        Op::List { agent, after, limit, stale } => {
            let req = pb::ListSchedulesRequest {
                after,
                limit,
                consistency: consistency(stale),
                agent: agent.unwrap_or_default(),
            };
            client.list(req).await.map(|r| {
                let r = r.into_inner();
                if json_out {
                    let list: Vec<serde_json::Value> = r.schedules.iter().map(schedule_json).collect();
                    outln!("{}", json!({"schedules": list, "next": r.next}));
                } else {
                    for s in &r.schedules {
                        outln!("{}", summary(s));
                    }
                    if !r.next.is_empty() {
                        outln!("(more: --after {})", r.next);
                    }
                }
                0
            })
        }
        Op::Get { name, upcoming, stale } => {
            let req = pb::GetScheduleRequest { name, consistency: consistency(stale), upcoming };
            client.get(req).await.map(|r| {
                print_schedule(&r.into_inner(), json_out);
                0
            })
        }
        Op::Pause { name } => client.pause(pb::ScheduleRef { name }).await.map(|r| {
            print_schedule(&r.into_inner(), json_out);
            0
        }),
        Op::Resume { name } => client.resume(pb::ScheduleRef { name }).await.map(|r| {
            print_schedule(&r.into_inner(), json_out);
            0
        }),
        Op::Trigger { name } => client.trigger(pb::ScheduleRef { name }).await.map(|r| {
            let r = r.into_inner();
            if json_out {
                outln!("{}", run_json(&r));
            } else {
                outln!("{}", run_line(&r));
            }
            if r.outcome == "started" || r.outcome == "queued" { 0 } else { 1 }
        }),
        Op::Delete { name } => client.delete(pb::ScheduleRef { name: name.clone() }).await.map(|r| {
            let deleted = r.into_inner().deleted;
            if json_out {
                outln!("{}", json!({"name": name, "deleted": deleted}));
            } else if deleted {
                outln!("deleted {name}");
            } else {
                eprintln!("{name}: no such schedule");
            }
            if deleted { 0 } else { 1 }
        }),
    };
    Ok(answer.unwrap_or_else(|e| fail(e, json_out)))
}

//! `weft instances list|get|start|stop`: agent instances (long-lived, addressable agents
//! with their own state) as a table, in detail, started and stopped.

use serde_json::json;
use weft_fabric::grid::execution::STOP_DELEGATE;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::instances_client::InstancesClient;

use crate::args::{DEFAULT_WAIT, json_payload, parse_duration_ms};
use crate::connect::{self, REQUEST_TIMEOUT, consistency, waiting};
use crate::render::{age, execution_json, fail, insert_payload, outcome, outln, payload_text};

/// `weft instances` and its operations.
pub type Args = connect::Group<Op>;

/// Operations on agent instances: long-lived, addressable agents with their own state.
#[derive(Debug, clap::Subcommand)]
pub enum Op {
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

/// An instance as `--json` prints it.
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

/// Instances as a table, one line each.
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

/// One instance in detail: a headline, then one line per field it has.
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
pub async fn run(args: Args) -> anyhow::Result<i32> {
    let json_out = args.conn.json;
    let endpoint = args.conn.endpoint;
    match args.op {
        Op::List { agent, limit, page_token, all, stale } => {
            let page_token = match page_token.as_deref().map(instance_ref).transpose() {
                Ok(t) => t,
                Err(e) => return Ok(fail(e, json_out)),
            };
            let mut client: InstancesClient<_> = connect::client(&endpoint, Some(REQUEST_TIMEOUT))?;
            let listed = connect::pages(page_token, all, async |page_token| {
                let req = pb::ListInstancesRequest {
                    agent: agent.clone().unwrap_or_default(),
                    page_token,
                    limit,
                    consistency: consistency(stale),
                };
                let page = client.list(req).await?.into_inner();
                Ok((page.instances, page.next_page_token))
            })
            .await;
            let (instances, page_token) = match listed {
                Ok(listed) => listed,
                Err(e) => return Ok(fail(e, json_out)),
            };
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
        Op::Get { agent, id, stale } => {
            let mut client: InstancesClient<_> = connect::client(&endpoint, Some(REQUEST_TIMEOUT))?;
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
        Op::Start { agent, args_json, id, args, idempotency_key, timeout } => {
            let payload = match json_payload(args_json, args) {
                Ok(p) => p,
                Err(e) => return Ok(fail(e, json_out)),
            };
            let mut client: InstancesClient<_> = connect::client(&endpoint, waiting(timeout))?;
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
        Op::Stop { agent, id, timeout } => {
            let mut client: InstancesClient<_> = connect::client(&endpoint, waiting(timeout))?;
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

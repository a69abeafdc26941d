//! `weft call`: create an execution of an agent's delegate, wait for it, print its outcome.

use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::executions_client::ExecutionsClient;

use crate::args::{DEFAULT_WAIT, json_payload, parse_duration_ms};
use crate::connect::{self, Conn, waiting};
use crate::render::{fail, outcome};

/// Backoff of the retry policy `--retries` sets: first wait, longest wait, growth per retry.
pub const RETRY_INITIAL_BACKOFF_MS: u64 = 100;
pub const RETRY_MAX_BACKOFF_MS: u64 = 5_000;
pub const RETRY_MULTIPLIER_PERCENT: u32 = 200;

/// Flags of `weft call`.
///
/// The arguments are JSON, given as the third positional argument or with `--args` (not
/// `--json`: that global flag asks for JSON output). Without either the delegate gets `null`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub conn: Conn,
    /// The agent to call.
    pub agent: String,
    /// The delegate (handler) of the agent to run.
    pub delegate: String,
    /// The arguments as JSON, e.g. '"hi"' or '{"n": 1}' (same as --args); @FILE reads them
    /// from a file, - from stdin.
    #[arg(value_name = "ARGS", conflicts_with = "args", allow_negative_numbers = true)]
    pub args_json: Option<String>,
    /// The arguments as JSON (default: null). Quote for the shell: --args '{"n": 1}'; @FILE
    /// or - reads them from a file or stdin.
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
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=weft_proto::wire::MAX_RETRY_ATTEMPTS as i64))]
    pub retries: Option<u32>,
    /// When the agent's connected sessions do not serve DELEGATE, wait for one that does
    /// (a rolling deploy) instead of failing at once with the delegates they serve.
    #[arg(long)]
    pub wait_for_delegate: bool,
}

/// `weft call`.
pub async fn run(args: Args) -> anyhow::Result<i32> {
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
        wait_for_delegate: args.wait_for_delegate,
        ..Default::default()
    };
    let mut client: ExecutionsClient<_> = connect::client(&args.conn.endpoint, waiting(args.timeout))?;
    match client.call(pb::CallRequest { create: Some(create), timeout_ms: args.timeout }).await {
        Err(e) => Ok(fail(e, json_out)),
        Ok(r) => Ok(outcome(&r.into_inner(), json_out)),
    }
}

//! The `weft` binary: fabric node, development cluster and command-line client.
//!
//! `node` and `dev` run fabric nodes; `gossip-key` makes a gossip key; `status`, `members`, `state`, `call`, `executions`,
//! `agents`, `instances`, `streams`, `cursors`, `leases`, `scaler`, `demand` and `tokens` talk to any node of a
//! running cluster over gRPC. This file parses the command line, sets up tracing and turns the
//! command's result into the exit
//! status; the commands use only the `weft-fabric` library's public items.
//!
//! # Layout
//! - [`node_cmd`]: `weft node`: one fabric node from layered configuration.
//! - [`dev`]: `weft dev`: a local cluster of N nodes in one process.
//! - [`gossip_key`]: `weft gossip-key`: a fresh random key for authenticated gossip.
//! - [`certs`]: `weft certs ca|node|client`: development certificates for TLS.
//! - [`status`]: `weft status` (the cluster as Raft sees it) and `weft members` (as gossip does).
//! - [`state`]: `weft state get|put|cas|delete|list`: key/value state in the grid.
//! - [`call`]: `weft call`: run an agent's delegate and print its outcome.
//! - [`executions`]: `weft executions list|get|wait|cancel`.
//! - [`agents`]: `weft agents`: the live agent sessions, what each serves and holds.
//! - [`instances`]: `weft instances list|get|start|stop`.
//! - [`streams`]: `weft streams create|list|info|append|close|delete`.
//! - [`items`]: `weft streams get|read|tail`: stored items, and live ones (`tail --follow`).
//! - [`cursors`]: `weft cursors list|info|create|delete`.
//! - [`leases`]: `weft locks acquire|renew|release|get|list` (also `weft leases`): locks
//!   that holders wait for, with fencing tokens.
//! - [`schedules`]: `weft schedules create|list|get|pause|resume|trigger|delete`: cron
//!   schedules that call a delegate at each due time.
//! - [`scaler`]: `weft scaler status`: what the active scaler of a group reports.
//! - [`demand`]: `weft demand [--watch]`: the demand for agent processes, as a scaler sees it.
//! - [`tokens`]: `weft tokens create|list|revoke|generate`: bearer tokens for auth.
//! - [`connect`]: how a command reaches the cluster: `--endpoint`, TLS, the bearer token,
//!   clients, timeouts, limits.
//! - [`failover`]: the channel every client sends through: a request moves over the
//!   `--endpoint` list past nodes it cannot reach or that did not apply it.
//! - [`args`]: argument values several commands share: durations, JSON values inline, from a
//!   file or stdin, headers, `--all`.
//! - [`render`]: output: `outln!` for a closed stdout, failed calls, payloads, executions,
//!   stream items.

mod agents;
mod args;
mod call;
mod certs;
mod connect;
mod cursors;
mod demand;
mod dev;
mod executions;
mod failover;
mod gossip_key;
mod instances;
mod items;
mod leases;
mod node_cmd;
mod render;
mod scaler;
mod schedules;
mod state;
mod status;
mod streams;
mod tokens;

use std::io::IsTerminal as _;

use clap::{Parser, Subcommand};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};
use weft_fabric::log_limit::RepeatLimit;

/// Weft: a peer-to-peer clustered fabric for agent processes.
#[derive(Debug, Parser)]
#[command(name = "weft", version, propagate_version = true)]
struct Cli {
    /// How log lines (on stderr) are written: text, coloured only on a terminal, or one JSON
    /// object per line.
    #[arg(long, value_enum, env = "WEFT_LOG_FORMAT", default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(flatten)]
    tls: connect::TlsArgs,
    #[command(flatten)]
    auth: connect::AuthArgs,
    #[command(subcommand)]
    command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines; ANSI colours only when stderr is a terminal.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`, `spans`).
    Json,
}

/// Logs to stderr at `default_level` unless `RUST_LOG` says otherwise, in `format`, with
/// repeated warnings and errors rate-limited ([`RepeatLimit`]).
fn init_logging(format: LogFormat, default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = match format {
        LogFormat::Text => {
            layer.with_ansi(std::io::stderr().is_terminal()).with_filter(RepeatLimit::default()).boxed()
        }
        LogFormat::Json => layer.json().with_filter(RepeatLimit::default()).boxed(),
    };
    tracing_subscriber::registry().with(filter).with(layer).init();
}

/// The `weft` subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run a fabric node.
    Node(node_cmd::Args),
    /// Run a local development cluster in this one process: N nodes on localhost ports.
    Dev(dev::Args),
    /// Print a fresh random gossip key (32 bytes, base64) on stdout, its id on stderr.
    ///
    /// Every node of a cluster gets the same key file (gossip_key_file), one key per line:
    ///
    ///   weft gossip-key > gossip.keys && chmod 600 gossip.keys
    ///   weft node --gossip-key-file gossip.keys ...
    ///
    /// To rotate, add a new key second everywhere, then move it first, then remove the old
    /// one (docs/operations.md, "Gossip keys").
    #[command(verbatim_doc_comment)]
    GossipKey(gossip_key::Args),
    /// Make development TLS certificates: a CA, node certificates, client certificates.
    ///
    ///   weft certs ca
    ///   weft certs node n1 --host 10.0.0.1,n1.example
    ///   weft certs client alice
    ///   weft node --tls-ca-file certs/ca.pem --tls-cert-file certs/n1.pem --tls-key-file certs/n1.key ...
    ///   weft --tls-ca certs/ca.pem status
    #[command(verbatim_doc_comment)]
    Certs(certs::Args),
    /// Show the cluster: leader, term, and each member's role and progress.
    Status(status::StatusArgs),
    /// Show the gossip view of the contacted node: every node it knows and its state.
    Members(status::MembersArgs),
    /// Read and write key/value state in the grid.
    State(state::Args),
    /// Call an agent's delegate and wait: prints its result, or its error (exit status 1).
    ///
    /// The arguments are JSON, as the third positional argument or with --args (the global
    /// --json flag is for JSON output, not arguments); without either the delegate gets null:
    ///
    ///   weft call echo say '"hi"'
    ///   weft call echo say --args '{"n": 1}' --instance i1 --timeout 1m
    #[command(verbatim_doc_comment)]
    Call(call::Args),
    /// List, show, wait for and cancel executions (calls of agents' delegates).
    Executions(executions::Args),
    /// Show the connected agent sessions: node, the agents and delegates each serves,
    /// capacity, work in flight, connected since.
    ///
    ///   weft agents
    ///   weft agents resizer --json
    #[command(verbatim_doc_comment)]
    Agents(agents::Args),
    /// Start, stop, show and list agent instances.
    Instances(instances::Args),
    /// Create, append to, read, follow, close and delete streams.
    ///
    ///   weft streams create orders --max-age 7d
    ///   weft streams append orders '{"id": 1}' --key orders.eu
    ///   weft streams tail orders --follow
    #[command(verbatim_doc_comment)]
    Streams(streams::Args),
    /// List, show, create and delete the cursors of a stream.
    Cursors(cursors::Args),
    /// Named locks with fencing tokens (leases): take one, waiting in its queue; renew,
    /// release, show and list them (the active scaler holds one). Also `weft leases`.
    ///
    ///   weft locks acquire reports --holder job-7 --ttl 30s --wait 1m
    ///   weft locks get reports
    ///   weft locks list
    ///   weft locks release reports --token 42
    #[command(verbatim_doc_comment, alias = "leases")]
    Locks(leases::Args),
    /// Cron schedules that call an agent's delegate at each due time: create, list, show
    /// (next due times, latest runs), pause, resume, trigger now, delete.
    ///
    ///   weft schedules create nightly reports build '{"full": true}' --cron '0 2 * * *' --tz Europe/Berlin
    ///   weft schedules get nightly
    ///   weft schedules trigger nightly
    ///   weft schedules pause nightly
    #[command(verbatim_doc_comment)]
    Schedules(schedules::Args),
    /// Show what the active scaler of a group reports: per agent, desired and actual
    /// replicas and crash loops.
    ///
    ///   weft scaler status
    ///   weft scaler status --group edge --json
    #[command(verbatim_doc_comment)]
    Scaler(scaler::Args),
    /// Show the demand for agent processes, as a scaler sees it: per agent what waits, runs
    /// and is delayed, instances no session serves, and the sessions with their load.
    ///
    ///   weft demand
    ///   weft demand --agent resizer --watch
    #[command(verbatim_doc_comment)]
    Demand(demand::Args),
    /// Create, list and revoke the bearer tokens of a cluster with auth on (role admin), or
    /// generate the first admin token for --auth-bootstrap-token-file.
    ///
    ///   weft tokens generate > admin.token
    ///   weft --auth-token-file admin.token tokens create --name ci --role operator
    ///   weft tokens list
    ///   weft tokens revoke 3f9a0c2e71d4
    #[command(verbatim_doc_comment)]
    Tokens(tokens::Args),
}

impl Command {
    /// Whether the command runs nodes (and so wants info-level logs by default).
    fn runs_nodes(&self) -> bool {
        matches!(self, Command::Node(_) | Command::Dev(_))
    }

    /// Runs the command; the returned code is the process exit status.
    async fn run(self) -> anyhow::Result<i32> {
        match self {
            Command::Node(args) => node_cmd::run(args).await,
            Command::Dev(args) => dev::run(args).await,
            Command::GossipKey(args) => gossip_key::run(args),
            Command::Certs(args) => certs::run(args),
            Command::Status(args) => status::status(args).await,
            Command::Members(args) => status::members(args).await,
            Command::State(args) => state::run(args).await,
            Command::Call(args) => call::run(args).await,
            Command::Executions(args) => executions::run(args).await,
            Command::Agents(args) => agents::run(args).await,
            Command::Instances(args) => instances::run(args).await,
            Command::Streams(args) => streams::run(args).await,
            Command::Cursors(args) => cursors::run(args).await,
            Command::Locks(args) => leases::run(args).await,
            Command::Schedules(args) => schedules::run(args).await,
            Command::Scaler(args) => scaler::run(args).await,
            Command::Demand(args) => demand::run(args).await,
            Command::Tokens(args) => tokens::run(args).await,
        }
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    // openraft is chatty at info (and logs routine retries as errors): keep it to warnings.
    let default_level = if cli.command.runs_nodes() { "info,openraft=warn" } else { "warn" };
    init_logging(cli.log_format, default_level);
    connect::set_tls_args(cli.tls);
    connect::set_auth_args(cli.auth);
    let code = match cli.command.run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

/// The exit status after ctrl-c or SIGTERM ends a command that follows (`streams tail
/// --follow`, `demand --watch`), as a shell reports a process killed by SIGINT.
const INTERRUPTED_EXIT: i32 = 130;

/// Waits for ctrl-c or SIGTERM: how `weft node` and `weft dev` are told to stop.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// Every positional argument of every command says what it is in `--help`.
    #[test]
    fn every_positional_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments().filter(|a| a.is_positional()) {
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} <{}>", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "weft", &mut missing);
        assert!(missing.is_empty(), "positional arguments without help:\n{}", missing.join("\n"));
    }
}

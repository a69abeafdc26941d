//! `weft-jepsen`: run a fault-injection test against real `weft node` processes, clean up
//! leftovers, or re-check a recorded history. See docs/jepsen.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use weft_jepsen::checker::{self, Validity};
use weft_jepsen::client::{Reads, Workload};
use weft_jepsen::counter::{Effects, Target};
use weft_jepsen::db::Membership;
use weft_jepsen::nemesis::{Schedule, Spec};
use weft_jepsen::streams::Appends;
use weft_jepsen::{history, net, run};

/// Exit status when every checker found the history valid.
const EXIT_VALID: u8 = 0;
/// Exit status when a checker found an anomaly.
const EXIT_INVALID: u8 = 1;
/// Exit status when a checker could not decide.
const EXIT_UNKNOWN: u8 = 2;
/// Exit status when the run could not be carried out.
const EXIT_ERROR: u8 = 3;
/// Exit status after ctrl-c or SIGTERM (everything was cleaned up).
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Parser, Debug)]
#[command(
    name = "weft-jepsen",
    version,
    about = "Fault-injection tests for Weft: real nodes, real faults, checked histories"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Remove namespaces, links and rules that runs whose process is gone left behind.
    Cleanup {
        /// Also remove those of runs that are still going.
        #[arg(long)]
        all: bool,
    },
    /// Check a recorded history again (exit status as for a run).
    Check {
        /// The history.jsonl of a run.
        history: PathBuf,
        #[arg(long, value_enum, default_value = "register")]
        workload: Workload,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// What the clients do: register, set, executions or streams.
    #[arg(long, value_enum, default_value = "register")]
    workload: Workload,
    /// Faults, comma-separated (one chosen per window); join with '+' to combine:
    /// none, all, kill, pause, partition(-halves), partition-leader, partition-ring, partition-bridge,
    /// membership (with --membership gossip), kill-agent (with --workload executions).
    #[arg(long, default_value = "kill,partition-halves")]
    nemesis: String,
    /// Seconds of client operations and faults.
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// Number of weft nodes (each in its own network namespace).
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// How the nodes form their cluster: static (--initial-members) or gossip (--seeds,
    /// --bootstrap-expect; needed by the membership nemesis).
    #[arg(long, value_enum, default_value = "static")]
    membership: Membership,
    /// Target operations per second over all workers (default 50; executions: 100, which
    /// keeps the counter instance, which runs one increment at a time, always busy).
    #[arg(long)]
    rate: Option<f64>,
    /// Concurrent client workers (default: one per node); the streams workload's producers.
    #[arg(long)]
    workers: Option<usize>,
    /// linearizable (the promise) or stale (unsafe on purpose: the checker must catch it).
    #[arg(long, value_enum, default_value = "linearizable")]
    reads: Reads,
    /// Keys of the register workload.
    #[arg(long, default_value_t = 3)]
    keys: usize,
    /// Quiet seconds before each fault.
    #[arg(long, default_value_t = 5.0)]
    interval: f64,
    /// Seconds each fault lasts.
    #[arg(long, default_value_t = 8.0)]
    fault_duration: f64,
    /// Per-operation timeout in milliseconds (a write is indeterminate after it).
    #[arg(long, default_value_t = 3000)]
    op_timeout_ms: u64,
    /// Seed for every random choice (keys, values, targets).
    #[arg(long)]
    seed: Option<u64>,
    /// The weft binary (default: the one beside weft-jepsen, else the newer of
    /// target/release/weft and target/debug/weft).
    #[arg(long)]
    weft_bin: Option<PathBuf>,
    /// Where run folders go.
    #[arg(long, default_value = "target/jepsen")]
    store: PathBuf,
    /// Extra node setting, KEY=VALUE as a WEFT_* variable (repeatable), e.g. WEFT_REQUEST_TIMEOUT_MS=2000.
    #[arg(long = "node-env", value_name = "KEY=VALUE")]
    node_env: Vec<String>,
    /// Keep the nodes' data directories in the run folder.
    #[arg(long)]
    keep_data: bool,
    /// Run the nodes with TLS (a development CA and node certificate made for the run with
    /// `weft certs`, in the run folder) and mutual TLS between them; clients and agents
    /// connect over TLS.
    #[arg(long)]
    tls: bool,
    /// Run the nodes with auth on (an admin token made for the run with `weft tokens
    /// generate`, created by the leader); agents present an agent token that may serve the
    /// counter, and the workload's clients a client token that may call it and reach every
    /// namespace and stream. The tokens are kept in the run folder (auth/).
    #[arg(long)]
    auth: bool,
    /// Most linearizability search steps per key before the verdict is unknown.
    #[arg(long, default_value_t = 20_000_000)]
    max_search_steps: u64,
    /// Executions: agent processes serving the counter (each in its own namespace).
    #[arg(long, default_value_t = 2)]
    agents: usize,
    /// Executions: atomic (effects applied with the result: the promise) or direct (plain
    /// puts from the handler: unsafe on purpose, the checker must catch it).
    #[arg(long, value_enum, default_value = "atomic")]
    effects: Effects,
    /// Executions: what increments call: instance (`increment` on the counter instance, one
    /// at a time) or shared (`increment_shared`, a stateless call over the namespace
    /// shared/jepsen-counter: increments run concurrently, and the leader may run them as
    /// eager calls; the report shows the nodes' eager-call counters).
    #[arg(long, value_enum, default_value = "instance")]
    target: Target,
    /// Executions: how long each increment takes after its read, in milliseconds.
    #[arg(long, default_value_t = 0)]
    agent_work_ms: u64,
    /// Executions: the agents' lease per assignment in milliseconds (renewed while the
    /// handler runs; an agent that stops renewing loses it after this long).
    #[arg(long, default_value_t = 3000)]
    agent_lease_ms: u64,
    /// The weft-jepsen-agent binary (default: the one next to this binary).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// Streams: consumers listening on the stream's durable cursor (competing consumers).
    #[arg(long, default_value_t = 3)]
    consumers: usize,
    /// Streams: exactly-once (each append carries its producer id and sequence, the
    /// promise) or plain (no producer id: a retried append may be stored twice; unsafe on
    /// purpose, the checker must catch it).
    #[arg(long, value_enum, default_value = "exactly-once")]
    appends: Appends,
    /// Streams: the cursor's ack wait in milliseconds (an unacknowledged item is delivered
    /// again after it).
    #[arg(long, default_value_t = 2000)]
    ack_wait_ms: u64,
    /// Streams: each listener's credit, the items the fabric may send it before it acks
    /// some (the fabric's default window is 256).
    #[arg(long, default_value_t = 256)]
    credit: u32,
}

/// Operations per second when --rate is not given.
fn default_rate(workload: Workload) -> f64 {
    match workload {
        Workload::Executions => 100.0,
        _ => 50.0,
    }
}

async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn exit_for(v: Validity) -> ExitCode {
    ExitCode::from(match v {
        Validity::Valid => EXIT_VALID,
        Validity::Invalid => EXIT_INVALID,
        Validity::Unknown => EXIT_UNKNOWN,
    })
}

fn options(a: RunArgs) -> anyhow::Result<run::Options> {
    let nemesis: Spec = a.nemesis.parse()?;
    let node_env = a
        .node_env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow::anyhow!("--node-env {kv}: expected KEY=VALUE"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    });
    let secs = |s: f64, name: &str| {
        Duration::try_from_secs_f64(s)
            .map_err(|_| anyhow::anyhow!("--{name} must be a non-negative number of seconds"))
    };
    Ok(run::Options {
        workload: a.workload,
        nemesis,
        schedule: Schedule {
            interval: secs(a.interval, "interval")?,
            duration: secs(a.fault_duration, "fault-duration")?,
        },
        time: Duration::from_secs(a.time),
        nodes: a.nodes,
        membership: a.membership,
        rate: a.rate.unwrap_or_else(|| default_rate(a.workload)),
        workers: a.workers.unwrap_or(a.nodes),
        reads: a.reads,
        keys: a.keys,
        op_timeout: Duration::from_millis(a.op_timeout_ms),
        seed,
        weft_bin: a.weft_bin,
        store: a.store,
        node_env,
        keep_data: a.keep_data,
        checker: checker::register::Options { max_steps_per_key: a.max_search_steps, ..Default::default() },
        agents: a.agents,
        effects: a.effects,
        target: a.target,
        agent_work: Duration::from_millis(a.agent_work_ms),
        agent_lease: Duration::from_millis(a.agent_lease_ms),
        agent_bin: a.agent_bin,
        consumers: a.consumers,
        appends: a.appends,
        ack_wait: Duration::from_millis(a.ack_wait_ms),
        credit: a.credit,
        tls: a.tls,
        auth: a.auth,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Cleanup { all }) => match net::cleanup(all) {
            Ok(removed) => {
                for r in &removed {
                    println!("removed {r}");
                }
                println!("cleanup: removed {} item(s)", removed.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_ERROR)
            }
        },
        Some(Command::Check { history: path, workload }) => {
            let events = match history::read(&path) {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_ERROR);
                }
            };
            let verdict = match workload {
                Workload::Register => checker::register::check(&events, Default::default()),
                Workload::Set => checker::set::check(&events),
                Workload::Executions => checker::executions::check(&events),
                Workload::Streams => checker::streams::check(&events),
            };
            println!("{}: {} ({})", verdict.checker, verdict.validity, verdict.summary);
            println!("{}", serde_json::to_string_pretty(&verdict.details).unwrap_or_default());
            if let Some(failing) = &verdict.failing {
                println!("smallest failing sub-history ({} events):", failing.len());
                for e in failing {
                    println!("{}", serde_json::to_string(e).unwrap_or_default());
                }
            }
            exit_for(verdict.validity)
        }
        None => {
            let options = match options(cli.run) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_ERROR);
                }
            };
            let outcome = tokio::select! {
                biased;
                _ = shutdown_signal() => {
                    // Dropping the run removed its nodes, namespaces and links.
                    eprintln!("interrupted: the run's processes, namespaces and links were removed");
                    return ExitCode::from(EXIT_INTERRUPTED);
                }
                r = run::run(options) => r,
            };
            match outcome {
                Ok(o) => {
                    println!("{}", o.summary);
                    println!("report: {}", o.dir.display());
                    exit_for(o.validity)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_ERROR)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<run::Options, String> {
        let cli = Cli::try_parse_from(std::iter::once("weft-jepsen").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        options(cli.run).map_err(|e| e.to_string())
    }

    #[test]
    fn the_target_defaults_to_the_instance_and_takes_shared() {
        let o = parse(&["--workload", "executions"]).unwrap();
        assert_eq!(o.target, Target::Instance, "today's behaviour by default");
        assert!(o.validate().is_ok());
        let o = parse(&["--workload", "executions", "--target", "shared"]).unwrap();
        assert_eq!(o.target, Target::Shared);
        assert_eq!(o.rate, 100.0, "the executions rate");
        assert!(o.validate().is_ok());
        let o = parse(&[
            "--workload",
            "executions",
            "--target",
            "shared",
            "--effects",
            "direct",
            "--agent-work-ms",
            "300",
            "--nemesis",
            "kill-agent",
        ])
        .unwrap();
        assert_eq!((o.target, o.effects), (Target::Shared, Effects::Direct));
        assert!(o.validate().is_ok(), "the known-bad case is allowed");

        let e = parse(&["--workload", "executions", "--target", "everywhere"]).unwrap_err();
        assert!(e.contains("--target") && e.contains("instance") && e.contains("shared"), "{e}");
        let e = parse(&["--workload", "register", "--target", "shared"]).unwrap().validate().unwrap_err();
        assert!(e.to_string().contains("--target"), "{e}");
        assert!(
            parse(&["--workload", "register"]).unwrap().validate().is_ok(),
            "the default is fine anywhere"
        );
    }
}

//! The `weft` command line: `node` and `dev` run fabric nodes; `status`, `state`, `call`,
//! `executions` and `instances` talk to any node of a running cluster.
//!
//! # Layout
//! - [`node_cmd`]: `weft node`: one fabric node from layered configuration.
//! - [`dev`]: `weft dev`: a local cluster of N nodes in one process.
//! - [`client`]: `weft status`, `weft members` and `weft state ...` over gRPC; `weft call`,
//!   `weft executions ...` and `weft instances ...` for agents' executions and instances.

/// `println!` for the command line's output: when the reader has gone away (`weft executions
/// list | head`), the process ends quietly with status 141, as if killed by SIGPIPE, as other
/// Unix tools do, instead of panicking. Rust ignores SIGPIPE, so every write would fail.
macro_rules! outln {
    () => { $crate::cli::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` with [`outln!`]'s handling of a closed stdout.
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::write_stdout(format_args!($($arg)*)) };
}

pub mod client;
pub mod dev;
pub mod node_cmd;

/// The status of a process killed by SIGPIPE, for a shell: 128 + 13.
pub(crate) const BROKEN_PIPE_EXIT: i32 = 141;

/// Writes to stdout; see [`outln!`].
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(BROKEN_PIPE_EXIT);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

use clap::{Parser, Subcommand};

/// Weft: a peer-to-peer clustered fabric for agent processes.
#[derive(Debug, Parser)]
#[command(name = "weft", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The `weft` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a fabric node.
    Node(node_cmd::Args),
    /// Run a local development cluster in this one process: N nodes on localhost ports.
    Dev(dev::Args),
    /// Show the cluster: leader, term, and each member's role and progress.
    Status(client::StatusArgs),
    /// Show the gossip view of the contacted node: every node it knows and its state.
    Members(client::MembersArgs),
    /// Read and write key/value state in the grid.
    State(client::StateArgs),
    /// Call an agent's delegate and wait: prints its result, or its error (exit status 1).
    ///
    /// The arguments are JSON, as the third positional argument or with --args (the global
    /// --json flag is for JSON output, not arguments); without either the delegate gets null:
    ///
    ///   weft call echo say '"hi"'
    ///   weft call echo say --args '{"n": 1}' --instance i1 --timeout 1m
    #[command(verbatim_doc_comment)]
    Call(client::CallArgs),
    /// List, show, wait for and cancel executions (calls of agents' delegates).
    Executions(client::ExecutionsArgs),
    /// Start, stop, show and list agent instances.
    Instances(client::InstancesArgs),
}

impl Cli {
    /// Whether the command runs nodes (and so wants info-level logs by default).
    pub fn runs_nodes(&self) -> bool {
        matches!(self.command, Command::Node(_) | Command::Dev(_))
    }

    /// Runs the command; the returned code is the process exit status.
    pub async fn run(self) -> anyhow::Result<i32> {
        match self.command {
            Command::Node(args) => node_cmd::run(args).await,
            Command::Dev(args) => dev::run(args).await,
            Command::Status(args) => client::status(args).await,
            Command::Members(args) => client::members(args).await,
            Command::State(args) => client::state(args).await,
            Command::Call(args) => client::call(args).await,
            Command::Executions(args) => client::executions(args).await,
            Command::Instances(args) => client::instances(args).await,
        }
    }
}

/// Waits for ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
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

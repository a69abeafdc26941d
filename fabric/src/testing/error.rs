//! What starting, stopping or waiting for a node process can run into.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// A failure of the process harness. Each message names what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// There is no `weft` binary where [`weft_binary`](super::weft_binary) looks; nothing was
    /// started.
    #[error(
        "no weft binary at {} (build it: cargo build -p weft-fabric, with --release for a release build)",
        .path.display()
    )]
    NoBinary {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The path of the running executable is unknown, so the `weft` next to it cannot be found.
    #[error("cannot find the running executable: {0}")]
    CurrentExe(#[source] std::io::Error),
    /// The development CA or the nodes' certificates could not be made; nothing was started.
    #[error("cannot make the cluster's TLS certificates: {0}")]
    Certs(String),
    /// No free port could be taken on 127.0.0.1; nothing was started.
    #[error("cannot bind a free port on 127.0.0.1: {0}")]
    Port(#[source] std::io::Error),
    /// A directory could not be created; nothing was started.
    #[error("cannot create {}: {source}", .path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The log file could not be opened for appending; the process was not started.
    #[error("cannot open the log file {}: {source}", .path.display())]
    Log {
        /// The log file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The binary could not be started; no process runs.
    #[error("cannot start {}: {source}", .binary.display())]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A signal could not be sent to a process, or its state not read; it may still run.
    #[error("cannot {action} process {pid}: {source}")]
    Process {
        /// The process.
        pid: u32,
        /// What was tried: "send SIGTERM to", "check on", ...
        action: String,
        /// Why.
        source: std::io::Error,
    },
    /// The process is not running (never started, or killed or stopped already); nothing was
    /// done.
    #[error("the {} process logging to {} is not running", .binary.display(), .log.display())]
    NotRunning {
        /// Its binary.
        binary: PathBuf,
        /// Its log file.
        log: PathBuf,
    },
    /// A process exited on its own while the caller waited for something else; the other
    /// processes still run.
    #[error("{who} exited with {status} while waiting for {what}; the end of its log:\n{log_tail}")]
    Exited {
        /// The process: "node 2 (127.0.0.1:4000)".
        who: String,
        /// How it ended.
        status: ExitStatus,
        /// What the caller waited for.
        what: String,
        /// The last lines of its log.
        log_tail: String,
    },
    /// A bounded wait ran out. [`NodeProcess::stop`](super::NodeProcess::stop) has killed its
    /// process by then; the other waits leave every process running.
    #[error("{what}: not within {within:?}{details}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The bound.
        within: Duration,
        /// What was last seen (empty, or starting with a separator).
        details: String,
    },
}

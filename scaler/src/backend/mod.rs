//! Backends: where the scaler's agent processes run.
//!
//! A backend starts a replica from a [`Launch`], stops one (TERM, the drain grace, then KILL),
//! reports every exit on the channel it was built with, and finds the replicas that a scaler
//! (this one or a predecessor) started and that still run, so they can be adopted instead of
//! started again. Every replica carries its [`ReplicaId`] where the backend can read it back:
//! in the process's environment (`WEFT_SCALER_REPLICA`), in the container's labels.
//!
//! ```text
//!   controller ── start(Launch) ──► Backend::Process ── spawn, process group, output file
//!              ── stop(id, grace) ─►  Backend::Docker ── container from the image, labels,
//!              ── find() / adopt() ─►   the engine's API (bollard)
//!              ◄── Exited (mpsc, given at construction) ── every exit, asked for or not
//! ```
//!
//! # Layout
//! - `process`: [`process::Backend`], local processes (tokio, one process group each).
//! - `output`: the bounded output ring per replica and the rotated log file per agent.
//! - [`docker`]: [`docker::Backend`], containers on the machine's Docker engine.

pub mod docker;
pub mod output;
pub mod process;

use std::path::PathBuf;
use std::time::Duration;

/// A replica's id: unique per scaler cluster, made of the agent's name and a random suffix
/// (`echo-5f3a9c21`). It is also the session name the replica's worker opens with
/// (`WEFT_SESSION_NAME`), which is how the scaler finds its replicas' sessions.
pub type ReplicaId = String;

/// The environment variable that carries a process's replica id.
pub const REPLICA_ENV: &str = "WEFT_SCALER_REPLICA";
/// The environment variable that carries a replica's scaler group (so two groups on one
/// host never adopt each other's replicas).
pub const GROUP_ENV: &str = "WEFT_SCALER_GROUP";
/// The environment variable that carries the agent a replica was started for.
pub const AGENT_ENV: &str = "WEFT_SCALER_AGENT";
/// The environment variable of a per-instance replica's instance (the SDK's).
pub const INSTANCE_ENV: &str = "WEFT_INSTANCE";

/// Everything needed to start one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The replica's id.
    pub replica: ReplicaId,
    /// The agent it serves.
    pub agent: String,
    /// In per-instance mode, the instance it serves alone.
    pub instance: Option<String>,
    /// Environment for the process: the agent's configured environment plus `WEFT_ENDPOINT`,
    /// `WEFT_AGENT`, `WEFT_INSTANCE` (per-instance), `WEFT_SESSION_NAME`, `WEFT_CAPACITY`,
    /// `WEFT_DRAIN_TIMEOUT_MS`, `WEFT_SCALER_REPLICA`, `WEFT_SCALER_GROUP` and
    /// `WEFT_SCALER_AGENT`.
    pub env: Vec<(String, String)>,
    /// The program to run (process backend), or the command that replaces the image's
    /// (Docker backend).
    pub command: Option<String>,
    /// Its arguments.
    pub args: Vec<String>,
    /// The image to run (Docker backend).
    pub image: Option<String>,
    /// The file of the bearer token the replica presents (the agent's `token_file`, an
    /// absolute path): given as `WEFT_TOKEN_FILE` (process backend), or mounted read-only at
    /// [`CONTAINER_TOKEN_FILE`] (Docker backend). Replicas never inherit the scaler's token.
    pub token_file: Option<PathBuf>,
}

/// Where a container finds its token file (mounted read-only from the agent's `token_file`).
pub const CONTAINER_TOKEN_FILE: &str = "/run/weft/token";

/// How a replica ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exited {
    /// The replica.
    pub replica: ReplicaId,
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Whether the scaler asked it to stop (a stop, not a crash).
    pub stopped: bool,
    /// The last lines of its output (bounded).
    pub output_tail: String,
}

/// A replica found running, for adoption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The replica.
    pub replica: ReplicaId,
    /// The agent it serves.
    pub agent: String,
    /// The instance it serves alone, in per-instance mode.
    pub instance: Option<String>,
    /// The backend's handle for it: a process id, a container id.
    pub handle: String,
}

/// Longest tail of output kept per replica, in bytes.
pub const MAX_OUTPUT_TAIL_BYTES: usize = 64 * 1024;

/// How long a stop waits after KILL for the replica to be gone before it reports an error.
pub const KILL_WAIT: Duration = Duration::from_secs(5);

/// What a backend could not do. Nothing was started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The replica could not be started: the command does not exist or may not be run, the
    /// image is missing.
    #[error("cannot start {what}: {reason}")]
    Start {
        /// The command or image.
        what: String,
        /// Why, as the system said it.
        reason: String,
    },
    /// The backend does not know this replica (it exited, or was never started or adopted).
    #[error("replica {0} is not running here")]
    Unknown(ReplicaId),
    /// A found replica's handle no longer names it (the process is gone, its pid reused).
    #[error("replica {replica}: {handle} is gone")]
    Gone {
        /// The replica.
        replica: ReplicaId,
        /// The handle recorded for it.
        handle: String,
    },
    /// The backend cannot work at all (the Docker engine is unreachable, `/proc` cannot be
    /// read).
    #[error("the {backend} backend is unavailable: {reason}")]
    Unavailable {
        /// `process` or `docker`.
        backend: &'static str,
        /// Why.
        reason: String,
    },
    /// Signalling a replica failed.
    #[error("cannot signal replica {replica}: {source}")]
    Signal {
        /// The replica.
        replica: ReplicaId,
        /// What the system said.
        source: std::io::Error,
    },
}

/// A backend: local processes or Docker containers, with the same methods.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Local processes.
    Process(process::Backend),
    /// Containers on a Docker engine.
    Docker(docker::Backend),
    /// A scripted backend for the controller's unit tests.
    #[cfg(test)]
    Fake(fake::Backend),
}

impl Backend {
    /// Starts a replica; its handle (see [`Found::handle`]).
    pub async fn start(&self, launch: &Launch) -> Result<String, Error> {
        match self {
            Backend::Process(b) => b.start(launch).await,
            Backend::Docker(b) => Ok(b.start_launch(launch).await?),
            #[cfg(test)]
            Backend::Fake(b) => b.start(launch),
        }
    }

    /// Asks a replica to stop: TERM now, KILL after `grace` if it still runs. Returns at
    /// once; its exit is reported on the exits channel.
    pub async fn stop(&self, replica: &str, grace: Duration) -> Result<(), Error> {
        match self {
            Backend::Process(b) => b.stop(replica, grace),
            Backend::Docker(b) => Ok(b.stop(replica, grace)?),
            #[cfg(test)]
            Backend::Fake(b) => b.stop(replica, grace),
        }
    }

    /// The replicas of this backend's group that still run (started by any scaler).
    pub async fn find(&self) -> Result<Vec<Found>, Error> {
        match self {
            Backend::Process(b) => b.find().await,
            Backend::Docker(b) => Ok(b.find().await?),
            #[cfg(test)]
            Backend::Fake(b) => b.find(),
        }
    }

    /// Takes charge of a replica found running (watches for its exit, can stop it).
    pub async fn adopt(&self, found: &Found) -> Result<(), Error> {
        match self {
            Backend::Process(b) => b.adopt(found),
            Backend::Docker(b) => Ok(b.adopt(found).await?),
            #[cfg(test)]
            Backend::Fake(b) => b.adopt(found),
        }
    }

    /// The last output of a replica this backend runs (at most [`MAX_OUTPUT_TAIL_BYTES`]).
    pub fn output_tail(&self, replica: &str) -> Option<String> {
        match self {
            Backend::Process(b) => b.output_tail(replica),
            // The engine keeps a container's output; its tail comes with the exit report.
            Backend::Docker(_) => None,
            #[cfg(test)]
            Backend::Fake(_) => None,
        }
    }
}

impl From<docker::Error> for Error {
    fn from(e: docker::Error) -> Self {
        match e {
            docker::Error::ImageMissing { ref image, .. } => {
                Error::Start { what: image.clone(), reason: e.to_string() }
            }
            docker::Error::Unreachable { .. } => {
                Error::Unavailable { backend: "docker", reason: e.to_string() }
            }
            docker::Error::Unknown(replica) => Error::Unknown(replica),
            docker::Error::Gone { replica, handle } => Error::Gone { replica, handle },
            docker::Error::Exists { ref name, .. } => {
                Error::Start { what: name.clone(), reason: e.to_string() }
            }
            docker::Error::Refused { .. } | docker::Error::Invalid { .. } => {
                Error::Start { what: "a container".into(), reason: e.to_string() }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod fake;

//! The scaler's configuration: a TOML file with the scaler's own settings at the top and one
//! `[agents.NAME]` table per agent it scales. Every field has a default except what to run
//! (`command` or `image`) and `max_replicas`; [`Config::validate`] checks everything and
//! names the agent, the field and the reason, and the scaler refuses to start on an invalid
//! file (a reload of an invalid file is refused and the old configuration kept; see
//! [`crate::reload`]).
//!
//! ```toml
//! endpoints = ["127.0.0.1:7400"]
//! group = "default"
//!
//! [agents.work]
//! command = "target/release/scaled"
//! max_replicas = 4
//! backlog_per_replica = 8
//!
//! [agents.room]
//! command = "target/release/room"
//! mode = "per-instance"
//! max_replicas = 100
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::{AGENT_ENV, GROUP_ENV, REPLICA_ENV};

/// Most agents one scaler scales (the demand watch takes at most this many names).
pub const MAX_AGENTS: usize = 1000;
/// Most replicas one agent may be given.
pub const MAX_REPLICAS_PER_AGENT: u32 = 1000;
/// Most executions one replica may be told to run at once (`capacity`).
pub const MAX_CAPACITY: u32 = 10_000;
/// Longest group name, in bytes.
pub const MAX_GROUP_BYTES: usize = 64;
/// Most environment variables one agent's processes may be given.
pub const MAX_ENV_VARS: usize = 256;
/// Longest configuration file read, in bytes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Longest time any `*_ms` duration may be set to (one day).
pub const MAX_DURATION_MS: u64 = 86_400_000;

/// Room a worker needs after its drain timeout, in milliseconds: the SDK's worker waits up to
/// 2 s for the fabric to acknowledge its last completions before it exits.
pub const WORKER_FINAL_ACK_MS: u64 = 2500;

/// Variables the scaler sets for every replica; an agent's `env` may not set them.
pub const RESERVED_ENV: [&str; 7] =
    ["WEFT_SESSION_NAME", "WEFT_AGENT", "WEFT_INSTANCE", "WEFT_CAPACITY", REPLICA_ENV, GROUP_ENV, AGENT_ENV];

/// The SDK's token variables: replicas get `WEFT_TOKEN_FILE` from `token_file` only, and never
/// inherit the scaler's own token.
pub const TOKEN_ENV: [&str; 2] = [weft_agent::token::env::TOKEN, weft_agent::token::env::TOKEN_FILE];

/// What can be wrong with a configuration. Nothing was applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read the configuration {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration (the message names the key).
    #[error("the configuration {path} is not valid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said, with the line and the key.
        message: String,
    },
    /// A field has a value the scaler cannot work with.
    #[error("{}field '{field}': {reason}", agent.as_ref().map(|a| format!("agent '{a}': ")).unwrap_or_default())]
    Invalid {
        /// The agent whose table holds the field; `None` for a top-level field.
        agent: Option<String>,
        /// The field.
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
}

/// Where an agent's processes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// Local processes, started from `command` and `args`.
    #[default]
    Process,
    /// Containers on the machine's Docker engine, started from `image`.
    Docker,
}

impl BackendKind {
    /// Its name in the configuration and in intents: `process`, `docker`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Process => "process",
            BackendKind::Docker => "docker",
        }
    }
}

/// How an agent's replicas relate to its instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Interchangeable replicas that serve any instance and any call; their number follows
    /// the backlog.
    #[default]
    Pool,
    /// One replica per live instance that no session serves, given its agent and instance
    /// (`WEFT_AGENT`, `WEFT_INSTANCE`); it serves that instance alone and is stopped when the
    /// instance is.
    PerInstance,
}

impl Mode {
    /// Its name in the configuration: `pool`, `per-instance`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Pool => "pool",
            Mode::PerInstance => "per-instance",
        }
    }
}

/// The scaler's configuration (the whole file).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The fabric's nodes, `HOST:PORT` (any of them; the scaler fails over between them).
    /// `--endpoints` and `WEFT_ENDPOINT` take precedence. Also what replicas are given as
    /// `WEFT_ENDPOINT` unless their `env` says otherwise.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The scaler group: scalers of one group share one lease (one of them is active) and
    /// one set of replicas; two groups never adopt each other's replicas, also on one host.
    /// 1-64 characters of `[A-Za-z0-9._-]`. Default `default`.
    #[serde(default = "default_group")]
    pub group: String,
    /// How long the active scaler's lease lasts unless renewed (renewed every third of it).
    /// A standby takes over at most this long after the active scaler died. 500 ms to 10 min;
    /// default 10 000.
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// Leave the replicas running when the scaler stops (a successor adopts them). Default
    /// false: a scaler that stops stops its replicas (TERM, drain grace, KILL). A scaler
    /// killed with SIGKILL leaves them running either way.
    #[serde(default)]
    pub leave_running_on_exit: bool,
    /// Where `/metrics` (Prometheus text) is served, `IP:PORT`; `--metrics-addr` takes
    /// precedence. Default: not served.
    #[serde(default)]
    pub metrics_addr: Option<String>,
    /// A directory for the process backend's output logs, one file per agent
    /// (`AGENT.log`, each line prefixed with the replica; rotated once to `AGENT.log.1` at
    /// `max_log_bytes`). Default: output is kept only in memory (the last 64 KiB per
    /// replica, shown in crash reports).
    #[serde(default)]
    pub log_dir: Option<PathBuf>,
    /// Where the process backend keeps each replica's output file (`REPLICA.out`, read into
    /// memory and truncated as it grows). Scalers of one group on one host must share it, so a
    /// successor reads what the replicas it adopts write. Default: `weft-scaler-GROUP` in the
    /// system's temporary directory.
    #[serde(default)]
    pub run_dir: Option<PathBuf>,
    /// Size at which an agent's log file is rotated, in bytes (at least 4096). Default
    /// 10 MiB.
    #[serde(default = "default_max_log_bytes")]
    pub max_log_bytes: u64,
    /// The Docker backend (`[docker]`): the engine's address, the network its containers
    /// join, whether they get an init. Used by agents with `backend = "docker"`.
    #[serde(default)]
    pub docker: crate::backend::docker::Settings,
    /// The agents to scale, by agent name.
    #[serde(default)]
    pub agents: BTreeMap<String, AgentConfig>,
}

/// How one agent is scaled (`[agents.NAME]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Where its processes run: `process` (default) or `docker`.
    #[serde(default)]
    pub backend: BackendKind,
    /// The program to run (process backend; required there): a path, or a name looked up
    /// in `PATH`. For `docker`: an optional command that replaces the image's.
    #[serde(default)]
    pub command: Option<String>,
    /// Arguments to `command`.
    #[serde(default)]
    pub args: Vec<String>,
    /// The image to run (docker backend; required there).
    #[serde(default)]
    pub image: Option<String>,
    /// Environment for its processes, on top of the scaler's own (process backend) and of
    /// what the scaler sets: `WEFT_ENDPOINT`, `WEFT_SESSION_NAME`, `WEFT_CAPACITY`,
    /// `WEFT_DRAIN_TIMEOUT_MS`, per-instance `WEFT_AGENT` and `WEFT_INSTANCE`,
    /// `WEFT_SCALER_REPLICA`, `WEFT_SCALER_GROUP`. Only `WEFT_ENDPOINT` and
    /// `WEFT_DRAIN_TIMEOUT_MS` of those may be overridden here.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A file holding the bearer token its processes present to nodes with auth on (an
    /// `agent` token whose serve list names this agent). Each process is given the file, not
    /// the secret: `WEFT_TOKEN_FILE` with its absolute path (process backend), or the file
    /// mounted read-only at [`crate::backend::CONTAINER_TOKEN_FILE`] (Docker backend; the
    /// path is then one on the engine's host). A file that cannot be read or holds no token
    /// is refused when the configuration is loaded. Default: none, and the processes do not
    /// inherit the scaler's own token either.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// `pool` (default): interchangeable replicas, as many as the backlog needs.
    /// `per-instance`: one replica per live instance that no session serves.
    #[serde(default)]
    pub mode: Mode,
    /// Fewest replicas kept running whatever the demand (pool). Default 0: scaled to zero
    /// when idle. Must be 0 in per-instance mode.
    #[serde(default)]
    pub min_replicas: u32,
    /// Most replicas at once, counting those starting, running, stopping and adopted; never
    /// exceeded, also across a scaler failover. 1 to 1000; required.
    pub max_replicas: u32,
    /// Backlog (pending plus running executions, plus listeners waiting on its generator
    /// streams) per replica: each full or started multiple adds one (pool). Usually the
    /// `capacity`; lower scales up before replicas are full. At least 1; default 16.
    #[serde(default = "default_capacity")]
    pub backlog_per_replica: u32,
    /// Most executions each replica runs at once (`WEFT_CAPACITY`). 1 to 10 000; default 16.
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    /// Start the first replica on the first pending execution or instance start (default
    /// true). False: from zero replicas, a replica starts only once the backlog reaches
    /// `backlog_per_replica`.
    #[serde(default = "yes")]
    pub scale_from_zero: bool,
    /// How long the demand must stay below what the replicas serve before they are scaled
    /// down (pool); then down to the most that was needed meanwhile, idle replicas
    /// (holding no execution) stopped first. Default 300 000 (5 min).
    #[serde(default = "default_idle_ms")]
    pub idle_ms: u64,
    /// Most replica starts (new ones and restarts) per `start_interval_ms`: how fast the
    /// agent scales up. At least 1; default 10.
    #[serde(default = "default_max_starts")]
    pub max_starts_per_interval: u32,
    /// The window of `max_starts_per_interval`, in ms. Default 1000.
    #[serde(default = "default_start_interval_ms")]
    pub start_interval_ms: u64,
    /// A replica that has not opened its session (named after it) by this long after its
    /// start is a failed start: it is stopped and restarted with back-off. At least 100;
    /// default 30 000.
    #[serde(default = "default_start_timeout_ms")]
    pub start_timeout_ms: u64,
    /// How long a stopping replica may drain (it takes no new work and finishes what runs)
    /// between TERM and KILL. Its worker is told a drain timeout a little shorter
    /// (`WEFT_DRAIN_TIMEOUT_MS`). Default 15 000.
    #[serde(default = "default_drain_grace_ms")]
    pub drain_grace_ms: u64,
    /// First delay before a crashed replica (or a failed start) is started again; doubles
    /// with each failure in a row. At least 1; default 10 000.
    #[serde(default = "default_restart_initial_ms")]
    pub restart_initial_ms: u64,
    /// Longest delay between restarts. At least `restart_initial_ms`; default 300 000.
    #[serde(default = "default_restart_cap_ms")]
    pub restart_cap_ms: u64,
    /// A replica that ran this long forgets the failures before it: its next crash waits
    /// `restart_initial_ms` again. At least 1; default 600 000.
    #[serde(default = "default_restart_reset_after_ms")]
    pub restart_reset_after_ms: u64,
    /// Failures in a row (crashes, failed starts) after which the agent is reported
    /// crash-looping (with the exit and the tail of the output); restarts go on at the
    /// back-off's pace. At least 1; default 3.
    #[serde(default = "default_crash_loop_threshold")]
    pub crash_loop_threshold: u32,
}

fn default_group() -> String {
    "default".into()
}
fn default_lease_ttl_ms() -> u64 {
    10_000
}
fn default_max_log_bytes() -> u64 {
    10 << 20
}
fn default_capacity() -> u32 {
    16
}
fn yes() -> bool {
    true
}
fn default_idle_ms() -> u64 {
    300_000
}
fn default_max_starts() -> u32 {
    10
}
fn default_start_interval_ms() -> u64 {
    1000
}
fn default_start_timeout_ms() -> u64 {
    30_000
}
fn default_drain_grace_ms() -> u64 {
    15_000
}
fn default_restart_initial_ms() -> u64 {
    10_000
}
fn default_restart_cap_ms() -> u64 {
    300_000
}
fn default_restart_reset_after_ms() -> u64 {
    600_000
}
fn default_crash_loop_threshold() -> u32 {
    3
}

/// Whether `name` is 1-`max` characters of `[A-Za-z0-9._-]` (the fabric's rule for names).
pub fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let read = |source| Error::Read { path: path.to_owned(), source };
        let len = std::fs::metadata(path).map_err(read)?.len();
        if len > MAX_CONFIG_BYTES {
            return Err(read(std::io::Error::other(format!(
                "{len} bytes; a configuration may have at most {MAX_CONFIG_BYTES}"
            ))));
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let config = Self::parse(&text).map_err(|e| match e {
            Error::Parse { message, .. } => Error::Parse { path: path.to_owned(), message },
            other => other,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text (without validating it).
    pub fn parse(text: &str) -> Result<Self, Error> {
        toml::from_str(text).map_err(|e| Error::Parse { path: PathBuf::new(), message: e.to_string() })
    }

    /// The lease's ttl.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }

    /// The run directory: `run_dir`, or `weft-scaler-GROUP` in the temporary directory.
    pub fn run_dir(&self) -> PathBuf {
        self.run_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(format!("weft-scaler-{}", self.group)))
    }

    /// The metrics address, parsed (validated before).
    pub fn metrics_socket(&self) -> Option<SocketAddr> {
        self.metrics_addr.as_deref().and_then(|a| a.parse().ok())
    }

    /// Checks every field; the first problem names the agent, the field and the reason.
    pub fn validate(&self) -> Result<(), Error> {
        let top = |field, reason: String| Err(Error::Invalid { agent: None, field, reason });
        if !valid_name(&self.group, MAX_GROUP_BYTES) {
            return top(
                "group",
                format!("'{}': expected 1-{MAX_GROUP_BYTES} characters of [A-Za-z0-9._-]", self.group),
            );
        }
        if !(500..=600_000).contains(&self.lease_ttl_ms) {
            return top("lease_ttl_ms", format!("{} is outside 500..=600000", self.lease_ttl_ms));
        }
        for e in &self.endpoints {
            if e.trim().is_empty() || e.contains(char::is_whitespace) {
                return top("endpoints", format!("'{e}' is not HOST:PORT"));
            }
        }
        if let Some(addr) = &self.metrics_addr
            && addr.parse::<SocketAddr>().is_err()
        {
            return top("metrics_addr", format!("'{addr}' is not IP:PORT"));
        }
        if self.max_log_bytes < 4096 {
            return top("max_log_bytes", format!("{} is below 4096", self.max_log_bytes));
        }
        if self.agents.len() > MAX_AGENTS {
            return top("agents", format!("{} agents; at most {MAX_AGENTS}", self.agents.len()));
        }
        for (name, agent) in &self.agents {
            agent.validate(name)?;
        }
        if self.agents.values().any(|a| a.backend == BackendKind::Docker) {
            self.docker_options().validate().map_err(|e| match e {
                crate::backend::docker::Error::Invalid { field, reason } => Error::Invalid {
                    agent: None,
                    field: match field {
                        "host" => "docker.host",
                        "network" => "docker.network",
                        other => other,
                    },
                    reason,
                },
                other => Error::Invalid { agent: None, field: "docker", reason: other.to_string() },
            })?;
        }
        Ok(())
    }

    /// The Docker backend's options: `[docker]` and the group.
    pub fn docker_options(&self) -> crate::backend::docker::Options {
        crate::backend::docker::Options { group: self.group.clone(), settings: self.docker.clone() }
    }
}

impl AgentConfig {
    /// A process-backend agent running `command` with defaults, for tests and examples.
    pub fn process(command: &str, max_replicas: u32) -> Self {
        Self {
            backend: BackendKind::Process,
            command: Some(command.into()),
            args: Vec::new(),
            image: None,
            env: BTreeMap::new(),
            token_file: None,
            mode: Mode::Pool,
            min_replicas: 0,
            max_replicas,
            backlog_per_replica: default_capacity(),
            capacity: default_capacity(),
            scale_from_zero: true,
            idle_ms: default_idle_ms(),
            max_starts_per_interval: default_max_starts(),
            start_interval_ms: default_start_interval_ms(),
            start_timeout_ms: default_start_timeout_ms(),
            drain_grace_ms: default_drain_grace_ms(),
            restart_initial_ms: default_restart_initial_ms(),
            restart_cap_ms: default_restart_cap_ms(),
            restart_reset_after_ms: default_restart_reset_after_ms(),
            crash_loop_threshold: default_crash_loop_threshold(),
        }
    }

    /// Checks the agent's table; errors name `agent`.
    pub fn validate(&self, agent: &str) -> Result<(), Error> {
        let bad =
            |field, reason: String| Err(Error::Invalid { agent: Some(agent.to_owned()), field, reason });
        if !valid_name(agent, 128) {
            return bad("name", "expected 1-128 characters of [A-Za-z0-9._-]".into());
        }
        match self.backend {
            BackendKind::Process => {
                if self.command.as_deref().is_none_or(|c| c.trim().is_empty()) {
                    return bad("command", "the process backend needs a command to run".into());
                }
                if self.image.is_some() {
                    return bad(
                        "image",
                        "only the docker backend runs images; set backend = \"docker\"".into(),
                    );
                }
            }
            BackendKind::Docker => {
                if self.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
                    return bad("image", "the docker backend needs an image to run".into());
                }
            }
        }
        if self.max_replicas == 0 || self.max_replicas > MAX_REPLICAS_PER_AGENT {
            return bad(
                "max_replicas",
                format!("{} is outside 1..={MAX_REPLICAS_PER_AGENT}", self.max_replicas),
            );
        }
        if self.min_replicas > self.max_replicas {
            return bad(
                "min_replicas",
                format!("{} is above max_replicas ({})", self.min_replicas, self.max_replicas),
            );
        }
        if self.mode == Mode::PerInstance && self.min_replicas != 0 {
            return bad("min_replicas", "must be 0 in per-instance mode: replicas follow instances".into());
        }
        if self.backlog_per_replica == 0 {
            return bad("backlog_per_replica", "must be at least 1".into());
        }
        if self.capacity == 0 || self.capacity > MAX_CAPACITY {
            return bad("capacity", format!("{} is outside 1..={MAX_CAPACITY}", self.capacity));
        }
        if self.max_starts_per_interval == 0 {
            return bad("max_starts_per_interval", "must be at least 1".into());
        }
        let durations = [
            ("idle_ms", self.idle_ms, 0),
            ("start_interval_ms", self.start_interval_ms, 1),
            ("start_timeout_ms", self.start_timeout_ms, 100),
            ("drain_grace_ms", self.drain_grace_ms, 0),
            ("restart_initial_ms", self.restart_initial_ms, 1),
            ("restart_cap_ms", self.restart_cap_ms, 1),
            ("restart_reset_after_ms", self.restart_reset_after_ms, 1),
        ];
        for (field, value, least) in durations {
            if value < least || value > MAX_DURATION_MS {
                return bad(field, format!("{value} is outside {least}..={MAX_DURATION_MS}"));
            }
        }
        if self.restart_cap_ms < self.restart_initial_ms {
            return bad(
                "restart_cap_ms",
                format!("{} is below restart_initial_ms ({})", self.restart_cap_ms, self.restart_initial_ms),
            );
        }
        if self.crash_loop_threshold == 0 {
            return bad("crash_loop_threshold", "must be at least 1".into());
        }
        if self.env.len() > MAX_ENV_VARS {
            return bad("env", format!("{} variables; at most {MAX_ENV_VARS}", self.env.len()));
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
                return bad("env", format!("'{key}' is not a valid variable (no '=' or NUL, not empty)"));
            }
            if TOKEN_ENV.contains(&key.as_str()) {
                return bad(
                    "env",
                    format!(
                        "{key}: give the token's file as token_file instead (a token in the configuration \
                         would be a secret in a file many read, and in every replica's environment)"
                    ),
                );
            }
            if RESERVED_ENV.contains(&key.as_str()) {
                return bad("env", format!("{key} is set by the scaler and cannot be overridden"));
            }
        }
        if let Some(path) = &self.token_file {
            weft_agent::Token::from_file(path).map_err(|e| Error::Invalid {
                agent: Some(agent.to_owned()),
                field: "token_file",
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// The token file as its processes are given it: an absolute path (relative ones are
    /// relative to the scaler's working directory).
    pub fn token_file_absolute(&self) -> Option<PathBuf> {
        self.token_file.as_ref().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
    }

    /// The restart back-off this agent's replicas follow.
    pub fn backoff(&self) -> crate::backoff::Policy {
        crate::backoff::Policy {
            initial_ms: self.restart_initial_ms,
            cap_ms: self.restart_cap_ms,
            reset_after_ms: self.restart_reset_after_ms,
            crash_loop_threshold: self.crash_loop_threshold,
        }
    }

    /// The drain timeout its workers are told: under the drain grace by a tenth of it, and at
    /// least by [`WORKER_FINAL_ACK_MS`] (after its drain timeout a worker waits up to 2 s for
    /// the fabric to take its last completions), but never below half the grace. So a worker
    /// finishes, completions sent and acknowledged, before the KILL, unless the grace is under
    /// twice that margin.
    pub fn worker_drain_timeout_ms(&self) -> u64 {
        let margin = (self.drain_grace_ms / 10).max(WORKER_FINAL_ACK_MS).min(self.drain_grace_ms / 2);
        self.drain_grace_ms - margin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        endpoints = ["127.0.0.1:7400"]

        [agents.work]
        command = "scaled"
        max_replicas = 4

        [agents.room]
        command = "scaled"
        args = ["--room"]
        mode = "per-instance"
        max_replicas = 10
        env = { RUST_LOG = "info" }
    "#;

    fn invalid(text: &str) -> (Option<String>, &'static str, String) {
        match Config::parse(text).and_then(|c| c.validate()) {
            Err(Error::Invalid { agent, field, reason }) => (agent, field, reason),
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_what_is_not_given() {
        let c = Config::parse(GOOD).unwrap();
        c.validate().unwrap();
        assert_eq!(c.group, "default");
        assert_eq!(c.lease_ttl_ms, 10_000);
        assert!(!c.leave_running_on_exit);
        let work = &c.agents["work"];
        assert_eq!(work.backend, BackendKind::Process);
        assert_eq!(work.mode, Mode::Pool);
        assert_eq!((work.min_replicas, work.max_replicas), (0, 4));
        assert!(work.scale_from_zero);
        assert_eq!(work.idle_ms, 300_000);
        assert_eq!(
            (work.restart_initial_ms, work.restart_cap_ms, work.restart_reset_after_ms),
            (10_000, 300_000, 600_000)
        );
        assert_eq!(c.agents["room"].mode, Mode::PerInstance);
        assert_eq!(c.agents["room"].env["RUST_LOG"], "info");
        assert_eq!(work.worker_drain_timeout_ms(), 12_500, "15 s grace: 2.5 s left for the final acks");
        for (grace, drain) in [(60_000, 54_000), (5_000, 2_500), (2_000, 1_000), (0, 0)] {
            let a = AgentConfig { drain_grace_ms: grace, ..work.clone() };
            assert_eq!(a.worker_drain_timeout_ms(), drain, "grace {grace} ms");
        }
    }

    #[test]
    fn errors_name_the_agent_the_field_and_the_reason() {
        let (agent, field, reason) =
            invalid("[agents.work]\ncommand = \"x\"\nmax_replicas = 2\nmin_replicas = 3\n");
        assert_eq!((agent.as_deref(), field), (Some("work"), "min_replicas"));
        assert!(reason.contains("above max_replicas (2)"), "{reason}");
        let e = Config::parse("[agents.work]\ncommand = \"x\"\nmax_replicas = 0\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.to_string(), "agent 'work': field 'max_replicas': 0 is outside 1..=1000");

        assert_eq!(invalid("[agents.work]\nmax_replicas = 1\n").1, "command");
        assert_eq!(invalid("[agents.w]\nbackend = \"docker\"\nmax_replicas = 1\n").1, "image");
        assert_eq!(invalid("[agents.w]\ncommand = \"x\"\nimage = \"i\"\nmax_replicas = 1\n").1, "image");
        let per_instance =
            "[agents.w]\ncommand = \"x\"\nmode = \"per-instance\"\nmin_replicas = 1\nmax_replicas = 2\n";
        assert_eq!(invalid(per_instance).1, "min_replicas");
        assert_eq!(
            invalid("[agents.w]\ncommand = \"x\"\nmax_replicas = 1\nbacklog_per_replica = 0\n").1,
            "backlog_per_replica"
        );
        assert_eq!(
            invalid("[agents.w]\ncommand = \"x\"\nmax_replicas = 1\nrestart_cap_ms = 5\n").1,
            "restart_cap_ms"
        );
        assert_eq!(
            invalid("[agents.w]\ncommand = \"x\"\nmax_replicas = 1\nstart_timeout_ms = 5\n").1,
            "start_timeout_ms"
        );
        let (_, field, reason) =
            invalid("[agents.w]\ncommand = \"x\"\nmax_replicas = 1\nenv = { WEFT_SESSION_NAME = \"x\" }\n");
        assert_eq!(field, "env");
        assert!(reason.contains("WEFT_SESSION_NAME"), "{reason}");
        assert_eq!(invalid("[agents.\"bad name\"]\ncommand = \"x\"\nmax_replicas = 1\n").1, "name");

        let (agent, field, _) = invalid("group = \"a/b\"\n");
        assert_eq!((agent, field), (None, "group"));
        assert_eq!(invalid("lease_ttl_ms = 10\n").1, "lease_ttl_ms");
        assert_eq!(invalid("metrics_addr = \"nowhere\"\n").1, "metrics_addr");
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_parse_errors_naming_the_key() {
        let e = Config::parse("[agents.w]\ncommand = \"x\"\nmax_replica = 1\n").unwrap_err();
        assert!(e.to_string().contains("max_replica"), "{e}");
        let e = Config::parse("[agents.w]\ncommand = \"x\"\nmax_replicas = \"many\"\n").unwrap_err();
        assert!(e.to_string().contains("max_replicas"), "{e}");
        let e = Config::parse("[agents.w]\ncommand = \"x\"\nmax_replicas = 1\nmode = \"sometimes\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("sometimes"), "{e}");
    }

    #[test]
    fn token_files_are_read_at_load_and_tokens_stay_out_of_env() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("work.token");
        std::fs::write(&token, "weft_0123456789ab_00112233445566778899aabbccddeeff\n").unwrap();
        let with = |path: &Path| {
            format!(
                "[agents.work]\ncommand = \"x\"\nmax_replicas = 1\ntoken_file = {:?}\n",
                path.display().to_string()
            )
        };
        let c = Config::parse(&with(&token)).unwrap();
        c.validate().unwrap();
        assert_eq!(c.agents["work"].token_file_absolute().as_deref(), Some(token.as_path()));

        let missing = dir.path().join("missing.token");
        let (agent, field, reason) = invalid(&with(&missing));
        assert_eq!((agent.as_deref(), field), (Some("work"), "token_file"));
        assert!(
            reason.contains(&missing.display().to_string()) && reason.contains("cannot read"),
            "{reason}"
        );
        std::fs::write(&token, "  \n").unwrap();
        let (_, field, reason) = invalid(&with(&token));
        assert_eq!(field, "token_file");
        assert!(reason.contains("empty") && reason.contains("work.token"), "{reason}");

        for key in ["WEFT_TOKEN", "WEFT_TOKEN_FILE"] {
            let (_, field, reason) = invalid(&format!(
                "[agents.w]\ncommand = \"x\"\nmax_replicas = 1\nenv = {{ {key} = \"x\" }}\n"
            ));
            assert_eq!(field, "env");
            assert!(reason.contains(key) && reason.contains("token_file"), "{reason}");
        }
    }

    #[test]
    fn load_reads_and_validates_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scaler.toml");
        std::fs::write(&path, GOOD).unwrap();
        assert_eq!(Config::load(&path).unwrap().agents.len(), 2);
        std::fs::write(&path, "[agents.w]\ncommand = \"x\"\nmax_replicas = 1\nmin_replicas = 2\n").unwrap();
        assert!(matches!(Config::load(&path), Err(Error::Invalid { field: "min_replicas", .. })));
        let e = Config::load(&dir.path().join("missing.toml")).unwrap_err();
        assert!(e.to_string().contains("missing.toml"), "{e}");
    }
}

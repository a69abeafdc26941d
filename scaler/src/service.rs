//! Wires the scaler for the binary: loads the configuration, connects to the fabric, builds
//! the backends and the controller, serves metrics, watches the file for reloads, and opens
//! the scaler's own agent session (agent `weft.scaler`, delegate `status`), then runs until
//! shutdown.
//!
//! ```text
//!   run(options, shutdown)
//!     ├─ Config::load + command-line overrides ─► watch channel ◄─ reload::watch_file
//!     ├─ Client ─► fabric::Sdk (demand, lease, intents, status)
//!     ├─ backend::process::Backend ─► exits (mpsc) ─┐
//!     ├─ Controller::run ◄──────────────────────────┘
//!     ├─ metrics::serve (optional)
//!     └─ Worker: agent weft.scaler, delegate status ─► the published status
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use weft_agent::{Agent, Client, Context, Fail, Tls, Token, Worker};

use crate::backend::{self, Backend};
use crate::clock::Clock;
use crate::config::{self, BackendKind, Config};
use crate::controller::{self, Controller};
use crate::fabric::{Fabric, Sdk};
use crate::metrics::{self, Metrics};

/// The agent every scaler serves.
pub const AGENT: &str = "weft.scaler";
/// Its delegate that returns the group's published status (JSON; null before the first).
pub const STATUS_DELEGATE: &str = "status";

/// Why the scaler could not start. Nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is missing or invalid.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// No endpoints anywhere.
    #[error("no endpoints: give --endpoints, set WEFT_ENDPOINT, or set endpoints in the configuration")]
    NoEndpoints,
    /// The SDK refused the endpoints.
    #[error("cannot use the endpoints: {0}")]
    Client(weft_agent::Error),
    /// The TLS settings cannot be used (a missing file, a certificate without its key).
    #[error("TLS: {0}")]
    Tls(String),
    /// The scaler's own token cannot be used (both the text and a file given, a file that
    /// cannot be read or holds no token).
    #[error("token: {0}")]
    Token(String),
    /// The fabric refused the scaler's credentials while it ran (a revoked or expired
    /// token, a token without a permission the scaler needs, TLS required); it stopped as on
    /// SIGTERM.
    #[error("the scaler stopped: {0}")]
    Refused(crate::fabric::Error),
    /// The metrics address could not be bound.
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// What the command line adds to the configuration file.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The configuration file.
    pub config: PathBuf,
    /// Endpoints that replace the file's (`--endpoints`, `WEFT_ENDPOINT`).
    pub endpoints: Vec<String>,
    /// A metrics address that replaces the file's.
    pub metrics_addr: Option<String>,
    /// TLS to the fabric (`--tls-ca`, `WEFT_TLS_CA`, ...): used by the scaler, and passed to
    /// the replicas it starts.
    pub tls: TlsFiles,
    /// The scaler's own bearer token (`--auth-token-file`, `WEFT_TOKEN_FILE`, `WEFT_TOKEN`),
    /// sent on its requests and its own agent session. Never passed to replicas: they get
    /// their agent's `token_file`.
    pub token: Option<Token>,
}

/// The flags that give the scaler's own token.
const TOKEN_FLAGS: [&str; 2] = ["--auth-token", "--auth-token-file"];

/// The scaler's own token: from `--auth-token` (`text`) or `--auth-token-file` (`file`), else
/// from `WEFT_TOKEN` or `WEFT_TOKEN_FILE`; both flags, or both variables, are an error naming
/// both (the SDK's rule, [`weft_agent::token::from_flags_or_env`]).
pub fn token(text: Option<&str>, file: Option<&std::path::Path>) -> Result<Option<Token>, Error> {
    weft_agent::token::from_flags_or_env(text, file, TOKEN_FLAGS)
        .map(|found| found.map(|(token, _)| token))
        .map_err(|e| Error::Token(e.to_string()))
}

/// The TLS files of the scaler's connection to the fabric; with `ca` set, the scaler uses
/// TLS and gives each replica `WEFT_TLS_CA` (and `WEFT_TLS_CERT` / `WEFT_TLS_KEY` with a
/// client certificate) as absolute paths, unless the agent's `env` sets them itself.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// The cluster's CA.
    pub ca: Option<PathBuf>,
    /// A client certificate (with `key`).
    pub cert: Option<PathBuf>,
    /// The client certificate's key.
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// The SDK's settings from these files; `None` without a CA.
    pub fn settings(&self) -> Result<Option<Tls>, Error> {
        let identity = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => return Err(Error::Tls("--tls-cert and --tls-key go together".into())),
        };
        match &self.ca {
            Some(ca) => Tls::from_files(ca, identity).map(Some).map_err(|e| Error::Tls(e.to_string())),
            None if identity.is_some() => Err(Error::Tls("--tls-cert needs --tls-ca".into())),
            None => Ok(None),
        }
    }

    /// The environment replicas get: the same files, as absolute paths.
    pub fn replica_env(&self) -> Vec<(String, String)> {
        let absolute =
            |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone()).display().to_string();
        let Some(ca) = &self.ca else { return Vec::new() };
        let mut env = vec![(weft_agent::tls::env::CA.to_owned(), absolute(ca))];
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            env.push((weft_agent::tls::env::CERT.to_owned(), absolute(cert)));
            env.push((weft_agent::tls::env::KEY.to_owned(), absolute(key)));
        }
        env
    }
}

impl Options {
    /// Applies the command line to a configuration read from the file.
    pub fn apply(&self, config: &mut Config) {
        if !self.endpoints.is_empty() {
            config.endpoints = self.endpoints.clone();
        }
        if self.metrics_addr.is_some() {
            config.metrics_addr = self.metrics_addr.clone();
        }
    }

    /// Loads and validates the configuration with the command line applied.
    pub fn load(&self) -> Result<Config, Error> {
        let mut config = Config::load(&self.config)?;
        self.apply(&mut config);
        config.validate()?;
        if config.endpoints.is_empty() {
            return Err(Error::NoEndpoints);
        }
        Ok(config)
    }
}

/// This host's name (for intents and the lease holder).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Runs the scaler until `shutdown` (see the module docs).
pub async fn run(options: Options, shutdown: CancellationToken) -> Result<(), Error> {
    let config = options.load()?;
    let tls = options.tls.settings()?;
    let client = Client::builder(config.endpoints.clone())
        .tls(tls.clone())
        .token(options.token.clone())
        .build()
        .map_err(Error::Client)?;
    let fabric = Sdk::new(client, &config.group);
    let metrics = Metrics::default();
    let metrics_task = match config.metrics_socket() {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Metrics { addr: addr.to_string(), source })?;
            tracing::info!(%addr, "serving metrics");
            Some(tokio::spawn(metrics::serve(listener, metrics.clone(), shutdown.clone())))
        }
        None => None,
    };
    let host = host_name();
    let holder = format!("{host}-{}-{:08x}", std::process::id(), rand::random::<u32>());
    tracing::info!(%holder, group = %config.group, agents = config.agents.len(), "scaler starting");

    let (exits_tx, exits) = mpsc::channel(controller::MAX_PENDING_EXITS);
    let docker_exits = exits_tx.clone();
    let process = backend::process::Backend::new(
        backend::process::Options {
            group: config.group.clone(),
            run_dir: config.run_dir(),
            log_dir: config.log_dir.clone(),
            max_log_bytes: config.max_log_bytes,
        },
        exits_tx,
    );
    let mut backends = BTreeMap::from([(BackendKind::Process, Backend::Process(process))]);
    // The Docker backend is built whatever the agents use now, so a reload may move an agent
    // to it; it contacts the engine only when an agent needs it. Its options were validated
    // with the configuration when an agent uses it; otherwise (a group that makes no container
    // name) the scaler runs without it, and an agent moved to it later fails to start.
    match backend::docker::Backend::new(config.docker_options(), docker_exits) {
        Ok(docker) => {
            if config.agents.values().any(|a| a.backend == BackendKind::Docker) {
                match docker.check().await {
                    Ok(engine) => tracing::info!(host = %config.docker.host, version = %engine.version,
                        api_version = %engine.api_version, "docker engine reached"),
                    Err(e) => tracing::error!(error = %e,
                        "the docker backend cannot reach its engine; its agents start once it answers"),
                }
            }
            backends.insert(BackendKind::Docker, Backend::Docker(docker));
        }
        Err(e) => tracing::warn!(error = %e, "no docker backend in this scaler"),
    }

    let (config_tx, config_rx) = watch::channel(Arc::new(config.clone()));
    let reload = {
        let options = options.clone();
        tokio::spawn(crate::reload::watch_file(
            options.config.clone(),
            config_tx,
            move |c| options.apply(c),
            shutdown.clone(),
        ))
    };

    let status_worker = own_session(&config, fabric.clone(), &holder, tls, options.token.clone());
    let controller_options = controller::Options {
        holder: holder.clone(),
        host,
        endpoints: config.endpoints.clone(),
        tls_env: options.tls.replica_env(),
    };
    let controller =
        Controller::new(fabric, backends, exits, config_rx, Clock::system(), controller_options, metrics);
    let ended = controller.run(shutdown.clone()).await;
    // Ended by refused credentials: everything else stops too.
    shutdown.cancel();

    if let Some((stopper, task)) = status_worker {
        stopper.stop();
        let _ = task.await;
    }
    reload.abort();
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    tracing::info!("scaler stopped");
    ended.map_err(Error::Refused)
}

/// The scaler's own session: agent `weft.scaler`, whose `status` delegate returns the
/// group's published status, so the scaler is an agent like any other.
fn own_session<F: Fabric>(
    config: &Config,
    fabric: F,
    holder: &str,
    tls: Option<Tls>,
    token: Option<Token>,
) -> Option<(weft_agent::Stopper, tokio::task::JoinHandle<()>)> {
    let status = move |_ctx: Context, _args: serde_json::Value| {
        let fabric = fabric.clone();
        async move {
            fabric.read_status().await.map(|s| s.unwrap_or_default()).map_err(|e| Fail::new(e.to_string()))
        }
    };
    let worker = Worker::builder(config.endpoints.clone())
        .tls(tls)
        .token(token)
        .agent(Agent::new(AGENT).delegate(STATUS_DELEGATE, status))
        .name(holder)
        .capacity(4)
        .build();
    match worker {
        Ok(worker) => {
            let stopper = worker.stopper();
            let task = tokio::spawn(async move {
                if let Err(e) = worker.run().await {
                    tracing::warn!(error = %e, "the scaler's own agent session ended");
                }
            });
            Some((stopper, task))
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the scaler's own agent session");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scalers_token_comes_from_its_text_or_a_file_not_both() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("scaler.token");
        std::fs::write(&file, "weft_0123456789ab_00112233445566778899aabbccddeeff\n").unwrap();
        let t = token(None, Some(&file)).unwrap().unwrap();
        assert_eq!(t.id(), Some("0123456789ab"));
        let t = token(Some("weft_0123456789ab_00112233445566778899aabbccddeeff"), None).unwrap().unwrap();
        assert_eq!(t.id(), Some("0123456789ab"));
        let e = token(Some("x"), Some(&file)).unwrap_err().to_string();
        assert!(e.contains("--auth-token and --auth-token-file are both given"), "{e}");
        let missing = dir.path().join("missing");
        let e = token(None, Some(&missing)).unwrap_err().to_string();
        assert!(e.contains("--auth-token-file") && e.contains(&missing.display().to_string()), "{e}");
        let options = Options { token: Some(t), ..Options::default() };
        assert!(!format!("{options:?}").contains("00112233"), "the secret stays out of Debug");
    }

    #[test]
    fn a_flag_beats_the_environment_which_holds_one_token() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("scaler.token");
        std::fs::write(&file, "weft_0123456789ab_00112233445566778899aabbccddeeff\n").unwrap();
        let env_text = "weft_aaaaaaaaaaaa_ffeeddccbbaa99887766554433221100";
        let vars = |pairs: Vec<(&'static str, String)>| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
        };
        let id = |found: Option<(Token, String)>| found.and_then(|(t, _)| t.id().map(str::to_owned));
        let env = || vars(vec![("WEFT_TOKEN", env_text.to_owned())]);
        let from = |text, file, var| weft_agent::token::from_flags_or_vars(text, file, TOKEN_FLAGS, var);
        assert_eq!(id(from(None, Some(file.as_path()), env()).unwrap()).as_deref(), Some("0123456789ab"));
        assert_eq!(id(from(None, None, env()).unwrap()).as_deref(), Some("aaaaaaaaaaaa"));
        let both =
            vars(vec![("WEFT_TOKEN", env_text.to_owned()), ("WEFT_TOKEN_FILE", file.display().to_string())]);
        let e = from(None, None, both).unwrap_err().to_string();
        assert!(e.contains("WEFT_TOKEN and WEFT_TOKEN_FILE are both set"), "{e}");
        let both =
            vars(vec![("WEFT_TOKEN", env_text.to_owned()), ("WEFT_TOKEN_FILE", "/nonexistent".into())]);
        assert_eq!(id(from(None, Some(file.as_path()), both).unwrap()).as_deref(), Some("0123456789ab"));
    }
}

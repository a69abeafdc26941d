//! `weft-scaler`: starts and stops agent processes on demand.
//!
//! ```text
//! weft-scaler --config scaler.toml [--endpoints HOST:PORT,...] [--metrics-addr IP:PORT]
//!             [--tls-ca FILE [--tls-cert FILE --tls-key FILE]] [--auth-token-file FILE]
//! weft-scaler --config scaler.toml --check      # validate the configuration and exit
//! ```
//!
//! SIGTERM or ctrl-c stops it: its replicas are stopped (unless `leave_running_on_exit`) and
//! its lease released. SIGHUP (or a change of the file) reloads the configuration.

use std::path::PathBuf;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use weft_scaler::service::{self, Options};

/// Weft's scaler: starts and stops agent processes on demand.
#[derive(Debug, Parser)]
#[command(name = "weft-scaler", version)]
struct Args {
    /// The configuration file (TOML; see docs/operations.md, "Scaler").
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Fabric nodes, HOST:PORT (any of them); replaces the file's `endpoints`.
    #[arg(long, env = "WEFT_ENDPOINT", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Serve Prometheus metrics here (IP:PORT); replaces the file's `metrics_addr`.
    #[arg(long, value_name = "IP:PORT")]
    metrics_addr: Option<String>,
    /// PEM file of the cluster's CA: reach the fabric over TLS (and give replicas
    /// WEFT_TLS_CA, unless their agent's env sets it).
    #[arg(long, value_name = "FILE", env = "WEFT_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// PEM file of a client certificate (with --tls-key); replicas get it too.
    #[arg(long, value_name = "FILE", env = "WEFT_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM file of the client certificate's key.
    #[arg(long, value_name = "FILE", env = "WEFT_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// The scaler's bearer token, for nodes with auth on (prefer --auth-token-file: a flag's
    /// value shows in the process list). Replicas do not get it. Without either flag,
    /// WEFT_TOKEN or WEFT_TOKEN_FILE (not both) is used.
    #[arg(long, value_name = "TOKEN")]
    auth_token: Option<String>,
    /// A file holding the scaler's bearer token (whitespace around it ignored; not with
    /// --auth-token). Either flag wins over WEFT_TOKEN and WEFT_TOKEN_FILE.
    #[arg(long, value_name = "FILE")]
    auth_token_file: Option<PathBuf>,
    /// Validate the configuration and exit: 0 when valid, 1 (with the agent, field and
    /// reason) when not.
    #[arg(long)]
    check: bool,
}

/// Waits for ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let token = match service::token(args.auth_token.as_deref(), args.auth_token_file.as_deref()) {
        Ok(token) => token,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let options = Options {
        config: args.config,
        endpoints: args
            .endpoints
            .into_iter()
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
            .collect(),
        metrics_addr: args.metrics_addr,
        tls: service::TlsFiles { ca: args.tls_ca, cert: args.tls_cert, key: args.tls_key },
        token,
    };
    if args.check {
        let code = match options.load() {
            Ok(config) => {
                println!("configuration valid: {} agents, group '{}'", config.agents.len(), config.group);
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        };
        std::process::exit(code);
    }
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping");
        stop.cancel();
    });
    if let Err(e) = service::run(options, shutdown).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

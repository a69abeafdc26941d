//! `weft-jepsen-agent`: the counter agent of the executions workload (see
//! `weft_jepsen::counter`), one process of several that `weft-jepsen` starts in agent
//! namespaces and kills with the `kill-agent` nemesis.

use std::time::Duration;

use clap::Parser;
use weft_agent::Worker;
use weft_jepsen::counter::{self, Effects};

#[derive(Parser, Debug)]
#[command(name = "weft-jepsen-agent", about = "The counter agent of weft-jepsen's executions workload")]
struct Args {
    /// Every node's IP:PORT, comma-separated (the SDK fails over between them).
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// A label for the session.
    #[arg(long, default_value = "jepsen agent")]
    name: String,
    /// This process's number, which each increment records as `serving`.
    #[arg(long, default_value_t = 1)]
    number: u64,
    /// atomic: the writes go with the result (the promise); direct: plain puts from the
    /// handler (unsafe on purpose).
    #[arg(long, value_enum, default_value = "atomic")]
    effects: Effects,
    /// How long each increment takes after its read.
    #[arg(long, default_value_t = 0)]
    work_ms: u64,
    /// Each assignment's lease in milliseconds (renewed while the handler runs).
    #[arg(long, default_value_t = 3000)]
    lease_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Its output goes to a file (a<k>.log in the run folder), read with grep.
        .with_ansi(false)
        .init();
    let a = Args::parse();
    let worker = Worker::builder(a.endpoints)
        // WEFT_TLS_CA when the run uses TLS; WEFT_TOKEN_FILE (an agent token) with --auth.
        .tls(weft_agent::Tls::from_env()?)
        .token(weft_agent::Token::from_env()?)
        .agent(counter::agent(a.effects, Duration::from_millis(a.work_ms), a.number))
        .lease(Some(Duration::from_millis(a.lease_ms)))
        .name(&format!("{} (pid {})", a.name, std::process::id()))
        .build()?;
    tracing::info!(
        effects = a.effects.name(),
        work_ms = a.work_ms,
        lease_ms = a.lease_ms,
        "serving the counter agent"
    );
    worker.run().await?;
    Ok(())
}

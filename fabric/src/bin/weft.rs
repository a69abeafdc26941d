//! The `weft` binary: fabric node, development cluster and command-line client.

use clap::Parser;
use tracing_subscriber::EnvFilter;
use weft_fabric::cli::Cli;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    // openraft is chatty at info (and logs routine retries as errors): keep it to warnings.
    let default_level = if cli.runs_nodes() { "info,openraft=warn" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)))
        .with_writer(std::io::stderr)
        .init();
    let code = match cli.run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

//! `scaled`: an agent process for the scaler to start and stop. It takes no flags: the
//! endpoints, its session name, capacity, drain time and (per-instance) its one instance come
//! from the environment the scaler sets (`Worker::from_env`), and SIGTERM drains it.
//!
//! It serves one agent, named by `WEFT_AGENT` (set for per-instance processes), else
//! `SCALED_AGENT`, else `work`, with delegates:
//! - `echo`: returns its argument (any JSON);
//! - `sleep`: sleeps its argument in milliseconds and returns it (for backlog tests);
//! - `whoami`: the replica's session name, instance, process id.
//!
//! Knobs for tests: `SCALED_CRASH_ON_START=CODE` exits at once with CODE (after a line on
//! stderr); `SCALED_EXIT_AFTER_MS=MS` exits with code 1 after MS milliseconds of running.
//!
//! ```text
//! WEFT_ENDPOINT=127.0.0.1:7400 scaled                   # what the scaler runs
//! weft call work whoami                                 # from anywhere
//! ```

use std::time::Duration;

use serde::Serialize;
use weft_agent::{Agent, Context, Fail, Worker};

/// What `whoami` returns.
#[derive(Debug, Serialize)]
struct Whoami {
    /// The session name (the scaler's replica id), if it has one.
    session: Option<String>,
    /// The instance the call ran on, if any.
    instance: Option<String>,
    /// The process id.
    pid: u32,
}

async fn echo(_ctx: Context, value: serde_json::Value) -> Result<serde_json::Value, Fail> {
    Ok(value)
}

async fn sleep(ctx: Context, ms: u64) -> Result<u64, Fail> {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(ms),
        _ = ctx.cancelled() => Err(Fail::new("cancelled")),
    }
}

async fn whoami(ctx: Context, _: ()) -> Result<Whoami, Fail> {
    Ok(Whoami {
        session: std::env::var("WEFT_SESSION_NAME").ok(),
        instance: ctx.instance().map(str::to_owned),
        pid: std::process::id(),
    })
}

fn env_number(name: &str) -> anyhow::Result<Option<u64>> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => {
            Ok(Some(v.trim().parse().map_err(|_| anyhow::anyhow!("{name}='{v}' is not a whole number"))?))
        }
        _ => Ok(None),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Some(code) = env_number("SCALED_CRASH_ON_START")? {
        eprintln!("scaled: crashing on start as SCALED_CRASH_ON_START asks (exit code {code})");
        std::process::exit(code as i32);
    }
    if let Some(ms) = env_number("SCALED_EXIT_AFTER_MS")? {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            eprintln!("scaled: exiting after {ms} ms as SCALED_EXIT_AFTER_MS asks");
            std::process::exit(1);
        });
    }
    let agent = std::env::var("WEFT_AGENT")
        .or_else(|_| std::env::var("SCALED_AGENT"))
        .unwrap_or_else(|_| "work".to_owned());
    tracing::info!(%agent, pid = std::process::id(), "scaled starting");
    let worker = Worker::from_env()?
        .agent(
            Agent::new(&agent)
                .delegate("echo", echo)
                .delegate("sleep", sleep)
                .delegate("whoami", whoami)
                .concurrent_instances(true),
        )
        .build()?;
    worker.run_until_signal().await?;
    tracing::info!("scaled stopped");
    Ok(())
}

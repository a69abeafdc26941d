//! `counter`: an agent with per-instance state and exactly-once increments.
//!
//! Each counter is an instance of the `counter` agent; its count lives in the instance's
//! own state (`instance/counter/<id>`, key `count`). An increment reads the count and buffers
//! the new one; the fabric applies the write together with the result, conditional on the
//! version read. So an increment counts once even if the process running it dies halfway and
//! another runs it again, and a caller that retries with the same idempotency key gets the
//! first result back instead of a second increment.
//!
//! ```text
//! counter agent [--capacity N] [--work-ms MS]    serve the counter agent
//! counter demo [--id ID] [--times N]             start a counter, increment it N times, print it
//! ```

use std::time::Duration;

use clap::{Parser, Subcommand};
use weft_agent::{Agent, Client, Context, Fail, Worker};

#[derive(Parser)]
#[command(about = "A Weft counter agent with exactly-once increments")]
struct Args {
    /// Fabric nodes to connect to (any of them; the SDK fails over).
    #[arg(
        long,
        env = "WEFT_ENDPOINT",
        value_delimiter = ',',
        default_value = "127.0.0.1:7400",
        global = true
    )]
    endpoints: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the `counter` agent until ctrl-c or SIGTERM.
    Agent {
        /// Executions this process runs at once.
        #[arg(long, default_value_t = 16)]
        capacity: u32,
        /// Pretend each increment takes this long (to watch failover by killing the process).
        #[arg(long, default_value_t = 0)]
        work_ms: u64,
    },
    /// Start a counter, increment it, print the count.
    Demo {
        /// The counter's instance id.
        #[arg(long, default_value = "demo")]
        id: String,
        /// How many increments.
        #[arg(long, default_value_t = 5)]
        times: u64,
    },
}

/// `Start`: the count begins at the given value.
async fn start(ctx: Context, initial: u64) -> Result<u64, Fail> {
    ctx.state()?.put("count", &initial)?;
    Ok(initial)
}

/// Adds `by` and returns the new count.
async fn increment(ctx: Context, by: u64, work: Duration) -> Result<u64, Fail> {
    eprintln!(
        "counter: pid {} runs execution {} (attempt {}) of {}",
        std::process::id(),
        ctx.execution_id(),
        ctx.attempt(),
        ctx.instance().unwrap_or("?")
    );
    let state = ctx.state()?;
    let count: u64 = state.get("count").await?.unwrap_or(0);
    if !work.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(work) => {}
            _ = ctx.cancelled() => return Err(Fail::permanent("cancelled")),
        }
    }
    state.put("count", &(count + by))?;
    Ok(count + by)
}

/// The current count.
async fn get(ctx: Context, (): ()) -> Result<u64, Fail> {
    Ok(ctx.state()?.get("count").await?.unwrap_or(0))
}

/// The `counter` agent; `work` is how long an increment pretends to take.
fn agent(work: Duration) -> Agent {
    Agent::new("counter")
        .on_start(start)
        .delegate("increment", move |ctx, by| increment(ctx, by, work))
        .delegate("get", get)
}

async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    match args.command {
        Command::Agent { capacity, work_ms } => {
            let worker = Worker::builder(args.endpoints)
                .agent(agent(Duration::from_millis(work_ms)))
                .capacity(capacity)
                .name(&format!("counter pid {}", std::process::id()))
                .build()?;
            let stopper = worker.stopper();
            tokio::spawn(async move {
                shutdown_signal().await;
                stopper.stop();
            });
            eprintln!("counter: serving the counter agent");
            worker.run().await?;
        }
        Command::Demo { id, times } => {
            let client = Client::new(args.endpoints)?;
            let started = client
                .start_instance_with::<_, u64>("counter", Some(&id), &0u64, Some(&format!("demo-{id}")), None)
                .await?;
            println!("started counter {} at {}", started.id, started.result);
            for i in 1..=times {
                let key = format!("demo-{id}-{i}");
                let count: u64 = client
                    .request("counter", "increment")
                    .instance(&id)
                    .args(&1u64)
                    .idempotency_key(&key)
                    .call()
                    .await?;
                println!("increment {i}: {count}");
            }
            let count: u64 = client.request("counter", "get").instance(&id).call().await?;
            println!("counter {id} is at {count}");
        }
    }
    Ok(())
}

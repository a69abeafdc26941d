//! `fan-out`: a job that calls many executions in parallel and gathers their results.
//!
//! `jobs.sum_of_squares(n)` creates n child executions `squares.square(i)` at once, waits for
//! all of them and adds their results. The fabric spreads the children over every process
//! that serves `squares`; if one dies, its children run elsewhere, and the job still gets
//! each result once. When the job itself runs again (its process died), it finds the same
//! children by their idempotency keys instead of creating new ones.
//!
//! ```text
//! fan-out agent [--capacity N]     serve `jobs` and `squares`
//! fan-out run [--n N]              run one job and print its sum and how long it took
//! ```

use std::time::Instant;

use clap::{Parser, Subcommand};
use weft_agent::{Agent, Client, Context, Fail, Worker};

/// Most children one job may fan out to.
const MAX_FAN_OUT: u64 = 10_000;

#[derive(Parser)]
#[command(about = "A Weft job fanning out to many parallel executions")]
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
    /// Serve `jobs` and `squares` until ctrl-c.
    Agent {
        /// Executions this process runs at once.
        #[arg(long, default_value_t = 64)]
        capacity: u32,
    },
    /// Run one job.
    Run {
        /// How many children.
        #[arg(long, default_value_t = 100)]
        n: u64,
    },
}

/// Fans out to `n` squares and adds them up.
async fn sum_of_squares(ctx: Context, n: u64) -> Result<u64, Fail> {
    if n > MAX_FAN_OUT {
        return Err(Fail::permanent(format!("at most {MAX_FAN_OUT} children")));
    }
    // Each request takes its place (and its idempotency key) as it is made, in order.
    let children: Vec<_> = (1..=n).map(|i| ctx.request("squares", "square").args(&i).call::<u64>()).collect();
    let squares = futures::future::try_join_all(children).await?;
    Ok(squares.into_iter().sum())
}

async fn square(_ctx: Context, i: u64) -> Result<u64, Fail> {
    Ok(i * i)
}

/// The two agents.
fn agents() -> [Agent; 2] {
    [
        Agent::new("jobs").delegate("sum_of_squares", sum_of_squares),
        Agent::new("squares").delegate("square", square),
    ]
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
        Command::Agent { capacity } => {
            let [jobs, squares] = agents();
            let worker =
                Worker::builder(args.endpoints).agent(jobs).agent(squares).capacity(capacity).build()?;
            let stopper = worker.stopper();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                stopper.stop();
            });
            eprintln!("fan-out: serving jobs and squares");
            worker.run().await?;
        }
        Command::Run { n } => {
            let client = Client::new(args.endpoints)?;
            let started = Instant::now();
            let sum: u64 = client.call("jobs", "sum_of_squares", &n).await?;
            println!("sum of the squares of 1..={n} is {sum} ({} ms)", started.elapsed().as_millis());
        }
    }
    Ok(())
}

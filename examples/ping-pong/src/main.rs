//! `ping-pong`: two agents that call each other.
//!
//! `ping.volley(n)` calls `pong.volley(n - 1)`, which calls `ping.volley(n - 2)`, and so on
//! down to 0; each level adds its name to the rally on the way back. Every call is a child
//! execution of the one that made it, waiting for its result, so a rally of n holds n + 1
//! slots at once: keep n below the agent process's capacity.
//!
//! ```text
//! ping-pong agent [--capacity N]     serve both agents
//! ping-pong play [--rounds N]        start a rally and print it
//! ```

use clap::{Parser, Subcommand};
use weft_agent::{Agent, Client, Context, Fail, Worker};

/// Longest rally `play` asks for.
const MAX_ROUNDS: u32 = 12;

#[derive(Parser)]
#[command(about = "Two Weft agents, ping and pong, calling each other")]
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
    /// Serve `ping` and `pong` until ctrl-c.
    Agent {
        /// Executions this process runs at once (a rally of n needs n + 1).
        #[arg(long, default_value_t = 16)]
        capacity: u32,
    },
    /// Play one rally and print it.
    Play {
        /// Hits in the rally (at most 12).
        #[arg(long, default_value_t = 6)]
        rounds: u32,
    },
}

/// One side's hit: pass the ball to the other side until the rally is over.
async fn volley(ctx: Context, n: u32, me: &'static str, other: &'static str) -> Result<Vec<String>, Fail> {
    let mut rally = if n == 0 { Vec::new() } else { ctx.call(other, "volley", &(n - 1)).await? };
    rally.insert(0, me.to_owned());
    Ok(rally)
}

/// The two agents.
fn agents() -> [Agent; 2] {
    [
        Agent::new("ping").delegate("volley", |ctx, n| volley(ctx, n, "ping", "pong")),
        Agent::new("pong").delegate("volley", |ctx, n| volley(ctx, n, "pong", "ping")),
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
            let [ping, pong] = agents();
            let worker =
                Worker::builder(args.endpoints).agent(ping).agent(pong).capacity(capacity).build()?;
            let stopper = worker.stopper();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                stopper.stop();
            });
            eprintln!("ping-pong: serving ping and pong");
            worker.run().await?;
        }
        Command::Play { rounds } => {
            anyhow::ensure!(
                rounds <= MAX_ROUNDS,
                "at most {MAX_ROUNDS} rounds: each holds a slot of the agent process"
            );
            let client = Client::new(args.endpoints)?;
            let rally: Vec<String> = client.call("ping", "volley", &rounds).await?;
            println!("{}", rally.join(" "));
        }
    }
    Ok(())
}

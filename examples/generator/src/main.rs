//! `generator`: a stream that is the output of a delegate, passed around as a value.
//!
//! The `primes` agent serves a generator delegate, `primes.generate(n)`, that emits the
//! first n primes, and `primes.open(n)`, which creates the generator stream `primes-<n>` and
//! returns a reference to it (a `StreamRef`, an ordinary value). The fabric starts the
//! generator when the first listener comes; what it emits is the stream, and its return
//! closes the stream. Each item is appended as the exactly-once producer `execution-<id>`,
//! numbered in the order the generator emits them: if the agent process dies halfway, the
//! fabric runs the generator again elsewhere, it emits from the first prime again, and the
//! stream keeps each prime once.
//!
//! ```text
//! generator agent [--work-ms MS]   serve `primes` until ctrl-c or SIGTERM
//! generator list [--n N]           open primes-N and print the primes as they come
//! ```

use std::time::Duration;

use clap::{Parser, Subcommand};
use futures::StreamExt;
use weft_agent::streams::{Config, Emitter, Generator, NewItem};
use weft_agent::{Agent, Client, Context, Fail, StreamRef, Worker};

/// Most primes one stream may hold.
const MAX_PRIMES: u64 = 100_000;

#[derive(Parser)]
#[command(about = "A Weft generator stream: primes, emitted by a delegate")]
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
    /// Serve the `primes` agent until ctrl-c or SIGTERM.
    Agent {
        /// Pretend each prime takes this long to find (to watch failover by killing the
        /// process).
        #[arg(long, default_value_t = 0)]
        work_ms: u64,
    },
    /// Open the stream of the first N primes and print them as they come.
    List {
        /// How many primes.
        #[arg(long, default_value_t = 20)]
        n: u64,
    },
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

/// The generator: emits the first `n` primes, keyed `primes.<last digit>`.
async fn generate(ctx: Context, out: Emitter<u64>, n: u64, work: Duration) -> Result<(), Fail> {
    if n > MAX_PRIMES {
        return Err(Fail::permanent(format!("at most {MAX_PRIMES} primes")));
    }
    eprintln!("generator: pid {} generates {} (attempt {})", std::process::id(), out.stream(), ctx.attempt());
    for p in (2..).filter(|p| is_prime(*p)).take(n as usize) {
        if !work.is_zero() {
            tokio::time::sleep(work).await;
        }
        out.emit(NewItem::new(&p).key(&format!("primes.{}", p % 10))).await?;
    }
    Ok(())
}

/// Creates the generator stream of the first `n` primes (or finds it) and returns it.
async fn open(ctx: Context, n: u64) -> Result<StreamRef, Fail> {
    let generator = Generator::new("primes", "generate").args(&n);
    let info = ctx.stream(&format!("primes-{n}")).create(Config::new().generator(generator)).await?;
    Ok(info.reference())
}

/// The `primes` agent; `work` is how long each prime pretends to take.
fn agent(work: Duration) -> Agent {
    Agent::new("primes")
        .generator("generate", move |ctx, out, n| generate(ctx, out, n, work))
        .delegate("open", open)
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
        Command::Agent { work_ms } => {
            let worker = Worker::builder(args.endpoints)
                .agent(agent(Duration::from_millis(work_ms)))
                .name(&format!("generator pid {}", std::process::id()))
                .build()?;
            let stopper = worker.stopper();
            tokio::spawn(async move {
                shutdown_signal().await;
                stopper.stop();
            });
            eprintln!("generator: serving the primes agent");
            worker.run().await?;
        }
        Command::List { n } => {
            let client = Client::new(args.endpoints)?;
            let primes: StreamRef = client.call("primes", "open", &n).await?;
            println!("stream {} (uid {})", primes.name, primes.uid);
            let mut items = client.stream_from(&primes).listener::<u64>().start().await?;
            while let Some(item) = items.next().await {
                let item = item?;
                println!("prime #{}: {}", item.seq, item.value);
            }
            println!("the generator finished");
        }
    }
    Ok(())
}

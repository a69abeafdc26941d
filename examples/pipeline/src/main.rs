//! `pipeline`: stages connected by streams, each item processed exactly once.
//!
//! ```text
//!   feed ──(producer "feed")──► orders ──► enrich ──► invoices ──► ledger ──► receipts
//!                                         │ count per customer     │ balance per customer
//!                                         ▼ shared/pipeline        ▼ shared/ledger
//! ```
//!
//! `feed` appends orders as the exactly-once producer `feed`: run it twice and nothing is
//! appended twice. Each stage is a process listening on a durable cursor of its input
//! stream (run several: they share the work as competing consumers). For each item a stage
//! reads the state it keeps, and then commits in one step: its state write (conditional on
//! the version it read), the item it appends to the next stream, and the input item's ack.
//! The fabric applies all of it or nothing, so an item is counted once even when a stage
//! process is killed in the middle, its items go to another, or two processes race on a
//! customer's key (the loser hands its item back and it is processed again on fresh state).
//!
//! ```text
//! pipeline stage enrich|ledger [--work-ms MS]   run a stage until ctrl-c or SIGTERM
//! pipeline feed [--n N]                         append orders 1..=N, exactly once
//! pipeline report                               print the ledger and the counts
//! ```

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use weft_agent::streams::{Config, CursorConfig, Item};
use weft_agent::{Client, Error};

/// The customers orders are for.
const CUSTOMERS: [&str; 4] = ["ada", "grace", "linus", "barbara"];
/// Tax added to each order, in percent.
const TAX_PERCENT: u64 = 20;
/// Items a stage process holds at once.
const STAGE_BUFFER: u32 = 16;

#[derive(Parser)]
#[command(about = "A Weft pipeline of stages connected by streams, exactly once")]
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
    /// Run a stage until ctrl-c or SIGTERM.
    Stage {
        /// Which stage.
        stage: Stage,
        /// Pretend each item takes this long (to watch failover by killing the process).
        #[arg(long, default_value_t = 0)]
        work_ms: u64,
        /// How long an item this process took waits for its commit before it goes to
        /// another process.
        #[arg(long, default_value_t = 30_000)]
        ack_wait_ms: u64,
    },
    /// Append orders 1..=N as the exactly-once producer `feed`.
    Feed {
        /// How many orders.
        #[arg(long, default_value_t = 100)]
        n: u64,
    },
    /// Print each customer's orders and balance.
    Report,
}

#[derive(Clone, Copy, ValueEnum)]
enum Stage {
    /// orders → invoices, counting orders per customer.
    Enrich,
    /// invoices → receipts, keeping each customer's balance.
    Ledger,
}

/// An order, as fed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: u64,
    customer: String,
    cents: u64,
}

/// An order with its tax, as `enrich` makes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Invoice {
    order: u64,
    customer: String,
    cents: u64,
}

/// What `ledger` records per invoice.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Receipt {
    order: u64,
    customer: String,
    balance: u64,
}

/// Order `id`: its customer and price are a function of its id, so a test can add them up.
fn order(id: u64) -> Order {
    Order { id, customer: CUSTOMERS[(id % 4) as usize].to_owned(), cents: 100 + id }
}

/// Creates the streams (finding them is fine: same settings).
async fn streams(client: &Client) -> Result<(), Error> {
    for name in ["orders", "invoices", "receipts"] {
        client.stream(name).create(Config::new()).await?;
    }
    Ok(())
}

/// `enrich`: one order → its invoice, and the customer's order count, in one commit.
async fn enrich(client: &Client, item: &Item<Order>) -> Result<(), Error> {
    let o = &item.value;
    let key = format!("orders-{}", o.customer);
    let (count, version) =
        client.state("shared/pipeline").get_versioned::<u64>(&key).await?.unwrap_or((0, 0));
    let invoice =
        Invoice { order: o.id, customer: o.customer.clone(), cents: o.cents * (100 + TAX_PERCENT) / 100 };
    item.commit()
        .compare_and_set("shared/pipeline", &key, &(count + 1), version)
        .append("invoices", &invoice)
        .send()
        .await
}

/// `ledger`: one invoice → the customer's new balance, and a receipt, in one commit.
async fn ledger(client: &Client, item: &Item<Invoice>) -> Result<(), Error> {
    let i = &item.value;
    let (balance, version) =
        client.state("shared/ledger").get_versioned::<u64>(&i.customer).await?.unwrap_or((0, 0));
    let receipt = Receipt { order: i.order, customer: i.customer.clone(), balance: balance + i.cents };
    item.commit()
        .compare_and_set("shared/ledger", &i.customer, &receipt.balance, version)
        .append("receipts", &receipt)
        .send()
        .await
}

/// Runs `step` on each item of `input`'s cursor `cursor`, until the stream ends or fails.
async fn run_stage<T, F, Fut>(
    client: &Client,
    input: &str,
    cursor: &str,
    config: CursorConfig,
    work: Duration,
    step: F,
) -> Result<(), Error>
where
    T: serde::de::DeserializeOwned + Send + 'static,
    F: Fn(Item<T>) -> Fut,
    Fut: Future<Output = (Item<T>, Result<(), Error>)>,
{
    let mut items = client
        .stream(input)
        .listener::<T>()
        .cursor(cursor)
        .config(config)
        .buffer(STAGE_BUFFER)
        .start()
        .await?;
    eprintln!("pipeline: pid {} runs {cursor} on {input}", std::process::id());
    while let Some(item) = items.next().await {
        let item = item?;
        if !work.is_zero() {
            tokio::time::sleep(work).await;
        }
        let (seq, deliveries) = (item.seq, item.deliveries);
        match step(item).await {
            (_, Ok(())) => eprintln!(
                "pipeline: pid {} {cursor} committed #{seq} (delivery {deliveries})",
                std::process::id()
            ),
            // Nothing was applied: another process moved the state on (or took the item).
            // Hand it back; it is processed again on fresh state.
            (item, Err(Error::Refused { message, .. })) => {
                eprintln!("pipeline: {cursor} #{seq} not committed ({message}); again");
                item.nack();
            }
            // Perhaps applied (the fabric recognises a repeat): it will not come again.
            (_, Err(Error::Unknown(message))) => eprintln!("pipeline: {cursor} #{seq}: {message}"),
            (_, Err(e)) => return Err(e),
        }
    }
    Ok(())
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
    let client = Client::new(args.endpoints)?;
    streams(&client).await?;
    match args.command {
        Command::Stage { stage, work_ms, ack_wait_ms } => {
            let config = CursorConfig::new().ack_wait(Duration::from_millis(ack_wait_ms));
            let work = Duration::from_millis(work_ms);
            let run = async {
                match stage {
                    Stage::Enrich => {
                        run_stage(&client, "orders", "enrich", config, work, |item| async {
                            let result = enrich(&client, &item).await;
                            (item, result)
                        })
                        .await
                    }
                    Stage::Ledger => {
                        run_stage(&client, "invoices", "ledger", config, work, |item| async {
                            let result = ledger(&client, &item).await;
                            (item, result)
                        })
                        .await
                    }
                }
            };
            tokio::select! {
                result = run => result?,
                _ = shutdown_signal() => {}
            }
        }
        Command::Feed { n } => {
            let producer = client.stream("orders").producer("feed", 1);
            let mut appended = 0;
            for id in 1..=n {
                if !producer.append(&order(id)).await?.duplicate {
                    appended += 1;
                }
            }
            println!("fed {n} orders ({appended} new, {} already there)", n - appended);
        }
        Command::Report => {
            let mut orders = 0;
            let mut total = 0;
            for customer in CUSTOMERS {
                let count: u64 =
                    client.state("shared/pipeline").get(&format!("orders-{customer}")).await?.unwrap_or(0);
                let balance: u64 = client.state("shared/ledger").get(customer).await?.unwrap_or(0);
                println!("{customer}: {count} orders, balance {balance} cents");
                orders += count;
                total += balance;
            }
            let receipts = client.stream("receipts").info().await?.last_seq;
            println!("total: {orders} orders, {receipts} receipts, {total} cents");
        }
    }
    Ok(())
}

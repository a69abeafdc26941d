//! The scaler's benchmark: cold starts and scale-up, printed as figures (never asserted).
//!
//! ```text
//!   3 weft nodes (processes) ◄── weft-scaler (process) ──spawns──► scaled replicas
//!            ▲                                                         │ sessions
//!            └──── this benchmark: calls, and the demand watch ◄────────┘
//! ```
//!
//! - **cold**: a call to `work.echo` while `work` runs no replica, until its result: the
//!   demand push, the scaler's decision, the spawn, the replica's session, the dispatch and
//!   the call itself. Each cold call is followed at once by a **warm** one (the replica is
//!   still up), interleaved, so the two are measured under the same load; the ratio is the
//!   cost of starting from zero.
//! - **scale-up**: `burst` (max 8 replicas, one per pending or running call) at zero gets 64
//!   `sleep` calls at once: the time until 8 sessions serve it, and until every call returned.
//!
//! Build the binaries first, in the profile the benchmark runs in:
//!
//! ```text
//! cargo build --release --bins -p weft-fabric -p weft-scaler -p weft-example-scaled
//! cargo bench -p weft-scaler --bench cold_start -- [--rounds 30] [--backend docker --image IMG]
//! ```
//!
//! With `--backend docker` the replicas are containers of `IMG` (built by
//! `examples/compose/build-images.sh`) on the host network.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use weft_agent::{Client, Codec, Demand};
use weft_fabric::testing::{ClusterOptions, NodeCommand, NodeProcess, ProcessCluster};

/// Longest wait for anything the benchmark waits on.
const PATIENCE: Duration = Duration::from_secs(120);
/// Replicas `burst` may have, and the calls sent to it at once.
const BURST_MAX: u32 = 8;
const BURST_CALLS: usize = 64;
/// How long each burst call sleeps in its handler.
const BURST_SLEEP_MS: u64 = 500;

struct Args {
    rounds: usize,
    scale_rounds: usize,
    backend: String,
    image: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args { rounds: 30, scale_rounds: 3, backend: "process".into(), image: None };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--rounds" => args.rounds = value()?.parse().context("--rounds")?,
            "--scale-rounds" => args.scale_rounds = value()?.parse().context("--scale-rounds")?,
            "--backend" => args.backend = value()?,
            "--image" => args.image = Some(value()?),
            // `cargo bench` passes `--bench`.
            "--bench" => {}
            other => bail!("unknown argument {other}; see the module docs of scaler/benches/cold_start.rs"),
        }
    }
    match (args.backend.as_str(), &args.image) {
        ("process", _) => {}
        ("docker", Some(_)) => {}
        ("docker", None) => bail!("--backend docker needs --image (see examples/compose/build-images.sh)"),
        (other, _) => bail!("--backend {other}: process or docker"),
    }
    Ok(args)
}

/// The binaries next to this benchmark's (same profile).
fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("bench dir")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: cargo build --release --bins -p weft-fabric -p weft-scaler -p weft-example-scaled",
            path.display()
        );
    }
    Ok(path)
}

fn agent_table(args: &Args, scaled: &Path, name: &str, extra: &str) -> String {
    let what = match args.backend.as_str() {
        "docker" => {
            format!("backend = \"docker\"\nimage = \"{}\"\n", args.image.as_deref().unwrap_or_default())
        }
        _ => format!("command = \"{}\"\n", scaled.display()),
    };
    format!("\n[agents.{name}]\n{what}{extra}\n")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(name: &str, mut ms: Vec<f64>) -> f64 {
    ms.sort_by(f64::total_cmp);
    let p50 = percentile(&ms, 0.5);
    println!(
        "{name:<28} n={:<3} p50 {:>8.1} ms  p90 {:>8.1} ms  p99 {:>8.1} ms  min {:>8.1} ms  max {:>8.1} ms",
        ms.len(),
        p50,
        percentile(&ms, 0.9),
        percentile(&ms, 0.99),
        ms.first().copied().unwrap_or(f64::NAN),
        ms.last().copied().unwrap_or(f64::NAN),
    );
    p50
}

/// Waits until the agent has no session and nothing pending or running.
async fn wait_for_zero(client: &Client, agent: &str) -> anyhow::Result<()> {
    let mut watch = client.watch_demand(&[agent.to_owned()]);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let demand: Demand = tokio::time::timeout_at(deadline.into(), watch.next())
            .await
            .context("waiting for zero replicas")??;
        if demand.agent(agent).is_some_and(|d| d.sessions.is_empty() && d.pending == 0 && d.running == 0) {
            return Ok(());
        }
    }
}

/// Waits until `n` sessions serve the agent; when that happened.
async fn wait_for_sessions(client: &Client, agent: &str, n: usize) -> anyhow::Result<Instant> {
    let mut watch = client.watch_demand(&[agent.to_owned()]);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let demand = tokio::time::timeout_at(deadline.into(), watch.next())
            .await
            .context("waiting for sessions")??;
        tracing::debug!(sessions = demand.agent(agent).map_or(0, |d| d.sessions.len()), "picture");
        if demand.agent(agent).is_some_and(|d| d.sessions.len() >= n) {
            return Ok(Instant::now());
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEFT_BENCH_TRACE").unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let root = tempfile::tempdir()?;
    let result = run(&args, root.path()).await;
    if result.is_err() {
        // Keep the nodes', the scaler's and the replicas' logs for a look.
        eprintln!("logs kept in {}", root.keep().display());
    }
    result
}

async fn run(args: &Args, root: &Path) -> anyhow::Result<()> {
    let weft = binary("weft")?;
    let scaler_bin = binary("weft-scaler")?;
    let scaled = binary("scaled")?;
    // Log levels of the scaler and its replicas (`WEFT_BENCH_LOG=info` to see what they do).
    let log = std::env::var("WEFT_BENCH_LOG").unwrap_or_else(|_| "warn".into());

    let mut cluster = ProcessCluster::start(ClusterOptions::new(&weft, root, 3).env("RUST_LOG", "warn"))?;
    cluster.wait_for_leader(PATIENCE).await?;
    let endpoints = cluster.addrs().to_vec();
    // `echo` takes any JSON value, which bincode cannot carry.
    let client = Client::builder(endpoints.clone()).codec(Codec::Json).build()?;

    let quoted: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    let mut config = format!(
        "endpoints = [{}]\ngroup = \"bench-{}\"\nrun_dir = \"{}\"\n",
        quoted.join(", "),
        // A group of its own: a scaler adopts what runs on this host under its group's name.
        std::process::id(),
        root.join("run").display()
    );
    if args.backend == "docker" {
        config += "\n[docker]\nnetwork = \"host\"\n";
    }
    let agent_env = format!("env = {{ RUST_LOG = \"{log}\" }}\n");
    config += &agent_table(
        args,
        &scaled,
        "work",
        &format!("{agent_env}max_replicas = 1\nidle_ms = 300\ndrain_grace_ms = 2000"),
    );
    config += &agent_table(
        args,
        &scaled,
        "burst",
        &format!(
            "env = {{ RUST_LOG = \"{log}\", SCALED_AGENT = \"burst\" }}\nmax_replicas = {BURST_MAX}\nbacklog_per_replica = 1\ncapacity = 1\nidle_ms = 500\n\
             drain_grace_ms = 2000\nmax_starts_per_interval = {BURST_MAX}\nstart_interval_ms = 1000"
        ),
    );
    let config_path = root.join("scaler.toml");
    std::fs::write(&config_path, &config)?;
    let mut scaler: NodeProcess = NodeCommand::new(&scaler_bin, root.join("scaler.log"))
        .arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", &log)
        .spawn()?;

    // Stop the scaler gracefully whatever happens, so that it stops its replicas (a kill -9
    // would leave them running).
    let measured = measure(args, &client).await;
    scaler.stop(Duration::from_secs(10)).await?;
    cluster.kill9_all();
    measured
}

async fn measure(args: &Args, client: &Client) -> anyhow::Result<()> {
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    println!(
        "weft-scaler cold start: 3 nodes, backend {}, {} rounds, {} cores ({machine})",
        args.backend,
        args.rounds,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );

    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for round in 0..args.rounds {
        wait_for_zero(client, "work").await.with_context(|| format!("round {round}"))?;
        let t = Instant::now();
        let _: serde_json::Value =
            client.request("work", "echo").args(&round).timeout(PATIENCE).call().await?;
        cold.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let _: serde_json::Value =
            client.request("work", "echo").args(&round).timeout(PATIENCE).call().await?;
        warm.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let cold_p50 = summary("cold call (from zero)", cold);
    let warm_p50 = summary("warm call (replica up)", warm);
    println!("cold / warm p50 ratio: {:.1}x", cold_p50 / warm_p50);

    let mut to_max = Vec::new();
    let mut all_done = Vec::new();
    for round in 0..args.scale_rounds {
        wait_for_zero(client, "burst").await.with_context(|| format!("scale round {round}"))?;
        let sessions = {
            let client = client.clone();
            tokio::spawn(async move { wait_for_sessions(&client, "burst", BURST_MAX as usize).await })
        };
        // Let the watch register before the backlog appears.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = Instant::now();
        let calls: Vec<_> = (0..BURST_CALLS)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    client
                        .request("burst", "sleep")
                        .args(&BURST_SLEEP_MS)
                        .timeout(PATIENCE)
                        .call::<u64>()
                        .await
                })
            })
            .collect();
        let at_max = sessions.await??;
        to_max.push(at_max.saturating_duration_since(t).as_secs_f64() * 1e3);
        for c in calls {
            c.await??;
        }
        all_done.push(t.elapsed().as_secs_f64() * 1e3);
    }
    summary(&format!("scale-up 0 -> {BURST_MAX} replicas"), to_max);
    summary(&format!("{BURST_CALLS} x sleep {BURST_SLEEP_MS} ms all done"), all_done);
    println!(
        "(ideal for the burst with {BURST_MAX} replicas at once: {} ms of handler time)",
        BURST_CALLS as u64 / BURST_MAX as u64 * BURST_SLEEP_MS
    );

    Ok(())
}

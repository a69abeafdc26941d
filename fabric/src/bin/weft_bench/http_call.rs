//! `weft-bench --only http-call`: the round trip of one call through the HTTP/JSON API
//! (`POST /v1/call/bench/echo`, HTTP/1.1 keep-alive) next to the same call through gRPC (the
//! SDK's `Client::call`, JSON codec), one caller, on the same cluster and the same agent.
//! The two alternate in blocks, the first block of each round switching sides, so drift in the
//! machine's load falls on both alike; each figure is over every block of its side.
//!
//! ```text
//!   caller ──POST /v1/call──► leader ─┐                    ┌─► worker (this process): echo
//!   caller ──gRPC Call──────► leader ─┴─ create, assign ───┘        │
//!          ◄──────────────── result ◄─────── complete ◄─────────────┘
//! ```

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use weft_agent::{Agent, Client, Codec, Context, Fail, Worker};

use crate::Args;
use crate::cluster::{Cluster, Scratch};
use crate::report::{median, ms, percentile_ms};

/// Calls of one side in a block.
const BLOCK: usize = 50;
/// Blocks of each side.
const ROUNDS: usize = 8;
/// Calls of each side before measuring.
const WARMUP: usize = 20;

/// The figures of one side on one cluster size.
pub struct Side {
    pub nodes: usize,
    pub http: bool,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub calls: usize,
}

/// A keep-alive HTTP/1.1 connection that posts calls.
struct Http {
    reader: BufReader<TcpStream>,
    host: String,
}

impl Http {
    async fn connect(addr: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("connect to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self { reader: BufReader::new(stream), host: addr.to_owned() })
    }

    /// Posts `body` to `path`; the status and body of the answer.
    async fn post(&mut self, path: &str, body: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.reader.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        self.reader.read_line(&mut line).await?;
        let status: u16 = line.split_whitespace().nth(1).context("a status line")?.parse()?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line).await?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut answer = vec![0; length];
        self.reader.read_exact(&mut answer).await?;
        Ok((status, answer))
    }
}

/// Every cluster size of `--nodes`: the HTTP and the gRPC round trip, interleaved.
pub async fn measure(args: &Args, weft: &Path, scratch: &Scratch) -> anyhow::Result<Vec<Side>> {
    let mut sides = Vec::new();
    for &n in &args.nodes {
        let root = scratch.path.join(format!("http-call-{n}nodes-{}", rand_suffix()));
        let mut cluster = Cluster::start(weft, &root, n, args.snapshot_after_entries, args.keep)?;
        let leader = cluster.wait_for_leader().await?;
        let addr = cluster.addr(leader)?.to_owned();
        let worker = Worker::builder(vec![addr.clone()])
            .agent(
                Agent::new("bench")
                    .delegate("echo", |_: Context, v: serde_json::Value| async move { Ok::<_, Fail>(v) }),
            )
            .capacity(4)
            .build()?;
        let stopper = worker.stopper();
        let running = tokio::spawn(worker.run());
        let client = Client::builder(vec![addr.clone()]).codec(Codec::Json).build()?;
        let mut http = Http::connect(&addr).await?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while client.call::<_, u64>("bench", "echo", &0u64).await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "the bench worker did not answer within 15 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut grpc_ns = Vec::new();
        let mut http_ns = Vec::new();
        let mut seq = 0u64;
        for round in 0..=ROUNDS {
            let order = if round % 2 == 0 { [false, true] } else { [true, false] };
            for use_http in order {
                let calls = if round == 0 { WARMUP } else { BLOCK };
                for _ in 0..calls {
                    seq += 1;
                    let started = Instant::now();
                    if use_http {
                        let (status, body) =
                            http.post("/v1/call/bench/echo?timeout_ms=10000", &seq.to_string()).await?;
                        if status != 200 {
                            bail!("HTTP call answered {status}: {}", String::from_utf8_lossy(&body));
                        }
                    } else {
                        let echoed: u64 = client.call("bench", "echo", &seq).await?;
                        anyhow::ensure!(echoed == seq, "echo returned {echoed}, not {seq}");
                    }
                    let took = started.elapsed().as_nanos() as u64;
                    if round > 0 {
                        if use_http { http_ns.push(took) } else { grpc_ns.push(took) }
                    }
                }
            }
        }
        stopper.stop();
        let _ = running.await;
        for (is_http, mut ns) in [(false, grpc_ns), (true, http_ns)] {
            ns.sort_unstable();
            let side = Side {
                nodes: n,
                http: is_http,
                p50_ms: percentile_ms(&ns, 0.50),
                p99_ms: percentile_ms(&ns, 0.99),
                calls: ns.len(),
            };
            eprintln!(
                "   {n} node(s), {}: p50 {:.3} ms, p99 {:.3} ms over {} calls",
                if is_http { "HTTP" } else { "gRPC" },
                side.p50_ms,
                side.p99_ms,
                side.calls
            );
            sides.push(side);
        }
        cluster.report_log_problems();
    }
    Ok(sides)
}

/// The sides of each cluster size, HTTP next to gRPC, with the ratio of the p50s.
pub fn markdown(sides: &[Side]) -> String {
    let mut out = String::from(
        "\n## A call's round trip: HTTP/JSON API next to gRPC (1 caller, interleaved blocks)\n\n\
         | nodes | path | p50 ms | p99 ms | calls | p50 HTTP / gRPC |\n|---:|---|---:|---:|---:|---:|\n",
    );
    // Medians over runs (a run measures each side of each size once).
    for n in sides.iter().map(|s| s.nodes).collect::<std::collections::BTreeSet<_>>() {
        let of =
            |http: bool| -> Vec<&Side> { sides.iter().filter(|s| s.nodes == n && s.http == http).collect() };
        let (grpc, http) = (of(false), of(true));
        let ratios: Vec<f64> = grpc.iter().zip(&http).map(|(g, h)| h.p50_ms / g.p50_ms).collect();
        for (is_http, side) in [(false, &grpc), (true, &http)] {
            let _ = writeln!(
                out,
                "| {n} | {} | {} | {} | {} | {} |",
                if is_http { "HTTP `POST /v1/call`" } else { "gRPC `Executions/Call` (SDK)" },
                ms(median(side.iter().map(|s| s.p50_ms).collect())),
                ms(median(side.iter().map(|s| s.p99_ms).collect())),
                side.iter().map(|s| s.calls).sum::<usize>(),
                if is_http { format!("{:.2}", median(ratios.clone())) } else { String::new() }
            );
        }
    }
    let _ = writeln!(
        out,
        "\nMedians over {} run(s); the ratio is the median of each run's ratio.",
        sides.len()
            / 2
            / sides.iter().map(|s| s.nodes).collect::<std::collections::BTreeSet<_>>().len().max(1)
    );
    out
}

/// A suffix that keeps the data dirs of repeated runs apart.
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

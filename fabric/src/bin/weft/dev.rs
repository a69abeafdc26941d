//! `weft dev`: a local cluster in one process, for trying Weft and developing agents.

use std::path::PathBuf;

use weft_fabric::config::DEFAULT_LISTEN;
use weft_fabric::{Config, Node};

/// Most nodes `weft dev` starts.
pub const MAX_DEV_NODES: u8 = 9;

/// Flags of `weft dev`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many nodes to start (1 to 9).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=MAX_DEV_NODES as i64))]
    pub nodes: u8,
    /// Where the nodes keep their data (one folder per node). Data survives restarts.
    #[arg(long, value_name = "DIR", default_value = ".weft-dev")]
    pub data_dir: PathBuf,
    /// Port of node 1; node N listens on PORT + N - 1.
    #[arg(long, default_value_t = 7400)]
    pub port: u16,
}

/// Starts the cluster, prints how to reach it, and runs until ctrl-c.
pub async fn run(args: Args) -> anyhow::Result<i32> {
    let n = u16::from(args.nodes);
    anyhow::ensure!(
        args.port.checked_add(n - 1).is_some(),
        "--port {} leaves no room for {n} nodes below 65536",
        args.port
    );
    let addr = |i: u16| format!("127.0.0.1:{}", args.port + i - 1);
    let members = if n == 1 {
        String::new()
    } else {
        (1..=n).map(|i| format!("{i}={}", addr(i))).collect::<Vec<_>>().join(",")
    };
    let mut nodes = Vec::new();
    for i in 1..=n {
        let config = Config {
            node_id: u64::from(i),
            cluster: "dev".into(),
            data_dir: args.data_dir.join(format!("node-{i}")),
            listen: addr(i),
            initial_members: members.clone(),
            ..Config::default()
        };
        match Node::start(config).await {
            Ok(node) => nodes.push(node),
            Err(e) => {
                eprintln!("error: node {i}: {e}");
                for node in nodes {
                    node.shutdown().await;
                }
                return Ok(1);
            }
        }
    }
    // Up means every node follows the same leader, so the first command finds it.
    let agreed = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        loop {
            let leaders: Vec<_> = nodes.iter().map(|n| n.raft().metrics().borrow().current_leader).collect();
            if leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0]) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    if agreed.is_err() {
        for node in nodes {
            node.shutdown().await;
        }
        anyhow::bail!("the nodes did not agree on a leader within 15 s");
    }
    let endpoint = addr(1);
    let export = if endpoint == DEFAULT_LISTEN {
        String::new()
    } else {
        format!("  export WEFT_ENDPOINT={endpoint}\n")
    };
    use std::fmt::Write as _;
    tracing::warn!("weft dev runs open: no TLS and no authentication, on 127.0.0.1 only");
    let mut banner = format!("Weft dev cluster 'dev' is up with {n} node(s):\n");
    for (i, node) in nodes.iter().enumerate() {
        let data = args.data_dir.join(format!("node-{}", i + 1));
        let _ = writeln!(banner, "  node {}  grpc+http {}  data {}", node.id(), node.addr(), data.display());
    }
    let _ = writeln!(
        banner,
        "\nIt runs open: no TLS and no authentication. It listens on 127.0.0.1 only, so only this \
         machine reaches it;\nfor anything else run `weft node` with TLS (docs/operations.md, `weft certs`)."
    );
    let _ = writeln!(
        banner,
        "\nTry, in another terminal:\n{export}  weft status\n  weft state put shared/demo greeting hello\n  \
         weft state get shared/demo greeting\n  curl http://{endpoint}/metrics\n\nPress ctrl-c to stop \
         (data stays in {}).",
        args.data_dir.display()
    );
    // Best effort: the cluster keeps running when nobody reads the banner (`weft dev | head`).
    let _ = std::io::Write::write_all(&mut std::io::stdout(), banner.as_bytes());
    crate::shutdown_signal().await;
    for node in nodes {
        node.shutdown().await;
    }
    Ok(0)
}

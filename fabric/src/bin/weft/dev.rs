//! `weft dev`: a local cluster in one process, for trying Weft and developing agents.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use weft_fabric::auth::Credential;
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
    /// Require bearer tokens (auth on). An admin token is made once and kept in
    /// DATA_DIR/admin.token; its path is printed (use it with --auth-token-file or
    /// WEFT_TOKEN_FILE).
    #[arg(long)]
    pub auth: bool,
}

/// The file in the data dir that holds `weft dev --auth`'s admin token.
const ADMIN_TOKEN_FILE: &str = "admin.token";

/// The admin token of `data_dir`: read if it was made before, else made and written
/// (readable by this user only). Returns its file and its id.
fn admin_token(data_dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if path.exists() {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let credential = Credential::parse(&text).with_context(|| format!("{}", path.display()))?;
        return Ok((path, credential.id().to_owned()));
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let credential = Credential::generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut file, format!("{}\n", credential.reveal()).as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((path, credential.id().to_owned()))
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
    let token = if args.auth { Some(admin_token(&args.data_dir)?) } else { None };
    let mut nodes = Vec::new();
    for i in 1..=n {
        let config = Config {
            node_id: u64::from(i),
            cluster: "dev".into(),
            data_dir: args.data_dir.join(format!("node-{i}")),
            listen: addr(i),
            initial_members: members.clone(),
            auth: args.auth,
            auth_bootstrap_token_file: token.as_ref().map(|(path, _)| path.clone()),
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
    // Up means every node follows the same leader, so the first command finds it (and, with
    // auth, node 1 holds the admin token, so the first command is let in).
    let agreed = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        loop {
            let leaders: Vec<_> = nodes.iter().map(|n| n.raft().metrics().borrow().current_leader).collect();
            let token_in =
                token.as_ref().is_none_or(|(_, id)| nodes[0].applied().read(|a| a.grid.token(id).is_some()));
            if leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0]) && token_in {
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
    match &token {
        Some((path, _)) => tracing::warn!(
            token_file = %path.display(),
            "weft dev runs without TLS, on 127.0.0.1 only; requests need the admin token or one made with it"
        ),
        None => tracing::warn!("weft dev runs open: no TLS and no authentication, on 127.0.0.1 only"),
    }
    let mut banner = format!("Weft dev cluster 'dev' is up with {n} node(s):\n");
    for (i, node) in nodes.iter().enumerate() {
        let data = args.data_dir.join(format!("node-{}", i + 1));
        let _ = writeln!(banner, "  node {}  grpc+http {}  data {}", node.id(), node.addr(), data.display());
    }
    match &token {
        Some((path, _)) => {
            let _ = writeln!(
                banner,
                "\nIt requires tokens (auth on). The admin token is in {0} (keep it secret):\n  export \
                 WEFT_TOKEN_FILE={0}\nIt runs without TLS and listens on 127.0.0.1 only, so only this machine \
                 reaches it;\nfor anything else run `weft node` with TLS (docs/operations.md, `weft certs`).",
                path.display()
            );
        }
        None => {
            let _ = writeln!(
                banner,
                "\nIt runs open: no TLS and no authentication. It listens on 127.0.0.1 only, so only this \
                 machine reaches it;\nfor anything else run `weft node` with TLS and auth (docs/operations.md)."
            );
        }
    }
    let (export, curl_auth) = match &token {
        Some((path, _)) => (
            format!("{export}  export WEFT_TOKEN_FILE={}\n", path.display()),
            format!("-H \"authorization: Bearer $(cat {})\" ", path.display()),
        ),
        None => (export, String::new()),
    };
    let _ = writeln!(
        banner,
        "\nTry, in another terminal:\n{export}  weft status\n  weft state put shared/demo greeting hello\n  \
         weft state get shared/demo greeting\n  curl {curl_auth}http://{endpoint}/metrics\n\nPress ctrl-c to \
         stop (data stays in {}).",
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

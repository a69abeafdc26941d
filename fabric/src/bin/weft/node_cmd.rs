//! `weft node`: one fabric node.

use std::path::PathBuf;

use serde::Serialize;
use weft_fabric::{Config, Node};

use crate::render::out;

/// Flags of `weft node`. Each overrides the config file and `WEFT_*` environment.
#[derive(Debug, clap::Args, Serialize)]
pub struct Args {
    /// TOML configuration file (see `--dump-config` for every key).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Print the merged configuration as TOML and exit.
    #[arg(long)]
    #[serde(skip)]
    pub dump_config: bool,
    /// This node's id (1 or more); by default the id the data dir records, or a new random one.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
    /// The cluster's name; peers and data dirs of other clusters are refused.
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Where to keep the Raft log, vote and snapshots.
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// TCP address for gRPC and HTTP (default 127.0.0.1:7400).
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Address others use to reach this node (default: the listen address).
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// Static membership, e.g. 1=10.0.0.1:7400,2=10.0.0.2:7400,3=10.0.0.3:7400.
    #[arg(long, value_name = "ID=HOST:PORT,...")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_members: Option<String>,
    /// Gossip seeds: any node(s) of the cluster, e.g. 10.0.0.1:7400,10.0.0.2:7400.
    #[arg(long, value_name = "HOST:PORT,...")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seeds: Option<String>,
    /// Form a new cluster once this many nodes see each other (without it, seeds only join).
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap_expect: Option<u32>,
    /// Voters the cluster keeps (odd; default 3); other nodes are learners.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voters: Option<u32>,
    /// Gossip timing preset: lan (default) or test.
    #[arg(long, value_name = "PRESET")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip_preset: Option<String>,
    /// File of gossip keys, one base64 key per line, the sending one first (`weft gossip-key`
    /// makes one); without it (or WEFT_GOSSIP_KEYS) gossip is not authenticated.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip_key_file: Option<PathBuf>,
    /// Encrypt gossip with the gossip key (ChaCha20-Poly1305) instead of only authenticating it.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub gossip_encrypt: bool,
    /// How long a node must be down before the leader removes it (e.g. 30000).
    #[arg(long, value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_node_grace_ms: Option<u64>,
    /// PEM file of the cluster CA; with --tls-cert-file and --tls-key-file turns TLS on (and
    /// mutual TLS between nodes). `weft certs` makes development files.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM file of this node's certificate (a node certificate of the CA: `weft certs node`).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM file of the certificate's private key.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// Run without TLS or auth even on an address other machines can reach (without it, such
    /// a node refuses to start).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// Require a bearer token on every request (`weft tokens`); turn it on on every node.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub auth: bool,
    /// File holding the first admin token (`weft tokens generate` makes one): created in the
    /// grid by the leader unless it is there already. Needs --auth.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_bootstrap_token_file: Option<PathBuf>,
}

/// Runs a node until ctrl-c or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<i32> {
    let config = match Config::load(args.config.as_deref(), &args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(2);
        }
    };
    if args.dump_config {
        out!("{}", config.to_toml());
        return Ok(0);
    }
    let leave = config.leave_on_shutdown;
    let node = match Node::start(config).await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(1);
        }
    };
    crate::shutdown_signal().await;
    if leave {
        node.leave().await;
    } else {
        node.shutdown().await;
    }
    Ok(0)
}

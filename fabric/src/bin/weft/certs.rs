//! `weft certs ca|node|client`: development certificates as PEM files in one directory.
//!
//!   weft certs ca                                   # certs/ca.pem, certs/ca.key
//!   weft certs node n1 --host 10.0.0.1 --host n1    # certs/n1.pem, certs/n1.key
//!   weft certs client alice                         # certs/alice.pem, certs/alice.key

use std::path::PathBuf;

use anyhow::Context as _;
use weft_fabric::tls::issue::{self, Kind};

use crate::render::outln;

/// Flags of `weft certs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the files go, and where `node` and `client` find the CA (DIR/ca.pem, DIR/ca.key).
    #[arg(long, value_name = "DIR", default_value = "certs", global = true)]
    pub dir: PathBuf,
    /// Days the certificate is valid (default: 3650 for a CA, 365 otherwise).
    #[arg(long, value_name = "N", global = true)]
    pub days: Option<u32>,
    /// Replace files that exist already.
    #[arg(long, global = true)]
    pub force: bool,
    #[command(subcommand)]
    pub op: Op,
}

/// What to make.
#[derive(Debug, clap::Subcommand)]
pub enum Op {
    /// A development CA: DIR/ca.pem and DIR/ca.key. Give ca.pem to every node
    /// (--tls-ca-file) and client (--tls-ca, WEFT_TLS_CA); keep ca.key away from them.
    Ca {
        /// The CA's common name.
        #[arg(long, default_value = "Weft development CA")]
        name: String,
    },
    /// A node certificate signed by the CA: DIR/NAME.pem and DIR/NAME.key. It carries the
    /// node marker (URI SAN urn:weft:node) that node-to-node services require, and is valid
    /// for server and client authentication.
    Node {
        /// The node's name: the files' names and the certificate's common name.
        name: String,
        /// A DNS name or IP address clients use to reach the node (repeat, or comma-separate).
        /// Default: localhost, 127.0.0.1 and ::1.
        #[arg(long = "host", value_name = "HOST", value_delimiter = ',')]
        hosts: Vec<String>,
    },
    /// A client certificate signed by the CA (for agents and tools; optional: clients that
    /// present none are let in too): DIR/NAME.pem and DIR/NAME.key.
    Client {
        /// The client's name: the files' names and the certificate's common name.
        name: String,
    },
}

/// Default validity of a CA, in days.
const CA_DAYS: u32 = 3_650;
/// Default validity of a node or client certificate, in days.
const LEAF_DAYS: u32 = 365;

/// Makes the certificate and writes its files.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let (name, issued, what) = match &args.op {
        Op::Ca { name } => ("ca", issue::ca(name, args.days.unwrap_or(CA_DAYS))?, "CA".to_owned()),
        Op::Node { name, hosts } => {
            let hosts = if hosts.is_empty() {
                vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()]
            } else {
                hosts.clone()
            };
            let (ca_cert, ca_key) = read_ca(&args.dir)?;
            let issued =
                issue::leaf(Kind::Node, &ca_cert, &ca_key, name, &hosts, args.days.unwrap_or(LEAF_DAYS))?;
            (name.as_str(), issued, format!("node certificate for {}", hosts.join(", ")))
        }
        Op::Client { name } => {
            let (ca_cert, ca_key) = read_ca(&args.dir)?;
            let issued =
                issue::leaf(Kind::Client, &ca_cert, &ca_key, name, &[], args.days.unwrap_or(LEAF_DAYS))?;
            (name.as_str(), issued, "client certificate".to_owned())
        }
    };
    let (cert, key) = issue::write(&args.dir, name, &issued, args.force)?;
    outln!("wrote {what}: {} (key {}, mode 0600)", cert.display(), key.display());
    Ok(0)
}

/// The CA certificate and key in `dir`, as PEM text.
fn read_ca(dir: &std::path::Path) -> anyhow::Result<(String, String)> {
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read_to_string(&path).with_context(|| {
            format!("cannot read {} (make a CA first: weft certs ca --dir {})", path.display(), dir.display())
        })
    };
    Ok((read("ca.pem")?, read("ca.key")?))
}

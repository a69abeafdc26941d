//! `weft leases get|release`: who holds a lease (the scaler's active replica holds one), and
//! giving one up by hand.

use serde_json::json;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::leases_client::LeasesClient;

use crate::connect::{self, consistency};
use crate::render::{fail, outln, until};

/// `weft leases` and its operations.
pub type Args = connect::Group<Op>;

/// Operations on leases: named, time-limited ownership with fencing tokens.
#[derive(Debug, clap::Subcommand)]
pub enum Op {
    /// Show who holds a lease, its fencing token and when it runs out unless renewed (exit
    /// status 1 when nobody holds it).
    Get {
        /// The lease's name.
        name: String,
        /// Read the contacted node's replica without asking the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Give a lease up now, so a standby may take it without waiting for it to run out. Only
    /// the current grant's token releases it (see `weft leases get`); exit status 1 when the
    /// lease was not held with that token.
    Release {
        /// The lease's name.
        name: String,
        /// The fencing token of the grant to release.
        #[arg(long)]
        token: u64,
    },
}

fn grant_json(g: &pb::LeaseGrant) -> serde_json::Value {
    json!({
        "name": g.name,
        "held": true,
        "holder": g.holder,
        "token": g.token,
        "expires_at_ms": g.expires_at_ms,
    })
}

/// `weft leases ...`.
pub async fn run(args: Args) -> anyhow::Result<i32> {
    let json_out = args.conn.json;
    let mut client = LeasesClient::new(connect::channel(&args.conn.endpoint)?);
    match args.op {
        Op::Get { name, stale } => {
            let req = pb::GetLeaseRequest { name: name.clone(), consistency: consistency(stale) };
            match client.get(req).await {
                Err(e) => Ok(fail(e, json_out)),
                Ok(r) => match r.into_inner().grant {
                    Some(g) if json_out => {
                        outln!("{}", grant_json(&g));
                        Ok(0)
                    }
                    Some(g) => {
                        outln!(
                            "{} held by {}  (token {}, runs out at {} ms, in {} unless renewed)",
                            g.name,
                            g.holder,
                            g.token,
                            g.expires_at_ms,
                            until(g.expires_at_ms)
                        );
                        Ok(0)
                    }
                    None => {
                        if json_out {
                            outln!("{}", json!({"name": name, "held": false}));
                        } else {
                            eprintln!("{name}: not held");
                        }
                        Ok(1)
                    }
                },
            }
        }
        Op::Release { name, token } => {
            match client.release(pb::ReleaseLeaseRequest { name: name.clone(), token }).await {
                Err(e) => Ok(fail(e, json_out)),
                Ok(r) => {
                    let released = r.into_inner().released;
                    if json_out {
                        outln!("{}", json!({"name": name, "released": released}));
                    } else if released {
                        outln!("released {name}");
                    } else {
                        eprintln!(
                            "{name}: not released: it is not held with token {token} (already lost or released)"
                        );
                    }
                    Ok(if released { 0 } else { 1 })
                }
            }
        }
    }
}

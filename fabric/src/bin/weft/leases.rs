//! `weft locks acquire|renew|release|get|list` (also `weft leases`): named locks with fencing
//! tokens, kept in the grid as leases. Acquire may wait in the lock's queue (first come first
//! granted); get and list show who holds a lock and who waits for it. The scaler's active
//! replica holds one.

use serde_json::json;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::leases_client::LeasesClient;

use crate::connect::{self, consistency};
use crate::render::{fail, outln, until};

/// `weft locks` and its operations.
pub type Args = connect::Group<Op>;

/// Operations on locks (leases): named, time-limited ownership with fencing tokens.
#[derive(Debug, clap::Subcommand)]
pub enum Op {
    /// Take a lock for a holder for `--ttl`, with a new fencing token; asked by the holder
    /// that holds it, renew it. Held by another: exit status 1 at once, or with `--wait`,
    /// wait in the lock's queue (first come first granted) until it is granted (printed, exit
    /// status 0) or the wait runs out (exit status 1).
    Acquire {
        /// The lock's name.
        name: String,
        /// Who takes it: a name unique to the process that will hold it.
        #[arg(long)]
        holder: String,
        /// How long the grant lasts unless renewed (500ms, 30s, 5m; at most 1h).
        #[arg(long, value_name = "DUR", value_parser = crate::args::parse_duration_ms)]
        ttl: u64,
        /// Wait this long in the lock's queue while another holds it (at most 10m).
        #[arg(long, value_name = "DUR", value_parser = crate::args::parse_positive_duration_ms)]
        wait: Option<u64>,
    },
    /// Extend the grant `--token` of a lock to `--ttl` from now (exit status 1 when the lock
    /// was lost: it ran out, was released, or another holder took it).
    Renew {
        /// The lock's name.
        name: String,
        /// The fencing token of the grant to renew.
        #[arg(long)]
        token: u64,
        /// How long from now the grant lasts unless renewed again.
        #[arg(long, value_name = "DUR", value_parser = crate::args::parse_duration_ms)]
        ttl: u64,
    },
    /// List the locks held now (that this caller may use), each with its holder, token, when
    /// it runs out and how many wait for it.
    List {
        /// Start after this name.
        #[arg(long, default_value = "")]
        after: String,
        /// Most locks to list (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Read the contacted node's replica without asking the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Show who holds a lock, its fencing token, when it runs out unless renewed, and who
    /// waits for it (exit status 1 when nobody holds it).
    Get {
        /// The lease's name.
        name: String,
        /// Read the contacted node's replica without asking the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Give a lease up now, so a standby may take it without waiting for it to run out. Only
    /// the current grant's token releases it (see `weft locks get`); exit status 1 when the
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

/// Prints a grant an acquire or a renew answered.
fn print_grant(g: &pb::LeaseGrant, json_out: bool) {
    if json_out {
        outln!("{}", grant_json(g));
    } else {
        outln!(
            "{} held by {}  (token {}, runs out at {} ms, in {} unless renewed)",
            g.name,
            g.holder,
            g.token,
            g.expires_at_ms,
            until(g.expires_at_ms)
        );
    }
}

/// `weft locks ...`.
pub async fn run(args: Args) -> anyhow::Result<i32> {
    let json_out = args.conn.json;
    // An acquire that waits may take its wait and then some.
    let timeout = match &args.op {
        Op::Acquire { wait: Some(wait_ms), .. } => connect::waiting(*wait_ms),
        _ => Some(connect::REQUEST_TIMEOUT),
    };
    let mut client: LeasesClient<_> = connect::client(&args.conn.endpoint, timeout)?;
    match args.op {
        Op::Acquire { name, holder, ttl, wait } => {
            let req = pb::AcquireLeaseRequest { name, holder, ttl_ms: ttl, wait_ms: wait.unwrap_or(0) };
            match client.acquire(req).await {
                Err(e) => Ok(fail(e, json_out)),
                Ok(r) => {
                    print_grant(&r.into_inner(), json_out);
                    Ok(0)
                }
            }
        }
        Op::Renew { name, token, ttl } => {
            match client.renew(pb::RenewLeaseRequest { name, token, ttl_ms: ttl }).await {
                Err(e) => Ok(fail(e, json_out)),
                Ok(r) => {
                    print_grant(&r.into_inner(), json_out);
                    Ok(0)
                }
            }
        }
        Op::List { after, limit, stale } => {
            let req = pb::ListLeasesRequest { after, limit, consistency: consistency(stale) };
            match client.list(req).await {
                Err(e) => Ok(fail(e, json_out)),
                Ok(r) => {
                    let r = r.into_inner();
                    if json_out {
                        let locks: Vec<serde_json::Value> = r
                            .leases
                            .iter()
                            .filter_map(|l| {
                                let mut v = grant_json(l.grant.as_ref()?);
                                v["waiting"] = json!(l.waiting);
                                Some(v)
                            })
                            .collect();
                        outln!("{}", json!({"locks": locks, "next": r.next}));
                    } else {
                        for l in &r.leases {
                            let Some(g) = &l.grant else { continue };
                            outln!(
                                "{}  held by {}  token {}  runs out in {}  {} waiting",
                                g.name,
                                g.holder,
                                g.token,
                                until(g.expires_at_ms),
                                l.waiting
                            );
                        }
                        if !r.next.is_empty() {
                            outln!("(more: --after {})", r.next);
                        }
                    }
                    Ok(0)
                }
            }
        }
        Op::Get { name, stale } => {
            let req = pb::GetLeaseRequest { name: name.clone(), consistency: consistency(stale) };
            match client.get(req).await {
                Err(e) => Ok(fail(e, json_out)),
                Ok(r) => match r.into_inner() {
                    pb::GetLeaseResponse { grant: Some(g), waiters } if json_out => {
                        let mut v = grant_json(&g);
                        v["waiters"] = waiters
                            .iter()
                            .map(|w| json!({"holder": w.holder, "until_ms": w.until_ms}))
                            .collect();
                        outln!("{v}");
                        Ok(0)
                    }
                    pb::GetLeaseResponse { grant: Some(g), waiters } => {
                        print_grant(&g, false);
                        for (i, w) in waiters.iter().enumerate() {
                            outln!("  waiting {}: {} (for {} more)", i + 1, w.holder, until(w.until_ms));
                        }
                        Ok(0)
                    }
                    // Run out, with holders waiting: the next tick hands it to the first.
                    pb::GetLeaseResponse { grant: None, waiters } if !waiters.is_empty() => {
                        if json_out {
                            let waiters: Vec<serde_json::Value> = waiters
                                .iter()
                                .map(|w| json!({"holder": w.holder, "until_ms": w.until_ms}))
                                .collect();
                            outln!("{}", json!({"name": name, "held": false, "waiters": waiters}));
                        } else {
                            outln!("{name}: not held; handed to the first waiter next");
                            for (i, w) in waiters.iter().enumerate() {
                                outln!("  waiting {}: {} (for {} more)", i + 1, w.holder, until(w.until_ms));
                            }
                        }
                        Ok(1)
                    }
                    pb::GetLeaseResponse { grant: None, .. } => {
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

//! `weft-bench --only membership`: gossip membership of real `weft node` processes.
//!
//! For each gossip preset (lan, test):
//! - time to form a cluster of 3, 5 and 9 nodes started together with one seed and
//!   `--bootstrap-expect 3`, until one leader has every node in its Raft membership;
//! - on a 5-node cluster, gossip bytes per second per node while idle;
//! - `kill -9` of a voter that is not the leader: time until the leader's gossip declares it
//!   down, and until the leader has replaced it in Raft (grace [`GRACE_MS`]).

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use weft_fabric::testing::status_at;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::cluster_client::ClusterClient;

use crate::cluster::{Cluster, Scratch};
use crate::probes::metrics_text;
use crate::report::median;

/// `dead_node_grace_ms` of the nodes in the failure measurement.
pub const GRACE_MS: u64 = 5_000;
/// Cluster sizes whose formation is timed.
const SIZES: [usize; 3] = [3, 5, 9];
/// How long gossip traffic is sampled.
const TRAFFIC_WINDOW: Duration = Duration::from_secs(10);
/// How long formation or a failure may take before the benchmark gives up.
const PATIENCE: Duration = Duration::from_secs(60);
/// How often the benchmark polls the nodes.
const POLL: Duration = Duration::from_millis(20);

/// What one run measured for one preset.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Seconds to form 3, 5 and 9 nodes.
    pub form_secs: Vec<(usize, f64)>,
    /// Median bytes per second (sent + received) per node, idle 5-node cluster.
    pub gossip_bytes_per_sec: f64,
    /// Seconds from kill -9 to "down" in the leader's gossip view.
    pub down_secs: f64,
    /// Seconds from kill -9 to the replacement committed in Raft.
    pub replaced_secs: f64,
}

async fn client(addr: &str) -> Option<ClusterClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .ok()?;
    Some(ClusterClient::new(channel))
}

async fn members(addr: &str) -> Option<pb::MembersReply> {
    client(addr).await?.members(pb::MembersRequest {}).await.ok().map(|r| r.into_inner())
}

/// Polls node `addr` until its status passes `check`.
async fn wait_for(
    cluster: &Cluster,
    addr: &str,
    what: &str,
    check: impl Fn(&pb::ClusterStatus) -> bool,
) -> anyhow::Result<pb::ClusterStatus> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(s) = status_at(addr).await
            && check(&s)
        {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            bail!("{what}: not within {} s; node logs:\n{}", PATIENCE.as_secs(), cluster.log_tails());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The first node's address: the seed of all the others.
fn seed_of(cluster: &Cluster) -> anyhow::Result<String> {
    Ok(cluster.nodes().next().context("a cluster without nodes")?.addr.to_owned())
}

fn formed(s: &pb::ClusterStatus, n: usize) -> bool {
    let in_raft = s.members.iter().filter(|m| m.role != "not a member" && m.reachable).count();
    s.leader_id != 0 && in_raft == n && s.members.iter().filter(|m| m.voter).count() == 3.min(n)
}

async fn gossip_bytes(addr: &str) -> anyhow::Result<u64> {
    let text = metrics_text(addr).await?;
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(value("weft_gossip_bytes_sent_total") + value("weft_gossip_bytes_received_total"))
}

/// One run for one preset.
pub async fn measure(weft: &Path, scratch: &Scratch, run: usize, preset: &str) -> anyhow::Result<Figures> {
    let mut figures = Figures::default();
    for n in SIZES {
        let root = scratch.path.join(format!("run{run}-{preset}-form{n}"));
        let started = Instant::now();
        let cluster = Cluster::start_gossip(weft, &root, n, preset, GRACE_MS, scratch.keep)?;
        let seed = seed_of(&cluster)?;
        wait_for(&cluster, &seed, "formation", |s| formed(s, n)).await?;
        let secs = started.elapsed().as_secs_f64();
        eprintln!("   {preset}: {n} nodes formed in {secs:.2} s");
        figures.form_secs.push((n, secs));
        drop(cluster);
    }

    let root = scratch.path.join(format!("run{run}-{preset}-kill"));
    let mut cluster = Cluster::start_gossip(weft, &root, 5, preset, GRACE_MS, scratch.keep)?;
    let seed = seed_of(&cluster)?;
    let s = wait_for(&cluster, &seed, "formation", |s| formed(s, 5)).await?;
    cluster.learn_ids(&s);
    let mut before = Vec::new();
    for node in cluster.nodes() {
        before.push(gossip_bytes(node.addr).await?);
    }
    tokio::time::sleep(TRAFFIC_WINDOW).await;
    let mut rates = Vec::new();
    for (node, b) in cluster.nodes().zip(before) {
        rates.push((gossip_bytes(node.addr).await? - b) as f64 / TRAFFIC_WINDOW.as_secs_f64());
    }
    figures.gossip_bytes_per_sec = median(rates);

    let leader = s.leader_id;
    let victim = s.members.iter().find(|m| m.voter && m.id != leader).context("no follower voter")?.id;
    let leader_addr = cluster.addr(leader).context("leader not found")?.to_owned();
    let killed = Instant::now();
    cluster.kill9(victim).context("victim not found")?;
    let mut down = None;
    let deadline = killed + PATIENCE;
    let replaced = loop {
        if down.is_none()
            && let Some(m) = members(&leader_addr).await
            && m.members.iter().any(|x| x.id == victim && x.state == "down")
        {
            down = Some(killed.elapsed().as_secs_f64());
        }
        if let Some(s) = status_at(&leader_addr).await
            && s.members.iter().filter(|m| m.voter).count() == 3
            && !s.members.iter().any(|m| m.id == victim && m.role != "not a member")
        {
            break killed.elapsed().as_secs_f64();
        }
        if Instant::now() >= deadline {
            bail!("{preset}: the killed voter was not replaced within {} s", PATIENCE.as_secs());
        }
        tokio::time::sleep(POLL).await;
    };
    figures.down_secs = down.unwrap_or(replaced);
    figures.replaced_secs = replaced;
    eprintln!(
        "   {preset}: gossip {:.0} B/s per node; kill -9 → down {:.2} s, replaced {:.2} s (grace {} s)",
        figures.gossip_bytes_per_sec,
        figures.down_secs,
        figures.replaced_secs,
        GRACE_MS / 1000
    );
    cluster.report_log_problems();
    Ok(figures)
}

/// The markdown of every run's figures, with medians.
pub fn markdown(runs: &[(String, Figures)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### Membership\n\nEach row: one run. Formation: nodes started together, one seed, \
         `--bootstrap-expect 3`, until one leader has all of them in Raft. Gossip: sent + received \
         bytes per node per second on an idle 5-node cluster (median of the nodes). Failure: \
         `kill -9` of a follower voter of 5 nodes, `dead_node_grace_ms` = {GRACE_MS}.\n"
    );
    out.push_str("| preset | form 3 (s) | form 5 (s) | form 9 (s) | gossip B/s/node | kill → down (s) | kill → replaced (s) |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    let row = |out: &mut String, label: &str, f: &Figures| {
        let form = |n: usize| {
            f.form_secs.iter().find(|(k, _)| *k == n).map_or("-".into(), |(_, s)| format!("{s:.2}"))
        };
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {:.0} | {:.2} | {:.2} |",
            form(3),
            form(5),
            form(9),
            f.gossip_bytes_per_sec,
            f.down_secs,
            f.replaced_secs
        );
    };
    for (preset, f) in runs {
        row(&mut out, preset, f);
    }
    for preset in ["lan", "test"] {
        let of: Vec<&Figures> = runs.iter().filter(|(p, _)| p == preset).map(|(_, f)| f).collect();
        if of.len() > 1 {
            let med = |get: &dyn Fn(&Figures) -> f64| median(of.iter().map(|f| get(f)).collect());
            let m = Figures {
                form_secs: SIZES
                    .iter()
                    .map(|n| {
                        (*n, med(&|f| f.form_secs.iter().find(|(k, _)| k == n).map_or(f64::NAN, |(_, s)| *s)))
                    })
                    .collect(),
                gossip_bytes_per_sec: med(&|f| f.gossip_bytes_per_sec),
                down_secs: med(&|f| f.down_secs),
                replaced_secs: med(&|f| f.replaced_secs),
            };
            row(&mut out, &format!("**{preset} median**"), &m);
        }
    }
    out
}

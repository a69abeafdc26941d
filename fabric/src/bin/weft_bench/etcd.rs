//! etcd beside Weft: clusters of `etcd` processes (1 or 3 members on 127.0.0.1, the shapes of
//! Weft's clusters in the benchmark) that the put, get and million-put workloads drive with
//! the same client loop and tonic channels as Weft's nodes ([`crate::store::KvClient`]).
//!
//! ```text
//!   weft-bench ──etcdserverpb.KV (same channels, same loop)──► leader ──Raft──► members
//!      └── /proc/PID/{stat,status} of every member, etcdserverpb.Maintenance/Status
//! ```
//!
//! Each member runs with etcd's defaults apart from addresses and names: its WAL is fsync'd
//! before a write is acknowledged (as Weft's log is); it snapshots every [`SNAPSHOT_COUNT`]
//! entries (etcd 3.4's default, passed explicitly so that other versions do the same). Members log (zap, JSON) to a file next to their data dir; both
//! are removed when the cluster is dropped, unless `--keep`. The processes come from the shared
//! harness's [`NodeProcess`], killed on drop, so an error or ctrl-c leaves none behind.
//!
//! etcd is found by [`find_binary`]; without one the workloads measure Weft alone and say how
//! to install etcd.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use weft_fabric::testing::{NodeCommand, NodeProcess, free_ports};

use crate::programs::Program;
use weft_proto::etcd::etcdserverpb as pb;
use weft_proto::etcd::etcdserverpb::maintenance_client::MaintenanceClient;

/// How long a new cluster may take to elect a leader that every member knows.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of one status request.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(100);
/// Kinds of warning/error lines shown per member log.
const MAX_LOG_KINDS_SHOWN: usize = 8;
/// Lines of each member's log shown when the cluster does not form.
const LOG_LINES_SHOWN: usize = 8;

/// `--snapshot-count` of every member: entries between snapshots (etcd 3.4's default).
pub const SNAPSHOT_COUNT: u64 = 100_000;

/// How to get etcd, for the message printed when there is none.
pub const INSTALL_HINT: &str = "install it (Debian/Ubuntu: apt-get install etcd-server) or pass \
     --etcd PATH / set $ETCD to an etcd binary (releases: github.com/etcd-io/etcd/releases)";

/// The `etcd` binary to use: `--etcd`, `$ETCD`, or one on `PATH`; why not when there is none.
pub fn find_binary(explicit: Option<&Path>) -> Result<PathBuf, String> {
    Program { name: "etcd", flag: "--etcd", env: "ETCD", hint: INSTALL_HINT }.find(explicit)
}

/// The version `etcd --version` prints (`3.4.23`), for the report.
pub fn version(binary: &Path) -> String {
    match std::process::Command::new(binary).arg("--version").output() {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            text.lines()
                .find_map(|l| l.strip_prefix("etcd Version:"))
                .map_or_else(|| text.trim().to_owned(), |v| v.trim().to_owned())
        }
        Err(e) => format!("unknown ({e})"),
    }
}

/// One member of an [`EtcdCluster`].
pub struct Member {
    /// `m1`, `m2`, …
    pub name: String,
    /// `127.0.0.1:PORT` of its client (gRPC) listener.
    pub client_addr: String,
    pub data_dir: PathBuf,
    log: PathBuf,
    process: NodeProcess,
}

impl Member {
    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }
}

/// `n` etcd processes forming one cluster; killed, and their dir removed (unless `--keep`), on
/// drop. Members are numbered from 1 in start order, like Weft's nodes.
pub struct EtcdCluster {
    members: Vec<Member>,
    root: PathBuf,
    keep: bool,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        // The processes go before their dirs.
        for member in &mut self.members {
            member.process.kill9();
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

impl EtcdCluster {
    /// Starts `n` members of `binary` under `root` (a fresh cluster: new data dirs, a cluster
    /// token of its own).
    pub fn start(binary: &Path, root: &Path, n: usize, keep: bool) -> anyhow::Result<Self> {
        anyhow::ensure!(n > 0, "an etcd cluster needs at least one member");
        std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
        let ports = free_ports(2 * n)?;
        let (client_ports, peer_ports) = ports.split_at(n);
        let initial_cluster: Vec<String> =
            peer_ports.iter().enumerate().map(|(i, p)| format!("m{}=http://127.0.0.1:{p}", i + 1)).collect();
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let token = format!("weft-bench-{}-{nanos}", std::process::id());
        let mut cluster = Self { members: Vec::with_capacity(n), root: root.to_owned(), keep };
        for i in 0..n {
            let name = format!("m{}", i + 1);
            let data_dir = root.join(&name);
            let log = root.join(format!("{name}.log"));
            let client_url = format!("http://127.0.0.1:{}", client_ports[i]);
            let peer_url = format!("http://127.0.0.1:{}", peer_ports[i]);
            let process = NodeCommand::new(binary, &log)
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(&data_dir)
                .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial_cluster.join(",")])
                .args(["--initial-cluster-state", "new", "--initial-cluster-token", &token])
                .args(["--snapshot-count", &SNAPSHOT_COUNT.to_string()])
                .args(["--logger", "zap", "--log-outputs", "stderr"])
                .spawn()?;
            cluster.members.push(Member {
                name,
                client_addr: format!("127.0.0.1:{}", client_ports[i]),
                data_dir,
                log,
                process,
            });
        }
        Ok(cluster)
    }

    /// The members, in start order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The client address of member `id` (1-based).
    pub fn addr(&self, id: u64) -> anyhow::Result<&str> {
        self.member(id).map(|m| m.client_addr.as_str())
    }

    fn member(&self, id: u64) -> anyhow::Result<&Member> {
        usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| self.members.get(i))
            .with_context(|| format!("no etcd member m{id} in this cluster"))
    }

    /// The member processes that run.
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().filter_map(Member::pid).collect()
    }

    /// Waits until every member names the same leader; returns it (1-based, as
    /// [`addr`](Self::addr) takes it).
    pub async fn wait_for_leader(&self) -> anyhow::Result<u64> {
        let deadline = Instant::now() + LEADER_TIMEOUT;
        let mut last = String::from("no answer yet");
        loop {
            let mut leaders = Vec::with_capacity(self.members.len());
            let mut ids = Vec::with_capacity(self.members.len());
            for member in &self.members {
                match status(&member.client_addr).await {
                    Ok(s) => {
                        ids.push(s.header.map_or(0, |h| h.member_id));
                        leaders.push(s.leader);
                    }
                    Err(e) => {
                        last = format!("{}: {e:#}", member.name);
                        break;
                    }
                }
            }
            if leaders.len() == self.members.len()
                && leaders[0] != 0
                && leaders.iter().all(|l| *l == leaders[0])
            {
                if let Some(i) = ids.iter().position(|id| *id == leaders[0]) {
                    return Ok(i as u64 + 1);
                }
                last = format!("the leader {:x} is not a member of this cluster", leaders[0]);
            } else if leaders.len() == self.members.len() {
                last = format!("leaders as the members see them: {leaders:x?}");
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "etcd: no leader that every member knows within {LEADER_TIMEOUT:?} ({last}); member logs:\n{}",
                self.log_tails()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The end of every member's log, for an error message.
    pub fn log_tails(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("--- etcd {} ---\n{}\n", m.name, m.process.log_tail(LOG_LINES_SHOWN)))
            .collect()
    }

    /// Prints the warnings and errors the members logged, grouped by message, so trouble in
    /// the peer is not missed either.
    pub fn report_log_problems(&self) {
        for member in &self.members {
            let Ok(text) = std::fs::read_to_string(&member.log) else {
                continue;
            };
            let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
            for line in text.lines() {
                if let Some(kind) = problem_kind(line) {
                    *kinds.entry(kind).or_default() += 1;
                }
            }
            let mut kinds: Vec<(String, usize)> = kinds.into_iter().collect();
            kinds.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
            for (kind, count) in kinds.iter().take(MAX_LOG_KINDS_SHOWN) {
                eprintln!("   etcd {} logged {count}x: {kind}", member.name);
            }
        }
    }
}

/// Waits until every member has applied the whole log (its applied index reaches the highest
/// commit index any member reports), up to `within`; then each member's status, in member
/// order. Past `within` it warns and returns the statuses as they are.
pub async fn settle(cluster: &EtcdCluster, within: Duration) -> anyhow::Result<Vec<pb::StatusResponse>> {
    let deadline = Instant::now() + within;
    loop {
        let mut all = Vec::with_capacity(cluster.members.len());
        for member in &cluster.members {
            all.push(status(&member.client_addr).await?);
        }
        let last = all.iter().map(|s| s.raft_index).max().unwrap_or(0);
        if all.iter().all(|s| s.raft_applied_index >= last) {
            return Ok(all);
        }
        if Instant::now() >= deadline {
            eprintln!(
                "   warning: etcd not settled after {} s (applied {:?}, last log {last}); measuring anyway",
                within.as_secs(),
                all.iter().map(|s| s.raft_applied_index).collect::<Vec<_>>()
            );
            return Ok(all);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How many benchmark keys starting with `prefix` the member at `addr` holds (a linearizable
/// count).
pub async fn count_keys(addr: &str, prefix: &str) -> anyhow::Result<u64> {
    let channel = crate::kv::connect(addr, 1).await?.remove(0);
    let key = format!("{}/{prefix}", crate::store::NAMESPACE).into_bytes();
    let request =
        pb::RangeRequest { range_end: prefix_end(&key), key, count_only: true, ..Default::default() };
    let reply = pb::kv_client::KvClient::new(channel)
        .range(request)
        .await
        .with_context(|| format!("etcd: counting keys on {addr}"))?;
    Ok(reply.into_inner().count.max(0) as u64)
}

/// The end of the range of keys that start with `prefix`: the prefix with its last byte below
/// 0xff raised by one (etcd's convention; all keys from `prefix` on when there is none).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The index of the newest snapshot in a member's `member/snap` dir: etcd names snapshot files
/// `TERM-INDEX.snap`, both 16 hex digits. `None` when there is none.
pub fn newest_snapshot_index(snap_dir: &Path) -> Option<u64> {
    std::fs::read_dir(snap_dir)
        .ok()?
        .flatten()
        .filter_map(|e| snapshot_index(&e.file_name().to_string_lossy()))
        .max()
}

fn snapshot_index(file_name: &str) -> Option<u64> {
    let (_, index) = file_name.strip_suffix(".snap")?.split_once('-')?;
    u64::from_str_radix(index, 16).ok()
}

/// `level: message` of a zap JSON log line at warn level or above; `None` for other lines.
fn problem_kind(line: &str) -> Option<String> {
    let field = |name: &str| {
        let start = line.find(&format!("\"{name}\":\""))? + name.len() + 4;
        let len = line[start..].find('"')?;
        Some(&line[start..start + len])
    };
    let level = field("level")?;
    if !matches!(level, "warn" | "error" | "dpanic" | "panic" | "fatal") {
        return None;
    }
    Some(format!("{level}: {}", field("msg").unwrap_or("?")).chars().take(110).collect())
}

/// `Maintenance.Status` of the member at `addr`: its id, the leader it knows, its Raft
/// indexes and database size.
pub async fn status(addr: &str) -> anyhow::Result<pb::StatusResponse> {
    let channel = crate::kv::connect(addr, 1).await?.remove(0);
    let mut request = tonic::Request::new(pb::StatusRequest {});
    request.set_timeout(STATUS_TIMEOUT);
    let reply = MaintenanceClient::new(channel)
        .status(request)
        .await
        .with_context(|| format!("etcd status of {addr}"))?;
    Ok(reply.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_and_errors_of_a_zap_log_are_grouped_by_level_and_message() {
        let warn = r#"{"level":"warn","ts":"2026-01-01T00:00:00.000Z","caller":"etcdserver/util.go:163","msg":"apply request took too long","took":"120ms"}"#;
        let info = r#"{"level":"info","ts":"2026-01-01T00:00:00.000Z","msg":"raft.node: elected leader"}"#;
        assert_eq!(problem_kind(warn).as_deref(), Some("warn: apply request took too long"));
        assert_eq!(problem_kind(info), None);
        assert_eq!(problem_kind("not json at all"), None);
    }

    #[test]
    fn snapshot_files_name_their_index_in_hex() {
        assert_eq!(snapshot_index("0000000000000002-00000000000186a1.snap"), Some(100_001));
        assert_eq!(snapshot_index("0000000000000002-00000000000186a1.snap.broken"), None);
        assert_eq!(snapshot_index("db"), None);
    }

    #[test]
    fn a_prefix_range_ends_after_the_last_key_with_the_prefix() {
        assert_eq!(prefix_end(b"shared/bench/m-"), b"shared/bench/m.".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    /// The benchmark's etcd path end to end: a one-member cluster, the client the workloads
    /// use, the status and CPU figures. Skips with the reason (printed) when etcd is absent;
    /// `cargo test -p weft-fabric --bin weft-bench etcd` with etcd installed runs it.
    #[tokio::test]
    async fn the_benchmark_client_writes_and_reads_etcd_when_it_is_installed() {
        let binary = match find_binary(None) {
            Ok(binary) => binary,
            Err(why) => {
                eprintln!("skipped: {why}");
                return;
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let cluster = EtcdCluster::start(&binary, &dir.path().join("etcd"), 1, false).unwrap();
        assert_eq!(cluster.wait_for_leader().await.unwrap(), 1);
        let addr = cluster.addr(1).unwrap().to_owned();
        let channel = crate::kv::connect(&addr, 1).await.unwrap().remove(0);
        let mut client = crate::store::KvClient::new(crate::store::System::Etcd, channel);

        let first = client.put("m-1".into(), b"one".to_vec()).await.unwrap();
        let second = client.put("m-2".into(), b"two".to_vec()).await.unwrap();
        assert!(second > first, "revisions {first} then {second}");
        client.get("m-1").await.unwrap();
        let absent = client.get("m-3").await.unwrap_err();
        assert_eq!(absent.code(), tonic::Code::NotFound, "{absent:?}");
        assert_eq!(client.cas("m-1", 1, b"x".to_vec()).await.unwrap_err().code(), tonic::Code::Unimplemented);
        assert_eq!(count_keys(&addr, "m-").await.unwrap(), 2);

        let statuses = settle(&cluster, LEADER_TIMEOUT).await.unwrap();
        assert!(statuses[0].raft_applied_index >= statuses[0].raft_index, "{:?}", statuses[0]);
        assert!(statuses[0].db_size > 0, "{:?}", statuses[0]);
        let pid = cluster.pids()[0];
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        assert!(crate::probes::stat_ticks(&stat).is_some(), "{stat}");

        let root = dir.path().join("etcd");
        drop(cluster);
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "etcd {pid} outlived its cluster");
        assert!(!root.exists(), "the cluster's dir outlived it");
    }

    #[test]
    fn a_missing_explicit_binary_is_an_error_that_names_it() {
        let err = find_binary(Some(Path::new("no/such/etcd"))).unwrap_err();
        assert!(err.contains("no/such/etcd"), "{err}");
    }
}

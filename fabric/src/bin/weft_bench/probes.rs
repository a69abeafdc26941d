//! What the operating system and the nodes report: a node's `/metrics`, RSS and CPU time from
//! `/proc`, bytes on disk below a directory, the load average.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster::Access;

/// Linux reports process CPU time in clock ticks of 1/100 s (USER_HZ).
pub const TICKS_PER_SEC: f64 = 100.0;

/// Figures from a node's `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub term: u64,
    pub is_leader: bool,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub purged_index: u64,
    pub snapshots_built: u64,
    pub snapshots_installed: u64,
    pub keys: u64,
    pub commands_applied: u64,
    pub waiters: u64,
    pub executions_pending: u64,
    pub executions_assigned: u64,
}

/// Reads `http://ADDR/metrics` (plain HTTP/1.1 on the node's one port).
pub async fn metrics(addr: &str) -> anyhow::Result<Metrics> {
    metrics_over(addr, &Access::default()).await
}

/// [`metrics`] over TLS and with the token as `access` says.
pub async fn metrics_over(addr: &str, access: &Access) -> anyhow::Result<Metrics> {
    let text = metrics_text_over(addr, access).await?;
    let mut values = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("weft_")) {
        if let (Some((name, _)), Some(v)) = (line.split_once('{'), line.rsplit(' ').next()) {
            values.insert(name.to_owned(), v.parse::<u64>().unwrap_or(0));
        }
    }
    anyhow::ensure!(
        values.contains_key("weft_raft_applied_index"),
        "{addr}/metrics has no weft_raft_applied_index"
    );
    let get = |name: &str| values.get(name).copied().unwrap_or(0);
    Ok(Metrics {
        term: get("weft_raft_term"),
        is_leader: get("weft_raft_is_leader") == 1,
        last_log_index: get("weft_raft_last_log_index"),
        applied_index: get("weft_raft_applied_index"),
        snapshot_index: get("weft_raft_snapshot_index"),
        purged_index: get("weft_raft_purged_index"),
        snapshots_built: get("weft_snapshots_built_total"),
        snapshots_installed: get("weft_snapshots_installed_total"),
        keys: get("weft_grid_keys"),
        commands_applied: get("weft_grid_commands_applied_total"),
        waiters: get("weft_waiters"),
        executions_pending: get("weft_executions_pending"),
        executions_assigned: get("weft_executions_assigned"),
    })
}

/// The text of `http://ADDR/metrics` (plain HTTP/1.1 on the node's one port).
pub async fn metrics_text(addr: &str) -> anyhow::Result<String> {
    metrics_text_over(addr, &Access::default()).await
}

/// [`metrics_text`] over TLS (`https://ADDR/metrics`) and with the token (`authorization:
/// Bearer`) as `access` says.
pub async fn metrics_text_over(addr: &str, access: &Access) -> anyhow::Result<String> {
    let authorization = match &access.token {
        Some(token) => format!("Authorization: Bearer {}\r\n", token.secret()),
        None => String::new(),
    };
    async fn get(
        mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        addr: &str,
        authorization: &str,
    ) -> std::io::Result<String> {
        stream
            .write_all(
                format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{authorization}Connection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        Ok(text)
    }
    tokio::time::timeout(Duration::from_secs(5), async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let Some(tls) = &access.tls else { return get(tcp, addr, &authorization).await };
        let mut config = (*tls.rustls_config()).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_matches(['[', ']']).to_owned();
        let name = rustls::pki_types::ServerName::try_from(host).map_err(std::io::Error::other)?;
        let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await?;
        get(stream, addr, &authorization).await
    })
    .await
    .with_context(|| format!("{addr}/metrics timed out"))?
    .with_context(|| format!("cannot read {addr}/metrics"))
}

/// A `kB` field of `/proc/PID/status` (`VmRSS:`, `VmHWM:`), in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| l.strip_prefix(field))?.split_whitespace().next()?.parse().ok()
}

/// CPU time (user + system) in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTicks {
    pub nodes: u64,
    pub bench: u64,
}

/// CPU time the processes `pids` used together so far (with all their threads), and this
/// process. A process that cannot be read (it has exited) counts 0.
pub fn cpu_ticks(pids: &[u32]) -> CpuTicks {
    let of =
        |path: String| std::fs::read_to_string(path).ok().and_then(|text| stat_ticks(&text)).unwrap_or(0);
    CpuTicks {
        nodes: pids.iter().map(|p| of(format!("/proc/{p}/stat"))).sum(),
        bench: of("/proc/self/stat".into()),
    }
}

/// utime + stime, in clock ticks, of a `/proc/PID/stat` line (proc(5)); `None` when it does
/// not parse.
pub fn stat_ticks(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may hold spaces and ')': fields resume after the
    // last ')', at field 3 (state); utime and stime are fields 14 and 15.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i - 3)?.parse::<u64>().ok();
    Some(field(14)? + field(15)?)
}

/// Bytes below a directory: file lengths (`du --apparent-size`) and allocated blocks (`du`).
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskUse {
    pub apparent: u64,
    pub allocated: u64,
}

/// What the files below `path` take (0 for what cannot be read).
pub fn disk_use(path: &Path) -> DiskUse {
    use std::os::unix::fs::MetadataExt;
    let mut total = DiskUse::default();
    let Ok(entries) = std::fs::read_dir(path) else {
        return total;
    };
    for entry in entries.flatten() {
        match entry.metadata() {
            Ok(m) if m.is_dir() => {
                let sub = disk_use(&entry.path());
                total.apparent += sub.apparent;
                total.allocated += sub.allocated;
            }
            Ok(m) => {
                total.apparent += m.len();
                total.allocated += m.blocks() * 512;
            }
            Err(_) => {}
        }
    }
    total
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` shows them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_utime_plus_stime_after_the_command_name() {
        // A command name with a space and a parenthesis, as etcd's threads or a renamed
        // process may have; utime 1234, stime 567.
        let stat = "4242 (etcd (m1) x) S 1 4242 4242 0 -1 4194560 3366 0 0 0 1234 567 0 0 20 0 \
                    12 0 1000 1000000 2000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        assert_eq!(stat_ticks(stat), Some(1801));
        assert_eq!(stat_ticks("4242 (cut short) S 1 2"), None);
        assert_eq!(stat_ticks("no parenthesis"), None);
    }

    #[test]
    fn this_process_has_a_readable_stat() {
        let text = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(stat_ticks(&text).is_some(), "{text}");
    }
}

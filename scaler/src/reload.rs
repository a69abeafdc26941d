//! Reloading the configuration: on SIGHUP, and when the file's modification time changes
//! (looked at every [`CHECK_INTERVAL`]). A new file that does not load or validate is refused:
//! the error is logged and the old configuration stays. Settings that only take effect at
//! start (`endpoints`, `group`, `lease_ttl_ms`, `metrics_addr`, `run_dir`, `log_dir`,
//! `max_log_bytes`)
//! keep their old values, with a warning; the agents' tables and `leave_running_on_exit`
//! change at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// How often the file's modification time is looked at.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

fn mtime(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// `new` with the settings that need a restart taken from `old`; the names of those that
/// differed.
pub fn merge(old: &Config, new: Config) -> (Config, Vec<&'static str>) {
    let mut kept = Vec::new();
    let mut merged = new;
    macro_rules! keep {
        ($($field:ident),*) => {$(
            if merged.$field != old.$field {
                kept.push(stringify!($field));
                merged.$field = old.$field.clone();
            }
        )*};
    }
    keep!(endpoints, group, lease_ttl_ms, metrics_addr, run_dir, log_dir, max_log_bytes);
    (merged, kept)
}

/// Watches `path` and sends each valid new configuration on `tx` until `shutdown`.
/// `overrides` applies what the command line set (endpoints, metrics address) to each.
pub async fn watch_file(
    path: PathBuf,
    tx: watch::Sender<Arc<Config>>,
    overrides: impl Fn(&mut Config) + Send + 'static,
    shutdown: CancellationToken,
) {
    let mut last = mtime(&path);
    let mut check = tokio::time::interval(CHECK_INTERVAL);
    #[cfg(unix)]
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch for SIGHUP; reloading on file changes only");
            None
        }
    };
    loop {
        #[cfg(unix)]
        let hup_recv = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup_recv = std::future::pending::<()>();
        let why = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = hup_recv => "SIGHUP",
            _ = check.tick() => {
                let now = mtime(&path);
                if now == last {
                    continue;
                }
                last = now;
                "the file changed"
            }
        };
        match Config::load(&path) {
            Ok(mut new) => {
                overrides(&mut new);
                let old = tx.borrow().clone();
                let (merged, kept) = merge(&old, new);
                if !kept.is_empty() {
                    tracing::warn!(
                        ?kept,
                        "these settings take effect only at start; keeping their old values"
                    );
                }
                if merged == *old {
                    tracing::info!(reason = why, "configuration reloaded; nothing changed");
                    continue;
                }
                tracing::info!(reason = why, path = %path.display(), "configuration reloaded");
                tx.send_replace(Arc::new(merged));
            }
            Err(e) => {
                tracing::error!(reason = why, error = %e, "new configuration refused; keeping the old one");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "group = \"a\"\n[agents.work]\ncommand = \"x\"\nmax_replicas = 2\n";
    const V2: &str = "group = \"b\"\n[agents.work]\ncommand = \"x\"\nmax_replicas = 5\n";
    const BAD: &str = "[agents.work]\ncommand = \"x\"\nmax_replicas = 0\n";

    #[test]
    fn start_only_settings_keep_their_values() {
        let old = Config::parse(V1).unwrap();
        let (merged, kept) = merge(&old, Config::parse(V2).unwrap());
        assert_eq!(kept, ["group"]);
        assert_eq!(merged.group, "a");
        assert_eq!(merged.agents["work"].max_replicas, 5);
    }

    #[tokio::test]
    async fn a_changed_file_is_reloaded_and_an_invalid_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scaler.toml");
        std::fs::write(&path, V1).unwrap();
        let (tx, mut rx) = watch::channel(Arc::new(Config::load(&path).unwrap()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch_file(path.clone(), tx, |_| {}, stop.clone()));
        // mtime granularity: make sure the next write is seen as a change.
        tokio::time::sleep(Duration::from_millis(20)).await;
        std::fs::write(&path, BAD).unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(1)).unwrap();
        tokio::time::sleep(CHECK_INTERVAL * 2 + Duration::from_millis(200)).await;
        assert!(!rx.has_changed().unwrap(), "an invalid file changes nothing");
        assert_eq!(rx.borrow().agents["work"].max_replicas, 2);
        std::fs::write(&path, V2).unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(2)).unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.changed()).await.unwrap().unwrap();
        assert_eq!(rx.borrow().agents["work"].max_replicas, 5);
        stop.cancel();
        task.await.unwrap();
    }
}

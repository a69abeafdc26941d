//! One `weft` child process: started from a [`NodeCommand`] with stdin null and its output
//! appended to a log file, stopped with `kill -9` or SIGTERM, started again on the same
//! command, and killed when dropped so a failing test leaves nothing behind.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::Error;

/// How often a wait for a process to exit looks again.
const EXIT_POLL: Duration = Duration::from_millis(50);

/// The built `weft` binary: next to the running executable, or one directory up when that is
/// cargo's `deps/` (where tests and benches live), so a binary, a test and a benchmark of one
/// build profile all find the `weft` of that profile.
pub fn weft_binary() -> Result<PathBuf, Error> {
    let exe = std::env::current_exe().map_err(Error::CurrentExe)?;
    let mut dir = exe.parent().unwrap_or(Path::new("."));
    if dir.ends_with("deps")
        && let Some(profile) = dir.parent()
    {
        dir = profile;
    }
    let path = dir.join(format!("weft{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() { Ok(path) } else { Err(Error::NoBinary { path }) }
}

/// How to start a `weft` process: the binary, its arguments (the subcommand first), extra
/// environment on top of the inherited one, and the log file that receives its stdout and
/// stderr. Starting again appends to the same log.
#[derive(Debug, Clone)]
pub struct NodeCommand {
    /// The `weft` binary ([`weft_binary`]).
    pub binary: PathBuf,
    /// Arguments, the subcommand first (`node`, `dev`).
    pub args: Vec<OsString>,
    /// Extra environment variables (`RUST_LOG`, `WEFT_*` settings without a flag).
    pub env: Vec<(OsString, OsString)>,
    /// Where stdout and stderr go (created if missing, appended to).
    pub log: PathBuf,
}

impl NodeCommand {
    /// `weft node`, output to `log`; add its flags with [`args`](Self::args).
    pub fn node(binary: impl Into<PathBuf>, log: impl Into<PathBuf>) -> Self {
        Self::new(binary, log).arg("node")
    }

    /// `weft` without arguments yet (the subcommand comes first: `.arg("dev")`).
    pub fn new(binary: impl Into<PathBuf>, log: impl Into<PathBuf>) -> Self {
        Self { binary: binary.into(), args: Vec::new(), env: Vec::new(), log: log.into() }
    }

    /// One more argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// More arguments.
    pub fn args(mut self, args: impl IntoIterator<Item = impl Into<OsString>>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// One more environment variable.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts it.
    pub fn spawn(self) -> Result<NodeProcess, Error> {
        NodeProcess::spawn(self)
    }
}

/// A `weft` child process started from a [`NodeCommand`]; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct NodeProcess {
    command: NodeCommand,
    /// The child while it is ours: from a start until a kill or a stop reaped it.
    child: Option<Child>,
}

impl NodeProcess {
    /// Starts `command`.
    pub fn spawn(command: NodeCommand) -> Result<Self, Error> {
        let mut process = Self { command, child: None };
        process.start()?;
        Ok(process)
    }

    fn start(&mut self) -> Result<(), Error> {
        let log_error = |source| Error::Log { path: self.command.log.clone(), source };
        let out = OpenOptions::new().create(true).append(true).open(&self.command.log).map_err(log_error)?;
        let err = out.try_clone().map_err(log_error)?;
        let child = Command::new(&self.command.binary)
            .args(&self.command.args)
            .envs(self.command.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| Error::Spawn { binary: self.command.binary.clone(), source })?;
        self.child = Some(child);
        Ok(())
    }

    /// Starts the process again on the same command (after a `kill -9` or a stop; one still
    /// running is killed first), appending to the same log.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.kill9();
        self.start()
    }

    /// What it was started from.
    pub fn command(&self) -> &NodeCommand {
        &self.command
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.command.log
    }

    /// Its process id, until it is killed or stopped (it may have exited on its own).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`, then reaps it. Does nothing when it is not running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fails only when it has exited already, which is what was wanted.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (a name as `kill` takes it: `TERM`, `STOP`, `CONT`) to it.
    pub fn signal(&self, signal: &str) -> Result<(), Error> {
        let Some(pid) = self.pid() else {
            return Err(self.not_running());
        };
        let failed = |source| Error::Process { pid, action: format!("send SIG{signal} to"), source };
        let status =
            Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().map_err(failed)?;
        if status.success() {
            Ok(())
        } else {
            Err(failed(std::io::Error::other(format!("kill exited with {status}"))))
        }
    }

    /// Its exit status if it has exited on its own, `None` while it runs (or is not ours).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, Error> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let pid = child.id();
        child.try_wait().map_err(|source| Error::Process { pid, action: "check on".into(), source })
    }

    /// Waits up to `within` for it to exit, then reaps it. On timeout it keeps running.
    pub async fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus, Error> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if self.child.is_none() {
                return Err(self.not_running());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("process {} to exit", self.pid().unwrap_or(0)),
                    within,
                    details: String::new(),
                });
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    /// Graceful stop: SIGTERM, then up to `within` for it to exit; how it exited. One that
    /// does not exit in time is killed (SIGKILL) and the timeout returned.
    pub async fn stop(&mut self, within: Duration) -> Result<ExitStatus, Error> {
        self.signal("TERM")?;
        let result = self.wait_exit(within).await;
        if result.is_err() {
            self.kill9();
        }
        result
    }

    fn not_running(&self) -> Error {
        Error::NotRunning { binary: self.command.binary.clone(), log: self.command.log.clone() }
    }

    /// The last `lines` lines of its log (empty if it cannot be read).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.command.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(10);

    /// `sh -c SCRIPT`, output to `log`.
    fn sh(script: &str, log: &Path) -> NodeCommand {
        NodeCommand::new("/bin/sh", log).args(["-c", script])
    }

    /// Waits until `log` holds `text` `times` times.
    async fn wait_for_log(log: &Path, text: &str, times: usize) {
        let deadline = Instant::now() + BOUND;
        while std::fs::read_to_string(log).unwrap_or_default().matches(text).count() < times {
            assert!(Instant::now() < deadline, "{text:?} not in {} within {BOUND:?}", log.display());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn stop_sends_sigterm_and_restart_appends_to_the_same_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("p.log");
        let script = "trap 'echo stopping; exit 0' TERM; echo started $WHO; while true; do sleep 0.05; done";
        let mut p = sh(script, &log).env("WHO", "me").spawn().unwrap();
        wait_for_log(&log, "started me", 1).await;
        let status = p.stop(BOUND).await.unwrap();
        assert!(status.success(), "{status}");
        assert_eq!(p.pid(), None);
        assert!(matches!(p.signal("TERM"), Err(Error::NotRunning { .. })));

        p.restart().unwrap();
        assert!(p.pid().is_some());
        wait_for_log(&log, "started me", 2).await;
        p.kill9();
        assert_eq!(p.pid(), None);
        assert_eq!(p.log_tail(2), "stopping\nstarted me");
    }

    #[tokio::test]
    async fn a_process_that_ignores_sigterm_is_killed_after_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("p.log");
        let mut p = sh("trap '' TERM; echo ready; while true; do sleep 0.05; done", &log).spawn().unwrap();
        wait_for_log(&log, "ready", 1).await;
        let result = p.stop(Duration::from_millis(300)).await;
        assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
        assert_eq!(p.pid(), None, "killed after the bound");
    }

    #[test]
    fn a_dropped_process_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let p = sh("sleep 30", &dir.path().join("p.log")).spawn().unwrap();
        let pid = p.pid().unwrap();
        drop(p);
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "process {pid} outlived its handle");
    }

    #[test]
    fn a_missing_binary_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-weft");
        let err = NodeCommand::node(&missing, dir.path().join("p.log")).spawn().unwrap_err();
        assert!(matches!(err, Error::Spawn { .. }), "{err:?}");
        assert!(err.to_string().contains("no-such-weft"), "{err}");
    }
}

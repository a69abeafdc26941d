//! The process backend: replicas are local processes.
//!
//! Each replica runs in a process group of its own (`process_group(0)`), so a stop reaches
//! everything it started and a signal to the scaler's terminal does not reach it. Its stdout
//! and stderr go to a file of its own in the run directory (`RUN_DIR/REPLICA.out`), not to a
//! pipe: a pipe would break when the scaler dies, and a successor adopting the process would
//! leave it writing into nothing. A watcher task per replica reads the file into a bounded
//! ring (and the agent's log file), truncates it past [`MAX_OUTPUT_FILE_BYTES`], notices the
//! exit (its own child: `wait`; an adopted process: `/proc` polled) and reports it.
//!
//! ```text
//!   start: open RUN_DIR/ID.out ─► spawn (env, process group) ─► handle PID@TICKS ─► watcher
//!   stop:  SIGTERM to the group ─► grace ─► SIGKILL to the group (while any member runs)
//!   find:  /proc/*/stat (group leader, not a zombie) + /proc/*/environ (replica, group)
//! ```
//!
//! A handle is `PID@TICKS`, the process's start time in clock ticks since boot
//! (`/proc/PID/stat`), so a pid reused by another process never matches it: nothing is
//! signalled or adopted unless both agree. A group outlives its leader (`sh -c 'prog'`: TERM
//! ends `sh`, `prog` drains on): it is signalled while any process of it runs, which is safe
//! because Linux does not reuse a pid while it is a live process group's id. A pid that now
//! names another process means the group emptied before: nothing is signalled.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::output::{AgentLog, Ring};
use super::{
    AGENT_ENV, Error, Exited, Found, GROUP_ENV, INSTANCE_ENV, Launch, MAX_OUTPUT_TAIL_BYTES, REPLICA_ENV,
};

/// How often a replica's output file is read, and an adopted process looked for.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(100);
/// Size past which a replica's output file is truncated (what it held was read first).
pub const MAX_OUTPUT_FILE_BYTES: u64 = 1 << 20;
/// Most bytes read from an output file at once.
const MAX_READ_BYTES: u64 = 256 * 1024;

/// Settings of the process backend.
#[derive(Debug, Clone)]
pub struct Options {
    /// The scaler group: only its replicas are found.
    pub group: String,
    /// Where the replicas' output files live (shared by the scalers of a group on one host,
    /// so a successor reads its adopted replicas' output).
    pub run_dir: PathBuf,
    /// Where the agents' log files go, if anywhere.
    pub log_dir: Option<PathBuf>,
    /// Size at which an agent's log file is rotated.
    pub max_log_bytes: u64,
}

/// Local processes; cheap to clone.
#[derive(Debug, Clone)]
pub struct Backend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    options: Options,
    exits: mpsc::Sender<Exited>,
    replicas: Mutex<HashMap<String, Entry>>,
    logs: Mutex<HashMap<String, AgentLog>>,
}

#[derive(Debug, Clone)]
struct Entry {
    pid: u32,
    ticks: u64,
    output: Arc<Mutex<Ring>>,
    stopping: Arc<AtomicBool>,
}

/// What `/proc/PID/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    state: char,
    pgrp: u32,
    ticks: u64,
}

/// A replica's environment on top of the scaler's: `launch.env`, and its own token file
/// (`WEFT_TOKEN_FILE`) or none. The scaler's own token (`WEFT_TOKEN`, `WEFT_TOKEN_FILE`) is
/// never passed on: a replica gets only the token its agent was given.
fn replica_env(command: &mut std::process::Command, launch: &Launch) {
    for key in crate::config::TOKEN_ENV {
        command.env_remove(key);
    }
    command.envs(launch.env.iter().map(|(k, v)| (k, v)));
    if let Some(file) = &launch.token_file {
        command.env(weft_agent::token::env::TOKEN_FILE, file);
    }
}

fn read_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses `/proc/PID/stat`: the fields after the command (which may hold spaces and
/// parentheses, so the last `)` ends it).
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        ticks: fields.get(19)?.parse().ok()?,
    })
}

/// Whether process `pid` started at `ticks` still runs (a zombie does not).
fn alive(pid: u32, ticks: u64) -> bool {
    read_stat(pid).is_some_and(|s| s.ticks == ticks && s.state != 'Z' && s.state != 'X')
}

fn parse_handle(handle: &str) -> Option<(u32, u64)> {
    let (pid, ticks) = handle.split_once('@')?;
    Some((pid.parse().ok()?, ticks.parse().ok()?))
}

/// Whether the process group led by `pid` (started at `ticks`) still has a live member: its
/// leader, or (the leader gone or a zombie, its pid not reused) any process of the group.
fn group_alive(pid: u32, ticks: u64) -> bool {
    match read_stat(pid) {
        // The pid names another process: our group emptied before it could be reused.
        Some(s) if s.ticks != ticks => false,
        Some(s) if s.state != 'Z' && s.state != 'X' => true,
        _ => group_members(Path::new("/proc"), pid),
    }
}

/// Whether any live (not zombie) process under `proc` is in process group `pgid`.
fn group_members(proc: &Path, pgid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir(proc) else { return false };
    dir.flatten().any(|entry| {
        entry.file_name().to_str().is_some_and(|n| n.parse::<u32>().is_ok())
            && std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|t| parse_stat(&t))
                .is_some_and(|s| s.pgrp == pgid && s.state != 'Z' && s.state != 'X')
    })
}

fn signal_group(pid: u32, ticks: u64, signal: rustix::process::Signal) -> std::io::Result<()> {
    if !group_alive(pid, ticks) {
        return Ok(());
    }
    // Group 0 is the scaler's own, group 1 would be kill(-1): every process this user may
    // signal; the scaler's own group by number too. Never.
    let own = rustix::process::getpgrp().as_raw_nonzero().get();
    let raw = i32::try_from(pid)
        .ok()
        .filter(|p| *p > 1 && *p != own)
        .ok_or_else(|| std::io::Error::other(format!("pid {pid} is not a replica's process group")))?;
    let pid = rustix::process::Pid::from_raw(raw).ok_or_else(|| std::io::Error::other("pid 0"))?;
    match rustix::process::kill_process_group(pid, signal) {
        Ok(()) => Ok(()),
        // Gone meanwhile: what was wanted.
        Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl Backend {
    /// A backend reporting exits on `exits`.
    pub fn new(options: Options, exits: mpsc::Sender<Exited>) -> Self {
        Self {
            inner: Arc::new(Inner {
                options,
                exits,
                replicas: Mutex::new(HashMap::new()),
                logs: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn output_path(&self, replica: &str) -> PathBuf {
        self.inner.options.run_dir.join(format!("{replica}.out"))
    }

    fn agent_log(&self, agent: &str) -> Option<AgentLog> {
        let dir = self.inner.options.log_dir.as_ref()?;
        let mut logs = self.inner.logs.lock().unwrap_or_else(|p| p.into_inner());
        Some(
            logs.entry(agent.to_owned())
                .or_insert_with(|| AgentLog::new(dir, agent, self.inner.options.max_log_bytes))
                .clone(),
        )
    }

    /// Starts `launch.command` with `launch.args` and `launch.env` on top of the scaler's
    /// environment; its handle.
    pub async fn start(&self, launch: &Launch) -> Result<String, Error> {
        let program = launch.command.clone().unwrap_or_default();
        let failed = |reason: String| Error::Start { what: format!("command '{program}'"), reason };
        std::fs::create_dir_all(&self.inner.options.run_dir)
            .map_err(|e| failed(format!("cannot create {}: {e}", self.inner.options.run_dir.display())))?;
        let path = self.output_path(&launch.replica);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| failed(format!("cannot open {}: {e}", path.display())))?;
        let err = out.try_clone().map_err(|e| failed(format!("cannot open {}: {e}", path.display())))?;
        let mut command = tokio::process::Command::new(&program);
        replica_env(command.as_std_mut(), launch);
        command
            .args(&launch.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(false);
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(failed(e.to_string()));
            }
        };
        let Some(pid) = child.id() else {
            return Err(failed("it exited at once".into()));
        };
        // The stat file exists from the fork on.
        let ticks = read_stat(pid).map_or(0, |s| s.ticks);
        let entry = self.register(&launch.replica, pid, ticks);
        tokio::spawn(self.clone().watch(launch.replica.clone(), launch.agent.clone(), entry, Some(child), 0));
        Ok(format!("{pid}@{ticks}"))
    }

    fn register(&self, replica: &str, pid: u32, ticks: u64) -> Entry {
        let entry = Entry {
            pid,
            ticks,
            output: Arc::new(Mutex::new(Ring::new(MAX_OUTPUT_TAIL_BYTES))),
            stopping: Arc::new(AtomicBool::new(false)),
        };
        self.inner
            .replicas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(replica.to_owned(), entry.clone());
        entry
    }

    /// Reads a replica's output until it exits, then reports the exit.
    async fn watch(
        self,
        replica: String,
        agent: String,
        entry: Entry,
        mut child: Option<tokio::process::Child>,
        offset: u64,
    ) {
        let path = self.output_path(&replica);
        let log = self.agent_log(&agent);
        let mut reader = OutputFile { path: path.clone(), offset };
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        let status = loop {
            match child.as_mut() {
                Some(c) => {
                    tokio::select! {
                        status = c.wait() => break status.ok(),
                        _ = tick.tick() => {}
                    }
                }
                None => {
                    tick.tick().await;
                    if !alive(entry.pid, entry.ticks) {
                        break None;
                    }
                }
            }
            reader.read_into(&replica, &entry.output, log.as_ref());
        };
        reader.read_into(&replica, &entry.output, log.as_ref());
        let _ = std::fs::remove_file(&path);
        self.inner.replicas.lock().unwrap_or_else(|p| p.into_inner()).remove(&replica);
        use std::os::unix::process::ExitStatusExt;
        let exited = Exited {
            replica: replica.clone(),
            code: status.and_then(|s| s.code()),
            signal: status.and_then(|s| s.signal()),
            stopped: entry.stopping.load(Ordering::Relaxed),
            output_tail: entry.output.lock().unwrap_or_else(|p| p.into_inner()).text(),
        };
        tracing::debug!(%replica, code = ?exited.code, signal = ?exited.signal, stopped = exited.stopped, "replica exited");
        let _ = self.inner.exits.send(exited).await;
    }

    /// TERM to the replica's process group now, KILL after `grace` if any process of the
    /// group still runs (its leader may be gone while what it started drains on).
    pub fn stop(&self, replica: &str, grace: Duration) -> Result<(), Error> {
        let entry = self
            .inner
            .replicas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(replica)
            .cloned()
            .ok_or_else(|| Error::Unknown(replica.to_owned()))?;
        entry.stopping.store(true, Ordering::Relaxed);
        signal_group(entry.pid, entry.ticks, rustix::process::Signal::TERM)
            .map_err(|source| Error::Signal { replica: replica.to_owned(), source })?;
        let replica = replica.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if group_alive(entry.pid, entry.ticks) {
                tracing::info!(%replica, pid = entry.pid, "still running after the drain grace; killing it");
                if let Err(e) = signal_group(entry.pid, entry.ticks, rustix::process::Signal::KILL) {
                    tracing::warn!(%replica, error = %e, "cannot kill the replica");
                }
            }
        });
        Ok(())
    }

    /// The group's replicas running on this host: process-group leaders whose environment
    /// names the replica and this group.
    pub async fn find(&self) -> Result<Vec<Found>, Error> {
        let group = self.inner.options.group.clone();
        tokio::task::spawn_blocking(move || scan_proc(Path::new("/proc"), &group))
            .await
            .map_err(|e| Error::Unavailable { backend: "process", reason: e.to_string() })?
    }

    /// Watches a replica found running (its exit is reported like any other).
    pub fn adopt(&self, found: &Found) -> Result<(), Error> {
        let gone = || Error::Gone { replica: found.replica.clone(), handle: found.handle.clone() };
        let (pid, ticks) = parse_handle(&found.handle).ok_or_else(gone)?;
        if !alive(pid, ticks) {
            return Err(gone());
        }
        if self.inner.replicas.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&found.replica) {
            return Ok(());
        }
        let entry = self.register(&found.replica, pid, ticks);
        // Start from the last bytes of what it wrote: context for a crash report.
        let len = std::fs::metadata(self.output_path(&found.replica)).map_or(0, |m| m.len());
        let offset = len.saturating_sub(MAX_OUTPUT_TAIL_BYTES as u64);
        tokio::spawn(self.clone().watch(found.replica.clone(), found.agent.clone(), entry, None, offset));
        Ok(())
    }

    /// The last output of a running replica.
    pub fn output_tail(&self, replica: &str) -> Option<String> {
        let replicas = self.inner.replicas.lock().unwrap_or_else(|p| p.into_inner());
        replicas.get(replica).map(|e| e.output.lock().unwrap_or_else(|p| p.into_inner()).text())
    }
}

/// A replica's output file, read from `offset` on.
struct OutputFile {
    path: PathBuf,
    offset: u64,
}

impl OutputFile {
    /// Reads what was written since the last read into `ring` (and `log`); truncates the
    /// file past [`MAX_OUTPUT_FILE_BYTES`] (the replica appends, so it writes on at the new
    /// end).
    fn read_into(&mut self, replica: &str, ring: &Mutex<Ring>, log: Option<&AgentLog>) {
        let Ok(mut file) = std::fs::File::open(&self.path) else { return };
        let len = file.metadata().map_or(0, |m| m.len());
        if len < self.offset {
            self.offset = 0;
        }
        while self.offset < len {
            let want = (len - self.offset).min(MAX_READ_BYTES);
            let mut buf = Vec::with_capacity(want as usize);
            if file.seek(SeekFrom::Start(self.offset)).is_err()
                || (&mut file).take(want).read_to_end(&mut buf).is_err()
                || buf.is_empty()
            {
                return;
            }
            self.offset += buf.len() as u64;
            ring.lock().unwrap_or_else(|p| p.into_inner()).push(&buf);
            if let Some(log) = log {
                log.write(replica, &buf);
            }
        }
        if self.offset >= MAX_OUTPUT_FILE_BYTES
            && let Ok(f) = std::fs::OpenOptions::new().write(true).open(&self.path)
            && f.set_len(0).is_ok()
        {
            self.offset = 0;
        }
    }
}

/// The replicas of scaler group `group` running on this host (process-group leaders whose
/// environment names a replica and the group): what [`Backend::find`] returns, for tools
/// and tests.
pub fn find_running(group: &str) -> Result<Vec<Found>, Error> {
    scan_proc(Path::new("/proc"), group)
}

/// The replicas of `group` among the processes under `proc`.
fn scan_proc(proc: &Path, group: &str) -> Result<Vec<Found>, Error> {
    let dir = std::fs::read_dir(proc).map_err(|e| Error::Unavailable {
        backend: "process",
        reason: format!("cannot read {}: {e}", proc.display()),
    })?;
    // A scaler started by another scaler of the same group carries its environment: it must
    // never find (adopt, stop) itself or its own process group.
    let own_pid = std::process::id();
    let own_group = rustix::process::getpgrp().as_raw_nonzero().get() as u32;
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == own_pid || pid == own_group {
            continue;
        }
        let Some(stat) = std::fs::read_to_string(entry.path().join("stat")).ok().and_then(|t| parse_stat(&t))
        else {
            continue;
        };
        // A replica is its process group's leader; its children share its environment.
        if stat.pgrp != pid || stat.state == 'Z' || stat.state == 'X' {
            continue;
        }
        // Processes of other users cannot be read: not ours.
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        let mut vars: HashMap<&[u8], &[u8]> = HashMap::new();
        for var in environ.split(|b| *b == 0) {
            if let Some(eq) = var.iter().position(|b| *b == b'=') {
                vars.insert(&var[..eq], &var[eq + 1..]);
            }
        }
        let get = |k: &str| vars.get(k.as_bytes()).map(|v| String::from_utf8_lossy(v).into_owned());
        if get(GROUP_ENV).as_deref() != Some(group) {
            continue;
        }
        let Some(replica) = get(REPLICA_ENV) else { continue };
        found.push(Found {
            replica,
            agent: get(AGENT_ENV).unwrap_or_default(),
            instance: get(INSTANCE_ENV),
            handle: format!("{pid}@{}", stat.ticks),
        });
    }
    found.sort_by(|a, b| a.replica.cmp(&b.replica));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    const BOUND: Duration = Duration::from_secs(10);

    fn backend(dir: &Path, group: &str) -> (Backend, mpsc::Receiver<Exited>) {
        let (tx, rx) = mpsc::channel(16);
        let options = Options {
            group: group.into(),
            run_dir: dir.join("run"),
            log_dir: Some(dir.join("logs")),
            max_log_bytes: 1 << 20,
        };
        (Backend::new(options, tx), rx)
    }

    fn launch(replica: &str, group: &str, script: &str) -> Launch {
        Launch {
            replica: replica.into(),
            agent: "work".into(),
            instance: None,
            env: vec![
                (REPLICA_ENV.into(), replica.into()),
                (GROUP_ENV.into(), group.into()),
                (AGENT_ENV.into(), "work".into()),
            ],
            command: Some("/bin/sh".into()),
            args: vec!["-c".into(), script.into()],
            image: None,
            token_file: None,
        }
    }

    async fn exit(rx: &mut mpsc::Receiver<Exited>) -> Exited {
        tokio::time::timeout(BOUND, rx.recv()).await.expect("an exit within the bound").unwrap()
    }

    #[test]
    fn a_replica_gets_its_agents_token_file_and_never_the_scalers_token() {
        let env = |launch: &Launch| {
            let mut command = std::process::Command::new("true");
            replica_env(&mut command, launch);
            command
                .get_envs()
                .map(|(k, v)| (k.to_string_lossy().into_owned(), v.map(|v| v.to_string_lossy().into_owned())))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let plain = env(&launch("work-1", "g1", "true"));
        assert_eq!(plain["WEFT_TOKEN"], None, "removed, not inherited");
        assert_eq!(plain["WEFT_TOKEN_FILE"], None, "removed, not inherited");
        assert_eq!(plain[REPLICA_ENV].as_deref(), Some("work-1"));
        let with_token =
            Launch { token_file: Some("/etc/weft/work.token".into()), ..launch("work-2", "g1", "true") };
        let env = env(&with_token);
        assert_eq!(env["WEFT_TOKEN"], None);
        assert_eq!(env["WEFT_TOKEN_FILE"].as_deref(), Some("/etc/weft/work.token"));
    }

    #[test]
    fn stat_lines_parse_with_odd_commands() {
        let line =
            "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(parse_stat(line), Some(Stat { state: 'S', pgrp: 1234, ticks: 987654 }));
        assert_eq!(parse_handle("12@34"), Some((12, 34)));
        assert_eq!(parse_handle("12"), None);
    }

    #[tokio::test]
    async fn a_crash_is_reported_with_its_code_and_output() {
        let dir = tempfile::tempdir().unwrap();
        let (b, mut rx) = backend(dir.path(), "g1");
        let handle = b.start(&launch("work-1", "g1", "echo hello; echo oops >&2; exit 3")).await.unwrap();
        assert!(parse_handle(&handle).is_some(), "{handle}");
        let e = exit(&mut rx).await;
        assert_eq!((e.replica.as_str(), e.code, e.signal, e.stopped), ("work-1", Some(3), None, false));
        assert_eq!(e.output_tail, "hello\noops\n");
        let log = std::fs::read_to_string(dir.path().join("logs/work.log")).unwrap();
        assert_eq!(log, "[work-1] hello\n[work-1] oops\n");
        assert!(!dir.path().join("run/work-1.out").exists(), "the output file goes with the replica");
    }

    #[tokio::test]
    async fn a_missing_command_is_a_failed_start_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let (b, _rx) = backend(dir.path(), "g1");
        let mut l = launch("work-1", "g1", "");
        l.command = Some("/no/such/program".into());
        let e = b.start(&l).await.unwrap_err();
        assert!(e.to_string().contains("/no/such/program"), "{e}");
        assert!(e.to_string().contains("No such file"), "{e}");
    }

    #[tokio::test]
    async fn stop_terms_the_group_then_kills_what_ignores_it() {
        let dir = tempfile::tempdir().unwrap();
        let (b, mut rx) = backend(dir.path(), "g1");
        b.start(&launch("polite", "g1", "trap 'echo bye; exit 0' TERM; while true; do sleep 0.05; done"))
            .await
            .unwrap();
        b.start(&launch("stubborn", "g1", "trap '' TERM; while true; do sleep 0.05; done")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        b.stop("polite", Duration::from_secs(5)).unwrap();
        let e = exit(&mut rx).await;
        assert_eq!((e.replica.as_str(), e.code, e.stopped), ("polite", Some(0), true));
        assert!(e.output_tail.contains("bye"), "{}", e.output_tail);
        let started = Instant::now();
        b.stop("stubborn", Duration::from_millis(300)).unwrap();
        let e = exit(&mut rx).await;
        assert_eq!((e.replica.as_str(), e.signal, e.stopped), ("stubborn", Some(9), true));
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(matches!(b.stop("stubborn", Duration::ZERO), Err(Error::Unknown(_))));
    }

    #[tokio::test]
    async fn stop_kills_what_the_group_leader_left_running() {
        let dir = tempfile::tempdir().unwrap();
        let (b, mut rx) = backend(dir.path(), "g-left");
        // sh dies of TERM; the subshell it started ignores TERM and runs on in the group.
        let script = "(trap '' TERM; while true; do sleep 0.05; done) & echo child $!; wait";
        b.start(&launch("shell", "g-left", script)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.stop("shell", Duration::from_millis(300)).unwrap();
        let e = exit(&mut rx).await;
        assert_eq!((e.replica.as_str(), e.stopped), ("shell", true));
        let child: u32 = e
            .output_tail
            .split_whitespace()
            .skip_while(|w| *w != "child")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no child pid in {:?}", e.output_tail));
        let gone = || read_stat(child).is_none_or(|s| s.state == 'Z' || s.state == 'X');
        let started = Instant::now();
        while !gone() && started.elapsed() < BOUND {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !gone() {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(child as i32).unwrap(),
                rustix::process::Signal::KILL,
            );
            panic!("the leader's child {child} still runs after the grace");
        }
    }

    #[test]
    fn the_scalers_own_group_is_never_signalled() {
        let own = rustix::process::getpgrp().as_raw_nonzero().get() as u32;
        let ticks = read_stat(own).map_or(0, |s| s.ticks);
        // CONT: harmless should the guard ever fail.
        assert!(signal_group(own, ticks, rustix::process::Signal::CONT).is_err());
        assert!(signal_group(1, read_stat(1).map_or(0, |s| s.ticks), rustix::process::Signal::CONT).is_err());
    }

    #[test]
    fn find_never_returns_the_scaler_itself_or_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let own = std::process::id();
        let own_group = rustix::process::getpgrp().as_raw_nonzero().get() as u32;
        // Fake /proc entries: this process and its group leader carry the group's replica
        // environment (a scaler started by a scaler of the same group), and a real replica.
        for (pid, replica) in [(own, "self"), (own_group, "leader"), (4_000_000, "work-1")] {
            let p = dir.path().join(pid.to_string());
            std::fs::create_dir_all(&p).unwrap();
            let stat = format!("{pid} (x) S 1 {pid} {pid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 42 0 0");
            std::fs::write(p.join("stat"), stat).unwrap();
            let env = format!("{REPLICA_ENV}={replica}\0{GROUP_ENV}=g-self\0{AGENT_ENV}=work\0");
            std::fs::write(p.join("environ"), env).unwrap();
        }
        let found = scan_proc(dir.path(), "g-self").unwrap();
        let names: Vec<&str> = found.iter().map(|f| f.replica.as_str()).collect();
        assert_eq!(names, ["work-1"]);
    }

    #[tokio::test]
    async fn find_sees_only_its_groups_running_replicas_and_adoption_watches_them() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _rx1) = backend(dir.path(), "g-find");
        let (other, _rx2) = backend(dir.path(), "g2");
        let script = "echo up; while true; do sleep 0.05; done";
        let handle = first.start(&launch("work-a", "g-find", script)).await.unwrap();
        other.start(&launch("work-b", "g2", script)).await.unwrap();
        // A successor in group g1: it sees work-a only, adopts it, and reports its exit.
        let (successor, mut rx) = backend(dir.path(), "g-find");
        let found = successor.find().await.unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].replica.as_str(), found[0].agent.as_str()), ("work-a", "work"));
        assert_eq!(found[0].handle, handle);
        successor.adopt(&found[0]).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(successor.output_tail("work-a").unwrap().contains("up"));
        successor.stop("work-a", Duration::from_secs(5)).unwrap();
        let e = exit(&mut rx).await;
        assert_eq!((e.replica.as_str(), e.stopped), ("work-a", true));
        // A handle whose process is gone (or whose pid was reused) is not adopted.
        let stale = Found { handle: handle.clone(), ..found[0].clone() };
        assert!(matches!(successor.adopt(&stale), Err(Error::Gone { .. })));
        other.stop("work-b", Duration::from_secs(1)).unwrap();
    }
}

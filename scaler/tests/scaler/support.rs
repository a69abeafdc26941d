//! Test support: the binaries, a one-node fabric, scaler processes on a generated
//! configuration, the published status, and the group's running replicas.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_agent::{Client, Codec};
use weft_fabric::testing::{LocalCluster, NodeCommand, NodeProcess};
use weft_scaler::backend::Found;
use weft_scaler::backend::process::find_running;

/// Generous bound for what should happen "soon": tests share 2 cores.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,scaler=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The binaries the tests run: `weft-scaler` (this package), `scaled` (the example) and
/// `weft` (for `weft scaler status`), from the build profile of this test. `cargo test
/// --workspace` builds them all; the two of other packages are brought up to date here with
/// `cargo build` (a no-op when they are), so `cargo test -p weft-scaler` never runs stale ones.
pub struct Binaries {
    pub scaler: PathBuf,
    pub scaled: PathBuf,
    pub weft: PathBuf,
}

pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let exe = std::env::current_exe().expect("current exe");
        let mut dir = exe.parent().expect("exe dir").to_path_buf();
        if dir.ends_with("deps") {
            dir.pop();
        }
        let path = |name: &str| dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        let missing = [("weft-example-scaled", "scaled"), ("weft-fabric", "weft")];
        {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
            let mut build = std::process::Command::new(cargo);
            build.arg("build");
            if dir.ends_with("release") {
                build.arg("--release");
            }
            // A build for a named target (CI's static build: `target/<triple>/debug/`) is
            // brought up to date for that target, with the flags the environment gives it.
            if let Some(triple) = dir.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str())
                && triple.matches('-').count() >= 2
            {
                build.args(["--target", triple]);
            }
            for (package, bin) in &missing {
                build.args(["-p", package, "--bin", bin]);
            }
            let status = build.status().expect("run cargo build");
            assert!(status.success(), "cannot build {missing:?}: cargo build {status}");
        }
        Binaries { scaler: path("weft-scaler"), scaled: path("scaled"), weft: path("weft") }
    })
}

/// A one-node fabric in this process, with its data dir.
pub struct Fabric {
    pub cluster: LocalCluster,
    pub dir: tempfile::TempDir,
}

impl Fabric {
    pub async fn start() -> Self {
        Self::start_with(|_, _| {}).await
    }

    /// A one-node fabric whose node's configuration `tweak` adjusts (given the data dir's
    /// parent, where files for it may go).
    pub async fn start_with(tweak: impl Fn(&mut weft_fabric::Config, &Path)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().to_owned();
        let cluster = LocalCluster::start(dir.path(), 1, |c| tweak(c, &root)).await.expect("node starts");
        cluster.wait_for_leader(PATIENCE).await.expect("a leader");
        Self { cluster, dir }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.cluster.endpoints()
    }

    pub fn client(&self) -> Client {
        Client::builder(self.endpoints()).retry_for(PATIENCE).codec(Codec::Json).build().expect("client")
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
}

/// A scaler group of its own for one test, and the cleanup of its replicas: whatever runs
/// in it when the test ends (a killed scaler leaves its replicas) is killed.
pub struct Group {
    pub name: String,
}

impl Group {
    pub fn new(test: &str) -> Self {
        Self { name: format!("{test}-{:08x}", rand::random::<u32>()) }
    }

    /// Its replicas running on this host.
    pub fn running(&self) -> Vec<Found> {
        find_running(&self.name).expect("read /proc")
    }

    /// The pids of its running replicas, sorted.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> =
            self.running().iter().filter_map(|f| f.handle.split('@').next()?.parse().ok()).collect();
        pids.sort_unstable();
        pids
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // A system call, not the `kill` command: procps-ng 4.0.2's `kill -KILL -PGID` signals
        // every process (as `kill -1` would), not the group.
        for pid in self.pids() {
            if let Some(pid) =
                i32::try_from(pid).ok().filter(|p| *p > 1).and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// The head of a scaler configuration for `group` on `fabric`: short lease, run and log
/// directories in the fabric's temp dir. Agents' tables follow.
pub fn config_head(fabric: &Fabric, group: &Group) -> String {
    let endpoints: Vec<String> = fabric.endpoints().iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "endpoints = [{}]\ngroup = \"{}\"\nlease_ttl_ms = 2000\nrun_dir = \"{}\"\nlog_dir = \"{}\"\n",
        endpoints.join(", "),
        group.name,
        fabric.root().join("run").display(),
        fabric.root().join("logs").display(),
    )
}

/// An agent table running the `scaled` example, with `extra` lines.
pub fn scaled_agent(name: &str, extra: &str) -> String {
    format!("\n[agents.{name}]\ncommand = \"{}\"\n{extra}\n", binaries().scaled.display())
}

/// A `weft-scaler` process on `config` (written next to its log).
pub fn start_scaler(fabric: &Fabric, name: &str, config: &str) -> NodeProcess {
    start_scaler_with(fabric, name, config, &[])
}

/// [`start_scaler`] with `env` added to the scaler's environment.
pub fn start_scaler_with(fabric: &Fabric, name: &str, config: &str, env: &[(&str, &Path)]) -> NodeProcess {
    let path = fabric.root().join(format!("{name}.toml"));
    std::fs::write(&path, config).expect("write the config");
    let mut command = NodeCommand::new(&binaries().scaler, fabric.root().join(format!("{name}.log")))
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info,weft_scaler=debug");
    for (k, v) in env {
        command = command.env(k, v);
    }
    command.spawn().expect("weft-scaler starts")
}

/// The group's published status (JSON), if any.
pub async fn status(client: &Client, group: &Group) -> Option<Value> {
    client.state(&format!("shared/weft.scaler.{}", group.name)).get::<Value>("status").await.ok().flatten()
}

/// Waits until the status satisfies `f`; the last status seen when it does not.
pub async fn wait_status(client: &Client, group: &Group, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    let mut last = Value::Null;
    loop {
        if let Some(s) = status(client, group).await {
            if f(&s) {
                return s;
            }
            last = s;
        }
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}; last status: {last:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `f` holds.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An agent's field in a status.
pub fn field(status: &Value, agent: &str, field: &str) -> u64 {
    status["agents"][agent][field].as_u64().unwrap_or(0)
}

/// `weft scaler status --group G --json` against the fabric: its exit code and JSON.
pub fn cli_status(fabric: &Fabric, group: &Group) -> (i32, Value) {
    let out = std::process::Command::new(&binaries().weft)
        .args(["scaler", "status", "--group", &group.name, "--json", "--endpoint", &fabric.endpoints()[0]])
        .output()
        .expect("run weft");
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap_or(-1), json)
}

/// Samples the demand's sessions of `agent` named by this group's replicas until `stop`;
/// the most seen at once.
pub fn sample_sessions(
    client: Client,
    agent: &str,
    prefix: &str,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<usize> {
    let agent = agent.to_owned();
    let prefix = prefix.to_owned();
    tokio::spawn(async move {
        let mut watch = client.watch_demand(std::slice::from_ref(&agent));
        let mut most = 0;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return most,
                d = watch.next() => {
                    let Ok(d) = d else { continue };
                    let n = d.agent(&agent).map_or(0, |a| a.sessions.iter().filter(|s| s.name.starts_with(&prefix)).count());
                    most = most.max(n);
                }
            }
        }
    })
}

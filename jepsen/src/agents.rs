//! The agent processes of the executions workload: K `weft-jepsen-agent` processes, each in
//! its own namespace on the bridge ([`crate::net`]), started with `ip netns exec` (which
//! execs in place, so the child's pid is the agent's), killed with SIGKILL, restarted by
//! the `kill-agent` nemesis (which kills the agent that applied the latest increment, so
//! that the kill interrupts one). Each connects to every node the roster lists when it starts
//! (the SDK fails over between them) and serves the counter agent ([`crate::counter`]).
//!
//! Every process is killed when [`Agents`] is dropped; a dead run's are killed with its
//! namespaces by [`crate::net::cleanup`].

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::counter::{self, Effects, Target};
use crate::db::Roster;
use crate::net::{Host, Network};
use crate::rng::Rng;

/// The agent binary's name, next to `weft-jepsen`.
pub const BINARY: &str = "weft-jepsen-agent";
/// How long `kill-agent` waits for a node to say which agent serves the counter.
const SERVING_READ_TIMEOUT: Duration = Duration::from_millis(500);

/// Starting an agent process failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No agent binary where one was expected.
    #[error("no {BINARY} binary at {0}: build it with `cargo build -p weft-jepsen`, or pass --agent-bin")]
    NoBinary(String),
    /// The process could not be started; nothing runs for it.
    #[error("cannot start agent {id}: {source}")]
    Spawn { id: u64, source: std::io::Error },
}

/// How to run the agents.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `weft-jepsen-agent` binary.
    pub binary: PathBuf,
    /// Where each agent's output goes (`a<k>.log`).
    pub log_dir: PathBuf,
    /// How the agent applies increments.
    pub effects: Effects,
    /// What the workload's increments call (where `kill-agent` reads who serves).
    pub target: Target,
    /// How long each increment takes on purpose.
    pub work: Duration,
    /// Each assignment's lease (renewed while its handler runs).
    pub lease: Duration,
    /// The CA agents trust to reach the nodes over TLS (`WEFT_TLS_CA`), with `--tls`.
    pub tls_ca: Option<PathBuf>,
    /// The file of the agent token agents present (`WEFT_TOKEN_FILE`), with `--auth`.
    pub token_file: Option<PathBuf>,
}

/// Finds the agent binary: `explicit` if given, else the one next to the running
/// executable, else the newer of `target/{release,debug}/weft-jepsen-agent`.
pub fn find_binary(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(p) = explicit {
        return if p.is_file() { Ok(p.to_path_buf()) } else { Err(Error::NoBinary(p.display().to_string())) };
    }
    if let Some(sibling) = std::env::current_exe().ok().and_then(|e| Some(e.parent()?.join(BINARY)))
        && sibling.is_file()
    {
        return Ok(sibling);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let newest = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("target"), workspace.join("target")])
        .flat_map(|t| [t.join("release").join(BINARY), t.join("debug").join(BINARY)])
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max_by_key(|(t, _)| *t);
    newest.map(|(_, p)| p).ok_or_else(|| Error::NoBinary(format!("target/{{debug,release}}/{BINARY}")))
}

/// One agent process.
#[derive(Debug)]
pub struct Agent {
    /// Its number (1-based), as its host's.
    pub id: u64,
    /// Its host namespace.
    pub host: Host,
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// The agent processes; every one is killed when dropped.
#[derive(Debug)]
pub struct Agents {
    agents: Vec<Agent>,
    options: Option<Options>,
    roster: Roster,
    /// The run id, in each agent's session name (`jepsen <run> agent <k>`).
    run: String,
}

impl Agents {
    /// No agent processes (the state workloads).
    pub fn none() -> Self {
        Self { agents: Vec::new(), options: None, roster: Roster::default(), run: String::new() }
    }

    /// Starts one agent process on each agent host of `net`, connecting to the nodes of
    /// `roster`.
    pub fn start(net: &Network, roster: Roster, options: Options) -> Result<Self, Error> {
        if !options.binary.is_file() {
            return Err(Error::NoBinary(options.binary.display().to_string()));
        }
        let agents = net
            .agents()
            .iter()
            .map(|h| Agent {
                id: h.id,
                host: h.clone(),
                child: None,
                log: options.log_dir.join(format!("a{}.log", h.id)),
            })
            .collect();
        let mut all = Self { agents, options: Some(options), roster, run: net.run().to_owned() };
        let ids = all.ids();
        for id in ids {
            all.spawn(id)?;
        }
        Ok(all)
    }

    /// The agents' numbers.
    pub fn ids(&self) -> Vec<u64> {
        self.agents.iter().map(|a| a.id).collect()
    }

    /// The agents.
    pub fn agents(&self) -> &[Agent] {
        &self.agents
    }

    fn agent_mut(&mut self, id: u64) -> &mut Agent {
        let i = self.agents.iter().position(|a| a.id == id).expect("agent number of this run");
        &mut self.agents[i]
    }

    fn spawn(&mut self, id: u64) -> Result<(), Error> {
        let Some(options) = self.options.clone() else { return Ok(()) };
        let endpoints = self.roster.live().into_iter().map(|(_, a)| a).collect::<Vec<_>>().join(",");
        let name = format!("jepsen {} agent {id}", self.run);
        let agent = self.agent_mut(id);
        let spawn_err = |source| Error::Spawn { id, source };
        let log = OpenOptions::new().create(true).append(true).open(&agent.log).map_err(spawn_err)?;
        let mut command = Command::new("ip");
        if let Some(ca) = &options.tls_ca {
            command.env(weft_agent::tls::env::CA, ca);
        }
        if let Some(file) = &options.token_file {
            command.env(weft_agent::token::env::TOKEN_FILE, file);
        }
        let child = command
            .args(["netns", "exec", &agent.host.netns])
            .arg(&options.binary)
            .args(["--endpoints", &endpoints, "--name", &name, "--number", &id.to_string()])
            .args(["--effects", options.effects.name()])
            .args(["--work-ms", &options.work.as_millis().to_string()])
            .args(["--lease-ms", &options.lease.as_millis().to_string()])
            .env("RUST_LOG", std::env::var("WEFT_JEPSEN_AGENT_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(spawn_err)?)
            .stderr(log)
            .spawn()
            .map_err(spawn_err)?;
        tracing::info!(agent = id, pid = child.id(), "agent started");
        agent.child = Some(child);
        Ok(())
    }

    /// `kill -9` agent `id` and reap it.
    pub fn kill(&mut self, id: u64) {
        let agent = self.agent_mut(id);
        if let Some(mut child) = agent.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            tracing::info!(agent = id, "agent killed");
        }
    }

    /// Kills the agent that applied the latest increment (the one the instance is most
    /// likely activated on, so its kill interrupts an increment; on the shared target, one
    /// busy with increments), or a random running one when that is unknown or not running.
    /// What it did, for the history.
    pub async fn kill_serving(&mut self, rng: &mut Rng) -> String {
        let running: Vec<u64> = self.agents.iter().filter(|a| a.is_running()).map(|a| a.id).collect();
        if running.is_empty() {
            return "nobody killed: no agent running".into();
        }
        let target = self.options.as_ref().map_or(Target::Instance, |o| o.target);
        let (victim, why) = match counter::serving(&self.roster.live(), target, SERVING_READ_TIMEOUT).await {
            Some(id) if running.contains(&id) => (id, "it applied the latest increment"),
            _ => (running[rng.below(running.len() as u64) as usize], "random: the serving agent is unknown"),
        };
        self.kill(victim);
        format!("killed agent {victim} ({why})")
    }

    /// Starts every agent that is not running; their numbers.
    pub fn heal(&mut self) -> Result<Vec<u64>, Error> {
        let dead: Vec<u64> = self.agents.iter().filter(|a| !a.is_running()).map(|a| a.id).collect();
        for id in &dead {
            self.spawn(*id)?;
        }
        Ok(dead)
    }

    /// Kills every agent.
    pub fn stop_all(&mut self) {
        for id in self.ids() {
            self.kill(id);
        }
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        self.stop_all();
    }
}

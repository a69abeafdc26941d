//! The Docker backend: each replica is a container on the machine's Docker engine.
//!
//! A replica's container is created from its agent's image with the [`Launch`]'s environment,
//! named `<group>-<replica>` (so the engine itself refuses a second container for the same
//! replica), labelled for adoption, attached to the configured network, with restart policy
//! `no` (the scaler restarts, with its back-off) and, by default, the engine's init as PID 1
//! so SIGTERM reaches an agent that does not handle it and zombies are reaped.
//!
//! ```text
//!  start ──create──► created ──start──► running ──exit──► waiter: inspect, log tail,
//!                                          ▲               report Exited, remove
//!  stop ──(task) TERM, grace, KILL─────────┘
//!  find ──list by group label──► running: Found; exited, never started: removed
//!  adopt(Found) ──► a waiter, as for a container started here
//! ```
//!
//! Every container carries the labels [`GROUP_LABEL`], [`REPLICA_LABEL`], [`AGENT_LABEL`] and,
//! per instance, [`INSTANCE_LABEL`]. A waiter task per container waits on the engine for its
//! exit (`POST /containers/{id}/wait`), so a container adopted from a predecessor is watched
//! the same way as one this scaler started, and an exit is never missed while the engine's
//! connection breaks (the waiter asks again; the engine answers at once for an exited
//! container). Images are never pulled: an image missing on the engine is a failed start that
//! names it.
//!
//! The client negotiates the API version with the engine on first use (bollard speaks 1.53;
//! engine 20.10 speaks 1.41), and connects again after a failed first use, so a scaler can start
//! while the engine is down and report it.
//!
//! # Layout
//! - [`Settings`]: the `[docker]` table of the scaler's configuration (engine address,
//!   network, init); [`Options`]: those plus the scaler group.
//! - [`Spec`]: what an agent's containers run (image, command, arguments).
//! - [`Backend`]: start, stop, find, adopt; exits on the channel it was built with.
//! - [`Error`]: what went wrong, and whether anything changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as EngineError;
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, HostConfig, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures::StreamExt;
use tokio::sync::{OnceCell, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{CONTAINER_TOKEN_FILE, Exited, Found, KILL_WAIT, Launch, MAX_OUTPUT_TAIL_BYTES, ReplicaId};

/// The label naming the scaler group a container belongs to; [`Backend::find`] lists by it.
pub const GROUP_LABEL: &str = "weft.scaler.group";
/// The label carrying the container's [`ReplicaId`].
pub const REPLICA_LABEL: &str = "weft.scaler.replica";
/// The label naming the agent the container serves.
pub const AGENT_LABEL: &str = "weft.scaler.agent";
/// The label naming the instance the container serves alone (per-instance mode only).
pub const INSTANCE_LABEL: &str = "weft.scaler.instance";

/// The engine address used when none is configured.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// How long one ordinary request to the engine (create, start, list, inspect, remove) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines of a container's output read for its exit report (then cut to
/// [`MAX_OUTPUT_TAIL_BYTES`]).
pub const OUTPUT_TAIL_LINES: u32 = 200;

/// First pause of a waiter whose wait on the engine failed (the engine restarting, the socket
/// gone); it doubles up to [`WAIT_RETRY_MAX`].
pub const WAIT_RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest pause between a waiter's attempts.
pub const WAIT_RETRY_MAX: Duration = Duration::from_secs(30);

/// Most containers of one group that [`Backend::find`] looks at.
pub const MAX_FOUND: usize = 10_000;

/// Longest group name, in characters.
pub const MAX_GROUP_CHARS: usize = 64;

/// Times a stop asks the engine before it gives up (the engine unreachable meanwhile); the
/// pause between attempts grows from [`WAIT_RETRY_MIN`].
pub const STOP_ATTEMPTS: u32 = 5;

/// The bollard client's own request timeout, in seconds: only a backstop, since every call is
/// bounded by [`REQUEST_TIMEOUT`] or the stop's grace; long enough for the longest stop.
const CLIENT_TIMEOUT_S: u64 = 24 * 3600;

/// The `[docker]` table of the scaler's configuration: how the Docker backend reaches the
/// engine and what every container gets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The engine's address: `unix:///PATH` (default `unix:///var/run/docker.sock`), or
    /// `tcp://HOST:PORT` / `http://HOST:PORT` for an engine that listens on TCP (plain HTTP:
    /// keep it on a trusted network). The scaler in a container reaches its host's engine
    /// through the socket mounted into it.
    pub host: String,
    /// The network the containers join (the engine's `NetworkMode`): a user-defined network's
    /// name (compose's `<project>_default`), so agents reach the nodes by service name, or
    /// `bridge`, `host`, `none`. Default: unset, the engine's default bridge.
    pub network: Option<String>,
    /// Run the engine's init (docker-init) as PID 1 in each container: it forwards SIGTERM to
    /// an agent that installs no handler (PID 1 ignores it otherwise) and reaps zombies.
    /// Default true.
    pub init: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self { host: DEFAULT_HOST.into(), network: None, init: true }
    }
}

/// The Docker backend's options: the [`Settings`] and the scaler group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The scaler group: the value of [`GROUP_LABEL`] on every container its scalers start,
    /// and the prefix of their names. A successor adopts its predecessor's containers by it;
    /// two groups on one engine never see each other's. 1 to [`MAX_GROUP_CHARS`] characters
    /// of `[A-Za-z0-9_.-]`, starting with a letter or digit.
    pub group: String,
    /// Engine address, network, init.
    pub settings: Settings,
}

impl Options {
    /// Checks every field; the first bad one is named with the reason.
    pub fn validate(&self) -> Result<(), Error> {
        let host = &self.settings.host;
        if !(host.starts_with("unix://") || host.starts_with("tcp://") || host.starts_with("http://")) {
            return Err(Error::Invalid {
                field: "host",
                reason: format!("'{host}' is not unix:///PATH, tcp://HOST:PORT or http://HOST:PORT"),
            });
        }
        if !is_name(&self.group) || self.group.chars().count() > MAX_GROUP_CHARS {
            return Err(Error::Invalid {
                field: "group",
                reason: format!(
                    "'{}' is not 1 to {MAX_GROUP_CHARS} characters of [A-Za-z0-9_.-] starting with a letter or digit",
                    self.group
                ),
            });
        }
        if let Some(network) = &self.settings.network
            && network.trim().is_empty()
        {
            return Err(Error::Invalid {
                field: "network",
                reason: "is empty (leave it unset for the default)".into(),
            });
        }
        Ok(())
    }
}

/// What an agent's containers run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The image (`weft-example-scaled:latest`); it must exist on the engine, it is never pulled.
    pub image: String,
    /// A program that replaces the image's entrypoint (unset: the image's own).
    pub command: Option<String>,
    /// Its arguments, or the arguments after the image's entrypoint (empty with no
    /// `command`: the image's own command).
    pub args: Vec<String>,
}

/// What went wrong. Unless a variant says otherwise, nothing changed on the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine could not be reached (socket missing, connection refused, no answer within
    /// [`REQUEST_TIMEOUT`]).
    #[error("docker engine at {host} unreachable: {reason}")]
    Unreachable {
        /// The configured engine address.
        host: String,
        /// Why, as the client saw it.
        reason: String,
    },
    /// The agent's image is not on the engine; build it there (nothing is pulled).
    #[error(
        "image '{image}' not found on the docker engine at {host} (images are never pulled: build it there first)"
    )]
    ImageMissing {
        /// The image.
        image: String,
        /// The configured engine address.
        host: String,
    },
    /// A container for this replica exists already (a start was repeated): the existing one
    /// is left alone.
    #[error("a container named '{name}' exists already for replica {replica}")]
    Exists {
        /// The replica.
        replica: ReplicaId,
        /// The container's name.
        name: String,
    },
    /// The engine refused a request (for a start: the container was removed again).
    #[error("docker engine at {host} refused to {action}: {message}")]
    Refused {
        /// The configured engine address.
        host: String,
        /// What was asked, naming the replica: `start the container of replica echo-5f3a9c21`.
        action: String,
        /// The engine's message.
        message: String,
    },
    /// The backend does not watch this replica (it exited, or was never started or adopted).
    #[error("replica {0} has no container watched here")]
    Unknown(ReplicaId),
    /// A found replica's container is gone, or is no longer that replica's.
    #[error("replica {replica}: container {handle} is gone")]
    Gone {
        /// The replica.
        replica: ReplicaId,
        /// The container id it was found with.
        handle: String,
    },
    /// A configuration field or an argument is invalid.
    #[error("invalid docker backend {field}: {reason}")]
    Invalid {
        /// The field or argument.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// The engine's version, as [`Backend::check`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engine {
    /// The engine's release (`20.10.24+dfsg1`).
    pub version: String,
    /// The API version the client and engine agreed on (`1.41`).
    pub api_version: String,
}

/// The Docker backend. Cheap to clone; clones share the engine connection and the watched
/// containers.
#[derive(Clone)]
pub struct Backend {
    inner: Arc<Inner>,
}

struct Inner {
    options: Options,
    engine: OnceCell<Docker>,
    exits: mpsc::Sender<Exited>,
    watched: Mutex<HashMap<ReplicaId, Watched>>,
    shutdown: CancellationToken,
}

/// A container this backend watches (or is starting).
struct Watched {
    /// Set once the scaler asked the replica to stop: its exit is then a stop, not a crash.
    stopping: bool,
    /// Turns true when the waiter has reported the exit and removed the container.
    gone: watch::Receiver<bool>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("docker::Backend").field("options", &self.inner.options).finish_non_exhaustive()
    }
}

impl Backend {
    /// The backend, reporting every exit of a container it started or adopted on `exits`.
    /// Checks the options; does not contact the engine yet ([`check`](Self::check) does).
    pub fn new(options: Options, exits: mpsc::Sender<Exited>) -> Result<Self, Error> {
        options.validate()?;
        Ok(Self {
            inner: Arc::new(Inner {
                options,
                engine: OnceCell::new(),
                exits,
                watched: Mutex::new(HashMap::new()),
                shutdown: CancellationToken::new(),
            }),
        })
    }

    /// The options it was built with.
    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// Connects to the engine (negotiating the API version on the first success) and returns
    /// its version: how a scaler tells at start, and in its status, whether the engine answers.
    pub async fn check(&self) -> Result<Engine, Error> {
        let docker = self.engine().await?;
        let version = self
            .bounded(docker.version())
            .await
            .map_err(|e| e.into_error(self.host(), "tell its version".into()))?;
        Ok(Engine {
            version: version.version.unwrap_or_default(),
            api_version: format!("{}", docker.client_version()),
        })
    }

    /// Starts `launch`'s replica from its `image`, `command` and `args`: see
    /// [`start`](Self::start).
    pub async fn start_launch(&self, launch: &Launch) -> Result<String, Error> {
        let image = launch.image.clone().ok_or_else(|| Error::Invalid {
            field: "image",
            reason: format!("agent '{}' has no image to run", launch.agent),
        })?;
        self.start(launch, &Spec { image, command: launch.command.clone(), args: launch.args.clone() }).await
    }

    /// Starts `launch`'s replica in a container from `spec`. Returns the container's id. An
    /// error leaves no container behind (but [`Error::Exists`], which leaves the existing one).
    #[tracing::instrument(skip_all, fields(replica = %launch.replica, agent = %launch.agent, image = %spec.image))]
    pub async fn start(&self, launch: &Launch, spec: &Spec) -> Result<String, Error> {
        let name = self.container_name(&launch.replica)?;
        let (gone_tx, gone_rx) = watch::channel(false);
        {
            let mut watched = self.lock();
            if watched.contains_key(&launch.replica) {
                return Err(Error::Exists { replica: launch.replica.clone(), name });
            }
            // Watched from before it exists, so a concurrent find() leaves it alone.
            watched.insert(launch.replica.clone(), Watched { stopping: false, gone: gone_rx });
        }
        match self.create_and_start(launch, spec, &name).await {
            Ok(id) => {
                tracing::info!(container = %id, name = %name, "container started");
                self.spawn_waiter(launch.replica.clone(), id.clone(), gone_tx);
                Ok(id)
            }
            Err(e) => {
                self.lock().remove(&launch.replica);
                Err(e)
            }
        }
    }

    async fn create_and_start(&self, launch: &Launch, spec: &Spec, name: &str) -> Result<String, Error> {
        let docker = self.engine().await?;
        let options = &self.inner.options;
        let mut labels = HashMap::from([
            (GROUP_LABEL.to_string(), options.group.clone()),
            (REPLICA_LABEL.to_string(), launch.replica.clone()),
            (AGENT_LABEL.to_string(), launch.agent.clone()),
        ]);
        if let Some(instance) = &launch.instance {
            labels.insert(INSTANCE_LABEL.to_string(), instance.clone());
        }
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: spec.command.clone().map(|c| vec![c]),
            cmd: (spec.command.is_some() || !spec.args.is_empty()).then(|| spec.args.clone()),
            env: Some(container_env(launch)),
            labels: Some(labels),
            host_config: Some(HostConfig {
                binds: token_bind(launch).map(|b| vec![b]),
                network_mode: options.settings.network.clone(),
                init: Some(options.settings.init),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let create = CreateContainerOptionsBuilder::default().name(name).build();
        let created = match self.bounded(docker.create_container(Some(create), body)).await {
            Ok(created) => created,
            Err(Failure::Engine { status: 404, message }) if message.contains("No such image") => {
                return Err(Error::ImageMissing { image: spec.image.clone(), host: self.host().to_string() });
            }
            Err(Failure::Engine { status: 409, .. }) => {
                return Err(Error::Exists { replica: launch.replica.clone(), name: name.to_string() });
            }
            Err(e) => {
                return Err(
                    e.into_error(self.host(), format!("create the container of replica {}", launch.replica))
                );
            }
        };
        for warning in created.warnings.iter().filter(|w| !w.is_empty()) {
            tracing::warn!(name, warning = %warning, "the engine warned on create");
        }
        if let Err(e) = self.bounded(docker.start_container(&created.id, None)).await {
            // A container that never ran is of no use to anyone: remove it, so a failed start
            // changes nothing.
            if let Err(r) = self.remove(&docker, &created.id).await {
                tracing::warn!(name, error = ?r, "cannot remove a container that failed to start; find() will");
            }
            return Err(
                e.into_error(self.host(), format!("start the container of replica {}", launch.replica))
            );
        }
        Ok(created.id)
    }

    /// Asks `replica`'s container to stop and returns at once: a task has the engine send the
    /// image's stop signal (SIGTERM), wait `grace` (rounded up to whole seconds, the engine's
    /// unit), then SIGKILL; the exit is reported (as a stop) on the exits channel and the
    /// container removed. A container still there [`KILL_WAIT`] after that is removed by force.
    #[tracing::instrument(skip_all, fields(replica = %replica, grace_ms = grace.as_millis() as u64))]
    pub fn stop(&self, replica: &str, grace: Duration) -> Result<(), Error> {
        let gone = {
            let mut watched = self.lock();
            let w = watched.get_mut(replica).ok_or_else(|| Error::Unknown(replica.to_string()))?;
            w.stopping = true;
            w.gone.clone()
        };
        let name = self.container_name(replica)?;
        let this = self.clone();
        let replica = replica.to_string();
        tokio::spawn(async move { this.stop_task(&replica, &name, grace, gone).await });
        Ok(())
    }

    async fn stop_task(&self, replica: &str, name: &str, grace: Duration, mut gone: watch::Receiver<bool>) {
        let grace_s = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let stop =
            StopContainerOptionsBuilder::default().t(i32::try_from(grace_s).unwrap_or(i32::MAX)).build();
        let bound = Duration::from_secs(grace_s) + KILL_WAIT + REQUEST_TIMEOUT;
        let mut retry = WAIT_RETRY_MIN;
        for attempt in 1..=STOP_ATTEMPTS {
            let outcome = match self.engine().await {
                Ok(docker) => {
                    match tokio::time::timeout(bound, docker.stop_container(name, Some(stop.clone()))).await {
                        Ok(result) => result.map_err(Failure::from),
                        Err(_) => Err(Failure::Transport(format!(
                            "the stop did not return within {} s",
                            bound.as_secs()
                        ))),
                    }
                }
                Err(e) => Err(Failure::Transport(e.to_string())),
            };
            match outcome {
                // 304: it had stopped already; 404: it is gone. Either way the waiter reports it.
                Ok(()) | Err(Failure::Engine { status: 304 | 404, .. }) => break,
                Err(e) => {
                    tracing::warn!(replica, attempt, error = ?e, "the engine did not stop the container");
                    if attempt == STOP_ATTEMPTS {
                        tracing::error!(
                            replica,
                            attempts = STOP_ATTEMPTS,
                            "giving up stopping the container"
                        );
                        return;
                    }
                }
            }
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(WAIT_RETRY_MAX);
        }
        if tokio::time::timeout(KILL_WAIT, gone.wait_for(|g| *g)).await.is_ok() {
            return;
        }
        tracing::warn!(
            replica,
            wait_s = KILL_WAIT.as_secs(),
            "the container is still there after its stop; removing it by force"
        );
        if let Ok(docker) = self.engine().await
            && let Err(e) = self.remove(&docker, name).await
        {
            tracing::warn!(replica, error = ?e, "cannot remove the container");
        }
    }

    /// The replicas of this group whose containers run (or are paused or restarting), for
    /// [`adopt`](Self::adopt). Containers of the group that exited or were created and never
    /// started (a scaler killed mid-start), and that nobody watches here, are removed.
    pub async fn find(&self) -> Result<Vec<Found>, Error> {
        let docker = self.engine().await?;
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{GROUP_LABEL}={}", self.inner.options.group)],
        )]);
        let list = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let containers = self
            .bounded(docker.list_containers(Some(list)))
            .await
            .map_err(|e| e.into_error(self.host(), "list the containers of the group".into()))?;
        let mut found = Vec::new();
        for container in containers.into_iter().take(MAX_FOUND) {
            let Some(id) = container.id else { continue };
            let labels = container.labels.unwrap_or_default();
            let Some(replica) = labels.get(REPLICA_LABEL).cloned() else {
                tracing::warn!(container = %id, "a container of the group has no replica label; left alone");
                continue;
            };
            let running = matches!(
                container.state,
                Some(
                    ContainerSummaryStateEnum::RUNNING
                        | ContainerSummaryStateEnum::PAUSED
                        | ContainerSummaryStateEnum::RESTARTING
                )
            );
            if running {
                found.push(Found {
                    agent: labels.get(AGENT_LABEL).cloned().unwrap_or_default(),
                    instance: labels.get(INSTANCE_LABEL).cloned(),
                    replica,
                    handle: id,
                });
            } else if !self.lock().contains_key(&replica)
                && container.state != Some(ContainerSummaryStateEnum::REMOVING)
            {
                tracing::info!(replica = %replica, container = %id, state = ?container.state, "removing a container left behind");
                self.remove(&docker, &id).await.map_err(|e| {
                    e.into_error(
                        self.host(),
                        format!("remove the container left behind by replica {replica}"),
                    )
                })?;
            }
        }
        Ok(found)
    }

    /// Takes charge of a container [`find`](Self::find) returned: its exit is reported from
    /// now on, and it can be stopped. Adopting one watched already changes nothing.
    pub async fn adopt(&self, found: &Found) -> Result<(), Error> {
        if self.lock().contains_key(&found.replica) {
            return Ok(());
        }
        let docker = self.engine().await?;
        let gone = || Error::Gone { replica: found.replica.clone(), handle: found.handle.clone() };
        let inspect = match self.bounded(docker.inspect_container(&found.handle, None)).await {
            Ok(inspect) => inspect,
            Err(Failure::Engine { status: 404, .. }) => return Err(gone()),
            Err(e) => {
                return Err(
                    e.into_error(self.host(), format!("inspect the container of replica {}", found.replica))
                );
            }
        };
        let labels = inspect.config.and_then(|c| c.labels).unwrap_or_default();
        if labels.get(GROUP_LABEL) != Some(&self.inner.options.group)
            || labels.get(REPLICA_LABEL) != Some(&found.replica)
        {
            return Err(gone());
        }
        let (gone_tx, gone_rx) = watch::channel(false);
        {
            let mut watched = self.lock();
            if watched.contains_key(&found.replica) {
                return Ok(());
            }
            watched.insert(found.replica.clone(), Watched { stopping: false, gone: gone_rx });
        }
        tracing::info!(replica = %found.replica, container = %found.handle, "adopted a running container");
        self.spawn_waiter(found.replica.clone(), found.handle.clone(), gone_tx);
        Ok(())
    }

    /// Stops watching: the waiters end and no more exits are reported. The containers keep
    /// running, for a successor to adopt.
    pub fn close(&self) {
        self.inner.shutdown.cancel();
    }

    /// The container name of `replica`: `<group>-<replica>`.
    pub fn container_name(&self, replica: &str) -> Result<String, Error> {
        if !is_name(replica) {
            return Err(Error::Invalid {
                field: "replica",
                reason: format!("'{replica}' does not make a container name (characters of [A-Za-z0-9_.-])"),
            });
        }
        Ok(format!("{}-{replica}", self.inner.options.group))
    }

    fn host(&self) -> &str {
        &self.inner.options.settings.host
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ReplicaId, Watched>> {
        self.inner.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The engine's client, connected and its API version negotiated; tried again on the next
    /// call after a failure.
    async fn engine(&self) -> Result<Docker, Error> {
        let host = self.host();
        let unreachable = |reason: String| Error::Unreachable { host: host.to_string(), reason };
        let docker = self
            .inner
            .engine
            .get_or_try_init(|| async {
                let client = if let Some(path) = host.strip_prefix("unix://") {
                    Docker::connect_with_unix(path, CLIENT_TIMEOUT_S, bollard::API_DEFAULT_VERSION)
                } else {
                    Docker::connect_with_http(host, CLIENT_TIMEOUT_S, bollard::API_DEFAULT_VERSION)
                }
                .map_err(|e| unreachable(chain(&e)))?;
                match tokio::time::timeout(REQUEST_TIMEOUT, client.negotiate_version()).await {
                    Ok(Ok(client)) => Ok(client),
                    Ok(Err(e)) => Err(unreachable(chain(&e))),
                    Err(_) => Err(unreachable(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))),
                }
            })
            .await?;
        Ok(docker.clone())
    }

    /// `call`, bounded by [`REQUEST_TIMEOUT`], its error sorted into what the engine said and
    /// what kept it from saying anything.
    async fn bounded<T>(&self, call: impl Future<Output = Result<T, EngineError>>) -> Result<T, Failure> {
        match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
            Ok(result) => result.map_err(Failure::from),
            Err(_) => Err(Failure::Transport(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))),
        }
    }

    /// Removes a container by force; one that is gone or being removed already is fine.
    async fn remove(&self, docker: &Docker, container: &str) -> Result<(), Failure> {
        let remove = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.bounded(docker.remove_container(container, Some(remove))).await {
            Ok(()) | Err(Failure::Engine { status: 404 | 409, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn spawn_waiter(&self, replica: ReplicaId, id: String, gone: watch::Sender<bool>) {
        let this = self.clone();
        tokio::spawn(async move {
            let shutdown = this.inner.shutdown.clone();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {}
                _ = this.wait_and_report(&replica, &id) => {}
            }
            this.lock().remove(&replica);
            let _ = gone.send(true);
        });
    }

    /// Waits for the container to exit, then reports the exit and removes the container.
    async fn wait_and_report(&self, replica: &str, id: &str) {
        let mut retry = WAIT_RETRY_MIN;
        let vanished = loop {
            if let Ok(docker) = self.engine().await {
                let wait = WaitContainerOptionsBuilder::default().condition("not-running").build();
                match docker.wait_container(id, Some(wait)).next().await {
                    // A non-zero exit arrives as an error carrying the code; either way it exited.
                    Some(Ok(_)) | Some(Err(EngineError::DockerContainerWaitError { .. })) => break false,
                    Some(Err(e)) => match Failure::from(e) {
                        Failure::Engine { status: 404, .. } => break true,
                        failure => {
                            tracing::debug!(replica, container = id, error = ?failure, "waiting on a container failed; again")
                        }
                    },
                    None => {
                        tracing::debug!(replica, container = id, "the wait ended without an answer; again")
                    }
                }
            }
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(WAIT_RETRY_MAX);
        };
        let stopping = self.lock().get(replica).is_some_and(|w| w.stopping);
        let mut exited = Exited {
            replica: replica.to_string(),
            code: None,
            signal: None,
            stopped: stopping,
            output_tail: String::new(),
        };
        if vanished {
            exited.output_tail = "[weft-scaler] the container was removed outside the scaler".into();
        } else if let Ok(docker) = self.engine().await {
            if let Ok(inspect) = self.bounded(docker.inspect_container(id, None)).await {
                let state = inspect.state.unwrap_or_default();
                (exited.code, exited.signal) = exit_status(state.exit_code.unwrap_or(-1));
                exited.output_tail = self.output_tail(&docker, id).await;
                if state.oom_killed == Some(true) {
                    exited.output_tail.push_str("\n[weft-scaler] the container was killed: out of memory\n");
                }
                if let Some(error) = state.error.filter(|e| !e.is_empty()) {
                    exited.output_tail.push_str(&format!("\n[weft-scaler] the engine says: {error}\n"));
                }
            }
            if let Err(e) = self.remove(&docker, id).await {
                tracing::warn!(replica, container = id, error = ?e, "cannot remove an exited container; find() will");
            }
        }
        tracing::info!(replica, container = id, code = ?exited.code, signal = ?exited.signal,
            stopped = exited.stopped, "container exited");
        // A scaler that dropped its receiver is shutting down; nobody is left to tell.
        let _ = self.inner.exits.send(exited).await;
    }

    /// The last [`OUTPUT_TAIL_LINES`] lines of the container's stdout and stderr, cut to the
    /// last [`MAX_OUTPUT_TAIL_BYTES`].
    async fn output_tail(&self, docker: &Docker, id: &str) -> String {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&OUTPUT_TAIL_LINES.to_string())
            .build();
        let mut logs = docker.logs(id, Some(options));
        let mut tail: Vec<u8> = Vec::new();
        let read = async {
            while let Some(Ok(chunk)) = logs.next().await {
                tail.extend_from_slice(&chunk.into_bytes());
                if tail.len() > 2 * MAX_OUTPUT_TAIL_BYTES {
                    tail.drain(..tail.len() - MAX_OUTPUT_TAIL_BYTES);
                }
            }
        };
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, read).await;
        if tail.len() > MAX_OUTPUT_TAIL_BYTES {
            tail.drain(..tail.len() - MAX_OUTPUT_TAIL_BYTES);
        }
        String::from_utf8_lossy(&tail).into_owned()
    }
}

/// Splits a container's exit code: the engine reports a process killed by signal N as 128 + N
/// (as a shell does, and docker-init passes it on).
fn exit_status(code: i64) -> (Option<i32>, Option<i32>) {
    match code {
        129..=159 => (None, Some((code - 128) as i32)),
        c => (Some(i32::try_from(c).unwrap_or(-1)), None),
    }
}

/// Whether `s` may be part of a container name: `[A-Za-z0-9][A-Za-z0-9_.-]*`.
fn is_name(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// An error and its sources, in one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let line = s.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = s.source();
    }
    text
}

/// A failed request: the engine answered with an error status, or it could not be asked.
#[derive(Debug)]
enum Failure {
    Engine { status: u16, message: String },
    Transport(String),
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::DockerResponseServerError { status_code, message } => {
                Failure::Engine { status: status_code, message }
            }
            other => Failure::Transport(chain(&other)),
        }
    }
}

impl Failure {
    fn into_error(self, host: &str, action: String) -> Error {
        match self {
            Failure::Engine { message, .. } => Error::Refused { host: host.to_string(), action, message },
            Failure::Transport(reason) => Error::Unreachable { host: host.to_string(), reason },
        }
    }
}

/// A container's environment: the launch's, and `WEFT_TOKEN_FILE` naming the mounted token
/// file when the agent has one.
fn container_env(launch: &Launch) -> Vec<String> {
    let token = weft_agent::token::env::TOKEN_FILE;
    let mut env: Vec<String> =
        launch.env.iter().filter(|(k, _)| k != token).map(|(k, v)| format!("{k}={v}")).collect();
    if launch.token_file.is_some() {
        env.push(format!("{token}={CONTAINER_TOKEN_FILE}"));
    }
    env
}

/// The read-only mount of the agent's token file (a path on the engine's host), if it has one.
fn token_bind(launch: &Launch) -> Option<String> {
    launch.token_file.as_ref().map(|file| format!("{}:{CONTAINER_TOKEN_FILE}:ro", file.display()))
}

#[cfg(test)]
#[path = "docker_test.rs"]
mod tests;

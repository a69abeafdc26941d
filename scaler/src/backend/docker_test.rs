//! Tests of the Docker backend on the machine's real engine, with a fixture image built here:
//! a tiny static program (compiled with `rustc`, `FROM scratch`) that prints its `WEFT_*`
//! environment, then exits with `FIXTURE_EXIT` or runs until a signal ends it
//! (`FIXTURE_IGNORE_TERM` makes it ignore SIGTERM). Every test uses its own group and removes
//! every container of it (and its network) when it ends, passed or failed.

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::*;

/// The fixture's source: no dependencies, so it compiles in about a second.
const FIXTURE_SOURCE: &str = r#"
use std::io::Write;
extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
}
fn main() {
    let mut vars: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k.starts_with("WEFT_")).collect();
    vars.sort();
    for (k, v) in vars {
        println!("{k}={v}");
    }
    println!("fixture: args {:?}", std::env::args().skip(1).collect::<Vec<_>>());
    if let Ok(path) = std::env::var("WEFT_TOKEN_FILE") {
        match std::fs::read_to_string(&path) {
            Ok(token) => println!("fixture: token file {path} holds {} bytes", token.trim().len()),
            Err(e) => println!("fixture: token file {path}: {e}"),
        }
    }
    if std::env::var_os("FIXTURE_IGNORE_TERM").is_some() {
        unsafe { signal(15, 1) };
        println!("fixture: ignoring SIGTERM");
    }
    if let Ok(code) = std::env::var("FIXTURE_EXIT") {
        eprintln!("fixture: exiting with {code}");
        std::process::exit(code.parse().unwrap_or(1));
    }
    println!("fixture: running");
    std::io::stdout().flush().ok();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
"#;

/// How long a test waits for an exit report or a container's output.
const WAIT: Duration = Duration::from_secs(60);

/// The fixture image's tag, built once per test process (and not again while the engine has
/// it: the tag carries a hash of the source).
fn fixture_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        FIXTURE_SOURCE.hash(&mut hasher);
        let tag = format!("weft-scaler-fixture:{:016x}", hasher.finish());
        if docker(&["image", "inspect", &tag]).is_ok() {
            return tag;
        }
        let dir = tempfile_dir("fixture");
        std::fs::write(dir.join("fixture.rs"), FIXTURE_SOURCE).unwrap();
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        let out = Command::new(rustc)
            .current_dir(&dir)
            .args([
                "--edition",
                "2021",
                "-C",
                "opt-level=1",
                "-C",
                "strip=symbols",
                "-C",
                "target-feature=+crt-static",
            ])
            .args(["--target", "x86_64-unknown-linux-gnu", "-o", "fixture", "fixture.rs"])
            .output()
            .expect("rustc runs");
        assert!(out.status.success(), "rustc failed: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(
            dir.join("Dockerfile"),
            "FROM scratch\nCOPY fixture /fixture\nENTRYPOINT [\"/fixture\"]\n",
        )
        .unwrap();
        docker(&["build", "-q", "-t", &tag, dir.to_str().unwrap()]).expect("the fixture image builds");
        let _ = std::fs::remove_dir_all(&dir);
        tag
    })
}

fn tempfile_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-scaler-{what}-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Runs the docker CLI; its stdout, or its stderr as the error.
fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker").args(args).output().map_err(|e| format!("docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// A test's group (and network): every container labelled with it, and the network, are
/// removed when it drops.
struct Group {
    name: String,
    network: Option<String>,
}

impl Group {
    fn new(test: &str) -> Self {
        Self { name: format!("t{}-{}-{test}", std::process::id(), unique()), network: None }
    }

    fn with_network(mut self) -> Self {
        let network = format!("{}-net", self.name);
        docker(&["network", "create", "--label", &format!("{GROUP_LABEL}={}", self.name), &network])
            .expect("the test network is created");
        self.network = Some(network);
        self
    }

    fn options(&self) -> Options {
        Options {
            group: self.name.clone(),
            settings: Settings { network: self.network.clone(), ..Settings::default() },
        }
    }

    /// Ids of every container of the group, running or not.
    fn containers(&self) -> Vec<String> {
        self.try_containers().expect("docker ps")
    }

    fn try_containers(&self) -> Result<Vec<String>, String> {
        let ids = docker(&["ps", "-aq", "--filter", &format!("label={GROUP_LABEL}={}", self.name)])?;
        Ok(ids.lines().map(str::to_string).collect())
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // No panic here: a second one while a failed test unwinds aborts the whole test
        // binary, and the other tests' results are lost with it (an engine that is down).
        for id in self.try_containers().unwrap_or_default() {
            let _ = docker(&["rm", "-f", &id]);
        }
        if let Some(network) = &self.network {
            let _ = docker(&["network", "rm", network]);
        }
    }
}

fn launch(replica: &str, agent: &str, instance: Option<&str>, extra: &[(&str, &str)]) -> Launch {
    let mut env = vec![
        ("WEFT_ENDPOINT".to_string(), "node1:7400".to_string()),
        ("WEFT_AGENT".to_string(), agent.to_string()),
        ("WEFT_SESSION_NAME".to_string(), replica.to_string()),
        (super::super::REPLICA_ENV.to_string(), replica.to_string()),
    ];
    if let Some(instance) = instance {
        env.push(("WEFT_INSTANCE".to_string(), instance.to_string()));
    }
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Launch {
        replica: replica.into(),
        agent: agent.into(),
        instance: instance.map(str::to_string),
        env,
        command: None,
        args: Vec::new(),
        image: None,
        token_file: None,
    }
}

fn fixture() -> Spec {
    Spec { image: fixture_image().to_string(), command: None, args: Vec::new() }
}

/// Waits until the container's output contains `text`.
async fn wait_for_output(name: &str, text: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = Command::new("docker").args(["logs", name]).output().expect("docker logs");
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if all.contains(text) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} never printed '{text}'; it printed:\n{all}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn next_exit(exits: &mut mpsc::Receiver<Exited>) -> Exited {
    tokio::time::timeout(WAIT, exits.recv()).await.expect("an exit is reported").expect("the channel is open")
}

#[tokio::test]
async fn start_labels_find_stop_and_report() {
    let group = Group::new("start").with_network();
    let (tx, mut exits) = mpsc::channel(16);
    let backend = Backend::new(group.options(), tx).unwrap();
    let engine = backend.check().await.expect("the engine answers");
    tracing::info!(?engine, "engine");
    assert!(!engine.api_version.is_empty());

    tracing::info!("start one replica per instance and one pool replica");
    let one = launch("work-aaaa0001", "work", Some("i-1"), &[]);
    let id = backend.start(&one, &fixture()).await.expect("started");
    let two = launch("work-aaaa0002", "work", None, &[]);
    backend.start(&two, &fixture()).await.expect("started");
    let name = backend.container_name(&one.replica).unwrap();
    wait_for_output(&name, "fixture: running").await;
    wait_for_output(&name, "WEFT_INSTANCE=i-1").await;
    wait_for_output(&name, "WEFT_SCALER_REPLICA=work-aaaa0001").await;

    tracing::info!("the container carries the labels, the network, no restart policy, an init");
    let inspect: serde_json::Value =
        serde_json::from_str(&docker(&["inspect", &name]).unwrap()).expect("docker inspect prints JSON");
    let c = &inspect[0];
    assert!(c["Id"].as_str().unwrap().starts_with(&id));
    let labels = &c["Config"]["Labels"];
    assert_eq!(labels[GROUP_LABEL], group.name.as_str());
    assert_eq!(labels[REPLICA_LABEL], "work-aaaa0001");
    assert_eq!(labels[AGENT_LABEL], "work");
    assert_eq!(labels[INSTANCE_LABEL], "i-1");
    assert_eq!(c["HostConfig"]["RestartPolicy"]["Name"], "no");
    assert_eq!(c["HostConfig"]["Init"], true);
    let network = group.network.as_deref().unwrap();
    assert!(c["NetworkSettings"]["Networks"].get(network).is_some(), "attached to {network}: {c}");

    tracing::info!("find() lists both, with agent and instance");
    let mut found = backend.find().await.unwrap();
    found.sort_by(|a, b| a.replica.cmp(&b.replica));
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(
        (found[0].replica.as_str(), found[0].agent.as_str(), found[0].instance.as_deref()),
        ("work-aaaa0001", "work", Some("i-1"))
    );
    assert_eq!(found[0].handle, id);
    assert_eq!((found[1].replica.as_str(), found[1].instance.as_deref()), ("work-aaaa0002", None));

    tracing::info!("a second start of a running replica is refused; the first one is left alone");
    match backend.start(&one, &fixture()).await {
        Err(Error::Exists { replica, .. }) => assert_eq!(replica, "work-aaaa0001"),
        other => panic!("expected Exists, got {other:?}"),
    }

    tracing::info!("stop: SIGTERM ends it within the grace; reported as a stop, and removed");
    backend.stop(&one.replica, Duration::from_secs(20)).expect("stop asked");
    let exited = next_exit(&mut exits).await;
    assert_eq!(exited.replica, "work-aaaa0001");
    assert!(exited.stopped);
    assert_eq!((exited.code, exited.signal), (None, Some(15)), "{exited:?}");
    assert!(exited.output_tail.contains("fixture: running"), "{exited:?}");
    assert_eq!(group.containers().len(), 1, "only the second replica is left");

    tracing::info!("a replica that is gone is not stopped again");
    match backend.stop(&one.replica, Duration::from_secs(1)) {
        Err(Error::Unknown(replica)) => assert_eq!(replica, "work-aaaa0001"),
        other => panic!("expected Unknown, got {other:?}"),
    }
    backend.stop(&two.replica, Duration::from_secs(20)).expect("stop asked");
    assert_eq!(next_exit(&mut exits).await.replica, "work-aaaa0002");
    assert!(group.containers().is_empty());
}

#[tokio::test]
async fn a_replica_reads_its_agents_token_file_mounted_read_only() {
    let group = Group::new("token");
    let (tx, _exits) = mpsc::channel(16);
    let backend = Backend::new(group.options(), tx).unwrap();
    let dir = tempfile_dir("token");
    let file = dir.join("work.token");
    std::fs::write(&file, "weft_0123456789ab_00112233445566778899aabbccddeeff\n").unwrap();
    let mut with_token = launch("work-dddd0001", "work", None, &[("WEFT_TOKEN_FILE", "/elsewhere")]);
    with_token.token_file = Some(file.clone());
    backend.start(&with_token, &fixture()).await.expect("started");
    let name = backend.container_name(&with_token.replica).unwrap();
    wait_for_output(&name, "fixture: running").await;
    wait_for_output(&name, "WEFT_TOKEN_FILE=/run/weft/token\n").await;
    wait_for_output(&name, "fixture: token file /run/weft/token holds 50 bytes").await;
    let inspect: serde_json::Value =
        serde_json::from_str(&docker(&["inspect", &name]).unwrap()).expect("docker inspect prints JSON");
    let binds = &inspect[0]["HostConfig"]["Binds"];
    assert_eq!(binds[0], format!("{}:/run/weft/token:ro", file.display()), "{binds}");
    let env = inspect[0]["Config"]["Env"].to_string();
    assert!(!env.contains("0011223344"), "the secret is not in the container's environment: {env}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_crash_is_reported_with_its_code_and_output() {
    let group = Group::new("crash");
    let (tx, mut exits) = mpsc::channel(16);
    let backend = Backend::new(group.options(), tx).unwrap();
    let crash = launch("work-bbbb0001", "work", None, &[("FIXTURE_EXIT", "3")]);
    backend.start(&crash, &fixture()).await.expect("started");
    let exited = next_exit(&mut exits).await;
    assert_eq!(exited.replica, "work-bbbb0001");
    assert!(!exited.stopped, "a crash, not a stop");
    assert_eq!((exited.code, exited.signal), (Some(3), None));
    assert!(exited.output_tail.contains("fixture: exiting with 3"), "{exited:?}");
    assert!(exited.output_tail.contains("WEFT_AGENT=work"), "{exited:?}");
    let deadline = Instant::now() + WAIT;
    while !group.containers().is_empty() {
        assert!(Instant::now() < deadline, "the exited container was not removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn stop_kills_a_replica_that_ignores_sigterm_after_the_grace() {
    let group = Group::new("kill");
    let (tx, mut exits) = mpsc::channel(16);
    let backend = Backend::new(group.options(), tx).unwrap();
    let stubborn = launch("work-cccc0001", "work", None, &[("FIXTURE_IGNORE_TERM", "1")]);
    backend.start(&stubborn, &fixture()).await.expect("started");
    wait_for_output(&backend.container_name(&stubborn.replica).unwrap(), "fixture: running").await;
    backend.stop(&stubborn.replica, Duration::from_millis(500)).expect("stop asked");
    let exited = next_exit(&mut exits).await;
    assert!(exited.stopped);
    assert_eq!((exited.code, exited.signal), (None, Some(9)), "{exited:?}");
    assert!(group.containers().is_empty());
}

#[tokio::test]
async fn a_successor_adopts_running_containers_and_removes_exited_ones() {
    let group = Group::new("adopt");
    let (tx, _exits) = mpsc::channel(16);
    let first = Backend::new(group.options(), tx).unwrap();
    let kept = launch("work-dddd0001", "work", Some("i-7"), &[]);
    first.start(&kept, &fixture()).await.expect("started");
    wait_for_output(&first.container_name(&kept.replica).unwrap(), "fixture: running").await;
    tracing::info!("the first scaler goes away; its container keeps running");
    first.close();
    tokio::time::sleep(Duration::from_millis(200)).await;

    tracing::info!("a container of the group exited while nobody watched, one was only created");
    let labels = |replica: &str| {
        vec![
            "--label".to_string(),
            format!("{GROUP_LABEL}={}", group.name),
            "--label".to_string(),
            format!("{REPLICA_LABEL}={replica}"),
            "--label".to_string(),
            format!("{AGENT_LABEL}=work"),
        ]
    };
    let mut run: Vec<String> = vec!["run".into(), "-d".into(), "-e".into(), "FIXTURE_EXIT=0".into()];
    run.extend(labels("work-dddd0002"));
    run.push(fixture_image().into());
    let exited_id = docker(&run.iter().map(String::as_str).collect::<Vec<_>>()).expect("docker run");
    docker(&["wait", &exited_id]).expect("docker wait");
    let mut create: Vec<String> = vec!["create".into()];
    create.extend(labels("work-dddd0003"));
    create.push(fixture_image().into());
    docker(&create.iter().map(String::as_str).collect::<Vec<_>>()).expect("docker create");
    assert_eq!(group.containers().len(), 3);

    tracing::info!("the successor finds the running one, removes the others, adopts, and reports its stop");
    let (tx, mut exits) = mpsc::channel(16);
    let second = Backend::new(group.options(), tx).unwrap();
    assert!(
        matches!(second.stop(&kept.replica, Duration::from_secs(1)), Err(Error::Unknown(_))),
        "not adopted yet"
    );
    let found = second.find().await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (found[0].replica.as_str(), found[0].agent.as_str(), found[0].instance.as_deref()),
        ("work-dddd0001", "work", Some("i-7"))
    );
    assert_eq!(group.containers().len(), 1, "the exited and the created containers were removed");
    match second.start(&kept, &fixture()).await {
        Err(Error::Exists { .. }) => {}
        other => panic!("a successor must not start a replica twice; got {other:?}"),
    }
    second.adopt(&found[0]).await.expect("adopted");
    second.adopt(&found[0]).await.expect("adopting twice changes nothing");
    let stale = Found { handle: "0123456789ab".into(), ..found[0].clone() };
    let third = Backend::new(group.options(), mpsc::channel(1).0).unwrap();
    assert!(matches!(third.adopt(&stale).await, Err(Error::Gone { .. })), "a handle that names no container");
    second.stop(&kept.replica, Duration::from_secs(20)).expect("stop asked");
    let exited = next_exit(&mut exits).await;
    assert_eq!((exited.replica.as_str(), exited.stopped), ("work-dddd0001", true));
    assert!(group.containers().is_empty());
}

#[tokio::test]
async fn a_command_and_arguments_replace_the_images() {
    let group = Group::new("command");
    let (tx, mut exits) = mpsc::channel(16);
    let backend = Backend::new(group.options(), tx).unwrap();
    let spec = Spec {
        image: fixture_image().to_string(),
        command: Some("/fixture".into()),
        args: vec!["--serve".into(), "work".into()],
    };
    backend
        .start(&launch("work-eeee0001", "work", None, &[("FIXTURE_EXIT", "0")]), &spec)
        .await
        .expect("started");
    let exited = next_exit(&mut exits).await;
    assert_eq!(exited.code, Some(0));
    assert!(exited.output_tail.contains(r#"fixture: args ["--serve", "work"]"#), "{exited:?}");
    let spec = Spec { command: None, ..spec };
    backend
        .start(&launch("work-eeee0002", "work", None, &[("FIXTURE_EXIT", "0")]), &spec)
        .await
        .expect("started");
    let exited = next_exit(&mut exits).await;
    assert!(exited.output_tail.contains(r#"fixture: args ["--serve", "work"]"#), "{exited:?}");
}

#[tokio::test]
async fn a_missing_image_is_a_failed_start_that_names_it() {
    let group = Group::new("noimage");
    let (tx, _exits) = mpsc::channel(16);
    let backend = Backend::new(group.options(), tx).unwrap();
    let spec = Spec { image: "weft-no-such-image:absent".into(), command: None, args: Vec::new() };
    for _ in 0..2 {
        let err = backend.start(&launch("work-ffff0001", "work", None, &[]), &spec).await.unwrap_err();
        assert!(matches!(err, Error::ImageMissing { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("image 'weft-no-such-image:absent' not found"), "{text}");
        assert!(group.containers().is_empty(), "a failed start leaves nothing");
    }
    assert!(backend.find().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_start_the_engine_refuses_leaves_nothing_behind() {
    let group = Group::new("nonet");
    let (tx, _exits) = mpsc::channel(16);
    let mut options = group.options();
    options.settings.network = Some(format!("{}-no-such-network", group.name));
    let backend = Backend::new(options, tx).unwrap();
    let err = backend.start(&launch("work-ffff0002", "work", None, &[]), &fixture()).await.unwrap_err();
    assert!(matches!(err, Error::Refused { .. }), "{err:?}");
    assert!(err.to_string().contains("replica work-ffff0002"), "{err}");
    assert!(group.containers().is_empty(), "the created container was removed again");
}

#[tokio::test]
async fn an_unreachable_engine_is_a_clear_error() {
    let (tx, _exits) = mpsc::channel(16);
    let host = "unix:///nonexistent/docker.sock";
    let backend = Backend::new(on(host), tx).unwrap();
    let err = backend.check().await.unwrap_err();
    assert!(err.to_string().starts_with(&format!("docker engine at {host} unreachable: ")), "{err}");
    let err =
        backend.start(&launch("work-0001", "work", None, &[]), &fixture_spec_unused()).await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    let err = backend.find().await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");

    tracing::info!("an address nothing listens on");
    let host = "tcp://127.0.0.1:1";
    let (tx, _exits) = mpsc::channel(16);
    let backend = Backend::new(on(host), tx).unwrap();
    let err = backend.check().await.unwrap_err();
    assert!(err.to_string().starts_with(&format!("docker engine at {host} unreachable: ")), "{err}");
}

/// A spec for tests that never reach an engine (no fixture build needed).
fn fixture_spec_unused() -> Spec {
    Spec { image: "unused".into(), command: None, args: Vec::new() }
}

fn on(host: &str) -> Options {
    Options { group: "weft".into(), settings: Settings { host: host.into(), ..Settings::default() } }
}

#[test]
fn options_are_validated() {
    let (tx, _rx) = mpsc::channel(1);
    let bad = |options: Options| Backend::new(options, tx.clone()).unwrap_err().to_string();
    let group = |g: &str| Options { group: g.into(), settings: Settings::default() };
    assert_eq!(
        bad(group("")),
        "invalid docker backend group: '' is not 1 to 64 characters of [A-Za-z0-9_.-] starting with a letter or digit"
    );
    assert!(bad(group("a b")).contains("group: 'a b'"));
    assert!(bad(group(&"x".repeat(65))).contains("group"));
    assert!(bad(on("/var/run/docker.sock")).starts_with(
        "invalid docker backend host: '/var/run/docker.sock' is not unix:///PATH, tcp://HOST:PORT or http://HOST:PORT"
    ));
    let mut blank_network = group("weft");
    blank_network.settings.network = Some(" ".into());
    assert!(bad(blank_network).contains("network: is empty"));
    let backend = Backend::new(group("weft"), tx).unwrap();
    assert_eq!(backend.container_name("echo-5f3a9c21").unwrap(), "weft-echo-5f3a9c21");
    assert!(matches!(backend.container_name("a/b"), Err(Error::Invalid { field: "replica", .. })));
}

#[test]
fn settings_read_from_toml_with_defaults() {
    let settings: Settings = toml::from_str("network = \"weft_default\"\n").unwrap();
    assert_eq!(settings, Settings { network: Some("weft_default".into()), ..Settings::default() });
    assert_eq!(settings.host, "unix:///var/run/docker.sock");
    assert!(settings.init);
    let err = toml::from_str::<Settings>("netwrok = \"x\"\n").unwrap_err().to_string();
    assert!(err.contains("unknown field `netwrok`"), "{err}");
}

#[test]
fn exit_codes_above_128_are_signals() {
    assert_eq!(exit_status(0), (Some(0), None));
    assert_eq!(exit_status(3), (Some(3), None));
    assert_eq!(exit_status(128), (Some(128), None));
    assert_eq!(exit_status(137), (None, Some(9)));
    assert_eq!(exit_status(143), (None, Some(15)));
    assert_eq!(exit_status(255), (Some(255), None));
}

#[tokio::test]
async fn the_scalers_backend_runs_a_launchs_image_and_names_a_missing_one() {
    let group = Group::new("enum");
    let (tx, mut exits) = mpsc::channel(16);
    let backend = super::super::Backend::Docker(Backend::new(group.options(), tx).unwrap());
    let mut one = launch("work-abab0001", "work", None, &[("FIXTURE_EXIT", "0")]);
    one.image = Some(fixture_image().to_string());
    backend.start(&one).await.expect("started");
    assert_eq!(next_exit(&mut exits).await.code, Some(0));

    let mut missing = launch("work-abab0002", "work", None, &[]);
    missing.image = Some("weft-no-such-image:absent".into());
    match backend.start(&missing).await {
        Err(super::super::Error::Start { what, reason }) => {
            assert_eq!(what, "weft-no-such-image:absent");
            assert!(reason.contains("not found on the docker engine"), "{reason}");
        }
        other => panic!("expected a failed start, got {other:?}"),
    }
    missing.image = None;
    let err = backend.start(&missing).await.unwrap_err();
    assert!(err.to_string().contains("agent 'work' has no image to run"), "{err}");
    assert!(matches!(
        backend.stop("work-abab0001", Duration::from_secs(1)).await,
        Err(super::super::Error::Unknown(_))
    ));
    assert!(group.containers().is_empty());
}

#[test]
fn the_docker_table_of_the_scalers_configuration() {
    use crate::config::Config;
    let agent =
        "[agents.work]\nbackend = \"docker\"\nimage = \"weft-example-scaled:latest\"\nmax_replicas = 2\n";
    let config =
        Config::parse(&format!("group = \"compose\"\n[docker]\nnetwork = \"weft-compose\"\n{agent}"))
            .unwrap();
    config.validate().unwrap();
    let options = config.docker_options();
    assert_eq!(options.group, "compose");
    assert_eq!(options.settings.network.as_deref(), Some("weft-compose"));
    assert_eq!(options.settings.host, DEFAULT_HOST);

    let blank = Config::parse(&format!("[docker]\nnetwork = \"\"\n{agent}")).unwrap();
    let err = blank.validate().unwrap_err().to_string();
    assert_eq!(err, "field 'docker.network': is empty (leave it unset for the default)");
    let host = Config::parse(&format!("[docker]\nhost = \"/var/run/docker.sock\"\n{agent}")).unwrap();
    assert!(
        host.validate()
            .unwrap_err()
            .to_string()
            .starts_with("field 'docker.host': '/var/run/docker.sock' is not")
    );
    // Only agents on the Docker backend make the table matter.
    Config::parse("[docker]\nnetwork = \"\"\n").unwrap().validate().unwrap();
    let typo = Config::parse("[docker]\nnetwrok = \"x\"\n").unwrap_err().to_string();
    assert!(typo.contains("netwrok"), "{typo}");
}

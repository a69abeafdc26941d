//! The compose deploy (`examples/compose/`) on the machine's real Docker engine: build the
//! images, bring the project up under a name of its own, wait for the three nodes to form a
//! cluster, call `work.echo` through the nodes (the scaler starts the `work` container from
//! zero with its Docker backend), `docker kill` the leader and keep calling, then take it all
//! down: the project, its volumes and network, the containers the scaler started, the images.
//! The teardown runs in a guard, so a failing test leaves nothing behind either.
//!
//! The images need static binaries. When this test was itself built static (CI builds the
//! workspace's tests with `-C target-feature=+crt-static`, see `.ci/run`), the binaries beside
//! it are used; otherwise `examples/compose/build-images.sh --profile dev` builds them (a
//! second build, for the static target, the first time).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use weft_agent::{Client, Codec};

/// How long the cluster may take to form, and the first call (the scaler starting the agent's
/// container from zero) to return.
const FORM_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one call may wait for its result, failovers included.
const CALL_TIMEOUT: Duration = Duration::from_secs(90);
/// Calls made before the kill, and after it.
const CALLS: usize = 5;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs a command; its stdout, or a panic with everything it printed.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Whether the ELF file at `path` has no program interpreter, i.e. is linked statically.
fn is_static(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else { return false };
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        // PT_INTERP = 3.
        bytes.get(at..at + 4).is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap()) != 3)
    })
}

/// The directory of static `weft`, `weft-scaler` and `scaled` binaries built with this test,
/// if it was built static.
fn static_siblings() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    if !is_static(&exe) {
        return None;
    }
    let dir = exe.parent()?.parent()?.to_path_buf(); // .../debug/deps/compose-HASH -> .../debug
    ["weft", "weft-scaler", "scaled"].iter().all(|b| is_static(&dir.join(b))).then_some(dir)
}

/// One deploy of the compose project; taken down when dropped.
struct Deploy {
    project: String,
    tag: String,
    config: PathBuf,
}

impl Deploy {
    fn compose(&self) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(root().join("examples/compose"))
            .args(["--project-name", &self.project, "--file", "docker-compose.yml"])
            .env("WEFT_TAG", &self.tag)
            .env("WEFT_NETWORK", format!("{}-net", self.project))
            .env("WEFT_SCALER_CONFIG", &self.config)
            .env("WEFT_LOG", "info");
        cmd
    }

    /// `127.0.0.1:PORT`: where the host reaches `service`'s port 7400.
    fn endpoint(&self, service: &str) -> String {
        run(self.compose().args(["port", service, "7400"])).trim().to_string()
    }

    fn container(&self, service: &str) -> String {
        run(self.compose().args(["ps", "-q", service])).trim().to_string()
    }

    /// Containers the scaler started (labelled with the group), running or not.
    fn agent_containers(&self) -> Vec<String> {
        run(Command::new("docker").args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=weft.scaler.group={}", self.project),
        ]))
        .lines()
        .map(str::to_string)
        .collect()
    }
}

impl Drop for Deploy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.compose().args(["logs", "--no-color", "--tail", "60"]).status();
            let _ = Command::new("docker")
                .args(["ps", "-a", "--filter", &format!("label=weft.scaler.group={}", self.project)])
                .status();
        }
        // The scaler stops its containers when it stops; whatever it left is removed here, so
        // the network can go too.
        let _ = self.compose().args(["stop", "--timeout", "30", "scaler"]).output();
        for id in self.agent_containers() {
            let _ = Command::new("docker").args(["rm", "-f", &id]).output();
        }
        let down = self.compose().args(["down", "--volumes", "--timeout", "5"]).output();
        if let Ok(out) = down
            && !out.status.success()
        {
            eprintln!("docker-compose down failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        for image in ["weft", "weft-scaler", "weft-example-scaled", "weft-bundle"] {
            let _ = Command::new("docker").args(["rmi", &format!("{image}:{}", self.tag)]).output();
        }
        let _ = std::fs::remove_dir_all(self.config.parent().unwrap());
    }
}

/// `GET /readyz` on `endpoint`: the status code and the body.
async fn readyz(endpoint: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let read = async {
        let mut stream = tokio::net::TcpStream::connect(endpoint).await.ok()?;
        let request = format!("GET /readyz HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
        Some((code, body))
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.ok().flatten()
}

/// `node N` of a ready answer (`ready: node 7 of cluster 'compose', leader is node 3`), and the
/// leader's id.
fn ids(body: &str) -> Option<(String, String)> {
    let me = body.split("node ").nth(1)?.split_whitespace().next()?.to_string();
    let leader = body.rsplit("leader is node ").next()?.trim().to_string();
    Some((me, leader))
}

#[tokio::test]
async fn compose_cluster_scales_work_from_zero_and_survives_a_killed_node() {
    let unique = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() % 1_000_000
    );
    let tag = format!("t{unique}");
    let project = format!("weft-compose-{unique}");

    eprintln!("phase: build the images (tag {tag})");
    let started = Instant::now();
    let mut build = Command::new(root().join("examples/compose/build-images.sh"));
    build.args(["--tag", &tag]);
    match static_siblings() {
        Some(dir) => build.arg("--bin-dir").arg(dir),
        None => build.args(["--profile", "dev"]),
    };
    let config_dir = std::env::temp_dir().join(format!("weft-compose-{unique}"));
    std::fs::create_dir_all(&config_dir).unwrap();
    let config = config_dir.join("scaler.toml");
    // The guard exists before anything is built or started, so everything goes again.
    let deploy = Deploy { project: project.clone(), tag: tag.clone(), config: config.clone() };
    eprint!("{}", run(&mut build));
    eprintln!("images built in {:.1} s", started.elapsed().as_secs_f64());

    let example = std::fs::read_to_string(root().join("examples/compose/scaler.toml")).unwrap();
    let ours = example
        .replace("group = \"compose\"", &format!("group = \"{project}\""))
        .replace("network = \"weft-compose\"", &format!("network = \"{project}-net\""))
        .replace("weft-example-scaled:latest", &format!("weft-example-scaled:{tag}"));
    assert_ne!(ours, example, "the example's scaler.toml changed: update this test's substitutions");
    std::fs::write(&config, ours).unwrap();

    eprintln!("phase: docker-compose up ({project})");
    run(deploy.compose().args(["up", "-d"]));
    let services = ["node1", "node2", "node3"];
    let endpoints: Vec<String> = services.iter().map(|s| deploy.endpoint(s)).collect();

    eprintln!("phase: wait for the three nodes to agree on a leader: {endpoints:?}");
    let deadline = Instant::now() + FORM_TIMEOUT;
    let leader_service = loop {
        let mut answers = Vec::new();
        for endpoint in &endpoints {
            answers.push(readyz(endpoint).await);
        }
        let ready: Vec<(String, String)> = answers
            .iter()
            .flatten()
            .filter(|(code, _)| *code == 200)
            .filter_map(|(_, body)| ids(body))
            .collect();
        if ready.len() == 3 && ready.iter().all(|(_, leader)| *leader == ready[0].1) {
            let leader = &ready[0].1;
            break services
                [ready.iter().position(|(me, _)| me == leader).expect("the leader is one of the three")];
        }
        assert!(Instant::now() < deadline, "the cluster did not form within {FORM_TIMEOUT:?}: {answers:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("leader: {leader_service}");

    let client = Client::builder(endpoints.clone())
        .codec(Codec::Json)
        .retry_for(CALL_TIMEOUT)
        .build()
        .expect("a client");
    let echo = |text: String| {
        let client = client.clone();
        async move {
            let started = Instant::now();
            let reply: String =
                client.request("work", "echo").args(&text).wait(CALL_TIMEOUT).call().await.unwrap_or_else(
                    |e| {
                        panic!("work.echo({text}) failed after {:.1} s: {e}", started.elapsed().as_secs_f64())
                    },
                );
            assert_eq!(reply, text);
            started.elapsed()
        }
    };

    eprintln!("phase: the first call starts the agent from zero");
    assert!(deploy.agent_containers().is_empty(), "no agent runs before the first call");
    let cold = echo("cold-start".into()).await;
    eprintln!("first call answered in {:.1} s", cold.as_secs_f64());
    assert!(!deploy.agent_containers().is_empty(), "the scaler started the agent as a container");
    for i in 0..CALLS {
        echo(format!("before-{i}")).await;
    }

    eprintln!("phase: docker kill the leader ({leader_service}) and keep calling");
    run(Command::new("docker").args(["kill", &deploy.container(leader_service)]));
    for i in 0..CALLS {
        let took = echo(format!("after-{i}")).await;
        eprintln!("call after the kill answered in {:.1} s", took.as_secs_f64());
    }
    drop(deploy);
}

/// The scaler configurations the deploys ship are valid: compose's file, and the TOML inside
/// the Kubernetes ConfigMap.
#[test]
fn the_deploys_scaler_configurations_are_valid() {
    use weft_scaler::config::{BackendKind, Config};
    let compose = std::fs::read_to_string(root().join("examples/compose/scaler.toml")).unwrap();
    let config = Config::parse(&compose).expect("compose's scaler.toml parses");
    config.validate().expect("compose's scaler.toml is valid");
    assert_eq!(config.agents["work"].backend, BackendKind::Docker);
    assert_eq!(
        config.docker.network.as_deref(),
        Some("weft-compose"),
        "the network docker-compose.yml names"
    );

    let manifest = std::fs::read_to_string(root().join("examples/kubernetes/scaler.yaml")).unwrap();
    let toml: String = manifest
        .split("scaler.toml: |\n")
        .nth(1)
        .expect("the ConfigMap holds scaler.toml")
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let config = Config::parse(&toml).unwrap_or_else(|e| panic!("the ConfigMap's TOML parses: {e}\n{toml}"));
    config.validate().expect("the ConfigMap's TOML is valid");
    assert_eq!(config.agents["work"].backend, BackendKind::Process);
}

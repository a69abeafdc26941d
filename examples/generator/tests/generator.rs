//! The generator example against real nodes: a listing, and an agent process killed with
//! `kill -9` while it generates; the stream still holds each prime once.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weft_fabric::testing::LocalCluster;

const PATIENCE: Duration = Duration::from_secs(60);

/// A process of the example whose output lines (stdout or stderr) are collected; killed
/// when dropped.
struct Process {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    fn spawn(endpoints: &[String], args: &[&str], stdout: bool) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_generator"))
            .args(["--endpoints", &endpoints.join(",")])
            .args(args)
            .stdin(Stdio::null())
            .stdout(if stdout { Stdio::piped() } else { Stdio::null() })
            .stderr(if stdout { Stdio::inherit() } else { Stdio::piped() })
            .spawn()
            .expect("the example starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let out: Box<dyn std::io::Read + Send> = if stdout {
            Box::new(child.stdout.take().expect("piped"))
        } else {
            Box::new(child.stderr.take().expect("piped"))
        };
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    async fn wait_for(&self, what: &str, f: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !f(&self.lines()) {
            assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}: {:?}", self.lines());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn first_primes(n: usize) -> Vec<u64> {
    (2u64..).filter(|p| (2..*p).take_while(|d| d * d <= *p).all(|d| !p.is_multiple_of(d))).take(n).collect()
}

/// The primes a listing printed, in order.
fn printed(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l.split_once(": ").filter(|(h, _)| h.starts_with("prime #")))
        .map(|(_, p)| p.parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listing_gets_each_prime_once_though_the_generator_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let c = LocalCluster::start(dir.path(), 1, |_| {}).await.expect("nodes start");
    c.wait_for_leader(Duration::from_secs(30)).await.expect("a leader");
    let endpoints = c.endpoints();

    // A quick listing.
    let _agent = Process::spawn(&endpoints, &["agent"], false);
    let list = Process::spawn(&endpoints, &["list", "--n", "10"], true);
    list.wait_for("the listing ends", |l| l.iter().any(|l| l == "the generator finished")).await;
    assert_eq!(printed(&list.lines()), first_primes(10));
    drop(_agent);

    // A slow generator, killed halfway; another process takes over.
    let mut slow = Process::spawn(&endpoints, &["agent", "--work-ms", "100"], false);
    let list = Process::spawn(&endpoints, &["list", "--n", "30"], true);
    list.wait_for("some primes", |l| printed(l).len() >= 8).await;
    slow.kill9();
    assert!(slow.lines().iter().any(|l| l.contains("generates primes-30 (attempt 1)")), "{:?}", slow.lines());
    let rescuer = Process::spawn(&endpoints, &["agent"], false);
    list.wait_for("the listing ends", |l| l.iter().any(|l| l == "the generator finished")).await;
    assert_eq!(printed(&list.lines()), first_primes(30), "each prime once, in order");
    rescuer.wait_for("the rerun", |l| l.iter().any(|l| l.contains("generates primes-30 (attempt 2)"))).await;
    c.shutdown().await;
}

//! The network: namespaces, partitions and cleanup.

use std::time::Duration;

use weft_jepsen::db::{self, Db};
use weft_jepsen::net::{Grudge, Network};

use crate::{init_tracing, links_of, namespaces_of};

/// Whether `from`'s namespace can fetch `/healthz` of the node at `to` (curl, 1 s).
fn reaches(from_netns: Option<&str>, to: &str) -> bool {
    let url = format!("http://{to}/healthz");
    let mut cmd = match from_netns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns, "curl"]);
            c
        }
        None => std::process::Command::new("curl"),
    };
    cmd.args(["-s", "-o", "/dev/null", "-m", "1", &url]).status().expect("curl runs").success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_drop_node_traffic_but_not_clients_and_heal_restores_it() {
    init_tracing();
    let run = weft_jepsen::net::new_run_id(0x5eed ^ u64::from(std::process::id())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let net = Network::create(&run, 3).unwrap();
    let binary = db::find_binary(None).expect("the debug weft binary is built");
    let database = Db::start(
        &net,
        db::Options {
            binary,
            data_root: dir.path().to_path_buf(),
            log_dir: dir.path().to_path_buf(),
            env: vec![],
            membership: db::Membership::Static,
            tls: None,
        },
    )
    .unwrap();
    database.wait_for_leader(Duration::from_secs(30)).await.unwrap();
    let hosts = net.hosts().to_vec();
    let addr = |i: usize| format!("{}:{}", hosts[i].ip, db::PORT);
    tracing::info!("phase: every node reaches every other, and the client reaches all");
    assert!(reaches(Some(&hosts[1].netns), &addr(0)));
    assert!(reaches(Some(&hosts[0].netns), &addr(2)));
    assert!(reaches(None, &addr(0)));
    // Nothing leaves the subnet: no default route inside a namespace.
    let routes = weft_jepsen::net::Network::hosts(&net)[0].netns.clone();
    let out =
        std::process::Command::new("ip").args(["-n", &routes, "route", "show", "default"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty(), "a namespace has a default route");

    tracing::info!("phase: isolate node 1");
    let mut grudge = Grudge::new();
    grudge.entry(1).or_default().extend([2, 3]);
    grudge.entry(2).or_default().insert(1);
    grudge.entry(3).or_default().insert(1);
    net.cut(&grudge).unwrap();
    assert!(!reaches(Some(&hosts[1].netns), &addr(0)), "node 2 still reaches node 1");
    assert!(!reaches(Some(&hosts[0].netns), &addr(2)), "node 1 still reaches node 3");
    assert!(reaches(Some(&hosts[1].netns), &addr(2)), "nodes 2 and 3 must still talk");
    assert!(reaches(None, &addr(0)), "the client path to node 1 must stay up");

    tracing::info!("phase: heal");
    net.heal().unwrap();
    assert!(reaches(Some(&hosts[1].netns), &addr(0)));
    drop(database);
    drop(net);
    assert!(namespaces_of(&run).is_empty() && links_of(&run).is_empty(), "the network was not removed");
}

#[test]
fn a_panic_still_removes_the_network_and_its_processes() {
    init_tracing();
    let run = weft_jepsen::net::new_run_id(0xdead ^ u64::from(std::process::id())).unwrap();
    let r = run.clone();
    let child = std::sync::Arc::new(std::sync::Mutex::new(None));
    let c = child.clone();
    let result = std::panic::catch_unwind(move || {
        let net = Network::create(&r, 2).unwrap();
        // A process inside a namespace, as a node would be.
        let spawned = std::process::Command::new("ip")
            .args(["netns", "exec", &net.hosts()[0].netns, "sleep", "600"])
            .spawn()
            .unwrap();
        *c.lock().unwrap() = Some(spawned);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(namespaces_of(&r).len(), 2);
        panic!("boom");
    });
    assert!(result.is_err());
    let mut spawned = child.lock().unwrap().take().expect("the process was started");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while spawned.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "the process in the namespace survived");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(namespaces_of(&run).is_empty(), "namespaces left: {:?}", namespaces_of(&run));
    assert!(links_of(&run).is_empty(), "links left: {:?}", links_of(&run));
}

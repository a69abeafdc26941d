//! Per-instance mode: `weft instances start` starts one process for the instance, `weft
//! instances stop` stops it.

use serde_json::Value;

use crate::support::*;

fn weft(fabric: &Fabric, args: &[&str]) -> String {
    let out = std::process::Command::new(&binaries().weft)
        .args(args)
        .args(["--endpoint", &fabric.endpoints()[0]])
        .output()
        .expect("run weft");
    assert!(out.status.success(), "weft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn instances_of(group: &Group) -> Vec<String> {
    let mut v: Vec<String> = group.running().into_iter().filter_map(|f| f.instance).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_instance_gets_its_own_process_stopped_with_it() {
    init_tracing();
    let fabric = Fabric::start().await;
    let group = Group::new("rooms");
    let config = config_head(&fabric, &group)
        + &scaled_agent("room", "mode = \"per-instance\"\nmax_replicas = 4\ndrain_grace_ms = 3000");
    let _scaler = start_scaler(&fabric, "scaler", &config);
    let client = fabric.client();
    wait_status(&client, &group, "the scaler publishes", |s| s["agents"]["room"].is_object()).await;

    tracing::info!("phase: two instances, two processes");
    weft(&fabric, &["instances", "start", "room", "--id", "r1"]);
    weft(&fabric, &["instances", "start", "room", "--id", "r2"]);
    eventually("a process per instance", || instances_of(&group) == ["r1", "r2"]).await;
    let r1 = group.running().into_iter().find(|f| f.instance.as_deref() == Some("r1")).unwrap();
    let who: Value = client.request("room", "whoami").instance("r1").timeout(PATIENCE).call().await.unwrap();
    assert_eq!(who["session"].as_str(), Some(r1.replica.as_str()), "r1 runs on its own process");
    assert_eq!(who["instance"].as_str(), Some("r1"));

    tracing::info!("phase: stopping r1 stops its process only");
    weft(&fabric, &["instances", "stop", "room", "r1"]);
    eventually("r1's process gone", || instances_of(&group) == ["r2"]).await;
    wait_status(&client, &group, "one running", |s| field(s, "room", "running") == 1).await;
    weft(&fabric, &["instances", "stop", "room", "r2"]);
    eventually("none left", || group.running().is_empty()).await;
}

//! Failures: a process that crashes on start is backed off and reported crash-looping with
//! its exit code and output; a command that does not exist is a failed start with its cause;
//! neither is retried in a tight loop.

use std::time::Duration;

use serde_json::Value;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_and_missing_commands_are_backed_off_and_reported() {
    init_tracing();
    let fabric = Fabric::start().await;
    let group = Group::new("failing");
    let backoff =
        "max_replicas = 1\nrestart_initial_ms = 300\nrestart_cap_ms = 1000\ncrash_loop_threshold = 3";
    let config = config_head(&fabric, &group)
        + &scaled_agent("crashy", &format!("{backoff}\nenv = {{ SCALED_CRASH_ON_START = \"3\" }}"))
        + &format!("\n[agents.missing]\ncommand = \"/no/such/weft-command\"\n{backoff}\n");
    let _scaler = start_scaler(&fabric, "scaler", &config);
    let client = fabric.client();
    wait_status(&client, &group, "the scaler publishes", |s| s["agents"]["crashy"].is_object()).await;
    client.request("crashy", "echo").args(&1).send().await.expect("a pending call");
    client.request("missing", "echo").args(&1).send().await.expect("a pending call");

    tracing::info!("phase: both reported crash-looping by weft scaler status --json");
    let looping = |s: &Value| {
        s["agents"]["crashy"]["crash_looping"].is_object()
            && s["agents"]["missing"]["crash_looping"].is_object()
    };
    wait_status(&client, &group, "crash loops", looping).await;
    let (code, json) = cli_status(&fabric, &group);
    assert_eq!(code, 0, "an active scaler with a fresh status: {json:#}");
    assert_eq!(json["active"], true);
    let crashy = &json["status"]["agents"]["crashy"]["crash_looping"];
    assert_eq!(crashy["exit_code"], 3, "{json:#}");
    assert_eq!(crashy["reason"], "exited with code 3");
    assert!(crashy["output_tail"].as_str().unwrap().contains("crashing on start"), "{crashy:#}");
    let missing = &json["status"]["agents"]["missing"];
    let reason = missing["crash_looping"]["reason"].as_str().unwrap();
    assert!(reason.contains("/no/such/weft-command") && reason.contains("No such file"), "{reason}");
    assert!(missing["last_error"].as_str().unwrap().contains("/no/such/weft-command"));

    tracing::info!("phase: retries follow the back-off, not a tight loop");
    let failures =
        |s: &Value, agent: &str| s["agents"][agent]["crash_looping"]["failures"].as_u64().unwrap_or(0);
    let before = status(&client, &group).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = status(&client, &group).await.unwrap();
    for agent in ["crashy", "missing"] {
        let tries = failures(&after, agent) - failures(&before, agent);
        // At most one try per second once at the cap (1000 ms), plus slack for timing.
        assert!(tries <= 6, "{agent}: {tries} tries in 4 s");
    }
    assert!(group.running().len() <= 1);
}

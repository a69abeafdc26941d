//! An invalid configuration is refused naming the agent, the field and the reason, at start
//! and with `--check`; a valid one passes `--check`.

use std::process::Command;

use crate::support::binaries;

fn scaler(config: &str, check: bool) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scaler.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(&binaries().scaler);
    cmd.arg("--config").arg(&path).args(["--endpoints", "127.0.0.1:1"]);
    if check {
        cmd.arg("--check");
    }
    let out = cmd.output().expect("run weft-scaler");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
fn invalid_configurations_are_refused_with_agent_field_and_reason() {
    let bad = "[agents.work]\ncommand = \"x\"\nmax_replicas = 2\nmin_replicas = 5\n";
    for check in [true, false] {
        let (code, out) = scaler(bad, check);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("agent 'work': field 'min_replicas': 5 is above max_replicas (2)"), "{out}");
    }
    let (code, out) = scaler("[agents.work]\ncommand = \"x\"\nmax_replicas = 2\nbacklog = 3\n", false);
    assert_eq!(code, 1);
    assert!(out.contains("unknown field `backlog`"), "{out}");
    let (code, out) = scaler("[agents.room]\nmode = \"per-instance\"\nmax_replicas = 2\n", true);
    assert_eq!(code, 1);
    assert!(out.contains("agent 'room': field 'command'"), "{out}");
    let (code, out) = scaler("[agents.work]\ncommand = \"x\"\nmax_replicas = 2\n", true);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("configuration valid: 1 agents"), "{out}");
}

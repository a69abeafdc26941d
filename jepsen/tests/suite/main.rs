//! Integration tests of weft-jepsen against real `weft node` processes in real network
//! namespaces. They need root and the debug `weft` binary (`cargo test --workspace` builds
//! it; alone: `cargo build -p weft-fabric --bin weft`).

mod network;
mod runs;

/// Logs for tests: quiet unless RUST_LOG says otherwise.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,suite=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Namespaces of run `run` still on the host.
pub fn namespaces_of(run: &str) -> Vec<String> {
    let out = std::process::Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("wj-{run}-")))
        .map(String::from)
        .collect()
}

/// Links of run `run` still on the host.
pub fn links_of(run: &str) -> Vec<String> {
    let out = std::process::Command::new("ip").args(["-o", "link", "show"]).output().expect("ip link show");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .filter(|n| n.starts_with(&format!("wj{run}")))
        .map(String::from)
        .collect()
}

//! In-process clusters: real nodes in the caller's process, on 127.0.0.1 ephemeral ports,
//! with data under a directory the caller owns.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::config::Config;
use crate::node::{self, Node};

/// A configuration for a test node: id `id` at `addr`, data under `root`, static membership
/// `members` (empty: a cluster of one), a 10 s request timeout.
pub fn test_config(root: &Path, id: u64, addr: &str, members: &str) -> Config {
    Config {
        node_id: id,
        cluster: "test".into(),
        data_dir: root.join(format!("node-{id}")),
        listen: addr.into(),
        initial_members: members.into(),
        request_timeout_ms: 10_000,
        ..Config::default()
    }
}

/// Listeners on `n` ephemeral ports, bound now so no other test takes them first.
pub async fn listeners(n: usize) -> std::io::Result<Vec<TcpListener>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(TcpListener::bind("127.0.0.1:0").await?);
    }
    Ok(out)
}

/// `1=ADDR,2=ADDR,...` for `addrs`.
pub fn members_of(addrs: &[String]) -> String {
    addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect::<Vec<_>>().join(",")
}

/// An in-process cluster with static membership. Node `i` (1-based) is `nodes[i - 1]` while
/// it runs.
pub struct LocalCluster {
    /// Every node's address, by id - 1.
    pub addrs: Vec<String>,
    /// Every node's configuration, by id - 1.
    pub configs: Vec<Config>,
    /// The running nodes.
    pub nodes: Vec<Option<Node>>,
}

impl LocalCluster {
    /// Starts `n` nodes with data under `root`; `tweak` adjusts each configuration.
    pub async fn start(root: &Path, n: usize, tweak: impl Fn(&mut Config)) -> Result<Self, node::Error> {
        let listeners = listeners(n)
            .await
            .map_err(|source| node::Error::Listen { addr: "127.0.0.1:0".into(), source })?;
        let addrs: Vec<String> =
            listeners.iter().map(|l| l.local_addr().map(|a| a.to_string()).unwrap_or_default()).collect();
        let members = if n == 1 { String::new() } else { members_of(&addrs) };
        let mut configs = Vec::new();
        let mut nodes = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let mut config = test_config(root, i as u64 + 1, &addrs[i], &members);
            tweak(&mut config);
            nodes.push(Some(Node::start_on(config.clone(), listener).await?));
            configs.push(config);
        }
        Ok(Self { addrs, configs, nodes })
    }

    /// Node `id`; panics if it is stopped.
    pub fn node(&self, id: u64) -> &Node {
        self.nodes[id as usize - 1].as_ref().expect("the node is running")
    }

    /// Every node's address, for clients and agents.
    pub fn endpoints(&self) -> Vec<String> {
        self.addrs.clone()
    }

    /// Waits until every running node follows one leader; its id, or None after `within`.
    pub async fn wait_for_leader(&self, within: Duration) -> Option<u64> {
        let deadline = Instant::now() + within;
        loop {
            let leaders: Vec<Option<u64>> =
                self.nodes.iter().flatten().map(|n| n.raft().metrics().borrow().current_leader).collect();
            if let Some(Some(l)) = leaders.first()
                && leaders.iter().all(|x| *x == Some(*l))
                && self.nodes.get(*l as usize - 1).is_some_and(Option::is_some)
            {
                return Some(*l);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops node `id` cleanly (it stays a member, as after a crash).
    pub async fn stop(&mut self, id: u64) {
        if let Some(node) = self.nodes[id as usize - 1].take() {
            node.shutdown().await;
        }
    }

    /// Starts node `id` again on its data and address (waiting for the port to be free).
    pub async fn restart(&mut self, id: u64) -> Result<(), node::Error> {
        let config = self.configs[id as usize - 1].clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        let listener = loop {
            match TcpListener::bind(&config.listen).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "port not free yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(source) => return Err(node::Error::Listen { addr: config.listen.clone(), source }),
            }
        };
        self.nodes[id as usize - 1] = Some(Node::start_on(config, listener).await?);
        Ok(())
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        for id in 1..=self.nodes.len() as u64 {
            self.stop(id).await;
        }
    }
}

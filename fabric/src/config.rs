//! Node configuration: defaults < TOML file (`--config`) < `WEFT_*` environment < flags.
//!
//! Every field is documented here; `weft node --dump-config` prints the merged result as TOML.
//! [`Config::validate`] runs before anything starts and names the field that is wrong and why.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::NodeId;
use crate::grid::Limits;

/// The default address a node listens on (TCP for gRPC + HTTP; the same port on UDP later
/// carries gossip).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7400";

/// Environment variables that configure a node start with this prefix (`WEFT_NODE_ID`, ...).
pub const ENV_PREFIX: &str = "WEFT_";

/// `WEFT_*` variables that are not node settings (the CLI reads them).
const NON_NODE_ENV: &[&str] = &[
    "WEFT_ENDPOINT",
    "WEFT_LOG_FORMAT",
    "WEFT_TLS_CA",
    "WEFT_TLS_CERT",
    "WEFT_TLS_KEY",
    "WEFT_TOKEN",
    "WEFT_TOKEN_FILE",
];

/// A node's configuration. Field names are the TOML keys; the environment variable of a field
/// is `WEFT_` + its name in capitals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's id in the Raft cluster. 0 (the default) means: the id recorded in the data
    /// directory, or a new random id on first start. Static membership (`initial_members`)
    /// needs an explicit id of 1 or more. Recorded in the data directory on first start; a
    /// later start with another id is refused.
    pub node_id: NodeId,
    /// The cluster's name. Recorded in the data directory; peers from another cluster are
    /// refused.
    #[serde(deserialize_with = "string_or_number")]
    pub cluster: String,
    /// Where the node keeps its identity, Raft log, vote and snapshots.
    pub data_dir: PathBuf,
    /// TCP address to listen on for gRPC (agents, tools, peers) and HTTP (`/healthz`,
    /// `/readyz`, `/metrics`). Port 0 picks a free port.
    pub listen: String,
    /// Address other nodes and clients use to reach this node (HOST:PORT). Defaults to
    /// `listen`; set it when listening on 0.0.0.0 or behind NAT.
    pub advertise: Option<String>,
    /// Static cluster membership: `1=HOST:PORT,2=HOST:PORT,...` including this node. When the
    /// data directory holds no cluster yet, the members initialize one together.
    pub initial_members: String,
    /// Gossip seeds: `HOST:PORT,...` of nodes to contact at start (any node of the cluster;
    /// this node's own address is skipped, so every node may get the same list). Without
    /// `bootstrap_expect`, a node with seeds only joins an existing cluster.
    pub seeds: String,
    /// Form a new cluster once this many nodes (this one included) see each other through
    /// gossip and none belongs to a cluster yet; exactly one of them initializes Raft with
    /// those nodes as voters. 0: never form one when seeds are given (join only); with neither
    /// seeds nor `initial_members` a node forms a cluster of its own, as with 1.
    pub bootstrap_expect: u32,
    /// Voters the leader keeps: new nodes join as learners and are promoted while there are
    /// fewer voters than this. Odd, 1 to 9.
    pub voters: u32,
    /// Gossip timing: `lan` (probe every 1 s, suspicion 3 s) or `test` (200 ms, 800 ms).
    pub gossip_preset: String,
    /// Overrides the preset: how often each node probes a random member.
    pub gossip_probe_period_ms: Option<u64>,
    /// Overrides the preset: how long a probe waits for a direct answer (less than the period).
    pub gossip_probe_rtt_ms: Option<u64>,
    /// Overrides the preset: how long a suspected node has to refute before it is declared down.
    pub gossip_suspect_to_down_ms: Option<u64>,
    /// File of gossip keys: one base64 key of 32 bytes per line (`weft gossip-key` makes one;
    /// blank lines and `#` comments are skipped). The first key authenticates what this node
    /// sends; every key is accepted on receive, so keys rotate without a flag day. Re-read
    /// within a second when it changes (a version that does not parse is refused and the keys
    /// in use stay). Unset, and no `gossip_keys`: gossip is not authenticated. Keep the file
    /// readable by the node's user only.
    pub gossip_key_file: Option<PathBuf>,
    /// Gossip keys inline, comma-separated, the sending one first: the environment's form
    /// (`WEFT_GOSSIP_KEYS`). Not with `gossip_key_file`; read once at start. Shown as
    /// `<redacted>` by `--dump-config`.
    pub gossip_keys: Option<Secret>,
    /// Encrypt gossip packets (ChaCha20-Poly1305) instead of only authenticating them
    /// (HMAC-SHA256). Needs gossip keys. A node with keys reads both forms, so encryption can
    /// be turned on one node at a time.
    pub gossip_encrypt: bool,
    /// Unauthenticated gossip, for turning keys on (or off) one node at a time: `refuse` (the
    /// default: send authenticated, drop plain packets), `accept` (send authenticated, accept
    /// plain too) or `send` (send plain, accept both). Anything but `refuse` needs keys.
    pub gossip_unauthenticated: String,
    /// How long gossip must have declared a node down before the leader removes it from Raft
    /// (and promotes a learner in a voter's place). A node that leaves gracefully is removed
    /// at once.
    pub dead_node_grace_ms: u64,
    /// On SIGTERM or ctrl-c, announce a graceful leave so the leader removes this node at
    /// once. Set false for rolling restarts, where the node comes back with its data.
    pub leave_on_shutdown: bool,
    /// Time every gRPC request for `weft_grpc_server_handling_seconds` (by method and status
    /// code). It costs up to about 5 % of peak put throughput on 2 busy cores, within noise
    /// with one client (docs/benchmarks.md); false turns it off.
    pub rpc_metrics: bool,

    /// PEM file of the cluster CA. With `tls_cert_file` and `tls_key_file` (all three or
    /// none) it turns on TLS for the node's port, gRPC and HTTP alike, and mutual TLS between
    /// nodes: node-to-node services (Raft, forwarding, bootstrap) take only node certificates
    /// of this CA, and a certificate of another CA fails the handshake. Clients and agents
    /// must trust this CA; their certificates are optional. `weft certs` makes development
    /// ones.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM file of this node's certificate (then any intermediates): a node certificate of
    /// the CA (URI SAN `urn:weft:node`, as `weft certs node` makes) naming every host and IP
    /// peers and clients dial (`advertise`).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM file of the certificate's private key. Keep it readable by the node only (0600).
    pub tls_key_file: Option<PathBuf>,
    /// How often the TLS files are checked for changes (mtime and size). Changed files are
    /// read again and used for new connections; a set that does not load (a half-written
    /// file, a key that does not match) is refused with a warning and the old one kept. At
    /// least 100. Replace files by renaming new ones over them.
    pub tls_reload_interval_ms: u64,
    /// Run without TLS or without auth on an address other machines can reach (not
    /// loopback). Without it such a node refuses to start: anyone who reaches the port could
    /// join the cluster, or call any API, and read or change anything.
    pub insecure: bool,
    /// Require a bearer token (`authorization: Bearer weft_<id>_<secret>`) on every gRPC
    /// method and HTTP route but health, readiness, the dashboard's page and node-to-node
    /// methods. Tokens live in the grid (`weft tokens create|list|revoke`); the first admin
    /// token comes from `auth_bootstrap_token_file`. Turn it on on every node of a cluster.
    pub auth: bool,
    /// File holding one admin token, `weft_<id>_<secret>` (`weft tokens generate` makes one).
    /// With `auth` on, the leader creates it (role admin, name `bootstrap`) unless the grid
    /// holds that id already (or revoked it): how the first admin token of a cluster is made.
    /// Keep it readable by the node's user only; revoke it once other admin tokens exist.
    pub auth_bootstrap_token_file: Option<PathBuf>,

    /// Leader heartbeat period, and the time each replication message has to complete
    /// (openraft's rule). At most half of `election_timeout_min_ms`.
    pub heartbeat_interval_ms: u64,
    /// Shortest time without a leader before a follower stands for election. openraft first
    /// honours the old leader's lease (`election_timeout_max_ms`), so a follower stands after
    /// max + a random time in [min, max) without heartbeats: 0.75-1 s with the defaults.
    pub election_timeout_min_ms: u64,
    /// Longest such time; each follower picks a random timeout in [min, max). Also the
    /// leader lease during which followers refuse to vote for another candidate.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one (each node adds up to
    /// a quarter more, chosen by its id, so members do not all build at the same moment).
    pub snapshot_after_entries: u64,
    /// Log entries kept after a snapshot, so slightly lagging followers catch up from the log.
    pub log_entries_kept_after_snapshot: u64,
    /// Snapshot chunk size sent to a lagging follower.
    pub snapshot_chunk_bytes: u64,
    /// Most log entries in one replication message.
    pub max_entries_per_append: u64,
    /// Most bytes of entries in one replication message (a single larger entry still goes
    /// alone). openraft gives each replication message one heartbeat interval to complete,
    /// follower fsync included, so keep this small enough to send and sync within it.
    pub max_append_bytes: usize,
    /// How long a leader waits for a follower to take one snapshot chunk.
    pub snapshot_chunk_timeout_ms: u64,

    /// Largest value stored under one key.
    pub max_value_bytes: usize,
    /// Largest key.
    pub max_key_bytes: usize,
    /// Largest page a list returns (and the default page size).
    pub max_list_page: usize,
    /// Largest gRPC message a client may send or receive.
    pub max_message_bytes: usize,
    /// Largest node-to-node Raft message (replication batches, snapshot chunks).
    pub max_raft_message_bytes: usize,
    /// Writes that may wait to be batched on this node before new ones are refused
    /// (RESOURCE_EXHAUSTED).
    pub max_pending_writes: usize,
    /// Linearizable reads that may wait on this node for a read-index round before new ones
    /// are refused (RESOURCE_EXHAUSTED); as many may share one round. Bounds the leader's queue
    /// (local reads and followers' `ReadIndex` calls) and a follower's queue for its calls to
    /// the leader alike.
    pub max_pending_reads: usize,
    /// Most commands in one log entry.
    pub max_batch_commands: usize,
    /// Most payload bytes in one log entry (a single larger command still goes alone).
    pub max_batch_bytes: usize,
    /// Log entries being replicated at once before new batches wait. Small is better: while
    /// an entry commits, new writes queue up and leave together in the next one (2 gave 9.1k
    /// puts/s with 64 clients on 3 nodes, 16 gave 4.5k, on 2 cores).
    pub max_inflight_batches: usize,
    /// Push a call (`Executions/Call`) that a session on the leader can take at once before
    /// creating it, and create it in the entry that carries its completion: one commit on the
    /// caller's path instead of two (docs/architecture.md#eager-calls). false: every call is
    /// created first.
    pub eager_calls: bool,
    /// How long the leader holds an eager call for its completion before it creates it alone
    /// (1 to 1000 ms). It never makes a call slower than creating it first.
    pub eager_linger_ms: u64,
    /// Most eager calls the leader holds at once; more are created first.
    pub max_eager_calls: usize,
    /// How long a write or linearizable read may take, including finding the leader, before
    /// the caller gets UNAVAILABLE (for a write: outcome unknown).
    pub request_timeout_ms: u64,
    /// How often the leader checks for expired keys and proposes their removal.
    pub ttl_check_interval_ms: u64,

    /// Largest execution payload: arguments, a result, an error message.
    pub max_payload_bytes: usize,
    /// Most effects (state writes, new executions) one completion may carry.
    pub max_effects: usize,
    /// How long a finished execution (its result, and its idempotency key) is kept. Creating
    /// again with the same key within this time returns the same execution. With
    /// `max_executions` it bounds the sustained rate: 1 000 000 / 300 s = 3 333 executions/s.
    pub execution_retention_ms: u64,
    /// The timeout of an execution created without a timeout or a deadline (through any
    /// API): it fails with kind "deadline" if it has not finished this long after it was
    /// created, so a call nobody serves does not stay pending forever. 0: no default (such
    /// executions wait until cancelled). Default 24 h.
    pub default_execution_timeout_ms: u64,
    /// Most times an execution is delivered to a session before it fails as undeliverable
    /// (sessions that keep dying while they hold it; a crash loop).
    pub max_deliveries: u32,
    /// Most executions stored in the cluster, finished ones within their retention included;
    /// creating more is refused (RESOURCE_EXHAUSTED). Each costs memory on every node.
    pub max_executions: usize,
    /// Most live agent sessions in the cluster.
    pub max_sessions: usize,
    /// Most executions one session may hold at once (the capacity it may declare).
    pub max_session_capacity: u32,
    /// A session that sends nothing (the SDK sends heartbeats) for this long is closed, and
    /// what it held goes back to pending.
    pub session_timeout_ms: u64,
    /// Most callers that may wait on this node for results at once.
    pub max_waiters: usize,
    /// Longest a caller may wait for a result in one call.
    pub max_wait_ms: u64,

    /// Largest stream item (payload, key and headers), in bytes.
    pub max_item_bytes: usize,
    /// Largest total of one item's headers, in bytes.
    pub max_header_bytes: usize,
    /// Most items one append may carry.
    pub max_batch_items: usize,
    /// Most streams in the cluster; creating more is refused (RESOURCE_EXHAUSTED).
    pub max_streams: usize,
    /// Most bytes all streams' items may hold together (every node keeps them in memory);
    /// appends beyond it are refused (RESOURCE_EXHAUSTED) until items leave.
    pub max_stream_bytes: u64,
    /// Most listeners attached to this node at once: stream listeners (on cursors, and plain
    /// readers) and demand watchers (`Scaling/WatchDemand`) together.
    pub max_listeners: usize,
    /// How often a listener is sent a heartbeat with its lag.
    pub listener_heartbeat_ms: u64,
    /// How long a listener's unnamed cursor outlives it (a listener that reconnects within
    /// it resumes where it was).
    pub unnamed_cursor_idle_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            node_id: 0,
            cluster: "weft".into(),
            data_dir: PathBuf::from("weft-data"),
            listen: DEFAULT_LISTEN.into(),
            advertise: None,
            initial_members: String::new(),
            seeds: String::new(),
            bootstrap_expect: 0,
            voters: 3,
            gossip_preset: "lan".into(),
            gossip_probe_period_ms: None,
            gossip_probe_rtt_ms: None,
            gossip_suspect_to_down_ms: None,
            gossip_key_file: None,
            gossip_keys: None,
            gossip_encrypt: false,
            gossip_unauthenticated: "refuse".into(),
            dead_node_grace_ms: 30_000,
            leave_on_shutdown: true,
            rpc_metrics: true,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_reload_interval_ms: 5_000,
            insecure: false,
            auth: false,
            auth_bootstrap_token_file: None,
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 250,
            election_timeout_max_ms: 500,
            snapshot_after_entries: 20_000,
            log_entries_kept_after_snapshot: 1_000,
            snapshot_chunk_bytes: 4 << 20,
            max_entries_per_append: 64,
            max_append_bytes: 1 << 20,
            snapshot_chunk_timeout_ms: 10_000,
            max_value_bytes: limits.max_value_bytes,
            max_key_bytes: limits.max_key_bytes,
            max_list_page: limits.max_list_page,
            max_message_bytes: 8 << 20,
            max_raft_message_bytes: 512 << 20,
            max_pending_writes: 16_384,
            max_pending_reads: 16_384,
            max_batch_commands: 1_024,
            max_batch_bytes: 1 << 20,
            max_inflight_batches: 2,
            eager_calls: true,
            eager_linger_ms: 10,
            max_eager_calls: 4_096,
            request_timeout_ms: 5_000,
            ttl_check_interval_ms: 250,
            max_payload_bytes: limits.max_payload_bytes,
            max_effects: limits.max_effects,
            execution_retention_ms: 300_000,
            default_execution_timeout_ms: 86_400_000,
            max_deliveries: 50,
            max_executions: 1_000_000,
            max_sessions: 10_000,
            max_session_capacity: 10_000,
            session_timeout_ms: 10_000,
            max_waiters: 100_000,
            max_wait_ms: 600_000,
            max_item_bytes: limits.max_item_bytes,
            max_header_bytes: limits.max_header_bytes,
            max_batch_items: limits.max_batch_items,
            max_streams: 10_000,
            max_stream_bytes: 1 << 30,
            max_listeners: 10_000,
            listener_heartbeat_ms: 5_000,
            unnamed_cursor_idle_ms: 60_000,
        }
    }
}

/// Why a configuration was refused. Nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field has a value that cannot work.
    #[error("invalid configuration: {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The config file or an environment variable could not be read or parsed.
    #[error("invalid configuration: {0}")]
    Load(String),
}

/// A secret setting: `Debug` and `--dump-config` show `<redacted>`, never the value.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
    Error::Invalid { field, reason: reason.into() }
}

/// One member of the static initial membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member's node id.
    pub id: NodeId,
    /// The member's advertised HOST:PORT.
    pub addr: String,
}

impl Config {
    /// Layers defaults, the TOML file at `file` (if any), `WEFT_*` environment variables and
    /// `overrides` (flags), then validates the result.
    pub fn load(file: Option<&Path>, overrides: impl Serialize) -> Result<Self, Error> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(Error::Load(format!("config file {} does not exist", path.display())));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let known = Self::field_names();
        for (key, _) in std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v))) {
            if let Some(field) = key.strip_prefix(ENV_PREFIX)
                && !known.iter().any(|k| k.eq_ignore_ascii_case(field))
                && !NON_NODE_ENV.contains(&key.as_str())
            {
                tracing::warn!(variable = %key, "ignoring an environment variable that configures nothing");
            }
        }
        let config: Config = figment
            .merge(Env::prefixed(ENV_PREFIX).filter(move |key| known.iter().any(|k| key == k.as_str())))
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| Error::Load(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn field_names() -> Vec<String> {
        match serde_json::to_value(Config::default()) {
            Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// The merged configuration as TOML, for `--dump-config`.
    pub fn to_toml(&self) -> String {
        let mut out = toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}"));
        if self.advertise.is_none() {
            out.push_str("# advertise is unset: peers and clients are told the listen address\n");
        }
        out
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        if self.node_id == 0 && !self.initial_members.trim().is_empty() {
            return Err(invalid("node_id", "must be 1 or more with initial_members"));
        }
        if self.cluster.is_empty()
            || self.cluster.len() > 64
            || !self.cluster.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid("cluster", "must be 1-64 characters of [A-Za-z0-9_-]"));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        let listen = self.listen_addr()?;
        if listen.ip().is_unspecified() && self.advertise.is_none() {
            return Err(invalid(
                "advertise",
                format!(
                    "is required when listen is {listen}: peers and gossip need an address that reaches this node"
                ),
            ));
        }
        if let Some(adv) = &self.advertise {
            check_host_port(adv).map_err(|r| invalid("advertise", r))?;
        }
        let members = self.members()?;
        if !members.is_empty() {
            let Some(me) = members.iter().find(|m| m.id == self.node_id) else {
                return Err(invalid(
                    "initial_members",
                    format!("does not list this node (node_id {})", self.node_id),
                ));
            };
            // Peers reach this node at its member entry; a different advertise address would
            // mean two names for one node.
            if let Some(adv) = &self.advertise
                && *adv != me.addr
            {
                return Err(invalid(
                    "advertise",
                    format!("is '{adv}' but initial_members lists node {} at '{}'", self.node_id, me.addr),
                ));
            }
        }
        let seeds = self.seed_list()?;
        if seeds.len() > crate::membership::gossip::MAX_SEEDS {
            return Err(invalid(
                "seeds",
                format!("lists {} seeds; at most {}", seeds.len(), crate::membership::gossip::MAX_SEEDS),
            ));
        }
        if !members.is_empty() && self.bootstrap_expect > 0 {
            return Err(invalid(
                "bootstrap_expect",
                "cannot be used with initial_members (the static list already forms the cluster)",
            ));
        }
        if self.bootstrap_expect > 64 {
            return Err(invalid("bootstrap_expect", "must be at most 64"));
        }
        if self.voters == 0 || self.voters > 9 || self.voters.is_multiple_of(2) {
            return Err(invalid("voters", "must be odd, from 1 to 9"));
        }
        let timing = self.gossip_timing()?;
        if timing.probe_period.is_zero() || timing.probe_rtt.is_zero() || timing.suspect_to_down.is_zero() {
            return Err(invalid("gossip_probe_period_ms", "gossip timings must be more than 0"));
        }
        if timing.probe_rtt >= timing.probe_period {
            return Err(invalid("gossip_probe_rtt_ms", "must be less than gossip_probe_period_ms"));
        }
        self.gossip_auth()?;
        if self.dead_node_grace_ms == 0 {
            return Err(invalid("dead_node_grace_ms", "must be more than 0"));
        }
        if self.heartbeat_interval_ms == 0 {
            return Err(invalid("heartbeat_interval_ms", "must be more than 0"));
        }
        if self.election_timeout_min_ms < 2 * self.heartbeat_interval_ms {
            return Err(invalid(
                "election_timeout_min_ms",
                "must be at least twice heartbeat_interval_ms, or followers start needless elections",
            ));
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err(invalid("election_timeout_max_ms", "must be more than election_timeout_min_ms"));
        }
        if self.default_execution_timeout_ms > crate::grid::execution::MAX_RELATIVE_MS {
            return Err(invalid(
                "default_execution_timeout_ms",
                "must be at most a year (31536000000); 0 means no default",
            ));
        }
        for (field, value) in [
            ("snapshot_after_entries", self.snapshot_after_entries),
            ("snapshot_chunk_bytes", self.snapshot_chunk_bytes),
            ("max_entries_per_append", self.max_entries_per_append),
            ("snapshot_chunk_timeout_ms", self.snapshot_chunk_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("ttl_check_interval_ms", self.ttl_check_interval_ms),
            ("execution_retention_ms", self.execution_retention_ms),
            ("session_timeout_ms", self.session_timeout_ms),
            ("max_wait_ms", self.max_wait_ms),
            ("max_deliveries", u64::from(self.max_deliveries)),
            ("max_stream_bytes", self.max_stream_bytes),
            ("listener_heartbeat_ms", self.listener_heartbeat_ms),
            ("unnamed_cursor_idle_ms", self.unnamed_cursor_idle_ms),
            ("max_session_capacity", u64::from(self.max_session_capacity)),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be more than 0"));
            }
        }
        if !(1..=1_000).contains(&self.eager_linger_ms) {
            return Err(invalid("eager_linger_ms", "must be 1 to 1000"));
        }
        for (field, value) in [
            ("max_value_bytes", self.max_value_bytes),
            ("max_key_bytes", self.max_key_bytes),
            ("max_list_page", self.max_list_page),
            ("max_pending_writes", self.max_pending_writes),
            ("max_pending_reads", self.max_pending_reads),
            ("max_batch_commands", self.max_batch_commands),
            ("max_batch_bytes", self.max_batch_bytes),
            ("max_inflight_batches", self.max_inflight_batches),
            ("max_eager_calls", self.max_eager_calls),
            ("max_append_bytes", self.max_append_bytes),
            ("max_payload_bytes", self.max_payload_bytes),
            ("max_executions", self.max_executions),
            ("max_sessions", self.max_sessions),
            ("max_waiters", self.max_waiters),
            ("max_item_bytes", self.max_item_bytes),
            ("max_header_bytes", self.max_header_bytes),
            ("max_batch_items", self.max_batch_items),
            ("max_streams", self.max_streams),
            ("max_listeners", self.max_listeners),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be more than 0"));
            }
        }
        // A request carries a key, a value (or a payload) and a little framing.
        let largest_request = self.max_value_bytes.max(self.max_payload_bytes).max(self.max_item_bytes)
            + self.max_key_bytes
            + 4096;
        if self.max_message_bytes < largest_request {
            return Err(invalid(
                "max_message_bytes",
                format!(
                    "must be at least max(max_value_bytes, max_payload_bytes, max_item_bytes) + max_key_bytes + \
                     4096 = {largest_request}"
                ),
            ));
        }
        self.tls_files()?;
        if self.tls_reload_interval_ms < crate::tls::MIN_RELOAD_INTERVAL.as_millis() as u64 {
            return Err(invalid(
                "tls_reload_interval_ms",
                format!("must be at least {}", crate::tls::MIN_RELOAD_INTERVAL.as_millis()),
            ));
        }
        self.bootstrap_credential()?;
        if let Some(problem) = self.exposure_problems().into_iter().next() {
            return Err(invalid("listen", problem));
        }
        let largest_append = (self.max_batch_bytes.max(largest_request) as u64)
            .saturating_mul(self.max_entries_per_append)
            .max(self.snapshot_chunk_bytes)
            + 65_536;
        if (self.max_raft_message_bytes as u64) < largest_append {
            return Err(invalid(
                "max_raft_message_bytes",
                format!(
                    "must hold max_entries_per_append full batches or a snapshot chunk: at least \
                     {largest_append}"
                ),
            ));
        }
        Ok(())
    }

    /// The TLS files, when TLS is on; refused unless all three are set or none.
    pub fn tls_files(&self) -> Result<Option<crate::tls::Files>, Error> {
        match (&self.tls_ca_file, &self.tls_cert_file, &self.tls_key_file) {
            (Some(ca), Some(cert), Some(key)) => {
                Ok(Some(crate::tls::Files { ca: ca.clone(), cert: cert.clone(), key: key.clone() }))
            }
            (None, None, None) => Ok(None),
            (ca, cert, key) => {
                let missing: Vec<&str> =
                    [("tls_ca_file", ca), ("tls_cert_file", cert), ("tls_key_file", key)]
                        .into_iter()
                        .filter(|(_, v)| v.is_none())
                        .map(|(k, _)| k)
                        .collect();
                Err(invalid(
                    if ca.is_none() {
                        "tls_ca_file"
                    } else if cert.is_none() {
                        "tls_cert_file"
                    } else {
                        "tls_key_file"
                    },
                    format!(
                        "tls_ca_file, tls_cert_file and tls_key_file go together; {} missing",
                        missing.join(" and ")
                    ),
                ))
            }
        }
    }

    /// The admin token of `auth_bootstrap_token_file`, read now (`None` without the file).
    /// Errors name the field and what is wrong, never the token.
    pub fn bootstrap_credential(&self) -> Result<Option<crate::auth::Credential>, Error> {
        let Some(path) = &self.auth_bootstrap_token_file else { return Ok(None) };
        const FIELD: &str = "auth_bootstrap_token_file";
        if !self.auth {
            return Err(invalid(FIELD, "is only used with auth = true (--auth, WEFT_AUTH=true)"));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(FIELD, format!("cannot read {}: {e}", path.display())))?;
        crate::auth::Credential::parse(&text)
            .map(Some)
            .map_err(|e| invalid(FIELD, format!("{}: {e}", path.display())))
    }

    /// What would make this node unsafe to reach from other machines, each as a sentence
    /// saying what to do; empty when it listens on loopback only, is protected, or `insecure`
    /// says to run anyway. The protections: TLS (with mutual TLS between nodes) and auth.
    pub fn exposure_problems(&self) -> Vec<String> {
        let Ok(listen) = self.listen_addr() else { return Vec::new() };
        if listen.ip().is_loopback() || self.insecure {
            return Vec::new();
        }
        let mut problems = Vec::new();
        if self.tls_ca_file.is_none() && self.tls_cert_file.is_none() && self.tls_key_file.is_none() {
            problems.push(format!(
                "{listen} is reachable from other machines but TLS is off, so anyone who reaches it could join the \
                 cluster and read or change anything: set tls_ca_file, tls_cert_file and tls_key_file (`weft \
                 certs` makes development ones), or pass --insecure (insecure = true, WEFT_INSECURE=true) to run \
                 without TLS anyway"
            ));
        }
        if !self.auth {
            problems.push(format!(
                "{listen} is reachable from other machines but auth is off, so anyone who reaches it could call \
                 any API: set auth = true (--auth, WEFT_AUTH=true) with auth_bootstrap_token_file for the first \
                 admin token (`weft tokens generate` makes one), or pass --insecure (insecure = true, \
                 WEFT_INSECURE=true) to run without auth anyway"
            ));
        }
        problems
    }

    /// The socket address to bind.
    pub fn listen_addr(&self) -> Result<SocketAddr, Error> {
        self.listen.parse().map_err(|_| {
            invalid("listen", format!("'{}' is not an IP:PORT address (e.g. 127.0.0.1:7400)", self.listen))
        })
    }

    /// The static initial membership, parsed.
    pub fn members(&self) -> Result<Vec<Member>, Error> {
        let mut members: Vec<Member> = Vec::new();
        for part in self.initial_members.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, addr) = part
                .split_once('=')
                .ok_or_else(|| invalid("initial_members", format!("'{part}' is not ID=HOST:PORT")))?;
            let id: NodeId = id.trim().parse().ok().filter(|id| *id > 0).ok_or_else(|| {
                invalid("initial_members", format!("'{id}' in '{part}' is not a node id of 1 or more"))
            })?;
            let addr = addr.trim();
            check_host_port(addr).map_err(|r| invalid("initial_members", format!("'{part}': {r}")))?;
            if members.iter().any(|m| m.id == id) {
                return Err(invalid("initial_members", format!("node id {id} is listed twice")));
            }
            members.push(Member { id, addr: addr.to_owned() });
        }
        Ok(members)
    }

    /// The gossip seeds, parsed.
    pub fn seed_list(&self) -> Result<Vec<String>, Error> {
        let mut seeds = Vec::new();
        for seed in self.seeds.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            check_host_port(seed).map_err(|r| invalid("seeds", r))?;
            seeds.push(seed.to_owned());
        }
        Ok(seeds)
    }

    /// How this node joins a cluster.
    pub(crate) fn join_mode(&self) -> Result<crate::membership::bootstrap::Mode, Error> {
        use crate::membership::bootstrap::Mode;
        Ok(if !self.members()?.is_empty() {
            Mode::Static
        } else if self.bootstrap_expect > 0 {
            Mode::Expect(self.bootstrap_expect as usize)
        } else if !self.seed_list()?.is_empty() {
            Mode::JoinOnly
        } else {
            Mode::Expect(1)
        })
    }

    /// Gossip timing: the preset with any overrides.
    pub(crate) fn gossip_timing(&self) -> Result<crate::membership::gossip::Timing, Error> {
        let preset = crate::membership::gossip::Preset::parse(&self.gossip_preset).ok_or_else(|| {
            invalid("gossip_preset", format!("'{}' is not 'lan' or 'test'", self.gossip_preset))
        })?;
        let mut t = preset.timing();
        let ms = std::time::Duration::from_millis;
        if let Some(v) = self.gossip_probe_period_ms {
            t.probe_period = ms(v);
        }
        if let Some(v) = self.gossip_probe_rtt_ms {
            t.probe_rtt = ms(v);
        }
        if let Some(v) = self.gossip_suspect_to_down_ms {
            t.suspect_to_down = ms(v);
        }
        Ok(t)
    }

    /// Gossip authentication: the keys (read from `gossip_key_file` now), encryption, and what
    /// to do with unauthenticated packets. Errors name the field and the line, never a key.
    pub fn gossip_auth(&self) -> Result<crate::membership::packet::Auth, Error> {
        use crate::membership::keys::Keys;
        use crate::membership::packet::{Auth, Unauthenticated};
        let unauthenticated = Unauthenticated::parse(&self.gossip_unauthenticated).ok_or_else(|| {
            invalid(
                "gossip_unauthenticated",
                format!("'{}' is not 'refuse', 'accept' or 'send'", self.gossip_unauthenticated),
            )
        })?;
        let keys = match (&self.gossip_key_file, &self.gossip_keys) {
            (Some(_), Some(_)) => {
                return Err(invalid("gossip_keys", "set gossip_key_file or gossip_keys, not both"));
            }
            (Some(path), None) => {
                Keys::read_file(path).map_err(|e| invalid("gossip_key_file", e.to_string()))?
            }
            (None, Some(list)) => {
                Keys::parse_list(list.expose()).map_err(|e| invalid("gossip_keys", e.to_string()))?
            }
            (None, None) => {
                if self.gossip_encrypt {
                    return Err(invalid(
                        "gossip_encrypt",
                        "needs gossip keys (gossip_key_file or gossip_keys)",
                    ));
                }
                if unauthenticated != Unauthenticated::Refuse {
                    return Err(invalid(
                        "gossip_unauthenticated",
                        "is for turning gossip keys on or off and needs keys (gossip_key_file or gossip_keys)",
                    ));
                }
                return Ok(Auth::off());
            }
        };
        Ok(Auth::new(keys, self.gossip_encrypt, unauthenticated))
    }

    /// The execution and session settings this configuration sets.
    pub fn work_options(&self) -> WorkOptions {
        WorkOptions {
            execution_retention_ms: self.execution_retention_ms,
            default_execution_timeout_ms: self.default_execution_timeout_ms,
            max_deliveries: self.max_deliveries,
            max_executions: self.max_executions,
            max_sessions: self.max_sessions,
            max_session_capacity: self.max_session_capacity,
            session_timeout: std::time::Duration::from_millis(self.session_timeout_ms),
            max_wait: std::time::Duration::from_millis(self.max_wait_ms),
            max_waiters: self.max_waiters,
        }
    }

    /// The grid limits this configuration sets.
    pub fn limits(&self) -> Limits {
        Limits {
            max_value_bytes: self.max_value_bytes,
            max_key_bytes: self.max_key_bytes,
            max_list_page: self.max_list_page,
            max_payload_bytes: self.max_payload_bytes,
            max_effects: self.max_effects,
            max_item_bytes: self.max_item_bytes,
            max_header_bytes: self.max_header_bytes,
            max_batch_items: self.max_batch_items,
        }
    }

    /// The stream settings this configuration sets.
    pub fn stream_options(&self) -> StreamOptions {
        StreamOptions {
            max_streams: self.max_streams,
            max_stream_bytes: self.max_stream_bytes,
            max_listeners: self.max_listeners,
            listener_heartbeat: std::time::Duration::from_millis(self.listener_heartbeat_ms),
            unnamed_cursor_idle_ms: self.unnamed_cursor_idle_ms,
        }
    }

    /// `snapshot_after_entries` plus up to a quarter more, chosen by node id: nodes that
    /// reach the same log index together would otherwise all build a snapshot at once, and on
    /// a small machine the stall delays replication enough to cost an election.
    pub fn snapshot_entries_for_this_node(&self) -> u64 {
        let spread = self.snapshot_after_entries / 4;
        if spread == 0 {
            return self.snapshot_after_entries;
        }
        // Multiplying by a prime scatters consecutive ids across the spread.
        self.snapshot_after_entries + self.node_id.wrapping_mul(7_919) % spread
    }

    /// The openraft configuration this node runs with.
    pub fn raft_config(&self) -> openraft::Config {
        openraft::Config {
            cluster_name: self.cluster.clone(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_entries_for_this_node()),
            max_in_snapshot_log_to_keep: self.log_entries_kept_after_snapshot,
            snapshot_max_chunk_size: self.snapshot_chunk_bytes,
            max_payload_entries: self.max_entries_per_append,
            install_snapshot_timeout: self.snapshot_chunk_timeout_ms,
            ..Default::default()
        }
    }
}

/// Accepts `cluster = 123` (and `WEFT_CLUSTER=123`, which the environment layer reads as a
/// number) as the string "123".
fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        S(String),
        N(i64),
    }
    Ok(match Either::deserialize(d)? {
        Either::S(s) => s,
        Either::N(n) => n.to_string(),
    })
}

fn check_host_port(s: &str) -> Result<(), String> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(()),
        _ => Err(format!("'{s}' is not HOST:PORT with a port from 1 to 65535")),
    }
}

/// Settings of executions and sessions, from the node's configuration.
#[derive(Debug, Clone, Copy)]
pub struct WorkOptions {
    /// How long a finished execution is kept.
    pub execution_retention_ms: u64,
    /// The timeout of an execution created without a timeout or deadline; 0: none.
    pub default_execution_timeout_ms: u64,
    /// Deliveries before an execution fails as undeliverable.
    pub max_deliveries: u32,
    /// Most executions stored.
    pub max_executions: usize,
    /// Most live sessions.
    pub max_sessions: usize,
    /// Most executions one session may hold.
    pub max_session_capacity: u32,
    /// A silent session is closed after this long.
    pub session_timeout: std::time::Duration,
    /// Longest wait for a result in one call.
    pub max_wait: std::time::Duration,
    /// Most callers waiting on this node at once.
    pub max_waiters: usize,
}

/// Settings of streams and listeners a node's services use.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Most streams in the cluster.
    pub max_streams: usize,
    /// Most bytes all streams' items may hold.
    pub max_stream_bytes: u64,
    /// Most listeners on this node.
    pub max_listeners: usize,
    /// How often a listener hears a heartbeat.
    pub listener_heartbeat: std::time::Duration,
    /// How long an unnamed cursor outlives its listener.
    pub unnamed_cursor_idle_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Default)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        node_id: Option<u64>,
    }

    #[test]
    #[allow(clippy::result_large_err, reason = "figment::Jail's closures return figment::Error")]
    fn layers_file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weft.toml");
        std::fs::write(&file, "node_id = 2\ncluster = \"from-file\"\nmax_list_page = 50\n").unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("WEFT_CLUSTER", "123");
            jail.set_env("WEFT_ENDPOINT", "ignored:1"); // a CLI variable, not a node field
            let c = Config::load(Some(&file), Flags { node_id: Some(3) }).unwrap();
            assert_eq!((c.node_id, c.cluster.as_str(), c.max_list_page), (3, "123", 50));
            Ok(())
        });
    }

    #[test]
    fn errors_name_the_field() {
        let check = |c: Config, field: &str| {
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err} should name {field}");
        };
        check(Config { node_id: 0, initial_members: "1=a:1".into(), ..Default::default() }, "node_id");
        check(Config { seeds: "nope".into(), ..Default::default() }, "seeds");
        check(Config { listen: "0.0.0.0:7400".into(), ..Default::default() }, "advertise");
        check(
            Config { listen: "0.0.0.0:7400".into(), advertise: Some("h:7400".into()), ..Default::default() },
            "--insecure",
        );
        check(
            Config { listen: "10.1.2.3:7400".into(), ..Default::default() },
            "reachable from other machines but TLS is off",
        );
        check(
            Config { tls_ca_file: Some("ca.pem".into()), ..Default::default() },
            "tls_cert_file and tls_key_file missing",
        );
        check(Config { tls_reload_interval_ms: 10, ..Default::default() }, "tls_reload_interval_ms");
        Config {
            listen: "0.0.0.0:7400".into(),
            advertise: Some("h:7400".into()),
            insecure: true,
            ..Default::default()
        }
        .validate()
        .unwrap();
        let tls = |c: Config| Config {
            tls_ca_file: Some("ca.pem".into()),
            tls_cert_file: Some("n.pem".into()),
            tls_key_file: Some("n.key".into()),
            ..c
        };
        check(
            tls(Config { listen: "10.1.2.3:7400".into(), ..Default::default() }),
            "reachable from other machines but auth is off",
        );
        tls(Config { listen: "10.1.2.3:7400".into(), auth: true, ..Default::default() }).validate().unwrap();
        // Auth without TLS is allowed on loopback, and not enough elsewhere.
        Config { auth: true, ..Default::default() }.validate().unwrap();
        check(
            Config { listen: "10.1.2.3:7400".into(), auth: true, ..Default::default() },
            "reachable from other machines but TLS is off",
        );
        check(Config { voters: 2, ..Default::default() }, "voters");
        check(Config { gossip_preset: "wan".into(), ..Default::default() }, "gossip_preset");
        check(Config { gossip_probe_rtt_ms: Some(5_000), ..Default::default() }, "gossip_probe_rtt_ms");
        check(
            Config { node_id: 1, initial_members: "1=a:1".into(), bootstrap_expect: 3, ..Default::default() },
            "bootstrap_expect",
        );
        check(Config { listen: "nope".into(), ..Default::default() }, "listen");
        check(
            Config { node_id: 1, initial_members: "1=a:1,1=b:2".into(), ..Default::default() },
            "listed twice",
        );
        check(
            Config { node_id: 1, initial_members: "2=a:1".into(), ..Default::default() },
            "does not list this node",
        );
        check(Config { node_id: 1, initial_members: "x".into(), ..Default::default() }, "initial_members");
        check(Config { election_timeout_max_ms: 100, ..Default::default() }, "election_timeout_max_ms");
        check(Config { max_batch_commands: 0, ..Default::default() }, "max_batch_commands");
        check(Config { max_pending_reads: 0, ..Default::default() }, "max_pending_reads");
        check(Config { max_message_bytes: 10, ..Default::default() }, "max_message_bytes");
        check(Config { cluster: "a b".into(), ..Default::default() }, "cluster");
        check(
            Config {
                node_id: 1,
                initial_members: "1=a:1,2=b:2".into(),
                advertise: Some("c:3".into()),
                ..Default::default()
            },
            "initial_members lists node 1 at 'a:1'",
        );
        Config::default().validate().unwrap();
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure returns figment's large error
    fn gossip_keys_are_checked_by_field_and_line_and_never_shown() {
        use base64::Engine as _;
        let good = crate::membership::keys::generate();
        let short = base64::engine::general_purpose::STANDARD.encode([9u8; 16]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gossip.keys");
        std::fs::write(&file, format!("# keys\n{good}\n{short}\n")).unwrap();
        let with_file = Config { gossip_key_file: Some(file.clone()), ..Default::default() };
        let inline = |keys: &str| Config { gossip_keys: Some(Secret::new(keys)), ..Default::default() };
        let cases = [
            (with_file.clone(), "gossip_key_file: line 3: decodes to 16 bytes"),
            (inline(&format!("{good},{short}")), "gossip_keys: key 2: decodes to 16 bytes"),
            (inline(&format!("{good},%%%")), "gossip_keys: key 2: not a base64 key"),
            (
                Config { gossip_keys: Some(Secret::new(&good)), ..with_file.clone() },
                "gossip_keys: set gossip_key_file or",
            ),
            (Config { gossip_encrypt: true, ..Default::default() }, "gossip_encrypt: needs gossip keys"),
            (
                Config { gossip_unauthenticated: "send".into(), ..Default::default() },
                "gossip_unauthenticated: is for",
            ),
            (
                Config { gossip_unauthenticated: "sometimes".into(), ..inline(&good) },
                "gossip_unauthenticated: 'sometimes' is not",
            ),
        ];
        for (config, expected) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} should say {expected:?}");
            assert!(!err.contains(&good) && !err.contains(&short), "the error shows a key: {err}");
        }
        std::fs::write(&file, format!("{good}\n")).unwrap();
        assert_eq!(with_file.gossip_auth().unwrap().sends(), "mac");
        let config = Config { gossip_encrypt: true, ..inline(&good) };
        assert_eq!(config.gossip_auth().unwrap().sends(), "encrypted");
        for shown in [format!("{config:?}"), config.to_toml(), format!("{:?}", config.gossip_auth().unwrap())]
        {
            assert!(!shown.contains(&good), "a key is shown: {shown}");
        }
        assert!(config.to_toml().contains("gossip_keys = \"<redacted>\""), "{}", config.to_toml());
        figment::Jail::expect_with(|jail| {
            jail.set_env("WEFT_GOSSIP_KEYS", &good);
            let c = Config::load(None, Flags::default()).unwrap();
            assert_eq!(c.gossip_keys.as_ref().map(Secret::expose), Some(good.as_str()));
            assert_eq!(c.gossip_auth().unwrap().keys().map(|k| k.all().len()), Some(1));
            Ok(())
        });
    }

    #[test]
    fn the_bootstrap_token_file_is_checked_by_field_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin.token");
        let token = crate::auth::Credential::generate().reveal();
        std::fs::write(&file, format!("{token}\n")).unwrap();
        let with = |auth: bool, path: &Path| Config {
            auth,
            auth_bootstrap_token_file: Some(path.to_owned()),
            ..Default::default()
        };
        let good = with(true, &file);
        assert_eq!(good.bootstrap_credential().unwrap().map(|c| c.reveal()), Some(token.clone()));
        for shown in [format!("{good:?}"), good.to_toml()] {
            assert!(!shown.contains(&token), "the token is shown: {shown}");
        }
        let bad = dir.path().join("bad.token");
        std::fs::write(&bad, "weft_abcd_tooshort").unwrap();
        for (config, expected) in [
            (with(false, &file), "auth_bootstrap_token_file: is only used with auth = true"),
            (with(true, &dir.path().join("none")), "auth_bootstrap_token_file: cannot read"),
            (with(true, &bad), "secret is not 16 or more characters"),
        ] {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} should say {expected:?}");
            assert!(!err.contains("tooshort"), "{err}");
        }
    }

    #[test]
    fn snapshot_points_differ_between_nodes() {
        let at = |node_id| {
            Config { node_id, snapshot_after_entries: 20_000, ..Default::default() }
                .snapshot_entries_for_this_node()
        };
        let points: std::collections::BTreeSet<u64> = (1..=5).map(at).collect();
        assert_eq!(points.len(), 5, "{points:?}");
        assert!(points.iter().all(|p| (20_000..25_000).contains(p)), "{points:?}");
        let tiny = Config { snapshot_after_entries: 3, ..Default::default() };
        assert_eq!(tiny.snapshot_entries_for_this_node(), 3);
    }

    #[test]
    fn unknown_keys_and_missing_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weft.toml");
        std::fs::write(&file, "node_idd = 2\n").unwrap();
        let err = Config::load(Some(&file), Flags::default()).unwrap_err().to_string();
        assert!(err.contains("node_idd"), "{err}");
        let err = Config::load(Some(&dir.path().join("none.toml")), Flags::default()).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}

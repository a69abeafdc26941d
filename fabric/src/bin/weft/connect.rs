//! How a command reaches the cluster: the `--endpoint` and `--json` flags every client command
//! takes ([`Conn`]), its clients and how long their requests may take, the message size limit,
//! the read consistency `--stale` asks for, and the other nodes a long-lived command can move
//! to ([`cluster_endpoints`]).
//!
//! `--endpoint` and `WEFT_ENDPOINT` take one node or a comma-separated list, in the SDK's
//! syntax ([`weft_agent::parse_endpoints`]: `HOST:PORT`, the port required). Every request of
//! every command goes through one [`Failover`] channel, which moves over the list as the SDK
//! does: past a node it cannot connect to at once, and past a node that answers that it did
//! not apply the request (`UNAVAILABLE` with `weft-not-applied: true`: no leader, not part of
//! a formed cluster) after a pause, round the list until the request's time budget runs out.
//! A request whose outcome is unknown is never sent again. When no node takes it, the error
//! names each endpoint and what it said; a request that times out names the endpoint it
//! waited on. See [`crate::failover`].
//!
//! With `--tls-ca` (or `WEFT_TLS_CA`) every endpoint is reached over TLS, checking the node's
//! certificate against that CA; `--tls-cert` and `--tls-key` add a client certificate.
//!
//! With `--auth-token` or `--auth-token-file` (else `WEFT_TOKEN` or `WEFT_TOKEN_FILE`) every
//! request carries `authorization: Bearer <token>`, for nodes that run with auth on. Which one
//! is the SDK's rule ([`weft_agent::token::from_flags_or_env`]): a flag wins over the
//! environment; both flags, or both variables, are an error naming both.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;
use tonic::codegen::http::HeaderValue;
use tonic::transport::Endpoint;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::cluster_client::ClusterClient;
use weft_proto::fabric::v1::executions_client::ExecutionsClient;
use weft_proto::fabric::v1::instances_client::InstancesClient;
use weft_proto::fabric::v1::leases_client::LeasesClient;
use weft_proto::fabric::v1::schedules_client::SchedulesClient;
use weft_proto::fabric::v1::state_client::StateClient;
use weft_proto::fabric::v1::streams_client::StreamsClient;
use weft_proto::fabric::v1::tokens_client::TokensClient;

pub use crate::failover::Failover;

/// How to reach the cluster.
#[derive(Debug, clap::Args)]
pub struct Conn {
    /// Any node of the cluster as HOST:PORT, or a comma-separated list of nodes: a request
    /// moves to the next node when one cannot be reached or answers that it did not apply it.
    #[arg(long, value_name = "HOST:PORT[,...]", env = "WEFT_ENDPOINT", default_value = weft_fabric::config::DEFAULT_LISTEN, global = true)]
    pub endpoint: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// TLS settings of client commands (global flags; `weft node` has its own `--tls-*-file`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Client commands: PEM file of the CA that signed the nodes' certificates. Turns TLS on:
    /// endpoints given as HOST:PORT then mean https://HOST:PORT.
    #[arg(long, value_name = "FILE", env = "WEFT_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Client commands: PEM file of a client certificate to present (with --tls-key).
    #[arg(long, value_name = "FILE", env = "WEFT_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// Client commands: PEM file of the client certificate's key.
    #[arg(long, value_name = "FILE", env = "WEFT_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
}

/// The bearer token of client commands (global flags), for nodes with auth on. The
/// environment (`WEFT_TOKEN`, `WEFT_TOKEN_FILE`) is read by [`credential`], only without
/// either flag: clap's own `env` would not tell a flag from a variable.
#[derive(Clone, Default, clap::Args)]
pub struct AuthArgs {
    /// Client commands: the bearer token to send (`weft_<id>_<secret>`; `weft tokens create`
    /// makes one). Prefer --auth-token-file: a flag's value is visible to other local users.
    /// Without either flag, WEFT_TOKEN or WEFT_TOKEN_FILE (not both) is used.
    #[arg(long, value_name = "TOKEN", global = true)]
    pub auth_token: Option<String>,
    /// Client commands: a file holding the bearer token to send (not with --auth-token).
    /// Either flag wins over WEFT_TOKEN and WEFT_TOKEN_FILE.
    #[arg(long, value_name = "FILE", global = true)]
    pub auth_token_file: Option<PathBuf>,
}

impl std::fmt::Debug for AuthArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthArgs")
            .field("auth_token", &self.auth_token.as_ref().map(|_| "<redacted>"))
            .field("auth_token_file", &self.auth_token_file)
            .finish()
    }
}

/// The command line's TLS settings, set once by `main`.
static TLS_ARGS: OnceLock<TlsArgs> = OnceLock::new();
/// The command line's token settings, set once by `main`.
static AUTH_ARGS: OnceLock<AuthArgs> = OnceLock::new();

/// Records the command line's token settings for [`authorization`].
pub fn set_auth_args(args: AuthArgs) {
    let _ = AUTH_ARGS.set(args);
}

/// The `authorization` header value every request carries (marked sensitive), read and
/// checked once; `None` without a token.
pub fn authorization() -> anyhow::Result<Option<HeaderValue>> {
    static VALUE: OnceLock<Result<Option<HeaderValue>, String>> = OnceLock::new();
    let value = VALUE.get_or_init(|| {
        let Some((credential, from)) = credential()? else { return Ok(None) };
        let mut value = HeaderValue::from_str(&format!("Bearer {}", credential.reveal()))
            .map_err(|_| format!("{from}: not a valid header value"))?;
        value.set_sensitive(true);
        Ok(Some(value))
    });
    value.clone().map_err(|e| anyhow::anyhow!(e))
}

/// The token for commands that talk through the SDK's client (`weft demand`).
pub fn sdk_token() -> anyhow::Result<Option<weft_agent::Token>> {
    let Some((credential, from)) = credential().map_err(|e| anyhow::anyhow!(e))? else { return Ok(None) };
    weft_agent::Token::new(credential.reveal()).map(Some).map_err(|e| anyhow::anyhow!("{from}: {e}"))
}

/// The command line's token (a flag, else the environment: the SDK's rule), parsed, and where
/// it came from.
fn credential() -> Result<Option<(weft_fabric::auth::Credential, String)>, String> {
    static CREDENTIAL: OnceLock<Result<Option<(weft_fabric::auth::Credential, String)>, String>> =
        OnceLock::new();
    CREDENTIAL
        .get_or_init(|| {
            let args = AUTH_ARGS.get().cloned().unwrap_or_default();
            let Some((token, from)) = weft_agent::token::from_flags_or_env(
                args.auth_token.as_deref(),
                args.auth_token_file.as_deref(),
                ["--auth-token", "--auth-token-file"],
            )
            .map_err(|e| e.to_string())?
            else {
                return Ok(None);
            };
            let credential =
                weft_fabric::auth::Credential::parse(token.secret()).map_err(|e| format!("{from}: {e}"))?;
            Ok(Some((credential, from)))
        })
        .clone()
}

/// Records the command line's TLS settings for [`tls`].
pub fn set_tls_args(args: TlsArgs) {
    let _ = TLS_ARGS.set(args);
}

/// The TLS settings of client commands, read from their files; `None` without `--tls-ca`.
pub fn tls() -> anyhow::Result<Option<weft_agent::Tls>> {
    static TLS: OnceLock<Result<Option<weft_agent::Tls>, String>> = OnceLock::new();
    let tls = TLS.get_or_init(|| {
        let args = TLS_ARGS.get().cloned().unwrap_or_default();
        let identity = match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err("--tls-cert and --tls-key (WEFT_TLS_CERT, WEFT_TLS_KEY) go together".into()),
        };
        match args.tls_ca {
            Some(ca) => {
                weft_agent::Tls::from_files(ca, identity).map(Some).map_err(|e| format!("--tls-ca: {e}"))
            }
            None if identity.is_some() => {
                Err("--tls-cert needs --tls-ca (WEFT_TLS_CA): the CA that signed the nodes' certificates"
                    .into())
            }
            None => Ok(None),
        }
    });
    tls.clone().map_err(|e| anyhow::anyhow!(e))
}

/// A command group's flags: how to reach the cluster, and the operation to run.
#[derive(Debug, clap::Args)]
pub struct Group<O: clap::Subcommand> {
    #[command(flatten)]
    pub conn: Conn,
    #[command(subcommand)]
    pub op: O,
}

/// Most bytes a CLI call sends or receives.
pub const MAX_CLI_MESSAGE_BYTES: usize = 64 << 20;

/// How long a request that does not wait for an execution may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// How long connecting to one endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A channel to the nodes of `endpoints` whose requests may take [`REQUEST_TIMEOUT`].
pub fn channel(endpoints: &str) -> anyhow::Result<Failover> {
    failover(endpoints, Some(REQUEST_TIMEOUT), true)
}

/// The endpoints `list` (`--endpoint`, `WEFT_ENDPOINT`) names; refused, naming the problem,
/// if one has no port or does not parse.
pub fn endpoints(list: &str) -> anyhow::Result<Vec<String>> {
    weft_agent::parse_endpoints(list).map_err(|e| anyhow::anyhow!("--endpoint / WEFT_ENDPOINT: {e}"))
}

/// A channel to the nodes of the `endpoints` list, none connected yet, whose requests may take
/// `timeout` (`None`: as long as the server lets them, and they move on for at most
/// [`REQUEST_TIMEOUT`]); `resend`: see [`Failover`]. Over TLS when `--tls-ca` is given, with the
/// bearer token when one is given.
fn failover(endpoints: &str, timeout: Option<Duration>, resend: bool) -> anyhow::Result<Failover> {
    let tls = tls()?;
    let nodes = self::endpoints(endpoints)?
        .into_iter()
        .map(|endpoint| {
            let uri = weft_agent::endpoint_uri(&endpoint, tls.is_some())?;
            let builder = Endpoint::from_shared(uri)
                .with_context(|| format!("'{endpoint}' is not a valid endpoint (expected HOST:PORT)"))?
                .connect_timeout(CONNECT_TIMEOUT);
            Ok((endpoint, builder))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Failover::new(nodes, tls, authorization()?, timeout, timeout.unwrap_or(REQUEST_TIMEOUT), resend))
}

/// The channel timeout for a request the server holds for up to `wait_ms` (0: its longest):
/// the wait plus time to reach the leader, so the server's answer arrives before we give up.
pub fn waiting(wait_ms: u64) -> Option<Duration> {
    (wait_ms > 0).then(|| Duration::from_millis(wait_ms) + REQUEST_TIMEOUT)
}

/// A gRPC client that carries values or payloads, and so takes messages up to
/// [`MAX_CLI_MESSAGE_BYTES`] rather than tonic's default.
pub trait Limited {
    /// The client on `channel`, with [`MAX_CLI_MESSAGE_BYTES`] each way.
    fn on(channel: Failover) -> Self;
}

// The generated clients share no trait for their message limits, so one impl each.
macro_rules! limited {
    ($($client:ident),*) => {$(
        impl Limited for $client<Failover> {
            fn on(channel: Failover) -> Self {
                $client::new(channel)
                    .max_decoding_message_size(MAX_CLI_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_CLI_MESSAGE_BYTES)
            }
        }
    )*};
}

limited!(
    StateClient,
    ExecutionsClient,
    InstancesClient,
    StreamsClient,
    TokensClient,
    LeasesClient,
    SchedulesClient
);

/// A client of the nodes of `endpoints` (see [`Limited`]) whose requests may take `timeout`
/// (`None`: as long as the server lets them).
pub fn client<C: Limited>(endpoints: &str, timeout: Option<Duration>) -> anyhow::Result<C> {
    Ok(C::on(failover(endpoints, timeout, true)?))
}

/// [`client`] for a call whose request is a stream that stays open (`tail --follow`'s Listen):
/// it moves past nodes it cannot connect to, but is sent once, so the caller decides where it
/// goes after a node did not apply it.
pub fn streaming_client<C: Limited>(endpoints: &str, timeout: Option<Duration>) -> anyhow::Result<C> {
    Ok(C::on(failover(endpoints, timeout, false)?))
}

/// The endpoints of the `endpoints` list first, then the address of every other member the
/// first that answers knows (best effort: just the list if none answers): where a command that
/// outlives a node resumes.
pub async fn cluster_endpoints(endpoints: &str) -> Vec<String> {
    let mut list = self::endpoints(endpoints).unwrap_or_else(|_| vec![endpoints.to_owned()]);
    let Ok(channel) = channel(endpoints) else { return list };
    let Ok(status) = ClusterClient::new(channel).status(pb::StatusRequest {}).await else { return list };
    let bare = |e: &str| e.split_once("://").map_or(e, |(_, rest)| rest).trim_end_matches('/').to_owned();
    for m in status.into_inner().members {
        if !m.address.is_empty() && !list.iter().any(|e| bare(e) == bare(&m.address)) {
            list.push(m.address);
        }
    }
    list
}

/// The consistency of a read: `--stale` reads the contacted node's replica.
pub fn consistency(stale: bool) -> i32 {
    if stale { pb::Consistency::Stale as i32 } else { pb::Consistency::Linearizable as i32 }
}

/// Where a listing continues: a page token, or the end.
pub trait PageToken {
    /// Whether this token says no page follows.
    fn is_end(&self) -> bool;
}

impl PageToken for String {
    fn is_end(&self) -> bool {
        self.is_empty()
    }
}

impl PageToken for u64 {
    fn is_end(&self) -> bool {
        *self == 0
    }
}

impl<T> PageToken for Option<T> {
    fn is_end(&self) -> bool {
        self.is_none()
    }
}

/// Fetches the page at `token`, and with `all` the pages after it, up to
/// [`MAX_LIST_ALL_ITEMS`](crate::args::MAX_LIST_ALL_ITEMS) items; returns the items and the
/// token of the page that follows them.
pub async fn pages<T, K: PageToken>(
    mut token: K,
    all: bool,
    mut fetch: impl AsyncFnMut(K) -> Result<(Vec<T>, K), tonic::Status>,
) -> Result<(Vec<T>, K), tonic::Status> {
    let mut items = Vec::new();
    loop {
        let (page, next) = fetch(token).await?;
        items.extend(page);
        token = next;
        if !all || token.is_end() || items.len() >= crate::args::MAX_LIST_ALL_ITEMS {
            return Ok((items, token));
        }
    }
}

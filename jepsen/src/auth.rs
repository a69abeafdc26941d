//! `--auth`: the run's nodes require bearer tokens, and everything the harness runs presents
//! one.
//!
//! ```text
//!   weft tokens generate ─► auth/admin.token ─► every node: auth = true,
//!                                               auth_bootstrap_token_file (the leader creates it)
//!   harness (admin token): cluster up, Tokens.Create ─► auth/agent.token  (serve the counter)
//!                                                   └► auth/client.token (call the counter,
//!                                                      every namespace and stream)
//!   agents: WEFT_TOKEN_FILE = auth/agent.token      workload clients: the client token
//! ```
//!
//! The admin token sets the run up (the counter instance, the streams' setup); the workload
//! runs with the client token only, so a refusal by the nodes' scope checks shows in the
//! history as failed operations.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weft_agent::Token;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::tokens_client::TokensClient;

/// How long the harness tries to create a token (the leader creates the bootstrap admin
/// token just after it is elected, so the first tries may find it unknown).
pub const CREATE_PATIENCE: Duration = Duration::from_secs(30);
/// How long one create may take.
const CREATE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the run's tokens could not be made; nothing was started with them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `weft tokens generate` failed, or its output is not a token.
    #[error("cannot make the admin token: {0}")]
    Generate(String),
    /// A token file could not be written.
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    /// No node created the token within [`CREATE_PATIENCE`]; the last refusal.
    #[error("cannot create the {name} token within {CREATE_PATIENCE:?}: {last}")]
    Create { name: String, last: String },
}

/// What a created token may do.
#[derive(Debug, Clone, Default)]
pub struct Scopes {
    pub serve: Vec<String>,
    pub call: Vec<String>,
    pub namespaces: Vec<String>,
    pub streams: Vec<String>,
}

/// The run's tokens, kept as files in the run folder (`auth/`).
#[derive(Debug, Clone)]
pub struct Auth {
    dir: PathBuf,
    admin_file: PathBuf,
    admin: Token,
}

/// Writes `text` to `path`, readable by its owner only.
fn write_secret(path: &Path, text: &str) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let err = |source| Error::Write { path: path.display().to_string(), source };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    file.write_all(format!("{text}\n").as_bytes()).map_err(err)
}

impl Auth {
    /// Makes the run's admin token in `dir` with `weft tokens generate` of `binary`.
    pub fn make(binary: &Path, dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|source| Error::Write { path: dir.display().to_string(), source })?;
        let out = std::process::Command::new(binary)
            .args(["tokens", "generate"])
            .output()
            .map_err(|e| Error::Generate(format!("cannot run {}: {e}", binary.display())))?;
        if !out.status.success() {
            return Err(Error::Generate(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
        }
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let admin = Token::new(&text).map_err(|e| Error::Generate(e.to_string()))?;
        let admin_file = dir.join("admin.token");
        write_secret(&admin_file, &text)?;
        Ok(Self { dir: dir.to_owned(), admin_file, admin })
    }

    /// The settings every node gets: auth on, and the admin token to create.
    pub fn node_env(&self) -> Vec<(String, String)> {
        vec![
            ("WEFT_AUTH".into(), "true".into()),
            ("WEFT_AUTH_BOOTSTRAP_TOKEN_FILE".into(), self.admin_file.display().to_string()),
        ]
    }

    /// The admin token.
    pub fn admin(&self) -> Token {
        self.admin.clone()
    }

    /// Creates token `name` with `role` and `scopes` through any of `addrs`, with the admin
    /// token, and keeps it in `auth/NAME.token`; the token and its file.
    pub async fn create(
        &self,
        addrs: &[String],
        name: &str,
        role: &str,
        scopes: Scopes,
    ) -> Result<(Token, PathBuf), Error> {
        let request = pb::CreateTokenRequest {
            name: format!("jepsen-{name}"),
            role: role.into(),
            serve: scopes.serve,
            call: scopes.call,
            namespaces: scopes.namespaces,
            streams: scopes.streams,
            expires_in_ms: None,
        };
        let deadline = Instant::now() + CREATE_PATIENCE;
        let mut last = String::from("no node was asked");
        for addr in addrs.iter().cycle() {
            if Instant::now() >= deadline {
                break;
            }
            let channel = crate::db::channel_with(addr, CREATE_TIMEOUT, self.admin.clone());
            let mut req = tonic::Request::new(request.clone());
            req.set_timeout(CREATE_TIMEOUT);
            match TokensClient::new(channel).create(req).await {
                Ok(reply) => {
                    let text = reply.into_inner().token;
                    let token = Token::new(&text)
                        .map_err(|e| Error::Create { name: name.into(), last: e.to_string() })?;
                    let file = self.dir.join(format!("{name}.token"));
                    write_secret(&file, &text)?;
                    tracing::info!(name, role, id = token.id().unwrap_or("?"), "token created");
                    return Ok((token, file));
                }
                Err(status) => {
                    last = format!("{addr}: {:?}: {}", status.code(), status.message());
                    tracing::debug!(name, %last, "token not created yet");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        Err(Error::Create { name: name.into(), last })
    }
}

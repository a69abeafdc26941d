//! The first admin token of a cluster with auth on: the token of `auth_bootstrap_token_file`,
//! created in the grid (role admin, name `bootstrap`, audited as done by the fabric) unless
//! the grid already holds its id, or revoked it.
//!
//! Every node given the file runs [`run`]; the leader proposes the create at once, a follower
//! only if the token has not appeared [`FOLLOWER_GRACE`] after it knew a leader (a leader
//! without the file). A create of the same token again changes nothing, so a retry after an
//! unknown outcome, or two nodes proposing it, is harmless. Proposals are retried at most
//! [`MAX_ATTEMPTS`] times. A node with auth on and no file says how to make the first token
//! when the cluster holds none.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Credential, Role, Scopes};
use crate::grid::Command;
use crate::grid::audit::Actor;
use crate::grid::token::NewToken;
use crate::routing::{self, Context, Error, Leader};

/// The name the bootstrap token is created with.
pub const NAME: &str = "bootstrap";
/// Most proposals of the bootstrap token one node makes before it gives up (and says so).
pub const MAX_ATTEMPTS: u32 = 30;
/// Pause between looks at the grid, and between proposals.
pub const PAUSE: Duration = Duration::from_secs(1);
/// How long a follower waits for the leader to create the token before it proposes it.
pub const FOLLOWER_GRACE: Duration = Duration::from_secs(5);
/// Most read barriers the no-token check tries before it gives up quietly.
const MAX_CHECKS: u32 = 30;

/// Creates the bootstrap token (with `credential`), or, without one, warns when the cluster
/// holds no token at all. Ends when done, after [`MAX_ATTEMPTS`], or at `shutdown`.
pub async fn run(ctx: Context, credential: Option<Credential>, shutdown: CancellationToken) {
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => {}
        _ = async {
            match credential {
                Some(c) => create(&ctx, &c).await,
                None => warn_without_tokens(&ctx).await,
            }
        } => {}
    }
}

/// Where the bootstrap token stands in this node's replica.
enum Found {
    /// Held, with the file's secret.
    Held,
    /// Held with another secret: the file's token will not be accepted.
    Other,
    /// Revoked: not created again.
    Revoked,
    Absent,
}

fn find(ctx: &Context, credential: &Credential) -> Found {
    ctx.applied.read(|a| match a.grid.token(credential.id()) {
        Some(t) if credential.matches(&t.secret_hash) => Found::Held,
        Some(_) => Found::Other,
        None if a.grid.token_revoked(credential.id()) => Found::Revoked,
        None => Found::Absent,
    })
}

async fn create(ctx: &Context, credential: &Credential) {
    let id = credential.id();
    let mut attempts = 0;
    let mut leader_since: Option<Instant> = None;
    loop {
        match find(ctx, credential) {
            Found::Held => {
                tracing::info!(token = %id, "the bootstrap admin token is in the grid");
                return;
            }
            Found::Other => {
                tracing::error!(
                    token = %id,
                    "the grid holds token {id} with another secret: the auth_bootstrap_token_file token is not accepted"
                );
                return;
            }
            Found::Revoked => {
                tracing::warn!(
                    token = %id,
                    "the bootstrap token was revoked, and is not created again (remove auth_bootstrap_token_file)"
                );
                return;
            }
            Found::Absent => {}
        }
        let propose = match ctx.leader() {
            Leader::Local => true,
            Leader::Remote { .. } => {
                leader_since.get_or_insert_with(Instant::now).elapsed() >= FOLLOWER_GRACE
            }
            Leader::Unknown => false,
        };
        if propose {
            attempts += 1;
            match routing::propose(ctx, command(ctx, credential)).await {
                Ok(_) => {
                    tracing::info!(token = %id, "created the bootstrap admin token from auth_bootstrap_token_file");
                    return;
                }
                // The grid's refusal will not change by asking again.
                Err(Error::Grid(e)) => {
                    tracing::error!(token = %id, error = %e, "the bootstrap token was refused");
                    return;
                }
                Err(e) if attempts >= MAX_ATTEMPTS => {
                    tracing::error!(token = %id, error = %e, attempts, "gave up creating the bootstrap token");
                    return;
                }
                Err(e) => {
                    tracing::warn!(token = %id, error = %e, attempts, "creating the bootstrap token; retrying")
                }
            }
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// The audited create of the bootstrap token.
fn command(ctx: &Context, credential: &Credential) -> Command {
    let new = NewToken {
        id: credential.id().to_owned(),
        name: NAME.into(),
        role: Role::Admin,
        scopes: Scopes::default(),
        secret_hash: credential.hash(),
        expires_in_ms: None,
    };
    crate::api::audited(Actor::fabric(ctx.node_id), Command::CreateToken(Box::new(new)))
}

/// Once this node is up to date with a leader: a warning if the cluster holds no token.
async fn warn_without_tokens(ctx: &Context) {
    for _ in 0..MAX_CHECKS {
        if routing::read_barrier(ctx).await.is_ok() {
            if ctx.applied.read(|a| a.grid.token_count()) == 0 {
                tracing::warn!(
                    "auth is on and the cluster holds no tokens, so every request is refused: make an admin \
                     token with `weft tokens generate > admin.token`, then start a node with \
                     --auth-bootstrap-token-file admin.token (auth_bootstrap_token_file)"
                );
            }
            return;
        }
        tokio::time::sleep(PAUSE).await;
    }
}

//! `weft.fabric.v1.Tokens`: bearer tokens, created, listed and revoked by admins.
//!
//! A create makes the secret here (the grid gets its SHA-256 only) and proposes the token
//! audited, so the audit trail says who made which token (never its secret or hash). A revoke
//! is audited too. Both then wait until every member of the cluster has applied them: the
//! verifier on each node reads its own replica, so once every member has applied the entry,
//! every node accepts the new token, or refuses the revoked one.
//!
//! ```text
//!   Create / Revoke ─► propose audited CreateToken / RevokeToken ─► read barrier: this node
//!                      has applied it, at index i ─► ask every voter and learner its applied
//!                      index (NodeStatus) until all ≥ i, or APPLY_WAIT
//!                   ─► { ..., not_applied: [members behind] }
//! ```

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};
use weft_proto::fabric::v1 as pb;

use crate::auth::{self, Credential, Permission};
use crate::convert;
use crate::grid::{Command, Output, token};
use crate::routing::{self, Context, Error};

/// Longest a create or a revoke waits for every member to apply it.
pub const APPLY_WAIT: Duration = Duration::from_secs(10);
/// How often a create or a revoke asks the members how far they have applied.
const APPLY_POLL: Duration = Duration::from_millis(50);
/// Most tokens in one page of `List` (each may carry a few kilobytes of scopes).
pub const MAX_TOKEN_PAGE: usize = 100;

/// Serves `weft.fabric.v1.Tokens` on one node.
#[derive(Clone)]
pub struct TokenService {
    ctx: Context,
}

impl TokenService {
    /// The service for a node.
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    /// Checks `command` and proposes it where the leader is.
    async fn write(&self, command: Command) -> Result<Output, Error> {
        self.ctx.counters.writes.fetch_add(1, Ordering::Relaxed);
        command.validate(&self.ctx.limits)?;
        routing::propose(&self.ctx, command).await
    }

    /// The members (voters and learners) that have not applied `index` by `deadline`.
    async fn not_applied_by(&self, index: u64, deadline: Instant) -> Vec<u64> {
        let cluster = crate::api::ClusterService::new(self.ctx.clone());
        loop {
            let nodes: Vec<(u64, String)> = {
                let metrics = self.ctx.raft.metrics();
                let m = metrics.borrow();
                m.membership_config.membership().nodes().map(|(id, n)| (*id, n.addr.clone())).collect()
            };
            let applied = futures::future::join_all(nodes.iter().map(|(id, addr)| {
                let cluster = &cluster;
                async move {
                    if *id == self.ctx.node_id {
                        self.ctx.raft.metrics().borrow().last_applied.map(|l| l.index)
                    } else {
                        cluster.ask(addr).await.and_then(|r| r.applied_index)
                    }
                }
            }))
            .await;
            let behind: Vec<u64> = nodes
                .iter()
                .zip(applied)
                .filter(|(_, applied)| applied.is_none_or(|a| a < index))
                .map(|((id, _), _)| *id)
                .collect();
            let now = Instant::now();
            if behind.is_empty() || now >= deadline {
                return behind;
            }
            tokio::time::sleep(APPLY_POLL.min(deadline - now)).await;
        }
    }

    /// After a write this node sent: waits until this node, then every member (up to
    /// [`APPLY_WAIT`]), has applied it; the members that had not by then.
    async fn applied_everywhere(&self) -> Result<Vec<u64>, Error> {
        // The write is applied here once the leader's commit index at the barrier is.
        routing::read_barrier(&self.ctx).await?;
        let index = self.ctx.raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        Ok(self.not_applied_by(index, Instant::now() + APPLY_WAIT).await)
    }
}

fn unexpected(what: &str, output: Output) -> Error {
    Error::Unavailable(format!("unexpected answer to a token {what}: {output:?}"))
}

#[tonic::async_trait]
impl pb::tokens_server::Tokens for TokenService {
    async fn create(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenReply>, Status> {
        auth::check(&request, Permission::ManageTokens)?;
        let actor = crate::api::actor(&self.ctx, &request);
        let credential = Credential::generate();
        let result = async {
            let new = convert::new_token(request.into_inner(), &credential)?;
            let (name, role) = (new.name.clone(), new.role);
            let command = crate::api::audited(actor, Command::CreateToken(Box::new(new)));
            let id = match self.write(command).await? {
                Output::Token { id, .. } => id,
                other => return Err(unexpected("create", other)),
            };
            tracing::info!(token = %id, %name, %role, "token created");
            let not_applied = self.applied_everywhere().await?;
            if !not_applied.is_empty() {
                tracing::warn!(token = %id, ?not_applied, "members had not applied a token's create in time");
            }
            // The record as the grid stamped it.
            let record = self.ctx.applied.read(|a| a.grid.token(&id).cloned()).map(convert::pb_token);
            Ok(Response::new(pb::CreateTokenReply { token: credential.reveal(), record, not_applied }))
        }
        .await
        .map_err(Error::into_status);
        self.ctx.count(&result);
        result
    }

    async fn list(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensReply>, Status> {
        auth::check(&request, Permission::ManageTokens)?;
        self.ctx.counters.reads.fetch_add(1, Ordering::Relaxed);
        let req = request.into_inner();
        let result = async {
            let size = super::page_size(req.page_size, MAX_TOKEN_PAGE, MAX_TOKEN_PAGE)?;
            if !convert::is_stale(req.consistency) {
                routing::read_barrier(&self.ctx).await?;
            }
            let after = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
            let mut page: Vec<token::Token> =
                self.ctx.applied.read(|a| a.grid.tokens_after(after).take(size + 1).cloned().collect());
            let next_page_token = if page.len() > size {
                page.truncate(size);
                page.last().map(|t| t.id.clone()).unwrap_or_default()
            } else {
                String::new()
            };
            let tokens = page.into_iter().map(convert::pb_token).collect();
            Ok(Response::new(pb::ListTokensReply { tokens, next_page_token }))
        }
        .await
        .map_err(Error::into_status);
        self.ctx.count(&result);
        result
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenReply>, Status> {
        auth::check(&request, Permission::ManageTokens)?;
        let actor = crate::api::actor(&self.ctx, &request);
        let id = request.into_inner().id;
        let result = async {
            let command = crate::api::audited(actor, Command::RevokeToken { id: id.clone() });
            let existed = match self.write(command).await? {
                Output::TokenRevoked { existed } => existed,
                other => return Err(unexpected("revoke", other)),
            };
            tracing::info!(token = %id, existed, "token revoked");
            let not_applied = self.applied_everywhere().await?;
            if !not_applied.is_empty() {
                tracing::warn!(token = %id, ?not_applied, "members had not applied a token's revoke in time");
            }
            Ok(Response::new(pb::RevokeTokenReply { existed, not_applied }))
        }
        .await
        .map_err(Error::into_status);
        self.ctx.count(&result);
        result
    }
}

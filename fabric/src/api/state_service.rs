//! `weft.fabric.v1.State`: key/value state in the grid.
//!
//! Every request type implements [`Call`]: what to do when this node leads, how to forward it
//! when another node does, and whether it is safe to retry after an unknown outcome.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::state_client::StateClient;

use super::{
    Context, Error, FORWARDED_HEADER, Leader, RETRY_PAUSE, convert, is_forwarded, is_not_applied, never_sent,
};
use crate::grid::{self, Output};

type Client = StateClient<Channel>;

/// One kind of State request.
trait Call: Clone + Send + Sync + 'static {
    type Reply: Send + 'static;
    /// Reads may be sent again after any failure; writes only when certainly not applied.
    const IDEMPOTENT: bool;
    /// Refuses bad input before anything is routed or proposed.
    fn validate(&self, ctx: &Context) -> Result<(), Error>;
    /// Serves the request on the leader.
    fn local(self, ctx: Context) -> impl Future<Output = Result<Self::Reply, Error>> + Send;
    /// Sends the request to the leader.
    fn remote(
        client: Client,
        request: Request<Self>,
    ) -> impl Future<Output = Result<Response<Self::Reply>, Status>> + Send;
}

/// Serves `weft.fabric.v1.State` on one node.
#[derive(Clone)]
pub struct StateService {
    ctx: Context,
}

impl StateService {
    /// The service for a node.
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    fn client(&self, addr: &str) -> Result<Client, Status> {
        let channel = self.ctx.channel(addr).map_err(Error::into_status)?;
        Ok(StateClient::new(channel)
            .max_decoding_message_size(self.ctx.max_message_bytes)
            .max_encoding_message_size(self.ctx.max_message_bytes))
    }

    async fn serve<C: Call>(&self, request: Request<C>) -> Result<Response<C::Reply>, Status> {
        let counter = if C::IDEMPOTENT { &self.ctx.counters.reads } else { &self.ctx.counters.writes };
        counter.fetch_add(1, Ordering::Relaxed);
        let result = match request.get_ref().validate(&self.ctx) {
            Ok(()) => self.route(request).await,
            Err(e) => Err(e.into_status()),
        };
        self.ctx.count(&result);
        result
    }

    fn timed_out(&self) -> Error {
        Error::Unavailable(format!(
            "no answer within request_timeout_ms ({} ms); is a majority of the cluster up?",
            self.ctx.request_timeout.as_millis()
        ))
    }

    /// Serves a request where the leader is: here, or forwarded once to it. Retries what is
    /// safe to retry until `request_timeout` runs out.
    async fn route<C: Call>(&self, request: Request<C>) -> Result<Response<C::Reply>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        let deadline = Instant::now() + self.ctx.request_timeout;
        loop {
            let last = match self.ctx.wait_for_leader(deadline).await {
                Leader::Local => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, req.clone().local(self.ctx.clone())).await {
                        Ok(Ok(reply)) => return Ok(Response::new(reply)),
                        Ok(Err(e @ (Error::NotLeader { .. } | Error::Unavailable(_)))) => e.into_status(),
                        Ok(Err(e)) => return Err(e.into_status()),
                        // A read that timed out changed nothing; a write was handed to Raft and
                        // may still commit (e.g. when a lost quorum comes back).
                        Err(_) if C::IDEMPOTENT => return Err(self.timed_out().into_status()),
                        Err(_) => {
                            return Err(Error::Indeterminate(format!(
                                "not committed within request_timeout_ms ({} ms); the leader may have \
                                 lost its quorum",
                                self.ctx.request_timeout.as_millis()
                            ))
                            .into_status());
                        }
                    }
                }
                Leader::Remote { addr, .. } if forwarded => {
                    // Forwarded here, but we are not the leader (any more): the sender retries.
                    return Err(Error::NotLeader { leader: Some(addr) }.into_status());
                }
                Leader::Remote { id, addr } => {
                    let left = deadline.saturating_duration_since(Instant::now()).max(RETRY_PAUSE);
                    let mut fwd = Request::new(req.clone());
                    fwd.metadata_mut().insert(FORWARDED_HEADER, "1".parse().expect("ascii"));
                    fwd.set_timeout(left);
                    self.ctx.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                    // A leader cut off from the rest answers nothing until the deadline; once
                    // this node follows a new leader, stop waiting for the old one.
                    let answer = tokio::select! {
                        answer = C::remote(self.client(&addr)?, fwd) => answer,
                        new = self.ctx.leader_moved_from(id) => Err(Status::cancelled(format!(
                            "node {new} was elected while the request was with the old leader at {addr}"
                        ))),
                    };
                    match answer {
                        Ok(reply) => return Ok(reply),
                        Err(status) if is_not_applied(&status) || never_sent(&status) => status,
                        Err(status)
                            if C::IDEMPOTENT
                                && matches!(
                                    status.code(),
                                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                                ) =>
                        {
                            status
                        }
                        // The leader may have got the write: its outcome is unknown.
                        Err(status)
                            if !C::IDEMPOTENT
                                && matches!(
                                    status.code(),
                                    tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
                                ) =>
                        {
                            return Err(Error::Indeterminate(format!(
                                "the leader at {addr} did not answer in time: {}",
                                status.message()
                            ))
                            .into_status());
                        }
                        Err(status) => return Err(status),
                    }
                }
                Leader::Unknown => Error::Unavailable(format!(
                    "no leader was elected within {} ms; is a majority of the cluster up?",
                    self.ctx.request_timeout.as_millis()
                ))
                .into_status(),
            };
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(last);
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

fn version_of(output: Output) -> u64 {
    match output {
        Output::Written { version } => version,
        _ => 0,
    }
}

fn bad(e: grid::Error) -> Error {
    Error::Grid(e)
}

impl Call for pb::PutRequest {
    type Reply = pb::PutResponse;
    const IDEMPOTENT: bool = false;
    fn validate(&self, ctx: &Context) -> Result<(), Error> {
        convert::put(self.clone()).validate(&ctx.limits).map_err(bad)
    }
    async fn local(self, ctx: Context) -> Result<Self::Reply, Error> {
        let output = ctx.proposer.propose(convert::put(self)).await?;
        Ok(pb::PutResponse { version: version_of(output) })
    }
    async fn remote(mut client: Client, request: Request<Self>) -> Result<Response<Self::Reply>, Status> {
        client.put(request).await
    }
}

impl Call for pb::CompareAndSetRequest {
    type Reply = pb::CompareAndSetResponse;
    const IDEMPOTENT: bool = false;
    fn validate(&self, ctx: &Context) -> Result<(), Error> {
        convert::compare_and_set(self.clone()).validate(&ctx.limits).map_err(bad)
    }
    async fn local(self, ctx: Context) -> Result<Self::Reply, Error> {
        let output = ctx.proposer.propose(convert::compare_and_set(self)).await?;
        Ok(pb::CompareAndSetResponse { version: version_of(output) })
    }
    async fn remote(mut client: Client, request: Request<Self>) -> Result<Response<Self::Reply>, Status> {
        client.compare_and_set(request).await
    }
}

impl Call for pb::DeleteRequest {
    type Reply = pb::DeleteResponse;
    const IDEMPOTENT: bool = false;
    fn validate(&self, ctx: &Context) -> Result<(), Error> {
        convert::delete(self.clone()).validate(&ctx.limits).map_err(bad)
    }
    async fn local(self, ctx: Context) -> Result<Self::Reply, Error> {
        let output = ctx.proposer.propose(convert::delete(self)).await?;
        Ok(pb::DeleteResponse { deleted: matches!(output, Output::Deleted { existed: true }) })
    }
    async fn remote(mut client: Client, request: Request<Self>) -> Result<Response<Self::Reply>, Status> {
        client.delete(request).await
    }
}

fn read_get(ctx: &Context, req: &pb::GetRequest) -> pb::GetResponse {
    let entry = ctx.applied.read(|a| a.grid.get(&req.namespace, &req.key).cloned());
    pb::GetResponse { entry: entry.map(|v| convert::key_value(req.key.clone(), v)) }
}

impl Call for pb::GetRequest {
    type Reply = pb::GetResponse;
    const IDEMPOTENT: bool = true;
    fn validate(&self, ctx: &Context) -> Result<(), Error> {
        grid::validate_key(&self.namespace, &self.key, &ctx.limits).map_err(bad)
    }
    async fn local(self, ctx: Context) -> Result<Self::Reply, Error> {
        ctx.read_index().await?;
        Ok(read_get(&ctx, &self))
    }
    async fn remote(mut client: Client, request: Request<Self>) -> Result<Response<Self::Reply>, Status> {
        client.get(request).await
    }
}

fn page_size(ctx: &Context, req: &pb::ListRequest) -> usize {
    if req.limit == 0 { ctx.limits.max_list_page } else { req.limit as usize }
}

fn read_list(ctx: &Context, req: &pb::ListRequest) -> Result<pb::ListResponse, Error> {
    let after = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
    let limit = page_size(ctx, req);
    let page = ctx
        .applied
        .read(|a| a.grid.list(&req.namespace, &req.prefix, after, limit, &ctx.limits))
        .map_err(bad)?;
    Ok(pb::ListResponse {
        next_page_token: page.next.unwrap_or_default(),
        entries: page.entries.into_iter().map(|(k, v)| convert::key_value(k, v)).collect(),
    })
}

impl Call for pb::ListRequest {
    type Reply = pb::ListResponse;
    const IDEMPOTENT: bool = true;
    fn validate(&self, ctx: &Context) -> Result<(), Error> {
        // Listing an empty grid checks the namespace and page size without reading anything.
        grid::Grid::default()
            .list(&self.namespace, &self.prefix, None, page_size(ctx, self), &ctx.limits)
            .map(drop)
            .map_err(bad)
    }
    async fn local(self, ctx: Context) -> Result<Self::Reply, Error> {
        ctx.read_index().await?;
        read_list(&ctx, &self)
    }
    async fn remote(mut client: Client, request: Request<Self>) -> Result<Response<Self::Reply>, Status> {
        client.list(request).await
    }
}

#[tonic::async_trait]
impl pb::state_server::State for StateService {
    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        if convert::is_stale(request.get_ref().consistency) {
            self.ctx.counters.reads.fetch_add(1, Ordering::Relaxed);
            let req = request.get_ref();
            let result = req.validate(&self.ctx).map(|()| Response::new(read_get(&self.ctx, req)));
            let result = result.map_err(Error::into_status);
            self.ctx.count(&result);
            return result;
        }
        self.serve(request).await
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        self.serve(request).await
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        self.serve(request).await
    }

    async fn compare_and_set(
        &self,
        request: Request<pb::CompareAndSetRequest>,
    ) -> Result<Response<pb::CompareAndSetResponse>, Status> {
        self.serve(request).await
    }

    async fn list(&self, request: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        if convert::is_stale(request.get_ref().consistency) {
            self.ctx.counters.reads.fetch_add(1, Ordering::Relaxed);
            let req = request.get_ref();
            let result = req.validate(&self.ctx).and_then(|()| read_list(&self.ctx, req));
            let result = result.map(Response::new).map_err(Error::into_status);
            self.ctx.count(&result);
            return result;
        }
        self.serve(request).await
    }
}

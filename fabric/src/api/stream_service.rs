//! `weft.fabric.v1.Streams`: streams and cursors in the grid, and listeners (served by
//! [`crate::sessions::listener`]).
//!
//! Writes (create, append, close, delete, cursors, acks) are grid commands proposed through
//! [`routing::propose`]; reads wait for [`routing::read_barrier`] unless they ask for a stale
//! read, then read this node's replica. Every request is checked before anything is routed.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};
use weft_proto::fabric::v1 as pb;

use super::authz;
use crate::auth::{Caller, Denied, Permission, authorize};
use crate::convert;
use crate::grid::cursor::NewCursor;
use crate::grid::stream::{NewStream, validate_filter, validate_item_key, validate_stream_name};
use crate::grid::{self, Command, Output, validate_cursor_name};
use crate::routing::{self, Context, Error};
use crate::sessions::listener;

/// Room a read's response keeps beyond its items' bytes (field framing, the page token).
const READ_RESPONSE_SLACK: usize = 64 * 1024;
/// What one item adds to a response besides its payload, key and headers (seq, time, tags).
const ITEM_FRAMING_BYTES: usize = 64;

/// Serves `weft.fabric.v1.Streams` on one node.
#[derive(Clone)]
pub struct StreamService {
    ctx: Context,
    shutdown: tokio_util::sync::CancellationToken,
}

impl StreamService {
    /// The service for a node; listeners end when `shutdown` fires.
    pub fn new(ctx: Context, shutdown: tokio_util::sync::CancellationToken) -> Self {
        Self { ctx, shutdown }
    }

    /// Checks `command`, then whether the caller may make it (`allowed`, the caller's
    /// permission for what the command names), and proposes it where the leader is.
    async fn write(&self, command: Command, allowed: Result<(), Denied>) -> Result<Output, Error> {
        self.ctx.counters.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        command.validate(&self.ctx.limits)?;
        allowed?;
        routing::propose(&self.ctx, command).await
    }

    /// Waits until this replica may serve a read (unless stale is asked for).
    async fn consistent(&self, consistency: i32) -> Result<(), Error> {
        self.ctx.counters.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if convert::is_stale(consistency) {
            return Ok(());
        }
        routing::read_barrier(&self.ctx).await
    }

    /// Reads a stream from this replica.
    fn with_stream<T>(
        &self,
        name: &str,
        f: impl FnOnce(&grid::stream::Stream) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.ctx.applied.read(|a| match a.grid.stream(name) {
            Some(s) => f(s),
            None => Err(Error::Grid(grid::Error::UnknownStream { name: name.to_owned() })),
        })
    }

    fn info(&self, name: &str) -> Result<pb::StreamInfo, Error> {
        self.with_stream(name, |s| Ok(convert::pb_stream_info(s)))
    }

    fn cursor_info(&self, stream: &str, name: &str) -> Result<pb::CursorInfo, Error> {
        self.with_stream(stream, |s| match s.cursors.get(name) {
            Some(c) => Ok(convert::pb_cursor_info(s, c)),
            None => Err(Error::Grid(grid::Error::UnknownCursor {
                stream: stream.to_owned(),
                name: name.to_owned(),
            })),
        })
    }

    /// Refuses an append once all streams hold `max_stream_bytes` (checked at proposal, like
    /// the other cluster-wide bounds, so replicas with other settings apply the log alike).
    fn check_stream_bytes(&self, adding: usize) -> Result<(), Error> {
        let (_, held) = self.ctx.applied.read(|a| a.grid.stream_totals());
        let limit = self.ctx.streams.max_stream_bytes;
        if held.saturating_add(adding as u64) > limit {
            return Err(Error::Overloaded(format!(
                "streams hold {held} bytes and the append adds {adding}; the limit is {limit} (max_stream_bytes)"
            )));
        }
        Ok(())
    }

    fn counted<T>(&self, result: Result<T, Error>) -> Result<Response<T>, Status> {
        let result = result.map(Response::new).map_err(Error::into_status);
        self.ctx.count(&result);
        result
    }
}

type ListenStream = Pin<Box<dyn Stream<Item = Result<pb::StreamMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::streams_server::Streams for StreamService {
    async fn create(
        &self,
        request: Request<pb::CreateStreamRequest>,
    ) -> Result<Response<pb::StreamInfo>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let result = async {
            let config = convert::stream_config(req.kind, req.limits, req.generator, &self.ctx.work)?;
            // A generator stream calls its agent when it starts.
            let allowed =
                authorize(&caller, Permission::WriteStream { stream: &req.name }).and_then(
                    |()| match &config.generator {
                        Some(g) => authorize(&caller, Permission::Call { agent: &g.call.agent }),
                        None => Ok(()),
                    },
                );
            let command = Command::CreateStream(Box::new(NewStream { name: req.name.clone(), config }));
            command.validate(&self.ctx.limits)?;
            allowed.clone()?;
            let (count, _) = self.ctx.applied.read(|a| a.grid.stream_totals());
            let exists = self.ctx.applied.read(|a| a.grid.stream(&req.name).is_some());
            if !exists && count >= self.ctx.streams.max_streams {
                return Err(Error::Grid(grid::Error::TooMany {
                    what: "streams".into(),
                    count,
                    limit: self.ctx.streams.max_streams,
                    setting: "max_streams".into(),
                }));
            }
            self.write(command, allowed).await?;
            // The entry is applied on the leader; wait until this replica has it too.
            routing::read_barrier(&self.ctx).await.map_err(read_back_failed)?;
            self.info(&req.name)
        }
        .await;
        self.counted(result)
    }

    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        let caller = Caller::of(&request)?;
        let result = async {
            let append = convert::append(request.into_inner())?;
            let allowed = authorize(&caller, Permission::WriteStream { stream: &append.stream });
            self.check_stream_bytes(append.size())?;
            match self.write(Command::Append(Box::new(append)), allowed).await? {
                Output::Appended { first_seq, last_seq, duplicate } => {
                    Ok(pb::AppendResponse { first_seq, last_seq, duplicate })
                }
                other => Err(Error::Indeterminate(format!("unexpected answer to an append: {other:?}"))),
            }
        }
        .await;
        self.counted(result)
    }

    async fn read(&self, request: Request<pb::ReadRequest>) -> Result<Response<pb::ReadResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let result = async {
            validate_stream_name(&req.stream)?;
            authorize(&caller, Permission::ReadStream { stream: &req.stream })?;
            let filter = (!req.filter.is_empty()).then_some(req.filter.as_str());
            if let Some(f) = filter {
                validate_filter(f)?;
            }
            let max = self.ctx.limits.max_list_page;
            let limit = if req.limit == 0 { max } else { req.limit as usize };
            if limit > max {
                return Err(Error::Grid(grid::Error::InvalidPageSize { requested: limit, limit: max }));
            }
            self.consistent(req.consistency).await?;
            // A page fits in one response: it ends early (with where to go on) before the
            // items pass the message size.
            let room = self.ctx.max_message_bytes.saturating_sub(READ_RESPONSE_SLACK);
            self.ctx.applied.read(|a| {
                let (items, next) = a.grid.read_items(&req.stream, req.from_seq, limit, filter)?;
                let mut page = Vec::with_capacity(items.len());
                let mut bytes = 0usize;
                for item in &items {
                    let size = item.size() as usize + ITEM_FRAMING_BYTES;
                    if !page.is_empty() && bytes + size > room {
                        return Ok(pb::ReadResponse { items: page, next_seq: item.seq });
                    }
                    bytes += size;
                    page.push(convert::pb_item(item));
                }
                Ok(pb::ReadResponse { items: page, next_seq: next.unwrap_or(0) })
            })
        }
        .await;
        self.counted(result)
    }

    async fn last_by_key(
        &self,
        request: Request<pb::LastByKeyRequest>,
    ) -> Result<Response<pb::Item>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let result = async {
            validate_stream_name(&req.stream)?;
            validate_item_key(&req.key)?;
            authorize(&caller, Permission::ReadStream { stream: &req.stream })?;
            self.consistent(req.consistency).await?;
            self.with_stream(&req.stream, |s| {
                s.last_by_key(&req.key).map(convert::pb_item).ok_or_else(|| {
                    Error::NotFound(format!("stream '{}' holds no item with key '{}'", req.stream, req.key))
                })
            })
        }
        .await;
        self.counted(result)
    }

    async fn info(
        &self,
        request: Request<pb::StreamInfoRequest>,
    ) -> Result<Response<pb::StreamInfo>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let result = async {
            validate_stream_name(&req.name)?;
            authorize(&caller, Permission::ReadStream { stream: &req.name })?;
            self.consistent(req.consistency).await?;
            self.info(&req.name)
        }
        .await;
        self.counted(result)
    }

    async fn list(
        &self,
        request: Request<pb::ListStreamsRequest>,
    ) -> Result<Response<pb::ListStreamsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let result = async {
            let max = self.ctx.limits.max_list_page;
            let limit = if req.limit == 0 { max } else { req.limit as usize };
            if limit > max {
                return Err(Error::Grid(grid::Error::InvalidPageSize { requested: limit, limit: max }));
            }
            self.consistent(req.consistency).await?;
            let after = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
            // Every stream with ReadAll; else those the caller may read.
            Ok(self.ctx.applied.read(|a| {
                let (page, next_page_token) = authz::readable_streams(&a.grid, &caller, after, limit);
                let streams = page.into_iter().map(convert::pb_stream_info).collect();
                pb::ListStreamsResponse { streams, next_page_token }
            }))
        }
        .await;
        self.counted(result)
    }

    async fn close(
        &self,
        request: Request<pb::CloseStreamRequest>,
    ) -> Result<Response<pb::StreamInfo>, Status> {
        let actor = super::actor(&self.ctx, &request);
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let result = async {
            let error = (!req.error.is_empty()).then(|| req.error.clone());
            let allowed = authorize(&caller, Permission::ManageStream { stream: &req.name });
            let command = super::audited(actor, Command::CloseStream { stream: req.name.clone(), error });
            self.write(command, allowed).await?;
            routing::read_barrier(&self.ctx).await.map_err(read_back_failed)?;
            self.info(&req.name)
        }
        .await;
        self.counted(result)
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteStreamRequest>,
    ) -> Result<Response<pb::DeleteStreamResponse>, Status> {
        let actor = super::actor(&self.ctx, &request);
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let result = async {
            let allowed = authorize(&caller, Permission::ManageStream { stream: &req.name });
            let command = super::audited(actor, Command::DeleteStream { stream: req.name.clone() });
            let existed = matches!(self.write(command, allowed).await?, Output::Deleted { existed: true });
            Ok(pb::DeleteStreamResponse { existed })
        }
        .await;
        self.counted(result)
    }

    async fn create_cursor(
        &self,
        request: Request<pb::CreateCursorRequest>,
    ) -> Result<Response<pb::CursorInfo>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let result = async {
            let config = convert::cursor_config(req.config.unwrap_or_default(), None)?;
            let allowed = authorize(&caller, Permission::ReadStream { stream: &req.stream })
                .and_then(|()| authz::check_cursor(&caller, &config));
            let new = NewCursor { stream: req.stream.clone(), name: req.name.clone(), config };
            self.write(Command::CreateCursor(Box::new(new)), allowed).await?;
            routing::read_barrier(&self.ctx).await.map_err(read_back_failed)?;
            self.cursor_info(&req.stream, &req.name)
        }
        .await;
        self.counted(result)
    }

    async fn cursor_info(
        &self,
        request: Request<pb::CursorInfoRequest>,
    ) -> Result<Response<pb::CursorInfo>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let result = async {
            validate_stream_name(&req.stream)?;
            if !req.name.starts_with(grid::cursor::UNNAMED_PREFIX) {
                validate_cursor_name(&req.name)?;
            }
            authorize(&caller, Permission::ReadStream { stream: &req.stream })?;
            self.consistent(req.consistency).await?;
            self.cursor_info(&req.stream, &req.name)
        }
        .await;
        self.counted(result)
    }

    async fn list_cursors(
        &self,
        request: Request<pb::ListCursorsRequest>,
    ) -> Result<Response<pb::ListCursorsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let result = async {
            validate_stream_name(&req.stream)?;
            authorize(&caller, Permission::ReadStream { stream: &req.stream })?;
            self.consistent(req.consistency).await?;
            self.with_stream(&req.stream, |s| {
                Ok(pb::ListCursorsResponse {
                    cursors: s.cursors.values().map(|c| convert::pb_cursor_info(s, c)).collect(),
                })
            })
        }
        .await;
        self.counted(result)
    }

    async fn delete_cursor(
        &self,
        request: Request<pb::DeleteCursorRequest>,
    ) -> Result<Response<pb::DeleteCursorResponse>, Status> {
        let actor = super::actor(&self.ctx, &request);
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let result = async {
            let allowed = authorize(&caller, Permission::ManageStream { stream: &req.stream });
            let command =
                super::audited(actor, Command::DeleteCursor { stream: req.stream.clone(), cursor: req.name });
            let existed = matches!(self.write(command, allowed).await?, Output::Deleted { existed: true });
            Ok(pb::DeleteCursorResponse { existed })
        }
        .await;
        self.counted(result)
    }

    async fn ack(&self, request: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let result = async {
            let acks = req.acks.iter().map(|d| (d.seq, d.token)).collect();
            let effects = convert::effects(req.effects, &self.ctx.work)?;
            let allowed = authorize(&caller, Permission::ReadStream { stream: &req.stream })
                .and_then(|()| authz::check_effects(&caller, &effects));
            let appends: usize = effects
                .iter()
                .map(|e| match e {
                    grid::execution::Effect::Append { items, .. } => items.iter().map(|i| i.size()).sum(),
                    _ => 0,
                })
                .sum();
            if appends > 0 {
                self.check_stream_bytes(appends)?;
            }
            self.write(Command::Ack { stream: req.stream, cursor: req.cursor, acks, effects }, allowed)
                .await?;
            Ok(pb::AckResponse {})
        }
        .await;
        self.counted(result)
    }

    type ListenStream = ListenStream;

    async fn listen(
        &self,
        request: Request<Streaming<pb::ListenerMessage>>,
    ) -> Result<Response<Self::ListenStream>, Status> {
        let caller = Caller::of(&request)?;
        let rx =
            listener::start(self.ctx.clone(), caller, request.into_inner(), self.shutdown.clone()).await?;
        Ok(Response::new(Box::pin(super::execution_service::tokio_stream_from(rx))))
    }
}

/// After a committed write, this node could not catch up to read back what it wrote: the
/// write is applied, so the answer must not say "not applied" (a client would send it again
/// elsewhere); it says the outcome is unknown to this node.
fn read_back_failed(e: Error) -> Error {
    Error::Indeterminate(format!("this node could not read back the write it committed: {e}"))
}

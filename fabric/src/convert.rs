//! Conversions between generated protobuf types and domain types, in one place.

use weft_proto::fabric::v1 as pb;

use crate::grid::{Command, Value};

/// A stored key and value as the protocol shows it.
pub fn key_value(key: String, value: Value) -> pb::KeyValue {
    pb::KeyValue { key, value: value.data, version: value.version, expires_at_ms: value.expires_at_ms }
}

fn ttl(ttl_ms: Option<u64>) -> Option<u64> {
    ttl_ms.filter(|t| *t > 0)
}

/// The grid command a put request asks for (fenced if it carries a fence).
pub fn put(req: pb::PutRequest) -> Command {
    fenced(
        req.fence,
        Command::Put {
            namespace: req.namespace,
            key: req.key,
            value: req.value,
            ttl_ms: ttl(req.ttl_ms),
            if_absent: req.if_absent,
        },
    )
}

/// The grid command a delete request asks for (fenced if it carries a fence).
pub fn delete(req: pb::DeleteRequest) -> Command {
    fenced(
        req.fence,
        Command::Delete { namespace: req.namespace, key: req.key, expected_version: req.expected_version },
    )
}

/// The grid command a compare-and-set request asks for (fenced if it carries a fence).
pub fn compare_and_set(req: pb::CompareAndSetRequest) -> Command {
    fenced(
        req.fence,
        Command::CompareAndSet {
            namespace: req.namespace,
            key: req.key,
            expected_version: req.expected_version,
            value: req.value,
            ttl_ms: ttl(req.ttl_ms),
        },
    )
}

/// `command`, applied only while `fence`'s grant holds its lease, if a fence is given.
fn fenced(fence: Option<pb::Fence>, command: Command) -> Command {
    match fence {
        None => command,
        Some(f) => Command::Fenced { lease: f.lease, token: f.token, command: Box::new(command) },
    }
}

/// Whether a read asked to be served locally.
pub fn is_stale(consistency: i32) -> bool {
    consistency == pb::Consistency::Stale as i32
}

// ---- leases --------------------------------------------------------------------------------

use crate::grid::lease::Lease;

/// The grid command an acquire request asks for.
/// With a wait, the holder queues behind the lease's holder.
pub fn acquire_lease(req: pb::AcquireLeaseRequest) -> Command {
    match req.wait_ms {
        0 => Command::AcquireLease { name: req.name, holder: req.holder, ttl_ms: req.ttl_ms },
        wait_ms => Command::AwaitLease { name: req.name, holder: req.holder, ttl_ms: req.ttl_ms, wait_ms },
    }
}

/// The grid command a renew request asks for.
pub fn renew_lease(req: pb::RenewLeaseRequest) -> Command {
    Command::RenewLease { name: req.name, token: req.token, ttl_ms: req.ttl_ms }
}

/// The grid command a release request asks for.
pub fn release_lease(req: pb::ReleaseLeaseRequest) -> Command {
    Command::ReleaseLease { name: req.name, token: req.token }
}

/// A held lease as the protocol shows it.
pub fn lease_grant(l: Lease) -> pb::LeaseGrant {
    pb::LeaseGrant { name: l.name, holder: l.holder, token: l.token, expires_at_ms: l.expires_at_ms }
}

// ---- executions, sessions, instances ------------------------------------------------------

use crate::grid::execution::{
    Codec, Completion, Effect, Execution, HandlerError, NewExecution, ParentRef, Payload, RetryPolicy,
};
use crate::grid::instance::{Instance, NewInstance};
use crate::grid::session::AgentSpec;
use crate::grid::{self, Completed};

use crate::config::WorkOptions;

fn none_if_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// A payload from the protocol. An absent payload is an empty JSON one (no arguments).
pub fn payload(p: Option<pb::Payload>) -> Result<Payload, grid::Error> {
    match p {
        None => Ok(Payload::json(Vec::new())),
        Some(p) => Ok(Payload { codec: Codec::parse(&p.codec)?, data: p.data }),
    }
}

/// A payload as the protocol shows it.
pub fn pb_payload(p: Payload) -> pb::Payload {
    pb::Payload { codec: p.codec.as_str().to_owned(), data: p.data }
}

fn retry(r: pb::RetryPolicy) -> RetryPolicy {
    RetryPolicy {
        max_attempts: r.max_attempts,
        initial_backoff_ms: r.initial_backoff_ms,
        max_backoff_ms: r.max_backoff_ms,
        multiplier_percent: if r.multiplier_percent == 0 { 200 } else { r.multiplier_percent },
    }
}

/// The new execution a create request asks for, with this node's retention and delivery
/// bound.
pub fn new_execution(
    req: pb::CreateExecutionRequest,
    work: &WorkOptions,
) -> Result<NewExecution, grid::Error> {
    let parent = match (req.parent_id, req.parent_token) {
        (0, _) => None,
        (id, token) => Some(ParentRef { id, token }),
    };
    Ok(NewExecution {
        agent: req.agent,
        instance: none_if_empty(req.instance),
        delegate: req.delegate,
        payload: payload(req.payload)?,
        idempotency_key: none_if_empty(req.idempotency_key),
        timeout_ms: req.timeout_ms,
        deadline_ms: req.deadline_ms,
        delay_ms: req.delay_ms,
        not_before_ms: req.not_before_ms,
        priority: req.priority,
        retry: req.retry.map(retry),
        parent,
        retention_ms: work.execution_retention_ms,
        max_deliveries: work.max_deliveries,
    })
}

/// An execution as the protocol shows it.
pub fn pb_execution(e: Execution) -> pb::Execution {
    let (result, error) = match e.outcome {
        Some(Ok(p)) => (Some(pb_payload(p)), None),
        Some(Err(f)) => {
            (None, Some(pb::ExecutionError { kind: f.kind.as_str().to_owned(), message: f.message }))
        }
        None => (None, None),
    };
    pb::Execution {
        id: e.id,
        agent: e.agent,
        instance: e.instance.unwrap_or_default(),
        delegate: e.delegate,
        payload: Some(pb_payload(e.payload)),
        idempotency_key: e.idempotency_key.unwrap_or_default(),
        status: e.status.as_str().to_owned(),
        attempts: e.attempts,
        session_id: e.lease.map_or(0, |l| l.session),
        created_ms: e.created_ms,
        deadline_ms: e.deadline_ms,
        not_before_ms: e.not_before_ms,
        priority: e.priority,
        parent_id: e.parent.unwrap_or(0),
        result,
        error,
        finished_ms: e.finished_ms,
        retry: e.retry.map(|r| pb::RetryPolicy {
            max_attempts: r.max_attempts,
            initial_backoff_ms: r.initial_backoff_ms,
            max_backoff_ms: r.max_backoff_ms,
            multiplier_percent: r.multiplier_percent,
        }),
    }
}

/// The agents a session's open message declares.
pub fn agent_specs(specs: Vec<pb::AgentSpec>) -> Vec<AgentSpec> {
    specs
        .into_iter()
        .map(|s| AgentSpec {
            name: s.name,
            delegates: s.delegates,
            concurrent_instances: s.concurrent_instances,
        })
        .collect()
}

/// The completion a session reports.
pub fn completion(c: pb::Completion, work: &WorkOptions) -> Result<Completion, grid::Error> {
    use pb::completion::Outcome;
    let outcome = match c.outcome {
        Some(Outcome::Result(p)) => Ok(payload(Some(p))?),
        Some(Outcome::Error(e)) => Err(HandlerError { message: e.message, retryable: e.retryable }),
        None => {
            return Err(grid::Error::InvalidCompletion {
                reason: "it has neither a result nor an error".into(),
            });
        }
    };
    let effects = effects(c.effects, work)?;
    Ok(Completion { execution: c.execution_id, token: c.token, outcome, effects })
}

/// The effects of a completion or a stream ack.
pub fn effects(effects: Vec<pb::Effect>, work: &WorkOptions) -> Result<Vec<Effect>, grid::Error> {
    let mut out = Vec::with_capacity(effects.len());
    for effect in effects {
        out.push(match effect.kind {
            Some(pb::effect::Kind::State(s)) => match s.value {
                Some(value) => Effect::Put {
                    namespace: s.namespace,
                    key: s.key,
                    value,
                    ttl_ms: ttl(s.ttl_ms),
                    expected_version: s.expected_version,
                },
                None => Effect::Delete {
                    namespace: s.namespace,
                    key: s.key,
                    expected_version: s.expected_version,
                },
            },
            Some(pb::effect::Kind::Call(req)) => Effect::Call(Box::new(new_execution(req, work)?)),
            Some(pb::effect::Kind::Append(a)) => {
                Effect::Append { stream: a.stream, items: new_items(a.items)? }
            }
            Some(pb::effect::Kind::Ack(a)) => {
                Effect::Ack { stream: a.stream, cursor: a.cursor, seq: a.seq, token: a.token }
            }
            Some(pb::effect::Kind::Fence(f)) => Effect::Fence { lease: f.lease, token: f.token },
            None => return Err(grid::Error::InvalidCompletion { reason: "an effect of no kind".into() }),
        });
    }
    Ok(out)
}

/// How a completion was taken, as the protocol shows it.
pub fn completion_ack(
    execution_id: u64,
    token: u64,
    result: &Result<grid::Output, crate::routing::Error>,
) -> pb::CompletionAck {
    use grid::Error as G;
    let (outcome, error) = match result {
        Ok(grid::Output::Completion(Completed::Accepted)) => ("accepted", String::new()),
        Ok(grid::Output::Completion(Completed::Repeated)) => ("repeated", String::new()),
        Ok(grid::Output::Completion(Completed::Conflict { namespace, key, expected, current })) => (
            "conflict",
            format!(
                "{namespace} {key} is at version {current}, not {expected}; nothing applied, it runs again"
            ),
        ),
        Ok(grid::Output::Completion(Completed::Retrying { not_before_ms })) => {
            ("retrying", format!("its retry policy runs it again at {not_before_ms} ms"))
        }
        Ok(grid::Output::Completion(Completed::LockLost { lease, token, reason })) => (
            "lock_lost",
            format!(
                "the grant {token} of lease '{lease}' no longer holds ({reason}); nothing applied, it runs again"
            ),
        ),
        Ok(other) => ("unavailable", format!("unexpected answer {other:?}")),
        Err(crate::routing::Error::Grid(
            e @ (G::StaleLease { .. } | G::ExecutionFinished { .. } | G::UnknownExecution { .. }),
        )) => ("stale", e.to_string()),
        Err(crate::routing::Error::Grid(e)) => ("invalid", e.to_string()),
        Err(e @ crate::routing::Error::Denied(_)) => ("invalid", e.to_string()),
        Err(e) => ("unavailable", e.to_string()),
    };
    pb::CompletionAck { execution_id, outcome: outcome.to_owned(), error, token }
}

/// The new instance a start request asks for.
pub fn new_instance(req: pb::StartInstanceRequest, work: &WorkOptions) -> Result<NewInstance, grid::Error> {
    Ok(NewInstance {
        agent: req.agent,
        instance: none_if_empty(req.instance),
        payload: payload(req.payload)?,
        idempotency_key: none_if_empty(req.idempotency_key),
        parent: req.parent.map(|p| (p.agent, p.instance)),
        retention_ms: work.execution_retention_ms,
        max_deliveries: work.max_deliveries,
    })
}

fn instance_ref((agent, instance): (String, String)) -> pb::InstanceRef {
    pb::InstanceRef { agent, instance }
}

/// An instance as the protocol shows it.
pub fn pb_instance(i: Instance) -> pb::Instance {
    pb::Instance {
        agent: i.agent,
        id: i.id,
        lifecycle: i.lifecycle.as_str().to_owned(),
        session_id: i.session.unwrap_or(0),
        start_result: i.start_result.map(pb_payload),
        parent: i.parent.map(instance_ref),
        children: i.children.into_iter().map(instance_ref).collect(),
        created_ms: i.created_ms,
        queued: i.queue.len() as u32,
        running: i.running,
    }
}

/// A live session as `ListSessions` shows it.
pub fn pb_session(s: crate::grid::session::Session) -> pb::SessionInfo {
    pb::SessionInfo {
        id: s.id,
        name: s.name,
        node_id: s.host.node,
        agents: s
            .agents
            .into_iter()
            .map(|a| pb::AgentSpec {
                name: a.name,
                delegates: a.delegates,
                concurrent_instances: a.concurrent_instances,
            })
            .collect(),
        capacity: s.capacity,
        in_flight: u32::try_from(s.assigned.len()).unwrap_or(u32::MAX),
        opened_ms: s.opened_ms,
        draining: s.draining,
        lease_ms: s.lease_ms,
        only_claimed: s.only_claimed,
        claims: s.claims.into_iter().map(instance_ref).collect(),
        instances: u32::try_from(s.activated.len()).unwrap_or(u32::MAX),
    }
}

// ---- streams and cursors ------------------------------------------------------------------

use crate::grid::cursor::{AckPolicy, Cursor, CursorConfig, DeliverPolicy};
use crate::grid::stream::{
    Append, Discard, End, Generator, Item, Kind, NewItem, ProducerSeq, Stream, StreamConfig,
};

fn invalid_stream(reason: String) -> grid::Error {
    grid::Error::InvalidStream { reason }
}

fn zero_none(v: u64) -> Option<u64> {
    (v > 0).then_some(v)
}

/// A stream's settings from a create request.
pub fn stream_config(
    kind: i32,
    limits: Option<pb::StreamLimits>,
    generator: Option<pb::GeneratorSpec>,
    work: &WorkOptions,
) -> Result<StreamConfig, grid::Error> {
    let kind = match pb::StreamKind::try_from(kind) {
        Ok(pb::StreamKind::Persistent) => Kind::Persistent,
        Ok(pb::StreamKind::Ephemeral) => Kind::Ephemeral,
        Ok(pb::StreamKind::Workqueue) => Kind::Workqueue,
        Err(_) => return Err(invalid_stream(format!("unknown stream kind {kind}"))),
    };
    let l = limits.unwrap_or_default();
    let discard = match pb::Discard::try_from(l.discard) {
        Ok(pb::Discard::Old) => Discard::Old,
        Ok(pb::Discard::New) => Discard::New,
        Err(_) => return Err(invalid_stream(format!("unknown discard policy {}", l.discard))),
    };
    let config = StreamConfig {
        kind,
        max_items: zero_none(l.max_items),
        max_bytes: zero_none(l.max_bytes),
        max_age_ms: zero_none(l.max_age_ms),
        discard,
        dedup_window_ms: zero_none(l.dedup_window_ms).unwrap_or(crate::grid::stream::DEFAULT_DEDUP_WINDOW_MS),
        generator: match generator {
            None => None,
            Some(g) => {
                let call = g.call.ok_or_else(|| invalid_stream("a generator needs a call".into()))?;
                Some(Box::new(Generator { call: new_execution(call, work)?, eager: g.start_on_create }))
            }
        },
    };
    config.validate()?;
    Ok(config)
}

fn pb_stream_limits(c: &StreamConfig) -> pb::StreamLimits {
    pb::StreamLimits {
        max_items: c.max_items.unwrap_or(0),
        max_bytes: c.max_bytes.unwrap_or(0),
        max_age_ms: c.max_age_ms.unwrap_or(0),
        discard: match c.discard {
            Discard::Old => pb::Discard::Old as i32,
            Discard::New => pb::Discard::New as i32,
        },
        dedup_window_ms: c.dedup_window_ms,
    }
}

fn pb_kind(kind: Kind) -> i32 {
    match kind {
        Kind::Persistent => pb::StreamKind::Persistent as i32,
        Kind::Ephemeral => pb::StreamKind::Ephemeral as i32,
        Kind::Workqueue => pb::StreamKind::Workqueue as i32,
    }
}

/// A stream as the protocol shows it, with its cursors.
pub fn pb_stream_info(s: &Stream) -> pb::StreamInfo {
    pb::StreamInfo {
        name: s.name.clone(),
        kind: pb_kind(s.config.kind),
        limits: Some(pb_stream_limits(&s.config)),
        first_seq: s.first_seq(),
        last_seq: s.last_seq,
        items: s.items.len() as u64,
        bytes: s.bytes,
        closed: s.closed.is_some(),
        close_error: s.closed.as_ref().and_then(End::error).unwrap_or_default().to_owned(),
        created_ms: s.created_ms,
        cursors: s.cursors.values().map(|c| pb_cursor_info(s, c)).collect(),
        uid: s.uid,
        generator: s
            .config
            .generator
            .as_ref()
            .map(|g| pb::GeneratorSpec { call: Some(pb_new_execution(&g.call)), start_on_create: g.eager }),
        generator_execution: s.generator_execution.unwrap_or(0),
    }
}

/// A call to make as the protocol shows it (for a generator's settings).
fn pb_new_execution(n: &NewExecution) -> pb::CreateExecutionRequest {
    pb::CreateExecutionRequest {
        agent: n.agent.clone(),
        instance: n.instance.clone().unwrap_or_default(),
        delegate: n.delegate.clone(),
        payload: Some(pb_payload(n.payload.clone())),
        idempotency_key: n.idempotency_key.clone().unwrap_or_default(),
        timeout_ms: n.timeout_ms,
        deadline_ms: n.deadline_ms,
        delay_ms: n.delay_ms,
        not_before_ms: n.not_before_ms,
        priority: n.priority,
        retry: n.retry.map(|r| pb::RetryPolicy {
            max_attempts: r.max_attempts,
            initial_backoff_ms: r.initial_backoff_ms,
            max_backoff_ms: r.max_backoff_ms,
            multiplier_percent: r.multiplier_percent,
        }),
        parent_id: 0,
        parent_token: 0,
        wait_for_delegate: false,
    }
}

/// A cursor as the protocol shows it.
pub fn pb_cursor_info(s: &Stream, c: &Cursor) -> pb::CursorInfo {
    pb::CursorInfo {
        stream: s.name.clone(),
        name: c.name.clone(),
        config: Some(pb_cursor_config(&c.config)),
        ack_floor: c.ack_floor(),
        next_seq: c.next_seq,
        lag: (s.last_seq + 1).saturating_sub(c.next_seq),
        ack_pending: c.unacked.len() as u64,
        redelivery_pending: c.queued.len() as u64,
        delivered: c.delivered,
        redelivered: c.redelivered,
        dead_lettered: c.dead_lettered,
        listeners: c.listeners.len() as u32,
        unnamed: c.unnamed(),
    }
}

/// A cursor's settings from the protocol (`idle_ms` is the node's, for unnamed cursors).
pub fn cursor_config(c: pb::CursorConfig, idle_ms: Option<u64>) -> Result<CursorConfig, grid::Error> {
    let bad = |reason: String| grid::Error::InvalidCursor { reason };
    let deliver = match pb::DeliverPolicy::try_from(c.deliver) {
        Ok(pb::DeliverPolicy::DeliverAll) => DeliverPolicy::All,
        Ok(pb::DeliverPolicy::DeliverNew) => DeliverPolicy::New,
        Ok(pb::DeliverPolicy::DeliverLast) => DeliverPolicy::Last,
        Ok(pb::DeliverPolicy::DeliverLastPerKey) => DeliverPolicy::LastPerKey,
        Ok(pb::DeliverPolicy::DeliverFromSeq) => DeliverPolicy::FromSeq(c.from_seq),
        Ok(pb::DeliverPolicy::DeliverFromTime) => DeliverPolicy::FromTime(c.from_time_ms),
        Err(_) => return Err(bad(format!("unknown deliver policy {}", c.deliver))),
    };
    let ack = match pb::AckPolicy::try_from(c.ack) {
        Ok(pb::AckPolicy::AckExplicit) => AckPolicy::Explicit,
        Ok(pb::AckPolicy::AckNone) => AckPolicy::None,
        Err(_) => return Err(bad(format!("unknown ack policy {}", c.ack))),
    };
    let defaults = CursorConfig::default();
    let config = CursorConfig {
        deliver,
        filter: none_if_empty(c.filter),
        ack,
        ack_wait_ms: zero_none(c.ack_wait_ms).unwrap_or(defaults.ack_wait_ms),
        max_deliveries: (c.max_deliveries > 0).then_some(c.max_deliveries),
        dead_letter: none_if_empty(c.dead_letter),
        max_ack_pending: if c.max_ack_pending == 0 { defaults.max_ack_pending } else { c.max_ack_pending },
        idle_ms,
    };
    config.validate()?;
    Ok(config)
}

/// A cursor's settings as the protocol shows them.
pub fn pb_cursor_config(c: &CursorConfig) -> pb::CursorConfig {
    let (deliver, from_seq, from_time_ms) = match c.deliver {
        DeliverPolicy::All => (pb::DeliverPolicy::DeliverAll, 0, 0),
        DeliverPolicy::New => (pb::DeliverPolicy::DeliverNew, 0, 0),
        DeliverPolicy::Last => (pb::DeliverPolicy::DeliverLast, 0, 0),
        DeliverPolicy::LastPerKey => (pb::DeliverPolicy::DeliverLastPerKey, 0, 0),
        DeliverPolicy::FromSeq(s) => (pb::DeliverPolicy::DeliverFromSeq, s, 0),
        DeliverPolicy::FromTime(t) => (pb::DeliverPolicy::DeliverFromTime, 0, t),
    };
    pb::CursorConfig {
        deliver: deliver as i32,
        from_seq,
        from_time_ms,
        filter: c.filter.clone().unwrap_or_default(),
        ack: match c.ack {
            AckPolicy::Explicit => pb::AckPolicy::AckExplicit as i32,
            AckPolicy::None => pb::AckPolicy::AckNone as i32,
        },
        ack_wait_ms: c.ack_wait_ms,
        max_deliveries: c.max_deliveries.unwrap_or(0),
        dead_letter: c.dead_letter.clone().unwrap_or_default(),
        max_ack_pending: c.max_ack_pending,
    }
}

/// An append request as the grid takes it.
pub fn append(req: pb::AppendRequest) -> Result<Append, grid::Error> {
    Ok(Append {
        stream: req.stream,
        items: new_items(req.items)?,
        expected_last_seq: req.expected_last_seq,
        producer: req.producer.map(|p| ProducerSeq { id: p.id, epoch: p.epoch, sequence: p.sequence }),
        msg_id: none_if_empty(req.msg_id),
    })
}

fn new_items(items: Vec<pb::NewItem>) -> Result<Vec<NewItem>, grid::Error> {
    items
        .into_iter()
        .map(|i| {
            Ok(NewItem {
                key: none_if_empty(i.key),
                payload: payload(i.payload)?,
                headers: i.headers.into_iter().map(|h| (h.name, h.value)).collect(),
            })
        })
        .collect()
}

/// A stored item as the protocol shows it.
pub fn pb_item(i: &Item) -> pb::Item {
    pb::Item {
        seq: i.seq,
        key: i.key.clone().unwrap_or_default(),
        payload: Some(pb_payload(i.payload.clone())),
        headers: i
            .headers
            .iter()
            .map(|(name, value)| pb::Header { name: name.clone(), value: value.clone() })
            .collect(),
        time_ms: i.time_ms,
    }
}

// ---- demand --------------------------------------------------------------------------------

use crate::grid::demand::AgentDemand;

/// A picture of the demand as the protocol shows it: this node's id, the log index its
/// replica had applied and the grid's time, with the agents' demand.
pub fn pb_demand(
    node_id: crate::NodeId,
    applied_index: u64,
    now_ms: u64,
    agents: &[AgentDemand],
) -> pb::Demand {
    let agents = agents
        .iter()
        .map(|d| pb::AgentDemand {
            agent: d.agent.clone(),
            pending: d.pending,
            running: d.running,
            delayed: d.delayed,
            instances: d
                .instances
                .iter()
                .map(|i| pb::InstanceDemand {
                    id: i.id.clone(),
                    lifecycle: i.lifecycle.as_str().to_owned(),
                    session: i.session,
                    unfinished: i.unfinished,
                })
                .collect(),
            instances_truncated: d.instances_truncated,
            generator_listeners: d.generator_listeners,
            sessions: d
                .sessions
                .iter()
                .map(|s| pb::SessionLoad {
                    id: s.id,
                    name: s.name.clone(),
                    node_id: s.node,
                    capacity: s.capacity,
                    assigned: s.assigned,
                    draining: s.draining,
                    only_claimed: s.only_claimed,
                    claimed: s.claimed.clone(),
                })
                .collect(),
            sessions_truncated: d.sessions_truncated,
        })
        .collect();
    pb::Demand { node_id, applied_index, now_ms, agents }
}

// ---- tokens ----------------------------------------------------------------------------------

use crate::auth::{Credential, Role, Scopes};
use crate::grid::token::{NewToken, Token};

/// The token a create request asks for, with `credential`'s id and hash. A bad role is
/// refused naming the field; the grid checks the rest.
pub fn new_token(req: pb::CreateTokenRequest, credential: &Credential) -> Result<NewToken, grid::Error> {
    let role: Role =
        req.role.parse().map_err(|e: String| grid::Error::InvalidToken { reason: format!("role: {e}") })?;
    Ok(NewToken {
        id: credential.id().to_owned(),
        name: req.name,
        role,
        scopes: Scopes { serve: req.serve, call: req.call, namespaces: req.namespaces, streams: req.streams },
        secret_hash: credential.hash(),
        expires_in_ms: req.expires_in_ms,
    })
}

/// A token as the protocol shows it: never its hash.
pub fn pb_token(t: Token) -> pb::TokenRecord {
    pb::TokenRecord {
        id: t.id,
        name: t.name,
        role: t.role.as_str().to_owned(),
        serve: t.scopes.serve,
        call: t.scopes.call,
        namespaces: t.scopes.namespaces,
        streams: t.scopes.streams,
        created_at_ms: t.created_at_ms,
        expires_at_ms: t.expires_at_ms,
    }
}

// ---- schedules -----------------------------------------------------------------------------

use crate::grid::schedule::{CatchUp, NewSchedule, Overlap, Run, RunOutcome, Schedule};

/// The schedule a create request asks for, its call with this node's retention and delivery
/// bound.
pub fn new_schedule(req: pb::CreateScheduleRequest, work: &WorkOptions) -> Result<NewSchedule, grid::Error> {
    let Some(call) = req.call else {
        return Err(grid::Error::InvalidSchedule {
            reason: "call: a schedule needs the call it makes".into(),
        });
    };
    Ok(NewSchedule {
        name: req.name,
        cron: req.cron,
        time_zone: none_if_empty(req.time_zone),
        call: new_execution(call, work)?,
        overlap: Overlap::parse(&req.overlap)?,
        catch_up: CatchUp::parse(&req.catch_up)?,
        paused: req.paused,
    })
}

/// A schedule as the protocol shows it: `upcoming_ms` its next due times (Get), and each
/// run's execution status read by `status`.
pub fn pb_schedule(s: &Schedule, upcoming_ms: Vec<u64>, status: impl Fn(u64) -> String) -> pb::Schedule {
    pb::Schedule {
        name: s.spec.name.clone(),
        cron: s.spec.cron.clone(),
        time_zone: s.spec.time_zone.clone().unwrap_or_default(),
        call: Some(pb_new_execution(&s.spec.call)),
        overlap: s.spec.overlap.as_str().to_owned(),
        catch_up: s.spec.catch_up.as_str().to_owned(),
        paused: s.paused,
        created_ms: s.created_ms,
        next_due_ms: s.next_due_ms,
        upcoming_ms,
        started: s.started,
        skipped: s.skipped,
        queued_due_ms: s.queued.map(|(due, _)| due),
        runs: s.runs.iter().map(|r| pb_schedule_run(r, &status)).collect(),
    }
}

/// A run as the protocol shows it, its execution's status read by `status`.
pub fn pb_schedule_run(r: &Run, status: impl Fn(u64) -> String) -> pb::ScheduleRun {
    let (outcome, reason, execution_id) = match &r.outcome {
        RunOutcome::Started { execution } => ("started", String::new(), *execution),
        RunOutcome::Skipped { reason } => ("skipped", reason.clone(), 0),
        RunOutcome::Queued => ("queued", "waiting for the previous run to finish".to_owned(), 0),
        RunOutcome::Refused { error } => ("refused", error.clone(), 0),
    };
    pb::ScheduleRun {
        due_ms: r.due_ms,
        fired_ms: r.fired_ms,
        cause: r.cause.as_str().to_owned(),
        outcome: outcome.to_owned(),
        reason,
        execution_id,
        status: if execution_id == 0 { String::new() } else { status(execution_id) },
    }
}

//! The executions workload's counter: the agent that applies increments, how a caller's
//! `Executions/Call` outcome becomes a history type, and the final read of its state.
//!
//! ```text
//!  worker ──Call(increment, key, idempotency_key = key)──► node ──► leader: create + assign
//!                                                                       │ (same log entry)
//!  agent process (weft-jepsen-agent, one of K) ◄──assignment── session ◄┘
//!    increment(key): read `count` (n) ─► buffer `count` = n + 1, `applied/<key>` =
//!    {count: n + 1, execution, attempt} and `serving` = its number ─► completion (result
//!    n + 1 and the writes, one log entry)
//!
//!  --target shared: Call(increment_shared, no instance) ─► a leader with a session of its
//!    own may push it before creating it (eager), and create it in the entry that carries
//!    its completion; else as above
//! ```
//!
//! Two targets ([`Target`]), one agent serving both delegates:
//!
//! - [`Target::Instance`]: `increment` on the instance `jepsen-counter/jepsen`, which runs one
//!   execution at a time, so increments are serialized; its state is
//!   `instance/jepsen-counter/jepsen`.
//! - [`Target::Shared`]: `increment_shared`, a stateless call (no instance, no delay: what the
//!   leader may push to a session before creating it, `docs/architecture.md#eager-calls`) over
//!   the namespace `shared/jepsen-counter`. Increments run concurrently on every agent; the
//!   count's write is conditional on the version the handler read, so of two concurrent
//!   increments one completion conflicts, nothing of it is applied, and it runs again.
//!
//! Either way the state after the run must hold one `applied/<key>` record per increment
//! applied, with the counts 1..=count, one each (see [`crate::checker::executions`]).
//!
//! | `Call` outcome | history |
//! |---|---|
//! | execution `completed` | ok, with the count it returned |
//! | execution `failed` or `cancelled` | fail (a final execution never completes, and effects come only with a completion) |
//! | an error [`weft_proto::wire::Outcome`] calls definite: not applied (`weft-not-applied`, a connection that never opened), overloaded, refused | fail (nothing was created) |
//! | DEADLINE_EXCEEDED (the wait ran out; the execution goes on), any other error, client timeout | info |
//!
//! `Call` checks every limit (waiters, stored executions, the write queue) before it creates
//! the execution; a failure after the create (no room to register the wait) is UNAVAILABLE
//! without `weft-not-applied`, naming the execution, so it is `info`.
//!
//! [`Effects::Direct`] is unsafe on purpose: the agent writes the keys with plain state
//! calls from inside the handler, outside the completion, so an agent killed after them and
//! before its completion counts the increment again when another agent reruns it. The
//! checker must catch it. On the shared target the count is written with a compare-and-set
//! on the version read (read again and retried on a mismatch), so concurrent increments do
//! not lose updates: what the checker catches there is the rerun, as on the instance.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::db::Channel;
use weft_agent::{Agent, Context, Fail, Scope};
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::executions_client::ExecutionsClient;
use weft_proto::fabric::v1::state_client::StateClient;

use crate::final_read;
use crate::history::{Applied, Op};
use crate::outcome::{Done, code_message, failed};
use crate::recorder::Recorder;

/// The counter agent.
pub const AGENT: &str = "jepsen-counter";
/// The counter instance every increment of [`Target::Instance`] goes to.
pub const INSTANCE: &str = "jepsen";
/// The delegate that increments the instance's count.
pub const DELEGATE: &str = "increment";
/// The stateless delegate that increments the shared count ([`Target::Shared`]).
pub const SHARED_DELEGATE: &str = "increment_shared";
/// The shared namespace of [`Target::Shared`], as `ctx.shared` names it (without `shared/`).
pub const SHARED_NAME: &str = "jepsen-counter";
/// The state key of the count.
pub const COUNT_KEY: &str = "count";
/// State keys of the records: this prefix and the increment's idempotency key.
pub const APPLIED_PREFIX: &str = "applied/";
/// The state key that names the agent process (its number) that applied the latest
/// increment, so the `kill-agent` nemesis can kill the one serving the instance.
pub const SERVING_KEY: &str = "serving";
/// Idempotency key of the instance's start (the run's setup retries with it).
pub const START_KEY: &str = "jepsen-counter-start";
/// How long one request of the final read, setup or quiescence check may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// [`Effects::Direct`] on the shared target: most compare-and-sets of the count one handler
/// run tries before it gives up (the execution fails; the checker counts it as failed).
const MAX_DIRECT_CAS_TRIES: u32 = 100;

/// What increments call, and so where the count lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Target {
    /// `increment` on the instance `jepsen-counter/jepsen`: one execution at a time.
    #[default]
    Instance,
    /// `increment_shared`, a stateless call over `shared/jepsen-counter`: increments run
    /// concurrently, and the leader may run them as eager calls.
    Shared,
}

impl Target {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Target::Instance => "instance",
            Target::Shared => "shared",
        }
    }

    /// The state namespace that holds the count and the records.
    pub fn namespace(self) -> String {
        match self {
            Target::Instance => format!("instance/{AGENT}/{INSTANCE}"),
            Target::Shared => format!("shared/{SHARED_NAME}"),
        }
    }

    /// The delegate an increment calls.
    pub fn delegate(self) -> &'static str {
        match self {
            Target::Instance => DELEGATE,
            Target::Shared => SHARED_DELEGATE,
        }
    }

    /// The instance an increment calls (empty: none, a stateless call).
    pub fn instance(self) -> &'static str {
        match self {
            Target::Instance => INSTANCE,
            Target::Shared => "",
        }
    }
}

/// The state key of `key`'s record.
pub fn applied_key(key: &str) -> String {
    format!("{APPLIED_PREFIX}{key}")
}

/// How the agent writes its effects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Effects {
    /// Buffered in the handler's context and applied with its result, in one log entry:
    /// what the fabric promises to apply exactly once.
    #[default]
    Atomic,
    /// Plain state puts from inside the handler, before it returns: deliberately unsafe
    /// (a rerun after a crash applies the increment again), to show the checker catches it.
    Direct,
}

impl Effects {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Effects::Atomic => "atomic",
            Effects::Direct => "direct",
        }
    }
}

/// The counter agent of agent process `number`, serving both targets' delegates. `work` is
/// how long each increment takes after its read (and, with [`Effects::Direct`], after its
/// writes), which widens the window a kill can hit.
pub fn agent(effects: Effects, work: Duration, number: u64) -> Agent {
    Agent::new(AGENT)
        .delegate(DELEGATE, move |ctx: Context, key: String| async move {
            let state = ctx.state()?;
            increment(ctx, state, key, effects, work, number).await
        })
        .delegate(SHARED_DELEGATE, move |ctx: Context, key: String| async move {
            let state = ctx.shared(SHARED_NAME);
            increment(ctx, state, key, effects, work, number).await
        })
}

/// One increment of the count in `state` (the instance's, or the shared namespace).
async fn increment(
    ctx: Context,
    state: Scope,
    key: String,
    effects: Effects,
    work: Duration,
    number: u64,
) -> Result<u64, Fail> {
    let next = match effects {
        Effects::Atomic => state.get::<u64>(COUNT_KEY).await?.unwrap_or(0) + 1,
        Effects::Direct if ctx.instance().is_some() => {
            // The instance runs one execution at a time: plain puts cannot race.
            let next = state.get::<u64>(COUNT_KEY).await?.unwrap_or(0) + 1;
            ctx.client().state(state.namespace()).put(COUNT_KEY, &next).await?;
            next
        }
        Effects::Direct => claim_next_count(&ctx, state.namespace()).await?,
    };
    let record = Applied { count: next, execution: ctx.execution_id(), attempt: ctx.attempt() };
    tracing::info!(execution = ctx.execution_id(), attempt = ctx.attempt(), %key, count = next, "increment");
    if effects == Effects::Direct {
        let direct = ctx.client().state(state.namespace());
        direct.put(&applied_key(&key), &record).await?;
        direct.put(SERVING_KEY, &number).await?;
    }
    if !work.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(work) => {}
            // Revoked: nothing it returns counts any more.
            _ = ctx.cancelled() => return Err(Fail::new("revoked")),
        }
    }
    if effects == Effects::Atomic {
        // Conditional on the version read (the SDK makes a write of a key read so). The
        // record is not read first: an increment applied twice must show, not be hidden.
        state.put(COUNT_KEY, &next)?;
        state.put(&applied_key(&key), &record)?;
        state.put(SERVING_KEY, &number)?;
    }
    Ok(next)
}

/// [`Effects::Direct`] on the shared namespace `namespace`, where increments run
/// concurrently: the count a compare-and-set on the version read made, read again and
/// retried on a mismatch. Each count is claimed by one handler run, so what makes the
/// history invalid is a run again of an increment applied already, not a lost update.
async fn claim_next_count(ctx: &Context, namespace: &str) -> Result<u64, Fail> {
    let direct = ctx.client().state(namespace);
    for _ in 0..MAX_DIRECT_CAS_TRIES {
        let (count, version) = direct.get_versioned::<u64>(COUNT_KEY).await?.unwrap_or((0, 0));
        match direct.compare_and_set(COUNT_KEY, &(count + 1), version).await {
            Ok(_) => return Ok(count + 1),
            Err(weft_agent::Error::Refused { code: tonic::Code::FailedPrecondition, .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Fail::new(format!("the count changed under {MAX_DIRECT_CAS_TRIES} compare-and-sets in a row")))
}

fn increment_op(key: &str, count: Option<u64>, execution: Option<u64>, attempts: Option<u32>) -> Op {
    Op::Increment { key: key.to_owned(), count, execution, attempts }
}

/// The count a completed execution returned (u64::MAX, a count no increment produces, when
/// it is not a JSON number: the checker then reports a mismatch).
fn returned_count(e: &pb::Execution) -> u64 {
    e.result
        .as_ref()
        .filter(|p| p.codec == "json")
        .and_then(|p| serde_json::from_slice(&p.data).ok())
        .unwrap_or(u64::MAX)
}

/// How one `Call` of an increment with idempotency key `key` goes into the history (see the
/// module docs for the table).
pub(crate) fn classify(key: &str, reply: Result<pb::Execution, tonic::Status>) -> Done {
    match reply {
        Ok(e) => {
            let op = |count| increment_op(key, count, Some(e.id), Some(e.attempts));
            match e.status.as_str() {
                "completed" => Done::Ok(op(Some(returned_count(&e)))),
                "failed" | "cancelled" => {
                    let error = e.error.clone().unwrap_or_default();
                    Done::Fail(
                        op(None),
                        format!("execution {} {} ({}): {}", e.id, e.status, error.kind, error.message),
                    )
                }
                other => Done::Info(op(None), format!("execution {} answered while still {other}", e.id)),
            }
        }
        Err(s) => failed(increment_op(key, None, weft_proto::wire::execution_of(&s), None), &s),
    }
}

/// The `Call` of one increment of `target` with idempotency key `key` (also its argument),
/// for which the fabric waits up to `timeout`.
fn call_request(target: Target, key: &str, timeout: Duration) -> pb::CallRequest {
    let payload =
        pb::Payload { codec: "json".into(), data: serde_json::to_vec(key).expect("a string encodes") };
    pb::CallRequest {
        create: Some(pb::CreateExecutionRequest {
            agent: AGENT.into(),
            instance: target.instance().into(),
            delegate: target.delegate().into(),
            payload: Some(payload),
            idempotency_key: key.into(),
            ..Default::default()
        }),
        timeout_ms: timeout.as_millis().max(1) as u64,
    }
}

/// Calls one increment of `target` with idempotency key `key`; the fabric waits up to
/// `timeout` for it.
pub(crate) async fn call(
    client: &mut ExecutionsClient<Channel>,
    target: Target,
    key: &str,
    timeout: Duration,
) -> Done {
    let mut request = tonic::Request::new(call_request(target, key, timeout));
    // Longer than the fabric's wait, so its answer (which names the execution) comes first.
    request.set_timeout(call_deadline(timeout));
    classify(key, client.call(request).await.map(tonic::Response::into_inner))
}

/// The gRPC deadline of a call whose wait is `timeout`.
pub fn call_deadline(timeout: Duration) -> Duration {
    timeout + Duration::from_millis(500)
}

/// Starts the counter instance (idempotent: its start carries [`START_KEY`]), trying for up
/// to `patience`; it needs an agent session to run its `Start`.
pub async fn start_instance(addrs: &[String], patience: Duration) -> Result<(), weft_agent::Error> {
    let client = weft_agent::Client::builder(addrs.iter().cloned())
        .retry_for(patience)
        .tls(crate::db::client_tls())
        .token(crate::db::client_token())
        .build()?;
    let deadline = Instant::now() + patience;
    loop {
        match client.start_instance_with::<_, ()>(AGENT, Some(INSTANCE), &(), Some(START_KEY), None).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "the counter instance did not start yet");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The agent process that applied the latest increment of `target` (the [`SERVING_KEY`]
/// record), read stale from the first node of `nodes` that answers within `timeout`.
pub async fn serving(nodes: &[(u64, String)], target: Target, timeout: Duration) -> Option<u64> {
    for (_, addr) in nodes {
        let mut client = StateClient::new(crate::db::channel(addr, timeout));
        let mut r = tonic::Request::new(pb::GetRequest {
            namespace: target.namespace(),
            key: SERVING_KEY.into(),
            consistency: pb::Consistency::Stale as i32,
        });
        r.set_timeout(timeout);
        if let Ok(Ok(reply)) = tokio::time::timeout(timeout, client.get(r)).await
            && let Some(entry) = reply.into_inner().entry
        {
            return serde_json::from_slice(&entry.value).ok();
        }
    }
    None
}

/// Whether some execution of the counter agent is `status` (pages through the listing,
/// which may end a page early without a match).
async fn any_with_status(
    client: &mut ExecutionsClient<Channel>,
    status: &str,
) -> Result<bool, tonic::Status> {
    let mut token = 0;
    loop {
        let mut r = tonic::Request::new(pb::ListExecutionsRequest {
            agent: AGENT.into(),
            status: status.into(),
            page_token: token,
            limit: 1,
            consistency: pb::Consistency::Linearizable as i32,
            ..Default::default()
        });
        r.set_timeout(READ_TIMEOUT);
        let page = client.list(r).await?.into_inner();
        if !page.executions.is_empty() {
            return Ok(true);
        }
        if page.next_page_token == 0 {
            return Ok(false);
        }
        token = page.next_page_token;
    }
}

/// Waits (up to `patience`) until no execution of the counter is pending or assigned, so
/// the final read sees every increment that will ever run. Whether it got there.
pub async fn quiesce(nodes: &[(u64, String)], patience: Duration) -> bool {
    if nodes.is_empty() {
        return false;
    }
    let deadline = Instant::now() + patience;
    let mut attempt = 0usize;
    loop {
        let (_, addr) = &nodes[attempt % nodes.len()];
        let mut client = ExecutionsClient::new(crate::db::channel(addr, READ_TIMEOUT));
        let busy = match any_with_status(&mut client, "pending").await {
            Ok(false) => any_with_status(&mut client, "assigned").await,
            other => other,
        };
        match busy {
            Ok(false) => return true,
            Ok(true) => {}
            Err(s) => {
                tracing::debug!(error = %code_message(&s), "quiescence check failed");
                attempt += 1;
            }
        }
        if Instant::now() > deadline {
            tracing::warn!(?patience, "counter executions still unfinished; reading anyway");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The counter's state in `namespace`: the count (0 when absent) and the records by
/// idempotency key.
async fn list_counter(
    addr: &str,
    namespace: &str,
) -> Result<(u64, BTreeMap<String, Applied>), tonic::Status> {
    let mut count = 0;
    let mut applied = BTreeMap::new();
    for e in final_read::list_namespace(addr, namespace).await? {
        if e.key == COUNT_KEY {
            count = serde_json::from_slice(&e.value).unwrap_or(u64::MAX);
        } else if let Some(key) = e.key.strip_prefix(APPLIED_PREFIX) {
            // A record that does not parse names a count no increment produced.
            let record = serde_json::from_slice(&e.value).unwrap_or(Applied {
                count: u64::MAX,
                execution: 0,
                attempt: 0,
            });
            applied.insert(key.to_owned(), record);
        }
    }
    Ok((count, applied))
}

/// The final read: a linearizable, paged list of `target`'s namespace, tried on each node in
/// turn until one answers or `patience` runs out. Recorded as one operation.
pub async fn read_counter(
    nodes: &[(u64, String)],
    target: Target,
    recorder: &Recorder,
    process: u64,
    patience: Duration,
) {
    let invoke = Op::ReadCounter { count: None, applied: None };
    let namespace = target.namespace();
    final_read::until_answered(nodes, recorder, process, patience, invoke, |addr| {
        let namespace = namespace.clone();
        async move {
            let (count, applied) = list_counter(&addr, &namespace).await?;
            Ok(Op::ReadCounter { count: Some(count), applied: Some(applied) })
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::kind;

    fn execution(status: &str, result: Option<&[u8]>) -> pb::Execution {
        pb::Execution {
            id: 7,
            status: status.into(),
            attempts: 2,
            result: result.map(|r| pb::Payload { codec: "json".into(), data: r.to_vec() }),
            ..Default::default()
        }
    }

    #[test]
    fn the_shared_target_is_a_stateless_call_over_a_shared_namespace() {
        let timeout = Duration::from_millis(3000);
        let shared = call_request(Target::Shared, "w1-7", timeout).create.unwrap();
        assert_eq!((shared.agent.as_str(), shared.delegate.as_str()), (AGENT, SHARED_DELEGATE));
        assert_eq!(shared.instance, "", "no instance: eligible for the eager path");
        assert_eq!(
            (shared.delay_ms, shared.not_before_ms),
            (None, None),
            "no delay: eligible for the eager path"
        );
        assert_eq!(shared.idempotency_key, "w1-7");
        assert_eq!(shared.payload.unwrap().data, br#""w1-7""#);
        assert_eq!(Target::Shared.namespace(), "shared/jepsen-counter");

        let instance = call_request(Target::Instance, "w1-7", timeout).create.unwrap();
        assert_eq!((instance.instance.as_str(), instance.delegate.as_str()), (INSTANCE, DELEGATE));
        assert_eq!(Target::Instance.namespace(), "instance/jepsen-counter/jepsen");
        assert_eq!(Target::default(), Target::Instance, "today's behaviour stays the default");
    }

    #[test]
    fn call_outcomes_map_to_fail_only_when_the_increment_cannot_apply() {
        let done = classify("k", Ok(execution("completed", Some(b"12"))));
        assert_eq!(kind(&done), "ok");
        let Done::Ok(Op::Increment { count, execution: id, attempts, .. }) = done else { panic!() };
        assert_eq!((count, id, attempts), (Some(12), Some(7), Some(2)));
        let Done::Ok(Op::Increment { count, .. }) = classify("k", Ok(execution("completed", Some(b"x"))))
        else {
            panic!()
        };
        assert_eq!(count, Some(u64::MAX), "an unreadable result is a count no increment produced");
        assert_eq!(kind(&classify("k", Ok(execution("failed", None)))), "fail");
        assert_eq!(kind(&classify("k", Ok(execution("cancelled", None)))), "fail");
        assert_eq!(kind(&classify("k", Ok(execution("assigned", None)))), "info");

        let not_applied = weft_proto::wire::not_applied("no leader", None);
        assert_eq!(kind(&classify("k", Err(not_applied))), "fail");
        let refused = tonic::Status::unavailable("tcp connect error: Connection refused");
        assert_eq!(kind(&classify("k", Err(refused))), "fail");
        assert_eq!(kind(&classify("k", Err(tonic::Status::not_found("no instance")))), "fail");
        assert_eq!(kind(&classify("k", Err(tonic::Status::failed_precondition("key reused")))), "fail");
        assert_eq!(kind(&classify("k", Err(tonic::Status::unavailable("outcome unknown")))), "info");
        assert_eq!(kind(&classify("k", Err(tonic::Status::resource_exhausted("waiters")))), "fail");
        assert_eq!(kind(&classify("k", Err(tonic::Status::cancelled("timeout")))), "info");
        let too_large = tonic::Status::out_of_range("encoded message length too large");
        assert_eq!(
            kind(&classify("k", Err(too_large))),
            "info",
            "a result too large comes after the call ran"
        );
        let created = weft_proto::wire::with_execution(tonic::Status::unavailable("created, but"), 43);
        assert_eq!(kind(&classify("k", Err(created))), "info", "created, then the wait was refused");
        let running =
            weft_proto::wire::with_execution(tonic::Status::deadline_exceeded("still assigned"), 42);
        let done = classify("k", Err(running));
        assert_eq!(kind(&done), "info");
        let Done::Info(Op::Increment { execution: id, .. }, _) = done else { panic!() };
        assert_eq!(id, Some(42), "the execution that goes on is named");
    }
}

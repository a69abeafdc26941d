//! [`Lapse`]: when the token that opened a long call stops being valid on this node.
//!
//! The gate checks a token once, when a request opens. A long call lives on after that: an
//! agent session (`Executions/Listen`), a wait (`Executions/Wait`, and the waits inside
//! `Call`, `Instances/Start` and `Stop`), a stream listener (`Streams/Listen`), a demand
//! watch (`Scaling/WatchDemand`), an HTTP tail or the dashboard's event stream. Each selects
//! on its `Lapse` beside its own work; the lapse resolves once the token is revoked on this
//! node (a `RevokeToken` entry applied here) or reaches its expiry (by this node's wall
//! clock, as the verifier judges it), and the call ends the way its protocol ends a refusal:
//! a gRPC stream with `UNAUTHENTICATED` naming the token and why ([`Unauthenticated::ending`],
//! sent with [`end_stream`]), an SSE stream with an `end` event carrying that error.
//!
//! ```text
//!   RevokeToken applied here ─► hub: revocation signal bumped ──┐
//!                                                                ├─► lapsed(): does the grid still
//!   the token's expires_at_ms ─► one timer (re-armed at most     │   hold the token, unexpired?
//!                                every MAX_EXPIRY_SLEEP) ────────┘     no ─► Unauthenticated
//! ```
//!
//! Cheap: with auth off, or on a path the gate leaves open, the caller is [`Caller::Open`]
//! and its lapse never resolves (nothing is watched). With a token, a lapse holds a receiver
//! of the hub's one revocation signal (nothing is queued per call: revocations coalesce into
//! one wake-up) and, for a token that expires, one timer; it reads the grid only when a
//! revocation was applied since its last look.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Sleep;

use super::{Caller, Clock, Unauthenticated, wall_clock_ms};
use crate::metrics::Registry;
use crate::raft::state_machine;

/// Longest one timer waits for a token's expiry before the wall clock is read again, so a
/// clock set forward meanwhile is noticed within this.
pub const MAX_EXPIRY_SLEEP: Duration = Duration::from_secs(10);
/// Longest an ended stream's final status waits for room in an outbound queue that a client
/// which stopped reading has filled.
pub const END_SEND_WAIT: Duration = Duration::from_secs(5);

/// Resolves ([`Lapse::lapsed`]) when the token behind a call stops being valid here; never
/// for [`Caller::Open`].
pub struct Lapse {
    watched: Option<Box<Watched>>,
}

/// What a lapse of a token caller watches.
struct Watched {
    id: String,
    applied: state_machine::Handle,
    revocations: watch::Receiver<u64>,
    /// The revocation signal's value when the grid was last read (`None`: not read yet).
    seen: Option<u64>,
    /// False once the hub's signal is gone (the node stops): only the expiry is watched.
    signal_alive: bool,
    /// The token's expiry, as the grid held it at the last read.
    expires_at_ms: Option<u64>,
    /// Armed while the token has an expiry ahead.
    timer: Option<Pin<Box<Sleep>>>,
    clock: Clock,
    metrics: Arc<Registry>,
    /// Why it lapsed, once it did (a lapse stays lapsed; counted once).
    lapsed: Option<Unauthenticated>,
}

impl Lapse {
    /// The lapse of `caller`'s token on this node: `hub` tells of revocations applied to
    /// `applied`; an ending is counted in `metrics` (`weft_auth_streams_ended_total`).
    pub(crate) fn new(
        caller: &Caller,
        hub: &crate::watch::Hub,
        applied: &state_machine::Handle,
        metrics: &Arc<Registry>,
    ) -> Self {
        match caller {
            Caller::Open => Self::never(),
            Caller::Token(principal) => Self {
                watched: Some(Box::new(Watched {
                    id: principal.token_id.clone(),
                    applied: applied.clone(),
                    revocations: hub.watch_revocations(),
                    seen: None,
                    signal_alive: true,
                    expires_at_ms: None,
                    timer: None,
                    clock: wall_clock_ms,
                    metrics: metrics.clone(),
                    lapsed: None,
                })),
            },
        }
    }

    /// A lapse that never resolves (a call without a token to watch).
    pub fn never() -> Self {
        Self { watched: None }
    }

    /// The same lapse judging expiry by `clock` (tests).
    #[cfg(test)]
    fn with_clock(mut self, clock: Clock) -> Self {
        if let Some(w) = self.watched.as_deref_mut() {
            w.clock = clock;
        }
        self
    }

    /// Waits until the token is revoked here or expires; says which. Cancel-safe: use it as
    /// one branch of a `select!` loop (a lapsed lapse resolves again at once).
    pub async fn lapsed(&mut self) -> Unauthenticated {
        match self.watched.as_deref_mut() {
            Some(w) => w.lapsed().await,
            None => std::future::pending().await,
        }
    }

    /// Whether the token has lapsed by now, without waiting: for a loop that may go on
    /// without reaching its `select!` (a reader that always has items to send). Reads the
    /// grid only when a revocation was applied since the last look.
    pub fn check(&mut self) -> Option<Unauthenticated> {
        self.watched.as_deref_mut().and_then(Watched::look)
    }

    /// Runs `work` until it is done, or the token lapses first (then `work` is dropped where
    /// it waits: use it for work that holds no state of the grid's to clean up).
    pub async fn guard<F: Future>(&mut self, work: F) -> Result<F::Output, Unauthenticated> {
        tokio::select! {
            biased;
            why = self.lapsed() => Err(why),
            out = work => Ok(out),
        }
    }
}

impl Watched {
    async fn lapsed(&mut self) -> Unauthenticated {
        loop {
            if let Some(why) = self.look() {
                return why;
            }
            let timer = self.timer.as_mut();
            tokio::select! {
                changed = self.revocations.changed(), if self.signal_alive => {
                    if changed.is_err() {
                        self.signal_alive = false;
                    }
                }
                () = async move {
                    match timer {
                        Some(timer) => timer.await,
                        None => std::future::pending().await,
                    }
                } => self.timer = None,
            }
        }
    }

    /// Reads the grid again if a revocation was applied since the last read, and the clock;
    /// why the token is no longer valid, if it is not. Arms the timer for an expiry ahead.
    fn look(&mut self) -> Option<Unauthenticated> {
        if let Some(why) = &self.lapsed {
            return Some(why.clone());
        }
        // Marked seen before the read: a revoke applied after it changes the signal again.
        let generation = *self.revocations.borrow_and_update();
        if self.seen != Some(generation) {
            self.seen = Some(generation);
            match self.applied.read(|a| a.grid.token(&self.id).map(|t| t.expires_at_ms)) {
                // It was held when the call opened (the gate checked it against this replica,
                // which only moves on): gone now means revoked.
                None => return Some(self.end(Unauthenticated::Revoked { id: self.id.clone() })),
                Some(expires_at_ms) => self.expires_at_ms = expires_at_ms,
            }
        }
        if let Some(at) = self.expires_at_ms {
            let now = (self.clock)();
            if now >= at {
                return Some(self.end(Unauthenticated::Expired { id: self.id.clone(), expired_at_ms: at }));
            }
            if self.timer.is_none() {
                let wait = Duration::from_millis(at - now).min(MAX_EXPIRY_SLEEP);
                self.timer = Some(Box::pin(tokio::time::sleep(wait)));
            }
        }
        None
    }

    fn end(&mut self, why: Unauthenticated) -> Unauthenticated {
        tracing::debug!(token = %self.id, reason = why.reason(), "a long call opened with this token ends");
        self.metrics.auth_ended.count(why.reason());
        self.timer = None;
        self.lapsed = Some(why.clone());
        why
    }
}

/// Ends a gRPC response stream with `why`'s status ([`Unauthenticated::ending`]). The
/// outbound queues keep room for an end; when a client that stopped reading has filled one,
/// a task of its own waits up to [`END_SEND_WAIT`] for room, so the caller never blocks.
pub fn end_stream<T: Send + 'static>(tx: &mpsc::Sender<Result<T, tonic::Status>>, why: &Unauthenticated) {
    if let Err(mpsc::error::TrySendError::Full(end)) = tx.try_send(Err(why.ending())) {
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(END_SEND_WAIT, tx.send(end)).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::auth::{Principal, Role, Scopes};
    use crate::grid::Command;
    use crate::grid::token::{NewToken, SecretHash};
    use crate::watch::Hub;

    thread_local! {
        /// The wall clock the tests' lapses read (each test runs on one thread).
        static NOW_MS: Cell<u64> = const { Cell::new(0) };
    }

    fn test_clock() -> u64 {
        NOW_MS.with(Cell::get)
    }

    fn create(id: &str, expires_in_ms: Option<u64>) -> Command {
        Command::CreateToken(Box::new(NewToken {
            id: id.into(),
            name: format!("{id}-name"),
            role: Role::Client,
            scopes: Scopes::default(),
            secret_hash: SecretHash([1; 32]),
            expires_in_ms,
        }))
    }

    fn caller(id: &str) -> Caller {
        Caller::Token(Arc::new(Principal {
            token_id: id.into(),
            name: format!("{id}-name"),
            role: Role::Client,
            scopes: Scopes::default(),
        }))
    }

    /// A replica holding `live`, `other` and `short` (created at 1 000, expiring at 3 000),
    /// the hub it tells, and the metrics lapses count in.
    fn node() -> (state_machine::Handle, Hub, Arc<Registry>) {
        let applied = state_machine::Handle::with_grid(crate::grid::Grid::default());
        let hub = Hub::new(1, 10);
        let out = applied.apply_and_publish(
            &hub,
            1_000,
            &[create("live", None), create("other", None), create("short", Some(2_000))],
        );
        assert!(out.iter().all(Result::is_ok), "{out:?}");
        (applied, hub, Arc::new(Registry::default()))
    }

    /// Whether `lapse` resolves within `wait`.
    async fn resolves(lapse: &mut Lapse, wait: Duration) -> Option<Unauthenticated> {
        tokio::time::timeout(wait, lapse.lapsed()).await.ok()
    }

    fn ended(metrics: &Registry) -> String {
        let mut t = crate::metrics::Text::default();
        metrics.render(&mut t, "1");
        t.finish()
    }

    #[tokio::test]
    async fn a_revoke_ends_the_lapse_of_its_token_only() {
        let (applied, hub, metrics) = node();
        let mut live = Lapse::new(&caller("live"), &hub, &applied, &metrics);
        let mut other = Lapse::new(&caller("other"), &hub, &applied, &metrics);
        let mut open = Lapse::new(&Caller::Open, &hub, &applied, &metrics);
        assert!(resolves(&mut live, Duration::from_millis(100)).await.is_none(), "valid: waits");

        let out = applied.apply_and_publish(&hub, 2_000, &[Command::RevokeToken { id: "live".into() }]);
        assert!(out[0].is_ok());
        let why = resolves(&mut live, Duration::from_secs(1)).await.expect("the revoke ends it");
        assert_eq!(why, Unauthenticated::Revoked { id: "live".into() });
        let status = why.ending();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("token \"live\" was revoked"), "{}", status.message());
        assert!(resolves(&mut live, Duration::ZERO).await.is_some(), "stays lapsed");
        assert!(resolves(&mut other, Duration::from_millis(100)).await.is_none(), "another token goes on");
        assert!(resolves(&mut open, Duration::from_millis(100)).await.is_none(), "nothing to watch");
        let text = ended(&metrics);
        assert!(text.contains("weft_auth_streams_ended_total{node=\"1\",reason=\"revoked\"} 1"), "{text}");

        // A token revoked before the call looked is found at the first look.
        applied.apply_and_publish(&hub, 3_000, &[Command::RevokeToken { id: "other".into() }]);
        let mut late = Lapse::new(&caller("other"), &hub, &applied, &metrics);
        assert!(resolves(&mut late, Duration::ZERO).await.is_some());
    }

    #[tokio::test]
    async fn an_expiry_ends_the_lapse_by_the_wall_clock() {
        let (applied, hub, metrics) = node();
        NOW_MS.with(|n| n.set(2_900));
        let mut short = Lapse::new(&caller("short"), &hub, &applied, &metrics).with_clock(test_clock);
        let mut live = Lapse::new(&caller("live"), &hub, &applied, &metrics).with_clock(test_clock);
        // The timer runs out after the 100 ms left, but the wall clock has not moved (this
        // test's clock stands still): it reads the clock again and goes on waiting.
        assert!(resolves(&mut short, Duration::from_millis(300)).await.is_none());
        // The clock reaches the expiry while the lapse waits: its timer notices.
        let (why, ()) = tokio::join!(resolves(&mut short, Duration::from_secs(5)), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            NOW_MS.with(|n| n.set(3_000));
        });
        let why = why.expect("expired");
        assert_eq!(why, Unauthenticated::Expired { id: "short".into(), expired_at_ms: 3_000 });
        assert!(why.ending().message().contains("expired at 3000"), "{}", why.ending().message());
        assert!(resolves(&mut live, Duration::from_millis(100)).await.is_none(), "no expiry: goes on");
        let text = ended(&metrics);
        assert!(text.contains("weft_auth_streams_ended_total{node=\"1\",reason=\"expired\"} 1"), "{text}");
    }

    #[tokio::test]
    async fn guard_runs_work_until_the_token_lapses() {
        let (applied, hub, metrics) = node();
        let mut lapse = Lapse::new(&caller("live"), &hub, &applied, &metrics);
        assert_eq!(lapse.guard(async { 7 }).await, Ok(7));
        let (tx, mut rx) = mpsc::channel::<Result<(), tonic::Status>>(1);
        tx.try_send(Ok(())).unwrap();
        let revoke = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            applied.apply_and_publish(&hub, 2_000, &[Command::RevokeToken { id: "live".into() }]);
        };
        let (guarded, ()) = tokio::join!(lapse.guard(std::future::pending::<()>()), revoke);
        let why = guarded.expect_err("the revoke ends the work");
        // The queue is full (a client that stopped reading): the end waits for room.
        end_stream(&tx, &why);
        assert!(rx.recv().await.unwrap().is_ok());
        let end = rx.recv().await.unwrap().expect_err("then the end");
        assert_eq!(end.code(), tonic::Code::Unauthenticated);
    }
}

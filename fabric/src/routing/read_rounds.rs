//! Read rounds: one piece of work (a leader's quorum confirmation, a follower's
//! `Forward/ReadIndex` call) answers every caller that was waiting when it started.
//!
//! A linearizable read needs a read index obtained *after* the read arrived: the leader's
//! commit index at a moment when a quorum still confirmed it as leader. Obtaining one costs a
//! heartbeat round to a quorum (openraft's `get_read_log_id` sends one per call) or, on a
//! follower, a call to the leader. One round started after many reads arrived is as good for
//! all of them as one round each, so reads queue and a loop runs one round for the whole
//! queue:
//!
//! ```text
//!   join() ─► queue (bounded: max_pending_reads; full ─► RESOURCE_EXHAUSTED)
//!                │
//!   loop:  take every read queued now ─► run ONE round ─► send its answer (index or
//!                ▲                                        error, cloned) to each of them
//!                └── reads that join while a round runs stay queued for the next round
//! ```
//!
//! A read that joins while a round is in flight must not be answered by it: that round's
//! index may predate the read (a write acknowledged between the round's start and the read's
//! arrival would be missed). So the loop takes the queue *before* the round starts and never
//! adds to a round once it runs; one round runs at a time, and a late read waits at most
//! for the round in flight plus its own.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::Error;

type Reply<V> = oneshot::Sender<Result<V, Error>>;

/// Joins reads to the next round. Cheap to clone.
pub struct Handle<V> {
    tx: mpsc::Sender<Reply<V>>,
    /// What the rounds are, for error messages ("a read-index round").
    what: &'static str,
}

impl<V> Clone for Handle<V> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone(), what: self.what }
    }
}

/// A read's place in the next round that starts; [`Ticket::wait`] for its answer.
pub struct Ticket<V> {
    rx: oneshot::Receiver<Result<V, Error>>,
}

impl<V> Ticket<V> {
    /// The answer of the first round that started after this read joined. Dropping the
    /// ticket leaves the round (a round with no one left is not run).
    pub async fn wait(self) -> Result<V, Error> {
        self.rx.await.map_err(|_| Error::Unavailable("node is shutting down".into()))?
    }
}

impl<V> Handle<V> {
    /// Queues a read for the next round that starts. Refused at once, changing nothing, when
    /// `max_pending_reads` reads already wait.
    pub fn join(&self) -> Result<Ticket<V>, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(reply).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::Overloaded(format!(
                "too many linearizable reads waiting for {} on this node (max_pending_reads); retry later",
                self.what
            )),
            mpsc::error::TrySendError::Closed(_) => Error::Unavailable("node is shutting down".into()),
        })?;
        Ok(Ticket { rx })
    }

    /// [`Handle::join`], then [`Ticket::wait`].
    pub async fn confirm(&self) -> Result<V, Error> {
        self.join()?.wait().await
    }
}

/// The loop that runs rounds.
pub struct Service<V> {
    rx: mpsc::Receiver<Reply<V>>,
    max_pending_reads: usize,
}

impl<V: Clone + Send + 'static> Service<V> {
    /// A loop and the handle that joins it; at most `max_pending_reads` reads wait (and so
    /// at most that many share a round). `what` names a round in error messages.
    pub fn new(max_pending_reads: usize, what: &'static str) -> (Self, Handle<V>) {
        let max_pending_reads = max_pending_reads.max(1);
        let (tx, rx) = mpsc::channel(max_pending_reads);
        (Self { rx, max_pending_reads }, Handle { tx, what })
    }

    /// Runs `round` once for every batch of waiting reads until `shutdown` (or until every
    /// handle is dropped). A round's answer, success or error, goes to each read of the batch.
    /// Reads still waiting at shutdown are told the node is shutting down.
    pub async fn run<F, Fut>(mut self, mut round: F, shutdown: CancellationToken)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<V, Error>>,
    {
        let mut batch: Vec<Reply<V>> = Vec::new();
        loop {
            let first = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                first = self.rx.recv() => match first {
                    Some(first) => first,
                    None => break,
                },
            };
            batch.push(first);
            // Everything queued now arrived before the round below starts; nothing is added
            // to the batch after that.
            while batch.len() < self.max_pending_reads {
                match self.rx.try_recv() {
                    Ok(reply) => batch.push(reply),
                    Err(_) => break,
                }
            }
            batch.retain(|reply| !reply.is_closed());
            if batch.is_empty() {
                continue;
            }
            let answer = tokio::select! {
                biased;
                () = shutdown.cancelled() => Err(Error::Unavailable("node is shutting down".into())),
                answer = round() => answer,
            };
            for reply in batch.drain(..) {
                let _ = reply.send(answer.clone());
            }
        }
        // Dropping the queue answers what is left in it: "node is shutting down".
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use tokio::sync::{Notify, Semaphore, mpsc};

    use super::*;

    /// Rounds the test controls: each round reports its number when it starts, waits for a
    /// permit, then answers with its number (or the error set for it).
    #[derive(Clone)]
    struct Rounds {
        count: Arc<AtomicU64>,
        started: mpsc::UnboundedSender<u64>,
        permits: Arc<Semaphore>,
        fail: Arc<Mutex<Option<String>>>,
    }

    impl Rounds {
        fn new() -> (Self, mpsc::UnboundedReceiver<u64>) {
            let (started, started_rx) = mpsc::unbounded_channel();
            let rounds = Self {
                count: Arc::default(),
                started,
                permits: Arc::new(Semaphore::new(0)),
                fail: Arc::default(),
            };
            (rounds, started_rx)
        }

        fn round(&self) -> impl Future<Output = Result<u64, Error>> + Send + use<> {
            let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
            let _ = self.started.send(n);
            let permits = self.permits.clone();
            let fail = self.fail.lock().unwrap().take();
            async move {
                permits.acquire().await.unwrap().forget();
                match fail {
                    Some(message) => Err(Error::Unavailable(message)),
                    None => Ok(n),
                }
            }
        }

        /// Lets the round in flight (or the next one) finish.
        fn finish_one(&self) {
            self.permits.add_permits(1);
        }
    }

    /// Anything that queues a read for a round.
    trait Join {
        fn join(&self) -> Result<Ticket<u64>, Error>;
    }

    impl Join for Handle<u64> {
        fn join(&self) -> Result<Ticket<u64>, Error> {
            Handle::join(self)
        }
    }

    fn start(
        max_pending_reads: usize,
    ) -> (Handle<u64>, Rounds, mpsc::UnboundedReceiver<u64>, CancellationToken) {
        let (rounds, started) = Rounds::new();
        let (service, handle) = Service::new(max_pending_reads, "a test round");
        let shutdown = CancellationToken::new();
        let r = rounds.clone();
        tokio::spawn(service.run(move || r.round(), shutdown.clone()));
        (handle, rounds, started, shutdown)
    }

    /// The check: a read that joins while round 1 is in flight. Returns the round that
    /// answered it; only a round that started after it joined (2) is a correct answer.
    async fn round_that_answers_a_read_joining_mid_round(
        join: &impl Join,
        rounds: &Rounds,
        started: &mut mpsc::UnboundedReceiver<u64>,
    ) -> u64 {
        let early = join.join().unwrap();
        assert_eq!(started.recv().await, Some(1), "the first read starts round 1");
        let late = join.join().unwrap();
        rounds.finish_one();
        assert_eq!(early.wait().await.unwrap(), 1);
        rounds.finish_one();
        late.wait().await.unwrap()
    }

    #[tokio::test]
    async fn a_read_joining_during_a_round_waits_for_the_next_round() {
        let (handle, rounds, mut started, shutdown) = start(16);
        let answered_by = round_that_answers_a_read_joining_mid_round(&handle, &rounds, &mut started).await;
        assert_eq!(answered_by, 2, "a round that started before the read arrived must not answer it");
        shutdown.cancel();
    }

    /// A naive batcher that adds a read to the round in flight: what the check above must
    /// catch.
    #[derive(Clone, Default)]
    struct JoinsInFlight {
        state: Arc<Mutex<NaiveState>>,
        queued_notify: Arc<Notify>,
    }

    #[derive(Default)]
    struct NaiveState {
        in_flight: Option<Vec<Reply<u64>>>,
        queued: Vec<Reply<u64>>,
    }

    impl Join for JoinsInFlight {
        fn join(&self) -> Result<Ticket<u64>, Error> {
            let (reply, rx) = oneshot::channel();
            let mut state = self.state.lock().unwrap();
            match &mut state.in_flight {
                Some(round) => round.push(reply),
                None => {
                    state.queued.push(reply);
                    self.queued_notify.notify_one();
                }
            }
            Ok(Ticket { rx })
        }
    }

    impl JoinsInFlight {
        async fn run(self, rounds: Rounds) {
            loop {
                let queued = std::mem::take(&mut self.state.lock().unwrap().queued);
                if queued.is_empty() {
                    self.queued_notify.notified().await;
                    continue;
                }
                self.state.lock().unwrap().in_flight = Some(queued);
                let answer = rounds.round().await;
                let round = self.state.lock().unwrap().in_flight.take().unwrap_or_default();
                for reply in round {
                    let _ = reply.send(answer.clone());
                }
            }
        }
    }

    #[tokio::test]
    async fn the_check_catches_a_batcher_that_joins_the_round_in_flight() {
        let (rounds, mut started) = Rounds::new();
        let naive = JoinsInFlight::default();
        let task = tokio::spawn(naive.clone().run(rounds.clone()));
        let answered_by = round_that_answers_a_read_joining_mid_round(&naive, &rounds, &mut started).await;
        assert_eq!(answered_by, 1, "the naive batcher answers a late read with the round in flight");
        task.abort();
    }

    #[tokio::test]
    async fn one_round_answers_every_read_queued_before_it() {
        let (handle, rounds, mut started, shutdown) = start(16);
        let first = handle.join().unwrap();
        assert_eq!(started.recv().await, Some(1));
        // Ten reads arrive while round 1 runs: they all share round 2. (Both rounds may
        // finish from here on, so a loop that answered them from round 1 fails, not hangs.)
        let waiting: Vec<_> = (0..10).map(|_| handle.join().unwrap()).collect();
        rounds.finish_one();
        rounds.finish_one();
        assert_eq!(first.wait().await.unwrap(), 1);
        for ticket in waiting {
            assert_eq!(ticket.wait().await.unwrap(), 2);
        }
        assert_eq!(started.recv().await, Some(2));
        assert_eq!(rounds.count.load(Ordering::SeqCst), 2, "eleven reads, two rounds");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_failed_round_gives_every_read_of_it_the_same_error_and_the_next_round_runs() {
        let (handle, rounds, mut started, shutdown) = start(16);
        let first = handle.join().unwrap();
        assert_eq!(started.recv().await, Some(1));
        *rounds.fail.lock().unwrap() = Some("leader cannot reach a quorum".into());
        let waiting: Vec<_> = (0..3).map(|_| handle.join().unwrap()).collect();
        rounds.finish_one();
        rounds.finish_one();
        assert_eq!(first.wait().await.unwrap(), 1);
        for ticket in waiting {
            match ticket.wait().await {
                Err(Error::Unavailable(m)) => assert_eq!(m, "leader cannot reach a quorum"),
                other => panic!("expected the round's error, got {other:?}"),
            }
        }
        let after = handle.join().unwrap();
        rounds.finish_one();
        assert_eq!(after.wait().await.unwrap(), 3, "a failed round does not stop the loop");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_full_queue_refuses_a_read_and_names_the_limit() {
        let (handle, rounds, mut started, shutdown) = start(2);
        let first = handle.join().unwrap();
        assert_eq!(started.recv().await, Some(1));
        let queued: Vec<_> = (0..2).map(|_| handle.join().unwrap()).collect();
        match handle.join() {
            Err(Error::Overloaded(m)) => assert!(m.contains("max_pending_reads"), "{m}"),
            Err(e) => panic!("expected Overloaded, got {e:?}"),
            Ok(_) => panic!("a third read joined a queue of 2"),
        }
        rounds.finish_one();
        rounds.finish_one();
        assert_eq!(first.wait().await.unwrap(), 1);
        for ticket in queued {
            assert_eq!(ticket.wait().await.unwrap(), 2, "the refused read took no place in the queue");
        }
        shutdown.cancel();
    }

    #[tokio::test]
    async fn no_round_runs_for_reads_that_gave_up() {
        let (handle, rounds, mut started, shutdown) = start(16);
        let first = handle.join().unwrap();
        assert_eq!(started.recv().await, Some(1));
        drop(handle.join().unwrap());
        rounds.finish_one();
        assert_eq!(first.wait().await.unwrap(), 1);
        let next = handle.join().unwrap();
        // Two permits: a loop that ran a round for the abandoned read answers `next` from
        // round 3, and the check fails instead of waiting.
        rounds.finish_one();
        rounds.finish_one();
        assert_eq!(next.wait().await.unwrap(), 2, "the abandoned read started no round of its own");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn shutdown_answers_every_waiting_read() {
        let (handle, _rounds, mut started, shutdown) = start(16);
        let in_round = handle.join().unwrap();
        assert_eq!(started.recv().await, Some(1));
        let queued = handle.join().unwrap();
        shutdown.cancel();
        for ticket in [in_round, queued] {
            match ticket.wait().await {
                Err(Error::Unavailable(m)) => assert!(m.contains("shutting down"), "{m}"),
                other => panic!("expected Unavailable, got {other:?}"),
            }
        }
    }
}

//! One path to the leader, for every service on the node: a write is one grid command
//! proposed on the leader; a linearizable read waits for the leader's read index and then
//! reads this node's replica.
//!
//! Any node accepts any call. A write or a linearizable read that lands on a follower is
//! handed to the leader once, with `weft.cluster.v1.Forward`; the leader never forwards again.
//! While there is no leader (an election) the node waits, up to `request_timeout_ms`, and
//! retries what was certainly not applied:
//!
//! ```text
//!   propose(command) ─► leader here? ─► proposer ─► raft.client_write(Batch) ─► apply
//!                        └ no ─► Forward/Propose ─► leader's proposer (never forwards again)
//!   read_barrier()    ─► leader here? ─► leader's read round ─► wait until applied >= index
//!                        └ no ─► follower's read round: Forward/ReadIndex ─► leader's read round
//!                                                      └► wait until applied >= index
//! ```
//!
//! A read round ([`read_rounds`]) answers every read that was waiting when it started: on the
//! leader one quorum confirmation serves all local reads and all followers' `ReadIndex` calls
//! waiting then; on a follower one `ReadIndex` call serves all its reads waiting then.
//!
//! What a failed hand-over means is read with [`weft_proto::wire::Outcome`], the one table the
//! fabric, the SDK, the CLI and the tests share; what the node answers its caller is decided
//! in one place, [`Error::into_status`].
//!
//! # Layout
//! - [`context`]: [`Context`], what every service needs: the Raft handle, the applied grid,
//!   the proposer, limits, counters, where the leader is.
//! - [`error`]: [`Error`], and the one place it becomes a `tonic::Status`.
//! - [`forward`]: [`propose`] and [`read_barrier`], the sending side of the path.
//! - [`forward_service`]: `weft.cluster.v1.Forward`, the leader's side.
//! - [`proposer`]: the leader's write batcher: commands in, log entries out.
//! - [`eager`]: the calls the proposer holds and pushes before creating them (eager calls).
//! - [`read_rounds`]: one read-index round (a quorum confirmation, a `ReadIndex` call) for
//!   every read waiting when it starts.

pub mod context;
pub mod eager;
pub mod error;
pub mod forward;
pub mod forward_service;
pub mod proposer;
pub mod read_rounds;

pub use context::{Context, Leader, ReadRounds};
pub use error::Error;
pub use forward::{propose, propose_as, read_barrier};
pub use forward_service::ForwardService;
pub use proposer::Kind;

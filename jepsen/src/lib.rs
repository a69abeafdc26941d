//! weft-jepsen: tries hard to break Weft's promises (DESIGN.md, "Promises") against real
//! `weft node` processes, in the manner of Jepsen: real processes, each a host in its own
//! network namespace; a network cut in real ways; recorded histories; checkers that judge
//! them; and a report per run.
//!
//! ```text
//!  weft-jepsen (root namespace)
//!   ├─ workers ──gRPC──► node k (each worker talks to one node, fails over after errors)
//!   │     └─ invoke / ok / fail / info ──► recorder ──► history.jsonl
//!   ├─ nemesis ── kill -9 / SIGSTOP / iptables DROP / churn (stop for good, add) ──► events
//!   │             └ kill-agent: kill -9 an agent process, restart it
//!   ├─ executions workload: K agent processes (weft-jepsen-agent, own namespaces) ──► nodes
//!   │     (--target shared: stateless increments, which the leader may run as eager calls)
//!   ├─ streams workload: producers append, consumers listen on one durable cursor
//!   └─ after the run: checkers (register: linearizability; set: no lost acknowledged add;
//!        executions: each acknowledged increment applied exactly once, none twice;
//!        streams: one order, no acknowledged append lost or stored twice, all delivered)
//!        ──► report folder (results.json, failing sub-history, latency and throughput PNGs)
//! ```
//!
//! # Layout
//! - [`net`]: namespaces (spare hosts included), veth pairs and the bridge; partitions;
//!   cleanup of leftovers.
//! - [`auth`]: `--auth`: the run's admin, agent and client tokens.
//! - [`agents`]: the executions workload's agent processes: start, kill, restart.
//! - [`counter`]: the executions workload's counter agent (instance and shared targets), how
//!   `Call` outcomes are recorded, and the final read of its state.
//! - [`db`]: the `weft node` processes in those namespaces (static or gossip membership):
//!   start, kill, pause, stop for good, add, leader; the roster clients pick nodes from.
//! - [`nemesis`]: the faults and the schedule that starts and heals them.
//! - [`client`]: workload workers: register and set operations, failover between nodes.
//! - [`placement`]: which node a client talks to: home, failover, back home, roster.
//! - [`streams`]: the streams workload: setup, producers, consumers, final read, drain.
//! - [`outcome`]: how a call's outcome becomes ok / fail / info in the history.
//! - [`final_read`]: the final reads of a run, tried on each node until one answers.
//! - [`history`]: the event format (JSON lines) and pairing invokes with completions.
//! - [`recorder`]: timestamps and stores events as they happen.
//! - [`checker`]: the linearizability search and the register, set, executions and streams
//!   checkers.
//! - [`metrics`]: the nodes' `/metrics` at the end of an executions run: the eager-call
//!   counters.
//! - [`report`]: the run folder: results, failing sub-histories, plots, summary.
//! - [`run`]: one run from setup to report.
//! - [`rng`]: the seeded random number generator every choice uses.

pub mod agents;
pub mod auth;
pub mod checker;
pub mod client;
pub mod counter;
pub mod db;
pub mod final_read;
pub mod history;
pub mod metrics;
pub mod nemesis;
pub mod net;
pub mod outcome;
pub mod placement;
pub mod recorder;
pub mod report;
pub mod rng;
pub mod run;
pub mod streams;

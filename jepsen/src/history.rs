//! The recorded history: every client operation as an `invoke` event followed by one
//! completion (`ok`, `fail` or `info`), and every nemesis action, as JSON lines.
//!
//! ```text
//! {"index":0,"time_ns":1200,"process":3,"type":"invoke","f":{"write":{"key":"k1","value":12884901889}},"node":3}
//! {"index":1,"time_ns":9100,"process":3,"type":"ok","f":{"write":{"key":"k1","value":12884901889,"version":17}},"node":3}
//! {"index":2,"time_ns":5000000000,"process":null,"type":"info","f":{"nemesis":{"phase":"start","name":"kill","detail":"killed [2]"}}}
//! ```
//!
//! `ok` means the operation happened, `fail` that it certainly did not (it changed nothing),
//! `info` that its outcome is unknown (it may have happened, at any time after its invoke).
//! After an `info` a worker continues under a new process id, as in Jepsen, so every process
//! has at most one operation in flight.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Reading or writing a history file failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened, read or written.
    #[error("history file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// A line is not a history event.
    #[error("history file {path} line {line}: {source}")]
    Parse { path: String, line: usize, source: serde_json::Error },
}

/// What an event says about its operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Type {
    /// The operation starts.
    Invoke,
    /// The operation happened; its results are in the event.
    Ok,
    /// The operation certainly did not happen.
    Fail,
    /// The outcome is unknown.
    Info,
}

/// Start or end of a nemesis window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The fault begins.
    Start,
    /// The fault is healed.
    Stop,
}

/// An operation and, on completion, its results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Register read; `value`/`version` are set on `ok` (`None` = the key is absent).
    Read { key: String, value: Option<u64>, version: Option<u64> },
    /// Register write of a value no other operation writes; `version` is set on `ok`.
    Write { key: String, value: u64, version: Option<u64> },
    /// Register compare-and-set: `from` is the value the worker last read at
    /// `expected_version` (versions identify values, because every value is written once).
    Cas { key: String, from: Option<u64>, expected_version: u64, to: u64, version: Option<u64> },
    /// Set: add a unique element (a put of a key no one else writes).
    Add { element: String },
    /// Set: read every element, after the faults are healed.
    ReadAll { elements: Option<Vec<String>> },
    /// Executions: one `increment` of the counter instance, created with idempotency key
    /// `key` (a retry of an indeterminate one reuses its key). On completion: the count it
    /// returned (`ok`), the execution id when known, and how often it was delivered.
    Increment { key: String, count: Option<u64>, execution: Option<u64>, attempts: Option<u32> },
    /// Executions: the counter instance's state after the faults are healed: the count and,
    /// per idempotency key, the record its increment wrote.
    ReadCounter { count: Option<u64>, applied: Option<BTreeMap<String, Applied>> },
    /// Streams: one append of producer `producer` (its `epoch` and `sequence`: the same
    /// three again on a retry, which carries the same `values`, one per item of the batch).
    /// On `ok`: the seqs the fabric answered and whether it found the append applied before.
    Append {
        producer: String,
        epoch: u64,
        sequence: u64,
        values: Vec<String>,
        first_seq: Option<u64>,
        last_seq: Option<u64>,
        duplicate: Option<bool>,
    },
    /// Streams: listener session `session` of consumer `consumer` on the durable cursor, from
    /// the connect to its end (`ok`: the consumer closed it; `fail`: it never started, for
    /// certain; `info`: it broke). On completion: the node that said it started the listener
    /// (none if it never did), the items it received and why it ended.
    Listen {
        consumer: u64,
        session: u64,
        started_on: Option<u64>,
        received: Option<u64>,
        ended: Option<String>,
    },
    /// Streams: one delivery to a consumer's listener: invoked when the item arrives, done
    /// when its ack is answered (`ok`: acknowledged; `fail`: refused as stale, the item was
    /// delivered again since; `info`: no answer). `deliveries` counts the item's deliveries
    /// to the cursor, this one included.
    Deliver { consumer: u64, session: u64, seq: u64, value: String, deliveries: u32, token: u64 },
    /// Streams: the final read of the whole stream, `(seq, value)` per item in stream order.
    ReadStream { items: Option<Vec<(u64, String)>> },
    /// Streams: the drain after the final read: the cursor's figures once its ack floor
    /// reached `want` (`ok`), or the last ones seen when the run gave up (`info`).
    Drain {
        want: u64,
        ack_floor: Option<u64>,
        last_seq: Option<u64>,
        delivered: Option<u64>,
        redelivered: Option<u64>,
    },
    /// A nemesis window starts or stops.
    Nemesis { phase: Phase, name: String, detail: String },
}

impl Op {
    /// A short name for plots and summaries.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Read { .. } => "read",
            Op::Write { .. } => "write",
            Op::Cas { .. } => "cas",
            Op::Add { .. } => "add",
            Op::ReadAll { .. } => "read-all",
            Op::Increment { .. } => "increment",
            Op::ReadCounter { .. } => "read-counter",
            Op::Append { .. } => "append",
            Op::Listen { .. } => "listen",
            Op::Deliver { .. } => "deliver",
            Op::ReadStream { .. } => "read-stream",
            Op::Drain { .. } => "drain",
            Op::Nemesis { .. } => "nemesis",
        }
    }
}

/// What the counter agent writes, in the same completion as the new count, for each
/// increment it applies (state key `applied/<idempotency key>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The count this increment produced.
    pub count: u64,
    /// The execution that applied it.
    pub execution: u64,
    /// Which delivery of that execution applied it.
    pub attempt: u32,
}

/// One line of the history file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the history.
    pub index: u64,
    /// Nanoseconds since the run started (monotonic clock).
    pub time_ns: u64,
    /// The client process; `None` for the nemesis.
    pub process: Option<u64>,
    #[serde(rename = "type")]
    pub ty: Type,
    pub f: Op,
    /// The node the client talked to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
    /// Why the operation failed or is indeterminate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An operation with its invocation and completion paired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub process: u64,
    /// Index of the invoke event.
    pub index: u64,
    pub invoke_ns: u64,
    /// `None` when the history ends before the operation completed (treated as `info`).
    pub complete_ns: Option<u64>,
    /// Index of the completion event, if any.
    pub complete_index: Option<u64>,
    /// `Ok`, `Fail` or `Info` (never `Invoke`).
    pub ty: Type,
    /// The completion's op (with results), or the invocation's when there is none.
    pub op: Op,
}

/// A nemesis window, from its start to its stop (or the end of the history).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Window {
    pub name: String,
    pub detail: String,
    pub start_ns: u64,
    pub stop_ns: Option<u64>,
}

/// Pairs each client invoke with its completion. Operations are in invoke order.
pub fn operations(events: &[Event]) -> Vec<Operation> {
    let mut open: HashMap<u64, usize> = HashMap::new();
    let mut out: Vec<Operation> = Vec::new();
    for e in events {
        let Some(p) = e.process else { continue };
        match e.ty {
            Type::Invoke => {
                open.insert(p, out.len());
                out.push(Operation {
                    process: p,
                    index: e.index,
                    invoke_ns: e.time_ns,
                    complete_ns: None,
                    complete_index: None,
                    ty: Type::Info,
                    op: e.f.clone(),
                });
            }
            ty => {
                if let Some(i) = open.remove(&p) {
                    let o = &mut out[i];
                    o.complete_ns = Some(e.time_ns);
                    o.complete_index = Some(e.index);
                    o.ty = ty;
                    o.op = e.f.clone();
                }
            }
        }
    }
    out
}

/// The nemesis windows of a history, in start order.
pub fn windows(events: &[Event]) -> Vec<Window> {
    let mut out: Vec<Window> = Vec::new();
    for e in events {
        if let Op::Nemesis { phase, name, detail } = &e.f {
            match phase {
                Phase::Start => out.push(Window {
                    name: name.clone(),
                    detail: detail.clone(),
                    start_ns: e.time_ns,
                    stop_ns: None,
                }),
                Phase::Stop => {
                    if let Some(w) = out.iter_mut().rev().find(|w| w.name == *name && w.stop_ns.is_none()) {
                        w.stop_ns = Some(e.time_ns);
                    }
                }
            }
        }
    }
    out
}

/// Writes events as JSON lines.
pub fn write(path: &Path, events: &[Event]) -> Result<(), Error> {
    let io = |source| Error::Io { path: path.display().to_string(), source };
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    for e in events {
        serde_json::to_writer(&mut f, e).map_err(|e| io(e.into()))?;
        f.write_all(b"\n").map_err(io)?;
    }
    f.flush().map_err(io)
}

/// Reads a JSON-lines history.
pub fn read(path: &Path) -> Result<Vec<Event>, Error> {
    let p = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| Error::Io { path: p.clone(), source })?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|source| Error::Io { path: p.clone(), source })?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|source| Error::Parse {
            path: p.clone(),
            line: i + 1,
            source,
        })?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(index: u64, time_ns: u64, process: Option<u64>, ty: Type, f: Op) -> Event {
        Event { index, time_ns, process, ty, f, node: None, error: None }
    }

    #[test]
    fn pairs_invokes_with_completions_and_leaves_open_ones_as_info() {
        let w = |v| Op::Write { key: "k".into(), value: v, version: None };
        let events = vec![
            ev(0, 1, Some(0), Type::Invoke, w(1)),
            ev(1, 2, Some(1), Type::Invoke, w(2)),
            ev(2, 3, Some(0), Type::Ok, Op::Write { key: "k".into(), value: 1, version: Some(5) }),
            ev(
                3,
                4,
                None,
                Type::Info,
                Op::Nemesis { phase: Phase::Start, name: "kill".into(), detail: "".into() },
            ),
        ];
        let ops = operations(&events);
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0].ty, Type::Ok);
        assert_eq!(ops[0].complete_ns, Some(3));
        assert_eq!(ops[1].ty, Type::Info);
        assert_eq!(ops[1].complete_ns, None);
        let ws = windows(&events);
        assert_eq!(ws.len(), 1);
        assert_eq!(ws[0].stop_ns, None);
    }

    #[test]
    fn round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        let events = vec![ev(0, 1, Some(0), Type::Invoke, Op::Add { element: "e1".into() })];
        write(&path, &events).unwrap();
        assert_eq!(read(&path).unwrap(), events);
    }
}

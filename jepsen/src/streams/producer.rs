//! A producer: one append in flight, each a batch of 1 to [`MAX_BATCH`] items whose values
//! no other append carries (`p<k>-<epoch>-<sequence>-<i>`).
//!
//! | `Append` outcome | history | next |
//! |---|---|---|
//! | reply | ok, with the seqs and `duplicate` | a new append (the next sequence) |
//! | not applied, overloaded ([`weft_proto::wire::Outcome`]) | fail | the same sequence and values again, on the next node |
//! | refused (FAILED_PRECONDITION: a producer gap or an older epoch, or any other refusal) | fail | a new epoch from sequence 1 (sending it again would be refused again) |
//! | anything else, client timeout | info (may have been applied) | the same sequence and values again, on the next node, under a new process id |
//!
//! With [`Appends::ExactlyOnce`] each append carries `Producer{id, epoch, sequence}`, so a
//! retry of one that was applied after all is answered with its first seqs and
//! `duplicate = true`; with [`Appends::Plain`] it carries none and the retry appends the
//! values again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::db::Channel;
use weft_proto::fabric::v1 as pb;
use weft_proto::fabric::v1::streams_client::StreamsClient;
use weft_proto::wire::Outcome;

use super::{Appends, MAX_BATCH, Options, STREAM, payload};
use crate::db::Roster;
use crate::history::{Op, Type};
use crate::outcome::{Done, code_message, failed};
use crate::placement::Placement;
use crate::recorder::Recorder;
use crate::rng::Rng;

/// One producer: appends until `until`.
pub struct Producer {
    /// Its number; its producer id is `p<id>`.
    id: u64,
    producers: u64,
    process: u64,
    epoch: u64,
    sequence: u64,
    /// The values of the append at `sequence` while it has no `ok`: sent again as they are.
    pending: Option<Vec<String>>,
    placement: Placement,
    /// One client per node used so far.
    clients: HashMap<u64, StreamsClient<Channel>>,
    rng: Rng,
    recorder: Recorder,
    options: Options,
}

/// How one attempt ended, for what comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// A new append.
    Fresh,
    /// The same sequence and values again.
    Again,
    /// Refused for good: a new epoch.
    NewEpoch,
}

impl Producer {
    /// Producer `id` of `producers` (its home node is the roster's for client `id`).
    pub fn new(
        id: u64,
        producers: u64,
        roster: Roster,
        rng: Rng,
        recorder: Recorder,
        options: Options,
    ) -> Self {
        Self {
            id,
            producers,
            process: id,
            epoch: 1,
            sequence: 0,
            pending: None,
            placement: Placement::new(id, roster),
            clients: HashMap::new(),
            rng,
            recorder,
            options,
        }
    }

    /// The producer id the fabric sees.
    pub fn name(&self) -> String {
        format!("p{}", self.id)
    }

    /// Appends until `until`.
    pub async fn run(mut self, until: Instant) {
        loop {
            let pause = self.options.pause.mul_f64(0.5 + self.rng.fraction());
            if Instant::now() + pause >= until {
                return;
            }
            tokio::time::sleep(pause).await;
            let values = match self.pending.take() {
                Some(values) => values,
                None => {
                    self.sequence += 1;
                    let n = 1 + self.rng.below(MAX_BATCH);
                    (0..n).map(|i| format!("{}-{}-{}-{i}", self.name(), self.epoch, self.sequence)).collect()
                }
            };
            self.append(values).await;
        }
    }

    async fn append(&mut self, values: Vec<String>) {
        self.placement.follow_roster();
        let node = self.placement.node();
        let op = Op::Append {
            producer: self.name(),
            epoch: self.epoch,
            sequence: self.sequence,
            values: values.clone(),
            first_seq: None,
            last_seq: None,
            duplicate: None,
        };
        self.recorder.record(Some(self.process), Type::Invoke, op.clone(), Some(node), None);
        let timeout = self.options.timeout;
        let (done, next) =
            match tokio::time::timeout(timeout + Duration::from_secs(1), self.call(op.clone())).await {
                Ok(answer) => answer,
                Err(_) => (Done::Info(op, "client timeout".into()), Next::Again),
            };
        let (ty, op, error) = match done {
            Done::Ok(op) => (Type::Ok, op, None),
            Done::Fail(op, e) => (Type::Fail, op, Some(e)),
            Done::Info(op, e) => (Type::Info, op, Some(e)),
        };
        self.recorder.record(Some(self.process), ty, op, Some(node), error.clone());
        self.placement.count_op();
        match next {
            Next::Fresh => {}
            Next::Again => {
                self.pending = Some(values);
                self.placement.fail_over();
            }
            Next::NewEpoch => {
                tracing::warn!(producer = %self.name(), epoch = self.epoch, sequence = self.sequence, error = ?error, "append refused; a new epoch");
                self.epoch += 1;
                self.sequence = 0;
                self.placement.fail_over();
            }
        }
        if ty == Type::Info {
            self.process += self.producers;
        }
    }

    async fn call(&mut self, op: Op) -> (Done, Next) {
        let Op::Append { values, .. } = &op else { unreachable!("a producer only appends") };
        let node = self.placement.node();
        let timeout = self.options.timeout;
        let client = match (self.clients.contains_key(&node), self.placement.addr()) {
            (true, _) => self.clients.get_mut(&node).expect("checked"),
            (false, Some(addr)) => self
                .clients
                .entry(node)
                .or_insert_with(|| StreamsClient::new(crate::db::channel(&addr, timeout))),
            (false, None) => {
                return (Done::Fail(op, format!("node {node} is gone and no node is left")), Next::Again);
            }
        };
        let producer = (self.options.appends == Appends::ExactlyOnce).then(|| pb::Producer {
            id: format!("p{}", self.id),
            epoch: self.epoch,
            sequence: self.sequence,
        });
        let items = values
            .iter()
            .map(|v| pb::NewItem {
                key: format!("p{}", self.id),
                payload: Some(payload(v)),
                headers: Vec::new(),
            })
            .collect();
        let m = pb::AppendRequest {
            stream: STREAM.into(),
            items,
            expected_last_seq: None,
            producer,
            msg_id: String::new(),
        };
        let mut request = tonic::Request::new(m);
        request.set_timeout(timeout);
        match client.append(request).await {
            Ok(r) => {
                let r = r.into_inner();
                let Op::Append { producer, epoch, sequence, values, .. } = op else { unreachable!() };
                let op = Op::Append {
                    producer,
                    epoch,
                    sequence,
                    values,
                    first_seq: Some(r.first_seq),
                    last_seq: Some(r.last_seq),
                    duplicate: Some(r.duplicate),
                };
                (Done::Ok(op), Next::Fresh)
            }
            Err(s) => {
                let next = match Outcome::of(&s) {
                    Outcome::Refused => Next::NewEpoch,
                    _ => Next::Again,
                };
                tracing::debug!(producer = self.id, node, error = %code_message(&s), "append failed");
                (failed(op, &s), next)
            }
        }
    }
}

//! The seed corpus: for every target, real encodings made by the code that makes them in a
//! running node (the codec, foca and `packet::Auth`, serde_json), of values with something of
//! everything: the fuzz grid's commands and follow-ups with real ids and tokens, log entries
//! and Raft messages carrying them, snapshots of the fuzz grid in each format, foca's traffic
//! between two members, payloads and HTTP bodies. Each seed carries its target's selector
//! byte(s) in front.

use std::collections::{BTreeMap, BTreeSet};

use foca::{AccumulatingRuntime, Member};
use openraft::error::{Fatal, InstallSnapshotError, RaftError, SnapshotMismatch};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta, SnapshotSegmentId,
    StoredMembership, Vote,
};
use serde::Serialize;

use super::grid::{Built, NOW_MS, follow_ups};
use super::{gossip, payloads};
use crate::NodeId;
use crate::codec;
use crate::grid::Command;
use crate::raft::state_machine::{SnapshotFile, encode_snapshot};
use crate::raft::{Request, TypeConfig};

/// Every seed: (target name, input).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let built = Built::new();
    let commands = commands(&built);
    let mut seeds = Vec::new();
    seeds.extend(commands.iter().map(|c| ("forwarded_command", codec::encode(c))));
    seeds.extend(raft_messages(&commands).into_iter().map(|s| ("raft_message", s)));
    seeds.extend(log_values(&commands).into_iter().map(|s| ("log_entry", s)));
    seeds.extend(snapshots(&built).into_iter().map(|s| ("snapshot", s)));
    seeds.extend(gossip_packets().into_iter().map(|s| ("gossip_packet", s)));
    seeds.extend(agent_payloads().into_iter().map(|s| ("agent_payload", s)));
    seeds.extend(rest_bodies().into_iter().map(|s| ("rest_body", s)));
    seeds
}

/// Every command that built the fuzz grid, then the follow-ups against it.
fn commands(built: &Built) -> Vec<Command> {
    let mut all = super::grid::basics();
    all.extend(follow_ups(built));
    all
}

/// `selector` then the tagged encoding of `value`.
fn tagged<T: Serialize>(selector: u8, value: &T) -> Vec<u8> {
    let mut out = vec![selector];
    out.extend(codec::encode(value));
    out
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn membership() -> Membership<NodeId, BasicNode> {
    let nodes: BTreeMap<NodeId, BasicNode> =
        (1..=4).map(|id| (id, BasicNode::new(format!("127.0.0.1:{}", 7400 + id)))).collect();
    Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes)
}

/// Log entries of each kind, carrying the commands in batches.
fn entries(commands: &[Command]) -> Vec<Entry<TypeConfig>> {
    let mut entries = vec![
        Entry { log_id: log_id(1, 1), payload: EntryPayload::Blank },
        Entry { log_id: log_id(1, 2), payload: EntryPayload::Membership(membership()) },
    ];
    for (i, batch) in commands.chunks(4).enumerate() {
        let request = Request::Batch { now_ms: NOW_MS + i as u64 * 1000, commands: batch.to_vec() };
        entries.push(Entry { log_id: log_id(2, 3 + i as u64), payload: EntryPayload::Normal(request) });
    }
    // The eager calls' commands in one entry, stamped with them held on their sessions.
    let eager: Vec<Command> = commands
        .iter()
        .filter(|c| matches!(c, Command::ReserveBlock { .. } | Command::CreateReserved(_)))
        .cloned()
        .collect();
    let mut held = std::collections::BTreeMap::new();
    for command in &eager {
        if let Command::CreateReserved(r) = command {
            *held.entry(r.session).or_insert(0) += 1;
        }
    }
    let request = Request::BatchHeld { now_ms: NOW_MS, held: held.into_iter().collect(), commands: eager };
    let index = entries.len() as u64 + 1;
    entries.push(Entry { log_id: log_id(2, index), payload: EntryPayload::Normal(request) });
    entries
}

fn raft_messages(commands: &[Command]) -> Vec<Vec<u8>> {
    let vote = Vote::new_committed(2, 1);
    let entries = entries(commands);
    let meta = snapshot_meta();
    let fatal = || RaftError::<NodeId>::Fatal(Fatal::Stopped);
    let mismatch = SnapshotMismatch {
        expect: SnapshotSegmentId { id: "2-1-9".into(), offset: 0 },
        got: SnapshotSegmentId { id: "2-1-9".into(), offset: 4096 },
    };
    let mut seeds = vec![
        tagged(0, &VoteRequest::new(Vote::new(3, 2), Some(log_id(2, 9)))),
        tagged(
            1,
            &AppendEntriesRequest::<TypeConfig> {
                vote,
                prev_log_id: None,
                entries: vec![],
                leader_commit: Some(log_id(2, 9)),
            },
        ),
        tagged(2, &(vote, meta)),
        tagged(3, &Ok::<_, RaftError<NodeId>>(VoteResponse::new(vote, Some(log_id(2, 9)), true))),
        tagged(3, &Err::<VoteResponse<NodeId>, _>(fatal())),
        tagged(4, &Ok::<_, RaftError<NodeId>>(AppendEntriesResponse::<NodeId>::Success)),
        tagged(4, &Ok::<_, RaftError<NodeId>>(AppendEntriesResponse::PartialSuccess(Some(log_id(2, 5))))),
        tagged(4, &Ok::<_, RaftError<NodeId>>(AppendEntriesResponse::<NodeId>::Conflict)),
        tagged(4, &Ok::<_, RaftError<NodeId>>(AppendEntriesResponse::HigherVote(Vote::new(4, 3)))),
        tagged(5, &Ok::<_, RaftError<NodeId, InstallSnapshotError>>(InstallSnapshotResponse { vote })),
        tagged(
            5,
            &Err::<InstallSnapshotResponse<NodeId>, _>(RaftError::<NodeId, _>::APIError(
                InstallSnapshotError::SnapshotMismatch(mismatch),
            )),
        ),
    ];
    for window in entries.chunks(3) {
        let request = AppendEntriesRequest::<TypeConfig> {
            vote,
            prev_log_id: Some(log_id(1, 1)),
            entries: window.to_vec(),
            leader_commit: Some(log_id(1, 2)),
        };
        seeds.push(tagged(1, &request));
    }
    seeds
}

fn snapshot_meta() -> SnapshotMeta<NodeId, BasicNode> {
    SnapshotMeta {
        last_log_id: Some(log_id(2, 9)),
        last_membership: StoredMembership::new(Some(log_id(1, 2)), membership()),
        snapshot_id: "2-1-9-1".into(),
    }
}

fn log_values(commands: &[Command]) -> Vec<Vec<u8>> {
    let mut seeds: Vec<_> = entries(commands).iter().map(|e| tagged(0, e)).collect();
    seeds.push(tagged(1, &Vote::new(3, 2)));
    seeds.push(tagged(1, &Vote::new_committed(3, 2)));
    seeds.push(tagged(2, &Some(log_id(2, 9))));
    seeds.push(tagged(2, &None::<LogId<NodeId>>));
    seeds.push(tagged(3, &log_id(2, 4)));
    seeds
}

/// The fuzz grid in today's format; before its schedule in format 7; before its lease queue
/// in format 6; before its reserved
/// block in format 5; without leases or tokens in formats 4, 3, 2 and 1 (what older nodes
/// wrote); and an empty one.
fn snapshots(built: &Built) -> Vec<Vec<u8>> {
    let meta = snapshot_meta();
    let file = |grid: &crate::grid::Grid| SnapshotFile { meta: meta.clone(), grid: grid.clone() };
    let basic = &built.basic;
    vec![
        encode_snapshot(&file(&built.grid)),
        encode_snapshot(&file(&crate::grid::Grid::default())),
        codec::encode_tagged(codec::FORMAT_SNAPSHOT_V7, &(&meta, built.before_schedules.to_v7())),
        codec::encode_tagged(codec::FORMAT_SNAPSHOT_V6, &(&meta, built.before_waiting.to_v6())),
        codec::encode_tagged(codec::FORMAT_SNAPSHOT_V5, &(&meta, built.before_eager.to_v5())),
        codec::encode_tagged(codec::FORMAT_SNAPSHOT_V4, &(&meta, basic.to_v4())),
        codec::encode_tagged(codec::FORMAT_SNAPSHOT_V3, &(&meta, basic.to_v3())),
        codec::encode_tagged(codec::FORMAT_SNAPSHOT_V2, &(&meta, basic.to_v2())),
        codec::encode_tagged(codec::FORMAT_BINCODE_V1, &(&meta, basic.to_v1())),
    ]
}

/// What a member sends the fuzz target's node while they meet (announce, feed, probes,
/// gossip), framed by each mode.
fn gossip_packets() -> Vec<Vec<u8>> {
    let me = gossip::me();
    let [sender_id, _] = gossip::peers();
    let mut sender = gossip::foca(sender_id.clone());
    let mut receiver = gossip::foca(me.clone());
    // What each member's foca asks its runtime to do: send, schedule timers.
    let (mut sender_out, mut receiver_out) = (AccumulatingRuntime::new(), AccumulatingRuntime::new());
    let mut payloads = Vec::new();
    sender.announce(me.clone(), &mut sender_out).expect("announce");
    for _ in 0..4 {
        while let Some((dst, data)) = sender_out.to_send() {
            if dst.addr == me.addr {
                payloads.push(data.to_vec());
                let _ = receiver.handle_data(&data, &mut receiver_out);
            }
        }
        while let Some((_, data)) = receiver_out.to_send() {
            let _ = sender.handle_data(&data, &mut sender_out);
        }
        while let Some((_, timer)) = sender_out.to_schedule() {
            let _ = sender.handle_timer(timer, &mut sender_out);
        }
        let others = gossip::peers().into_iter().skip(1).map(Member::alive);
        let _ = sender.apply_many(others, true, &mut sender_out);
        let _ = sender.gossip(&mut sender_out);
    }
    payloads.sort();
    payloads.dedup();
    let mut seeds = Vec::new();
    for payload in payloads.iter().take(8) {
        for mode in 0..=2u8 {
            let mut seed = vec![mode];
            seed.extend(gossip::auth(mode).seal(gossip::CLUSTER, payload));
            seeds.push(seed);
        }
        for mode in 3..=4u8 {
            seeds.push([&[mode][..], payload].concat());
        }
    }
    seeds
}

fn agent_payloads() -> Vec<Vec<u8>> {
    use payloads::{Line, State};
    let bincode = |v: &dyn erased::Encode| [&[0u8][..], &v.bincode()].concat();
    let json = |v: &dyn erased::Encode| [&[1u8][..], &v.json()].concat();
    let states = vec![
        State::New,
        State::Paid { at_ms: NOW_MS },
        State::Shipped("DHL".into(), 3),
        State::Held(Some(Box::new(Line { sku: "mug".into(), quantity: 1 }))),
        State::Held(None),
    ];
    let pair = ("pair".to_owned(), Some(7u32));
    let (order, tree) = (payloads::order(), payloads::tree());
    let values: [&dyn erased::Encode; 4] = [&order, &states, &pair, &tree];
    let mut seeds = Vec::new();
    for value in values {
        seeds.push(bincode(value));
        seeds.push(json(value));
    }
    seeds.push(vec![1]);
    seeds.push(b"\x01{\"a\":[1,-2,3.5e-3,true,null,\"\\u00e9\\n\"],\"b\":{}}".to_vec());
    seeds
}

/// Encoding of values of different types, for the payload seeds.
mod erased {
    pub(super) trait Encode {
        fn bincode(&self) -> Vec<u8>;
        fn json(&self) -> Vec<u8>;
    }

    impl<T: serde::Serialize> Encode for T {
        fn bincode(&self) -> Vec<u8> {
            bincode::serde::encode_to_vec(self, bincode::config::standard()).expect("encodes")
        }

        fn json(&self) -> Vec<u8> {
            serde_json::to_vec(self).expect("encodes")
        }
    }
}

fn rest_bodies() -> Vec<Vec<u8>> {
    let body =
        |route: u8, content_type: u8, json: &str| [&[route, content_type][..], json.as_bytes()].concat();
    vec![
        body(
            0,
            0,
            r#"{"agent":"worker","delegate":"job","args":{"n":[1,2]},"instance":"c1","timeout_ms":5000,
                "delay_ms":10,"priority":-1,"wait_for_delegate":true}"#,
        ),
        body(0, 1, r#"{"agent":"mailer","delegate":"send"}"#),
        body(1, 0, r#"{"reason":"not needed"}"#),
        body(1, 1, ""),
        body(2, 0, r#"["a",{"b":null},3]"#),
        body(2, 2, "  "),
        body(
            3,
            0,
            r#"{"items":[{"key":"orders.eu","payload":{"id":3},"headers":{"trace":"t2"}},{"payload":"x"}],
                "expected_last_seq":2}"#,
        ),
    ]
}

//! Entry points for the fuzz targets (`fabric/fuzz/`, built with the `fuzzing` feature): one
//! per decoder fed from outside the node, each running the bytes through the decoder the node
//! uses and then checking more than "no panic":
//!
//! ```text
//!   target            the bytes as                       checked beyond decoding
//!   forwarded_command  a Forward proposal (Command)      round trip; validate; applied to a
//!                                                        grid: deterministic, a refusal
//!                                                        changes nothing, snapshot round trip
//!   raft_message       a Raft RPC or its answer          round trip
//!   log_entry          a stored log entry, vote, LogId   round trip; a batch applied as above
//!                                                        (a held batch as the state machine
//!                                                        applies it: deterministic, snapshot)
//!   snapshot           a snapshot file (formats 1-6)     read again after writing it as format 6
//!   gossip_packet      a UDP gossip packet               frame and MAC/AEAD checks; sealed
//!                                                        payloads open unchanged; foca handles it
//!   agent_payload      an execution's payload            the SDK's decode, round trip in both
//!                                                        codecs; the fabric's JSON check
//!   rest_body          an HTTP API JSON body             the extractor; the command it becomes
//!                                                        validated and applied as above
//! ```
//!
//! Each entry point takes the fuzzer's bytes, returns whether the decoder accepted them (the
//! seed test checks every seed is accepted) and panics when a check fails. A target that
//! needs more than one decoder reads a selector from the first byte. [`seeds`] builds the
//! seed corpus from real encodings; [`init`] writes it when asked (`fabric/fuzz/run.sh --seed`).
//!
//! # Layout
//! - here: the entry points and the round-trip check they share.
//! - `grid`: a grid with something of everything in it, and the checked apply.
//! - `gossip`: a deterministic foca member that receives the opened packets.
//! - `payloads`: the SDK's payload codecs on a type with something of every serde shape.
//! - `rest`: the HTTP API's body extractor, and the commands the bodies become.
//! - [`seeds`]: the seed inputs of every target.

mod gossip;
mod grid;
mod payloads;
mod rest;
pub mod seeds;

use std::fmt::Debug;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Entry, LogId, SnapshotMeta, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use self::seeds::seeds;
use crate::NodeId;
use crate::codec;
use crate::grid::Command;
use crate::raft::TypeConfig;

/// The names of the fuzz targets, as `fabric/fuzz/fuzz_targets/<name>.rs`.
pub const TARGETS: [&str; 7] = [
    "forwarded_command",
    "raft_message",
    "log_entry",
    "snapshot",
    "gossip_packet",
    "agent_payload",
    "rest_body",
];

/// The environment variable that makes [`init`] write the seed corpus into the directory it
/// names (as `<dir>/<target>/seed-<hash>`) and exit.
pub const WRITE_SEEDS_ENV: &str = "WEFT_FUZZ_WRITE_SEEDS";

/// What every target runs once before fuzzing: builds the fuzz grid (so the first input is not
/// charged for it), and writes the seeds instead of fuzzing when [`WRITE_SEEDS_ENV`] is set.
pub fn init() {
    if let Some(dir) = std::env::var_os(WRITE_SEEDS_ENV) {
        let dir = std::path::PathBuf::from(dir);
        for (target, seed) in seeds() {
            let path = dir.join(target).join(format!("seed-{:016x}", fnv1a(&seed)));
            std::fs::create_dir_all(dir.join(target))
                .and_then(|()| std::fs::write(&path, &seed))
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        }
        std::process::exit(0);
    }
    grid::populated();
}

/// A stable 64-bit hash (FNV-1a) for seed file names.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// Runs target `name` on `data`; `None` for a name not in [`TARGETS`].
pub fn run(name: &str, data: &[u8]) -> Option<bool> {
    Some(match name {
        "forwarded_command" => forwarded_command(data),
        "raft_message" => raft_message(data),
        "log_entry" => log_entry(data),
        "snapshot" => snapshot(data),
        "gossip_packet" => gossip_packet(data),
        "agent_payload" => agent_payload(data),
        "rest_body" => rest_body(data),
        _ => return None,
    })
}

/// Decodes `bytes` as the node does (format tag, bincode), and checks the value survives
/// encoding: its encoding decodes to a value that encodes to the same bytes.
fn decoded<T: Serialize + DeserializeOwned + Debug>(bytes: &[u8]) -> Option<T> {
    let value: T = codec::decode(bytes).ok()?;
    assert_round_trip(&value);
    Some(value)
}

/// `value` encodes to bytes that decode to a value with the same encoding.
fn assert_round_trip<T: Serialize + DeserializeOwned + Debug>(value: &T) {
    let encoded = codec::encode(value);
    let again: T = codec::decode(&encoded)
        .unwrap_or_else(|e| panic!("{value:?} encodes to bytes that do not decode: {e}"));
    assert_eq!(codec::encode(&again), encoded, "{value:?} does not survive a round trip: {again:?}");
}

/// `bytes` split into a selector (the first byte, modulo `choices`) and the rest.
fn select(bytes: &[u8], choices: u8) -> Option<(u8, &[u8])> {
    bytes.split_first().map(|(s, rest)| (s % choices, rest))
}

/// A write forwarded to the leader (`weft.cluster.v1.Forward/Propose`): decoded, validated
/// against the node's limits and applied to a grid as the leader's replicas would.
pub fn forwarded_command(data: &[u8]) -> bool {
    let Some(command) = decoded::<Command>(data) else { return false };
    let _ = command.validate(&crate::Config::default().limits());
    grid::apply_checked(&mut grid::populated().clone(), &[command]);
    true
}

/// The selectors of [`raft_message`], in order.
pub const RAFT_MESSAGES: [&str; 6] = [
    "vote request",
    "append-entries request",
    "install-snapshot meta",
    "vote answer",
    "append-entries answer",
    "install-snapshot answer",
];

/// A Raft RPC's payload as `raft_service` decodes it, or an answer as `network` decodes it.
pub fn raft_message(data: &[u8]) -> bool {
    let Some((which, bytes)) = select(data, RAFT_MESSAGES.len() as u8) else { return false };
    type Meta = SnapshotMeta<NodeId, BasicNode>;
    match which {
        0 => decoded::<VoteRequest<NodeId>>(bytes).is_some(),
        1 => decoded::<AppendEntriesRequest<TypeConfig>>(bytes).is_some(),
        2 => decoded::<(Vote<NodeId>, Meta)>(bytes).is_some(),
        3 => decoded::<Result<VoteResponse<NodeId>, RaftError<NodeId>>>(bytes).is_some(),
        4 => decoded::<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>(bytes).is_some(),
        _ => {
            decoded::<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>>(bytes)
                .is_some()
        }
    }
}

/// The selectors of [`log_entry`], in order: what the log store keeps under its keys.
pub const LOG_VALUES: [&str; 4] = ["entry", "vote", "committed", "purged"];

/// A value of the log store as read back from sled; an entry's batch applied to a grid as the
/// state machine applies it.
pub fn log_entry(data: &[u8]) -> bool {
    let Some((which, bytes)) = select(data, LOG_VALUES.len() as u8) else { return false };
    match which {
        0 => {
            let Some(entry) = decoded::<Entry<TypeConfig>>(bytes) else { return false };
            match entry.payload {
                openraft::EntryPayload::Normal(crate::raft::Request::Batch { now_ms, commands }) => {
                    let mut grid = grid::populated().clone();
                    grid.advance_clock(now_ms);
                    grid::apply_checked(&mut grid, &commands);
                }
                openraft::EntryPayload::Normal(crate::raft::Request::BatchHeld {
                    now_ms,
                    held,
                    commands,
                }) => {
                    grid::apply_checked_held(&mut grid::populated().clone(), now_ms, &held, &commands);
                }
                _ => {}
            }
            true
        }
        1 => decoded::<Vote<NodeId>>(bytes).is_some(),
        2 => decoded::<Option<LogId<NodeId>>>(bytes).is_some(),
        _ => decoded::<LogId<NodeId>>(bytes).is_some(),
    }
}

/// A snapshot file as the state machine reads it (from disk, or installed from a leader), in
/// any format it reads; written again in today's format, it reads back the same.
pub fn snapshot(data: &[u8]) -> bool {
    use crate::raft::state_machine::{decode_snapshot, encode_snapshot};
    let Ok(file) = decode_snapshot(data) else { return false };
    let written = encode_snapshot(&file);
    let again = decode_snapshot(&written).unwrap_or_else(|e| panic!("a written snapshot does not read: {e}"));
    assert_eq!(again.meta, file.meta, "the snapshot's meta changed in a round trip");
    assert!(again.grid == file.grid, "the snapshot's grid changed in a round trip");
    true
}

/// The selectors of [`gossip_packet`], in order.
pub const GOSSIP_MODES: [&str; 5] = [
    "packet to a node without keys",
    "packet to a node that requires a MAC",
    "packet to a node that encrypts and accepts plain",
    "payload sealed with the key's MAC",
    "payload encrypted with the key",
];

/// A UDP gossip packet as the gossip service receives it: opened by `packet::Auth` (the
/// unauthenticated path, and the authenticated ones with a fixed key), then handed to foca. A
/// payload sealed with the key must open unchanged, so the fuzzer also reaches what a member
/// holding the key can make foca do.
pub fn gossip_packet(data: &[u8]) -> bool {
    let Some((mode, bytes)) = select(data, GOSSIP_MODES.len() as u8) else { return false };
    gossip::receive(mode, bytes)
}

/// The selectors of [`agent_payload`], in order: the codec named on the wire.
pub const PAYLOAD_CODECS: [&str; 2] = ["bincode", "json"];

/// An execution's arguments or result, as an agent's handler (the SDK's decoder) and the
/// fabric (its JSON check, the HTTP API's display) read them.
pub fn agent_payload(data: &[u8]) -> bool {
    let Some((which, bytes)) = select(data, PAYLOAD_CODECS.len() as u8) else { return false };
    payloads::check(PAYLOAD_CODECS[usize::from(which)], bytes)
}

/// The selectors of [`rest_body`], in order: the route whose body it is.
pub const REST_BODIES: [&str; 4] = [
    "POST /v1/executions",
    "POST /v1/executions/{id}/cancel",
    "POST /v1/call/{agent}/{delegate}",
    "POST /v1/streams/{name}/items",
];

/// The content types [`rest_body`] sends, picked by the second byte.
pub const REST_CONTENT_TYPES: [Option<&str>; 4] =
    [Some("application/json"), None, Some("application/merge-patch+json; charset=utf-8"), Some("text/plain")];

/// A JSON body of the HTTP API, read by its extractor (content type, empty body, JSON), then
/// turned into the command the route proposes, which is validated and applied to a grid.
pub fn rest_body(data: &[u8]) -> bool {
    let Some((route, rest)) = select(data, REST_BODIES.len() as u8) else { return false };
    let Some((content_type, body)) = select(rest, REST_CONTENT_TYPES.len() as u8) else { return false };
    rest::check(route, REST_CONTENT_TYPES[usize::from(content_type)], body)
}

#[cfg(test)]
mod tests;

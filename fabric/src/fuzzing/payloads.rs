//! The agent payload target: the SDK's decoder (what a handler does with its arguments, a
//! caller with a result) on types with something of most serde shapes, a recursive one among
//! them, in both codecs; and
//! the fabric's own reading of the same bytes (its JSON check, the HTTP API's display).

use std::collections::BTreeMap;
use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use weft_agent::codec::{Codec, decode_payload, encode_payload};
use weft_proto::fabric::v1 as pb;

use crate::grid::execution::Payload;
use crate::rest::model;

/// An agent's argument type with structs, enums of each variant kind, options, maps, byte
/// strings, tuples and wide integers. No floats: JSON does not promise to read them back
/// bit-exact, so a round trip could differ without a bug.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Order {
    pub(super) id: u64,
    pub(super) customer: String,
    pub(super) lines: Vec<Line>,
    pub(super) note: Option<String>,
    pub(super) tags: BTreeMap<String, i64>,
    pub(super) state: State,
    #[serde(with = "serde_bytes")]
    pub(super) blob: Vec<u8>,
    pub(super) flags: (bool, char, u8, i16),
    pub(super) wide: i128,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Line {
    pub(super) sku: String,
    pub(super) quantity: u32,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum State {
    New,
    Paid { at_ms: u64 },
    Shipped(String, u32),
    Held(Option<Box<Line>>),
}

/// A recursive argument type: a caller controls how deep it nests.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Tree {
    Leaf(u8),
    Node(Vec<Tree>),
}

/// A tree a few levels deep, for the seeds.
pub(super) fn tree() -> Tree {
    Tree::Node(vec![Tree::Leaf(1), Tree::Node(vec![Tree::Node(vec![Tree::Leaf(2)]), Tree::Leaf(3)])])
}

/// An order with every field set, for the seeds.
pub(super) fn order() -> Order {
    Order {
        id: 42,
        customer: "Ada".into(),
        lines: vec![Line { sku: "tea".into(), quantity: 2 }, Line { sku: "cup".into(), quantity: 1 }],
        note: Some("by the door".into()),
        tags: BTreeMap::from([("priority".into(), 1), ("region".into(), -3)]),
        state: State::Shipped("DHL".into(), 7),
        blob: vec![0, 1, 2, 255],
        flags: (true, 'é', 9, -2),
        wide: -(1 << 100),
    }
}

fn codec(name: &str) -> Codec {
    if name == "json" { Codec::Json } else { Codec::Bincode }
}

/// `payload` decoded as `T` by the SDK, if it decodes, and checked to survive a round trip:
/// encoded in the same codec, it decodes to a value that encodes to the same bytes.
fn sdk_decode<T: Serialize + DeserializeOwned + Debug>(payload: &pb::Payload) -> Option<T> {
    let value: T = decode_payload(payload).ok()?;
    let encoded = encode_payload(codec(&payload.codec), &value)
        .unwrap_or_else(|e| panic!("{value:?} decoded but does not encode: {e}"));
    let again: T = decode_payload(&encoded)
        .unwrap_or_else(|e| panic!("{value:?} encodes to a payload that does not decode: {e}"));
    let twice = encode_payload(codec(&payload.codec), &again).expect("it encoded once");
    assert_eq!(twice.data, encoded.data, "{value:?} does not survive a round trip: {again:?}");
    Some(value)
}

/// Runs `data` as a payload in codec `name` through the SDK and the fabric.
pub(super) fn check(name: &str, data: &[u8]) -> bool {
    let payload = pb::Payload { codec: name.into(), data: data.to_vec() };
    let mut accepted = sdk_decode::<Order>(&payload).is_some();
    accepted |= sdk_decode::<Vec<State>>(&payload).is_some();
    accepted |= sdk_decode::<(String, Option<u32>)>(&payload).is_some();
    accepted |= sdk_decode::<Tree>(&payload).is_some();
    accepted |= sdk_decode::<()>(&payload).is_some();
    if name == "json" {
        let value = decode_payload::<serde_json::Value>(&payload).ok();
        if let Some(value) = &value {
            let encoded = encode_payload(Codec::Json, value).expect("a JSON value encodes");
            decode_payload::<serde_json::Value>(&encoded).expect("an encoded JSON value decodes");
        }
        // The fabric takes every JSON payload the SDK can read.
        let checked = Payload::json(data).validate();
        assert!(value.is_none() || checked.is_ok(), "the fabric refuses JSON the SDK reads: {checked:?}");
        accepted |= value.is_some();
    }
    // The HTTP API shows any payload, as JSON or as its codec and hex.
    let shown = model::Execution::from(pb::Execution { payload: Some(payload), ..Default::default() });
    serde_json::to_vec(&shown).expect("an execution's JSON encodes");
    accepted
}

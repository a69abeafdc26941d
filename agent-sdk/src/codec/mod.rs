//! Payload encodings. Every payload names its codec, so a handler decodes whatever the caller
//! sent (bincode from Rust, JSON from the command line) and answers in the same codec.

mod depth;

use serde::Serialize;
use serde::de::DeserializeOwned;
use weft_proto::fabric::v1 as pb;

use crate::Error;

/// How arguments and results are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    /// bincode 2 (standard configuration, serde): compact, for Rust-to-Rust calls. Types that
    /// need a self-describing format (`serde_json::Value`, `#[serde(flatten)]`, untagged
    /// enums) must use [`Codec::Json`].
    #[default]
    Bincode,
    /// JSON: what the CLI and other languages send.
    Json,
}

impl Codec {
    /// The codec's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::Bincode => "bincode",
            Codec::Json => "json",
        }
    }

    fn of(payload: &pb::Payload) -> Result<Self, Error> {
        match payload.codec.as_str() {
            "bincode" => Ok(Codec::Bincode),
            "json" => Ok(Codec::Json),
            other => Err(Error::Codec(format!("unknown codec '{other}'"))),
        }
    }
}

/// Encodes `value` with `codec`.
pub(crate) fn encode<T: Serialize + ?Sized>(codec: Codec, value: &T) -> Result<pb::Payload, Error> {
    let data = match codec {
        Codec::Json => {
            serde_json::to_vec(value).map_err(|e| Error::Codec(format!("cannot encode as JSON: {e}")))?
        }
        Codec::Bincode => bincode::serde::encode_to_vec(value, bincode::config::standard())
            .map_err(|e| Error::Codec(format!("cannot encode as bincode: {e}")))?,
    };
    Ok(pb::Payload { codec: codec.as_str().to_owned(), data })
}

/// Decodes a payload into `T`; an empty payload reads as JSON `null` (no arguments, `()`).
pub(crate) fn decode<T: DeserializeOwned>(payload: &pb::Payload) -> Result<T, Error> {
    let codec = Codec::of(payload)?;
    if payload.data.is_empty() {
        return serde_json::from_slice(b"null")
            .map_err(|e| Error::Codec(format!("no payload was sent, and the type needs one: {e}")));
    }
    match codec {
        Codec::Json => serde_json::from_slice(&payload.data)
            .map_err(|e| Error::Codec(format!("cannot decode the JSON payload: {e}"))),
        Codec::Bincode => {
            let (value, read) = decode_bincode(&payload.data)
                .map_err(|e| Error::Codec(format!("cannot decode the bincode payload: {e}")))?;
            if read != payload.data.len() {
                return Err(Error::Codec(format!(
                    "the bincode payload has {} bytes left over: not the expected type",
                    payload.data.len() - read
                )));
            }
            Ok(value)
        }
    }
}

/// bincode allocates a string's or a byte vector's buffer as soon as it has read its length, so
/// a garbage length would ask for exabytes and abort the process. Its limit on the bytes one
/// decode may claim prevents that; strings and byte vectors are all in the input, so a limit
/// no smaller than the input never refuses a real payload. Nesting deeper than
/// [`depth::MAX_DEPTH`] is refused too, before it overflows the stack.
fn decode_bincode<T: DeserializeOwned>(data: &[u8]) -> Result<(T, usize), bincode::error::DecodeError> {
    const SMALL: usize = 1 << 24;
    const LARGE: usize = 1 << 32;
    let left = std::cell::Cell::new(depth::MAX_DEPTH);
    let seed = depth::Seed { seed: std::marker::PhantomData::<T>, left: &left };
    if data.len() <= SMALL {
        bincode::serde::seed_decode_from_slice(seed, data, bincode::config::standard().with_limit::<SMALL>())
    } else {
        bincode::serde::seed_decode_from_slice(seed, data, bincode::config::standard().with_limit::<LARGE>())
    }
}

/// The decoder handlers and callers use on a payload, for the fuzz targets (feature
/// `fuzzing`): what [`crate::Agent`] handlers do with the arguments they receive.
///
/// ```
/// # #[cfg(feature = "fuzzing")] {
/// use weft_agent::codec::{Codec, decode_payload, encode_payload};
/// let payload = encode_payload(Codec::Json, &(1u8, "a")).unwrap();
/// assert_eq!(decode_payload::<(u8, String)>(&payload).unwrap(), (1, "a".to_owned()));
/// # }
/// ```
#[cfg(feature = "fuzzing")]
pub fn decode_payload<T: DeserializeOwned>(payload: &pb::Payload) -> Result<T, Error> {
    decode(payload)
}

/// The encoder of [`decode_payload`]'s payloads, for the fuzz targets (feature `fuzzing`).
#[cfg(feature = "fuzzing")]
pub fn encode_payload<T: Serialize + ?Sized>(codec: Codec, value: &T) -> Result<pb::Payload, Error> {
    encode(codec, value)
}

/// The codec a payload uses (bincode when it names none this SDK knows).
pub(crate) fn codec_of(payload: &pb::Payload) -> Codec {
    Codec::of(payload).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Order {
        id: u64,
        items: Vec<String>,
    }

    #[test]
    fn both_codecs_round_trip_and_empty_means_unit() {
        let order = Order { id: 7, items: vec!["tea".into()] };
        for codec in [Codec::Bincode, Codec::Json] {
            let p = encode(codec, &order).unwrap();
            assert_eq!(p.codec, codec.as_str());
            assert_eq!(decode::<Order>(&p).unwrap(), order);
        }
        let empty = pb::Payload { codec: "json".into(), data: vec![] };
        decode::<()>(&empty).unwrap();
        assert!(decode::<Order>(&empty).unwrap_err().to_string().contains("no payload"));
    }

    #[test]
    fn a_garbage_length_is_a_codec_error_not_an_abort() {
        // A varint u64 length of about 4.6e18 bytes for the first string, then nothing.
        let data = vec![7, 1, 253, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f];
        let p = pb::Payload { codec: "bincode".into(), data };
        assert!(decode::<Order>(&p).unwrap_err().to_string().contains("cannot decode the bincode"));
    }

    /// A recursive argument type, as a user may declare one.
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Tree {
        Leaf(u8),
        Node(Vec<Tree>),
    }

    /// `Tree` nested `depth` levels deep in bincode, written out by hand (encoding or dropping
    /// a deep tree would recurse as deep itself): `Node([` … `Leaf(7)` … `])`.
    fn nested_tree(depth: usize) -> Vec<u8> {
        let mut data = [1u8, 1].repeat(depth);
        data.extend([0, 7]);
        data
    }

    #[test]
    fn deep_bincode_nesting_is_a_codec_error_not_a_stack_overflow() {
        let p = |data| pb::Payload { codec: "bincode".into(), data };
        let shallow: Tree = decode(&p(nested_tree(50))).unwrap();
        let mut depth = 0;
        let mut t = &shallow;
        while let Tree::Node(children) = t {
            (depth, t) = (depth + 1, &children[0]);
        }
        assert_eq!((depth, t), (50, &Tree::Leaf(7)));
        // 100 000 levels in 200 kB: without the limit this overflows the stack (the test
        // process dies with SIGSEGV).
        let e = decode::<Tree>(&p(nested_tree(100_000))).unwrap_err().to_string();
        assert!(e.contains("nested more than 128 levels deep"), "{e}");
    }

    #[test]
    fn wrong_types_and_codecs_are_clear_errors() {
        let p = encode(Codec::Bincode, &(1u8, 2u8, 3u8)).unwrap();
        assert!(decode::<u8>(&p).unwrap_err().to_string().contains("left over"));
        let p = pb::Payload { codec: "json".into(), data: b"{\"id\":\"x\"}".to_vec() };
        assert!(decode::<Order>(&p).unwrap_err().to_string().contains("cannot decode the JSON"));
        let p = pb::Payload { codec: "yaml".into(), data: b"a".to_vec() };
        assert!(decode::<u8>(&p).unwrap_err().to_string().contains("unknown codec 'yaml'"));
    }
}

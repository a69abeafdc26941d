//! Versioned binary encoding for everything Weft persists or sends between nodes: Raft log
//! entries, votes, snapshots and Raft RPCs.
//!
//! Every encoded value starts with a one-byte format tag followed by bincode 2 (standard
//! configuration, serde mode). A reader that meets a tag it does not know refuses the bytes
//! with [`Error::UnknownFormat`] instead of misreading them, so a later format can be added
//! beside this one.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The format tag of bincode 2 standard-config encoding.
pub const FORMAT_BINCODE_V1: u8 = 1;
/// The same encoding as [`FORMAT_BINCODE_V1`], for a snapshot whose grid holds executions,
/// sessions and instances: the grid type changed, so its files name a new format.
pub const FORMAT_SNAPSHOT_V2: u8 = 2;
/// The same encoding again, for a snapshot whose grid holds streams.
pub const FORMAT_SNAPSHOT_V3: u8 = 3;
/// The same encoding again, for a snapshot whose grid holds leases (and sessions that may
/// serve only their claimed instances).
pub const FORMAT_SNAPSHOT_V4: u8 = 4;
/// The same encoding again, for a snapshot whose grid holds bearer tokens.
pub const FORMAT_SNAPSHOT_V5: u8 = 5;
/// The same encoding again, for a snapshot whose grid holds blocks reserved for eager calls.
pub const FORMAT_SNAPSHOT_V6: u8 = 6;
/// The same encoding again, for a snapshot whose grid holds holders waiting for leases.
pub const FORMAT_SNAPSHOT_V7: u8 = 7;
/// The same encoding again, for a snapshot whose grid holds schedules.
pub const FORMAT_SNAPSHOT_V8: u8 = 8;

/// Why bytes could not be decoded. Decoding never changes state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input was empty.
    #[error("empty input: expected a format tag")]
    Empty,
    /// The format tag is not one this version of Weft knows (for this kind of value).
    #[error(
        "unknown format tag {0}; this build reads format {FORMAT_BINCODE_V1} (and {FORMAT_SNAPSHOT_V2} to {FORMAT_SNAPSHOT_V8} for snapshots)"
    )]
    UnknownFormat(u8),
    /// The bytes do not decode as the expected type.
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// The bytes decoded but left bytes over.
    #[error("malformed payload: {0} trailing bytes")]
    Trailing(usize),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `value` with the current format tag.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_BINCODE_V1];
    encode_into(value, &mut out);
    out
}

/// Appends the tagged encoding of `value` to `out`.
pub fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    if out.is_empty() {
        out.push(FORMAT_BINCODE_V1);
    }
    // Serializing plain data into a Vec cannot fail; a failure is a programming error.
    bincode::serde::encode_into_std_write(value, out, config())
        .expect("bincode encoding of in-memory data into a Vec never fails");
}

/// Encodes `value` behind format tag `tag` (a bincode-encoded format other than the
/// default, such as [`FORMAT_SNAPSHOT_V2`]).
pub fn encode_tagged<T: Serialize>(tag: u8, value: &T) -> Vec<u8> {
    let mut out = vec![tag];
    encode_into(value, &mut out);
    out
}

/// Decodes bytes produced by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let (&tag, body) = bytes.split_first().ok_or(Error::Empty)?;
    if tag != FORMAT_BINCODE_V1 {
        return Err(Error::UnknownFormat(tag));
    }
    decode_body(body)
}

/// The format tag of encoded bytes, and the body behind it.
pub fn split_tag(bytes: &[u8]) -> Result<(u8, &[u8]), Error> {
    bytes.split_first().map(|(t, b)| (*t, b)).ok_or(Error::Empty)
}

/// Decodes a bincode body (the bytes after the format tag).
///
/// bincode allocates a string's or a byte vector's buffer as soon as it has read its length,
/// before it reads the bytes, so a garbage length would ask for exabytes and abort the process.
/// Its limit on the bytes one decode may claim prevents that. Every string and byte vector is
/// in the input, so together they are never longer than it: the limit is the smallest of a few
/// tiers that holds the input, and garbage can claim at most that much (allocated lazily, as
/// zeroed pages).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    const SMALL: usize = 1 << 24;
    const LARGE: usize = 1 << 32;
    const HUGE: usize = 1 << 40;
    fn limited<T: DeserializeOwned, const LIMIT: usize>(
        body: &[u8],
    ) -> Result<(T, usize), bincode::error::DecodeError> {
        bincode::serde::decode_from_slice(body, config().with_limit::<LIMIT>())
    }
    let decoded = match body.len() {
        n if n <= SMALL => limited::<T, SMALL>(body),
        n if n <= LARGE => limited::<T, LARGE>(body),
        _ => limited::<T, HUGE>(body),
    };
    let (value, read) = decoded.map_err(|e| Error::Malformed(e.to_string()))?;
    if read != body.len() {
        return Err(Error::Trailing(body.len() - read));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn round_trips(v in proptest::collection::vec(any::<(u64, String, Option<Vec<u8>>)>(), 0..20)) {
            let bytes = encode(&v);
            prop_assert_eq!(decode::<Vec<(u64, String, Option<Vec<u8>>)>>(&bytes).unwrap(), v);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode::<Vec<(u64, String)>>(&bytes);
        }
    }

    #[test]
    fn a_garbage_length_is_refused_without_allocating_it() {
        // Tag, then a varint u64 length of about 4.6e18 bytes for the string, then nothing.
        let bytes = [FORMAT_BINCODE_V1, 253, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f];
        assert!(matches!(decode::<String>(&bytes), Err(Error::Malformed(_))));
    }

    #[test]
    fn refuses_unknown_tags_and_trailing_bytes() {
        let mut bytes = encode(&7u64);
        bytes[0] = 9;
        assert!(matches!(decode::<u64>(&bytes), Err(Error::UnknownFormat(9))));
        let mut bytes = encode(&7u64);
        bytes.push(0);
        assert!(matches!(decode::<u64>(&bytes), Err(Error::Trailing(1))));
        assert!(matches!(decode::<u64>(&[]), Err(Error::Empty)));
    }
}

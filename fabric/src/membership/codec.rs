//! Gossip on the wire: foca's messages encoded with bincode, inside a small frame that names
//! the format and the cluster.
//!
//! ```text
//!   ┌────┬────┬────────┬─────────────┬──────────────┬─────────────────────────────┐
//!   │ 'W'│ 'g'│ format │ cluster len │ cluster name │ foca header + updates (bincode) │
//!   └────┴────┴────────┴─────────────┴──────────────┴─────────────────────────────┘
//! ```
//!
//! A packet from another cluster is refused before foca sees it, so two clusters on one
//! network never merge.

use bytes::{Buf, BufMut};
use foca::{Header, Member};

use super::identity::Peer;

/// First bytes of every gossip packet.
const MAGIC: [u8; 2] = *b"Wg";
/// Version of the frame and of the bincode encoding inside it.
pub const FORMAT: u8 = 1;
/// Longest cluster name (the config allows 64 characters).
pub const MAX_CLUSTER_BYTES: usize = 64;
/// Bytes the frame adds in front of foca's payload, at most.
pub const MAX_FRAME_BYTES: usize = 4 + MAX_CLUSTER_BYTES;
/// No single header or member decodes from more than this (a garbage length prefix cannot make
/// bincode allocate more).
const DECODE_LIMIT: usize = 4096;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Why a gossip packet was dropped. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not a Weft gossip packet, or a format this build does not know.
    #[error("malformed gossip packet: {0}")]
    Malformed(&'static str),
    /// A Weft gossip packet from another cluster.
    #[error("gossip from cluster '{0}'")]
    ForeignCluster(String),
}

/// Wraps foca's payload in the frame for `cluster`.
pub fn frame(cluster: &str, payload: &[u8]) -> Vec<u8> {
    let name = &cluster.as_bytes()[..cluster.len().min(MAX_CLUSTER_BYTES)];
    let mut out = Vec::with_capacity(4 + name.len() + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(payload);
    out
}

/// foca's payload of a packet framed for `cluster`.
pub fn unframe<'a>(cluster: &str, packet: &'a [u8]) -> Result<&'a [u8], Refused> {
    let [m0, m1, format, len, rest @ ..] = packet else {
        return Err(Refused::Malformed("shorter than the frame"));
    };
    if [*m0, *m1] != MAGIC {
        return Err(Refused::Malformed("bad magic"));
    }
    if *format != FORMAT {
        return Err(Refused::Malformed("unknown format"));
    }
    let len = usize::from(*len);
    if len > MAX_CLUSTER_BYTES || rest.len() < len {
        return Err(Refused::Malformed("bad cluster name length"));
    }
    let (name, payload) = rest.split_at(len);
    if name != cluster.as_bytes() {
        return Err(Refused::ForeignCluster(String::from_utf8_lossy(name).into_owned()));
    }
    Ok(payload)
}

/// A foca codec on bincode (serde mode).
#[derive(Debug, Clone, Copy, Default)]
pub struct Codec;

/// Why encoding or decoding a gossip message failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The value could not be encoded.
    #[error("encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    /// The bytes are not a valid message.
    #[error("decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// The packet has no room left for the value; the buffer was left untouched.
    #[error("no room in the packet")]
    Full,
}

fn encode<T: serde::Serialize>(value: &T, mut buf: impl BufMut) -> Result<(), Error> {
    let bytes = bincode::serde::encode_to_vec(value, config())?;
    if buf.remaining_mut() < bytes.len() {
        return Err(Error::Full);
    }
    buf.put_slice(&bytes);
    Ok(())
}

fn decode<T: serde::de::DeserializeOwned>(mut buf: impl Buf) -> Result<T, Error> {
    // foca hands us contiguous buffers, so the first chunk is everything.
    let (value, used) = bincode::serde::decode_from_slice(buf.chunk(), config())?;
    buf.advance(used);
    Ok(value)
}

impl foca::Codec<Peer> for Codec {
    type Error = Error;

    fn encode_header(&mut self, header: &Header<Peer>, buf: impl BufMut) -> Result<(), Error> {
        encode(header, buf)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<Peer>, Error> {
        decode(buf)
    }

    fn encode_member(&mut self, member: &Member<Peer>, buf: impl BufMut) -> Result<(), Error> {
        encode(member, buf)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<Peer>, Error> {
        decode(buf)
    }
}

#[cfg(test)]
mod tests {
    use foca::{Codec as _, Incarnation, State};
    use proptest::prelude::*;

    use super::*;

    fn peer() -> impl Strategy<Value = Peer> {
        (any::<u64>(), any::<[u8; 4]>(), any::<u16>(), any::<u64>(), any::<bool>()).prop_map(
            |(id, ip, port, generation, leaving)| Peer {
                id,
                addr: (std::net::Ipv4Addr::from(ip), port).into(),
                generation,
                leaving,
            },
        )
    }

    fn member() -> impl Strategy<Value = Member<Peer>> {
        (peer(), any::<Incarnation>(), 0..3u8).prop_map(|(p, inc, s)| {
            let state = [State::Alive, State::Suspect, State::Down][usize::from(s)];
            Member::new(p, inc, state)
        })
    }

    proptest! {
        #[test]
        fn members_round_trip(m in member()) {
            let mut buf = Vec::new();
            Codec.encode_member(&m, &mut buf).unwrap();
            let mut slice = &buf[..];
            let back = Codec.decode_member(&mut slice).unwrap();
            prop_assert_eq!(back, m);
            prop_assert!(slice.is_empty(), "decode consumes exactly what encode wrote");
        }

        #[test]
        fn headers_round_trip(src in peer(), dst in peer(), inc in any::<Incarnation>(), n in any::<u8>()) {
            let messages = [
                foca::Message::Ping(n),
                foca::Message::Ack(n),
                foca::Message::Announce,
                foca::Message::Feed,
                foca::Message::PingReq { target: dst.clone(), probe_number: n },
                foca::Message::IndirectAck { target: src.clone(), probe_number: n },
            ];
            for message in messages {
                let header = Header { src: src.clone(), src_incarnation: inc, dst: dst.clone(), message };
                let mut buf = Vec::new();
                Codec.encode_header(&header, &mut buf).unwrap();
                let mut slice = &buf[..];
                prop_assert_eq!(Codec.decode_header(&mut slice).unwrap(), header);
            }
        }

        #[test]
        fn frames_round_trip(cluster in "[a-z0-9_-]{1,64}", payload in proptest::collection::vec(any::<u8>(), 0..1400)) {
            let packet = frame(&cluster, &payload);
            prop_assert!(packet.len() <= payload.len() + MAX_FRAME_BYTES);
            prop_assert_eq!(unframe(&cluster, &packet).unwrap(), &payload[..]);
            let other = format!("{cluster}x");
            prop_assert_eq!(unframe(&other, &packet), Err(Refused::ForeignCluster(cluster.clone())));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = unframe("weft", &bytes);
            let mut slice = &bytes[..];
            let _ = Codec.decode_header(&mut slice);
            let mut slice = &bytes[..];
            let _ = Codec.decode_member(&mut slice);
        }
    }

    #[test]
    fn a_full_buffer_is_left_clean() {
        let m = Member::alive(Peer::seed("127.0.0.1:7400".parse().unwrap()));
        let mut small = [0u8; 3];
        let mut buf = &mut small[..];
        assert!(matches!(Codec.encode_member(&m, &mut buf), Err(Error::Full)));
        assert_eq!(small, [0u8; 3]);
    }

    #[test]
    fn short_and_foreign_packets_are_named() {
        assert_eq!(unframe("a", b"Wg"), Err(Refused::Malformed("shorter than the frame")));
        assert_eq!(unframe("a", b"XX\x01\x00"), Err(Refused::Malformed("bad magic")));
        assert_eq!(unframe("a", b"Wg\x09\x00"), Err(Refused::Malformed("unknown format")));
        assert_eq!(unframe("a", b"Wg\x01\x05ab"), Err(Refused::Malformed("bad cluster name length")));
        assert_eq!(unframe("a", b"Wg\x01\x01bxyz"), Err(Refused::ForeignCluster("b".into())));
        assert_eq!(unframe("a", b"Wg\x01\x01axyz"), Ok(&b"xyz"[..]));
    }
}

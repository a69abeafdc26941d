//! foca's messages on the wire: a foca codec on bincode. The frame around them (format,
//! cluster, MAC or encryption) is [`super::packet`]'s.

use bytes::{Buf, BufMut};
use foca::{Header, Member};

use super::identity::Peer;

/// No single header or member decodes from more than this (a garbage length prefix cannot make
/// bincode allocate more).
const DECODE_LIMIT: usize = 4096;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
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
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
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
}

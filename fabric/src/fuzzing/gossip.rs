//! The gossip target's receiving node: `packet::Auth` in each configuration, and a foca member
//! with a fixed identity, seeded randomness and two known peers, driven as the gossip service
//! drives it (handle the packet, then fire the timers it scheduled).

use foca::{AccumulatingRuntime, Codec as _, Foca, Member, NoCustomBroadcast};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::membership::codec::Codec;
use crate::membership::gossip::{MAX_PACKET_BYTES, Options, Preset};
use crate::membership::identity::Peer;
use crate::membership::keys::Keys;
use crate::membership::packet::{Auth, Unauthenticated};

/// The cluster every packet is meant for.
pub(super) const CLUSTER: &str = "weft";
/// The fuzz targets' gossip key: a fixed, public value, so the authenticated paths are
/// reachable; never a real cluster's key.
const KEY: &str = "d2VmdCBmdXp6IGdvc3NpcCBrZXk7IG5vdCBzZWNyZXQ="; // "weft fuzz gossip key; not secret"

/// The receiving node's identity.
pub(super) fn me() -> Peer {
    Peer { id: 1, addr: "127.0.0.1:7401".parse().expect("an address"), generation: 1, leaving: false }
}

/// The peers the receiving node knows, and the sender of the seed packets (the first).
pub(super) fn peers() -> [Peer; 2] {
    [
        Peer { id: 2, addr: "127.0.0.1:7402".parse().expect("an address"), generation: 1, leaving: false },
        Peer { id: 3, addr: "127.0.0.1:7403".parse().expect("an address"), generation: 5, leaving: false },
    ]
}

fn keys() -> Keys {
    Keys::parse_list(KEY).expect("the fuzz key parses")
}

/// How the receiving node checks packets, per mode of `super::GOSSIP_MODES`; and, for the
/// sealing modes, the sender.
pub(super) fn auth(mode: u8) -> Auth {
    match mode {
        0 => Auth::off(),
        1 | 3 => Auth::new(keys(), false, Unauthenticated::Refuse),
        _ => Auth::new(keys(), true, Unauthenticated::Accept),
    }
}

/// A foca member as the gossip service makes one, with a fixed seed.
pub(super) fn foca(me: Peer) -> Foca<Peer, Codec, StdRng, NoCustomBroadcast> {
    let options = Options {
        cluster: CLUSTER.into(),
        me: me.clone(),
        seeds: vec![],
        timing: Preset::Test.timing(),
        auth: Auth::off(),
        key_file: None,
        notes: crate::audit_notes::Notes::none(),
    };
    Foca::new(me, options.foca_config(), StdRng::seed_from_u64(7), Codec)
}

/// Runs a packet (modes 0-2) or a payload to seal (modes 3-4) through the receiving node.
pub(super) fn receive(mode: u8, bytes: &[u8]) -> bool {
    if bytes.len() > MAX_PACKET_BYTES {
        return false;
    }
    let auth = auth(mode);
    let sealed;
    let packet = if mode >= 3 {
        sealed = auth.seal(CLUSTER, bytes);
        &sealed[..]
    } else {
        bytes
    };
    let mut scratch = Vec::new();
    let payload = match auth.open(CLUSTER, packet, &mut scratch) {
        Ok(payload) => payload,
        Err(refused) => {
            assert!(mode < 3, "a packet sealed with the key was refused: {refused}");
            return false;
        }
    };
    if mode >= 3 {
        assert_eq!(payload, bytes, "a sealed payload opened changed");
    }
    check_header(payload);
    let mut foca = foca(me());
    let mut runtime = AccumulatingRuntime::new();
    let known = peers().into_iter().map(Member::alive);
    foca.apply_many(known, false, &mut runtime).expect("known peers apply");
    let accepted = foca.handle_data(payload, &mut runtime).is_ok();
    let mut timers = Vec::new();
    while let Some((_, timer)) = runtime.to_schedule() {
        timers.push(timer);
    }
    for timer in timers {
        let _ = foca.handle_timer(timer, &mut runtime);
    }
    while runtime.to_send().is_some() {}
    accepted
}

/// A header foca's codec reads from the payload encodes to bytes it reads back the same.
fn check_header(payload: &[u8]) {
    let mut rest = payload;
    let Ok(header) = Codec.decode_header(&mut rest) else { return };
    let mut bytes = Vec::new();
    Codec.encode_header(&header, &mut bytes).expect("a decoded header encodes");
    let mut slice = &bytes[..];
    let again = Codec.decode_header(&mut slice).expect("an encoded header decodes");
    assert_eq!(again, header, "a gossip header changed in a round trip");
    assert!(slice.is_empty(), "a header's decode left bytes of its own encoding");
}

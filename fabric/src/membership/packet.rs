//! A gossip packet on the wire: foca's payload inside a frame that names the format and the
//! cluster, authenticated with the cluster's gossip key and, when configured, encrypted.
//!
//! ```text
//!   header = 'W' 'g' │ format │ cluster len │ cluster name          (4 + up to 64 bytes)
//!
//!   format 1, plain      header │ payload
//!   format 2, MAC        header │ payload │ HMAC-SHA256(header ‖ payload)             (32 bytes)
//!   format 3, encrypted  header │ nonce (12, random) │ ChaCha20-Poly1305(payload) │ tag (16)
//!                        (the header is the associated data: authenticated, not encrypted)
//! ```
//!
//! [`Auth::open`] runs its checks cheapest first, and a packet that fails one is dropped before
//! foca or any decoder sees its payload: magic and format ([`Refused::Malformed`]), the cluster
//! name ([`Refused::ForeignCluster`]), then authentication: a plain packet where a key is
//! required ([`Refused::Unauthenticated`]); a MAC or tag that no key of this node verifies, which
//! covers a wrong key, a changed byte and a cut-off packet ([`Refused::BadMac`]).
//!
//! Replays are not detected: an exact copy of a packet a member sent verifies. SWIM tolerates
//! them (a stale incarnation loses to a newer one), and a replay carries nothing new.

use ring::aead;
use ring::hmac;
use ring::rand::SecureRandom as _;

use super::keys::Keys;

/// First bytes of every gossip packet.
const MAGIC: [u8; 2] = *b"Wg";
/// Format byte: no authentication (the only format before gossip keys; still sent without keys).
pub const FORMAT_PLAIN: u8 = 1;
/// Format byte: HMAC-SHA256 over the header and payload, appended.
pub const FORMAT_MAC: u8 = 2;
/// Format byte: payload encrypted with ChaCha20-Poly1305; the header is associated data.
pub const FORMAT_ENCRYPTED: u8 = 3;
/// Longest cluster name (the config allows 64 characters).
pub const MAX_CLUSTER_BYTES: usize = 64;
/// Bytes of the MAC of format 2 (the full HMAC-SHA256 output, not truncated).
pub const MAC_BYTES: usize = 32;
/// Bytes of the random nonce of format 3.
pub const NONCE_BYTES: usize = aead::NONCE_LEN;
/// Bytes of the AEAD tag of format 3.
pub const TAG_BYTES: usize = 16;
/// Bytes the frame adds to foca's payload, at most (header, and a MAC or a nonce and a tag).
pub const MAX_FRAME_BYTES: usize = 4 + MAX_CLUSTER_BYTES + max(MAC_BYTES, NONCE_BYTES + TAG_BYTES);

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
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
    /// A plain packet, and this node requires the cluster's gossip key.
    #[error("unauthenticated gossip packet: this node requires the cluster's gossip key")]
    Unauthenticated,
    /// A MAC or AEAD tag that no key of this node verifies: another key, a changed or missing
    /// byte, or this node has no key at all.
    #[error("gossip packet fails authentication: no gossip key of this node verifies it")]
    BadMac,
}

/// What a node does with unauthenticated (plain) gossip while it has keys: the steps of turning
/// keys on, or off, without a flag day (docs/operations.md, "Gossip keys").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthenticated {
    /// Send authenticated; drop plain packets. The default, and the end state.
    Refuse,
    /// Send authenticated; accept plain packets too (nodes that still send plain).
    Accept,
    /// Send plain; accept both (nodes that have no key yet cannot read authenticated ones).
    Send,
}

impl Unauthenticated {
    /// Parses `refuse`, `accept` or `send`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "refuse" => Some(Self::Refuse),
            "accept" => Some(Self::Accept),
            "send" => Some(Self::Send),
            _ => None,
        }
    }
}

/// How this node frames, authenticates and checks gossip packets.
#[derive(Debug)]
pub struct Auth {
    keys: Option<Keys>,
    encrypt: bool,
    unauthenticated: Unauthenticated,
    rng: ring::rand::SystemRandom,
}

impl Auth {
    /// No keys: plain packets out, plain packets in (gossip before keys existed).
    pub fn off() -> Self {
        Self {
            keys: None,
            encrypt: false,
            unauthenticated: Unauthenticated::Accept,
            rng: ring::rand::SystemRandom::new(),
        }
    }

    /// With `keys`: MAC (or, if `encrypt`, encrypt) what is sent, unless `unauthenticated` says
    /// to send plain.
    pub fn new(keys: Keys, encrypt: bool, unauthenticated: Unauthenticated) -> Self {
        Self { keys: Some(keys), encrypt, unauthenticated, rng: ring::rand::SystemRandom::new() }
    }

    /// The keys, if any.
    pub fn keys(&self) -> Option<&Keys> {
        self.keys.as_ref()
    }

    /// Replaces the keys (a reloaded key file); packets from now on use the new ones.
    pub fn set_keys(&mut self, keys: Keys) {
        self.keys = Some(keys);
    }

    /// The format this node sends: `"plain"`, `"mac"` or `"encrypted"`.
    pub fn sends(&self) -> &'static str {
        match self.sending_key() {
            None => "plain",
            Some(_) if self.encrypt => "encrypted",
            Some(_) => "mac",
        }
    }

    fn sending_key(&self) -> Option<&super::keys::Key> {
        match (&self.keys, self.unauthenticated) {
            (Some(keys), Unauthenticated::Refuse | Unauthenticated::Accept) => Some(keys.sender()),
            _ => None,
        }
    }

    /// foca's `payload` framed for `cluster`, authenticated or encrypted as configured.
    pub fn seal(&self, cluster: &str, payload: &[u8]) -> Vec<u8> {
        let Some(key) = self.sending_key() else {
            return frame(FORMAT_PLAIN, cluster, payload, 0);
        };
        if !self.encrypt {
            let mut out = frame(FORMAT_MAC, cluster, payload, MAC_BYTES);
            let tag = hmac::sign(key.mac(), &out);
            out.extend_from_slice(tag.as_ref());
            return out;
        }
        let mut nonce = [0u8; NONCE_BYTES];
        self.rng.fill(&mut nonce).expect("the system random source works");
        let mut out = frame(FORMAT_ENCRYPTED, cluster, &nonce, payload.len() + TAG_BYTES);
        let header_len = out.len() - NONCE_BYTES;
        out.extend_from_slice(payload);
        let (header, rest) = out.split_at_mut(header_len);
        let tag = key
            .aead()
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(&*header),
                &mut rest[NONCE_BYTES..],
            )
            .expect("a gossip packet is far below ChaCha20-Poly1305's length limit");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// foca's payload of `packet`, if it is well framed, of `cluster` and authenticated as this
    /// node requires. An encrypted payload is decrypted into `scratch`.
    pub fn open<'a>(
        &self,
        cluster: &str,
        packet: &'a [u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], Refused> {
        let (format, body) = unframe(cluster, packet)?;
        let header = &packet[..packet.len() - body.len()];
        match format {
            FORMAT_PLAIN => match (&self.keys, self.unauthenticated) {
                (Some(_), Unauthenticated::Refuse) => Err(Refused::Unauthenticated),
                _ => Ok(body),
            },
            FORMAT_MAC => {
                let keys = self.keys.as_ref().ok_or(Refused::BadMac)?;
                let Some(split) = packet.len().checked_sub(MAC_BYTES).filter(|s| *s >= header.len()) else {
                    return Err(Refused::BadMac);
                };
                let (signed, tag) = packet.split_at(split);
                if keys.all().iter().any(|k| hmac::verify(k.mac(), signed, tag).is_ok()) {
                    Ok(&signed[header.len()..])
                } else {
                    Err(Refused::BadMac)
                }
            }
            FORMAT_ENCRYPTED => {
                let keys = self.keys.as_ref().ok_or(Refused::BadMac)?;
                if body.len() < NONCE_BYTES + TAG_BYTES {
                    return Err(Refused::BadMac);
                }
                let (nonce, sealed) = body.split_at(NONCE_BYTES);
                let nonce: [u8; NONCE_BYTES] = nonce.try_into().expect("split at NONCE_BYTES");
                // A failed open leaves its buffer unspecified: each key gets a fresh copy.
                let mut opened = None;
                for key in keys.all() {
                    scratch.clear();
                    scratch.extend_from_slice(sealed);
                    let nonce = aead::Nonce::assume_unique_for_key(nonce);
                    if let Ok(plain) = key.aead().open_in_place(nonce, aead::Aad::from(header), scratch) {
                        opened = Some(plain.len());
                        break;
                    }
                }
                let len = opened.ok_or(Refused::BadMac)?;
                Ok(&scratch[..len])
            }
            _ => Err(Refused::Malformed("unknown format")),
        }
    }
}

/// The header for `cluster` and `format`, then `body`, with room for `extra` more bytes.
fn frame(format: u8, cluster: &str, body: &[u8], extra: usize) -> Vec<u8> {
    let name = &cluster.as_bytes()[..cluster.len().min(MAX_CLUSTER_BYTES)];
    let mut out = Vec::with_capacity(4 + name.len() + body.len() + extra);
    out.extend_from_slice(&MAGIC);
    out.push(format);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(body);
    out
}

/// The format byte and what follows the header of a packet framed for `cluster`.
fn unframe<'a>(cluster: &str, packet: &'a [u8]) -> Result<(u8, &'a [u8]), Refused> {
    let [m0, m1, format, len, rest @ ..] = packet else {
        return Err(Refused::Malformed("shorter than the frame"));
    };
    if [*m0, *m1] != MAGIC {
        return Err(Refused::Malformed("bad magic"));
    }
    if !matches!(*format, FORMAT_PLAIN | FORMAT_MAC | FORMAT_ENCRYPTED) {
        return Err(Refused::Malformed("unknown format"));
    }
    let len = usize::from(*len);
    if len > MAX_CLUSTER_BYTES || rest.len() < len {
        return Err(Refused::Malformed("bad cluster name length"));
    }
    let (name, body) = rest.split_at(len);
    if name != cluster.as_bytes() {
        return Err(Refused::ForeignCluster(String::from_utf8_lossy(name).into_owned()));
    }
    Ok((*format, body))
}

/// foca's `payload` in a plain (format 1) frame for `cluster`: what a node without keys sends.
pub fn frame_plain(cluster: &str, payload: &[u8]) -> Vec<u8> {
    frame(FORMAT_PLAIN, cluster, payload, 0)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::membership::keys::{Keys, generate};

    fn keys(list: &[&str]) -> Keys {
        Keys::parse_list(&list.join(",")).unwrap()
    }

    fn open(auth: &Auth, cluster: &str, packet: &[u8]) -> Result<Vec<u8>, Refused> {
        let mut scratch = Vec::new();
        auth.open(cluster, packet, &mut scratch).map(<[u8]>::to_vec)
    }

    /// Each way a packet can fail, for the sender `auth` of `mode`.
    fn refusals(sender: &Auth, receiver: &Auth) {
        let payload = b"foca header and updates".to_vec();
        let packet = sender.seal("c", &payload);
        assert_eq!(open(receiver, "c", &packet), Ok(payload.clone()), "the packet as sent is accepted");
        for i in 0..5 {
            let mut tampered = packet.clone();
            tampered[i] ^= 0x01;
            assert!(open(receiver, "c", &tampered).is_err(), "header byte {i} changed");
        }
        for i in 5..packet.len() {
            let mut tampered = packet.clone();
            tampered[i] ^= 0x01;
            assert_eq!(open(receiver, "c", &tampered), Err(Refused::BadMac), "byte {i} changed");
        }
        for cut in 5..packet.len() {
            assert_eq!(open(receiver, "c", &packet[..cut]), Err(Refused::BadMac), "cut at {cut}");
        }
        let mut longer = packet.clone();
        longer.push(0);
        assert_eq!(open(receiver, "c", &longer), Err(Refused::BadMac), "a byte appended");
        let other = Auth::new(keys(&[&generate()]), sender.encrypt, Unauthenticated::Refuse);
        assert_eq!(open(&other, "c", &packet), Err(Refused::BadMac), "another key");
        assert_eq!(open(&Auth::off(), "c", &packet), Err(Refused::BadMac), "a node without keys");
        assert_eq!(open(receiver, "d", &packet), Err(Refused::ForeignCluster("c".into())));
    }

    #[test]
    fn mac_packets_refuse_tampering_truncation_and_other_keys() {
        let k = generate();
        let auth = Auth::new(keys(&[&k]), false, Unauthenticated::Refuse);
        assert_eq!(auth.sends(), "mac");
        refusals(&auth, &auth);
        let packet = auth.seal("c", b"payload");
        assert_eq!(packet.len(), 4 + 1 + 7 + MAC_BYTES);
        assert_eq!(packet[2], FORMAT_MAC);
    }

    #[test]
    fn encrypted_packets_refuse_tampering_truncation_and_other_keys_and_hide_the_payload() {
        let auth = Auth::new(keys(&[&generate()]), true, Unauthenticated::Refuse);
        assert_eq!(auth.sends(), "encrypted");
        refusals(&auth, &auth);
        let payload = b"a recognisable payload, twice: a recognisable payload";
        let (a, b) = (auth.seal("c", payload), auth.seal("c", payload));
        assert_eq!(a.len(), 4 + 1 + NONCE_BYTES + payload.len() + TAG_BYTES);
        assert_ne!(a, b, "a fresh nonce per packet");
        assert!(!a.windows(12).any(|w| payload.windows(12).any(|p| p == w)), "payload visible: {a:?}");
    }

    #[test]
    fn plain_packets_are_refused_where_a_key_is_required() {
        let k = keys(&[&generate()]);
        let plain = frame_plain("c", b"payload");
        assert_eq!(open(&Auth::off(), "c", &plain), Ok(b"payload".to_vec()));
        assert_eq!(Auth::off().seal("c", b"payload"), plain, "no keys: the wire format of before");
        let refuse = Auth::new(k, false, Unauthenticated::Refuse);
        assert_eq!(open(&refuse, "c", &plain), Err(Refused::Unauthenticated));
    }

    #[test]
    fn the_transition_steps_talk_to_their_neighbours() {
        let k = generate();
        let off = Auth::off();
        let send = Auth::new(keys(&[&k]), false, Unauthenticated::Send);
        let accept = Auth::new(keys(&[&k]), true, Unauthenticated::Accept);
        let refuse = Auth::new(keys(&[&k]), false, Unauthenticated::Refuse);
        assert_eq!(send.sends(), "plain");
        // Each step is a rolling change: a node of one step and a node of the next understand
        // each other both ways.
        for (a, b) in [(&off, &send), (&send, &accept), (&accept, &refuse)] {
            for (from, to) in [(a, b), (b, a)] {
                assert_eq!(open(to, "c", &from.seal("c", b"p")), Ok(b"p".to_vec()), "{from:?} -> {to:?}");
            }
        }
        assert_eq!(open(&refuse, "c", &off.seal("c", b"p")), Err(Refused::Unauthenticated));
        assert_eq!(open(&off, "c", &refuse.seal("c", b"p")), Err(Refused::BadMac));
    }

    #[test]
    fn every_configured_key_is_accepted_and_the_first_sends() {
        let (k1, k2) = (generate(), generate());
        for encrypt in [false, true] {
            let old = Auth::new(keys(&[&k1]), encrypt, Unauthenticated::Refuse);
            let both = Auth::new(keys(&[&k1, &k2]), encrypt, Unauthenticated::Refuse);
            let moved = Auth::new(keys(&[&k2, &k1]), encrypt, Unauthenticated::Refuse);
            let new = Auth::new(keys(&[&k2]), encrypt, Unauthenticated::Refuse);
            let ok = |from: &Auth, to: &Auth| open(to, "c", &from.seal("c", b"p")).is_ok();
            assert!(ok(&old, &both) && ok(&both, &old) && ok(&moved, &both) && ok(&both, &moved));
            assert!(ok(&moved, &new) && ok(&new, &moved) && ok(&old, &moved));
            assert!(!ok(&moved, &old), "[k2, k1] sends with k2, which [k1] does not know");
            assert!(!ok(&old, &new) && !ok(&new, &old));
        }
    }

    #[test]
    fn short_and_foreign_frames_are_named() {
        let off = Auth::off();
        assert_eq!(open(&off, "a", b"Wg"), Err(Refused::Malformed("shorter than the frame")));
        assert_eq!(open(&off, "a", b"XX\x01\x00"), Err(Refused::Malformed("bad magic")));
        assert_eq!(open(&off, "a", b"Wg\x09\x00"), Err(Refused::Malformed("unknown format")));
        assert_eq!(open(&off, "a", b"Wg\x01\x05ab"), Err(Refused::Malformed("bad cluster name length")));
        assert_eq!(open(&off, "a", b"Wg\x01\x01bxyz"), Err(Refused::ForeignCluster("b".into())));
        assert_eq!(open(&off, "a", b"Wg\x01\x01axyz"), Ok(b"xyz".to_vec()));
        assert_eq!(open(&off, "a", b"Wg\x02\x01axyz"), Err(Refused::BadMac));
    }

    proptest! {
        #[test]
        fn frames_round_trip(
            cluster in "[a-z0-9_-]{1,64}",
            payload in proptest::collection::vec(any::<u8>(), 0..1400),
            mode in 0..3u8,
        ) {
            let auth = match mode {
                0 => Auth::off(),
                m => Auth::new(keys(&[&generate()]), m == 2, Unauthenticated::Refuse),
            };
            let packet = auth.seal(&cluster, &payload);
            prop_assert!(packet.len() <= payload.len() + MAX_FRAME_BYTES);
            prop_assert_eq!(open(&auth, &cluster, &packet), Ok(payload.clone()));
            let other = format!("{cluster}x");
            prop_assert_eq!(open(&auth, &other, &packet), Err(Refused::ForeignCluster(cluster.clone())));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let auth = Auth::new(keys(&[&generate(), &generate()]), true, Unauthenticated::Accept);
            let _ = open(&auth, "weft", &bytes);
            let _ = open(&Auth::off(), "weft", &bytes);
        }
    }
}

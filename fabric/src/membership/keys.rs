//! Gossip keys: the cluster's shared secrets that authenticate (and optionally encrypt) every
//! gossip packet.
//!
//! A key is 32 random bytes written in standard base64 (44 characters; `weft gossip-key` makes
//! one). A node holds 1 to [`MAX_KEYS`] keys: the first signs or seals what it sends, and every
//! one is tried on what it receives, so a cluster rotates keys without a flag day
//! (docs/operations.md, "Gossip keys").
//!
//! Each configured key is expanded with HKDF-SHA256 into one key for HMAC-SHA256 and one for
//! ChaCha20-Poly1305, so no key serves two algorithms. The key's bytes stay in this module:
//! `Debug` prints only its id (the first 4 bytes of its SHA-256, in hex; it identifies a key
//! without revealing it), and an error names the line or position, never the text.

use base64::Engine as _;
use ring::{aead, digest, hkdf, hmac, rand::SecureRandom as _};

/// Bytes of one gossip key.
pub const KEY_BYTES: usize = 32;
/// Most keys a node holds at once: rotation needs two, and each received packet may be checked
/// against every one.
pub const MAX_KEYS: usize = 4;
/// Largest key file read (a few keys and comments fit many times over).
pub const MAX_KEY_FILE_BYTES: u64 = 4096;
/// HKDF salt: names the protocol, so these keys are of no use to anything else.
const SALT: &[u8] = b"weft gossip keys v1";

/// One gossip key, ready to use. `Debug` shows its id only.
pub struct Key {
    id: [u8; 4],
    mac: hmac::Key,
    aead: aead::LessSafeKey,
}

impl Key {
    /// Derives the working keys from a key's 32 bytes.
    pub fn from_bytes(bytes: &[u8; KEY_BYTES]) -> Self {
        let digest = digest::digest(&digest::SHA256, bytes);
        let mut id = [0u8; 4];
        id.copy_from_slice(&digest.as_ref()[..4]);
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(bytes);
        // expand fails only for outputs longer than 255 hash lengths; these are 32 bytes.
        let mac = hmac::Key::from(prk.expand(&[b"hmac-sha256"], hmac::HMAC_SHA256).expect("32-byte output"));
        let aead = aead::UnboundKey::from(
            prk.expand(&[b"chacha20-poly1305"], &aead::CHACHA20_POLY1305).expect("32-byte output"),
        );
        Self { id, mac, aead: aead::LessSafeKey::new(aead) }
    }

    /// The key's id: 8 hex digits that tell keys apart in logs without revealing them.
    pub fn id(&self) -> String {
        self.id.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The HMAC-SHA256 key derived from it.
    pub(crate) fn mac(&self) -> &hmac::Key {
        &self.mac
    }

    /// The ChaCha20-Poly1305 key derived from it.
    pub(crate) fn aead(&self) -> &aead::LessSafeKey {
        &self.aead
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("id", &self.id()).finish_non_exhaustive()
    }
}

/// A node's gossip keys: at least one, at most [`MAX_KEYS`]; the first is the one it sends with.
#[derive(Debug)]
pub struct Keys(Vec<Key>);

/// Why keys were refused. The message names the line (or position) and never the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A key is not standard base64.
    #[error("{0}: not a base64 key (make one with `weft gossip-key`)")]
    NotBase64(String),
    /// A key decodes to the wrong number of bytes.
    #[error(
        "{place}: decodes to {len} bytes; a gossip key is {KEY_BYTES} bytes (make one with `weft gossip-key`)"
    )]
    Length { place: String, len: usize },
    /// The same key is listed twice.
    #[error("{place}: the same key as {first}")]
    Duplicate { place: String, first: String },
    /// No key at all.
    #[error("holds no key (one base64 key per line; make one with `weft gossip-key`)")]
    Empty,
    /// More keys than a node holds.
    #[error("holds {0} keys; at most {MAX_KEYS} (the first sends, the others are accepted while rotating)")]
    TooMany(usize),
    /// The key file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
}

impl Keys {
    /// Parses a key file's text: one base64 key per line; blank lines and lines starting with
    /// `#` are skipped. Errors name the line.
    pub fn parse_file(text: &str) -> Result<Self, Error> {
        let lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (format!("line {}", i + 1), l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        Self::parse(lines)
    }

    /// Parses a comma-separated list of base64 keys (the `gossip_keys` setting). Errors name the
    /// key's position.
    pub fn parse_list(text: &str) -> Result<Self, Error> {
        let items = text
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .enumerate()
            .map(|(i, k)| (format!("key {}", i + 1), k));
        Self::parse(items)
    }

    fn parse<'a>(items: impl Iterator<Item = (String, &'a str)>) -> Result<Self, Error> {
        let mut raw: Vec<(String, [u8; KEY_BYTES])> = Vec::new();
        let mut count = 0;
        for (place, text) in items {
            count += 1;
            if count > MAX_KEYS {
                continue; // counted for the error below; not decoded
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| Error::NotBase64(place.clone()))?;
            let bytes: [u8; KEY_BYTES] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| Error::Length { place: place.clone(), len: bytes.len() })?;
            if let Some((first, _)) = raw.iter().find(|(_, b)| *b == bytes) {
                return Err(Error::Duplicate { place, first: first.clone() });
            }
            raw.push((place, bytes));
        }
        if count > MAX_KEYS {
            return Err(Error::TooMany(count));
        }
        if raw.is_empty() {
            return Err(Error::Empty);
        }
        Ok(Self(raw.iter().map(|(_, b)| Key::from_bytes(b)).collect()))
    }

    /// Reads and parses a key file (at most [`MAX_KEY_FILE_BYTES`]).
    pub fn read_file(path: &std::path::Path) -> Result<Self, Error> {
        Self::parse_file(&read_key_file(path)?)
    }

    /// The key this node sends with.
    pub fn sender(&self) -> &Key {
        &self.0[0]
    }

    /// Every key accepted on receive, the sender first.
    pub fn all(&self) -> &[Key] {
        &self.0
    }

    /// The keys' ids, the sender first (for logs).
    pub fn ids(&self) -> Vec<String> {
        self.0.iter().map(Key::id).collect()
    }
}

/// The text of a key file, refused if larger than [`MAX_KEY_FILE_BYTES`] or not UTF-8.
pub fn read_key_file(path: &std::path::Path) -> Result<String, Error> {
    let read = |reason: String| Error::Read { path: path.display().to_string(), reason };
    let meta = std::fs::metadata(path).map_err(|e| read(e.to_string()))?;
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(read(format!("{} bytes; a key file holds at most {MAX_KEY_FILE_BYTES}", meta.len())));
    }
    let bytes = std::fs::read(path).map_err(|e| read(e.to_string()))?;
    String::from_utf8(bytes).map_err(|_| read("not UTF-8 text".into()))
}

/// Whether users other than the owner may read `path` (Unix mode bits), so a node can warn.
pub fn readable_by_others(path: &std::path::Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o044 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// A fresh random key in base64, from the operating system's secure random source.
pub fn generate() -> String {
    let mut bytes = [0u8; KEY_BYTES];
    ring::rand::SystemRandom::new().fill(&mut bytes).expect("the system random source works");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_differ() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert_eq!(a.len(), 44);
        let keys = Keys::parse_file(&format!("# rotated 2026-12\n{b}\n\n  {a}  \n")).unwrap();
        assert_eq!(keys.all().len(), 2);
        let only_b = Keys::parse_list(&b).unwrap();
        assert_eq!(keys.sender().id(), only_b.sender().id(), "the first key sends");
        let list = Keys::parse_list(&format!("{b}, {a}")).unwrap();
        assert_eq!(list.ids(), keys.ids());
    }

    #[test]
    fn errors_name_the_line_and_never_the_key() {
        let good = generate();
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        let cases = [
            (format!("{good}\n\n{short}\n"), "line 3: decodes to 16 bytes"),
            (format!("# c\nnot*base64{good}\n"), "line 2: not a base64 key"),
            (format!("{good}\n{good}\n"), "line 2: the same key as line 1"),
            ("# nothing\n\n".to_owned(), "holds no key"),
            (format!("{}\n", [(); 5].map(|_| generate()).join("\n")), "holds 5 keys; at most 4"),
        ];
        for (text, expected) in cases {
            let err = Keys::parse_file(&text).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{err:?} should start with {expected:?}");
            assert!(!err.contains(&good) && !err.contains(&short), "the error shows a key: {err}");
        }
        let err = Keys::parse_list(&format!("{good},{short}")).unwrap_err().to_string();
        assert!(err.starts_with("key 2: decodes to 16 bytes"), "{err}");
    }

    #[test]
    fn debug_shows_ids_only() {
        let text = generate();
        let keys = Keys::parse_list(&text).unwrap();
        let debug = format!("{keys:?}");
        assert!(debug.contains(&keys.sender().id()), "{debug}");
        assert!(!debug.contains(&text), "{debug}");
    }

    #[test]
    fn oversized_key_files_are_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, vec![b'#'; MAX_KEY_FILE_BYTES as usize + 1]).unwrap();
        let err = Keys::read_file(&path).unwrap_err().to_string();
        assert!(err.contains("at most 4096"), "{err}");
        let err = Keys::read_file(&dir.path().join("none")).unwrap_err().to_string();
        assert!(err.starts_with("cannot read"), "{err}");
    }
}

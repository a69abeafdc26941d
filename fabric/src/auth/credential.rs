//! [`Credential`]: the token text a caller presents, `weft_<id>_<secret>`: made here (random
//! id and secret), read here (from a header or a bootstrap file), and checked against the
//! hash the grid keeps.
//!
//! The id is public (lists, logs and the audit trail name tokens by it); the secret is shown
//! once, when the token is made, and kept only as its SHA-256. Secrets are 256 random bits,
//! so one round of SHA-256 is enough: there is nothing to guess a dictionary from.

use std::fmt;

use ring::digest;
use ring::rand::SecureRandom as _;

use super::Unauthenticated;
use crate::grid::token::{ID_LEN, SecretHash};

/// What every token text starts with.
pub const PREFIX: &str = "weft_";
/// Longest token text read, in bytes (longer is refused before it is hashed).
pub const MAX_TOKEN_BYTES: usize = 512;
/// Shortest secret accepted, in characters (generated ones have 64).
pub const MIN_SECRET_CHARS: usize = 16;
/// Random bytes in a generated id (shown as twice as many hex digits).
const ID_BYTES: usize = 6;
/// Random bytes in a generated secret.
const SECRET_BYTES: usize = 32;

/// A token's id and secret. `Debug` shows the id only.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    id: String,
    secret: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential").field("id", &self.id).field("secret", &"<redacted>").finish()
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new().fill(&mut buf).expect("the system random source works");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl Credential {
    /// A new random credential: a 12-digit hex id and a 256-bit secret.
    pub fn generate() -> Self {
        Self { id: random_hex(ID_BYTES), secret: random_hex(SECRET_BYTES) }
    }

    /// Reads token text (`weft_<id>_<secret>`, surrounding whitespace ignored). The refusal
    /// says what is wrong with it, never what it holds.
    pub fn parse(text: &str) -> Result<Self, Unauthenticated> {
        let malformed =
            |why: &str| Unauthenticated::Malformed(format!("{why}; a token is weft_<id>_<secret>"));
        let text = text.trim();
        if text.len() > MAX_TOKEN_BYTES {
            return Err(malformed(&format!("the token is over {MAX_TOKEN_BYTES} bytes")));
        }
        let rest =
            text.strip_prefix(PREFIX).ok_or_else(|| malformed("the token does not start with weft_"))?;
        let (id, secret) = rest.split_once('_').ok_or_else(|| malformed("the token has no secret part"))?;
        if !ID_LEN.contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(malformed(&format!(
                "the token's id is not {} to {} characters of [A-Za-z0-9]",
                ID_LEN.start(),
                ID_LEN.end()
            )));
        }
        if secret.len() < MIN_SECRET_CHARS
            || !secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(malformed(&format!(
                "the token's secret is not {MIN_SECRET_CHARS} or more characters of [A-Za-z0-9_-]"
            )));
        }
        Ok(Self { id: id.to_owned(), secret: secret.to_owned() })
    }

    /// The public id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The whole token text, to hand to its owner once (never to a log).
    pub fn reveal(&self) -> String {
        format!("{PREFIX}{}_{}", self.id, self.secret)
    }

    /// The SHA-256 of the secret, as the grid keeps it.
    pub fn hash(&self) -> SecretHash {
        let d = digest::digest(&digest::SHA256, self.secret.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        SecretHash(out)
    }

    /// Whether the secret's hash is `stored`, compared in constant time.
    pub fn matches(&self, stored: &SecretHash) -> bool {
        let ours = self.hash();
        let diff = ours.0.iter().zip(stored.0.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_credentials_read_back_and_match_only_their_hash() {
        let c = Credential::generate();
        assert_eq!(c.id().len(), 2 * ID_BYTES);
        let text = c.reveal();
        assert!(text.starts_with("weft_"), "{text}");
        let read = Credential::parse(&format!("  {text}\n")).unwrap();
        assert_eq!(read, c);
        assert!(read.matches(&c.hash()));
        assert!(!read.matches(&Credential::generate().hash()));
        assert_ne!(Credential::generate(), c, "random");
        let shown = format!("{c:?}");
        assert!(shown.contains(c.id()) && !shown.contains(&text[5 + c.id().len() + 1..]), "{shown}");
    }

    #[test]
    fn malformed_text_is_refused_naming_the_problem_and_never_echoed() {
        let secret = "s3cr3t-s3cr3t-s3cr3t";
        for (text, why) in [
            (format!("wft_abcd_{secret}"), "does not start with weft_"),
            ("weft_abcd".to_owned(), "no secret part"),
            (format!("weft_a_{secret}"), "id is not 4 to 64"),
            (format!("weft_ab-cd_{secret}"), "id is not"),
            ("weft_abcd_short".to_owned(), "secret is not 16 or more"),
            (format!("weft_abcd_{secret} x"), "secret is not"),
            (format!("weft_abcd_{}", "x".repeat(600)), "over 512 bytes"),
        ] {
            let e = Credential::parse(&text).unwrap_err();
            assert_eq!(e.reason(), "malformed");
            let m = e.to_string();
            assert!(m.contains(why), "{text}: {m}");
            assert!(!m.contains(secret), "{m}");
        }
        // A secret may hold underscores: only the first one ends the id.
        let c = Credential::parse(&format!("weft_abcd_{secret}_more")).unwrap();
        assert_eq!(c.id(), "abcd");
    }
}

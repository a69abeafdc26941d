//! Bearer tokens as the grid keeps them: [`Token`] (id, name, role, scopes, the SHA-256 of the
//! secret, when it was made and when it runs out), what a create asks for ([`NewToken`]) and
//! the bounds on both.
//!
//! ```text
//!   CreateToken(NewToken) ──► held (id) ──RevokeToken(id)──► revoked: gone, its id remembered
//!                              │                              (the newest MAX_REVOKED ids)
//!                              └── its expiry passes: refused by the verifier, still listed
//! ```
//!
//! The grid never sees a secret: a create carries its hash, computed by the node that made
//! the token. The hash is not shown by `Debug` either. Expiry is judged by the verifier
//! (`auth::TokenVerifier`) against the wall clock; an expired token stays in the grid, listed
//! as expired, until revoked. A revoked token's id is remembered (the newest
//! [`MAX_REVOKED`] of them), so a later use is refused as "revoked" and the id is never given
//! to another token; past that a use of an older revoked id is refused as "unknown".
//!
//! This file holds the types and bounds; how `apply` changes tokens is in `tokens.rs`.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Error, namespace};
use crate::auth::{Role, Scopes};

/// Most tokens a cluster holds (a create past this is refused).
pub const MAX_TOKENS: usize = 10_000;
/// Most revoked ids remembered, to say "revoked" rather than "unknown" (the oldest go first).
pub const MAX_REVOKED: usize = 10_000;
/// Most entries in one scope list (`serve`, `call`, `namespaces`, `streams`).
pub const MAX_SCOPE_ENTRIES: usize = 64;
/// Longest scope entry, in bytes.
pub const MAX_SCOPE_ENTRY_BYTES: usize = 256;
/// Shortest and longest token id, in characters of `[A-Za-z0-9]`.
pub const ID_LEN: std::ops::RangeInclusive<usize> = 4..=64;
/// Longest a token may live: ten years.
pub const MAX_EXPIRES_IN_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// The SHA-256 of a token's secret. `Debug` does not show it.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretHash(pub [u8; 32]);

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One token, as the grid keeps it (and, without its hash, as `List` shows it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Public: the part of the token text before the secret.
    pub id: String,
    /// What it is for (`ci-deployer`, `orders-agent`).
    pub name: String,
    pub role: Role,
    pub scopes: Scopes,
    /// SHA-256 of the secret.
    pub secret_hash: SecretHash,
    /// When it was created (leader-stamped ms since the Unix epoch).
    pub created_at_ms: u64,
    /// When it stops being accepted (leader-stamped at creation); `None`: never.
    pub expires_at_ms: Option<u64>,
}

impl Token {
    /// Whether it has run out at `now_ms`.
    pub fn expired_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| now_ms >= at)
    }
}

/// What a create asks for. The id and the hash come from the node that made the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub scopes: Scopes,
    pub secret_hash: SecretHash,
    /// How long it lives from the entry's time; `None`: until revoked.
    pub expires_in_ms: Option<u64>,
}

impl NewToken {
    /// Checks the id, the name, the scopes and the lifetime; the error names the field.
    pub fn validate_shape(&self) -> Result<(), Error> {
        validate_id(&self.id)?;
        super::validate_name("token", &self.name)?;
        let s = &self.scopes;
        for (field, list, agents) in [
            ("serve", &s.serve, true),
            ("call", &s.call, true),
            ("namespaces", &s.namespaces, false),
            ("streams", &s.streams, false),
        ] {
            validate_scope(field, list, agents)?;
        }
        if !s.serve.is_empty() && self.role != Role::Agent {
            return Err(invalid(format!(
                "serve: only role agent serves agents; this token's role is {}",
                self.role
            )));
        }
        if let Some(ms) = self.expires_in_ms
            && !(1..=MAX_EXPIRES_IN_MS).contains(&ms)
        {
            return Err(invalid(format!(
                "expires_in_ms: {ms} is out of range; expected 1 to {MAX_EXPIRES_IN_MS} (ten years), or none"
            )));
        }
        Ok(())
    }
}

fn invalid(reason: String) -> Error {
    Error::InvalidToken { reason }
}

/// Checks a token id: [`ID_LEN`] characters of `[A-Za-z0-9]`.
pub fn validate_id(id: &str) -> Result<(), Error> {
    if ID_LEN.contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Ok(());
    }
    Err(invalid(format!(
        "id: '{}' is not {} to {} characters of [A-Za-z0-9]",
        namespace::clip(id),
        ID_LEN.start(),
        ID_LEN.end()
    )))
}

/// Checks one scope list: at most [`MAX_SCOPE_ENTRIES`] entries, each `*` or, for agent lists,
/// an agent name, for prefix lists 1 to [`MAX_SCOPE_ENTRY_BYTES`] bytes without whitespace,
/// control characters or commas.
fn validate_scope(field: &str, list: &[String], agents: bool) -> Result<(), Error> {
    if list.len() > MAX_SCOPE_ENTRIES {
        return Err(invalid(format!("{field}: {} entries; the limit is {MAX_SCOPE_ENTRIES}", list.len())));
    }
    for entry in list {
        if entry == "*" {
            continue;
        }
        let ok = if agents {
            namespace::valid_segment(entry)
        } else {
            !entry.is_empty()
                && entry.len() <= MAX_SCOPE_ENTRY_BYTES
                && !entry.chars().any(|c| c.is_whitespace() || c.is_control() || c == ',')
        };
        if !ok {
            let expected = if agents {
                "an agent name (1-128 characters of [A-Za-z0-9._-]) or *".to_owned()
            } else {
                format!("a prefix of 1 to {MAX_SCOPE_ENTRY_BYTES} bytes without spaces or commas, or *")
            };
            return Err(invalid(format!("{field}: '{}' is not {expected}", namespace::clip(entry))));
        }
    }
    Ok(())
}

//! [`TokenVerifier`]: the [`Verifier`] a node with auth on gives its gate. It checks a token
//! against this node's applied replica of the grid: the id must be held (a revoke is a log
//! entry, so every node refuses the token once it has applied it), the secret's SHA-256 must
//! match (compared in constant time), and the expiry must be ahead of this node's wall clock.
//!
//! ```text
//!   "weft_<id>_<secret>" ─ parse ─► grid.token(id)? ─ no ─► revoked id remembered? revoked : unknown
//!                                        │ yes
//!                                        ├─ sha256(secret) ≠ stored hash ─► bad secret
//!                                        ├─ expires_at_ms ≤ now (wall clock) ─► expired
//!                                        └─► Principal { id, name, role, scopes }
//! ```

use std::sync::Arc;

use super::{Credential, Principal, Unauthenticated, Verifier};
use crate::metrics::Registry;
use crate::raft::state_machine;

/// Milliseconds since the Unix epoch, from the wall clock (or a test's clock).
pub type Clock = fn() -> u64;

/// The wall clock, in ms since the Unix epoch.
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Checks tokens against this node's applied grid; counts refusals in the node's metrics.
pub struct TokenVerifier {
    applied: state_machine::Handle,
    metrics: Arc<Registry>,
    clock: Clock,
}

impl TokenVerifier {
    /// A verifier over `applied`, judging expiry by the wall clock.
    pub fn new(applied: state_machine::Handle, metrics: Arc<Registry>) -> Self {
        Self::with_clock(applied, metrics, wall_clock_ms)
    }

    /// A verifier judging expiry by `clock`.
    pub fn with_clock(applied: state_machine::Handle, metrics: Arc<Registry>, clock: Clock) -> Self {
        Self { applied, metrics, clock }
    }
}

impl Verifier for TokenVerifier {
    fn verify(&self, text: &str) -> Result<Principal, Unauthenticated> {
        let credential = Credential::parse(text)?;
        let id = credential.id();
        let found = self.applied.read(|a| match a.grid.token(id) {
            Some(token) => Ok(token.clone()),
            None => Err(a.grid.token_revoked(id)),
        });
        let token = match found {
            Ok(token) => token,
            Err(true) => return Err(Unauthenticated::Revoked { id: id.to_owned() }),
            Err(false) => return Err(Unauthenticated::Unknown { id: id.to_owned() }),
        };
        // The secret first: a caller without it learns nothing about the token's expiry.
        if !credential.matches(&token.secret_hash) {
            return Err(Unauthenticated::BadSecret { id: token.id });
        }
        if let Some(expired_at_ms) = token.expires_at_ms
            && (self.clock)() >= expired_at_ms
        {
            return Err(Unauthenticated::Expired { id: token.id, expired_at_ms });
        }
        Ok(Principal { token_id: token.id, name: token.name, role: token.role, scopes: token.scopes })
    }

    fn refused(&self, why: &Unauthenticated) {
        self.metrics.auth_refused.count(why.reason());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Role, Scopes};
    use crate::grid::token::NewToken;
    use crate::grid::{Command, Grid};

    fn create(credential: &Credential, name: &str, expires_in_ms: Option<u64>) -> Command {
        Command::CreateToken(Box::new(NewToken {
            id: credential.id().to_owned(),
            name: name.into(),
            role: Role::Client,
            scopes: Scopes { call: vec!["echo".into()], ..Scopes::default() },
            secret_hash: credential.hash(),
            expires_in_ms,
        }))
    }

    /// A verifier whose wall clock reads 5 000 ms, over a grid (clock 1 000) holding `live`
    /// (no expiry), `short` (expires at 3 000) and a revoked `gone`.
    fn verifier(live: &Credential, short: &Credential, gone: &Credential) -> (TokenVerifier, Arc<Registry>) {
        let mut grid = Grid::default();
        let out = grid.apply_batch(
            1_000,
            &[
                create(live, "live", None),
                create(short, "short", Some(2_000)),
                create(gone, "gone", None),
                Command::RevokeToken { id: gone.id().to_owned() },
            ],
        );
        assert!(out.iter().all(Result::is_ok), "{out:?}");
        let metrics = Arc::new(Registry::default());
        let v = TokenVerifier::with_clock(state_machine::Handle::with_grid(grid), metrics.clone(), || 5_000);
        (v, metrics)
    }

    #[test]
    fn valid_tokens_become_principals_and_each_bad_one_is_refused_with_its_reason() {
        let (live, short, gone) = (Credential::generate(), Credential::generate(), Credential::generate());
        let (v, _) = verifier(&live, &short, &gone);
        let p = v.verify(&live.reveal()).unwrap();
        assert_eq!((p.token_id.as_str(), p.name.as_str(), p.role), (live.id(), "live", Role::Client));
        assert_eq!(p.scopes.call, vec!["echo".to_owned()]);

        let wrong_secret = format!("weft_{}_{}", live.id(), "0".repeat(64));
        let unknown = Credential::generate();
        for (text, reason) in [
            ("nonsense".to_owned(), "malformed"),
            (unknown.reveal(), "unknown"),
            (wrong_secret, "bad_secret"),
            (short.reveal(), "expired"),
            (gone.reveal(), "revoked"),
        ] {
            let e = v.verify(&text).unwrap_err();
            assert_eq!(e.reason(), reason, "{text}: {e}");
            assert!(
                !e.to_string().contains(&text[text.len().saturating_sub(20)..]),
                "echoes the secret: {e}"
            );
        }
        assert!(v.verify(&short.reveal()).unwrap_err().to_string().contains("expired at 3000"));
        // A wrong secret for an expired token says the secret is wrong, not when it expired.
        let e = v.verify(&format!("weft_{}_{}", short.id(), "0".repeat(64))).unwrap_err();
        assert_eq!(e.reason(), "bad_secret");
    }

    #[test]
    fn refusals_are_counted_by_reason() {
        let (live, short, gone) = (Credential::generate(), Credential::generate(), Credential::generate());
        let (v, metrics) = verifier(&live, &short, &gone);
        for text in [gone.reveal(), gone.reveal(), short.reveal()] {
            let why = v.verify(&text).unwrap_err();
            v.refused(&why);
        }
        let mut t = crate::metrics::Text::default();
        metrics.render(&mut t, "1");
        let text = t.finish();
        assert!(text.contains("weft_auth_refused_total{node=\"1\",reason=\"revoked\"} 2"), "{text}");
        assert!(text.contains("weft_auth_refused_total{node=\"1\",reason=\"expired\"} 1"), "{text}");
    }
}

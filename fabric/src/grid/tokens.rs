//! How `apply` changes tokens: create (the same create again is a no-op, so a bootstrap
//! retried after an unknown outcome is harmless) and revoke. The types, the bounds and the
//! life of a token are in `token.rs`.

use super::events::{Event, Outbox};
use super::token::{MAX_REVOKED, MAX_TOKENS, NewToken, Token};
use super::{Error, Grid, Output, Tokens};

impl Grid {
    /// Applies `CreateToken`: a new id is stored with the entry's time (and its expiry from
    /// it); an id held with the same secret, name, role and scopes answers `created: false`;
    /// any other use of a held or revoked id is refused.
    pub(super) fn create_token(&mut self, new: &NewToken) -> Result<Output, Error> {
        let now = self.now_ms;
        let Tokens { held, revoked, .. } = &mut self.tokens;
        if let Some(existing) = held.get(&new.id) {
            let same = existing.secret_hash == new.secret_hash
                && existing.name == new.name
                && existing.role == new.role
                && existing.scopes == new.scopes;
            return if same {
                Ok(Output::Token { id: new.id.clone(), created: false })
            } else {
                Err(Error::TokenExists { id: new.id.clone() })
            };
        }
        if revoked.contains(&new.id) {
            return Err(Error::InvalidToken {
                reason: format!("id: '{}' belonged to a revoked token; ids are not used again", new.id),
            });
        }
        if held.len() >= MAX_TOKENS {
            return Err(Error::TooMany {
                what: "tokens".into(),
                count: held.len(),
                limit: MAX_TOKENS,
                setting: "MAX_TOKENS, fixed: revoke tokens no longer used".into(),
            });
        }
        let token = Token {
            id: new.id.clone(),
            name: new.name.clone(),
            role: new.role,
            scopes: new.scopes.clone(),
            secret_hash: new.secret_hash,
            created_at_ms: now,
            expires_at_ms: new.expires_in_ms.map(|ms| now.saturating_add(ms)),
        };
        held.insert(new.id.clone(), token);
        Ok(Output::Token { id: new.id.clone(), created: true })
    }

    /// Applies `RevokeToken`: the token is removed and its id remembered as revoked (the
    /// oldest remembered id is forgotten past [`MAX_REVOKED`]). Revoking a revoked id again
    /// answers `existed: false`; an id never seen is refused. A revoke that removed a token
    /// tells the nodes ([`Event::TokenRevoked`]), which end what it had opened.
    pub(super) fn revoke_token(&mut self, id: &str, out: &mut Outbox) -> Result<Output, Error> {
        let Tokens { held, revoked, revoked_order } = &mut self.tokens;
        if held.remove(id).is_none() {
            return if revoked.contains(id) {
                Ok(Output::TokenRevoked { existed: false })
            } else {
                Err(Error::UnknownToken { id: id.to_owned() })
            };
        }
        revoked.insert(id.to_owned());
        revoked_order.push_back(id.to_owned());
        while revoked_order.len() > MAX_REVOKED {
            if let Some(oldest) = revoked_order.pop_front() {
                revoked.remove(&oldest);
            }
        }
        out.events.push(Event::TokenRevoked { id: id.to_owned() });
        Ok(Output::TokenRevoked { existed: true })
    }
}

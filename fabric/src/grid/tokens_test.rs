//! Tests of tokens in the grid: create (stamped by the entry's time, the same create again a
//! no-op, another with a taken id refused), revoke (the id remembered, bounded), bad requests
//! refused naming the field and changing nothing, the bound on tokens held, audited creates
//! and revokes recorded without the hash; then property tests: tokens follow a model, and a
//! restored snapshot plus the rest of the log equals the whole log.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::audit::{AUDIT_STREAM, Actor, Record};
use super::test_harness::{Harness, check_replay};
use super::token::{MAX_EXPIRES_IN_MS, MAX_REVOKED, MAX_SCOPE_ENTRIES, MAX_TOKENS, NewToken, SecretHash};
use super::*;
use crate::auth::{Role, Scopes};

fn new_token(id: &str, secret: u8) -> NewToken {
    NewToken {
        id: id.into(),
        name: format!("{id}-name"),
        role: Role::Client,
        scopes: Scopes { call: vec!["echo".into()], streams: vec!["app.".into()], ..Scopes::default() },
        secret_hash: SecretHash([secret; 32]),
        expires_in_ms: None,
    }
}

fn create(new: NewToken) -> Command {
    Command::CreateToken(Box::new(new))
}

fn revoke(id: &str) -> Command {
    Command::RevokeToken { id: id.into() }
}

#[test]
fn create_stamps_the_entry_time_and_the_same_create_again_changes_nothing() {
    let mut h = Harness::new();
    let mut new = new_token("tok1", 7);
    new.expires_in_ms = Some(60_000);
    h.at(2_000);
    assert_eq!(h.ok(create(new.clone())), Output::Token { id: "tok1".into(), created: true });
    let t = h.grid.token("tok1").expect("stored").clone();
    assert_eq!((t.created_at_ms, t.expires_at_ms), (2_000, Some(62_000)));
    assert_eq!((t.name.as_str(), t.role, &t.scopes), ("tok1-name", Role::Client, &new.scopes));
    assert_eq!(t.secret_hash, SecretHash([7; 32]));
    assert!(!t.expired_at(61_999) && t.expired_at(62_000));

    // A retried create (the bootstrap's, or one whose outcome was unknown) is a no-op.
    let before = h.grid.clone();
    assert_eq!(h.at(3_000).ok(create(new.clone())), Output::Token { id: "tok1".into(), created: false });
    assert_eq!(h.grid.token("tok1"), before.token("tok1"), "the first create's record stays");

    // The same id with another secret, name, role or scopes is refused.
    let other_secret = NewToken { secret_hash: SecretHash([8; 32]), ..new.clone() };
    let other_role = NewToken { role: Role::Operator, ..new.clone() };
    for other in [other_secret, other_role] {
        assert_eq!(h.apply(create(other)), Err(Error::TokenExists { id: "tok1".into() }));
        assert_eq!(h.grid.token("tok1"), before.token("tok1"));
    }
    assert_eq!(h.grid.token_count(), 1);
}

#[test]
fn revoke_removes_the_token_and_remembers_its_id() {
    let mut h = Harness::new();
    h.ok(create(new_token("tok1", 1)));
    h.ok(create(new_token("tok2", 2)));
    assert_eq!(h.ok(revoke("tok1")), Output::TokenRevoked { existed: true });
    assert_eq!(h.grid.token("tok1"), None);
    assert!(h.grid.token_revoked("tok1") && !h.grid.token_revoked("tok2"));
    assert_eq!(h.grid.tokens_after(None).map(|t| t.id.as_str()).collect::<Vec<_>>(), ["tok2"]);
    // The nodes are told, so they end the streams it opened.
    let told = |h: &Harness| {
        h.events.iter().filter(|e| matches!(e, Event::TokenRevoked { id } if id == "tok1")).count()
    };
    assert_eq!(told(&h), 1);
    // Again: nothing to do, and said so (and nobody told again); an id never seen is refused.
    assert_eq!(h.ok(revoke("tok1")), Output::TokenRevoked { existed: false });
    assert_eq!(h.apply(revoke("nope")), Err(Error::UnknownToken { id: "nope".into() }));
    assert_eq!(told(&h), 1);
    // A revoked id is never given to another token.
    let again = h.apply(create(new_token("tok1", 1))).unwrap_err();
    assert!(matches!(&again, Error::InvalidToken { reason } if reason.contains("revoked")), "{again:?}");
    assert_eq!(h.grid.token("tok1"), None);
}

#[test]
fn listing_pages_in_id_order() {
    let mut h = Harness::new();
    for id in ["tokc", "toka", "tokb"] {
        h.ok(create(new_token(id, 1)));
    }
    let ids = |after| h.grid.tokens_after(after).map(|t| t.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(None), ["toka", "tokb", "tokc"]);
    assert_eq!(ids(Some("toka")), ["tokb", "tokc"]);
    assert_eq!(ids(Some("tokc")), Vec::<String>::new());
}

#[test]
fn bad_token_requests_are_refused_naming_the_field_and_change_nothing() {
    let mut h = Harness::new();
    h.ok(create(new_token("tok1", 1)));
    let before = h.grid.clone();
    let with = |f: &dyn Fn(&mut NewToken)| {
        let mut n = new_token("tok2", 2);
        f(&mut n);
        create(n)
    };
    let many: Vec<String> = (0..=MAX_SCOPE_ENTRIES).map(|i| format!("a{i}")).collect();
    let cases: Vec<(Command, &str)> = vec![
        (with(&|n| n.id = "ab".into()), "id: 'ab' is not 4 to 64"),
        (with(&|n| n.id = "ab_cd".into()), "id: 'ab_cd'"),
        (with(&|n| n.id = "x".repeat(65)), "id:"),
        (with(&|n| n.name = String::new()), "invalid token name ''"),
        (with(&|n| n.name = "two words".into()), "invalid token name 'two words'"),
        (with(&|n| n.scopes.call = many.clone()), "call: 65 entries; the limit is 64"),
        (with(&|n| n.scopes.call = vec!["a/b".into()]), "call: 'a/b' is not an agent name"),
        (with(&|n| n.scopes.namespaces = vec!["shared/a b".into()]), "namespaces: 'shared/a b'"),
        (with(&|n| n.scopes.streams = vec!["a,b".into()]), "streams: 'a,b'"),
        (with(&|n| n.scopes.streams = vec![String::new()]), "streams: ''"),
        (with(&|n| n.scopes.streams = vec!["s".repeat(257)]), "streams:"),
        (with(&|n| n.scopes.serve = vec!["echo".into()]), "serve: only role agent serves agents"),
        (with(&|n| n.expires_in_ms = Some(0)), "expires_in_ms: 0 is out of range"),
        (with(&|n| n.expires_in_ms = Some(MAX_EXPIRES_IN_MS + 1)), "expires_in_ms:"),
        (revoke("no pe"), "id: 'no pe'"),
    ];
    for (command, expected) in cases {
        let what = format!("{command:?}");
        let refused = h.apply(command.clone()).unwrap_err();
        assert!(refused.to_string().contains(expected), "{what}: {refused} should say {expected:?}");
        assert_eq!(command.validate(&Limits::default()).unwrap_err(), refused, "{what} at proposal");
        assert_eq!(h.grid.token_count(), before.token_count(), "{what} changed the grid");
        assert_eq!(h.grid.token("tok1"), before.token("tok1"));
    }
    // The good ones pass: agents serve, `*` matches all, the longest life.
    let agent = with(&|n| {
        n.role = Role::Agent;
        n.scopes.serve = vec!["*".into(), "orders".into()];
        n.expires_in_ms = Some(MAX_EXPIRES_IN_MS);
    });
    assert!(agent.validate(&Limits::default()).is_ok());
    assert!(h.apply(agent).is_ok());
}

#[test]
fn at_most_max_tokens_are_held() {
    let mut g = Grid::default();
    let creates: Vec<Command> = (0..MAX_TOKENS).map(|i| create(new_token(&format!("tok{i}"), 1))).collect();
    assert!(g.apply_batch(0, &creates).iter().all(Result::is_ok));
    let more = g.apply_batch(0, &[create(new_token("onemore", 1))]);
    assert!(
        matches!(&more[0], Err(Error::TooMany { limit: MAX_TOKENS, what, .. }) if what == "tokens"),
        "{more:?}"
    );
    assert!(more[0].as_ref().unwrap_err().to_string().contains("revoke tokens no longer used"));
    // The same create again is still answered, and a revoke makes room.
    assert_eq!(
        g.apply_batch(0, &[create(new_token("tok0", 1))])[0],
        Ok(Output::Token { id: "tok0".into(), created: false })
    );
    let out = g.apply_batch(0, &[revoke("tok0"), create(new_token("onemore", 1))]);
    assert!(out.iter().all(Result::is_ok), "{out:?}");
}

#[test]
fn only_the_newest_revoked_ids_are_remembered() {
    let mut g = Grid::default();
    let n = MAX_REVOKED + 1;
    let mut log = Vec::new();
    for i in 0..n {
        log.push(create(new_token(&format!("tok{i}"), 1)));
        log.push(revoke(&format!("tok{i}")));
    }
    assert!(g.apply_batch(0, &log).iter().all(Result::is_ok));
    assert_eq!(g.token_count(), 0);
    assert!(!g.token_revoked("tok0"), "the oldest is forgotten");
    assert!(g.token_revoked("tok1") && g.token_revoked(&format!("tok{}", n - 1)));
    assert_eq!(g.apply_batch(0, &[revoke("tok0")])[0], Err(Error::UnknownToken { id: "tok0".into() }));
}

#[test]
fn audited_creates_and_revokes_are_recorded_without_the_hash() {
    let mut h = Harness::new();
    let actor = Actor { principal: "token adm1 (root)".into(), role: "admin".into(), node: 3 };
    let audited = |c| Command::Audited { actor: actor.clone(), command: Box::new(c) };
    let mut new = new_token("tok1", 0xab);
    new.name = "ci".into();
    h.ok(audited(create(new.clone())));
    h.ok(audited(create(new)));
    h.ok(audited(revoke("tok1")));
    assert!(h.apply(audited(revoke("nope"))).is_err());
    let stream = h.grid.stream(AUDIT_STREAM).expect("the audit stream");
    let raw: Vec<String> =
        stream.items.values().map(|i| String::from_utf8(i.payload.data.to_vec()).unwrap()).collect();
    let records: Vec<Record> = raw.iter().map(|r| serde_json::from_str(r).unwrap()).collect();
    let seen: Vec<(&str, &str, &str)> =
        records.iter().map(|r| (r.operation.as_str(), r.target.as_str(), r.outcome.as_str())).collect();
    assert_eq!(
        seen,
        [
            ("token.create", "token tok1 (ci), role client", "ok"),
            ("token.create", "token tok1 (ci), role client", "ok: it existed already"),
            ("token.revoke", "token tok1", "ok"),
            ("token.revoke", "token nope", "no token 'nope' (never created, or revoked)"),
        ]
    );
    assert!(records.iter().all(|r| r.principal == "token adm1 (root)" && r.role == "admin"));
    for r in &raw {
        assert!(!r.contains("171") && !r.contains("abab") && !r.contains("secret"), "{r}");
    }
    let shown = format!("{:?}", create(new_token("tok1", 0xab)));
    assert!(shown.contains("<redacted>") && !shown.contains("171"), "{shown}");
}

// ---- properties --------------------------------------------------------------------------

const IDS: [&str; 3] = ["toka", "tokb", "tokc"];

fn arb_command() -> impl Strategy<Value = Command> {
    let id = prop::sample::select(IDS.to_vec());
    prop_oneof![
        3 => (id.clone(), 0u8..2, prop::option::of(1u64..500)).prop_map(|(id, secret, expires_in_ms)| {
            create(NewToken { expires_in_ms, ..new_token(id, secret) })
        }),
        2 => id.prop_map(revoke),
        1 => (1u64..3).prop_map(|limit| Command::Tick { limit }),
    ]
}

fn arb_log() -> impl Strategy<Value = Vec<(u64, Vec<Command>)>> {
    prop::collection::vec((0u64..600, prop::collection::vec(arb_command(), 0..4)), 0..40)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Restoring a snapshot taken anywhere and replaying the rest equals replaying the whole
    /// log (grid and responses), and two replicas agree.
    #[test]
    fn replay_equals_snapshot_plus_replay(log in arb_log(), cut in any::<prop::sample::Index>()) {
        check_replay(&log, cut.index(log.len() + 1))?;
    }

    /// Against a model (id -> (secret, expires_at) held, ids revoked): creates, repeats,
    /// conflicts and revokes answer as the model says, and the grid holds what it holds.
    #[test]
    fn tokens_follow_the_model(log in arb_log()) {
        let mut grid = Grid::default();
        let mut held: BTreeMap<String, (u8, Option<u64>)> = BTreeMap::new();
        let mut revoked: Vec<String> = Vec::new();
        let mut now = 0u64;
        for (stamp, cmds) in &log {
            now = now.max(*stamp);
            grid.advance_clock(*stamp);
            for cmd in cmds {
                let result = grid.apply(cmd);
                match cmd {
                    Command::CreateToken(new) => {
                        let secret = new.secret_hash.0[0];
                        match held.get(&new.id) {
                            Some((s, _)) if *s == secret => prop_assert_eq!(&result, &Ok(Output::Token { id: new.id.clone(), created: false })),
                            Some(_) => prop_assert_eq!(&result, &Err(Error::TokenExists { id: new.id.clone() })),
                            None if revoked.contains(&new.id) => prop_assert!(matches!(&result, Err(Error::InvalidToken { .. })), "{:?}", result),
                            None => {
                                prop_assert_eq!(&result, &Ok(Output::Token { id: new.id.clone(), created: true }));
                                held.insert(new.id.clone(), (secret, new.expires_in_ms.map(|ms| now + ms)));
                            }
                        }
                    }
                    Command::RevokeToken { id } => {
                        if held.remove(id).is_some() {
                            prop_assert_eq!(&result, &Ok(Output::TokenRevoked { existed: true }));
                            revoked.push(id.clone());
                        } else if revoked.contains(id) {
                            prop_assert_eq!(&result, &Ok(Output::TokenRevoked { existed: false }));
                        } else {
                            prop_assert_eq!(&result, &Err(Error::UnknownToken { id: id.clone() }));
                        }
                    }
                    _ => {}
                }
                let in_grid: BTreeMap<String, (u8, Option<u64>)> = grid
                    .tokens_after(None)
                    .map(|t| (t.id.clone(), (t.secret_hash.0[0], t.expires_at_ms)))
                    .collect();
                prop_assert_eq!(&in_grid, &held);
                for id in IDS {
                    prop_assert_eq!(grid.token_revoked(id), revoked.iter().any(|r| r == id));
                }
            }
        }
    }
}

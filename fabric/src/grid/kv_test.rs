//! Tests of key/value state: versions, conditions, time to live and listing; and the property
//! tests that hold the grid to determinism with key/value commands: replay equals snapshot
//! plus replay, two replicas of one log are equal, compare-and-set agrees with a model.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::queries::MAX_LIST_SKIPPED;
use super::*;
use crate::codec;

const NS: [&str; 2] = ["shared/a", "instance/agent/i1"];
const KEYS: [&str; 4] = ["k1", "k2", "p/x", "p/y"];

fn limits() -> Limits {
    Limits { max_value_bytes: 16, max_key_bytes: 8, max_list_page: 10, ..Limits::default() }
}

impl Grid {
    /// What a proposing node does: validate against the limits, then apply.
    fn apply_checked(&mut self, command: &Command, limits: &Limits) -> Result<Output, Error> {
        command.validate(limits)?;
        self.apply(command)
    }
}

fn put(ns: &str, key: &str, value: &[u8]) -> Command {
    Command::Put {
        namespace: ns.into(),
        key: key.into(),
        value: value.to_vec(),
        ttl_ms: None,
        if_absent: false,
    }
}

fn cas(ns: &str, key: &str, expected: u64, value: &[u8]) -> Command {
    Command::CompareAndSet {
        namespace: ns.into(),
        key: key.into(),
        expected_version: expected,
        value: value.to_vec(),
        ttl_ms: None,
    }
}

#[test]
fn put_get_delete() {
    let mut g = Grid::default();
    let l = limits();
    assert_eq!(g.apply_checked(&put(NS[0], "k1", b"v"), &l), Ok(Output::Written { version: 1 }));
    assert_eq!(g.get(NS[0], "k1").unwrap().data, b"v");
    assert_eq!(g.get(NS[1], "k1"), None, "namespaces are separate");
    let del = Command::Delete { namespace: NS[0].into(), key: "k1".into(), expected_version: None };
    assert_eq!(g.apply_checked(&del, &l), Ok(Output::Deleted { existed: true }));
    assert_eq!(g.apply_checked(&del, &l), Ok(Output::Deleted { existed: false }));
    assert_eq!(g.get(NS[0], "k1"), None);
}

#[test]
fn versions_are_never_reused() {
    let mut g = Grid::default();
    let l = limits();
    g.apply_checked(&put(NS[0], "k1", b"a"), &l).unwrap();
    let del = Command::Delete { namespace: NS[0].into(), key: "k1".into(), expected_version: None };
    g.apply_checked(&del, &l).unwrap();
    // A CAS holding the old version 1 must not succeed against the re-created key.
    assert_eq!(g.apply_checked(&put(NS[0], "k1", b"b"), &l), Ok(Output::Written { version: 3 }));
    assert_eq!(
        g.apply_checked(&cas(NS[0], "k1", 1, b"c"), &l),
        Err(Error::VersionMismatch { expected: 1, current: 3 })
    );
}

#[test]
fn bad_commands_change_nothing() {
    let mut g = Grid::default();
    let l = limits();
    g.apply_checked(&put(NS[0], "k1", b"a"), &l).unwrap();
    let before = g.clone();
    let bad = [
        put("nope", "k1", b"a"),
        put(NS[0], "", b"a"),
        put(NS[0], "waytoolongkey", b"a"),
        put(NS[0], "k2", &[0; 17]),
        cas(NS[0], "k1", 7, b"x"),
        Command::Put {
            namespace: NS[0].into(),
            key: "k1".into(),
            value: b"x".to_vec(),
            ttl_ms: None,
            if_absent: true,
        },
        Command::Delete { namespace: NS[0].into(), key: "k1".into(), expected_version: Some(9) },
    ];
    for c in &bad {
        assert!(g.apply_checked(c, &l).is_err(), "{c:?} should fail");
        assert_eq!(g, before, "{c:?} changed the grid");
    }
    assert!(matches!(
        g.apply_checked(&put(NS[0], "k2", &[0; 17]), &l),
        Err(Error::ValueTooLarge { size: 17, limit: 16 })
    ));
}

#[test]
fn apply_checks_shape_but_not_configured_limits() {
    // Limits are configuration: a replica must apply what its leader accepted even if its own
    // limits are smaller, or replicas would diverge.
    let mut g = Grid::default();
    assert!(g.apply(&put(NS[0], "k1", &[0; 64])).is_ok());
    let before = g.clone();
    assert!(matches!(g.apply(&put("bad", "k", b"v")), Err(Error::InvalidNamespace { .. })));
    assert!(matches!(g.apply(&put(NS[0], "", b"v")), Err(Error::InvalidKey { .. })));
    assert_eq!(g, before);
}

#[test]
fn ttl_expires_by_entry_time_and_clock_never_goes_back() {
    let mut g = Grid::default();
    let l = limits();
    let with_ttl = Command::Put {
        namespace: NS[0].into(),
        key: "k1".into(),
        value: b"v".to_vec(),
        ttl_ms: Some(100),
        if_absent: false,
    };
    g.apply_batch(1_000, &[with_ttl]);
    assert_eq!(g.get(NS[0], "k1").unwrap().expires_at_ms, Some(1_100));
    assert_eq!(g.next_expiry_ms(), Some(1_100));
    // A new leader with a slow clock does not bring time back.
    g.apply_batch(500, &[]);
    assert_eq!(g.now_ms(), 1_000);
    assert!(g.get(NS[0], "k1").is_some());
    g.apply_batch(1_100, &[]);
    assert!(g.get(NS[0], "k1").is_none(), "invisible once the clock passes expiry");
    // An expired key counts as absent for put-if-absent and CAS(0).
    assert!(g.apply_checked(&cas(NS[0], "k1", 0, b"w"), &l).is_ok());
    assert_eq!(g.next_expiry_ms(), None, "overwriting drops the old expiry");
    let ttl2 = Command::Put {
        namespace: NS[0].into(),
        key: "k2".into(),
        value: b"v".to_vec(),
        ttl_ms: Some(10),
        if_absent: false,
    };
    g.apply_batch(2_000, &[ttl2]);
    let ttl3 = Command::Put {
        namespace: NS[1].into(),
        key: "k3".into(),
        value: b"v".to_vec(),
        ttl_ms: Some(5),
        if_absent: false,
    };
    g.apply_batch(2_000, &[ttl3]);
    let out = g.apply_batch(2_010, &[Command::Expire { limit: 1 }]);
    assert_eq!(out, vec![Ok(Output::Expired { count: 1 })], "bounded by the limit");
    assert_eq!(g.key_count(), 2);
    let out = g.apply_batch(2_010, &[Command::Expire { limit: 10 }]);
    assert_eq!(out, vec![Ok(Output::Expired { count: 1 })]);
    assert_eq!(g.key_count(), 1, "expire drops the stored key");
}

#[test]
fn list_pages_through_a_prefix() {
    let mut g = Grid::default();
    let l = limits();
    for k in ["a", "p/1", "p/2", "p/3", "q"] {
        g.apply_checked(&put(NS[0], k, b"v"), &l).unwrap();
    }
    let page = g.list(NS[0], "p/", None, 2, &l).unwrap();
    assert_eq!(page.entries.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["p/1", "p/2"]);
    assert_eq!(page.next.as_deref(), Some("p/2"));
    let page = g.list(NS[0], "p/", page.next.as_deref(), 2, &l).unwrap();
    assert_eq!(page.entries.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["p/3"]);
    assert_eq!(page.next, None);
    assert!(g.list(NS[0], "", None, 0, &l).is_err());
    assert!(g.list(NS[0], "", None, 11, &l).is_err());
    assert!(g.list("bad", "", None, 1, &l).is_err());
}

#[test]
fn list_skips_a_bounded_number_of_expired_keys() {
    let mut g = Grid::default();
    let l = Limits { max_list_page: 10, ..limits() };
    let n = MAX_LIST_SKIPPED + 5;
    let mut cmds: Vec<Command> = (0..n)
        .map(|i| Command::Put {
            namespace: NS[0].into(),
            key: format!("e{i:06}"),
            value: vec![],
            ttl_ms: Some(1),
            if_absent: false,
        })
        .collect();
    cmds.push(put(NS[0], "z", b"live"));
    g.apply_batch(0, &cmds);
    g.advance_clock(10);
    let page = g.list(NS[0], "", None, 10, &l).unwrap();
    assert!(page.entries.is_empty());
    let token = page.next.expect("cut short after MAX_LIST_SKIPPED expired keys");
    let page = g.list(NS[0], "", Some(&token), 10, &l).unwrap();
    assert_eq!(page.entries.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["z"]);
    assert_eq!(page.next, None);
}

fn arb_command() -> impl Strategy<Value = Command> {
    let ns = prop::sample::select(NS.to_vec()).prop_map(String::from);
    let key = prop::sample::select(KEYS.to_vec()).prop_map(String::from);
    let value = prop::collection::vec(any::<u8>(), 0..=16);
    let ttl = prop::option::of(1u64..50);
    prop_oneof![
        4 => (ns.clone(), key.clone(), value.clone(), ttl.clone(), any::<bool>()).prop_map(
            |(namespace, key, value, ttl_ms, if_absent)| Command::Put { namespace, key, value, ttl_ms, if_absent }
        ),
        3 => (ns.clone(), key.clone(), 0u64..12, value, ttl).prop_map(
            |(namespace, key, expected_version, value, ttl_ms)| Command::CompareAndSet {
                namespace, key, expected_version, value, ttl_ms
            }
        ),
        2 => (ns, key, prop::option::of(0u64..12)).prop_map(
            |(namespace, key, expected_version)| Command::Delete { namespace, key, expected_version }
        ),
        1 => (1u64..4).prop_map(|limit| Command::Expire { limit }),
        1 => (1u64..4).prop_map(|uid| Command::SetClusterUid { uid }),
    ]
}

/// A log: batches of key/value commands, leases and fenced writes, each stamped with a time
/// that may jump back (leader changes).
fn arb_log() -> impl Strategy<Value = Vec<(u64, Vec<Command>)>> {
    let command = prop_oneof![3 => arb_command(), 1 => super::leases_test::arb_command()];
    prop::collection::vec((0u64..200, prop::collection::vec(command, 0..5)), 0..40)
}

fn replay(grid: &mut Grid, log: &[(u64, Vec<Command>)]) -> Vec<Vec<Result<Output, Error>>> {
    log.iter().map(|(now, cmds)| grid.apply_batch(*now, cmds)).collect()
}

proptest! {
    /// Restoring a snapshot taken at any point and replaying the rest gives the same grid and
    /// the same responses as replaying the whole log.
    #[test]
    fn replay_equals_snapshot_plus_replay(log in arb_log(), cut in any::<prop::sample::Index>()) {
        let cut = cut.index(log.len() + 1);
        let mut full = Grid::default();
        let full_out = replay(&mut full, &log);

        let mut before = Grid::default();
        replay(&mut before, &log[..cut]);
        let mut restored: Grid = codec::decode(&codec::encode(&before)).unwrap();
        let rest_out = replay(&mut restored, &log[cut..]);
        prop_assert_eq!(&restored, &full);
        prop_assert_eq!(&rest_out[..], &full_out[cut..]);
    }

    /// Two replicas applying the same log are equal, entry by entry.
    #[test]
    fn same_log_same_replica(log in arb_log()) {
        let (mut a, mut b) = (Grid::default(), Grid::default());
        for (now, cmds) in &log {
            prop_assert_eq!(a.apply_batch(*now, cmds), b.apply_batch(*now, cmds));
            prop_assert_eq!(&a, &b);
        }
    }

    /// Compare-and-set, put-if-absent and conditional delete agree with a simple model: a map
    /// from key to (value, version) with a global revision counter (no TTLs here).
    #[test]
    fn cas_semantics_match_a_model(cmds in prop::collection::vec(arb_command(), 0..60)) {
        let mut grid = Grid::default();
        let mut model: BTreeMap<(String, String), (Vec<u8>, u64)> = BTreeMap::new();
        let mut revision = 0u64;
        let mut uid = 0u64;
        for cmd in cmds {
            let cmd = match cmd {
                Command::Put { namespace, key, value, if_absent, .. } =>
                    Command::Put { namespace, key, value, ttl_ms: None, if_absent },
                Command::CompareAndSet { namespace, key, expected_version, value, .. } =>
                    Command::CompareAndSet { namespace, key, expected_version, value, ttl_ms: None },
                other => other,
            };
            let expected = match &cmd {
                Command::Put { namespace, key, value, if_absent, .. } => {
                    let k = (namespace.clone(), key.clone());
                    match model.get(&k) {
                        Some((_, v)) if *if_absent => Err(Error::AlreadyExists { version: *v }),
                        _ => {
                            revision += 1;
                            model.insert(k, (value.clone(), revision));
                            Ok(Output::Written { version: revision })
                        }
                    }
                }
                Command::CompareAndSet { namespace, key, expected_version, value, .. } => {
                    let k = (namespace.clone(), key.clone());
                    let current = model.get(&k).map_or(0, |(_, v)| *v);
                    if current == *expected_version {
                        revision += 1;
                        model.insert(k, (value.clone(), revision));
                        Ok(Output::Written { version: revision })
                    } else {
                        Err(Error::VersionMismatch { expected: *expected_version, current })
                    }
                }
                Command::Delete { namespace, key, expected_version } => {
                    let k = (namespace.clone(), key.clone());
                    let current = model.get(&k).map_or(0, |(_, v)| *v);
                    match expected_version {
                        Some(e) if *e != current =>
                            Err(Error::VersionMismatch { expected: *e, current }),
                        _ => {
                            let existed = model.remove(&k).is_some();
                            if existed { revision += 1; }
                            Ok(Output::Deleted { existed })
                        }
                    }
                }
                Command::Expire { .. } => Ok(Output::Expired { count: 0 }),
                Command::SetClusterUid { uid: proposed } => {
                    if uid == 0 { uid = *proposed; }
                    Ok(Output::ClusterUid { uid })
                }
                other => unreachable!("arb_command makes only key/value commands, not {other:?}"),
            };
            prop_assert_eq!(grid.apply_checked(&cmd, &limits()), expected, "command {:?}", cmd);
            for ((ns, key), (value, version)) in &model {
                let got = grid.get(ns, key).expect("model key present in grid");
                prop_assert_eq!((&got.data, got.version), (value, *version));
            }
            prop_assert_eq!(grid.key_count(), model.len());
            prop_assert_eq!(grid.cluster_uid(), uid, "the first recorded uid stays");
        }
    }
}

proptest! {
    /// The expiry index holds exactly one entry for each stored key that has a time to live,
    /// and nothing else, after every entry: a stale index entry would let `Expire` drop a key
    /// that was written again since, and a missing one would keep an expired key forever.
    #[test]
    fn the_expiry_index_matches_the_stored_keys(log in arb_log()) {
        let mut grid = Grid::default();
        for (now, cmds) in &log {
            grid.apply_batch(*now, cmds);
            let from_values: BTreeMap<(u64, String, String), ()> = grid
                .namespaces
                .iter()
                .flat_map(|(ns, keys)| {
                    keys.iter().filter_map(move |(key, value)| {
                        value.expires_at_ms.map(|at| ((at, ns.clone(), key.clone()), ()))
                    })
                })
                .collect();
            prop_assert_eq!(&grid.expiries, &from_values);
        }
    }
}

/// A key written again keeps exactly the expiry of its last write: the same expiry twice (the
/// same time to live in one entry), none, or a different one.
#[test]
fn a_rewrite_keeps_the_expiry_of_the_last_write_only() {
    let put = |ttl_ms| Command::Put {
        namespace: NS[0].into(),
        key: "k1".into(),
        value: b"v".to_vec(),
        ttl_ms,
        if_absent: false,
    };
    let mut g = Grid::default();
    g.apply_batch(1_000, &[put(Some(100)), put(Some(100))]);
    assert_eq!(g.expiries.len(), 1, "the same expiry written twice is one index entry");
    g.apply_batch(1_010, &[put(None)]);
    assert!(g.expiries.is_empty(), "a write without a time to live drops the old expiry");
    g.apply_batch(2_000, &[Command::Expire { limit: 10 }]);
    assert!(g.get(NS[0], "k1").is_some(), "the key no longer expires");
    g.apply_batch(2_000, &[put(Some(100))]);
    g.apply_batch(2_010, &[put(Some(50))]);
    assert_eq!(g.expiries.keys().map(|(at, _, _)| *at).collect::<Vec<_>>(), [2_060]);
    g.apply_batch(2_070, &[Command::Expire { limit: 10 }]);
    assert!(g.get(NS[0], "k1").is_none(), "expired at the later write's expiry");
    assert!(g.expiries.is_empty());
}

use super::*;

#[test]
fn every_target_accepts_each_of_its_seeds() {
    let seeds = seeds();
    for target in TARGETS {
        let mine: Vec<_> = seeds.iter().filter(|(t, _)| *t == target).collect();
        assert!(mine.len() >= 2, "target {target} has {} seeds", mine.len());
        for (i, (_, seed)) in mine.iter().enumerate() {
            assert_eq!(run(target, seed), Some(true), "{target} refused its seed {i}");
        }
    }
    assert!(seeds.iter().all(|(t, _)| TARGETS.contains(t)), "a seed of an unknown target");
    assert_eq!(run("nonsense", b""), None);
}

#[test]
fn garbage_is_refused_without_a_failed_check() {
    for target in TARGETS {
        for garbage in [&b""[..], b"\x00", b"\x01\x02\x03", &[0xff; 64]] {
            run(target, garbage);
        }
    }
}

#[test]
fn the_fuzz_grid_holds_an_eager_call_honoured_under_its_block() {
    let built = grid::Built::new();
    let (id, token) = built.block().expect("the fuzz grid reserves a block");
    let lease = built.grid.execution(id).and_then(|e| e.lease);
    assert_eq!(lease.map(|l| (l.session, l.token)), Some((built.eager_session(), token)));
}

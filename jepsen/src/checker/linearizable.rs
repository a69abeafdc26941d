//! Linearizability search: Wing & Gong's algorithm with Lowe's memoization, as Porcupine
//! implements it, over any sequential [`Model`].
//!
//! The history is a list of call and return points ordered by time. The search walks the list
//! from its head, tries to linearize each call whose step the model allows (lifting the call
//! and its return out of the list), and backtracks when it meets a return whose call has not
//! been linearized yet. A cache of (linearized set, model state) pairs prunes every
//! configuration already explored, which is what makes the search practical.
//!
//! ```text
//!   head ─► call a ─► call b ─► ret a ─► call c ─► ret b ─► ret c
//!            │ step ok: lift a and ret a, restart at head
//!            ▼
//!   head ─► call b ─► call c ─► ret b ─► ret c      ...until the list is empty (linearizable)
//!                                                  or nothing is left to undo (not linearizable)
//! ```
//!
//! An operation whose outcome is unknown gets an infinite return time: it may take effect at
//! any point after its call, or (because it can always be placed last) never. Its model step
//! must accept every result it could have had. The search counts its steps and gives up with
//! [`Outcome::Unknown`] past `max_steps`, so a pathological history never hangs a run.
//!
//! The cache keys on a 128-bit Zobrist hash of the linearized set (updated in O(1) per step)
//! instead of the set itself, which keeps memory at a few dozen bytes per entry for histories
//! of tens of thousands of operations. A hash collision can only prune a branch, so it can
//! only turn a linearizable history into a "not linearizable" one, never the reverse; that
//! answer is therefore confirmed by a second search with exact keys before it is returned,
//! for histories of up to [`EXACT_CONFIRM_MAX_OPS`] operations (the exact keys cost n/8 bytes
//! each). Past that the 128-bit hash stands alone: over the at most `max_steps` cache
//! entries of a search, a collision has a probability below 2^-80.

use std::collections::HashSet;
use std::hash::Hash;

/// A sequential specification.
pub trait Model {
    /// The model's state; hashed into the search cache.
    type State: Clone + Eq + Hash;
    /// An operation with its observed result.
    type Op;
    /// The state before any operation.
    fn init(&self) -> Self::State;
    /// The state after `op` in `state`, or `None` when `op` could not have returned its
    /// result there.
    fn step(&self, state: &Self::State, op: &Self::Op) -> Option<Self::State>;
}

/// One operation of a history for the search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<O> {
    pub op: O,
    /// When the operation was invoked.
    pub call: u64,
    /// When it completed; `None` when the outcome is unknown (infinitely late).
    pub ret: Option<u64>,
}

/// What the search found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// There is an order of the operations that respects real time and the model.
    Linearizable,
    /// No such order exists. `deepest` is the longest sequence of operations (indices into
    /// the entries) the search managed to linearize, a hint at where it got stuck.
    NotLinearizable { deepest: Vec<usize> },
    /// The search stopped after `steps` steps without an answer.
    Unknown { steps: u64 },
}

/// Largest history whose "not linearizable" is confirmed with exact cache keys.
pub const EXACT_CONFIRM_MAX_OPS: usize = 8192;

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

/// A fixed-size bit set: the exact cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

/// Checks `entries` against `model`, bounded by `max_steps` steps (per search).
pub fn check<M: Model>(model: &M, entries: &[Entry<M::Op>], max_steps: u64) -> Outcome {
    match search::<M, Zobrist>(model, entries, max_steps) {
        Outcome::NotLinearizable { .. } if entries.len() <= EXACT_CONFIRM_MAX_OPS => {
            search::<M, Bits>(model, entries, max_steps)
        }
        other => other,
    }
}

/// A cache key for the set of linearized operations.
trait Key: Clone + Eq + std::hash::Hash {
    fn new(n: usize) -> Self;
    fn set(&mut self, i: usize);
    fn clear(&mut self, i: usize);
}

impl Key for Bits {
    fn new(n: usize) -> Self {
        Self(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// XOR of a fixed random 128-bit word per linearized operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Zobrist(u128);

impl Zobrist {
    fn word(i: usize) -> u128 {
        let a = crate::rng::splitmix64(i as u64 ^ 0x6a09_e667_f3bc_c908);
        let b = crate::rng::splitmix64(a ^ 0xbb67_ae85_84ca_a73b);
        (u128::from(a) << 64) | u128::from(b)
    }
}

impl Key for Zobrist {
    fn new(_: usize) -> Self {
        Self(0)
    }
    fn set(&mut self, i: usize) {
        self.0 ^= Self::word(i);
    }
    fn clear(&mut self, i: usize) {
        self.0 ^= Self::word(i);
    }
}

fn search<M: Model, K: Key>(model: &M, entries: &[Entry<M::Op>], max_steps: u64) -> Outcome {
    let n = entries.len();
    if n == 0 {
        return Outcome::Linearizable;
    }
    // Points: (time, is_return, op). Calls sort before returns at the same instant, so
    // operations that touch in time count as concurrent (the permissive reading).
    let mut points: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, e) in entries.iter().enumerate() {
        points.push((e.call, false, i));
        points.push((e.ret.unwrap_or(u64::MAX), true, i));
    }
    points.sort();

    // A doubly linked list over node ids 1..=2n with a head sentinel at 0.
    let len = 2 * n + 1;
    let mut next = vec![NIL; len];
    let mut prev = vec![NIL; len];
    let mut op_of = vec![NIL; len];
    let mut is_call = vec![false; len];
    let mut ret_node = vec![NIL; n];
    for (k, &(_, is_ret, op)) in points.iter().enumerate() {
        let node = k + 1;
        op_of[node] = op;
        is_call[node] = !is_ret;
        if is_ret {
            ret_node[op] = node;
        }
        prev[node] = k;
        next[k] = node;
    }

    fn lift(next: &mut [usize], prev: &mut [usize], node: usize) {
        let (p, q) = (prev[node], next[node]);
        next[p] = q;
        if q != NIL {
            prev[q] = p;
        }
    }
    fn unlift(next: &mut [usize], prev: &mut [usize], node: usize) {
        let (p, q) = (prev[node], next[node]);
        next[p] = node;
        if q != NIL {
            prev[q] = node;
        }
    }

    let mut state = model.init();
    let mut linearized = K::new(n);
    let mut cache: HashSet<(K, M::State)> = HashSet::new();
    let mut calls: Vec<(usize, M::State)> = Vec::new();
    let mut deepest: Vec<usize> = Vec::new();
    let mut steps: u64 = 0;
    let mut entry = next[HEAD];
    while next[HEAD] != NIL {
        steps += 1;
        if steps > max_steps {
            return Outcome::Unknown { steps };
        }
        if entry == NIL {
            // Cannot happen (every call precedes its return), but never index past the end.
            return Outcome::Unknown { steps };
        }
        if is_call[entry] {
            let op = op_of[entry];
            let advanced = match model.step(&state, &entries[op].op) {
                Some(new_state) => {
                    let mut bits = linearized.clone();
                    bits.set(op);
                    if cache.insert((bits, new_state.clone())) {
                        let old = std::mem::replace(&mut state, new_state);
                        calls.push((entry, old));
                        linearized.set(op);
                        // Lift the call, then its return (undone in reverse order).
                        lift(&mut next, &mut prev, entry);
                        lift(&mut next, &mut prev, ret_node[op]);
                        if calls.len() > deepest.len() {
                            deepest = calls.iter().map(|(node, _)| op_of[*node]).collect();
                        }
                        entry = next[HEAD];
                        true
                    } else {
                        false
                    }
                }
                None => false,
            };
            if !advanced {
                entry = next[entry];
            }
        } else {
            // A return whose call is still in the list: undo the last linearized call.
            let Some((node, old)) = calls.pop() else {
                return Outcome::NotLinearizable { deepest };
            };
            let op = op_of[node];
            state = old;
            linearized.clear(op);
            unlift(&mut next, &mut prev, ret_node[op]);
            unlift(&mut next, &mut prev, node);
            entry = next[node];
        }
    }
    Outcome::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A counter register for testing the search alone: `Some(v)` writes v, `None(v)`
    /// reads v (encoded as (is_write, value)).
    struct Reg;
    impl Model for Reg {
        type State = u64;
        type Op = (bool, u64);
        fn init(&self) -> u64 {
            0
        }
        fn step(&self, s: &u64, op: &(bool, u64)) -> Option<u64> {
            match *op {
                (true, v) => Some(v),
                (false, v) if v == *s => Some(*s),
                _ => None,
            }
        }
    }

    fn e(op: (bool, u64), call: u64, ret: Option<u64>) -> Entry<(bool, u64)> {
        Entry { op, call, ret }
    }

    #[test]
    fn empty_and_sequential_histories_are_linearizable() {
        assert_eq!(check(&Reg, &[], 100), Outcome::Linearizable);
        let h = [e((true, 1), 0, Some(1)), e((false, 1), 2, Some(3)), e((true, 2), 4, Some(5))];
        assert_eq!(check(&Reg, &h, 1000), Outcome::Linearizable);
    }

    #[test]
    fn a_read_of_an_overwritten_value_is_caught() {
        // write 1 completes, write 2 completes, then a read returns 1.
        let h = [e((true, 1), 0, Some(1)), e((true, 2), 2, Some(3)), e((false, 1), 4, Some(5))];
        assert!(matches!(check(&Reg, &h, 1000), Outcome::NotLinearizable { .. }));
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        let h = [e((true, 1), 0, Some(10)), e((true, 2), 1, Some(9)), e((false, 1), 11, Some(12))];
        assert_eq!(check(&Reg, &h, 1000), Outcome::Linearizable);
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never() {
        // Unknown write of 7 invoked at 0; reads see 0, then 7, both fine.
        let late = [e((true, 7), 0, None), e((false, 0), 5, Some(6)), e((false, 7), 7, Some(8))];
        assert_eq!(check(&Reg, &late, 1000), Outcome::Linearizable);
        let never = [e((true, 7), 0, None), e((false, 0), 5, Some(6))];
        assert_eq!(check(&Reg, &never, 1000), Outcome::Linearizable);
        // But it cannot take effect before its call.
        let early = [e((false, 7), 0, Some(1)), e((true, 7), 2, None)];
        assert!(matches!(check(&Reg, &early, 1000), Outcome::NotLinearizable { .. }));
    }

    proptest::proptest! {
        #[test]
        fn hashed_and_exact_cache_keys_agree(
            ops in proptest::collection::vec((proptest::bool::ANY, 0u64..3, 0u64..20, 0u64..6, proptest::bool::ANY), 0..14)
        ) {
            // Random (often broken) histories: the hashed search must reach the same verdict.
            let h: Vec<_> = ops.iter().map(|&(w, v, call, len, unknown)| {
                e((w, v), call, if unknown && w { None } else { Some(call + len) })
            }).collect();
            let linear = |o: Outcome| matches!(o, Outcome::Linearizable);
            proptest::prop_assert_eq!(
                linear(search::<Reg, Zobrist>(&Reg, &h, 1_000_000)),
                linear(search::<Reg, Bits>(&Reg, &h, 1_000_000))
            );
        }
    }

    #[test]
    fn the_step_bound_gives_unknown() {
        let h: Vec<_> = (0..20).map(|i| e((true, i), 0, Some(100))).collect();
        let mut h = h;
        h.push(e((false, 999), 101, Some(102)));
        assert!(matches!(check(&Reg, &h, 50), Outcome::Unknown { .. }));
    }
}

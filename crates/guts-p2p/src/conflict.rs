//! The replication conflict rule: how every node computes the same value for
//! a ref from the same set of signed ref updates (ADR 0008,
//! `adr/0008-replication-conflict-rule.md`).
//!
//! # Background
//!
//! An accepted push is a *signed ref update*: a git push certificate listing
//! `old new ref` lines, signed by a repository delegate (ADR 0005,
//! `guts_identity::SignedRefUpdate`). Nodes gossip these updates and exchange
//! their logs, so once the network is quiet every node holds the same *set*
//! of updates. Two nodes may however accept concurrent updates of the same
//! ref from the same old value (node A: `main X→Y`, node C: `main X→Z`), and
//! the updates reach other nodes in different orders. This module decides,
//! from the set alone, which value the ref has.
//!
//! # The rule
//!
//! Refs are resolved independently of each other. For one ref, let `U` be
//! the set of updates touching it, each with its `old` and `new` object ids
//! and a `key`: the SHA-256 of the update's certificate text (extended by
//! the refs the accepting node refused, if any), unique per
//! update.
//!
//! 1. Start with `v = ZERO` (the ref does not exist).
//! 2. The *candidates* are the updates of `U`, not used yet, with
//!    `old == v`. If there are none, stop.
//! 3. The *winner* is the candidate with the smallest `key` (byte-wise).
//!    Mark it used and set `v = winner.new`. Go to 2.
//!
//! The resolved value is `v`; `ZERO` means the ref is absent (never created,
//! or deleted). The winners, in the order they were chosen, form the
//! *winning path*; every other update is *superseded*. Superseded updates
//! are never dropped: they stay in the log and the REST API lists them.
//!
//! Each update is used at most once, so the walk ends after at most `|U|`
//! steps even when updates form cycles (`X→Y`, `Y→X`, or a self-loop `X→X`).
//!
//! ```text
//!   ZERO ─k5─▶ X ─k1─▶ Y            resolved: Y
//!               └─k3─▶ Z ─k2─▶ W     superseded: k3 (lost at X), k2 (its
//!                                    old value Z is never reached)
//! ```
//!
//! # Why this rule
//!
//! - **Deterministic and order-independent.** The result is a function of
//!   the set `U` only: two nodes holding the same updates compute the same
//!   value, however and whenever the updates arrived. No trusted clock is
//!   needed; certificate timestamps are the pusher's claim and cannot be
//!   checked by peers.
//! - **Never drops a signed update.** Losing updates are only marked
//!   superseded; if more updates arrive, the resolution is recomputed from
//!   the larger set.
//! - **Stable tie-break.** The key is the hash of a signed certificate, so it
//!   cannot be changed without re-signing, and every node sees the same
//!   key.
//! - **Compatible with local compare-and-swap.** A node that applied a chain
//!   locally has its ref equal to the resolved value of the updates it holds.
//!   When a concurrent update arrives, either the new update loses somewhere
//!   and the value is unchanged, or it wins at some step and the ref moves to
//!   the new winner's branch (the winning path up to that step is
//!   unchanged). [`resolve`] recomputes from the set; nothing depends on the
//!   previous local value.
//!
//! # Limitations
//!
//! - **Per ref.** A push that updated several refs atomically may win for one
//!   ref and lose for another under conflicts, so the resolved refs can mix
//!   two pushes.
//! - **Grinding.** A delegate can win any race by re-signing certificates
//!   until the hash is small enough; a late update from an *old* value with a
//!   small key can even supersede a longer chain that grew from that value.
//!   This is acceptable because delegates are trusted to write anyway: a
//!   delegate could equally force-push. Non-delegates cannot take part.
//! - **No preference for longer chains.** A node that was partitioned and
//!   accepted `X→W` while the others went on `X→Y→Z` wins at `X` if its key
//!   is smaller, and `Y→Z` becomes superseded.
//! - **The set must be complete from the ref's creation.** The walk starts
//!   at `ZERO`; an update whose `old` value is never reached (for instance
//!   because its predecessor has not arrived yet) is superseded *for now*.
//!   Whether an update wins is a property of the current set, not a final
//!   verdict, so the log must never be truncated.
//! - **Trust is the caller's job.** [`resolve`] does not verify anything:
//!   pass only updates whose certificates verified and were authorized
//!   (`SignedRefUpdate::verify`), otherwise anyone could win with a small
//!   key.
//!
//! The walk costs `O(n log n)` for `n` updates of the ref.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, VecDeque};

/// A git object id (SHA-1, 20 bytes).
pub type Oid = [u8; 20];

/// The all-zero object id: in a ref update, "the ref does not exist" (as
/// `old`, a creation; as `new`, a deletion).
pub const ZERO: Oid = [0; 20];

/// The identity of a signed ref update (`guts_identity::update::UpdateKey`).
pub type UpdateKey = [u8; 32];

/// One signed update of one ref, reduced to what the rule needs.
///
/// A certificate listing several refs gives one `RefUpdate` per ref, all
/// with the same key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RefUpdate {
    /// The value the update expects (`ZERO`: the ref did not exist).
    pub old: Oid,
    /// The value the update sets (`ZERO`: the ref is deleted).
    pub new: Oid,
    /// The update's key (`SignedRefUpdate::key`).
    pub key: UpdateKey,
}

/// The outcome of [`resolve`] for one ref.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolution {
    /// The ref's value; `None` if it is absent (never created, or deleted).
    pub value: Option<Oid>,
    /// Keys of the updates on the winning path, in the order they apply.
    pub winners: Vec<UpdateKey>,
    /// Keys of every other update, in ascending key order. Together with
    /// `winners` this covers every distinct input update exactly once.
    pub superseded: Vec<UpdateKey>,
}

impl Resolution {
    /// Whether the update with this key is on the winning path.
    pub fn is_winner(&self, key: &UpdateKey) -> bool {
        self.winners.contains(key)
    }
}

/// Resolve one ref from the set of updates touching it (see the
/// [module documentation](self) for the rule).
///
/// The input is treated as a set: its order does not matter and exact
/// duplicates (the same update received twice) count once. Keys are expected
/// to be unique per ref; should two different transitions share a key, they
/// are ordered by `(key, old, new)` so the result still depends only on the
/// set.
pub fn resolve(updates: &[RefUpdate]) -> Resolution {
    let mut sorted: Vec<&RefUpdate> = updates.iter().collect();
    sorted.sort_unstable_by_key(|u| (u.key, u.old, u.new));
    sorted.dedup();

    // Unused updates grouped by `old`, each queue in ascending key order, so
    // the smallest unused candidate for a value is at the front of its queue.
    let mut by_old: BTreeMap<Oid, VecDeque<&RefUpdate>> = BTreeMap::new();
    for u in sorted {
        by_old.entry(u.old).or_default().push_back(u);
    }

    let mut value = ZERO;
    let mut winners = Vec::new();
    // Every iteration consumes one update, so this ends after at most
    // `updates.len()` steps, cycles included.
    while let Some(winner) = by_old.get_mut(&value).and_then(VecDeque::pop_front) {
        winners.push(winner.key);
        value = winner.new;
    }

    let mut rest: Vec<&RefUpdate> = by_old.into_values().flatten().collect();
    rest.sort_unstable_by_key(|u| (u.key, u.old, u.new));
    let superseded = rest.into_iter().map(|u| u.key).collect();

    Resolution {
        value: (value != ZERO).then_some(value),
        winners,
        superseded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An object id whose bytes are all `b` (`oid(0)` is `ZERO`).
    fn oid(b: u8) -> Oid {
        [b; 20]
    }

    /// A key whose bytes are all `b`.
    fn key(b: u8) -> UpdateKey {
        [b; 32]
    }

    fn up(old: u8, new: u8, k: u8) -> RefUpdate {
        RefUpdate {
            old: oid(old),
            new: oid(new),
            key: key(k),
        }
    }

    /// The rule written as literally as the specification states it, to
    /// check [`resolve`] against.
    fn reference(updates: &[RefUpdate]) -> Resolution {
        let mut set: Vec<RefUpdate> = updates.to_vec();
        set.sort();
        set.dedup();
        let mut used = vec![false; set.len()];
        let mut v = ZERO;
        let mut winners = Vec::new();
        loop {
            let mut best: Option<usize> = None;
            for (i, u) in set.iter().enumerate() {
                if used[i] || u.old != v {
                    continue;
                }
                let better = match best {
                    None => true,
                    Some(b) => (u.key, u.old, u.new) < (set[b].key, set[b].old, set[b].new),
                };
                if better {
                    best = Some(i);
                }
            }
            let Some(b) = best else { break };
            used[b] = true;
            winners.push(set[b].key);
            v = set[b].new;
        }
        let mut rest: Vec<&RefUpdate> = set
            .iter()
            .zip(&used)
            .filter(|(_, &u)| !u)
            .map(|(u, _)| u)
            .collect();
        rest.sort_by_key(|u| (u.key, u.old, u.new));
        Resolution {
            value: (v != ZERO).then_some(v),
            winners,
            superseded: rest.into_iter().map(|u| u.key).collect(),
        }
    }

    /// Structural invariants every resolution must satisfy.
    fn check_invariants(updates: &[RefUpdate], r: &Resolution) {
        let mut distinct: Vec<&RefUpdate> = updates.iter().collect();
        distinct.sort();
        distinct.dedup();
        let mut all: Vec<UpdateKey> = r.winners.iter().chain(&r.superseded).copied().collect();
        all.sort();
        let mut expected: Vec<UpdateKey> = distinct.iter().map(|u| u.key).collect();
        expected.sort();
        assert_eq!(all, expected, "winners and superseded partition the set");
        assert!(r.superseded.windows(2).all(|w| w[0] <= w[1]));
        // The winners chain from ZERO to the value.
        let mut v = ZERO;
        for k in &r.winners {
            let u = distinct
                .iter()
                .find(|u| u.key == *k && u.old == v)
                .unwrap_or_else(|| panic!("winner {k:?} does not continue the path"));
            v = u.new;
        }
        assert_eq!(r.value, (v != ZERO).then_some(v));
    }

    /// SplitMix64: a tiny deterministic PRNG, enough to shuffle test inputs.
    struct SplitMix64(u64);

    impl SplitMix64 {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// Uniform-enough in `0..n` for tests (`n > 0`).
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn shuffle<T>(&mut self, v: &mut [T]) {
            for i in (1..v.len()).rev() {
                let j = self.below(i + 1);
                v.swap(i, j);
            }
        }
    }

    /// All permutations of `items` (Heap's algorithm).
    fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
        fn heap<T: Clone>(k: usize, a: &mut Vec<T>, out: &mut Vec<Vec<T>>) {
            if k <= 1 {
                out.push(a.clone());
                return;
            }
            for i in 0..k - 1 {
                heap(k - 1, a, out);
                let j = if k & 1 == 0 { i } else { 0 };
                a.swap(j, k - 1);
            }
            heap(k - 1, a, out);
        }
        let mut a = items.to_vec();
        let mut out = Vec::new();
        heap(a.len(), &mut a, &mut out);
        out
    }

    /// A random update set over a small alphabet of object ids (so forks,
    /// cycles, deletions and unreachable updates are common) with distinct
    /// keys.
    fn random_set(rng: &mut SplitMix64, n: usize, alphabet: u8) -> Vec<RefUpdate> {
        let mut keys: Vec<u8> = (1..=u8::MAX).collect();
        rng.shuffle(&mut keys);
        (0..n)
            .map(|i| {
                let mut k = [0u8; 32];
                k[0] = keys[i];
                for b in &mut k[1..] {
                    *b = rng.next() as u8;
                }
                RefUpdate {
                    old: oid(rng.below(alphabet as usize) as u8),
                    new: oid(rng.below(alphabet as usize) as u8),
                    key: k,
                }
            })
            .collect()
    }

    #[test]
    fn empty_set_is_absent() {
        let r = resolve(&[]);
        assert_eq!(r, Resolution::default());
        assert_eq!(r.value, None);
    }

    #[test]
    fn simple_chain() {
        let u = [up(0, 1, 9), up(1, 2, 5), up(2, 3, 7)];
        let r = resolve(&u);
        assert_eq!(r.value, Some(oid(3)));
        assert_eq!(r.winners, vec![key(9), key(5), key(7)]);
        assert!(r.superseded.is_empty());
        check_invariants(&u, &r);
    }

    #[test]
    fn fork_smallest_key_wins() {
        // A: main X→Y (key 2); C: main X→Z (key 1).
        let u = [up(0, 1, 5), up(1, 2, 2), up(1, 3, 1)];
        let r = resolve(&u);
        assert_eq!(r.value, Some(oid(3)));
        assert_eq!(r.winners, vec![key(5), key(1)]);
        assert_eq!(r.superseded, vec![key(2)]);
        check_invariants(&u, &r);
    }

    #[test]
    fn fork_is_independent_of_order_all_permutations() {
        let u = [
            up(0, 1, 40),
            up(1, 2, 20),
            up(1, 3, 10),
            up(3, 4, 30),
            up(2, 5, 5),
            up(0, 6, 50),
        ];
        let expected = resolve(&u);
        assert_eq!(expected.value, Some(oid(4)));
        assert_eq!(expected.winners, vec![key(40), key(10), key(30)]);
        assert_eq!(expected.superseded, vec![key(5), key(20), key(50)]);
        let perms = permutations(&u);
        assert_eq!(perms.len(), 720);
        for p in perms {
            assert_eq!(resolve(&p), expected);
        }
    }

    #[test]
    fn chain_continuing_from_losing_branch_is_superseded() {
        // X→Y wins over X→Z; Z→W and W→V continue the losing branch.
        let u = [
            up(0, 1, 9),
            up(1, 2, 1),
            up(1, 3, 2),
            up(3, 4, 3),
            up(4, 5, 4),
        ];
        let r = resolve(&u);
        assert_eq!(r.value, Some(oid(2)));
        assert_eq!(r.winners, vec![key(9), key(1)]);
        assert_eq!(r.superseded, vec![key(2), key(3), key(4)]);
        check_invariants(&u, &r);
    }

    #[test]
    fn superseded_lists_every_loser_in_key_order() {
        // Two creations compete, the loser's continuation and an update whose
        // old value never occurs are superseded too.
        let u = [
            up(0, 1, 7),
            up(0, 2, 3),
            up(1, 4, 1),
            up(2, 5, 8),
            up(2, 6, 6),
            up(9, 5, 2),
        ];
        let r = resolve(&u);
        assert_eq!(r.value, Some(oid(6)));
        assert_eq!(r.winners, vec![key(3), key(6)]);
        assert_eq!(r.superseded, vec![key(1), key(2), key(7), key(8)]);
        assert!(r.is_winner(&key(6)));
        assert!(!r.is_winner(&key(8)));
        check_invariants(&u, &r);
    }

    #[test]
    fn delete_then_recreate() {
        let deleted = [up(0, 1, 3), up(1, 0, 4)];
        let r = resolve(&deleted);
        assert_eq!(r.value, None);
        assert_eq!(r.winners, vec![key(3), key(4)]);

        let recreated = [up(0, 1, 3), up(1, 0, 4), up(0, 2, 5)];
        let r = resolve(&recreated);
        assert_eq!(r.value, Some(oid(2)));
        assert_eq!(r.winners, vec![key(3), key(4), key(5)]);
        assert!(r.superseded.is_empty());
        check_invariants(&recreated, &r);
    }

    #[test]
    fn concurrent_delete_and_update() {
        // X→ZERO (key 1) beats X→Y (key 2): the ref is deleted, and the
        // creation that follows the deletion applies.
        let u = [up(0, 1, 5), up(1, 0, 1), up(1, 2, 2), up(0, 3, 6)];
        let r = resolve(&u);
        assert_eq!(r.value, Some(oid(3)));
        assert_eq!(r.winners, vec![key(5), key(1), key(6)]);
        assert_eq!(r.superseded, vec![key(2)]);
    }

    #[test]
    fn cycle_terminates() {
        // ZERO→X, X→Y, Y→X, X→Y again (a second update): each used once.
        let u = [up(0, 1, 1), up(1, 2, 2), up(2, 1, 3), up(1, 2, 4)];
        let r = resolve(&u);
        assert_eq!(r.value, Some(oid(2)));
        assert_eq!(r.winners, vec![key(1), key(2), key(3), key(4)]);
        assert!(r.superseded.is_empty());

        // A self-loop and a two-cycle with nothing after them.
        let u = [up(0, 1, 1), up(1, 1, 2), up(1, 2, 3), up(2, 1, 4)];
        let r = resolve(&u);
        assert_eq!(r.value, Some(oid(1)));
        assert_eq!(r.winners, vec![key(1), key(2), key(3), key(4)]);
        check_invariants(&u, &r);

        // A cycle through ZERO (create, delete, create the same value...).
        let u = [up(0, 1, 1), up(1, 0, 2), up(0, 1, 3), up(1, 0, 4)];
        let r = resolve(&u);
        assert_eq!(r.value, None);
        assert_eq!(r.winners.len(), 4);
    }

    #[test]
    fn unreachable_update_is_superseded_until_its_predecessor_arrives() {
        let late = up(1, 2, 2);
        let r = resolve(std::slice::from_ref(&late));
        assert_eq!(r.value, None);
        assert_eq!(r.superseded, vec![key(2)]);

        let r = resolve(&[late, up(0, 1, 1)]);
        assert_eq!(r.value, Some(oid(2)));
        assert_eq!(r.winners, vec![key(1), key(2)]);
    }

    #[test]
    fn duplicates_count_once() {
        let u = [up(0, 1, 1), up(0, 1, 1), up(1, 2, 2), up(1, 2, 2)];
        let r = resolve(&u);
        assert_eq!(r.value, Some(oid(2)));
        assert_eq!(r.winners, vec![key(1), key(2)]);
        assert!(r.superseded.is_empty());
    }

    #[test]
    fn shared_key_is_still_order_independent() {
        // Not expected in practice; the result must still not depend on order.
        let u = [up(0, 1, 1), up(0, 2, 1), up(2, 3, 2)];
        let expected = resolve(&u);
        assert_eq!(expected.value, Some(oid(1)));
        for p in permutations(&u) {
            assert_eq!(resolve(&p), expected);
        }
    }

    #[test]
    fn node_keeps_its_value_or_moves_to_the_new_winner() {
        // Node A applied X→Y locally and holds main = Y.
        let local = [up(0, 1, 5), up(1, 2, 4)];
        assert_eq!(resolve(&local).value, Some(oid(2)));

        // C's concurrent X→Z with a larger key loses: A keeps Y.
        let mut with_loser = local.to_vec();
        with_loser.push(up(1, 3, 6));
        let r = resolve(&with_loser);
        assert_eq!(r.value, Some(oid(2)));
        assert_eq!(r.superseded, vec![key(6)]);

        // C's concurrent X→Z with a smaller key wins: A switches to Z, and
        // A's own X→Y is kept in the log as superseded.
        let mut with_winner = local.to_vec();
        with_winner.push(up(1, 3, 3));
        let r = resolve(&with_winner);
        assert_eq!(r.value, Some(oid(3)));
        assert_eq!(r.winners, vec![key(5), key(3)]);
        assert_eq!(r.superseded, vec![key(4)]);
    }

    #[test]
    fn randomized_shuffles_match_reference_and_each_other() {
        let mut rng = SplitMix64(0x6775_7473);
        for round in 0..500 {
            let n = rng.below(12);
            let alphabet = 2 + rng.below(5) as u8;
            let mut u = random_set(&mut rng, n, alphabet);
            // Sometimes duplicate an update, as a re-gossiped copy would.
            if n > 0 && round % 3 == 0 {
                let d = u[rng.below(n)].clone();
                u.push(d);
            }
            let expected = resolve(&u);
            assert_eq!(expected, reference(&u), "round {round}: {u:?}");
            check_invariants(&u, &expected);
            for _ in 0..20 {
                rng.shuffle(&mut u);
                assert_eq!(resolve(&u), expected, "round {round}: {u:?}");
            }
        }
    }

    #[test]
    fn randomized_new_update_either_loses_or_joins_the_path() {
        // Adding one update to a set either leaves the winning path as it
        // was, or the new update is on the new path and the path before it is
        // unchanged.
        let mut rng = SplitMix64(42);
        for round in 0..1000 {
            let n = 1 + rng.below(10);
            let alphabet = 2 + rng.below(4) as u8;
            let mut u = random_set(&mut rng, n + 1, alphabet);
            let Some(new) = u.pop() else { continue };
            let before = resolve(&u);
            u.push(new.clone());
            let after = resolve(&u);
            if after.winners == before.winners {
                assert_eq!(after.value, before.value);
                continue;
            }
            let pos = after
                .winners
                .iter()
                .position(|k| *k == new.key)
                .unwrap_or_else(|| panic!("round {round}: path changed without {new:?}"));
            assert_eq!(after.winners[..pos], before.winners[..pos], "round {round}");
        }
    }
}

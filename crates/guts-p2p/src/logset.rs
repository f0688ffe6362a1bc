//! Comparing signed-update logs by key ranges (ADR 0016).
//!
//! A log is a set of updates, each named by its 32-byte key (a SHA-256).
//! Keys are split by their first byte into [`BUCKETS`] ranges; a
//! [`Bucket`] holds the number of keys in its range and their XOR, which a
//! node maintains as it appends (one read and one write per update, whatever
//! the log's length). Two nodes compare:
//!
//! 1. the [`LogSummary`] (count and a digest over the buckets): equal means
//!    nothing to do;
//! 2. the [`LogBuckets`]: only the buckets that differ matter;
//! 3. the keys of those buckets: only the keys missing here are asked for;
//! 4. the entries of those keys.
//!
//! So two nodes that share 100,000 updates and differ by one exchange a
//! summary, the buckets (about 10 KB), one bucket's keys (about 400 keys)
//! and one entry. [`LogSet`] is the in-memory form (tests, the simulator,
//! test peers); the node keeps the same numbers in its database.

use std::collections::BTreeMap;

use prost::Message;
use sha2::{Digest, Sha256};

use crate::wire::{LogBuckets, LogSummary};

/// Number of key ranges a log is split into.
pub const BUCKETS: usize = 256;

/// An update key.
pub type Key = [u8; 32];

/// The bucket of a key.
pub fn bucket_of(key: &Key) -> u8 {
    key[0]
}

/// One key range of a log: how many keys, and their XOR.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Keys in the range.
    pub count: u64,
    /// XOR of those keys.
    pub digest: Key,
}

impl Bucket {
    /// Add a key (not already counted).
    pub fn add(&mut self, key: &Key) {
        self.count += 1;
        for (d, k) in self.digest.iter_mut().zip(key) {
            *d ^= k;
        }
    }

    /// The 40-byte form a node stores: count (big-endian) then digest.
    pub fn to_bytes(&self) -> [u8; 40] {
        let mut out = [0u8; 40];
        out[..8].copy_from_slice(&self.count.to_be_bytes());
        out[8..].copy_from_slice(&self.digest);
        out
    }

    /// Read the stored form; `None` if it is not 40 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Bucket> {
        let count = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let digest = bytes.get(8..40)?.try_into().ok()?;
        (bytes.len() == 40).then_some(Bucket { count, digest })
    }
}

/// All the buckets of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buckets(pub Vec<Bucket>);

impl Default for Buckets {
    fn default() -> Self {
        Buckets(vec![Bucket::default(); BUCKETS])
    }
}

impl Buckets {
    /// Count a key in its bucket.
    pub fn add(&mut self, key: &Key) {
        if let Some(b) = self.0.get_mut(usize::from(bucket_of(key))) {
            b.add(key);
        }
    }

    /// Total number of keys.
    pub fn count(&self) -> u64 {
        self.0.iter().map(|b| b.count).sum()
    }

    /// The summary peers compare first: the count, and SHA-256 over every
    /// bucket's stored form.
    pub fn summary(&self, doc_versions: u64) -> LogSummary {
        let mut h = Sha256::new();
        for b in &self.0 {
            h.update(b.to_bytes());
        }
        LogSummary {
            updates: self.count(),
            digest: h.finalize().to_vec(),
            doc_versions,
        }
    }

    /// The wire form.
    pub fn to_wire(&self) -> LogBuckets {
        LogBuckets {
            counts: self.0.iter().map(|b| b.count).collect(),
            digests: self.0.iter().flat_map(|b| b.digest).collect(),
        }
    }

    /// Read a peer's buckets; `None` unless there are exactly [`BUCKETS`].
    pub fn from_wire(w: &LogBuckets) -> Option<Buckets> {
        if w.counts.len() != BUCKETS || w.digests.len() != BUCKETS * 32 {
            return None;
        }
        let buckets = w
            .counts
            .iter()
            .zip(w.digests.chunks_exact(32))
            .map(|(&count, d)| {
                Some(Bucket {
                    count,
                    digest: d.try_into().ok()?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Buckets(buckets))
    }

    /// Decode a peer's encoded buckets.
    pub fn decode(bytes: &[u8]) -> Option<Buckets> {
        Buckets::from_wire(&LogBuckets::decode(bytes).ok()?)
    }

    /// The buckets in which `theirs` holds keys and differs from `self`:
    /// where keys this node lacks can be.
    pub fn wanted_from(&self, theirs: &Buckets) -> Vec<u8> {
        (0..BUCKETS)
            .filter(|&i| {
                let (o, t) = (self.0.get(i), theirs.0.get(i));
                matches!(t, Some(t) if t.count > 0 && Some(t) != o)
            })
            .filter_map(|i| u8::try_from(i).ok())
            .collect()
    }
}

/// A log held in memory: entries by key, in arrival order, with their
/// buckets. What test peers and the simulator serve.
#[derive(Debug, Clone, Default)]
pub struct LogSet {
    by_key: BTreeMap<Key, u64>,
    entries: BTreeMap<u64, (Key, Vec<u8>)>,
    buckets: Buckets,
}

impl LogSet {
    /// Add an entry; false if its key is already there.
    pub fn insert(&mut self, key: Key, entry: Vec<u8>) -> bool {
        if self.by_key.contains_key(&key) {
            return false;
        }
        let seq = self.entries.len() as u64;
        self.by_key.insert(key, seq);
        self.entries.insert(seq, (key, entry));
        self.buckets.add(&key);
        true
    }

    /// Whether the key is there.
    pub fn contains(&self, key: &Key) -> bool {
        self.by_key.contains_key(key)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The buckets.
    pub fn buckets(&self) -> &Buckets {
        &self.buckets
    }

    /// The keys in `buckets`, in key order.
    pub fn keys_in(&self, buckets: &[u8]) -> Vec<Key> {
        let mut out = Vec::new();
        for &b in buckets {
            let from = [b; 1];
            out.extend(
                self.by_key
                    .range(pad(from, 0)..=pad(from, 0xff))
                    .map(|(k, _)| *k),
            );
        }
        out
    }

    /// The entries with these keys (unknown ones left out), in log order.
    pub fn entries(&self, keys: &[Key]) -> Vec<Vec<u8>> {
        let mut seqs: Vec<u64> = keys
            .iter()
            .filter_map(|k| self.by_key.get(k).copied())
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        seqs.iter()
            .filter_map(|s| self.entries.get(s).map(|(_, e)| e.clone()))
            .collect()
    }

    /// Every entry, in log order.
    pub fn all(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.entries.values().map(|(_, e)| e)
    }
}

/// A key starting with `first` and filled with `fill`.
fn pad(first: [u8; 1], fill: u8) -> Key {
    let mut k = [fill; 32];
    k[0] = first[0];
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> Key {
        Sha256::digest(i.to_be_bytes()).into()
    }

    #[test]
    fn summaries_depend_on_the_set_only() {
        let (mut a, mut b) = (LogSet::default(), LogSet::default());
        for i in 0..100 {
            a.insert(key(i), vec![1]);
        }
        for i in (0..100).rev() {
            b.insert(key(i), vec![2]);
        }
        assert!(!b.insert(key(3), vec![3]), "a key counts once");
        assert_eq!(a.buckets().summary(1), b.buckets().summary(1));
        assert!(a.buckets().summary(1).same_updates(&b.buckets().summary(2)));
        b.insert(key(100), vec![]);
        assert!(!a.buckets().summary(1).same_updates(&b.buckets().summary(1)));
    }

    #[test]
    fn only_the_buckets_that_differ_are_wanted() {
        let (mut a, mut b) = (LogSet::default(), LogSet::default());
        for i in 0..10_000 {
            a.insert(key(i), vec![]);
            b.insert(key(i), vec![]);
        }
        let extra = key(10_000);
        b.insert(extra, b"new".to_vec());
        let wanted = a.buckets().wanted_from(b.buckets());
        assert_eq!(wanted, vec![bucket_of(&extra)]);
        let keys = b.keys_in(&wanted);
        assert!(keys.contains(&extra) && keys.len() < 100, "{}", keys.len());
        let missing: Vec<Key> = keys.into_iter().filter(|k| !a.contains(k)).collect();
        assert_eq!(b.entries(&missing), vec![b"new".to_vec()]);
        let wire = Buckets::decode(&b.buckets().to_wire().encode_to_vec()).expect("decodes");
        assert_eq!(&wire, b.buckets());
        assert!(Buckets::decode(&LogBuckets::default().encode_to_vec()).is_none());
    }

    #[test]
    fn stored_buckets_round_trip() {
        let mut b = Bucket::default();
        b.add(&key(1));
        assert_eq!(Bucket::from_bytes(&b.to_bytes()), Some(b));
        assert_eq!(Bucket::from_bytes(&[0; 39]), None);
    }
}

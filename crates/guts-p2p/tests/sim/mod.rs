//! A deterministic simulator of Guts replication: many
//! [`Service`](guts_p2p::service::Service)s over fake replicas, a virtual
//! clock, a seeded PRNG, lost and reordered messages, partitions and
//! crashes.
//!
//! - `store`: the fake replica (a node's disk);
//! - `net`: the nodes, links and clock, and the run loop;
//! - `deliver`: carrying out the services' `Io` and delivering messages.
#![allow(dead_code)]

pub mod deliver;
pub mod net;
pub mod store;

use guts_git::names::RepoName;
use libp2p::identity::Keypair;
use libp2p::PeerId;

pub use net::{Sim, SimConfig, Stats};

/// A seeded PRNG (splitmix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// 20 random bytes (an object id).
    pub fn oid(&mut self) -> [u8; 20] {
        let mut out = [0u8; 20];
        for chunk in out.chunks_mut(8) {
            let bytes = self.next_u64().to_be_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        out
    }
}

/// The peer id of node `index` under `seed`.
pub fn peer_id(seed: u64, index: usize) -> PeerId {
    let mut rng = Rng::new(seed ^ (index as u64).wrapping_mul(0x1234_5678_9ABC_DEF1));
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_be_bytes());
    }
    Keypair::ed25519_from_bytes(bytes)
        .expect("32 bytes make a key")
        .public()
        .to_peer_id()
}

/// The repository every test replicates, and its identity versions.
pub fn repo() -> (RepoName, Vec<Vec<u8>>) {
    let name = RepoName::parse("alice/project").expect("a valid name");
    (name, vec![b"identity v1 of alice/project".to_vec()])
}

/// Random connected topology over `n` nodes: a random spanning tree, then
/// extra links until each node has made about `degree` of them.
pub fn random_topology(rng: &mut Rng, n: usize, degree: usize) -> Vec<(usize, usize)> {
    let mut links = std::collections::BTreeSet::new();
    for i in 1..n {
        let j = rng.below(i as u64) as usize;
        links.insert((j, i));
    }
    for i in 0..n {
        for _ in 1..degree {
            let j = rng.below(n as u64) as usize;
            if j != i {
                links.insert((i.min(j), i.max(j)));
            }
        }
    }
    links.into_iter().collect()
}

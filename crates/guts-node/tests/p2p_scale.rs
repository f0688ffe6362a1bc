//! Thirty real node processes on loopback, in a connected random topology
//! (each node bootstraps from up to three earlier ones, seeded
//! deterministically), all seeding one repository: one push to the first
//! node reaches every node. Prints the time from the push to the last node
//! holding the new ref.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::p2p::{p2p_addr, peer_node_with, seed, wait_connected};
use common::*;
use tempfile::TempDir;

const NODES: usize = 30;
/// How long every node has to get the pushed ref.
const DEADLINE: Duration = Duration::from_secs(60);

/// A small deterministic generator (64-bit LCG, high bits).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
}

/// For each node after the first, the earlier nodes it bootstraps from:
/// up to three distinct ones, always including a random one, so the graph
/// is connected.
fn topology(n: usize, seed: u64) -> Vec<BTreeSet<usize>> {
    let mut rng = Lcg(seed);
    let mut out = vec![BTreeSet::new()];
    for i in 1..n {
        let mut peers = BTreeSet::new();
        for _ in 0..3.min(i) {
            peers.insert(rng.below(i));
        }
        out.push(peers);
    }
    out
}

#[test]
fn a_push_reaches_thirty_nodes() {
    let tmp = TempDir::new().expect("tmp");
    let started = Instant::now();
    let links = topology(NODES, 0x6775_7473);
    let mut nodes: Vec<Node> = Vec::with_capacity(NODES);
    let mut addrs: Vec<String> = Vec::with_capacity(NODES);
    for (i, peers) in links.iter().enumerate() {
        let bootstrap: Vec<&str> = peers.iter().map(|&p| addrs[p].as_str()).collect();
        let bootstrap = bootstrap.join(",");
        let mut extra = vec!["--sync-interval", "0", "--log", "warn"];
        if !bootstrap.is_empty() {
            extra.extend(["--bootstrap", &bootstrap]);
        }
        let node = peer_node_with(&tmp.path().join(format!("n{i}")), None, false, &extra);
        addrs.push(p2p_addr(&node));
        nodes.push(node);
    }
    for (node, peers) in nodes.iter().zip(&links) {
        wait_connected(node, peers.len());
    }
    println!(
        "{NODES} nodes started and connected in {:?}",
        started.elapsed()
    );

    let owner = test_identity().owner_id();
    nodes[0].create_repo("alice", "demo");
    let work = tmp.path().join("work");
    init_work_repo(&work);
    git_ok(
        &work,
        &["push", "-q", &nodes[0].repo_url("alice", "demo"), "main"],
    );
    // Earlier nodes seed first: each node's bootstrap peers hold the
    // repository by the time it seeds.
    for node in &nodes[1..] {
        seed(node, &owner, "demo");
    }

    let new = commit_file(&work, "README.md", "v2\n", "second");
    let pushed = Instant::now();
    git_ok(
        &work,
        &["push", "-q", &nodes[0].repo_url("alice", "demo"), "main"],
    );
    let push_took = pushed.elapsed();
    let mut missing: Vec<usize> = (1..NODES).collect();
    let mut last = Duration::ZERO;
    while !missing.is_empty() {
        assert!(
            pushed.elapsed() < DEADLINE,
            "nodes {missing:?} lack the pushed commit after {DEADLINE:?}"
        );
        missing.retain(|&i| {
            let has = nodes[i].server_refs(&owner, "demo").get("refs/heads/main") == Some(&new);
            if has {
                last = pushed.elapsed();
            }
            !has
        });
        if !missing.is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    println!(
        "push to {NODES} nodes: the push took {push_took:?}; every node had it {last:?} after the push started"
    );
}

#[test]
fn the_topology_is_connected_and_deterministic() {
    let t = topology(NODES, 0x6775_7473);
    assert_eq!(t, topology(NODES, 0x6775_7473));
    assert!(t.iter().skip(1).all(|p| !p.is_empty() && p.len() <= 3));
}

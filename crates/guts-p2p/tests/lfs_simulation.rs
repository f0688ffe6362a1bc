//! Git LFS objects under the simulated network (ADR 0024): the service's
//! decisions of whom to ask for an object, when to ask again and whom to
//! blame. Deterministic, like `simulation.rs`.

mod sim;

use std::collections::BTreeSet;

use guts_git::lfs::LfsOid;
use guts_git::ObjectId;
use sim::store::lfs_pointer;
use sim::{random_topology, Rng, Sim, SimConfig, Stats};

/// `n` pseudo-random files of about 1 KB.
fn files(rng: &mut Rng, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|k| (0..1000 + k * 7).map(|_| rng.next_u64() as u8).collect())
        .collect()
}

/// Node `node` pushes an update whose new objects hold LFS pointers to
/// `contents` (and holds their objects, as after a git-lfs push).
fn push_lfs(sim: &mut Sim, node: usize, contents: &[Vec<u8>]) -> BTreeSet<LfsOid> {
    let update = sim.push(node, "refs/heads/main");
    let lines = sim::store::parse(&update.certificate).expect("a certificate");
    let tip = ObjectId::from(lines[0].new);
    let repo = sim.repo.clone();
    sim.nodes[node].replica.add_lfs(&repo, tip, contents);
    contents.iter().map(|c| lfs_pointer(c).oid).collect()
}

fn spread() -> (u64, Stats) {
    let mut sim = Sim::new(SimConfig::new(77), 12);
    let mut rng = Rng::new(7077);
    for (a, b) in random_topology(&mut rng, 12, 3) {
        sim.link(a, b);
    }
    sim.run_for(500);
    let contents = files(&mut rng, 3);
    let oids = push_lfs(&mut sim, 0, &contents);
    let repo = sim.repo.clone();
    let took = sim
        .run_until(30_000, |s| {
            s.idle() && s.nodes.iter().all(|n| n.replica.lfs_held(&repo) == oids)
        })
        .expect("every node holds the LFS objects");
    let all: Vec<usize> = (0..12).collect();
    assert!(sim.converged(&all));
    for (i, n) in sim.nodes.iter().enumerate() {
        let s = n.service.as_ref().expect("running");
        assert_eq!(s.counts().strikes, 0, "node {i} struck nobody");
        if i != 0 {
            assert_eq!(s.counts().lfs_fetched, 3, "node {i} fetched each once");
        }
    }
    println!("lfs spread: 12 nodes hold 3 LFS objects after {took} ms");
    (took, sim.total())
}

#[test]
fn lfs_objects_pushed_to_one_node_reach_every_seeding_node() {
    let a = spread();
    assert_eq!(a, spread(), "deterministic");
}

fn liar() -> (u32, u64) {
    let mut sim = Sim::new(SimConfig::new(88), 3);
    // 0 – 1 – 2: node 2 hears of the update from node 1 only.
    sim.link(0, 1);
    sim.link(1, 2);
    sim.run_for(500);
    sim.nodes[1].replica.lie_about_lfs();
    let mut rng = Rng::new(8088);
    let contents = files(&mut rng, 3);
    let oids = push_lfs(&mut sim, 0, &contents);
    let repo = sim.repo.clone();
    let liar = sim.nodes[1].peer;
    sim.run_until(30_000, |s| s.idle() && s.converged(&[0, 1, 2]))
        .expect("the refs converge");
    // The refs were applied though the LFS objects were not had.
    assert_eq!(sim.nodes[1].replica.lfs_held(&repo), oids, "fetched from 0");
    assert!(
        sim.nodes[2].replica.lfs_held(&repo).is_empty(),
        "nothing wrong was stored"
    );
    // One strike per wrong object: three, and the liar is blocked.
    let counts = *sim.nodes[2].service.as_ref().expect("running").counts();
    assert_eq!(counts.lfs_fetched, 0);
    assert!(counts.lfs_failed >= 3, "{counts:?}");
    assert!(
        sim.nodes[2].blocked.contains(&liar),
        "node 2 blocked the liar"
    );
    assert!(sim.score(2, &liar).blocked_until > sim.now);
    // Another seeding peer appears: the next comparison brings the objects.
    sim.link(0, 2);
    let took = sim
        .run_until(30_000, |s| s.nodes[2].replica.lfs_held(&repo) == oids)
        .expect("node 2 gets the objects from node 0");
    println!("lfs liar: blocked after 3 wrong objects; objects had from another peer {took} ms after it connected");
    (counts.strikes as u32, took)
}

#[test]
fn a_peer_serving_wrong_lfs_objects_is_struck_and_they_come_from_another() {
    let a = liar();
    assert_eq!(a, liar(), "deterministic");
}

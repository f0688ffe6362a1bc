//! Replication under a simulated network (issue 11): a hundred services
//! over fake replicas, with a virtual clock, lost and reordered messages,
//! partitions, crashes, a big log and a forger. Every test runs with a
//! fixed seed and is deterministic; `SIMSEED=n` runs the burst and the
//! partition under another seed (to explore).

mod sim;

use std::collections::BTreeSet;

use sim::{random_topology, Rng, Sim, SimConfig};

/// Run a scenario twice: the same seed gives the same outcome.
fn twice<T: PartialEq + std::fmt::Debug>(f: impl Fn() -> T) -> T {
    let (a, b) = (f(), f());
    assert_eq!(a, b, "the simulation is deterministic");
    a
}

/// The seed from `SIMSEED`, or `default`.
fn seed_or(default: u64) -> u64 {
    std::env::var("SIMSEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn report(name: &str, sim: &Sim, took: u64) {
    let t = sim.total();
    println!(
        "{name}: converged after {took} ms of virtual time (at {} ms); {} messages sent ({} gossip hops), {} delivered, {} bytes sent, {} received",
        sim.now, t.messages, t.gossip, sim.delivered, t.sent, t.received
    );
}

fn burst() -> (u64, sim::Stats, u64) {
    let seed = seed_or(11);
    let mut config = SimConfig::new(seed);
    config.loss = 0.10;
    let mut sim = Sim::new(config, 100);
    let mut rng = Rng::new(1000 + seed);
    for (a, b) in random_topology(&mut rng, 100, 4) {
        sim.link(a, b);
    }
    sim.run_for(1_000);
    let pushers: Vec<usize> = (0..10).map(|_| rng.below(100) as usize).collect();
    for k in 0..20 {
        let node = pushers[k % 10];
        let name = ["refs/heads/main", "refs/heads/dev", "refs/tags/v1"][rng.below(3) as usize];
        sim.push_at(rng.below(50), node, name);
    }
    let all: Vec<usize> = (0..100).collect();
    let interval = sim.config.service.sync_interval.expect("periodic");
    let took = sim
        .run_until(10 * interval, |s| {
            s.queue_empty() && s.idle() && s.converged(&all)
        })
        .expect("all nodes converge within ten sync intervals");
    report("burst", &sim, took);
    assert_eq!(sim.pushed.len(), 20);
    let (concurrent, chained) = shapes(&sim);
    println!("burst: {concurrent} updates from an old value another update also left, {chained} fast-forwards of an update pushed");
    assert!(concurrent > 0 && chained > 0, "the burst has both shapes");
    let keys = sim.nodes[0].replica.state(&sim.repo).expect("held").keys();
    assert_eq!(keys.len(), 20);
    for n in &sim.nodes {
        assert_eq!(n.replica.state(&sim.repo).expect("held").keys(), keys);
        assert_eq!(n.replica.refs(&sim.repo), sim.expected_refs());
    }
    (took, sim.total(), sim.delivered)
}

/// How many updates pushed left the same old value of a ref as another
/// (concurrent), and how many moved a ref from another update's new value
/// (chained).
fn shapes(sim: &Sim) -> (usize, usize) {
    let lines: Vec<sim::store::Line> = sim
        .pushed
        .iter()
        .flat_map(|u| sim::store::parse(&u.certificate).expect("readable"))
        .collect();
    let concurrent = lines
        .iter()
        .filter(|l| {
            lines
                .iter()
                .filter(|o| o.name == l.name && o.old == l.old)
                .count()
                > 1
        })
        .count();
    let chained = lines
        .iter()
        .filter(|l| lines.iter().any(|o| o.name == l.name && o.new == l.old))
        .count();
    (concurrent, chained)
}

#[test]
fn a_hundred_nodes_converge_after_a_burst_of_concurrent_pushes() {
    twice(burst);
}

fn partition() -> (u64, sim::Stats) {
    let seed = seed_or(22);
    let mut config = SimConfig::new(seed);
    config.loss = 0.02;
    let mut sim = Sim::new(config, 20);
    let mut rng = Rng::new(2000 + seed);
    // Each half connected on its own, and a few links across.
    for half in [0, 10] {
        for (a, b) in random_topology(&mut rng, 10, 3) {
            sim.link(half + a, half + b);
        }
    }
    for _ in 0..3 {
        sim.link(rng.below(10) as usize, 10 + rng.below(10) as usize);
    }
    sim.run_for(1_000);
    let left: BTreeSet<usize> = (0..10).collect();
    let cut = sim.partition(&left);
    assert!(!cut.is_empty());
    for (k, node) in [1, 4, 7, 12, 15, 18, 1, 12].into_iter().enumerate() {
        let name = ["refs/heads/main", "refs/heads/dev"][k % 2];
        sim.push_at(rng.below(200), node, name);
    }
    let right: Vec<usize> = (10..20).collect();
    let left_v: Vec<usize> = (0..10).collect();
    sim.run_until(20_000, |s| s.converged(&left_v) && s.converged(&right))
        .expect("each side converges on its own");
    assert!(
        !sim.converged(&(0..20).collect::<Vec<_>>()),
        "the sides differ"
    );
    sim.heal(&cut);
    let all: Vec<usize> = (0..20).collect();
    let interval = sim.config.service.sync_interval.expect("periodic");
    let took = sim
        .run_until(3 * interval, |s| s.converged(&all))
        .expect("converges after the heal");
    report("partition (from the heal)", &sim, took);
    assert!(
        took <= interval + 1_000,
        "converged {took} ms after the heal, more than one sync interval"
    );
    for n in &sim.nodes {
        assert_eq!(n.replica.refs(&sim.repo), sim.expected_refs());
        assert_eq!(n.replica.log_len(&sim.repo), 8);
    }
    (took, sim.total())
}

#[test]
fn two_halves_converge_within_a_sync_interval_of_the_heal() {
    twice(partition);
}

fn crash() -> (u64, sim::Stats) {
    let mut sim = Sim::new(SimConfig::new(33), 6);
    for (a, b) in [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 0)] {
        sim.link(a, b);
    }
    sim.run_for(500);
    for _ in 0..5 {
        sim.push(0, "refs/heads/main");
    }
    // Node 1 fetches from node 0: crash it while the transfer is in flight.
    let limit = sim.now + 5_000;
    while !sim.fetch_in_flight(1) {
        assert!(sim.step(limit), "node 1 never fetched");
    }
    let crashed_at = sim.now;
    sim.crash(1);
    sim.run_for(2_000);
    assert!(sim.nodes[1].replica.log_len(&sim.repo) < 5);
    sim.start(1);
    let all: Vec<usize> = (0..6).collect();
    let interval = sim.config.service.sync_interval.expect("periodic");
    let took = sim
        .run_until(2 * interval, |s| s.idle() && s.converged(&all))
        .expect("the restarted node catches up");
    println!("crash: node 1 crashed at {crashed_at} ms mid-fetch, restarted 2000 ms later");
    report("crash (from the restart)", &sim, took);
    for n in &sim.nodes {
        assert_eq!(n.replica.log_len(&sim.repo), 5);
        assert_eq!(n.replica.refs(&sim.repo), sim.expected_refs());
    }
    (took, sim.total())
}

#[test]
fn a_node_crashed_mid_fetch_catches_up_after_its_restart() {
    twice(crash);
}

fn forger() -> Vec<(usize, u32, bool)> {
    use guts_p2p::wire::Announce;
    use prost::Message;
    let mut sim = Sim::new(SimConfig::new(55), 10);
    let mut rng = Rng::new(5055);
    for (a, b) in random_topology(&mut rng, 10, 3) {
        sim.link(a, b);
    }
    sim.run_for(500);
    let forger = 0;
    let victims = sim.neighbours(forger);
    let seeded = sim.seeded();
    let topic = guts_p2p::wire::topic(&seeded.id.to_string());
    let forger_peer = sim.nodes[forger].peer;
    for k in 0..3u64 {
        let line = sim::store::Line {
            name: "refs/heads/main".into(),
            old: guts_p2p::conflict::ZERO,
            new: rng.oid(),
        };
        let update = sim::store::update(&seeded.id, 1_000 + k, &[line], true);
        let msg = Announce {
            repo: sim.repo.to_string(),
            update: update.encode_to_vec(),
            doc_versions: 0,
        };
        sim.publish(forger, topic.clone(), msg.encode_to_vec());
        sim.run_for(300);
        for &v in &victims {
            let score = sim.score(v, &forger_peer);
            if k < 2 {
                assert_eq!(score.strikes as u64, k + 1, "node {v} struck the forger");
            }
        }
    }
    let mut out = Vec::new();
    for (i, n) in sim.nodes.iter().enumerate() {
        assert_eq!(n.replica.log_len(&sim.repo), 0, "node {i} applied nothing");
        let blocked = n.blocked.contains(&forger_peer);
        let score = sim.score(i, &forger_peer);
        if victims.contains(&i) {
            assert!(blocked, "node {i} blocked the forger");
            assert!(score.blocked_until > sim.now);
        } else if i != forger {
            assert!(!blocked && score.strikes == 0, "node {i} never heard of it");
        }
        out.push((i, score.strikes, blocked));
    }
    assert!(sim.neighbours(forger).is_empty(), "the forger is cut off");
    // A victim restarted still blocks the forger (its score was kept).
    let v = victims[0];
    sim.crash(v);
    assert!(sim.nodes[v].blocked.is_empty());
    sim.start(v);
    assert!(sim.nodes[v].blocked.contains(&forger_peer), "blocked again");
    assert!(sim.score(v, &forger_peer).blocked_until > sim.now);
    sim.link(v, forger);
    assert!(!sim.linked(v, forger), "a blocked peer cannot link");
    println!(
        "forger: {} neighbours blocked it after 3 forged updates; {} messages",
        victims.len(),
        sim.total().messages
    );
    out
}

#[test]
fn a_forged_update_is_applied_nowhere_and_its_sender_is_blocked() {
    twice(forger);
}

/// `n` updates of distinct refs, each creating its ref.
fn many_updates(
    rng: &mut Rng,
    repo: &guts_identity::RepoId,
    from: u64,
    n: u64,
) -> Vec<guts_identity::SignedRefUpdate> {
    (from..from + n)
        .map(|i| {
            let line = sim::store::Line {
                name: format!("refs/heads/b{i}"),
                old: guts_p2p::conflict::ZERO,
                new: rng.oid(),
            };
            sim::store::update(repo, i, &[line], false)
        })
        .collect()
}

const BIG: usize = 100_000;

fn big_log() -> (u64, u64, sim::Stats, sim::Stats) {
    let (a, b, c) = (0, 1, 2);
    let mut sim = Sim::new(SimConfig::new(44), 3);
    let mut rng = Rng::new(4044);
    let id = sim.seeded().id;
    let started = std::time::Instant::now();
    for u in many_updates(&mut rng, &id, 0, BIG as u64) {
        sim.nodes[a].replica.commit(&sim.repo, &u);
        sim.nodes[c].replica.commit(&sim.repo, &u);
    }
    println!("big log: {BIG} updates made in {:?}", started.elapsed());
    // B is new: it takes the whole log.
    let before = sim.nodes[b].stats;
    sim.link(a, b);
    let full = sim
        .run_until(60_000, |s| {
            s.idle() && s.nodes[b].replica.log_len(&s.repo) == BIG
        })
        .expect("B takes the whole log");
    let full_stats = sim.nodes[b].stats - before;
    assert_eq!(sim.fingerprint(a), sim.fingerprint(b));
    println!(
        "big log: B took {BIG} updates in {full} ms of virtual time: {} bytes received ({} of them objects), {} sent",
        full_stats.received,
        BIG as u64 * sim::deliver::TIP_BYTES,
        full_stats.sent
    );
    sim.unlink(a, b);
    // A gains 10 updates; C, which holds the 100,000, connects.
    for u in many_updates(&mut rng, &id, BIG as u64, 10) {
        sim.nodes[a].replica.commit(&sim.repo, &u);
    }
    let (before_a, before_c) = (sim.nodes[a].stats, sim.nodes[c].stats);
    sim.link(a, c);
    let small = sim
        .run_until(60_000, |s| {
            s.idle() && s.nodes[c].replica.log_len(&s.repo) == BIG + 10
        })
        .expect("C takes the 10 new updates");
    assert_eq!(sim.fingerprint(a), sim.fingerprint(c));
    let (da, dc) = (sim.nodes[a].stats - before_a, sim.nodes[c].stats - before_c);
    let exchanged = dc.received + dc.sent;
    let objects = 10 * sim::deliver::TIP_BYTES;
    println!(
        "big log: C took 10 new updates in {small} ms: {} bytes exchanged ({} of them objects; A sent {} received {})",
        exchanged, objects, da.sent, da.received
    );
    assert!(full_stats.received > 10_000_000);
    // Each side compares: a summary, the buckets (10 KB) and the keys of
    // the 10 buckets that differ (about 390 keys each), both ways.
    assert!(
        dc.received - objects < 200_000 && exchanged - objects < 400_000,
        "the difference costs {exchanged} bytes"
    );
    (full, small, full_stats, dc)
}

#[test]
fn a_big_log_is_taken_whole_once_and_then_only_its_difference() {
    let started = std::time::Instant::now();
    twice(big_log);
    println!("big log: {:?} of wall time, twice", started.elapsed());
}

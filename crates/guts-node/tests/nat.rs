//! NAT traversal between real node processes (ADR 0015), in network
//! namespaces: a public node, and two nodes each behind its own home router
//! (masquerading, no port forwards, unsolicited inbound dropped). The
//! private nodes know only the public node. A repository pushed to one
//! private node is seeded by the other, which finds it in the DHT and
//! reaches it first through the public node's relay, then over a direct
//! connection that hole punching (DCUtR) opened through both NATs.
//!
//! Needs root, `ip` and `iptables`; prints `SKIP nat: ...` and passes
//! without them.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::{Host, Lab, PUBLIC_IP};
use common::p2p::*;
use common::*;
use tempfile::TempDir;

/// Start a node in `host`'s namespace, peers on TCP port 4001; its HTTP
/// (on the namespace's loopback) is reached through a forwarder.
fn lab_node(lab: &Lab, host: Host, dir: &Path, bootstrap: Option<&str>) -> Node {
    let ns = lab.host_ns(host);
    let mut args = vec![
        "--p2p-listen",
        "/ip4/0.0.0.0/tcp/4001",
        "--no-mdns",
        "--sync-interval",
        "5",
        // The lab's "internet" uses documentation ranges, which AutoNAT
        // otherwise ignores.
        "--autonat-private-ips",
    ];
    if let Some(b) = bootstrap {
        args.extend(["--bootstrap", b]);
    }
    let mut node = Node::start_under(dir, &["ip", "netns", "exec", &ns], &args);
    let inside = node.addr().parse().expect("the node's HTTP address");
    node.reach_through(lab.forward(&ns, inside));
    node
}

fn node_info(node: &Node) -> serde_json::Value {
    node.get("/api/v1/node").json()
}

/// The node's connections to `peer`: (address, relayed).
fn connections_to(node: &Node, peer: &str) -> Vec<(String, bool)> {
    let info = node_info(node);
    info["connections"]
        .as_array()
        .expect("connections array")
        .iter()
        .filter(|c| c["peer"] == peer)
        .map(|c| {
            let addr = c["address"].as_str().expect("address").to_owned();
            let relayed = c["relayed"].as_bool().expect("relayed");
            assert_eq!(relayed, addr.contains("/p2p-circuit"), "{c}");
            (addr, relayed)
        })
        .collect()
}

/// Connected to `peer`, and only through relays (`Some(true)`) or only
/// directly (`Some(false)`); `None`: not connected, or both.
fn only_relayed(node: &Node, peer: &str) -> Option<bool> {
    let c = connections_to(node, peer);
    let relayed = c.iter().filter(|(_, r)| *r).count();
    match (c.len(), relayed) {
        (0, _) => None,
        (n, r) if n == r => Some(true),
        (_, 0) => Some(false),
        _ => None,
    }
}

fn relayed_external_addrs(node: &Node) -> Vec<String> {
    node_info(node)["external_addrs"]
        .as_array()
        .expect("external_addrs array")
        .iter()
        .filter_map(|a| a.as_str())
        .filter(|a| a.contains("/p2p-circuit"))
        .map(str::to_owned)
        .collect()
}

fn hole_punches(node: &Node) -> u64 {
    node_info(node)["hole_punches"]
        .as_u64()
        .expect("hole_punches")
}

fn reachability(node: &Node) -> String {
    node_info(node)["reachability"]
        .as_str()
        .expect("reachability")
        .to_owned()
}

/// `git clone --bare` run inside `ns` from the node's own HTTP address
/// there, then `git fsck --full`; returns the clone's refs.
fn clone_inside(ns: &str, node: &Node, owner: &str, dest: &Path) -> Vec<(String, String)> {
    let inside = std::fs::read_to_string(node.data_dir().join("http.addr")).expect("http.addr");
    let url = format!("http://{}/{owner}/demo.git", inside.trim());
    let parent = dest.parent().expect("parent");
    // Stock git with the test harness's clean environment, inside `ns`.
    let template = git_cmd(parent);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "git"])
        .args(template.get_args())
        .args(["clone", "-q", "--bare", &url])
        .arg(dest)
        .current_dir(parent)
        .env_clear()
        .stdin(Stdio::null());
    for (k, v) in template.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let out = cmd.output().expect("run git in the namespace");
    assert_success(parent, &["clone", &url], &out);
    assert_fsck(dest);
    refs_of(dest).into_iter().collect()
}

/// The public node, then A and B bootstrapping from it only; returns once
/// both listen through its relay.
fn start_nodes(lab: &Lab, dir: &Path) -> [Node; 3] {
    let p = lab_node(lab, Host::Public, &dir.join("p"), None);
    let relay = format!("/ip4/{PUBLIC_IP}/tcp/4001/p2p/{}", peer_id(&p));
    let a = lab_node(lab, Host::A, &dir.join("a"), Some(&relay));
    let b = lab_node(lab, Host::B, &dir.join("b"), Some(&relay));
    eventually(20, "A and B listen through the public node's relay", || {
        !relayed_external_addrs(&a).is_empty() && !relayed_external_addrs(&b).is_empty()
    });
    for node in [&a, &b] {
        let relayed = relayed_external_addrs(node);
        assert!(
            relayed.iter().all(|r| r.contains(&peer_id(&p))),
            "{relayed:?}"
        );
    }
    [p, a, b]
}

#[test]
fn private_nodes_replicate_through_a_relay_then_over_a_hole_punched_connection() {
    let lab = match Lab::new() {
        Ok(lab) => lab,
        Err(why) => {
            println!("SKIP nat: {why}");
            return;
        }
    };
    let started = Instant::now();
    // Phase 1: the routers cannot reach each other: only the relay joins
    // A and B, and hole punching fails.
    lab.cut_between_routers(true);
    let tmp = TempDir::new().expect("tmp");
    let [p, a, b] = start_nodes(&lab, tmp.path());
    let (a_id, b_id) = (peer_id(&a), peer_id(&b));

    a.create_repo("alice", "demo");
    let work = tmp.path().join("work");
    init_work_repo(&work);
    git_ok(&work, &["push", "-q", &a.repo_url("alice", "demo"), "main"]);
    let owner = test_identity().owner_id();
    seed(&b, &owner, "demo");
    assert!(same_refs(&a, &b, &owner, "demo"), "B seeded A's refs");
    assert_eq!(
        only_relayed(&b, &a_id),
        Some(true),
        "B reached A through the relay only: {:?}",
        connections_to(&b, &a_id)
    );
    assert_eq!(hole_punches(&a) + hole_punches(&b), 0);
    eventually(
        30,
        "AutoNAT: the public node is public, A and B private",
        || {
            reachability(&p) == "public"
                && reachability(&a) == "private"
                && reachability(&b) == "private"
        },
    );

    // Phase 2: the internet between the routers works again: a new
    // hole-punching attempt opens a direct connection through both NATs,
    // and the relayed one is closed.
    lab.cut_between_routers(false);
    eventually(
        45,
        "a direct, hole-punched connection between A and B",
        || only_relayed(&b, &a_id) == Some(false) && only_relayed(&a, &b_id) == Some(false),
    );
    assert!(hole_punches(&a) + hole_punches(&b) >= 1);
    let direct = connections_to(&b, &a_id);
    assert!(
        direct
            .iter()
            .all(|(addr, _)| addr.contains(common::netns::ROUTER_A_WAN)),
        "B reaches A at router A's public address: {direct:?}"
    );

    let c2 = commit_file(&work, "README.md", "over a direct connection\n", "second");
    git_ok(&work, &["push", "-q", &a.repo_url("alice", "demo"), "main"]);
    eventually(20, "B has the second update", || {
        b.server_refs(&owner, "demo").get("refs/heads/main") == Some(&c2)
    });
    assert_eq!(
        only_relayed(&b, &a_id),
        Some(false),
        "the second update came over the direct connection: {:?}",
        connections_to(&b, &a_id)
    );

    // Stock git clones from B, inside B's network.
    let clone = tmp.path().join("from-b.git");
    let refs = clone_inside(&lab.host_ns(Host::B), &b, &owner, &clone);
    let expected: Vec<(String, String)> = a.server_refs(&owner, "demo").into_iter().collect();
    assert_eq!(refs, expected);
    let elapsed = started.elapsed();
    println!("nat: relay then direct in {elapsed:?}");
    assert!(elapsed < Duration::from_secs(120), "took {elapsed:?}");
}

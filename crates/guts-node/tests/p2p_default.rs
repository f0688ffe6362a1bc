//! Peer-to-peer replication is on by default: `guts-node run` without p2p
//! flags listens on the default port (or a free one when another node has
//! it), `--no-p2p` turns it off, and the `[p2p]` table of the config file
//! is used.

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::Command;

use common::p2p::{connected, p2p_addr, peer_id, peer_node, wait_connected};
use common::Node;
use tempfile::TempDir;

/// The default p2p port (`config::DEFAULT_P2P_PORT`).
const DEFAULT_P2P_PORT: u16 = 4101;

/// The TCP ports of the node's IPv4 listen addresses.
fn tcp4_ports(node: &Node) -> BTreeSet<u16> {
    let view = node.get("/api/v1/node").json();
    assert_eq!(view["p2p"], true, "{view}");
    view["listen_addrs"]
        .as_array()
        .expect("listen_addrs")
        .iter()
        .filter_map(|a| a.as_str())
        .filter(|a| a.starts_with("/ip4/"))
        .filter_map(|a| a.split("/tcp/").nth(1))
        .filter_map(|rest| rest.split('/').next()?.parse().ok())
        .collect()
}

#[test]
fn two_nodes_without_flags_both_peer_on_distinct_ports() {
    let tmp = TempDir::new().expect("tmp");
    // No p2p flags but --no-mdns: the nodes of parallel tests must not find
    // each other. The default port may be taken (by the first node, by
    // another test, by a node running on this machine): both must start.
    let a = Node::start_peering(&tmp.path().join("a"), &["--no-mdns"]);
    let b = Node::start_peering(&tmp.path().join("b"), &["--no-mdns"]);
    let (pa, pb) = (tcp4_ports(&a), tcp4_ports(&b));
    assert_eq!(pa.len(), 1, "one TCP port per node: {pa:?}");
    assert_eq!(pb.len(), 1, "one TCP port per node: {pb:?}");
    assert_ne!(pa, pb, "the two nodes listen on the same port");
    for (node, ports) in [(&a, &pa), (&b, &pb)] {
        assert!(node.data_dir().join("p2p.addr").exists());
        let log = node.log();
        if !ports.contains(&DEFAULT_P2P_PORT) {
            assert!(
                log.contains(&format!("the default p2p port {DEFAULT_P2P_PORT} is taken")),
                "no fallback warning:\n{log}"
            );
        }
        // QUIC listens too.
        let view = node.get("/api/v1/node").json();
        assert!(view.to_string().contains("/quic-v1/"), "{view}");
    }
    // At most one of them holds the default port.
    assert!(!(pa.contains(&DEFAULT_P2P_PORT) && pb.contains(&DEFAULT_P2P_PORT)));
}

#[test]
fn nodes_started_at_once_all_start_on_distinct_ports() {
    // Started together, the nodes may all find the default port free when
    // they probe it; those that then fail to bind it retry on free ports.
    let tmp = TempDir::new().expect("tmp");
    let starts: Vec<_> = (0..3)
        .map(|i| {
            let dir = tmp.path().join(format!("n{i}"));
            std::thread::spawn(move || Node::start_peering(&dir, &["--no-mdns", "--no-dht"]))
        })
        .collect();
    let nodes: Vec<Node> = starts
        .into_iter()
        .map(|h| h.join().expect("start"))
        .collect();
    let ports: Vec<BTreeSet<u16>> = nodes.iter().map(tcp4_ports).collect();
    let all: BTreeSet<u16> = ports.iter().flatten().copied().collect();
    assert_eq!(all.len(), 3, "{ports:?}");
}

#[test]
fn no_p2p_turns_replication_off() {
    let tmp = TempDir::new().expect("tmp");
    let data = tmp.path().join("data");
    let node = Node::start_peering(&data, &["--no-p2p"]);
    let view = node.get("/api/v1/node").json();
    assert_eq!(view["p2p"], false, "{view}");
    assert!(!data.join("p2p.addr").exists());
    assert!(!data.join("node.key").exists());
    // The same from the config file.
    drop(node);
    std::fs::write(data.join("config.toml"), "[p2p]\nenabled = false\n").expect("config");
    let node = Node::start_peering(&data, &[]);
    assert_eq!(node.get("/api/v1/node").json()["p2p"], false);
}

#[test]
fn the_config_file_bootstrap_list_is_used() {
    let tmp = TempDir::new().expect("tmp");
    let a = peer_node(&tmp.path().join("a"), None, false);
    let b_dir = tmp.path().join("b");
    std::fs::create_dir_all(&b_dir).expect("mkdir");
    std::fs::write(
        b_dir.join("config.toml"),
        format!(
            "[p2p]\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nbootstrap = [\"{}\"]\nmdns = false\ndht = false\n",
            p2p_addr(&a)
        ),
    )
    .expect("config");
    let b = Node::start_peering(&b_dir, &[]);
    wait_connected(&b, 1);
    assert!(connected(&b).contains(&peer_id(&a)));
    // Only the configured address: 127.0.0.1, one TCP port, no QUIC.
    let ports = tcp4_ports(&b);
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert!(!b.get("/api/v1/node").json().to_string().contains("quic"));
}

#[test]
fn an_explicit_listen_address_that_is_taken_is_an_error() {
    let tmp = TempDir::new().expect("tmp");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let out = Command::new(env!("CARGO_BIN_EXE_guts-node"))
        .args([
            "run",
            "--http-listen",
            "127.0.0.1:0",
            "--no-mdns",
            "--data-dir",
        ])
        .arg(tmp.path())
        .args(["--p2p-listen", &format!("/ip4/127.0.0.1/tcp/{port}")])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen on"), "{err}");
}

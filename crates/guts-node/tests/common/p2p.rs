//! Helpers for tests with several replicating nodes: starting a node with
//! libp2p on loopback, its addresses and peers, seeding, waiting for
//! convergence.

use std::path::Path;
use std::time::{Duration, Instant};

use super::Node;

/// Start a node that replicates, optionally bootstrapping from `bootstrap`.
/// Without the DHT (`dht == false`), a node connects only to the peers it
/// is given, so the topology is exactly the one a test builds. mDNS is off.
///
/// The periodic log comparison is off (`--sync-interval 0`), so updates
/// travel only by announcement and catch-up on connection, which the tests
/// check; [`peer_node_with`] can turn it on.
pub fn peer_node(dir: &Path, bootstrap: Option<&str>, dht: bool) -> Node {
    peer_node_with(dir, bootstrap, dht, &["--sync-interval", "0"])
}

/// [`peer_node`] with more flags.
pub fn peer_node_with(dir: &Path, bootstrap: Option<&str>, dht: bool, extra: &[&str]) -> Node {
    let mut args = vec!["--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"];
    args.extend(extra);
    if !dht {
        args.push("--no-dht");
    }
    if let Some(b) = bootstrap {
        args.extend(["--bootstrap", b]);
    }
    Node::start_with(dir, &args)
}

/// The node's first libp2p address, with `/p2p/<peer id>`.
pub fn p2p_addr(node: &Node) -> String {
    let text = std::fs::read_to_string(node.data_dir().join("p2p.addr")).expect("p2p.addr");
    text.lines().next().expect("an address").trim().to_owned()
}

/// The node's peer id, as `GET /api/v1/node` reports it.
pub fn peer_id(node: &Node) -> String {
    node.get("/api/v1/node").json()["peer_id"]
        .as_str()
        .expect("peer id")
        .to_owned()
}

/// The peers the node is connected to.
pub fn connected(node: &Node) -> Vec<String> {
    node.get("/api/v1/node").json()["connected_peers"]
        .as_array()
        .expect("connected_peers array")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// Wait until the node has at least `n` peers.
pub fn wait_connected(node: &Node, n: usize) {
    eventually(20, "peer connections", || connected(node).len() >= n);
}

/// Ask the node to seed `owner/name` (REST).
pub fn seed(node: &Node, owner: &str, name: &str) {
    let resp = node.post_json(
        &format!("/api/v1/repos/{owner}/{name}/seed"),
        &serde_json::json!({}),
    );
    assert_eq!(resp.status, 200, "seed: {}", resp.text());
}

/// The signed-update log as the REST API shows it (empty if the node does
/// not have the repository).
pub fn updates(node: &Node, owner: &str, name: &str) -> Vec<serde_json::Value> {
    node.get(&format!("/api/v1/repos/{owner}/{name}/updates"))
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Poll until `f` holds, or fail after `secs` with `what`.
pub fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether two nodes hold the same, non-empty refs for `owner/name`.
pub fn same_refs(a: &Node, b: &Node, owner: &str, name: &str) -> bool {
    let x = a.server_refs(owner, name);
    !x.is_empty() && x == b.server_refs(owner, name)
}

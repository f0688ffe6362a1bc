//! Wiring of the peer-to-peer layer into the node: the node key, the
//! network, the replicator, and the announcements of local pushes.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use guts_p2p::network::{self, Event, Handle, NetworkConfig, Status};
use guts_p2p::replication::{Replicator, Seeded};
use guts_p2p::{Multiaddr, NodeKeypair};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use crate::config::DEFAULT_P2P_PORT;
use crate::error::NodeError;
use crate::p2p_config::{self, Fallbacks};
use crate::replica::NodeReplica;
use crate::repos::RepoEvent;

/// The running peer-to-peer side of a node.
pub struct P2p {
    /// The network.
    pub net: Handle,
    /// The replication protocol.
    pub replicator: Replicator<NodeReplica>,
    /// The node's storage as replication sees it.
    pub replica: Arc<NodeReplica>,
}

/// Options of the p2p layer.
#[derive(Debug, Clone)]
pub struct P2pOptions {
    /// Listen addresses.
    pub listen: Vec<Multiaddr>,
    /// Bootstrap peers.
    pub bootstrap: Vec<Multiaddr>,
    /// LAN discovery.
    pub mdns: bool,
    /// Kademlia DHT.
    pub dht: bool,
    /// How often logs are compared with connected peers (None: never).
    pub sync_interval: Option<Duration>,
    /// `listen` are the defaults: a port that is taken falls back to a
    /// free one (with a warning) instead of failing the start.
    pub fallback: bool,
    /// NAT traversal: the relay service, AutoNAT (ADR 0015).
    pub nat: network::NatConfig,
}

/// Load the node key from `path`, creating it (mode 0600) on first start.
fn node_key(path: &Path) -> Result<NodeKeypair, NodeError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            return NodeKeypair::from_protobuf_encoding(&bytes).map_err(|e| {
                NodeError::Config(format!("node key {} is unreadable: {e}", path.display()))
            })
        }
        // Only a missing key is replaced: any other failure would silently
        // change the node's peer id.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(NodeError::Config(format!(
                "cannot read the node key {}: {e}",
                path.display()
            )))
        }
    }
    let key = NodeKeypair::generate_ed25519();
    let bytes = key
        .to_protobuf_encoding()
        .map_err(|e| NodeError::Internal(e.to_string()))?;
    crate::auth::write_private(path, &bytes)?;
    tracing::info!(path = %path.display(), "created the node key");
    Ok(key)
}

impl P2p {
    /// Start the network and replication; writes the listen addresses
    /// (with `/p2p/<peer id>`) to `DATA_DIR/p2p.addr`, one per line.
    pub async fn start(
        data_dir: &Path,
        opts: P2pOptions,
        replica: Arc<NodeReplica>,
    ) -> Result<Arc<Self>, NodeError> {
        let keypair = node_key(&data_dir.join("node.key"))?;
        let (net, events, listen, fallbacks) = start_network(keypair, &opts).await?;
        let replicator = Replicator::start(
            net.clone(),
            events,
            Arc::clone(&replica),
            opts.sync_interval,
            Some(replica.metrics()),
        )
        .await
        .map_err(|e| NodeError::Config(e.to_string()))?;
        let events = replica.repos.subscribe();
        tokio::spawn(announce_pushes(
            replicator.clone(),
            Arc::clone(&replica),
            events,
        ));
        let status = listening(&net, &listen).await?;
        warn_fallbacks(&status, &fallbacks);
        // IPv4 before IPv6, TCP before QUIC: the first line is the one
        // most peers can dial.
        let mut addrs = status.listen_addrs.clone();
        addrs.sort_by_key(|a| p2p_config::kind(a).unwrap_or((true, true)));
        let lines: Vec<String> = addrs
            .iter()
            .map(|a| format!("{a}/p2p/{}", status.peer_id))
            .collect();
        let tmp = data_dir.join("p2p.addr.tmp");
        std::fs::write(&tmp, lines.join("\n"))?;
        std::fs::rename(&tmp, data_dir.join("p2p.addr"))?;
        tracing::info!(peer_id = %status.peer_id, addrs = ?lines, mdns = opts.mdns, dht = opts.dht, "peer-to-peer replication running");
        Ok(Arc::new(P2p {
            net,
            replicator,
            replica,
        }))
    }
}

/// Start the network on `opts.listen`. With the default addresses
/// (`opts.fallback`), a port that is taken falls back to a free one; a port
/// taken between the probe and the bind is retried, the last attempt on
/// free ports only. Returns the addresses listened on and what fell back.
async fn start_network(
    keypair: NodeKeypair,
    opts: &P2pOptions,
) -> Result<(Handle, mpsc::Receiver<Event>, Vec<Multiaddr>, Fallbacks), NodeError> {
    const ATTEMPTS: usize = 3;
    let mut attempt = 1;
    loop {
        let (listen, fallbacks) = if opts.fallback {
            p2p_config::available(&opts.listen, attempt == ATTEMPTS)
        } else {
            (opts.listen.clone(), Fallbacks::default())
        };
        let started = network::start(NetworkConfig {
            keypair: keypair.clone(),
            listen: listen.clone(),
            bootstrap: opts.bootstrap.clone(),
            mdns: opts.mdns,
            dht: opts.dht,
            accept: vec![guts_p2p::wire::REPLICATION_PROTOCOL],
            nat: opts.nat,
        })
        .await;
        match started {
            Ok((net, events)) => return Ok((net, events, listen, fallbacks)),
            Err(e) if opts.fallback && attempt < ATTEMPTS => {
                tracing::warn!(error = %e, attempt, "cannot listen on the default p2p addresses; retrying");
                attempt += 1;
            }
            Err(e) => return Err(NodeError::Config(e.to_string())),
        }
    }
}

/// The network's state once it listens on every kind of address in
/// `listen` (TCP, QUIC; IPv4, IPv6), or after 2.5 s.
async fn listening(net: &Handle, listen: &[Multiaddr]) -> Result<Status, NodeError> {
    let want: HashSet<_> = listen.iter().filter_map(p2p_config::kind).collect();
    let status = || async {
        net.status()
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))
    };
    let mut current = status().await?;
    for _ in 0..50 {
        let have: HashSet<_> = current
            .listen_addrs
            .iter()
            .filter_map(p2p_config::kind)
            .collect();
        if !current.listen_addrs.is_empty() && want.is_subset(&have) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        current = status().await?;
    }
    Ok(current)
}

/// Say which port each transport got when the default one was taken.
fn warn_fallbacks(status: &Status, fallbacks: &Fallbacks) {
    if fallbacks.moved.is_empty() {
        return;
    }
    let got: Vec<String> = fallbacks
        .moved
        .iter()
        .map(|&k| {
            let port = status
                .listen_addrs
                .iter()
                .find(|a| p2p_config::kind(a) == Some(k))
                .and_then(p2p_config::port);
            let port = port.map_or_else(|| "none".to_owned(), |p| p.to_string());
            format!("{} port {port}", p2p_config::kind_name(k))
        })
        .collect();
    tracing::warn!(
        "the default p2p port {DEFAULT_P2P_PORT} is taken (another node on this machine?): listening on {} instead. These ports change at every start: give --p2p-listen (or p2p.listen in the config file) a fixed free port for peers to reach this node",
        got.join(", ")
    );
}

/// Announce a new identity document version of a repository this node seeds.
async fn announce_identity(
    replicator: &Replicator<NodeReplica>,
    replica: &NodeReplica,
    seeded: Seeded,
    versions: u64,
) {
    let repos = Arc::clone(&replica.repos);
    let r = seeded.name.clone();
    if !tokio::task::spawn_blocking(move || repos.is_seeding(&r))
        .await
        .unwrap_or(false)
    {
        return;
    }
    match replicator.announce_identity(&seeded, versions).await {
        Ok(()) => tracing::debug!(repo = %seeded.name, versions, "announced an identity document"),
        Err(e) => {
            tracing::warn!(repo = %seeded.name, error = %e, "could not announce an identity document")
        }
    }
}

/// Announce every push this node accepts, for the repositories it seeds
/// (peers would ask it for the objects). A subscriber of the domain
/// layer's events: nothing in the push path calls replication.
async fn announce_pushes(
    replicator: Replicator<NodeReplica>,
    replica: Arc<NodeReplica>,
    mut events: tokio::sync::broadcast::Receiver<RepoEvent>,
) {
    loop {
        let (repo, id, update) = match events.recv().await {
            Ok(RepoEvent::IdentityChanged { repo, id, versions }) => {
                announce_identity(&replicator, &replica, Seeded { name: repo, id }, versions).await;
                continue;
            }
            Ok(RepoEvent::Pushed {
                repo,
                id,
                update,
                seq,
            }) => {
                tracing::debug!(%repo, seq, "announcing a pushed update");
                (repo, id, update)
            }
            Ok(RepoEvent::RefsMoved {
                repo,
                moves,
                replicated,
                ..
            }) => {
                if replicated {
                    for (name, old, new) in moves {
                        tracing::info!(%repo, r#ref = %name, ?old, ?new, "ref moved by a replicated update");
                    }
                }
                continue;
            }
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "push announcements dropped; peers catch up by log comparison"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let repos = Arc::clone(&replica.repos);
        let r = repo.clone();
        let seeding = tokio::task::spawn_blocking(move || repos.is_seeding(&r))
            .await
            .unwrap_or(false);
        if !seeding {
            tracing::info!(%repo, "update not announced: this node does not seed the repository");
            continue;
        }
        let seeded = Seeded { name: repo, id };
        if let Err(e) = replicator.announce(&seeded, &update).await {
            tracing::warn!(repo = %seeded.name, error = %e, "could not announce an update");
        }
    }
}

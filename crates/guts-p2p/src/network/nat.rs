//! NAT traversal (ADR 0015): AutoNAT tells the node whether it is publicly
//! reachable; a node that is not (or does not know yet) listens through the
//! circuit relays among the peers it dialed, so that its relayed address is
//! advertised (identify, Kademlia) and peers can reach it; DCUtR then turns a
//! relayed connection into a direct, hole-punched one, after which the
//! relayed connections to that peer are closed.
//!
//! This module keeps the connection table the node reports, the relays it
//! listens through and the hole-punching retries.

use std::collections::HashMap;
use std::time::Instant;

use libp2p::core::transport::ListenerId;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::ConnectionId;
use libp2p::{autonat, dcutr, identify, relay, Multiaddr, PeerId, Swarm};

use super::{Behaviour, Status};
use crate::limits::{
    HOLE_PUNCH_RETRY_INTERVAL, MAX_HOLE_PUNCH_RETRIES, MAX_RELAYED_BYTES, MAX_RELAYS_USED,
    MAX_RELAY_CIRCUITS, MAX_RELAY_CIRCUITS_PER_PEER, MAX_RELAY_CIRCUIT_DURATION,
    MAX_RELAY_RESERVATIONS, MAX_RELAY_RESERVATIONS_PER_PEER, RELAY_RESERVATION_DURATION,
};

/// How the node takes part in NAT traversal.
#[derive(Debug, Clone, Copy)]
pub struct NatConfig {
    /// Relay circuits for peers that cannot be reached directly.
    pub relay_service: bool,
    /// Let AutoNAT use peers seen at private addresses (RFC 1918 and the
    /// like) as probe servers and dial them back: for networks where peers
    /// reach each other only at such addresses.
    pub autonat_private_ips: bool,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            relay_service: true,
            autonat_private_ips: false,
        }
    }
}

/// Whether the node can be dialed from the internet, as AutoNAT found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reachability {
    /// Not known yet (or too few peers to ask).
    #[default]
    Unknown,
    /// Peers could dial one of its addresses.
    Public,
    /// Peers could not dial it: it is behind NAT or a firewall.
    Private,
}

impl Reachability {
    /// `unknown`, `public` or `private`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reachability::Unknown => "unknown",
            Reachability::Public => "public",
            Reachability::Private => "private",
        }
    }
}

/// One open connection to a peer.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The peer.
    pub peer: PeerId,
    /// Its address (for a relayed connection, the circuit through the relay).
    pub address: Multiaddr,
    /// Through a relay (`/p2p-circuit`) rather than direct.
    pub relayed: bool,
}

/// The relay server with the limits of [`crate::limits`].
pub(super) fn relay_behaviour(local: PeerId) -> relay::Behaviour {
    let config = relay::Config {
        max_reservations: MAX_RELAY_RESERVATIONS,
        max_reservations_per_peer: MAX_RELAY_RESERVATIONS_PER_PEER,
        reservation_duration: RELAY_RESERVATION_DURATION,
        max_circuits: MAX_RELAY_CIRCUITS,
        max_circuits_per_peer: MAX_RELAY_CIRCUITS_PER_PEER,
        max_circuit_duration: MAX_RELAY_CIRCUIT_DURATION,
        max_circuit_bytes: MAX_RELAYED_BYTES,
        // libp2p's default rate limits per peer and per IP address stay.
        ..relay::Config::default()
    };
    let mut relay = relay::Behaviour::new(local, config);
    // Offered once AutoNAT finds the node public (see `Nat::autonat`), not
    // as soon as it has any external address: a relayed address is one.
    relay.set_status(Some(relay::Status::Disable));
    relay
}

/// AutoNAT (v1): probes start soon after start and are repeated; every
/// node also answers other nodes' probes.
pub(super) fn autonat_behaviour(local: PeerId, config: NatConfig) -> autonat::Behaviour {
    let config = autonat::Config {
        boot_delay: std::time::Duration::from_secs(5),
        retry_interval: std::time::Duration::from_secs(30),
        refresh_interval: std::time::Duration::from_secs(10 * 60),
        throttle_server_period: std::time::Duration::from_secs(15),
        only_global_ips: !config.autonat_private_ips,
        ..autonat::Config::default()
    };
    autonat::Behaviour::new(local, config)
}

/// Tell connected peers at once that this node's external addresses
/// changed (identify sends them otherwise only at its next periodic
/// exchange): they add a new relayed address to their routing tables, and
/// hand it to whoever looks this node up.
pub(super) fn push_addresses(swarm: &mut Swarm<Behaviour>) {
    let peers: Vec<PeerId> = swarm.connected_peers().copied().collect();
    swarm.behaviour_mut().identify.push(peers);
}

/// One open connection.
struct Conn {
    peer: PeerId,
    /// The remote address (for a relayed connection, the circuit).
    addr: Multiaddr,
    relayed: bool,
    /// This node dialed it (a relayed one: through the relay).
    dialer: bool,
    since: Instant,
}

/// A peer that offers the relay service and that this node dialed directly.
struct Relay {
    /// The address this node dialed it at (without `/p2p`).
    addr: Multiaddr,
    /// The listener through it, while listening.
    listener: Option<ListenerId>,
    /// Listening through it failed: not tried again until it reconnects.
    failed: bool,
}

/// NAT traversal state, owned by the swarm task.
#[derive(Default)]
pub(super) struct Nat {
    reachability: Reachability,
    connections: HashMap<ConnectionId, Conn>,
    relays: HashMap<PeerId, Relay>,
    hole_punches: u64,
    /// New circuits opened per peer to retry hole punching.
    retries: HashMap<PeerId, u32>,
}

/// `addr` without a trailing `/p2p/<peer>`.
fn without_peer(addr: &Multiaddr) -> Multiaddr {
    let mut a = addr.clone();
    if matches!(a.iter().last(), Some(Protocol::P2p(_))) {
        a.pop();
    }
    a
}

impl Nat {
    /// The network state as the node reports it.
    pub(super) fn status(&self, swarm: &Swarm<Behaviour>) -> Status {
        let mut connections: Vec<ConnectionInfo> = self
            .connections
            .values()
            .map(|c| ConnectionInfo {
                peer: c.peer,
                address: c.addr.clone(),
                relayed: c.relayed,
            })
            .collect();
        connections.sort_by_key(|c| (c.peer, c.address.to_string()));
        Status {
            peer_id: *swarm.local_peer_id(),
            listen_addrs: swarm.listeners().cloned().collect(),
            connected: swarm.connected_peers().copied().collect(),
            reachability: self.reachability,
            external_addrs: swarm.external_addresses().cloned().collect(),
            connections,
            hole_punches: self.hole_punches,
        }
    }

    /// Whether any connection goes through a relay.
    pub(super) fn has_relayed_connections(&self) -> bool {
        self.connections.values().any(|c| c.relayed)
    }

    /// A connection is up: note it; once a peer is reached directly, its
    /// relayed connections are closed (they cost the relay).
    pub(super) fn connected(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        id: ConnectionId,
        peer: PeerId,
        endpoint: &ConnectedPoint,
    ) {
        let relayed = endpoint.is_relayed();
        let addr = match endpoint {
            // The remote address of a circuit that reached this node is
            // only `/p2p/<peer>`: name the circuit instead.
            ConnectedPoint::Listener { local_addr, .. } if relayed => {
                without_peer(local_addr).with(Protocol::P2p(peer))
            }
            _ => endpoint.get_remote_address().clone(),
        };
        self.connections.insert(
            id,
            Conn {
                peer,
                addr,
                relayed,
                dialer: endpoint.is_dialer(),
                since: Instant::now(),
            },
        );
        let direct = self
            .connections
            .values()
            .any(|c| c.peer == peer && !c.relayed);
        if direct {
            self.retries.remove(&peer);
            self.close_relayed(swarm, peer, None);
        } else if relayed && endpoint.is_dialer() {
            // A new circuit (a retry) replaces the older ones.
            self.close_relayed(swarm, peer, Some(id));
        }
    }

    /// Close the relayed connections to `peer`, but `keep`.
    fn close_relayed(
        &self,
        swarm: &mut Swarm<Behaviour>,
        peer: PeerId,
        keep: Option<ConnectionId>,
    ) {
        for (id, c) in &self.connections {
            if c.peer == peer && c.relayed && Some(*id) != keep {
                tracing::debug!(%peer, addr = %c.addr, "closing a relayed connection");
                swarm.close_connection(*id);
            }
        }
    }

    /// A connection closed; `remaining` connections to the peer are left.
    pub(super) fn disconnected(&mut self, id: ConnectionId, peer: PeerId, remaining: u32) {
        self.connections.remove(&id);
        if remaining == 0 {
            self.relays.remove(&peer);
            self.retries.remove(&peer);
        }
    }

    /// Identify told what `peer` supports: a relay is a candidate to listen
    /// through if this node dialed it directly at an address it announces
    /// (so that address works for others too; a hole-punched peer's NAT
    /// mapping does not qualify).
    pub(super) fn identified(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        peer: PeerId,
        info: &identify::Info,
    ) {
        if !info.protocols.contains(&relay::HOP_PROTOCOL_NAME) || self.relays.contains_key(&peer) {
            return;
        }
        let addr = self
            .connections
            .values()
            .filter(|c| c.peer == peer && c.dialer && !c.relayed)
            .map(|c| without_peer(&c.addr))
            .find(|a| info.listen_addrs.iter().any(|l| without_peer(l) == *a));
        let Some(addr) = addr else { return };
        self.relays.insert(
            peer,
            Relay {
                addr,
                listener: None,
                failed: false,
            },
        );
        self.reserve(swarm);
    }

    /// Listen through relays until [`MAX_RELAYS_USED`] are used, unless
    /// this node is known to be publicly reachable.
    fn reserve(&mut self, swarm: &mut Swarm<Behaviour>) {
        if self.reachability == Reachability::Public {
            return;
        }
        let mut used = self
            .relays
            .values()
            .filter(|r| r.listener.is_some())
            .count();
        let mut candidates: Vec<(&PeerId, &mut Relay)> = self
            .relays
            .iter_mut()
            .filter(|(_, r)| r.listener.is_none() && !r.failed)
            .collect();
        candidates.sort_by_key(|(p, _)| **p);
        for (peer, relay) in candidates {
            if used >= MAX_RELAYS_USED {
                break;
            }
            let circuit = relay
                .addr
                .clone()
                .with(Protocol::P2p(*peer))
                .with(Protocol::P2pCircuit);
            match swarm.listen_on(circuit.clone()) {
                Ok(id) => {
                    tracing::debug!(relay = %peer, addr = %circuit, "asking for a relay reservation");
                    relay.listener = Some(id);
                    used += 1;
                }
                Err(e) => {
                    tracing::warn!(relay = %peer, error = %e, "cannot listen through a relay");
                    relay.failed = true;
                }
            }
        }
    }

    /// A listener closed: if it was through a relay, that relay is not
    /// used again until it reconnects.
    pub(super) fn listener_closed(&mut self, listener: ListenerId, reason: Result<(), String>) {
        for (peer, relay) in &mut self.relays {
            if relay.listener == Some(listener) {
                relay.listener = None;
                relay.failed = true;
                match &reason {
                    Ok(()) => tracing::info!(relay = %peer, "stopped listening through a relay"),
                    Err(e) => {
                        tracing::info!(relay = %peer, error = %e, "listening through a relay failed")
                    }
                }
            }
        }
    }

    /// AutoNAT changed its verdict: a public node stops listening through
    /// relays; any other listens through them.
    pub(super) fn autonat(&mut self, swarm: &mut Swarm<Behaviour>, event: autonat::Event) {
        let autonat::Event::StatusChanged { old, new } = event else {
            return;
        };
        let reachability = match &new {
            autonat::NatStatus::Public(_) => Reachability::Public,
            autonat::NatStatus::Private => Reachability::Private,
            autonat::NatStatus::Unknown => Reachability::Unknown,
        };
        tracing::info!(
            ?old,
            ?new,
            "reachability changed (AutoNAT): {}",
            reachability.as_str()
        );
        self.reachability = reachability;
        let public = reachability == Reachability::Public;
        if let Some(service) = swarm.behaviour_mut().relay.as_mut() {
            let status = if public {
                tracing::info!("relay service offered to peers (the node is public)");
                relay::Status::Enable
            } else {
                tracing::info!("relay service not offered (the node is not known to be public)");
                relay::Status::Disable
            };
            service.set_status(Some(status));
        }
        if public {
            for relay in self.relays.values_mut() {
                if let Some(id) = relay.listener.take() {
                    swarm.remove_listener(id);
                }
            }
        } else {
            self.reserve(swarm);
        }
    }

    /// Relay client events: reservations accepted, circuits.
    pub(super) fn relay_client(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            } => {
                if renewal {
                    tracing::debug!(relay = %relay_peer_id, "relay reservation renewed");
                } else {
                    tracing::info!(relay = %relay_peer_id, "relay reservation accepted: reachable through the relay");
                }
            }
            relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
                tracing::debug!(relay = %relay_peer_id, "circuit through a relay opened");
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                tracing::debug!(peer = %src_peer_id, "a peer reached this node through a relay");
            }
        }
    }

    /// Relay service events (this node relaying for others).
    pub(super) fn relay_service(&mut self, event: relay::Event) {
        match event {
            relay::Event::ReservationReqAccepted {
                src_peer_id,
                renewed: false,
            } => tracing::info!(peer = %src_peer_id, "accepted a relay reservation"),
            relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => tracing::debug!(src = %src_peer_id, dst = %dst_peer_id, "relaying a circuit"),
            other => tracing::debug!(event = ?other, "relay service"),
        }
    }

    /// DCUtR finished an attempt.
    pub(super) fn dcutr(&mut self, event: dcutr::Event) {
        match event.result {
            Ok(_) => {
                self.hole_punches += 1;
                tracing::info!(peer = %event.remote_peer_id, "hole punch succeeded: direct connection");
            }
            Err(e) => {
                tracing::info!(peer = %event.remote_peer_id, error = %e, "hole punch failed; staying on the relay")
            }
        }
    }

    /// Periodic work: retry hole punching with peers reached only through
    /// a relay (a new circuit starts a new DCUtR attempt), and listen
    /// through relays where needed.
    pub(super) fn tick(&mut self, swarm: &mut Swarm<Behaviour>) {
        for (peer, addr) in self.punch_retries_due() {
            let tries = self.retries.entry(peer).or_default();
            *tries += 1;
            tracing::info!(%peer, attempt = *tries, "reached only through a relay: opening a new circuit to retry hole punching");
            let opts = DialOpts::peer_id(peer)
                .addresses(vec![addr])
                .condition(PeerCondition::Always)
                .build();
            if let Err(e) = swarm.dial(opts) {
                tracing::debug!(%peer, error = %e, "cannot dial through the relay again");
            }
        }
        self.reserve(swarm);
    }

    /// Peers connected only through relays, whose newest circuit is older
    /// than [`HOLE_PUNCH_RETRY_INTERVAL`], that this node dialed (it knows
    /// the circuit address) and that have retries left; with the address.
    fn punch_retries_due(&self) -> Vec<(PeerId, Multiaddr)> {
        // Per peer: only relayed so far, newest connection, newest circuit dialed.
        let mut peers: HashMap<PeerId, (bool, Instant, Option<&Multiaddr>)> = HashMap::new();
        for c in self.connections.values() {
            let e = peers.entry(c.peer).or_insert((true, c.since, None));
            e.0 &= c.relayed;
            e.1 = e.1.max(c.since);
            if c.relayed && c.dialer {
                e.2 = Some(&c.addr);
            }
        }
        peers
            .into_iter()
            .filter(|(peer, (only_relayed, newest, _))| {
                *only_relayed
                    && newest.elapsed() >= HOLE_PUNCH_RETRY_INTERVAL
                    && self.retries.get(peer).copied().unwrap_or(0) < MAX_HOLE_PUNCH_RETRIES
            })
            .filter_map(|(peer, (_, _, addr))| Some((peer, addr?.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn conn(peer: PeerId, addr: &str, dialer: bool, age: Duration) -> Conn {
        let addr: Multiaddr = addr.parse().expect("address");
        Conn {
            peer,
            relayed: addr.iter().any(|p| p == Protocol::P2pCircuit),
            addr,
            dialer,
            since: Instant::now()
                .checked_sub(age)
                .expect("an instant in the past"),
        }
    }

    const CIRCUIT: &str = "/ip4/198.51.100.2/tcp/4001/p2p/12D3KooWRBYRqJYRE8XUytw4mDUz8UUMggkseiK2B7YNnfhdEsCv/p2p-circuit";

    fn nat_with(conns: Vec<Conn>) -> Nat {
        let mut nat = Nat::default();
        for (i, c) in conns.into_iter().enumerate() {
            nat.connections.insert(ConnectionId::new_unchecked(i), c);
        }
        nat
    }

    #[test]
    fn a_peer_reached_only_through_an_old_circuit_is_dialed_again() {
        let peer = PeerId::random();
        let old = HOLE_PUNCH_RETRY_INTERVAL + Duration::from_secs(1);
        let nat = nat_with(vec![conn(peer, CIRCUIT, true, old)]);
        let due = nat.punch_retries_due();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, peer);
        assert!(due[0].1.to_string().ends_with("/p2p-circuit"));
    }

    #[test]
    fn no_retry_with_a_direct_connection_a_young_circuit_or_none_left() {
        let peer = PeerId::random();
        let old = HOLE_PUNCH_RETRY_INTERVAL + Duration::from_secs(1);
        let direct = "/ip4/203.0.113.2/tcp/4001";
        let cases = [
            vec![
                conn(peer, CIRCUIT, true, old),
                conn(peer, direct, true, old),
            ],
            vec![conn(peer, CIRCUIT, true, Duration::from_secs(1))],
            // A newer circuit the peer opened is still being punched.
            vec![
                conn(peer, CIRCUIT, true, old),
                conn(peer, CIRCUIT, false, Duration::ZERO),
            ],
            // Only the peer dialed: this node has no circuit address to dial.
            vec![conn(peer, CIRCUIT, false, old)],
        ];
        for conns in cases {
            assert!(nat_with(conns).punch_retries_due().is_empty());
        }
        let mut nat = nat_with(vec![conn(peer, CIRCUIT, true, old)]);
        nat.retries.insert(peer, MAX_HOLE_PUNCH_RETRIES);
        assert!(nat.punch_retries_due().is_empty());
    }

    #[test]
    fn without_peer_strips_only_a_trailing_peer_id() {
        let a: Multiaddr =
            format!("{CIRCUIT}/p2p/12D3KooWRBYRqJYRE8XUytw4mDUz8UUMggkseiK2B7YNnfhdEsCv")
                .parse()
                .expect("address");
        assert_eq!(without_peer(&a).to_string(), CIRCUIT);
        let b: Multiaddr = "/ip4/198.51.100.2/tcp/4001".parse().expect("address");
        assert_eq!(without_peer(&b), b);
    }
}

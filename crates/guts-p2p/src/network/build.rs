//! Building the swarm (transports, behaviours, bandwidth metrics), and
//! recording its events into libp2p's metrics.

use std::time::Duration;

use libp2p::gossipsub::{self, MessageAuthenticity};
use libp2p::kad::{self, store::MemoryStore};
use libp2p::metrics::{Metrics, Recorder};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, identity, mdns, noise, ping, tcp, yamux, StreamProtocol, Swarm};
use prometheus_client::registry::Registry;

use super::{nat, Behaviour, BehaviourEvent, NatConfig, AGENT, PROTOCOL_PREFIX};
use crate::error::{Error, Result};
use crate::limits::{MAX_GOSSIP_BYTES, PEER_IDLE_TIMEOUT};

/// The swarm: TCP and QUIC transports, circuits through relays, and every
/// behaviour, mDNS, the DHT and the relay service only if asked.
pub(super) fn build_swarm(
    keypair: identity::Keypair,
    mdns_on: bool,
    dht_on: bool,
    nat_config: NatConfig,
    registry: &mut Registry,
) -> Result<Swarm<Behaviour>> {
    Ok(libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| Error::Transport(e.to_string()))?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| Error::Transport(e.to_string()))?
        .with_bandwidth_metrics(registry)
        .with_behaviour(|key, relay_client| {
            let mdns = if mdns_on {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    key.public().to_peer_id(),
                )?)
            } else {
                None
            };
            Ok(Behaviour {
                blocked: Default::default(),
                identify: identify::Behaviour::new(
                    identify::Config::new(format!("{PROTOCOL_PREFIX}/id/1.0.0"), key.public())
                        .with_agent_version(AGENT.into()),
                ),
                ping: ping::Behaviour::default(),
                kad: Toggle::from(dht_on.then(|| kad_behaviour(key))),
                mdns: Toggle::from(mdns),
                gossipsub: gossip_behaviour(key)?,
                stream: libp2p_stream::Behaviour::new(),
                relay_client,
                relay: Toggle::from(
                    nat_config
                        .relay_service
                        .then(|| nat::relay_behaviour(key.public().to_peer_id())),
                ),
                autonat: nat::autonat_behaviour(key.public().to_peer_id(), nat_config),
                dcutr: libp2p::dcutr::Behaviour::new(key.public().to_peer_id()),
            })
        })
        .map_err(|e| Error::Transport(e.to_string()))?
        .with_swarm_config(|c| {
            // Outbound streams propose one protocol each and send their
            // first bytes with the proposal (multistream-select's "lazy"
            // mode): a replication request costs one round trip, not two.
            c.with_idle_connection_timeout(PEER_IDLE_TIMEOUT)
                .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
        })
        .build())
}

/// Gossipsub with signed messages, validated by the node before they are
/// forwarded, and ids that are the same on every node.
fn gossip_behaviour(key: &identity::Keypair) -> std::result::Result<gossipsub::Behaviour, String> {
    let gossip_config = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_millis(500))
        .max_transmit_size(MAX_GOSSIP_BYTES)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .message_id_fn(|m: &gossipsub::Message| {
            // Same id on every node and version: SHA-256 of author and payload.
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            if let Some(src) = &m.source {
                h.update(src.to_bytes());
            }
            h.update(&m.data);
            gossipsub::MessageId::from(h.finalize().to_vec())
        })
        .build()
        .map_err(|e| e.to_string())?;
    gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gossip_config)
        .map_err(|e| e.to_string())
}

/// Kademlia in server mode, for provider records only.
fn kad_behaviour(key: &identity::Keypair) -> kad::Behaviour<MemoryStore> {
    let mut kad_config = kad::Config::new(StreamProtocol::new("/guts/kad/1.0.0"));
    kad_config.set_query_timeout(Duration::from_secs(10));
    kad_config.set_periodic_bootstrap_interval(None);
    let mut kad = kad::Behaviour::with_config(
        key.public().to_peer_id(),
        MemoryStore::new(key.public().to_peer_id()),
        kad_config,
    );
    kad.set_mode(Some(kad::Mode::Server));
    kad
}

/// Record a swarm event, and the events of the behaviours libp2p-metrics
/// knows, into libp2p's metrics.
pub(super) fn record(metrics: &Metrics, event: &SwarmEvent<BehaviourEvent>) {
    metrics.record(event);
    if let SwarmEvent::Behaviour(e) = event {
        match e {
            BehaviourEvent::Identify(e) => metrics.record(e),
            BehaviourEvent::Ping(e) => metrics.record(e),
            BehaviourEvent::Kad(e) => metrics.record(e),
            BehaviourEvent::Gossipsub(e) => metrics.record(e),
            BehaviourEvent::Relay(e) => metrics.record(e),
            BehaviourEvent::Dcutr(e) => metrics.record(e),
            _ => {}
        }
    }
}

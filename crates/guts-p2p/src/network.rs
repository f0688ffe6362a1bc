//! The libp2p side: one swarm per node with TCP and QUIC transports, noise,
//! yamux, identify, ping, Kademlia (providers of repositories), mDNS (LAN
//! discovery, optional), gossipsub (signed-update announcements) and raw
//! streams (object transfer, identity and log exchange), and NAT traversal
//! ([`nat`]): AutoNAT, circuit relay v2 (service and client) and DCUtR.
//!
//! The swarm runs on its own task; the rest of the node talks to it through a
//! cloneable [`Handle`] and receives [`Event`]s on a channel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use libp2p::gossipsub::{self, IdentTopic};
use libp2p::kad::{self, store::MemoryStore};
use libp2p::metrics::Metrics;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, identity, mdns, ping, Multiaddr, PeerId, StreamProtocol, Swarm};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

mod build;
mod nat;
mod providers;
pub use libp2p::multiaddr::Protocol;
pub use nat::{ConnectionInfo, NatConfig, Reachability};
use providers::ProviderQueries;

/// Agent string in identify.
const AGENT: &str = concat!("guts/", env!("CARGO_PKG_VERSION"));
/// Protocol id of identify and Kademlia in the Guts network.
const PROTOCOL_PREFIX: &str = "/guts";

/// How to start the network.
pub struct NetworkConfig {
    /// The node key (distinct from user identities).
    pub keypair: identity::Keypair,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start (with `/p2p/<peer id>`).
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the LAN with mDNS.
    pub mdns: bool,
    /// Join the Kademlia DHT (provider records; its queries connect to
    /// peers beyond the configured ones).
    pub dht: bool,
    /// Stream protocols accepted from the first connection on, before any
    /// listen or dial: a peer that connects and at once opens a stream (a
    /// catch-up request) is never turned away. Take them with
    /// [`Handle::accept`].
    pub accept: Vec<StreamProtocol>,
    /// AutoNAT, the relay service, hole punching.
    pub nat: NatConfig,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    blocked: libp2p::allow_block_list::Behaviour<libp2p::allow_block_list::BlockedPeers>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: Toggle<kad::Behaviour<MemoryStore>>,
    mdns: Toggle<mdns::tokio::Behaviour>,
    gossipsub: gossipsub::Behaviour,
    stream: libp2p_stream::Behaviour,
    relay_client: libp2p::relay::client::Behaviour,
    relay: Toggle<libp2p::relay::Behaviour>,
    autonat: libp2p::autonat::Behaviour,
    dcutr: libp2p::dcutr::Behaviour,
}

/// What the network reports to the node.
#[derive(Debug)]
pub enum Event {
    /// A gossip message on a subscribed topic, relayed by `source`.
    Gossip {
        /// The topic.
        topic: String,
        /// The peer that delivered it (not necessarily its author).
        source: PeerId,
        /// The payload.
        data: Vec<u8>,
        /// Id for [`Handle::report`]: messages are forwarded only once accepted.
        message_id: gossipsub::MessageId,
    },
    /// A connection to a peer was established.
    Connected(PeerId),
    /// The last connection to a peer closed.
    Disconnected(PeerId),
}

/// A snapshot of the network state.
#[derive(Debug, Clone)]
pub struct Status {
    /// This node's peer id.
    pub peer_id: PeerId,
    /// Addresses the node listens on.
    pub listen_addrs: Vec<Multiaddr>,
    /// Currently connected peers.
    pub connected: Vec<PeerId>,
    /// Whether AutoNAT found the node publicly reachable.
    pub reachability: Reachability,
    /// Addresses peers are told to reach this node at: confirmed by AutoNAT,
    /// or relayed (`/p2p-circuit`) through a relay that accepted a reservation.
    pub external_addrs: Vec<Multiaddr>,
    /// Every open connection.
    pub connections: Vec<ConnectionInfo>,
    /// Relayed connections upgraded to direct ones by hole punching (DCUtR).
    pub hole_punches: u64,
}

enum Command {
    Subscribe(String),
    Unsubscribe(String),
    Publish(String, Vec<u8>),
    Provide(Vec<u8>),
    FindProviders(Vec<u8>, oneshot::Sender<Vec<PeerId>>),
    Status(oneshot::Sender<Status>),
    Report(gossipsub::MessageId, PeerId, gossipsub::MessageAcceptance),
    Block(PeerId, bool),
}

/// Inbound streams of the protocols registered at start, until taken.
type Registered = Arc<Mutex<HashMap<StreamProtocol, libp2p_stream::IncomingStreams>>>;

/// A handle on the running network.
#[derive(Clone)]
pub struct Handle {
    commands: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    registered: Registered,
    peer_id: PeerId,
    metrics: Arc<Registry>,
}

impl Handle {
    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// libp2p's metrics (`libp2p_*`: swarm, bandwidth, identify, Kademlia,
    /// ping, gossipsub, relay, DCUtR), to encode beside the node's.
    pub fn metrics(&self) -> Arc<Registry> {
        Arc::clone(&self.metrics)
    }

    async fn send(&self, c: Command) -> Result<()> {
        self.commands.send(c).await.map_err(|_| Error::Stopped)
    }

    /// Follow a gossip topic.
    pub async fn subscribe(&self, topic: &str) -> Result<()> {
        self.send(Command::Subscribe(topic.to_owned())).await
    }

    /// Stop following a gossip topic.
    pub async fn unsubscribe(&self, topic: &str) -> Result<()> {
        self.send(Command::Unsubscribe(topic.to_owned())).await
    }

    /// Publish on a topic (best effort: no subscribed peer is not an error).
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<()> {
        self.send(Command::Publish(topic.to_owned(), data)).await
    }

    /// Announce in the DHT that this node provides `key`.
    pub async fn provide(&self, key: Vec<u8>) -> Result<()> {
        self.send(Command::Provide(key)).await
    }

    /// Peers that announced `key` in the DHT.
    pub async fn find_providers(&self, key: Vec<u8>) -> Result<Vec<PeerId>> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::FindProviders(key, tx)).await?;
        Ok(rx.await.unwrap_or_default())
    }

    /// Tell gossipsub what to do with a received message: accepted ones
    /// are forwarded, rejected ones dropped and their sender penalized,
    /// ignored ones dropped.
    pub async fn report(
        &self,
        id: gossipsub::MessageId,
        source: PeerId,
        verdict: gossipsub::MessageAcceptance,
    ) -> Result<()> {
        self.send(Command::Report(id, source, verdict)).await
    }

    /// Block a peer (disconnect it and refuse its connections), or accept
    /// it again. Whom to block is the replication service's decision.
    pub async fn block(&self, peer: PeerId, blocked: bool) -> Result<()> {
        self.send(Command::Block(peer, blocked)).await
    }

    /// The current network state.
    pub async fn status(&self) -> Result<Status> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Status(tx)).await?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Open a stream to `peer` speaking `protocol`.
    pub async fn open_stream(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<libp2p::Stream> {
        self.control
            .clone()
            .open_stream(peer, protocol)
            .await
            .map_err(|e| Error::Stream(format!("opening a stream to {peer}: {e}")))
    }

    /// Accept inbound streams of `protocol`: those queued since start if it
    /// was in [`NetworkConfig::accept`], else from now on.
    pub fn accept(&self, protocol: StreamProtocol) -> Result<libp2p_stream::IncomingStreams> {
        let early = self
            .registered
            .lock()
            .map_err(|_| Error::Stream("stream registry poisoned".into()))?
            .remove(&protocol);
        if let Some(incoming) = early {
            return Ok(incoming);
        }
        self.control
            .clone()
            .accept(protocol)
            .map_err(|_| Error::Stream("protocol already registered".into()))
    }
}

/// Start the swarm on the current tokio runtime.
pub async fn start(config: NetworkConfig) -> Result<(Handle, mpsc::Receiver<Event>)> {
    let peer_id = config.keypair.public().to_peer_id();
    // A registry per start: one whose listen fails leaves nothing behind.
    let mut registry = Registry::default();
    let mut swarm = build::build_swarm(
        config.keypair,
        config.mdns,
        config.dht,
        config.nat,
        &mut registry,
    )?;
    let metrics = Metrics::new(&mut registry);
    let mut control = swarm.behaviour().stream.new_control();
    let mut registered = HashMap::new();
    for protocol in config.accept {
        let incoming = control
            .accept(protocol.clone())
            .map_err(|_| Error::Stream(format!("{protocol} registered twice")))?;
        registered.insert(protocol, incoming);
    }
    listen_and_dial(&mut swarm, &config.listen, &config.bootstrap)?;
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let (event_tx, event_rx) = mpsc::channel(1024);
    tokio::spawn(run(swarm, cmd_rx, event_tx, metrics));
    Ok((
        Handle {
            commands: cmd_tx,
            control,
            registered: Arc::new(Mutex::new(registered)),
            peer_id,
            metrics: Arc::new(registry),
        },
        event_rx,
    ))
}

/// Listen on `listen`; dial the `bootstrap` peers (and add them to the DHT).
fn listen_and_dial(
    swarm: &mut Swarm<Behaviour>,
    listen: &[Multiaddr],
    bootstrap: &[Multiaddr],
) -> Result<()> {
    for addr in listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| Error::Transport(format!("cannot listen on {addr}: {e}")))?;
    }
    for addr in bootstrap {
        if let (Some(libp2p::multiaddr::Protocol::P2p(peer)), Some(kad)) =
            (addr.iter().last(), swarm.behaviour_mut().kad.as_mut())
        {
            kad.add_address(&peer, addr.clone());
        }
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
        }
    }
    Ok(())
}

async fn run(
    mut swarm: Swarm<Behaviour>,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    metrics: Metrics,
) {
    let mut provider_queries = ProviderQueries::new();
    let mut nat = nat::Nat::default();
    let mut nat_tick = tokio::time::interval(crate::limits::HOLE_PUNCH_RETRY_INTERVAL / 3);
    loop {
        tokio::select! {
            cmd = commands.recv() => {
                match cmd {
                    None => return,
                    // The NAT state lives here, beside the swarm.
                    Some(Command::Status(reply)) => {
                        let _ = reply.send(nat.status(&swarm));
                    }
                    Some(cmd) => handle_command(&mut swarm, cmd, &mut provider_queries),
                }
            }
            event = swarm.select_next_some() => {
                build::record(&metrics, &event);
                handle_event(&mut swarm, event, &events, &mut provider_queries, &mut nat).await;
            }
            _ = nat_tick.tick() => nat.tick(&mut swarm),
        }
    }
}

fn handle_command(
    swarm: &mut Swarm<Behaviour>,
    cmd: Command,
    provider_queries: &mut ProviderQueries,
) {
    let b = swarm.behaviour_mut();
    match cmd {
        Command::Subscribe(t) => {
            if let Err(e) = b.gossipsub.subscribe(&IdentTopic::new(t)) {
                tracing::warn!(error = %e, "gossip subscribe failed");
            }
        }
        Command::Unsubscribe(t) => {
            b.gossipsub.unsubscribe(&IdentTopic::new(t));
        }
        Command::Publish(t, data) => match b.gossipsub.publish(IdentTopic::new(t.clone()), data) {
            Ok(_) => {}
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                tracing::debug!(topic = %t, "no peer follows this topic yet")
            }
            Err(gossipsub::PublishError::Duplicate) => {}
            Err(e) => tracing::warn!(topic = %t, error = %e, "publish failed"),
        },
        Command::Provide(key) => {
            if let Some(kad) = b.kad.as_mut() {
                if let Err(e) = kad.start_providing(kad::RecordKey::new(&key)) {
                    tracing::warn!(error = %e, "cannot announce provider record");
                }
            }
        }
        Command::FindProviders(key, reply) => match b.kad.as_mut() {
            Some(kad) => providers::find(kad, provider_queries, &key, reply),
            None => {
                let _ = reply.send(Vec::new());
            }
        },
        Command::Report(id, source, verdict) => {
            if verdict == gossipsub::MessageAcceptance::Reject {
                tracing::warn!(peer = %source, "rejecting an invalid announcement");
            }
            b.gossipsub
                .report_message_validation_result(&id, &source, verdict);
        }
        Command::Block(peer, true) => {
            b.blocked.block_peer(peer);
        }
        Command::Block(peer, false) => {
            b.blocked.unblock_peer(peer);
        }
        // Answered by `run`, which holds the NAT state.
        Command::Status(_) => {}
    }
}

async fn handle_event(
    swarm: &mut Swarm<Behaviour>,
    event: SwarmEvent<BehaviourEvent>,
    events: &mpsc::Sender<Event>,
    provider_queries: &mut ProviderQueries,
    nat: &mut nat::Nat,
) {
    match event {
        SwarmEvent::NewListenAddr { address, .. } => {
            tracing::info!(%address, peer_id = %swarm.local_peer_id(), "p2p listening");
        }
        SwarmEvent::ListenerClosed {
            listener_id,
            reason,
            ..
        } => nat.listener_closed(listener_id, reason.map_err(|e| e.to_string())),
        SwarmEvent::ExternalAddrConfirmed { address } => {
            tracing::info!(%address, "external address confirmed: peers are told it");
            nat::push_addresses(swarm);
        }
        SwarmEvent::ExternalAddrExpired { address } => {
            tracing::info!(%address, "external address expired");
            nat::push_addresses(swarm);
        }
        SwarmEvent::ConnectionEstablished {
            peer_id,
            connection_id,
            endpoint,
            num_established,
            ..
        } => {
            let relayed = endpoint.is_relayed();
            tracing::info!(peer = %peer_id, addr = %endpoint.get_remote_address(), relayed, "peer connected");
            nat.connected(swarm, connection_id, peer_id, &endpoint);
            swarm.behaviour_mut().gossipsub.add_explicit_peer(&peer_id);
            if num_established.get() == 1 {
                let _ = events.send(Event::Connected(peer_id)).await;
            }
        }
        SwarmEvent::ConnectionClosed {
            peer_id,
            connection_id,
            num_established,
            ..
        } => {
            nat.disconnected(connection_id, peer_id, num_established);
            if num_established == 0 {
                tracing::info!(peer = %peer_id, "peer disconnected");
                let _ = events.send(Event::Disconnected(peer_id)).await;
            }
        }
        SwarmEvent::OutgoingConnectionError {
            peer_id: Some(peer),
            error,
            ..
        } => {
            tracing::warn!(%peer, %error, "cannot connect to peer");
        }
        SwarmEvent::Behaviour(event) => {
            handle_behaviour_event(swarm, event, events, provider_queries, nat).await
        }
        _ => {}
    }
}

async fn handle_behaviour_event(
    swarm: &mut Swarm<Behaviour>,
    event: BehaviourEvent,
    events: &mpsc::Sender<Event>,
    provider_queries: &mut ProviderQueries,
    nat: &mut nat::Nat,
) {
    match event {
        BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
            nat.identified(swarm, peer_id, &info);
            if let Some(kad) = swarm.behaviour_mut().kad.as_mut() {
                for addr in info.listen_addrs {
                    kad.add_address(&peer_id, addr);
                }
            }
        }
        BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
            for (peer, addr) in found {
                tracing::info!(%peer, %addr, "peer discovered on the LAN");
                if let Some(kad) = swarm.behaviour_mut().kad.as_mut() {
                    kad.add_address(&peer, addr.clone());
                }
                let _ = swarm.dial(addr);
            }
        }
        BehaviourEvent::Gossipsub(gossipsub::Event::Message {
            propagation_source,
            message,
            message_id,
        }) => {
            let _ = events
                .send(Event::Gossip {
                    topic: message.topic.into_string(),
                    source: propagation_source,
                    data: message.data,
                    message_id,
                })
                .await;
        }
        BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
            id,
            result: kad::QueryResult::GetProviders(res),
            step,
            ..
        }) => providers::progress(swarm, provider_queries, nat, id, res, step.last),
        BehaviourEvent::RelayClient(e) => nat.relay_client(e),
        BehaviourEvent::Relay(e) => nat.relay_service(e),
        BehaviourEvent::Autonat(e) => nat.autonat(swarm, e),
        BehaviourEvent::Dcutr(e) => nat.dcutr(e),
        _ => {}
    }
}

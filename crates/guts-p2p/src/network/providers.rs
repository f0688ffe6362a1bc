//! Provider lookups in the DHT, and reaching the providers found: a node
//! behind NAT may be reachable only at a relayed address (ADR 0015).

use std::collections::{HashMap, HashSet};

use libp2p::kad;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{PeerId, Swarm};
use tokio::sync::oneshot;

use super::nat::Nat;
use super::Behaviour;

/// A provider query under way.
pub(super) struct ProviderQuery {
    /// Where to send the providers found.
    reply: oneshot::Sender<Vec<PeerId>>,
    /// Those found so far.
    found: Vec<PeerId>,
    /// What is looked up, to ask again.
    key: kad::RecordKey,
    /// Asked again already.
    retried: bool,
}

/// Provider queries under way.
pub(super) type ProviderQueries = HashMap<kad::QueryId, ProviderQuery>;

/// Start looking up the providers of `key`; they are sent to `reply`.
pub(super) fn find(
    kad: &mut kad::Behaviour<kad::store::MemoryStore>,
    queries: &mut ProviderQueries,
    key: &[u8],
    reply: oneshot::Sender<Vec<PeerId>>,
) {
    let key = kad::RecordKey::new(&key);
    let id = kad.get_providers(key.clone());
    queries.insert(
        id,
        ProviderQuery {
            reply,
            found: Vec::new(),
            key,
            retried: false,
        },
    );
}

/// A provider query progressed: providers found are dialed at once; at the
/// end, the providers are sent back.
///
/// A query that found no one is run once more if the node has relayed
/// connections: Kademlia counts a peer as failed in every running query
/// when any dial to it fails, and a failed hole-punching dial to a peer
/// just reached through a relay would drop that peer's answer. The second
/// query asks it over the relayed connection.
pub(super) fn progress(
    swarm: &mut Swarm<Behaviour>,
    queries: &mut ProviderQueries,
    nat: &Nat,
    id: kad::QueryId,
    result: kad::GetProvidersResult,
    last: bool,
) {
    if let (Some(q), Ok(kad::GetProvidersOk::FoundProviders { providers, .. })) =
        (queries.get_mut(&id), result)
    {
        dial(swarm, &providers);
        q.found.extend(providers);
    }
    if !last {
        return;
    }
    let Some(mut q) = queries.remove(&id) else {
        return;
    };
    if q.found.is_empty() && !q.retried && nat.has_relayed_connections() {
        if let Some(kad) = swarm.behaviour_mut().kad.as_mut() {
            tracing::debug!("no provider found; asking again over the relayed connections");
            q.retried = true;
            let id = kad.get_providers(q.key.clone());
            queries.insert(id, q);
            return;
        }
    }
    let _ = q.reply.send(q.found);
}

/// Dial the providers a query found while it runs: Kademlia knows the
/// addresses of their provider records (a relayed one for a node behind
/// NAT) only until the query ends, and the caller connects to them by peer
/// id right after. Dialed even while another dial is under way, which may
/// know only older, unreachable addresses.
fn dial(swarm: &mut Swarm<Behaviour>, providers: &HashSet<PeerId>) {
    for peer in providers {
        if peer == swarm.local_peer_id() || swarm.is_connected(peer) {
            continue;
        }
        let opts = DialOpts::peer_id(*peer)
            .condition(PeerCondition::Disconnected)
            .build();
        if let Err(e) = swarm.dial(opts) {
            tracing::debug!(%peer, error = %e, "cannot dial a provider");
        }
    }
}

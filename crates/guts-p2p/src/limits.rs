//! Named limits on what peers may send.

use std::time::Duration;

/// Largest gossip message (an announcement carries one push certificate).
pub const MAX_GOSSIP_BYTES: usize = 256 * 1024;
/// Largest framed message on a stream (requests, identity documents, a log page).
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;
/// Most log entries asked or sent in one `Entries` exchange.
pub const MAX_LOG_ENTRIES: usize = 10_000;
/// Bytes of entries in one `Entries` answer (room is left in the frame for
/// the message around them).
pub const LOG_PAGE_BYTES: usize = MAX_FRAME_BYTES - 64 * 1024;
/// Close connections idle for this long.
pub const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stream exchange may take before it is abandoned.
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(600);
/// Invalid announcements, log entries, identities or packs after which a
/// peer is disconnected and blocked.
pub const MAX_INVALID_MESSAGES: u32 = 3;
/// How long a block lasts (kept across restarts).
pub const BLOCK_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Attempts at one object transfer before giving up until the next
/// announcement or catch-up; each later attempt resumes after the bytes
/// that arrived.
pub const FETCH_ATTEMPTS: u32 = 3;
/// Pause before the second attempt (twice as long before the third).
pub const FETCH_RETRY_DELAY: Duration = Duration::from_millis(500);
/// Git LFS objects one fetching round takes for a repository (after an
/// update is applied, or after a log comparison); the others wait for the
/// next round (the next comparison, every `--sync-interval`).
pub const MAX_LFS_PER_ROUND: usize = 256;
/// Peers asked for one Git LFS object in a round (the peer the update came
/// from first, then other connected peers), before it waits for the next
/// round.
pub const MAX_LFS_PEERS: usize = 8;
/// Replication requests (identity, log, fetch) served to one peer at once;
/// more are refused.
pub const MAX_SERVED_PER_PEER: usize = 4;
/// Replication requests served at once to all peers together.
pub const MAX_SERVED_TOTAL: usize = 32;
/// Attempts at an identity, log or log-summary request whose stream the
/// peer dropped before answering.
pub const REQUEST_ATTEMPTS: u32 = 3;
/// Pause before asking again (twice as long before the third attempt).
pub const REQUEST_RETRY_DELAY: Duration = Duration::from_millis(50);
/// An update received by gossip and applied later than this is announced
/// again by the node that applied it: gossipsub keeps a message awaiting its
/// verdict for five 500 ms heartbeats, after which it can no longer be
/// forwarded. Sooner, forwarding the original message is enough.
pub const REANNOUNCE_AFTER: Duration = Duration::from_secs(2);

// Circuit relay v2 (ADR 0015). A relay spends its own bandwidth on peers
// behind NAT; circuits are meant for coordination (identify, DCUtR) and small
// transfers until a hole-punched direct connection takes over, not for bulk
// replication.

/// Reservations a relaying node holds at once, for all peers together.
pub const MAX_RELAY_RESERVATIONS: usize = 128;
/// Reservations one peer may hold at once on a relaying node.
pub const MAX_RELAY_RESERVATIONS_PER_PEER: usize = 2;
/// How long a reservation lasts before the client must renew it.
pub const RELAY_RESERVATION_DURATION: Duration = Duration::from_secs(60 * 60);
/// Circuits a relaying node carries at once, for all peers together.
pub const MAX_RELAY_CIRCUITS: usize = 32;
/// Circuits at once to or from one peer.
pub const MAX_RELAY_CIRCUITS_PER_PEER: usize = 4;
/// How long one circuit may stay open; the relay then closes it.
pub const MAX_RELAY_CIRCUIT_DURATION: Duration = Duration::from_secs(10 * 60);
/// Bytes one circuit may carry (both directions); the relay then closes it.
pub const MAX_RELAYED_BYTES: u64 = 64 * 1024 * 1024;
/// Relays a node behind NAT listens through at once.
pub const MAX_RELAYS_USED: usize = 2;
/// A peer reached only through a relay is dialed through it again (a new
/// circuit, a new hole-punching attempt) once the last circuit is this old.
pub const HOLE_PUNCH_RETRY_INTERVAL: Duration = Duration::from_secs(15);
/// New circuits opened to one peer to retry hole punching, before the node
/// settles for the relay until the peer disconnects.
pub const MAX_HOLE_PUNCH_RETRIES: u32 = 4;

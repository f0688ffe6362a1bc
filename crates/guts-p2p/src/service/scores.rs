//! Strikes against peers that send invalid data, and blocks of those that
//! keep doing it, kept by the replica so that a restart forgets neither.

use libp2p::PeerId;

use super::{Io, Service, Time};
use crate::limits::{BLOCK_DURATION, MAX_INVALID_MESSAGES};
use crate::replication::Replica;

/// What a node holds against a peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Score {
    /// Invalid messages, transfers or log entries since the last block.
    pub strikes: u32,
    /// Blocked until this time (ms since the Unix epoch); 0: not blocked.
    pub blocked_until: Time,
}

impl Score {
    /// The stored form: strikes then the time, big-endian.
    pub fn to_bytes(self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..4].copy_from_slice(&self.strikes.to_be_bytes());
        out[4..].copy_from_slice(&self.blocked_until.to_be_bytes());
        out
    }

    /// Read the stored form.
    pub fn from_bytes(bytes: &[u8]) -> Option<Score> {
        let strikes = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?);
        let blocked_until = Time::from_be_bytes(bytes.get(4..12)?.try_into().ok()?);
        Some(Score {
            strikes,
            blocked_until,
        })
    }
}

impl<R: Replica> Service<R> {
    pub(super) fn load_scores(&mut self) {
        for (peer, score) in self.replica.scores() {
            if score.blocked_until > self.now {
                tracing::info!(%peer, "peer still blocked");
                self.push(Io::Block(peer));
            }
            self.scores.insert(peer, score);
        }
    }

    /// Whether `peer` is blocked now.
    pub fn is_blocked(&self, peer: &PeerId) -> bool {
        self.scores
            .get(peer)
            .is_some_and(|s| s.blocked_until > self.now)
    }

    /// The score held against `peer`.
    pub fn score(&self, peer: &PeerId) -> Score {
        self.scores.get(peer).copied().unwrap_or_default()
    }

    /// Count something invalid against `peer`; block it for
    /// [`BLOCK_DURATION`] at [`MAX_INVALID_MESSAGES`].
    pub(super) fn strike(&mut self, peer: PeerId, why: &str) {
        if peer == self.local {
            return;
        }
        let now = self.now;
        let score = self.scores.entry(peer).or_default();
        score.strikes += 1;
        self.counts.strikes += 1;
        let block = score.strikes >= MAX_INVALID_MESSAGES && score.blocked_until <= now;
        if block {
            score.blocked_until = now + BLOCK_DURATION.as_millis() as Time;
            score.strikes = 0;
        }
        let score = *score;
        tracing::warn!(%peer, strikes = score.strikes, reason = why, "strike against a peer");
        if block {
            tracing::warn!(%peer, "blocking a misbehaving peer");
            self.counts.blocks += 1;
            self.connected.remove(&peer);
            self.push(Io::Block(peer));
        }
        self.replica.save_score(&peer, score);
    }

    /// Unblock peers whose block expired.
    pub(super) fn expire_blocks(&mut self) {
        let now = self.now;
        let expired: Vec<PeerId> = self
            .scores
            .iter()
            .filter(|(_, s)| s.blocked_until != 0 && s.blocked_until <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in expired {
            let score = Score::default();
            self.scores.insert(peer, score);
            self.replica.save_score(&peer, score);
            tracing::info!(%peer, "block expired");
            self.push(Io::Unblock(peer));
        }
    }
}

//! What the service counts for a node's metrics: strikes, blocks and
//! rejected announcements by reason. Plain numbers, read by the driver
//! after each step ([`crate::metrics`]); the service stays free of I/O.

/// Why an announcement was rejected (its sender penalized). A closed set:
/// a metric label, whose values must stay few.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The announcement or its update could not be decoded.
    Undecodable,
    /// The update is invalid (signature, delegate, repository, pushee).
    InvalidUpdate,
    /// The update needs an identity document the sender does not have.
    MissingIdentity,
    /// What the sender transferred for it was invalid (objects, documents).
    BadTransfer,
}

impl RejectReason {
    /// Every reason, in [`RejectReason::index`] order.
    pub const ALL: [RejectReason; 4] = [
        RejectReason::Undecodable,
        RejectReason::InvalidUpdate,
        RejectReason::MissingIdentity,
        RejectReason::BadTransfer,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Undecodable => "undecodable",
            RejectReason::InvalidUpdate => "invalid_update",
            RejectReason::MissingIdentity => "missing_identity",
            RejectReason::BadTransfer => "bad_transfer",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Running totals since the service started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Strikes against peers.
    pub strikes: u64,
    /// Peers blocked.
    pub blocks: u64,
    /// Announcements rejected, by [`RejectReason::ALL`] index.
    pub rejected: [u64; 4],
    /// Git LFS objects fetched from peers and stored.
    pub lfs_fetched: u64,
    /// Git LFS object transfers that failed (a peer lacking the object, a
    /// wrong object, a transfer that kept breaking off, a local failure).
    pub lfs_failed: u64,
}

impl Counts {
    /// Announcements rejected for `reason`.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason.index()]
    }

    pub(super) fn reject(&mut self, reason: RejectReason) {
        self.rejected[reason.index()] += 1;
    }
}

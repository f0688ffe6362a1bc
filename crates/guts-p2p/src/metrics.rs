//! The p2p layer's own metrics (ADR 0019): peers connected, gossip messages
//! in and out, rejected announcements by reason, strikes and blocks, the
//! replication lag, and Git LFS objects fetched from peers (ADR 0024). The node registers them into its registry (under its
//! `guts` prefix) and hands them to the [`Replicator`](crate::replication::Replicator),
//! which records them where the events happen. libp2p's own metrics
//! (`libp2p_*`, libp2p-metrics) live in the network's registry,
//! [`Handle::metrics`](crate::network::Handle::metrics).
//!
//! Every label value comes from a closed set in this module: no peer id,
//! topic or repository name is ever a label.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::service::{Counts, RejectReason};

/// One label with a value from a closed set.
type Label = [(&'static str, &'static str); 1];

/// Bucket bounds of the replication lag, in seconds: 50 ms to about 7 min.
fn lag_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.05, 2.0, 14)
}

/// The p2p metric families.
#[derive(Debug)]
pub struct P2pMetrics {
    peers: Gauge,
    gossip: Family<Label, Counter>,
    rejected: Family<Label, Counter>,
    strikes: Counter,
    blocks: Counter,
    lag: Histogram,
    lfs: Family<Label, Counter>,
    /// The service's counts already added to the counters.
    exported: Mutex<Counts>,
}

impl P2pMetrics {
    /// The families, registered into `registry` as `p2p_*`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = P2pMetrics {
            peers: Gauge::default(),
            gossip: Family::default(),
            rejected: Family::default(),
            strikes: Counter::default(),
            blocks: Counter::default(),
            lag: Histogram::new(lag_buckets()),
            lfs: Family::default(),
            exported: Mutex::new(Counts::default()),
        };
        let r = registry.sub_registry_with_prefix("p2p");
        r.register(
            "peers_connected",
            "Peers with at least one open connection",
            m.peers.clone(),
        );
        r.register(
            "gossip_messages",
            "Gossip messages received (direction=in) and published (direction=out)",
            m.gossip.clone(),
        );
        r.register(
            "gossip_rejected",
            "Announcements rejected, their sender penalized, by reason",
            m.rejected.clone(),
        );
        r.register(
            "peer_strikes",
            "Strikes against peers that sent invalid data",
            m.strikes.clone(),
        );
        r.register(
            "peer_blocks",
            "Peers blocked for repeated invalid data",
            m.blocks.clone(),
        );
        r.register_with_unit(
            "replication_lag",
            "Time from a signed update's first sight (announcement or log entry received) to its refs applied",
            Unit::Seconds,
            m.lag.clone(),
        );
        r.register(
            "lfs_objects",
            "Git LFS objects fetched from peers (result=fetched) and transfers that failed (result=failed: the peer lacked it, sent a wrong object, kept breaking off, or this node could not store it)",
            m.lfs.clone(),
        );
        for result in ["fetched", "failed"] {
            let _ = m.lfs.get_or_create(&[("result", result)]);
        }
        for reason in RejectReason::ALL {
            // Every reason is shown from the start, at 0.
            let _ = m.rejected.get_or_create(&[("reason", reason.as_str())]);
        }
        m
    }

    /// A peer's first connection opened.
    pub fn peer_connected(&self) {
        self.peers.inc();
    }

    /// A peer's last connection closed.
    pub fn peer_disconnected(&self) {
        self.peers.dec();
    }

    /// A gossip message arrived.
    pub fn gossip_in(&self) {
        self.gossip.get_or_create(&[("direction", "in")]).inc();
    }

    /// A gossip message was published.
    pub fn gossip_out(&self) {
        self.gossip.get_or_create(&[("direction", "out")]).inc();
    }

    /// An update from a peer was applied `lag` after it was first seen.
    pub fn replication_lag(&self, lag: Duration) {
        self.lag.observe(lag.as_secs_f64());
    }

    /// Add what the service counted since the last call.
    pub fn export(&self, counts: &Counts) {
        let Ok(mut done) = self.exported.lock() else {
            return;
        };
        self.strikes
            .inc_by(counts.strikes.saturating_sub(done.strikes));
        self.blocks
            .inc_by(counts.blocks.saturating_sub(done.blocks));
        for reason in RejectReason::ALL {
            let new = counts
                .rejected(reason)
                .saturating_sub(done.rejected(reason));
            if new > 0 {
                self.rejected
                    .get_or_create(&[("reason", reason.as_str())])
                    .inc_by(new);
            }
        }
        self.lfs
            .get_or_create(&[("result", "fetched")])
            .inc_by(counts.lfs_fetched.saturating_sub(done.lfs_fetched));
        self.lfs
            .get_or_create(&[("result", "failed")])
            .inc_by(counts.lfs_failed.saturating_sub(done.lfs_failed));
        *done = *counts;
    }
}

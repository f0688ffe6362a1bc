//! Git LFS traffic (ADR 0022): object bytes uploaded to and downloaded
//! from the node.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::{Registry, Unit};

/// LFS counters.
#[derive(Debug, Default)]
pub struct LfsMetrics {
    uploaded: Counter,
    downloaded: Counter,
}

impl LfsMetrics {
    /// Register the families in `registry` (the `guts` prefix).
    pub fn new(registry: &mut Registry) -> Self {
        let m = LfsMetrics::default();
        registry.register_with_unit(
            "lfs_uploaded",
            "LFS object bytes received in uploads (also of refused uploads)",
            Unit::Bytes,
            m.uploaded.clone(),
        );
        registry.register_with_unit(
            "lfs_downloaded",
            "LFS object bytes sent in downloads",
            Unit::Bytes,
            m.downloaded.clone(),
        );
        m
    }

    /// An upload read `bytes`.
    pub fn uploaded(&self, bytes: u64) {
        self.uploaded.inc_by(bytes);
    }

    /// A download sent `bytes`.
    pub fn downloaded(&self, bytes: u64) {
        self.downloaded.inc_by(bytes);
    }
}

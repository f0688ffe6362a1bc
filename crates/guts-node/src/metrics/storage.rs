//! Gauges read at scrape time: repositories, packs and bytes on disk (one
//! directory listing per repository, so cached for [`CACHE_FOR`]), and the
//! process (resident memory, open file descriptors, start time, from
//! `/proc/self` where there is one).

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::repos::Repos;

/// How long the storage gauges are kept before they are read again.
pub const CACHE_FOR: Duration = Duration::from_secs(5);

/// The storage and process gauges.
#[derive(Debug)]
pub struct StorageMetrics {
    repositories: Gauge,
    packs: Gauge,
    pack_bytes: Gauge,
    resident: Gauge,
    fds: Gauge,
    /// When storage was last read.
    read_at: Mutex<Option<Instant>>,
}

impl StorageMetrics {
    /// Register `repositories`, `packs`, `pack_bytes` and `process_*`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = StorageMetrics {
            repositories: Gauge::default(),
            packs: Gauge::default(),
            pack_bytes: Gauge::default(),
            resident: Gauge::default(),
            fds: Gauge::default(),
            read_at: Mutex::new(None),
        };
        registry.register(
            "repositories",
            "Repositories on this node",
            m.repositories.clone(),
        );
        registry.register("packs", "Pack files of all repositories", m.packs.clone());
        registry.register_with_unit(
            "pack",
            "Bytes of pack files and indexes of all repositories",
            Unit::Bytes,
            m.pack_bytes.clone(),
        );
        registry.register_with_unit(
            "process_resident_memory",
            "Resident memory of the node process",
            Unit::Bytes,
            m.resident.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors of the node process",
            m.fds.clone(),
        );
        let start: Gauge = Gauge::default();
        start.set(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        );
        registry.register_with_unit(
            "process_start_time",
            "When the node started, since the Unix epoch",
            Unit::Seconds,
            start,
        );
        m
    }

    /// Read storage (unless read less than [`CACHE_FOR`] ago) and the
    /// process. Blocking.
    pub fn refresh(&self, repos: &Repos) {
        self.refresh_process();
        let Ok(mut read_at) = self.read_at.lock() else {
            return;
        };
        if read_at.is_some_and(|t| t.elapsed() < CACHE_FOR) {
            return;
        }
        *read_at = Some(Instant::now());
        let names = match repos.storage().list() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot list repositories");
                return;
            }
        };
        let (mut packs, mut bytes) = (0u64, 0u64);
        for name in &names {
            // A repository deleted meanwhile is skipped.
            let Ok(repo) = repos.open_repo(name) else {
                continue;
            };
            packs += repo.pack_count().map_or(0, |n| n as u64);
            bytes = bytes.saturating_add(repo.pack_bytes().unwrap_or(0));
        }
        self.repositories.set(clamp(names.len() as u64));
        self.packs.set(clamp(packs));
        self.pack_bytes.set(clamp(bytes));
    }

    fn refresh_process(&self) {
        // statm: size resident shared ... in pages.
        if let Some(pages) = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        {
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            self.resident
                .set(clamp(pages.saturating_mul(page.max(0) as u64)));
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.fds.set(clamp(dir.count() as u64));
        }
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

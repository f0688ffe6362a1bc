//! How the node serves clones and fetches: pack-generation slots, the pack
//! cache, and background maintenance (flags, config-file keys, defaults).

use std::path::Path;

use guts_git::pack_cache::{CacheConfig, PackCache};
use guts_git::upload_pack::{PackSlots, Serving};

use crate::config::FileConfig;
use crate::error::NodeError;

/// Default disk space of the pack cache.
pub const DEFAULT_PACK_CACHE_BYTES: u64 = 1024 * 1024 * 1024;
/// Generated packs smaller than this are not cached (cheap to make again).
pub const PACK_CACHE_MIN_ENTRY_BYTES: u64 = 256 * 1024;
/// The cache's directory under the data dir.
pub const PACK_CACHE_DIR: &str = "pack-cache";

/// The `run` flags for serving (each also a config-file key).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// Most packs generated at once, node-wide (clones and fetches not served from a stored or cached pack); more wait, and their clients see `remote: waiting for a free slot` [default: CPU cores].
    #[arg(long, env = "GUTS_PACK_GENERATIONS", value_name = "N")]
    pub pack_generations: Option<usize>,
    /// Disk space for the cache of generated packs (DATA_DIR/pack-cache), in bytes; identical requests on unchanged refs are answered from it; 0 turns it off [default: 1 GiB].
    #[arg(long, env = "GUTS_PACK_CACHE_BYTES", value_name = "BYTES")]
    pub pack_cache_bytes: Option<u64>,
    /// Do not maintain repositories in the background (consolidating packs, writing the commit-graph); `guts-node repo maintain` still works.
    #[arg(long, env = "GUTS_NO_AUTO_MAINTENANCE")]
    pub no_auto_maintenance: bool,
}

/// The resolved serving settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Concurrent pack generations.
    pub pack_generations: usize,
    /// Pack cache size; 0: off.
    pub pack_cache_bytes: u64,
    /// The cache stops recording below this much free disk.
    pub min_free_bytes: u64,
    /// Maintain repositories in the background.
    pub auto_maintenance: bool,
}

impl ServeArgs {
    /// Flags, then the config file, then defaults.
    pub fn resolve(
        &self,
        file: &FileConfig,
        min_free_bytes: u64,
    ) -> Result<ServeConfig, NodeError> {
        let generations = self
            .pack_generations
            .or(file.pack_generations)
            .unwrap_or_else(guts_git::upload_pack::slots::default_slots);
        if generations == 0 {
            return Err(NodeError::Config(
                "pack_generations must be at least 1".into(),
            ));
        }
        Ok(ServeConfig {
            pack_generations: generations,
            pack_cache_bytes: self
                .pack_cache_bytes
                .or(file.pack_cache_bytes)
                .unwrap_or(DEFAULT_PACK_CACHE_BYTES),
            min_free_bytes,
            auto_maintenance: !self.no_auto_maintenance && file.auto_maintenance.unwrap_or(true),
        })
    }
}

impl ServeConfig {
    /// What `guts_git` needs to serve with these settings.
    pub fn serving(&self, data_dir: &Path) -> Result<Serving, NodeError> {
        let cache = if self.pack_cache_bytes == 0 {
            None
        } else {
            Some(PackCache::new(CacheConfig {
                dir: data_dir.join(PACK_CACHE_DIR),
                max_bytes: self.pack_cache_bytes,
                min_free_bytes: self.min_free_bytes,
                min_entry_bytes: PACK_CACHE_MIN_ENTRY_BYTES,
            })?)
        };
        Ok(Serving {
            slots: PackSlots::new(self.pack_generations),
            cache,
        })
    }
}

//! Node configuration: command-line flags, then `GUTS_*` environment
//! variables, then an optional TOML file, then defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::NodeError;

/// Default HTTP listen address.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";

/// Default libp2p port, TCP and QUIC (UDP), on every interface. Not 4001,
/// which IPFS (Kubo) nodes use: a Guts node beside one would always fall
/// back to a random port. A second node on the same machine falls back to
/// a free port too (see `p2p::default_listen`).
pub const DEFAULT_P2P_PORT: u16 = 4101;

/// The optional TOML config file (`DATA_DIR/config.toml` or `--config`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address for the HTTP server.
    pub http_listen: Option<SocketAddr>,
    /// Largest pack accepted in a push, in bytes.
    pub max_pack_bytes: Option<u64>,
    /// Maximum age of a push-certificate nonce, in seconds.
    pub push_cert_nonce_slop: Option<u64>,
    /// Who may create repositories, quotas, public URLs (`[rules]`).
    #[serde(default)]
    pub rules: crate::rules::RulesConfig,
    /// Peer-to-peer replication (`[p2p]`).
    #[serde(default)]
    pub p2p: P2pFileConfig,
    /// Seconds to send complete request headers; 0: no limit.
    pub header_read_timeout: Option<u64>,
    /// Connections served at once, node-wide.
    pub max_connections: Option<usize>,
    /// Connections at once from one client address.
    pub max_connections_per_client: Option<usize>,
    /// Least bytes/s of a git request body or response; 0: no minimum.
    pub min_transfer_rate: Option<u64>,
    /// Seconds over which `min_transfer_rate` is averaged.
    pub min_rate_window: Option<u64>,
    /// Pushes processed at once.
    pub max_concurrent_pushes: Option<usize>,
    /// Pack generations (clones, fetches) at once.
    pub max_concurrent_fetches: Option<usize>,
    /// Seconds a push or fetch waits for a slot before a 503.
    pub queue_timeout: Option<u64>,
    /// Requests per second per client address; 0: no limit.
    pub rate_limit: Option<f64>,
    /// Requests per client address in a burst.
    pub rate_limit_burst: Option<u32>,
    /// Pack generations at once (`--pack-generations`).
    pub pack_generations: Option<usize>,
    /// Pack cache size in bytes; 0: off (`--pack-cache-bytes`).
    pub pack_cache_bytes: Option<u64>,
    /// Maintain repositories in the background (default true).
    pub auto_maintenance: Option<bool>,
    /// Who may read `/metrics` (`[metrics]`).
    #[serde(default)]
    pub metrics: crate::metrics::MetricsFileConfig,
}

/// The `[p2p]` table: peer-to-peer replication. Every key is optional; the
/// flags `--p2p-listen`, `--bootstrap`, `--no-mdns`, `--no-dht`,
/// `--sync-interval` and `--no-p2p` win over it.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct P2pFileConfig {
    /// Replicate at all (default true).
    pub enabled: Option<bool>,
    /// libp2p listen multiaddrs (default: TCP and QUIC on
    /// [`DEFAULT_P2P_PORT`] on every interface).
    pub listen: Option<Vec<String>>,
    /// Peers to dial at start, `/…/p2p/<peer id>`.
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// Discover peers on the local network (default true).
    pub mdns: Option<bool>,
    /// Join the Kademlia DHT (default true).
    pub dht: Option<bool>,
    /// Seconds between log comparisons with peers; 0: never (default 60).
    pub sync_interval: Option<u64>,
}

impl FileConfig {
    /// Read `path`; a missing file is an empty config unless `required`.
    pub fn load(path: &Path, required: bool) -> Result<Self, NodeError> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| {
                NodeError::Config(format!("invalid config file {}: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(FileConfig::default())
            }
            Err(e) => Err(NodeError::Config(format!(
                "cannot read config file {}: {e}",
                path.display()
            ))),
        }
    }
}

/// The resolved configuration of a running node.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where repositories and metadata live.
    pub data_dir: PathBuf,
    /// HTTP listen address (port 0 picks a free port).
    pub http_listen: SocketAddr,
    /// Largest pack accepted in a push.
    pub max_pack_bytes: u64,
    /// Maximum age of a push-certificate nonce, in seconds.
    pub push_cert_nonce_slop: u64,
    /// The `[rules]` table, with flags applied.
    pub rules: crate::rules::RulesConfig,
    /// Limits of the HTTP server.
    pub http: crate::limits::HttpLimits,
    /// Pack generation, the pack cache, background maintenance.
    pub serve: crate::serving::ServeConfig,
    /// Peer-to-peer replication; None: off.
    pub p2p: Option<crate::p2p::P2pOptions>,
    /// `/metrics` answers any address without the operator token.
    pub metrics_public: bool,
}

/// The default data dir: `$GUTS_HOME`, else `~/.local/share/guts`, else `./guts-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("GUTS_HOME") {
        return PathBuf::from(home);
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home)
            .join(".local")
            .join("share")
            .join("guts"),
        None => PathBuf::from("guts-data"),
    }
}

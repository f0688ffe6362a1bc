//! The node's Prometheus metrics (ADR 0019), served at `GET /metrics` in
//! the OpenMetrics text format.
//!
//! One registry holds the node's families (`guts_*`: HTTP requests, git
//! operations, work slots, storage, process) and the p2p layer's
//! (`guts_p2p_*`, [`guts_p2p::metrics`]); libp2p's own (`libp2p_*`,
//! libp2p-metrics) live in the network's registry and are encoded after
//! them, in the same answer.
//!
//! - [`http`]: requests by matched route and status, and their latency;
//! - [`git`]: clones, fetches, pushes, bytes and objects, failures, pack
//!   generation time, and the work-slot queue;
//! - [`storage`]: repositories, packs and bytes on disk, and the process,
//!   read at scrape time (cached for a few seconds).
//!
//! Exposure: loopback clients need no token; others need the operator
//! token unless `metrics.public` (`--metrics-public`) is set.

pub mod git;
pub mod http;
pub mod lfs;
mod storage;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::registry::Registry;
use serde::Deserialize;

use crate::error::NodeError;
use crate::http::Shared;

/// The Content-Type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `--metrics-public` flag.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct MetricsArgs {
    /// Answer GET /metrics from any address without the operator token (by default only loopback clients need none). Also `metrics.public` in the config file.
    #[arg(long, env = "GUTS_METRICS_PUBLIC")]
    pub metrics_public: bool,
}

/// The `[metrics]` table of the config file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsFileConfig {
    /// Answer `/metrics` from any address without a token (default false).
    pub public: Option<bool>,
}

impl MetricsArgs {
    /// Whether `/metrics` is public: the flag, else the file, else no.
    pub fn public(&self, file: &MetricsFileConfig) -> bool {
        self.metrics_public || file.public.unwrap_or(false)
    }
}

/// Every metric of the node.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// More registries encoded after the node's (libp2p's).
    others: Vec<Arc<Registry>>,
    /// HTTP requests.
    pub http: http::HttpMetrics,
    /// Git operations and work slots.
    pub git: git::GitMetrics,
    /// Git LFS bytes.
    pub lfs: lfs::LfsMetrics,
    storage: storage::StorageMetrics,
    public: bool,
}

impl Metrics {
    /// The node's families; `/metrics` answers anyone if `public`.
    pub fn new(slots: &git::SlotMetrics, public: bool) -> Self {
        let mut registry = Registry::default();
        let guts = registry.sub_registry_with_prefix("guts");
        let http = http::HttpMetrics::new(guts);
        let git = git::GitMetrics::new(guts, slots);
        let lfs = lfs::LfsMetrics::new(guts);
        let storage = storage::StorageMetrics::new(guts);
        Metrics {
            registry,
            others: Vec::new(),
            http,
            git,
            lfs,
            storage,
            public,
        }
    }

    /// The registry, under the `guts` prefix, for more of the node's
    /// families (the p2p layer's).
    pub fn guts_registry(&mut self) -> &mut Registry {
        self.registry.sub_registry_with_prefix("guts")
    }

    /// Encode `registry` too (libp2p's, kept by the network).
    pub fn also(&mut self, registry: Arc<Registry>) {
        self.others.push(registry);
    }

    /// The OpenMetrics text of every registry.
    pub fn encode(&self) -> Result<String, NodeError> {
        let mut out = String::with_capacity(16 * 1024);
        let failed = |e: std::fmt::Error| NodeError::Internal(format!("encoding metrics: {e}"));
        encode_registry(&mut out, &self.registry).map_err(failed)?;
        for r in &self.others {
            encode_registry(&mut out, r).map_err(failed)?;
        }
        encode_eof(&mut out).map_err(failed)?;
        Ok(out)
    }
}

/// `GET /metrics`: loopback clients, or anyone when the metrics are
/// public; others need the operator token.
pub async fn serve(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, crate::error::GitHttpError> {
    let metrics = Arc::clone(&state.metrics);
    if !metrics.public && !peer.ip().to_canonical().is_loopback() {
        crate::auth::require_operator(&state.token, &headers)?;
    }
    let repos = Arc::clone(&state.repos);
    let text = tokio::task::spawn_blocking(move || {
        metrics.storage.refresh(&repos);
        metrics.encode()
    })
    .await
    .map_err(|e| NodeError::Internal(e.to_string()))??;
    let mut resp = text.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    crate::http::no_cache(resp.headers_mut());
    Ok(resp)
}

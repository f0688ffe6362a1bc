//! The REST API's peer-to-peer endpoints: the node's network state
//! (`GET /api/v1/node`), seeding and unseeding a repository.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth;
use crate::error::{ApiError, NodeError};
use crate::http::Shared;
use crate::openapi::ErrorBody;
use crate::progress::Progress;
use crate::rest::{blocking, RepoPath};

/// The node's peer-to-peer state.
#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct NodeView {
    /// Whether replication runs (on unless `--no-p2p`).
    pub p2p: bool,
    /// The node's libp2p peer id.
    pub peer_id: Option<String>,
    /// Listen addresses.
    pub listen_addrs: Vec<String>,
    /// Connected peers.
    pub connected_peers: Vec<String>,
    /// Repositories followed.
    pub seeding: Vec<String>,
    /// What AutoNAT found: `unknown`, `public` or `private` (ADR 0015).
    #[serde(default)]
    pub reachability: Option<String>,
    /// Addresses peers are told: confirmed public ones and relayed ones
    /// (`.../p2p/RELAY/p2p-circuit/p2p/SELF`).
    #[serde(default)]
    pub external_addrs: Vec<String>,
    /// Every open connection.
    #[serde(default)]
    pub connections: Vec<ConnectionView>,
    /// Relayed connections upgraded to direct ones by hole punching (DCUtR).
    #[serde(default)]
    pub hole_punches: u64,
}

/// One open connection of the node.
#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct ConnectionView {
    /// The peer id.
    pub peer: String,
    /// The peer's address (for a relayed connection, the circuit).
    pub address: String,
    /// Through a relay (the address has `/p2p-circuit`).
    pub relayed: bool,
}

/// `GET /api/v1/node`: the node's peer-to-peer state.
#[utoipa::path(
    get,
    path = "/api/v1/node",
    tag = "node",
    responses((status = 200, description = "The node's network state", body = NodeView))
)]
pub(crate) async fn node_status(State(state): State<Shared>) -> Result<Json<NodeView>, ApiError> {
    let Some(p2p) = state.p2p.clone() else {
        return Ok(Json(NodeView {
            p2p: false,
            peer_id: None,
            listen_addrs: Vec::new(),
            connected_peers: Vec::new(),
            seeding: Vec::new(),
            reachability: None,
            external_addrs: Vec::new(),
            connections: Vec::new(),
            hole_punches: 0,
        }));
    };
    let status = p2p
        .net
        .status()
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))?;
    let replica = std::sync::Arc::clone(&p2p.replica);
    let seeding = blocking(move || {
        use guts_p2p::replication::Replica;
        Ok(replica
            .seeded()
            .into_iter()
            .map(|s| s.name.to_string())
            .collect())
    })
    .await?;
    Ok(Json(NodeView {
        p2p: true,
        peer_id: Some(status.peer_id.to_string()),
        listen_addrs: status
            .listen_addrs
            .iter()
            .map(|a| match a.iter().last() {
                // A relayed listen address already ends with the peer id.
                Some(guts_p2p::network::Protocol::P2p(_)) => a.to_string(),
                _ => format!("{a}/p2p/{}", status.peer_id),
            })
            .collect(),
        connected_peers: status.connected.iter().map(|p| p.to_string()).collect(),
        seeding,
        reachability: Some(status.reachability.as_str().to_owned()),
        external_addrs: status
            .external_addrs
            .iter()
            .map(|a| a.to_string())
            .collect(),
        connections: status
            .connections
            .iter()
            .map(|c| ConnectionView {
                peer: c.peer.to_string(),
                address: c.address.to_string(),
                relayed: c.relayed,
            })
            .collect(),
        hole_punches: status.hole_punches,
    }))
}

fn p2p_of(state: &Shared) -> Result<std::sync::Arc<crate::p2p::P2p>, NodeError> {
    state.p2p.clone().ok_or(NodeError::P2pOff)
}

/// A repository the node seeds.
#[derive(Serialize, ToSchema)]
pub(crate) struct SeedView {
    /// The repository, canonical `OWNER/NAME`.
    repo: String,
    /// Its id.
    id: String,
}

/// `POST`: seed (follow and serve to peers) a repository; operator only.
/// Answers once its log and objects are here, or streams the seed's
/// progress first (`Accept: application/x-ndjson`, see `crate::progress`).
#[utoipa::path(
    post,
    path = "/api/v1/repos/{owner}/{name}/seed",
    tag = "p2p",
    params(RepoPath),
    security(("operator" = [])),
    responses(
        (status = 200, description = "Seeding; with `Accept: application/x-ndjson`, progress lines and then `{\"result\": SeedView}` or `{\"error\": {status, error}}`", content(
            (SeedView = "application/json"),
            (String = "application/x-ndjson"),
        )),
        (status = 401, description = "No or a wrong operator token", body = ErrorBody),
        (status = 403, description = "The node's rules refuse to seed it", body = ErrorBody),
        (status = 404, description = "No such repository", body = ErrorBody),
        (status = 409, description = "Peer-to-peer replication is off", body = ErrorBody),
        (status = 502, description = "Seeding failed on the network", body = ErrorBody),
    )
)]
pub(crate) async fn seed_repo(
    State(state): State<Shared>,
    Path(RepoPath { owner, name }): Path<RepoPath>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    auth::require_operator(&state.token, &headers)?;
    let p2p = p2p_of(&state)?;
    let st = state.clone();
    let name = blocking(move || {
        let name = st.repos.resolve(&owner, &name)?;
        st.repos.rules().check_seed(&name)?;
        Ok(name)
    })
    .await?;
    {
        let st = state.clone();
        let n = name.clone();
        blocking(move || st.repos.set_seeding(&n, true)).await?;
    }
    let progress: Arc<Progress> = Arc::default();
    progress.phase("finding peers and the repository's signed log", "", None);
    let work = {
        let progress = Arc::clone(&progress);
        async move {
            let _watch = state.seeds.watch(&name, progress);
            let id = p2p
                .replicator
                .seed(&name)
                .await
                .map_err(|e| NodeError::Network(format!("seeding {name} failed: {e}")))?;
            tracing::info!(repo = %name, %id, "seeding");
            Ok(SeedView {
                repo: name.to_string(),
                id: id.to_string(),
            })
        }
    };
    Ok(if crate::progress::wanted(&headers) {
        crate::progress::stream(progress, work)
    } else {
        Json(work.await?).into_response()
    })
}

/// `DELETE`: stop seeding a repository (it stays stored); operator only.
#[utoipa::path(
    delete,
    path = "/api/v1/repos/{owner}/{name}/seed",
    tag = "p2p",
    params(RepoPath),
    security(("operator" = [])),
    responses(
        (status = 204, description = "No longer seeding"),
        (status = 401, description = "No or a wrong operator token", body = ErrorBody),
        (status = 404, description = "No such repository", body = ErrorBody),
        (status = 409, description = "Peer-to-peer replication is off", body = ErrorBody),
    )
)]
pub(crate) async fn unseed_repo(
    State(state): State<Shared>,
    Path(RepoPath { owner, name }): Path<RepoPath>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    auth::require_operator(&state.token, &headers)?;
    let p2p = p2p_of(&state)?;
    let st = state.clone();
    let (name, id) = blocking(move || {
        let name = st.repos.resolve(&owner, &name)?;
        let identity = st
            .repos
            .identities()
            .current(&name)?
            .ok_or_else(|| guts_git::Error::RepoNotFound(name.to_string()))?;
        st.repos.set_seeding(&name, false)?;
        Ok((name, identity.id))
    })
    .await?;
    let s = guts_p2p::replication::Seeded {
        name: name.clone(),
        id,
    };
    p2p.replicator
        .unfollow(&s)
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))?;
    tracing::info!(repo = %name, "stopped seeding");
    Ok(StatusCode::NO_CONTENT)
}

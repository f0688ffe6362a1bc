//! The REST API under `/api/v1`: repositories, their identity documents and
//! their signed-update logs. Errors are JSON `{"error": "..."}`.

use std::collections::BTreeMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use guts_git::names::RepoName;
use guts_identity::PushCert;
use serde::{Deserialize, Serialize};

use crate::auth;
use crate::error::{ApiError, NodeError};
use crate::http::Shared;
use crate::rest_p2p;

/// The REST routes.
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/repos", get(list_repos).post(create_repo))
        .route(
            "/api/v1/repos/{owner}/{name}",
            get(show_repo).delete(delete_repo).patch(patch_repo),
        )
        .route(
            "/api/v1/repos/{owner}/{name}/identity",
            get(show_identity).put(update_identity),
        )
        .route("/api/v1/repos/{owner}/{name}/updates", get(list_updates))
        .route("/api/v1/repos/{owner}/{name}/nonce", get(repo_nonce))
        .route(
            "/api/v1/repos/{owner}/{name}/seed",
            axum::routing::post(rest_p2p::seed_repo).delete(rest_p2p::unseed_repo),
        )
        .route("/api/v1/node", get(rest_p2p::node_status))
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))?
}

fn bad_request(msg: impl Into<String>) -> NodeError {
    NodeError::Invalid(msg.into())
}

/// A signed identity document in a request body.
#[derive(Deserialize)]
struct DocumentRequest {
    /// The encoded `SignedDocument`, base64.
    document: Option<String>,
    /// Present in requests of the old, unsigned form; refused with a hint.
    owner: Option<String>,
}

fn decode_document(req: DocumentRequest) -> Result<Vec<u8>, NodeError> {
    match (req.document, req.owner) {
        (Some(doc), _) => B64.decode(doc.trim()).map_err(|e| bad_request(format!("document is not base64: {e}"))),
        (None, _) => Err(bad_request(
            "creating a repository requires an identity document signed by its owner: \
             run `guts-node repo create NAME` (it signs one with your identity from `guts-node id new`), \
             or POST {\"document\": \"<base64 SignedDocument>\"}",
        )),
    }
}

/// A repository as the REST API lists it.
#[derive(Serialize, Deserialize, Debug)]
pub struct RepoSummary {
    /// Owner segment: the owner's DID id (`z6Mk...`).
    pub owner: String,
    /// Name segment.
    pub name: String,
    /// Repository id (hash of its first identity document).
    pub id: Option<String>,
    /// Owner aliases declared by the identity document.
    pub aliases: Vec<String>,
    /// Clone URL path.
    pub path: String,
}

/// A repository in detail.
#[derive(Serialize, Deserialize, Debug)]
pub struct RepoDetail {
    /// Owner segment.
    pub owner: String,
    /// Name segment.
    pub name: String,
    /// Repository id.
    pub id: Option<String>,
    /// The owner's DID.
    pub owner_did: Option<String>,
    /// Current delegates (DIDs).
    pub delegates: Vec<String>,
    /// Signatures needed for the next document version.
    pub threshold: u32,
    /// Current document version.
    pub doc_version: u64,
    /// Aliases.
    pub aliases: Vec<String>,
    /// HEAD's symref target.
    pub head: String,
    /// Every ref and its object id.
    pub refs: BTreeMap<String, String>,
    /// Objects stored in packs.
    pub object_count: u64,
    /// Bytes of packs and indexes on disk.
    pub size_bytes: u64,
    /// Packs the objects are in (maintenance consolidates them).
    #[serde(default)]
    pub packs: usize,
    /// When maintenance last ran, seconds since the epoch.
    #[serde(default)]
    pub maintained_at: Option<u64>,
    /// Whether non-fast-forward pushes are refused.
    pub deny_non_fast_forwards: bool,
}

fn summary(state: &Shared, name: &RepoName) -> Result<RepoSummary, NodeError> {
    let identity = state.repos.identities().current(name)?;
    Ok(RepoSummary {
        owner: name.owner().to_owned(),
        name: name.name().to_owned(),
        id: identity.as_ref().map(|i| i.id.to_string()),
        aliases: identity
            .map(|i| i.doc.body().aliases.clone())
            .unwrap_or_default(),
        path: format!("/{name}.git"),
    })
}

/// Repositories listed per page by default.
pub const DEFAULT_PAGE: usize = 100;
/// Most repositories listed per page.
pub const MAX_PAGE: usize = 1000;

/// `GET /api/v1/repos?limit=N&after=OWNER/NAME`.
#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    after: Option<String>,
}

/// One page of repositories, by canonical name; a `Link: <...>; rel="next"`
/// header points at the next page when there is one.
async fn list_repos(
    State(state): State<Shared>,
    Query(q): Query<ListQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let (list, more) = blocking(move || {
        let names = state.repos.storage().list()?;
        let after = q.after.unwrap_or_default();
        let mut page = names.iter().filter(|n| n.to_string() > after);
        let list: Vec<RepoSummary> = page
            .by_ref()
            .take(limit)
            .map(|n| summary(&state, n))
            .collect::<Result<_, NodeError>>()?;
        Ok((list, page.next().is_some()))
    })
    .await?;
    let next = list.last().filter(|_| more).map(|last| {
        format!(
            "</api/v1/repos?limit={limit}&after={}/{}>; rel=\"next\"",
            last.owner, last.name
        )
    });
    let mut resp = Json(list).into_response();
    if let Some(link) = next.and_then(|l| axum::http::HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert(axum::http::header::LINK, link);
    }
    Ok(resp)
}

async fn create_repo(
    State(state): State<Shared>,
    body: Result<Json<DocumentRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<RepoSummary>), ApiError> {
    let Json(req) = body.map_err(|e| bad_request(e.body_text()))?;
    let bytes = decode_document(req)?;
    let state_p2p = state.p2p.clone();
    let (created, seeded) = blocking(move || {
        let (name, id) = state.repos.create(&bytes)?;
        let created = summary(&state, &name)?;
        Ok((created, guts_p2p::replication::Seeded { name, id }))
    })
    .await?;
    if let Some(p2p) = &state_p2p {
        if let Err(e) = p2p.replicator.follow(&seeded).await {
            tracing::warn!(repo = %seeded.name, error = %e, "could not start seeding");
        }
    }
    Ok((StatusCode::CREATED, Json(created)))
}

async fn show_repo(
    State(state): State<Shared>,
    Path((owner, name)): Path<(String, String)>,
) -> Result<Json<RepoDetail>, ApiError> {
    let detail = blocking(move || {
        let name = state.repos.resolve(&owner, &name)?;
        let repo = state.repos.open_repo(&name)?;
        let settings = repo.settings()?;
        let refs = repo
            .refs()?
            .into_iter()
            .map(|r| (r.name, r.id.to_string()))
            .collect();
        let (object_count, size_bytes) = repo.disk_usage()?;
        let maintenance = crate::maintenance::MaintenanceView::of(&repo)?;
        let identity = state.repos.identities().current(&name)?;
        let body = identity.as_ref().map(|i| i.doc.body().clone());
        Ok(RepoDetail {
            owner: name.owner().to_owned(),
            name: name.name().to_owned(),
            id: identity.as_ref().map(|i| i.id.to_string()),
            owner_did: body.as_ref().map(|b| b.owner.clone()),
            delegates: body
                .as_ref()
                .map(|b| b.delegates.clone())
                .unwrap_or_default(),
            threshold: body.as_ref().map_or(0, |b| b.threshold),
            doc_version: body.as_ref().map_or(0, |b| b.version),
            aliases: body.map(|b| b.aliases).unwrap_or_default(),
            head: settings.head,
            refs,
            object_count,
            size_bytes,
            packs: maintenance.packs,
            maintained_at: maintenance.maintained_at,
            deny_non_fast_forwards: settings.deny_non_fast_forwards,
        })
    })
    .await?;
    Ok(Json(detail))
}

/// `DELETE`: the operator, or the repository's delegates (a signed `delete`).
async fn delete_repo(
    State(state): State<Shared>,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let st = state.clone();
    let (name, id) = blocking(move || {
        let name = st.repos.resolve(&owner, &name)?;
        let caller =
            auth::require_operator_or_delegates(&st.token, &st.repos, &name, "delete", &headers)?;
        let id = st.repos.identities().current(&name)?.map(|i| i.id);
        st.repos.delete(&name)?;
        tracing::info!(repo = %name, ?caller, "repository deleted on request");
        Ok((name, id))
    })
    .await?;
    if let (Some(p2p), Some(id)) = (&state.p2p, id) {
        let seeded = guts_p2p::replication::Seeded { name, id };
        if let Err(e) = p2p.replicator.unfollow(&seeded).await {
            tracing::warn!(repo = %seeded.name, error = %e, "could not stop following a deleted repository");
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A fresh nonce of this node for `OWNER/NAME`, to sign a repository action over.
async fn repo_nonce(
    State(state): State<Shared>,
    Path((owner, name)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let nonce = blocking(move || {
        let name = state.repos.resolve(&owner, &name)?;
        let identity = state.repos.identity(&name)?;
        Ok(serde_json::json!({
            "repo": name.to_string(),
            "id": identity.id.to_string(),
            "nonce": state.repos.issue_nonce(&name),
        }))
    })
    .await?;
    Ok(Json(nonce))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchRepo {
    deny_non_fast_forwards: Option<bool>,
}

/// The action text delegates sign for a settings change.
pub fn settings_action(deny_non_fast_forwards: Option<bool>) -> String {
    match deny_non_fast_forwards {
        Some(d) => format!("settings deny_non_fast_forwards={d}"),
        None => "settings".to_owned(),
    }
}

/// `PATCH`: the operator, or the repository's delegates (a signed `settings ...`).
async fn patch_repo(
    State(state): State<Shared>,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Json<PatchRepo>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(req) = body.map_err(|e| bad_request(e.body_text()))?;
    let settings = blocking(move || {
        let name = state.repos.resolve(&owner, &name)?;
        let action = settings_action(req.deny_non_fast_forwards);
        auth::require_operator_or_delegates(&state.token, &state.repos, &name, &action, &headers)?;
        state.repos.set_settings(&name, req.deny_non_fast_forwards)
    })
    .await?;
    Ok(Json(serde_json::json!({
        "head": settings.head,
        "deny_non_fast_forwards": settings.deny_non_fast_forwards,
    })))
}

/// A repository's identity: every document version (base64) and the current one decoded.
#[derive(Serialize, Deserialize, Debug)]
pub struct IdentityView {
    /// Repository id.
    pub id: String,
    /// Every version, oldest first, as base64 `SignedDocument`s.
    pub versions: Vec<String>,
    /// The current version.
    pub version: u64,
    /// Owner DID.
    pub owner: String,
    /// Delegate DIDs.
    pub delegates: Vec<String>,
    /// Signatures needed for the next version.
    pub threshold: u32,
    /// Default branch.
    pub default_branch: String,
    /// Aliases.
    pub aliases: Vec<String>,
}

fn identity_view(state: &Shared, name: &RepoName) -> Result<IdentityView, NodeError> {
    let identity = state
        .repos
        .identities()
        .current(name)?
        .ok_or_else(|| guts_git::Error::RepoNotFound(name.to_string()))?;
    let body = identity.doc.body().clone();
    Ok(IdentityView {
        id: identity.id.to_string(),
        versions: identity.versions.iter().map(|v| B64.encode(v)).collect(),
        version: body.version,
        owner: body.owner,
        delegates: body.delegates,
        threshold: body.threshold,
        default_branch: body.default_branch,
        aliases: body.aliases,
    })
}

async fn show_identity(
    State(state): State<Shared>,
    Path((owner, name)): Path<(String, String)>,
) -> Result<Json<IdentityView>, ApiError> {
    let view = blocking(move || {
        let name = state.repos.resolve(&owner, &name)?;
        identity_view(&state, &name)
    })
    .await?;
    Ok(Json(view))
}

async fn update_identity(
    State(state): State<Shared>,
    Path((owner, name)): Path<(String, String)>,
    body: Result<Json<DocumentRequest>, JsonRejection>,
) -> Result<Json<IdentityView>, ApiError> {
    let Json(req) = body.map_err(|e| bad_request(e.body_text()))?;
    let bytes = decode_document(req)?;
    let view = blocking(move || {
        let name = state.repos.resolve(&owner, &name)?;
        state.repos.update_identity(&name, &bytes)?;
        identity_view(&state, &name)
    })
    .await?;
    Ok(Json(view))
}

/// One entry of a repository's signed-update log.
#[derive(Serialize, Deserialize, Debug)]
pub struct UpdateView {
    /// Position in the log, from 1.
    pub seq: u64,
    /// Identity document version the update was accepted under.
    pub doc_version: u64,
    /// Signer DID, if the certificate verifies.
    pub signer: Option<String>,
    /// The `old new ref` lines.
    pub updates: Vec<String>,
    /// Refs of the certificate that the accepting node refused (no effect).
    pub refused: Vec<String>,
    /// Refs for which this update lost under the conflict rule (ADR 0008):
    /// another update of the same ref won, so this line does not give the
    /// ref's value. Empty when every effective line is on a winning path.
    pub superseded: Vec<String>,
    /// The push certificate, signature included.
    pub certificate: String,
    /// For a push made with a token: the grant its signer pushed under.
    pub grant: Option<crate::tokens::GrantView>,
}

async fn list_updates(
    State(state): State<Shared>,
    Path((owner, name)): Path<(String, String)>,
) -> Result<Json<Vec<UpdateView>>, ApiError> {
    let list = blocking(move || {
        let name = state.repos.resolve(&owner, &name)?;
        state.repos.open_repo(&name)?;
        let updates = state.repos.log().updates(&name)?;
        let resolved = state.repos.log().resolutions(&name)?;
        Ok(updates
            .into_iter()
            .map(|(seq, u)| {
                let cert = PushCert::parse(&u.certificate)
                    .and_then(PushCert::verify)
                    .ok();
                let key = u.key();
                let superseded = resolved
                    .iter()
                    .filter(|(_, r)| r.superseded.contains(&key))
                    .map(|(name, _)| name.clone())
                    .collect();
                UpdateView {
                    seq,
                    doc_version: u.doc_version,
                    signer: cert.as_ref().map(|c| c.signer().to_string()),
                    updates: cert
                        .map(|c| {
                            c.commands()
                                .iter()
                                .map(|c| format!("{} {} {}", c.old, c.new, c.name))
                                .collect()
                        })
                        .unwrap_or_default(),
                    refused: u.refused,
                    superseded,
                    certificate: u.certificate,
                    grant: (!u.grant.is_empty())
                        .then(|| crate::tokens::grant_view(&u.grant))
                        .flatten(),
                }
            })
            .collect())
    })
    .await?;
    Ok(Json(list))
}

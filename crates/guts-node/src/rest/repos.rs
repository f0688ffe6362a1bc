//! Repositories: list, create, show, change settings, delete, nonces.

use std::collections::BTreeMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use guts_git::names::RepoName;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{bad_request, blocking, decode_document, DocumentRequest, RepoPath};
use crate::auth;
use crate::error::{ApiError, NodeError};
use crate::http::Shared;
use crate::openapi::ErrorBody;

/// A repository as the REST API lists it.
#[derive(Serialize, Deserialize, Debug, ToSchema)]
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
#[derive(Serialize, Deserialize, Debug, ToSchema)]
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
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Repositories per page (default 100, at most 1000).
    limit: Option<usize>,
    /// List the names after this one (`OWNER/NAME`, canonical).
    after: Option<String>,
}

/// One page of repositories, by canonical name.
///
/// A `Link: <...>; rel="next"` header points at the next page when there
/// is one.
#[utoipa::path(
    get,
    path = "/api/v1/repos",
    tag = "repos",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of repositories", body = Vec<RepoSummary>,
         headers(("Link" = String, description = "`<...>; rel=\"next\"` when there is a next page"))),
    )
)]
pub(super) async fn list_repos(
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

/// `POST`: create a repository from its owner's signed identity document.
#[utoipa::path(
    post,
    path = "/api/v1/repos",
    tag = "repos",
    request_body = DocumentRequest,
    responses(
        (status = 201, description = "Created", body = RepoSummary),
        (status = 400, description = "No, or an invalid, signed document", body = ErrorBody),
        (status = 403, description = "The node's rules refuse the owner or name", body = ErrorBody),
        (status = 409, description = "The repository exists", body = ErrorBody),
        (status = 429, description = "The owner's write rate limit", body = ErrorBody),
        (status = 507, description = "The owner's quota or the node's disk is full", body = ErrorBody),
    )
)]
pub(super) async fn create_repo(
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

/// `GET`: a repository in detail (refs, identity, disk use).
#[utoipa::path(
    get,
    path = "/api/v1/repos/{owner}/{name}",
    tag = "repos",
    params(RepoPath),
    responses(
        (status = 200, description = "The repository", body = RepoDetail),
        (status = 404, description = "No such repository", body = ErrorBody),
    )
)]
pub(super) async fn show_repo(
    State(state): State<Shared>,
    Path(RepoPath { owner, name }): Path<RepoPath>,
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
#[utoipa::path(
    delete,
    path = "/api/v1/repos/{owner}/{name}",
    tag = "repos",
    params(RepoPath),
    security(("operator" = []), ("gutsAction" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No or a wrong credential", body = ErrorBody),
        (status = 404, description = "No such repository", body = ErrorBody),
    )
)]
pub(super) async fn delete_repo(
    State(state): State<Shared>,
    Path(RepoPath { owner, name }): Path<RepoPath>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let st = state.clone();
    let (name, id) = blocking(move || {
        let name = st.repos.resolve(&owner, &name)?;
        let caller =
            auth::require_operator_or_delegates(&st.token, &st.repos, &name, "delete", &headers)?;
        let id = st.repos.identities().current(&name)?.map(|i| i.id);
        st.repos.delete(&name)?;
        if let Some(id) = &id {
            // Its LFS objects and locks go with it (ADR 0022).
            st.lfs.store.remove_repo(id)?;
            st.lfs.locks.remove_repo(id)?;
        }
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
#[utoipa::path(
    get,
    path = "/api/v1/repos/{owner}/{name}/nonce",
    tag = "repos",
    params(RepoPath),
    responses(
        (status = 200, description = "A nonce", body = NonceView),
        (status = 404, description = "No such repository", body = ErrorBody),
    )
)]
pub(super) async fn repo_nonce(
    State(state): State<Shared>,
    Path(RepoPath { owner, name }): Path<RepoPath>,
) -> Result<Json<NonceView>, ApiError> {
    let nonce = blocking(move || {
        let name = state.repos.resolve(&owner, &name)?;
        let identity = state.repos.identity(&name)?;
        Ok(NonceView {
            repo: name.to_string(),
            id: identity.id.to_string(),
            nonce: state.repos.issue_nonce(&name),
        })
    })
    .await?;
    Ok(Json(nonce))
}

/// A settings change; absent fields are left as they are.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchRepo {
    /// Refuse non-fast-forward pushes.
    deny_non_fast_forwards: Option<bool>,
}

/// A repository's settings.
#[derive(Serialize, ToSchema)]
pub(super) struct SettingsView {
    /// HEAD's symref target.
    head: String,
    /// Whether non-fast-forward pushes are refused.
    deny_non_fast_forwards: bool,
}

/// A nonce to sign an action over (`GutsAction`).
#[derive(Serialize, ToSchema)]
pub(super) struct NonceView {
    /// The repository, canonical `OWNER/NAME`.
    repo: String,
    /// Its id.
    id: String,
    /// The nonce.
    nonce: String,
}

/// The action text delegates sign for a settings change.
pub fn settings_action(deny_non_fast_forwards: Option<bool>) -> String {
    match deny_non_fast_forwards {
        Some(d) => format!("settings deny_non_fast_forwards={d}"),
        None => "settings".to_owned(),
    }
}

/// `PATCH`: the operator, or the repository's delegates (a signed `settings ...`).
#[utoipa::path(
    patch,
    path = "/api/v1/repos/{owner}/{name}",
    tag = "repos",
    params(RepoPath),
    request_body = PatchRepo,
    security(("operator" = []), ("gutsAction" = [])),
    responses(
        (status = 200, description = "The settings now", body = SettingsView),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "No or a wrong credential", body = ErrorBody),
        (status = 404, description = "No such repository", body = ErrorBody),
    )
)]
pub(super) async fn patch_repo(
    State(state): State<Shared>,
    Path(RepoPath { owner, name }): Path<RepoPath>,
    headers: HeaderMap,
    body: Result<Json<PatchRepo>, JsonRejection>,
) -> Result<Json<SettingsView>, ApiError> {
    let Json(req) = body.map_err(|e| bad_request(e.body_text()))?;
    let settings = blocking(move || {
        let name = state.repos.resolve(&owner, &name)?;
        let action = settings_action(req.deny_non_fast_forwards);
        auth::require_operator_or_delegates(&state.token, &state.repos, &name, &action, &headers)?;
        state.repos.set_settings(&name, req.deny_non_fast_forwards)
    })
    .await?;
    Ok(Json(SettingsView {
        head: settings.head,
        deny_non_fast_forwards: settings.deny_non_fast_forwards,
    }))
}

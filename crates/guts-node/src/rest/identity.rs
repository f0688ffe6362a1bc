//! Identity documents and signed-update logs of repositories.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::Json;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use guts_git::names::RepoName;
use guts_identity::PushCert;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{bad_request, blocking, decode_document, DocumentRequest, RepoPath};
use crate::error::{ApiError, NodeError};
use crate::http::Shared;
use crate::openapi::ErrorBody;

/// A repository's identity: every document version (base64) and the current one decoded.
#[derive(Serialize, Deserialize, Debug, ToSchema)]
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

/// `GET`: the repository's identity document chain.
#[utoipa::path(
    get,
    path = "/api/v1/repos/{owner}/{name}/identity",
    tag = "identity",
    params(RepoPath),
    responses(
        (status = 200, description = "The identity", body = IdentityView),
        (status = 404, description = "No such repository", body = ErrorBody),
    )
)]
pub(super) async fn show_identity(
    State(state): State<Shared>,
    Path(RepoPath { owner, name }): Path<RepoPath>,
) -> Result<Json<IdentityView>, ApiError> {
    let view = blocking(move || {
        let name = state.repos.resolve(&owner, &name)?;
        identity_view(&state, &name)
    })
    .await?;
    Ok(Json(view))
}

/// `PUT`: store the next version of the identity document.
///
/// It must be signed by enough delegates of the current version: the
/// signatures are the authorization.
#[utoipa::path(
    put,
    path = "/api/v1/repos/{owner}/{name}/identity",
    tag = "identity",
    params(RepoPath),
    request_body = DocumentRequest,
    responses(
        (status = 200, description = "The identity with the new version", body = IdentityView),
        (status = 400, description = "Malformed, unsigned or not a valid successor", body = ErrorBody),
        (status = 404, description = "No such repository", body = ErrorBody),
        (status = 429, description = "The owner's write rate limit", body = ErrorBody),
    )
)]
pub(super) async fn update_identity(
    State(state): State<Shared>,
    Path(RepoPath { owner, name }): Path<RepoPath>,
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
#[derive(Serialize, Deserialize, Debug, ToSchema)]
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

/// `GET`: the repository's signed-update log, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/repos/{owner}/{name}/updates",
    tag = "identity",
    params(RepoPath),
    responses(
        (status = 200, description = "Every logged update", body = Vec<UpdateView>),
        (status = 404, description = "No such repository", body = ErrorBody),
    )
)]
pub(super) async fn list_updates(
    State(state): State<Shared>,
    Path(RepoPath { owner, name }): Path<RepoPath>,
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

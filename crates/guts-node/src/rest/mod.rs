//! The REST API under `/api/v1`: repositories, their identity documents and
//! their signed-update logs. Errors are JSON `{"error": "..."}`.
//!
//! Every route is registered through an [`OpenApiRouter`] from its
//! handler's `#[utoipa::path]`, so the router and the OpenAPI description
//! (`/api/v1/openapi.json`, [`crate::openapi`]) cannot disagree.

mod identity;
mod repos;

use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use crate::error::NodeError;
use crate::http::Shared;
use crate::rest_p2p;

pub use identity::IdentityView;
pub use repos::{settings_action, RepoDetail, RepoSummary};

/// The REST routes.
pub fn routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::new()
        .routes(routes!(repos::list_repos, repos::create_repo))
        .routes(routes!(
            repos::show_repo,
            repos::delete_repo,
            repos::patch_repo
        ))
        .routes(routes!(identity::show_identity, identity::update_identity))
        .routes(routes!(identity::list_updates))
        .routes(routes!(repos::repo_nonce))
        .routes(routes!(rest_p2p::seed_repo, rest_p2p::unseed_repo))
        .routes(routes!(rest_p2p::node_status))
}

/// The `{owner}/{name}` of a repository's routes.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct RepoPath {
    /// The owner: its DID id (`z6Mk...`) or one of its aliases.
    pub owner: String,
    /// The repository name.
    pub name: String,
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))?
}

pub(crate) fn bad_request(msg: impl Into<String>) -> NodeError {
    NodeError::Invalid(msg.into())
}

/// A signed identity document in a request body.
#[derive(Deserialize, ToSchema)]
pub(crate) struct DocumentRequest {
    /// The encoded `SignedDocument`, base64.
    document: Option<String>,
    /// Present in requests of the old, unsigned form; refused with a hint.
    #[schema(deprecated)]
    owner: Option<String>,
}

pub(crate) fn decode_document(req: DocumentRequest) -> Result<Vec<u8>, NodeError> {
    match (req.document, req.owner) {
        (Some(doc), _) => B64.decode(doc.trim()).map_err(|e| bad_request(format!("document is not base64: {e}"))),
        (None, _) => Err(bad_request(
            "creating a repository requires an identity document signed by its owner: \
             run `guts-node repo create NAME` (it signs one with your identity from `guts-node id new`), \
             or POST {\"document\": \"<base64 SignedDocument>\"}",
        )),
    }
}

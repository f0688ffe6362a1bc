//! The one error type of the node, and the one place where errors become
//! HTTP statuses ([`status_for`]), REST bodies ([`ApiError`]) and git
//! messages ([`GitHttpError`], [`NodeError::into_git`]).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Errors of the node binary.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// An error from the git layer.
    #[error(transparent)]
    Git(#[from] guts_git::Error),
    /// An identity document, DID or certificate is invalid or refused.
    #[error(transparent)]
    Identity(#[from] guts_identity::Error),
    /// A request is malformed (body, parameters, a peer's data).
    #[error("{0}")]
    Invalid(String),
    /// The request needs a service or content type this node does not offer.
    #[error("{0}")]
    UnsupportedMedia(String),
    /// The request is understood but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// A repository has no identity document, so nobody may push to it.
    #[error("repository {0} has no identity document, so nobody may push to it; its owner must recreate it with `guts-node repo create`")]
    NoIdentity(String),
    /// The state changed under the request (a lost race, a taken name).
    #[error("{0}")]
    Conflict(String),
    /// Peer-to-peer replication is off on this node.
    #[error("peer-to-peer replication is off on this node (start it with --p2p-listen)")]
    P2pOff,
    /// A peer-to-peer operation failed on the network side.
    #[error("{0}")]
    Network(String),
    /// A background task failed.
    #[error("internal error: {0}")]
    Internal(String),
    /// Configuration or startup failure.
    #[error("{0}")]
    Config(String),
    /// Talking to a node from the CLI failed.
    #[error("{0}")]
    Client(String),
    /// Local I/O.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl NodeError {
    /// The error as the git layer reports it inside a push (the message a
    /// git user sees on the `ng` line).
    pub fn into_git(self) -> guts_git::Error {
        match self {
            NodeError::Git(g) => g,
            NodeError::Io(e) => guts_git::Error::Io(e),
            other if status_for(&other).is_client_error() => {
                guts_git::Error::Rejected(other.to_string())
            }
            other => guts_git::Error::Metadata(other.to_string()),
        }
    }
}

/// The HTTP status for an error: the only place that decides it.
pub fn status_for(e: &NodeError) -> StatusCode {
    use guts_git::Error as G;
    match e {
        NodeError::Git(g) => match g {
            G::InvalidRepoName { .. }
            | G::InvalidRefName(_)
            | G::Protocol(_)
            | G::NotOurRef(_)
            | G::NotConnected { .. } => StatusCode::BAD_REQUEST,
            G::RepoNotFound(_) => StatusCode::NOT_FOUND,
            G::RepoExists(_) | G::Rejected(_) => StatusCode::CONFLICT,
            G::TooLarge(_) | G::Limit { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            G::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            G::Io(_)
            | G::MissingObject(_)
            | G::CorruptObject { .. }
            | G::Pack(_)
            | G::Metadata(_) => StatusCode::INTERNAL_SERVER_ERROR,
        },
        NodeError::Identity(i) => match i {
            guts_identity::Error::KeyFile { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        },
        NodeError::Invalid(_) => StatusCode::BAD_REQUEST,
        NodeError::UnsupportedMedia(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        NodeError::Forbidden(_) | NodeError::NoIdentity(_) => StatusCode::FORBIDDEN,
        NodeError::Conflict(_) | NodeError::P2pOff => StatusCode::CONFLICT,
        NodeError::Network(_) => StatusCode::BAD_GATEWAY,
        NodeError::Internal(_) | NodeError::Config(_) | NodeError::Client(_) | NodeError::Io(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// An error answered as JSON `{"error": "..."}` (REST API).
pub struct ApiError(pub NodeError);

impl<E: Into<NodeError>> From<E> for ApiError {
    fn from(e: E) -> Self {
        ApiError(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_for(&self.0);
        if status.is_server_error() {
            tracing::error!(error = %self.0, "request failed");
        }
        (
            status,
            axum::Json(serde_json::json!({ "error": self.0.to_string() })),
        )
            .into_response()
    }
}

/// An error answered as `text/plain`, which git shows to the user as `remote: ...`.
pub struct GitHttpError(pub NodeError);

impl<E: Into<NodeError>> From<E> for GitHttpError {
    fn from(e: E) -> Self {
        GitHttpError(e.into())
    }
}

impl IntoResponse for GitHttpError {
    fn into_response(self) -> Response {
        let status = status_for(&self.0);
        let mut msg = self.0.to_string();
        if let NodeError::Git(guts_git::Error::RepoNotFound(name)) = &self.0 {
            msg = format!(
                "repository {name} does not exist on this node; create it with `guts-node repo create {name}` (or POST /api/v1/repos) and try again"
            );
        }
        if status.is_server_error() {
            tracing::error!(error = %msg, "git request failed");
        } else {
            tracing::info!(error = %msg, "git request refused");
        }
        (
            status,
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )],
            format!("{msg}\n"),
        )
            .into_response()
    }
}

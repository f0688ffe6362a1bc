//! The one place where errors become HTTP responses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Errors of the node binary.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// An error from the git layer.
    #[error(transparent)]
    Git(#[from] guts_git::Error),
    /// A background task failed.
    #[error("internal error: {0}")]
    Internal(String),
    /// A request the HTTP layer refuses before the git layer sees it.
    #[error("{1}")]
    BadRequest(StatusCode, String),
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

/// The HTTP status for an error.
pub fn status_for(e: &NodeError) -> StatusCode {
    use guts_git::Error as G;
    match e {
        NodeError::Git(g) => match g {
            G::InvalidRepoName { .. } | G::InvalidRefName(_) | G::Protocol(_) => {
                StatusCode::BAD_REQUEST
            }
            G::RepoNotFound(_) => StatusCode::NOT_FOUND,
            G::RepoExists(_) => StatusCode::CONFLICT,
            G::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            G::NotOurRef(_) => StatusCode::BAD_REQUEST,
            G::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            G::Io(_)
            | G::MissingObject(_)
            | G::CorruptObject { .. }
            | G::Pack(_)
            | G::Metadata(_) => StatusCode::INTERNAL_SERVER_ERROR,
        },
        NodeError::BadRequest(s, _) => *s,
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

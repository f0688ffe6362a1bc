//! The one error type of the node, and the one place where errors become
//! HTTP statuses ([`status_for`]), REST bodies ([`ApiError`]) and git
//! messages ([`GitHttpError`], [`NodeError::into_git`]).

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
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
    /// What the request names does not exist (a ref, a file, a commit).
    #[error("{0}")]
    NotFound(String),
    /// The request needs a service or content type this node does not offer.
    #[error("{0}")]
    UnsupportedMedia(String),
    /// The request is understood but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The request lacks valid credentials for what it changes.
    #[error("{0}")]
    Unauthorized(String),
    /// A quota of this node would be exceeded.
    #[error("{0}")]
    Quota(String),
    /// The node is low on disk space: reads only.
    #[error("{0}")]
    LowDisk(String),
    /// A repository has no identity document, so nobody may push to it.
    #[error("repository {0} has no identity document, so nobody may push to it; its owner must recreate it with `guts-node repo create`")]
    NoIdentity(String),
    /// The state changed under the request (a lost race, a taken name).
    #[error("{0}")]
    Conflict(String),
    /// Peer-to-peer replication is off on this node.
    #[error("peer-to-peer replication is off on this node (started with --no-p2p or p2p.enabled = false)")]
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
    /// The client made more requests than its rate limit allows.
    #[error("rate limit exceeded for {client}: retry after {} s", retry_after.as_secs())]
    RateLimited {
        /// The client: its address, or the DID that signed.
        client: String,
        /// When a request will be accepted again.
        retry_after: Duration,
    },
    /// Every slot for this kind of work stayed taken for the queue timeout.
    #[error("too many concurrent {what} on this node; retry after {} s", retry_after.as_secs())]
    Busy {
        /// `pushes` or `fetches`.
        what: &'static str,
        /// A suggested wait.
        retry_after: Duration,
    },
    /// The client has too many connections open, or the node has.
    #[error("{0}")]
    TooManyConnections(String),
    /// The client sent its request too slowly.
    #[error("{0}")]
    TooSlow(String),
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

    /// How long the client should wait before trying again, if the error
    /// says so (the `Retry-After` header).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            NodeError::RateLimited { retry_after, .. } | NodeError::Busy { retry_after, .. } => {
                Some(*retry_after)
            }
            NodeError::TooManyConnections(_) => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// Whether the connection should be closed after the answer.
    fn closes_connection(&self) -> bool {
        matches!(
            self,
            NodeError::TooSlow(_) | NodeError::TooManyConnections(_)
        )
    }

    /// Whether the error is a client going over a limit (logged at debug
    /// level only, so a flood does not flood the log).
    fn is_limit(&self) -> bool {
        matches!(
            self,
            NodeError::RateLimited { .. }
                | NodeError::TooManyConnections(_)
                | NodeError::TooSlow(_)
        )
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
            | G::Archive(_)
            | G::NotOurRef(_)
            | G::NotConnected { .. } => StatusCode::BAD_REQUEST,
            G::RepoNotFound(_) => StatusCode::NOT_FOUND,
            G::RepoExists(_) | G::Rejected(_) => StatusCode::CONFLICT,
            G::TooLarge(_) | G::Limit { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            G::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            G::DiskFull => StatusCode::INSUFFICIENT_STORAGE,
            G::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            G::Io(_)
            | G::MissingObject(_)
            | G::CorruptObject { .. }
            | G::Pack(_)
            | G::CommitGraph { .. }
            | G::Metadata(_) => StatusCode::INTERNAL_SERVER_ERROR,
        },
        NodeError::Identity(i) => match i {
            guts_identity::Error::KeyFile { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        },
        NodeError::Invalid(_) => StatusCode::BAD_REQUEST,
        NodeError::NotFound(_) => StatusCode::NOT_FOUND,
        NodeError::UnsupportedMedia(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        NodeError::Forbidden(_) | NodeError::NoIdentity(_) | NodeError::Quota(_) => {
            StatusCode::FORBIDDEN
        }
        NodeError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        NodeError::LowDisk(_) => StatusCode::INSUFFICIENT_STORAGE,
        NodeError::Conflict(_) | NodeError::P2pOff => StatusCode::CONFLICT,
        NodeError::Network(_) => StatusCode::BAD_GATEWAY,
        NodeError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        NodeError::Busy { .. } | NodeError::TooManyConnections(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        NodeError::TooSlow(_) => StatusCode::REQUEST_TIMEOUT,
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
        if self.0.is_limit() {
            tracing::debug!(error = %self.0, "request refused");
        } else if let NodeError::Busy { .. } = self.0 {
            tracing::warn!(error = %self.0, "request refused");
        } else if status.is_server_error() {
            tracing::error!(error = %self.0, "request failed");
        }
        let mut resp = (
            status,
            axum::Json(serde_json::json!({ "error": self.0.to_string() })),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"guts-node\""),
            );
        }
        limit_headers(&self.0, &mut resp);
        resp
    }
}

/// `Retry-After` and `Connection: close` where the error asks for them.
fn limit_headers(e: &NodeError, resp: &mut Response) {
    if let Some(after) = e.retry_after() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs()));
    }
    if e.closes_connection() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// A complete HTTP/1.1 answer for `e` as bytes, for refusing a connection
/// without serving it (plain text, `Connection: close`).
pub fn raw_http_answer(e: &NodeError) -> Vec<u8> {
    let status = status_for(e);
    let body = format!("{e}\n");
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if let Some(after) = e.retry_after() {
        head.push_str(&format!("Retry-After: {}\r\n", after.as_secs()));
    }
    head.push_str("\r\n");
    head.push_str(&body);
    head.into_bytes()
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
        if self.0.is_limit() {
            tracing::debug!(error = %msg, "git request refused");
        } else if let NodeError::Busy { .. } = self.0 {
            tracing::warn!(error = %msg, "git request refused");
        } else if status.is_server_error() {
            tracing::error!(error = %msg, "git request failed");
        } else {
            tracing::info!(error = %msg, "git request refused");
        }
        let mut resp = (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{msg}\n"),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            // git, libgit2, dulwich and isomorphic-git prompt for (or call
            // back for) a user name and password on a Basic challenge.
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"guts push token\""),
            );
        }
        limit_headers(&self.0, &mut resp);
        resp
    }
}

/// The media type of the Git LFS API, requests and answers.
pub const LFS_MEDIA_TYPE: &str = "application/vnd.git-lfs+json";

/// An error answered to a Git LFS client (ADR 0022): `{"message": ...}`
/// as [`LFS_MEDIA_TYPE`]; a 401 carries a Basic challenge (in
/// `WWW-Authenticate` and `LFS-Authenticate`) so that git-lfs asks git's
/// credential helper for a push token.
pub struct LfsError(pub NodeError);

impl<E: Into<NodeError>> From<E> for LfsError {
    fn from(e: E) -> Self {
        LfsError(e.into())
    }
}

impl IntoResponse for LfsError {
    fn into_response(self) -> Response {
        let status = status_for(&self.0);
        let msg = match &self.0 {
            NodeError::Git(guts_git::Error::RepoNotFound(name)) => {
                format!("repository {name} does not exist on this node")
            }
            other => other.to_string(),
        };
        if self.0.is_limit() {
            tracing::debug!(error = %msg, "LFS request refused");
        } else if status.is_server_error() {
            tracing::error!(error = %msg, "LFS request failed");
        } else {
            tracing::info!(error = %msg, status = status.as_u16(), "LFS request refused");
        }
        let body = serde_json::json!({ "message": msg }).to_string();
        let mut resp = (status, [(header::CONTENT_TYPE, LFS_MEDIA_TYPE)], body).into_response();
        if status == StatusCode::UNAUTHORIZED {
            let challenge = HeaderValue::from_static("Basic realm=\"guts push token\"");
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge.clone());
            resp.headers_mut().insert("lfs-authenticate", challenge);
        }
        limit_headers(&self.0, &mut resp);
        resp
    }
}

//! What the LFS handlers share: the repository a request names, who makes
//! it, where its links point, and bounded JSON bodies.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use guts_git::names::RepoName;
use serde::de::DeserializeOwned;

use crate::error::{NodeError, LFS_MEDIA_TYPE};
use crate::http::Shared;
use crate::identity::Identity;

/// What an LFS request without the right credentials is told.
pub const NEEDS_TOKEN: &str =
    "LFS uploads and locks need a push token for this repository as the password \
     (any user name; git's credential helper gives it to git-lfs): a delegate mints one with \
     `guts-node token new OWNER/NAME`, and `guts-node token save URL TOKEN` stores it for git";

/// The repository a request names, with its identity (every LFS request
/// needs its id, which keys its objects and locks).
pub struct RepoCtx {
    /// Canonical name.
    pub name: RepoName,
    /// Current identity.
    pub identity: Identity,
}

/// Resolve `owner/name` (an alias, a `.git` suffix) on a blocking thread.
pub async fn repo_ctx(state: &Shared, owner: String, name: String) -> Result<RepoCtx, NodeError> {
    let repos = Arc::clone(&state.repos);
    blocking(move || {
        let name = repos.resolve(&owner, &name)?;
        repos.open_repo(&name)?;
        let identity = repos.identity(&name)?;
        Ok(RepoCtx { name, identity })
    })
    .await
}

/// Run `f` on a blocking thread.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))?
}

/// Who writes: the key of a push token's grant, or the operator.
#[derive(Debug, Clone)]
pub struct Writer {
    /// The owner name of locks: the grantee's `did:key`, or `operator`.
    pub name: String,
    /// The operator or a current delegate: may break others' locks.
    pub admin: bool,
}

/// The writer a request authenticates as, for uploads and locks: the
/// operator token (Bearer, or as the Basic password), or a push token that
/// `identity` accepts now. No credentials: 401 with a Basic challenge.
pub fn writer(
    state: &Shared,
    headers: &HeaderMap,
    identity: &Identity,
) -> Result<Writer, NodeError> {
    if let Some(given) = operator_candidate(headers) {
        if state.token.matches(&given) {
            return Ok(Writer {
                name: "operator".into(),
                admin: true,
            });
        }
    }
    let Some(token) = crate::tokens::from_headers(headers)? else {
        return Err(NodeError::Unauthorized(NEEDS_TOKEN.into()));
    };
    let grant = crate::tokens::check(&token, identity, crate::auth::now())?;
    let did = grant.grantee();
    Ok(Writer {
        admin: identity.doc.is_delegate(&did),
        name: did.to_string(),
    })
}

/// The secret of `Authorization: Bearer X` or the password of Basic.
fn operator_candidate(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = B64.decode(rest.trim()).ok()?;
    let pair = String::from_utf8(raw).ok()?;
    pair.split_once(':').map(|(_, p)| p.to_owned())
}

/// Where this node's links point: the public URL whose host the request
/// names (its scheme, behind a TLS proxy), else `http://` and the
/// request's `Host`.
pub fn base_url(state: &Shared, headers: &HeaderMap) -> Result<String, NodeError> {
    let host = crate::http::link_host(headers)
        .ok_or_else(|| NodeError::Invalid("the request has no valid Host header".into()))?
        .to_ascii_lowercase();
    for url in &state.repos.rules().public_urls {
        let Some((scheme, rest)) = url.split_once("://") else {
            continue;
        };
        let url_host = rest.split('/').next().unwrap_or_default();
        if url_host.eq_ignore_ascii_case(&host) {
            return Ok(format!("{scheme}://{}", rest.trim_end_matches('/')));
        }
    }
    Ok(format!("http://{host}"))
}

/// A JSON body of at most `max` bytes.
pub async fn json_body<T: DeserializeOwned>(body: Body, max: usize) -> Result<T, NodeError> {
    let bytes = axum::body::to_bytes(body, max).await.map_err(|e| {
        NodeError::Git(guts_git::Error::TooLarge(format!(
            "the LFS request body could not be read within {max} bytes: {e}"
        )))
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| NodeError::Invalid(format!("invalid LFS request: {e}")))
}

/// A JSON answer in the LFS media type.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    let mut resp = (status, value.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(LFS_MEDIA_TYPE),
    );
    resp
}

/// RFC 3339 UTC time for Unix seconds (`locked_at`).
pub fn rfc3339(secs: u64) -> String {
    let secs = i64::try_from(secs).unwrap_or(i64::MAX / 2);
    let (y, m, d) = crate::web::layout::civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

//! The web view: server-rendered HTML pages of the node and its
//! repositories (ADR 0018), under the same `/OWNER/NAME` prefix git's smart
//! HTTP uses. No JavaScript build step: the markup is compiled in ([`maud`]
//! escapes every interpolated string), one stylesheet and one small script
//! (the clone URL's copy button) come from `templates/`.
//!
//! Every page reads on a blocking thread and bounds its work with the
//! constants of [`limits`]; errors are HTML pages with the status
//! [`crate::error::status_for`] gives.

mod commits;
mod files;
pub(crate) mod layout;
pub(crate) mod limits;
mod markdown;
mod node;
mod repo;
mod updates;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use guts_git::browse::Resolved;
use guts_git::names::RepoName;
use guts_git::storage::Repo;

use crate::error::{status_for, NodeError};
use crate::http::Shared;

/// The web view's routes (merged into [`crate::http::router`]).
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/", get(node::node_page))
        .route("/{owner}/{name}", get(repo::repo_page))
        .route("/{owner}/{name}/tree/{*rest}", get(files::tree_page))
        .route("/{owner}/{name}/blob/{*rest}", get(files::blob_page))
        .route("/{owner}/{name}/raw/{*rest}", get(files::raw))
        .route("/{owner}/{name}/commit/{id}", get(commits::commit_page))
        .route("/{owner}/{name}/commits", get(commits::log_default))
        .route("/{owner}/{name}/commits/{*rest}", get(commits::log_page))
        .route("/{owner}/{name}/updates", get(updates::updates_page))
        .route("/static/guts.css", get(stylesheet))
        .fallback(not_found)
}

/// Any other address: an HTML 404 page (JSON under `/api/`, as the REST
/// API answers). Browsers resolve `..` in URLs before sending them, so a
/// traversal typed into the address bar lands here.
async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/api/") {
        let e = NodeError::NotFound(format!(
            "no API route {} (the routes are in /api/v1/openapi.json)",
            uri.path()
        ));
        return crate::error::ApiError(e).into_response();
    }
    WebError(NodeError::NotFound(format!("no page at {}", uri.path()))).into_response()
}

/// The one stylesheet.
const CSS: &str = include_str!("../../templates/guts.css");
/// The copy button's script.
const COPY_JS: &str = include_str!("../../templates/copy.js");

async fn stylesheet() -> Response {
    let mut resp = (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        CSS,
    )
        .into_response();
    security_headers(resp.headers_mut(), None);
    resp
}

/// A per-response random token that lets the page's own inline script run
/// (`script-src 'nonce-...'`) and nothing else.
#[derive(Clone)]
pub(crate) struct Nonce(String);

impl Nonce {
    fn new() -> Nonce {
        use base64::Engine;
        let mut bytes = [0u8; 16];
        // Without randomness the script is simply not allowed to run.
        if getrandom::getrandom(&mut bytes).is_err() {
            return Nonce(String::new());
        }
        Nonce(base64::engine::general_purpose::STANDARD.encode(bytes))
    }
}

/// `Content-Security-Policy` (no scripts but the page's nonce, no
/// framing, no plugins, forms or base changes), `X-Content-Type-Options`,
/// `X-Frame-Options` and `Referrer-Policy`.
pub(crate) fn security_headers(headers: &mut HeaderMap, nonce: Option<&Nonce>) {
    let script = match nonce {
        Some(n) if !n.0.is_empty() => format!("script-src 'nonce-{}'", n.0),
        _ => "script-src 'none'".to_owned(),
    };
    let csp = format!(
        "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' https: data:; {script}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

/// An HTML page response with the security headers.
pub(crate) fn respond(status: StatusCode, nonce: &Nonce, page: maud::Markup) -> Response {
    let mut resp = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page.into_string(),
    )
        .into_response();
    security_headers(resp.headers_mut(), Some(nonce));
    crate::http::no_cache(resp.headers_mut());
    resp
}

/// An error shown as an HTML page with its status.
pub(crate) struct WebError(pub NodeError);

impl<E: Into<NodeError>> From<E> for WebError {
    fn from(e: E) -> Self {
        WebError(e.into())
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let status = status_for(&self.0);
        let message = match &self.0 {
            NodeError::Git(guts_git::Error::RepoNotFound(name)) => {
                format!("repository {name} does not exist on this node")
            }
            e if status.is_server_error() => {
                tracing::error!(error = %e, "web page failed");
                "the node could not build this page; see its log".to_owned()
            }
            e => e.to_string(),
        };
        let nonce = Nonce::new();
        respond(status, &nonce, layout::error_page(status, &message, &nonce))
    }
}

/// Run `f` on a blocking thread (object reads, sled).
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, WebError> {
    Ok(crate::rest::blocking(f).await?)
}

/// A repository opened for a page.
pub(crate) struct RepoCtx {
    /// Canonical name.
    pub name: RepoName,
    /// The repository.
    pub repo: Repo,
    /// Its refs, sorted by name.
    pub refs: Vec<guts_git::storage::Ref>,
    /// Its objects (opened once per page).
    pub store: guts_git::odb::ObjectStore,
}

impl RepoCtx {
    /// Resolve and open `OWNER/NAME` (blocking).
    pub fn open(state: &Shared, owner: &str, name: &str) -> Result<RepoCtx, NodeError> {
        let name = state.repos.resolve(owner, name)?;
        let repo = state.repos.open_repo(&name)?;
        let refs = repo.refs()?;
        let store = repo.objects()?;
        Ok(RepoCtx {
            name,
            repo,
            refs,
            store,
        })
    }

    /// The default branch: HEAD's target, resolved among the refs.
    pub fn head(&self) -> Result<Option<Resolved>, NodeError> {
        let target = self.repo.settings()?.head;
        let short = target.strip_prefix("refs/heads/").unwrap_or(&target);
        Ok(self
            .refs
            .iter()
            .find(|r| r.name == target)
            .map(|r| Resolved {
                name: short.to_owned(),
                full: Some(r.name.clone()),
                id: r.id,
                path: String::new(),
            }))
    }

    /// Resolve `REF/PATH` from a URL: 404 if no prefix names a ref or id,
    /// 400 if the path is invalid.
    pub fn resolve(&self, rest: &str) -> Result<Resolved, NodeError> {
        guts_git::browse::resolve(&self.refs, rest)
            .map_err(|e| match e {
                guts_git::Error::Protocol(why) => {
                    NodeError::Invalid(format!("invalid path: {why}"))
                }
                other => NodeError::Invalid(other.to_string()),
            })?
            .ok_or_else(|| NodeError::NotFound(format!("no branch, tag or commit named {rest:?}")))
    }

    /// The repository's URL path, `/OWNER/NAME`.
    pub fn base(&self) -> String {
        format!("/{}", self.name)
    }
}

/// `/OWNER/NAME.git` (and deeper page paths under it) redirect to the
/// page without `.git`.
pub(crate) fn dot_git_redirect(owner: &str, name: &str, tail: &str) -> Option<Response> {
    let stripped = name.strip_suffix(".git")?;
    RepoName::new(owner, stripped).ok()?;
    let location = format!("/{owner}/{stripped}{tail}");
    let mut resp = axum::response::Redirect::permanent(&location).into_response();
    security_headers(resp.headers_mut(), None);
    Some(resp)
}

/// The base of clone URLs: the node's first public URL if it has one,
/// else `http://` and the request's `Host` (if it is a plausible host).
pub(crate) fn clone_base(state: &Shared, headers: &HeaderMap) -> String {
    if let Some(url) = state.repos.rules().public_urls.first() {
        return url.trim_end_matches('/').to_owned();
    }
    let host = crate::http::link_host(headers).unwrap_or("localhost");
    format!("http://{host}")
}

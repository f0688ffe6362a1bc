//! The HTTP server: git smart HTTP, the REST API and the web view.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use guts_git::protocol::{Service, Version};
use guts_git::receive_pack::PushPolicy;
use guts_git::upload_pack::UploadStats;
use serde::Deserialize;

use crate::body::{
    blocking_reader, prefetch, response_channel, stream_of, BodyStream, Prefetched, TransferLimits,
};
use crate::error::{GitHttpError, NodeError};
use crate::limits::{Work, WorkSlots, PREFETCH_BYTES, PROBE_BYTES};
use crate::metrics::git::Counted;
use crate::policy::SignedPushPolicy;
use crate::repos::Repos;

/// Shared state of all handlers.
pub struct AppState {
    /// The node's repositories (the domain layer).
    pub repos: Arc<Repos>,
    /// Peer-to-peer replication, if enabled.
    pub p2p: Option<Arc<crate::p2p::P2p>>,
    /// The operator's bearer token.
    pub token: crate::auth::OperatorToken,
    /// How slow a git client may be in reading a response.
    pub transfer: TransferLimits,
    /// Caps on concurrent pushes and pack generations.
    pub slots: WorkSlots,
    /// Repository maintenance (on request and in the background).
    pub maintenance: Arc<crate::maintenance::Maintenance>,
    /// Progress of the seeds requests wait for.
    pub seeds: Arc<crate::progress::Board>,
    /// The event streams (`GET /api/v1/events`).
    pub events: Arc<crate::events::EventHub>,
    /// Prometheus metrics (`GET /metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Git LFS objects and locks (ADR 0022).
    pub lfs: Arc<crate::lfs::Lfs>,
}

pub(crate) type Shared = Arc<AppState>;

/// Build the router, every request counted in the metrics.
pub fn router(state: Shared) -> Router {
    let metrics = Arc::clone(&state.metrics);
    let router = Router::new()
        // The REST API and its description (`crate::openapi`).
        .merge(crate::openapi::api())
        .merge(crate::web::routes())
        .merge(crate::lfs::routes())
        .route("/metrics", get(crate::metrics::serve))
        .route("/{owner}/{name}/info/refs", get(info_refs))
        .route("/{owner}/{name}/git-upload-pack", post(upload_pack))
        .route("/{owner}/{name}/git-receive-pack", post(receive_pack))
        // git over a WebSocket, for `git-remote-guts` (see `crate::ws`).
        .route("/{owner}/{name}/git-ws", get(crate::ws::git_ws))
        // `git archive --remote` (see `crate::archive`).
        .route(
            "/{owner}/{name}/git-upload-archive",
            post(crate::archive::upload_archive),
        )
        .with_state(state);
    crate::metrics::http::instrument(router, metrics)
}

/// The body of `GET /api/v1/health`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    /// Always `ok`.
    status: &'static str,
}

/// `GET /api/v1/health`: the node is up and serving.
#[utoipa::path(get, path = "/api/v1/health", tag = "node",
    responses((status = 200, description = "The node is up", body = Health)))]
pub(crate) async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

pub(crate) fn no_cache(headers: &mut HeaderMap) {
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache, max-age=0, must-revalidate"),
    );
    headers.insert(header::PRAGMA, header::HeaderValue::from_static("no-cache"));
}

pub(crate) fn protocol_version(headers: &HeaderMap) -> Version {
    Version::from_header(headers.get("git-protocol").and_then(|v| v.to_str().ok()))
}

#[derive(Deserialize)]
struct InfoRefsQuery {
    service: Option<String>,
}

async fn info_refs(
    State(state): State<Shared>,
    Path((owner, name)): Path<(String, String)>,
    Query(q): Query<InfoRefsQuery>,
    headers: HeaderMap,
) -> Result<Response, GitHttpError> {
    let service = match q.service.as_deref().map(Service::from_name) {
        Some(Some(s)) => s,
        Some(None) => return Err(NodeError::Forbidden("unknown service".into()).into()),
        None => {
            return Err(NodeError::Forbidden(
                "this node speaks git's smart HTTP protocol only (dumb HTTP is not supported); use git 1.6.6 or newer".into(),
            )
            .into())
        }
    };
    let version = protocol_version(&headers);
    let token = match service {
        Service::ReceivePack => push_token(&headers)?,
        Service::UploadPack => None,
    };
    let body = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, NodeError> {
        let repos = &state.repos;
        let name = repos.resolve(&owner, &name)?;
        let repo = repos.open_repo(&name)?;
        let nonce = match service {
            Service::ReceivePack => {
                let identity = repos.identity(&name)?;
                if let Some(token) = &token {
                    crate::tokens::check(token, &identity, crate::auth::now())?;
                }
                SignedPushPolicy::with_identity(repos, &name, identity, None).cert_nonce()
            }
            Service::UploadPack => None,
        };
        let mut out = Vec::new();
        guts_git::protocol::advertise(&repo, service, version, nonce.as_deref(), &mut out)?;
        Ok(out)
    })
    .await
    .map_err(|e| NodeError::Internal(e.to_string()))??;
    let mut resp = (
        [(header::CONTENT_TYPE, service.advertisement_content_type())],
        body,
    )
        .into_response();
    no_cache(resp.headers_mut());
    Ok(resp)
}

/// The push token of a push request. A client that sends none and cannot
/// sign certificates is asked for one (401), so that its credential prompt
/// or callback runs.
fn push_token(headers: &HeaderMap) -> Result<Option<guts_identity::PushToken>, NodeError> {
    let token = crate::tokens::from_headers(headers)?;
    if token.is_none() && !crate::tokens::signs_pushes(headers) {
        return Err(NodeError::Unauthorized(
            crate::tokens::NO_CREDENTIAL_HELP.to_owned(),
        ));
    }
    Ok(token)
}

fn check_request(headers: &HeaderMap, service: Service) -> Result<bool, NodeError> {
    check_body_type(headers, service.request_content_type())
}

/// The request's `Content-Type` must be `expected`; whether its body is
/// gzipped (`Content-Encoding`; other encodings are refused).
pub(crate) fn check_body_type(headers: &HeaderMap, expected: &str) -> Result<bool, NodeError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct != expected {
        return Err(NodeError::UnsupportedMedia(format!(
            "expected Content-Type {expected}"
        )));
    }
    match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        None | Some("identity") => Ok(false),
        Some("gzip") | Some("x-gzip") => Ok(true),
        Some(other) => Err(NodeError::UnsupportedMedia(format!(
            "unsupported Content-Encoding {other}"
        ))),
    }
}

fn streaming_response(service: Service, body: Body) -> Response {
    let mut resp = (
        [(header::CONTENT_TYPE, service.result_content_type())],
        body,
    )
        .into_response();
    no_cache(resp.headers_mut());
    resp
}

/// Resolve and open a repository on a blocking thread (sled reads).
pub(crate) async fn open(
    state: &Shared,
    owner: String,
    name: String,
) -> Result<(guts_git::names::RepoName, guts_git::storage::Repo), NodeError> {
    let repos = Arc::clone(&state.repos);
    tokio::task::spawn_blocking(move || {
        let name = repos.resolve(&owner, &name)?;
        let repo = repos.open_repo(&name)?;
        Ok((name, repo))
    })
    .await
    .map_err(|e| NodeError::Internal(e.to_string()))?
}

/// The request body (the server applies the transfer limits to it) and its
/// first [`PREFETCH_BYTES`], read without a blocking thread: a client too
/// slow to send them is refused before it waits for a work slot.
pub(crate) async fn start_body(body: Body) -> Result<(Prefetched, BodyStream), NodeError> {
    let mut body = stream_of(body);
    match prefetch(&mut body, PREFETCH_BYTES).await {
        Ok(pre) => Ok((pre, body)),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            Err(NodeError::TooSlow(e.to_string()))
        }
        Err(e) => Err(NodeError::Invalid(format!(
            "reading the request failed: {e}"
        ))),
    }
}

/// An upload-pack that ran this long (a generated pack, most likely) gives
/// its freed memory back to the system when it ends.
const RELEASE_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

async fn upload_pack(
    State(state): State<Shared>,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, GitHttpError> {
    let gzip = check_request(&headers, Service::UploadPack)?;
    let (name, repo) = open(&state, owner, name).await?;
    let version = protocol_version(&headers);
    let (pre, body) = start_body(body).await?;
    let permit = state.slots.acquire(Work::Fetch).await?;
    let (writer, out) = response_channel(&state.transfer);
    let metrics = Arc::clone(&state.metrics);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut input = blocking_reader(pre, body, gzip);
        let started = std::time::Instant::now();
        let mut writer = Counted::new(writer);
        let mut stats = UploadStats::default();
        let result = guts_git::upload_pack::upload_pack_with_stats(
            &repo,
            version,
            &mut input,
            &mut writer,
            &mut stats,
        );
        // Counted before the response ends (the writer is dropped).
        metrics
            .git
            .upload_pack(&stats, writer.bytes, result.as_ref().err());
        match result {
            Ok(()) => {
                tracing::debug!(repo = %name, ?version, elapsed_ms = started.elapsed().as_millis() as u64, "upload-pack done")
            }
            Err(e) => tracing::warn!(repo = %name, ?version, error = %e, "upload-pack failed"),
        }
        if started.elapsed() >= RELEASE_AFTER {
            crate::memory::release();
        }
    });
    Ok(streaming_response(Service::UploadPack, out))
}

async fn receive_pack(
    State(state): State<Shared>,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, GitHttpError> {
    let gzip = check_request(&headers, Service::ReceivePack)?;
    let token = crate::tokens::from_headers(&headers)?;
    let (name, repo) = open(&state, owner, name).await?;
    let host = request_host(&headers);
    let gate = crate::push::gate(&state, &name, token).await?;
    let (pre, body) = start_body(body).await?;
    // git's `0000` probe before a large push does no work: no slot for it.
    let probe = pre.complete && pre.len <= PROBE_BYTES;
    let permit = if probe {
        None
    } else {
        Some(state.slots.acquire(Work::Push).await?)
    };
    let (mut writer, out) = response_channel(&state.transfer);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut input = blocking_reader(pre, body, gzip);
        let push = crate::push::Push {
            repos: &state.repos,
            metrics: &state.metrics,
            repo: &repo,
            name: &name,
            host: host.as_deref(),
            probe,
        };
        push.run(gate, &mut input, &mut writer);
    });
    Ok(streaming_response(Service::ReceivePack, out))
}

/// The request's `Host` header.
/// The request's `Host` if it is a plausible host name or address (with a
/// port), for links the node writes back: nothing else is echoed.
pub(crate) fn link_host(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
}

pub(crate) fn request_host(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
}

//! The HTTP server: git smart HTTP and the REST API.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use guts_git::names::RepoName;
use guts_git::protocol::{Service, Version};
use guts_git::receive_pack::ReceiveOptions;
use guts_git::storage::Storage;
use serde::{Deserialize, Serialize};

use crate::body::{blocking_reader, response_channel};
use crate::error::{ApiError, GitHttpError, NodeError};

/// Shared state of all handlers.
pub struct AppState {
    /// Repository storage.
    pub storage: Storage,
    /// Push settings.
    pub receive: ReceiveOptions,
}

type Shared = Arc<AppState>;

/// Build the router.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/api/v1/repos", get(list_repos).post(create_repo))
        .route(
            "/api/v1/repos/{owner}/{name}",
            get(show_repo).delete(delete_repo).patch(patch_repo),
        )
        .route(
            "/api/v1/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/{owner}/{name}/info/refs", get(info_refs))
        .route("/{owner}/{name}/git-upload-pack", post(upload_pack))
        .route("/{owner}/{name}/git-receive-pack", post(receive_pack))
        .with_state(state)
}

fn no_cache(headers: &mut HeaderMap) {
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache, max-age=0, must-revalidate"),
    );
    headers.insert(header::PRAGMA, header::HeaderValue::from_static("no-cache"));
}

fn protocol_version(headers: &HeaderMap) -> Version {
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
        Some(None) => return Err(NodeError::BadRequest(StatusCode::FORBIDDEN, "unknown service".into()).into()),
        None => {
            return Err(NodeError::BadRequest(
                StatusCode::FORBIDDEN,
                "this node speaks git's smart HTTP protocol only (dumb HTTP is not supported); use git 1.6.6 or newer".into(),
            )
            .into())
        }
    };
    let name = RepoName::new(&owner, &name)?;
    let version = protocol_version(&headers);
    let storage = state.storage.clone();
    let body = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, NodeError> {
        let repo = storage.open_repo(&name)?;
        let mut out = Vec::new();
        guts_git::protocol::advertise(&repo, service, version, &mut out)?;
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

fn check_request(headers: &HeaderMap, service: Service) -> Result<bool, NodeError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct != service.request_content_type() {
        return Err(NodeError::BadRequest(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("expected Content-Type {}", service.request_content_type()),
        ));
    }
    match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        None | Some("identity") => Ok(false),
        Some("gzip") | Some("x-gzip") => Ok(true),
        Some(other) => Err(NodeError::BadRequest(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported Content-Encoding {other}"),
        )),
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

async fn upload_pack(
    State(state): State<Shared>,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, GitHttpError> {
    let gzip = check_request(&headers, Service::UploadPack)?;
    let name = RepoName::new(&owner, &name)?;
    let repo = state.storage.open_repo(&name)?;
    let version = protocol_version(&headers);
    let (mut writer, out) = response_channel();
    tokio::task::spawn_blocking(move || {
        let mut input = blocking_reader(body, gzip);
        let started = std::time::Instant::now();
        match guts_git::upload_pack::upload_pack(&repo, version, &mut input, &mut writer) {
            Ok(()) => {
                tracing::debug!(repo = %name, ?version, elapsed_ms = started.elapsed().as_millis() as u64, "upload-pack done")
            }
            Err(e) => tracing::warn!(repo = %name, ?version, error = %e, "upload-pack failed"),
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
    let name = RepoName::new(&owner, &name)?;
    let repo = state.storage.open_repo(&name)?;
    let opts = state.receive;
    let (mut writer, out) = response_channel();
    tokio::task::spawn_blocking(move || {
        let mut input = blocking_reader(body, gzip);
        if let Err(e) = guts_git::receive_pack::receive_pack(&repo, &mut input, &mut writer, opts) {
            tracing::warn!(repo = %name, error = %e, "receive-pack failed");
        }
    });
    Ok(streaming_response(Service::ReceivePack, out))
}

#[derive(Deserialize)]
struct CreateRepo {
    owner: String,
    name: String,
}

/// A repository as the REST API shows it in lists.
#[derive(Serialize, Deserialize, Debug)]
pub struct RepoSummary {
    /// Owner segment.
    pub owner: String,
    /// Name segment.
    pub name: String,
    /// Clone URL path.
    pub path: String,
}

fn summary(name: &RepoName) -> RepoSummary {
    RepoSummary {
        owner: name.owner().to_owned(),
        name: name.name().to_owned(),
        path: format!("/{name}.git"),
    }
}

/// A repository in detail.
#[derive(Serialize, Deserialize, Debug)]
pub struct RepoDetail {
    /// Owner segment.
    pub owner: String,
    /// Name segment.
    pub name: String,
    /// HEAD's symref target.
    pub head: String,
    /// Every ref and its object id.
    pub refs: BTreeMap<String, String>,
    /// Objects stored in packs.
    pub object_count: u64,
    /// Bytes of packs and indexes on disk.
    pub size_bytes: u64,
    /// Whether non-fast-forward pushes are refused.
    pub deny_non_fast_forwards: bool,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))?
}

async fn list_repos(State(state): State<Shared>) -> Result<Json<Vec<RepoSummary>>, ApiError> {
    let names = blocking(move || Ok(state.storage.list()?)).await?;
    Ok(Json(names.iter().map(summary).collect()))
}

async fn create_repo(
    State(state): State<Shared>,
    body: Result<Json<CreateRepo>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<RepoSummary>), ApiError> {
    let Json(req) =
        body.map_err(|e| NodeError::BadRequest(StatusCode::BAD_REQUEST, e.body_text()))?;
    let name = RepoName::new(&req.owner, &req.name)?;
    let created = name.clone();
    blocking(move || {
        state.storage.create(&created)?;
        Ok(())
    })
    .await?;
    tracing::info!(repo = %name, "repository created");
    Ok((StatusCode::CREATED, Json(summary(&name))))
}

async fn show_repo(
    State(state): State<Shared>,
    Path((owner, name)): Path<(String, String)>,
) -> Result<Json<RepoDetail>, ApiError> {
    let name = RepoName::new(&owner, &name)?;
    let detail = blocking(move || {
        let repo = state.storage.open_repo(&name)?;
        let settings = repo.settings()?;
        let refs = repo
            .refs()?
            .into_iter()
            .map(|r| (r.name, r.id.to_string()))
            .collect();
        let (object_count, size_bytes) = repo.disk_usage()?;
        Ok(RepoDetail {
            owner: name.owner().to_owned(),
            name: name.name().to_owned(),
            head: settings.head,
            refs,
            object_count,
            size_bytes,
            deny_non_fast_forwards: settings.deny_non_fast_forwards,
        })
    })
    .await?;
    Ok(Json(detail))
}

async fn delete_repo(
    State(state): State<Shared>,
    Path((owner, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let name = RepoName::new(&owner, &name)?;
    let deleted = name.clone();
    blocking(move || Ok(state.storage.delete(&deleted)?)).await?;
    tracing::info!(repo = %name, "repository deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchRepo {
    deny_non_fast_forwards: Option<bool>,
}

async fn patch_repo(
    State(state): State<Shared>,
    Path((owner, name)): Path<(String, String)>,
    body: Result<Json<PatchRepo>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(req) =
        body.map_err(|e| NodeError::BadRequest(StatusCode::BAD_REQUEST, e.body_text()))?;
    let name = RepoName::new(&owner, &name)?;
    let settings = blocking(move || {
        let repo = state.storage.open_repo(&name)?;
        match req.deny_non_fast_forwards {
            Some(deny) => Ok(repo.set_deny_non_fast_forwards(deny)?),
            None => Ok(repo.settings()?),
        }
    })
    .await?;
    Ok(Json(serde_json::json!({
        "head": settings.head,
        "deny_non_fast_forwards": settings.deny_non_fast_forwards,
    })))
}

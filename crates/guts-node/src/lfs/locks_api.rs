//! The LFS file-locking API: create, list, verify (ours and theirs),
//! unlock (with `force` for the operator and delegates).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};

use super::api;
use super::locks::{Created, Lock};
use crate::error::{LfsError, NodeError};
use crate::http::Shared;

/// Locks in one page when the client does not say.
const DEFAULT_PAGE: usize = 100;
/// Most locks in one page.
const MAX_PAGE: usize = 1000;
/// Largest locks request body.
const MAX_LOCK_BODY: usize = 16 * 1024;

fn lock_json(lock: &Lock) -> Value {
    json!({
        "id": lock.id,
        "path": lock.path,
        "locked_at": api::rfc3339(lock.locked_at),
        "owner": { "name": lock.owner },
    })
}

fn page_size(limit: Option<&Value>) -> usize {
    limit
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .map_or(DEFAULT_PAGE, |n| usize::try_from(n).unwrap_or(MAX_PAGE))
        .clamp(1, MAX_PAGE)
}

#[derive(Deserialize)]
struct CreateRequest {
    path: String,
}

/// `POST .../locks`: lock a path (201), or 409 with the lock that holds it.
pub async fn create(
    State(state): State<Shared>,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, LfsError> {
    let req: CreateRequest = api::json_body(body, MAX_LOCK_BODY).await?;
    let ctx = api::repo_ctx(&state, owner, name).await?;
    let st = Arc::clone(&state);
    let created = api::blocking(move || {
        let writer = api::writer(&st, &headers, &ctx.identity)?;
        st.lfs.locks.create(
            &ctx.identity.id,
            &req.path,
            &writer.name,
            crate::auth::now(),
        )
    })
    .await?;
    Ok(match created {
        Created::New(lock) => {
            tracing::info!(path = %lock.path, owner = %lock.owner, "LFS lock taken");
            api::json_response(StatusCode::CREATED, &json!({ "lock": lock_json(&lock) }))
        }
        Created::Exists(lock) => api::json_response(
            StatusCode::CONFLICT,
            &json!({ "lock": lock_json(&lock), "message": "already created lock" }),
        ),
    })
}

/// The filters and page of `GET .../locks`.
#[derive(Deserialize)]
pub struct ListQuery {
    path: Option<String>,
    id: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

/// `GET .../locks`: the repository's locks (public, like its files),
/// filtered by `path` or `id`, a page at a time.
pub async fn list(
    State(state): State<Shared>,
    Path((owner, name)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> Result<Response, LfsError> {
    let ctx = api::repo_ctx(&state, owner, name).await?;
    let limit = page_size(q.limit.map(Value::String).as_ref());
    let st = Arc::clone(&state);
    let (locks, next) = api::blocking(move || {
        st.lfs
            .locks
            .page(&ctx.identity.id, q.cursor.as_deref(), limit, |l| {
                q.path.as_ref().is_none_or(|p| *p == l.path)
                    && q.id.as_ref().is_none_or(|i| *i == l.id)
            })
    })
    .await?;
    let mut out = json!({ "locks": locks.iter().map(lock_json).collect::<Vec<_>>() });
    if let Some(next) = next {
        out["next_cursor"] = Value::String(next);
    }
    Ok(api::json_response(StatusCode::OK, &out))
}

#[derive(Deserialize)]
struct VerifyRequest {
    cursor: Option<String>,
    limit: Option<Value>,
}

/// `POST .../locks/verify`: the locks, split into the caller's and others'.
pub async fn verify(
    State(state): State<Shared>,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, LfsError> {
    let req: VerifyRequest = api::json_body(body, MAX_LOCK_BODY).await?;
    let ctx = api::repo_ctx(&state, owner, name).await?;
    let limit = page_size(req.limit.as_ref());
    let st = Arc::clone(&state);
    let (writer, locks, next) = api::blocking(move || {
        let writer = api::writer(&st, &headers, &ctx.identity)?;
        let (locks, next) =
            st.lfs
                .locks
                .page(&ctx.identity.id, req.cursor.as_deref(), limit, |_| true)?;
        Ok((writer, locks, next))
    })
    .await?;
    let (ours, theirs): (Vec<&Lock>, Vec<&Lock>) =
        locks.iter().partition(|l| l.owner == writer.name);
    let mut out = json!({
        "ours": ours.into_iter().map(lock_json).collect::<Vec<_>>(),
        "theirs": theirs.into_iter().map(lock_json).collect::<Vec<_>>(),
    });
    if let Some(next) = next {
        out["next_cursor"] = Value::String(next);
    }
    Ok(api::json_response(StatusCode::OK, &out))
}

#[derive(Deserialize)]
struct UnlockRequest {
    #[serde(default)]
    force: bool,
}

/// `POST .../locks/{id}/unlock`: release a lock; another's only with
/// `force`, by the operator or a delegate.
pub async fn unlock(
    State(state): State<Shared>,
    Path((owner, name, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, LfsError> {
    let req: UnlockRequest = api::json_body(body, MAX_LOCK_BODY).await?;
    let ctx = api::repo_ctx(&state, owner, name).await?;
    let st = Arc::clone(&state);
    let lock = api::blocking(move || {
        let writer = api::writer(&st, &headers, &ctx.identity)?;
        let lock = st
            .lfs
            .locks
            .by_id(&ctx.identity.id, &id)?
            .ok_or_else(|| NodeError::NotFound("no such lock".into()))?;
        if lock.owner != writer.name && !(req.force && writer.admin) {
            return Err(NodeError::Forbidden(format!(
                "{} holds this lock; only its holder, or the operator or a delegate with force, may release it",
                lock.owner
            )));
        }
        if !st.lfs.locks.remove(&ctx.identity.id, &lock)? {
            return Err(NodeError::NotFound("no such lock".into()));
        }
        tracing::info!(path = %lock.path, by = %writer.name, force = req.force, "LFS lock released");
        Ok(lock)
    })
    .await?;
    Ok(api::json_response(
        StatusCode::OK,
        &json!({ "lock": lock_json(&lock) }),
    ))
}

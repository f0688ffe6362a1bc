//! `POST /{owner}/{name}/info/lfs/objects/batch`: which objects to move and
//! where, with the basic transfer adapter.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::{self, RepoCtx};
use super::{LfsOid, LfsSize};
use crate::error::{LfsError, NodeError};
use crate::http::Shared;

/// Most objects in one batch request (git-lfs sends 100 at most).
pub const MAX_BATCH_OBJECTS: usize = 1000;
/// Largest batch request body: room for [`MAX_BATCH_OBJECTS`] objects.
pub const MAX_BATCH_BODY: usize = 256 * 1024;
/// How long the links of an answer are said to be valid, in seconds.
const LINK_LIFETIME_SECS: u64 = 3600;

#[derive(Deserialize)]
struct BatchRequest {
    operation: String,
    #[serde(default)]
    transfers: Vec<String>,
    objects: Vec<RequestObject>,
    hash_algo: Option<String>,
}

/// An object as the client names it; checked one by one, so that a bad
/// one gets its own error (422) and the others their answers.
#[derive(Deserialize)]
struct RequestObject {
    oid: String,
    size: Value,
}

enum Operation {
    Download,
    Upload(u64),
}

/// The batch API.
pub async fn batch(
    State(state): State<Shared>,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, LfsError> {
    let req: BatchRequest = api::json_body(body, MAX_BATCH_BODY).await?;
    if req.objects.len() > MAX_BATCH_OBJECTS {
        return Err(NodeError::Git(guts_git::Error::TooLarge(format!(
            "{} objects in one batch, over this node's {MAX_BATCH_OBJECTS}",
            req.objects.len()
        )))
        .into());
    }
    if req.hash_algo.as_deref().is_some_and(|h| h != "sha256") {
        return Err(NodeError::Conflict(
            "this node supports the sha256 hash algorithm only".into(),
        )
        .into());
    }
    if !req.transfers.is_empty() && !req.transfers.iter().any(|t| t == "basic") {
        return Err(NodeError::Invalid(
            "this node supports the basic transfer adapter only".into(),
        )
        .into());
    }
    let ctx = api::repo_ctx(&state, owner, name).await?;
    let base = format!(
        "{}/{}.git/info/lfs",
        api::base_url(&state, &headers)?,
        ctx.name
    );
    let (ctx, op) = match req.operation.as_str() {
        "download" => (ctx, Operation::Download),
        "upload" => {
            let (st, h) = (Arc::clone(&state), headers.clone());
            api::blocking(move || {
                let writer = api::writer(&st, &h, &ctx.identity)?;
                tracing::debug!(repo = %ctx.name, writer = %writer.name, "LFS upload batch");
                let room = upload_room(&st, &ctx)?;
                Ok((ctx, Operation::Upload(room)))
            })
            .await?
        }
        other => {
            return Err(NodeError::Invalid(format!(
                "unknown LFS operation {:?}: download or upload",
                other.chars().take(40).collect::<String>()
            ))
            .into())
        }
    };
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    tracing::debug!(repo = %ctx.name, operation = %req.operation, objects = req.objects.len(), "LFS batch");
    // One `stat` per object: on a blocking thread.
    let st = Arc::clone(&state);
    let objects = api::blocking(move || {
        Ok(answer_objects(
            &st,
            &ctx,
            &op,
            &base,
            auth.as_deref(),
            &req.objects,
        ))
    })
    .await?;
    Ok(api::json_response(
        StatusCode::OK,
        &json!({ "transfer": "basic", "objects": objects, "hash_algo": "sha256" }),
    ))
}

/// Bytes an upload to `ctx` may add: what the repository may still store
/// (quota, free disk; its packs and LFS objects count), at most the node's
/// largest object. Blocking.
pub fn upload_room(state: &Shared, ctx: &RepoCtx) -> Result<u64, NodeError> {
    let room = state.repos.push_room(&ctx.name)?;
    let used = state.lfs.store.repo_bytes(&ctx.identity.id)?;
    let left = room.saturating_sub(used);
    if left == 0 {
        return Err(NodeError::Quota(format!(
            "{} is over its storage quota on this node ({used} bytes of LFS objects)",
            ctx.name
        )));
    }
    Ok(left.min(state.lfs.max_object_bytes))
}

fn answer_objects(
    state: &Shared,
    ctx: &RepoCtx,
    op: &Operation,
    base: &str,
    auth: Option<&str>,
    objects: &[RequestObject],
) -> Vec<Value> {
    let mut budget = match op {
        Operation::Upload(room) => *room,
        Operation::Download => 0,
    };
    let mut out = Vec::with_capacity(objects.len());
    for obj in objects {
        let parsed = LfsOid::from_hex(obj.oid.as_bytes())
            .zip(obj.size.as_i64().and_then(LfsSize::from_json));
        let Some((oid, size)) = parsed else {
            out.push(object_error(
                &obj.oid,
                &obj.size,
                422,
                "invalid object id or size",
            ));
            continue;
        };
        let have = state.lfs.store.size(&ctx.identity.id, &oid);
        let href = format!("{base}/objects/{oid}");
        let entry = match (op, have) {
            (Operation::Download, Some(n)) => json!({
                "oid": oid.to_string(), "size": n, "authenticated": true,
                "actions": { "download": { "href": href, "expires_in": LINK_LIFETIME_SECS } },
            }),
            (Operation::Download, None) => {
                object_error(&obj.oid, &obj.size, 404, "object does not exist on this node")
            }
            (Operation::Upload(..), Some(n)) if n == size.get() => {
                json!({ "oid": oid.to_string(), "size": n })
            }
            (Operation::Upload(..), _) if size.get() > budget => object_error(
                &obj.oid,
                &obj.size,
                413,
                &format!("object of {size} bytes is over the {budget} bytes this repository may still store"),
            ),
            (Operation::Upload(..), _) => {
                budget -= size.get();
                let header = match auth {
                    Some(a) => json!({ "Authorization": a }),
                    None => json!({}),
                };
                json!({
                    "oid": oid.to_string(), "size": size.get(), "authenticated": true,
                    "actions": {
                        "upload": { "href": href, "header": header, "expires_in": LINK_LIFETIME_SECS },
                        "verify": { "href": format!("{base}/verify"), "header": header, "expires_in": LINK_LIFETIME_SECS },
                    },
                })
            }
        };
        out.push(entry);
    }
    out
}

fn object_error(oid: &str, size: &Value, code: u16, message: &str) -> Value {
    let oid: String = oid.chars().take(80).collect();
    let size = if size.is_number() {
        size.clone()
    } else {
        Value::Null
    };
    json!({ "oid": oid, "size": size, "error": { "code": code, "message": message } })
}

//! The basic transfer adapter: `PUT` and `GET` of one object, streamed
//! (never a whole object in memory), and the `verify` action.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::api;
use super::store::parse_oid;
use super::{ImportOutcome, LfsSize};
use crate::body::{blocking_reader, response_channel};
use crate::error::{LfsError, NodeError};
use crate::http::{start_body, Shared};
use crate::limits::Work;

/// Largest `verify` request body.
const MAX_VERIFY_BODY: usize = 4 * 1024;

/// `GET .../objects/{oid}`: the object, from `Range: bytes=N-` if asked.
pub async fn download(
    State(state): State<Shared>,
    Path((owner, name, oid)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, LfsError> {
    let oid = parse_oid(&oid)?;
    let ctx = api::repo_ctx(&state, owner, name).await?;
    let st = Arc::clone(&state);
    let id = ctx.identity.id;
    let (mut file, len) = api::blocking(move || {
        let file = st
            .lfs
            .store
            .open_read(&id, &oid)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => {
                    NodeError::NotFound(format!("LFS object {oid} does not exist on this node"))
                }
                _ => NodeError::Io(e),
            })?;
        let len = file.metadata()?.len();
        Ok((file, len))
    })
    .await?;
    let start = range_start(&headers, len)?;
    if let Some(s) = start {
        file.seek(SeekFrom::Start(s))?;
    }
    let from = start.unwrap_or(0);
    let (writer, body) = response_channel(&state.transfer);
    let metrics = Arc::clone(&state.metrics);
    tokio::task::spawn_blocking(move || {
        let mut writer = crate::metrics::git::Counted::new(writer);
        let result = io::copy(&mut file, &mut writer).and_then(|_| io::Write::flush(&mut writer));
        metrics.lfs.downloaded(writer.bytes);
        if let Err(e) = result {
            tracing::debug!(%oid, error = %e, "LFS download ended early");
        }
    });
    let mut resp = ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len - from));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if start.is_some() {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) =
            HeaderValue::from_str(&format!("bytes {from}-{}/{len}", len.saturating_sub(1)))
        {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(resp)
}

/// The start of a `Range: bytes=N-` request (what git-lfs sends to resume
/// a download); any other range, or a range of an empty object, is
/// ignored (the whole object is sent, as HTTP allows).
fn range_start(headers: &HeaderMap, len: u64) -> Result<Option<u64>, NodeError> {
    let Some(first) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return Ok(None);
    };
    if len == 0 {
        return Ok(None);
    }
    if first >= len {
        return Err(NodeError::Invalid(format!(
            "range starts at {first}, past the object's {len} bytes"
        )));
    }
    Ok(Some(first))
}

/// `PUT .../objects/{oid}`: store the body as the object, verified.
pub async fn upload(
    State(state): State<Shared>,
    Path((owner, name, oid)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, LfsError> {
    let oid = parse_oid(&oid)?;
    let size = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(LfsSize)
        .ok_or_else(|| NodeError::Invalid("an LFS upload needs its Content-Length".into()))?;
    let ctx = api::repo_ctx(&state, owner, name).await?;
    let (st, h) = (Arc::clone(&state), headers.clone());
    let (ctx, room) = api::blocking(move || {
        let writer = api::writer(&st, &h, &ctx.identity)?;
        tracing::debug!(repo = %ctx.name, writer = %writer.name, %oid, "LFS upload");
        if st.lfs.store.size(&ctx.identity.id, &oid) == Some(size.get()) {
            return Ok((ctx, None));
        }
        let room = super::batch::upload_room(&st, &ctx)?;
        Ok((ctx, Some(room)))
    })
    .await?;
    let Some(room) = room else {
        return Ok(StatusCode::OK.into_response());
    };
    if size.get() > room {
        // Refused before a byte of the body is read.
        return Err(super::store::too_large(&oid, size.get(), room).into());
    }
    let permit = state.slots.acquire(Work::Push).await?;
    let (pre, body) = start_body(body).await?;
    let st = Arc::clone(&state);
    let outcome = api::blocking(move || {
        let _permit = permit;
        let mut reader = Watched::new(blocking_reader(pre, body, false));
        let result = st
            .lfs
            .store
            .import(&ctx.identity.id, &oid, size, room, &mut reader);
        st.metrics.lfs.uploaded(reader.bytes);
        match (result, reader.failed) {
            (Ok(o), _) => Ok(o),
            (Err(NodeError::Io(_)), Some(e)) if e.kind() == io::ErrorKind::TimedOut => {
                Err(NodeError::TooSlow(e.to_string()))
            }
            (Err(NodeError::Io(_)), Some(e)) => Err(NodeError::Invalid(format!(
                "reading the upload failed: {e}"
            ))),
            (Err(e), _) => Err(e),
        }
    })
    .await?;
    if outcome == ImportOutcome::Stored {
        tracing::info!(%oid, size = size.get(), "LFS object uploaded");
    }
    Ok(StatusCode::OK.into_response())
}

/// A reader that counts its bytes and keeps its error (the client's).
struct Watched<R> {
    inner: R,
    bytes: u64,
    failed: Option<io::Error>,
}

impl<R> Watched<R> {
    fn new(inner: R) -> Self {
        Watched {
            inner,
            bytes: 0,
            failed: None,
        }
    }
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.bytes += n as u64;
                Ok(n)
            }
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.failed = Some(e);
                Err(copy)
            }
        }
    }
}

#[derive(Deserialize)]
struct VerifyRequest {
    oid: String,
    size: i64,
}

/// `POST .../verify`: whether the object arrived whole.
pub async fn verify(
    State(state): State<Shared>,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, LfsError> {
    let req: VerifyRequest = api::json_body(body, MAX_VERIFY_BODY).await?;
    let oid = parse_oid(&req.oid)?;
    let size = LfsSize::from_json(req.size)
        .ok_or_else(|| NodeError::Invalid("the size is negative".into()))?;
    let ctx = api::repo_ctx(&state, owner, name).await?;
    let st = Arc::clone(&state);
    api::blocking(move || {
        api::writer(&st, &headers, &ctx.identity)?;
        match st.lfs.store.size(&ctx.identity.id, &oid) {
            Some(n) if n == size.get() => Ok(()),
            Some(n) => Err(NodeError::Invalid(format!(
                "LFS object {oid} has {n} bytes, not {size}"
            ))),
            None => Err(NodeError::NotFound(format!(
                "LFS object {oid} does not exist on this node"
            ))),
        }
    })
    .await?;
    Ok(api::json_response(StatusCode::OK, &json!({})))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn range(value: &str, len: u64) -> Result<Option<u64>, NodeError> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(value).unwrap());
        range_start(&h, len)
    }

    #[test]
    fn only_open_ended_byte_ranges_resume() {
        assert_eq!(range("bytes=5-", 10).unwrap(), Some(5));
        assert_eq!(range("bytes=0-", 10).unwrap(), Some(0));
        assert_eq!(range("bytes=5-7", 10).unwrap(), None);
        assert_eq!(range("bytes=-5", 10).unwrap(), None);
        assert_eq!(range("items=5-", 10).unwrap(), None);
        assert_eq!(range("bytes=0-", 0).unwrap(), None);
        assert!(range("bytes=10-", 10).is_err());
        assert_eq!(range_start(&HeaderMap::new(), 10).unwrap(), None);
    }
}

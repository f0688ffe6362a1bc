//! `git archive --remote=URL` over smart HTTP: `POST
//! /{owner}/{name}/git-upload-archive` (git ≥ 2.44 finds the protocol
//! version on `info/refs?service=git-upload-pack` first). Served like a
//! fetch: the repository's read rules, a fetch slot, the transfer limits on
//! the streamed response; the archive itself is made in `guts_git::archive`
//! under a pack generation slot.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

use crate::body::{blocking_reader, response_channel};
use crate::error::GitHttpError;
use crate::http::{no_cache, open, start_body, Shared};
use crate::limits::Work;

/// The request's media type.
const REQUEST_TYPE: &str = "application/x-git-upload-archive-request";
/// The response's media type.
const RESULT_TYPE: &str = "application/x-git-upload-archive-result";

/// `POST /{owner}/{name}/git-upload-archive`.
pub(crate) async fn upload_archive(
    State(state): State<Shared>,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, GitHttpError> {
    let gzip = crate::http::check_body_type(&headers, REQUEST_TYPE)?;
    let (name, repo) = open(&state, owner, name).await?;
    let (pre, body) = start_body(body).await?;
    let permit = state.slots.acquire(Work::Fetch).await?;
    let (mut writer, out) = response_channel(&state.transfer);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let input = blocking_reader(pre, body, gzip);
        let started = std::time::Instant::now();
        match guts_git::archive::upload_archive(&repo, input, &mut writer) {
            Ok(()) => {
                tracing::debug!(repo = %name, elapsed_ms = started.elapsed().as_millis() as u64, "upload-archive done")
            }
            Err(e) => tracing::info!(repo = %name, error = %e, "upload-archive refused or failed"),
        }
    });
    let mut resp = ([(header::CONTENT_TYPE, RESULT_TYPE)], out).into_response();
    no_cache(resp.headers_mut());
    Ok(resp)
}

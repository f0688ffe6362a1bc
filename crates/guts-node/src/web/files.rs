//! Directories (`/tree/REF/PATH`), files (`/blob/REF/PATH`) and raw files
//! (`/raw/REF/PATH`) at any branch, tag or commit.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use guts_git::browse::log::Commit;
use guts_git::browse::tree::{self, Entry, EntryKind, Listing};
use guts_git::browse::Resolved;
use maud::{html, Markup};

use super::layout::{breadcrumbs, date, encode_path, page, repo_header, short_id, size, Tab};
use super::limits::{
    reserve_blob, MAX_BLOB_DISPLAY, MAX_BLOB_READ, MAX_RAW_BYTES, MAX_TREE_ENTRIES,
};
use super::{blocking, dot_git_redirect, respond, security_headers, Nonce, RepoCtx, WebError};
use crate::error::NodeError;
use crate::http::Shared;

/// What `REF/PATH` names: its commit and its tree entry.
fn locate(ctx: &RepoCtx, rest: &str) -> Result<(Resolved, Commit, Entry), NodeError> {
    let resolved = ctx.resolve(rest)?;
    let store = &ctx.store;
    let commit = match guts_git::browse::log::read_commit(store, &resolved.id) {
        Ok(c) => c,
        Err(guts_git::Error::MissingObject(_)) | Err(guts_git::Error::CorruptObject { .. }) => {
            return Err(NodeError::NotFound(format!(
                "{} does not name a commit of this repository",
                resolved.name
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let entry = tree::lookup(store, &commit.tree, &resolved.path)?.ok_or_else(|| {
        NodeError::NotFound(format!(
            "no file or directory {:?} at {}",
            resolved.path, resolved.name
        ))
    })?;
    Ok((resolved, commit, entry))
}

/// A directory at a ref.
pub(crate) async fn tree_page(
    State(state): State<Shared>,
    Path((owner, name, rest)): Path<(String, String, String)>,
) -> Result<Response, WebError> {
    if let Some(r) = dot_git_redirect(&owner, &name, &format!("/tree/{}", encode_path(&rest))) {
        return Ok(r);
    }
    let nonce = Nonce::new();
    let n = nonce.clone();
    let markup = blocking(move || {
        let ctx = RepoCtx::open(&state, &owner, &name)?;
        let (resolved, commit, entry) = locate(&ctx, &rest)?;
        if entry.kind != EntryKind::Tree {
            return Err(NodeError::NotFound(format!(
                "{:?} is not a directory",
                resolved.path
            )));
        }
        let listing = tree::list(&ctx.store, &entry.id, MAX_TREE_ENTRIES)?;
        let body = html! {
            (repo_header(&ctx, Tab::Code))
            (breadcrumbs(&ctx, &resolved.name, &resolved.path))
            (tree_table(&ctx, &resolved.name, &resolved.path, &listing, Some(&commit)))
        };
        Ok(page(
            &format!("{} at {}", ctx.name, resolved.name),
            &n,
            body,
        ))
    })
    .await?;
    Ok(respond(StatusCode::OK, &nonce, markup))
}

/// A directory's entries as a list, under the commit it is shown at.
pub(crate) fn tree_table(
    ctx: &RepoCtx,
    rev: &str,
    dir: &str,
    listing: &Listing,
    commit: Option<&Commit>,
) -> Markup {
    let base = ctx.base();
    let rev_url = encode_path(rev);
    let prefix = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    html! {
        div.box {
            div.head {
                span.tag { (rev) }
                @if let Some(c) = commit {
                    span.grow {
                        a.mono href=(format!("{base}/commit/{}", c.id)) { (short_id(&c.id)) }
                        " " (c.summary())
                    }
                    span.muted { (date(c.committer.time)) }
                }
            }
            ul.list.files {
                @if !dir.is_empty() {
                    @let parent = dir.rsplit_once('/').map_or("", |(p, _)| p);
                    li { a href=(format!("{base}/tree/{rev_url}/{}", encode_path(parent))) { ".." } }
                }
                @for e in &listing.entries {
                    @let name = String::from_utf8_lossy(&e.name).into_owned();
                    @let path = encode_path(&format!("{prefix}{name}"));
                    li {
                        span.muted { (icon(e.kind)) }
                        @match e.kind {
                            EntryKind::Tree => { a.grow href=(format!("{base}/tree/{rev_url}/{path}")) { (name) "/" } }
                            EntryKind::Submodule => { span.grow { (name) " @ " span.mono { (short_id(&e.id)) } } }
                            _ => { a.grow href=(format!("{base}/blob/{rev_url}/{path}")) { (name) } }
                        }
                    }
                }
            }
            @if listing.total > listing.entries.len() {
                div.body.muted { "Showing " (listing.entries.len()) " of " (listing.total) " entries." }
            }
        }
    }
}

fn icon(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Tree => "dir",
        EntryKind::Submodule => "sub",
        EntryKind::Link => "link",
        EntryKind::Executable => "exec",
        EntryKind::Blob => "file",
    }
}

/// A file at a ref: text with line numbers, or a link to the raw bytes.
pub(crate) async fn blob_page(
    State(state): State<Shared>,
    Path((owner, name, rest)): Path<(String, String, String)>,
) -> Result<Response, WebError> {
    if let Some(r) = dot_git_redirect(&owner, &name, &format!("/blob/{}", encode_path(&rest))) {
        return Ok(r);
    }
    let nonce = Nonce::new();
    let n = nonce.clone();
    let markup = blocking(move || {
        let ctx = RepoCtx::open(&state, &owner, &name)?;
        let (resolved, _commit, entry) = locate(&ctx, &rest)?;
        if !entry.kind.is_blob() {
            return Err(NodeError::NotFound(format!("{:?} is not a file", resolved.path)));
        }
        let stored = ctx.store.size(&entry.id).map_err(NodeError::from)?;
        let _memory = reserve_blob(if stored <= MAX_BLOB_READ { stored } else { 0 })?;
        let blob = tree::read_blob(&ctx.store, &entry.id, MAX_BLOB_DISPLAY, MAX_BLOB_READ)?;
        let raw = format!(
            "{}/raw/{}/{}",
            ctx.base(),
            encode_path(&resolved.name),
            encode_path(&resolved.path)
        );
        let body = html! {
            (repo_header(&ctx, Tab::Code))
            (breadcrumbs(&ctx, &resolved.name, &resolved.path))
            div.box {
                div.head {
                    span.tag { (resolved.name) }
                    span.grow.muted { (size(blob.size)) @if entry.kind == EntryKind::Link { " · symbolic link" } }
                    a href=(raw) { "Raw" }
                }
                (blob_body(&blob, &raw))
            }
        };
        Ok(page(&format!("{} at {}", resolved.path, resolved.name), &n, body))
    })
    .await?;
    Ok(respond(StatusCode::OK, &nonce, markup))
}

fn blob_body(blob: &tree::Blob, raw: &str) -> Markup {
    if blob.data.is_empty() && blob.size > 0 {
        return html! { div.body { "This file is too large to show (" (size(blob.size)) "). " a href=(raw) { "Download it" } "." } };
    }
    if guts_git::browse::is_binary(&blob.data) {
        return html! { div.body { "Binary file (" (size(blob.size)) "). " a href=(raw) { "Download it" } "." } };
    }
    let text = String::from_utf8_lossy(&blob.data);
    html! {
        @if blob.truncated() {
            div.notice { "This file is cut after " (size(blob.data.len() as u64)) " of " (size(blob.size)) ". " a href=(raw) { "View the whole file" } "." }
        }
        div.scroll {
            table.code {
                @for (i, line) in text.lines().enumerate() {
                    tr id=(format!("L{}", i + 1)) {
                        td.ln { a href=(format!("#L{}", i + 1)) { (i + 1) } }
                        td { (line) }
                    }
                }
            }
        }
    }
}

/// A file's bytes: `text/plain; charset=utf-8` if it looks like text, else
/// `application/octet-stream` as an attachment; never HTML, never sniffed.
pub(crate) async fn raw(
    State(state): State<Shared>,
    Path((owner, name, rest)): Path<(String, String, String)>,
) -> Result<Response, WebError> {
    if let Some(r) = dot_git_redirect(&owner, &name, &format!("/raw/{}", encode_path(&rest))) {
        return Ok(r);
    }
    let limits = state.transfer;
    let (data, file_name, memory) = blocking(move || {
        let ctx = RepoCtx::open(&state, &owner, &name)?;
        let (resolved, _commit, entry) = locate(&ctx, &rest)?;
        if !entry.kind.is_blob() {
            return Err(NodeError::NotFound(format!(
                "{:?} is not a file",
                resolved.path
            )));
        }
        let store = &ctx.store;
        let size = store.size(&entry.id).map_err(NodeError::from)?;
        if size > MAX_RAW_BYTES {
            return Err(NodeError::Forbidden(format!(
                "this file is {}, over the {} this node serves raw; clone the repository to get it",
                super::layout::size(size),
                super::layout::size(MAX_RAW_BYTES)
            )));
        }
        let memory = reserve_blob(size)?;
        let blob = tree::read_blob(store, &entry.id, MAX_RAW_BYTES as usize, MAX_RAW_BYTES)?;
        let name = String::from_utf8_lossy(&entry.name).into_owned();
        Ok((blob.data, name, memory))
    })
    .await?;
    let binary = guts_git::browse::is_binary(&data) || std::str::from_utf8(&data).is_err();
    let length = HeaderValue::from(data.len());
    let mut resp = held_body(data, memory, &limits).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_LENGTH, length);
    if binary {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        // Only safe characters in the file name; the rest become `_`.
        let safe: String = file_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
            headers.insert(header::CONTENT_DISPOSITION, v);
        }
    } else {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    security_headers(headers, None);
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    Ok(resp)
}

/// A response body of `data` written at the client's pace under the
/// transfer limits of git responses (a client that reads too slowly is
/// dropped), keeping its memory reservation until it is all handed over.
fn held_body(
    data: Vec<u8>,
    memory: tokio::sync::SemaphorePermit<'static>,
    limits: &crate::body::TransferLimits,
) -> axum::body::Body {
    use std::io::Write;
    let (mut writer, body) = crate::body::response_channel(limits);
    tokio::task::spawn_blocking(move || {
        let _memory = memory;
        if let Err(e) = writer.write_all(&data).and_then(|()| writer.flush()) {
            tracing::debug!(error = %e, "raw file download ended early");
        }
    });
    body
}

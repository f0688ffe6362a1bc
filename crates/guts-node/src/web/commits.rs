//! Commits: one commit with its diff (`/commit/ID`) and the paged log of a
//! ref (`/commits/REF?page=N`).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use guts_git::browse::diff::{self, Body, Diff, LineKind, Status};
use guts_git::browse::log::{self, Commit};
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{date, encode_path, page, repo_header, short_id, Tab};
use super::limits::{diff_limits, LOG_PAGE, MAX_LOG_PAGES};
use super::{blocking, dot_git_redirect, respond, Nonce, RepoCtx, WebError};
use crate::error::NodeError;
use crate::http::Shared;

/// Commits as a list: summary, author, date, short id.
pub(crate) fn commit_list(ctx: &RepoCtx, commits: &[Commit]) -> Markup {
    let base = ctx.base();
    html! {
        ul.list.commits {
            @for c in commits {
                li {
                    a.grow href=(format!("{base}/commit/{}", c.id)) { (c.summary()) }
                    span.muted { (c.author.name) " · " (date(c.committer.time)) }
                    a.mono href=(format!("{base}/commit/{}", c.id)) { (short_id(&c.id)) }
                }
            }
        }
    }
}

/// `?page=N`, from 1.
#[derive(Deserialize)]
pub(crate) struct LogQuery {
    page: Option<usize>,
}

/// The log of the default branch.
pub(crate) async fn log_default(
    State(state): State<Shared>,
    Path((owner, name)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
) -> Result<Response, WebError> {
    log_of(state, owner, name, None, q).await
}

/// The log of a ref.
pub(crate) async fn log_page(
    State(state): State<Shared>,
    Path((owner, name, rest)): Path<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Result<Response, WebError> {
    log_of(state, owner, name, Some(rest), q).await
}

async fn log_of(
    state: Shared,
    owner: String,
    name: String,
    rest: Option<String>,
    q: LogQuery,
) -> Result<Response, WebError> {
    let tail = format!(
        "/commits/{}",
        rest.as_deref().map(encode_path).unwrap_or_default()
    );
    if let Some(r) = dot_git_redirect(&owner, &name, tail.trim_end_matches('/')) {
        return Ok(r);
    }
    let page_no = q.page.unwrap_or(1);
    if page_no == 0 || page_no > MAX_LOG_PAGES {
        return Err(NodeError::Invalid(format!(
            "page must be between 1 and {MAX_LOG_PAGES}; clone the repository for older history"
        ))
        .into());
    }
    let nonce = Nonce::new();
    let n = nonce.clone();
    let markup = blocking(move || {
        let ctx = RepoCtx::open(&state, &owner, &name)?;
        let resolved = match &rest {
            Some(rest) => ctx.resolve(rest)?,
            None => ctx
                .head()?
                .ok_or_else(|| NodeError::NotFound("this repository has no commits".into()))?,
        };
        if !resolved.path.is_empty() {
            return Err(NodeError::NotFound(format!(
                "no branch, tag or commit named {:?}",
                rest.unwrap_or_default()
            )));
        }
        let store = &ctx.store;
        // One more than a page: whether there is a next one.
        let mut commits = log::walk(store, &resolved.id, (page_no - 1) * LOG_PAGE, LOG_PAGE + 1)?;
        let more = commits.len() > LOG_PAGE && page_no < MAX_LOG_PAGES;
        commits.truncate(LOG_PAGE);
        let here = format!("{}/commits/{}", ctx.base(), encode_path(&resolved.name));
        let body = html! {
            (repo_header(&ctx, Tab::Commits))
            div.box {
                div.head { strong { "Commits" } span.tag { (resolved.name) } span.muted { "page " (page_no) } }
                (commit_list(&ctx, &commits))
            }
            div.pager {
                @if page_no > 1 { a href=(format!("{here}?page={}", page_no - 1)) { "← Newer" } }
                @if more { a href=(format!("{here}?page={}", page_no + 1)) { "Older →" } }
            }
        };
        Ok(page(&format!("Commits of {}", ctx.name), &n, body))
    })
    .await?;
    Ok(respond(StatusCode::OK, &nonce, markup))
}

/// One commit and its diff against its first parent.
pub(crate) async fn commit_page(
    State(state): State<Shared>,
    Path((owner, name, id)): Path<(String, String, String)>,
) -> Result<Response, WebError> {
    if let Some(r) = dot_git_redirect(&owner, &name, &format!("/commit/{}", encode_path(&id))) {
        return Ok(r);
    }
    let oid = guts_git::browse::parse_id(&id)
        .ok_or_else(|| NodeError::Invalid(format!("{id:?} is not a full hex commit id")))?;
    let nonce = Nonce::new();
    let n = nonce.clone();
    let markup = blocking(move || {
        let ctx = RepoCtx::open(&state, &owner, &name)?;
        let store = &ctx.store;
        let commit = match log::read_commit(store, &oid) {
            Ok(c) => c,
            Err(guts_git::Error::MissingObject(_)) | Err(guts_git::Error::CorruptObject { .. }) => {
                return Err(NodeError::NotFound(format!(
                    "no commit {oid} in this repository"
                )))
            }
            Err(e) => return Err(e.into()),
        };
        let parent_tree = match commit.parents.first() {
            Some(p) => Some(store.commit(p, &mut Vec::new())?.tree),
            None => None,
        };
        let diff = diff::diff_trees(store, parent_tree.as_deref(), &commit.tree, &diff_limits())?;
        let body = html! {
            (repo_header(&ctx, Tab::Commits))
            (commit_header(&ctx, &commit))
            (diff_view(&diff))
        };
        Ok(page(
            &format!("{} · {}", commit.summary(), ctx.name),
            &n,
            body,
        ))
    })
    .await?;
    Ok(respond(StatusCode::OK, &nonce, markup))
}

fn commit_header(ctx: &RepoCtx, c: &Commit) -> Markup {
    let base = ctx.base();
    html! {
        div.box {
            div.head { strong.grow { (c.summary()) } a href=(format!("{base}/tree/{}", c.id)) { "Browse files" } }
            div.body {
                @let rest = c.message.split_once('\n').map_or("", |(_, r)| r).trim();
                @if !rest.is_empty() { pre.message { (rest) } br; }
                dl.meta {
                    dt { "Commit" } dd.mono { (c.id) }
                    dt { "Author" } dd { (c.author.name) " <" (c.author.email) "> · " (date(c.author.time)) }
                    dt { "Committer" } dd { (c.committer.name) " <" (c.committer.email) "> · " (date(c.committer.time)) }
                    dt { "Parents" }
                    dd.mono {
                        @if c.parents.is_empty() { span.muted { "none (root commit)" } }
                        @for p in &c.parents { a href=(format!("{base}/commit/{p}")) { (short_id(p)) } " " }
                    }
                }
            }
        }
    }
}

fn diff_view(d: &Diff) -> Markup {
    html! {
        p {
            (d.files.len()) " changed files, "
            span.ok { "+" (d.added) } " " span.bad { "−" (d.removed) }
            @if d.truncated { " · " strong.bad { "diff truncated" } " (a limit of this node was reached)" }
        }
        @for f in &d.files {
            div.box.diff-file {
                div.head.mono {
                    span.tag { (match f.status { Status::Added => "added", Status::Deleted => "deleted", Status::Modified => "modified" }) }
                    strong { (f.path) }
                }
                @match &f.body {
                    Body::Text(hunks) => {
                        @if hunks.is_empty() { div.body.muted { "No content change (mode only, or empty file)." } }
                        div.scroll {
                            table.diff {
                                @for h in hunks {
                                    tr.hunk { td colspan="3" { (h.header) } }
                                    @for l in &h.lines {
                                        @let (class, sign) = match l.kind { LineKind::Added => ("add", "+"), LineKind::Removed => ("del", "-"), LineKind::Context => ("ctx", " ") };
                                        tr class=(class) {
                                            td.ln { (l.old.map(|n| n.to_string()).unwrap_or_default()) }
                                            td.ln { (l.new.map(|n| n.to_string()).unwrap_or_default()) }
                                            td { (sign) (l.text) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    Body::Binary => { div.body.muted { "Binary file changed." } }
                    Body::TooLarge => { div.body.muted { "File too large to diff." } }
                    Body::Submodule => { div.body.muted { "Submodule commit changed." } }
                    Body::Skipped => { div.body.muted { "Not shown: diff truncated." } }
                }
            }
        }
    }
}

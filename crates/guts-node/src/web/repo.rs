//! The repository page (`GET /OWNER/NAME`): clone URL, files, README,
//! branches and tags, recent commits.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use guts_git::browse::tree::{self, Entry, EntryKind};
use guts_git::browse::Resolved;
use guts_git::odb::ObjectStore;
use maud::{html, Markup, PreEscaped};

use super::commits::commit_list;
use super::files::tree_table;
use super::layout::{encode_path, page, repo_header, Tab};
use super::limits::{MAX_README_BYTES, MAX_REFS_SHOWN, MAX_TREE_ENTRIES, RECENT_COMMITS};
use super::markdown::{self, Bases};
use super::{blocking, clone_base, dot_git_redirect, respond, Nonce, RepoCtx, WebError};
use crate::error::NodeError;
use crate::http::Shared;

/// README file names, in order of preference (compared case-insensitively).
const README_NAMES: &[&str] = &[
    "readme.md",
    "readme.markdown",
    "readme",
    "readme.txt",
    "readme.rst",
];

/// The repository page.
pub(crate) async fn repo_page(
    State(state): State<Shared>,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    if let Some(redirect) = dot_git_redirect(&owner, &name, "") {
        return Ok(redirect);
    }
    let clone = clone_base(&state, &headers);
    let nonce = Nonce::new();
    let n = nonce.clone();
    let markup = blocking(move || {
        let ctx = RepoCtx::open(&state, &owner, &name)?;
        let clone_url = format!("{clone}/{}.git", ctx.name);
        let body = match ctx.head()? {
            Some(head) => full_page(&ctx, &head, &clone_url)?,
            None => empty_page(&ctx, &clone_url),
        };
        Ok(page(&ctx.name.to_string(), &n, body))
    })
    .await?;
    Ok(respond(StatusCode::OK, &nonce, markup))
}

fn clone_box(url: &str) -> Markup {
    html! {
        div.clone {
            input id="clone-url" type="text" readonly value=(url) aria-label="Clone URL";
            button type="button" data-copy="clone-url" { "Copy" }
        }
    }
}

fn empty_page(ctx: &RepoCtx, clone_url: &str) -> Markup {
    html! {
        (repo_header(ctx, Tab::Code))
        (clone_box(clone_url))
        div.box {
            div.body {
                p { "This repository is empty. Push to it:" }
                pre { "git remote add origin " (clone_url) "\ngit push -u origin main" }
            }
        }
    }
}

fn full_page(ctx: &RepoCtx, head: &Resolved, clone_url: &str) -> Result<Markup, NodeError> {
    let store = &ctx.store;
    let commits = guts_git::browse::log::walk(store, &head.id, 0, RECENT_COMMITS)?;
    let root = commits.first().map(|c| c.tree);
    let (listing, readme) = match root {
        Some(root) => {
            let listing = tree::list(store, &root, MAX_TREE_ENTRIES)?;
            let readme = readme(ctx, store, &head.name, &listing.entries)?;
            (Some(listing), readme)
        }
        None => (None, None),
    };
    let base = ctx.base();
    Ok(html! {
        (repo_header(ctx, Tab::Code))
        div.layout {
            div {
                (clone_box(clone_url))
                @if let Some(listing) = &listing {
                    (tree_table(ctx, &head.name, "", listing, commits.first()))
                }
                @if let Some(readme) = readme { (readme) }
                div.box {
                    div.head {
                        strong { "Recent commits" }
                        span.muted { "on " (head.name) }
                        a href=(format!("{base}/commits/{}", encode_path(&head.name))) { "All commits" }
                    }
                    (commit_list(ctx, &commits))
                }
            }
            aside { (refs_box(ctx)) }
        }
    })
}

/// The README of the root tree, rendered (Markdown) or as text.
fn readme(
    ctx: &RepoCtx,
    store: &ObjectStore,
    rev: &str,
    entries: &[Entry],
) -> Result<Option<Markup>, NodeError> {
    let Some(entry) = README_NAMES.iter().find_map(|want| {
        entries.iter().find(|e| {
            e.kind.is_blob()
                && e.kind != EntryKind::Link
                && e.name.eq_ignore_ascii_case(want.as_bytes())
        })
    }) else {
        return Ok(None);
    };
    let blob = tree::read_blob(
        store,
        &entry.id,
        MAX_README_BYTES,
        super::limits::MAX_BLOB_READ,
    )?;
    let name = String::from_utf8_lossy(&entry.name).into_owned();
    let text = String::from_utf8_lossy(&blob.data);
    let base = ctx.base();
    let rev_url = encode_path(rev);
    let is_markdown = name.to_ascii_lowercase().ends_with(".md")
        || name.to_ascii_lowercase().ends_with(".markdown");
    let content = if is_markdown {
        let bases = Bases {
            links: format!("{base}/blob/{rev_url}/"),
            images: format!("{base}/raw/{rev_url}/"),
        };
        html! { div.markdown { (PreEscaped(markdown::render(&text, &bases))) } }
    } else {
        html! { pre.message { (text) } }
    };
    Ok(Some(html! {
        div.box id="readme" {
            div.head {
                a href=(format!("{base}/blob/{rev_url}/{}", encode_path(&name))) { strong { (name) } }
                @if blob.truncated() { span.muted { "(cut at " (super::layout::size(MAX_README_BYTES as u64)) ")" } }
            }
            div.body { (content) }
        }
    }))
}

/// A sort key comparing runs of digits as numbers.
fn version_key(name: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits > 0 {
            out.push((rest[..digits].parse().unwrap_or(u64::MAX), String::new()));
            rest = &rest[digits..];
        } else {
            let text = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            out.push((0, rest[..text].to_owned()));
            rest = &rest[text..];
        }
    }
    out
}

/// Branches and tags, at most [`MAX_REFS_SHOWN`] of each.
fn refs_box(ctx: &RepoCtx) -> Markup {
    let base = ctx.base();
    // Newest-looking first: descending in version order (`v1.10` > `v1.9`).
    let of = |prefix: &str| -> (Vec<String>, usize) {
        let mut all: Vec<String> = ctx
            .refs
            .iter()
            .filter_map(|r| r.name.strip_prefix(prefix).map(str::to_owned))
            .collect();
        all.sort_by_key(|name| std::cmp::Reverse(version_key(name)));
        let total = all.len();
        (all.into_iter().take(MAX_REFS_SHOWN).collect(), total)
    };
    let (branches, nb) = of("refs/heads/");
    let (tags, nt) = of("refs/tags/");
    html! {
        div.box {
            div.head { strong { "Branches" } span.muted { (nb) } }
            ul.list {
                @for b in &branches {
                    li { a.grow href=(format!("{base}/tree/{}", encode_path(b))) { (b) } }
                }
            }
            @if nb > branches.len() { div.body.muted { "and " (nb - branches.len()) " more" } }
        }
        div.box {
            div.head { strong { "Tags" } span.muted { (nt) } }
            ul.list {
                @for t in &tags {
                    li { a.grow href=(format!("{base}/tree/{}", encode_path(t))) { (t) } }
                }
            }
            @if nt > tags.len() { div.body.muted { "and " (nt - tags.len()) " more" } }
        }
    }
}

//! The node page (`GET /`): repositories, peers, version.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};

use super::layout::{date, page, short_owner};
use super::limits::{MAX_PEERS_SHOWN, MAX_REPOS_SHOWN};
use super::{blocking, respond, Nonce, WebError};
use crate::error::NodeError;
use crate::http::Shared;

/// One repository as the node page lists it.
struct RepoRow {
    path: String,
    owner: String,
    name: String,
    aliases: Vec<String>,
    default_branch: String,
    updated: Option<i64>,
    seeding: bool,
}

/// The node page.
pub(crate) async fn node_page(State(state): State<Shared>) -> Result<Response, WebError> {
    let peers = match &state.p2p {
        Some(p2p) => Some(
            p2p.net
                .status()
                .await
                .map(|s| {
                    (
                        s.peer_id.to_string(),
                        s.connected
                            .iter()
                            .map(|p| p.to_string())
                            .collect::<Vec<_>>(),
                    )
                })
                .map_err(|e| NodeError::Internal(e.to_string()))?,
        ),
        None => None,
    };
    let st = state.clone();
    let (rows, total) = blocking(move || repo_rows(&st)).await?;
    let nonce = Nonce::new();
    let body = html! {
        div.layout {
            div {
                div.box {
                    div.head { strong { "Repositories" } span.muted { (total) " on this node" } }
                    @if rows.is_empty() {
                        div.body.muted { "No repositories yet. Create one with " code { "guts-node repo create NAME" } "." }
                    }
                    ul.list {
                        @for r in &rows { (repo_row(r)) }
                    }
                    @if total > rows.len() {
                        div.body.muted { "Showing the first " (rows.len()) "; the REST API lists all: " code { "/api/v1/repos" } }
                    }
                }
            }
            aside { (peer_box(peers.as_ref())) }
        }
    };
    Ok(respond(
        StatusCode::OK,
        &nonce,
        page("Repositories", &nonce, body),
    ))
}

fn repo_row(r: &RepoRow) -> Markup {
    html! {
        li {
            span.grow {
                a href=(r.path) {
                    span.muted title=(r.owner) { (short_owner(&r.owner)) " / " }
                    strong { (r.name) }
                }
                @for a in &r.aliases { " " span.tag { "alias " (a) } }
                @if !r.seeding { " " span.tag { "not seeded" } }
            }
            span.muted {
                (r.default_branch)
                @if let Some(t) = r.updated { " · updated " (date(t)) } @else { " · empty" }
            }
        }
    }
}

fn peer_box(peers: Option<&(String, Vec<String>)>) -> Markup {
    html! {
        div.box {
            div.head { strong { "Peers" } }
            div.body {
                @match peers {
                    None => { p.muted { "Peer-to-peer replication is off on this node." } }
                    Some((id, connected)) => {
                        dl.meta { dt { "Peer id" } dd.mono { (id) } }
                        p { (connected.len()) " connected" }
                        ul {
                            @for p in connected.iter().take(MAX_PEERS_SHOWN) { li.mono { (p) } }
                        }
                        @if connected.len() > MAX_PEERS_SHOWN {
                            p.muted { "and " (connected.len() - MAX_PEERS_SHOWN) " more" }
                        }
                    }
                }
                p.muted { "Guts node " (env!("CARGO_PKG_VERSION")) }
            }
        }
    }
}

/// The first [`MAX_REPOS_SHOWN`] repositories and how many there are.
fn repo_rows(state: &Shared) -> Result<(Vec<RepoRow>, usize), NodeError> {
    let names = state.repos.storage().list()?;
    let total = names.len();
    let mut rows = Vec::new();
    for name in names.into_iter().take(MAX_REPOS_SHOWN) {
        let identity = state.repos.identities().current(&name)?;
        let repo = state.repos.open_repo(&name)?;
        let head = repo.head()?;
        let updated = match head.id {
            Some(id) => {
                let store = repo.objects()?;
                let mut buf = Vec::new();
                store
                    .peel(&id, &mut buf)
                    .and_then(|(id, _)| store.commit(&id, &mut buf))
                    .map(|c| c.time)
                    .ok()
            }
            None => None,
        };
        rows.push(RepoRow {
            path: format!("/{name}"),
            owner: name.owner().to_owned(),
            name: name.name().to_owned(),
            aliases: identity
                .map(|i| i.doc.body().aliases.clone())
                .unwrap_or_default(),
            default_branch: head
                .target
                .strip_prefix("refs/heads/")
                .unwrap_or(&head.target)
                .to_owned(),
            updated,
            seeding: state.repos.is_seeding(&name),
        });
    }
    Ok((rows, total))
}

//! The signed-update log (`/OWNER/NAME/updates`): every accepted push with
//! its signer, ref moves, grant, refused and superseded refs, each
//! re-verified here the way peers verify it (`SignedRefUpdate::verify`
//! under the document version it names and the newest one).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use guts_identity::{PushCert, SignedRefUpdate};
use maud::{html, Markup};

use super::layout::{date, encode_path, page, repo_header, short_id, Tab};
use super::limits::{MAX_MOVES_SHOWN, MAX_UPDATES_SHOWN};
use super::{blocking, dot_git_redirect, respond, Nonce, RepoCtx, WebError};
use crate::http::Shared;
use crate::identity::Identity;

/// One update as the page shows it.
struct Row {
    seq: u64,
    doc_version: u64,
    /// The verified signer, or the certificate's unverified pusher field.
    signer: String,
    time: Option<u64>,
    /// `(ref, old, new)` of the lines in effect.
    moves: Vec<(String, String, String)>,
    refused: Vec<String>,
    superseded: Vec<String>,
    grant: Option<crate::tokens::GrantView>,
    /// `Ok` if every peer-verifiable check passed, else why not.
    verdict: Result<(), String>,
}

/// The updates page.
pub(crate) async fn updates_page(
    State(state): State<Shared>,
    Path((owner, name)): Path<(String, String)>,
) -> Result<Response, WebError> {
    if let Some(r) = dot_git_redirect(&owner, &name, "/updates") {
        return Ok(r);
    }
    let nonce = Nonce::new();
    let n = nonce.clone();
    let markup = blocking(move || {
        let ctx = RepoCtx::open(&state, &owner, &name)?;
        let identity = state.repos.identities().current(&ctx.name)?;
        let mut updates = state.repos.log().updates(&ctx.name)?;
        let total = updates.len();
        updates.reverse();
        updates.truncate(MAX_UPDATES_SHOWN);
        let resolved = state.repos.log().resolutions(&ctx.name)?;
        let rows: Vec<Row> = updates
            .into_iter()
            .map(|(seq, u)| {
                let key = u.key();
                let superseded = resolved
                    .iter()
                    .filter(|(_, r)| r.superseded.contains(&key))
                    .map(|(name, _)| name.clone())
                    .collect();
                row(seq, u, identity.as_ref(), superseded)
            })
            .collect();
        let body = html! {
            (repo_header(&ctx, Tab::Updates))
            p.muted {
                "Every push to this repository is signed by a delegate (or by a key a delegate granted push rights). "
                "Each update below is checked again here as any peer checks it: signature, signer's authority under the identity document it names, grant, pushee and refused refs."
            }
            @if identity.is_none() { div.notice { "This repository has no identity document: its updates cannot be verified." } }
            @if rows.is_empty() { div.box { div.body.muted { "No signed updates yet." } } }
            @for r in &rows { (update_box(&ctx, r)) }
            @if total > rows.len() { p.muted { "Showing the newest " (rows.len()) " of " (total) "; " code { "/api/v1/repos/" (ctx.name) "/updates" } " lists all." } }
        };
        Ok(page(&format!("Signed updates of {}", ctx.name), &n, body))
    })
    .await?;
    Ok(respond(StatusCode::OK, &nonce, markup))
}

/// Verify `u` as a peer would (see `replica::NodeReplica::check`).
fn verify(
    u: &SignedRefUpdate,
    identity: Option<&Identity>,
) -> Result<PushCert<guts_identity::cert::Verified>, String> {
    let identity = identity.ok_or("no identity document")?;
    let doc = usize::try_from(u.doc_version)
        .ok()
        .and_then(|v| v.checked_sub(1))
        .and_then(|i| identity.docs.get(i))
        .ok_or_else(|| {
            format!(
                "names identity document version {}, which this node does not have",
                u.doc_version
            )
        })?;
    u.verify(&identity.id, doc, &identity.doc)
        .map_err(|e| e.to_string())
}

fn row(seq: u64, u: SignedRefUpdate, identity: Option<&Identity>, superseded: Vec<String>) -> Row {
    let verified = verify(&u, identity);
    let parsed = PushCert::parse(&u.certificate).ok();
    let (signer, time, moves) = match &verified {
        Ok(cert) => (
            cert.signer().to_string(),
            cert.timestamp(),
            u.effective(cert)
                .map(|c| (c.name.clone(), c.old.to_string(), c.new.to_string()))
                .collect(),
        ),
        Err(_) => (
            parsed.as_ref().map_or_else(
                || "(unreadable certificate)".to_owned(),
                |c| format!("{} (unverified)", c.pusher()),
            ),
            parsed.as_ref().and_then(|c| c.timestamp()),
            parsed
                .as_ref()
                .map(|c| {
                    c.commands()
                        .iter()
                        .filter(|c| u.refused.binary_search(&c.name).is_err())
                        .map(|c| (c.name.clone(), c.old.to_string(), c.new.to_string()))
                        .collect()
                })
                .unwrap_or_default(),
        ),
    };
    Row {
        seq,
        doc_version: u.doc_version,
        signer,
        time,
        moves,
        grant: (!u.grant.is_empty())
            .then(|| crate::tokens::grant_view(&u.grant))
            .flatten(),
        refused: u.refused,
        superseded,
        verdict: verified.map(|_| ()),
    }
}

const ZERO: &str = "0000000000000000000000000000000000000000";

fn update_box(ctx: &RepoCtx, r: &Row) -> Markup {
    let base = ctx.base();
    let commit = |id: &str| -> Markup {
        if id == ZERO {
            html! { span.muted { "(none)" } }
        } else {
            html! { a.mono href=(format!("{base}/commit/{id}")) { (short_id(&id)) } }
        }
    };
    html! {
        div.box.update {
            div.head {
                strong { "#" (r.seq) }
                @match &r.verdict {
                    Ok(()) => { span.ok title="every check a peer makes passed" { "✓ verified" } }
                    Err(why) => { span.bad { "✗ " (why) } }
                }
                span.grow.muted { @if let Some(t) = r.time { (date(t as i64)) } }
                span.muted { "identity document v" (r.doc_version) }
            }
            div.body {
                dl.meta {
                    dt { "Signer" } dd.mono.signer { (r.signer) }
                    @if let Some(g) = &r.grant {
                        dt { "Grant" }
                        dd { "by " span.mono { (g.granted_by) } " for " (g.refs.join(", ")) " until " (date(g.not_after as i64)) }
                    }
                    dt { "Refs" }
                    dd {
                        @for (name, old, new) in r.moves.iter().take(MAX_MOVES_SHOWN) {
                            div.mono {
                                a href=(format!("{base}/tree/{}", encode_path(name.strip_prefix("refs/heads/").or_else(|| name.strip_prefix("refs/tags/")).unwrap_or(name)))) { (name) }
                                " " (commit(old)) " → " (commit(new))
                                @if r.superseded.contains(name) { " " span.tag { "superseded" } }
                            }
                        }
                        @if r.moves.len() > MAX_MOVES_SHOWN { div.muted { "and " (r.moves.len() - MAX_MOVES_SHOWN) " more refs" } }
                    }
                    @if !r.refused.is_empty() {
                        dt { "Refused" }
                        dd.mono { @for f in &r.refused { div { (f) " (no effect)" } } }
                    }
                    @if !r.superseded.is_empty() {
                        dt { "Superseded" }
                        dd.mono { @for s in &r.superseded { div { (s) " (another update of this ref won)" } } }
                    }
                }
            }
        }
    }
}

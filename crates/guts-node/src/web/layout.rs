//! The page shell, shared fragments and formatting helpers.

use axum::http::StatusCode;
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::{Nonce, RepoCtx, COPY_JS};

/// The tabs of a repository's pages.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    /// Files, README.
    Code,
    /// The commit log and commit pages.
    Commits,
    /// The signed-update log.
    Updates,
}

/// A whole page: `title`, then `body` under the node's header.
pub fn page(title: &str, nonce: &Nonce, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Guts" }
                link rel="stylesheet" href="/static/guts.css";
            }
            body {
                header.top {
                    a.brand href="/" { "Guts" }
                    span.muted { "node " (env!("CARGO_PKG_VERSION")) }
                }
                main { (body) }
                script nonce=(nonce.0) { (PreEscaped(COPY_JS)) }
            }
        }
    }
}

/// An error page.
pub fn error_page(status: StatusCode, message: &str, nonce: &Nonce) -> Markup {
    let reason = status.canonical_reason().unwrap_or("Error");
    page(
        reason,
        nonce,
        html! {
            div.error {
                h1 { (status.as_u16()) " " (reason) }
                p { (message) }
                p { a href="/" { "Back to the node's repositories" } }
            }
        },
    )
}

/// A repository's title line and tabs.
pub fn repo_header(ctx: &RepoCtx, tab: Tab) -> Markup {
    let base = ctx.base();
    let tabs = [
        (Tab::Code, "Code", base.clone()),
        (Tab::Commits, "Commits", format!("{base}/commits")),
        (Tab::Updates, "Signed updates", format!("{base}/updates")),
    ];
    html! {
        div.repo-title {
            h1 {
                a.owner href=(base) title=(ctx.name.owner()) { (short_owner(ctx.name.owner())) }
                " / "
                a href=(base) { strong { (ctx.name.name()) } }
            }
        }
        nav.tabs {
            @for (t, label, href) in &tabs {
                a class=(if *t == tab { "tab active" } else { "tab" }) href=(href) { (label) }
            }
        }
    }
}

/// An owner DID id shortened for display (`z6Mkabc…xyz`); aliases as they are.
pub fn short_owner(owner: &str) -> String {
    if owner.len() > 20 && owner.starts_with("z6Mk") {
        format!("{}…{}", &owner[..10], &owner[owner.len() - 6..])
    } else {
        owner.to_owned()
    }
}

/// Breadcrumbs of `path` under ref `rev`: each directory links to its tree.
pub fn breadcrumbs(ctx: &RepoCtx, rev: &str, path: &str) -> Markup {
    let base = ctx.base();
    let rev_url = encode_path(rev);
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    html! {
        div.crumbs {
            a href=(format!("{base}/tree/{rev_url}")) { strong { (ctx.name.name()) } }
            @for (i, part) in parts.iter().enumerate() {
                " / "
                @if i + 1 == parts.len() {
                    strong { (part) }
                } @else {
                    a href=(format!("{base}/tree/{rev_url}/{}", encode_path(&parts[..=i].join("/")))) { (part) }
                }
            }
        }
    }
}

/// Percent-encode a ref or path for a URL, keeping `/` as separator.
pub fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `2024-03-01 14:05 UTC` for seconds since the epoch.
pub fn date(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A size in bytes for people.
pub fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// The first 10 hex digits of an id.
pub fn short_id(id: &impl std::fmt::Display) -> String {
    let s = id.to_string();
    s[..s.len().min(10)].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_encoding() {
        assert_eq!(date(0), "1970-01-01 00:00 UTC");
        assert_eq!(date(1_709_301_900), "2024-03-01 14:05 UTC");
        assert_eq!(encode_path("a b/<x>"), "a%20b/%3Cx%3E");
        assert_eq!(size(2048), "2.0 KiB");
    }
}

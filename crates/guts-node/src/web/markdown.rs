//! README rendering: CommonMark (with tables, strikethrough, task lists)
//! through `pulldown-cmark`, with no raw HTML passed through (HTML in the
//! source is shown as text) and link and image targets restricted to
//! `http:`, `https:`, `mailto:` and relative URLs.

use pulldown_cmark::{CowStr, Event, Options, Parser, Tag};

/// Where relative links and images of a README point.
pub struct Bases {
    /// Prefix of relative links (`/OWNER/NAME/blob/REF/DIR/`).
    pub links: String,
    /// Prefix of relative images (`/OWNER/NAME/raw/REF/DIR/`).
    pub images: String,
}

/// Render Markdown `source` to HTML that is safe to embed.
pub fn render(source: &str, bases: &Bases) -> String {
    let mut options = Options::empty();
    options.insert(Options::ENABLE_TABLES);
    options.insert(Options::ENABLE_STRIKETHROUGH);
    options.insert(Options::ENABLE_TASKLISTS);
    let events = Parser::new_ext(source, options).map(|event| match event {
        // Raw HTML becomes text: escaped on output like any text.
        Event::Html(html) | Event::InlineHtml(html) => Event::Text(html),
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Link {
            link_type,
            dest_url: safe_url(dest_url, &bases.links),
            title,
            id,
        }),
        Event::Start(Tag::Image {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Image {
            link_type,
            dest_url: safe_url(dest_url, &bases.images),
            title,
            id,
        }),
        other => other,
    });
    let mut out = String::with_capacity(source.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut out, events);
    out
}

/// `url` if its scheme is allowed (relative ones resolved under `base`),
/// else `#`.
fn safe_url<'a>(url: CowStr<'a>, base: &str) -> CowStr<'a> {
    let trimmed = url.trim();
    let lower = trimmed.to_ascii_lowercase();
    if ["http://", "https://", "mailto:"]
        .iter()
        .any(|s| lower.starts_with(s))
    {
        return url;
    }
    // A scheme (`javascript:`, `data:`, ...): anything before the first
    // `/`, `?` or `#` holding a `:`. Control characters are refused too.
    let head = lower.split(['/', '?', '#']).next().unwrap_or("");
    if head.contains(':') || lower.chars().any(|c| c.is_control()) {
        return CowStr::Borrowed("#");
    }
    if trimmed.starts_with('#') || trimmed.starts_with('/') {
        return url;
    }
    let rel = trimmed.trim_start_matches("./");
    CowStr::from(format!("{base}{rel}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bases() -> Bases {
        Bases {
            links: "/o/n/blob/main/".into(),
            images: "/o/n/raw/main/".into(),
        }
    }

    #[test]
    fn raw_html_is_escaped_and_bad_urls_dropped() {
        let html = render(
            "# Title\n\n<script>alert(1)</script>\n\nInline <b>bold</b> [x](javascript:alert(1)) [y](JaVaScRiPt:evil) ![i](data:image/png;base64,AA)\n",
            &bases(),
        );
        assert!(html.contains("<h1>Title</h1>"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(!html.to_ascii_lowercase().contains("javascript:"), "{html}");
        assert!(!html.contains("data:"), "{html}");
    }

    #[test]
    fn relative_links_point_into_the_repository() {
        let html = render(
            "[doc](docs/a.md) [abs](https://x.org/) ![img](./logo.png) [top](#usage) [mail](mailto:a@b.c)",
            &bases(),
        );
        assert!(
            html.contains(r#"href="/o/n/blob/main/docs/a.md""#),
            "{html}"
        );
        assert!(html.contains(r#"href="https://x.org/""#), "{html}");
        assert!(html.contains(r#"src="/o/n/raw/main/logo.png""#), "{html}");
        assert!(html.contains(r##"href="#usage""##), "{html}");
        assert!(html.contains(r#"href="mailto:a@b.c""#), "{html}");
    }
}

//! `guts://HOST[:PORT]/OWNER/NAME` (plain WebSocket, `ws://`) and
//! `guts+tls://HOST[:PORT]/OWNER/NAME` (TLS, `wss://`, for a TLS
//! terminator in front of the node).

use guts_git::resume::ResumePoint;

/// The node's HTTP port when a `guts://` URL names none.
const DEFAULT_PORT: u16 = 8080;

/// A parsed remote URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// `ws` or `wss`.
    scheme: &'static str,
    /// `host:port`.
    authority: String,
    /// `OWNER/NAME`.
    path: String,
    /// The URL as the user gave it, for messages.
    pub display: String,
}

impl Remote {
    /// Parse a `guts://` or `guts+tls://` URL.
    pub fn parse(url: &str) -> Result<Remote, String> {
        let bad = |why: &str| {
            format!("{url:?} is not a guts URL ({why}); expected guts://HOST:PORT/OWNER/NAME or guts+tls://HOST[:PORT]/OWNER/NAME")
        };
        let (scheme, port, rest) = if let Some(rest) = url.strip_prefix("guts://") {
            ("ws", DEFAULT_PORT, rest)
        } else if let Some(rest) = url.strip_prefix("guts+tls://") {
            ("wss", 443, rest)
        } else {
            return Err(bad("unknown scheme"));
        };
        let (authority, path) = rest.split_once('/').ok_or_else(|| bad("no path"))?;
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("the host must be HOST or HOST:PORT"));
        }
        // `[v6]:port` or `host:port`.
        let host_has_port = match authority.rfind(']') {
            Some(i) => authority[i..].contains(':'),
            None => authority.contains(':'),
        };
        let authority = if host_has_port {
            let port = authority.rsplit(':').next().unwrap_or_default();
            port.parse::<u16>().map_err(|_| bad("bad port"))?;
            authority.to_owned()
        } else {
            format!("{authority}:{port}")
        };
        let path = path.trim_end_matches('/');
        let parts: Vec<&str> = path.split('/').collect();
        let ok = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if parts.len() != 2 || !parts.iter().all(|p| ok(p)) {
            return Err(bad("the path must be OWNER/NAME"));
        }
        Ok(Remote {
            scheme,
            authority,
            path: path.to_owned(),
            display: url.to_owned(),
        })
    }

    /// The WebSocket URL of `service`, resuming from `resume`.
    pub fn ws_url(&self, service: &str, resume: Option<ResumePoint>) -> String {
        let mut url = format!(
            "{}://{}/{}/git-ws?service={service}",
            self.scheme, self.authority, self.path
        );
        if let Some(p) = resume {
            let hex: String = p.sha1.iter().map(|b| format!("{b:02x}")).collect();
            url.push_str(&format!("&resume={}-{hex}", p.offset));
        }
        url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_map_to_websocket_urls() {
        let r = Remote::parse("guts://127.0.0.1:9000/alice/demo").expect("valid");
        assert_eq!(
            r.ws_url("git-upload-pack", None),
            "ws://127.0.0.1:9000/alice/demo/git-ws?service=git-upload-pack"
        );
        let r = Remote::parse("guts+tls://git.example.org/alice/demo.git/").expect("valid");
        let p = ResumePoint {
            offset: 7,
            sha1: [0xab; 20],
        };
        assert_eq!(
            r.ws_url("git-upload-pack", Some(p)),
            format!(
                "wss://git.example.org:443/alice/demo.git/git-ws?service=git-upload-pack&resume=7-{}",
                "ab".repeat(20)
            )
        );
        assert!(Remote::parse("guts://h/alice").is_err());
        assert!(Remote::parse("guts://h:x/a/b").is_err());
        assert!(Remote::parse("guts://u@h/a/b").is_err());
        assert!(Remote::parse("guts://h/a/../b").is_err());
        assert!(Remote::parse("guts://h/a/b?x=1").is_err());
        assert!(Remote::parse("http://h/a/b").is_err());
        assert_eq!(
            Remote::parse("guts://h/a/b").expect("valid").authority,
            "h:8080"
        );
    }
}

//! Read helpers for browsing a repository (the node's web view): resolving
//! `REF/PATH` strings from URLs, listing a tree at a path, reading a blob
//! with a size cap ([`tree`]), walking the commits of a ref with a cap
//! ([`log`]), and diffing two trees with bounded work ([`diff`]).
//!
//! Everything here works on bytes and the object store; nothing knows about
//! HTTP or HTML. Every function bounds its work by a cap its caller passes.

pub mod diff;
pub mod log;
pub mod tree;

use gix_hash::ObjectId;

use crate::error::{Error, Result};
use crate::storage::Ref;

/// What a `REF` segment of a URL resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The name as shown (`main`, `v1.0`, or the full hex id).
    pub name: String,
    /// The full ref name (`refs/heads/main`), or `None` for a commit id.
    pub full: Option<String>,
    /// The object the ref points at (not peeled).
    pub id: ObjectId,
    /// The path after the ref, `""` for the root.
    pub path: String,
}

/// Check a repository path from a URL: `/`-separated components, none of
/// them empty, `.`, `..`, or holding a NUL or a backslash. A trailing `/` is
/// ignored. `""` is the root.
pub fn check_path(path: &str) -> Result<&str> {
    let path = path.strip_suffix('/').unwrap_or(path);
    if path.is_empty() {
        return Ok(path);
    }
    for part in path.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(Error::Protocol(format!("invalid path component {part:?}")));
        }
        if part.contains(['\0', '\\']) {
            return Err(Error::Protocol("invalid character in path".into()));
        }
    }
    Ok(path)
}

/// Resolve `REF/PATH` (the part of a URL after `/tree/`, `/blob/`...)
/// against the repository's `refs`: the longest prefix of `/`-separated
/// components that names a branch (`refs/heads/...`), a tag (`refs/tags/...`)
/// or, failing both, a full hex commit id; the rest is the path, which must
/// pass [`check_path`]. `None` if no prefix names anything.
///
/// Names are only compared with existing refs, so a ref name from a URL is
/// never used to build a storage key.
pub fn resolve(refs: &[Ref], rest: &str) -> Result<Option<Resolved>> {
    if rest.contains('\0') {
        return Err(Error::Protocol("NUL in a URL".into()));
    }
    let parts: Vec<&str> = rest.split('/').collect();
    for n in (1..=parts.len()).rev() {
        let name = parts[..n].join("/");
        let path = parts[n..].join("/");
        let found = ["refs/heads/", "refs/tags/"].iter().find_map(|prefix| {
            let full = format!("{prefix}{name}");
            refs.iter().find(|r| r.name == full).map(|r| (full, r.id))
        });
        if let Some((full, id)) = found {
            let path = check_path(&path)?.to_owned();
            return Ok(Some(Resolved {
                name,
                full: Some(full),
                id,
                path,
            }));
        }
    }
    let first = parts[0];
    if first.len() == 40 && first.bytes().all(|b| b.is_ascii_hexdigit()) {
        if let Ok(id) = ObjectId::from_hex(first.as_bytes()) {
            let path = check_path(&parts[1..].join("/"))?.to_owned();
            return Ok(Some(Resolved {
                name: first.to_ascii_lowercase(),
                full: None,
                id,
                path,
            }));
        }
    }
    Ok(None)
}

/// Parse a full hex object id from a URL.
pub fn parse_id(hex: &str) -> Option<ObjectId> {
    (hex.len() == 40 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| ObjectId::from_hex(hex.as_bytes()).ok())
        .flatten()
}

/// Whether `data` looks binary: a NUL in its first 8000 bytes (git's rule).
pub fn is_binary(data: &[u8]) -> bool {
    data[..data.len().min(8000)].contains(&0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, byte: u8) -> Ref {
        Ref {
            name: name.into(),
            id: ObjectId::from_bytes_or_panic(&[byte; 20]),
            peeled: None,
        }
    }

    #[test]
    fn longest_ref_prefix_wins() {
        let refs = [
            r("refs/heads/feature", 1),
            r("refs/heads/feature/x", 2),
            r("refs/tags/v1", 3),
        ];
        let got = resolve(&refs, "feature/x/src/main.rs")
            .expect("valid")
            .expect("found");
        assert_eq!(got.name, "feature/x");
        assert_eq!(got.full.as_deref(), Some("refs/heads/feature/x"));
        assert_eq!(got.path, "src/main.rs");
        let got = resolve(&refs, "feature/y").expect("valid").expect("found");
        assert_eq!((got.name.as_str(), got.path.as_str()), ("feature", "y"));
        let got = resolve(&refs, "v1").expect("valid").expect("found");
        assert_eq!(
            (got.full.as_deref(), got.path.as_str()),
            (Some("refs/tags/v1"), "")
        );
        assert!(resolve(&refs, "nope/a").expect("valid").is_none());
    }

    #[test]
    fn hex_ids_and_bad_paths() {
        let id = "0123456789abcdef0123456789abcdef01234567";
        let got = resolve(&[], &format!("{id}/a/b"))
            .expect("valid")
            .expect("found");
        assert_eq!((got.full, got.path.as_str()), (None, "a/b"));
        assert!(resolve(&[], "0123").expect("valid").is_none());
        let refs = [r("refs/heads/main", 1)];
        for bad in ["main/../x", "main/a//b", "main/./a", "main/a\\b", "main/\0"] {
            assert!(resolve(&refs, bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(check_path("a/b/").expect("valid"), "a/b");
        assert!(parse_id(id).is_some());
        assert!(parse_id("xyz").is_none());
        assert!(is_binary(b"a\0b"));
        assert!(!is_binary(b"text"));
    }
}

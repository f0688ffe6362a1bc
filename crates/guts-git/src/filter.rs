//! Partial clone filters (`--filter=...`, `gitprotocol-v2` "filter").
//!
//! A filter decides, object by object, whether a fetch sends it. Objects the
//! client named in `want` lines are always sent; everything else reached
//! from them is tested here. Semantics follow git's `list-objects-filter.c`:
//! `blob:limit=N` keeps blobs smaller than N bytes, `tree:D` keeps trees and
//! blobs whose depth below the root tree is less than D (root tree = 0; an
//! object reached along several paths counts at its smallest depth), and
//! `combine:` keeps an object only if every part keeps it.

use crate::error::{Error, Result};

/// Most parts of a `combine:` filter.
pub const MAX_COMBINED_FILTERS: usize = 32;
/// Deepest nesting of `combine:` inside `combine:` (git itself sends flat
/// ones); deeper specs are refused before they can exhaust the stack.
pub const MAX_FILTER_NESTING: usize = 4;

/// A parsed filter specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// `blob:none`: no blobs.
    BlobNone,
    /// `blob:limit=N`: blobs smaller than N bytes.
    BlobLimit(u64),
    /// `tree:D`: trees and blobs at depth less than D.
    TreeDepth(u64),
    /// `object:type=T`: only objects of type T.
    ObjectType(gix_object::Kind),
    /// `combine:A+B+...`: objects every part keeps.
    Combine(Vec<Filter>),
}

fn invalid(spec: &str) -> Error {
    Error::Protocol(format!("invalid filter-spec '{spec}'"))
}

fn parse_size(spec: &str, value: &str) -> Result<u64> {
    let (digits, mult) = match value.char_indices().last() {
        Some((i, 'k' | 'K')) => (&value[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&value[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&value[..i], 1 << 30),
        _ => (value, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| invalid(spec))
}

fn percent_decode(spec: &str, s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(|| invalid(spec))?;
            let hex = std::str::from_utf8(hex).map_err(|_| invalid(spec))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| invalid(spec))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| invalid(spec))
}

impl Filter {
    /// Parse a filter spec as sent after `filter `.
    pub fn parse(spec: &str) -> Result<Self> {
        Self::parse_nested(spec, 0)
    }

    fn parse_nested(spec: &str, nesting: usize) -> Result<Self> {
        if spec == "blob:none" {
            return Ok(Filter::BlobNone);
        }
        if let Some(v) = spec.strip_prefix("blob:limit=") {
            return Ok(Filter::BlobLimit(parse_size(spec, v)?));
        }
        if let Some(v) = spec.strip_prefix("tree:") {
            return v.parse().map(Filter::TreeDepth).map_err(|_| invalid(spec));
        }
        if let Some(v) = spec.strip_prefix("object:type=") {
            let kind = gix_object::Kind::from_bytes(v.as_bytes()).map_err(|_| invalid(spec))?;
            return Ok(Filter::ObjectType(kind));
        }
        if let Some(v) = spec.strip_prefix("combine:") {
            if nesting >= MAX_FILTER_NESTING {
                return Err(Error::Protocol(format!(
                    "invalid filter-spec: combine: nested more than {MAX_FILTER_NESTING} deep"
                )));
            }
            let parts = v.split('+').collect::<Vec<_>>();
            if parts.len() > MAX_COMBINED_FILTERS || parts.iter().any(|p| p.is_empty()) {
                return Err(invalid(spec));
            }
            let mut out = Vec::with_capacity(parts.len());
            for p in parts {
                out.push(Filter::parse_nested(
                    &percent_decode(spec, p)?,
                    nesting + 1,
                )?);
            }
            return Ok(Filter::Combine(out));
        }
        Err(invalid(spec))
    }

    /// Whether the filter keeps an object reached by traversal (not wanted
    /// by name). `size` is only consulted by `blob:limit`; `depth` is the
    /// object's depth below its root tree (root tree 0).
    pub fn keeps(
        &self,
        kind: gix_object::Kind,
        size: impl Fn() -> Result<u64> + Copy,
        depth: u64,
    ) -> Result<bool> {
        use gix_object::Kind::*;
        Ok(match self {
            Filter::BlobNone => kind != Blob,
            Filter::BlobLimit(limit) => kind != Blob || size()? < *limit,
            Filter::TreeDepth(max) => !matches!(kind, Blob | Tree) || depth < *max,
            Filter::ObjectType(t) => kind == *t,
            Filter::Combine(parts) => {
                for p in parts {
                    if !p.keeps(kind, size, depth)? {
                        return Ok(false);
                    }
                }
                true
            }
        })
    }

    /// Whether entries below a tree at `depth` can be kept at all (so the
    /// tree must be read).
    pub fn descends(&self, depth: u64) -> bool {
        match self {
            Filter::TreeDepth(max) => depth + 1 < *max,
            Filter::ObjectType(t) => matches!(t, gix_object::Kind::Blob | gix_object::Kind::Tree),
            Filter::Combine(parts) => parts.iter().all(|p| p.descends(depth)),
            Filter::BlobNone | Filter::BlobLimit(_) => true,
        }
    }

    /// Whether keeping depends on depth (then trees are revisited when
    /// reached at a smaller depth).
    pub fn uses_depth(&self) -> bool {
        match self {
            Filter::TreeDepth(_) => true,
            Filter::Combine(parts) => parts.iter().any(Filter::uses_depth),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gix_object::Kind::*;

    fn size(n: u64) -> impl Fn() -> Result<u64> + Copy {
        move || Ok(n)
    }

    #[test]
    fn parses_specs() {
        assert_eq!(Filter::parse("blob:none").ok(), Some(Filter::BlobNone));
        assert_eq!(
            Filter::parse("blob:limit=1k").ok(),
            Some(Filter::BlobLimit(1024))
        );
        assert_eq!(
            Filter::parse("blob:limit=3").ok(),
            Some(Filter::BlobLimit(3))
        );
        assert_eq!(Filter::parse("tree:0").ok(), Some(Filter::TreeDepth(0)));
        assert_eq!(
            Filter::parse("object:type=commit").ok(),
            Some(Filter::ObjectType(Commit))
        );
        assert_eq!(
            Filter::parse("combine:blob:none+tree:2").ok(),
            Some(Filter::Combine(vec![
                Filter::BlobNone,
                Filter::TreeDepth(2)
            ]))
        );
        assert_eq!(
            Filter::parse("combine:blob%3Alimit%3D1m+object:type=blob").ok(),
            Some(Filter::Combine(vec![
                Filter::BlobLimit(1 << 20),
                Filter::ObjectType(Blob)
            ]))
        );
        for bad in [
            "sparse:oid=abc",
            "blob:limit=",
            "blob:limit=x",
            "tree:-1",
            "object:type=foo",
            "combine:",
            "combine:a+",
            "x",
        ] {
            let err = Filter::parse(bad).expect_err(bad);
            assert!(err.to_string().contains("invalid filter-spec"), "{err}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_recursed() {
        // combine:combine:...:blob:none, each level percent-encoded once more.
        let mut spec = "blob:none".to_owned();
        for _ in 0..MAX_FILTER_NESTING {
            spec = format!("combine:{}", spec.replace('%', "%25").replace(':', "%3A"));
        }
        assert!(
            Filter::parse(&spec).is_ok(),
            "{MAX_FILTER_NESTING} levels are fine"
        );
        let deeper = format!("combine:{}", spec.replace('%', "%25").replace(':', "%3A"));
        let err = Filter::parse(&deeper).expect_err("too deep");
        assert!(err.to_string().contains("nested"), "{err}");
        // What crashed an earlier version: thousands of unencoded levels.
        let flood = format!("{}blob:none", "combine:".repeat(8000));
        assert!(Filter::parse(&flood).is_err());
    }

    #[test]
    fn keeps_like_git() {
        let f = Filter::BlobLimit(10);
        assert!(f.keeps(Blob, size(9), 1).unwrap_or(false));
        assert!(!f.keeps(Blob, size(10), 1).unwrap_or(true));
        let t = Filter::TreeDepth(2);
        assert!(t.keeps(Tree, size(0), 0).unwrap_or(false));
        assert!(t.keeps(Blob, size(0), 1).unwrap_or(false));
        assert!(!t.keeps(Tree, size(0), 2).unwrap_or(true));
        assert!(t.keeps(Commit, size(0), 0).unwrap_or(false));
        assert!(t.descends(0) && !t.descends(1));
        let c = Filter::parse("combine:blob:none+tree:1").expect("valid");
        assert!(c.keeps(Tree, size(0), 0).unwrap_or(false));
        assert!(!c.keeps(Blob, size(0), 0).unwrap_or(true));
        assert!(!Filter::ObjectType(Commit)
            .keeps(Tree, size(0), 0)
            .unwrap_or(true));
        assert!(!Filter::ObjectType(Commit).descends(0));
    }
}

//! Git LFS pointers: parsing them strictly, and finding them among the
//! blobs of a received pack (ADR 0024).
//!
//! A pointer is the small text blob git stores in place of a file kept by
//! Git LFS (git-lfs `docs/spec.md`):
//!
//! ```text
//! version https://git-lfs.github.com/spec/v1
//! oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393
//! size 12345
//! ```
//!
//! A node that replicates a repository finds the pointers in the blobs that
//! are new to it (those of the pack it just received, [`pointers_in`]) and
//! then fetches the objects they name from its peers. Everything here is
//! bytes in, values out: no network, no LFS store.

use std::fmt;

use crate::error::Result;
use crate::pack_in::Quarantine;

/// Largest pointer blob: git-lfs never reads more of a blob to decide
/// whether it is a pointer (spec: "Pointer files must be less than 1024
/// bytes in size").
pub const MAX_POINTER_BYTES: u64 = 1024;
/// Most pointers taken from one received pack; the rest of its pointers
/// are not looked for (their objects are not fetched from peers).
pub const MAX_POINTERS_PER_PACK: usize = 10_000;
/// The first line of every pointer (version 1 of the spec, the only one).
const VERSION_LINE: &str = "version https://git-lfs.github.com/spec/v1";
/// Longest decimal `size` accepted (`u64::MAX` has 20 digits).
const MAX_SIZE_DIGITS: usize = 20;

/// An LFS object's id: the SHA-256 of its content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LfsOid(pub [u8; 32]);

impl LfsOid {
    /// Parse exactly 64 lowercase hex digits.
    pub fn from_hex(s: &[u8]) -> Option<LfsOid> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
            let hi = hex_value(*pair.first()?)?;
            let lo = hex_value(*pair.get(1)?)?;
            *o = (hi << 4) | lo;
        }
        Some(LfsOid(out))
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for LfsOid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for LfsOid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LfsOid({self})")
    }
}

/// What a pointer says: the object's id and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LfsPointer {
    /// SHA-256 of the object.
    pub oid: LfsOid,
    /// Its size in bytes.
    pub size: u64,
}

impl LfsPointer {
    /// Parse a blob as a pointer, strictly: at most [`MAX_POINTER_BYTES`],
    /// UTF-8, lines ending in `\n`, the version line first, then `key value`
    /// lines with keys in ascending order (each once, of `a-z0-9.-`), among
    /// them `oid sha256:<64 lowercase hex>` and `size <decimal>` (no sign,
    /// no leading zero). `None` for anything else: most blobs are not
    /// pointers.
    pub fn parse(blob: &[u8]) -> Option<LfsPointer> {
        if blob.len() as u64 > MAX_POINTER_BYTES {
            return None;
        }
        let text = std::str::from_utf8(blob).ok()?;
        let body = text.strip_suffix('\n')?;
        let mut lines = body.split('\n');
        if lines.next()? != VERSION_LINE {
            return None;
        }
        let (mut oid, mut size, mut previous) = (None, None, "");
        for line in lines {
            let (key, value) = line.split_once(' ')?;
            let valid_key = !key.is_empty()
                && key.bytes().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-'
                });
            if !valid_key || key <= previous || value.is_empty() || key == "version" {
                return None;
            }
            previous = key;
            match key {
                "oid" => oid = Some(LfsOid::from_hex(value.strip_prefix("sha256:")?.as_bytes())?),
                "size" => size = Some(parse_size(value)?),
                _ => {}
            }
        }
        Some(LfsPointer {
            oid: oid?,
            size: size?,
        })
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let canonical = !s.is_empty()
        && s.len() <= MAX_SIZE_DIGITS
        && s.bytes().all(|c| c.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if !canonical {
        return None;
    }
    s.parse().ok()
}

/// The pointers among the blobs of a received pack (bases completing a
/// thin pack included), each once, in id order; at most `max` (see
/// [`MAX_POINTERS_PER_PACK`]). Only blobs of at most [`MAX_POINTER_BYTES`]
/// are read: the others' sizes come from their pack entry headers.
pub fn pointers_in(q: &Quarantine, max: usize) -> Result<Vec<LfsPointer>> {
    let mut found = std::collections::BTreeSet::new();
    q.for_each_small_blob(MAX_POINTER_BYTES, &mut |blob| {
        if let Some(p) = LfsPointer::parse(blob) {
            found.insert(p);
        }
        found.len() < max
    })?;
    Ok(found.into_iter().collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const OID: &str = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393";

    fn pointer(lines: &[&str]) -> Vec<u8> {
        let mut s = String::new();
        for l in lines {
            s.push_str(l);
            s.push('\n');
        }
        s.into_bytes()
    }

    fn canonical() -> Vec<u8> {
        pointer(&[VERSION_LINE, &format!("oid sha256:{OID}"), "size 12345"])
    }

    #[test]
    fn a_canonical_pointer_parses() {
        let p = LfsPointer::parse(&canonical()).unwrap();
        assert_eq!(p.oid.to_string(), OID);
        assert_eq!(p.size, 12345);
        let ext = pointer(&[
            VERSION_LINE,
            "ext-0-foo sha256:ab",
            &format!("oid sha256:{OID}"),
            "size 0",
        ]);
        assert_eq!(LfsPointer::parse(&ext).unwrap().size, 0);
    }

    #[test]
    fn anything_else_is_not_a_pointer() {
        let bad: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"hello\n".to_vec(),
            // No final newline, CRLF, other version, version not first.
            canonical()[..canonical().len() - 1].to_vec(),
            String::from_utf8(canonical())
                .unwrap()
                .replace('\n', "\r\n")
                .into_bytes(),
            pointer(&[
                "version https://hawser.github.com/spec/v1",
                &format!("oid sha256:{OID}"),
                "size 1",
            ]),
            pointer(&[&format!("oid sha256:{OID}"), VERSION_LINE, "size 1"]),
            // Keys out of order, repeated, missing, malformed.
            pointer(&[VERSION_LINE, "size 1", &format!("oid sha256:{OID}")]),
            pointer(&[
                VERSION_LINE,
                &format!("oid sha256:{OID}"),
                &format!("oid sha256:{OID}"),
                "size 1",
            ]),
            pointer(&[VERSION_LINE, &format!("oid sha256:{OID}")]),
            pointer(&[VERSION_LINE, "size 1"]),
            pointer(&[VERSION_LINE, &format!("Oid sha256:{OID}"), "size 1"]),
            pointer(&[VERSION_LINE, &format!("oid  sha256:{OID}"), "size 1"]),
            // Bad ids and sizes.
            pointer(&[VERSION_LINE, &format!("oid sha1:{OID}"), "size 1"]),
            pointer(&[VERSION_LINE, &format!("oid sha256:{}", &OID[1..]), "size 1"]),
            pointer(&[
                VERSION_LINE,
                &format!("oid sha256:{}", OID.to_uppercase()),
                "size 1",
            ]),
            pointer(&[VERSION_LINE, &format!("oid sha256:{OID}"), "size -1"]),
            pointer(&[VERSION_LINE, &format!("oid sha256:{OID}"), "size +1"]),
            pointer(&[VERSION_LINE, &format!("oid sha256:{OID}"), "size 01"]),
            pointer(&[VERSION_LINE, &format!("oid sha256:{OID}"), "size 1.5"]),
            pointer(&[
                VERSION_LINE,
                &format!("oid sha256:{OID}"),
                "size 99999999999999999999",
            ]),
            pointer(&[VERSION_LINE, &format!("oid sha256:{OID}"), "size "]),
            pointer(&[VERSION_LINE, &format!("oid sha256:{OID}"), "size 1", ""]),
        ];
        for b in bad {
            assert_eq!(
                LfsPointer::parse(&b),
                None,
                "{:?}",
                String::from_utf8_lossy(&b)
            );
        }
        // Too long, though otherwise valid.
        let long = pointer(&[
            VERSION_LINE,
            &format!("oid sha256:{OID}"),
            "size 1",
            &format!("zz {}", "x".repeat(1024)),
        ]);
        assert_eq!(LfsPointer::parse(&long), None);
    }
}

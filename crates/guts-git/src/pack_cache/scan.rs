//! Rebuilding the index of a [`super::PackCache`] from its directory, at
//! start: entries are recognised by their paths and lengths, anything else
//! in the cache's namespace is removed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use tracing::debug;

use super::{remove_any, Index, Slot, TMP_DIR};

/// Index the entries under `dir`, removing damaged ones; also the entries
/// to drop: those of a repository under other refs than its most recently
/// used entry's (stale).
pub(super) fn scan(dir: &Path) -> io::Result<(Index, Vec<(Slot, u64)>)> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)?.flatten() {
        let name = entry.file_name();
        let repo = name.to_str().and_then(parse_hex::<16>);
        let (Some(repo), true) = (repo, entry.file_type().is_ok_and(|t| t.is_dir())) else {
            if name != TMP_DIR {
                debug!(?name, "pack cache: not an entry, left alone");
            }
            continue;
        };
        for (refs, refs_dir, meta) in children(&entry.path(), parse_hex::<32>) {
            if !meta.is_dir() {
                remove_any(&refs_dir);
                continue;
            }
            for ((req, len), path, meta) in children(&refs_dir, parse_entry_name) {
                if meta.is_file() && meta.len() == len {
                    let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
                    found.push((Slot { repo, refs, req }, len, mtime));
                } else {
                    debug!(path = %path.display(), "pack cache: bad entry removed");
                    remove_any(&path);
                }
            }
            let _ = fs::remove_dir(&refs_dir);
        }
        let _ = fs::remove_dir(entry.path());
    }
    found.sort_by_key(|(_, _, mtime)| *mtime);
    let (mut index, mut stale) = (Index::default(), Vec::new());
    for (slot, len, _) in found {
        stale.extend(index.set_refs(slot.repo, slot.refs));
        index.insert(slot, len);
    }
    Ok((index, stale))
}

/// The children of directory `dir` whose names `parse` accepts, with
/// their metadata (not following links); the others are removed.
fn children<T>(dir: &Path, parse: impl Fn(&str) -> Option<T>) -> Vec<(T, PathBuf, fs::Metadata)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let parsed = entry.file_name().to_str().and_then(&parse);
        match (parsed, path.symlink_metadata()) {
            (Some(t), Ok(meta)) => out.push((t, path, meta)),
            _ => {
                debug!(path = %path.display(), "pack cache: not an entry, removed");
                remove_any(&path);
            }
        }
    }
    out
}

/// `<hex request digest>-<decimal length>.pack`.
fn parse_entry_name(name: &str) -> Option<([u8; 32], u64)> {
    let (req, len) = name.strip_suffix(".pack")?.split_once('-')?;
    let n: u64 = len.parse().ok()?;
    (n.to_string() == len).then_some((parse_hex::<32>(req)?, n))
}

/// Lower-case hex of exactly `N` bytes.
fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let lower = s.len() == 2 * N && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let mut out = [0u8; N];
    for (o, i) in out.iter_mut().zip((0..).step_by(2)) {
        *o = u8::from_str_radix(s.get(i..i + 2)?, 16).ok()?;
    }
    lower.then_some(out)
}

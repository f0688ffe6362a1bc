//! Diffs of two trees: which files changed, and a unified line diff of
//! each, with the work bounded by [`Limits`].

use std::collections::BTreeMap;
use std::time::Duration;

use gix_hash::{oid, ObjectId};
use similar::{ChangeTag, TextDiff};

use super::tree::{read_tree, Entry, EntryKind};
use crate::error::Result;
use crate::odb::ObjectStore;

/// Bounds on the work of one diff.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Changed files listed; more set [`Diff::truncated`].
    pub max_files: usize,
    /// Diff lines (context, added, removed) over all files.
    pub max_lines: usize,
    /// Bytes of diff lines over all files.
    pub max_bytes: usize,
    /// Files with a side larger than this are not diffed line by line.
    pub max_file_bytes: u64,
    /// Trees read to find the changed files (a crafted history can nest
    /// trees with no files in them).
    pub max_trees: usize,
    /// Time the line diff of one file may take before it settles for a
    /// coarser (still correct) answer.
    pub file_timeout: Duration,
}

/// Lines of context around each change.
pub const CONTEXT: usize = 3;

/// Directory depth a diff descends to (beyond: truncated), so a crafted
/// deep nesting of trees cannot exhaust the stack.
pub const MAX_DEPTH: usize = 256;

/// How a file changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// New file.
    Added,
    /// Removed file.
    Deleted,
    /// Content or mode changed.
    Modified,
}

/// A diff line's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// Unchanged.
    Context,
    /// Only in the new file.
    Added,
    /// Only in the old file.
    Removed,
}

/// One line of a hunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Its kind.
    pub kind: LineKind,
    /// Line number in the old file (1-based), if there.
    pub old: Option<usize>,
    /// Line number in the new file (1-based), if there.
    pub new: Option<usize>,
    /// The text, without its line ending.
    pub text: String,
}

/// A run of changed lines with context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunk {
    /// `@@ -a,b +c,d @@`.
    pub header: String,
    /// Its lines.
    pub lines: Vec<Line>,
}

/// What is shown of one file's change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A line diff (empty for a mode-only change).
    Text(Vec<Hunk>),
    /// One side is binary.
    Binary,
    /// One side is larger than [`Limits::max_file_bytes`].
    TooLarge,
    /// A submodule's commit changed.
    Submodule,
    /// Not diffed: the line or byte budget was spent on earlier files.
    Skipped,
}

/// One changed file.
#[derive(Debug, Clone)]
pub struct FileDiff {
    /// Its path, lossily decoded.
    pub path: String,
    /// How it changed.
    pub status: Status,
    /// Old blob, if any.
    pub old: Option<ObjectId>,
    /// New blob, if any.
    pub new: Option<ObjectId>,
    /// The diff.
    pub body: Body,
}

/// The diff of two trees.
#[derive(Debug, Clone, Default)]
pub struct Diff {
    /// Changed files in path order, at most [`Limits::max_files`].
    pub files: Vec<FileDiff>,
    /// Whether a limit cut the diff (files missing or not diffed).
    pub truncated: bool,
    /// Added lines shown.
    pub added: usize,
    /// Removed lines shown.
    pub removed: usize,
}

/// A changed path: its old and new entries.
type Change = (String, Option<Entry>, Option<Entry>);

/// Diff tree `old` (`None`: the empty tree, for a root commit) against `new`.
pub fn diff_trees(
    store: &ObjectStore,
    old: Option<&oid>,
    new: &oid,
    limits: &Limits,
) -> Result<Diff> {
    let mut walk = Walk {
        store,
        max_files: limits.max_files,
        trees_left: limits.max_trees,
        out: Vec::new(),
        truncated: false,
    };
    walk.collect(old.map(oid::to_owned), Some(new.to_owned()), "", 0)?;
    let changes = std::mem::take(&mut walk.out);
    let mut diff = Diff {
        truncated: walk.truncated,
        ..Diff::default()
    };
    let (mut lines, mut bytes) = (0usize, 0usize);
    for (path, old, new) in changes {
        let status = match (&old, &new) {
            (None, _) => Status::Added,
            (_, None) => Status::Deleted,
            _ => Status::Modified,
        };
        let body = if lines >= limits.max_lines || bytes >= limits.max_bytes {
            diff.truncated = true;
            Body::Skipped
        } else {
            file_body(store, old.as_ref(), new.as_ref(), limits)?
        };
        if let Body::Text(hunks) = &body {
            for line in hunks.iter().flat_map(|h| &h.lines) {
                lines += 1;
                bytes += line.text.len();
                match line.kind {
                    LineKind::Added => diff.added += 1,
                    LineKind::Removed => diff.removed += 1,
                    LineKind::Context => {}
                }
            }
        }
        diff.files.push(FileDiff {
            path,
            status,
            old: old.map(|e| e.id),
            new: new.map(|e| e.id),
            body,
        });
    }
    Ok(diff)
}

fn entries(store: &ObjectStore, id: Option<ObjectId>) -> Result<BTreeMap<Vec<u8>, Entry>> {
    let mut buf = Vec::new();
    Ok(match id {
        Some(id) => read_tree(store, &id, &mut buf)?
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect(),
        None => BTreeMap::new(),
    })
}

/// The search for changed files, within its budget.
struct Walk<'a> {
    store: &'a ObjectStore,
    max_files: usize,
    trees_left: usize,
    out: Vec<Change>,
    truncated: bool,
}

impl Walk<'_> {
    fn entries(&mut self, id: Option<ObjectId>) -> Result<BTreeMap<Vec<u8>, Entry>> {
        if id.is_some() {
            self.trees_left = self.trees_left.saturating_sub(1);
        }
        entries(self.store, id)
    }

    /// Gather changed files under `prefix` (at `depth`).
    fn collect(
        &mut self,
        old: Option<ObjectId>,
        new: Option<ObjectId>,
        prefix: &str,
        depth: usize,
    ) -> Result<()> {
        if depth > MAX_DEPTH || self.trees_left < 2 {
            self.truncated = true;
            return Ok(());
        }
        let old = self.entries(old)?;
        let new = self.entries(new)?;
        let mut names: Vec<&Vec<u8>> = old.keys().chain(new.keys()).collect();
        names.sort();
        names.dedup();
        for name in names {
            if self.truncated {
                return Ok(());
            }
            let (o, n) = (old.get(name), new.get(name));
            if let (Some(o), Some(n)) = (o, n) {
                if o.id == n.id && o.kind == n.kind {
                    continue;
                }
            }
            let path = format!("{prefix}{}", String::from_utf8_lossy(name));
            let tree = |e: Option<&Entry>| e.filter(|e| e.kind == EntryKind::Tree).map(|e| e.id);
            let (ot, nt) = (tree(o), tree(n));
            if ot.is_some() || nt.is_some() {
                self.collect(ot, nt, &format!("{path}/"), depth + 1)?;
            }
            let file = |e: Option<&Entry>| e.filter(|e| e.kind != EntryKind::Tree).cloned();
            let (of, nf) = (file(o), file(n));
            if of.is_some() || nf.is_some() {
                if self.out.len() >= self.max_files {
                    self.truncated = true;
                    return Ok(());
                }
                self.out.push((path, of, nf));
            }
        }
        Ok(())
    }
}

/// The diff of one file, from its old and new entries.
fn file_body(
    store: &ObjectStore,
    old: Option<&Entry>,
    new: Option<&Entry>,
    limits: &Limits,
) -> Result<Body> {
    let submodule = |e: Option<&Entry>| e.is_some_and(|e| e.kind == EntryKind::Submodule);
    if submodule(old) || submodule(new) {
        return Ok(Body::Submodule);
    }
    let mut sides = Vec::with_capacity(2);
    for entry in [old, new] {
        let Some(entry) = entry else {
            sides.push(Vec::new());
            continue;
        };
        if store.size(&entry.id)? > limits.max_file_bytes {
            return Ok(Body::TooLarge);
        }
        let mut buf = Vec::new();
        let data = store.read(&entry.id, &mut buf)?;
        if super::is_binary(data.data) {
            return Ok(Body::Binary);
        }
        sides.push(data.data.to_vec());
    }
    let old_text = String::from_utf8_lossy(&sides[0]);
    let new_text = String::from_utf8_lossy(&sides[1]);
    Ok(Body::Text(line_diff(
        &old_text,
        &new_text,
        limits.file_timeout,
    )))
}

/// A unified line diff of two texts, [`CONTEXT`] lines around each change.
pub fn line_diff(old: &str, new: &str, timeout: Duration) -> Vec<Hunk> {
    let diff = TextDiff::configure().timeout(timeout).diff_lines(old, new);
    let mut hunks = Vec::new();
    for group in diff.grouped_ops(CONTEXT) {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            continue;
        };
        let (o, n) = (first.old_range().start, first.new_range().start);
        let (ol, nl) = (last.old_range().end - o, last.new_range().end - n);
        let header = format!(
            "@@ -{},{ol} +{},{nl} @@",
            if ol == 0 { o } else { o + 1 },
            if nl == 0 { n } else { n + 1 }
        );
        let mut lines = Vec::new();
        for op in &group {
            for change in diff.iter_changes(op) {
                let kind = match change.tag() {
                    ChangeTag::Equal => LineKind::Context,
                    ChangeTag::Insert => LineKind::Added,
                    ChangeTag::Delete => LineKind::Removed,
                };
                let text = change.value();
                let text = text.strip_suffix('\n').unwrap_or(text);
                let text = text.strip_suffix('\r').unwrap_or(text);
                lines.push(Line {
                    kind,
                    old: change.old_index().map(|i| i + 1),
                    new: change.new_index().map(|i| i + 1),
                    text: text.to_owned(),
                });
            }
        }
        hunks.push(Hunk { header, lines });
    }
    hunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unified_hunks_mark_added_and_removed_lines() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n";
        let new = "a\nb\nc\nd\nE\nf\ng\nh\ni\nj\nk\n";
        let hunks = line_diff(old, new, Duration::from_secs(1));
        assert_eq!(hunks.len(), 1, "{hunks:?}");
        let h = &hunks[0];
        assert_eq!(h.header, "@@ -2,9 +2,10 @@");
        let removed: Vec<_> = h
            .lines
            .iter()
            .filter(|l| l.kind == LineKind::Removed)
            .collect();
        let added: Vec<_> = h
            .lines
            .iter()
            .filter(|l| l.kind == LineKind::Added)
            .collect();
        assert_eq!(removed.len(), 1);
        assert_eq!((removed[0].text.as_str(), removed[0].old), ("e", Some(5)));
        assert_eq!(
            added.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            ["E", "k"]
        );
        assert_eq!(added[1].new, Some(11));
    }

    #[test]
    fn new_file_is_one_hunk_of_additions() {
        let hunks = line_diff("", "x\ny\n", Duration::from_secs(1));
        assert_eq!(hunks.len(), 1);
        assert_eq!(hunks[0].header, "@@ -0,0 +1,2 @@");
        assert!(hunks[0].lines.iter().all(|l| l.kind == LineKind::Added));
        assert!(line_diff("same\n", "same\n", Duration::from_secs(1)).is_empty());
    }
}

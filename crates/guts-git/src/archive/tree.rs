//! What to archive: the tree-ish resolved as git resolves it for a remote
//! (a ref, optionally `:path`), the pathspecs, and the walk that emits
//! entries in git's order (a directory just before its first file).

use gix_hash::{oid, ObjectId};
use gix_object::tree::EntryKind as GixKind;
use gix_object::Kind;

use super::{fatal, Entry, EntryKind};
use crate::odb::{parse_commit, ObjectStore};
use crate::storage::Repo;
use crate::{Error, Result};

/// Deepest tree nesting walked (git's `core.maxTreeDepth` default).
pub const MAX_TREE_DEPTH: usize = 2048;
/// Largest file put into an archive; git streams larger ones
/// (`core.bigFileThreshold`), writing zip entries differently.
pub const MAX_FILE_BYTES: u64 = 512 * 1024 * 1024;

/// The resolved tree-ish.
#[derive(Debug, Clone)]
pub struct Target {
    /// The tree archived.
    pub tree: ObjectId,
    /// The commit it came from (not for a `ref:path` or a tree id).
    pub commit: Option<ObjectId>,
    /// The commit's committer time.
    pub commit_time: Option<i64>,
}

/// The refs `name` may mean, in git's order (`ref_rev_parse_rules`).
fn candidates(name: &str) -> Vec<String> {
    let mut out = vec![name.to_owned()];
    for rule in ["refs/", "refs/tags/", "refs/heads/", "refs/remotes/"] {
        out.push(format!("{rule}{name}"));
    }
    out.push(format!("refs/remotes/{name}/HEAD"));
    out
}

fn dwim_ref(repo: &Repo, name: &str) -> Result<Option<ObjectId>> {
    if name.is_empty() {
        return Ok(None);
    }
    if name == "HEAD" {
        return Ok(repo.head()?.id);
    }
    for candidate in candidates(name) {
        if !candidate.starts_with("refs/") {
            continue;
        }
        if let Some(id) = repo.find_ref(&candidate)? {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// Resolve `name` as `git archive` does; `remote`: only refs (and
/// `ref:path`), as `git upload-archive` allows without
/// `uploadArchive.allowUnreachable`.
pub fn resolve(repo: &Repo, odb: &ObjectStore, name: &str, remote: bool) -> Result<Target> {
    let (rev, path) = match name.split_once(':') {
        Some((rev, path)) => (rev, Some(path)),
        None => (name, None),
    };
    let mut start = dwim_ref(repo, rev)?;
    if start.is_none() {
        if remote {
            return Err(fatal(format!("no such ref: {rev}")));
        }
        start = ObjectId::from_hex(rev.as_bytes())
            .ok()
            .filter(|id| odb.contains(id));
    }
    let invalid = || fatal(format!("not a valid object name: {name}"));
    let start = start.ok_or_else(invalid)?;
    let mut buf = Vec::new();
    let (peeled, kind) = odb.peel(&start, &mut buf)?;
    let (mut tree, commit, commit_time) = match kind {
        Kind::Commit => {
            let info = parse_commit(&peeled, odb.read(&peeled, &mut buf)?.data)?;
            (info.tree, Some(peeled), Some(info.time))
        }
        Kind::Tree => (peeled, None, None),
        _ if path.is_some() => return Err(invalid()),
        _ => return Err(fatal(format!("not a tree object: {}", start))),
    };
    let Some(path) = path else {
        return Ok(Target {
            tree,
            commit,
            commit_time,
        });
    };
    let (id, is_tree) =
        lookup(odb, &tree, path.trim_end_matches('/').as_bytes())?.ok_or_else(invalid)?;
    if !is_tree {
        return Err(fatal(format!("not a tree object: {id}")));
    }
    tree = id;
    Ok(Target {
        tree,
        commit: None,
        commit_time: None,
    })
}

/// The entry at `path` (components separated by `/`) under `tree`, and
/// whether it is a tree (or a gitlink, which a pathspec treats alike).
fn lookup(odb: &ObjectStore, tree: &oid, path: &[u8]) -> Result<Option<(ObjectId, bool)>> {
    let mut current = tree.to_owned();
    let mut is_tree = true;
    let mut buf = Vec::new();
    for part in path.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
        if !is_tree {
            return Ok(None);
        }
        let data = odb.read(&current, &mut buf)?;
        if data.kind != Kind::Tree {
            return Ok(None);
        }
        let mut found = None;
        for entry in gix_object::TreeRefIter::from_bytes(data.data, gix_hash::Kind::Sha1) {
            let entry = entry.map_err(|e| corrupt(&current, e))?;
            if entry.filename.as_ref() as &[u8] == part {
                found = Some((entry.oid.to_owned(), entry.mode.is_tree()));
                break;
            }
        }
        let Some((id, tree)) = found else {
            return Ok(None);
        };
        current = id;
        is_tree = tree;
    }
    Ok(Some((current, is_tree)))
}

fn corrupt(id: &oid, e: impl std::fmt::Display) -> Error {
    Error::CorruptObject {
        id: id.to_owned(),
        reason: e.to_string(),
    }
}

/// One literal pathspec, normalized.
#[derive(Debug, Clone)]
pub struct Spec {
    path: Vec<u8>,
    dir_only: bool,
}

impl Spec {
    /// Parse a pathspec as given; wildcards and magic are refused.
    pub fn parse(given: &str) -> Result<Spec> {
        if given.is_empty() {
            return Err(fatal("empty string is not a valid pathspec. please use . instead if you meant to match all paths".into()));
        }
        if given.starts_with(':') || given.contains(['*', '?', '[', '\\']) {
            return Err(Error::Unsupported(format!(
                "pathspec '{given}': wildcards and pathspec magic in remote archives"
            )));
        }
        let mut parts = Vec::new();
        for part in given.split('/') {
            match part {
                "" | "." => {}
                ".." => match parts.pop() {
                    Some(_) => {}
                    None => return Err(fatal(format!("{given}: '{given}' is outside repository"))),
                },
                p => parts.push(p),
            }
        }
        Ok(Spec {
            path: parts.join("/").into_bytes(),
            dir_only: given.ends_with('/') && !parts.is_empty(),
        })
    }

    /// Whether this pathspec names something in `tree`.
    pub fn exists(&self, odb: &ObjectStore, tree: &oid) -> Result<bool> {
        if self.path.is_empty() {
            let mut buf = Vec::new();
            let data = odb.read(tree, &mut buf)?;
            return Ok(
                gix_object::TreeRefIter::from_bytes(data.data, gix_hash::Kind::Sha1)
                    .next()
                    .is_some(),
            );
        }
        Ok(match lookup(odb, tree, &self.path)? {
            Some((_, is_tree)) => is_tree || !self.dir_only,
            None => false,
        })
    }

    fn under(&self, path: &[u8]) -> bool {
        self.path.is_empty()
            || (path.len() > self.path.len()
                && path.starts_with(&self.path)
                && path[self.path.len()] == b'/')
    }

    /// Whether a file (or link) at `path` is archived.
    fn matches_file(&self, path: &[u8]) -> bool {
        self.under(path) || (!self.dir_only && path == self.path.as_slice())
    }

    /// Whether a directory (or gitlink) at `path` is archived (as a
    /// whole, or because something under it is).
    fn reaches_dir(&self, path: &[u8]) -> bool {
        path == self.path.as_slice()
            || self.under(path)
            || (self.path.len() > path.len()
                && self.path.starts_with(path)
                && self.path[path.len()] == b'/')
    }
}

/// Words in a `.gitattributes` file that may make git's archive differ
/// from the blobs as stored, in any format. With no attribute config on the
/// server (as under `git http-backend`), `text`, `text=auto`, `-text`,
/// `crlf`, `eol=lf`, `filter=…` (no driver configured), `merge`,
/// `linguist-*` and the like leave the bytes alone: output conversion
/// happens only towards CRLF.
pub(crate) const ATTRIBUTES_CHANGING: &[&[u8]] =
    &[b"export-", b"ident", b"eol=crlf", b"encoding", b"[attr]"];

/// [`ATTRIBUTES_CHANGING`], and for zips the words that decide whether
/// git flags an entry as text or binary (its diff driver).
pub(crate) const ZIP_ATTRIBUTES_CHANGING: &[&[u8]] = &[
    b"export-",
    b"ident",
    b"eol=crlf",
    b"encoding",
    b"[attr]",
    b"diff",
    b"binary",
];

/// Walks a tree and hands its entries, in git's order, to `emit`.
pub(crate) struct Walk<'a> {
    pub(crate) odb: &'a ObjectStore,
    pub(crate) specs: &'a [Spec],
    /// Refuse trees whose `.gitattributes` mention one of these words
    /// (attributes that would change this archive; none: no check).
    pub(crate) refused_attributes: &'static [&'static [u8]],
    /// Directories entered whose entry is not written yet.
    pending: Vec<(Vec<u8>, ObjectId)>,
}

type Emit<'e> = dyn FnMut(&Entry<'_>) -> Result<()> + 'e;

impl<'a> Walk<'a> {
    /// A walk over `odb` limited to `specs` (none: everything).
    pub(crate) fn new(
        odb: &'a ObjectStore,
        specs: &'a [Spec],
        refused_attributes: &'static [&'static [u8]],
    ) -> Self {
        Walk {
            odb,
            specs,
            refused_attributes,
            pending: Vec::new(),
        }
    }

    /// Walk `tree`, whose entries' paths start with `base`.
    pub(crate) fn run(
        &mut self,
        tree: &oid,
        base: &mut Vec<u8>,
        depth: usize,
        emit: &mut Emit<'_>,
    ) -> Result<()> {
        if depth > MAX_TREE_DEPTH {
            return Err(fatal(format!(
                "exceeded maximum tree depth of {MAX_TREE_DEPTH}"
            )));
        }
        let mut buf = Vec::new();
        let data = self.odb.read(tree, &mut buf)?;
        if data.kind != Kind::Tree {
            return Err(corrupt(
                tree,
                format!("expected a tree, found a {}", data.kind),
            ));
        }
        let mut entries = Vec::new();
        for entry in gix_object::TreeRefIter::from_bytes(data.data, gix_hash::Kind::Sha1) {
            let entry = entry.map_err(|e| corrupt(tree, e))?;
            entries.push((
                entry.mode.kind(),
                entry.filename.to_vec(),
                entry.oid.to_owned(),
            ));
        }
        drop(buf);
        if !self.refused_attributes.is_empty() {
            self.check_attributes_in(&entries)?;
        }
        for (kind, name, id) in entries {
            let len = base.len();
            base.extend_from_slice(&name);
            let result = self.visit(kind, &id, base, depth, emit);
            base.truncate(len);
            result?;
        }
        Ok(())
    }

    fn visit(
        &mut self,
        kind: GixKind,
        id: &ObjectId,
        path: &mut Vec<u8>,
        depth: usize,
        emit: &mut Emit<'_>,
    ) -> Result<()> {
        let specs = self.specs;
        let dir_like = matches!(kind, GixKind::Tree | GixKind::Commit);
        let wanted = specs.is_empty()
            || specs.iter().any(|s| {
                if dir_like {
                    s.reaches_dir(path)
                } else {
                    s.matches_file(path)
                }
            });
        if !wanted {
            return Ok(());
        }
        if kind == GixKind::Tree {
            self.pending.push((path.clone(), id.to_owned()));
            path.push(b'/');
            let result = self.run(id, path, depth + 1, emit);
            path.pop();
            if self.pending.last().is_some_and(|(p, _)| p == path) {
                self.pending.pop();
            }
            return result;
        }
        self.flush_pending(emit)?;
        let mut data = Vec::new();
        let (entry_kind, mode) = match kind {
            GixKind::Commit => {
                path.push(b'/');
                (EntryKind::Gitlink, 0o160000)
            }
            GixKind::Link => (EntryKind::Link, 0o120000),
            GixKind::BlobExecutable => (EntryKind::File, 0o100755),
            _ => (EntryKind::File, 0o100644),
        };
        if entry_kind != EntryKind::Gitlink {
            if self.odb.size(id)? > MAX_FILE_BYTES {
                return Err(Error::Unsupported(format!(
                    "archiving files over {MAX_FILE_BYTES} bytes ({})",
                    String::from_utf8_lossy(path)
                )));
            }
            self.odb.read(id, &mut data)?;
        }
        let result = emit(&Entry {
            kind: entry_kind,
            mode,
            path,
            id: id.to_owned(),
            data: &data,
        });
        if entry_kind == EntryKind::Gitlink {
            path.pop();
        }
        result
    }

    /// Write the entries of the directories entered so far, outermost first.
    fn flush_pending(&mut self, emit: &mut Emit<'_>) -> Result<()> {
        for (mut path, id) in std::mem::take(&mut self.pending) {
            path.push(b'/');
            emit(&Entry {
                kind: EntryKind::Dir,
                mode: 0o040000,
                path: &path,
                id,
                data: &[],
            })?;
        }
        Ok(())
    }

    /// `.gitattributes` can make git drop (`export-ignore`) or rewrite
    /// (`export-subst`, `ident`, `eol=crlf`, `working-tree-encoding`)
    /// files, and, in a zip, flag them as text or binary (`diff`,
    /// `binary`). This node does not apply attributes, so it refuses such a
    /// tree rather than send an archive that differs from git's (see
    /// [`ATTRIBUTES_CHANGING`]).
    fn check_attributes_in(&self, entries: &[(GixKind, Vec<u8>, ObjectId)]) -> Result<()> {
        for (kind, name, id) in entries {
            if name != b".gitattributes" || matches!(kind, GixKind::Tree | GixKind::Commit) {
                continue;
            }
            let mut buf = Vec::new();
            let data = self.odb.read(id, &mut buf)?.data;
            if let Some(w) = self
                .refused_attributes
                .iter()
                .find(|w| data.windows(w.len()).any(|x| x == **w))
            {
                return Err(Error::Unsupported(format!(
                    "archives of trees whose .gitattributes mention {:?} (this node does not apply export-ignore, export-subst, ident, eol=crlf, working-tree-encoding, nor, in zips, diff and binary)",
                    String::from_utf8_lossy(w)
                )));
            }
        }
        Ok(())
    }
}

//! Commits: their parsed headers and message, and bounded history walks.

use std::collections::{BinaryHeap, HashSet};

use gix_hash::{oid, ObjectId};

use crate::error::{Error, Result};
use crate::odb::{ObjectStore, HASH};

/// A person and a time, from a commit's `author` or `committer` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Name, lossily decoded.
    pub name: String,
    /// Email, lossily decoded.
    pub email: String,
    /// Seconds since the epoch.
    pub time: i64,
}

/// A commit as a page shows it.
#[derive(Debug, Clone)]
pub struct Commit {
    /// Its id.
    pub id: ObjectId,
    /// Its root tree.
    pub tree: ObjectId,
    /// Parents, first parent first.
    pub parents: Vec<ObjectId>,
    /// Who wrote the change.
    pub author: Signature,
    /// Who committed it.
    pub committer: Signature,
    /// The message, lossily decoded.
    pub message: String,
}

impl Commit {
    /// The message's first line.
    pub fn summary(&self) -> &str {
        self.message.lines().next().unwrap_or("")
    }
}

/// A [`Signature`] from gitoxide's parsed one (a macro: the type is
/// gix-actor's, not a dependency of this crate).
macro_rules! signature {
    ($s:expr) => {
        Signature {
            name: String::from_utf8_lossy($s.name).into_owned(),
            email: String::from_utf8_lossy($s.email).into_owned(),
            time: $s.seconds(),
        }
    };
}

/// Read and parse commit `id` (after peeling tags).
pub fn read_commit(store: &ObjectStore, id: &oid) -> Result<Commit> {
    let mut buf = Vec::new();
    let (id, kind) = store.peel(id, &mut buf)?;
    if kind != gix_object::Kind::Commit {
        return Err(corrupt(&id, format!("expected a commit, found a {kind}")));
    }
    let data = store.read(&id, &mut buf)?;
    let c = gix_object::CommitRef::from_bytes(data.data, HASH)
        .map_err(|e| corrupt(&id, e.to_string()))?;
    let author = c.author().map_err(|e| corrupt(&id, e.to_string()))?;
    let committer = c.committer().map_err(|e| corrupt(&id, e.to_string()))?;
    let author = signature!(author);
    let committer = signature!(committer);
    let parents = c.parents().collect();
    Ok(Commit {
        id,
        tree: c.tree(),
        parents,
        author,
        committer,
        message: String::from_utf8_lossy(c.message).into_owned(),
    })
}

/// Commits reachable from `start`, newest committer time first (git log's
/// default order for a linear history), skipping the first `skip` and
/// returning at most `max`. At most `skip + max` commits are visited.
pub fn walk(store: &ObjectStore, start: &oid, skip: usize, max: usize) -> Result<Vec<Commit>> {
    let mut buf = Vec::new();
    let (start, kind) = store.peel(start, &mut buf)?;
    if kind != gix_object::Kind::Commit {
        return Ok(Vec::new());
    }
    let mut queue = BinaryHeap::new();
    let mut seen = HashSet::new();
    let info = store.commit(&start, &mut buf)?;
    queue.push((info.time, start));
    seen.insert(start);
    let mut out = Vec::new();
    let mut visited = 0usize;
    while let Some((_, id)) = queue.pop() {
        if visited >= skip {
            out.push(read_commit(store, &id)?);
            if out.len() >= max {
                break;
            }
        }
        visited += 1;
        let info = store.commit(&id, &mut buf)?;
        for parent in info.parents {
            if !seen.insert(parent) {
                continue;
            }
            // A shallow or partial history may lack parents: the walk stops there.
            match store.commit(&parent, &mut buf) {
                Ok(p) => queue.push((p.time, parent)),
                Err(Error::MissingObject(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(out)
}

fn corrupt(id: &oid, reason: String) -> Error {
    Error::CorruptObject {
        id: id.to_owned(),
        reason,
    }
}

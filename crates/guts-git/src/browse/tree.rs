//! Trees and blobs at a path.

use gix_hash::{oid, ObjectId};

use crate::error::{Error, Result};
use crate::odb::{ObjectStore, HASH};

/// What a tree entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Tree,
    /// A regular file.
    Blob,
    /// An executable file.
    Executable,
    /// A symbolic link (its target is the blob's content).
    Link,
    /// A submodule commit.
    Submodule,
}

impl EntryKind {
    fn of(mode: gix_object::tree::EntryMode) -> Self {
        match mode.value() {
            0o040000 => EntryKind::Tree,
            0o120000 => EntryKind::Link,
            0o160000 => EntryKind::Submodule,
            0o100755 => EntryKind::Executable,
            _ => EntryKind::Blob,
        }
    }

    /// Whether the entry's object is a blob (file or link).
    pub fn is_blob(self) -> bool {
        matches!(
            self,
            EntryKind::Blob | EntryKind::Executable | EntryKind::Link
        )
    }
}

/// One entry of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The file name, as stored (not necessarily UTF-8).
    pub name: Vec<u8>,
    /// What it is.
    pub kind: EntryKind,
    /// Its object.
    pub id: ObjectId,
}

/// A tree's entries, directories first, then by name; at most `max`.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// The entries shown.
    pub entries: Vec<Entry>,
    /// Entries in the tree (shown or not).
    pub total: usize,
}

/// The entries of tree `id`, directories first, at most `max` of them.
pub fn list(store: &ObjectStore, id: &oid, max: usize) -> Result<Listing> {
    let mut buf = Vec::new();
    let mut entries = read_tree(store, id, &mut buf)?;
    let total = entries.len();
    entries.sort_by(|a, b| {
        (a.kind != EntryKind::Tree, &a.name).cmp(&(b.kind != EntryKind::Tree, &b.name))
    });
    entries.truncate(max);
    Ok(Listing { entries, total })
}

/// Every entry of tree `id`, in stored order.
pub fn read_tree(store: &ObjectStore, id: &oid, buf: &mut Vec<u8>) -> Result<Vec<Entry>> {
    let data = store.read(id, buf)?;
    if data.kind != gix_object::Kind::Tree {
        return Err(corrupt(
            id,
            format!("expected a tree, found a {}", data.kind),
        ));
    }
    gix_object::TreeRefIter::from_bytes(data.data, HASH)
        .map(|e| {
            let e = e.map_err(|err| corrupt(id, err.to_string()))?;
            Ok(Entry {
                name: e.filename.to_vec(),
                kind: EntryKind::of(e.mode),
                id: e.oid.to_owned(),
            })
        })
        .collect()
}

/// The entry at `path` (checked with [`super::check_path`]) under root tree
/// `root`; `""` is the root itself. `None` if no such entry.
pub fn lookup(store: &ObjectStore, root: &oid, path: &str) -> Result<Option<Entry>> {
    let mut current = Entry {
        name: Vec::new(),
        kind: EntryKind::Tree,
        id: root.to_owned(),
    };
    if path.is_empty() {
        return Ok(Some(current));
    }
    let mut buf = Vec::new();
    for part in path.split('/') {
        if current.kind != EntryKind::Tree {
            return Ok(None);
        }
        let entries = read_tree(store, &current.id, &mut buf)?;
        match entries.into_iter().find(|e| e.name == part.as_bytes()) {
            Some(e) => current = e,
            None => return Ok(None),
        }
    }
    Ok(Some(current))
}

/// A blob's content, cut at a cap.
#[derive(Debug, Clone)]
pub struct Blob {
    /// The first bytes (all of them unless `size` is larger).
    pub data: Vec<u8>,
    /// The blob's full size.
    pub size: u64,
}

impl Blob {
    /// Whether `data` holds less than the whole blob.
    pub fn truncated(&self) -> bool {
        (self.data.len() as u64) < self.size
    }
}

/// Blob `id`, its content cut after `max` bytes. Blobs larger than
/// `max_read` are not read at all (`data` is then empty), so one request
/// never inflates more than `max_read` bytes.
pub fn read_blob(store: &ObjectStore, id: &oid, max: usize, max_read: u64) -> Result<Blob> {
    let size = store.size(id)?;
    if size > max_read {
        return Ok(Blob {
            data: Vec::new(),
            size,
        });
    }
    let mut buf = Vec::new();
    let data = store.read(id, &mut buf)?;
    if data.kind != gix_object::Kind::Blob {
        return Err(corrupt(
            id,
            format!("expected a blob, found a {}", data.kind),
        ));
    }
    let size = data.data.len() as u64;
    let data = data.data[..data.data.len().min(max)].to_vec();
    Ok(Blob { data, size })
}

fn corrupt(id: &oid, reason: String) -> Error {
    Error::CorruptObject {
        id: id.to_owned(),
        reason,
    }
}

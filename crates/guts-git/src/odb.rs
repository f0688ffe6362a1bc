//! Read access to a repository's object database (its pack files).
//!
//! A thin layer over `gix-odb`: open the packs under `objects/`, look objects
//! up, and parse the few fields that history walks need (commit parents and
//! tree, tag targets, tree entries) without allocating whole parsed objects.

use std::path::Path;
use std::sync::Arc;

use gix_hash::{oid, ObjectId};
use gix_object::Find as _;

use crate::error::{Error, Result};

/// The hash kind every repository of this node uses.
pub const HASH: gix_hash::Kind = gix_hash::Kind::Sha1;

/// A handle on one repository's object database.
///
/// Cheap to clone; each clone keeps its own small delta-base cache.
#[derive(Clone)]
pub struct ObjectStore {
    handle: gix_odb::Handle,
    /// The same store, never re-reading the pack directory on a miss: for
    /// lookups of ids a client names that we likely do not have (`have`
    /// lines), where a miss must cost a hash lookup, not a directory scan.
    probe: gix_odb::Handle,
    /// A quarantined pack whose objects are visible through this handle only.
    overlay: Option<Arc<gix_pack::Bundle>>,
    /// The commit-graph maintenance wrote, if any: commits it holds are
    /// read from it (no inflation), with their generation numbers.
    graph: Option<Arc<crate::commit_graph::CommitGraph>>,
}

/// The parts of a commit that history walks need.
#[derive(Debug, Clone)]
pub struct CommitInfo {
    /// The root tree.
    pub tree: ObjectId,
    /// Parent commits, first parent first.
    pub parents: Vec<ObjectId>,
    /// Committer time, seconds since the epoch.
    pub time: i64,
    /// Topological level (git's generation number v1), when the commit is
    /// in the commit-graph: a commit can only reach commits of a lower one.
    pub generation: Option<u32>,
}

impl ObjectStore {
    /// Open the object database in `objects_dir` (the directory that holds `pack/`).
    pub fn open(objects_dir: &Path) -> Result<Self> {
        let mut handle = gix_odb::at(objects_dir, HASH)?;
        handle.set_pack_cache(|| Box::new(gix_pack::cache::lru::StaticLinkedList::<64>::default()));
        handle.prevent_pack_unload();
        let mut probe = handle.clone();
        probe.refresh_never();
        Ok(ObjectStore {
            handle,
            probe,
            overlay: None,
            graph: None,
        })
    }

    /// A view that also sees the objects of a quarantined pack (for checks
    /// made before the pack is published).
    pub fn with_overlay(&self, bundle: Arc<gix_pack::Bundle>) -> Self {
        ObjectStore {
            handle: self.handle.clone(),
            probe: self.probe.clone(),
            overlay: Some(bundle),
            graph: self.graph.clone(),
        }
    }

    fn overlay_has(&self, id: &oid) -> bool {
        self.overlay
            .as_ref()
            .is_some_and(|b| b.index.lookup(id).is_some())
    }

    /// Whether commits are read through a commit-graph.
    pub fn has_graph(&self) -> bool {
        self.graph.is_some()
    }

    /// Read commits through `graph` where it has them.
    pub fn with_graph(mut self, graph: Option<Arc<crate::commit_graph::CommitGraph>>) -> Self {
        self.graph = graph;
        self
    }

    /// The underlying gitoxide handle, for pack generation and thin-pack completion.
    pub fn handle(&self) -> &gix_odb::Handle {
        &self.handle
    }

    /// Whether the object exists.
    pub fn contains(&self, id: &oid) -> bool {
        self.overlay_has(id) || gix_pack::Find::contains(&self.handle, id)
    }

    /// Read an object into `buf`; `None` if it does not exist.
    pub fn try_read<'a>(
        &self,
        id: &oid,
        buf: &'a mut Vec<u8>,
    ) -> Result<Option<gix_object::Data<'a>>> {
        if let Some(bundle) = self.overlay.as_ref().filter(|_| self.overlay_has(id)) {
            let mut inflate = gix_zlib::Inflate::default();
            return bundle
                .find(id, buf, &mut inflate, &mut gix_pack::cache::Never)
                .map(|found| found.map(|(data, _)| data))
                .map_err(|e| Error::pack(&format!("reading quarantined object {id}"), e));
        }
        self.handle
            .try_find(id, buf)
            .map_err(|e| Error::pack(&format!("reading object {id}"), e))
    }

    /// Read an object that must exist.
    pub fn read<'a>(&self, id: &oid, buf: &'a mut Vec<u8>) -> Result<gix_object::Data<'a>> {
        self.try_read(id, buf)?
            .ok_or_else(|| Error::MissingObject(id.to_owned()))
    }

    /// The size of an object's content, read from its pack header when possible.
    pub fn size(&self, id: &oid) -> Result<u64> {
        if !self.overlay_has(id) {
            if let Some(h) = gix_object::FindHeader::try_header(&self.handle, id)
                .map_err(|e| Error::pack(&format!("reading header of {id}"), e))?
            {
                return Ok(h.size);
            }
        }
        let mut buf = Vec::new();
        Ok(self.read(id, &mut buf)?.data.len() as u64)
    }

    /// The kind of an object from its pack entry header, without re-reading
    /// the pack directory when it is not found: `None` may then also mean
    /// "in a pack published after this store was opened". For ids a client
    /// names (haves), where a false "unknown" only costs a few more objects.
    pub fn probe_kind(&self, id: &oid) -> Result<Option<gix_object::Kind>> {
        if self.overlay_has(id) {
            let mut buf = Vec::new();
            return self.kind(id, &mut buf);
        }
        Ok(gix_object::FindHeader::try_header(&self.probe, id)
            .map_err(|e| Error::pack(&format!("reading header of {id}"), e))?
            .map(|h| h.kind))
    }

    /// The kind of an object, or `None` if it does not exist.
    pub fn kind(&self, id: &oid, buf: &mut Vec<u8>) -> Result<Option<gix_object::Kind>> {
        Ok(self.try_read(id, buf)?.map(|d| d.kind))
    }

    /// Parse a commit's tree, parents and committer time.
    pub fn commit(&self, id: &oid, buf: &mut Vec<u8>) -> Result<CommitInfo> {
        if let Some(entry) = self
            .graph
            .as_ref()
            .map(|g| g.get(id))
            .transpose()?
            .flatten()
        {
            return Ok(CommitInfo {
                tree: entry.tree,
                parents: entry.parents,
                time: entry.time,
                generation: Some(entry.generation),
            });
        }
        let data = self.read(id, buf)?;
        if data.kind != gix_object::Kind::Commit {
            return Err(corrupt(
                id,
                format!("expected a commit, found a {}", data.kind),
            ));
        }
        parse_commit(id, data.data)
    }

    /// Follow annotated tags until a non-tag object; returns it and its kind.
    pub fn peel(&self, id: &oid, buf: &mut Vec<u8>) -> Result<(ObjectId, gix_object::Kind)> {
        let mut current = id.to_owned();
        for _ in 0..crate::limits::MAX_TAG_CHAIN {
            let data = self.read(&current, buf)?;
            if data.kind != gix_object::Kind::Tag {
                return Ok((current, data.kind));
            }
            current = tag_target(&current, data.data)?;
        }
        Err(corrupt(id, "tag chain too long".into()))
    }
}

/// Parse commit fields from raw commit data.
pub fn parse_commit(id: &oid, data: &[u8]) -> Result<CommitInfo> {
    use gix_object::commit::ref_iter::Token;
    let mut tree = None;
    let mut parents = Vec::new();
    let mut time = 0;
    for token in gix_object::CommitRefIter::from_bytes(data, HASH) {
        match token.map_err(|e| corrupt(id, e.to_string()))? {
            Token::Tree { id } => tree = Some(id),
            Token::Parent { id } => parents.push(id),
            Token::Committer { signature } => {
                time = signature.seconds();
                break;
            }
            _ => {}
        }
    }
    Ok(CommitInfo {
        tree: tree.ok_or_else(|| corrupt(id, "commit has no tree".into()))?,
        parents,
        time,
        generation: None,
    })
}

/// The object an annotated tag points at.
pub fn tag_target(id: &oid, data: &[u8]) -> Result<ObjectId> {
    gix_object::TagRefIter::from_bytes(data, HASH)
        .target_id()
        .map_err(|e| corrupt(id, e.to_string()))
}

/// Call `f(entry_id, is_tree)` for every entry of a tree, skipping gitlinks (submodule commits).
pub fn for_each_tree_entry(id: &oid, data: &[u8], mut f: impl FnMut(ObjectId, bool)) -> Result<()> {
    for entry in gix_object::TreeRefIter::from_bytes(data, HASH) {
        let entry = entry.map_err(|e| corrupt(id, e.to_string()))?;
        if entry.mode.is_commit() {
            continue;
        }
        f(entry.oid.to_owned(), entry.mode.is_tree());
    }
    Ok(())
}

fn corrupt(id: &oid, reason: String) -> Error {
    Error::CorruptObject {
        id: id.to_owned(),
        reason,
    }
}

//! Receiving a pushed pack: stream to a quarantine, index, check, then publish.
//!
//! The pack is streamed from the request straight into a temporary directory
//! `objects/incoming-*` that fetches never look at, and indexed there by
//! gix-pack (which verifies the trailing checksum, resolves every delta and
//! appends the bases of a thin pack from the stored objects). Only after the
//! connectivity check passes are the `.pack` and `.idx` moved into
//! `objects/pack`; the caller then updates refs. If anything fails, or the
//! process dies, the quarantine is removed and the repository is unchanged.
//!
//! Connectivity rests on an invariant: every object in the store has all the
//! objects it references in the store too. A new pack is admitted only if each
//! object it references is in the new pack or already stored, and every new
//! ref tip is in one of the two. By induction the store stays closed, so every
//! ref is fully connected, without walking the history that was already there.

use std::collections::HashSet;
use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use gix_hash::ObjectId;

use crate::error::{Error, Result};
use crate::odb::{for_each_tree_entry, parse_commit, tag_target, ObjectStore, HASH};

/// A pushed pack, indexed and waiting in quarantine.
pub struct Quarantine {
    dir: PathBuf,
    bundle: Option<Arc<gix_pack::Bundle>>,
    pack_path: Option<PathBuf>,
    index_path: Option<PathBuf>,
    /// Objects in the pack, bases appended for a thin pack included.
    pub objects: u32,
    /// Bytes read from the client.
    pub bytes_received: u64,
}

/// Read a pack from `input` (at most `max_bytes`) into a new quarantine
/// directory under `objects_dir`. Bases for thin-pack deltas come from `odb`.
pub fn receive(
    objects_dir: &Path,
    odb: &ObjectStore,
    input: &mut dyn BufRead,
    max_bytes: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<Quarantine> {
    let dir = objects_dir.join(format!(
        "incoming-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir)?;
    let mut q = Quarantine {
        dir,
        bundle: None,
        pack_path: None,
        index_path: None,
        objects: 0,
        bytes_received: 0,
    };
    let mut limited = LimitedReader {
        inner: input,
        remaining: max_bytes,
        limit: max_bytes,
        read: 0,
        progress,
        next_report: PROGRESS_EVERY,
    };
    let mut buffered = io::BufReader::with_capacity(64 * 1024, &mut limited);
    let outcome = gix_pack::Bundle::write_to_directory(
        &mut buffered,
        Some(&q.dir),
        &mut gix_utils::progress::Discard,
        &AtomicBool::new(false),
        Some(odb.handle().clone()),
        HASH,
        gix_pack::bundle::write::Options {
            thread_limit: None,
            iteration_mode: gix_pack::data::input::Mode::Verify,
            index_version: gix_pack::index::Version::V2,
            alloc_limit_bytes: Some(crate::limits::MAX_OBJECT_BYTES),
            compression: gix_zlib::Compression::BEST_SPEED,
        },
    );
    drop(buffered);
    q.bytes_received = limited.read;
    if limited.remaining == 0 && limited.hit_limit() {
        return Err(Error::TooLarge(format!(
            "pack exceeds this node's limit of {max_bytes} bytes"
        )));
    }
    let outcome = outcome.map_err(|e| Error::pack("invalid pack", e))?;
    q.objects = outcome.index.num_objects;
    q.pack_path = outcome.data_path;
    q.index_path = outcome.index_path;
    if let Some(idx) = &q.index_path {
        if q.objects > 0 {
            q.bundle = Some(Arc::new(
                gix_pack::Bundle::at(idx, HASH)
                    .map_err(|e| Error::pack("opening received pack", e))?,
            ));
        }
    }
    Ok(q)
}

impl Quarantine {
    /// A view of `odb` that also sees the quarantined objects.
    pub fn overlay(&self, odb: &ObjectStore) -> ObjectStore {
        match &self.bundle {
            Some(b) => odb.with_overlay(Arc::clone(b)),
            None => odb.clone(),
        }
    }

    /// Whether the quarantined pack holds `id`.
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.bundle
            .as_ref()
            .is_some_and(|b| b.index.lookup(id).is_some())
    }

    /// Check that every object the pack references, and every one of `tips`,
    /// is in the pack or in `odb`. Errors name the first missing object.
    pub fn check_connectivity(&self, odb: &ObjectStore, tips: &[ObjectId]) -> Result<()> {
        let mut outside: HashSet<ObjectId> = HashSet::new();
        if let Some(bundle) = &self.bundle {
            let mut buf = Vec::new();
            let mut inflate = gix_zlib::Inflate::default();
            let mut cache = gix_pack::cache::lru::StaticLinkedList::<64>::default();
            for idx in 0..bundle.index.num_objects() {
                let id = bundle.index.oid_at_index(idx).to_owned();
                let (data, _) = bundle
                    .get_object_by_index(idx, &mut buf, &mut inflate, &mut cache)
                    .map_err(|e| Error::pack("decoding received object", e))?;
                let mut note = |r: ObjectId| {
                    if bundle.index.lookup(r).is_none() {
                        outside.insert(r);
                    }
                };
                match data.kind {
                    gix_object::Kind::Commit => {
                        let info = parse_commit(&id, data.data)?;
                        note(info.tree);
                        info.parents.into_iter().for_each(&mut note);
                    }
                    gix_object::Kind::Tree => for_each_tree_entry(&id, data.data, |e, _| note(e))?,
                    gix_object::Kind::Tag => note(tag_target(&id, data.data)?),
                    gix_object::Kind::Blob => {}
                }
            }
        }
        for tip in tips {
            if !self.contains(tip) {
                outside.insert(*tip);
            }
        }
        let mut missing: Vec<_> = outside.into_iter().filter(|id| !odb.contains(id)).collect();
        missing.sort();
        match missing.first() {
            None => Ok(()),
            Some(first) => Err(Error::NotConnected {
                missing: missing.len(),
                example: *first,
            }),
        }
    }

    /// Make the pack visible to fetches: sync it to disk and move it into `objects/pack`.
    pub fn publish(mut self, objects_dir: &Path) -> Result<()> {
        let pack_dir = objects_dir.join("pack");
        if let (Some(pack), Some(idx)) = (self.pack_path.take(), self.index_path.take()) {
            if self.objects > 0 {
                self.bundle = None;
                for p in [&pack, &idx] {
                    std::fs::File::open(p)?.sync_all()?;
                }
                // The index is what makes a pack visible, so it moves last.
                for p in [&pack, &idx] {
                    let name = p
                        .file_name()
                        .ok_or_else(|| Error::Pack("pack file without a name".into()))?;
                    std::fs::rename(p, pack_dir.join(name))?;
                }
                std::fs::File::open(&pack_dir)?.sync_all()?;
            }
        }
        Ok(())
    }
}

impl Drop for Quarantine {
    fn drop(&mut self) {
        self.bundle = None;
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove push quarantine");
        }
    }
}

/// Report receive progress every this many bytes.
const PROGRESS_EVERY: u64 = 4 * 1024 * 1024;

struct LimitedReader<'a> {
    inner: &'a mut dyn BufRead,
    remaining: u64,
    limit: u64,
    read: u64,
    progress: &'a mut dyn FnMut(u64),
    next_report: u64,
}

impl LimitedReader<'_> {
    fn hit_limit(&self) -> bool {
        self.read >= self.limit
    }
}

impl Read for LimitedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Err(io::Error::other("pack size limit exceeded"));
        }
        let max = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.remaining -= n as u64;
        self.read += n as u64;
        if self.read >= self.next_report {
            self.next_report = self.read + PROGRESS_EVERY;
            (self.progress)(self.read);
        }
        Ok(n)
    }
}

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
//!
//! The work a pack can ask for is bounded by [`PackLimits`]: as the bytes
//! stream in, `scan` reads every entry's declared size (and each delta's
//! result size) and refuses the pack before a too-large object is inflated,
//! before the pack's inflated total exceeds its budget, and before an
//! offset-delta chain gets too deep. After indexing, `connect` learns each
//! object's kind from the pack's entry headers alone (a delta has its base's
//! kind, resolved once per chain), checks chain depths again (ref-deltas
//! included), and the connectivity check inflates only the commits, trees
//! and tags, each once, walking their delta trees: blobs need only exist.

mod connect;
mod scan;

use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use gix_hash::ObjectId;

use crate::error::{Error, Result};
use crate::limits;
use crate::odb::{ObjectStore, HASH};

/// Bounds on the work one received pack may ask of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackLimits {
    /// Largest pack, in bytes as received.
    pub max_pack_bytes: u64,
    /// Largest object: an entry's inflated size, or the size of the object a
    /// delta makes ([`limits::DEFAULT_MAX_OBJECT_BYTES`]).
    pub max_object_bytes: u64,
    /// Most bytes the pack may inflate to: every entry's inflated size plus
    /// each delta's result ([`limits::DEFAULT_MAX_INFLATED_BYTES`]).
    pub max_inflated_bytes: u64,
    /// Deepest delta chain ([`limits::DEFAULT_MAX_DELTA_DEPTH`]).
    pub max_delta_depth: u32,
}

impl PackLimits {
    /// The defaults of [`crate::limits`].
    pub const DEFAULT: PackLimits = PackLimits::for_max_pack_bytes(limits::DEFAULT_MAX_PACK_BYTES);

    /// The default limits for a node whose pack size limit is `max_pack_bytes`
    /// (the inflated budget follows it, see [`limits::inflated_budget`]).
    pub const fn for_max_pack_bytes(max_pack_bytes: u64) -> Self {
        PackLimits {
            max_pack_bytes,
            max_object_bytes: limits::DEFAULT_MAX_OBJECT_BYTES,
            max_inflated_bytes: limits::inflated_budget(max_pack_bytes),
            max_delta_depth: limits::DEFAULT_MAX_DELTA_DEPTH,
        }
    }
}

impl Default for PackLimits {
    fn default() -> Self {
        PackLimits::DEFAULT
    }
}

/// A pushed pack, indexed and waiting in quarantine.
pub struct Quarantine {
    dir: PathBuf,
    bundle: Option<Arc<gix_pack::Bundle>>,
    pack_path: Option<PathBuf>,
    index_path: Option<PathBuf>,
    /// The pack's commits, trees and tags (pack offset, index position).
    non_blobs: Vec<connect::Entry>,
    alloc_limit: Option<usize>,
    /// Objects in the pack, bases appended for a thin pack included.
    pub objects: u32,
    /// Bytes read from the client.
    pub bytes_received: u64,
    /// What the pack inflates to (entries and delta results), as declared.
    pub bytes_inflated: u64,
}

/// Read a pack from `input` into a new quarantine directory under
/// `objects_dir`, within `limits`. Bases for thin-pack deltas come from `odb`.
/// On error nothing is left behind.
pub fn receive(
    objects_dir: &Path,
    odb: &ObjectStore,
    input: &mut dyn BufRead,
    limits: &PackLimits,
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
        non_blobs: Vec::new(),
        alloc_limit: Some(usize::try_from(limits.max_object_bytes).unwrap_or(usize::MAX)),
        objects: 0,
        bytes_received: 0,
        bytes_inflated: 0,
    };
    let mut intake = Intake {
        inner: input,
        remaining: limits.max_pack_bytes,
        read: 0,
        progress,
        next_report: PROGRESS_EVERY,
        scanner: scan::Scanner::new(*limits),
        refusal: None,
    };
    let outcome = q.index(&mut intake, odb);
    q.bytes_received = intake.read;
    q.bytes_inflated = intake.scanner.inflated();
    if let Some(refusal) = intake.refusal.take() {
        return Err(refusal);
    }
    if intake.read >= limits.max_pack_bytes {
        return Err(Error::TooLarge(format!(
            "pack exceeds this node's limit of {} bytes",
            limits.max_pack_bytes
        )));
    }
    let outcome = outcome?;
    q.objects = outcome.index.num_objects;
    q.pack_path = outcome.data_path;
    q.index_path = outcome.index_path;
    if let Some(idx) = &q.index_path {
        if q.objects > 0 {
            let bundle = gix_pack::Bundle::at(idx, HASH)
                .map_err(|e| Error::pack("opening received pack", e))?;
            map_only_what_is_read(&bundle.pack);
            q.non_blobs = connect::classify(&bundle, limits.max_delta_depth)?;
            q.bundle = Some(Arc::new(bundle));
        }
    }
    Ok(q)
}

impl Quarantine {
    /// Stream the pack from `intake` into the quarantine and index it.
    fn index(
        &self,
        intake: &mut Intake<'_>,
        odb: &ObjectStore,
    ) -> Result<gix_pack::bundle::write::Outcome> {
        let mut buffered = io::BufReader::with_capacity(64 * 1024, intake);
        // Ref-delta bases are looked up in the store (thin packs); a pack of
        // many ref-deltas on bases it holds itself misses every time, and a
        // miss must not make the store look for new packs on disk.
        let mut thin_bases = odb.handle().clone();
        thin_bases.refresh_never();
        gix_pack::Bundle::write_to_directory(
            &mut buffered,
            Some(&self.dir),
            &mut gix_utils::progress::Discard,
            &AtomicBool::new(false),
            Some(thin_bases),
            HASH,
            gix_pack::bundle::write::Options {
                thread_limit: None,
                iteration_mode: gix_pack::data::input::Mode::Verify,
                index_version: gix_pack::index::Version::V2,
                alloc_limit_bytes: self.alloc_limit,
                compression: gix_zlib::Compression::BEST_SPEED,
            },
        )
        .map_err(|e| Error::pack("invalid pack", e))
    }

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
    ///
    /// Only commits, trees and tags are inflated, each once (see the `connect` module).
    pub fn check_connectivity(&self, odb: &ObjectStore, tips: &[ObjectId]) -> Result<()> {
        let mut outside = match &self.bundle {
            Some(bundle) => connect::referenced_outside(bundle, &self.non_blobs, self.alloc_limit)?,
            None => Default::default(),
        };
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

    /// Call `f` with the content of each blob of the pack of at most
    /// `max_size` bytes, until it returns false. A blob's size comes from
    /// its entry header (a delta's from the first bytes of its data), so
    /// larger blobs are never inflated; commits, trees and tags are skipped
    /// without reading them.
    pub fn for_each_small_blob(
        &self,
        max_size: u64,
        f: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<()> {
        let Some(bundle) = &self.bundle else {
            return Ok(());
        };
        let index = &bundle.index;
        let others: std::collections::HashSet<u32> = self.non_blobs.iter().map(|e| e.1).collect();
        let mut inflate = gix_zlib::Inflate::default();
        let mut buf = Vec::new();
        let read = |e| Error::pack("reading a received blob", e);
        for i in (0..index.num_objects()).filter(|i| !others.contains(i)) {
            let entry = bundle
                .pack
                .entry(index.pack_offset_at_index(i))
                .map_err(read)?;
            let header = bundle
                .pack
                .decode_header(entry, &mut inflate, &|id| match index.lookup(id) {
                    Some(at) => bundle
                        .pack
                        .entry(index.pack_offset_at_index(at))
                        .map(|e| Some(gix_pack::data::decode::header::ResolvedBase::InPack(e))),
                    None => Ok(None),
                })
                .map_err(read)?;
            if header.kind != gix_object::Kind::Blob || header.object_size > max_size {
                continue;
            }
            let id = index.oid_at_index(i).to_owned();
            let found = bundle
                .find(&id, &mut buf, &mut inflate, &mut gix_pack::cache::Never)
                .map_err(read)?;
            if let Some((data, _)) = found {
                if !f(data.data) {
                    break;
                }
            }
        }
        Ok(())
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

/// The checks after indexing read the commits, trees and tags of the
/// received pack through its memory map, not its blobs (most of its bytes;
/// entry headers are read with `pread`, see `connect`). Tell the kernel not
/// to map the neighbouring pages on each fault (up to 16 by default), so the
/// blobs between them do not become resident in the node for nothing.
fn map_only_what_is_read(pack: &gix_pack::data::File) {
    #[cfg(target_os = "linux")]
    if let Some(data) = pack.entry_slice(0..pack.data_len() as u64) {
        if !data.is_empty() {
            // SAFETY: `data` is the whole read-only mapping of the pack
            // (gix-pack maps it from its first byte, so it starts on a page
            // boundary) and stays mapped while `pack` lives; MADV_RANDOM only
            // changes how page faults are served, never the contents.
            let rc = unsafe {
                libc::madvise(
                    data.as_ptr() as *mut libc::c_void,
                    data.len(),
                    libc::MADV_RANDOM,
                )
            };
            if rc != 0 {
                tracing::debug!("madvise(MADV_RANDOM) on a received pack failed");
            }
        }
    }
}

/// Report receive progress every this many bytes.
const PROGRESS_EVERY: u64 = 4 * 1024 * 1024;

/// The request body on its way to gix-pack: counted against the pack size
/// limit, reported, and checked by the [`scan::Scanner`] before gix-pack
/// sees a byte of it.
struct Intake<'a> {
    inner: &'a mut dyn BufRead,
    remaining: u64,
    read: u64,
    progress: &'a mut dyn FnMut(u64),
    next_report: u64,
    scanner: scan::Scanner,
    /// Why the scanner refused the pack; gix-pack only sees an I/O error.
    refusal: Option<Error>,
}

impl Read for Intake<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.refusal.is_some() {
            return Err(io::Error::other("pack refused"));
        }
        if self.remaining == 0 {
            return Err(io::Error::other("pack size limit exceeded"));
        }
        let max = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        if let Err(e) = self.scanner.feed(&buf[..n]) {
            self.refusal = Some(e);
            return Err(io::Error::other("pack refused"));
        }
        self.remaining -= n as u64;
        self.read += n as u64;
        if self.read >= self.next_report {
            self.next_report = self.read + PROGRESS_EVERY;
            (self.progress)(self.read);
        }
        Ok(n)
    }
}

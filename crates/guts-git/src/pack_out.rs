//! Writing packs: for a fetch, and for repository maintenance.
//!
//! The object list comes from [`crate::walk`] (or from the reachability
//! snapshot of [`crate::storage::maintain`]). gix-pack looks each object up
//! in the stored packs and hands over its compressed entry as it is: a delta
//! whose base is also being sent stays a delta (rewritten as an `ofs-delta`
//! against the base's new position, or as a `ref-delta` naming the base's id
//! for a client without the `ofs-delta` capability); a delta whose base is not sent is
//! expanded and recompressed as a whole object, because the client may not
//! have that base. Entries are produced in chunks on worker threads and
//! written in order, so memory stays bounded by a few chunks, not by the pack.
//!
//! The entries are written here, not by gix's `FromEntriesIter`, for three
//! reasons: the trailer is hashed with a fast SHA-1 (collision detection is
//! for what a node receives, not for what it writes: ADR 0011); a pack can
//! start with the body of a stored pack copied unchanged ([`Prefix`]); and
//! maintenance needs each entry's offset and CRC-32 to write the index.

use std::cell::Cell;
use std::io::{Read, Write};

use gix_hash::ObjectId;
use gix_pack::data::entry::Header;
use gix_pack::data::output;
use sha1::Digest as _;

use crate::error::{Error, Result};
use crate::odb::ObjectStore;
use crate::pack_rewrite::{copy_as_ref_deltas, PackEntries};

/// What a written pack contained.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PackStats {
    /// Objects written (including those of a [`Prefix`]).
    pub objects: usize,
    /// Of the generated entries, those stored as deltas.
    pub deltas: usize,
    /// Bytes written.
    pub bytes: u64,
    /// The pack's trailer (SHA-1 of everything before it).
    pub checksum: [u8; 20],
    /// Where each generated entry starts, with its CRC-32, when
    /// [`PackOptions::index`] asked for them (for writing a `.idx`).
    pub entries: Vec<IndexEntry>,
}

/// One entry of a written pack, as a pack index records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// The object.
    pub id: ObjectId,
    /// Offset of its entry header in the pack.
    pub offset: u64,
    /// CRC-32 of the entry's bytes (header and compressed data).
    pub crc32: u32,
}

/// How to write a pack.
#[derive(Debug, Default, Clone, Copy)]
pub struct PackOptions {
    /// Worker threads for preparing entries; `None` uses every core.
    pub threads: Option<usize>,
    /// Record offsets and CRC-32s of the entries (see [`PackStats::entries`]).
    pub index: bool,
    /// Write deltas as `REF_DELTA` entries (base named by id) instead of
    /// `OFS_DELTA`: for a client that did not ask for `ofs-delta`.
    pub ref_deltas: bool,
}

/// The body of a stored pack to send first, unchanged: its entries are
/// copied byte for byte (their `ofs-delta` distances stay valid because
/// they are relative and all their bases are in the same body), unless
/// [`Prefix::as_ref_deltas`] asks for `ofs-delta` headers to be rewritten.
pub struct Prefix<'a> {
    /// Reader positioned at the first entry (after the 12-byte header).
    pub body: &'a mut dyn Read,
    /// Length of the entries: the file's length minus header and trailer.
    pub len: u64,
    /// How many objects the body holds.
    pub objects: u32,
    /// The body's entries from its index: when set, every `OFS_DELTA` entry
    /// is sent as a `REF_DELTA` ([`crate::pack_rewrite`]).
    pub as_ref_deltas: Option<&'a PackEntries<'a>>,
}

/// Write a pack containing exactly `ids` to `out`.
///
/// `progress(written, total)` is called after every chunk of entries.
pub fn write_pack(
    odb: &ObjectStore,
    ids: Vec<ObjectId>,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PackStats> {
    write_pack_with(odb, ids, None, out, progress, PackOptions::default())
}

/// Write a pack of `prefix`'s body (if any) followed by `ids`.
pub fn write_pack_with(
    odb: &ObjectStore,
    ids: Vec<ObjectId>,
    prefix: Option<Prefix<'_>>,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(usize, usize),
    opts: PackOptions,
) -> Result<PackStats> {
    let generated = ids.len();
    let prefix_objects = prefix.as_ref().map_or(0, |p| p.objects as usize);
    let total = u32::try_from(generated + prefix_objects)
        .map_err(|_| Error::TooLarge("too many objects for one pack".into()))?;
    let counts: Vec<output::Count> = ids
        .into_iter()
        .map(|id| output::Count {
            id,
            entry_pack_location: output::count::PackLocation::NotLookedUp,
        })
        .collect();
    let entries = output::entry::iter_from_counts(
        counts,
        odb.handle().clone(),
        Box::new(gix_utils::progress::Discard),
        output::entry::iter_from_counts::Options {
            thread_limit: opts.threads,
            mode: output::entry::iter_from_counts::Mode::PackCopyAndBaseObjects,
            allow_thin_pack: false,
            chunk_size: 50,
            version: gix_pack::data::Version::V2,
            compression: gix_zlib::Compression::DEFAULT,
        },
    )
    .map_err(|e| Error::pack("preparing pack entries", e))?;

    let mut w = HashingWriter::new(out);
    w.write_all(&gix_pack::data::header::encode(
        gix_pack::data::Version::V2,
        total,
    ))?;
    if let Some(p) = prefix {
        copy_prefix(p, &mut w)?;
    }
    let mut state = EntryState {
        offsets: Vec::with_capacity(generated),
        ids: opts.ref_deltas.then(|| Vec::with_capacity(generated)),
        stats: PackStats {
            objects: prefix_objects,
            ..PackStats::default()
        },
        index: opts.index,
    };
    let done = Cell::new(0usize);
    for chunk in gix_parallel::InOrderIter::from(entries) {
        let chunk = chunk.map_err(|e| Error::pack("preparing pack entries", e))?;
        for entry in &chunk {
            state.write_entry(entry, &mut w)?;
        }
        done.set(done.get() + chunk.len());
        progress(done.get().min(generated), generated);
    }
    if state.offsets.len() != generated {
        return Err(Error::Pack(format!(
            "pack generation produced {} of {generated} entries",
            state.offsets.len()
        )));
    }
    let checksum: [u8; 20] = w.hasher.finalize_reset().into();
    w.inner.write_all(&checksum)?;
    state.stats.bytes = w.written + 20;
    state.stats.checksum = checksum;
    Ok(state.stats)
}

/// Copy a prefix's entries, rewritten as `REF_DELTA`s when it asks for that.
fn copy_prefix(p: Prefix<'_>, w: &mut HashingWriter<'_>) -> Result<()> {
    if let Some(entries) = p.as_ref_deltas {
        if entries.len() != p.objects as usize {
            return Err(Error::Pack(
                "a stored pack and its index disagree on the object count".into(),
            ));
        }
        copy_as_ref_deltas(p.body, p.len, entries, w)?;
        return Ok(());
    }
    let copied = std::io::copy(&mut p.body.take(p.len), w)?;
    if copied != p.len {
        return Err(Error::Pack(
            "a stored pack ended early while it was sent".into(),
        ));
    }
    Ok(())
}

/// What the entry loop tracks: where each generated entry went.
struct EntryState {
    offsets: Vec<u64>,
    /// Each generated entry's id, kept when deltas name their base by id.
    ids: Option<Vec<ObjectId>>,
    stats: PackStats,
    index: bool,
}

impl EntryState {
    fn write_entry(&mut self, entry: &output::Entry, w: &mut HashingWriter<'_>) -> Result<()> {
        if entry.is_invalid() {
            return Err(Error::Pack(
                "an object vanished while the pack was being written".into(),
            ));
        }
        let start = w.written;
        let header = self.header(entry, start)?;
        self.offsets.push(start);
        if let Some(ids) = self.ids.as_mut() {
            ids.push(entry.id);
        }
        w.crc = self.index.then(crc32fast::Hasher::new);
        header.write_to(entry.decompressed_size as u64, w)?;
        w.write_all(&entry.compressed_data)?;
        if let Some(crc) = w.crc.take() {
            self.stats.entries.push(IndexEntry {
                id: entry.id,
                offset: start,
                crc32: crc.finalize(),
            });
        }
        self.stats.objects += 1;
        Ok(())
    }
}

impl EntryState {
    /// The header of a generated entry starting at `start`: a delta names
    /// its base (an earlier entry) by distance, or by id with `ref_deltas`.
    fn header(&mut self, entry: &output::Entry, start: u64) -> Result<Header> {
        let object_index = match entry.kind {
            output::entry::Kind::DeltaRef { object_index } => object_index,
            output::entry::Kind::DeltaOid { .. } => {
                return Err(Error::Pack(
                    "unexpected ref-delta in a generated pack".into(),
                ))
            }
            output::entry::Kind::Base(_) => {
                return Ok(entry.to_entry_header(gix_pack::data::Version::V2, |_| 0))
            }
        };
        self.stats.deltas += 1;
        let missing = || Error::Pack("a delta's base comes after it in the generated pack".into());
        if let Some(ids) = self.ids.as_ref() {
            let base_id = *ids.get(object_index).ok_or_else(missing)?;
            return Ok(Header::RefDelta { base_id });
        }
        let base = *self.offsets.get(object_index).ok_or_else(missing)?;
        Ok(Header::OfsDelta {
            base_distance: start - base,
        })
    }
}

/// Counts and hashes (SHA-1, and CRC-32 while an entry is written) what
/// goes through it.
struct HashingWriter<'a> {
    inner: &'a mut dyn Write,
    hasher: sha1::Sha1,
    crc: Option<crc32fast::Hasher>,
    written: u64,
}

impl<'a> HashingWriter<'a> {
    fn new(inner: &'a mut dyn Write) -> Self {
        HashingWriter {
            inner,
            hasher: sha1::Sha1::new(),
            crc: None,
            written: 0,
        }
    }
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        if let Some(crc) = self.crc.as_mut() {
            crc.update(&buf[..n]);
        }
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Write a version-2 pack index (`.idx`) for a pack with these entries and
/// this trailer; returns the index's own checksum.
pub fn write_index(
    mut entries: Vec<IndexEntry>,
    pack_checksum: &[u8; 20],
    out: &mut dyn Write,
) -> Result<[u8; 20]> {
    entries.sort_by_key(|e| e.id);
    if entries.windows(2).any(|w| w[0].id == w[1].id) {
        return Err(Error::Pack(
            "an object appears twice in a generated pack".into(),
        ));
    }
    let mut w = HashingWriter::new(out);
    w.write_all(b"\xfftOc\x00\x00\x00\x02")?;
    let mut fanout = [0u32; 256];
    for e in &entries {
        fanout[usize::from(e.id.as_bytes()[0])] += 1;
    }
    let mut running = 0u32;
    for count in fanout {
        running += count;
        w.write_all(&running.to_be_bytes())?;
    }
    for e in &entries {
        w.write_all(e.id.as_bytes())?;
    }
    for e in &entries {
        w.write_all(&e.crc32.to_be_bytes())?;
    }
    let mut large = Vec::new();
    for e in &entries {
        let small = match u32::try_from(e.offset) {
            Ok(o) if o < 0x8000_0000 => o,
            _ => {
                let index = u32::try_from(large.len())
                    .map_err(|_| Error::TooLarge("too many large offsets".into()))?;
                large.push(e.offset);
                0x8000_0000 | index
            }
        };
        w.write_all(&small.to_be_bytes())?;
    }
    for o in large {
        w.write_all(&o.to_be_bytes())?;
    }
    w.write_all(pack_checksum)?;
    let checksum: [u8; 20] = w.hasher.finalize_reset().into();
    w.inner.write_all(&checksum)?;
    Ok(checksum)
}

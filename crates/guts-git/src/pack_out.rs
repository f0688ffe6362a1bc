//! Writing a pack for a fetch, reusing the deltas already stored.
//!
//! The object list comes from [`crate::walk`]. gix-pack looks each object up
//! in the stored packs and copies its compressed entry as it is: a delta whose
//! base is also being sent stays a delta (rewritten as an `ofs-delta` against
//! the base's new position); a delta whose base is not sent is expanded and
//! recompressed as a whole object, because the client may not have that base.
//! Entries are produced in chunks on worker threads and written in order, so
//! memory stays bounded by a few chunks, not by the pack.

use std::cell::Cell;
use std::io::Write;

use gix_hash::ObjectId;
use gix_pack::data::output;

use crate::error::{Error, Result};
use crate::odb::{ObjectStore, HASH};

/// What a written pack contained.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PackStats {
    /// Objects written.
    pub objects: usize,
    /// Of which stored as deltas.
    pub deltas: usize,
    /// Bytes written.
    pub bytes: u64,
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
    let total = ids.len();
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
            thread_limit: None,
            mode: output::entry::iter_from_counts::Mode::PackCopyAndBaseObjects,
            allow_thin_pack: false,
            chunk_size: 50,
            version: gix_pack::data::Version::V2,
            compression: gix_zlib::Compression::DEFAULT,
        },
    )
    .map_err(|e| Error::pack("preparing pack entries", e))?;

    let objects = Cell::new(0usize);
    let deltas = Cell::new(0usize);
    let vanished = Cell::new(false);
    let in_order = gix_parallel::InOrderIter::from(entries).map(|chunk| {
        chunk.inspect(|chunk: &Vec<output::Entry>| {
            for e in chunk {
                if e.is_invalid() {
                    vanished.set(true);
                }
                if !matches!(e.kind, output::entry::Kind::Base(_)) {
                    deltas.set(deltas.get() + 1);
                }
            }
            objects.set(objects.get() + chunk.len());
        })
    });
    let mut counting = CountingWriter {
        inner: out,
        bytes: 0,
    };
    let count = u32::try_from(total)
        .map_err(|_| Error::TooLarge("too many objects for one pack".into()))?;
    let mut writer = output::bytes::FromEntriesIter::new(
        in_order,
        &mut counting,
        count,
        gix_pack::data::Version::V2,
        HASH,
    );
    for step in writer.by_ref() {
        step.map_err(|e| Error::pack("writing pack", e))?;
        progress(objects.get().min(total), total);
    }
    drop(writer);
    if vanished.get() {
        return Err(Error::Pack(
            "an object vanished while the pack was being written".into(),
        ));
    }
    Ok(PackStats {
        objects: objects.get(),
        deltas: deltas.get(),
        bytes: counting.bytes,
    })
}

struct CountingWriter<'a> {
    inner: &'a mut dyn Write,
    bytes: u64,
}

impl Write for CountingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

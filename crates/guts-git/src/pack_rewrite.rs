//! A stored pack's entries for a client that did not ask for `ofs-delta`.
//!
//! Maintenance writes its packs with `OFS_DELTA` entries (a delta names its
//! base by the distance back to it). A client without the `ofs-delta`
//! capability only understands `REF_DELTA` entries (the base named by object
//! id), so such a pack cannot be sent as it is. [`copy_as_ref_deltas`] streams
//! its entries in order, rewriting each `OFS_DELTA` header into a `REF_DELTA`
//! one whose base id comes from the pack's index; every other byte (the
//! compressed data, and the headers of whole objects) is copied unchanged.
//! The bases are entries of the same pack, sent earlier in the same stream.

use std::io::{BufRead, BufReader, Read, Write};

use gix_hash::ObjectId;

use crate::error::{Error, Result};

/// Pack entry type of an `OFS_DELTA`.
const OFS_DELTA: u8 = 6;
/// Pack entry type of a `REF_DELTA`.
const REF_DELTA: u8 = 7;
/// Most bytes of a varint in an entry header (64-bit sizes and distances).
const MAX_VARINT: usize = 10;
/// Length of the pack header the body follows.
const PACK_HEADER: u64 = 12;

/// A stored pack's entries in the order they are stored, with their ids:
/// what turns a base's offset into its object id.
pub struct PackEntries<'a> {
    index: &'a gix_pack::index::File,
    /// Entry offsets in the pack, ascending, with each one's position in the index.
    by_offset: Vec<(u64, u32)>,
}

impl<'a> PackEntries<'a> {
    /// The entries `index` describes, sorted by their offset in the pack.
    pub fn new(index: &'a gix_pack::index::File) -> Self {
        let mut by_offset: Vec<(u64, u32)> = index
            .iter()
            .zip(0u32..)
            .map(|(e, i)| (e.pack_offset, i))
            .collect();
        by_offset.sort_unstable();
        PackEntries { index, by_offset }
    }

    /// How many entries the pack holds.
    pub fn len(&self) -> usize {
        self.by_offset.len()
    }

    /// Whether the pack holds no entry.
    pub fn is_empty(&self) -> bool {
        self.by_offset.is_empty()
    }

    /// The object stored at `offset`, if an entry starts there.
    fn id_at(&self, offset: u64) -> Option<ObjectId> {
        let i = self
            .by_offset
            .binary_search_by_key(&offset, |(o, _)| *o)
            .ok()?;
        Some(self.index.oid_at_index(self.by_offset[i].1).to_owned())
    }
}

/// Copy a stored pack's body (`len` bytes of entries, read from just after
/// its 12-byte header) to `out`, with every `OFS_DELTA` entry rewritten as a
/// `REF_DELTA`. Returns the bytes written.
pub fn copy_as_ref_deltas(
    body: &mut dyn Read,
    len: u64,
    entries: &PackEntries<'_>,
    out: &mut dyn Write,
) -> Result<u64> {
    let end = PACK_HEADER + len;
    let mut input = BufReader::with_capacity(64 * 1024, body.take(len));
    let mut written = 0u64;
    let mut header = Vec::with_capacity(MAX_VARINT + 20);
    for (i, &(offset, _)) in entries.by_offset.iter().enumerate() {
        let next = entries.by_offset.get(i + 1).map_or(end, |(o, _)| *o);
        let entry_len = next
            .checked_sub(offset)
            .filter(|_| offset >= PACK_HEADER)
            .ok_or_else(|| corrupt("an entry lies outside the pack"))?;
        header.clear();
        let read = rewrite_header(&mut input, offset, entries, &mut header)?;
        let rest = entry_len
            .checked_sub(read)
            .ok_or_else(|| corrupt("an entry header overlaps the next entry"))?;
        out.write_all(&header)?;
        let copied = std::io::copy(&mut (&mut input).take(rest), out)?;
        if copied != rest {
            return Err(Error::Pack(
                "a stored pack ended early while it was sent".into(),
            ));
        }
        written += header.len() as u64 + rest;
    }
    if !input.fill_buf()?.is_empty() {
        return Err(corrupt("bytes after the last entry the index knows"));
    }
    Ok(written)
}

/// Read the header of the entry at `offset` and append its rewritten form
/// to `header`; returns how many bytes were read.
fn rewrite_header(
    input: &mut dyn BufRead,
    offset: u64,
    entries: &PackEntries<'_>,
    header: &mut Vec<u8>,
) -> Result<u64> {
    // Type and size: the type in bits 4-6 of the first byte, then a varint.
    let mut byte = read_byte(input)?;
    let kind = (byte >> 4) & 7;
    if kind == OFS_DELTA {
        header.push((byte & 0x8f) | (REF_DELTA << 4));
    } else {
        header.push(byte);
    }
    while byte & 0x80 != 0 {
        if header.len() >= MAX_VARINT {
            return Err(corrupt("an entry size is too long"));
        }
        byte = read_byte(input)?;
        header.push(byte);
    }
    let mut read = header.len() as u64;
    if kind == OFS_DELTA {
        let (distance, n) = read_distance(input)?;
        read += n;
        let base = offset
            .checked_sub(distance)
            .filter(|_| distance > 0)
            .and_then(|b| entries.id_at(b))
            .ok_or_else(|| corrupt("a delta's base is not an entry of the pack"))?;
        header.extend_from_slice(base.as_bytes());
    }
    Ok(read)
}

/// The base distance of an `OFS_DELTA` (git's offset encoding, each
/// continuation adding one), and how many bytes it took.
fn read_distance(input: &mut dyn BufRead) -> Result<(u64, u64)> {
    let mut byte = read_byte(input)?;
    let mut distance = u64::from(byte & 0x7f);
    let mut n = 1u64;
    while byte & 0x80 != 0 {
        if n >= MAX_VARINT as u64 {
            return Err(corrupt("a delta's base distance is too long"));
        }
        byte = read_byte(input)?;
        n += 1;
        distance = distance
            .checked_add(1)
            .and_then(|d| d.checked_mul(128))
            .map(|d| d | u64::from(byte & 0x7f))
            .ok_or_else(|| corrupt("a delta's base distance overflows"))?;
    }
    Ok((distance, n))
}

fn read_byte(input: &mut dyn BufRead) -> Result<u8> {
    let mut b = [0u8; 1];
    input.read_exact(&mut b).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            corrupt("the pack ends inside an entry header")
        } else {
            Error::Io(e)
        }
    })?;
    Ok(b[0])
}

fn corrupt(what: &str) -> Error {
    Error::Pack(format!("stored pack: {what}"))
}

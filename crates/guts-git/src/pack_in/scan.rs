//! A streaming check of a pack's entries, run on the bytes as they arrive,
//! ahead of gix-pack.
//!
//! Every pack entry declares its inflated size in its header, and every
//! delta declares the size of the object it makes in the first bytes of its
//! inflated data. The scanner reads those and refuses the pack, through
//! [`PackLimits`], before anything large is inflated or allocated: an object
//! over `max_object_bytes`, a running total over `max_inflated_bytes`, an
//! offset-delta chain deeper than `max_delta_depth`. To find where each entry
//! ends it inflates the entry's zlib stream into a fixed scratch buffer and
//! keeps nothing, refusing a stream that inflates past its declared size (a
//! zlib bomb with a small header). Its memory is that buffer, the zlib state
//! and 12 bytes per entry (offset and depth, for offset-delta bases).
//!
//! It is sans-I/O: [`Scanner::feed`] takes the stream in chunks of any size.

use super::PackLimits;
use crate::error::{Error, Result};

/// Inflated bytes are counted through a buffer of this size.
const SCRATCH_BYTES: usize = 32 * 1024;
/// Longest entry header: type and a 64-bit size (10 bytes) and a 20-byte base id.
const MAX_HEADER: usize = 32;
/// Longest delta header: two 64-bit sizes.
const MAX_DELTA_HEADER: usize = 20;
const PACK_HEADER: usize = 12;
const OFS_DELTA: u8 = 6;
const REF_DELTA: u8 = 7;
const HASH_LEN: usize = 20;

/// Where the scanner is in the pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    PackHeader,
    EntryHeader,
    Body,
    /// The trailing checksum (verified by gix-pack) and anything after it.
    Done,
}

/// What an entry header says about its base.
#[derive(Debug, Clone, Copy)]
enum Base {
    /// Not a delta.
    None,
    /// An offset delta: the base starts this many bytes earlier.
    Distance(u64),
    /// A delta on a base named by id (in the pack or, for a thin pack, stored).
    Id,
}

/// The entry being inflated.
#[derive(Debug, Default)]
struct Current {
    offset: u64,
    size: u64,
    delta: bool,
    head: [u8; MAX_DELTA_HEADER],
    head_len: usize,
    result_known: bool,
}

/// The streaming check; see the module documentation.
pub(super) struct Scanner {
    limits: PackLimits,
    state: State,
    /// Stream offset of the next byte fed.
    offset: u64,
    head: [u8; MAX_HEADER],
    head_len: usize,
    entries_left: u32,
    inflated: u64,
    entry: Current,
    zlib: gix_zlib::Decompress,
    scratch: Vec<u8>,
    /// Offsets of the entries seen so far (ascending) and their delta depth.
    offsets: Vec<u64>,
    depths: Vec<u32>,
}

impl Scanner {
    /// A scanner for a pack that starts with the next byte fed.
    pub(super) fn new(limits: PackLimits) -> Self {
        Scanner {
            limits,
            state: State::PackHeader,
            offset: 0,
            head: [0; MAX_HEADER],
            head_len: 0,
            entries_left: 0,
            inflated: 0,
            entry: Current::default(),
            zlib: gix_zlib::Decompress::new(),
            scratch: vec![0; SCRATCH_BYTES],
            offsets: Vec::new(),
            depths: Vec::new(),
        }
    }

    /// Total bytes the pack inflates to so far: every entry's inflated size
    /// plus, for deltas, the size of the object each one makes.
    pub(super) fn inflated(&self) -> u64 {
        self.inflated
    }

    /// Check the next `data` of the stream. After an error the scanner must
    /// not be fed again.
    pub(super) fn feed(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let used = match self.state {
                State::PackHeader => self.pack_header(data)?,
                State::EntryHeader => self.entry_header(data)?,
                State::Body => self.body(data)?,
                State::Done => data.len(),
            };
            self.offset += used as u64;
            data = &data[used..];
        }
        Ok(())
    }

    /// Take header bytes from `data` into `self.head`, up to `want`; returns
    /// how many were taken.
    fn take_head(&mut self, data: &[u8], want: usize) -> usize {
        let n = (want - self.head_len).min(data.len());
        self.head[self.head_len..self.head_len + n].copy_from_slice(&data[..n]);
        self.head_len += n;
        n
    }

    fn pack_header(&mut self, data: &[u8]) -> Result<usize> {
        let used = self.take_head(data, PACK_HEADER);
        if self.head_len < PACK_HEADER {
            return Ok(used);
        }
        let h = &self.head[..PACK_HEADER];
        let version = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        if &h[..4] != b"PACK" || !(version == 2 || version == 3) {
            return Err(Error::Pack("not a pack (bad header)".into()));
        }
        self.entries_left = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        self.head_len = 0;
        self.state = if self.entries_left == 0 {
            State::Done
        } else {
            State::EntryHeader
        };
        Ok(used)
    }

    fn entry_header(&mut self, data: &[u8]) -> Result<usize> {
        let before = self.head_len;
        let used = self.take_head(data, MAX_HEADER);
        let start = self.offset - before as u64;
        match parse_entry_header(&self.head[..self.head_len], start)? {
            None if self.head_len == MAX_HEADER => Err(corrupt(start, "entry header too long")),
            None => Ok(used),
            Some((kind, size, base, len)) => {
                self.head_len = 0;
                self.start_entry(start, kind, size, base)?;
                Ok(len - before)
            }
        }
    }

    fn start_entry(&mut self, offset: u64, kind: u8, size: u64, base: Base) -> Result<()> {
        let depth = match base {
            Base::None => 0,
            Base::Id => 1,
            Base::Distance(d) => {
                let base_offset = offset
                    .checked_sub(d)
                    .filter(|_| d > 0)
                    .and_then(|b| self.offsets.binary_search(&b).ok())
                    .ok_or_else(|| corrupt(offset, "offset delta with no entry at its base"))?;
                self.depths[base_offset].saturating_add(1)
            }
        };
        if depth > self.limits.max_delta_depth {
            return Err(Error::Limit {
                what: format!("the delta chain at pack offset {offset} is {depth} deltas deep"),
                limit: u64::from(self.limits.max_delta_depth),
            });
        }
        self.check_object(offset, size, "entry")?;
        self.charge(size)?;
        self.offsets.push(offset);
        self.depths.push(depth);
        self.entry = Current {
            offset,
            size,
            delta: kind == OFS_DELTA || kind == REF_DELTA,
            ..Current::default()
        };
        self.zlib.reset();
        self.state = State::Body;
        Ok(())
    }

    fn check_object(&self, offset: u64, size: u64, what: &str) -> Result<()> {
        if size > self.limits.max_object_bytes {
            return Err(Error::Limit {
                what: format!("the {what} at pack offset {offset} is {size} bytes"),
                limit: self.limits.max_object_bytes,
            });
        }
        Ok(())
    }

    fn charge(&mut self, bytes: u64) -> Result<()> {
        self.inflated = self.inflated.saturating_add(bytes);
        if self.inflated > self.limits.max_inflated_bytes {
            return Err(Error::Limit {
                what: format!(
                    "the pack inflates to at least {} bytes (objects and delta results)",
                    self.inflated
                ),
                limit: self.limits.max_inflated_bytes,
            });
        }
        Ok(())
    }

    /// Inflate what `data` holds of the current entry; returns the bytes used.
    fn body(&mut self, data: &[u8]) -> Result<usize> {
        let mut used = 0;
        loop {
            let (in_before, out_before) = (self.zlib.total_in(), self.zlib.total_out());
            let status = self
                .zlib
                .decompress(
                    &data[used..],
                    &mut self.scratch,
                    gix_zlib::FlushDecompress::None,
                )
                .map_err(|e| corrupt(self.entry.offset, &format!("bad zlib stream: {e}")))?;
            let took = usize::try_from(self.zlib.total_in() - in_before).unwrap_or(usize::MAX);
            let made = usize::try_from(self.zlib.total_out() - out_before).unwrap_or(usize::MAX);
            used = used.saturating_add(took).min(data.len());
            if self.entry.delta && !self.entry.result_known {
                self.delta_header(made)?;
            }
            if self.zlib.total_out() > self.entry.size {
                return Err(corrupt(
                    self.entry.offset,
                    &format!("inflates past its declared {} bytes", self.entry.size),
                ));
            }
            if status == gix_zlib::Status::StreamEnd {
                self.finish_entry()?;
                return Ok(used);
            }
            let output_full = made == self.scratch.len();
            if used == data.len() && !output_full {
                return Ok(used);
            }
            if took == 0 && made == 0 {
                return Err(corrupt(self.entry.offset, "zlib stream makes no progress"));
            }
        }
    }

    /// Read the delta's header from the first `made` bytes of the scratch
    /// buffer and check the size of the object the delta makes.
    fn delta_header(&mut self, made: usize) -> Result<()> {
        let e = &mut self.entry;
        let n = (MAX_DELTA_HEADER - e.head_len).min(made);
        e.head[e.head_len..e.head_len + n].copy_from_slice(&self.scratch[..n]);
        e.head_len += n;
        let parsed = varint(&e.head[..e.head_len])
            .and_then(|(_, used)| varint(&e.head[used..e.head_len]))
            .map(|(result, _)| result);
        let offset = e.offset;
        match parsed {
            Some(result) => {
                e.result_known = true;
                self.check_object(offset, result, "object made by the delta")?;
                self.charge(result)
            }
            None if e.head_len == MAX_DELTA_HEADER => Err(corrupt(offset, "bad delta header")),
            None => Ok(()),
        }
    }

    fn finish_entry(&mut self) -> Result<()> {
        let e = &self.entry;
        if self.zlib.total_out() != e.size {
            return Err(corrupt(
                e.offset,
                &format!(
                    "inflates to {} bytes, not the declared {}",
                    self.zlib.total_out(),
                    e.size
                ),
            ));
        }
        if e.delta && !e.result_known {
            return Err(corrupt(e.offset, "delta too short for its header"));
        }
        self.entries_left -= 1;
        self.state = if self.entries_left == 0 {
            State::Done
        } else {
            State::EntryHeader
        };
        Ok(())
    }
}

fn corrupt(offset: u64, reason: &str) -> Error {
    Error::Pack(format!("corrupt pack entry at offset {offset}: {reason}"))
}

/// A git size varint (7 bits a byte, least significant first); `None` if
/// `buf` ends first or the value overflows.
fn varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &c) in buf.iter().enumerate() {
        let shift = 7 * i as u32;
        if shift >= 64 {
            return None;
        }
        value |= u64::from(c & 0x7f) << shift;
        if c & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Parse an entry header: `Ok(None)` if `buf` does not hold all of it yet,
/// else its type, inflated size, base and length.
fn parse_entry_header(buf: &[u8], offset: u64) -> Result<Option<(u8, u64, Base, usize)>> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let kind = (first >> 4) & 7;
    let mut size = u64::from(first & 0x0f);
    let mut i = 1;
    let mut c = first;
    let mut shift = 4u32;
    while c & 0x80 != 0 {
        let Some(&next) = buf.get(i) else {
            return Ok(None);
        };
        if shift >= 64 {
            return Err(corrupt(offset, "entry size too large"));
        }
        c = next;
        size |= u64::from(c & 0x7f) << shift;
        shift += 7;
        i += 1;
    }
    let base = match kind {
        1..=4 => Base::None,
        OFS_DELTA => match ofs_distance(&buf[i..], offset)? {
            None => return Ok(None),
            Some((distance, used)) => {
                i += used;
                Base::Distance(distance)
            }
        },
        REF_DELTA if buf.len() < i + HASH_LEN => return Ok(None),
        REF_DELTA => {
            i += HASH_LEN;
            Base::Id
        }
        _ => return Err(corrupt(offset, &format!("unknown entry type {kind}"))),
    };
    Ok(Some((kind, size, base, i)))
}

/// The base distance of an offset delta (git's big-endian, off-by-one varint).
fn ofs_distance(buf: &[u8], offset: u64) -> Result<Option<(u64, usize)>> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut c = first;
    let mut distance = u64::from(c & 0x7f);
    let mut i = 1;
    while c & 0x80 != 0 {
        let Some(&next) = buf.get(i) else {
            return Ok(None);
        };
        c = next;
        distance = distance
            .checked_add(1)
            .and_then(|d| d.checked_mul(128))
            .map(|d| d | u64::from(c & 0x7f))
            .ok_or_else(|| corrupt(offset, "offset delta distance too large"))?;
        i += 1;
    }
    Ok(Some((distance, i)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        assert_eq!(varint(&[0x05]), Some((5, 1)));
        assert_eq!(varint(&[0x80 | 0x10, 0x01]), Some((0x90, 2)));
        assert_eq!(varint(&[0x80]), None);
        assert_eq!(varint(&[0xff; 11]), None);
    }

    #[test]
    fn entry_headers() -> Result<()> {
        // blob (3) of 0x25 bytes: size bits 0x5 + (0x2 << 4).
        let h = parse_entry_header(&[0x80 | 0x30 | 0x05, 0x02], 12)?;
        assert!(matches!(h, Some((3, 0x25, Base::None, 2))));
        assert!(parse_entry_header(&[0x80 | 0x30], 12)?.is_none());
        // ofs-delta, size 1, distance 128 = [0x80, 0x00].
        let h = parse_entry_header(&[0x61, 0x80, 0x00], 300)?;
        assert!(matches!(h, Some((OFS_DELTA, 1, Base::Distance(128), 3))));
        assert!(parse_entry_header(&[0x71; 10], 12)?.is_none());
        assert!(parse_entry_header(&[0x51], 12).is_err());
        Ok(())
    }

    fn deflate(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut w = gix_zlib::stream::deflate::Write::new(Vec::new(), gix_zlib::Compression::BEST);
        assert!(w.write_all(data).and_then(|_| w.flush()).is_ok());
        w.into_inner()
    }

    /// A blob of 40 bytes, an offset delta making 41 from it and a ref delta
    /// making `result` bytes (no trailer: the scanner does not check it).
    fn pack(result: u8) -> Vec<u8> {
        let mut p = b"PACK\0\0\0\x02\0\0\0\x03".to_vec();
        p.extend([0xb0 | 0x08, 0x02]); // blob, 40 bytes
        p.extend(deflate(&[b'a'; 40]));
        let delta = [40, 41, 1, b'b', 0x90, 40];
        let distance = p.len() - 12;
        assert!(distance < 0x80);
        p.extend([0x60 | delta.len() as u8, distance as u8]);
        p.extend(deflate(&delta));
        let delta = [40, result, 0x90, 40];
        p.push(0x70 | delta.len() as u8);
        p.extend([7; 20]);
        p.extend(deflate(&delta));
        p
    }

    fn limits(max_object_bytes: u64) -> PackLimits {
        PackLimits {
            max_object_bytes,
            ..PackLimits::DEFAULT
        }
    }

    #[test]
    fn any_chunking_gives_the_same_answer() -> Result<()> {
        let p = pack(40);
        let mut whole = Scanner::new(limits(100));
        whole.feed(&p)?;
        assert_eq!(whole.inflated(), 40 + (6 + 41) + (4 + 40));
        assert_eq!(whole.depths, vec![0, 1, 1]);
        let mut bytes = Scanner::new(limits(100));
        for b in &p {
            bytes.feed(std::slice::from_ref(b))?;
        }
        assert_eq!(bytes.inflated(), whole.inflated());
        assert_eq!(bytes.state, State::Done);
        Ok(())
    }

    #[test]
    fn delta_result_over_the_limit_is_refused_byte_by_byte() {
        let p = pack(100);
        let mut s = Scanner::new(limits(99));
        let err = p.iter().find_map(|b| s.feed(std::slice::from_ref(b)).err());
        assert!(
            matches!(&err, Some(Error::Limit { what, limit: 99 }) if what.contains("100 bytes")),
            "{err:?}"
        );
    }
}

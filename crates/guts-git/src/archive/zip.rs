//! The zip format exactly as git's `archive-zip.c` writes it: a local
//! header with an extended-timestamp (`UT`) extra field per entry, sizes
//! and CRC in the local header (no data descriptors: every blob is read
//! whole), deflate through zlib at the requested level (or stored when
//! that does not make it smaller), the DOS time in the node's local time
//! zone, the central directory, ZIP64 end records only when needed, and
//! the commit id as the archive comment.

use std::io::Write;

use flate2::{Compress, Compression, FlushCompress, Status};

use super::{Entry, EntryKind, Meta, Sink};
use crate::{Error, Result};

const UTF8_FLAG: u16 = 1 << 11;
const METHOD_STORE: u16 = 0;
const METHOD_DEFLATE: u16 = 8;
/// Size of git's `UT` extra field: magic, size, flags, mtime.
const EXTRA_MTIME_SIZE: u16 = 9;
/// `file` bytes git's `buffer_is_binary` looks at for a NUL.
const FIRST_FEW_BYTES: usize = 8000;

/// A zip archive being written; the central directory is kept in memory
/// (about 60 bytes plus the path per entry), file contents are not.
pub(crate) struct Zip<W> {
    out: W,
    /// `None`: zlib's default level; `Some(0)`: store everything.
    level: Option<u32>,
    offset: u64,
    dir: Vec<u8>,
    entries: u64,
    max_creator: u16,
    dos_date: u16,
    dos_time: u16,
    mtime: u32,
    commit: Option<gix_hash::ObjectId>,
}

impl<W: Write> Zip<W> {
    /// A zip archive to `out`.
    pub(crate) fn new(out: W, meta: &Meta, level: Option<u32>) -> Result<Self> {
        let (dos_date, dos_time) = dos_time(meta.time)?;
        Ok(Zip {
            out,
            level,
            offset: 0,
            dir: Vec::new(),
            entries: 0,
            max_creator: 0,
            dos_date,
            dos_time,
            // git copies the low 32 bits of its time into the extra field.
            mtime: meta.time as u32,
            commit: meta.commit,
        })
    }

    fn extra(&self) -> [u8; EXTRA_MTIME_SIZE as usize] {
        let mut extra = [0u8; EXTRA_MTIME_SIZE as usize];
        extra[..2].copy_from_slice(&0x5455u16.to_le_bytes());
        extra[2..4].copy_from_slice(&5u16.to_le_bytes());
        extra[4] = 1;
        extra[5..].copy_from_slice(&self.mtime.to_le_bytes());
        extra
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.out.write_all(data)?;
        self.offset += data.len() as u64;
        Ok(())
    }
}

/// How one entry is stored.
struct Stored<'a> {
    method: u16,
    attr2: u32,
    creator: u16,
    crc: u32,
    size: u64,
    body: std::borrow::Cow<'a, [u8]>,
    /// git's "internal attributes": 1 for text, 0 for binary or no content.
    text: u16,
}

fn store<'a>(e: &Entry<'a>, level: Option<u32>) -> Result<Stored<'a>> {
    let data = e.data;
    let mut s = Stored {
        method: METHOD_STORE,
        attr2: 16,
        creator: 0,
        crc: 0,
        size: 0,
        body: std::borrow::Cow::Borrowed(&[][..]),
        text: 0,
    };
    if matches!(e.kind, EntryKind::Dir | EntryKind::Gitlink) {
        return Ok(s);
    }
    let link = e.kind == EntryKind::Link;
    s.attr2 = if link {
        (e.mode | 0o777) << 16
    } else if e.mode & 0o111 != 0 {
        e.mode << 16
    } else {
        0
    };
    if link || e.mode & 0o111 != 0 {
        s.creator = 0x0317;
    }
    s.crc = crc32fast::hash(data);
    s.size = data.len() as u64;
    s.text = u16::from(!data[..data.len().min(FIRST_FEW_BYTES)].contains(&0));
    s.body = std::borrow::Cow::Borrowed(data);
    if !link && level != Some(0) && !data.is_empty() {
        if let Some(deflated) = deflate_raw(data, level)? {
            if deflated.len() < data.len() {
                s.method = METHOD_DEFLATE;
                s.body = std::borrow::Cow::Owned(deflated);
            }
        }
    }
    Ok(s)
}

/// git's `zlib_deflate_raw`: one `deflate(Z_FINISH)` into a buffer of
/// `deflateBound` bytes.
fn deflate_raw(data: &[u8], level: Option<u32>) -> Result<Option<Vec<u8>>> {
    let mut z = Compress::new(Compression::new(level.unwrap_or(6)), false);
    // zlib's deflateBound for the default memLevel/windowBits, rounded up.
    let bound = data.len() + (data.len() >> 12) + (data.len() >> 14) + (data.len() >> 25) + 13 + 64;
    let mut out = Vec::with_capacity(bound);
    loop {
        let status = z
            .compress_vec(data, &mut out, FlushCompress::Finish)
            .map_err(|e| Error::Archive(format!("fatal: deflate error ({e})")))?;
        match status {
            Status::StreamEnd => return Ok(Some(out)),
            // Out of room: git gives up deflating and stores the file.
            _ if out.len() == out.capacity() => return Ok(None),
            _ => {}
        }
    }
}

impl<W: Write> Sink for Zip<W> {
    fn entry(&mut self, e: &Entry<'_>) -> Result<()> {
        let path = e.path;
        let mut flags = 0u16;
        if !path.is_ascii() && std::str::from_utf8(path).is_ok() {
            flags |= UTF8_FLAG;
        }
        let Ok(path_len) = u16::try_from(path.len()) else {
            return Err(Error::Archive(format!(
                "error: path too long ({} chars, SHA1: {}): {}",
                path.len(),
                e.id,
                String::from_utf8_lossy(path)
            )));
        };
        let s = store(e, self.level)?;
        let (Ok(size), Ok(csize)) = (u32::try_from(s.size), u32::try_from(s.body.len())) else {
            return Err(Error::Unsupported("zip entries of 4 GiB or more".into()));
        };
        self.max_creator = self.max_creator.max(s.creator);
        let offset = self.offset;
        let extra = self.extra();
        let mut h = Vec::with_capacity(30 + path.len() + extra.len());
        h.extend_from_slice(&0x04034b50u32.to_le_bytes());
        h.extend_from_slice(&10u16.to_le_bytes());
        h.extend_from_slice(&flags.to_le_bytes());
        h.extend_from_slice(&s.method.to_le_bytes());
        h.extend_from_slice(&self.dos_time.to_le_bytes());
        h.extend_from_slice(&self.dos_date.to_le_bytes());
        h.extend_from_slice(&s.crc.to_le_bytes());
        h.extend_from_slice(&csize.to_le_bytes());
        h.extend_from_slice(&size.to_le_bytes());
        h.extend_from_slice(&path_len.to_le_bytes());
        h.extend_from_slice(&EXTRA_MTIME_SIZE.to_le_bytes());
        h.extend_from_slice(path);
        h.extend_from_slice(&extra);
        self.write(&h)?;
        self.write(&s.body)?;

        let zip64_offset = offset > 0xffff_ffff;
        let d = &mut self.dir;
        d.extend_from_slice(&0x02014b50u32.to_le_bytes());
        d.extend_from_slice(&s.creator.to_le_bytes());
        d.extend_from_slice(&10u16.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&s.method.to_le_bytes());
        d.extend_from_slice(&self.dos_time.to_le_bytes());
        d.extend_from_slice(&self.dos_date.to_le_bytes());
        d.extend_from_slice(&s.crc.to_le_bytes());
        d.extend_from_slice(&csize.to_le_bytes());
        d.extend_from_slice(&size.to_le_bytes());
        d.extend_from_slice(&path_len.to_le_bytes());
        let extra_len = EXTRA_MTIME_SIZE + if zip64_offset { 12 } else { 0 };
        d.extend_from_slice(&extra_len.to_le_bytes());
        d.extend_from_slice(&0u16.to_le_bytes()); // comment length
        d.extend_from_slice(&0u16.to_le_bytes()); // disk
        d.extend_from_slice(&s.text.to_le_bytes());
        d.extend_from_slice(&s.attr2.to_le_bytes());
        d.extend_from_slice(&clamp32(offset).to_le_bytes());
        d.extend_from_slice(path);
        d.extend_from_slice(&extra);
        if zip64_offset {
            d.extend_from_slice(&1u16.to_le_bytes());
            d.extend_from_slice(&8u16.to_le_bytes());
            d.extend_from_slice(&offset.to_le_bytes());
        }
        self.entries += 1;
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        let dir = std::mem::take(&mut self.dir);
        let (dir_offset, entries) = (self.offset, self.entries);
        let clamped = entries > 0xffff || dir_offset > 0xffff_ffff;
        self.out.write_all(&dir)?;
        if clamped {
            let mut t = Vec::with_capacity(76);
            t.extend_from_slice(&0x06064b50u32.to_le_bytes());
            t.extend_from_slice(&44u64.to_le_bytes());
            t.extend_from_slice(&self.max_creator.to_le_bytes());
            t.extend_from_slice(&45u16.to_le_bytes());
            t.extend_from_slice(&0u32.to_le_bytes());
            t.extend_from_slice(&0u32.to_le_bytes());
            t.extend_from_slice(&entries.to_le_bytes());
            t.extend_from_slice(&entries.to_le_bytes());
            t.extend_from_slice(&(dir.len() as u64).to_le_bytes());
            t.extend_from_slice(&dir_offset.to_le_bytes());
            t.extend_from_slice(&0x07064b50u32.to_le_bytes());
            t.extend_from_slice(&0u32.to_le_bytes());
            t.extend_from_slice(&(dir_offset + dir.len() as u64).to_le_bytes());
            t.extend_from_slice(&1u32.to_le_bytes());
            self.out.write_all(&t)?;
        }
        let entries16 = entries.min(0xffff) as u16;
        let mut t = Vec::with_capacity(22 + 40);
        t.extend_from_slice(&0x06054b50u32.to_le_bytes());
        t.extend_from_slice(&0u16.to_le_bytes());
        t.extend_from_slice(&0u16.to_le_bytes());
        t.extend_from_slice(&entries16.to_le_bytes());
        t.extend_from_slice(&entries16.to_le_bytes());
        t.extend_from_slice(&(dir.len() as u32).to_le_bytes());
        t.extend_from_slice(&clamp32(dir_offset).to_le_bytes());
        let comment = self.commit.map(|c| c.to_hex().to_string());
        let comment_len = comment.as_ref().map_or(0, String::len) as u16;
        t.extend_from_slice(&comment_len.to_le_bytes());
        if let Some(c) = &comment {
            t.extend_from_slice(c.as_bytes());
        }
        self.out.write_all(&t)?;
        Ok(())
    }
}

fn clamp32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The DOS date and time of `time` in the local time zone (as git's
/// `localtime_r`), so the node and `git http-backend` on one machine agree.
fn dos_time(time: u64) -> Result<(u16, u16)> {
    let t = libc::time_t::try_from(time).map_err(|_| {
        Error::Archive(format!(
            "fatal: timestamp too large for this system: {time}"
        ))
    })?;
    // SAFETY: `tm` is plain data, fully written by `localtime_r` on
    // success; both pointers are valid for the duration of the call.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return Err(Error::Archive(format!(
                "fatal: timestamp too large for this system: {time}"
            )));
        }
        tm
    };
    let date = tm.tm_mday + (tm.tm_mon + 1) * 32 + (tm.tm_year + 1900 - 1980) * 512;
    let clock = tm.tm_sec / 2 + tm.tm_min * 32 + tm.tm_hour * 2048;
    Ok((date as u16, clock as u16))
}

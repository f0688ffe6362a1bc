//! The tar format exactly as git's `archive-tar.c` writes it: ustar headers
//! with uid/gid 0 and user/group `root`, a pax global header carrying the
//! commit id, pax extended headers for long paths and link targets, and
//! output in 10240-byte blocks (so its length is a multiple of 10240).
//!
//! `tgz`/`tar.gz` compress those blocks the way git's internal gzip does:
//! one zlib deflate call per block into a 16 KiB output buffer, with a
//! gzip header of mtime 0 and OS "Unix"; with the same zlib, the bytes are
//! the same.

use std::io::{self, Write};

use flate2::{Compress, Compression, FlushCompress, Status};
use gix_hash::ObjectId;

use super::{Entry, EntryKind, Meta, Sink};
use crate::{Error, Result};

const RECORD: usize = 512;
const BLOCK: usize = RECORD * 20;
/// Largest size or mtime a ustar header holds (11 octal digits).
const USTAR_MAX: u64 = 0o77777777777;
/// git's default `tar.umask`.
const UMASK: u32 = 0o002;

/// Where the blocks go: straight out, or through gzip.
pub(crate) trait Blocks {
    /// Take one full block.
    fn block(&mut self, data: &[u8]) -> io::Result<()>;
    /// The archive is complete.
    fn end(&mut self) -> io::Result<()>;
}

/// Blocks written as they are.
pub(crate) struct Plain<W>(W);

impl<W: Write> Blocks for Plain<W> {
    fn block(&mut self, data: &[u8]) -> io::Result<()> {
        self.0.write_all(data)
    }
    fn end(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A tar archive being written.
pub(crate) struct Tar<B> {
    out: B,
    block: Vec<u8>,
    time: u64,
}

impl<W: Write> Tar<Plain<W>> {
    /// Plain tar to `out`.
    pub(crate) fn new(out: W, meta: &Meta) -> Result<Self> {
        Tar::start(Plain(out), meta)
    }
}

impl<W: Write> Tar<Gzip<W>> {
    /// Gzipped tar to `out`; `level` as given to git (`None`: zlib's default).
    pub(crate) fn gzip(out: W, meta: &Meta, level: Option<u32>) -> Result<Self> {
        Tar::start(Gzip::new(out, level)?, meta)
    }
}

impl<B: Blocks> Tar<B> {
    fn start(out: B, meta: &Meta) -> Result<Self> {
        let mut tar = Tar {
            out,
            block: Vec::with_capacity(BLOCK),
            time: meta.time,
        };
        let mut ext = Vec::new();
        if let Some(commit) = meta.commit {
            pax_record(&mut ext, "comment", commit.to_hex().to_string().as_bytes());
        }
        if tar.time > USTAR_MAX {
            pax_record(&mut ext, "mtime", tar.time.to_string().as_bytes());
            tar.time = USTAR_MAX;
        }
        if !ext.is_empty() {
            let mut header = [0u8; RECORD];
            header[156] = b'g';
            put(&mut header[..100], b"pax_global_header");
            tar.prepare(&mut header, 0o100666, ext.len() as u64);
            tar.blocked(&header)?;
            tar.blocked(&ext)?;
        }
        Ok(tar)
    }

    /// Queue `data` into blocks, then pad to a whole record.
    fn blocked(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = (BLOCK - self.block.len()).min(data.len());
            self.block.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.emit_if_full()?;
        }
        let tail = self.block.len() % RECORD;
        if tail != 0 {
            self.block.resize(self.block.len() + RECORD - tail, 0);
            self.emit_if_full()?;
        }
        Ok(())
    }

    fn emit_if_full(&mut self) -> io::Result<()> {
        if self.block.len() == BLOCK {
            self.out.block(&self.block)?;
            self.block.clear();
        }
        Ok(())
    }

    /// Fill in the numeric fields and the checksum.
    fn prepare(&self, h: &mut [u8; RECORD], mode: u32, size: u64) {
        octal(&mut h[100..108], u64::from(mode & 0o7777));
        let is_reg = mode & 0o170000 == 0o100000;
        octal(&mut h[124..136], if is_reg { size } else { 0 });
        octal(&mut h[136..148], self.time);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        put(&mut h[265..297], b"root");
        put(&mut h[297..329], b"root");
        octal(&mut h[329..337], 0);
        octal(&mut h[337..345], 0);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let sum: u32 = h[..148]
            .iter()
            .chain(&h[156..])
            .map(|&b| u32::from(b))
            .sum();
        octal(&mut h[148..156], u64::from(sum + 8 * u32::from(b' ')));
    }
}

impl<B: Blocks> Sink for Tar<B> {
    fn entry(&mut self, e: &Entry<'_>) -> Result<()> {
        let mut header = [0u8; RECORD];
        let (flag, mode) = match e.kind {
            EntryKind::Dir | EntryKind::Gitlink => (b'5', (e.mode | 0o777) & !UMASK),
            EntryKind::Link => (b'2', e.mode | 0o777),
            EntryKind::File => {
                let bits = if e.mode & 0o100 != 0 { 0o777 } else { 0o666 };
                (b'0', (e.mode | bits) & !UMASK)
            }
        };
        header[156] = flag;
        let mut ext = Vec::new();
        let path = e.path;
        if path.len() > 100 {
            let plen = path_prefix(path, 155);
            let rest = path.len() - plen - 1;
            if plen > 0 && rest <= 100 {
                header[345..345 + plen].copy_from_slice(&path[..plen]);
                header[..rest].copy_from_slice(&path[plen + 1..]);
            } else {
                put(&mut header[..100], format!("{}.data", e.id).as_bytes());
                pax_record(&mut ext, "path", path);
            }
        } else {
            header[..path.len()].copy_from_slice(path);
        }
        if e.kind == EntryKind::Link {
            if e.data.len() > 100 {
                put(
                    &mut header[157..257],
                    format!("see {}.paxheader", e.id).as_bytes(),
                );
                pax_record(&mut ext, "linkpath", e.data);
            } else {
                header[157..157 + e.data.len()].copy_from_slice(e.data);
            }
        }
        let size = e.data.len() as u64;
        let mut in_header = size;
        if e.kind == EntryKind::File && size > USTAR_MAX {
            in_header = 0;
            pax_record(&mut ext, "size", size.to_string().as_bytes());
        }
        self.prepare(&mut header, mode, in_header);
        if !ext.is_empty() {
            self.extended_header(&e.id, &ext)?;
        }
        self.blocked(&header)?;
        if e.kind == EntryKind::File && size > 0 {
            self.blocked(e.data)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        // Two zero records end the archive; the rest of the block is zeros too.
        let tail = BLOCK - self.block.len();
        self.block.resize(BLOCK, 0);
        self.out.block(&self.block)?;
        if tail < 2 * RECORD {
            self.block.iter_mut().for_each(|b| *b = 0);
            self.out.block(&self.block)?;
        }
        self.block.clear();
        self.out.end()?;
        Ok(())
    }
}

impl<B: Blocks> Tar<B> {
    fn extended_header(&mut self, id: &ObjectId, ext: &[u8]) -> Result<()> {
        let mut header = [0u8; RECORD];
        header[156] = b'x';
        put(&mut header[..100], format!("{id}.paxheader").as_bytes());
        self.prepare(&mut header, 0o100666, ext.len() as u64);
        self.blocked(&header)?;
        self.blocked(ext)?;
        Ok(())
    }
}

/// Where to split a long path into ustar prefix and name: the last `/`
/// within the first `max` bytes (ignoring a trailing one); 0 if none.
fn path_prefix(path: &[u8], max: usize) -> usize {
    let mut i = path.len();
    if i > 1 && path[i - 1] == b'/' {
        i -= 1;
    }
    i = i.min(max);
    loop {
        i -= 1;
        if i == 0 || path[i] == b'/' {
            return i;
        }
    }
}

/// Append a pax record `"<len> <keyword>=<value>\n"`, `len` counting itself.
fn pax_record(out: &mut Vec<u8>, keyword: &str, value: &[u8]) {
    let mut len = 1 + 1 + keyword.len() + 1 + value.len() + 1;
    let mut tmp = 1;
    while len / 10 >= tmp {
        len += 1;
        tmp *= 10;
    }
    out.extend_from_slice(format!("{len} {keyword}=").as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Zero-padded octal filling all but the last byte of `field` (left NUL).
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    let text = &text.as_bytes()[text.len().saturating_sub(digits)..];
    field[..text.len()].copy_from_slice(text);
    field[digits] = 0;
}

/// Copy `text` into `field`, truncated to leave a NUL (as `strlcpy`).
fn put(field: &mut [u8], text: &[u8]) {
    let n = text.len().min(field.len() - 1);
    field[..n].copy_from_slice(&text[..n]);
}

/// git's internal `gzip`: raw deflate between a gzip header and trailer,
/// driven with the same calls as git drives zlib.
pub(crate) struct Gzip<W> {
    out: W,
    z: Compress,
    buf: Vec<u8>,
    crc: crc32fast::Hasher,
    len: u64,
}

const GZIP_OUT: usize = 16384;

impl<W: Write> Gzip<W> {
    fn new(out: W, level: Option<u32>) -> Result<Self> {
        let level = match level {
            None => 6,
            Some(l) if l <= 9 => l,
            Some(_) => {
                return Err(Error::Archive(
                    "fatal: deflateInit2: stream consistency error (no message)".into(),
                ))
            }
        };
        let xfl = match level {
            9 => 2,
            0 | 1 => 4,
            _ => 0,
        };
        let mut buf = Vec::with_capacity(GZIP_OUT);
        buf.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 3]);
        Ok(Gzip {
            out,
            z: Compress::new(Compression::new(level), false),
            buf,
            crc: crc32fast::Hasher::new(),
            len: 0,
        })
    }

    /// git's `tgz_deflate`: deflate until the input is used (or, finishing,
    /// the stream ends), writing the output buffer out whenever it is full.
    fn deflate(&mut self, mut input: &[u8], flush: FlushCompress) -> io::Result<()> {
        let finish = matches!(flush, FlushCompress::Finish);
        while !input.is_empty() || finish {
            let (before_in, before_out) = (self.z.total_in(), self.z.total_out());
            let start = self.buf.len();
            self.buf.resize(GZIP_OUT, 0);
            let status = self.z.compress(input, &mut self.buf[start..], flush);
            let produced = (self.z.total_out() - before_out) as usize;
            self.buf.truncate(start + produced);
            input = &input[(self.z.total_in() - before_in) as usize..];
            let status = status.map_err(|e| io::Error::other(format!("deflate error ({e})")))?;
            let ended = status == Status::StreamEnd;
            if self.buf.len() == GZIP_OUT || ended {
                self.out.write_all(&self.buf)?;
                self.buf.clear();
                if ended {
                    break;
                }
            }
        }
        Ok(())
    }
}

impl<W: Write> Blocks for Gzip<W> {
    fn block(&mut self, data: &[u8]) -> io::Result<()> {
        self.crc.update(data);
        self.len += data.len() as u64;
        self.deflate(data, FlushCompress::None)
    }

    /// End the deflate stream and write the gzip trailer.
    fn end(&mut self) -> io::Result<()> {
        self.deflate(&[], FlushCompress::Finish)?;
        let crc = std::mem::replace(&mut self.crc, crc32fast::Hasher::new()).finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.write_all(&(self.len as u32).to_le_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_count_their_own_length() {
        let mut v = Vec::new();
        pax_record(&mut v, "comment", &[b'a'; 40]);
        assert_eq!(&v[..3], b"52 ");
        assert_eq!(v.len(), 52);
        let mut v = Vec::new();
        pax_record(&mut v, "path", &[b'x'; 94]);
        assert_eq!(v.len(), 104);
        assert_eq!(&v[..4], b"104 ");
    }

    #[test]
    fn long_paths_split_at_a_slash() {
        let path = [&[b'a'; 60][..], b"/", &[b'b'; 60]].concat();
        assert_eq!(path_prefix(&path, 155), 60);
        assert_eq!(path_prefix(&[b'c'; 120], 155), 0);
    }
}

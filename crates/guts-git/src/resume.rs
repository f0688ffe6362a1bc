//! Resuming an interrupted protocol v2 `fetch` response (between nodes).
//!
//! git itself cannot resume a fetch: a dropped connection loses the whole
//! pack. Between Guts nodes both ends are ours, so:
//!
//! - the receiving side keeps the pack bytes that arrived in a [`Partial`]
//!   file, keyed by the exact fetch request, and asks again with the same
//!   request plus a [`ResumePoint`]: how many pack bytes it holds and their
//!   SHA-1;
//! - the serving side runs upload-pack as usual and writes its response
//!   through [`SkipPrefix`], which drops the first `offset` bytes of the
//!   pack after checking that they hash to the same value. Pack generation
//!   is deterministic for the same request over the same stored packs, so
//!   only the rest crosses the network. If the prefix differs (the
//!   repository was repacked or changed), the server says so on band 3 and
//!   the receiver starts over.
//!
//! The hash only detects a mismatch; it is not what makes the result
//! trustworthy: the resumed pack is indexed, hashed and checked for
//! connectivity like any other ([`crate::pack_in`]).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Directory under a repository's objects directory holding partial packs.
const RESUME_DIR: &str = "resume";

/// How much of a pack the receiver already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePoint {
    /// Pack bytes held (from the `PACK` header on).
    pub offset: u64,
    /// SHA-1 of those bytes.
    pub sha1: [u8; 20],
}

fn sha1_of(mut r: impl Read) -> io::Result<[u8; 20]> {
    let mut h = gix_hash::hasher(gix_hash::Kind::Sha1);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    finish(h)
}

fn finish(h: gix_hash::Hasher) -> io::Result<[u8; 20]> {
    let id = h.try_finalize().map_err(io::Error::other)?;
    id.as_bytes()
        .try_into()
        .map_err(|_| io::Error::other("not a SHA-1 digest"))
}

/// The pack bytes kept from an interrupted fetch of one request.
#[derive(Debug)]
pub struct Partial {
    path: PathBuf,
}

impl Partial {
    /// The partial pack for `request` (the exact fetch request body) in
    /// `objects_dir`. Nothing is created until bytes arrive.
    pub fn for_request(objects_dir: &Path, request: &[u8]) -> Partial {
        let mut h = gix_hash::hasher(gix_hash::Kind::Sha1);
        h.update(request);
        let name = finish(h)
            .map(|d| d.iter().map(|b| format!("{b:02x}")).collect::<String>())
            .unwrap_or_else(|_| "request".to_owned());
        Partial {
            path: objects_dir.join(RESUME_DIR).join(format!("{name}.pack")),
        }
    }

    /// Where the bytes are kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What to tell the server, if bytes of an earlier attempt are kept.
    pub fn point(&self) -> io::Result<Option<ResumePoint>> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let offset = file.metadata()?.len();
        if offset == 0 {
            return Ok(None);
        }
        Ok(Some(ResumePoint {
            offset,
            sha1: sha1_of(file)?,
        }))
    }

    /// Forget the kept bytes (and the directory, once empty).
    pub fn discard(&self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// A reader of the whole pack: the first `kept` bytes from the file,
    /// then `network` (the pack bytes the server sends now), which are
    /// appended to the file as they are read. Other partial packs of the
    /// repository (other requests) are removed: one is kept at a time.
    pub fn reader<R: Read>(&self, kept: u64, network: R) -> io::Result<ResumeReader<R>> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)?.flatten() {
            if entry.path() != self.path {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)?;
        // Bytes beyond what the server agreed to resume from are dropped.
        file.set_len(kept)?;
        let head = File::open(&self.path)?.take(kept);
        let mut tail = file;
        std::io::Seek::seek(&mut tail, io::SeekFrom::Start(kept))?;
        Ok(ResumeReader {
            head,
            network,
            tail: BufWriter::new(tail),
            transport_failed: false,
        })
    }

    /// After the transfer: keep the bytes if reading from the network
    /// broke off (so the next attempt resumes), discard them otherwise
    /// (done, a refusal by the server, an invalid or oversized pack).
    /// Returns whether the bytes were kept.
    pub fn settle<R>(&self, reader: ResumeReader<R>, succeeded: bool) -> bool {
        let keep = !succeeded && reader.transport_failed;
        let mut tail = reader.tail;
        if keep && tail.flush().is_ok() {
            return true;
        }
        drop(tail);
        self.discard();
        false
    }
}

/// See [`Partial::reader`].
pub struct ResumeReader<R> {
    head: io::Take<File>,
    network: R,
    tail: BufWriter<File>,
    transport_failed: bool,
}

impl<R: Read> Read for ResumeReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.head.limit() > 0 {
            let n = self.head.read(out)?;
            if n > 0 {
                return Ok(n);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the kept partial pack is shorter than recorded",
            ));
        }
        match self.network.read(out) {
            Ok(n) => {
                self.tail.write_all(&out[..n])?;
                Ok(n)
            }
            Err(e) => {
                // Errors the server sent on purpose (band 3, `ERR`) are
                // "remote error: ..."; anything else is the transport.
                self.transport_failed = !e.to_string().starts_with("remote error");
                Err(e)
            }
        }
    }
}

/// The pack bytes a client has passed on so far, counted and hashed as
/// they go: the [`ResumePoint`] to ask for when the connection drops
/// (`git-remote-guts`, which holds no pack itself, only counts). Plain
/// SHA-1 (SHA-NI where the CPU has it): the server checks the same bytes
/// with collision detection ([`SkipPrefix`]), and the pack git indexes is
/// verified as any other.
#[derive(Clone, Default)]
pub struct PackPrefix {
    offset: u64,
    hasher: sha1::Sha1,
}

impl std::fmt::Debug for PackPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackPrefix")
            .field("offset", &self.offset)
            .finish()
    }
}

impl PackPrefix {
    /// Add pack bytes passed on.
    pub fn update(&mut self, data: &[u8]) {
        sha1::Digest::update(&mut self.hasher, data);
        self.offset += data.len() as u64;
    }

    /// Pack bytes passed on so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The point to resume from (`None` before any pack byte).
    pub fn point(&self) -> io::Result<Option<ResumePoint>> {
        if self.offset == 0 {
            return Ok(None);
        }
        Ok(Some(ResumePoint {
            offset: self.offset,
            sha1: sha1::Digest::finalize(self.hasher.clone()).into(),
        }))
    }
}

/// A `Write` over a v2 `fetch` response that drops the first
/// [`ResumePoint::offset`] bytes of the pack (band 1 of the `packfile`
/// section) once they hash to [`ResumePoint::sha1`]. Everything else
/// (section headers, progress, the final flush) passes through unchanged.
/// If the prefix differs or the pack is shorter, a band-3 message is
/// written and the write fails, which ends upload-pack.
pub struct SkipPrefix<W: Write> {
    inner: W,
    point: ResumePoint,
    to_skip: u64,
    hasher: Option<gix_hash::Hasher>,
    pending: Vec<u8>,
    in_pack: bool,
}

impl<W: Write> SkipPrefix<W> {
    /// Wrap the response writer.
    pub fn new(inner: W, point: ResumePoint) -> Self {
        SkipPrefix {
            inner,
            point,
            to_skip: point.offset,
            hasher: Some(gix_hash::hasher(gix_hash::Kind::Sha1)),
            pending: Vec::new(),
            in_pack: false,
        }
    }

    /// The wrapped writer.
    pub fn into_inner(self) -> W {
        self.inner
    }

    fn refuse(&mut self, why: &str) -> io::Error {
        let msg = format!("\x03cannot resume: {why}\n");
        let _ = crate::pktline::write_pkt(&mut self.inner, msg.as_bytes());
        let _ = self.inner.flush();
        io::Error::other(format!("cannot resume: {why}"))
    }

    fn packet(&mut self, pkt: &[u8]) -> io::Result<()> {
        let payload = &pkt[4..];
        if !self.in_pack {
            // With `sideband-all` the section header is on band 1 too.
            if payload == b"packfile\n" || payload == b"\x01packfile\n" {
                self.in_pack = true;
            }
            return self.inner.write_all(pkt);
        }
        if pkt.len() == 4 && self.to_skip > 0 {
            // The pack ended (flush) before the offset.
            return Err(self.refuse("the pack is shorter than the bytes held"));
        }
        match payload.first() {
            Some(1) if self.to_skip > 0 => {
                let data = &payload[1..];
                let n = usize::try_from(self.to_skip)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                if let Some(h) = self.hasher.as_mut() {
                    h.update(&data[..n]);
                }
                self.to_skip -= n as u64;
                if self.to_skip == 0 {
                    let digest = match self.hasher.take() {
                        Some(h) => finish(h)?,
                        None => [0; 20],
                    };
                    if digest != self.point.sha1 {
                        return Err(self.refuse("the bytes held differ from this pack"));
                    }
                }
                let rest = &data[n..];
                if rest.is_empty() {
                    return Ok(());
                }
                let mut out = Vec::with_capacity(rest.len() + 1);
                out.push(1);
                out.extend_from_slice(rest);
                crate::pktline::write_pkt(&mut self.inner, &out)
            }
            _ => self.inner.write_all(pkt),
        }
    }
}

impl<W: Write> Write for SkipPrefix<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        let mut pos = 0;
        while self.pending.len() - pos >= 4 {
            let len = std::str::from_utf8(&self.pending[pos..pos + 4])
                .ok()
                .and_then(|h| usize::from_str_radix(h, 16).ok())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad pkt-line"))?;
            // 0000 flush, 0001 delim, 0002 response end: 4 bytes in all.
            let total = if len < 4 { 4 } else { len };
            if self.pending.len() - pos < total {
                break;
            }
            let pkt = self.pending[pos..pos + total].to_vec();
            self.packet(&pkt)?;
            pos += total;
        }
        self.pending.drain(..pos);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pktline::{write_pkt, PackfileReader};

    /// A v2 fetch response carrying `pack` in band-1 packets of `chunk` bytes, with progress.
    fn response(pack: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        write_pkt(&mut out, b"packfile\n").expect("write");
        write_pkt(&mut out, b"\x02counting objects\n").expect("write");
        for c in pack.chunks(chunk) {
            let mut p = vec![1u8];
            p.extend_from_slice(c);
            write_pkt(&mut out, &p).expect("write");
        }
        out.extend_from_slice(b"0000");
        out
    }

    fn pack_bytes(resp: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        PackfileReader::new(resp).read_to_end(&mut out)?;
        Ok(out)
    }

    fn point(prefix: &[u8]) -> ResumePoint {
        ResumePoint {
            offset: prefix.len() as u64,
            sha1: sha1_of(prefix).expect("hash"),
        }
    }

    /// Write `resp` through a SkipPrefix in odd-sized pieces.
    fn skip(resp: &[u8], p: ResumePoint) -> (Vec<u8>, io::Result<()>) {
        let mut w = SkipPrefix::new(Vec::new(), p);
        let mut result = Ok(());
        for piece in resp.chunks(7) {
            if let Err(e) = w.write_all(piece) {
                result = Err(e);
                break;
            }
        }
        (w.into_inner(), result)
    }

    #[test]
    fn skips_exactly_the_held_prefix() {
        let pack: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let resp = response(&pack, 1000);
        for offset in [1, 999, 1000, 1001, 2500, 4999] {
            let (out, result) = skip(&resp, point(&pack[..offset]));
            result.expect("resumed");
            assert_eq!(pack_bytes(&out).expect("pack"), &pack[offset..], "{offset}");
        }
    }

    #[test]
    fn a_counted_prefix_resumes_where_it_stopped() {
        let pack: Vec<u8> = (0..3000u32).map(|i| (i % 241) as u8).collect();
        let mut prefix = PackPrefix::default();
        assert_eq!(prefix.point().expect("point"), None);
        prefix.update(&pack[..700]);
        prefix.update(&pack[700..1234]);
        let p = prefix.point().expect("point").expect("some");
        assert_eq!(p, point(&pack[..1234]));
        let (out, result) = skip(&response(&pack, 500), p);
        result.expect("resumed");
        assert_eq!(pack_bytes(&out).expect("pack"), &pack[1234..]);
    }

    #[test]
    fn a_different_or_longer_prefix_is_refused_on_band_3() {
        let pack = vec![5u8; 3000];
        let resp = response(&pack, 1000);
        let mut other = pack[..1500].to_vec();
        other[10] ^= 1;
        for p in [point(&other), point(&[5u8; 3001])] {
            let (out, result) = skip(&resp, p);
            assert!(result.is_err());
            let err = pack_bytes(&out).expect_err("refused");
            assert!(err.to_string().contains("cannot resume"), "{err}");
            assert!(err.to_string().starts_with("remote error"), "{err}");
        }
    }

    #[test]
    fn partial_keeps_what_arrived_and_resumes_from_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let pack: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let partial = Partial::for_request(dir.path(), b"want x");
        assert_eq!(partial.point().expect("point"), None);

        // First attempt: the connection drops after 4000 bytes.
        let broken = io::Read::chain(&pack[..4000], FailingReader);
        let mut r = partial.reader(0, broken).expect("reader");
        let mut got = Vec::new();
        assert!(r.read_to_end(&mut got).is_err());
        assert_eq!(got, &pack[..4000]);
        partial.settle(r, false);
        let p = partial.point().expect("point").expect("bytes kept");
        assert_eq!(p, point(&pack[..4000]));

        // Second attempt: the server sends the rest only.
        let mut r = partial.reader(p.offset, &pack[4000..]).expect("reader");
        let mut whole = Vec::new();
        r.read_to_end(&mut whole).expect("read");
        assert_eq!(whole, pack);
        partial.settle(r, true);
        assert_eq!(partial.point().expect("point"), None, "discarded when done");

        // A refusal by the server discards what was kept.
        let refused = io::Read::chain(&pack[..10], RemoteErrorReader);
        let mut r = partial.reader(0, refused).expect("reader");
        assert!(r.read_to_end(&mut Vec::new()).is_err());
        partial.settle(r, false);
        assert_eq!(partial.point().expect("point"), None);
    }

    struct FailingReader;
    impl Read for FailingReader {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"))
        }
    }

    struct RemoteErrorReader;
    impl Read for RemoteErrorReader {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("remote error: cannot resume: no"))
        }
    }
}

//! The pkt-line framing of git's wire protocol (`gitprotocol-common`).
//!
//! A pkt-line is a 4-digit hexadecimal length (which counts itself) followed by
//! that many bytes minus four. The lengths `0000`, `0001` and `0002` are the
//! special packets *flush*, *delim* and *response-end*; `0003` is invalid.
//! [`PktReader`] parses them from any [`BufRead`] without ever trusting the
//! length beyond [`MAX_PKT_LEN`]; [`PktWriter`] and [`SideBand`] produce them.
//! [`write_pkt`], [`write_flush`] and [`write_delim`] are the one place the
//! framing is written; code elsewhere calls them rather than writing raw bytes.

use std::io::{self, BufRead, Read, Write};

use crate::error::{Error, Result};

/// The largest pkt-line git allows, length prefix included.
pub const MAX_PKT_LEN: usize = 65520;
/// The largest payload of one pkt-line.
pub const MAX_PKT_DATA: usize = MAX_PKT_LEN - 4;
/// Payload limit of a `side-band` (not `-64k`) packet, band byte included.
pub const SIDE_BAND_SMALL_MAX: usize = 1000 - 4;

/// One packet read from the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// A packet with a payload (possibly empty, `0004`).
    Data(&'a [u8]),
    /// `0000`: end of a list or message.
    Flush,
    /// `0001`: separates sections in protocol v2.
    Delim,
    /// `0002`: end of a stateless response in protocol v2.
    ResponseEnd,
}

impl<'a> Packet<'a> {
    /// The payload as text with one trailing `\n` removed, or an error naming `what` was expected.
    pub fn as_text(&self, what: &str) -> Result<&'a str> {
        match self {
            Packet::Data(d) => {
                let d = d.strip_suffix(b"\n").unwrap_or(d);
                std::str::from_utf8(d).map_err(|_| Error::Protocol(format!("{what} is not UTF-8")))
            }
            other => Err(Error::Protocol(format!("expected {what}, got {other:?}"))),
        }
    }
}

/// Reads pkt-lines from a buffered reader, one at a time.
pub struct PktReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: BufRead> PktReader<R> {
    /// Wrap `inner`.
    pub fn new(inner: R) -> Self {
        PktReader {
            inner,
            buf: Vec::with_capacity(1024),
        }
    }

    /// Read the next packet; `Ok(None)` at a clean end of input (between packets).
    pub fn read(&mut self) -> Result<Option<Packet<'_>>> {
        let mut len_hex = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            let n = self.inner.read(&mut len_hex[got..]).map_err(Error::Io)?;
            if n == 0 {
                if got == 0 {
                    return Ok(None);
                }
                return Err(Error::Protocol("truncated pkt-line length".into()));
            }
            got += n;
        }
        let len = parse_len(&len_hex)?;
        match len {
            0 => return Ok(Some(Packet::Flush)),
            1 => return Ok(Some(Packet::Delim)),
            2 => return Ok(Some(Packet::ResponseEnd)),
            3 => return Err(Error::Protocol("invalid pkt-line length 0003".into())),
            _ => {}
        }
        if len > MAX_PKT_LEN {
            return Err(Error::Protocol(format!(
                "pkt-line length {len} exceeds the maximum of {MAX_PKT_LEN}"
            )));
        }
        self.buf.resize(len - 4, 0);
        self.inner.read_exact(&mut self.buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                Error::Protocol(format!("truncated pkt-line: expected {} bytes", len - 4))
            } else {
                Error::Io(e)
            }
        })?;
        Ok(Some(Packet::Data(&self.buf)))
    }

    /// Whether the input is exhausted (no further packet), without consuming anything.
    pub fn at_eof(&mut self) -> Result<bool> {
        Ok(self.inner.fill_buf().map_err(Error::Io)?.is_empty())
    }

    /// Read the next packet, treating end of input as a protocol error.
    pub fn read_required(&mut self) -> Result<Packet<'_>> {
        self.read()?
            .ok_or_else(|| Error::Protocol("unexpected end of request".into()))
    }

    /// Give back the underlying reader, positioned right after the last packet read.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

fn parse_len(hex: &[u8; 4]) -> Result<usize> {
    let mut len = 0usize;
    for &c in hex {
        let digit = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => {
                return Err(Error::Protocol(format!(
                    "bad pkt-line length {:?}",
                    String::from_utf8_lossy(hex)
                )))
            }
        };
        len = len * 16 + digit as usize;
    }
    Ok(len)
}

/// Writes pkt-lines to an inner writer.
pub struct PktWriter<W> {
    inner: W,
}

impl<W: Write> PktWriter<W> {
    /// Wrap `inner`.
    pub fn new(inner: W) -> Self {
        PktWriter { inner }
    }

    /// Write `data` as one packet. Fails if it is larger than [`MAX_PKT_DATA`].
    pub fn data(&mut self, data: &[u8]) -> io::Result<()> {
        write_pkt(&mut self.inner, data)
    }

    /// Write a text line; a `\n` is appended.
    pub fn line(&mut self, text: &str) -> io::Result<()> {
        let mut v = Vec::with_capacity(text.len() + 1);
        v.extend_from_slice(text.as_bytes());
        v.push(b'\n');
        self.data(&v)
    }

    /// Write a flush packet `0000`.
    pub fn flush_pkt(&mut self) -> io::Result<()> {
        write_flush(&mut self.inner)
    }

    /// Write a delim packet `0001`.
    pub fn delim(&mut self) -> io::Result<()> {
        write_delim(&mut self.inner)
    }

    /// Access the inner writer.
    pub fn inner_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Give back the inner writer.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// Write one pkt-line with `data` as payload.
pub fn write_pkt(w: &mut (impl Write + ?Sized), data: &[u8]) -> io::Result<()> {
    if data.len() > MAX_PKT_DATA {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "pkt-line payload too large",
        ));
    }
    let header = format!("{:04x}", data.len() + 4);
    w.write_all(header.as_bytes())?;
    w.write_all(data)
}

/// Write a flush packet `0000` (end of a list or message).
pub fn write_flush(w: &mut (impl Write + ?Sized)) -> io::Result<()> {
    w.write_all(b"0000")
}

/// Write a delim packet `0001` (section separator in protocol v2).
pub fn write_delim(w: &mut (impl Write + ?Sized)) -> io::Result<()> {
    w.write_all(b"0001")
}

/// The band of a side-band multiplexed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Band {
    /// Band 1: pack data.
    Data = 1,
    /// Band 2: progress messages shown as `remote: ...`.
    Progress = 2,
    /// Band 3: a fatal error message.
    Error = 3,
}

/// Multiplexes data, progress and errors onto side-band packets, or writes
/// data raw when the client did not ask for side-band.
pub struct SideBand<W> {
    inner: W,
    /// Max payload per packet, band byte excluded; `None` means no side-band.
    max: Option<usize>,
    progress: bool,
}

impl<W: Write> SideBand<W> {
    /// `mode` chooses the framing; `progress` whether band 2 messages are sent at all.
    pub fn new(inner: W, mode: SideBandMode, progress: bool) -> Self {
        let max = match mode {
            SideBandMode::None => None,
            SideBandMode::Small => Some(SIDE_BAND_SMALL_MAX - 1),
            SideBandMode::Large => Some(MAX_PKT_DATA - 1),
        };
        SideBand {
            inner,
            max,
            progress: progress && max.is_some(),
        }
    }

    /// Send a message on band 2 (dropped when progress is off).
    pub fn progress(&mut self, msg: &str) -> io::Result<()> {
        if self.progress {
            self.band(Band::Progress, msg.as_bytes())?;
            self.inner.flush()?;
        }
        Ok(())
    }

    /// Send a fatal error on band 3, or as an `ERR` packet without side-band.
    pub fn error(&mut self, msg: &str) -> io::Result<()> {
        match self.max {
            Some(_) => self.band(Band::Error, format!("{msg}\n").as_bytes()),
            None => write_pkt(&mut self.inner, format!("ERR {msg}\n").as_bytes()),
        }
    }

    /// Whether band framing is in use.
    pub fn is_multiplexed(&self) -> bool {
        self.max.is_some()
    }

    fn band(&mut self, band: Band, mut data: &[u8]) -> io::Result<()> {
        let max = self.max.unwrap_or(MAX_PKT_DATA - 1);
        let mut pkt = Vec::with_capacity(max.min(data.len()) + 1);
        while !data.is_empty() {
            let n = data.len().min(max);
            pkt.clear();
            pkt.push(band as u8);
            pkt.extend_from_slice(&data[..n]);
            write_pkt(&mut self.inner, &pkt)?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Write a flush packet on the outer stream (ends a side-band response).
    pub fn flush_pkt(&mut self) -> io::Result<()> {
        write_flush(&mut self.inner)
    }

    /// Access the inner writer (for packets outside the band framing).
    pub fn inner_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Give back the inner writer.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for SideBand<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.max.is_some() {
            self.band(Band::Data, buf)?;
        } else {
            self.inner.write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Gathers a byte stream into pieces of exactly `size` bytes before they
/// reach `inner`: over a [`SideBand`] of that payload size every band-1
/// packet but the last is full, as git sends them, however the bytes were
/// written (small entry headers, or large entries). Holds at most one
/// piece; the rest goes out at [`Write::flush`].
pub struct FullPackets<W: Write> {
    inner: W,
    buf: Vec<u8>,
    size: usize,
}

impl<W: Write> FullPackets<W> {
    /// Pieces of `size` bytes (at least 1) to `inner`.
    pub fn new(inner: W, size: usize) -> Self {
        let size = size.max(1);
        FullPackets {
            inner,
            buf: Vec::with_capacity(size),
            size,
        }
    }
}

impl<W: Write> Write for FullPackets<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let len = data.len();
        while !data.is_empty() {
            if self.buf.is_empty() && data.len() >= self.size {
                // Whole pieces of a large write go out without a copy.
                self.inner.write_all(&data[..self.size])?;
                data = &data[self.size..];
                continue;
            }
            let n = (self.size - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == self.size {
                self.inner.write_all(&self.buf)?;
                self.buf.clear();
            }
        }
        Ok(len)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf)?;
            self.buf.clear();
        }
        self.inner.flush()
    }
}

/// Reads the pack out of a protocol v2 `fetch` response: skips the sections
/// before `packfile`, then yields band-1 data, drops band-2 progress and
/// turns band 3 (or `ERR`) into an error. The end of the pack is the flush.
pub struct PackfileReader<R> {
    packets: PktReader<R>,
    buf: Vec<u8>,
    pos: usize,
    in_pack: bool,
    done: bool,
}

impl<R: BufRead> PackfileReader<R> {
    /// Wrap a response body.
    pub fn new(inner: R) -> Self {
        PackfileReader {
            packets: PktReader::new(inner),
            buf: Vec::new(),
            pos: 0,
            in_pack: false,
            done: false,
        }
    }

    fn refill(&mut self) -> io::Result<()> {
        let to_io = |e: Error| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
        loop {
            let packet = self.packets.read().map_err(to_io)?;
            match packet {
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "fetch response ended before the pack was complete",
                    ))
                }
                Some(Packet::Flush) if self.in_pack => {
                    self.done = true;
                    return Ok(());
                }
                Some(Packet::Data(d)) if !self.in_pack => {
                    if let Some(msg) = d.strip_prefix(b"ERR ") {
                        return Err(io::Error::other(format!(
                            "remote error: {}",
                            String::from_utf8_lossy(msg).trim_end()
                        )));
                    }
                    self.in_pack = d == b"packfile\n";
                }
                Some(Packet::Data(d)) => match d.first() {
                    Some(1) => {
                        self.buf.clear();
                        self.buf.extend_from_slice(&d[1..]);
                        self.pos = 0;
                        if !self.buf.is_empty() {
                            return Ok(());
                        }
                    }
                    Some(2) => {}
                    Some(3) => {
                        return Err(io::Error::other(format!(
                            "remote error: {}",
                            String::from_utf8_lossy(&d[1..]).trim_end()
                        )))
                    }
                    _ => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "bad side-band packet",
                        ))
                    }
                },
                Some(_) => {}
            }
        }
    }
}

impl<R: BufRead> Read for PackfileReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.buf.len() {
            if self.done {
                return Ok(0);
            }
            self.refill()?;
            if self.done {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Which side-band framing the client negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SideBandMode {
    /// No multiplexing: pack data goes out raw.
    None,
    /// `side-band`: packets of at most 1000 bytes.
    Small,
    /// `side-band-64k`: packets of at most 65520 bytes.
    Large,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8]) -> Result<Vec<String>> {
        let mut r = PktReader::new(input);
        let mut out = Vec::new();
        while let Some(p) = r.read()? {
            out.push(match p {
                Packet::Data(d) => String::from_utf8_lossy(d).into_owned(),
                Packet::Flush => "<flush>".into(),
                Packet::Delim => "<delim>".into(),
                Packet::ResponseEnd => "<end>".into(),
            });
        }
        Ok(out)
    }

    #[test]
    fn parses_data_and_special_packets() {
        let got = read_all(b"0009hello0000000100020004").expect("valid input");
        assert_eq!(got, vec!["hello", "<flush>", "<delim>", "<end>", ""]);
    }

    #[test]
    fn rejects_bad_length_digits() {
        let err = read_all(b"zzzzhello").expect_err("bad hex");
        assert!(err.to_string().contains("bad pkt-line length"), "{err}");
    }

    #[test]
    fn rejects_truncated_payload() {
        let err = read_all(b"0032want 1234").expect_err("truncated");
        assert!(err.to_string().contains("truncated pkt-line"), "{err}");
    }

    #[test]
    fn rejects_truncated_length_and_0003() {
        assert!(read_all(b"00").is_err());
        assert!(read_all(b"0003").is_err());
    }

    #[test]
    fn rejects_oversized_length() {
        let err = read_all(b"fff1").expect_err("too long");
        assert!(err.to_string().contains("exceeds"), "{err}");
    }

    #[test]
    fn writer_round_trips() {
        let mut w = PktWriter::new(Vec::new());
        w.line("want abc").expect("vec write");
        w.delim().expect("vec write");
        w.flush_pkt().expect("vec write");
        let bytes = w.into_inner();
        assert_eq!(bytes, b"000dwant abc\n00010000");
        assert!(write_pkt(&mut Vec::new(), &vec![0u8; MAX_PKT_DATA + 1]).is_err());
    }

    #[test]
    fn full_packets_gathers_and_cuts_writes() {
        let mut sb = SideBand::new(Vec::new(), SideBandMode::Small, false);
        {
            let mut out = FullPackets::new(&mut sb, SIDE_BAND_SMALL_MAX - 1);
            for len in [3usize, 2000, 1, 994, 5000, 7] {
                out.write_all(&vec![9u8; len]).expect("vec write");
            }
            out.flush().expect("vec write");
        }
        let bytes = sb.into_inner();
        let mut r = PktReader::new(&bytes[..]);
        let mut sizes = Vec::new();
        while let Some(Packet::Data(d)) = r.read().expect("valid") {
            sizes.push(d.len() - 1);
        }
        let total: usize = sizes.iter().sum();
        assert_eq!(total, 3 + 2000 + 1 + 994 + 5000 + 7);
        let (last, rest) = sizes.split_last().expect("packets");
        assert!(
            rest.iter().all(|s| *s == SIDE_BAND_SMALL_MAX - 1),
            "{sizes:?}"
        );
        assert_eq!(*last, total % (SIDE_BAND_SMALL_MAX - 1));
    }

    #[test]
    fn sideband_splits_large_writes() {
        let mut sb = SideBand::new(Vec::new(), SideBandMode::Small, true);
        sb.write_all(&[7u8; 2500]).expect("vec write");
        let bytes = sb.into_inner();
        let mut r = PktReader::new(&bytes[..]);
        let mut total = 0;
        while let Some(Packet::Data(d)) = r.read().expect("valid") {
            assert_eq!(d[0], 1);
            assert!(d.len() <= SIDE_BAND_SMALL_MAX);
            total += d.len() - 1;
        }
        assert_eq!(total, 2500);
    }
}

//! `git archive --remote`: the server side of `git upload-archive`, with
//! archives byte-identical to git's own.
//!
//! Over smart HTTP (git ≥ 2.44) the client first asks
//! `info/refs?service=git-upload-pack` for the protocol version (it goes on
//! only with v2), then POSTs one request to `git-upload-archive`: its
//! `git archive` arguments as `argument <arg>` pkt-lines and a flush. The
//! answer is `ACK` (or `NACK <reason>`), a flush, then the archive on
//! side-band 1, `remote:` messages on band 2, and a flush, or, when the
//! archiver fails, its message on band 2 and `git upload-archive: archiver
//! died with error` on band 3 (git's `builtin/upload-archive.c`).
//!
//! What a remote may ask is what `git upload-archive` allows: formats
//! `tar`, `tgz`, `tar.gz` and `zip`, `-0`..`-9`, `--prefix`, `-v`,
//! `--mtime=@<seconds>`, `--worktree-attributes`, `--list`, a tree-ish
//! that is a ref name (or `ref:path`), and literal pathspecs. What this
//! node cannot make byte-identical it refuses with a message rather than
//! send different bytes: wildcard pathspecs, trees whose `.gitattributes`
//! set attributes that change an archive (`export-ignore`, `export-subst`,
//! `ident`, `eol=crlf`, `working-tree-encoding`; in zips also `diff` and
//! `binary`), files over 512 MiB.

mod args;
mod tar;
mod tree;
mod zip;

use std::cell::RefCell;
use std::io::{self, BufRead, Write};
use std::time::{Duration, Instant};

use gix_hash::ObjectId;

pub use args::{Args, MAX_ARGS};
pub use tree::{resolve, Spec, Target, MAX_FILE_BYTES, MAX_TREE_DEPTH};

use crate::pktline::{write_flush, write_pkt, PktReader, MAX_PKT_DATA};
use crate::storage::Repo;
use crate::{Error, Result};

/// The formats a remote may ask for, in git's `--list` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `tar`.
    Tar,
    /// `tgz`: tar through git's internal gzip.
    Tgz,
    /// `tar.gz`: the same as `tgz`.
    TarGz,
    /// `zip`.
    Zip,
}

impl Format {
    /// All formats, in the order git lists them.
    pub const ALL: [Format; 4] = [Format::Tar, Format::Tgz, Format::TarGz, Format::Zip];

    /// The name `--format` takes.
    pub fn name(self) -> &'static str {
        match self {
            Format::Tar => "tar",
            Format::Tgz => "tgz",
            Format::TarGz => "tar.gz",
            Format::Zip => "zip",
        }
    }

    /// The format named `name`.
    pub fn from_name(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// The kind of an archive entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKind {
    Dir,
    Gitlink,
    Link,
    File,
}

/// One entry handed to a format writer.
pub(crate) struct Entry<'a> {
    pub(crate) kind: EntryKind,
    /// git's canonical mode (`040000`, `100644`, ...; `040777` for the prefix directory).
    pub(crate) mode: u32,
    /// Full path in the archive (prefix included; directories end in `/`).
    pub(crate) path: &'a [u8],
    pub(crate) id: ObjectId,
    /// File content or link target; empty for directories.
    pub(crate) data: &'a [u8],
}

/// What every entry of one archive shares.
pub(crate) struct Meta {
    pub(crate) commit: Option<ObjectId>,
    /// Modification time, seconds since the epoch.
    pub(crate) time: u64,
}

/// A format writer.
pub(crate) trait Sink {
    fn entry(&mut self, e: &Entry<'_>) -> Result<()>;
    fn finish(&mut self) -> Result<()>;
}

/// A refusal with git's `fatal:` prefix.
pub(crate) fn fatal(message: String) -> Error {
    Error::Archive(format!("fatal: {message}"))
}

/// The archive stream and the progress messages, on side-band or not.
struct Out<W> {
    inner: W,
    band: bool,
    buf: Vec<u8>,
}

const BAND_DATA: usize = MAX_PKT_DATA - 1;

impl<W: Write> Out<W> {
    fn data(&mut self, mut data: &[u8]) -> io::Result<()> {
        if !self.band {
            return self.inner.write_all(data);
        }
        while !data.is_empty() {
            let n = (BAND_DATA - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == BAND_DATA {
                self.flush_data()?;
            }
        }
        Ok(())
    }

    fn flush_data(&mut self) -> io::Result<()> {
        if self.band && self.buf.len() > 1 {
            write_pkt(&mut self.inner, &self.buf)?;
        }
        self.buf.truncate(1);
        Ok(())
    }

    fn band_message(&mut self, band: u8, text: &[u8]) -> io::Result<()> {
        if !self.band {
            return Ok(());
        }
        self.flush_data()?;
        for chunk in text.chunks(BAND_DATA) {
            write_pkt(&mut self.inner, &[&[band], chunk].concat())?;
        }
        self.inner.flush()
    }
}

/// [`Out`]'s data half, as a writer the format writers own.
struct Data<'a, W>(&'a RefCell<Out<W>>);

impl<W: Write> Write for Data<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().data(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Serve one `git-upload-archive` request: read the arguments from
/// `input`, answer on `output`. Refusals go to the client in-band (as
/// git sends them); `Err` means the exchange itself broke.
pub fn upload_archive(repo: &Repo, input: impl BufRead, mut output: impl Write) -> Result<()> {
    write_pkt(&mut output, b"ACK\n")?;
    write_flush(&mut output)?;
    output.flush()?;
    let out = RefCell::new(Out {
        inner: output,
        band: true,
        buf: vec![1],
    });
    let result = read_arguments(input).and_then(|args| {
        let _slot = wait_for_slot(repo, &out)?;
        run(repo, &args, true, &out)
    });
    let mut out = out.into_inner();
    match result {
        Ok(()) => {
            out.flush_data()?;
            write_flush(&mut out.inner)?;
            out.inner.flush()?;
            Ok(())
        }
        Err(Error::Io(e)) => Err(Error::Io(e)),
        Err(e) => {
            let text = match &e {
                Error::Archive(text) => text.clone(),
                other => format!("fatal: {other}"),
            };
            out.band_message(2, format!("{}\n", text.trim_end()).as_bytes())?;
            out.band_message(3, b"git upload-archive: archiver died with error")?;
            Err(e)
        }
    }
}

/// Write the archive `args` ask for to `out`, as `git archive` would
/// (`remote`: with `git upload-archive`'s restrictions). `-v` output and
/// `--list` output are dropped and written, respectively.
pub fn write_archive(repo: &Repo, args: &[String], remote: bool, out: impl Write) -> Result<()> {
    let out = RefCell::new(Out {
        inner: out,
        band: false,
        buf: Vec::new(),
    });
    run(repo, args, remote, &out)?;
    out.into_inner().inner.flush()?;
    Ok(())
}

/// Longest argument taken (a path's `PATH_MAX`); with [`MAX_ARGS`] this
/// bounds a request to 256 KiB.
pub const MAX_ARG_BYTES: usize = 4096;

/// The `argument` lines up to the flush, with git's limits.
fn read_arguments(input: impl BufRead) -> Result<Vec<String>> {
    let mut reader = PktReader::new(input);
    let mut args = Vec::new();
    loop {
        let line = match reader.read()? {
            None | Some(crate::pktline::Packet::Flush) => return Ok(args),
            Some(crate::pktline::Packet::Data(d)) => d,
            Some(_) => return Err(fatal("'argument' token or flush expected".into())),
        };
        if args.len() >= MAX_ARGS {
            return Err(fatal(format!("Too many options (>{})", MAX_ARGS - 1)));
        }
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let arg = line
            .strip_prefix(b"argument ")
            .ok_or_else(|| fatal("'argument' token or flush expected".into()))?;
        if arg.len() > MAX_ARG_BYTES {
            return Err(fatal(format!(
                "argument too long (over {MAX_ARG_BYTES} bytes)"
            )));
        }
        let arg = String::from_utf8(arg.to_vec())
            .map_err(|_| Error::Unsupported("arguments that are not UTF-8".into()))?;
        args.push(arg);
    }
}

/// How long a request waits for a generation slot in all.
const MAX_SLOT_WAIT: Duration = Duration::from_secs(600);

/// Take one of the node's pack generation slots: an archive costs about
/// what a pack does (every blob of the tree read and compressed).
fn wait_for_slot<'r, W: Write>(
    repo: &'r Repo,
    out: &RefCell<Out<W>>,
) -> Result<crate::upload_pack::slots::Slot<'r>> {
    let slots = &repo.serving().slots;
    if let Some(slot) = slots.try_acquire() {
        return Ok(slot);
    }
    out.borrow_mut()
        .band_message(2, b"waiting for a free slot\n")?;
    let started = Instant::now();
    loop {
        if let Some(slot) = slots.acquire_timeout(crate::upload_pack::KEEPALIVE_INTERVAL) {
            return Ok(slot);
        }
        if started.elapsed() >= MAX_SLOT_WAIT {
            return Err(Error::Busy(
                "every archive/pack generation slot stayed busy".into(),
            ));
        }
        // An empty band-1 packet: still working.
        let mut out = out.borrow_mut();
        write_pkt(&mut out.inner, &[1])?;
        out.inner.flush()?;
    }
}

/// Parse, resolve and write one archive.
fn run<W: Write>(repo: &Repo, raw: &[String], remote: bool, out: &RefCell<Out<W>>) -> Result<()> {
    let args = Args::parse(raw)?;
    let format = args.check(remote)?;
    if args.list {
        let list: String = Format::ALL
            .iter()
            .map(|f| format!("{}\n", f.name()))
            .collect();
        return Ok(out.borrow_mut().data(list.as_bytes())?);
    }
    let odb = repo.objects()?;
    let (treeish, paths) = args
        .rest
        .split_first()
        .ok_or_else(|| fatal("no tree-ish".into()))?;
    let target = resolve(repo, &odb, treeish, remote)?;
    let specs = paths
        .iter()
        .map(|p| Spec::parse(p))
        .collect::<Result<Vec<_>>>()?;
    for (spec, given) in specs.iter().zip(paths) {
        if !spec.exists(&odb, &target.tree)? {
            return Err(fatal(format!("pathspec '{given}' did not match any files")));
        }
    }
    let time = match &args.mtime {
        Some(m) => args::parse_mtime(m)?,
        None => match target.commit_time {
            Some(t) => t.max(0) as u64,
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        },
    };
    let meta = Meta {
        commit: target.commit,
        time,
    };
    let data = Data(out);
    let mut sink: Box<dyn Sink + '_> = match format {
        Format::Tar => Box::new(tar::Tar::new(data, &meta)?),
        Format::Tgz | Format::TarGz => Box::new(tar::Tar::gzip(data, &meta, args.level)?),
        Format::Zip => Box::new(zip::Zip::new(data, &meta, args.level)?),
    };
    let mut emit = |e: &Entry<'_>| -> Result<()> {
        if args.verbose {
            let line = [e.path, b"\n"].concat();
            out.borrow_mut().band_message(2, &line)?;
        }
        sink.entry(e)
    };
    write_entries(&odb, &target, &args, format, &specs, &mut emit)?;
    sink.finish()
}

/// The prefix directory (when the prefix ends in `/`), then the tree.
fn write_entries(
    odb: &crate::odb::ObjectStore,
    target: &Target,
    args: &Args,
    format: Format,
    specs: &[Spec],
    emit: &mut dyn FnMut(&Entry<'_>) -> Result<()>,
) -> Result<()> {
    let prefix = args.prefix.as_bytes();
    if prefix.ends_with(b"/") {
        let mut len = prefix.len();
        while len > 1 && prefix[len - 2] == b'/' {
            len -= 1;
        }
        emit(&Entry {
            kind: EntryKind::Dir,
            mode: 0o040777,
            path: &prefix[..len],
            id: target.tree,
            data: &[],
        })?;
    }
    let mut with_prefix = |e: &Entry<'_>| -> Result<()> {
        let path = [prefix, e.path].concat();
        emit(&Entry { path: &path, ..*e })
    };
    let refused: &'static [&'static [u8]] = match format {
        _ if args.worktree_attributes => &[],
        Format::Zip => tree::ZIP_ATTRIBUTES_CHANGING,
        Format::Tar | Format::Tgz | Format::TarGz => tree::ATTRIBUTES_CHANGING,
    };
    tree::Walk::new(odb, specs, refused).run(&target.tree, &mut Vec::new(), 0, &mut with_prefix)
}

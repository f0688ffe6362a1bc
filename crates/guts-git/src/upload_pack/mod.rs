//! The server side of fetch and clone: upload-pack in v0/v1 and v2.
//!
//! Every request is stateless (smart HTTP): the client repeats its wants and
//! the haves found common in each round, and the server answers one round per
//! request. Input is a reader over the request body and output a writer for the
//! response body; no sockets here.
//!
//! - [`args`]: what a fetch asks for, parsed from either protocol version,
//!   and the checks on its wants;
//! - [`v0`]: the v0/v1 exchange (`multi_ack_detailed`, `no-done`, shallow lists);
//! - [`v2`]: the v2 commands `ls-refs`, `fetch` and `object-info`;
//! - [`connection`]: v2 on a stateful connection (many commands in turn);
//! - this module: the response session and the pack transfer both share.

mod args;
pub mod connection;
mod reuse;
mod send;
pub mod slots;
mod v0;
mod v2;

pub use send::MAX_SLOT_WAIT;
pub use slots::{PackSlots, Serving};

use std::io::{BufRead, Write};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::pktline::{write_delim, write_flush, write_pkt, SideBand, SideBandMode};
use crate::protocol::Version;
use crate::shallow::ShallowPlan;
use crate::storage::Repo;
use args::FetchArgs;
/// How long the client may wait for the first pack byte before a keep-alive
/// packet is sent (git's `uploadpack.keepAlive` default).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// What one upload-pack request did, for a server's metrics: filled in as
/// the request goes, so a request that fails half-way reports what it did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UploadStats {
    /// The request ended a negotiation and a pack transfer started.
    pub pack: bool,
    /// `have` lines the client sent with that request: 0 is a clone (the
    /// client has nothing), more a fetch.
    pub haves: usize,
    /// Objects in the pack sent (as its header counts them).
    pub objects: u64,
    /// Time spent walking and writing a generated pack; `None` when a stored
    /// or cached pack was sent as it is.
    pub generation: Option<Duration>,
}

/// Serve one upload-pack POST request.
///
/// Errors are reported to the client in-band (an `ERR` packet, or a band-3
/// message once side-band framing is in use) and returned for logging.
pub fn upload_pack(
    repo: &Repo,
    version: Version,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<()> {
    upload_pack_with_stats(repo, version, input, out, &mut UploadStats::default())
}

/// [`upload_pack`], reporting what it did into `stats`.
pub fn upload_pack_with_stats(
    repo: &Repo,
    version: Version,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    stats: &mut UploadStats,
) -> Result<()> {
    let mut session = Session::new(out, stats);
    let result = match version {
        Version::V2 => v2::serve(repo, input, &mut session),
        Version::V0 | Version::V1 => v0::serve(repo, input, &mut session),
    };
    if let Err(e) = &result {
        session.report_error(&e.to_string());
    }
    result
}

/// The response stream and how packets on it are framed.
struct Session<'a> {
    out: &'a mut dyn Write,
    /// Side-band framing in use (once a pack started, or with `sideband-all`).
    sideband: Option<SideBandMode>,
    /// `sideband-all`: every non-special packet goes out on band 1.
    all_bands: bool,
    /// What the request did.
    stats: &'a mut UploadStats,
}

impl<'a> Session<'a> {
    fn new(out: &'a mut dyn Write, stats: &'a mut UploadStats) -> Self {
        Session {
            out,
            sideband: None,
            all_bands: false,
            stats,
        }
    }

    /// Write one text line as a packet, `\n`-terminated (on band 1 with
    /// `sideband-all`).
    fn line(&mut self, text: &str) -> std::io::Result<()> {
        self.packet(text, true)
    }

    /// Write one text packet without the trailing `\n`.
    fn bare_line(&mut self, text: &str) -> std::io::Result<()> {
        self.packet(text, false)
    }

    fn packet(&mut self, text: &str, newline: bool) -> std::io::Result<()> {
        let mut data = Vec::with_capacity(text.len() + 2);
        if self.all_bands {
            data.push(1);
        }
        data.extend_from_slice(text.as_bytes());
        if newline {
            data.push(b'\n');
        }
        write_pkt(&mut *self.out, &data)
    }

    fn delim(&mut self) -> std::io::Result<()> {
        write_delim(&mut *self.out)
    }

    fn flush_pkt(&mut self) -> std::io::Result<()> {
        write_flush(&mut *self.out)?;
        self.out.flush()
    }

    fn report_error(&mut self, msg: &str) {
        let res = match self.sideband {
            Some(mode) => {
                let mut sb = SideBand::new(&mut *self.out, mode, false);
                sb.error(&format!("upload-pack: {msg}"))
                    .and_then(|()| sb.flush_pkt())
            }
            None => write_pkt(
                &mut *self.out,
                format!("ERR upload-pack: {msg}\n").as_bytes(),
            ),
        };
        if let Err(e) = res.and_then(|()| self.out.flush()) {
            tracing::debug!(error = %e, "could not deliver error to the client");
        }
    }
}

/// Write the `shallow`/`unshallow` lines of a shallow plan: without a
/// trailing newline, as git's upload-pack writes them (libgit2 refuses
/// them with one).
fn write_shallow_lines(session: &mut Session<'_>, plan: &ShallowPlan) -> std::io::Result<()> {
    for c in &plan.shallow {
        session.bare_line(&format!("shallow {c}"))?;
    }
    for c in &plan.unshallow {
        session.bare_line(&format!("unshallow {c}"))?;
    }
    Ok(())
}

/// Shared by both versions: the filter a request carries, parsed once.
fn parse_filter(spec: &str, current: &Option<Filter>) -> Result<Filter> {
    if current.is_some() {
        return Err(Error::Protocol("more than one filter line".into()));
    }
    Filter::parse(spec)
}

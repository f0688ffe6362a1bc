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
//! - this module: the response session and the pack transfer both share.

mod args;
mod v0;
mod v2;

use std::cell::RefCell;
use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gix_hash::ObjectId;

use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::odb::ObjectStore;
use crate::pack_out::write_pack;
use crate::pktline::{write_delim, write_flush, write_pkt, SideBand, SideBandMode};
use crate::protocol::Version;
use crate::shallow::ShallowPlan;
use crate::storage::{Ref, Repo};
use crate::walk::{objects_to_send, WalkSpec};
use args::FetchArgs;

/// How often progress lines are refreshed at most.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// How long the client may wait for the first pack byte before a keep-alive
/// packet is sent (git's `uploadpack.keepAlive` default).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

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
    let mut session = Session {
        out,
        sideband: None,
        all_bands: false,
    };
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
}

impl Session<'_> {
    /// Write one text line as a packet (on band 1 with `sideband-all`).
    fn line(&mut self, text: &str) -> std::io::Result<()> {
        let mut data = Vec::with_capacity(text.len() + 2);
        if self.all_bands {
            data.push(1);
        }
        data.extend_from_slice(text.as_bytes());
        data.push(b'\n');
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

/// Everything the pack transfer needs once negotiation is over.
struct PackRequest<'a> {
    walk: WalkSpec<'a>,
    sideband: SideBandMode,
    progress: bool,
    include_tag: bool,
}

/// Add annotated tags whose target is being sent (`include-tag`).
fn add_included_tags(refs: &[Ref], ids: &mut Vec<ObjectId>) {
    let sent: HashSet<ObjectId> = ids.iter().copied().collect();
    for r in refs {
        if let Some(peeled) = r.peeled {
            if sent.contains(&peeled) && !sent.contains(&r.id) {
                ids.push(r.id);
            }
        }
    }
}

/// Commits among `ids` (haves may name any object; walks start from commits).
fn commits_only(odb: &ObjectStore, ids: &[ObjectId]) -> Result<Vec<ObjectId>> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for id in ids {
        if odb.kind(id, &mut buf)? == Some(gix_object::Kind::Commit) {
            out.push(*id);
        }
    }
    Ok(out)
}

/// Write the `shallow`/`unshallow` lines of a shallow plan.
fn write_shallow_lines(session: &mut Session<'_>, plan: &ShallowPlan) -> std::io::Result<()> {
    for c in &plan.shallow {
        session.line(&format!("shallow {c}"))?;
    }
    for c in &plan.unshallow {
        session.line(&format!("unshallow {c}"))?;
    }
    Ok(())
}

/// The end of a fetch in either version: send what the wants and the
/// shallow plan call for, minus what the `common` commits already give.
fn send_fetch_pack(
    odb: &ObjectStore,
    refs: &[Ref],
    args: &FetchArgs,
    common: &[ObjectId],
    plan: &ShallowPlan,
    session: &mut Session<'_>,
) -> Result<()> {
    let mut haves = commits_only(odb, common)?;
    haves.extend(plan.extra_haves.iter().copied());
    let mut wants = args.wants.clone();
    wants.extend(plan.extra_wants.iter().copied());
    let request = PackRequest {
        walk: WalkSpec {
            wants: &wants,
            haves: &haves,
            shallow: Some(&plan.cut),
            filter: args.filter.as_ref(),
        },
        sideband: args.sideband.unwrap_or(SideBandMode::None),
        progress: args.progress,
        include_tag: args.include_tag,
    };
    send_pack(odb, refs, request, session)
}

/// Enumerate, then stream the pack, with progress on band 2 and keep-alive
/// packets while the object list is still being computed.
fn send_pack(
    odb: &ObjectStore,
    refs: &[Ref],
    req: PackRequest<'_>,
    session: &mut Session<'_>,
) -> Result<()> {
    session.sideband = Some(req.sideband).filter(|m| *m != SideBandMode::None);
    let sb = RefCell::new(SideBand::new(&mut *session.out, req.sideband, req.progress));
    sb.borrow_mut().progress("Enumerating objects...\r")?;
    let multiplexed = sb.borrow().is_multiplexed();
    let mut objects = std::thread::scope(|scope| -> Result<_> {
        let (tx, rx) = mpsc::channel();
        let walk = req.walk;
        let odb = odb.clone();
        scope.spawn(move || {
            let _ = tx.send(objects_to_send(&odb, walk));
        });
        loop {
            match rx.recv_timeout(KEEPALIVE_INTERVAL) {
                Ok(result) => return result,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if multiplexed {
                        // An empty band-1 packet: "still working".
                        write_pkt(sb.borrow_mut().inner_mut(), &[1])?;
                        sb.borrow_mut().flush()?;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(Error::Pack(
                        "object enumeration stopped unexpectedly".into(),
                    ))
                }
            }
        }
    })?;
    if req.include_tag {
        add_included_tags(refs, &mut objects.ids);
    }
    let total = objects.ids.len();
    sb.borrow_mut()
        .progress(&format!("Enumerating objects: {total}, done.\n"))?;
    let mut last = Instant::now();
    let mut finished = false;
    // gix writes each entry's header and data separately: gathered here,
    // band-1 packets go out full (65,515 payload bytes with side-band-64k),
    // as git sends them, not one per small write.
    let mut writer =
        std::io::BufWriter::with_capacity(band_payload(req.sideband), SharedWriter(&sb));
    let stats = write_pack(odb, objects.ids, &mut writer, &mut |done, total| {
        if finished {
            return;
        }
        finished = done == total;
        if finished || last.elapsed() >= PROGRESS_INTERVAL {
            last = Instant::now();
            let pct = (done * 100).checked_div(total).unwrap_or(100);
            let end = if finished { ", done.\n" } else { "\r" };
            let _ = sb
                .borrow_mut()
                .progress(&format!("Writing objects: {pct:3}% ({done}/{total}){end}"));
        }
    })?;
    writer.flush()?;
    drop(writer);
    let mut sb = sb.into_inner();
    sb.progress(&format!(
        "Total {} (delta {}), reused deltas from stored packs\n",
        stats.objects, stats.deltas
    ))?;
    if sb.is_multiplexed() {
        sb.flush_pkt()?;
    }
    sb.flush()?;
    tracing::info!(
        objects = stats.objects,
        deltas = stats.deltas,
        bytes = stats.bytes,
        "sent pack"
    );
    Ok(())
}

/// Pack bytes per band-1 packet (or per write without side-band).
fn band_payload(mode: SideBandMode) -> usize {
    match mode {
        SideBandMode::Large => crate::pktline::MAX_PKT_DATA - 1,
        SideBandMode::Small => crate::pktline::SIDE_BAND_SMALL_MAX - 1,
        SideBandMode::None => 64 * 1024,
    }
}

struct SharedWriter<'a, W: Write>(&'a RefCell<SideBand<W>>);

impl<W: Write> Write for SharedWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

/// Shared by both versions: the filter a request carries, parsed once.
fn parse_filter(spec: &str, current: &Option<Filter>) -> Result<Filter> {
    if current.is_some() {
        return Err(Error::Protocol("more than one filter line".into()));
    }
    Filter::parse(spec)
}

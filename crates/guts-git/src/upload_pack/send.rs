//! The pack transfer at the end of a fetch, in either protocol version.
//!
//! In order of cost, a request is served by:
//! 1. the reachable pack of the last maintenance, sent verbatim ([`reuse`]);
//! 2. a pack generated earlier for the same request and refs (the pack cache);
//! 3. the reachable pack's entries followed by generated ones (prefix reuse);
//! 4. a generated pack (walk, then [`write_pack_with`]).
//!
//! 3 and 4 need a generation slot ([`super::slots`]); while none is free the
//! client gets `waiting for a free slot` on band 2 and keep-alive packets.
//! Their output is recorded into the cache when it has one.

use std::cell::RefCell;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gix_hash::ObjectId;

use super::reuse::{self, Reuse};
use super::{FetchArgs, Session, KEEPALIVE_INTERVAL};
use crate::error::{Error, Result};
use crate::odb::ObjectStore;
use crate::pack_cache::{self, CacheKey};
use crate::pack_out::{write_pack_with, PackOptions, PackStats, Prefix};
use crate::pack_rewrite::PackEntries;
use crate::pktline::{write_pkt, FullPackets, SideBand, SideBandMode};
use crate::shallow::ShallowPlan;
use crate::storage::{Ref, Repo};
use crate::walk::{objects_to_send, ObjectsToSend, WalkSpec};

/// How often progress lines are refreshed at most.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// Longest a request waits for a generation slot before it is refused.
pub const MAX_SLOT_WAIT: Duration = Duration::from_secs(600);

/// Everything the pack transfer needs once negotiation is over.
struct PackRequest<'a> {
    walk: WalkSpec<'a>,
    sideband: SideBandMode,
    progress: bool,
    include_tag: bool,
    /// The client reads `OFS_DELTA` entries; without it deltas are `REF_DELTA`.
    ofs_delta: bool,
}

type Band<'s, 'o> = RefCell<SideBand<&'s mut (dyn Write + 'o)>>;

/// The end of a fetch in either version: send what the wants and the
/// shallow plan call for, minus what the `common` commits already give.
pub(super) fn send_fetch_pack(
    repo: &Repo,
    odb: &ObjectStore,
    refs: &[Ref],
    args: &FetchArgs,
    common: &[ObjectId],
    plan: &ShallowPlan,
    session: &mut Session<'_>,
) -> Result<()> {
    session.stats.pack = true;
    session.stats.haves = args.haves.len();
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
        ofs_delta: args.ofs_delta,
    };
    send_pack(repo, odb, refs, request, session)
}

fn send_pack(
    repo: &Repo,
    odb: &ObjectStore,
    refs: &[Ref],
    req: PackRequest<'_>,
    session: &mut Session<'_>,
) -> Result<()> {
    session.sideband = Some(req.sideband).filter(|m| *m != SideBandMode::None);
    let report = &mut *session.stats;
    let sb: Band<'_, '_> =
        RefCell::new(SideBand::new(&mut *session.out, req.sideband, req.progress));
    let serving = repo.serving();
    let reuse = reuse::plan(repo, odb, refs, &req.walk, req.ofs_delta);
    if let Some(Reuse::Verbatim { file, len, objects }) = reuse {
        let what = format!("Total {objects} (reused the maintained pack)\n");
        report.objects = u64::from(objects);
        return stream_file(&sb, req.sideband, file, len, &what);
    }
    let key = serving.cache.as_ref().map(|_| cache_key(repo, refs, &req));
    if let (Some(cache), Some(key)) = (serving.cache.as_ref(), key.as_ref()) {
        if let Some((file, len)) = cache.get(key) {
            report.objects = pack_header_objects(&file).unwrap_or(0);
            return stream_file(
                &sb,
                req.sideband,
                file,
                len,
                "Total (reused a cached pack)\n",
            );
        }
    }
    let _slot = wait_for_slot(repo, &sb)?;
    let recorder = match (serving.cache.as_ref(), key.as_ref()) {
        (Some(cache), Some(key)) => cache.record(key),
        _ => None,
    };
    let mut tee = Tee { recorder, sb: &sb };
    let started = Instant::now();
    let generated = generate(odb, refs, &req, reuse, &mut tee, &sb);
    report.generation = Some(started.elapsed());
    let stats = generated?;
    report.objects = stats.objects as u64;
    if let Some(r) = tee.recorder.take() {
        r.finish();
    }
    finish(
        &sb,
        &format!(
            "Total {} (delta {}), reused deltas from stored packs\n",
            stats.objects, stats.deltas
        ),
    )?;
    tracing::info!(
        objects = stats.objects,
        deltas = stats.deltas,
        bytes = stats.bytes,
        "sent pack"
    );
    Ok(())
}

/// Walk and write: after the maintained pack's entries (prefix reuse), or a
/// whole generated pack.
fn generate(
    odb: &ObjectStore,
    refs: &[Ref],
    req: &PackRequest<'_>,
    reuse: Option<Reuse>,
    tee: &mut Tee<'_, '_, '_>,
    sb: &Band<'_, '_>,
) -> Result<PackStats> {
    if let Some(Reuse::Prefix {
        mut file,
        body_len,
        objects,
        index,
        tips,
    }) = reuse
    {
        let tips = commits_only(odb, &tips)?;
        let walk = WalkSpec {
            haves: &tips,
            ..req.walk
        };
        let mut extra = enumerate(odb, walk, sb)?;
        if req.include_tag {
            add_included_tags(refs, &mut extra.ids);
        }
        extra.ids.retain(|id| index.lookup(id).is_none());
        let entries = (!req.ofs_delta).then(|| PackEntries::new(&index));
        let prefix = Prefix {
            body: &mut file,
            len: body_len,
            objects,
            as_ref_deltas: entries.as_ref(),
        };
        return write_objects(odb, extra.ids, Some(prefix), tee, req, sb);
    }
    let mut objects = enumerate(odb, req.walk, sb)?;
    if req.include_tag {
        add_included_tags(refs, &mut objects.ids);
    }
    write_objects(odb, objects.ids, None, tee, req, sb)
}

/// Identifies a generated pack: the refs (any move invalidates it) and
/// everything in the request that changes the pack's contents.
fn cache_key(repo: &Repo, refs: &[Ref], req: &PackRequest<'_>) -> CacheKey {
    let mut ref_parts: Vec<Vec<u8>> = Vec::with_capacity(refs.len());
    for r in refs {
        let mut part = r.name.as_bytes().to_vec();
        part.extend_from_slice(r.id.as_bytes());
        ref_parts.push(part);
    }
    let refs_digest = pack_cache::digest(&ref_parts.iter().map(Vec::as_slice).collect::<Vec<_>>());
    let sorted = |ids: &[ObjectId]| {
        let mut v: Vec<u8> = Vec::new();
        let mut ids = ids.to_vec();
        ids.sort();
        ids.dedup();
        for id in ids {
            v.extend_from_slice(id.as_bytes());
        }
        v
    };
    let shallow: Vec<ObjectId> = req
        .walk
        .shallow
        .map(|s| s.iter().copied().collect())
        .unwrap_or_default();
    let filter = format!("{:?}", req.walk.filter);
    let request_digest = pack_cache::digest(&[
        &sorted(req.walk.wants),
        &sorted(req.walk.haves),
        &sorted(&shallow),
        filter.as_bytes(),
        &[u8::from(req.include_tag), u8::from(req.ofs_delta)],
    ]);
    CacheKey::new(&repo.name().to_string(), refs_digest, request_digest)
}

/// Take a generation slot, telling the client while it waits.
fn wait_for_slot<'r>(
    repo: &'r Repo,
    sb: &Band<'_, '_>,
) -> Result<crate::upload_pack::slots::Slot<'r>> {
    let slots = &repo.serving().slots;
    if let Some(slot) = slots.try_acquire() {
        return Ok(slot);
    }
    sb.borrow_mut().progress("waiting for a free slot\n")?;
    let started = Instant::now();
    loop {
        if let Some(slot) = slots.acquire_timeout(KEEPALIVE_INTERVAL) {
            return Ok(slot);
        }
        if started.elapsed() >= MAX_SLOT_WAIT {
            return Err(Error::Busy("every pack generation slot stayed busy".into()));
        }
        keepalive(sb)?;
    }
}

/// An empty band-1 packet: "still working" (only with side-band framing).
fn keepalive(sb: &Band<'_, '_>) -> Result<()> {
    let mut sb = sb.borrow_mut();
    if sb.is_multiplexed() {
        write_pkt(sb.inner_mut(), &[1])?;
        sb.flush()?;
    }
    Ok(())
}

/// Run the walk on a worker thread, sending keep-alives while it runs.
fn enumerate(odb: &ObjectStore, walk: WalkSpec<'_>, sb: &Band<'_, '_>) -> Result<ObjectsToSend> {
    sb.borrow_mut().progress("Enumerating objects...\r")?;
    let objects = std::thread::scope(|scope| -> Result<_> {
        let (tx, rx) = mpsc::channel();
        let odb = odb.clone();
        scope.spawn(move || {
            let _ = tx.send(objects_to_send(&odb, walk));
        });
        loop {
            match rx.recv_timeout(KEEPALIVE_INTERVAL) {
                Ok(result) => return result,
                Err(mpsc::RecvTimeoutError::Timeout) => keepalive(sb)?,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(Error::Pack(
                        "object enumeration stopped unexpectedly".into(),
                    ))
                }
            }
        }
    })?;
    sb.borrow_mut().progress(&format!(
        "Enumerating objects: {}, done.\n",
        objects.ids.len()
    ))?;
    Ok(objects)
}

/// Generate and send a pack (after `prefix`, if any), with progress.
fn write_objects(
    odb: &ObjectStore,
    ids: Vec<ObjectId>,
    prefix: Option<Prefix<'_>>,
    tee: &mut Tee<'_, '_, '_>,
    req: &PackRequest<'_>,
    sb: &Band<'_, '_>,
) -> Result<PackStats> {
    let mut last = Instant::now();
    let mut finished = false;
    // gix hands over each entry's header and data separately: gathered here,
    // band-1 packets go out full (65,515 payload bytes with side-band-64k),
    // as git sends them, not one per small write nor cut at large entries.
    let mut writer = FullPackets::new(tee, band_payload(req.sideband));
    let stats = write_pack_with(
        odb,
        ids,
        prefix,
        &mut writer,
        &mut |done, total| {
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
        },
        PackOptions {
            ref_deltas: !req.ofs_delta,
            ..PackOptions::default()
        },
    )?;
    writer.flush()?;
    Ok(stats)
}

/// Send a stored pack file as it is.
fn stream_file(
    sb: &Band<'_, '_>,
    mode: SideBandMode,
    mut file: std::fs::File,
    len: u64,
    what: &str,
) -> Result<()> {
    sb.borrow_mut().progress(&format!(
        "Sending a stored pack of {:.1} MiB\n",
        len as f64 / (1024.0 * 1024.0)
    ))?;
    let copied = {
        let mut band = sb.borrow_mut();
        let mut out = FullPackets::new(&mut *band, band_payload(mode));
        let copied = std::io::copy(&mut (&mut file).take(len), &mut out)?;
        out.flush()?;
        copied
    };
    if copied != len {
        return Err(Error::Pack(
            "a stored pack ended early while it was sent".into(),
        ));
    }
    tracing::info!(bytes = len, "sent a stored pack");
    finish(sb, what)
}

/// The object count in the header of the pack `file` is positioned at
/// (`PACK`, version, count), read without moving it.
fn pack_header_objects(file: &std::fs::File) -> Option<u64> {
    use std::io::Seek;
    use std::os::unix::fs::FileExt;
    let mut handle: &std::fs::File = file;
    let at = handle.stream_position().ok()?;
    let mut header = [0u8; 12];
    file.read_exact_at(&mut header, at).ok()?;
    let count: [u8; 4] = header[8..12].try_into().ok()?;
    (&header[..4] == b"PACK").then(|| u64::from(u32::from_be_bytes(count)))
}

/// End the response: summary on band 2, flush packet with side-band.
fn finish(sb: &Band<'_, '_>, summary: &str) -> Result<()> {
    let mut sb = sb.borrow_mut();
    sb.progress(summary)?;
    if sb.is_multiplexed() {
        sb.flush_pkt()?;
    }
    sb.flush()?;
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

/// Pack bytes on their way out: to the side-band writer and, when the pack
/// cache records this request, into the cache.
struct Tee<'a, 's, 'o> {
    recorder: Option<pack_cache::Recorder>,
    sb: &'a Band<'s, 'o>,
}

impl Write for Tee<'_, '_, '_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.sb.borrow_mut().write_all(buf)?;
        if let Some(r) = self.recorder.as_mut() {
            // The recorder swallows its own errors (a cache must not fail a clone).
            let _ = r.write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.sb.borrow_mut().flush()
    }
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

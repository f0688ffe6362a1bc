//! The server side of fetch and clone: upload-pack in v0/v1 and v2.
//!
//! Every request is stateless (smart HTTP): the client repeats its wants and
//! the haves found common in each round, and the server answers one round per
//! request. Input is a reader over the request body and output a writer for the
//! response body; no sockets here.

use std::cell::RefCell;
use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use gix_hash::ObjectId;

use crate::error::{Error, Result};
use crate::limits::{MAX_HAVES, MAX_REF_PREFIXES, MAX_WANTS};
use crate::odb::ObjectStore;
use crate::pack_out::write_pack;
use crate::pktline::{Packet, PktReader, PktWriter, SideBand, SideBandMode};
use crate::protocol::Version;
use crate::storage::{Ref, Repo};
use crate::walk::{objects_to_send, Negotiation};

/// How often progress lines are refreshed at most.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Serve one upload-pack POST request.
///
/// Errors are reported to the client in-band (an `ERR` packet, or a band-3
/// message once a pack is being sent) and returned for logging.
pub fn upload_pack(
    repo: &Repo,
    version: Version,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<()> {
    let mut state = Session {
        out,
        sideband: None,
    };
    let result = match version {
        Version::V2 => serve_v2(repo, input, &mut state),
        Version::V0 | Version::V1 => serve_v0(repo, input, &mut state),
    };
    if let Err(e) = &result {
        state.report_error(&e.to_string());
    }
    result
}

/// The response stream and whether a side-band pack has started on it.
struct Session<'a> {
    out: &'a mut dyn Write,
    sideband: Option<SideBandMode>,
}

impl Session<'_> {
    fn report_error(&mut self, msg: &str) {
        let res = match self.sideband {
            Some(mode) => {
                let mut sb = SideBand::new(&mut *self.out, mode, false);
                sb.error(&format!("upload-pack: {msg}"))
                    .and_then(|()| sb.flush_pkt())
            }
            None => crate::pktline::write_pkt(
                &mut *self.out,
                format!("ERR upload-pack: {msg}\n").as_bytes(),
            ),
        };
        if let Err(e) = res.and_then(|()| self.out.flush()) {
            tracing::debug!(error = %e, "could not deliver error to the client");
        }
    }
}

/// Options of one pack transfer.
struct PackRequest {
    wants: Vec<ObjectId>,
    haves: Vec<ObjectId>,
    sideband: SideBandMode,
    progress: bool,
    include_tag: bool,
}

fn parse_oid(s: &str, what: &str) -> Result<ObjectId> {
    ObjectId::from_hex(s.as_bytes())
        .map_err(|_| Error::Protocol(format!("invalid object id in {what}: {s:?}")))
}

/// Object ids a client may ask for: ref tips and their peeled targets.
fn advertised_ids(refs: &[Ref]) -> HashSet<ObjectId> {
    refs.iter()
        .flat_map(|r| std::iter::once(r.id).chain(r.peeled))
        .collect()
}

fn check_wants(wants: &[ObjectId], refs: &[Ref]) -> Result<()> {
    let ours = advertised_ids(refs);
    match wants.iter().find(|w| !ours.contains(*w)) {
        Some(w) => Err(Error::NotOurRef(*w)),
        None => Ok(()),
    }
}

fn unsupported_arg(line: &str) -> Option<Error> {
    let feature = [
        "shallow",
        "deepen",
        "filter",
        "want-ref",
        "sideband-all",
        "packfile-uris",
        "wait-for-done",
    ]
    .into_iter()
    .find(|f| line.starts_with(f))?;
    Some(Error::Unsupported(format!(
        "'{feature}' (shallow and partial clones are not available on this node yet)"
    )))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum MultiAck {
    None,
    Plain,
    Detailed,
}

fn serve_v0(repo: &Repo, input: &mut dyn BufRead, session: &mut Session<'_>) -> Result<()> {
    let mut reader = PktReader::new(input);
    let mut wants = Vec::new();
    let mut caps: HashSet<String> = HashSet::new();
    loop {
        let line = match reader.read()? {
            None | Some(Packet::Flush) => break,
            Some(p) => p.as_text("want line")?,
        };
        if let Some(rest) = line.strip_prefix("want ") {
            let (hex, rest_caps) = rest.split_once(' ').unwrap_or((rest, ""));
            if wants.is_empty() {
                caps.extend(rest_caps.split_whitespace().map(str::to_owned));
            }
            if wants.len() >= MAX_WANTS {
                return Err(Error::TooLarge(format!("more than {MAX_WANTS} wants")));
            }
            wants.push(parse_oid(hex, "want")?);
        } else if let Some(e) = unsupported_arg(line) {
            return Err(e);
        } else {
            return Err(Error::Protocol(format!(
                "expected a want line, got {line:?}"
            )));
        }
    }
    if wants.is_empty() {
        return Ok(());
    }
    let refs = repo.refs()?;
    check_wants(&wants, &refs)?;
    if !caps.contains("ofs-delta") {
        return Err(Error::Unsupported(
            "clients without the ofs-delta capability".into(),
        ));
    }
    let multi_ack = if caps.contains("multi_ack_detailed") {
        MultiAck::Detailed
    } else if caps.contains("multi_ack") {
        MultiAck::Plain
    } else {
        MultiAck::None
    };
    let no_done = caps.contains("no-done");
    let odb = repo.objects()?;
    let mut neg = Negotiation::new(&odb);
    let mut w = PktWriter::new(&mut *session.out);
    let mut got_common = false;
    let mut got_other = false;
    let mut sent_ready = false;
    let mut last: Option<ObjectId> = None;
    let mut haves_seen = 0usize;
    loop {
        let packet = reader.read()?;
        match packet {
            None | Some(Packet::Flush) => {
                if multi_ack == MultiAck::Detailed
                    && got_common
                    && !got_other
                    && neg.ok_to_give_up(&wants)?
                {
                    if let Some(l) = last {
                        sent_ready = true;
                        w.line(&format!("ACK {l} ready"))?;
                    }
                }
                if neg.common.is_empty() || multi_ack != MultiAck::None {
                    w.line("NAK")?;
                }
                if no_done && sent_ready {
                    if let Some(l) = last {
                        w.line(&format!("ACK {l}"))?;
                    }
                    break;
                }
                // Stateless: this round is over; the client sends another request.
                return Ok(());
            }
            Some(p) => {
                let line = p.as_text("have line")?;
                if let Some(hex) = line.strip_prefix("have ") {
                    haves_seen += 1;
                    if haves_seen > MAX_HAVES {
                        return Err(Error::TooLarge(format!("more than {MAX_HAVES} haves")));
                    }
                    let id = parse_oid(hex, "have")?;
                    if neg.have(id)? {
                        got_common = true;
                        last = Some(id);
                        match multi_ack {
                            MultiAck::Detailed => w.line(&format!("ACK {id} common"))?,
                            MultiAck::Plain => w.line(&format!("ACK {id} continue"))?,
                            MultiAck::None if neg.common.len() == 1 => {
                                w.line(&format!("ACK {id}"))?
                            }
                            MultiAck::None => {}
                        }
                    } else {
                        got_other = true;
                        if multi_ack != MultiAck::None && neg.ok_to_give_up(&wants)? {
                            if multi_ack == MultiAck::Detailed {
                                sent_ready = true;
                                w.line(&format!("ACK {id} ready"))?;
                            } else {
                                w.line(&format!("ACK {id} continue"))?;
                            }
                        }
                    }
                } else if line == "done" {
                    match last {
                        Some(l) if multi_ack != MultiAck::None => w.line(&format!("ACK {l}"))?,
                        Some(_) => {}
                        None => w.line("NAK")?,
                    }
                    break;
                } else {
                    return Err(Error::Protocol(format!(
                        "expected have or done, got {line:?}"
                    )));
                }
            }
        }
    }
    let haves = commits_only(&odb, &neg.common)?;
    let sideband = if caps.contains("side-band-64k") {
        SideBandMode::Large
    } else if caps.contains("side-band") {
        SideBandMode::Small
    } else {
        SideBandMode::None
    };
    let request = PackRequest {
        wants,
        haves,
        sideband,
        progress: !caps.contains("no-progress"),
        include_tag: caps.contains("include-tag"),
    };
    send_pack(&odb, &refs, request, session)
}

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

fn serve_v2(repo: &Repo, input: &mut dyn BufRead, session: &mut Session<'_>) -> Result<()> {
    let mut reader = PktReader::new(input);
    let command = match reader.read()? {
        None | Some(Packet::Flush) => return Ok(()),
        Some(p) => p
            .as_text("command")?
            .strip_prefix("command=")
            .ok_or_else(|| Error::Protocol("expected command=".into()))?
            .to_owned(),
    };
    // Capability lines, up to the delimiter (or flush when there are no arguments).
    let mut has_args = false;
    loop {
        match reader.read_required()? {
            Packet::Delim => {
                has_args = true;
                break;
            }
            Packet::Flush => break,
            p => {
                let cap = p.as_text("capability")?;
                if let Some(fmt) = cap.strip_prefix("object-format=") {
                    if fmt != "sha1" {
                        return Err(Error::Unsupported(format!("object-format={fmt}")));
                    }
                }
            }
        }
    }
    let mut args = Vec::new();
    if has_args {
        loop {
            match reader.read_required()? {
                Packet::Flush => break,
                p => {
                    if args.len() >= MAX_WANTS + MAX_HAVES + 16 {
                        return Err(Error::TooLarge("too many arguments".into()));
                    }
                    args.push(p.as_text("argument")?.to_owned());
                }
            }
        }
    }
    match command.as_str() {
        "ls-refs" => ls_refs(repo, &args, session),
        "fetch" => fetch_v2(repo, &args, session),
        other => Err(Error::Protocol(format!("unknown command {other:?}"))),
    }
}

fn ls_refs(repo: &Repo, args: &[String], session: &mut Session<'_>) -> Result<()> {
    let mut symrefs = false;
    let mut peel = false;
    let mut unborn = false;
    let mut prefixes: Vec<&str> = Vec::new();
    for a in args {
        match a.as_str() {
            "symrefs" => symrefs = true,
            "peel" => peel = true,
            "unborn" => unborn = true,
            _ => match a.strip_prefix("ref-prefix ") {
                Some(p) => {
                    if prefixes.len() >= MAX_REF_PREFIXES {
                        // Too many prefixes: git treats this as "all refs".
                        prefixes.clear();
                        break;
                    }
                    prefixes.push(p);
                }
                None => return Err(Error::Protocol(format!("unknown ls-refs argument {a:?}"))),
            },
        }
    }
    let matches = |name: &str| prefixes.is_empty() || prefixes.iter().any(|p| name.starts_with(p));
    let mut w = PktWriter::new(&mut *session.out);
    if matches("HEAD") {
        let head = repo.head()?;
        let target = if symrefs {
            format!(" symref-target:{}", head.target)
        } else {
            String::new()
        };
        match head.id {
            Some(id) => w.line(&format!("{id} HEAD{target}"))?,
            None if unborn => w.line(&format!("unborn HEAD{target}"))?,
            None => {}
        }
    }
    for r in repo.refs()? {
        if !matches(&r.name) {
            continue;
        }
        let mut line = format!("{} {}", r.id, r.name);
        if peel {
            if let Some(p) = r.peeled {
                line.push_str(&format!(" peeled:{p}"));
            }
        }
        w.line(&line)?;
    }
    w.flush_pkt()?;
    Ok(())
}

fn fetch_v2(repo: &Repo, args: &[String], session: &mut Session<'_>) -> Result<()> {
    let mut wants = Vec::new();
    let mut haves = Vec::new();
    let mut done = false;
    let mut progress = true;
    let mut include_tag = false;
    let mut ofs_delta = false;
    for a in args {
        if let Some(hex) = a.strip_prefix("want ") {
            let id = parse_oid(hex, "want")?;
            if !wants.contains(&id) {
                wants.push(id);
            }
        } else if let Some(hex) = a.strip_prefix("have ") {
            haves.push(parse_oid(hex, "have")?);
        } else {
            match a.as_str() {
                "done" => done = true,
                "no-progress" => progress = false,
                "include-tag" => include_tag = true,
                "ofs-delta" => ofs_delta = true,
                "thin-pack" => {}
                other => {
                    return Err(unsupported_arg(other).unwrap_or_else(|| {
                        Error::Protocol(format!("unknown fetch argument {other:?}"))
                    }))
                }
            }
        }
    }
    if wants.is_empty() {
        return Err(Error::Protocol("fetch without any want".into()));
    }
    let refs = repo.refs()?;
    check_wants(&wants, &refs)?;
    if !ofs_delta {
        return Err(Error::Unsupported(
            "clients without the ofs-delta capability".into(),
        ));
    }
    let odb = repo.objects()?;
    let mut neg = Negotiation::new(&odb);
    let mut common = Vec::new();
    for h in &haves {
        if neg.have(*h)? {
            common.push(*h);
        }
    }
    if !done {
        let mut w = PktWriter::new(&mut *session.out);
        w.line("acknowledgments")?;
        if common.is_empty() {
            w.line("NAK")?;
        }
        for c in &common {
            w.line(&format!("ACK {c}"))?;
        }
        if !common.is_empty() && neg.ok_to_give_up(&wants)? {
            w.line("ready")?;
            w.delim()?;
        } else {
            w.flush_pkt()?;
            return Ok(());
        }
    }
    PktWriter::new(&mut *session.out).line("packfile")?;
    let haves = commits_only(&odb, &neg.common)?;
    let request = PackRequest {
        wants,
        haves,
        sideband: SideBandMode::Large,
        progress,
        include_tag,
    };
    send_pack(&odb, &refs, request, session)
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

fn send_pack(
    odb: &ObjectStore,
    refs: &[Ref],
    req: PackRequest,
    session: &mut Session<'_>,
) -> Result<()> {
    session.sideband = Some(req.sideband).filter(|m| *m != SideBandMode::None);
    let sb = RefCell::new(SideBand::new(&mut *session.out, req.sideband, req.progress));
    sb.borrow_mut().progress("Enumerating objects...\r")?;
    let mut objects = objects_to_send(odb, &req.wants, &req.haves)?;
    if req.include_tag {
        add_included_tags(refs, &mut objects.ids);
    }
    let total = objects.ids.len();
    sb.borrow_mut()
        .progress(&format!("Enumerating objects: {total}, done.\n"))?;
    let mut last = Instant::now();
    let mut finished = false;
    let mut writer = SharedWriter(&sb);
    let stats = write_pack(odb, objects.ids, &mut writer, &mut |done, total| {
        if finished {
            return;
        }
        finished = done == total;
        if finished || last.elapsed() >= PROGRESS_INTERVAL {
            last = Instant::now();
            let pct = (done * 100).checked_div(total).unwrap_or(100);
            let end = if done == total { ", done.\n" } else { "\r" };
            let _ = sb
                .borrow_mut()
                .progress(&format!("Writing objects: {pct:3}% ({done}/{total}){end}"));
        }
    })?;
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

struct SharedWriter<'a, W: Write>(&'a RefCell<SideBand<W>>);

impl<W: Write> Write for SharedWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

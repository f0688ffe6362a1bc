//! upload-pack commands of protocol v2 (`gitprotocol-v2`): `ls-refs`,
//! `fetch` and `object-info`: one command per stateless request, or any
//! number of them on a stateful connection ([`super::connection`]).

use std::io::BufRead;

use super::args::{check_wants, parse_oid, unsupported, FetchArgs};
use super::send::send_fetch_pack;
use super::{write_shallow_lines, Session};
use crate::error::{Error, Result};
use crate::limits::{MAX_HAVES, MAX_REF_PREFIXES, MAX_REQUEST_BYTES, MAX_WANTS};
use crate::pktline::{Packet, PktReader, SideBandMode};
use crate::shallow;
use crate::storage::Repo;
use crate::walk::Negotiation;

/// Most `oid` lines in one `object-info` request.
const MAX_OBJECT_INFO_OIDS: usize = MAX_WANTS;

pub(super) fn serve(repo: &Repo, input: &mut dyn BufRead, session: &mut Session<'_>) -> Result<()> {
    match read_request(input)? {
        Some(request) => run(repo, &request, session),
        None => Ok(()),
    }
}

/// One v2 command request: the command name and its argument lines.
pub(super) struct Request {
    /// `ls-refs`, `fetch`, `object-info`, ...
    pub(super) command: String,
    /// The argument lines (after the delimiter).
    pub(super) args: Vec<String>,
}

/// Read one command request, up to and including its closing flush and
/// not a byte further (the next request on a stateful connection stays in
/// `input`). `None` when the client ends the session: a flush or the end
/// of input where a command would start.
pub(super) fn read_request(input: &mut dyn BufRead) -> Result<Option<Request>> {
    let mut reader = PktReader::new(input);
    let command = match reader.read()? {
        None | Some(Packet::Flush) => return Ok(None),
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
            p => capability(p.as_text("capability")?)?,
        }
    }
    let mut args = Vec::new();
    let mut arg_bytes = 0usize;
    if has_args {
        loop {
            match reader.read_required()? {
                Packet::Flush => break,
                p => {
                    if args.len() >= MAX_WANTS + MAX_HAVES + 16 {
                        return Err(Error::TooLarge("too many arguments".into()));
                    }
                    let arg = p.as_text("argument")?.to_owned();
                    arg_bytes += arg.len();
                    if arg_bytes > MAX_REQUEST_BYTES {
                        return Err(Error::TooLarge(format!(
                            "arguments over {MAX_REQUEST_BYTES} bytes"
                        )));
                    }
                    args.push(arg);
                }
            }
        }
    }
    Ok(Some(Request { command, args }))
}

fn capability(cap: &str) -> Result<()> {
    if let Some(fmt) = cap.strip_prefix("object-format=") {
        if fmt != "sha1" {
            return Err(Error::Unsupported(format!("object-format={fmt}")));
        }
    } else if let Some(opt) = cap.strip_prefix("server-option=") {
        tracing::debug!(
            option = opt,
            "server option (no options are defined on this node)"
        );
    } else if let Some(sid) = cap.strip_prefix("session-id=") {
        tracing::debug!(session_id = sid, "client session");
    }
    Ok(())
}

/// Answer one command request.
pub(super) fn run(repo: &Repo, request: &Request, session: &mut Session<'_>) -> Result<()> {
    let args = &request.args;
    match request.command.as_str() {
        "ls-refs" => ls_refs(repo, args, session),
        "fetch" => fetch(repo, args, session),
        "object-info" => object_info(repo, args, session),
        other => Err(Error::Protocol(format!("unknown command {other:?}"))),
    }
}

fn ls_refs(repo: &Repo, args: &[String], session: &mut Session<'_>) -> Result<()> {
    let mut symrefs = false;
    let mut peel = false;
    let mut unborn = false;
    let mut prefixes: Vec<&str> = Vec::new();
    let mut too_many = false;
    for a in args {
        match a.as_str() {
            "symrefs" => symrefs = true,
            "peel" => peel = true,
            "unborn" => unborn = true,
            _ => match a.strip_prefix("ref-prefix ") {
                // Past the limit git treats the request as "all refs".
                Some(p) if prefixes.len() < MAX_REF_PREFIXES => prefixes.push(p),
                Some(_) => too_many = true,
                None => return Err(Error::Protocol(format!("unknown ls-refs argument {a:?}"))),
            },
        }
    }
    if too_many {
        prefixes.clear();
    }
    let matches = |name: &str| prefixes.is_empty() || prefixes.iter().any(|p| name.starts_with(p));
    if matches("HEAD") {
        let head = repo.head()?;
        let target = if symrefs {
            format!(" symref-target:{}", head.target)
        } else {
            String::new()
        };
        match head.id {
            Some(id) => session.line(&format!("{id} HEAD{target}"))?,
            None if unborn && symrefs => session.line(&format!("unborn HEAD{target}"))?,
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
        session.line(&line)?;
    }
    session.flush_pkt()?;
    Ok(())
}

fn parse_fetch_args(repo: &Repo, lines: &[String]) -> Result<FetchArgs> {
    let mut args = FetchArgs::new();
    args.sideband = Some(SideBandMode::Large);
    for a in lines {
        if let Some(hex) = a.strip_prefix("want ") {
            args.add_want(parse_oid(hex, "want")?)?;
        } else if let Some(name) = a.strip_prefix("want-ref ") {
            let id = if name == "HEAD" {
                repo.head()?.id
            } else {
                repo.find_ref(name)?
            };
            let id = id.ok_or_else(|| Error::Protocol(format!("unknown ref {name}")))?;
            if !args.want_refs.iter().any(|(n, _)| n == name) {
                args.want_refs.push((name.to_owned(), id));
            }
            args.add_want(id)?;
        } else if let Some(hex) = a.strip_prefix("have ") {
            args.add_have(parse_oid(hex, "have")?)?;
        } else if args.shallow_or_filter_line(a)? {
        } else {
            match a.as_str() {
                "done" => args.done = true,
                "no-progress" => args.progress = false,
                "include-tag" => args.include_tag = true,
                "ofs-delta" => args.ofs_delta = true,
                "thin-pack" => {}
                "wait-for-done" => args.wait_for_done = true,
                "deepen-relative" => args.deepen_relative = true,
                "sideband-all" => args.sideband_all = true,
                other => {
                    return Err(unsupported(other)
                        .unwrap_or_else(|| Error::Protocol(format!("unexpected line: '{other}'"))))
                }
            }
        }
    }
    Ok(args)
}

fn fetch(repo: &Repo, lines: &[String], session: &mut Session<'_>) -> Result<()> {
    let args = parse_fetch_args(repo, lines)?;
    if args.sideband_all {
        session.all_bands = true;
        session.sideband = Some(SideBandMode::Large);
    }
    if args.wants.is_empty() && !args.wait_for_done {
        return Ok(());
    }
    let refs = repo.refs()?;
    let odb = repo.objects()?;
    check_wants(&odb, &args.wants, &refs, false)?;
    let mut neg = Negotiation::new(&odb);
    for h in &args.haves {
        neg.have(*h)?;
    }
    if !args.haves.is_empty() && !args.done {
        // As git's `send_acks`: the common objects as `have_obj` holds them.
        session.line("acknowledgments")?;
        if neg.common.is_empty() {
            session.line("NAK")?;
        }
        for c in &neg.common {
            session.line(&format!("ACK {c}"))?;
        }
        if !args.wait_for_done && neg.ok_to_give_up(&args.wants)? {
            session.line("ready")?;
            session.delim()?;
        } else {
            session.flush_pkt()?;
            return Ok(());
        }
    }
    if args.wants.is_empty() {
        session.flush_pkt()?;
        return Ok(());
    }
    let deepen = args.deepen(&refs)?;
    let client_shallow = args.known_client_shallow(&odb)?;
    let plan = shallow::plan(&odb, &args.wants, &client_shallow, &deepen)?;
    if plan.deepened || !args.client_shallow.is_empty() {
        session.line("shallow-info")?;
        write_shallow_lines(session, &plan)?;
        session.delim()?;
    }
    // Section order of gitprotocol-v2 (and git's client): shallow-info, then wanted-refs.
    if !args.want_refs.is_empty() {
        session.line("wanted-refs")?;
        for (name, id) in &args.want_refs {
            session.line(&format!("{id} {name}"))?;
        }
        session.delim()?;
    }
    session.line("packfile")?;
    send_fetch_pack(repo, &odb, &refs, &args, &neg.common, &plan, session)
}

/// `object-info`: the size of each named object (empty for unknown objects).
fn object_info(repo: &Repo, lines: &[String], session: &mut Session<'_>) -> Result<()> {
    let mut size = false;
    let mut oids = Vec::new();
    for l in lines {
        if l == "size" {
            size = true;
        } else if let Some(hex) = l.strip_prefix("oid ") {
            if oids.len() >= MAX_OBJECT_INFO_OIDS {
                return Err(Error::TooLarge(format!(
                    "more than {MAX_OBJECT_INFO_OIDS} oids"
                )));
            }
            oids.push(parse_oid(hex, "object-info")?);
        } else {
            return Err(Error::Protocol(format!(
                "object-info: unexpected line: '{l}'"
            )));
        }
    }
    if !oids.is_empty() {
        let odb = repo.objects()?;
        if size {
            session.line("size")?;
        }
        // As git's protocol-caps.c: the id, then " <size>" if asked, or
        // a lone space when the object is unknown.
        for id in oids {
            if !size {
                session.line(&id.to_string())?;
            } else if odb.contains(&id) {
                session.line(&format!("{id} {}", odb.size(&id)?))?;
            } else {
                session.line(&format!("{id} "))?;
            }
        }
    }
    session.flush_pkt()?;
    Ok(())
}

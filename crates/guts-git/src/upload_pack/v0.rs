//! upload-pack in protocol v0/v1 over stateless HTTP.
//!
//! Request: `want` lines (capabilities on the first), `shallow`/`deepen*`/
//! `filter` lines, a flush, then `have` lines ending in a flush (another
//! round follows) or `done`. Response: the shallow list when deepening, then
//! ACK/NAK lines (`multi_ack_detailed` rules of git's `get_common_commits`),
//! then the pack if negotiation is over.

use std::collections::HashSet;
use std::io::BufRead;

use gix_hash::ObjectId;

use super::args::{check_wants, parse_oid, FetchArgs};
use super::{send_fetch_pack, write_shallow_lines, Session};
use crate::error::{Error, Result};
use crate::pktline::{Packet, PktReader, SideBandMode};
use crate::shallow;
use crate::storage::Repo;
use crate::walk::Negotiation;

#[derive(Clone, Copy, PartialEq, Eq)]
enum MultiAck {
    None,
    Plain,
    Detailed,
}

pub(super) fn serve(repo: &Repo, input: &mut dyn BufRead, session: &mut Session<'_>) -> Result<()> {
    let mut reader = PktReader::new(input);
    let mut args = FetchArgs::new();
    let mut caps: HashSet<String> = HashSet::new();
    loop {
        let line = match reader.read()? {
            None | Some(Packet::Flush) => break,
            Some(p) => p.as_text("want line")?,
        };
        if let Some(rest) = line.strip_prefix("want ") {
            let (hex, rest_caps) = rest.split_once(' ').unwrap_or((rest, ""));
            if args.wants.is_empty() {
                caps.extend(rest_caps.split_whitespace().map(str::to_owned));
            }
            args.add_want(parse_oid(hex, "want")?)?;
        } else if line.starts_with("filter ") && !caps.contains("filter") {
            return Err(Error::Protocol(
                "filtering capability not negotiated".into(),
            ));
        } else if !args.shallow_or_filter_line(line)? {
            return Err(Error::Protocol(format!(
                "expected a want line, got {line:?}"
            )));
        }
    }
    if args.wants.is_empty() {
        return Ok(());
    }
    args.deepen_relative = caps.contains("deepen-relative");
    let refs = repo.refs()?;
    let odb = repo.objects()?;
    check_wants(&odb, &args.wants, &refs, true)?;
    if !caps.contains("ofs-delta") {
        return Err(Error::Unsupported(
            "clients without the ofs-delta capability".into(),
        ));
    }
    let deepen = args.deepen(&refs)?;
    let client_shallow = args.known_client_shallow(&odb)?;
    let plan = shallow::plan(&odb, &args.wants, &client_shallow, &deepen)?;
    if plan.deepened {
        write_shallow_lines(session, &plan)?;
        session.out.write_all(b"0000")?;
    }
    // A stateless client ends its first request after the shallow list it
    // asked for; negotiation follows in the next request (as in git).
    if reader.at_eof()? {
        session.out.flush()?;
        return Ok(());
    }

    let multi_ack = if caps.contains("multi_ack_detailed") {
        MultiAck::Detailed
    } else if caps.contains("multi_ack") {
        MultiAck::Plain
    } else {
        MultiAck::None
    };
    let no_done = caps.contains("no-done");
    let mut neg = Negotiation::new(&odb);
    let mut got_common = false;
    let mut got_other = false;
    let mut sent_ready = false;
    let mut last: Option<ObjectId> = None;
    loop {
        let packet = reader.read()?;
        match packet {
            None | Some(Packet::Flush) => {
                if multi_ack == MultiAck::Detailed
                    && got_common
                    && !got_other
                    && neg.ok_to_give_up(&args.wants)?
                {
                    if let Some(l) = last {
                        sent_ready = true;
                        session.line(&format!("ACK {l} ready"))?;
                    }
                }
                if neg.common.is_empty() || multi_ack != MultiAck::None {
                    session.line("NAK")?;
                }
                if no_done && sent_ready {
                    if let Some(l) = last {
                        session.line(&format!("ACK {l}"))?;
                    }
                    break;
                }
                // Stateless: this round is over; the client sends another request.
                session.out.flush()?;
                return Ok(());
            }
            Some(p) => {
                let line = p.as_text("have line")?;
                if let Some(hex) = line.strip_prefix("have ") {
                    let id = parse_oid(hex, "have")?;
                    args.add_have(id)?;
                    if neg.have(id)? {
                        got_common = true;
                        last = Some(id);
                        match multi_ack {
                            MultiAck::Detailed => session.line(&format!("ACK {id} common"))?,
                            MultiAck::Plain => session.line(&format!("ACK {id} continue"))?,
                            MultiAck::None if neg.common.len() == 1 => {
                                session.line(&format!("ACK {id}"))?
                            }
                            MultiAck::None => {}
                        }
                    } else {
                        got_other = true;
                        if multi_ack != MultiAck::None && neg.ok_to_give_up(&args.wants)? {
                            if multi_ack == MultiAck::Detailed {
                                sent_ready = true;
                                session.line(&format!("ACK {id} ready"))?;
                            } else {
                                session.line(&format!("ACK {id} continue"))?;
                            }
                        }
                    }
                } else if line == "done" {
                    match last {
                        Some(l) if multi_ack != MultiAck::None => {
                            session.line(&format!("ACK {l}"))?
                        }
                        Some(_) => {}
                        None => session.line("NAK")?,
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
    args.sideband = Some(if caps.contains("side-band-64k") {
        SideBandMode::Large
    } else if caps.contains("side-band") {
        SideBandMode::Small
    } else {
        SideBandMode::None
    });
    args.progress = !caps.contains("no-progress");
    args.include_tag = caps.contains("include-tag");
    send_fetch_pack(&odb, &refs, &args, &neg.common, &plan, session)
}

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
use super::send::send_fetch_pack;
use super::{write_shallow_lines, Session};
use crate::error::{Error, Result};
use crate::odb::ObjectStore;
use crate::pktline::{write_flush, Packet, PktReader, SideBandMode};
use crate::shallow;
use crate::storage::Repo;
use crate::walk::Negotiation;

#[derive(Clone, Copy, PartialEq, Eq)]
enum MultiAck {
    None,
    Plain,
    Detailed,
}

impl MultiAck {
    /// The acknowledgement style the client's capabilities ask for.
    fn from_caps(caps: &HashSet<String>) -> Self {
        if caps.contains("multi_ack_detailed") {
            MultiAck::Detailed
        } else if caps.contains("multi_ack") {
            MultiAck::Plain
        } else {
            MultiAck::None
        }
    }
}

/// Serve one v0/v1 request: read the wants, answer the shallow list, run
/// one negotiation round and, once it is over, send the pack.
pub(super) fn serve(repo: &Repo, input: &mut dyn BufRead, session: &mut Session<'_>) -> Result<()> {
    let mut reader = PktReader::new(input);
    let (mut args, caps) = read_wants(&mut reader)?;
    if args.wants.is_empty() {
        return Ok(());
    }
    args.deepen_relative = caps.contains("deepen-relative");
    let refs = repo.refs()?;
    let odb = repo.objects()?;
    check_wants(&odb, &args.wants, &refs, true)?;
    let deepen = args.deepen(&refs)?;
    let client_shallow = args.known_client_shallow(&odb)?;
    let plan = shallow::plan(&odb, &args.wants, &client_shallow, &deepen)?;
    if plan.deepened {
        write_shallow_lines(session, &plan)?;
        write_flush(&mut *session.out)?;
    }
    // A stateless client ends its first request after the shallow list it
    // asked for; negotiation follows in the next request (as in git).
    if reader.at_eof()? {
        session.out.flush()?;
        return Ok(());
    }

    let mut round = Round::new(&odb, &caps);
    if !round.negotiate(&mut reader, &mut args, session)? {
        // Stateless: this round is over; the client sends another request.
        session.out.flush()?;
        return Ok(());
    }
    set_pack_options(&mut args, &caps);
    send_fetch_pack(repo, &odb, &refs, &args, &round.neg.common, &plan, session)
}

/// Read the first section of a request, up to its flush: the `want` lines
/// (the capabilities ride on the first) and the shallow/deepen/filter lines.
fn read_wants<R: BufRead>(reader: &mut PktReader<R>) -> Result<(FetchArgs, HashSet<String>)> {
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
    Ok((args, caps))
}

/// The pack framing and extras the capabilities ask for.
fn set_pack_options(args: &mut FetchArgs, caps: &HashSet<String>) {
    args.sideband = Some(if caps.contains("side-band-64k") {
        SideBandMode::Large
    } else if caps.contains("side-band") {
        SideBandMode::Small
    } else {
        SideBandMode::None
    });
    args.progress = !caps.contains("no-progress");
    args.include_tag = caps.contains("include-tag");
    args.ofs_delta = caps.contains("ofs-delta");
}

/// The state of one negotiation round: which haves were common, and what
/// was acknowledged so far (the rules of git's `get_common_commits`).
struct Round<'a> {
    multi_ack: MultiAck,
    no_done: bool,
    neg: Negotiation<'a>,
    got_common: bool,
    got_other: bool,
    sent_ready: bool,
    /// The last common `have`.
    last: Option<ObjectId>,
}

impl<'a> Round<'a> {
    fn new(odb: &'a ObjectStore, caps: &HashSet<String>) -> Self {
        Round {
            multi_ack: MultiAck::from_caps(caps),
            no_done: caps.contains("no-done"),
            neg: Negotiation::new(odb),
            got_common: false,
            got_other: false,
            sent_ready: false,
            last: None,
        }
    }

    /// Read `have` lines and answer them until a flush or `done`. Returns
    /// whether negotiation is over (then the pack follows); `false` means the
    /// client continues with another request.
    fn negotiate<R: BufRead>(
        &mut self,
        reader: &mut PktReader<R>,
        args: &mut FetchArgs,
        session: &mut Session<'_>,
    ) -> Result<bool> {
        loop {
            let line = match reader.read()? {
                None | Some(Packet::Flush) => return self.end_of_round(&args.wants, session),
                Some(p) => p.as_text("have line")?,
            };
            if let Some(hex) = line.strip_prefix("have ") {
                let id = parse_oid(hex, "have")?;
                args.add_have(id)?;
                self.have(id, &args.wants, session)?;
            } else if line == "done" {
                self.done(session)?;
                return Ok(true);
            } else {
                return Err(Error::Protocol(format!(
                    "expected have or done, got {line:?}"
                )));
            }
        }
    }

    /// Answer one `have`: acknowledge it if common, or say "ready" once
    /// every want reaches a common commit.
    fn have(&mut self, id: ObjectId, wants: &[ObjectId], session: &mut Session<'_>) -> Result<()> {
        if self.neg.have(id)? {
            self.got_common = true;
            self.last = Some(id);
            match self.multi_ack {
                MultiAck::Detailed => session.line(&format!("ACK {id} common"))?,
                MultiAck::Plain => session.line(&format!("ACK {id} continue"))?,
                MultiAck::None if self.neg.common.len() == 1 => {
                    session.line(&format!("ACK {id}"))?
                }
                MultiAck::None => {}
            }
        } else {
            self.got_other = true;
            if self.multi_ack != MultiAck::None && self.neg.ok_to_give_up(wants)? {
                if self.multi_ack == MultiAck::Detailed {
                    self.sent_ready = true;
                    session.line(&format!("ACK {id} ready"))?;
                } else {
                    session.line(&format!("ACK {id} continue"))?;
                }
            }
        }
        Ok(())
    }

    /// The flush that ends a round of haves: NAK, possibly "ready", and with
    /// `no-done` after "ready" the final ACK. Returns whether negotiation is over.
    fn end_of_round(&mut self, wants: &[ObjectId], session: &mut Session<'_>) -> Result<bool> {
        if self.multi_ack == MultiAck::Detailed
            && self.got_common
            && !self.got_other
            && self.neg.ok_to_give_up(wants)?
        {
            if let Some(l) = self.last {
                self.sent_ready = true;
                session.line(&format!("ACK {l} ready"))?;
            }
        }
        if self.neg.common.is_empty() || self.multi_ack != MultiAck::None {
            session.line("NAK")?;
        }
        if self.no_done && self.sent_ready {
            if let Some(l) = self.last {
                session.line(&format!("ACK {l}"))?;
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// `done`: the final ACK of the last common commit, or NAK if none.
    fn done(&mut self, session: &mut Session<'_>) -> Result<()> {
        match self.last {
            Some(l) if self.multi_ack != MultiAck::None => session.line(&format!("ACK {l}"))?,
            Some(_) => {}
            None => session.line("NAK")?,
        }
        Ok(())
    }
}

//! What the helper follows of a protocol v2 upload-pack session to resume
//! a fetch: the command requests git sends (the last `fetch` is kept, to
//! be asked again), and the server's responses, passed to git only as whole
//! pkt-lines, with the pack bytes of a `fetch` response counted and hashed.
//! No I/O here.

use std::collections::VecDeque;

use guts_git::resume::{PackPrefix, ResumePoint};

/// The longest fetch request kept for a resume (the server refuses larger
/// ones anyway); a longer one is passed on but cannot be resumed.
const MAX_KEPT_REQUEST: usize = 16 * 1024 * 1024;
/// The longest pkt-line (git's LARGE_PACKET_MAX).
const MAX_PKT: usize = 65520;

/// One pkt-line off `buf`, if whole: its total length (`0000`, `0001`,
/// `0002` are 4 bytes).
fn next_pkt(buf: &[u8]) -> Result<Option<usize>, String> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let len = std::str::from_utf8(head)
        .ok()
        .and_then(|h| usize::from_str_radix(h, 16).ok())
        .ok_or_else(|| format!("bad pkt-line length {:?}", String::from_utf8_lossy(head)))?;
    let total = match len {
        0..=2 => 4,
        3 => return Err("invalid pkt-line length 0003".into()),
        n if n > MAX_PKT => return Err(format!("pkt-line of {n} bytes")),
        n => n,
    };
    Ok((buf.len() >= total).then_some(total))
}

/// The `packfile` section header (on band 1 with `sideband-all`, which
/// git asks for when the server offers it).
fn is_packfile(payload: &[u8]) -> bool {
    payload == b"packfile\n" || payload == b"\x01packfile\n"
}

/// What a request was, for reading its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `command=fetch`: sections, maybe a pack.
    Fetch,
    /// Any other command: lines up to a flush.
    Other,
}

/// git's side: the command requests, as they pass.
#[derive(Debug, Default)]
pub struct Requests {
    pending: Vec<u8>,
    current: Vec<u8>,
    kind: Option<Kind>,
    too_long: bool,
    /// Requests sent whose response has not started yet.
    queue: VecDeque<Kind>,
    /// The last complete `fetch` request, byte for byte.
    last_fetch: Option<Vec<u8>>,
    /// git sent something that is not pkt-lines: follow no more.
    lost: bool,
}

impl Requests {
    /// Follow `data`, sent by git to the server.
    pub fn feed(&mut self, data: &[u8]) {
        if self.lost {
            return;
        }
        self.pending.extend_from_slice(data);
        let mut pos = 0;
        loop {
            let total = match next_pkt(&self.pending[pos..]) {
                Ok(Some(t)) => t,
                Ok(None) => break,
                Err(_) => {
                    self.lost = true;
                    self.pending.clear();
                    return;
                }
            };
            let pkt = &self.pending[pos..pos + total];
            pos += total;
            if self.kind.is_none() {
                if pkt == b"0000" {
                    continue; // the end of the session
                }
                let fetch = pkt
                    .get(4..)
                    .is_some_and(|p| p.starts_with(b"command=fetch"));
                self.kind = Some(if fetch { Kind::Fetch } else { Kind::Other });
            }
            if self.current.len() + pkt.len() <= MAX_KEPT_REQUEST {
                self.current.extend_from_slice(pkt);
            } else {
                self.too_long = true;
            }
            if pkt == b"0000" {
                let kind = self.kind.take().unwrap_or(Kind::Other);
                self.queue.push_back(kind);
                let request = std::mem::take(&mut self.current);
                if kind == Kind::Fetch {
                    self.last_fetch = (!self.too_long).then_some(request);
                }
                self.too_long = false;
            }
        }
        self.pending.drain(..pos);
    }

    /// Every request sent has had its answer begin, and none is half sent.
    pub fn idle(&self) -> bool {
        self.queue.is_empty() && self.kind.is_none()
    }

    /// The fetch request to ask again.
    pub fn last_fetch(&self) -> Option<&[u8]> {
        self.last_fetch.as_deref()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The capability advertisement.
    Advert,
    /// Between responses.
    Idle,
    /// A fetch response, before its pack.
    Sections,
    /// The `packfile` section.
    Pack,
    /// Another command's response.
    Other,
    /// A resumed fetch: its response is dropped up to `packfile`
    /// (advertisement included), as git has it already.
    Replay { advert_done: bool },
}

/// The server's side: whole pkt-lines passed on, pack bytes counted.
#[derive(Debug)]
pub struct Responses {
    pending: Vec<u8>,
    state: State,
    prefix: PackPrefix,
    /// A band-3 message of the pack section (the server's error).
    pub error: Option<String>,
}

impl Default for Responses {
    fn default() -> Self {
        Responses {
            pending: Vec::new(),
            state: State::Advert,
            prefix: PackPrefix::default(),
            error: None,
        }
    }
}

impl Responses {
    /// Follow `data` from the server; the whole pkt-lines to pass to git
    /// are appended to `out`.
    pub fn feed(
        &mut self,
        data: &[u8],
        requests: &mut Requests,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let mut pending = std::mem::take(&mut self.pending);
        pending.extend_from_slice(data);
        let mut pos = 0;
        let result = loop {
            match next_pkt(&pending[pos..]) {
                Ok(Some(total)) => {
                    let pkt = &pending[pos..pos + total];
                    pos += total;
                    match self.packet(pkt, requests) {
                        Ok(true) => out.extend_from_slice(pkt),
                        Ok(false) => {}
                        Err(e) => break Err(e),
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        pending.drain(..pos);
        self.pending = pending;
        result
    }

    /// Follow one packet; whether git gets it.
    fn packet(&mut self, pkt: &[u8], requests: &mut Requests) -> Result<bool, String> {
        let payload = &pkt[4..];
        let flush = pkt == b"0000";
        match self.state {
            State::Advert if flush => self.state = State::Idle,
            State::Advert => {}
            State::Idle => {
                self.state = match requests.queue.pop_front() {
                    Some(Kind::Fetch) => State::Sections,
                    _ => State::Other,
                };
                self.prefix = PackPrefix::default();
                self.error = None;
                return self.packet(pkt, requests);
            }
            State::Sections if flush => self.state = State::Idle,
            State::Sections if is_packfile(payload) => self.state = State::Pack,
            State::Sections | State::Other if flush => self.state = State::Idle,
            State::Sections | State::Other => {}
            State::Pack if flush => self.state = State::Idle,
            State::Pack => match payload.first() {
                Some(1) => self.prefix.update(&payload[1..]),
                Some(3) => {
                    self.error = Some(String::from_utf8_lossy(&payload[1..]).trim().to_owned())
                }
                _ => {}
            },
            State::Replay { advert_done: false } => {
                if flush {
                    self.state = State::Replay { advert_done: true };
                }
                return Ok(false);
            }
            State::Replay { advert_done: true } => {
                if is_packfile(payload) {
                    self.state = State::Pack;
                    return Ok(false);
                }
                if flush || payload.starts_with(b"ERR ") || payload.starts_with(b"\x03") {
                    let why = String::from_utf8_lossy(payload).trim().to_owned();
                    return Err(format!("the server did not resume the fetch: {why}"));
                }
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether the server is between responses (nothing of one pending).
    pub fn between(&self) -> bool {
        self.state == State::Idle && self.pending.is_empty()
    }

    /// Where a dropped connection leaves the session: `Some` if a fetch's
    /// pack was being received (resume from there), `None` if nothing can
    /// be resumed. Bytes of a partial pkt-line are forgotten.
    pub fn interrupted(&mut self) -> Option<Result<Option<ResumePoint>, String>> {
        if self.state != State::Pack {
            return None;
        }
        self.pending.clear();
        Some(self.prefix.point().map_err(|e| e.to_string()))
    }

    /// A new connection replays the interrupted fetch: drop its response
    /// up to the `packfile` section, then go on counting the pack.
    pub fn replay(&mut self) {
        self.pending.clear();
        self.state = State::Replay { advert_done: false };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(data: &[u8]) -> Vec<u8> {
        let mut out = format!("{:04x}", data.len() + 4).into_bytes();
        out.extend_from_slice(data);
        out
    }

    fn fetch_request() -> Vec<u8> {
        let mut r = pkt(b"command=fetch\n");
        r.extend(b"0001");
        r.extend(pkt(b"want 1111111111111111111111111111111111111111\n"));
        r.extend(pkt(b"done\n"));
        r.extend(b"0000");
        r
    }

    fn response(pack: &[u8]) -> Vec<u8> {
        let mut r = pkt(b"packfile\n");
        r.extend(pkt(b"\x02counting\n"));
        for c in pack.chunks(100) {
            let mut p = vec![1];
            p.extend_from_slice(c);
            r.extend(pkt(&p));
        }
        r.extend(b"0000");
        r
    }

    fn advert() -> Vec<u8> {
        let mut a = pkt(b"version 2\n");
        a.extend(b"0000");
        a
    }

    #[test]
    fn only_whole_packets_pass_and_a_drop_in_the_pack_resumes_after_what_git_got() {
        let pack: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut req = Requests::default();
        let mut resp = Responses::default();
        let mut to_git = Vec::new();
        resp.feed(&advert(), &mut req, &mut to_git).expect("advert");
        let request = fetch_request();
        // git's request arrives in pieces.
        req.feed(&request[..7]);
        req.feed(&request[7..]);
        assert_eq!(req.last_fetch(), Some(&request[..]));
        let full = response(&pack);
        let cut = full.len() / 2 + 3; // inside a packet
        resp.feed(&full[..cut], &mut req, &mut to_git)
            .expect("feed");
        let got = to_git.len();
        assert!(next_pkt_all(&to_git), "whole packets only");
        let point = resp
            .interrupted()
            .expect("in the pack")
            .expect("point")
            .expect("bytes");
        assert_eq!(point.offset % 100, 0);
        // A new connection: advertisement and sections again, then the rest.
        resp.replay();
        let mut again = advert();
        let mut skipped = pkt(b"packfile\n");
        for c in pack[point.offset as usize..].chunks(100) {
            let mut p = vec![1];
            p.extend_from_slice(c);
            skipped.extend(pkt(&p));
        }
        skipped.extend(b"0000");
        again.extend(skipped);
        resp.feed(&again, &mut req, &mut to_git).expect("resumed");
        // git got exactly one response.
        assert_eq!(&to_git[advert().len()..], &full[..], "got {got}");
    }

    fn next_pkt_all(mut b: &[u8]) -> bool {
        while !b.is_empty() {
            match next_pkt(b) {
                Ok(Some(t)) => b = &b[t..],
                _ => return false,
            }
        }
        true
    }

    #[test]
    fn no_resume_outside_a_pack_and_a_refusal_is_an_error() {
        let mut req = Requests::default();
        let mut resp = Responses::default();
        let mut out = Vec::new();
        resp.feed(&advert(), &mut req, &mut out).expect("advert");
        assert!(resp.interrupted().is_none());
        req.feed(&fetch_request());
        resp.feed(&pkt(b"packfile\n"), &mut req, &mut out)
            .expect("feed");
        resp.replay();
        let mut refused = advert();
        refused.extend(pkt(b"ERR upload-pack: cannot resume\n"));
        assert!(resp.feed(&refused, &mut req, &mut out).is_err());
        assert!(resp.feed(b"zzzz", &mut req, &mut out).is_err());
    }

    #[test]
    fn requests_of_other_commands_and_the_final_flush_are_followed() {
        let mut req = Requests::default();
        let mut ls = pkt(b"command=ls-refs\n");
        ls.extend(b"0000");
        req.feed(&ls);
        req.feed(b"0000");
        assert_eq!(req.queue.iter().copied().collect::<Vec<_>>(), [Kind::Other]);
        assert!(req.last_fetch().is_none());
        req.feed(b"garbage!");
        req.feed(&fetch_request());
        assert!(req.last_fetch().is_none(), "lost track after garbage");
    }
}

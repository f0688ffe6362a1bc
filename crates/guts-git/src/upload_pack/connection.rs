//! upload-pack protocol v2 on a stateful connection (git's `connect`
//! remote helpers, a WebSocket): the capability advertisement once, then
//! any number of commands, each answered in full before the next is read,
//! until the client sends a flush or closes the connection.
//!
//! A connection may start by resuming an interrupted `fetch`
//! ([`crate::resume`]): its first command must then be that fetch again,
//! and the pack of its response goes through [`SkipPrefix`], so only the
//! bytes the client does not hold yet are sent.

use std::io::{BufRead, Write};

use super::{v2, Session, UploadStats};
use crate::error::{Error, Result};
use crate::protocol::{advertise, Service, Version};
use crate::resume::{ResumePoint, SkipPrefix};
use crate::storage::Repo;

/// Most commands one connection may run (a clone takes 2 or 3; a fetch
/// negotiating over a long history a few dozen).
pub const MAX_COMMANDS: usize = 256;

/// A command read from the client, to be answered
/// ([`Connection::answer`]).
pub struct Command(v2::Request);

/// A v2 upload-pack connection: input and output are the two directions of
/// the connection (no sockets here).
pub struct Connection<'a> {
    repo: &'a Repo,
    input: &'a mut dyn BufRead,
    out: &'a mut dyn Write,
    served: usize,
    max_commands: usize,
    resume: Option<ResumePoint>,
}

impl<'a> Connection<'a> {
    /// Start a connection: write the capability advertisement. With
    /// `resume`, the first command must be the `fetch` being resumed.
    pub fn start(
        repo: &'a Repo,
        input: &'a mut dyn BufRead,
        out: &'a mut dyn Write,
        max_commands: usize,
        resume: Option<ResumePoint>,
    ) -> Result<Self> {
        advertise(repo, Service::UploadPack, Version::V2, None, &mut *out)?;
        out.flush()?;
        Ok(Connection {
            repo,
            input,
            out,
            served: 0,
            max_commands,
            resume,
        })
    }

    /// Commands answered so far.
    pub fn served(&self) -> usize {
        self.served
    }

    /// Read and answer the next command. `Ok(false)` when the client ended
    /// the session. Errors are reported to the client in-band (as for one
    /// stateless request) and returned; the connection should then end.
    pub fn serve_next(&mut self, stats: &mut UploadStats) -> Result<bool> {
        match self.next_command(stats)? {
            Some(command) => self.answer(command, stats).map(|()| true),
            None => Ok(false),
        }
    }

    /// Read the next command, without answering it: the caller may wait
    /// for room to do the work in between (a client waiting to send its
    /// next command holds nothing). `Ok(None)` when the client ended the
    /// session; errors are reported to the client in-band and returned.
    pub fn next_command(&mut self, stats: &mut UploadStats) -> Result<Option<Command>> {
        let request = match v2::read_request(&mut *self.input) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.report(e, stats)),
        };
        if self.served >= self.max_commands {
            let e = Error::TooLarge(format!(
                "more than {} commands on one connection",
                self.max_commands
            ));
            return Err(self.report(e, stats));
        }
        self.served += 1;
        Ok(Some(Command(request)))
    }

    /// Refuse a command read by [`Connection::next_command`] (the node has
    /// no room for it): `why` goes to the client in-band.
    pub fn refuse(&mut self, why: &str, stats: &mut UploadStats) {
        Session::new(&mut *self.out, stats).report_error(why);
    }

    /// Answer a command read by [`Connection::next_command`].
    pub fn answer(&mut self, command: Command, stats: &mut UploadStats) -> Result<()> {
        let request = command.0;
        match self.resume.take() {
            Some(point) if request.command == "fetch" => {
                let mut skip = SkipPrefix::new(&mut *self.out, point);
                let mut session = Session::new(&mut skip, stats);
                let result = v2::run(self.repo, &request, &mut session);
                if let Err(e) = &result {
                    session.report_error(&e.to_string());
                }
                result
            }
            Some(_) => Err(self.report(
                Error::Protocol("a resumed connection must start with the fetch it resumes".into()),
                stats,
            )),
            None => {
                let mut session = Session::new(&mut *self.out, stats);
                let result = v2::run(self.repo, &request, &mut session);
                if let Err(e) = &result {
                    session.report_error(&e.to_string());
                }
                result
            }
        }
    }

    fn report(&mut self, e: Error, stats: &mut UploadStats) -> Error {
        Session::new(&mut *self.out, stats).report_error(&e.to_string());
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pktline::write_pkt;

    fn pkt(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        write_pkt(&mut out, s.as_bytes()).expect("write");
        out
    }

    fn ls_refs() -> Vec<u8> {
        let mut r = pkt("command=ls-refs\n");
        r.extend(pkt("agent=test\n"));
        r.extend(b"0001");
        r.extend(pkt("symrefs\n"));
        r.extend(b"0000");
        r
    }

    fn empty_repo(dir: &std::path::Path) -> Repo {
        let storage = crate::storage::Storage::open(dir).expect("storage");
        let name = crate::names::RepoName::new("alice", "demo").expect("name");
        storage.create(&name).expect("create")
    }

    /// Packets of `out` as text (flush `0000`, delim `0001`).
    fn packets(mut out: &[u8]) -> Vec<String> {
        let mut list = Vec::new();
        while out.len() >= 4 {
            let len = usize::from_str_radix(std::str::from_utf8(&out[..4]).expect("hex"), 16)
                .expect("len");
            if len < 4 {
                list.push(format!("{len:04}"));
                out = &out[4..];
            } else {
                list.push(String::from_utf8_lossy(&out[4..len]).into_owned());
                out = &out[len..];
            }
        }
        list
    }

    #[test]
    fn answers_each_command_in_turn_until_the_client_flushes() {
        let dir = tempfile::tempdir().expect("tmp");
        let repo = empty_repo(dir.path());
        // Two requests and the closing flush in one buffer: reading the
        // first must not consume the second.
        let mut input_bytes = ls_refs();
        input_bytes.extend(ls_refs());
        input_bytes.extend(b"0000");
        input_bytes.extend(ls_refs());
        let mut input = &input_bytes[..];
        let mut out = Vec::new();
        let mut conn = Connection::start(&repo, &mut input, &mut out, 10, None).expect("start");
        let mut stats = UploadStats::default();
        assert!(conn.serve_next(&mut stats).expect("first"));
        assert!(conn.serve_next(&mut stats).expect("second"));
        assert!(!conn.serve_next(&mut stats).expect("end"));
        assert_eq!(conn.served(), 2);
        let list = packets(&out);
        assert_eq!(list[0], "version 2\n");
        // The advertisement's flush, then one (empty) ls-refs answer each.
        assert_eq!(list.iter().filter(|p| *p == "0000").count(), 3);
    }

    #[test]
    fn the_command_cap_and_bad_input_end_the_connection_with_err() {
        let dir = tempfile::tempdir().expect("tmp");
        let repo = empty_repo(dir.path());
        let mut input_bytes = ls_refs();
        input_bytes.extend(ls_refs());
        let mut input = &input_bytes[..];
        let mut out = Vec::new();
        let mut conn = Connection::start(&repo, &mut input, &mut out, 1, None).expect("start");
        let mut stats = UploadStats::default();
        assert!(conn.serve_next(&mut stats).expect("first"));
        assert!(conn.serve_next(&mut stats).is_err());
        let text = String::from_utf8_lossy(&out).into_owned();
        assert!(
            text.contains("more than 1 commands on one connection"),
            "{text}"
        );

        for bad in [&b"zzzz"[..], b"0010command=ls-re", b"000ahello\n0000"] {
            let mut input = bad;
            let mut out = Vec::new();
            let mut conn = Connection::start(&repo, &mut input, &mut out, 5, None).expect("start");
            assert!(conn.serve_next(&mut stats).is_err());
            assert!(String::from_utf8_lossy(&out).contains("ERR upload-pack"));
        }
    }

    #[test]
    fn a_resumed_connection_must_start_with_a_fetch() {
        let dir = tempfile::tempdir().expect("tmp");
        let repo = empty_repo(dir.path());
        let input_bytes = ls_refs();
        let mut input = &input_bytes[..];
        let mut out = Vec::new();
        let point = ResumePoint {
            offset: 10,
            sha1: [0; 20],
        };
        let mut conn =
            Connection::start(&repo, &mut input, &mut out, 5, Some(point)).expect("start");
        let err = conn
            .serve_next(&mut UploadStats::default())
            .expect_err("refused");
        assert!(
            err.to_string().contains("must start with the fetch"),
            "{err}"
        );
    }
}

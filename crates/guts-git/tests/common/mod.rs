//! What the git layer's integration tests share.

#![allow(dead_code)] // each test crate uses a different part

use std::io::Write;
use std::path::Path;
use std::process::{Command as Process, Stdio};

use guts_git::names::RepoName;
use guts_git::pktline::{Packet, PktReader};
use guts_git::protocol::Version;
use guts_git::receive_pack::{receive_pack, Command, PushPolicy, ReceiveOptions};
use guts_git::storage::{RefRejection, RefUpdate, Repo, Storage};
use guts_git::upload_pack::upload_pack;
use guts_git::upload_pack::Serving;

/// Push `pack` to `repo` with `commands` (`"<old> <new> <ref>"`, the first
/// one carrying `report-status`) under [`Open`], with a 1 GiB pack limit;
/// the report must say `unpack ok`. Returns the report.
pub fn push_pack(repo: &Repo, commands: &[String], pack: &[u8]) -> String {
    let mut body = Vec::new();
    for (i, c) in commands.iter().enumerate() {
        let caps = if i == 0 { "\0report-status" } else { "" };
        body.extend(pkt(&format!("{c}{caps}\n")));
    }
    body.extend(b"0000");
    body.extend_from_slice(pack);
    let opts = ReceiveOptions {
        max_pack_bytes: 1 << 30,
        ..ReceiveOptions::DEFAULT
    };
    let mut out = Vec::new();
    receive_pack(repo, &mut &body[..], &mut out, opts, &Open).expect("push");
    let report = String::from_utf8_lossy(&out).into_owned();
    assert!(report.contains("unpack ok"), "{report}");
    report
}

/// Accepts every push and applies it with no journal: the git layer's own
/// tests are not about authorization.
pub struct Open;

impl PushPolicy for Open {
    type Authorized = ();
    fn cert_nonce(&self) -> Option<String> {
        None
    }
    fn authorize(&self, _: Option<&str>, _: &[Command]) -> Result<(), String> {
        Ok(())
    }
    fn commit(
        &self,
        repo: &Repo,
        _: (),
        updates: &[RefUpdate],
        atomic: bool,
    ) -> guts_git::Result<Vec<Result<(), RefRejection>>> {
        repo.update_refs(updates, atomic)
    }
}

pub fn git(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    git_env(dir, args, stdin, &[])
}

/// [`git`] with more environment variables.
pub fn git_env(dir: &Path, args: &[&str], stdin: Option<&[u8]>, envs: &[(&str, &str)]) -> Vec<u8> {
    let mut child = Process::new("git")
        .args(args)
        .current_dir(dir)
        .envs(envs.iter().copied())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn git");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("git output");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn text(dir: &Path, args: &[&str]) -> String {
    String::from_utf8(git(dir, args, None))
        .expect("utf-8")
        .trim()
        .to_owned()
}

pub fn pkt(s: &str) -> Vec<u8> {
    let mut v = format!("{:04x}", s.len() + 4).into_bytes();
    v.extend_from_slice(s.as_bytes());
    v
}

/// Send a v2 command with `args`; return the response's packets as text
/// (band-1 prefix stripped) up to `packfile`, and the pack bytes after it.
pub fn v2(repo: &Repo, command: &str, args: &[String]) -> (Vec<String>, Vec<u8>) {
    let mut req = pkt(&format!("command={command}\n"));
    req.extend(pkt("object-format=sha1\n"));
    req.extend(b"0001");
    for a in args {
        req.extend(pkt(&format!("{a}\n")));
    }
    req.extend(b"0000");
    let mut out = Vec::new();
    upload_pack(repo, Version::V2, &mut &req[..], &mut out).expect("v2 request");
    let mut reader = PktReader::new(&out[..]);
    let mut lines = Vec::new();
    let mut pack = Vec::new();
    let mut in_pack = false;
    while let Some(p) = reader.read().expect("valid response") {
        match p {
            Packet::Data(d) if in_pack && d[0] == 1 => pack.extend_from_slice(&d[1..]),
            Packet::Data(d) if in_pack => assert_ne!(d[0], 3, "{:?}", String::from_utf8_lossy(d)),
            Packet::Data(d) => {
                let line = String::from_utf8_lossy(d).trim_end().to_owned();
                in_pack = line == "packfile";
                lines.push(line);
            }
            Packet::Delim => lines.push("<delim>".into()),
            Packet::Flush | Packet::ResponseEnd => break,
        }
    }
    (lines, pack)
}

/// A storage in `tmp/data` serving with `serving`, holding an empty
/// `alice/demo`, and an initialized work tree `tmp/work` on `main`.
pub fn empty_repo(tmp: &Path, serving: Serving) -> (Repo, std::path::PathBuf) {
    let storage = Storage::open_with(&tmp.join("data"), serving).expect("storage");
    let repo = storage
        .create(&RepoName::new("alice", "demo").expect("name"))
        .expect("create");
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    git(&work, &["init", "-q", "-b", "main"], None);
    (repo, work)
}

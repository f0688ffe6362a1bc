//! Differential test of the wire format: the same request bodies go to
//! this node's upload-pack and to `git upload-pack --stateless-rpc` on an
//! identical bare repository, and every pkt-line that is not pack data must
//! be the same bytes (newline or its absence included): strict clients
//! (libgit2) refuse what git does not write.

mod common;
use common::{empty_repo, git, git_env, pkt, push_pack, text};

use std::path::{Path, PathBuf};

use guts_git::pktline::{Packet, PktReader};
use guts_git::protocol::Version;
use guts_git::storage::Repo;
use guts_git::upload_pack::{upload_pack, Serving};

const ZERO: &str = "0000000000000000000000000000000000000000";
/// An id no repository here holds.
const UNKNOWN: &str = "1234567890123456789012345678901234567890";
/// What git's fetch-pack sends in v0 (without `agent=`).
const V0_CAPS: &str = "multi_ack_detailed no-done side-band-64k thin-pack no-progress ofs-delta";

/// This node's repository and a bare git copy of it, with `commits` on main
/// (oldest first) and an annotated tag.
struct Twins {
    _tmp: tempfile::TempDir,
    repo: Repo,
    bare: PathBuf,
    commits: Vec<String>,
}

fn twins() -> Twins {
    let tmp = tempfile::TempDir::new().expect("tmp");
    let (repo, work) = empty_repo(tmp.path(), Serving::default());
    let mut commits = Vec::new();
    for i in 0..6 {
        std::fs::write(work.join("f.txt"), format!("version {i}\n")).expect("write");
        git(&work, &["add", "f.txt"], None);
        git(&work, &["commit", "-q", "-m", &format!("c{i}")], None);
        commits.push(text(&work, &["rev-parse", "HEAD"]));
    }
    git(&work, &["tag", "-a", "-m", "v1", "v1", &commits[2]], None);
    let tag = text(&work, &["rev-parse", "v1"]);
    let main = commits[5].clone();
    let pack = git(
        &work,
        &["pack-objects", "--stdout", "--revs", "-q"],
        Some(format!("{main}\n{tag}\n").as_bytes()),
    );
    let commands = [
        format!("{ZERO} {main} refs/heads/main"),
        format!("{ZERO} {tag} refs/tags/v1"),
    ];
    push_pack(&repo, &commands, &pack);
    git(tmp.path(), &["init", "-q", "--bare", "twin.git"], None);
    let bare = tmp.path().join("twin.git");
    git(&bare, &["symbolic-ref", "HEAD", "refs/heads/main"], None);
    git(&bare, &["index-pack", "--stdin"], Some(&pack));
    git(&bare, &["update-ref", "refs/heads/main", &main], None);
    git(&bare, &["update-ref", "refs/tags/v1", &tag], None);
    Twins {
        _tmp: tmp,
        repo,
        bare,
        commits,
    }
}

/// The packets of a response up to the pack data: a data packet as its
/// bytes (escaped), flush and delim by name. Pack data starts at the first
/// side-band packet (v0) or after the `packfile` line (v2).
fn framing(response: &[u8]) -> Vec<String> {
    let mut reader = PktReader::new(response);
    let mut out = Vec::new();
    while let Some(p) = reader.read().expect("a valid response") {
        match p {
            Packet::Data(d) if matches!(d.first(), Some(1..=3)) => break,
            Packet::Data(d) => {
                out.push(format!("{:?}", String::from_utf8_lossy(d)));
                if d == b"packfile\n" {
                    break;
                }
            }
            Packet::Flush => out.push("flush".into()),
            Packet::Delim => out.push("delim".into()),
            Packet::ResponseEnd => out.push("response-end".into()),
        }
    }
    out
}

fn ours(t: &Twins, version: Version, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    // An error is reported in-band, and compared like any other packet.
    let _ = upload_pack(&t.repo, version, &mut &body[..], &mut out);
    out
}

fn theirs(t: &Twins, version: Version, body: &[u8]) -> Vec<u8> {
    let protocol = if version == Version::V2 {
        "version=2"
    } else {
        "version=0"
    };
    let bare = t.bare.to_str().expect("utf-8 path");
    git_env(
        Path::new(bare),
        &["upload-pack", "--stateless-rpc", bare],
        Some(body),
        &[("GIT_PROTOCOL", protocol)],
    )
}

/// Both servers answer `body` with the same packets before the pack.
fn same_framing(t: &Twins, version: Version, what: &str, body: &[u8]) {
    let git = framing(&theirs(t, version, body));
    let guts = framing(&ours(t, version, body));
    assert_eq!(guts, git, "{what}: this node (left) and git (right) differ");
}

/// A v0 request: `want` (with `caps`), the `extra` lines, a flush, then
/// the `haves` section lines as they are (`0000` for a flush).
fn v0_body(want: &str, caps: &str, extra: &[String], haves: &[&str]) -> Vec<u8> {
    let mut body = pkt(&format!("want {want} {caps}\n"));
    for l in extra {
        body.extend(pkt(&format!("{l}\n")));
    }
    body.extend(b"0000");
    for l in haves {
        if *l == "0000" {
            body.extend(b"0000");
        } else {
            body.extend(pkt(&format!("{l}\n")));
        }
    }
    body
}

fn v2_body(command: &str, args: &[String]) -> Vec<u8> {
    let mut body = pkt(&format!("command={command}\n"));
    body.extend(pkt("object-format=sha1\n"));
    body.extend(b"0001");
    for a in args {
        body.extend(pkt(&format!("{a}\n")));
    }
    body.extend(b"0000");
    body
}

#[test]
fn v0_shallow_lists_match_git() {
    let t = twins();
    let (main, c3) = (&t.commits[5], &t.commits[3]);
    let cases: Vec<(&str, Vec<String>, Vec<&str>)> = vec![
        ("depth 1, first request", vec!["deepen 1".into()], vec![]),
        ("depth 1, done", vec!["deepen 1".into()], vec!["done"]),
        (
            "deepen from a shallow client",
            vec![format!("shallow {c3}"), "deepen 4".into()],
            vec![],
        ),
        (
            "unshallow",
            vec![format!("shallow {c3}"), "deepen 2147483647".into()],
            vec![],
        ),
    ];
    for (what, extra, haves) in cases {
        let body = v0_body(main, V0_CAPS, &extra, &haves);
        same_framing(&t, Version::V0, what, &body);
    }
}

#[test]
fn v0_acknowledgments_match_git() {
    let t = twins();
    let (main, c1, c2) = (&t.commits[5], &t.commits[1], &t.commits[2]);
    let (have1, have2) = (format!("have {c2}"), format!("have {c1}"));
    let unknown = format!("have {UNKNOWN}");
    let rounds: Vec<(&str, Vec<&str>)> = vec![
        ("no haves, done", vec!["done"]),
        ("unknown have, flush", vec![&unknown, "0000"]),
        ("common haves, flush", vec![&have1, &have2, "0000"]),
        ("common then unknown, flush", vec![&have1, &unknown, "0000"]),
        ("common haves, done", vec![&have1, &unknown, "done"]),
        ("unknown have, done", vec![&unknown, "done"]),
    ];
    let styles = [
        V0_CAPS,
        "multi_ack_detailed side-band-64k no-progress ofs-delta",
        "multi_ack side-band-64k no-progress ofs-delta",
        "side-band-64k no-progress ofs-delta",
    ];
    for caps in styles {
        for (what, haves) in &rounds {
            let body = v0_body(main, caps, &[], haves);
            same_framing(&t, Version::V0, &format!("{what} [{caps}]"), &body);
        }
    }
}

#[test]
fn v2_fetch_sections_match_git() {
    let t = twins();
    let (main, c1, c2, c3) = (&t.commits[5], &t.commits[1], &t.commits[2], &t.commits[3]);
    let want = format!("want {main}");
    let base = |more: &[String]| {
        let mut v = vec![want.clone(), "ofs-delta".into(), "no-progress".into()];
        v.extend_from_slice(more);
        v
    };
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("deepen 1", base(&["deepen 1".into(), "done".into()])),
        (
            "deepen from a shallow client",
            base(&[format!("shallow {c3}"), "deepen 4".into(), "done".into()]),
        ),
        (
            "unshallow",
            base(&[
                format!("shallow {c3}"),
                "deepen 2147483647".into(),
                "done".into(),
            ]),
        ),
        ("common haves, ready", base(&[format!("have {c1}")])),
        ("unknown have", base(&[format!("have {UNKNOWN}")])),
        (
            "a child then its parent, and again",
            base(&[
                format!("have {c3}"),
                format!("have {c2}"),
                format!("have {c3}"),
            ]),
        ),
        (
            "haves and done",
            base(&[format!("have {c1}"), "done".into()]),
        ),
        (
            "wait-for-done",
            base(&[format!("have {c1}"), "wait-for-done".into()]),
        ),
    ];
    for (what, args) in cases {
        same_framing(&t, Version::V2, what, &v2_body("fetch", &args));
    }
}

#[test]
fn v2_ls_refs_matches_git() {
    let t = twins();
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("plain", vec![]),
        ("symrefs and peel", vec!["symrefs".into(), "peel".into()]),
        (
            "prefix",
            vec!["peel".into(), "ref-prefix refs/tags/".into()],
        ),
        (
            "unborn",
            vec!["symrefs".into(), "unborn".into(), "ref-prefix HEAD".into()],
        ),
    ];
    for (what, args) in cases {
        same_framing(&t, Version::V2, what, &v2_body("ls-refs", &args));
    }
}

/// A packet as [`framing`] shows it, with the capability list after a NUL
/// (which differs by design: agent, session id, extra capabilities) cut
/// down to whether it ends in a newline.
fn without_caps(line: &str) -> String {
    match line.split_once("\\0") {
        Some((refs, caps)) => format!("{refs}\\0<caps ending {}>", caps.ends_with("\\n\"")),
        None => line.to_owned(),
    }
}

#[test]
fn the_v0_advertisement_matches_git_but_for_capabilities() {
    let t = twins();
    let mut out = Vec::new();
    guts_git::protocol::advertise(
        &t.repo,
        guts_git::protocol::Service::UploadPack,
        Version::V0,
        None,
        &mut out,
    )
    .expect("advertise");
    // The `# service=` preamble is added by git http-backend, not upload-pack.
    let preamble = b"001e# service=git-upload-pack\n0000";
    let ours = out.strip_prefix(&preamble[..]).expect("the preamble");
    let bare = t.bare.to_str().expect("utf-8 path");
    let theirs = git(
        &t.bare,
        &["upload-pack", "--stateless-rpc", "--advertise-refs", bare],
        None,
    );
    let guts: Vec<String> = all_packets(ours).iter().map(|l| without_caps(l)).collect();
    let git: Vec<String> = all_packets(&theirs)
        .iter()
        .map(|l| without_caps(l))
        .collect();
    assert_eq!(guts, git);
}

/// Every packet of `response`, shown as [`framing`] does.
fn all_packets(response: &[u8]) -> Vec<String> {
    let mut reader = PktReader::new(response);
    let mut out = Vec::new();
    while let Some(p) = reader.read().expect("a valid response") {
        out.push(match p {
            Packet::Data(d) => format!("{:?}", String::from_utf8_lossy(d)),
            Packet::Flush => "flush".into(),
            Packet::Delim => "delim".into(),
            Packet::ResponseEnd => "response-end".into(),
        });
    }
    out
}

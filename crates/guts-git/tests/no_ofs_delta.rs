//! Fetches from clients that did not ask for `ofs-delta` (dulwich, some
//! libgit2 paths): every pack-producing path must send deltas as
//! `REF_DELTA` entries (or whole objects), never `OFS_DELTA`; stock git
//! checks the packs.

mod common;
use common::{empty_repo, git, pkt, push_pack, text, v2};

use std::path::Path;

use guts_git::pack_cache::{CacheConfig, PackCache};
use guts_git::pktline::{Packet, PktReader};
use guts_git::protocol::Version;
use guts_git::storage::{MaintainOptions, Repo};
use guts_git::upload_pack::{upload_pack, PackSlots, Serving};

const ZERO: &str = "0000000000000000000000000000000000000000";

struct Setup {
    tmp: tempfile::TempDir,
    work: std::path::PathBuf,
    repo: Repo,
    main: String,
}

/// Push `revs`' objects (a `pack-objects --revs` input) with one command.
fn push(repo: &Repo, work: &Path, command: &str, revs: &str) {
    let pack = git(
        work,
        &[
            "pack-objects",
            "--stdout",
            "--revs",
            "--delta-base-offset",
            "-q",
        ],
        Some(revs.as_bytes()),
    );
    push_pack(repo, &[command.to_owned()], &pack);
}

/// Commit `n` versions of a growing file (deltas of each other).
fn commits(work: &Path, from: usize, n: usize) -> String {
    for i in from..from + n {
        let body: String = (0..200 + i * 7).map(|l| format!("line {l}\n")).collect();
        std::fs::write(work.join("a.txt"), body).expect("write");
        git(work, &["add", "a.txt"], None);
        git(work, &["commit", "-q", "-m", &format!("c{i}")], None);
    }
    text(work, &["rev-parse", "HEAD"])
}

/// Five commits pushed in one pack (its blobs are deltas of each other).
fn setup(serving: Serving) -> Setup {
    let tmp = tempfile::TempDir::new().expect("tmp");
    let (repo, work) = empty_repo(tmp.path(), serving);
    let main = commits(&work, 0, 5);
    push(
        &repo,
        &work,
        &format!("{ZERO} {main} refs/heads/main"),
        &format!("{main}\n"),
    );
    Setup {
        tmp,
        work,
        repo,
        main,
    }
}

/// Two more commits on main, pushed.
fn push_more(s: &mut Setup) {
    let next = commits(&s.work, 5, 2);
    push(
        &s.repo,
        &s.work,
        &format!("{} {next} refs/heads/main", s.main),
        &format!("{next}\n^{}\n", s.main),
    );
    s.main = next;
}

fn no_cache() -> Serving {
    Serving {
        slots: PackSlots::new(2),
        cache: None,
    }
}

fn with_cache(dir: &Path) -> Serving {
    Serving {
        slots: PackSlots::new(2),
        cache: Some(
            PackCache::new(CacheConfig {
                dir: dir.to_owned(),
                max_bytes: 1 << 30,
                min_free_bytes: 0,
                min_entry_bytes: 0,
            })
            .expect("cache"),
        ),
    }
}

/// A v0 clone of `want`: the pack, and the band-2 messages.
fn v0_fetch(repo: &Repo, want: &str, ofs: bool) -> (Vec<u8>, String) {
    v0_fetch_as(repo, Version::V0, want, ofs)
}

/// [`v0_fetch`] in `version` (v0 or v1: the same request body).
fn v0_fetch_as(repo: &Repo, version: Version, want: &str, ofs: bool) -> (Vec<u8>, String) {
    let caps = if ofs {
        "side-band-64k ofs-delta"
    } else {
        "side-band-64k"
    };
    let mut req = pkt(&format!("want {want} {caps}\n"));
    req.extend(b"0000");
    req.extend(pkt("done\n"));
    let mut out = Vec::new();
    upload_pack(repo, version, &mut &req[..], &mut out).expect("v0 fetch");
    let mut reader = PktReader::new(&out[..]);
    let first = reader.read().expect("valid").expect("a packet");
    assert_eq!(first, Packet::Data(b"NAK\n"));
    let (mut pack, mut msgs) = (Vec::new(), String::new());
    while let Some(Packet::Data(d)) = reader.read().expect("valid response") {
        match d.first() {
            Some(1) => pack.extend_from_slice(&d[1..]),
            Some(2) => msgs.push_str(&String::from_utf8_lossy(&d[1..])),
            _ => panic!("band 3 or bad packet: {:?}", String::from_utf8_lossy(d)),
        }
    }
    (pack, msgs)
}

/// A v2 clone of `want` (with or without `ofs-delta`), progress included.
fn v2_fetch(repo: &Repo, want: &str, ofs: bool) -> Vec<u8> {
    let mut args = vec![format!("want {want}"), "done".to_owned()];
    if ofs {
        args.push("ofs-delta".into());
    }
    let (lines, pack) = v2(repo, "fetch", &args);
    assert_eq!(lines.last().map(String::as_str), Some("packfile"));
    pack
}

/// Index `pack` with `git index-pack --strict` into a new bare repository
/// `name`; returns it and how many entries are `OFS_DELTA`s and `REF_DELTA`s.
fn index_pack(tmp: &Path, name: &str, pack: &[u8]) -> (std::path::PathBuf, usize, usize) {
    git(tmp, &["init", "-q", "--bare", name], None);
    let bare = tmp.join(name);
    git(&bare, &["index-pack", "--strict", "--stdin"], Some(pack));
    let idx = std::fs::read_dir(bare.join("objects/pack"))
        .expect("pack dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|x| x == "idx"))
        .expect("an index");
    let listing = git(
        &bare,
        &["show-index"],
        Some(&std::fs::read(idx).expect("idx")),
    );
    let (mut ofs, mut refs) = (0, 0);
    for line in String::from_utf8_lossy(&listing).lines() {
        let offset: usize = line
            .split(' ')
            .next()
            .and_then(|o| o.parse().ok())
            .expect("offset");
        match (pack[offset] >> 4) & 7 {
            6 => ofs += 1,
            7 => refs += 1,
            _ => {}
        }
    }
    (bare, ofs, refs)
}

/// `pack` is valid for git, has no `OFS_DELTA` but some `REF_DELTA`
/// entries, and `want` is complete with it (`git fsck --full`).
fn check_pack(tmp: &Path, name: &str, pack: &[u8], want: &str) {
    let (bare, ofs, refs) = index_pack(tmp, name, pack);
    assert_eq!(
        ofs, 0,
        "OFS_DELTA entries sent to a client without ofs-delta"
    );
    assert!(
        refs > 0,
        "no REF_DELTA entry: the test has no deltas to check"
    );
    git(&bare, &["update-ref", "refs/heads/main", want], None);
    git(&bare, &["fsck", "--full", "--strict"], None);
}

#[test]
fn an_unmaintained_repository_sends_ref_deltas() {
    let s = setup(no_cache());
    let (pack, _) = v0_fetch(&s.repo, &s.main, false);
    check_pack(s.tmp.path(), "v0.git", &pack, &s.main);
    let (pack, _) = v0_fetch_as(&s.repo, Version::V1, &s.main, false);
    check_pack(s.tmp.path(), "v1.git", &pack, &s.main);
    let pack = v2_fetch(&s.repo, &s.main, false);
    check_pack(s.tmp.path(), "v2.git", &pack, &s.main);
    // With the capability, the same fetch keeps its OFS_DELTAs.
    let (pack, _) = v0_fetch(&s.repo, &s.main, true);
    let (_, ofs, refs) = index_pack(s.tmp.path(), "ofs.git", &pack);
    assert!(ofs > 0 && refs == 0, "{ofs} OFS_DELTAs, {refs} REF_DELTAs");
}

#[test]
fn the_maintained_pack_is_rewritten_not_sent_verbatim() {
    let s = setup(no_cache());
    s.repo
        .maintain(MaintainOptions::default())
        .expect("maintain");
    let (_, msgs) = v0_fetch(&s.repo, &s.main, true);
    assert!(msgs.contains("reused the maintained pack"), "{msgs}");
    let (pack, msgs) = v0_fetch(&s.repo, &s.main, false);
    assert!(!msgs.contains("reused the maintained pack"), "{msgs}");
    check_pack(s.tmp.path(), "v0.git", &pack, &s.main);
    let pack = v2_fetch(&s.repo, &s.main, false);
    check_pack(s.tmp.path(), "v2.git", &pack, &s.main);
}

#[test]
fn the_maintained_pack_as_a_prefix_is_rewritten() {
    let mut s = setup(no_cache());
    s.repo
        .maintain(MaintainOptions::default())
        .expect("maintain");
    push_more(&mut s);
    let (pack, _) = v0_fetch(&s.repo, &s.main, false);
    check_pack(s.tmp.path(), "v0.git", &pack, &s.main);
    let pack = v2_fetch(&s.repo, &s.main, false);
    check_pack(s.tmp.path(), "v2.git", &pack, &s.main);
}

#[test]
fn a_cached_ofs_pack_is_not_served_to_a_client_without_ofs_delta() {
    let tmp = tempfile::TempDir::new().expect("tmp");
    let s = setup(with_cache(&tmp.path().join("cache")));
    let (ofs, _) = v0_fetch(&s.repo, &s.main, true);
    let (again, msgs) = v0_fetch(&s.repo, &s.main, true);
    assert!(msgs.contains("reused a cached pack"), "{msgs}");
    assert_eq!(ofs, again);
    let (pack, msgs) = v0_fetch(&s.repo, &s.main, false);
    assert!(!msgs.contains("reused a cached pack"), "{msgs}");
    check_pack(s.tmp.path(), "v0.git", &pack, &s.main);
    // The ref-delta pack is cached in turn, under its own key.
    let (_, msgs) = v0_fetch(&s.repo, &s.main, false);
    assert!(msgs.contains("reused a cached pack"), "{msgs}");
    let pack = v2_fetch(&s.repo, &s.main, false);
    check_pack(s.tmp.path(), "v2.git", &pack, &s.main);
}

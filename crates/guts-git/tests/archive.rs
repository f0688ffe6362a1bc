//! `git archive` from the node's storage, byte for byte against stock
//! `git archive` run on the same history (tar, tgz, zip at several levels,
//! prefixes, pathspecs, tags, trees, symlinks, executables, gitlinks,
//! non-ASCII and long paths), and the upload-archive exchange against
//! `git upload-archive`.

mod common;
use common::{empty_repo, git, pkt, push_pack, text};

use std::path::{Path, PathBuf};

use guts_git::archive::{upload_archive, write_archive};
use guts_git::pktline::{Packet, PktReader};
use guts_git::storage::Repo;
use guts_git::upload_pack::Serving;

const ZERO: &str = "0000000000000000000000000000000000000000";

struct Fixture {
    _tmp: tempfile::TempDir,
    repo: Repo,
    work: PathBuf,
}

fn write(work: &Path, path: &str, content: &[u8]) {
    let full = work.join(path);
    std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
    std::fs::write(full, content).expect("write");
}

/// A history with every kind of entry, pushed whole (branch and tag).
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tmp");
    let (repo, work) = empty_repo(tmp.path(), Serving::default());
    write(&work, "README.md", b"# demo\n");
    write(&work, "empty", b"");
    let words: String = (0..4000)
        .map(|i| format!("line {} of text\n", i % 97))
        .collect();
    write(&work, "src/lib.rs", words.as_bytes());
    write(&work, "src/deep/er/mod.rs", b"pub fn f() {}\n");
    write(
        &work,
        "bin/blob.bin",
        &[0u8, 1, 2, 3, 0, 255, 7].repeat(300),
    );
    write(&work, "bin/run.sh", b"#!/bin/sh\necho run\n");
    write(
        &work,
        "docs/caf\u{e9} \u{65e5}\u{672c}.txt",
        "non-ASCII\n".as_bytes(),
    );
    let long = format!("{}/{}/file.txt", "d".repeat(60), "e".repeat(70));
    write(&work, &long, b"long path\n");
    let longer = format!("{}/f.txt", "x".repeat(170));
    write(&work, &longer, b"no slash to split at\n");
    std::os::unix::fs::symlink("src/lib.rs", work.join("link")).expect("symlink");
    std::os::unix::fs::symlink("y".repeat(120), work.join("long-link")).expect("symlink");
    git(&work, &["add", "-A"], None);
    git(&work, &["update-index", "--chmod=+x", "bin/run.sh"], None);
    let sub = "1111111111111111111111111111111111111111";
    git(
        &work,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{sub},vendor/sub"),
        ],
        None,
    );
    git(&work, &["commit", "-qm", "everything"], None);
    git(&work, &["tag", "-a", "-m", "release", "v1"], None);
    let pack = git(
        &work,
        &["pack-objects", "--stdout", "--all", "-q"],
        Some(b""),
    );
    let main = text(&work, &["rev-parse", "main"]);
    let tag = text(&work, &["rev-parse", "v1"]);
    let commands = [
        format!("{ZERO} {main} refs/heads/main"),
        format!("{ZERO} {tag} refs/tags/v1"),
    ];
    push_pack(&repo, &commands, &pack);
    Fixture {
        _tmp: tmp,
        repo,
        work,
    }
}

fn ours(f: &Fixture, args: &[&str], remote: bool) -> Vec<u8> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut out = Vec::new();
    write_archive(&f.repo, &args, remote, &mut out).expect("archive");
    out
}

fn same(f: &Fixture, args: &[&str]) {
    let mut full = vec!["archive"];
    full.extend_from_slice(args);
    let theirs = git(&f.work, &full, None);
    let ours = ours(f, args, true);
    assert!(
        theirs.len() > 100,
        "{args:?}: git wrote {} bytes",
        theirs.len()
    );
    assert!(
        ours == theirs,
        "{args:?}: {} bytes from git, {} from us",
        theirs.len(),
        ours.len()
    );
}

#[test]
fn tar_is_byte_identical() {
    let f = fixture();
    same(&f, &["main"]);
    same(&f, &["--format=tar", "--prefix=proj-1.0/", "v1"]);
    same(&f, &["--prefix=p//", "refs/heads/main", "src", "docs/"]);
    same(&f, &["HEAD", "src/deep/er/mod.rs", "link"]);
    same(&f, &["--mtime=@1700000000", "main:src"]);
    same(&f, &["-v", "--prefix=x", "main", "vendor"]);
}

#[test]
fn zip_is_byte_identical_at_every_level_asked() {
    let f = fixture();
    same(&f, &["--format=zip", "main"]);
    same(&f, &["--format=zip", "-0", "main"]);
    same(&f, &["--format=zip", "-6", "--prefix=proj/", "v1"]);
    same(&f, &["--format=zip", "-9", "main", "--", "src", "bin"]);
    same(&f, &["--format=zip", "--mtime=@1700000000", "main:docs"]);
}

#[test]
fn tgz_is_byte_identical() {
    let f = fixture();
    same(&f, &["--format=tgz", "main"]);
    same(&f, &["--format=tar.gz", "-9", "--prefix=a/", "v1"]);
    same(&f, &["--format=tgz", "-0", "main", "src"]);
    same(&f, &["--format=tgz", "-1", "main", "src"]);
}

#[test]
fn trees_and_commits_by_id_only_locally() {
    let f = fixture();
    let commit = text(&f.work, &["rev-parse", "main"]);
    let tree = text(&f.work, &["rev-parse", "main^{tree}"]);
    for id in [&commit, &tree] {
        let args = ["--mtime=@1600000000", id.as_str()];
        let theirs = git(&f.work, &["archive", args[0], args[1]], None);
        assert!(ours(&f, &args, false) == theirs, "{id}");
        let theirs = git(
            &f.work,
            &["archive", "--format=zip", args[0], args[1]],
            None,
        );
        assert!(
            ours(&f, &["--format=zip", args[0], args[1]], false) == theirs,
            "{id}"
        );
    }
    let args = vec![commit.clone()];
    let err = write_archive(&f.repo, &args, true, &mut Vec::new()).expect_err("remote id");
    assert_eq!(err.to_string(), format!("fatal: no such ref: {commit}"));
}

/// Run git, which must fail; its stderr.
fn git_fails(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .env("LC_ALL", "C")
        .output()
        .expect("spawn git");
    assert!(!out.status.success(), "git {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Our upload-archive answer, split into (ACK line, band 1, band 2, band 3, ended by flush).
fn exchange(repo: &Repo, args: &[&str]) -> (String, Vec<u8>, String, String, bool) {
    let mut req = Vec::new();
    for a in args {
        req.extend(pkt(&format!("argument {a}\n")));
    }
    req.extend(b"0000");
    let mut out = Vec::new();
    let _ = upload_archive(repo, &req[..], &mut out);
    let mut r = PktReader::new(&out[..]);
    let ack = match r.read().expect("pkt") {
        Some(Packet::Data(d)) => String::from_utf8_lossy(d).into_owned(),
        other => panic!("{other:?}"),
    };
    assert_eq!(r.read().expect("pkt"), Some(Packet::Flush));
    let (mut data, mut progress, mut error, mut flushed) =
        (Vec::new(), Vec::new(), Vec::new(), false);
    while let Some(p) = r.read().expect("pkt") {
        match p {
            Packet::Data(d) if d[0] == 1 => data.extend_from_slice(&d[1..]),
            Packet::Data(d) if d[0] == 2 => progress.extend_from_slice(&d[1..]),
            Packet::Data(d) => error.extend_from_slice(&d[1..]),
            _ => flushed = true,
        }
    }
    let s = |v: Vec<u8>| String::from_utf8_lossy(&v).into_owned();
    (ack, data, s(progress), s(error), flushed)
}

#[test]
fn upload_archive_speaks_gits_exchange() {
    let f = fixture();
    let bare = f.work.parent().expect("parent").join("bare.git");
    git(
        &f.work,
        &["clone", "-q", "--bare", ".", bare.to_str().expect("utf-8")],
        None,
    );
    let remote = format!("--remote={}", bare.display());
    let args = ["--format=zip", "-9", "--prefix=r/", "main", "--", "src"];
    let theirs = git(
        &f.work,
        &[&["archive", remote.as_str()][..], &args[..]].concat(),
        None,
    );
    let (ack, data, progress, error, flushed) = exchange(&f.repo, &args);
    assert_eq!(ack, "ACK\n");
    assert!(data == theirs && flushed, "{progress} {error}");
    let (_, list, _, _, _) = exchange(&f.repo, &["--list"]);
    assert_eq!(list, b"tar\ntgz\ntar.gz\nzip\n");
    let (_, _, progress, _, _) = exchange(&f.repo, &["-v", "main", "src/deep"]);
    assert_eq!(
        progress,
        "src/\nsrc/deep/\nsrc/deep/er/\nsrc/deep/er/mod.rs\n"
    );
    // (`--output` and `--remote` never reach a server: the client takes them.)
    let refusals: [&[&str]; 8] = [
        &["-9", "main"],
        &["--format=tgz", "-12", "main"],
        &["--format=rar", "main"],
        &["main", "nope"],
        &["--add-file=README.md", "main"],
        &["--add-virtual-file=a:b", "main"],
        &["main:README.md"],
        &["main~1"],
    ];
    for args in refusals {
        let (ack, data, progress, error, flushed) = exchange(&f.repo, args);
        assert_eq!(ack, "ACK\n");
        assert!(data.is_empty() && !flushed, "{args:?}");
        assert_eq!(error, "git upload-archive: archiver died with error");
        let theirs = git_fails(&f.work, &[&["archive", remote.as_str()][..], args].concat());
        let line = format!("remote: {}", progress.trim_end());
        assert!(
            theirs.lines().any(|l| l.trim_end() == line),
            "{line:?} not in {theirs}"
        );
    }
    let many: Vec<String> = (0..65).map(|i| format!("--prefix={i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(
        exchange(&f.repo, &many).2,
        "fatal: Too many options (>63)\n"
    );
}

#[test]
fn an_empty_repository_has_no_head_to_archive() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (repo, _) = empty_repo(tmp.path(), Serving::default());
    let (_, data, progress, _, _) = exchange(&repo, &["HEAD"]);
    assert!(data.is_empty());
    assert_eq!(progress, "fatal: no such ref: HEAD\n");
    let (_, _, progress, _, _) = exchange(&repo, &["--format=zip", "main"]);
    assert_eq!(progress, "fatal: no such ref: main\n");
}

/// Commit `.gitattributes` with `attributes` in the work tree (plus
/// `extra` files) and push that commit into the node's repository.
fn commit_attributes(f: &Fixture, attributes: &[u8], extra: &[(&str, &[u8])]) {
    write(&f.work, ".gitattributes", attributes);
    for (path, content) in extra {
        write(&f.work, path, content);
    }
    git(&f.work, &["add", "-A"], None);
    git(&f.work, &["commit", "-qm", "attributes"], None);
    let pack = git(
        &f.work,
        &["pack-objects", "--stdout", "--revs", "-q"],
        Some(b"main\n^v1\n"),
    );
    let (old, new) = (
        text(&f.work, &["rev-parse", "main~1"]),
        text(&f.work, &["rev-parse", "main"]),
    );
    push_pack(&f.repo, &[format!("{old} {new} refs/heads/main")], &pack);
}

/// Attributes that leave the bytes alone (no CRLF output on this server:
/// `text`, `text=auto`, `eol=lf`, a filter with no driver, a diff driver)
/// are archived byte-identically in tar and tgz; a zip, where `diff` and
/// `binary` decide git's text flag, is refused.
#[test]
fn attributes_that_change_nothing_are_archived() {
    let f = fixture();
    commit_attributes(
        &f,
        b"* text=auto\n*.png binary\n*.rs diff=rust\n*.bin filter=lfs -text\n*.sh eol=lf\n",
        &[
            ("crlf.txt", b"dos\r\nlines\r\n"),
            ("pic.png", b"\x89PNG\r\n\x1a\n\0"),
        ],
    );
    same(&f, &["--format=tar", "main"]);
    same(&f, &["--format=tgz", "--prefix=p/", "main"]);
    let (_, data, progress, _, _) = exchange(&f.repo, &["--format=zip", "main"]);
    assert!(data.is_empty());
    assert!(progress.contains("\"diff\""), "{progress}");
}

#[test]
fn archive_attributes_are_refused_not_ignored() {
    let f = fixture();
    commit_attributes(&f, b"*.md export-ignore\n", &[]);
    let (_, data, progress, _, _) = exchange(&f.repo, &["main"]);
    assert!(data.is_empty());
    assert!(progress.contains(".gitattributes"), "{progress}");
    // With --worktree-attributes a bare repository has none: git ignores them.
    let bare = f.work.parent().expect("parent").join("bare.git");
    git(
        &f.work,
        &["clone", "-q", "--bare", ".", bare.to_str().expect("utf-8")],
        None,
    );
    let theirs = git(&bare, &["archive", "--worktree-attributes", "main"], None);
    assert!(ours(&f, &["--worktree-attributes", "main"], true) == theirs);
}

//! The web view's read helpers (`guts_git::browse`) on a history made by
//! stock git and pushed into storage: tree listings and lookups, blobs with
//! caps, commit walks, and tree diffs checked against `git diff --numstat`.

mod common;
use common::{empty_repo, git, push_pack, text};

use std::path::Path;
use std::time::Duration;

use guts_git::browse::diff::{self, Body, Limits, Status};
use guts_git::browse::{log, tree};
use guts_git::odb::ObjectStore;
use guts_git::upload_pack::Serving;
use guts_git::ObjectId;

const ZERO: &str = "0000000000000000000000000000000000000000";

fn write(work: &Path, path: &str, content: &[u8]) {
    let full = work.join(path);
    std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
    std::fs::write(full, content).expect("write");
}

fn commit(work: &Path, msg: &str) -> String {
    git(work, &["add", "-A"], None);
    git(work, &["commit", "-qm", msg], None);
    text(work, &["rev-parse", "HEAD"])
}

fn id(hex: &str) -> ObjectId {
    ObjectId::from_hex(hex.as_bytes()).expect("hex id")
}

fn limits() -> Limits {
    Limits {
        max_files: 100,
        max_lines: 10_000,
        max_bytes: 1 << 20,
        max_file_bytes: 1 << 20,
        max_trees: 1000,
        file_timeout: Duration::from_secs(1),
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    store: ObjectStore,
    work: std::path::PathBuf,
    commits: Vec<String>,
}

/// Three commits: files and a directory; an edit, a binary and a removal;
/// a new nested file.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tmp");
    let (repo, work) = empty_repo(tmp.path(), Serving::default());
    let lines: String = (1..=40).map(|i| format!("line {i}\n")).collect();
    write(&work, "README.md", b"# demo\n");
    write(&work, "src/lib.rs", lines.as_bytes());
    write(&work, "gone.txt", b"bye\n");
    let c1 = commit(&work, "first");
    write(
        &work,
        "src/lib.rs",
        lines.replace("line 20\n", "line twenty\n").as_bytes(),
    );
    write(&work, "data.bin", &[0u8, 1, 2, 0, 3]);
    std::fs::remove_file(work.join("gone.txt")).expect("rm");
    let c2 = commit(&work, "second\n\nwith a body");
    write(&work, "src/a/b/c.rs", b"fn c() {}\n");
    let c3 = commit(&work, "third");
    let pack = git(
        &work,
        &["pack-objects", "--stdout", "--all", "-q"],
        Some(b""),
    );
    push_pack(&repo, &[format!("{ZERO} {c3} refs/heads/main")], &pack);
    Fixture {
        store: repo.objects().expect("objects"),
        _tmp: tmp,
        work,
        commits: vec![c1, c2, c3],
    }
}

#[test]
fn trees_and_blobs_at_paths() {
    let f = fixture();
    let c3 = log::read_commit(&f.store, &id(&f.commits[2])).expect("commit");
    let listing = tree::list(&f.store, &c3.tree, 100).expect("list");
    let names: Vec<String> = listing
        .entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect();
    assert_eq!(names, ["src", "README.md", "data.bin"], "directories first");
    assert_eq!(listing.total, 3);
    let cut = tree::list(&f.store, &c3.tree, 1).expect("list");
    assert_eq!((cut.entries.len(), cut.total), (1, 3));

    let deep = tree::lookup(&f.store, &c3.tree, "src/a/b/c.rs")
        .expect("lookup")
        .expect("found");
    assert_eq!(deep.kind, tree::EntryKind::Blob);
    let dir = tree::lookup(&f.store, &c3.tree, "src/a")
        .expect("lookup")
        .expect("found");
    assert_eq!(dir.kind, tree::EntryKind::Tree);
    assert!(tree::lookup(&f.store, &c3.tree, "src/nope")
        .expect("lookup")
        .is_none());
    assert!(tree::lookup(&f.store, &c3.tree, "README.md/x")
        .expect("lookup")
        .is_none());

    let readme = tree::lookup(&f.store, &c3.tree, "README.md")
        .expect("lookup")
        .expect("found");
    let blob = tree::read_blob(&f.store, &readme.id, 3, 1 << 20).expect("blob");
    assert_eq!(
        (blob.data.as_slice(), blob.size, blob.truncated()),
        (&b"# d"[..], 7, true)
    );
    let whole = tree::read_blob(&f.store, &readme.id, 100, 1 << 20).expect("blob");
    assert_eq!(
        (whole.data.as_slice(), whole.truncated()),
        (&b"# demo\n"[..], false)
    );
    let unread = tree::read_blob(&f.store, &readme.id, 100, 3).expect("blob");
    assert!(
        unread.data.is_empty() && unread.size == 7,
        "over max_read: not read"
    );
}

#[test]
fn commits_walk_newest_first_with_caps() {
    let f = fixture();
    let tip = id(&f.commits[2]);
    let all = log::walk(&f.store, &tip, 0, 10).expect("walk");
    let ids: Vec<String> = all.iter().map(|c| c.id.to_string()).collect();
    let mut expected = f.commits.clone();
    expected.reverse();
    assert_eq!(ids, expected);
    assert_eq!(all[1].summary(), "second");
    assert_eq!(all[1].message.trim_end(), "second\n\nwith a body");
    assert_eq!(all[1].parents, [id(&f.commits[0])]);
    assert_eq!(
        all[1].author.email,
        text(&f.work, &["log", "-1", "--format=%ae", "HEAD~1"])
    );
    assert_eq!(
        all[1].committer.time.to_string(),
        text(&f.work, &["log", "-1", "--format=%ct", "HEAD~1"])
    );
    let page = log::walk(&f.store, &tip, 1, 1).expect("walk");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].id, id(&f.commits[1]));
    assert!(log::walk(&f.store, &tip, 3, 5).expect("walk").is_empty());
}

/// `(added, removed, path)` of `git diff --numstat A B` (`-` for binaries).
fn numstat(work: &Path, a: &str, b: &str) -> Vec<(String, String, String)> {
    text(work, &["diff", "--numstat", "--no-renames", a, b])
        .lines()
        .map(|l| {
            let mut parts = l.split('\t');
            let mut next = || parts.next().expect("numstat field").to_owned();
            (next(), next(), next())
        })
        .collect()
}

#[test]
fn tree_diffs_match_git() {
    let f = fixture();
    let c1 = log::read_commit(&f.store, &id(&f.commits[0])).expect("commit");
    let c2 = log::read_commit(&f.store, &id(&f.commits[1])).expect("commit");
    let d = diff::diff_trees(&f.store, Some(&c1.tree), &c2.tree, &limits()).expect("diff");
    assert!(!d.truncated);
    let ours: Vec<(String, String, String)> = d
        .files
        .iter()
        .map(|file| {
            let count = |kind| match &file.body {
                Body::Text(h) => h
                    .iter()
                    .flat_map(|h| &h.lines)
                    .filter(|l| l.kind == kind)
                    .count()
                    .to_string(),
                _ => "-".to_owned(),
            };
            (
                count(diff::LineKind::Added),
                count(diff::LineKind::Removed),
                file.path.clone(),
            )
        })
        .collect();
    assert_eq!(ours, numstat(&f.work, &f.commits[0], &f.commits[1]));
    let status: Vec<Status> = d.files.iter().map(|f| f.status).collect();
    assert_eq!(status, [Status::Added, Status::Deleted, Status::Modified]);
    assert_eq!(d.files[0].body, Body::Binary);
    let Body::Text(hunks) = &d.files[2].body else {
        panic!("text diff expected")
    };
    assert_eq!(hunks.len(), 1);
    assert_eq!(hunks[0].header, "@@ -17,7 +17,7 @@");

    // A root commit: everything added; a nested new file found through its directories.
    let root = diff::diff_trees(&f.store, None, &c1.tree, &limits()).expect("diff");
    assert!(root.files.iter().all(|f| f.status == Status::Added));
    assert_eq!(root.files.len(), 3);
    let c3 = log::read_commit(&f.store, &id(&f.commits[2])).expect("commit");
    let nested = diff::diff_trees(&f.store, Some(&c2.tree), &c3.tree, &limits()).expect("diff");
    assert_eq!(nested.files.len(), 1);
    assert_eq!(nested.files[0].path, "src/a/b/c.rs");

    // Caps: files, then lines.
    let few = Limits {
        max_files: 1,
        ..limits()
    };
    let cut = diff::diff_trees(&f.store, Some(&c1.tree), &c2.tree, &few).expect("diff");
    assert!(cut.truncated && cut.files.len() == 1);
    let short = Limits {
        max_lines: 1,
        ..limits()
    };
    let cut = diff::diff_trees(&f.store, None, &c1.tree, &short).expect("diff");
    assert!(cut.truncated);
    assert_eq!(cut.files.last().map(|f| &f.body), Some(&Body::Skipped));
    let trees = Limits {
        max_trees: 2,
        ..limits()
    };
    let cut = diff::diff_trees(&f.store, Some(&c2.tree), &c3.tree, &trees).expect("diff");
    assert!(cut.truncated && cut.files.is_empty(), "{cut:?}");
    let small = Limits {
        max_file_bytes: 10,
        ..limits()
    };
    let cut = diff::diff_trees(&f.store, Some(&c1.tree), &c2.tree, &small).expect("diff");
    assert_eq!(cut.files[2].body, Body::TooLarge);
}

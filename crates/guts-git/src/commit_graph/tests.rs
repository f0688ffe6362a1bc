//! Tests: interoperability with stock git, round trips, damaged files.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use gix_hash::ObjectId;
use tempfile::TempDir;

use super::{graph_path, write, CommitGraph, GraphCommit, GraphEntry, HASH_LEN, TIME_MAX};
use crate::error::Error;

/// `git` in `dir` with a clean, deterministic environment; its stdout.
fn git(dir: &Path, home: &Path, args: &[&str], date: Option<i64>) -> String {
    let out = git_command(dir, home, args, date)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8 git output")
        .trim()
        .to_string()
}

/// The command [`git`] runs.
fn git_command(dir: &Path, home: &Path, args: &[&str], date: Option<i64>) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    for (k, v) in [
        ("HOME", home.to_str().expect("utf-8 home")),
        ("GIT_CONFIG_NOSYSTEM", "1"),
        ("LC_ALL", "C"),
        ("GIT_AUTHOR_NAME", "Guts Tester"),
        ("GIT_AUTHOR_EMAIL", "tester@example.com"),
        ("GIT_COMMITTER_NAME", "Guts Tester"),
        ("GIT_COMMITTER_EMAIL", "tester@example.com"),
    ] {
        cmd.env(k, v);
    }
    if let Some(date) = date {
        let date = format!("@{date} +0000");
        cmd.env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date);
    }
    cmd.args(["-c", "init.defaultBranch=main", "-c", "gc.auto=0"])
        .args(args);
    cmd
}

/// A repository built with stock git, commit by commit.
struct Repo {
    tmp: TempDir,
}

impl Repo {
    fn new() -> Repo {
        let tmp = TempDir::new().expect("tempdir");
        fs::create_dir(tmp.path().join("home")).expect("home");
        fs::create_dir(tmp.path().join("repo")).expect("repo");
        let repo = Repo { tmp };
        repo.git(&["init", "-q", "."]);
        repo
    }

    fn dir(&self) -> std::path::PathBuf {
        self.tmp.path().join("repo")
    }

    fn objects(&self) -> std::path::PathBuf {
        self.dir().join(".git/objects")
    }

    fn git(&self, args: &[&str]) -> String {
        git(&self.dir(), &self.tmp.path().join("home"), args, None)
    }

    /// A commit adding `name.txt`, with these parents, at this time.
    fn commit(&self, name: &str, parents: &[&str], time: i64) -> String {
        fs::write(self.dir().join(format!("{name}.txt")), name).expect("write file");
        self.git(&["add", &format!("{name}.txt")]);
        let tree = self.git(&["write-tree"]);
        let mut args = vec!["commit-tree", tree.as_str(), "-m", name];
        for p in parents {
            args.extend(["-p", p]);
        }
        git(
            &self.dir(),
            &self.tmp.path().join("home"),
            &args,
            Some(time),
        )
    }

    /// Every commit reachable from a ref, as `git log` reports it.
    fn commits(&self) -> Vec<GraphCommit> {
        let log = self.git(&["log", "--all", "--format=%H %T %ct %P"]);
        log.lines()
            .map(|line| {
                let mut words = line.split_whitespace();
                let mut next_id = || oid(words.next().expect("an id"));
                let (id, tree) = (next_id(), next_id());
                let time = words.next().expect("a time").parse().expect("a number");
                let parents = words.map(oid).collect();
                GraphCommit {
                    id,
                    tree,
                    parents,
                    time,
                }
            })
            .collect()
    }
}

fn oid(hex: &str) -> ObjectId {
    ObjectId::from_hex(hex.as_bytes()).expect("hex id")
}

/// A history with two roots, a merge, two octopus merges (3 and 4
/// parents), a commit older than its parent and one whose corrected date
/// offset needs GDO2. Returns the repository and its named commits.
fn sample_repo() -> (Repo, HashMap<&'static str, String>) {
    let repo = Repo::new();
    let t = 1_700_000_000;
    let mut c = HashMap::new();
    c.insert("a", repo.commit("a", &[], t));
    c.insert("b", repo.commit("b", &[&c["a"]], t + 100));
    c.insert("c", repo.commit("c", &[&c["b"]], t + 200));
    c.insert("d", repo.commit("d", &[&c["a"]], t + 150));
    c.insert("m", repo.commit("m", &[&c["c"], &c["d"]], t + 300));
    c.insert("e", repo.commit("e", &[&c["b"]], t - 50_000_000));
    c.insert("r", repo.commit("r", &[], t + 50));
    c.insert("o", repo.commit("o", &[&c["m"], &c["e"], &c["r"]], t + 400));
    c.insert("f", repo.commit("f", &[&c["d"]], t + 500));
    c.insert(
        "o4",
        repo.commit("o4", &[&c["o"], &c["f"], &c["c"], &c["r"]], t + 600),
    );
    // An offset past 31 bits (GDO2), then a time past 32 bits (34-bit CDAT).
    // Git before its fix of `max_gen` (a uint32_t) truncates the corrected
    // date of a commit whose parent's is past 2^32, and its own verify then
    // rejects its file; so no commit here has such a parent.
    c.insert("fut", repo.commit("fut", &[&c["o4"]], 4_000_000_000));
    c.insert("back", repo.commit("back", &[&c["fut"]], 1_000_000_000));
    c.insert("far", repo.commit("far", &[&c["back"]], 10_000_000_000));
    repo.git(&["update-ref", "refs/heads/main", &c["far"]]);
    (repo, c)
}

/// Chunk ids in a commit-graph file's table.
fn chunk_ids(bytes: &[u8]) -> Vec<[u8; 4]> {
    (0..usize::from(bytes[6]))
        .map(|i| {
            let at = 8 + 12 * i;
            [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]
        })
        .collect()
}

#[test]
fn git_verifies_our_graph() {
    let (repo, named) = sample_repo();
    let commits = repo.commits();
    assert_eq!(commits.len(), named.len());
    let stats = write(&repo.objects(), commits.clone()).expect("write");
    assert_eq!(stats.commits, commits.len());
    let ours_bytes = fs::read(graph_path(&repo.objects())).expect("our file");
    assert_eq!(stats.bytes, ours_bytes.len() as u64);
    let chunks = chunk_ids(&ours_bytes);
    assert!(
        chunks.contains(b"EDGE") && chunks.contains(b"GDO2"),
        "{chunks:?}"
    );

    let objects = repo.objects();
    let objects = objects.to_str().expect("utf-8 path");
    let verify = [
        "-c",
        "core.commitGraph=true",
        "commit-graph",
        "verify",
        "--object-dir",
        objects,
    ];
    repo.git(&verify);
    // Control: git does check this file (verify passes when there is none):
    // a wrong tree id behind a valid checksum fails it.
    let mut wrong_tree = ours_bytes.clone();
    wrong_tree[chunk_offset(&ours_bytes, b"CDAT")] ^= 1;
    reseal(&mut wrong_tree);
    fs::write(graph_path(&repo.objects()), &wrong_tree).expect("write");
    let home = repo.tmp.path().join("home");
    let out = git_command(&repo.dir(), &home, &verify, None)
        .output()
        .expect("run git");
    assert!(!out.status.success(), "git verify passed a wrong tree id");
    fs::write(graph_path(&repo.objects()), &ours_bytes).expect("write");
    repo.git(&verify);
    let with = repo.git(&[
        "-c",
        "core.commitGraph=true",
        "log",
        "--all",
        "--format=%H %P",
    ]);
    let without = repo.git(&[
        "-c",
        "core.commitGraph=false",
        "log",
        "--all",
        "--format=%H %P",
    ]);
    assert_eq!(with, without);
}

#[test]
fn our_graph_reads_the_same_as_gits_own() {
    let (repo, named) = sample_repo();
    let commits = repo.commits();
    write(&repo.objects(), commits.clone()).expect("write");
    let ours_bytes = fs::read(graph_path(&repo.objects())).expect("our file");
    let chunks = chunk_ids(&ours_bytes);
    let home = repo.tmp.path().join("home");
    // Git's own file, in a clone.
    let clone = repo.tmp.path().join("clone.git");
    let clone_str = clone.to_str().expect("utf-8 path");
    repo.git(&["clone", "-q", "--mirror", "--no-local", ".", clone_str]);
    let write_args = [
        "-c",
        "commitGraph.generationVersion=2",
        "commit-graph",
        "write",
        "--reachable",
    ];
    git(&clone, &home, &write_args, None);
    let theirs_bytes = fs::read(graph_path(&clone.join("objects"))).expect("git's file");

    let ours = CommitGraph::open(&repo.objects())
        .expect("open ours")
        .expect("ours exists");
    let theirs = CommitGraph::open(&clone.join("objects"))
        .expect("open git's")
        .expect("exists");
    assert_eq!((ours.len(), theirs.len()), (commits.len(), commits.len()));
    for c in &commits {
        let mine = ours.get(&c.id).expect("read ours").expect("in ours");
        let git_s = theirs.get(&c.id).expect("read git's").expect("in git's");
        assert_eq!(mine, git_s, "commit {}", c.id);
        assert_eq!(
            (&mine.tree, &mine.parents, mine.time),
            (&c.tree, &c.parents, c.time)
        );
        let (p, q) = (
            ours.lookup(&c.id).expect("pos"),
            theirs.lookup(&c.id).expect("pos"),
        );
        let git_date = theirs.corrected_date(q).expect("git's GDA2");
        assert!(git_date.is_some(), "git wrote no GDA2");
        assert_eq!(
            ours.corrected_date(p).expect("our GDA2"),
            git_date,
            "commit {}",
            c.id
        );
    }
    let generation = |name: &str| {
        ours.get(&oid(&named[name]))
            .expect("read")
            .expect("in")
            .generation
    };
    let expected = [
        ("a", 1),
        ("r", 1),
        ("b", 2),
        ("d", 2),
        ("m", 4),
        ("o", 5),
        ("o4", 6),
    ];
    for (name, level) in expected {
        assert_eq!(generation(name), level, "level of {name}");
    }
    assert_eq!((generation("back"), generation("far")), (8, 9));

    // Same chunks in the same order: the files are the same bytes.
    if chunk_ids(&theirs_bytes) == chunks {
        assert!(
            ours_bytes == theirs_bytes,
            "same chunks but different bytes"
        );
    }
}

/// A deterministic SHA-1-sized id for `n` (spread over all first bytes).
fn synthetic_id(n: u32) -> ObjectId {
    let mut h = gix_hash::hasher(gix_hash::Kind::Sha1);
    h.update(&n.to_be_bytes());
    h.try_finalize().expect("sha1")
}

/// 300 commits: roots, chains, merges, octopus merges, odd times.
fn synthetic_history() -> Vec<GraphCommit> {
    (0..300u32)
        .map(|i| {
            let back = |k: u32| synthetic_id(i - k);
            let parents = match i {
                _ if i % 50 == 0 => vec![],
                _ if i % 23 == 0 && i % 50 > 9 => vec![back(1), back(2), back(5), back(9)],
                _ if i % 7 == 0 && i % 50 > 3 => vec![back(1), back(3)],
                _ => vec![back(1)],
            };
            let time = match i {
                17 => -5,
                18 => 1 << 40,
                _ if i % 11 == 0 => 1_000_000 - i64::from(i),
                _ => 1_600_000_000 + i64::from(i) * 60,
            };
            GraphCommit {
                id: synthetic_id(i),
                tree: synthetic_id(100_000 + i),
                parents,
                time,
            }
        })
        .collect()
}

/// What the reader must return: levels and corrected dates computed parents
/// first (parents have smaller indexes in [`synthetic_history`]).
fn expected(commits: &[GraphCommit]) -> HashMap<ObjectId, (GraphEntry, i64)> {
    let mut out: HashMap<ObjectId, (GraphEntry, i64)> = HashMap::new();
    for c in commits {
        let time = c.time.clamp(0, TIME_MAX as i64);
        let parents: Vec<_> = c.parents.iter().map(|p| &out[p]).collect();
        let generation = parents.iter().map(|p| p.0.generation).max().unwrap_or(0) + 1;
        let corrected = parents.iter().map(|p| p.1 + 1).max().unwrap_or(0).max(time);
        let entry = GraphEntry {
            id: c.id,
            tree: c.tree,
            parents: c.parents.clone(),
            time,
            generation,
        };
        out.insert(c.id, (entry, corrected));
    }
    out
}

#[test]
fn reader_returns_what_the_writer_wrote() {
    let dir = TempDir::new().expect("tempdir");
    assert!(CommitGraph::open(dir.path())
        .expect("no file is fine")
        .is_none());
    let commits = synthetic_history();
    let want = expected(&commits);
    let mut shuffled: Vec<_> = commits.iter().rev().cloned().collect();
    shuffled.rotate_left(123);
    shuffled.push(commits[42].clone());
    let stats = write(dir.path(), shuffled).expect("write");
    assert_eq!(stats.commits, commits.len());

    let graph = CommitGraph::open(dir.path())
        .expect("open")
        .expect("exists");
    assert_eq!(graph.len(), commits.len());
    for (id, (entry, corrected)) in &want {
        let pos = graph.lookup(id).expect("found");
        assert_eq!(&graph.commit(pos).expect("read"), entry);
        assert_eq!(graph.get(id).expect("read").as_ref(), Some(entry));
        assert_eq!(graph.corrected_date(pos).expect("GDA2"), Some(*corrected));
    }
    assert_eq!(want[&synthetic_id(18)].0.time, TIME_MAX as i64);
    assert_eq!(graph.lookup(&synthetic_id(5_000)), None);
    assert!(graph
        .get(&synthetic_id(5_000))
        .expect("absent is fine")
        .is_none());
    assert!(graph.commit(commits.len() as u32).is_err());

    // A second write replaces the file and leaves no temporary behind.
    write(dir.path(), commits[..50].to_vec()).expect("rewrite");
    let graph = CommitGraph::open(dir.path())
        .expect("open")
        .expect("exists");
    assert_eq!(graph.len(), 50);
    let names: Vec<_> = fs::read_dir(dir.path().join("info"))
        .expect("info")
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");

    // No commits at all is a valid, empty file.
    let empty = TempDir::new().expect("tempdir");
    write(empty.path(), Vec::new()).expect("write empty");
    let graph = CommitGraph::open(empty.path())
        .expect("open")
        .expect("exists");
    assert!(graph.is_empty());
    assert_eq!(graph.lookup(&synthetic_id(0)), None);
}

#[test]
fn writer_refuses_a_missing_parent_and_keeps_the_old_file() {
    let dir = TempDir::new().expect("tempdir");
    let commits = synthetic_history();
    write(dir.path(), commits[..10].to_vec()).expect("write");
    let before = fs::read(graph_path(dir.path())).expect("file");
    let err = write(dir.path(), commits[5..20].to_vec()).expect_err("parent 4 is missing");
    assert!(
        matches!(&err, Error::CommitGraph { reason, .. } if reason.contains("parent")),
        "{err}"
    );
    assert_eq!(fs::read(graph_path(dir.path())).expect("file"), before);
    let mut cycle = commits[..2].to_vec();
    cycle[0].parents = vec![commits[1].id];
    assert!(matches!(
        write(dir.path(), cycle),
        Err(Error::CommitGraph { .. })
    ));
}

/// A small graph file with an octopus merge, and its commits.
fn small_graph() -> (TempDir, Vec<u8>, Vec<GraphCommit>) {
    let dir = TempDir::new().expect("tempdir");
    let commits: Vec<_> = synthetic_history().into_iter().take(24).collect();
    write(dir.path(), commits.clone()).expect("write");
    let bytes = fs::read(graph_path(dir.path())).expect("file");
    assert!(chunk_ids(&bytes).contains(b"EDGE"));
    (dir, bytes, commits)
}

/// Recompute the trailer, so that damage reaches the structural checks.
fn reseal(bytes: &mut [u8]) {
    let body = bytes.len() - HASH_LEN;
    let mut h = gix_hash::hasher(gix_hash::Kind::Sha1);
    h.update(&bytes[..body]);
    let sum = h.try_finalize().expect("sha1");
    bytes[body..].copy_from_slice(sum.as_slice());
}

/// Put `bytes` in `dir` as its graph, open it and read it all.
fn open_and_read_all(dir: &Path, bytes: &[u8], commits: &[GraphCommit]) -> Result<(), Error> {
    fs::write(graph_path(dir), bytes).expect("write file");
    let graph = CommitGraph::open(dir)?.expect("exists");
    read_all(&graph, commits)
}

/// Read every commit, by position and by id: the first error, if any,
/// other than the one for reading past the end.
fn read_all(graph: &CommitGraph, commits: &[GraphCommit]) -> Result<(), Error> {
    let mut first_error = None;
    for pos in 0..graph.len() as u32 + 1 {
        for result in [
            graph.commit(pos).map(drop),
            graph.corrected_date(pos).map(drop),
        ] {
            first_error = first_error.or(result.err());
        }
    }
    for c in commits {
        first_error = first_error.or(graph.get(&c.id).err());
    }
    // Reading past the end is always an error; anything else is damage.
    match first_error {
        Some(Error::CommitGraph { reason, .. }) if reason.starts_with("position") => Ok(()),
        Some(e) => Err(e),
        None => panic!("reading past the end succeeded"),
    }
}

/// The offset of a chunk's data, from the table.
fn chunk_offset(bytes: &[u8], id: &[u8; 4]) -> usize {
    let i = chunk_ids(bytes)
        .iter()
        .position(|c| c == id)
        .expect("chunk");
    let at = 8 + 12 * i + 4;
    u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes")) as usize
}

/// One way to damage a file.
type Damage = Box<dyn Fn(&mut [u8])>;

#[test]
fn flipped_or_truncated_files_are_errors() {
    let (dir, good, commits) = small_graph();
    open_and_read_all(dir.path(), &good, &commits).expect("the good file reads");
    let len = good.len();
    let (oidf, oidl) = (chunk_offset(&good, b"OIDF"), chunk_offset(&good, b"OIDL"));
    let cdat = chunk_offset(&good, b"CDAT");

    // Any flipped byte breaks the checksum; so does truncation.
    for at in [
        0,
        4,
        5,
        6,
        7,
        12,
        oidf + 40,
        oidl + 3,
        cdat + 21,
        len - HASH_LEN,
        len - 1,
    ] {
        let mut bad = good.clone();
        bad[at] ^= 0x40;
        let err = open_and_read_all(dir.path(), &bad, &commits).expect_err("flipped byte");
        assert!(matches!(err, Error::CommitGraph { .. }), "byte {at}: {err}");
    }
    for cut in [0, 1, 7, 8, 27, 40, len / 2, len - HASH_LEN, len - 1] {
        let err = open_and_read_all(dir.path(), &good[..cut], &commits).expect_err("truncated");
        assert!(
            matches!(err, Error::CommitGraph { .. }),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn damage_behind_a_valid_checksum_is_an_error() {
    let (dir, good, commits) = small_graph();
    let (oidf, oidl) = (chunk_offset(&good, b"OIDF"), chunk_offset(&good, b"OIDL"));
    let cdat = chunk_offset(&good, b"CDAT");
    // Each is caught on open or on read.
    let cases: Vec<(&str, Damage)> = vec![
        ("version 2", Box::new(|b| b[4] = 2)),
        ("SHA-256", Box::new(|b| b[5] = 2)),
        ("a base graph", Box::new(|b| b[7] = 1)),
        ("too many chunks", Box::new(|b| b[6] = 200)),
        ("offset past the end", Box::new(|b| b[12] = 0x7f)),
        (
            "fanout decreasing",
            Box::new(move |b| b[oidf + 4 * 200 + 3] = 0),
        ),
        (
            "ids out of order",
            Box::new(move |b| {
                let (first, rest) = b[oidl..].split_at_mut(HASH_LEN);
                first.swap_with_slice(&mut rest[..HASH_LEN]);
            }),
        ),
        (
            "parent out of range",
            Box::new(move |b| b[cdat + 20..cdat + 24].fill(0x0f)),
        ),
        (
            "EDGE unterminated",
            Box::new(|b| {
                let edge = chunk_offset(b, b"EDGE");
                let end = b.len() - HASH_LEN;
                for word in b[edge..end].chunks_exact_mut(4) {
                    word[0] &= 0x7f;
                }
            }),
        ),
        (
            "GDA2 past GDO2",
            Box::new(|b| {
                let gda2 = chunk_offset(b, b"GDA2");
                b[gda2..gda2 + 4].fill(0xff);
            }),
        ),
    ];
    for (what, damage) in cases {
        let mut bad = good.clone();
        damage(&mut bad);
        reseal(&mut bad);
        let err = open_and_read_all(dir.path(), &bad, &commits).expect_err(what);
        assert!(matches!(err, Error::CommitGraph { .. }), "{what}: {err}");
    }
}

#[test]
fn no_byte_flip_panics() {
    let (dir, good, commits) = small_graph();
    // Every byte, three ways, resealed: never a panic.
    for at in 0..good.len() - HASH_LEN {
        for mask in [0x01, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[at] ^= mask;
            reseal(&mut bad);
            if let Ok(graph) = CommitGraph::from_bytes(graph_path(dir.path()), bad) {
                let _ = read_all(&graph, &commits);
            }
        }
    }
}

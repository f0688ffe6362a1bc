//! End-to-end tests: a real `guts-node` process driven by the stock `git`
//! client and by hand-made smart-HTTP requests.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

use common::*;
use serde_json::json;
use tempfile::TempDir;

fn tmpdir() -> TempDir {
    TempDir::new().expect("create temp dir")
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn proto(v: &str) -> String {
    format!("protocol.version={v}")
}

/// Lines of `git verify-pack -v` that report delta chains, over all packs.
fn delta_chain_lines(git_dir: &Path) -> usize {
    let pack_dir = git_dir.join("objects/pack");
    let mut total = 0;
    for entry in fs::read_dir(&pack_dir).expect("read pack dir") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "idx") {
            let out = git_ok(git_dir, &["verify-pack", "-v", &path_str(&path)]);
            total += out.lines().filter(|l| l.contains("chain length")).count();
        }
    }
    total
}

/// `count:` (loose objects) from `git count-objects -v`.
fn loose_object_count(git_dir: &Path) -> u64 {
    let out = git_ok(git_dir, &["count-objects", "-v"]);
    out.lines()
        .find_map(|l| l.strip_prefix("count: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `count:` in {out}"))
}

/// Maps a source repo's `refs/heads/*` to what a non-bare clone has under
/// `refs/remotes/origin/*`, keeping tags as they are.
fn as_remote_tracking(refs: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    refs.iter()
        .map(|(name, id)| match name.strip_prefix("refs/heads/") {
            Some(branch) => (format!("refs/remotes/origin/{branch}"), id.clone()),
            None => (name.clone(), id.clone()),
        })
        .collect()
}

fn assert_rejected_message(stderr: &str) {
    assert!(
        stderr.contains("fetch first") || stderr.contains("stale") || stderr.contains("rejected"),
        "loser's stderr does not explain the rejection:\n{stderr}"
    );
}

/// Creates `owner/name`, a work repo at `dir` with a few commits on `main`
/// (including a nested directory) and pushes it. Returns the tip.
fn seeded_repo(node: &Node, owner: &str, name: &str, dir: &Path) -> String {
    node.create_repo(owner, name);
    init_work_repo(dir);
    commit_file(
        dir,
        "src/lib.rs",
        "pub fn answer() -> u32 { 42 }\n",
        "add lib",
    );
    commit_file(dir, "docs/guide/intro.md", "# Intro\n", "add docs");
    let tip = commit_file(dir, "README.md", "hello again\n", "update readme");
    git_ok(
        dir,
        &["remote", "add", "origin", &node.repo_url(owner, name)],
    );
    git_ok(dir, &["push", "-q", "origin", "main"]);
    assert_eq!(
        node.server_refs(owner, name).get("refs/heads/main"),
        Some(&tip),
        "seed push did not land"
    );
    tip
}

fn big_text(changed_line: usize, marker: &str) -> String {
    (0..400)
        .map(|i| {
            if i == changed_line {
                format!("line {i}: {marker}\n")
            } else {
                format!("line {i}: the quick brown fox jumps over the lazy dog, again and again\n")
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// 1
// ---------------------------------------------------------------------------

#[test]
fn push_ripgrep_and_clone_v0_v1_v2() {
    let tmp = tmpdir();
    let Some(src) = ripgrep_bare(&tmp.path().join("src.git")) else {
        return;
    };
    let source_refs = refs_of(&src);
    assert!(
        source_refs.len() > 100,
        "fixture has too few refs: {}",
        source_refs.len()
    );

    let node = Node::start();
    node.create_repo("burntsushi", "ripgrep");
    let url = node.repo_url("burntsushi", "ripgrep");
    git_ok(
        &src,
        &[
            "push",
            "-q",
            &url,
            "refs/heads/*:refs/heads/*",
            "refs/tags/*:refs/tags/*",
        ],
    );
    assert_eq!(
        node.server_refs("burntsushi", "ripgrep"),
        source_refs,
        "server refs differ from the pushed ones"
    );
    // No `main` in ripgrep: HEAD falls back to `master`.
    assert_eq!(
        node.server_head("burntsushi", "ripgrep"),
        "refs/heads/master"
    );

    for v in ["0", "1", "2"] {
        let dest = tmp.path().join(format!("clone-v{v}.git"));
        git_ok(
            tmp.path(),
            &[
                "-c",
                &proto(v),
                "clone",
                "-q",
                "--bare",
                &url,
                &path_str(&dest),
            ],
        );
        assert_eq!(refs_of(&dest), source_refs, "refs of protocol v{v} clone");
        assert_fsck(&dest);
        assert!(
            delta_chain_lines(&dest) > 0,
            "protocol v{v} clone's pack has no deltas"
        );
        if v == "2" {
            assert_eq!(
                git_ok(&dest, &["symbolic-ref", "HEAD"]),
                "refs/heads/master",
                "v2 clone HEAD"
            );
        }
    }

    // A regular clone with a checkout.
    let work = tmp.path().join("checkout");
    git_ok(
        tmp.path(),
        &["-c", &proto("2"), "clone", "-q", &url, &path_str(&work)],
    );
    assert_eq!(
        git_ok(&work, &["symbolic-ref", "HEAD"]),
        "refs/heads/master"
    );
    assert_eq!(rev_parse(&work, "HEAD"), source_refs["refs/heads/master"]);
    assert!(
        work.join("Cargo.toml").is_file(),
        "checkout lacks Cargo.toml"
    );
    assert_eq!(git_ok(&work, &["status", "--porcelain"]), "");
    let mut clone_refs = refs_of(&work);
    clone_refs.remove("refs/remotes/origin/HEAD");
    clone_refs.remove("refs/heads/master");
    assert_eq!(clone_refs, as_remote_tracking(&source_refs));
    assert_fsck(&work);
}

// ---------------------------------------------------------------------------
// 2
// ---------------------------------------------------------------------------

#[test]
fn incremental_fetch_only_new_objects() {
    let tmp = tmpdir();
    let node = Node::start();
    for v in ["0", "2"] {
        let name = format!("inc-v{v}");
        let src = tmp.path().join(format!("src-v{v}"));
        seeded_repo(&node, "alice", &name, &src);
        let url = node.repo_url("alice", &name);

        let clone = tmp.path().join(format!("clone-v{v}"));
        git_ok(
            tmp.path(),
            &["-c", &proto(v), "clone", "-q", &url, &path_str(&clone)],
        );

        let new = commit_file(&src, "new-file.txt", "brand new content\n", "add one file");
        git_ok(&src, &["-c", &proto(v), "push", "-q", "origin", "main"]);

        let before = loose_object_count(&clone);
        let trace = tmp.path().join(format!("fetch-v{v}.pack"));
        let args = [
            "-c",
            &proto(v),
            "-c",
            "fetch.unpackLimit=100000",
            "-c",
            "transfer.unpackLimit=100000",
            "fetch",
            "-q",
            "origin",
        ];
        let out = git_env(&clone, &args, &[("GIT_TRACE_PACKFILE", &path_str(&trace))]);
        assert_success(&clone, &args, &out);
        assert_eq!(rev_parse(&clone, "refs/remotes/origin/main"), new);

        let pack = fs::read(&trace).expect("GIT_TRACE_PACKFILE output");
        assert_eq!(
            pack_object_count(&pack),
            3,
            "protocol v{v}: fetch of one new commit with one new top-level file \
             should transfer exactly commit + tree + blob"
        );
        let after = loose_object_count(&clone);
        assert_eq!(
            after,
            before + 3,
            "protocol v{v}: loose objects added by fetch"
        );
        assert_fsck(&clone);
    }
}

// ---------------------------------------------------------------------------
// 3
// ---------------------------------------------------------------------------

#[test]
fn force_push_delete_branch_tags() {
    let tmp = tmpdir();
    let node = Node::start();
    let work = tmp.path().join("work");
    let main1 = seeded_repo(&node, "alice", "demo", &work);
    let refs = || node.server_refs("alice", "demo");

    // A feature branch, then rewritten (non-fast-forward).
    git_ok(&work, &["checkout", "-q", "-b", "feature"]);
    let f1 = commit_file(&work, "feature.txt", "one\n", "feature one");
    git_ok(&work, &["push", "-q", "origin", "feature"]);
    assert_eq!(refs().get("refs/heads/feature"), Some(&f1));

    git_ok(&work, &["reset", "-q", "--hard", "main"]);
    let f2 = commit_file(&work, "feature.txt", "two\n", "feature two");
    git_fail(&work, &["push", "-q", "origin", "feature"]);
    assert_eq!(refs().get("refs/heads/feature"), Some(&f1));
    git_ok(&work, &["push", "-q", "--force", "origin", "feature"]);
    assert_eq!(refs().get("refs/heads/feature"), Some(&f2), "force push");

    // Deleting a branch.
    git_ok(&work, &["push", "-q", "origin", "--delete", "feature"]);
    assert!(
        !refs().contains_key("refs/heads/feature"),
        "branch not deleted: {:?}",
        refs()
    );

    // Annotated and lightweight tags.
    git_ok(&work, &["checkout", "-q", "main"]);
    git_ok(&work, &["tag", "-a", "v1.0", "-m", "release 1.0"]);
    git_ok(&work, &["tag", "light", "HEAD~1"]);
    git_ok(&work, &["push", "-q", "--tags", "origin"]);
    let annotated = rev_parse(&work, "refs/tags/v1.0");
    let light = rev_parse(&work, "refs/tags/light");
    assert_ne!(annotated, main1, "annotated tag must be a tag object");
    let server = refs();
    assert_eq!(server.get("refs/tags/v1.0"), Some(&annotated));
    assert_eq!(server.get("refs/tags/light"), Some(&light));
    assert_eq!(server.get("refs/heads/main"), Some(&main1));

    let clone = tmp.path().join("clone.git");
    git_ok(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--bare",
            &node.repo_url("alice", "demo"),
            &path_str(&clone),
        ],
    );
    assert_eq!(refs_of(&clone), server, "clone refs");
    assert_eq!(git_ok(&clone, &["cat-file", "-t", "v1.0"]), "tag");
    assert_eq!(git_ok(&clone, &["cat-file", "-t", "light"]), "commit");
    assert_fsck(&clone);

    // The default branch cannot be deleted.
    assert_eq!(node.server_head("alice", "demo"), "refs/heads/main");
    git_fail(&work, &["push", "-q", "origin", "--delete", "main"]);
    assert_eq!(
        refs().get("refs/heads/main"),
        Some(&main1),
        "default branch deleted"
    );

    // deny_non_fast_forwards refuses force pushes but allows fast-forwards.
    let resp = node.patch_json(
        "/api/v1/repos/alice/demo",
        &json!({ "deny_non_fast_forwards": true }),
    );
    assert_eq!(resp.status, 200, "PATCH: {}", resp.text());
    git_ok(&work, &["reset", "-q", "--hard", "HEAD~1"]);
    commit_file(&work, "rewrite.txt", "history rewrite\n", "rewrite");
    git_fail(&work, &["push", "-q", "--force", "origin", "main"]);
    assert_eq!(
        refs().get("refs/heads/main"),
        Some(&main1),
        "non-ff accepted"
    );

    git_ok(&work, &["reset", "-q", "--hard", &main1]);
    let main2 = commit_file(&work, "ff.txt", "fast forward\n", "fast forward");
    git_ok(&work, &["push", "-q", "origin", "main"]);
    assert_eq!(
        refs().get("refs/heads/main"),
        Some(&main2),
        "ff push refused"
    );
}

// ---------------------------------------------------------------------------
// 4
// ---------------------------------------------------------------------------

#[test]
fn atomic_push_with_stale_ref_changes_nothing() {
    let tmp = tmpdir();
    let node = Node::start();
    let work = tmp.path().join("work");
    let c1 = seeded_repo(&node, "alice", "demo", &work);
    git_ok(&work, &["push", "-q", "origin", "main:refs/heads/x"]);
    let c2 = commit_file(&work, "two.txt", "2\n", "two");
    let c3 = commit_file(&work, "three.txt", "3\n", "three");
    git_ok(&work, &["push", "-q", "origin", "HEAD:refs/heads/other"]);

    let before = node.server_refs("alice", "demo");
    assert_eq!(before.get("refs/heads/main"), Some(&c1));
    assert_eq!(before.get("refs/heads/x"), Some(&c1));
    assert_eq!(before.get("refs/heads/other"), Some(&c3));

    // x really is at c1; claiming it is at c2 is stale.
    let commands = [
        format!("{c1} {c2} refs/heads/main"),
        format!("{c2} {c3} refs/heads/x"),
    ];
    let resp = node.receive_pack(
        "alice",
        "demo",
        &commands,
        "report-status atomic",
        &empty_pack(),
    );
    let text = resp.text();
    assert_eq!(resp.status, 200, "atomic push: {text}");
    assert!(text.contains("ng refs/heads/main"), "atomic push: {text}");
    assert!(text.contains("ng refs/heads/x"), "atomic push: {text}");
    assert!(!text.contains("ok refs/heads/"), "atomic push: {text}");
    assert_eq!(
        node.server_refs("alice", "demo"),
        before,
        "atomic push with a stale ref changed something"
    );

    // Without `atomic` the good update goes through, the stale one does not.
    let resp = node.receive_pack("alice", "demo", &commands, "report-status", &empty_pack());
    let text = resp.text();
    assert_eq!(resp.status, 200, "non-atomic push: {text}");
    assert!(
        text.contains("ok refs/heads/main"),
        "non-atomic push: {text}"
    );
    assert!(text.contains("ng refs/heads/x"), "non-atomic push: {text}");
    let after = node.server_refs("alice", "demo");
    assert_eq!(after.get("refs/heads/main"), Some(&c2));
    assert_eq!(after.get("refs/heads/x"), Some(&c1));

    // An atomic push where every old id is right updates everything.
    let commands = [
        format!("{c2} {c3} refs/heads/main"),
        format!("{c1} {c2} refs/heads/x"),
    ];
    let resp = node.receive_pack(
        "alice",
        "demo",
        &commands,
        "report-status atomic",
        &empty_pack(),
    );
    let text = resp.text();
    assert!(
        text.contains("ok refs/heads/main"),
        "good atomic push: {text}"
    );
    assert!(text.contains("ok refs/heads/x"), "good atomic push: {text}");
    let after = node.server_refs("alice", "demo");
    assert_eq!(after.get("refs/heads/main"), Some(&c3));
    assert_eq!(after.get("refs/heads/x"), Some(&c2));
}

// ---------------------------------------------------------------------------
// 5
// ---------------------------------------------------------------------------

#[test]
fn push_to_missing_repo_is_refused_with_hint() {
    let tmp = tmpdir();
    let node = Node::start();
    let work = tmp.path().join("work");
    init_work_repo(&work);
    let url = node.repo_url("alice", "missing");
    let out = git_fail(&work, &["push", &url, "main"]);
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("guts-node repo create"),
        "no hint in git's stderr:\n{stderr}"
    );
    let resp = node.get("/api/v1/repos/alice/missing");
    assert_eq!(resp.status, 404, "push created the repo: {}", resp.text());
    git_fail(
        tmp.path(),
        &["clone", "-q", &url, &path_str(&tmp.path().join("c"))],
    );
}

// ---------------------------------------------------------------------------
// 6
// ---------------------------------------------------------------------------

fn find_named(dir: &Path, name: &str, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name() == name {
            found.push(path.clone());
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            find_named(&path, name, found);
        }
    }
}

#[test]
fn push_invalid_ref_name() {
    let tmp = tmpdir();
    let node = Node::start();
    let work = tmp.path().join("work");
    let c1 = seeded_repo(&node, "alice", "demo", &work);
    let before = node.server_refs("alice", "demo");

    // The stock client refuses (locally or remotely); nothing may be created.
    git_fail(&work, &["push", "origin", "HEAD:refs/heads/bad..name"]);
    assert_eq!(node.server_refs("alice", "demo"), before);

    let bad = [
        "refs/heads/a..b",
        "refs/heads/x.lock",
        "refs/heads/a~b",
        "refs/heads/a^b",
        "refs/heads/a:b",
        "refs/heads/back\\slash",
        "refs/heads/.hidden",
        "refs/heads/trailing/",
        "refs/heads/../../../escape-guts",
        "not-a-ref/x",
    ];
    let mut commands: Vec<String> = bad.iter().map(|r| format!("{ZERO_ID} {c1} {r}")).collect();
    // A valid ref in the same request shows the request itself is well-formed.
    commands.push(format!("{ZERO_ID} {c1} refs/heads/good"));
    let resp = node.receive_pack("alice", "demo", &commands, "report-status", &empty_pack());
    let text = resp.text();
    assert_eq!(resp.status, 200, "{text}");
    assert!(
        text.contains("ok refs/heads/good"),
        "valid ref refused: {text}"
    );
    for r in bad {
        assert!(text.contains(&format!("ng {r}")), "no `ng {r}` in: {text}");
    }
    let mut expected = before.clone();
    expected.insert("refs/heads/good".to_string(), c1.clone());
    assert_eq!(node.server_refs("alice", "demo"), expected);

    let mut escaped = Vec::new();
    find_named(tmp.path(), "escape-guts", &mut escaped);
    find_named(node.data_dir(), "escape-guts", &mut escaped);
    assert!(escaped.is_empty(), "ref escaped the refs dir: {escaped:?}");

    // Clones still work.
    let clone = tmp.path().join("clone.git");
    git_ok(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--bare",
            &node.repo_url("alice", "demo"),
            &path_str(&clone),
        ],
    );
    assert_eq!(refs_of(&clone), expected);
}

/// Refs git itself refuses to create: one that would be both a file and a
/// directory of refs, and a branch pointing at something else than a
/// commit. Stock git reports them rejected, and a clone still works.
#[test]
fn push_ref_clashes_and_non_commit_branches_are_refused() {
    let tmp = tmpdir();
    let node = Node::start();
    let work = tmp.path().join("work");
    seeded_repo(&node, "alice", "demo", &work);
    git_ok(&work, &["push", "-q", "origin", "HEAD:refs/heads/a/b"]);
    let before = node.server_refs("alice", "demo");

    let out = git_fail(&work, &["push", "origin", "HEAD:refs/heads/a"]);
    let err = stderr_of(&out);
    assert!(err.contains("refs/heads/a/b exists"), "{err}");
    let out = git_fail(&work, &["push", "origin", "HEAD:refs/heads/main/x"]);
    assert!(
        stderr_of(&out).contains("refs/heads/main exists"),
        "{}",
        stderr_of(&out)
    );
    let tree = rev_parse(&work, "HEAD^{tree}");
    let out = git_fail(
        &work,
        &["push", "origin", &format!("{tree}:refs/heads/treebranch")],
    );
    let err = stderr_of(&out);
    assert!(err.contains("must point at a commit, not a tree"), "{err}");
    // A tree may be tagged, as in git.
    git_ok(
        &work,
        &["push", "-q", "origin", &format!("{tree}:refs/tags/a-tree")],
    );
    // Deleting the directory ref and creating the file ref in one push works.
    git_ok(
        &work,
        &[
            "push",
            "-q",
            "origin",
            ":refs/heads/a/b",
            "HEAD:refs/heads/a",
        ],
    );

    let mut expected = before;
    expected.remove("refs/heads/a/b");
    expected.insert("refs/heads/a".into(), rev_parse(&work, "HEAD"));
    expected.insert("refs/tags/a-tree".into(), tree);
    assert_eq!(node.server_refs("alice", "demo"), expected);
    let clone = tmp.path().join("clone.git");
    assert_eq!(clone_refs(&node, "alice", "demo", &clone), expected);
}

// ---------------------------------------------------------------------------
// 7
// ---------------------------------------------------------------------------

#[test]
fn concurrent_pushes_to_one_ref() {
    let tmp = tmpdir();
    let node = Node::start();
    seeded_repo(&node, "alice", "demo", &tmp.path().join("seed"));
    let url = node.repo_url("alice", "demo");
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    git_ok(tmp.path(), &["clone", "-q", &url, &path_str(&a)]);
    git_ok(tmp.path(), &["clone", "-q", &url, &path_str(&b)]);

    let rounds = 4;
    for round in 0..rounds {
        for dir in [&a, &b] {
            git_ok(dir, &["fetch", "-q", "origin"]);
            git_ok(dir, &["reset", "-q", "--hard", "origin/main"]);
        }
        let ca = commit_file(&a, &format!("a-{round}.txt"), "from a\n", "commit from a");
        let cb = commit_file(&b, &format!("b-{round}.txt"), "from b\n", "commit from b");

        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = [a.clone(), b.clone()]
            .into_iter()
            .map(|dir| {
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    git(&dir, &["push", "origin", "main"])
                })
            })
            .collect();
        let outs: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("push thread"))
            .collect();
        let ok: Vec<bool> = outs.iter().map(|o| o.status.success()).collect();
        assert_eq!(
            ok.iter().filter(|s| **s).count(),
            1,
            "round {round}: exactly one push must win; stderr a:\n{}\nstderr b:\n{}",
            stderr_of(&outs[0]),
            stderr_of(&outs[1])
        );
        let (winner, loser_dir, loser_out) = if ok[0] {
            (&ca, &b, &outs[1])
        } else {
            (&cb, &a, &outs[0])
        };
        assert_eq!(
            node.server_refs("alice", "demo").get("refs/heads/main"),
            Some(winner),
            "round {round}: server ref is not the winner's commit"
        );
        assert_rejected_message(&stderr_of(loser_out));

        git_ok(loser_dir, &["pull", "-q", "--rebase", "origin", "main"]);
        git_ok(loser_dir, &["push", "-q", "origin", "main"]);
        let rebased = rev_parse(loser_dir, "HEAD");
        assert_eq!(
            node.server_refs("alice", "demo").get("refs/heads/main"),
            Some(&rebased),
            "round {round}: loser's rebased push"
        );
    }

    let fresh = tmp.path().join("fresh");
    git_ok(tmp.path(), &["clone", "-q", &url, &path_str(&fresh)]);
    assert_fsck(&fresh);
    for round in 0..rounds {
        for who in ["a", "b"] {
            let f = fresh.join(format!("{who}-{round}.txt"));
            assert!(f.is_file(), "{} missing in a fresh clone", f.display());
        }
    }
}

// ---------------------------------------------------------------------------
// 8
// ---------------------------------------------------------------------------

#[test]
fn empty_repo_clone() {
    let tmp = tmpdir();
    let node = Node::start();
    node.create_repo("alice", "empty");
    let url = node.repo_url("alice", "empty");
    assert!(node.server_refs("alice", "empty").is_empty());
    assert_eq!(node.server_head("alice", "empty"), "refs/heads/main");

    let mut clones = Vec::new();
    for v in ["0", "1", "2"] {
        let dest = tmp.path().join(format!("clone-v{v}"));
        // A different local default makes HEAD depend on what the server
        // advertises (v2 `unborn`).
        git_ok(
            tmp.path(),
            &[
                "-c",
                "init.defaultBranch=trunk",
                "-c",
                &proto(v),
                "clone",
                "-q",
                &url,
                &path_str(&dest),
            ],
        );
        assert!(
            refs_of(&dest).is_empty(),
            "v{v} clone of an empty repo has refs"
        );
        clones.push(dest);
    }
    let v2 = &clones[2];
    assert_eq!(git_ok(v2, &["symbolic-ref", "HEAD"]), "refs/heads/main");

    let c = commit_file(v2, "first.txt", "first\n", "first commit");
    git_ok(
        v2,
        &["-c", &proto("2"), "push", "-q", "origin", "HEAD:main"],
    );
    assert_eq!(
        node.server_refs("alice", "empty").get("refs/heads/main"),
        Some(&c)
    );
    assert_eq!(node.server_head("alice", "empty"), "refs/heads/main");

    for (v, dir) in [("0", &clones[0]), ("1", &clones[1])] {
        git_ok(dir, &["-c", &proto(v), "fetch", "-q", "origin"]);
        assert_eq!(rev_parse(dir, "refs/remotes/origin/main"), c, "v{v} fetch");
    }

    // First push without `main`: HEAD goes to the first branch in sorted order.
    node.create_repo("alice", "nomain");
    let url2 = node.repo_url("alice", "nomain");
    git_ok(
        v2,
        &[
            "push",
            "-q",
            &url2,
            "HEAD:refs/heads/zeta",
            "HEAD:refs/heads/beta",
        ],
    );
    assert_eq!(node.server_head("alice", "nomain"), "refs/heads/beta");
    let dest = tmp.path().join("nomain");
    git_ok(tmp.path(), &["clone", "-q", &url2, &path_str(&dest)]);
    assert_eq!(git_ok(&dest, &["symbolic-ref", "HEAD"]), "refs/heads/beta");
    assert_eq!(rev_parse(&dest, "HEAD"), c);
}

// ---------------------------------------------------------------------------
// 9
// ---------------------------------------------------------------------------

#[test]
fn restart_keeps_everything() {
    let tmp = tmpdir();
    let Some(src) = ripgrep_bare(&tmp.path().join("src.git")) else {
        return;
    };
    let source_refs = refs_of(&src);
    let data = tmpdir();

    let mut node = Node::start_in(data.path());
    node.create_repo("burntsushi", "ripgrep");
    git_ok(
        &src,
        &[
            "push",
            "-q",
            &node.repo_url("burntsushi", "ripgrep"),
            "refs/heads/*:refs/heads/*",
            "refs/tags/*:refs/tags/*",
        ],
    );
    assert_eq!(node.server_refs("burntsushi", "ripgrep"), source_refs);
    node.stop();
    drop(node);

    let mut node = Node::start_in(data.path());
    let list = node.get("/api/v1/repos");
    assert_eq!(list.status, 200, "{}", list.text());
    let listed = list.json();
    let repos = listed.as_array().expect("repo list is an array");
    // Listed under its canonical owner, with the alias it was created with.
    assert!(
        repos
            .iter()
            .any(|r| r["owner"] == test_identity().owner_id()
                && r["name"] == "ripgrep"
                && has_alias(r, "burntsushi")),
        "repo missing after restart: {listed}"
    );
    assert_eq!(node.server_refs("burntsushi", "ripgrep"), source_refs);
    assert_eq!(
        node.server_head("burntsushi", "ripgrep"),
        "refs/heads/master"
    );

    let url = node.repo_url("burntsushi", "ripgrep");
    let clone = tmp.path().join("clone.git");
    git_ok(
        tmp.path(),
        &[
            "-c",
            &proto("2"),
            "clone",
            "-q",
            "--bare",
            &url,
            &path_str(&clone),
        ],
    );
    assert_eq!(refs_of(&clone), source_refs);
    assert_fsck(&clone);

    // Still writable after the restart, and that survives another restart.
    git_ok(
        &clone,
        &["push", "-q", &url, "master:refs/heads/after-restart"],
    );
    let master = &source_refs["refs/heads/master"];
    assert_eq!(
        node.server_refs("burntsushi", "ripgrep")
            .get("refs/heads/after-restart"),
        Some(master)
    );
    node.stop();
    drop(node);
    let node = Node::start_in(data.path());
    let mut expected = source_refs.clone();
    expected.insert("refs/heads/after-restart".to_string(), master.clone());
    assert_eq!(node.server_refs("burntsushi", "ripgrep"), expected);
}

// ---------------------------------------------------------------------------
// 10
// ---------------------------------------------------------------------------

fn is_error_response(resp: &HttpResponse) -> bool {
    (400..500).contains(&resp.status) || resp.text().contains("ERR")
}

fn assert_still_serves(node: &Node, tmp: &Path, label: &str, expected: &BTreeMap<String, String>) {
    let dest = tmp.join(format!("check-{label}.git"));
    git_ok(
        tmp,
        &[
            "clone",
            "-q",
            "--bare",
            &node.repo_url("alice", "demo"),
            &path_str(&dest),
        ],
    );
    assert_eq!(&refs_of(&dest), expected, "after {label}");
    assert_fsck(&dest);
}

/// Files under the repository's object directory (packs, indexes, any
/// quarantine left behind), by path relative to it.
fn object_files(node: &Node) -> std::collections::BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeSet<String>) {
        for entry in fs::read_dir(dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).expect("under root");
                out.insert(rel.display().to_string());
            }
        }
    }
    let root = node
        .data_dir()
        .join("repos")
        .join(test_identity().owner_id())
        .join("demo.git/objects");
    let mut out = std::collections::BTreeSet::new();
    walk(&root, &root, &mut out);
    out
}

#[test]
fn malformed_input() {
    let tmp = tmpdir();
    let node = Node::start();
    let work = tmp.path().join("work");
    let c0 = seeded_repo(&node, "alice", "demo", &work);
    let mut expected = node.server_refs("alice", "demo");

    // (a) truncated pkt-line in an upload-pack request.
    let mut body = b"0032want ".to_vec();
    body.extend_from_slice(&c0.as_bytes()[..10]);
    let resp = node.post_service("alice", "demo", "git-upload-pack", &body);
    assert!(
        is_error_response(&resp),
        "truncated pkt-line: status {} body {}",
        resp.status,
        resp.text()
    );
    assert_still_serves(&node, tmp.path(), "truncated", &expected);

    // (b) a pkt-line length that is not hex.
    let resp = node.post_service(
        "alice",
        "demo",
        "git-upload-pack",
        b"zzzzwant nothing\n0000",
    );
    assert!(
        is_error_response(&resp),
        "bad pkt length: status {} body {}",
        resp.status,
        resp.text()
    );
    assert_still_serves(&node, tmp.path(), "bad-length", &expected);

    // Local history the server does not have: c0 -> c1 -> b1 -> b2.
    let c1 = commit_file(&work, "side.txt", "side\n", "c1");
    let b1 = commit_file(&work, "big.txt", &big_text(200, "original"), "b1");
    let b2 = commit_file(&work, "big.txt", &big_text(200, "changed"), "b2");

    // (c) a pack with a corrupted checksum trailer.
    let files_before = object_files(&node);
    let pack = pack_objects(&work, &[&c1, &format!("^{c0}")], false);
    let mut corrupt = pack.clone();
    *corrupt.last_mut().expect("non-empty pack") ^= 0xff;
    let create_new = [format!("{ZERO_ID} {c1} refs/heads/new")];
    let resp = node.receive_pack("alice", "demo", &create_new, "report-status", &corrupt);
    let text = resp.text();
    assert!(text.contains("unpack "), "no unpack status: {text}");
    assert!(!text.contains("unpack ok"), "corrupt pack accepted: {text}");
    assert!(
        !text.contains("ok refs/heads/new"),
        "corrupt pack accepted: {text}"
    );
    assert_eq!(
        node.server_refs("alice", "demo"),
        expected,
        "after corrupt pack"
    );
    assert_eq!(
        object_files(&node),
        files_before,
        "the corrupt pack left files"
    );
    assert_still_serves(&node, tmp.path(), "corrupt", &expected);

    // The intact pack is accepted (the request itself is well-formed).
    let resp = node.receive_pack("alice", "demo", &create_new, "report-status", &pack);
    let text = resp.text();
    assert!(text.contains("unpack ok"), "intact pack: {text}");
    assert!(text.contains("ok refs/heads/new"), "intact pack: {text}");
    expected.insert("refs/heads/new".to_string(), c1.clone());
    assert_eq!(node.server_refs("alice", "demo"), expected);

    // (d) a thin pack whose delta base (in b1) the server does not have.
    let thin = pack_objects(&work, &[&b2, &format!("^{b1}")], true);
    let scratch = tmp.path().join("scratch.git");
    fs::create_dir_all(&scratch).expect("scratch dir");
    git_ok(&scratch, &["init", "-q", "--bare"]);
    let out = git_stdin(&scratch, &["index-pack", "--stdin"], &thin);
    assert!(
        !out.status.success() && stderr_of(&out).contains("unresolved delta"),
        "precondition: the thin pack should need an external base; stderr: {}",
        stderr_of(&out)
    );
    let files_before = object_files(&node);
    let resp = node.receive_pack(
        "alice",
        "demo",
        &[format!("{c0} {b2} refs/heads/main")],
        "report-status",
        &thin,
    );
    let text = resp.text();
    assert!(
        !text.contains("ok refs/heads/main"),
        "missing base accepted: {text}"
    );
    assert!(
        text.contains("ng refs/heads/main")
            || (text.contains("unpack ") && !text.contains("unpack ok")),
        "no error reported for missing delta base: {text}"
    );
    assert_eq!(
        node.server_refs("alice", "demo"),
        expected,
        "after thin pack"
    );
    assert_eq!(
        object_files(&node),
        files_before,
        "the thin pack left files"
    );
    assert_still_serves(&node, tmp.path(), "missing-base", &expected);

    // Once the base exists, the same thin pack resolves against it.
    let full = pack_objects(&work, &[&b1, &format!("^{c1}")], false);
    let resp = node.receive_pack(
        "alice",
        "demo",
        &[format!("{c0} {b1} refs/heads/main")],
        "report-status",
        &full,
    );
    assert!(
        resp.text().contains("ok refs/heads/main"),
        "{}",
        resp.text()
    );
    let resp = node.receive_pack(
        "alice",
        "demo",
        &[format!("{b1} {b2} refs/heads/main")],
        "report-status",
        &thin,
    );
    let text = resp.text();
    assert!(
        text.contains("unpack ok"),
        "thin pack with base present: {text}"
    );
    assert!(
        text.contains("ok refs/heads/main"),
        "thin pack with base present: {text}"
    );
    expected.insert("refs/heads/main".to_string(), b2.clone());
    assert_eq!(node.server_refs("alice", "demo"), expected);
    assert_still_serves(&node, tmp.path(), "thin", &expected);
}

// ---------------------------------------------------------------------------
// 11
// ---------------------------------------------------------------------------

/// Whether a listed repository declares `alias` as an owner name.
fn has_alias(entry: &serde_json::Value, alias: &str) -> bool {
    entry["aliases"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == alias))
}

fn cli(node: &Node, args: &[&str]) -> std::process::Output {
    let url = node.url();
    std::process::Command::new(env!("CARGO_BIN_EXE_guts-node"))
        .args(args)
        .args(["--node", &url])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run guts-node cli")
}

fn assert_cli_ok(node: &Node, args: &[&str]) -> String {
    let out = cli(node, args);
    assert!(
        out.status.success(),
        "guts-node {} failed with {}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether the list has a repository `name` reachable as `owner/name`:
/// `owner` is its canonical owner or one of its aliases.
fn listed(node: &Node, owner: &str, name: &str) -> bool {
    listed_entry(node, owner, name).is_some()
}

fn listed_entry(node: &Node, owner: &str, name: &str) -> Option<serde_json::Value> {
    let resp = node.get("/api/v1/repos");
    assert_eq!(resp.status, 200, "list: {}", resp.text());
    let list = resp.json();
    list.as_array()
        .unwrap_or_else(|| panic!("list is not an array: {list}"))
        .iter()
        .find(|r| r["name"] == name && (r["owner"] == owner || has_alias(r, owner)))
        .cloned()
}

/// Asserts that `alias/name` is listed, owned by the test identity (its
/// canonical owner id in `owner`) with `alias` among its aliases.
fn assert_listed_as(node: &Node, alias: &str, name: &str) {
    let entry =
        listed_entry(node, alias, name).unwrap_or_else(|| panic!("{alias}/{name} is not listed"));
    let owner = test_identity().owner_id();
    assert_eq!(entry["owner"], owner.as_str(), "{entry}");
    assert!(has_alias(&entry, alias), "{entry}");
    assert_eq!(
        entry["path"],
        format!("/{owner}/{name}.git").as_str(),
        "{entry}"
    );
}

#[test]
fn rest_and_cli() {
    let tmp = tmpdir();
    let node = Node::start();

    // REST create / duplicate / bad names. A repository is created from a
    // first identity document signed by its owner; `alice` is an alias the
    // document declares (see `Node::create_repo`).
    let me = test_identity();
    node.create_repo("alice", "demo");
    let doc = genesis_document(me, "demo", &["alice"]);
    let dup = node.post_json("/api/v1/repos", &json!({ "document": doc }));
    assert_eq!(dup.status, 409, "duplicate: {}", dup.text());
    // Another identity cannot take `alice/demo` through the alias either.
    let other = TestIdentity::from_seed("mallory", 0x6d);
    let doc = genesis_document(&other, "demo", &["alice"]);
    let dup = node.post_json("/api/v1/repos", &json!({ "document": doc }));
    assert_eq!(dup.status, 409, "duplicate alias: {}", dup.text());
    let resp = node.get(&format!("/api/v1/repos/{}/demo", other.owner_id()));
    assert_eq!(
        resp.status,
        404,
        "refused create left a repo: {}",
        resp.text()
    );
    // The old unsigned form is refused with a hint.
    let resp = node.post_json("/api/v1/repos", &json!({"owner": "alice", "name": "x"}));
    assert_eq!(resp.status, 400, "unsigned create: {}", resp.text());
    assert!(
        resp.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("guts-node repo create")),
        "no hint for an unsigned create: {}",
        resp.text()
    );
    // Bad names: `owner` is the alias the document declares.
    for (owner, name) in [
        ("alice", "../x"),
        ("alice", ".hidden"),
        ("alice", "a b"),
        ("../evil", "x"),
        ("", "x"),
        ("alice", ""),
    ] {
        let doc = genesis_document(me, name, &[owner]);
        let resp = node.post_json("/api/v1/repos", &json!({ "document": doc }));
        assert_eq!(resp.status, 400, "{owner:?}/{name:?}: {}", resp.text());
        let body = resp.json();
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{owner:?}/{name:?}: no error message in {body}"
        );
    }
    assert_listed_as(&node, "alice", "demo");
    assert!(!listed(&node, "alice", ".hidden"));
    assert!(!listed(&node, "alice", "x"));
    assert!(!listed(&node, "alice", "a b"));

    // Show before and after a push.
    assert!(node.server_refs("alice", "demo").is_empty());
    let work = tmp.path().join("work");
    let c = init_work_repo(&work);
    git_ok(
        &work,
        &["push", "-q", &node.repo_url("alice", "demo"), "main"],
    );
    let info = node.repo_info("alice", "demo");
    assert_eq!(info["refs"]["refs/heads/main"], c.as_str(), "{info}");
    assert_eq!(info["head"], "refs/heads/main", "{info}");
    assert!(
        info["object_count"].as_u64().is_some_and(|n| n >= 3),
        "object_count: {info}"
    );
    assert!(
        info["size_bytes"].as_u64().is_some_and(|n| n > 0),
        "size_bytes: {info}"
    );

    // CLI: `repo create` signs the document with the key it is given.
    let key = path_str(&me.key_path);
    assert_cli_ok(&node, &["repo", "create", "bob/cli", "--key", &key]);
    assert!(
        listed(&node, "bob", "cli"),
        "CLI create not visible via REST"
    );
    assert_listed_as(&node, "bob", "cli");
    assert!(node.server_refs("bob", "cli").is_empty());
    assert!(node.server_refs(&me.owner_id(), "cli").is_empty());
    let dup = cli(&node, &["repo", "create", "bob/cli", "--key", &key]);
    assert!(!dup.status.success(), "duplicate CLI create succeeded");
    let list = assert_cli_ok(&node, &["repo", "list"]);
    assert!(
        list.contains("cli"),
        "repo list output lacks bob/cli:\n{list}"
    );
    assert!(
        list.contains("demo"),
        "repo list output lacks alice/demo:\n{list}"
    );
    assert_cli_ok(&node, &["repo", "show", "alice/demo"]);
    // CLI: `repo delete` by the owner, with an action signed by their key.
    assert_cli_ok(&node, &["repo", "delete", "bob/cli", "--key", &key]);
    let resp = node.get("/api/v1/repos/bob/cli");
    assert_eq!(resp.status, 404, "after CLI delete: {}", resp.text());
    let resp = node.get(&format!("/api/v1/repos/{}/cli", me.owner_id()));
    assert_eq!(resp.status, 404, "after CLI delete: {}", resp.text());
    assert!(!listed(&node, "bob", "cli"));
    let show_missing = cli(&node, &["repo", "show", "bob/cli"]);
    assert!(
        !show_missing.status.success(),
        "show of a deleted repo succeeded"
    );

    // REST delete.
    let resp = node.delete("/api/v1/repos/alice/demo");
    assert_eq!(resp.status, 204, "delete: {}", resp.text());
    let resp = node.get("/api/v1/repos/alice/demo");
    assert_eq!(resp.status, 404, "show after delete: {}", resp.text());
    let resp = node.get(&format!("/api/v1/repos/{}/demo", me.owner_id()));
    assert_eq!(resp.status, 404, "show after delete: {}", resp.text());
    assert!(!listed(&node, "alice", "demo"));
    git_fail(tmp.path(), &["ls-remote", &node.repo_url("alice", "demo")]);
}

//! Repository maintenance on a real node with stock git: clones before and
//! after are identical and fsck-clean, clones running during maintenance
//! succeed, and `kill -9` at random moments of maintenance never leaves a
//! repository that clones differently or fails `git fsck --full`.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const OWNER: &str = "burntsushi";
const NAME: &str = "ripgrep";

/// Push the fixture in three batches (three packs): heads, then half the
/// tags, then the rest.
fn push_in_batches(node: &Node, src: &Path) {
    let url = node.repo_url(OWNER, NAME);
    git_ok(src, &["push", "-q", &url, "refs/heads/*:refs/heads/*"]);
    let tags: Vec<String> = refs_of(src)
        .into_keys()
        .filter(|r| r.starts_with("refs/tags/"))
        .collect();
    let (first, rest) = tags.split_at(tags.len() / 2);
    for batch in [first, rest] {
        let mut args = vec!["push", "-q", url.as_str()];
        let specs: Vec<String> = batch.iter().map(|t| format!("{t}:{t}")).collect();
        args.extend(specs.iter().map(String::as_str));
        git_ok(src, &args);
    }
}

/// `guts-node repo maintain` as the operator (the CLI reads the token from
/// the node's data dir); what it printed on stdout.
fn maintain_cli(node: &Node) -> String {
    maintain_cli_with_progress(node).0
}

/// [`maintain_cli`], with what it printed on stderr: the progress (one line
/// per phase, stderr not being a terminal).
fn maintain_cli_with_progress(node: &Node) -> (String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_guts-node"))
        .args(["repo", "maintain", &format!("{OWNER}/{NAME}")])
        .arg("--node")
        .arg(node.url())
        .arg("--data-dir")
        .arg(node.data_dir())
        .output()
        .expect("run guts-node repo maintain");
    assert!(
        out.status.success(),
        "repo maintain failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The repository's `objects/` (stored under its canonical owner id, not the alias).
fn objects_dir(node: &Node) -> std::path::PathBuf {
    std::fs::read_dir(node.data_dir().join("repos"))
        .expect("repos dir")
        .map(|e| e.expect("entry").path().join(format!("{NAME}.git/objects")))
        .find(|p| p.exists())
        .expect("the repository's objects dir")
}

fn clone_v(node: &Node, dir: &Path, v: &str, dest: &str) -> BTreeMap<String, String> {
    let dest = dir.join(dest);
    let url = node.repo_url(OWNER, NAME);
    git_ok(
        dir,
        &[
            "-c",
            &format!("protocol.version={v}"),
            "clone",
            "-q",
            "--bare",
            &url,
            dest.to_str().expect("utf-8"),
        ],
    );
    assert_fsck(&dest);
    refs_of(&dest)
}

/// A node (no background maintenance) holding the fixture in three packs;
/// the fixture's refs. `None` (SKIP printed) without the fixture.
fn node_with_fixture(tmp: &Path) -> Option<(Node, BTreeMap<String, String>)> {
    let src = ripgrep_bare(&tmp.join("src.git"))?;
    let node = Node::start_with(&tmp.join("data"), &["--no-auto-maintenance"]);
    node.create_repo(OWNER, NAME);
    push_in_batches(&node, &src);
    Some((node, refs_of(&src)))
}

#[test]
fn clones_before_and_after_maintenance_are_identical() {
    let tmp = tempfile::TempDir::new().expect("tmp");
    let Some((node, source)) = node_with_fixture(tmp.path()) else {
        return;
    };
    let info = node.repo_info(OWNER, NAME);
    assert_eq!(info["packs"], 3, "{info}");
    assert!(info["maintained_at"].is_null(), "{info}");
    let before = clone_v(&node, tmp.path(), "2", "before.git");
    assert_eq!(before, source);

    let (printed, progress) = maintain_cli_with_progress(&node);
    assert!(printed.contains("3 packs -> 1"), "{printed}");
    // The phases the node streamed, in order (ripgrep's packs hold no
    // object that no ref reaches: no cruft pack).
    let phases: Vec<&str> = progress
        .lines()
        .filter_map(|l| l.strip_suffix("..."))
        .filter(|l| !l.starts_with("maintaining"))
        .collect();
    assert_eq!(
        phases,
        [
            "counting reachable objects",
            "writing the reachable pack",
            "writing the commit-graph"
        ],
        "{progress}"
    );
    let info = node.repo_info(OWNER, NAME);
    assert_eq!(info["packs"], 1, "{info}");
    assert!(info["maintained_at"].as_u64().is_some(), "{info}");
    for v in ["0", "1", "2"] {
        assert_eq!(
            clone_v(&node, tmp.path(), v, &format!("after-v{v}.git")),
            source
        );
    }
    assert!(objects_dir(&node).join("info/commit-graph").exists());
    // git verifies a commit-graph of its own object dir or of an alternate.
    let checker = tmp.path().join("checker.git");
    git_ok(tmp.path(), &["init", "-q", "--bare", "checker.git"]);
    std::fs::write(
        checker.join("objects/info/alternates"),
        format!("{}\n", objects_dir(&node).display()),
    )
    .expect("alternates");
    git_ok(
        &checker,
        &[
            "commit-graph",
            "verify",
            "--object-dir",
            objects_dir(&node).to_str().expect("utf-8"),
        ],
    );
    // History moves on: the next clone is the maintained pack plus the new
    // objects, and a fetch into an old clone gets just the new commit.
    let work = tmp.path().join("work");
    git_ok(
        tmp.path(),
        &["clone", "-q", &node.repo_url(OWNER, NAME), "work"],
    );
    let new = commit_file(&work, "NEW.md", "after maintenance\n", "after maintenance");
    git_ok(&work, &["push", "-q", "origin", "HEAD:refs/heads/master"]);
    let moved = clone_v(&node, tmp.path(), "2", "moved.git");
    assert_eq!(moved.get("refs/heads/master"), Some(&new));
    assert_eq!(moved.len(), source.len());
    let before_dir = tmp.path().join("before.git");
    git_ok(
        &before_dir,
        &[
            "fetch",
            "-q",
            &node.repo_url(OWNER, NAME),
            "+refs/heads/*:refs/heads/*",
        ],
    );
    assert_fsck(&before_dir);
    assert_eq!(rev_parse(&before_dir, "refs/heads/master"), new);
}

#[test]
fn clones_running_during_maintenance_succeed() {
    let tmp = tempfile::TempDir::new().expect("tmp");
    let Some((node, source)) = node_with_fixture(tmp.path()) else {
        return;
    };
    std::thread::scope(|s| {
        let cloners: Vec<_> = (0..3)
            .map(|i| {
                let node = &node;
                let source = &source;
                let dir = tmp.path();
                s.spawn(move || {
                    for round in 0..3 {
                        let got = clone_v(node, dir, "2", &format!("c{i}-{round}.git"));
                        assert_eq!(&got, source, "clone {i}/{round} differs");
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        maintain_cli(&node);
        for c in cloners {
            c.join().expect("a clone failed during maintenance");
        }
    });
    assert_eq!(node.repo_info(OWNER, NAME)["packs"], 1);
}

/// Start maintenance over HTTP and leave it running (the answer is not awaited).
fn start_maintenance(node: &Node) -> std::thread::JoinHandle<()> {
    let addr = node.addr().to_owned();
    let auth = format!("Bearer {}", node.operator_token());
    std::thread::spawn(move || {
        let _ = try_http_request(
            &addr,
            "POST",
            &format!("/api/v1/repos/{OWNER}/{NAME}/maintain"),
            &[("Authorization", &auth)],
            &[],
        );
    })
}

#[test]
fn kill_9_during_maintenance_leaves_a_clonable_repository() {
    const ROUNDS: usize = 20;
    let tmp = tempfile::TempDir::new().expect("tmp");
    let Some((mut node, _)) = node_with_fixture(tmp.path()) else {
        return;
    };
    let data = tmp.path().join("data");
    let work = tmp.path().join("work");
    git_ok(
        tmp.path(),
        &["clone", "-q", &node.repo_url(OWNER, NAME), "work"],
    );
    // How long one maintenance takes here: kills land within it.
    let started = Instant::now();
    maintain_cli(&node);
    let span = started.elapsed().as_millis().max(50) as u64;
    let mut rng = Rng(0x6775_7473);
    let mut landed = [0usize; 2];
    for round in 0..ROUNDS {
        // A new branch each round: a new pack, so maintenance has work.
        let c = commit_file(&work, "round.txt", &format!("round {round}\n"), "round");
        let url = node.repo_url(OWNER, NAME);
        git_ok(
            &work,
            &["push", "-q", &url, &format!("{c}:refs/heads/round-{round}")],
        );
        let expected = node.server_refs(OWNER, NAME);
        let waiter = start_maintenance(&node);
        let delay = rng.next() % (span + span / 4);
        std::thread::sleep(Duration::from_millis(delay));
        node.stop();
        let _ = waiter.join();
        node = Node::start_with(&data, &["--no-auto-maintenance"]);
        let info = node.repo_info(OWNER, NAME);
        landed[usize::from(info["packs"].as_u64() == Some(1))] += 1;
        let got = clone_v(&node, tmp.path(), "2", &format!("kill-{round}.git"));
        assert_eq!(
            got, expected,
            "round {round} (killed after {delay} ms): refs differ"
        );
    }
    println!("kills: {} before maintenance finished, {} after (of {ROUNDS}; one maintenance took {span} ms)", landed[0], landed[1]);
    // And the repository still maintains cleanly afterwards.
    maintain_cli(&node);
    assert_eq!(node.repo_info(OWNER, NAME)["packs"], 1);
    clone_v(&node, tmp.path(), "0", "final.git");
}

//! Replication between real node processes on loopback, checked with stock
//! git: a line of nodes, catch-up after downtime, seeding from a far peer,
//! and concurrent pushes that must converge.

mod common;

use std::path::{Path, PathBuf};

use common::p2p::*;
use common::*;
use tempfile::TempDir;

/// A replicating node without the DHT: it connects only to the peers it is
/// given, so the topology is exactly the one a test builds.
fn line_node(dir: &Path, bootstrap: Option<&str>) -> Node {
    peer_node(dir, bootstrap, false)
}

/// Pack files of `OWNER/demo` in a node's data dir (each fetch from a peer adds one).
fn packs(data_dir: &Path, owner: &str) -> usize {
    let dir = data_dir
        .join("repos")
        .join(owner)
        .join("demo.git/objects/pack");
    std::fs::read_dir(&dir)
        .expect("pack dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "pack"))
        })
        .count()
}

fn log_len(node: &Node, owner: &str, name: &str) -> usize {
    updates(node, owner, name).len()
}

struct Line {
    _tmp: TempDir,
    dirs: Vec<PathBuf>,
    a: Node,
    b: Node,
    c: Node,
    work: PathBuf,
    owner: String,
}

/// A–B–C in a line, a repository created on A with two commits and a tag,
/// seeded by B and then C.
fn line() -> Line {
    let tmp = TempDir::new().expect("tmp");
    let dirs: Vec<PathBuf> = ["a", "b", "c"].iter().map(|d| tmp.path().join(d)).collect();
    let a = line_node(&dirs[0], None);
    let b = line_node(&dirs[1], Some(&p2p_addr(&a)));
    let c = line_node(&dirs[2], Some(&p2p_addr(&b)));
    wait_connected(&b, 2);
    a.create_repo("alice", "demo");
    let work = tmp.path().join("work");
    init_work_repo(&work);
    commit_file(&work, "src/lib.rs", "pub fn x() {}\n", "second");
    git_ok(&work, &["tag", "-a", "v1", "-m", "v1"]);
    git_ok(
        &work,
        &["push", "-q", "--tags", &a.repo_url("alice", "demo"), "main"],
    );
    let owner = test_identity().owner_id();
    seed(&b, &owner, "demo");
    seed(&c, &owner, "demo");
    Line {
        _tmp: tmp,
        dirs,
        a,
        b,
        c,
        work,
        owner,
    }
}

#[test]
fn a_push_to_one_end_of_a_line_reaches_the_other_end() {
    let l = line();
    // C is not connected to A: everything reaches C through B.
    let a_id = peer_id(&l.a);
    assert!(
        !connected(&l.c).contains(&a_id),
        "C connected to A directly"
    );
    assert!(
        same_refs(&l.a, &l.c, &l.owner, "demo"),
        "seeding copied the refs"
    );
    // On loopback every connection is direct (NAT traversal: tests/nat.rs).
    let info = l.b.get("/api/v1/node").json();
    let conns = info["connections"].as_array().expect("connections");
    assert!(conns.len() >= 2, "{info}");
    assert!(conns.iter().all(|c| c["relayed"] == false), "{info}");
    assert!(
        ["unknown", "public", "private"]
            .contains(&info["reachability"].as_str().expect("reachability")),
        "{info}"
    );
    assert_eq!(info["hole_punches"], 0, "{info}");
    let status = cli_ok(&l.b, &["status"]);
    assert!(
        status.contains("direct") && status.contains("hole punches 0"),
        "{status}"
    );

    let c2 = commit_file(&l.work, "README.md", "v2\n", "third");
    git_ok(
        &l.work,
        &["push", "-q", &l.a.repo_url("alice", "demo"), "main"],
    );
    eventually(30, "C has the new commit", || {
        l.c.server_refs(&l.owner, "demo").get("refs/heads/main") == Some(&c2)
    });
    // A stock git clone from C (alias URL) holds exactly what A holds.
    let tmp = TempDir::new().expect("tmp");
    let from_a = clone_refs(&l.a, "alice", "demo", &tmp.path().join("a.git"));
    let from_c = clone_refs(&l.c, "alice", "demo", &tmp.path().join("c.git"));
    assert_eq!(from_a, from_c);
    let objects = |d: &str| {
        git_ok(
            &tmp.path().join(d),
            &["cat-file", "--batch-all-objects", "--batch-check"],
        )
    };
    assert_eq!(objects("a.git"), objects("c.git"));
    // The signed updates travelled too, and verify on C.
    assert_eq!(
        log_len(&l.c, &l.owner, "demo"),
        log_len(&l.a, &l.owner, "demo")
    );
    let log =
        l.c.get(&format!("/api/v1/repos/{}/demo/updates", l.owner))
            .json();
    assert!(
        log.as_array()
            .expect("array")
            .iter()
            .all(|u| u["signer"].is_string()),
        "{log}"
    );
}

#[test]
fn a_node_that_was_down_catches_up_and_a_far_node_can_seed() {
    let mut l = line();
    l.c.stop();
    let c_packs = packs(&l.dirs[2], &l.owner);
    let c1 = commit_file(&l.work, "one.txt", "1\n", "while C is down 1");
    git_ok(
        &l.work,
        &["push", "-q", &l.a.repo_url("alice", "demo"), "main"],
    );
    let c2 = commit_file(&l.work, "two.txt", "2\n", "while C is down 2");
    git_ok(
        &l.work,
        &["push", "-q", &l.a.repo_url("alice", "demo"), "main"],
    );
    assert_ne!(c1, c2);
    eventually(30, "B has both pushes", || {
        l.b.server_refs(&l.owner, "demo").get("refs/heads/main") == Some(&c2)
    });
    let c = line_node(&l.dirs[2], Some(&p2p_addr(&l.b)));
    eventually(30, "C caught up", || same_refs(&l.a, &c, &l.owner, "demo"));
    assert_eq!(
        log_len(&c, &l.owner, "demo"),
        log_len(&l.a, &l.owner, "demo")
    );
    // Both missed updates' objects came in one fetch (one new pack).
    assert_eq!(packs(&l.dirs[2], &l.owner), c_packs + 1);

    // D knows only B, and seeds the repository by its canonical name.
    let d_dir = l._tmp.path().join("d");
    let d = line_node(&d_dir, Some(&p2p_addr(&l.b)));
    wait_connected(&d, 1);
    // With the CLI: one progress line per phase (stderr is not a terminal).
    let repo = format!("{}/demo", l.owner);
    let data_dir = d_dir.to_str().expect("utf-8");
    let out = cli(&d, &["seed", &repo, "--data-dir", data_dir]);
    let (stdout, progress) = (stdout_of(&out), stderr_of(&out));
    assert!(out.status.success(), "{stdout}{progress}");
    assert_eq!(stdout.trim(), format!("seeding {repo}"));
    let phases: Vec<&str> = progress
        .lines()
        .filter_map(|l| l.strip_suffix("..."))
        .collect();
    assert_eq!(
        phases,
        [
            "finding peers and the repository's signed log",
            "receiving objects",
            "applying signed updates"
        ],
        "{progress}"
    );
    assert!(same_refs(&l.a, &d, &l.owner, "demo"));
    // D's node page shows its peer id, B among its peers, the repository.
    let page = d.get("/");
    assert_eq!(page.status, 200);
    let page = page.text();
    assert!(page.contains(&peer_id(&d)), "{page}");
    assert!(page.contains(&peer_id(&l.b)), "{page}");
    assert!(page.contains("1 connected"), "{page}");
    assert!(page.contains("demo"), "{page}");
    let tmp = TempDir::new().expect("tmp");
    let refs = clone_refs(&d, &l.owner, "demo", &tmp.path().join("d.git"));
    assert_eq!(refs.get("refs/heads/main"), Some(&c2));
    // Seeding something nobody has fails clearly.
    let resp = d.post_json(
        &format!("/api/v1/repos/{}/nope/seed", l.owner),
        &serde_json::json!({}),
    );
    assert_eq!(resp.status, 502, "{}", resp.text());
    // Asked for progress, the failure ends the stream with its status.
    let token = format!("Bearer {}", d.operator_token());
    let resp = http_request(
        d.addr(),
        "POST",
        &format!("/api/v1/repos/{}/nope/seed", l.owner),
        &[
            ("Authorization", &token),
            ("Accept", "application/x-ndjson"),
        ],
        b"",
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/x-ndjson"));
    let text = resp.text();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(
        lines[..lines.len() - 1]
            .iter()
            .all(|l| l.get("progress").is_some()),
        "{text}"
    );
    let last = lines.last().expect("a last line");
    assert_eq!(last["error"]["status"], 502, "{text}");
}

fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn concurrent_pushes_to_two_nodes_converge_everywhere() {
    let mut l = line();
    let base = l.a.server_refs(&l.owner, "demo")["refs/heads/main"].clone();
    let expected_log = log_len(&l.a, &l.owner, "demo") + 2;
    let tmp = TempDir::new().expect("tmp");
    let (wa, wc) = (tmp.path().join("wa"), tmp.path().join("wc"));
    git_ok(
        tmp.path(),
        &[
            "clone",
            "-q",
            &l.a.repo_url("alice", "demo"),
            wa.to_str().expect("utf-8"),
        ],
    );
    git_ok(
        tmp.path(),
        &[
            "clone",
            "-q",
            &l.c.repo_url("alice", "demo"),
            wc.to_str().expect("utf-8"),
        ],
    );
    let xa = commit_file(&wa, "a.txt", "from A\n", "on A");
    let xc = commit_file(&wc, "c.txt", "from C\n", "on C");
    let url_a = l.a.repo_url("alice", "demo");
    let url_c = l.c.repo_url("alice", "demo");
    // A and C are connected only through B: with B down, neither push can
    // reach the other node before it is accepted there (concurrent in the
    // sense that matters, whatever the machine's speed).
    l.b.stop();
    std::thread::scope(|s| {
        s.spawn(|| git_ok(&wa, &["push", "-q", &url_a, "main"]));
        s.spawn(|| git_ok(&wc, &["push", "-q", &url_c, "main"]));
    });
    // B comes back and catches up from both (on connection), then A and C
    // reconnect to B and catch up from it.
    let c_addr = p2p_addr(&l.c);
    l.b = peer_node_with(
        &l.dirs[1],
        Some(&p2p_addr(&l.a)),
        false,
        &["--sync-interval", "0", "--bootstrap", &c_addr],
    );
    eventually(45, "B holds both updates", || {
        log_len(&l.b, &l.owner, "demo") == expected_log
    });
    l.a.stop();
    l.c.stop();
    l.a = line_node(&l.dirs[0], Some(&p2p_addr(&l.b)));
    l.c = line_node(&l.dirs[2], Some(&p2p_addr(&l.b)));
    // Both pushes were accepted locally; after the network quiets, every node
    // holds both signed updates and the same value for main.
    eventually(45, "all nodes converge", || {
        let nodes = [&l.a, &l.b, &l.c];
        let values: Vec<Option<String>> = nodes
            .iter()
            .map(|n| {
                n.server_refs(&l.owner, "demo")
                    .get("refs/heads/main")
                    .cloned()
            })
            .collect();
        nodes
            .iter()
            .all(|n| log_len(n, &l.owner, "demo") == expected_log)
            && values.windows(2).all(|w| w[0] == w[1])
    });
    let winner = l.a.server_refs(&l.owner, "demo")["refs/heads/main"].clone();
    assert!(
        winner == xa || winner == xc,
        "main is {winner}, expected {xa} or {xc} (base {base})"
    );
    let loser = if winner == xa { &xc } else { &xa };
    // The losing update is kept in every log, marked as superseded for main.
    for n in [&l.a, &l.b, &l.c] {
        let log = updates(n, &l.owner, "demo");
        let text = serde_json::Value::from(log.clone()).to_string();
        assert!(
            text.contains(&xa) && text.contains(&xc),
            "both updates logged: {text}"
        );
        let status = |tip: &str| {
            log.iter()
                .find(|u| {
                    u["updates"]
                        .as_array()
                        .expect("lines")
                        .iter()
                        .any(|l| l.as_str().is_some_and(|l| l.contains(tip)))
                })
                .map(|u| u["superseded"].clone())
                .expect("the update is in the log")
        };
        assert_eq!(status(loser), serde_json::json!(["refs/heads/main"]));
        assert_eq!(status(&winner), serde_json::json!([]));
    }
    // A clone from B is consistent.
    let refs = clone_refs(&l.b, "alice", "demo", &tmp.path().join("b.git"));
    assert_eq!(refs["refs/heads/main"], winner);
}

#[test]
fn seeding_finds_a_provider_through_the_dht() {
    let tmp = TempDir::new().expect("tmp");
    // A has the repository; B only routes; C knows only B.
    let a = peer_node(&tmp.path().join("a"), None, true);
    let b = peer_node(&tmp.path().join("b"), Some(&p2p_addr(&a)), true);
    wait_connected(&b, 1);
    a.create_repo("alice", "dht");
    let work = tmp.path().join("w");
    let head = init_work_repo(&work);
    git_ok(&work, &["push", "-q", &a.repo_url("alice", "dht"), "main"]);
    let c = peer_node(&tmp.path().join("c"), Some(&p2p_addr(&b)), true);
    wait_connected(&c, 1);
    let owner = test_identity().owner_id();
    // A's provider record reaches the DHT shortly after creation.
    eventually(30, "C finds A as a provider and seeds", || {
        c.post_json(
            &format!("/api/v1/repos/{owner}/dht/seed"),
            &serde_json::json!({}),
        )
        .status
            == 200
    });
    assert_eq!(
        c.server_refs(&owner, "dht").get("refs/heads/main"),
        Some(&head)
    );
    assert!(
        b.get(&format!("/api/v1/repos/{owner}/dht")).status == 404,
        "B never held it"
    );
}

/// Alice adds `who` as a delegate of `OWNER/demo` on `node` (the
/// document's version 2).
fn add_delegate(node: &Node, owner: &str, who: &TestIdentity) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let ident = node
        .get(&format!("/api/v1/repos/{owner}/demo/identity"))
        .json();
    let v1 = b64
        .decode(ident["versions"][0].as_str().expect("v1"))
        .expect("base64");
    let v1 = guts_identity::Doc::from_bytes(&v1)
        .and_then(guts_identity::Doc::verify_genesis)
        .expect("v1 verifies");
    let mut next = v1.successor();
    next.delegates.push(who.key.did().to_string());
    let signed = next.sign(&[&test_identity().key]);
    let doc = b64.encode(prost::Message::encode_to_vec(&signed));
    let resp = http_request(
        node.addr(),
        "PUT",
        &format!("/api/v1/repos/{owner}/demo/identity"),
        &[("Content-Type", "application/json")],
        serde_json::json!({ "document": doc })
            .to_string()
            .as_bytes(),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[test]
fn a_new_delegate_is_recognized_downstream() {
    let l = line();
    let bob = TestIdentity::from_seed("bob", 0xb0);
    add_delegate(&l.a, &l.owner, &bob);

    // Bob pushes to A; B and C only learn of version 2 through that update.
    let as_bob = format!("user.signingkey={}", bob.key_path.display());
    let c3 = commit_file(&l.work, "bob.txt", "bob\n", "by bob");
    git_ok(
        &l.work,
        &[
            "-c",
            &as_bob,
            "push",
            "-q",
            &l.a.repo_url("alice", "demo"),
            "main",
        ],
    );
    eventually(30, "C applies Bob's update", || {
        l.c.server_refs(&l.owner, "demo").get("refs/heads/main") == Some(&c3)
    });
    assert_eq!(l.c.repo_info(&l.owner, "demo")["doc_version"], 2);
    assert_eq!(l.b.repo_info(&l.owner, "demo")["doc_version"], 2);
}

/// A non-atomic push where the accepting node refuses one ref (a
/// non-fast-forward its repository denies) and takes another: git tells the
/// pusher the first was rejected, so no node may move it, while the other
/// ref replicates. The log entry says which ref was refused, and peers
/// honour that without trusting A.
#[test]
fn a_ref_refused_by_the_accepting_node_moves_nowhere() {
    let l = line();
    let main_before = l.a.server_refs(&l.owner, "demo")["refs/heads/main"].clone();
    let resp = l.a.patch_json(
        &format!("/api/v1/repos/{}/demo", l.owner),
        &serde_json::json!({ "deny_non_fast_forwards": true }),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());

    git_ok(&l.work, &["checkout", "-q", "-b", "feature"]);
    let feature = commit_file(&l.work, "feature.txt", "f\n", "feature");
    git_ok(&l.work, &["checkout", "-q", "main"]);
    git_ok(&l.work, &["commit", "-q", "--amend", "-m", "rewritten"]);
    let rewritten = rev_parse(&l.work, "main");
    let out = git(
        &l.work,
        &[
            "push",
            "--force",
            &l.a.repo_url("alice", "demo"),
            "main",
            "feature",
        ],
    );
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "one ref was refused: {stderr}");
    assert!(
        stderr.contains("feature -> feature"),
        "feature accepted: {stderr}"
    );
    assert!(stderr.contains("main -> main"), "main reported: {stderr}");

    let log = updates(&l.a, &l.owner, "demo");
    let last = log.last().expect("the push was logged");
    assert_eq!(last["refused"], serde_json::json!(["refs/heads/main"]));
    for node in [&l.b, &l.c] {
        eventually(30, "the feature branch replicates", || {
            node.server_refs(&l.owner, "demo").get("refs/heads/feature") == Some(&feature)
        });
        let refs = node.server_refs(&l.owner, "demo");
        assert_eq!(refs["refs/heads/main"], main_before, "main did not move");
        assert_ne!(refs["refs/heads/main"], rewritten);
        assert_eq!(refs, l.a.server_refs(&l.owner, "demo"));
        let theirs = updates(node, &l.owner, "demo");
        assert_eq!(theirs.last().expect("logged")["refused"], last["refused"]);
    }
    assert_eq!(
        l.a.server_refs(&l.owner, "demo")["refs/heads/main"],
        main_before
    );
}

/// A document change with no push after it still reaches a connected
/// follower, through the periodic comparison (which also compares the
/// number of document versions held).
#[test]
fn a_document_change_without_a_push_reaches_followers() {
    let tmp = TempDir::new().expect("tmp");
    let sync = ["--sync-interval", "1"];
    let a = peer_node_with(&tmp.path().join("a"), None, false, &sync);
    let b = peer_node_with(&tmp.path().join("b"), Some(&p2p_addr(&a)), false, &sync);
    wait_connected(&b, 1);
    a.create_repo("alice", "demo");
    let work = tmp.path().join("work");
    init_work_repo(&work);
    git_ok(&work, &["push", "-q", &a.repo_url("alice", "demo"), "main"]);
    let owner = test_identity().owner_id();
    seed(&b, &owner, "demo");
    assert_eq!(b.repo_info(&owner, "demo")["doc_version"], 1);
    add_delegate(&a, &owner, &TestIdentity::from_seed("bob", 0xb0));
    eventually(20, "B takes version 2 of the document", || {
        b.repo_info(&owner, "demo")["doc_version"] == 2
    });
    assert_eq!(
        b.get(&format!("/api/v1/repos/{owner}/demo/identity"))
            .json()["versions"],
        a.get(&format!("/api/v1/repos/{owner}/demo/identity"))
            .json()["versions"]
    );
}

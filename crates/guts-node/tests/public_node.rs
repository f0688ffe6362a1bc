//! A node facing strangers: each attack of the "public node" issue is
//! tried against a real node process, and must fail with the status and
//! message a user would expect, leaving refs, log and identity as they were.

mod common;

use std::path::Path;

use base64::Engine;
use common::*;
use prost::Message;
use tempfile::TempDir;

const ZERO: &str = "0000000000000000000000000000000000000000";

/// Everything an attack could change, to compare before and after.
fn snapshot(node: &Node, owner: &str, name: &str) -> (serde_json::Value, String, String) {
    let info = node.repo_info(owner, name);
    let log = node
        .get(&format!("/api/v1/repos/{owner}/{name}/updates"))
        .text();
    let identity = node
        .get(&format!("/api/v1/repos/{owner}/{name}/identity"))
        .text();
    (info, log, identity)
}

/// A node with `alice/demo` holding two commits; returns the work dir too.
fn node_with_repo(tmp: &Path, extra: &[&str]) -> (Node, std::path::PathBuf) {
    let node = Node::start_with(&tmp.join("data"), extra);
    node.create_repo("alice", "demo");
    let work = tmp.join("work");
    init_work_repo(&work);
    commit_file(&work, "b.txt", "two\n", "second");
    git_ok(
        &work,
        &["push", "-q", &node.repo_url("alice", "demo"), "main"],
    );
    (node, work)
}

/// `Authorization: GutsAction ...` for `action` on `owner/name`, signed by `who`.
fn signed_action(node: &Node, who: &TestIdentity, owner: &str, name: &str, action: &str) -> String {
    let v = node
        .get(&format!("/api/v1/repos/{owner}/{name}/nonce"))
        .json();
    let id: guts_identity::RepoId = v["id"].as_str().expect("id").parse().expect("repo id");
    let signed = guts_identity::RepoAction {
        repo_id: id.0.to_vec(),
        action: action.to_owned(),
        nonce: v["nonce"].as_str().expect("nonce").to_owned(),
    }
    .sign(&[&who.key]);
    format!(
        "GutsAction {}",
        base64::engine::general_purpose::STANDARD.encode(signed.encode_to_vec())
    )
}

fn request(node: &Node, method: &str, path: &str, auth: &str, body: &[u8]) -> HttpResponse {
    http_request(
        node.addr(),
        method,
        path,
        &[
            ("Authorization", auth),
            ("Content-Type", "application/json"),
        ],
        body,
    )
}

#[test]
fn delete_and_settings_need_the_operator_or_the_delegates() {
    let tmp = TempDir::new().expect("tmp");
    let (node, _work) = node_with_repo(tmp.path(), &[]);
    let owner = test_identity().owner_id();
    let before = snapshot(&node, "alice", "demo");
    // No credentials, through the alias and the canonical name.
    for path in [
        "/api/v1/repos/alice/demo",
        &format!("/api/v1/repos/{owner}/demo"),
    ] {
        let resp = node.delete_anonymous(path);
        assert_eq!(resp.status, 401, "{}", resp.text());
        assert!(resp.text().contains("operator"), "{}", resp.text());
        assert!(resp.header("www-authenticate").is_some());
    }
    let resp = request(
        &node,
        "DELETE",
        "/api/v1/repos/alice/demo",
        "Bearer 0123456789abcdef0123456789abcdef",
        b"",
    );
    assert_eq!(resp.status, 401, "a wrong token: {}", resp.text());
    let patch = br#"{"deny_non_fast_forwards": true}"#;
    let resp = http_request(
        node.addr(),
        "PATCH",
        "/api/v1/repos/alice/demo",
        &[("Content-Type", "application/json")],
        patch,
    );
    assert_eq!(resp.status, 401, "{}", resp.text());
    // A stranger's signature is no better.
    let mallory = TestIdentity::from_seed("mallory", 0x6d);
    let auth = signed_action(&node, &mallory, "alice", "demo", "delete");
    let resp = request(&node, "DELETE", "/api/v1/repos/alice/demo", &auth, b"");
    assert_eq!(resp.status, 401, "{}", resp.text());
    assert!(resp.text().contains("delegates signed"), "{}", resp.text());
    assert_eq!(snapshot(&node, "alice", "demo"), before, "nothing changed");

    // The owner's signed settings change works once; its replay does not.
    let action = "settings deny_non_fast_forwards=true";
    let auth = signed_action(&node, test_identity(), "alice", "demo", action);
    let resp = request(&node, "PATCH", "/api/v1/repos/alice/demo", &auth, patch);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        node.repo_info("alice", "demo")["deny_non_fast_forwards"],
        true
    );
    let off = br#"{"deny_non_fast_forwards": false}"#;
    let resp = request(&node, "PATCH", "/api/v1/repos/alice/demo", &auth, off);
    assert_eq!(
        resp.status,
        401,
        "signed for another change: {}",
        resp.text()
    );
    let resp = request(&node, "PATCH", "/api/v1/repos/alice/demo", &auth, patch);
    assert_eq!(resp.status, 401, "replayed: {}", resp.text());
    assert!(resp.text().contains("already used"), "{}", resp.text());
    // The operator may.
    let resp = node.patch_json(
        "/api/v1/repos/alice/demo",
        &serde_json::json!({"deny_non_fast_forwards": false}),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[test]
fn a_deleted_repositorys_alias_is_not_free_for_others() {
    let tmp = TempDir::new().expect("tmp");
    let (node, _work) = node_with_repo(tmp.path(), &[]);
    let resp = node.delete("/api/v1/repos/alice/demo");
    assert_eq!(resp.status, 204, "{}", resp.text());
    // The attacker declares the freed alias for a repository of their own.
    let mallory = TestIdentity::from_seed("mallory", 0x6d);
    let doc = genesis_document(&mallory, "demo", &["alice"]);
    let resp = node.post_json("/api/v1/repos", &serde_json::json!({ "document": doc }));
    assert_eq!(resp.status, 409, "{}", resp.text());
    assert!(resp.text().contains("grace period"), "{}", resp.text());
    assert_eq!(node.get("/api/v1/repos/alice/demo").status, 404);
    // Its owner may take it back.
    node.create_repo("alice", "demo");
}

#[test]
fn a_replayed_push_certificate_is_refused() {
    let tmp = TempDir::new().expect("tmp");
    let (node, work) = node_with_repo(tmp.path(), &[]);
    let head = rev_parse(&work, "HEAD");
    let first = rev_parse(&work, "HEAD~1");
    // The owner force-pushes main back; the attacker replays the certificate
    // of the push that had moved it forward, with an empty pack.
    let log = node.get("/api/v1/repos/alice/demo/updates").json();
    let cert = log
        .as_array()
        .and_then(|l| l.last())
        .and_then(|u| u["certificate"].as_str())
        .expect("certificate")
        .to_owned();
    git_ok(&work, &["reset", "-q", "--hard", &first]);
    git_ok(
        &work,
        &["push", "-q", "-f", &node.repo_url("alice", "demo"), "main"],
    );
    let before = snapshot(&node, "alice", "demo");
    let body = signed_receive_pack_body(&cert, "report-status", &empty_pack());
    let resp = node.post_service("alice", "demo", "git-receive-pack", &body);
    let text = resp.text();
    assert!(text.contains("ng refs/heads/main"), "{text}");
    assert!(
        text.contains("already used")
            || text.contains("already in the repository's log")
            || text.contains("stale"),
        "{text}"
    );
    assert_eq!(snapshot(&node, "alice", "demo"), before, "nothing changed");
    assert_ne!(node.server_refs("alice", "demo")["refs/heads/main"], head);
}

#[test]
fn a_nonce_is_accepted_once_and_the_pushee_must_name_this_node() {
    let tmp = TempDir::new().expect("tmp");
    let (node, work) = node_with_repo(tmp.path(), &[]);
    let main = rev_parse(&work, "HEAD");
    let c = commit_file(&work, "c.txt", "three\n", "third");
    let pack = pack_objects(&work, &[&c, &format!("^{main}")], false);
    let commands = [format!("{ZERO} {c} refs/heads/side")];
    let nonce = node.push_cert_nonce("alice", "demo").expect("nonce");
    // Another host whose path ends like this repository.
    let elsewhere = "http://evil.example:8080/alice/demo.git";
    let cert = push_certificate(test_identity(), elsewhere, &nonce, &commands);
    let body = signed_receive_pack_body(&cert, "report-status", &pack);
    let text = node
        .post_service("alice", "demo", "git-receive-pack", &body)
        .text();
    assert!(text.contains("does not name this node"), "{text}");
    // The same nonce with a right pushee: once, not twice.
    let cert = push_certificate(
        test_identity(),
        &node.repo_url("alice", "demo"),
        &nonce,
        &commands,
    );
    let body = signed_receive_pack_body(&cert, "report-status", &pack);
    let text = node
        .post_service("alice", "demo", "git-receive-pack", &body)
        .text();
    assert!(text.contains("ok refs/heads/side"), "{text}");
    let commands = [format!("{c} {ZERO} refs/heads/side")];
    let cert = push_certificate(
        test_identity(),
        &node.repo_url("alice", "demo"),
        &nonce,
        &commands,
    );
    let body = signed_receive_pack_body(&cert, "report-status", &[]);
    let text = node
        .post_service("alice", "demo", "git-receive-pack", &body)
        .text();
    assert!(text.contains("already used"), "{text}");
    assert_eq!(node.server_refs("alice", "demo")["refs/heads/side"], c);
}

/// `len` pseudo-random letters (incompressible enough to fill a quota).
fn letters(len: usize, seed: u64) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

#[test]
fn only_listed_dids_create_repositories_and_quotas_hold() {
    let tmp = TempDir::new().expect("tmp");
    let alice = test_identity();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(
        data.join("config.toml"),
        "[rules]\nmax_repos_per_owner = 2\nmax_repo_bytes = 60000\n",
    )
    .expect("config");
    let allow = alice.key.did().to_string();
    let node = Node::start_with(
        &data,
        &["--create-policy", "allowlist", "--create-allow", &allow],
    );
    let mallory = TestIdentity::from_seed("mallory", 0x6d);
    let doc = genesis_document(&mallory, "spam", &[]);
    let resp = node.post_json("/api/v1/repos", &serde_json::json!({ "document": doc }));
    assert_eq!(resp.status, 403, "{}", resp.text());
    assert!(resp.text().contains("may not create"), "{}", resp.text());
    node.create_repo("alice", "one");
    node.create_repo("alice", "two");
    let doc = genesis_document(alice, "three", &["alice"]);
    let resp = node.post_json("/api/v1/repos", &serde_json::json!({ "document": doc }));
    assert_eq!(
        resp.status,
        403,
        "over the repository quota: {}",
        resp.text()
    );
    assert!(resp.text().contains("2 repositories"), "{}", resp.text());

    // A push over the byte quota is refused and stores nothing.
    let work = tmp.path().join("work");
    init_work_repo(&work);
    let big = letters(50_000, 1);
    commit_file(&work, "big.txt", &big, "big");
    git_ok(
        &work,
        &["push", "-q", &node.repo_url("alice", "one"), "main"],
    );
    let before = snapshot(&node, "alice", "one");
    let more = letters(300_000, 2);
    commit_file(&work, "more.txt", &more, "more");
    let out = git_fail(
        &work,
        &["push", "-q", &node.repo_url("alice", "one"), "main"],
    );
    let err = stderr_of(&out);
    assert!(err.contains("limit of"), "{err}");
    assert_eq!(snapshot(&node, "alice", "one"), before, "nothing stored");
}

#[test]
fn a_node_low_on_disk_serves_reads_and_refuses_writes() {
    let tmp = TempDir::new().expect("tmp");
    let data = tmp.path().join("data");
    let (node, work) = node_with_repo(tmp.path(), &[]);
    drop(node);
    std::fs::write(
        data.join("config.toml"),
        format!("[rules]\nmin_free_bytes = {}\n", u64::MAX / 2),
    )
    .expect("config");
    let node = Node::start_in(&data);
    clone_refs(&node, "alice", "demo", &tmp.path().join("clone.git"));
    commit_file(&work, "c.txt", "three\n", "third");
    let out = git_fail(
        &work,
        &["push", "-q", &node.repo_url("alice", "demo"), "main"],
    );
    assert!(
        stderr_of(&out).contains("low on disk space"),
        "{}",
        stderr_of(&out)
    );
    let doc = genesis_document(test_identity(), "other", &[]);
    let resp = node.post_json("/api/v1/repos", &serde_json::json!({ "document": doc }));
    assert_eq!(resp.status, 507, "{}", resp.text());
    assert!(resp.text().contains("low on disk space"), "{}", resp.text());
}

#[test]
fn listings_are_paginated() {
    let tmp = TempDir::new().expect("tmp");
    let node = Node::start_in(&tmp.path().join("data"));
    for n in ["r1", "r2", "r3", "r4", "r5"] {
        node.create_repo("alice", n);
    }
    let mut seen = Vec::new();
    let mut next = Some("/api/v1/repos?limit=2".to_owned());
    while let Some(path) = next.take() {
        let resp = node.get(&path);
        assert_eq!(resp.status, 200, "{}", resp.text());
        let page = resp.json();
        let page = page.as_array().expect("array");
        assert!(page.len() <= 2, "{page:?}");
        seen.extend(
            page.iter()
                .map(|r| r["name"].as_str().expect("name").to_owned()),
        );
        next = resp
            .header("link")
            .and_then(|l| l.strip_prefix('<'))
            .and_then(|l| l.split_once('>'))
            .map(|(p, _)| p.to_owned());
    }
    assert_eq!(seen, ["r1", "r2", "r3", "r4", "r5"]);
}

#[test]
fn the_seeding_policy_decides_what_the_node_takes_from_peers() {
    let tmp = TempDir::new().expect("tmp");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let mallory = TestIdentity::from_seed("mallory", 0x6d);
    std::fs::write(
        data.join("config.toml"),
        format!(
            "[rules]\nseed = \"allowlist\"\nseed_allow = [\"{}/wanted\"]\nblock = [\"{}\"]\n",
            test_identity().owner_id(),
            mallory.key.did()
        ),
    )
    .expect("config");
    let node = common::p2p::peer_node(&data, None, false);
    let seed = |owner: &str, name: &str| {
        node.post_json(
            &format!("/api/v1/repos/{owner}/{name}/seed"),
            &serde_json::json!({}),
        )
    };
    let resp = seed(&test_identity().owner_id(), "other");
    assert_eq!(resp.status, 403, "{}", resp.text());
    assert!(resp.text().contains("seeds only"), "{}", resp.text());
    let resp = seed(&mallory.owner_id(), "wanted");
    assert_eq!(resp.status, 403, "{}", resp.text());
    // Listed: the node tries (and finds no peer holding it).
    let resp = seed(&test_identity().owner_id(), "wanted");
    assert_eq!(resp.status, 502, "{}", resp.text());
    // A blocked owner cannot create here either.
    let doc = genesis_document(&mallory, "spam", &[]);
    let resp = node.post_json("/api/v1/repos", &serde_json::json!({ "document": doc }));
    assert_eq!(resp.status, 403, "{}", resp.text());
    assert!(resp.text().contains("blocked"), "{}", resp.text());
}

#[test]
fn one_did_is_rate_limited_and_recovers() {
    let tmp = TempDir::new().expect("tmp");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(
        data.join("config.toml"),
        "[rules]\ndid_rate_limit = 0.5\ndid_rate_burst = 2\n",
    )
    .expect("config");
    let node = Node::start_in(&data);
    node.create_repo("alice", "r1");
    node.create_repo("alice", "r2");
    let doc = genesis_document(test_identity(), "r3", &["alice"]);
    let resp = node.post_json("/api/v1/repos", &serde_json::json!({ "document": doc }));
    assert_eq!(resp.status, 429, "{}", resp.text());
    assert!(
        resp.text().contains("rate limit exceeded for did:key:"),
        "{}",
        resp.text()
    );
    let wait: u64 = resp
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    // A push by the same DID meanwhile: git shows why.
    let work = tmp.path().join("work");
    init_work_repo(&work);
    let out = git_fail(
        &work,
        &["push", "-q", &node.repo_url("alice", "r1"), "main"],
    );
    assert!(
        stderr_of(&out).contains("rate limit exceeded"),
        "{}",
        stderr_of(&out)
    );
    std::thread::sleep(std::time::Duration::from_secs(wait + 1));
    let resp = node.post_json("/api/v1/repos", &serde_json::json!({ "document": doc }));
    assert_eq!(resp.status, 201, "after Retry-After: {}", resp.text());
}

/// A node whose `repos/` is a small tmpfs (in a user and mount namespace of
/// its own): a push larger than the free space fills the disk.
#[test]
fn a_full_disk_is_reported_as_such_and_changes_nothing() {
    let probe = std::process::Command::new("unshare")
        .args(["-Urm", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("SKIP: unshare -Urm is not available here (no user namespaces)");
        return;
    }
    let tmp = TempDir::new().expect("tmp");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("repos")).expect("data dir");
    std::fs::write(data.join("config.toml"), "[rules]\nmin_free_bytes = 0\n").expect("config");
    let script = "mount -t tmpfs -o size=3m tmpfs \"$0/repos\" && exec \"$@\"";
    let data_str = data.to_str().expect("utf-8");
    let node = Node::start_under(
        &data,
        &["unshare", "-Urm", "sh", "-c", script, data_str],
        &[],
    );
    node.create_repo("alice", "demo");
    let work = tmp.path().join("work");
    init_work_repo(&work);
    git_ok(
        &work,
        &["push", "-q", &node.repo_url("alice", "demo"), "main"],
    );
    let before = snapshot(&node, "alice", "demo");
    commit_file(
        &work,
        "big.txt",
        &letters(6_000_000, 3),
        "too big for the disk",
    );
    let out = git_fail(
        &work,
        &["push", "-q", &node.repo_url("alice", "demo"), "main"],
    );
    let err = stderr_of(&out);
    assert!(err.contains("disk is full"), "{err}");
    assert!(!err.contains("invalid pack"), "{err}");
    assert_eq!(snapshot(&node, "alice", "demo"), before, "nothing changed");
    // Reads go on.
    clone_refs(&node, "alice", "demo", &tmp.path().join("clone.git"));
}

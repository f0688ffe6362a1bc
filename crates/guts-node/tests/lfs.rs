//! Git LFS on the node (ADR 0022), with the real git-lfs client: objects
//! of 1 KB, 10 MB and 200 MB go up with a push token through git's
//! credential helper beside a signed push, come back byte for byte in
//! clones by URLs with and without `.git`, within a bounded node memory;
//! corrupt and unauthorized uploads leave nothing; locks work with
//! `git lfs lock`, `locks`, `locks --verify` and `unlock`.

mod common;

use std::fs;
use std::path::Path;

use common::lfs::*;
use common::*;
use tempfile::TempDir;

const SMALL: u64 = 1024;
const MID: u64 = 10 * 1024 * 1024;
const BIG: u64 = 200 * 1024 * 1024;
/// Most the node's peak RSS may rise over its idle RSS while moving BIG.
const RSS_HEADROOM_KIB: u64 = 64 * 1024;

fn skip() -> bool {
    if git_lfs_available() {
        return false;
    }
    println!("SKIP lfs: git-lfs is not installed (Debian package git-lfs)");
    true
}

/// A credential helper (host-wide, in `dir`'s config) answering `token`.
fn use_token(dir: &Path, node: &Node, token: &str) {
    let helper = format!("!f() {{ echo username=guts; echo password={token}; }}; f");
    git_ok(
        dir,
        &[
            "config",
            &format!("credential.{}.helper", node.url()),
            &helper,
        ],
    );
}

/// The clone filters of `git lfs install`, for `git clone -c`.
const LFS_FILTERS: [&str; 8] = [
    "-c",
    "filter.lfs.process=git-lfs filter-process",
    "-c",
    "filter.lfs.required=true",
    "-c",
    "filter.lfs.clean=git-lfs clean -- %f",
    "-c",
    "filter.lfs.smudge=git-lfs smudge -- %f",
];

fn clone_with_lfs(parent: &Path, url: &str, dest: &str, extra: &[&str]) {
    let mut args: Vec<&str> = LFS_FILTERS.to_vec();
    args.extend(extra);
    args.extend(["clone", "-q", url, dest]);
    git_ok(parent, &args);
}

fn metric(node: &Node, name: &str) -> u64 {
    let text = node.get("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[test]
fn lfs_objects_go_up_and_come_back_whole_with_git_lfs() {
    if skip() {
        return;
    }
    let tmp = TempDir::new().expect("tmp");
    let node = Node::start();
    node.create_repo("alice", "demo");
    let owner = test_identity().owner_id();
    let url = node.repo_url(&owner, "demo");
    let token = new_token(&node, &format!("{owner}/demo"));

    let work = tmp.path().join("work");
    init_work_repo(&work);
    git_ok(&work, &["lfs", "install", "--local"]);
    git_ok(&work, &["lfs", "track", "*.bin"]);
    let files = [
        ("small.bin", SMALL, 1),
        ("mid.bin", MID, 2),
        ("big.bin", BIG, 3),
    ];
    for (name, len, seed) in files {
        fs::hard_link(fixture_file(len, seed), work.join(name)).expect("link fixture");
    }
    git_ok(
        &work,
        &["add", ".gitattributes", "small.bin", "mid.bin", "big.bin"],
    );
    git_ok(&work, &["commit", "-q", "-m", "large files"]);
    use_token(&work, &node, &token);

    let pid = node_pid(&node);
    assert_eq!(node.get("/api/v1/health").status, 200);
    let idle = vm_kib(pid, "VmRSS");
    // A signed push; git-lfs's pre-push hook uploads the objects first,
    // asked for credentials (401) and given the token by the helper.
    git_ok(&work, &["push", "-q", &url, "main"]);
    // The refs went up signed by the owner's key, not with the token.
    let updates = common::p2p::updates(&node, &owner, "demo");
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert_eq!(updates[0]["signer"], test_identity().key.did().to_string());
    assert!(updates[0]["grant"].is_null(), "{updates:?}");
    assert_eq!(lfs_tmp_files(&node), 0);

    // Clone by the URL with `.git`: the smudge filter downloads all three.
    clone_with_lfs(tmp.path(), &url, "clone", &[]);
    let clone = tmp.path().join("clone");
    for (name, _, _) in files {
        assert!(
            same_contents(&work.join(name), &clone.join(name)),
            "{name} differs"
        );
    }
    let fsck = git_ok(&clone, &["lfs", "fsck"]);
    assert!(fsck.contains("Git LFS fsck OK"), "{fsck}");
    let peak = vm_kib(pid, "VmHWM");
    println!("node RSS idle {idle} KiB, peak {peak} KiB while moving {BIG} bytes");
    assert!(
        peak < idle + RSS_HEADROOM_KIB,
        "peak RSS {peak} KiB is over idle {idle} KiB + {RSS_HEADROOM_KIB} KiB"
    );

    // Clone by the URL without `.git`: git-lfs derives the same endpoint.
    let plain = format!("{}/{owner}/demo", node.url());
    clone_with_lfs(
        tmp.path(),
        &plain,
        "plain",
        &["-c", "lfs.fetchinclude=small.bin,mid.bin"],
    );
    let plain_dir = tmp.path().join("plain");
    for name in ["small.bin", "mid.bin"] {
        assert!(
            same_contents(&work.join(name), &plain_dir.join(name)),
            "{name} differs"
        );
    }
    let pointer = fs::read_to_string(plain_dir.join("big.bin")).expect("pointer");
    assert!(
        pointer.starts_with("version https://git-lfs.github.com/spec/v1"),
        "{pointer}"
    );

    let total = SMALL + MID + BIG;
    assert_eq!(metric(&node, "guts_lfs_uploaded_bytes_total"), total);
    assert!(metric(&node, "guts_lfs_downloaded_bytes_total") >= total + SMALL + MID);
}

fn lfs_path(owner: &str, name: &str, rest: &str) -> String {
    format!("/{owner}/{name}.git/info/lfs/{rest}")
}

fn batch(node: &Node, path: &str, auth: Option<&str>, body: &serde_json::Value) -> HttpResponse {
    let mut headers = vec![
        ("Accept", "application/vnd.git-lfs+json"),
        ("Content-Type", "application/vnd.git-lfs+json"),
    ];
    if let Some(a) = auth {
        headers.push(("Authorization", a));
    }
    http_request(
        node.addr(),
        "POST",
        path,
        &headers,
        body.to_string().as_bytes(),
    )
}

fn put(node: &Node, path: &str, auth: Option<&str>, body: &[u8]) -> HttpResponse {
    let mut headers = vec![("Content-Type", "application/octet-stream")];
    if let Some(a) = auth {
        headers.push(("Authorization", a));
    }
    http_request(node.addr(), "PUT", path, &headers, body)
}

#[test]
fn corrupt_and_unauthorized_uploads_leave_nothing() {
    let node = Node::start();
    node.create_repo("alice", "demo");
    node.create_repo("alice", "other");
    let owner = test_identity().owner_id();
    let demo = format!("Bearer {}", new_token(&node, &format!("{owner}/demo")));
    let other = format!("Bearer {}", new_token(&node, &format!("{owner}/other")));
    let data = Rng(7).noise(100_000);
    let oid = oid_of(&data);
    let object = lfs_path(&owner, "demo", &format!("objects/{oid}"));
    let gone = |what: &str| {
        let resp = node.get(&object);
        assert_eq!(resp.status, 404, "{what}: {}", resp.text());
        assert_eq!(lfs_tmp_files(&node), 0, "{what}: a temporary file remains");
    };

    // A body that does not hash to the object id.
    let mut corrupt = data.clone();
    corrupt[500] ^= 1;
    let resp = put(&node, &object, Some(&demo), &corrupt);
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(resp.json()["message"]
        .as_str()
        .is_some_and(|m| m.contains("does not match")));
    gone("corrupt upload");
    // A body shorter than it says is refused too (the Content-Length is the size).
    // No credentials: a Basic challenge, so git-lfs asks the credential helper.
    let resp = put(&node, &object, None, &data);
    assert_eq!(resp.status, 401, "{}", resp.text());
    assert!(resp
        .header("www-authenticate")
        .is_some_and(|h| h.starts_with("Basic ")));
    assert!(resp
        .header("lfs-authenticate")
        .is_some_and(|h| h.starts_with("Basic ")));
    assert_eq!(
        resp.header("content-type"),
        Some("application/vnd.git-lfs+json")
    );
    gone("upload without a token");
    // A token for another repository.
    let resp = put(&node, &object, Some(&other), &data);
    assert_eq!(resp.status, 401, "{}", resp.text());
    gone("upload with another repository's token");
    // Neither a batch upload.
    let req = serde_json::json!({ "operation": "upload", "transfers": ["basic"],
        "objects": [{ "oid": oid, "size": data.len() }] });
    let batch_path = lfs_path(&owner, "demo", "objects/batch");
    assert_eq!(batch(&node, &batch_path, None, &req).status, 401);
    assert_eq!(batch(&node, &batch_path, Some(&other), &req).status, 401);

    // The batch answer: links back to this node, a verify action, per-object errors.
    let req = serde_json::json!({ "operation": "upload", "transfers": ["basic"], "objects": [
        { "oid": oid, "size": data.len() },
        { "oid": "NOT-AN-OID", "size": 1 },
        { "oid": oid_of(b"x"), "size": -1 },
        { "oid": oid_of(b"huge"), "size": 1u64 << 60 },
    ] });
    let resp = batch(&node, &batch_path, Some(&demo), &req);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let objects = resp.json()["objects"].clone();
    let upload = &objects[0]["actions"]["upload"];
    let base = format!("http://{}/{owner}/demo.git/info/lfs", node.addr());
    assert_eq!(upload["href"], format!("{base}/objects/{oid}"));
    assert_eq!(
        objects[0]["actions"]["verify"]["href"],
        format!("{base}/verify")
    );
    assert_eq!(objects[1]["error"]["code"], 422);
    assert_eq!(objects[2]["error"]["code"], 422);
    assert_eq!(objects[3]["error"]["code"], 413);
    // Too many objects, or too large a body: refused whole.
    let many: Vec<_> = (0..1001)
        .map(|_| serde_json::json!({ "oid": oid, "size": 1 }))
        .collect();
    let resp = batch(
        &node,
        &batch_path,
        Some(&demo),
        &serde_json::json!({ "operation": "download", "objects": many }),
    );
    assert_eq!(resp.status, 413, "{}", resp.text());
    gone("refused batches");

    // The real upload, then the object is there for this repository only.
    let resp = put(&node, &object, Some(&demo), &data);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let resp = node.get(&object);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, data);
    let tail = http_request(
        node.addr(),
        "GET",
        &object,
        &[("Range", "bytes=99000-")],
        b"",
    );
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, data[99_000..]);
    assert_eq!(
        tail.header("content-range"),
        Some("bytes 99000-99999/100000")
    );
    let elsewhere = lfs_path(&owner, "other", &format!("objects/{oid}"));
    assert_eq!(node.get(&elsewhere).status, 404);
    // Through the owner's alias and the download batch.
    let req = serde_json::json!({ "operation": "download", "objects": [
        { "oid": oid, "size": data.len() }, { "oid": oid_of(b"absent"), "size": 6 } ] });
    let resp = batch(
        &node,
        &lfs_path("alice", "demo", "objects/batch"),
        None,
        &req,
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let objects = resp.json()["objects"].clone();
    assert_eq!(
        objects[0]["actions"]["download"]["href"],
        format!("{base}/objects/{oid}")
    );
    assert_eq!(objects[1]["error"]["code"], 404);
    let resp = batch(
        &node,
        &lfs_path(&owner, "other", "objects/batch"),
        None,
        &req,
    );
    assert_eq!(resp.json()["objects"][0]["error"]["code"], 404);
    // verify: the right size passes, a wrong one does not.
    let verify = lfs_path(&owner, "demo", "verify");
    let ok = serde_json::json!({ "oid": oid, "size": data.len() });
    let headers = [("Authorization", demo.as_str())];
    let post = |body: &serde_json::Value| {
        http_request(
            node.addr(),
            "POST",
            &verify,
            &headers,
            body.to_string().as_bytes(),
        )
    };
    assert_eq!(post(&ok).status, 200);
    assert_eq!(
        post(&serde_json::json!({ "oid": oid, "size": 5 })).status,
        400
    );
}

#[test]
fn locks_with_git_lfs() {
    if skip() {
        return;
    }
    let tmp = TempDir::new().expect("tmp");
    let node = Node::start();
    node.create_repo("alice", "demo");
    let owner = test_identity().owner_id();
    let url = node.repo_url(&owner, "demo");
    let work = tmp.path().join("work");
    init_work_repo(&work);
    commit_file(&work, "a.psd", "a\n", "a");
    git_ok(&work, &["push", "-q", &url, "main"]);
    git_ok(&work, &["remote", "add", "origin", &url]);
    // User 1 stores a token with `guts-node token save` (its helper serves
    // git-lfs's `.../info/lfs` too); user 2 has another.
    let creds = tmp.path().join("creds").display().to_string();
    let token1 = new_token(&node, &format!("{owner}/demo"));
    let work_s = work.display().to_string();
    cli_ok(
        &node,
        &[
            "token",
            "save",
            &url,
            &token1,
            "--repo",
            &work_s,
            "--data-dir",
            &creds,
        ],
    );
    git_ok(tmp.path(), &["clone", "-q", &url, "other"]);
    let other = tmp.path().join("other");
    use_token(&other, &node, &new_token(&node, &format!("{owner}/demo")));

    let out = git_ok(&work, &["lfs", "lock", "a.psd"]);
    assert!(out.contains("Locked a.psd"), "{out}");
    let listed = git_ok(&other, &["lfs", "locks"]);
    assert!(listed.contains("a.psd"), "{listed}");
    let ours = git_ok(&work, &["lfs", "locks", "--verify", "--json"]);
    let theirs = git_ok(&other, &["lfs", "locks", "--verify", "--json"]);
    let ours: serde_json::Value = serde_json::from_str(&ours).expect("json");
    let theirs: serde_json::Value = serde_json::from_str(&theirs).expect("json");
    assert_eq!(ours["ours"][0]["path"], "a.psd", "{ours}");
    assert_eq!(ours["theirs"].as_array().map(Vec::len), Some(0), "{ours}");
    assert_eq!(theirs["ours"].as_array().map(Vec::len), Some(0), "{theirs}");
    assert_eq!(theirs["theirs"][0], ours["ours"][0], "{theirs}");
    let holder = ours["ours"][0]["owner"]["name"]
        .as_str()
        .unwrap_or_default();
    assert!(holder.starts_with("did:key:z6Mk"), "{ours}");
    let raw = node.get(&lfs_path(&owner, "demo", "locks")).json();
    assert_eq!(raw["locks"].as_array().map(Vec::len), Some(1), "{raw}");
    // The other user can neither take nor release it, even with --force.
    assert!(!git(&other, &["lfs", "lock", "a.psd"]).status.success());
    assert!(!git(&other, &["lfs", "unlock", "a.psd"]).status.success());
    assert!(!git(&other, &["lfs", "unlock", "--force", "a.psd"])
        .status
        .success());
    assert_eq!(
        node.get(&lfs_path(&owner, "demo", "locks")).json()["locks"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    // The operator can, with --force.
    let op = format!(
        "http.extraHeader=Authorization: Bearer {}",
        node.operator_token()
    );
    let out = git_ok(&other, &["-c", &op, "lfs", "unlock", "--force", "a.psd"]);
    assert!(out.contains("Unlocked a.psd"), "{out}");
    // Its holder releases its own.
    git_ok(&work, &["lfs", "lock", "a.psd"]);
    let out = git_ok(&work, &["lfs", "unlock", "a.psd"]);
    assert!(out.contains("Unlocked a.psd"), "{out}");
    let left = node.get(&lfs_path(&owner, "demo", "locks")).json();
    assert_eq!(left["locks"].as_array().map(Vec::len), Some(0), "{left}");
}

#[test]
fn a_stalled_upload_is_dropped_and_leaves_nothing() {
    use std::io::{Read, Write};
    let data = TempDir::new().expect("tmp");
    let node = Node::start_with(
        data.path(),
        &["--min-transfer-rate", "100000", "--min-rate-window", "1"],
    );
    node.create_repo("alice", "demo");
    let owner = test_identity().owner_id();
    let token = new_token(&node, &format!("{owner}/demo"));
    let body = Rng(9).noise(4 << 20);
    let path = lfs_path(&owner, "demo", &format!("objects/{}", oid_of(&body)));
    let mut stream = std::net::TcpStream::connect(node.addr()).expect("connect");
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        node.addr(),
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("send head");
    // A quarter of a MiB, then nothing: the node must give up on it.
    stream.write_all(&body[..256 * 1024]).expect("send start");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .expect("timeout");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(lfs_tmp_files(&node), 0);
    assert_eq!(node.get(&path).status, 404);
}

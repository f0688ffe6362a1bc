//! Robustness end-to-end tests: a node killed mid-push, size limits, gzip
//! request bodies, long negotiations and requests the node must refuse.

mod common;

use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use tempfile::TempDir;

const ZERO_ID: &str = "0000000000000000000000000000000000000000";

/// Deterministic, incompressible bytes (so packs are as large as the data).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn commit_bytes(dir: &Path, name: &str, content: &[u8], msg: &str) -> String {
    fs::write(dir.join(name), content).expect("write file");
    git_ok(dir, &["add", "--", name]);
    git_ok(dir, &["commit", "-q", "-m", msg]);
    rev_parse(dir, "HEAD")
}

fn incoming_dirs(objects: &Path) -> Vec<String> {
    fs::read_dir(objects)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("incoming-"))
                .collect()
        })
        .unwrap_or_default()
}

/// `objects/` of the test identity's repository `name` in a node's data
/// dir: repositories live under their canonical owner (the DID method id
/// `z6Mk...`), never under an alias such as `alice`.
fn repo_objects_dir(data: &Path, name: &str) -> PathBuf {
    let owner = test_identity().owner_id();
    let objects = data.join(format!("repos/{owner}/{name}.git/objects"));
    assert!(objects.is_dir(), "{} does not exist", objects.display());
    assert!(
        !data.join("repos/alice").exists(),
        "a repository was stored under its alias"
    );
    objects
}

fn pack_files(objects: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(objects.join("pack"))
        .expect("pack dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn killed_mid_push_leaves_repo_unchanged() {
    let tmp = TempDir::new().expect("tmp");
    let data = tmp.path().join("data");
    let mut node = Node::start_in(&data);
    node.create_repo("alice", "demo");
    let work = tmp.path().join("work");
    let c0 = init_work_repo(&work);
    git_ok(
        &work,
        &["push", "-q", &node.repo_url("alice", "demo"), "main"],
    );
    let objects = repo_objects_dir(&data, "demo");
    let packs_before = pack_files(&objects);
    let refs_before = node.server_refs("alice", "demo");

    // A commit with 8 MiB of incompressible data, sent only half-way. The
    // push is signed (as git would sign it) so that the node authorizes it
    // and starts receiving the pack: an unsigned one is refused before that.
    let c1 = commit_bytes(&work, "blob.bin", &noise(8 << 20, 1), "big");
    let pack = pack_objects(&work, &[&c1, &format!("^{c0}")], false);
    let commands = [format!("{c0} {c1} refs/heads/main")];
    let nonce = node
        .push_cert_nonce("alice", "demo")
        .expect("receive-pack advertises a push-cert nonce");
    let cert = push_certificate(
        test_identity(),
        &node.repo_url("alice", "demo"),
        &nonce,
        &commands,
    );
    let body = signed_receive_pack_body(&cert, "report-status side-band-64k", &pack);
    let mut stream = TcpStream::connect(node.addr()).expect("connect");
    write!(
        stream,
        "POST /alice/demo.git/git-receive-pack HTTP/1.1\r\nHost: {}\r\n\
         Content-Type: application/x-git-receive-pack-request\r\n\
         Content-Length: {}\r\n\r\n",
        node.addr(),
        body.len()
    )
    .expect("send head");
    stream
        .write_all(&body[..body.len() / 2])
        .expect("send half");
    stream.flush().expect("flush");

    // Wait until the node is demonstrably in the middle of receiving the pack.
    let deadline = Instant::now() + Duration::from_secs(30);
    while incoming_dirs(&objects).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no quarantine appeared; log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    node.stop(); // SIGKILL
    drop(stream);

    let node = Node::start_in(&data);
    assert_eq!(
        node.server_refs("alice", "demo"),
        refs_before,
        "refs changed"
    );
    assert!(incoming_dirs(&objects).is_empty(), "quarantine left behind");
    assert_eq!(
        pack_files(&objects),
        packs_before,
        "a partial pack was published"
    );

    // The same push now succeeds and the result is a consistent repository.
    git_ok(
        &work,
        &["push", "-q", &node.repo_url("alice", "demo"), "main"],
    );
    assert_eq!(node.server_refs("alice", "demo")["refs/heads/main"], c1);
    let clone = tmp.path().join("clone.git");
    git_ok(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--bare",
            &node.repo_url("alice", "demo"),
            &path_of(&clone),
        ],
    );
    assert_fsck(&clone);
    assert_eq!(rev_parse(&clone, "refs/heads/main"), c1);
}

fn path_of(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

#[test]
fn oversized_push_is_refused_and_leaves_nothing() {
    let tmp = TempDir::new().expect("tmp");
    let data = tmp.path().join("data");
    let node = Node::start_with(&data, &["--max-pack-bytes", "65536"]);
    node.create_repo("alice", "demo");
    let work = tmp.path().join("work");
    init_work_repo(&work);
    let url = node.repo_url("alice", "demo");
    git_ok(&work, &["push", "-q", &url, "main"]);
    let before = node.server_refs("alice", "demo");
    let objects = repo_objects_dir(&data, "demo");
    let packs_before = pack_files(&objects);

    commit_bytes(&work, "big.bin", &noise(512 * 1024, 2), "too big");
    let out = git_fail(&work, &["push", &url, "main"]);
    let err = stderr_of(&out);
    assert!(err.contains("limit"), "no size limit message: {err}");
    assert_eq!(node.server_refs("alice", "demo"), before);
    assert_eq!(pack_files(&objects), packs_before);
    assert!(incoming_dirs(&objects).is_empty(), "quarantine left behind");

    // Within the limit, pushes keep working.
    git_ok(&work, &["reset", "-q", "--hard", "HEAD~1"]);
    let small = commit_file(&work, "small.txt", "small\n", "small");
    git_ok(&work, &["push", "-q", &url, "main"]);
    assert_eq!(node.server_refs("alice", "demo")["refs/heads/main"], small);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

#[test]
fn gzip_request_bodies_are_accepted() {
    let tmp = TempDir::new().expect("tmp");
    let node = Node::start();
    node.create_repo("alice", "demo");
    let work = tmp.path().join("work");
    let c0 = init_work_repo(&work);
    git_ok(
        &work,
        &["push", "-q", &node.repo_url("alice", "demo"), "main"],
    );

    // v2 ls-refs, gzipped.
    let mut body = pkt(b"command=ls-refs\n");
    body.extend(pkt(b"object-format=sha1\n"));
    body.extend(b"0001");
    body.extend(pkt(b"ref-prefix refs/heads/\n"));
    body.extend(b"0000");
    let resp = http_request(
        node.addr(),
        "POST",
        "/alice/demo.git/git-upload-pack",
        &[
            ("Content-Type", "application/x-git-upload-pack-request"),
            ("Content-Encoding", "gzip"),
            ("Git-Protocol", "version=2"),
        ],
        &gzip(&body),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(
        resp.text().contains(&format!("{c0} refs/heads/main")),
        "ls-refs: {}",
        resp.text()
    );

    // v0 fetch request, gzipped: the response carries a pack.
    let mut body = pkt(format!("want {c0} ofs-delta side-band-64k\n").as_bytes());
    body.extend(b"0000");
    body.extend(pkt(b"done\n"));
    let resp = http_request(
        node.addr(),
        "POST",
        "/alice/demo.git/git-upload-pack",
        &[
            ("Content-Type", "application/x-git-upload-pack-request"),
            ("Content-Encoding", "gzip"),
        ],
        &gzip(&body),
    );
    assert_eq!(resp.status, 200);
    assert!(resp.body.starts_with(b"0008NAK\n"), "{:?}", resp.text());
    assert!(
        resp.body.windows(4).any(|w| w == b"PACK"),
        "no pack in response"
    );

    // A body that claims gzip but is not is refused with an error, not a hang.
    let resp = http_request(
        node.addr(),
        "POST",
        "/alice/demo.git/git-upload-pack",
        &[
            ("Content-Type", "application/x-git-upload-pack-request"),
            ("Content-Encoding", "gzip"),
        ],
        &body,
    );
    assert!(
        resp.status >= 400 || resp.text().contains("ERR"),
        "garbage gzip accepted: {} {}",
        resp.status,
        resp.text()
    );
}

#[test]
fn fetch_negotiates_past_many_unknown_haves() {
    let tmp = TempDir::new().expect("tmp");
    let node = Node::start();
    node.create_repo("alice", "demo");
    let url = node.repo_url("alice", "demo");
    let a = tmp.path().join("a");
    init_work_repo(&a);
    for i in 0..20 {
        commit_file(&a, "f.txt", &format!("{i}\n"), &format!("shared {i}"));
    }
    git_ok(&a, &["push", "-q", &url, "main"]);

    for v in ["0", "2"] {
        // A clone far ahead: 300 local commits the server has never seen.
        let b = tmp.path().join(format!("b{v}"));
        git_ok(tmp.path(), &["clone", "-q", &url, &path_of(&b)]);
        git_ok(&b, &["checkout", "-q", "-b", "local"]);
        for i in 0..300 {
            commit_file(&b, "local.txt", &format!("{i}\n"), &format!("local {i}"));
        }
        // Meanwhile the server moves on.
        let new = commit_file(&a, "g.txt", &format!("v{v}\n"), "server side");
        git_ok(&a, &["push", "-q", &url, "main"]);

        let proto = format!("protocol.version={v}");
        git_ok(&b, &["-c", &proto, "fetch", "-q", "origin"]);
        assert_eq!(rev_parse(&b, "refs/remotes/origin/main"), new, "v{v}");
        assert_fsck(&b);
    }
}

#[test]
fn refuses_what_it_cannot_serve() {
    let tmp = TempDir::new().expect("tmp");
    let node = Node::start();
    node.create_repo("alice", "demo");
    let work = tmp.path().join("work");
    let c0 = init_work_repo(&work);
    git_ok(
        &work,
        &["push", "-q", &node.repo_url("alice", "demo"), "main"],
    );

    // Cloning a repository that does not exist: 404 and a hint.
    let out = git_fail(tmp.path(), &["clone", &node.repo_url("alice", "nope"), "x"]);
    let err = stderr_of(&out);
    assert!(
        err.contains("not found") || err.contains("does not exist"),
        "{err}"
    );

    // Dumb HTTP is refused with an explanation.
    let resp = node.get("/alice/demo.git/info/refs");
    assert_eq!(resp.status, 403);
    assert!(resp.text().contains("smart HTTP"), "{}", resp.text());

    // A want that no ref advertises.
    let unknown = "1234567890123456789012345678901234567890";
    let mut body = pkt(format!("want {unknown} ofs-delta side-band-64k\n").as_bytes());
    body.extend(b"0000");
    body.extend(pkt(b"done\n"));
    let resp = node.post_service("alice", "demo", "git-upload-pack", &body);
    assert!(resp.text().contains("ERR"), "{}", resp.text());
    assert!(resp.text().contains("not our ref"), "{}", resp.text());

    // An unknown filter spec gets a clear error in every protocol version.
    for v in ["0", "2"] {
        let proto = format!("protocol.version={v}");
        let dest = format!("sparse{v}");
        let url = node.repo_url("alice", "demo");
        let args = ["-c", proto.as_str(), "clone", "--filter=sparse:oid=main:x"];
        let out = git_fail(
            tmp.path(),
            &[&args[..], &[url.as_str(), dest.as_str()]].concat(),
        );
        let err = stderr_of(&out);
        assert!(err.contains("invalid filter-spec"), "v{v}: {err}");
    }

    // Wrong content type.
    let resp = http_request(
        node.addr(),
        "POST",
        "/alice/demo.git/git-upload-pack",
        &[("Content-Type", "text/plain")],
        b"0000",
    );
    assert_eq!(resp.status, 415);

    // A push command line that is not "<old> <new> <ref>".
    let mut body = pkt(b"garbage\0report-status\n");
    body.extend(b"0000");
    let resp = node.post_service("alice", "demo", "git-receive-pack", &body);
    assert!(resp.text().contains("ERR"), "{}", resp.text());
    assert_eq!(node.server_refs("alice", "demo")["refs/heads/main"], c0);

    // A delete of a ref that does not exist changes nothing and is reported.
    let resp = node.receive_pack(
        "alice",
        "demo",
        &[format!("{c0} {ZERO_ID} refs/heads/ghost")],
        "report-status delete-refs",
        &[],
    );
    assert!(
        resp.text().contains("ng refs/heads/ghost"),
        "{}",
        resp.text()
    );
}

#[test]
fn push_from_a_shallow_clone() {
    let tmp = TempDir::new().expect("tmp");
    let node = Node::start();
    node.create_repo("alice", "demo");
    node.create_repo("alice", "other");
    let url = node.repo_url("alice", "demo");
    let work = tmp.path().join("work");
    init_work_repo(&work);
    commit_file(&work, "b.txt", "b\n", "second");
    git_ok(&work, &["push", "-q", &url, "main"]);

    // The server has the history below the shallow boundary: accepted.
    let shallow = tmp.path().join("shallow");
    let src = format!("file://{}", path_of(&work));
    git_ok(
        tmp.path(),
        &["clone", "-q", "--depth", "1", &src, &path_of(&shallow)],
    );
    let c = commit_file(&shallow, "c.txt", "c\n", "from shallow");
    git_ok(
        &shallow,
        &["push", "-q", &url, "HEAD:refs/heads/from-shallow"],
    );
    assert_eq!(
        node.server_refs("alice", "demo")["refs/heads/from-shallow"],
        c
    );

    // A repository without that history refuses, says why, and stays empty.
    let other = node.repo_url("alice", "other");
    let out = git_fail(&shallow, &["push", &other, "HEAD:refs/heads/main"]);
    let err = stderr_of(&out);
    assert!(err.contains("shallow clone"), "{err}");
    assert!(err.contains("--unshallow"), "{err}");
    assert!(node.server_refs("alice", "other").is_empty());
}

#[test]
fn pack_header_claiming_billions_of_objects_is_refused() {
    let tmp = TempDir::new().expect("tmp");
    let node = Node::start();
    node.create_repo("alice", "demo");
    let work = tmp.path().join("work");
    let c0 = init_work_repo(&work);
    git_ok(
        &work,
        &["push", "-q", &node.repo_url("alice", "demo"), "main"],
    );
    let before = node.server_refs("alice", "demo");

    let mut pack = b"PACK".to_vec();
    pack.extend(2u32.to_be_bytes());
    pack.extend(0xffff_fff0u32.to_be_bytes());
    pack.extend([0u8; 64]);
    let resp = node.receive_pack(
        "alice",
        "demo",
        &[format!("{ZERO_ID} {c0} refs/heads/evil")],
        "report-status",
        &pack,
    );
    let text = resp.text();
    assert!(
        text.contains("unpack ") && !text.contains("unpack ok"),
        "{text}"
    );
    assert!(text.contains("ng refs/heads/evil"), "{text}");
    assert_eq!(node.server_refs("alice", "demo"), before);
    // Still alive and serving.
    assert_eq!(node.get("/api/v1/health").status, 200);
}

#[test]
fn config_file_sets_the_pack_limit() {
    let tmp = TempDir::new().expect("tmp");
    let data = tmp.path().join("data");
    fs::create_dir_all(&data).expect("mkdir");
    fs::write(data.join("config.toml"), "max_pack_bytes = 65536\n").expect("config");
    let node = Node::start_in(&data);
    node.create_repo("alice", "demo");
    let work = tmp.path().join("work");
    init_work_repo(&work);
    commit_bytes(&work, "big.bin", &noise(256 * 1024, 3), "too big");
    let out = git_fail(&work, &["push", &node.repo_url("alice", "demo"), "main"]);
    assert!(
        stderr_of(&out).contains("limit of 65536 bytes"),
        "{}",
        stderr_of(&out)
    );

    // A config file with an unknown key is an error at startup, not ignored.
    let bad = tmp.path().join("bad");
    fs::create_dir_all(&bad).expect("mkdir");
    fs::write(bad.join("config.toml"), "max_pack_byte = 1\n").expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_guts-node"))
        .args(["run", "--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&bad)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid config file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

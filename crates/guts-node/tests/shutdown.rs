//! Stopping a node the way systemd and `docker stop` do (SIGTERM): requests
//! in flight finish, a push is applied whole or not at all, the node exits
//! 0, and what it leaves is consistent when it starts again. Also the
//! `--log-format json` the service unit uses, and the flags `dist/` files
//! pass to the node.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::*;
use tempfile::TempDir;

const ZERO: &str = "0000000000000000000000000000000000000000";

/// A commit on top of `main` in `work` carrying `bytes` of incompressible
/// data, and the pack of what it adds.
fn big_commit(work: &Path, bytes: usize) -> (String, Vec<u8>) {
    let base = rev_parse(work, "HEAD");
    let mut data = Vec::with_capacity(bytes);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(work.join("big.bin"), &data).expect("write big file");
    git_ok(work, &["add", "big.bin"]);
    git_ok(work, &["commit", "-q", "-m", "a big file"]);
    let tip = rev_parse(work, "HEAD");
    let revs = format!("{tip}\n^{base}\n");
    let out = git_stdin(
        work,
        &["pack-objects", "--stdout", "--revs", "-q"],
        revs.as_bytes(),
    );
    assert!(out.status.success(), "pack-objects: {}", stderr_of(&out));
    (tip, out.stdout)
}

/// A node with `alice/demo` holding one pushed commit, and the work tree.
fn node_with_repo(tmp: &Path, extra: &[&str]) -> (Node, std::path::PathBuf) {
    let node = Node::start_with(&tmp.join("data"), extra);
    node.create_repo("alice", "demo");
    let work = tmp.join("work");
    init_work_repo(&work);
    git_ok(
        &work,
        &["push", "-q", &node.repo_url("alice", "demo"), "main"],
    );
    (node, work)
}

/// A signed push of `tip` (with `pack`) to `refs/heads/side`, opened on a
/// raw connection: the headers and the first `sent` bytes of the body are
/// written, the rest is left to the caller.
fn open_push(node: &Node, tip: &str, pack: &[u8], sent: usize) -> (TcpStream, Vec<u8>) {
    let nonce = node.push_cert_nonce("alice", "demo").expect("nonce");
    let commands = [format!("{ZERO} {tip} refs/heads/side")];
    let cert = push_certificate(
        test_identity(),
        &node.repo_url("alice", "demo"),
        &nonce,
        &commands,
    );
    let body = signed_receive_pack_body(&cert, "report-status", pack);
    let mut stream = TcpStream::connect(node.addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let head = format!(
        "POST /alice/demo.git/git-receive-pack HTTP/1.1\r\nHost: {}\r\n\
         Content-Type: application/x-git-receive-pack-request\r\n\
         Accept: application/x-git-receive-pack-result\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        node.addr(),
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("send headers");
    stream
        .write_all(&body[..sent])
        .expect("send the first part");
    stream.flush().expect("flush");
    let rest = body[sent..].to_vec();
    (stream, rest)
}

fn updates(node: &Node) -> usize {
    node.get("/api/v1/repos/alice/demo/updates")
        .json()
        .as_array()
        .expect("a list")
        .len()
}

#[test]
fn sigterm_lets_a_push_in_flight_finish_and_the_node_exits_cleanly() {
    let tmp = TempDir::new().expect("tmp");
    let (mut node, work) = node_with_repo(tmp.path(), &[]);
    let (tip, pack) = big_commit(&work, 2 << 20);
    let logged = updates(&node);
    let (mut stream, rest) = open_push(&node, &tip, &pack, pack.len() / 2);
    std::thread::sleep(Duration::from_millis(300));
    node.terminate();
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        node.is_running(),
        "the node exited with a push in flight; log:\n{}",
        node.log()
    );
    // No new connection is taken once the node is stopping.
    assert!(
        try_http_request(node.addr(), "GET", "/api/v1/health", &[], &[]).is_err(),
        "a stopping node answered a new request"
    );
    stream.write_all(&rest).expect("send the rest of the push");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read the answer");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("unpack ok"), "{text}");
    assert!(text.contains("ok refs/heads/side"), "{text}");
    let status = node.wait_exit(Duration::from_secs(30));
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        node.log()
    );
    assert!(
        node.log().contains("node stopped"),
        "no clean stop in the log:\n{}",
        node.log()
    );

    // Started again, the push is there whole: ref, log entry, objects.
    let node = Node::start_in(node.data_dir());
    assert_eq!(
        node.server_refs("alice", "demo").get("refs/heads/side"),
        Some(&tip)
    );
    assert_eq!(updates(&node), logged + 1);
    let clone = tmp.path().join("clone");
    clone_refs(&node, "alice", "demo", &clone);
    assert_fsck(&clone);
}

#[test]
fn sigterm_with_a_push_whose_client_goes_away_applies_nothing() {
    let tmp = TempDir::new().expect("tmp");
    let (mut node, work) = node_with_repo(tmp.path(), &[]);
    let (tip, pack) = big_commit(&work, 2 << 20);
    let refs = node.server_refs("alice", "demo");
    let logged = updates(&node);
    let (stream, _rest) = open_push(&node, &tip, &pack, pack.len() / 2);
    std::thread::sleep(Duration::from_millis(300));
    node.terminate();
    std::thread::sleep(Duration::from_millis(300));
    drop(stream);
    let status = node.wait_exit(Duration::from_secs(30));
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        node.log()
    );

    let data = node.data_dir().to_path_buf();
    let node = Node::start_in(&data);
    assert_eq!(node.server_refs("alice", "demo"), refs);
    assert_eq!(updates(&node), logged);
    let clone = tmp.path().join("clone");
    clone_refs(&node, "alice", "demo", &clone);
    assert_fsck(&clone);
    // The half-received pack left nothing behind in the object store.
    let leftovers: Vec<_> = walk(&data)
        .into_iter()
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.contains("incoming") || name.contains("quarantine") || name.ends_with(".tmp")
        })
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

#[test]
fn json_logs_are_one_object_per_line() {
    let tmp = TempDir::new().expect("tmp");
    let mut node = Node::start_with(&tmp.path().join("data"), &["--log-format", "json"]);
    node.create_repo("alice", "demo");
    node.terminate();
    let status = node.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
    let log = node.log();
    let mut messages = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(v.get(field).is_some(), "no {field} in {line}");
        }
        messages.push(v["message"].as_str().unwrap_or("").to_owned());
    }
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("serving git smart HTTP")),
        "{log}"
    );
    assert!(messages.iter().any(|m| m == "node stopped"), "{log}");
}

/// The service unit and the container recipe pass flags the node knows.
#[test]
fn dist_files_use_flags_the_node_has() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let unit = std::fs::read_to_string(root.join("dist/guts-node.service")).expect("unit");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let recipe = std::fs::read_to_string(root.join("dist/Containerfile")).expect("Containerfile");
    let cmd = recipe
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("CMD");
    let cmd: Vec<String> = serde_json::from_str(cmd).expect("CMD is a JSON list");
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_guts-node"))
        .args(["run", "--help"])
        .output()
        .expect("run --help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let flags = exec
        .split_whitespace()
        .chain(cmd.iter().map(String::as_str))
        .filter(|w| w.starts_with("--"));
    for flag in flags {
        assert!(help.contains(flag), "{flag} is not a `run` flag:\n{help}");
    }
    for env in unit
        .lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .chain(recipe.lines().filter_map(|l| {
            l.trim()
                .trim_start_matches("ENV ")
                .split_once('=')
                .map(|(k, _)| k)
                .filter(|k| k.starts_with("GUTS_"))
        }))
    {
        let name = env.split('=').next().unwrap_or(env);
        assert!(help.contains(name), "{name} is not read by `run`:\n{help}");
    }
    if let Ok(out) = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(root.join("dist/guts-node.service"))
        .output()
    {
        // The binary path of the unit is not installed here; anything
        // else it reports is a mistake in the unit.
        let text = String::from_utf8_lossy(&out.stderr);
        let problems: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("/usr/local/bin/guts-node"))
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert!(problems.is_empty(), "systemd-analyze verify: {problems:?}");
    } else {
        eprintln!("SKIP systemd-analyze verify: systemd-analyze is not installed");
    }
}

//! git over a WebSocket with stock git and `git-remote-guts` (ADR 0023):
//! clone, fetch and signed push through `guts://` URLs, resumed clones
//! through a proxy that cuts connections, and the endpoint's refusals.

mod common;

use std::path::Path;

use common::p2p::eventually;
use common::ws::{git_guts, git_guts_ok, Proxy};
use common::*;
use tempfile::TempDir;

fn tmpdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("guts-ws-")
        .tempdir()
        .expect("tempdir")
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn guts_url(addr: &str, owner: &str, name: &str) -> String {
    format!("guts://{addr}/{owner}/{name}")
}

/// A node holding the ripgrep fixture as `burntsushi/ripgrep`, pushed over
/// HTTP; `None` without the fixture.
fn ripgrep_node(tmp: &Path) -> Option<(Node, std::collections::BTreeMap<String, String>)> {
    let src = ripgrep_bare(&tmp.join("src.git"))?;
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
    let refs = refs_of(&src);
    Some((node, refs))
}

#[test]
fn clone_fetch_and_signed_push_over_guts_urls() {
    let tmp = tmpdir();
    let Some((node, source_refs)) = ripgrep_node(tmp.path()) else {
        return;
    };
    let guts = guts_url(node.addr(), "burntsushi", "ripgrep");

    // Clone: the same refs as over HTTP, and a sound repository.
    let bare = tmp.path().join("ws.git");
    git_guts_ok(
        tmp.path(),
        &["clone", "-q", "--bare", &guts, &path_str(&bare)],
    );
    assert_eq!(refs_of(&bare), source_refs);
    assert_fsck(&bare);
    let http_bare = tmp.path().join("http.git");
    let http_url = node.repo_url("burntsushi", "ripgrep");
    git_ok(
        tmp.path(),
        &["clone", "-q", "--bare", &http_url, &path_str(&http_bare)],
    );
    assert_eq!(refs_of(&bare), refs_of(&http_bare));

    // A commit pushed over HTTP elsewhere arrives with a guts:// fetch.
    let work = tmp.path().join("work");
    git_guts_ok(tmp.path(), &["clone", "-q", &guts, &path_str(&work)]);
    let other = tmp.path().join("other");
    git_ok(tmp.path(), &["clone", "-q", &http_url, &path_str(&other)]);
    let new_tip = commit_file(&other, "ws-note.txt", "over http\n", "a new commit");
    git_ok(&other, &["push", "-q", "origin", "HEAD:refs/heads/master"]);
    git_guts_ok(&work, &["fetch", "-q", "origin"]);
    assert_eq!(rev_parse(&work, "origin/master"), new_tip);
    assert_fsck(&work.join(".git"));

    // A signed push over guts:// lands, with its certificate logged.
    let pushed = commit_file(&work, "ws-push.txt", "over a websocket\n", "pushed over ws");
    let out = git_guts(&work, &["push", "--signed", "origin", "HEAD:refs/heads/ws"]);
    assert!(out.status.success(), "push: {}", stderr_of(&out));
    let refs = node.server_refs("burntsushi", "ripgrep");
    assert_eq!(refs.get("refs/heads/ws"), Some(&pushed));
    let log = node.get("/api/v1/repos/burntsushi/ripgrep/updates").json();
    let last = log
        .as_array()
        .and_then(|a| a.last())
        .expect("a logged update");
    let cert = last["certificate"].as_str().expect("certificate");
    assert!(cert.contains(&format!("pushee {guts}")), "{cert}");
    assert!(cert.contains(&format!("{pushed} refs/heads/ws")), "{cert}");
    assert_eq!(last["signer"], test_identity().key.did().to_string());
    // Nothing left to push: git sends a lone flush and the helper ends.
    let out = git_guts(&work, &["push", "--signed", "origin", "HEAD:refs/heads/ws"]);
    assert!(out.status.success(), "push: {}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("up-to-date"),
        "{}",
        stderr_of(&out)
    );
}

/// A clone through the proxy: git's exit status and stderr.
fn clone_through(proxy: &Proxy, dest: &Path, cwd: &Path) -> (bool, String) {
    let url = guts_url(&proxy.addr, "burntsushi", "ripgrep");
    let out = git_guts(cwd, &["clone", "-q", "--bare", &url, &path_str(dest)]);
    (out.status.success(), stderr_of(&out))
}

#[test]
fn a_clone_cut_three_times_resumes_without_resending_the_pack() {
    let tmp = tmpdir();
    let Some((node, source_refs)) = ripgrep_node(tmp.path()) else {
        return;
    };
    // The size of a whole clone, as the proxy counts it.
    let whole = Proxy::start(node.addr(), Vec::new(), None);
    let (ok, err) = clone_through(&whole, &tmp.path().join("whole.git"), tmp.path());
    assert!(ok, "{err}");
    let total = whole.down_bytes();
    assert!(total > 1_000_000, "a ripgrep clone is megabytes: {total}");

    let cuts: Vec<u64> = [30, 60, 90].iter().map(|p| total * p / 100).collect();
    let proxy = Proxy::start(node.addr(), cuts, None);
    let dest = tmp.path().join("resumed.git");
    let (ok, err) = clone_through(&proxy, &dest, tmp.path());
    assert!(ok, "{err}");
    assert_eq!(err.matches("resuming clone at").count(), 3, "{err}");
    assert_eq!(refs_of(&dest), source_refs);
    assert_fsck(&dest);
    assert_eq!(
        proxy.connections.load(std::sync::atomic::Ordering::SeqCst),
        4
    );
    // Nothing sent twice: within 5% of one clone, plus the advertisements
    // of the three new connections and the partial packets cut off.
    let sent = proxy.down_bytes();
    let slack = total / 20 + 3 * (4 * 1024 + 65_520);
    assert!(
        sent <= total + slack,
        "{sent} bytes sent for a clone of {total}"
    );
}

#[test]
fn a_resume_after_the_repository_changed_fails_cleanly() {
    let tmp = tmpdir();
    let Some((node, _)) = ripgrep_node(tmp.path()) else {
        return;
    };
    let whole = Proxy::start(node.addr(), Vec::new(), None);
    let (ok, err) = clone_through(&whole, &tmp.path().join("whole.git"), tmp.path());
    assert!(ok, "{err}");
    let total = whole.down_bytes();

    // Before the resume, master moves: the replayed fetch asks for it by
    // name (`want-ref`), so its pack has one more commit and differs from
    // its first bytes on.
    let work = tmp.path().join("mover");
    let http_url = node.repo_url("burntsushi", "ripgrep");
    git_ok(tmp.path(), &["clone", "-q", &http_url, &path_str(&work)]);
    let before: common::ws::BeforeConnect = Box::new(move |n| {
        if n == 2 {
            commit_file(&work, "moved.txt", "between attempts\n", "moved");
            git_ok(&work, &["push", "-q", &http_url, "HEAD:refs/heads/master"]);
        }
    });
    let proxy = Proxy::start(node.addr(), vec![total / 2], Some(before));
    let dest = tmp.path().join("refused.git");
    let (ok, err) = clone_through(&proxy, &dest, tmp.path());
    assert!(!ok, "the clone should fail");
    assert!(err.contains("resuming clone at"), "{err}");
    assert!(err.contains("cannot resume"), "{err}");
    assert!(err.contains("run the command again"), "{err}");
    assert!(!dest.exists(), "a failed clone leaves nothing behind");
}

#[test]
fn unknown_repositories_v0_and_oversize_messages_are_refused() {
    let tmp = tmpdir();
    let node = Node::start();
    node.create_repo("alice", "demo");

    // An unknown repository: git says why.
    let url = guts_url(node.addr(), "nobody", "nothing");
    let out = git_guts(
        tmp.path(),
        &["clone", &url, &path_str(&tmp.path().join("x"))],
    );
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("404"), "{err}");

    // A v0 upload-pack request (no Git-Protocol) is answered with ERR.
    let ws_url = format!(
        "ws://{}/alice/demo/git-ws?service=git-upload-pack",
        node.addr()
    );
    let (mut socket, _) = tokio_tungstenite::tungstenite::connect(&ws_url).expect("connect");
    let msg = socket.read().expect("a message");
    let text = String::from_utf8_lossy(&msg.into_data()).into_owned();
    assert!(
        text.contains("ERR ") && text.contains("protocol v2 only"),
        "{text}"
    );

    // A message over the limit ends the connection.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = ws_url.as_str().into_client_request().expect("request");
    req.headers_mut()
        .insert("git-protocol", "version=2".parse().expect("header"));
    let (mut socket, _) = tokio_tungstenite::tungstenite::connect(req).expect("connect");
    let advert = socket.read().expect("advertisement").into_data();
    assert!(advert.starts_with(b"000eversion 2\n"), "{advert:?}");
    let big = vec![b'0'; 2 * 1024 * 1024];
    let _ = socket.send(tokio_tungstenite::tungstenite::Message::Binary(big.into()));
    let ended = loop {
        match socket.read() {
            Ok(tokio_tungstenite::tungstenite::Message::Close(_)) | Err(_) => break true,
            Ok(_) => continue,
        }
    };
    assert!(ended);
    // The node is fine: a clone of the (empty) repository works.
    let dest = tmp.path().join("empty");
    let out = git_guts(
        tmp.path(),
        &[
            "clone",
            &guts_url(node.addr(), "alice", "demo"),
            &path_str(&dest),
        ],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));

    // Not a WebSocket request: a plain 400 that says what the URL is for.
    let resp = node.get("/alice/demo/git-ws?service=git-upload-pack");
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(resp.text().contains("git-remote-guts"), "{}", resp.text());
}

#[test]
fn a_push_with_a_token_over_a_guts_url() {
    let tmp = tmpdir();
    let node = Node::start();
    node.create_repo("alice", "demo");
    let work = tmp.path().join("work");
    let c1 = init_work_repo(&work);
    let url = guts_url(node.addr(), "alice", "demo");

    // Neither signed nor with a token: refused, nothing stored.
    let unsigned = ["-c", "push.gpgSign=false", "push", url.as_str(), "main"];
    let out = git_guts(&work, &unsigned);
    assert!(!out.status.success(), "{}", stderr_of(&out));
    assert!(node.server_refs("alice", "demo").is_empty());

    // GUTS_TOKEN goes to the node as `Authorization: Bearer`.
    let key = test_identity().key_path.display().to_string();
    let token = cli_ok(&node, &["token", "new", "alice/demo", "--key", &key])
        .trim()
        .to_owned();
    let out = common::ws::git_guts_cmd(&work)
        .env("GUTS_TOKEN", &token)
        .args(unsigned)
        .output()
        .expect("run git");
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        node.server_refs("alice", "demo").get("refs/heads/main"),
        Some(&c1)
    );
}

/// A v2 upload-pack WebSocket to `node`'s `alice/demo`, its advertisement read.
fn idle_upload_socket(
    node: &Node,
) -> tokio_tungstenite::tungstenite::WebSocket<
    tokio_tungstenite::tungstenite::stream::MaybeTlsStream<std::net::TcpStream>,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!(
        "ws://{}/alice/demo/git-ws?service=git-upload-pack",
        node.addr()
    );
    let mut req = url.as_str().into_client_request().expect("request");
    req.headers_mut()
        .insert("git-protocol", "version=2".parse().expect("header"));
    let (mut socket, _) = tokio_tungstenite::tungstenite::connect(req).expect("connect");
    let advert = socket.read().expect("advertisement").into_data();
    assert!(advert.starts_with(b"000eversion 2\n"), "{advert:?}");
    socket
}

#[test]
fn idle_websockets_hold_no_work_slot_but_count_as_connections() {
    let tmp = tmpdir();
    let node = Node::start_with(
        &tmp.path().join("data"),
        &[
            "--max-concurrent-fetches",
            "1",
            "--max-connections-per-client",
            "4",
            "--queue-timeout",
            "2",
        ],
    );
    node.create_repo("alice", "demo");
    let work = tmp.path().join("work");
    init_work_repo(&work);
    commit_file(&work, "a.txt", "a\n", "first");
    let url = node.repo_url("alice", "demo");
    git_ok(&work, &["push", "-q", &url, "main"]);

    // Two idle WebSockets after their advertisement: they hold the node's
    // only fetch slot neither of them, so a clone over HTTP gets it.
    let first = idle_upload_socket(&node);
    let second = idle_upload_socket(&node);
    let dest = tmp.path().join("clone");
    git_ok(tmp.path(), &["clone", "-q", &url, &path_str(&dest)]);
    assert_eq!(rev_parse(&dest, "HEAD"), rev_parse(&work, "HEAD"));

    // They count as connections of this client: with four open, a fifth
    // connection is refused until one of them closes.
    let third = idle_upload_socket(&node);
    let fourth = idle_upload_socket(&node);
    let refused = try_http_request(node.addr(), "GET", "/api/v1/health", &[], b"");
    match refused {
        Ok(resp) => assert_eq!(resp.status, 503, "{}", resp.text()),
        Err(e) => println!("the fourth connection was closed at once: {e}"),
    }
    drop((first, second, third, fourth));
    eventually(
        10,
        "connections are counted out when WebSockets close",
        || {
            try_http_request(node.addr(), "GET", "/api/v1/health", &[], b"")
                .is_ok_and(|r| r.status == 200)
        },
    );
}

#[test]
fn a_clone_over_guts_tls_through_a_tls_terminator() {
    let tmp = tmpdir();
    let node = Node::start();
    node.create_repo("alice", "demo");
    let work = tmp.path().join("work");
    init_work_repo(&work);
    let head = commit_file(&work, "a.txt", "over TLS\n", "first");
    git_ok(
        &work,
        &["push", "-q", &node.repo_url("alice", "demo"), "main"],
    );
    let tls = common::ws::TlsTerminator::start(node.addr());
    let cert = tmp.path().join("cert.pem");
    std::fs::write(&cert, &tls.cert_pem).expect("write cert");
    let url = format!("guts+tls://{}/alice/demo", tls.addr);
    // git runs `git-remote-guts+tls` for guts+tls:// URLs: the link the
    // user guide tells users to make.
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    std::os::unix::fs::symlink(
        common::ws::helper_dir().join("git-remote-guts"),
        bin.join("git-remote-guts+tls"),
    )
    .expect("link git-remote-guts+tls");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    // Without the certificate trusted, the helper refuses the server.
    let out = common::ws::git_guts_cmd(tmp.path())
        .args(["clone", &url, "untrusted"])
        .env("PATH", &path)
        .output()
        .expect("run git");
    assert!(
        !out.status.success(),
        "an untrusted certificate was accepted"
    );
    let err = stderr_of(&out);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(!tmp.path().join("untrusted").exists());

    // With it in SSL_CERT_FILE, the clone works.
    let out = common::ws::git_guts_cmd(tmp.path())
        .args(["clone", &url, "trusted"])
        .env("PATH", &path)
        .env("SSL_CERT_FILE", &cert)
        .output()
        .expect("run git");
    assert!(out.status.success(), "{}", stderr_of(&out));
    let dest = tmp.path().join("trusted");
    assert_eq!(rev_parse(&dest, "HEAD"), head);
    assert_eq!(
        std::fs::read_to_string(dest.join("a.txt")).expect("a.txt"),
        "over TLS\n"
    );
    assert_fsck(&dest.join(".git"));
}

//! The node against slow, greedy and abusive clients: a real node process,
//! raw TCP connections and the stock `git` client. No assertion is about
//! how long something took; limits are set low by flags so the tests end
//! quickly.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn tmpdir() -> TempDir {
    TempDir::new().expect("create temp dir")
}

/// A node on a fresh data dir with extra `run` flags (the dir outlives it).
fn start(args: &[&str]) -> (TempDir, Node) {
    let data = tmpdir();
    let node = Node::start_with(data.path(), args);
    (data, node)
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Creates `alice/demo` with one pushed commit from a work repo at `dir`;
/// returns the commit.
fn seeded_repo(node: &Node, dir: &Path) -> String {
    node.create_repo("alice", "demo");
    let tip = init_work_repo(dir);
    git_ok(
        dir,
        &["remote", "add", "origin", &node.repo_url("alice", "demo")],
    );
    git_ok(dir, &["push", "-q", "origin", "main"]);
    tip
}

/// Whether the peer closed `stream` (EOF or reset) rather than leaving it
/// open until `wait` passed. Bytes the node sends first (an error
/// response) are read and ignored.
fn closed_by_node(stream: &mut TcpStream, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream
            .set_read_timeout(Some(left))
            .expect("set read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

// ---------------------------------------------------------------------------
// 600 slow clients
// ---------------------------------------------------------------------------

/// What a slow client does after connecting.
#[derive(Clone, Copy, Debug)]
enum Slow {
    /// Sends half a request and never finishes its headers.
    Headers,
    /// Sends a git fetch request's headers, then its body a byte every 3 s.
    GitBody,
    /// Sends a REST request's headers, then its body a byte every 3 s.
    RestBody,
}

impl Slow {
    fn of(i: usize) -> Slow {
        match i % 4 {
            0 | 1 => Slow::Headers,
            2 => Slow::GitBody,
            _ => Slow::RestBody,
        }
    }

    fn opening(self) -> &'static [u8] {
        match self {
            Slow::Headers => b"POST /alice/demo.git/git-upload-pack HTTP/1.1\r\nHost: node\r\nContent-Ty",
            Slow::GitBody => b"POST /alice/demo.git/git-upload-pack HTTP/1.1\r\nHost: node\r\n\
                Content-Type: application/x-git-upload-pack-request\r\nContent-Length: 100000\r\n\r\n",
            Slow::RestBody => b"POST /api/v1/repos HTTP/1.1\r\nHost: node\r\n\
                Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
        }
    }
}

/// Each slow client comes from its own loopback address (127.1.x.y), as
/// 600 different hosts would, so per-client limits do not cut them short.
fn client_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8))
}

/// Runs one slow client until the node closes its connection (`Some` of
/// what the node sent before closing) or `wait` passes (`None`).
async fn slow_client(
    ip: IpAddr,
    node: SocketAddr,
    kind: Slow,
    connected: Arc<AtomicUsize>,
    wait: Duration,
) -> Result<Option<String>, String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::new(ip, 0))
        .map_err(|e| format!("bind {ip}: {e}"))?;
    let stream = socket
        .connect(node)
        .await
        .map_err(|e| format!("connect from {ip}: {e}"))?;
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(kind.opening())
        .await
        .map_err(|e| format!("{kind:?} from {ip}: {e}"))?;
    connected.fetch_add(1, Ordering::SeqCst);
    let trickle = !matches!(kind, Slow::Headers);
    let run = async move {
        let mut buf = [0u8; 1024];
        let mut got = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(3));
        tick.tick().await;
        loop {
            tokio::select! {
                read = rd.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return String::from_utf8_lossy(&got).into_owned(),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                },
                _ = tick.tick(), if trickle => {
                    // A failed write means the node closed; the read says so.
                    let _ = wr.write_all(b"0").await;
                }
            }
        }
    };
    Ok(tokio::time::timeout(wait, run).await.ok())
}

#[test]
fn slow_clients_do_not_stop_git_or_rest() {
    const CLIENTS: usize = 600;
    let data = tmpdir();
    let node = Node::start_with(
        data.path(),
        &["--header-read-timeout", "8", "--min-rate-window", "8"],
    );
    let tmp = tmpdir();
    let tip = seeded_repo(&node, &tmp.path().join("work"));
    let addr: SocketAddr = node.addr().parse().expect("node address");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let connected = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let fut = slow_client(
                client_ip(i),
                addr,
                Slow::of(i),
                Arc::clone(&connected),
                Duration::from_secs(45),
            );
            rt.spawn(fut)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while connected.load(Ordering::SeqCst) < CLIENTS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        connected.load(Ordering::SeqCst),
        CLIENTS,
        "not every slow client could connect"
    );

    // With all of them connected, stock git and the REST API still work.
    let url = node.repo_url("alice", "demo");
    let refs = git_ok(tmp.path(), &["ls-remote", &url]);
    assert!(refs.contains(&tip), "ls-remote: {refs}");
    let clone = tmp.path().join("clone");
    git_ok(tmp.path(), &["clone", "-q", &url, &path_str(&clone)]);
    assert_eq!(rev_parse(&clone, "HEAD"), tip);
    let health = node.get("/api/v1/health");
    assert_eq!(health.status, 200, "health: {}", health.text());
    let finished = clients.iter().filter(|c| c.is_finished()).count();
    // (Informational: they are normally all still connected here.)
    println!("slow clients closed by the time git and REST were done: {finished}/{CLIENTS}");

    // And the node closes every slow connection in the end.
    let outcomes = rt.block_on(async {
        let mut out = Vec::new();
        for c in clients {
            out.push(c.await.expect("client task"));
        }
        out
    });
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let kind = Slow::of(i);
        let answer = match outcome {
            Ok(Some(answer)) => answer,
            Ok(None) => panic!("slow client {i} ({kind:?}) was never closed"),
            Err(e) => panic!("slow client {i}: {e}"),
        };
        let status = answer.get(..12).unwrap_or("");
        match kind {
            Slow::Headers => assert_eq!(answer, "", "client {i}"),
            Slow::GitBody => {
                assert_eq!(status, "HTTP/1.1 408", "client {i}: {answer}");
                assert!(
                    answer.contains("less than 1024 bytes/s"),
                    "client {i}: {answer}"
                );
            }
            Slow::RestBody => assert!(status.starts_with("HTTP/1.1 4"), "client {i}: {answer}"),
        }
    }
    // The node still serves afterwards.
    git_ok(tmp.path(), &["ls-remote", &url]);
}

// ---------------------------------------------------------------------------
// Header-read timeout and connection limits
// ---------------------------------------------------------------------------

#[test]
fn connections_that_do_not_finish_their_headers_are_closed() {
    let (_data, node) = start(&["--header-read-timeout", "1"]);
    // Half a request line.
    let mut half = TcpStream::connect(node.addr()).expect("connect");
    half.write_all(b"GET /api/v1/hea").expect("write");
    assert!(
        closed_by_node(&mut half, Duration::from_secs(30)),
        "a connection with half a request line stayed open"
    );
    // A kept-alive connection that sends nothing after its first request.
    let mut idle = TcpStream::connect(node.addr()).expect("connect");
    idle.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: node\r\n\r\n")
        .expect("write");
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).expect("response");
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(
        closed_by_node(&mut idle, Duration::from_secs(30)),
        "an idle kept-alive connection stayed open"
    );
    // Complete requests are served as before.
    assert_eq!(node.get("/api/v1/health").status, 200);
}

#[test]
fn connections_over_the_per_client_limit_are_refused() {
    let (_data, node) = start(&["--max-connections-per-client", "4"]);
    // Four connections that have not sent anything yet.
    let held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(node.addr()).expect("connect"))
        .collect();
    // Wait until the node has accepted them: a fifth is answered 503.
    let mut refused = None;
    for _ in 0..100 {
        match try_http_request(node.addr(), "GET", "/api/v1/health", &[], &[]) {
            Ok(resp) if resp.status == 503 => {
                refused = Some(resp);
                break;
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let refused = refused.expect("a fifth connection was never refused");
    assert!(
        refused
            .text()
            .contains("too many connections from 127.0.0.1 (at most 4 at once)"),
        "{}",
        refused.text()
    );
    assert!(refused.header("Retry-After").is_some());
    // A git command from the same client says why.
    let tmp = tmpdir();
    let out = git(tmp.path(), &["ls-remote", &node.repo_url("alice", "demo")]);
    assert!(!out.status.success());
    // Once a connection closes, the client is served again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match try_http_request(node.addr(), "GET", "/api/v1/health", &[], &[]) {
            Ok(resp) if resp.status == 200 => break,
            other => {
                assert!(Instant::now() < deadline, "never served again: {other:?}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Rate limit
// ---------------------------------------------------------------------------

#[test]
fn a_burst_over_the_rate_limit_gets_429_until_retry_after() {
    // One request per 10 s, five at once.
    let (_data, node) = start(&["--rate-limit", "0.1", "--rate-limit-burst", "5"]);
    let answers: Vec<HttpResponse> = (0..8).map(|_| node.get("/api/v1/health")).collect();
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert_eq!(&statuses[..5], &[200; 5], "{statuses:?}");
    assert_eq!(&statuses[5..], &[429; 3], "{statuses:?}");
    let limited = &answers[7];
    let error = limited.json()["error"]
        .as_str()
        .expect("JSON error")
        .to_owned();
    assert!(
        error.starts_with("rate limit exceeded for 127.0.0.1: retry after"),
        "{error}"
    );
    let retry_after: u64 = limited
        .header("Retry-After")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=10).contains(&retry_after), "{retry_after}");

    // git shows the node's message.
    let tmp = tmpdir();
    let out = git(tmp.path(), &["ls-remote", &node.repo_url("alice", "demo")]);
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("rate limit exceeded for 127.0.0.1: retry after"),
        "{stderr}"
    );

    // After waiting as told, requests are served again.
    std::thread::sleep(Duration::from_secs(retry_after));
    let again = node.get("/api/v1/health");
    assert_eq!(again.status, 200, "{}", again.text());
}

// ---------------------------------------------------------------------------
// Caps on concurrent pushes
// ---------------------------------------------------------------------------

/// Starts a push by hand that sends more than the node reads before taking
/// a push slot (64 KiB of commands) and then stalls, holding the slot until
/// the returned connection is dropped.
fn hold_push_slot(node: &Node) -> TcpStream {
    let mut body = Vec::new();
    for i in 0..800 {
        let caps = if i == 0 { "\0report-status" } else { "" };
        let line = format!("{ZERO_ID} {} refs/heads/b{i:05}{caps}\n", "1".repeat(40));
        body.extend(pkt(line.as_bytes()));
    }
    assert!(body.len() > 64 * 1024);
    let mut stream = TcpStream::connect(node.addr()).expect("connect");
    let head = "POST /alice/demo.git/git-receive-pack HTTP/1.1\r\nHost: node\r\n\
         Content-Type: application/x-git-receive-pack-request\r\nContent-Length: 10000000\r\n\r\n";
    stream.write_all(head.as_bytes()).expect("write head");
    stream.write_all(&body).expect("write commands");
    // Let the node read them and take the slot.
    std::thread::sleep(Duration::from_millis(500));
    stream
}

#[test]
fn a_second_push_waits_for_the_slot_then_succeeds() {
    let (_data, node) = start(&["--max-concurrent-pushes", "1"]);
    let tmp = tmpdir();
    let work = tmp.path().join("work");
    seeded_repo(&node, &work);
    let tip = commit_file(&work, "second.txt", "second\n", "second commit");

    let holder = hold_push_slot(&node);
    let push = {
        let work = work.clone();
        std::thread::spawn(move || git(&work, &["push", "origin", "main"]))
    };
    std::thread::sleep(Duration::from_secs(2));
    assert!(!push.is_finished(), "the push did not wait for the slot");
    drop(holder);
    let out = push.join().expect("push thread");
    assert_success(&work, &["push", "origin", "main"], &out);
    assert_eq!(
        node.server_refs("alice", "demo").get("refs/heads/main"),
        Some(&tip)
    );
}

#[test]
fn a_push_that_waits_too_long_gets_503_with_retry_after() {
    let (_data, node) = start(&["--max-concurrent-pushes", "1", "--queue-timeout", "1"]);
    let tmp = tmpdir();
    let work = tmp.path().join("work");
    seeded_repo(&node, &work);
    commit_file(&work, "second.txt", "second\n", "second commit");

    let holder = hold_push_slot(&node);
    let out = git(&work, &["push", "origin", "main"]);
    assert!(
        !out.status.success(),
        "push succeeded while the slot was taken"
    );
    println!("git push while busy:\n{}", stderr_of(&out));
    // The same refusal, by hand, with its headers.
    let resp = node.post_service("alice", "demo", "git-receive-pack", &[b'0'; 100]);
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert!(resp.header("Retry-After").is_some());
    assert!(
        resp.text()
            .contains("too many concurrent pushes on this node"),
        "{}",
        resp.text()
    );
    drop(holder);
    // Once the slot is free, the push goes through.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = git(&work, &["push", "origin", "main"]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "push never succeeded: {}",
            stderr_of(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

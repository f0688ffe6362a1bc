//! `GET /api/v1/events` between two real peering nodes: a client reads the
//! raw server-sent event streams of A and B over HTTP and sees a signed git
//! push to A (origin local) and then its replication on B (origin
//! replicated), in order; the repository filter leaves out another
//! repository's push; a filter naming an unknown repository is a 404.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::p2p::*;
use common::*;
use tempfile::TempDir;

/// One server-sent event.
#[derive(Debug, Default)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: String,
}

impl SseEvent {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {:?}", self.data))
    }
}

/// A streaming reader of one `text/event-stream` response: HTTP/1.1 with
/// chunked transfer coding, parsed as the SSE specification says (fields,
/// comments, multi-line data, a blank line dispatches).
struct SseStream {
    reader: BufReader<ChunkedReader>,
}

/// The decoded body of a chunked HTTP/1.1 response, read as it arrives.
struct ChunkedReader {
    inner: BufReader<TcpStream>,
    left: usize,
    done: bool,
}

impl Read for ChunkedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.inner.read_line(&mut line)?;
            let size = line.trim().split(';').next().unwrap_or("");
            self.left = usize::from_str_radix(size, 16).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("bad chunk size {line:?}"),
                )
            })?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let n = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..n])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n;
        if self.left == 0 {
            let mut crlf = [0u8; 2];
            self.inner.read_exact(&mut crlf)?;
        }
        Ok(n)
    }
}

impl SseStream {
    /// Open `path` on `node`; panics unless the answer is a 200 event stream.
    fn open(node: &Node, path: &str) -> SseStream {
        let mut stream = TcpStream::connect(node.addr()).expect("connect");
        // A safety net against a hung test, not an assertion on speed.
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .expect("read timeout");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            node.addr()
        )
        .expect("send request");
        let mut inner = BufReader::new(stream);
        let mut status = String::new();
        inner.read_line(&mut status).expect("status line");
        assert!(status.starts_with("HTTP/1.1 200"), "{path}: {status}");
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            inner.read_line(&mut line).expect("header");
            if line.trim().is_empty() {
                break;
            }
            headers.push(line.trim().to_ascii_lowercase());
        }
        assert!(
            headers
                .iter()
                .any(|h| h.starts_with("content-type: text/event-stream")),
            "{headers:?}"
        );
        assert!(
            headers.iter().any(|h| h == "transfer-encoding: chunked"),
            "{headers:?}"
        );
        let body = ChunkedReader {
            inner,
            left: 0,
            done: false,
        };
        SseStream {
            reader: BufReader::new(body),
        }
    }

    /// The next event; keep-alive comments are skipped.
    fn next(&mut self) -> SseEvent {
        let mut ev = SseEvent::default();
        let mut has_data = false;
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("read the stream");
            assert!(n > 0, "the event stream ended");
            let line = line.strip_suffix('\n').unwrap_or(&line);
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                if has_data {
                    if ev.event.is_empty() {
                        ev.event = "message".into();
                    }
                    return ev;
                }
                ev = SseEvent::default();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => ev.event = value.to_owned(),
                "id" => ev.id = Some(value.to_owned()),
                "data" => {
                    if has_data {
                        ev.data.push('\n');
                    }
                    ev.data.push_str(value);
                    has_data = true;
                }
                _ => {}
            }
        }
    }

    /// The next `ref-update` event's data (a `lagged` event fails the test).
    fn next_update(&mut self) -> (SseEvent, serde_json::Value) {
        let ev = self.next();
        assert_eq!(ev.event, "ref-update", "{ev:?}");
        let data = ev.json();
        (ev, data)
    }
}

fn push(work: &Path, url: &str) {
    git_ok(work, &["push", "-q", url, "main"]);
}

/// What every `ref-update` event of a push to `main` must say.
fn assert_update(data: &serde_json::Value, repo: &str, old: Option<&str>, new: &str) {
    let owner = test_identity().owner_id();
    assert_eq!(data["repo"], format!("{owner}/{repo}"), "{data}");
    assert_eq!(
        data["aliases"],
        serde_json::json!([format!("alice/{repo}")]),
        "{data}"
    );
    assert_eq!(data["ref"], "refs/heads/main", "{data}");
    assert_eq!(data["old"].as_str(), old, "{data}");
    assert_eq!(data["new"].as_str(), Some(new), "{data}");
    assert_eq!(
        data["signer"].as_str(),
        Some(test_identity().key.did().to_string().as_str()),
        "{data}"
    );
    assert!(
        data["repo_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{data}"
    );
    assert!(data["seq"].as_u64().is_some_and(|s| s >= 1), "{data}");
    assert!(
        data["time"].as_u64().is_some_and(|t| t > 1_600_000_000),
        "{data}"
    );
}

#[test]
fn pushes_and_their_replication_are_streamed_in_order() {
    let tmp = TempDir::new().expect("tmp");
    let a = peer_node(&tmp.path().join("a"), None, false);
    let b = peer_node(&tmp.path().join("b"), Some(&p2p_addr(&a)), false);
    wait_connected(&b, 1);
    let owner = test_identity().owner_id();
    a.create_repo("alice", "demo");
    a.create_repo("alice", "other");
    seed(&b, &owner, "demo");

    // Unknown repositories and malformed filters are refused up front.
    let resp = a.get("/api/v1/events?repo=alice/nope");
    assert_eq!(resp.status, 404, "{}", resp.text());
    assert!(resp.json()["error"].is_string());
    let resp = a.get("/api/v1/events?repo=no-slash");
    assert_eq!(resp.status, 400, "{}", resp.text());
    let resp = a.get("/api/v1/events?repository=alice/demo");
    assert_eq!(resp.status, 400, "{}", resp.text());

    let mut a_all = SseStream::open(&a, "/api/v1/events");
    // The alias, repeated and comma forms of the filter.
    let mut a_demo = SseStream::open(
        &a,
        "/api/v1/events?repo=alice/demo&repo=alice/demo,alice/demo",
    );
    let mut b_demo = SseStream::open(&b, &format!("/api/v1/events?repo={owner}/demo"));

    let work = tmp.path().join("work");
    let first = init_work_repo(&work);
    push(&work, &a.repo_url("alice", "demo"));

    let a_peer = peer_id(&a);
    let (ev, on_a) = a_all.next_update();
    assert_update(&on_a, "demo", None, &first);
    assert_eq!(on_a["origin"], "local");
    assert_eq!(on_a["origin_node"], a_peer.as_str());
    let first_id = ev.id.expect("an event id");
    assert!(
        first_id.ends_with(&format!(":{}:0", on_a["seq"])),
        "{first_id}"
    );
    let (_, on_a_demo) = a_demo.next_update();
    assert_eq!(on_a_demo, on_a);

    let (ev_b, on_b) = b_demo.next_update();
    assert_update(&on_b, "demo", None, &first);
    assert_eq!(on_b["origin"], "replicated");
    // The pushee git names: the push URL with a trailing slash.
    assert_eq!(
        on_b["origin_node"],
        format!("{}/", a.repo_url("alice", "demo"))
    );
    assert_eq!(on_b["repo_id"], on_a["repo_id"]);
    assert!(ev_b.id.is_some());
    let b_first_seq = on_b["seq"].as_u64();

    // A push to another repository: in the unfiltered stream only.
    let other = tmp.path().join("other");
    let other_head = init_work_repo(&other);
    push(&other, &a.repo_url("alice", "other"));
    let (_, on_a) = a_all.next_update();
    assert_update(&on_a, "other", None, &other_head);

    // The second push to demo comes after the first, old = the first.
    let second = commit_file(&work, "b.txt", "b\n", "second");
    push(&work, &a.repo_url("alice", "demo"));
    let (_, on_a) = a_all.next_update();
    assert_update(&on_a, "demo", Some(&first), &second);
    assert_eq!(on_a["origin"], "local");
    // The filtered stream's next event is this one: `other` was left out.
    let (_, on_a_demo) = a_demo.next_update();
    assert_eq!(on_a_demo, on_a);
    let (_, on_b) = b_demo.next_update();
    assert_update(&on_b, "demo", Some(&first), &second);
    assert_eq!(on_b["origin"], "replicated");
    assert!(on_b["seq"].as_u64() > b_first_seq, "{on_b}");
}

#[test]
fn the_number_of_open_streams_is_bounded() {
    // 256 streams is the node-wide bound (events.rs MAX_SUBSCRIBERS); one
    // client may hold them all here.
    const MAX_SUBSCRIBERS: usize = 256;
    let dir = TempDir::new().expect("tmp");
    let node = Node::start_with(
        dir.path(),
        &["--max-connections-per-client", "1000", "--rate-limit", "0"],
    );
    let open: Vec<SseStream> = (0..MAX_SUBSCRIBERS)
        .map(|_| SseStream::open(&node, "/api/v1/events"))
        .collect();
    let resp = node.get("/api/v1/events");
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert!(resp.json()["error"].is_string());
    assert!(resp.header("retry-after").is_some());
    // The open streams still work.
    node.create_repo("alice", "demo");
    let work = TempDir::new().expect("tmp");
    let head = init_work_repo(work.path());
    push(work.path(), &node.repo_url("alice", "demo"));
    let mut last = open.into_iter().last().expect("a stream");
    let (_, data) = last.next_update();
    assert_update(&data, "demo", None, &head);
    assert_eq!(data["origin"], "local");
    assert!(
        data["origin_node"].is_null(),
        "no peer id without p2p: {data}"
    );
}

//! Shared harness for the end-to-end tests: starting a node, a tiny HTTP/1.1
//! client, helpers to run the stock `git` binary in a clean environment, and
//! the ripgrep fixture.

#![allow(dead_code)]

pub mod lfs;
pub mod netns;
pub mod oracle;
pub mod p2p;
pub mod ws;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The all-zero object id used for ref creation/deletion commands.
pub const ZERO_ID: &str = "0000000000000000000000000000000000000000";

/// A valid pack with zero objects: `PACK`, version 2, 0 objects, followed by
/// the SHA-1 of those 12 bytes (checked with `printf 'PACK\0\0\0\2\0\0\0\0' | sha1sum`).
pub fn empty_pack() -> Vec<u8> {
    let mut pack = b"PACK\0\0\0\x02\0\0\0\0".to_vec();
    pack.extend(hex_to_bytes("029d08823bd8a8eab510ad6ac75c823cfd3ed31e"));
    pack
}

fn hex_to_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("valid hex"))
        .collect()
}

// ---------------------------------------------------------------------------
// Node
// ---------------------------------------------------------------------------

/// A running `guts-node` process. Killed on drop; its log is printed if the
/// test is panicking at that moment.
pub struct Node {
    child: Option<Child>,
    addr: String,
    data_dir: PathBuf,
    log_path: PathBuf,
    _log_dir: TempDir,
    _owned_data_dir: Option<TempDir>,
}

impl Node {
    /// Starts a node on a fresh temporary data directory.
    pub fn start() -> Node {
        let dir = TempDir::new().expect("create data dir");
        let mut node = Node::start_in(dir.path());
        node._owned_data_dir = Some(dir);
        node
    }

    /// Starts a node on the given data directory (which outlives the node, so
    /// a node can be restarted on the same data).
    pub fn start_in(data_dir: &Path) -> Node {
        Node::start_with(data_dir, &[])
    }

    /// Like [`Node::start_in`] with extra `run` flags.
    pub fn start_with(data_dir: &Path, extra_args: &[&str]) -> Node {
        Node::start_under(data_dir, &[], extra_args)
    }

    /// Like [`Node::start_with`], the node's command line prefixed by
    /// `wrapper` (e.g. `unshare ... sh -c '...; exec "$@"' sh`). Without
    /// `--p2p-listen` in `extra_args` the node does not replicate
    /// (`--no-p2p`): parallel tests must not all take the default p2p port
    /// or find each other by mDNS. [`Node::start_peering`] keeps the
    /// defaults.
    pub fn start_under(data_dir: &Path, wrapper: &[&str], extra_args: &[&str]) -> Node {
        let mut args = extra_args.to_vec();
        if !extra_args.contains(&"--p2p-listen") {
            args.push("--no-p2p");
        }
        Node::spawn(data_dir, wrapper, &args)
    }

    /// Start a node on `data_dir` with exactly `extra_args`: without
    /// `--p2p-listen` it peers by default (default port, mDNS, DHT).
    pub fn start_peering(data_dir: &Path, extra_args: &[&str]) -> Node {
        Node::spawn(data_dir, &[], extra_args)
    }

    fn spawn(data_dir: &Path, wrapper: &[&str], extra_args: &[&str]) -> Node {
        let addr_file = data_dir.join("http.addr");
        // A previous node on the same data dir leaves a stale address behind.
        match fs::remove_file(&addr_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("removing {}: {e}", addr_file.display()),
        }
        let log_dir = TempDir::new().expect("create log dir");
        let log_path = log_dir.path().join("node.log");
        let log = fs::File::create(&log_path).expect("create node log");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_guts-node"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_guts-node")),
        };
        let child = command
            .arg("run")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--http-listen")
            .arg("127.0.0.1:0")
            .args(extra_args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn guts-node");
        let mut node = Node {
            child: Some(child),
            addr: String::new(),
            data_dir: data_dir.to_path_buf(),
            log_path,
            _log_dir: log_dir,
            _owned_data_dir: None,
        };
        node.addr = node.wait_for_addr(&addr_file);
        node
    }

    fn wait_for_addr(&mut self, addr_file: &Path) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = fs::read_to_string(addr_file) {
                let addr = text.trim();
                if addr.parse::<std::net::SocketAddr>().is_ok() {
                    return addr.to_string();
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("guts-node exited early with {status}; log:\n{}", self.log());
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "guts-node did not write {} within 30 s; log:\n{}",
                    addr_file.display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Reach the node's HTTP at `addr` from now on (a forwarder to a node
    /// whose HTTP is not reachable directly, e.g. in a network namespace).
    pub fn reach_through(&mut self, addr: std::net::SocketAddr) {
        self.addr = addr.to_string();
    }

    /// `host:port` the node listens on.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://host:port`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://host:port/OWNER/NAME.git`
    pub fn repo_url(&self, owner: &str, name: &str) -> String {
        format!("http://{}/{owner}/{name}.git", self.addr)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Contents of the node's stdout/stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends the node SIGTERM (what systemd and `docker stop` send).
    pub fn terminate(&self) {
        let pid = self.child.as_ref().expect("the node is running").id();
        let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill -TERM {pid}");
    }

    /// Whether the node process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits up to `timeout` for the node to exit; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("the node was started");
        loop {
            if let Some(status) = child.try_wait().expect("wait for the node") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the node did not exit within {timeout:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the node and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    // --- REST helpers -----------------------------------------------------

    pub fn get(&self, path: &str) -> HttpResponse {
        http_request(&self.addr, "GET", path, &[], &[])
    }

    /// The node's operator token (`DATA_DIR/operator.token`).
    pub fn operator_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("operator.token"))
            .expect("operator token")
            .trim()
            .to_owned()
    }

    /// `DELETE` as the node's operator.
    pub fn delete(&self, path: &str) -> HttpResponse {
        let auth = format!("Bearer {}", self.operator_token());
        http_request(&self.addr, "DELETE", path, &[("Authorization", &auth)], &[])
    }

    /// `DELETE` without credentials.
    pub fn delete_anonymous(&self, path: &str) -> HttpResponse {
        http_request(&self.addr, "DELETE", path, &[], &[])
    }

    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> HttpResponse {
        self.send_json("POST", path, body)
    }

    pub fn patch_json(&self, path: &str, body: &serde_json::Value) -> HttpResponse {
        self.send_json("PATCH", path, body)
    }

    /// JSON request as the node's operator (harmless where no credential is needed).
    fn send_json(&self, method: &str, path: &str, body: &serde_json::Value) -> HttpResponse {
        let bytes = serde_json::to_vec(body).expect("serialize json");
        let auth = format!("Bearer {}", self.operator_token());
        http_request(
            &self.addr,
            method,
            path,
            &[
                ("Content-Type", "application/json"),
                ("Authorization", &auth),
            ],
            &bytes,
        )
    }

    /// Creates `owner/name` through the REST API, asserting 201.
    pub fn create_repo(&self, owner: &str, name: &str) {
        let id = test_identity();
        let aliases: Vec<&str> = if owner == id.owner_id() {
            vec![]
        } else {
            vec![owner]
        };
        let doc = genesis_document(id, name, &aliases);
        let resp = self.post_json("/api/v1/repos", &serde_json::json!({ "document": doc }));
        assert_eq!(resp.status, 201, "creating {owner}/{name}: {}", resp.text());
    }

    /// The `push-cert=<nonce>` a receive-pack advertisement offers, if any
    /// (asked as stock git, a client that signs pushes).
    pub fn push_cert_nonce(&self, owner: &str, name: &str) -> Option<String> {
        let resp = http_request(
            &self.addr,
            "GET",
            &format!("/{owner}/{name}.git/info/refs?service=git-receive-pack"),
            &[("User-Agent", "git/2.47.3")],
            &[],
        );
        let text = resp.text();
        let caps = text.split('\0').nth(1)?;
        caps.split_whitespace()
            .find_map(|c| c.strip_prefix("push-cert="))
            .map(str::to_owned)
    }

    /// `GET /api/v1/repos/OWNER/NAME`, asserting 200, as JSON.
    pub fn repo_info(&self, owner: &str, name: &str) -> serde_json::Value {
        let resp = self.get(&format!("/api/v1/repos/{owner}/{name}"));
        assert_eq!(resp.status, 200, "show {owner}/{name}: {}", resp.text());
        resp.json()
    }

    /// The refs (only names under `refs/`) the node reports for a repo.
    pub fn server_refs(&self, owner: &str, name: &str) -> BTreeMap<String, String> {
        let info = self.repo_info(owner, name);
        let refs = info
            .get("refs")
            .and_then(|r| r.as_object())
            .unwrap_or_else(|| panic!("no `refs` object in {info}"));
        refs.iter()
            .filter(|(name, _)| name.starts_with("refs/"))
            .map(|(name, id)| {
                let id = id
                    .as_str()
                    .unwrap_or_else(|| panic!("ref {name} is not a string: {id}"));
                (name.clone(), id.to_string())
            })
            .collect()
    }

    /// The `head` the node reports for a repo.
    pub fn server_head(&self, owner: &str, name: &str) -> String {
        let info = self.repo_info(owner, name);
        info.get("head")
            .and_then(|h| h.as_str())
            .unwrap_or_else(|| panic!("no `head` string in {info}"))
            .to_string()
    }

    /// POSTs a raw body to one of the smart-HTTP service endpoints.
    pub fn post_service(
        &self,
        owner: &str,
        name: &str,
        service: &str,
        body: &[u8],
    ) -> HttpResponse {
        let content_type = format!("application/x-{service}-request");
        let accept = format!("application/x-{service}-result");
        http_request(
            &self.addr,
            "POST",
            &format!("/{owner}/{name}.git/{service}"),
            &[
                ("Content-Type", content_type.as_str()),
                ("Accept", accept.as_str()),
            ],
            body,
        )
    }

    /// Sends a hand-made receive-pack request, signed like `git push
    /// --signed` by the test identity: `commands` are `"<old> <new> <ref>"`;
    /// `caps` go on the `push-cert` line.
    pub fn receive_pack(
        &self,
        owner: &str,
        name: &str,
        commands: &[String],
        caps: &str,
        pack: &[u8],
    ) -> HttpResponse {
        let nonce = self
            .push_cert_nonce(owner, name)
            .unwrap_or_else(|| panic!("{owner}/{name} advertises no push-cert nonce"));
        let cert = push_certificate(
            test_identity(),
            &self.repo_url(owner, name),
            &nonce,
            commands,
        );
        let body = signed_receive_pack_body(&cert, caps, pack);
        self.post_service(owner, name, "git-receive-pack", &body)
    }

    /// Sends a hand-made receive-pack request without a certificate.
    pub fn receive_pack_unsigned(
        &self,
        owner: &str,
        name: &str,
        commands: &[String],
        caps: &str,
        pack: &[u8],
    ) -> HttpResponse {
        let body = receive_pack_body(commands, caps, pack);
        self.post_service(owner, name, "git-receive-pack", &body)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "----- guts-node log ({}) -----\n{}\n----- end of guts-node log -----",
                self.addr,
                self.log()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// pkt-line helpers
// ---------------------------------------------------------------------------

/// Encodes one pkt-line.
pub fn pkt(payload: &[u8]) -> Vec<u8> {
    let mut out = format!("{:04x}", payload.len() + 4).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Builds a receive-pack request body (commands, flush, pack).
pub fn receive_pack_body(commands: &[String], caps: &str, pack: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, cmd) in commands.iter().enumerate() {
        let line = if i == 0 {
            format!("{cmd}\0{caps}\n")
        } else {
            format!("{cmd}\n")
        };
        body.extend(pkt(line.as_bytes()));
    }
    body.extend_from_slice(b"0000");
    body.extend_from_slice(pack);
    body
}

/// A push certificate as git makes it (`certificate version 0.1`, pusher,
/// pushee, nonce, the commands), signed with `who`'s SSH key in namespace `git`.
pub fn push_certificate(
    who: &TestIdentity,
    pushee: &str,
    nonce: &str,
    commands: &[String],
) -> String {
    let mut payload = format!(
        "certificate version 0.1\npusher {} 1700000000 +0000\npushee {pushee}\nnonce {nonce}\n\n",
        who.key.ssh_fingerprint().expect("fingerprint")
    );
    for c in commands {
        payload.push_str(c);
        payload.push('\n');
    }
    let sig = who.key.sign_ssh("git", payload.as_bytes()).expect("sign");
    format!("{payload}{sig}")
}

/// Builds a signed receive-pack request body (push-cert block, flush, pack).
pub fn signed_receive_pack_body(cert: &str, caps: &str, pack: &[u8]) -> Vec<u8> {
    let mut body = pkt(format!("push-cert\0{caps}\n").as_bytes());
    for line in cert.split_inclusive('\n') {
        body.extend(pkt(line.as_bytes()));
    }
    body.extend(pkt(b"push-cert-end\n"));
    body.extend_from_slice(b"0000");
    body.extend_from_slice(pack);
    body
}

// ---------------------------------------------------------------------------
// Minimal HTTP/1.1 client
// ---------------------------------------------------------------------------

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response (status {}) is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }
}

/// Sends one request with `Connection: close` and reads the whole response.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    try_http_request(addr, method, path, headers, body).unwrap_or_else(|e| panic!("{e}"))
}

/// [`http_request`] that returns an error instead of panicking when the
/// server cannot be reached or does not send a complete response (a node
/// killed in the middle of a request, for instance).
pub fn try_http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("set read timeout");
    stream
        .set_write_timeout(Some(Duration::from_secs(120)))
        .expect("set write timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("user-agent"))
    {
        req.push_str("User-Agent: guts-e2e\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    // The server may answer (and close) before reading a malformed body;
    // still try to read whatever it sent.
    let write_result = stream.write_all(&bytes).and_then(|()| stream.flush());

    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if raw.is_empty() {
                    return Err(format!(
                        "{method} {path}: reading response: {e} (write: {write_result:?})"
                    ));
                }
                break;
            }
        }
    }
    parse_response(&raw).ok_or_else(|| {
        format!(
            "{method} {path}: unparsable response (write: {write_result:?}): {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    let rest = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = parts.next()?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let mut resp = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    let chunked = resp
        .header("Transfer-Encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    resp.body = if chunked {
        decode_chunked(rest)?
    } else if let Some(len) = resp.header("Content-Length") {
        let len: usize = len.parse().ok()?;
        rest.get(..len)?.to_vec()
    } else {
        rest.to_vec()
    };
    Some(resp)
}

fn decode_chunked(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_line = std::str::from_utf8(&data[..line_end]).ok()?;
        let size_hex = size_line.split(';').next()?.trim();
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

// ---------------------------------------------------------------------------
// git helpers
// ---------------------------------------------------------------------------

/// Run the `guts-node` CLI against `node` (no GUTS_HOME or GUTS_KEY from
/// the environment).
pub fn cli(node: &Node, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_guts-node"))
        .args(args)
        .arg("--node")
        .arg(node.url())
        .env_remove("GUTS_HOME")
        .env_remove("GUTS_KEY")
        .output()
        .expect("run guts-node")
}

/// [`cli`], which must succeed; its standard output.
pub fn cli_ok(node: &Node, args: &[&str]) -> String {
    let out = cli(node, args);
    assert!(
        out.status.success(),
        "guts-node {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A shared HOME for git so no user configuration leaks in. Its only
/// configuration is what `guts-node git-setup` writes: pushes are signed with
/// the test identity whenever a server asks (`push.gpgSign=if-asked`).
pub fn git_home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("guts-e2e-git-home");
        fs::create_dir_all(&dir).expect("create git home");
        let key = test_identity().key_path.display().to_string();
        fs::write(
            dir.join(".gitconfig"),
            format!("[gpg]\n\tformat = ssh\n[user]\n\tsigningkey = {key}\n[push]\n\tgpgSign = if-asked\n"),
        )
        .expect("write .gitconfig");
        dir
    })
}

/// A user identity for tests: key file on disk plus the key itself.
pub struct TestIdentity {
    pub key: guts_identity::Keypair,
    pub key_path: PathBuf,
}

impl TestIdentity {
    /// A deterministic identity from `seed`, its key written under the target dir.
    pub fn from_seed(label: &str, seed: u8) -> TestIdentity {
        let key = guts_identity::Keypair::from_seed(&[seed; 32]);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("guts-e2e-keys");
        fs::create_dir_all(&dir).expect("create key dir");
        let key_path = dir.join(format!("{label}-{seed}"));
        if !key_path.exists() {
            // Parallel test binaries may race here; either writer's file is the same key.
            let tmp = dir.join(format!("{label}-{seed}.{}", std::process::id()));
            let _ = fs::remove_file(&tmp);
            let _ = fs::remove_file(guts_identity::keys::public_key_path(&tmp));
            key.write_openssh(&tmp, label).expect("write key");
            let _ = fs::rename(
                guts_identity::keys::public_key_path(&tmp),
                guts_identity::keys::public_key_path(&key_path),
            );
            let _ = fs::rename(&tmp, &key_path);
        }
        TestIdentity { key, key_path }
    }

    /// `z6Mk...`: the owner segment of this identity's repositories.
    pub fn owner_id(&self) -> String {
        self.key.did().method_id()
    }
}

/// The identity that owns the repositories tests create with `create_repo`.
pub fn test_identity() -> &'static TestIdentity {
    static ID: OnceLock<TestIdentity> = OnceLock::new();
    ID.get_or_init(|| TestIdentity::from_seed("alice", 0xa1))
}

/// A signed first identity document for `name`, owned by `owner`, declaring `aliases`.
pub fn genesis_document(owner: &TestIdentity, name: &str, aliases: &[&str]) -> String {
    use base64::Engine;
    use prost::Message;
    let aliases = aliases.iter().map(|a| a.to_string()).collect();
    let body = guts_identity::DocumentBody::genesis(owner.key.did(), name, "main", aliases);
    let signed = body.sign(&[&owner.key]);
    base64::engine::general_purpose::STANDARD.encode(signed.encode_to_vec())
}

/// A `git` command in `dir` with a clean environment.
pub fn git_cmd(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir).env_clear();
    for var in ["PATH", "TMPDIR", "SYSTEMROOT"] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    let home = git_home();
    cmd.env("HOME", home)
        .env("XDG_CONFIG_HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "")
        .env("LC_ALL", "C")
        .env("LANG", "C")
        .env("GIT_AUTHOR_NAME", "Guts Tester")
        .env("GIT_AUTHOR_EMAIL", "tester@example.com")
        .env("GIT_COMMITTER_NAME", "Guts Tester")
        .env("GIT_COMMITTER_EMAIL", "tester@example.com")
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "advice.detachedHead=false",
            "-c",
            "gc.auto=0",
            "-c",
            "http.lowSpeedLimit=1",
            "-c",
            "http.lowSpeedTime=120",
        ]);
    cmd
}

fn describe(args: &[&str], dir: &Path, out: &Output) -> String {
    format!(
        "git {} (in {}) exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        args.join(" "),
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs git and returns its output, whatever the exit status.
pub fn git(dir: &Path, args: &[&str]) -> Output {
    git_cmd(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run git")
}

/// Runs git with extra environment variables.
pub fn git_env(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = git_cmd(dir);
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run git")
}

/// Runs git with `input` on stdin and returns its output.
pub fn git_stdin(dir: &Path, args: &[&str], input: &[u8]) -> Output {
    let mut child = git_cmd(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn git");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait for git");
    writer.join().expect("stdin writer");
    out
}

/// Asserts that `out` is a success, printing everything otherwise.
pub fn assert_success(dir: &Path, args: &[&str], out: &Output) {
    assert!(out.status.success(), "{}", describe(args, dir, out));
}

/// Runs git, asserts success and returns trimmed stdout.
pub fn git_ok(dir: &Path, args: &[&str]) -> String {
    let out = git(dir, args);
    assert_success(dir, args, &out);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs git, asserts failure and returns the output.
pub fn git_fail(dir: &Path, args: &[&str]) -> Output {
    let out = git(dir, args);
    assert!(
        !out.status.success(),
        "expected failure but {}",
        describe(args, dir, &out)
    );
    out
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// All refs of a repository: refname → object id.
pub fn refs_of(git_dir: &Path) -> BTreeMap<String, String> {
    let out = git_ok(
        git_dir,
        &["for-each-ref", "--format=%(objectname) %(refname)"],
    );
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (id, name) = l.split_once(' ').expect("`<id> <ref>` line");
            (name.to_string(), id.to_string())
        })
        .collect()
}

/// `git rev-parse --verify REV^{...}` in `dir`.
pub fn rev_parse(dir: &Path, rev: &str) -> String {
    git_ok(dir, &["rev-parse", "--verify", rev])
}

/// Creates a non-bare repository at `dir` (branch `main`) with one commit.
pub fn init_work_repo(dir: &Path) -> String {
    fs::create_dir_all(dir).expect("create work dir");
    git_ok(dir, &["init", "-q", "-b", "main"]);
    commit_file(dir, "README.md", "hello from guts\n", "initial commit")
}

/// Writes `name` with `content`, commits it and returns the new commit id.
pub fn commit_file(dir: &Path, name: &str, content: &str, msg: &str) -> String {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parent dirs");
    }
    fs::write(&path, content).expect("write file");
    git_ok(dir, &["add", "--", name]);
    git_ok(dir, &["commit", "-q", "-m", msg]);
    rev_parse(dir, "HEAD")
}

/// `git fsck --full` must succeed.
/// A bare clone of the node's repository with stock git over HTTP, checked
/// with `git fsck --full`; returns the refs the client ended with.
pub fn clone_refs(node: &Node, owner: &str, name: &str, dest: &Path) -> BTreeMap<String, String> {
    git_ok(
        dest.parent().expect("parent"),
        &[
            "clone",
            "-q",
            "--bare",
            &node.repo_url(owner, name),
            dest.to_str().expect("utf-8 path"),
        ],
    );
    assert_fsck(dest);
    refs_of(dest)
}

pub fn assert_fsck(git_dir: &Path) {
    git_ok(git_dir, &["fsck", "--full", "--no-progress"]);
}

/// Builds a pack with `git pack-objects --stdout --revs` from `revs` lines.
pub fn pack_objects(dir: &Path, revs: &[&str], thin: bool) -> Vec<u8> {
    let mut args = vec!["pack-objects", "--stdout", "--revs", "-q"];
    if thin {
        args.push("--thin");
    }
    let mut input = revs.join("\n");
    input.push('\n');
    let out = git_stdin(dir, &args, input.as_bytes());
    assert_success(dir, &args, &out);
    assert!(
        out.stdout.starts_with(b"PACK"),
        "pack-objects output is not a pack"
    );
    out.stdout
}

/// Number of objects declared in a pack header.
pub fn pack_object_count(pack: &[u8]) -> u32 {
    assert!(pack.len() >= 12 && pack.starts_with(b"PACK"), "not a pack");
    u32::from_be_bytes([pack[8], pack[9], pack[10], pack[11]])
}

// ---------------------------------------------------------------------------
// ripgrep fixture
// ---------------------------------------------------------------------------

pub fn ripgrep_bundle_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/ripgrep.bundle")
}

/// A bare repository holding every branch and tag of the ripgrep bundle,
/// built once (and cached under the cargo target tmp dir, keyed by the
/// bundle's size and mtime). `None` if the bundle is missing.
fn ripgrep_cache() -> Option<&'static Path> {
    static CACHE: OnceLock<Option<PathBuf>> = OnceLock::new();
    CACHE
        .get_or_init(|| {
            let bundle = ripgrep_bundle_path();
            let meta = fs::metadata(&bundle).ok()?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            let parent = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
            fs::create_dir_all(&parent).expect("create target tmp dir");
            let cached = parent.join(format!("guts-e2e-ripgrep-{}-{mtime}.git", meta.len()));
            if cached.join("HEAD").exists() {
                return Some(cached);
            }
            let staging = TempDir::new_in(&parent).expect("create staging dir");
            let bare = staging.path().join("ripgrep.git");
            fs::create_dir_all(&bare).expect("create bare dir");
            git_ok(&bare, &["init", "-q", "--bare"]);
            let bundle_str = bundle.to_string_lossy().into_owned();
            git_ok(
                &bare,
                &[
                    "fetch",
                    "-q",
                    &bundle_str,
                    "refs/heads/*:refs/heads/*",
                    "refs/tags/*:refs/tags/*",
                ],
            );
            // Another test process may have won the race; either copy is fine.
            if fs::rename(&bare, &cached).is_err() && !cached.join("HEAD").exists() {
                panic!("could not install ripgrep cache at {}", cached.display());
            }
            Some(cached)
        })
        .as_deref()
}

/// Makes a private bare copy of the ripgrep fixture at `dest` and returns its
/// path, or prints a SKIP line and returns `None` if the fixture is missing.
pub fn ripgrep_bare(dest: &Path) -> Option<PathBuf> {
    let Some(cache) = ripgrep_cache() else {
        println!(
            "SKIP: ripgrep fixture missing at {}",
            ripgrep_bundle_path().display()
        );
        return None;
    };
    let dest_str = dest.to_string_lossy().into_owned();
    let cache_str = cache.to_string_lossy().into_owned();
    let parent = dest.parent().expect("dest has a parent");
    // Local clone: objects are hard-linked, refs copied exactly.
    git_ok(parent, &["clone", "-q", "--mirror", &cache_str, &dest_str]);
    Some(dest.to_path_buf())
}

/// splitmix64: small, deterministic, good enough to spread kills.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `len` incompressible bytes, so a pack is as large as its data.
    pub fn noise(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

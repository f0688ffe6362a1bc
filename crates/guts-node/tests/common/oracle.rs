//! The conformance oracle: C git's `git http-backend` behind a tiny CGI
//! bridge (std only). Repositories live under one project root and are
//! served at `http://ADDR/NAME.git`.
//!
//! One thread per connection; every response is HTTP/1.1 with
//! `Connection: close`, its body streamed from the CGI's stdout until EOF.
//! Request bodies are passed on stdin, de-chunked when sent with
//! `Transfer-Encoding: chunked` (git does that for large pushes); gzip
//! bodies are left alone (http-backend inflates them itself).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tempfile::TempDir;

/// Settings every oracle repository gets so that it advertises what the
/// node advertises.
pub const ORACLE_REPO_CONFIG: &[(&str, &str)] = &[
    ("http.receivepack", "true"),
    ("uploadpack.allowFilter", "true"),
    ("uploadpack.allowRefInWant", "true"),
    ("uploadpack.allowTipSHA1InWant", "true"),
    ("uploadpack.allowReachableSHA1InWant", "true"),
    // The brief's name for this is `uploadpack.advertiseSidebandAll`, but
    // git (upload-pack.c) only reads `uploadpack.allowSidebandAll`.
    ("uploadpack.allowSidebandAll", "true"),
    ("uploadpack.advertiseSidebandAll", "true"),
    ("transfer.advertiseObjectInfo", "true"),
    ("receive.advertisePushOptions", "true"),
    ("receive.denyDeleteCurrent", "true"),
    // The node advertises `session-id`; git only does with this set.
    ("transfer.advertiseSID", "true"),
    // The node advertises `push-cert=<nonce>` (it accepts only signed
    // pushes); git's receive-pack does with a nonce seed set. The client
    // then signs pushes to both sides (`push.gpgSign=if-asked` in
    // `git_home()`); http-backend accepts them whatever the signature
    // status (only hooks would look at it). Nonces differ per server and
    // per request: comparisons mask them.
    ("receive.certNonceSeed", "guts-conformance-oracle"),
    // `git archive --remote`: http-backend refuses upload-archive unless on.
    ("http.uploadarchive", "true"),
];

/// A running `git http-backend` bridge. Stops accepting on drop.
pub struct Oracle {
    addr: String,
    root: PathBuf,
    stop: Arc<AtomicBool>,
    _root_dir: TempDir,
}

fn backend_path() -> PathBuf {
    let out = Command::new("git")
        .arg("--exec-path")
        .output()
        .expect("run git --exec-path");
    assert!(out.status.success(), "git --exec-path failed");
    let exec = String::from_utf8_lossy(&out.stdout).trim().to_string();
    PathBuf::from(exec).join("git-http-backend")
}

impl Oracle {
    /// Starts a bridge on 127.0.0.1:0 over a fresh, empty project root.
    pub fn start() -> Oracle {
        let root_dir = TempDir::new().expect("create oracle root");
        let root = root_dir.path().to_path_buf();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind oracle");
        let addr = listener.local_addr().expect("oracle addr").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let backend = backend_path();
        assert!(
            backend.exists(),
            "git-http-backend not found at {}",
            backend.display()
        );
        let home = root.join(".home");
        std::fs::create_dir_all(&home).expect("create oracle home");
        {
            let stop = stop.clone();
            let root = root.clone();
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let root = root.clone();
                    let backend = backend.clone();
                    let home = home.clone();
                    thread::spawn(move || {
                        if let Err(e) = serve(conn, &root, &backend, &home) {
                            eprintln!("oracle: connection error: {e}");
                        }
                    });
                }
            });
        }
        Oracle {
            addr,
            root,
            stop,
            _root_dir: root_dir,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The project root (`GIT_PROJECT_ROOT`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Filesystem path of `NAME.git`.
    pub fn repo_path(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.git"))
    }

    /// `http://ADDR/NAME.git`
    pub fn repo_url(&self, name: &str) -> String {
        format!("http://{}/{name}.git", self.addr)
    }
}

impl Drop for Oracle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
    }
}

struct Request {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_head(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            break;
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Some(Request {
        method,
        path,
        query,
        headers,
    }))
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size_line = String::new();
        if reader.read_line(&mut size_line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "eof in chunked body",
            ));
        }
        let size_hex = size_line.trim().split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad chunk size {size_line:?}: {e}"),
            )
        })?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                let mut t = String::new();
                if reader.read_line(&mut t)? == 0 || t.trim().is_empty() {
                    break;
                }
            }
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
    }
}

fn serve(conn: TcpStream, root: &Path, backend: &Path, home: &Path) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut out = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    let Some(req) = read_head(&mut reader)? else {
        return Ok(());
    };
    if req
        .header("Expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        out.flush()?;
    }
    let chunked = req
        .header("Transfer-Encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        read_chunked(&mut reader)?
    } else if let Some(len) = req.header("Content-Length") {
        let len: usize = len.trim().parse().unwrap_or(0);
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        body
    } else {
        Vec::new()
    };

    let mut cmd = Command::new(backend);
    cmd.env_clear();
    for var in ["PATH", "TMPDIR"] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    cmd.env("HOME", home)
        .env("XDG_CONFIG_HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REMOTE_USER", "oracle")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", &req.method)
        .env("PATH_INFO", &req.path)
        .env("QUERY_STRING", &req.query)
        .env("CONTENT_TYPE", req.header("Content-Type").unwrap_or(""));
    if chunked || req.header("Content-Length").is_some() {
        // De-chunked bodies are handed on with their real length.
        cmd.env("CONTENT_LENGTH", body.len().to_string());
    }
    if let Some(enc) = req.header("Content-Encoding") {
        cmd.env("HTTP_CONTENT_ENCODING", enc);
    }
    if let Some(proto) = req.header("Git-Protocol") {
        cmd.env("GIT_PROTOCOL", proto);
        cmd.env("HTTP_GIT_PROTOCOL", proto);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("cgi stdin");
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let mut stderr = child.stderr.take().expect("cgi stderr");
    let err_reader = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let mut stdout = BufReader::new(child.stdout.take().expect("cgi stdout"));

    // CGI headers up to the empty line.
    let mut status = "200 OK".to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if stdout.read_line(&mut h)? == 0 {
            break;
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        match h.split_once(':') {
            Some((k, v)) if k.trim().eq_ignore_ascii_case("Status") => {
                status = v.trim().to_string();
            }
            Some(_) => headers.push(h.to_string()),
            None => {}
        }
    }
    let mut head = format!("HTTP/1.1 {status}\r\n");
    for h in &headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    out.write_all(head.as_bytes())?;
    let copied = std::io::copy(&mut stdout, &mut out);
    let _ = out.flush();
    let _ = out.shutdown(std::net::Shutdown::Write);
    let _ = writer.join();
    let _ = child.wait();
    let err = err_reader.join().unwrap_or_default();
    if !err.is_empty() && std::env::var_os("ORACLE_DEBUG").is_some() {
        eprintln!(
            "oracle: {} {}: {}",
            req.method,
            req.path,
            String::from_utf8_lossy(&err)
        );
    }
    copied.map(|_| ())
}

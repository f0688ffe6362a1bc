//! git over a WebSocket (ADR 0023): stock git with `git-remote-guts` on its
//! PATH, and a TCP proxy that counts the bytes the node sends and cuts
//! connections at chosen points.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The directory holding the `git-remote-guts` binary built with the tests.
pub fn helper_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_git-remote-guts"))
        .parent()
        .expect("binary dir")
        .to_path_buf()
}

/// A `git` command (`super::git_cmd`) that finds `git-remote-guts`.
pub fn git_guts_cmd(dir: &Path) -> Command {
    let mut cmd = super::git_cmd(dir);
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env("PATH", format!("{}:{path}", helper_dir().display()));
    cmd.stdin(Stdio::null());
    cmd
}

/// Run git with the helper on PATH.
pub fn git_guts(dir: &Path, args: &[&str]) -> Output {
    git_guts_cmd(dir).args(args).output().expect("run git")
}

/// Run git with the helper on PATH, asserting success; its stdout.
pub fn git_guts_ok(dir: &Path, args: &[&str]) -> String {
    let out = git_guts(dir, args);
    assert!(
        out.status.success(),
        "git {} failed: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the proxy runs before it opens its `n`-th connection to the node
/// (counting from 1).
pub type BeforeConnect = Box<dyn Fn(usize) + Send + Sync>;

/// A TCP proxy in front of a node.
pub struct Proxy {
    /// `host:port` to give clients.
    pub addr: String,
    /// Bytes forwarded from the node to clients, over all connections.
    pub down: Arc<AtomicU64>,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
}

impl Proxy {
    /// Forward to `node`. Each time the bytes forwarded from the node
    /// reach the next of `cuts` (totals over all connections), exactly that
    /// many are delivered and the connection is cut (both directions shut,
    /// no WebSocket close).
    pub fn start(node: &str, cuts: Vec<u64>, before: Option<BeforeConnect>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("addr").to_string();
        let down = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let cuts = Arc::new(Mutex::new(cuts));
        let node = node.to_owned();
        let (d, c) = (Arc::clone(&down), Arc::clone(&connections));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                if let Some(f) = &before {
                    f(n);
                }
                let Ok(server) = TcpStream::connect(&node) else {
                    continue;
                };
                let (d, cuts) = (Arc::clone(&d), Arc::clone(&cuts));
                std::thread::spawn(move || relay(client, server, d, cuts));
            }
        });
        Proxy {
            addr,
            down,
            connections,
        }
    }

    /// Bytes forwarded from the node so far.
    pub fn down_bytes(&self) -> u64 {
        self.down.load(Ordering::SeqCst)
    }
}

fn relay(client: TcpStream, server: TcpStream, down: Arc<AtomicU64>, cuts: Arc<Mutex<Vec<u64>>>) {
    let (Ok(mut c_read), Ok(mut s_write)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let (mut s_read, mut c_write) = (server, client);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match s_read.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Hold the cut list while counting, so that concurrent
        // connections cannot both pass a cut.
        let mut cuts = cuts.lock().expect("cuts");
        let before = down.load(Ordering::SeqCst);
        let next = cuts.first().copied();
        let take = match next {
            Some(cut) if before + n as u64 >= cut => (cut - before.min(cut)) as usize,
            _ => n,
        };
        if c_write.write_all(&buf[..take]).is_err() {
            break;
        }
        down.fetch_add(take as u64, Ordering::SeqCst);
        if take < n || next.is_some_and(|cut| before + n as u64 >= cut) {
            cuts.remove(0);
            let _ = c_write.flush();
            let _ = c_write.shutdown(Shutdown::Both);
            let _ = s_read.shutdown(Shutdown::Both);
            return;
        }
    }
    let _ = c_write.shutdown(Shutdown::Write);
}

/// A TLS terminator in front of a node, as an operator puts one
/// (`guts+tls://`): it decrypts with a self-signed certificate for
/// `localhost` and relays the bytes to the node's HTTP address.
pub struct TlsTerminator {
    /// `localhost:PORT`.
    pub addr: String,
    /// The certificate (PEM), for `SSL_CERT_FILE`.
    pub cert_pem: String,
    _runtime: tokio::runtime::Runtime,
}

impl TlsTerminator {
    /// Start one relaying to `node` (`HOST:PORT`).
    pub fn start(node: &str) -> TlsTerminator {
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("cert params");
        let cert = params.self_signed(&key).expect("self-signed certificate");
        let der = rustls::pki_types::CertificateDer::from(cert.der().to_vec());
        let key_der =
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![der], key_der)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let node = node.to_owned();
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (acceptor, node) = (acceptor.clone(), node.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(mut server) = tokio::net::TcpStream::connect(&node).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                });
            }
        });
        TlsTerminator {
            addr: format!("localhost:{port}"),
            cert_pem: cert.pem(),
            _runtime: runtime,
        }
    }
}

//! The connection: git's stdin/stdout piped over a WebSocket, and the
//! resume of an interrupted fetch (ADR 0023).

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use guts_git::resume::ResumePoint;
use std::io::Write;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::relay::{Requests, Responses};
use crate::url::Remote;

/// Reconnections to resume one fetch before giving up.
pub const MAX_RESUMES: u32 = 5;
/// The wait before the first reconnection; doubled for each next one.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The largest message taken from the server (it sends at most 64 KiB).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Open the WebSocket for `service`, resuming from `resume` if given.
pub async fn connect(
    remote: &Remote,
    service: &str,
    resume: Option<ResumePoint>,
) -> Result<Ws, String> {
    let url = remote.ws_url(service, resume);
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("bad URL {url}: {e}"))?;
    let headers = request.headers_mut();
    headers.insert(
        "user-agent",
        HeaderValue::from_static(concat!("git-remote-guts/", env!("CARGO_PKG_VERSION"))),
    );
    if service == "git-upload-pack" {
        headers.insert("git-protocol", HeaderValue::from_static("version=2"));
    }
    if service == "git-receive-pack" {
        if let Ok(token) = std::env::var("GUTS_TOKEN") {
            let value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                .map_err(|_| "GUTS_TOKEN is not a valid header value".to_owned())?;
            headers.insert("authorization", value);
        }
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let tls = match remote.ws_url(service, None).starts_with("wss://") {
        true => Some(tokio_tungstenite::Connector::Rustls(tls_config()?)),
        false => None,
    };
    match tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, tls).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .unwrap_or_default();
            Err(format!("{}: {} {body}", remote.display, resp.status()))
        }
        Err(e) => Err(format!("cannot connect to {}: {e}", remote.display)),
    }
}

/// The TLS client configuration of `guts+tls://`: the webpki root
/// certificates, and those of the PEM file `SSL_CERT_FILE` names (a private
/// certificate authority, or a test's self-signed certificate), as OpenSSL
/// and git's curl read it.
fn tls_config() -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = std::env::var_os("SSL_CERT_FILE") {
        let shown = std::path::Path::new(&path).display().to_string();
        let certs = CertificateDer::pem_file_iter(&path)
            .map_err(|e| format!("cannot read SSL_CERT_FILE {shown}: {e}"))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("SSL_CERT_FILE {shown}: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("SSL_CERT_FILE {shown}: {e}"))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

/// Read git's bytes (after the `connect` line) on a thread of their own.
pub fn stdin_pump(mut input: impl std::io::Read + Send + 'static) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match input.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// A connected service: the pipe, and for upload-pack what a resume needs.
pub struct Session {
    remote: Remote,
    service: String,
    ws: Ws,
    /// Followed for upload-pack only.
    follow: Option<(Requests, Responses)>,
    resumes: u32,
}

impl Session {
    /// A session over an open connection.
    pub fn new(remote: Remote, service: &str, ws: Ws) -> Self {
        let follow =
            (service == "git-upload-pack").then(|| (Requests::default(), Responses::default()));
        Session {
            remote,
            service: service.to_owned(),
            ws,
            follow,
            resumes: 0,
        }
    }

    /// Pipe until git closes its side or the server ends the connection.
    pub async fn run(mut self, mut from_git: mpsc::Receiver<Bytes>) -> Result<(), String> {
        // Blocking writes: git reading slowly holds the connection back.
        let mut to_git = std::io::stdout().lock();
        let mut out = Vec::new();
        let mut git_done = false;
        loop {
            tokio::select! {
                chunk = from_git.recv(), if !git_done => match chunk {
                    Some(data) => {
                        if let Some((req, _)) = &mut self.follow {
                            req.feed(&data);
                        }
                        // A failed send shows as a failed read next.
                        let _ = self.ws.send(Message::Binary(data)).await;
                    }
                    None => {
                        // git may close its side once its last request
                        // is sent: the answer still comes.
                        git_done = true;
                        if self.idle() {
                            let _ = self.ws.close(None).await;
                            return Ok(());
                        }
                    }
                },
                msg = self.ws.next() => {
                    let data = match msg {
                        Some(Ok(Message::Binary(data))) => data,
                        Some(Ok(Message::Close(_))) | None => {
                            match self.dropped("the server closed the connection", true).await? {
                                true => continue,
                                false => return Ok(()),
                            }
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => {
                            match self.dropped(&format!("connection lost: {e}"), false).await? {
                                true => continue,
                                false => return Ok(()),
                            }
                        }
                    };
                    out.clear();
                    match &mut self.follow {
                        Some((req, resp)) => {
                            resp.feed(&data, req, &mut out)?;
                        }
                        None => out.extend_from_slice(&data),
                    }
                    to_git
                        .write_all(&out)
                        .and_then(|()| to_git.flush())
                        .map_err(|e| format!("writing to git: {e}"))?;
                    if git_done && self.idle() {
                        let _ = self.ws.close(None).await;
                        return Ok(());
                    }
                    if let Some((_, resp)) = &self.follow {
                        if let Some(err) = &resp.error {
                            if err.contains("cannot resume") {
                                return Err(format!(
                                    "{err}: the repository changed since the transfer began; \
                                     nothing was written, run the command again"
                                ));
                            }
                        }
                    }
                }
            }
        }
    }

    /// No request of git's is waiting for its answer (upload-pack only;
    /// a push ends when the server closes).
    fn idle(&self) -> bool {
        self.follow
            .as_ref()
            .is_some_and(|(req, resp)| req.idle() && resp.between())
    }

    /// The connection ended. `Ok(true)`: resumed on a new one; `Ok(false)`:
    /// it ended between responses (the server is done); `Err`: lost.
    async fn dropped(&mut self, why: &str, closed: bool) -> Result<bool, String> {
        let Some((req, resp)) = &mut self.follow else {
            return if closed {
                Ok(false)
            } else {
                Err(format!("{why} ({})", self.remote.display))
            };
        };
        if closed && resp.between() {
            return Ok(false);
        }
        let point = match resp.interrupted() {
            Some(p) => p?,
            None => return Err(format!("{why} ({})", self.remote.display)),
        };
        let request = req
            .last_fetch()
            .ok_or_else(|| format!("{why}; the fetch cannot be resumed"))?
            .to_vec();
        loop {
            if self.resumes >= MAX_RESUMES {
                return Err(format!("{why}; gave up after {MAX_RESUMES} resumes"));
            }
            tokio::time::sleep(FIRST_BACKOFF * 2u32.pow(self.resumes)).await;
            self.resumes += 1;
            let offset = point.map_or(0, |p| p.offset);
            eprintln!("git-remote-guts: {why}; resuming clone at {offset} bytes");
            match connect(&self.remote, &self.service, point).await {
                Ok(mut ws) => {
                    if ws
                        .send(Message::Binary(Bytes::from(request.clone())))
                        .await
                        .is_ok()
                    {
                        self.ws = ws;
                        resp.replay();
                        return Ok(true);
                    }
                }
                Err(e) => eprintln!("git-remote-guts: {e}"),
            }
        }
    }
}

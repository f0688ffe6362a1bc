//! Protocol versions, services and ref advertisements (`gitprotocol-http`, `-pack`, `-v2`).

use std::io::Write;

use crate::error::Result;
use crate::pktline::PktWriter;
use crate::storage::Repo;

/// What this server calls itself in `agent=`.
pub const AGENT: &str = concat!("guts/", env!("CARGO_PKG_VERSION"));

/// The two git services of smart HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Fetch and clone.
    UploadPack,
    /// Push.
    ReceivePack,
}

impl Service {
    /// Parse `git-upload-pack` / `git-receive-pack`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "git-upload-pack" => Some(Service::UploadPack),
            "git-receive-pack" => Some(Service::ReceivePack),
            _ => None,
        }
    }

    /// The service name as used in URLs.
    pub fn name(self) -> &'static str {
        match self {
            Service::UploadPack => "git-upload-pack",
            Service::ReceivePack => "git-receive-pack",
        }
    }

    /// Content type of the `info/refs` advertisement.
    pub fn advertisement_content_type(self) -> &'static str {
        match self {
            Service::UploadPack => "application/x-git-upload-pack-advertisement",
            Service::ReceivePack => "application/x-git-receive-pack-advertisement",
        }
    }

    /// Content type of the POST response.
    pub fn result_content_type(self) -> &'static str {
        match self {
            Service::UploadPack => "application/x-git-upload-pack-result",
            Service::ReceivePack => "application/x-git-receive-pack-result",
        }
    }

    /// Content type a client must use for the POST request.
    pub fn request_content_type(self) -> &'static str {
        match self {
            Service::UploadPack => "application/x-git-upload-pack-request",
            Service::ReceivePack => "application/x-git-receive-pack-request",
        }
    }
}

/// The wire protocol version a request asked for with `Git-Protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The original protocol.
    V0,
    /// v0 with a `version 1` line first.
    V1,
    /// Command based protocol v2 (fetch only; push stays v0 in git).
    V2,
}

impl Version {
    /// Parse a `Git-Protocol` header value such as `version=2` or
    /// `version=2:object-format=sha1`; the highest version named wins.
    pub fn from_header(value: Option<&str>) -> Self {
        let mut best = Version::V0;
        for part in value.unwrap_or("").split(':') {
            match part.trim() {
                "version=2" => best = Version::V2,
                "version=1" if best == Version::V0 => best = Version::V1,
                _ => {}
            }
        }
        best
    }
}

/// A server session id for `session-id=` (git's trace2 session id plays this
/// role): unique per advertisement, for correlating a client's requests in logs.
fn session_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "guts-{}-{:x}-{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Capabilities advertised by upload-pack in v0/v1.
const UPLOAD_PACK_CAPS: &str = "multi_ack thin-pack side-band side-band-64k ofs-delta shallow deepen-since deepen-not deepen-relative no-progress include-tag multi_ack_detailed allow-tip-sha1-in-want allow-reachable-sha1-in-want no-done";
/// Capabilities advertised by receive-pack.
const RECEIVE_PACK_CAPS: &str =
    "report-status report-status-v2 delete-refs side-band-64k quiet atomic ofs-delta push-options";

/// Write the `info/refs` response body for `service` at `version`.
///
/// v0/v1 start with the `# service=` preamble git's smart HTTP requires;
/// v2 (upload-pack only) is the capability advertisement alone, as
/// `git http-backend` sends it. receive-pack has no v2 and answers v0/v1.
///
/// `push_cert_nonce`, for receive-pack, adds `push-cert=<nonce>`: the client
/// must then sign its push (gitprotocol-capabilities "push-cert").
pub fn advertise(
    repo: &Repo,
    service: Service,
    version: Version,
    push_cert_nonce: Option<&str>,
    out: &mut dyn Write,
) -> Result<()> {
    let mut w = PktWriter::new(out);
    if service == Service::UploadPack && version == Version::V2 {
        w.line("version 2")?;
        w.line(&format!("agent={AGENT}"))?;
        w.line("ls-refs=unborn")?;
        w.line("fetch=shallow wait-for-done filter ref-in-want sideband-all")?;
        w.line("server-option")?;
        w.line("object-format=sha1")?;
        w.line(&format!("session-id={}", session_id()))?;
        w.line("object-info")?;
        w.flush_pkt()?;
        return Ok(());
    }
    w.line(&format!("# service={}", service.name()))?;
    w.flush_pkt()?;
    advertise_refs(repo, service, version, push_cert_nonce, w.into_inner())
}

/// The v0/v1 ref advertisement without smart HTTP's `# service=`
/// preamble, as a stateful connection (ssh, `git://`, a WebSocket) starts.
pub fn advertise_refs(
    repo: &Repo,
    service: Service,
    version: Version,
    push_cert_nonce: Option<&str>,
    out: &mut dyn Write,
) -> Result<()> {
    let mut w = PktWriter::new(out);
    if version == Version::V1 {
        w.line("version 1")?;
    }
    let refs = repo.refs()?;
    let mut caps = match service {
        Service::UploadPack => UPLOAD_PACK_CAPS.to_owned(),
        Service::ReceivePack => RECEIVE_PACK_CAPS.to_owned(),
    };
    let mut lines: Vec<(String, String)> = Vec::new();
    if service == Service::UploadPack {
        let head = repo.head()?;
        if let Some(id) = head.id {
            caps.push_str(&format!(" symref=HEAD:{}", head.target));
            lines.push((id.to_string(), "HEAD".into()));
        }
        caps.push_str(" filter");
    }
    for r in &refs {
        lines.push((r.id.to_string(), r.name.clone()));
        if service == Service::UploadPack {
            if let Some(p) = r.peeled {
                lines.push((p.to_string(), format!("{}^{{}}", r.name)));
            }
        }
    }
    if let (Service::ReceivePack, Some(nonce)) = (service, push_cert_nonce) {
        caps.push_str(&format!(" push-cert={nonce}"));
    }
    caps.push_str(&format!(
        " session-id={} object-format=sha1 agent={AGENT}",
        session_id()
    ));
    if lines.is_empty() {
        lines.push((
            gix_hash::Kind::Sha1.null().to_string(),
            "capabilities^{}".into(),
        ));
    }
    for (i, (id, name)) in lines.iter().enumerate() {
        if i == 0 {
            let mut data = format!("{id} {name}").into_bytes();
            data.push(0);
            data.extend_from_slice(caps.as_bytes());
            data.push(b'\n');
            w.data(&data)?;
        } else {
            w.line(&format!("{id} {name}"))?;
        }
    }
    w.flush_pkt()?;
    Ok(())
}

//! git over a WebSocket (ADR 0023): `GET /{owner}/{name}/git-ws?service=...`
//! upgraded to a WebSocket whose binary messages carry git's byte stream
//! both ways, as over ssh or `git://`: the stateful protocol, one
//! connection for the whole operation. `git-remote-guts` (git's remote
//! helper for `guts://` URLs) is the client.
//!
//! - `git-upload-pack`: protocol v2 only (`Git-Protocol: version=2` on the
//!   upgrade request); the capability advertisement, then commands until
//!   the client closes ([`guts_git::upload_pack::connection`]). With
//!   `resume=OFFSET-SHA1` the first command is an interrupted `fetch`
//!   asked again, and only the pack bytes past `OFFSET` are sent
//!   ([`guts_git::resume`]).
//! - `git-receive-pack`: v0 with push certificates, exactly as over HTTP
//!   (`crate::push`), the push token in `Authorization`.
//!
//! Everything that can be refused (unknown repository, bad token, no work
//! slot) is refused with an HTTP status before the upgrade.

mod bridge;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use futures_util::StreamExt;
use guts_git::names::RepoName;
use guts_git::protocol::{Service, Version};
use guts_git::resume::ResumePoint;
use guts_git::storage::Repo;
use guts_git::upload_pack::connection::{Connection, MAX_COMMANDS};
use guts_git::upload_pack::UploadStats;
use serde::Deserialize;
use tokio::sync::OwnedSemaphorePermit;

use crate::body::{blocking_reader, prefetch, response_channel, TransferLimits};
use crate::error::{GitHttpError, NodeError};
use crate::http::{open, protocol_version, request_host, Shared};
use crate::limits::Work;
use crate::server::HeldSlot;

/// Largest WebSocket message (and frame) the node accepts. git's packets
/// are at most 65,520 bytes and the helper sends what it reads at once.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Longest the node waits for the client's next message.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Deserialize)]
pub(crate) struct WsQuery {
    service: Option<String>,
    /// `OFFSET-SHA1`: resume the fetch asked first (upload-pack only).
    resume: Option<String>,
}

/// `GET /{owner}/{name}/git-ws?service=git-upload-pack|git-receive-pack`.
pub(crate) async fn git_ws(
    State(state): State<Shared>,
    Path((owner, name)): Path<(String, String)>,
    Query(q): Query<WsQuery>,
    headers: HeaderMap,
    held: Option<Extension<HeldSlot>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, GitHttpError> {
    let service = q
        .service
        .as_deref()
        .and_then(Service::from_name)
        .ok_or_else(|| {
            NodeError::Invalid("service must be git-upload-pack or git-receive-pack".into())
        })?;
    let ws = ws.map_err(|e| {
        NodeError::Invalid(format!(
            "this endpoint speaks git over a WebSocket (use git-remote-guts and a guts:// URL): {e}"
        ))
    })?;
    let ws = ws
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES);
    match service {
        Service::UploadPack => {
            let resume = q.resume.as_deref().map(parse_resume).transpose()?;
            let (name, repo) = open(&state, owner, name).await?;
            let version = protocol_version(&headers);
            let permit = state.slots.acquire(Work::Fetch).await?;
            Ok(ws.on_upgrade(move |socket| async move {
                let _held = held;
                let upload = Upload {
                    state,
                    name,
                    repo,
                    version,
                    resume,
                };
                let limits = limits(&upload.state);
                serve(socket, limits, move |input, out| {
                    upload.run(permit, input, out)
                })
                .await
            }))
        }
        Service::ReceivePack => {
            if q.resume.is_some() {
                return Err(NodeError::Invalid("only fetches resume".into()).into());
            }
            let token = crate::tokens::from_headers(&headers)?;
            let (name, repo) = open(&state, owner, name).await?;
            let gate = crate::push::gate(&state, &name, token).await?;
            let host = request_host(&headers);
            let permit = state.slots.acquire(Work::Push).await?;
            let limits = limits(&state);
            Ok(ws.on_upgrade(move |socket| async move {
                let _held = held;
                serve(socket, limits, move |input, out| {
                    let push = crate::push::Push {
                        repos: &state.repos,
                        metrics: &state.metrics,
                        repo: &repo,
                        name: &name,
                        host: host.as_deref(),
                        probe: false,
                    };
                    push.run_connected(gate, permit, &state.slots, input, out);
                })
                .await
            }))
        }
    }
}

/// `OFFSET-SHA1HEX`.
fn parse_resume(text: &str) -> Result<ResumePoint, NodeError> {
    let bad = || NodeError::Invalid("resume must be OFFSET-SHA1 (40 hex digits)".into());
    let (offset, hex) = text.split_once('-').ok_or_else(bad)?;
    let offset: u64 = offset.parse().map_err(|_| bad())?;
    if hex.len() != 40 || offset == 0 {
        return Err(bad());
    }
    let mut sha1 = [0u8; 20];
    for (i, byte) in sha1.iter_mut().enumerate() {
        let pair = hex.get(2 * i..2 * i + 2).ok_or_else(bad)?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    Ok(ResumePoint { offset, sha1 })
}

/// The node's transfer limits (minimum rate), with at most [`IDLE_TIMEOUT`]
/// between the client's messages.
fn limits(state: &Shared) -> TransferLimits {
    TransferLimits {
        idle: state.transfer.idle.min(IDLE_TIMEOUT),
        ..state.transfer
    }
}

/// Run `service` on a blocking thread over the two directions of `socket`.
async fn serve<F>(socket: WebSocket, limits: TransferLimits, service: F)
where
    F: FnOnce(&mut dyn std::io::BufRead, &mut dyn std::io::Write) + Send + 'static,
{
    let (sink, stream) = socket.split();
    let mut incoming = bridge::incoming(stream, &limits);
    // Nothing is read ahead: the service reads the client's first bytes.
    let pre = match prefetch(&mut incoming, 0).await {
        Ok(pre) => pre,
        Err(e) => {
            tracing::debug!(error = %e, "websocket ended at once");
            return;
        }
    };
    let (mut writer, body) = response_channel(&limits);
    let pump = tokio::spawn(bridge::outgoing(sink, body));
    let work = tokio::task::spawn_blocking(move || {
        let mut input = blocking_reader(pre, incoming, false);
        service(&mut input, &mut writer);
    });
    if let Err(e) = work.await {
        tracing::warn!(error = %e, "websocket service failed");
    }
    let _ = pump.await;
}

/// An upload-pack connection.
struct Upload {
    state: Shared,
    name: RepoName,
    repo: Repo,
    version: Version,
    resume: Option<ResumePoint>,
}

impl Upload {
    fn run(
        self,
        permit: OwnedSemaphorePermit,
        input: &mut dyn std::io::BufRead,
        out: &mut dyn std::io::Write,
    ) {
        let sent = std::cell::Cell::new(0u64);
        let mut out = Tally {
            inner: out,
            sent: &sent,
        };
        if self.version != Version::V2 {
            let msg = "ERR upload-pack over a WebSocket speaks protocol v2 only \
                       (send Git-Protocol: version=2; git-remote-guts does)\n";
            let _ = guts_git::pktline::write_pkt(&mut out, msg.as_bytes());
            let _ = std::io::Write::flush(&mut out);
            return;
        }
        let started = std::time::Instant::now();
        let metrics = Arc::clone(&self.state.metrics);
        let mut conn =
            match Connection::start(&self.repo, input, &mut out, MAX_COMMANDS, self.resume) {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(repo = %self.name, error = %e, "advertisement not delivered");
                    return;
                }
            };
        // The slot taken before the upgrade covered the advertisement; each
        // command takes one again once it has arrived, so a client that
        // waits before its next command holds no work slot.
        drop(permit);
        let mut sent_before = 0;
        let result = loop {
            let mut stats = UploadStats::default();
            let result = self.next(&mut conn, &mut stats);
            let now = sent.get();
            metrics
                .git
                .upload_pack(&stats, now - sent_before, result.as_ref().err());
            sent_before = now;
            match result {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        let commands = conn.served();
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(()) => {
                tracing::debug!(repo = %self.name, commands, elapsed_ms, resumed = self.resume.is_some(), "websocket upload-pack done")
            }
            Err(e) => {
                tracing::warn!(repo = %self.name, commands, error = %e, "websocket upload-pack failed")
            }
        }
        crate::memory::release();
    }
}

impl Upload {
    /// Read the next command, wait for a fetch slot, answer it. Must run on
    /// a blocking thread of the runtime. `Ok(false)` when the client ended.
    fn next(&self, conn: &mut Connection<'_>, stats: &mut UploadStats) -> guts_git::Result<bool> {
        let Some(command) = conn.next_command(stats)? else {
            return Ok(false);
        };
        let slots = &self.state.slots;
        let permit = tokio::runtime::Handle::current().block_on(slots.acquire(Work::Fetch));
        let _permit = match permit {
            Ok(p) => p,
            Err(e) => {
                let why = e.to_string();
                conn.refuse(&why, stats);
                return Err(guts_git::Error::Protocol(why));
            }
        };
        conn.answer(command, stats).map(|()| true)
    }
}

/// Counts the bytes written through it into a cell read meanwhile.
struct Tally<'a> {
    inner: &'a mut dyn std::io::Write,
    sent: &'a std::cell::Cell<u64>,
}

impl std::io::Write for Tally<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sent.set(self.sent.get() + n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_points_parse_strictly() {
        let p = parse_resume("1234-00112233445566778899aabbccddeeff00112233").expect("valid");
        assert_eq!(p.offset, 1234);
        assert_eq!(p.sha1[1], 0x11);
        for bad in [
            "",
            "1234",
            "x-00112233445566778899aabbccddeeff00112233",
            "0-00112233445566778899aabbccddeeff00112233",
            "12-0011",
            "12-zz112233445566778899aabbccddeeff00112233",
            "12-é0112233445566778899aabbccddeeff0011223",
        ] {
            assert!(parse_resume(bad).is_err(), "{bad}");
        }
    }
}

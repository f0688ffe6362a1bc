//! One Git LFS object transfer on a replication stream (ADR 0024), both
//! ends: the requester sends `Request { kind: Lfs, repo, lfs_oid,
//! resume_offset }`; the server answers one [`Items`] frame (an error, or
//! the object's size in `next`), then the object's bytes from the offset
//! on, and closes the stream. The bytes are streamed into the replica,
//! which verifies the size and SHA-256 before the object is visible; they
//! are never all in memory. Whether to try again, and whom, is the
//! service's decision.

use std::io::Write;
use std::sync::Arc;

use guts_git::lfs::{LfsOid, LfsPointer};
use guts_git::names::RepoName;
use libp2p::PeerId;
use tokio_util::compat::{FuturesAsyncReadCompatExt, FuturesAsyncWriteCompatExt};
use tokio_util::io::SyncIoBridge;

use super::driver::blocking;
use super::fetch::failure;
use super::Replica;
use crate::error::{Error, Result};
use crate::network::Handle;
use crate::service::Failure;
use crate::wire::{read_frame, write_frame, Items, Kind, Request, REPLICATION_PROTOCOL};

/// Buffer between the stream and the store, each way.
const BUFFER: usize = 64 * 1024;

/// Fetch `pointer`'s object of `repo` from `peer` into `replica`, after the
/// bytes kept from an interrupted attempt.
pub(super) async fn fetch<R: Replica>(
    net: &Handle,
    replica: Arc<R>,
    peer: PeerId,
    repo: RepoName,
    pointer: LfsPointer,
) -> std::result::Result<(), Failure> {
    let local = |e: Error| Failure::Local(e.to_string());
    let (r, rep) = (repo.clone(), Arc::clone(&replica));
    let resume_offset = blocking(move || rep.lfs_resume_point(&r, &pointer))
        .await
        .map_err(local)?;
    if resume_offset > 0 {
        tracing::info!(%peer, %repo, oid = %pointer.oid, bytes = resume_offset, "resuming an interrupted LFS transfer");
    }
    let broken = |e: Error| match e {
        Error::Peer(m) => Failure::Peer(m),
        other => Failure::Interrupted(other.to_string()),
    };
    let mut stream = net
        .open_stream(peer, REPLICATION_PROTOCOL)
        .await
        .map_err(broken)?;
    let req = Request {
        kind: Kind::Lfs as i32,
        repo: repo.to_string(),
        lfs_oid: pointer.oid.0.to_vec(),
        resume_offset,
        ..Default::default()
    };
    write_frame(&mut stream, &req).await.map_err(broken)?;
    let header: Items = read_frame(&mut stream).await.map_err(broken)?;
    if !header.error.is_empty() {
        return Err(Failure::Refused(header.error));
    }
    if header.next != pointer.size {
        return Err(Failure::Peer(format!(
            "LFS object {} has {} bytes there, its pointer says {}",
            pointer.oid, header.next, pointer.size
        )));
    }
    let reader = SyncIoBridge::new(stream.compat());
    blocking(move || {
        let mut reader = std::io::BufReader::with_capacity(BUFFER, reader);
        replica.lfs_receive(&repo, &pointer, resume_offset, &mut reader)
    })
    .await
    .map_err(local)?
    .map_err(failure)
}

/// Serve a peer's `Lfs` request: the object, if this node seeds the
/// repository and holds it.
pub(super) async fn serve<R: Replica>(
    replica: Arc<R>,
    peer: PeerId,
    req: Request,
    mut stream: libp2p::Stream,
) -> Result<()> {
    let repo =
        RepoName::parse(&req.repo).map_err(|e| Error::Peer(format!("bad repository name: {e}")))?;
    let oid = <[u8; 32]>::try_from(req.lfs_oid.as_slice())
        .map(LfsOid)
        .map_err(|_| Error::Peer(format!("an LFS object id of {} bytes", req.lfs_oid.len())))?;
    let offset = req.resume_offset;
    let (r, rep) = (repo.clone(), Arc::clone(&replica));
    let (size, mut object) = match blocking(move || rep.lfs_open(&r, &oid, offset)).await? {
        Ok(opened) => opened,
        Err(refused) => {
            tracing::debug!(%peer, %repo, %oid, error = %refused, "LFS object not served");
            let answer = Items {
                error: refused.to_string(),
                ..Default::default()
            };
            return write_frame(&mut stream, &answer).await;
        }
    };
    tracing::debug!(%peer, %repo, %oid, size, offset, "serving an LFS object");
    let header = Items {
        next: size,
        ..Default::default()
    };
    write_frame(&mut stream, &header).await?;
    let mut writer =
        std::io::BufWriter::with_capacity(BUFFER, SyncIoBridge::new(stream.compat_write()));
    blocking(move || {
        let copied = std::io::copy(&mut object, &mut writer);
        let flushed = writer.flush();
        let _ = writer.get_mut().shutdown();
        copied.and(flushed)
    })
    .await?
    .map(|_| ())
    .map_err(Error::from)
}

//! One object transfer, as the service asks for it: a git protocol v2
//! `fetch` (wants: the tips, haves: the local refs) on a replication
//! stream, resuming after the pack bytes kept from an interrupted attempt,
//! streamed into the replica's quarantine. Whether to try again is the
//! service's decision.

use std::sync::Arc;

use guts_git::names::RepoName;
use guts_git::ObjectId;
use libp2p::PeerId;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tokio_util::io::SyncIoBridge;

use super::driver::blocking;
use super::{Fault, Replica};
use crate::network::Handle;
use crate::service::Failure;
use crate::wire::{write_frame, Kind, Request, REPLICATION_PROTOCOL};

/// The service's view of a replica's fault.
pub(super) fn failure(f: Fault) -> Failure {
    match f {
        Fault::Peer(m) => Failure::Peer(m),
        Fault::Local(m) => Failure::Local(m),
        Fault::Interrupted(m) => Failure::Interrupted(m),
    }
}

/// Fetch the objects of `tips` from `peer` into `replica`.
pub(super) async fn fetch<R: Replica>(
    net: &Handle,
    replica: Arc<R>,
    peer: PeerId,
    repo: RepoName,
    tips: Vec<ObjectId>,
) -> Result<(), Failure> {
    let local = |e: crate::Error| Failure::Local(e.to_string());
    let (r, t, rep) = (repo.clone(), tips.clone(), Arc::clone(&replica));
    let (body, resume) = blocking(move || {
        let body = rep.fetch_request(&r, &t)?;
        let resume = rep.resume_point(&r, &body);
        Ok::<_, Fault>((body, resume))
    })
    .await
    .map_err(local)?
    .map_err(failure)?;
    let (resume_offset, resume_sha1) =
        resume.map_or((0, Vec::new()), |p| (p.offset, p.sha1.to_vec()));
    if resume_offset > 0 {
        tracing::info!(%peer, %repo, bytes = resume_offset, "resuming an interrupted transfer");
    }
    // A stream that cannot be opened or written is a broken transfer too.
    let broken = |e: crate::Error| Failure::Interrupted(e.to_string());
    let mut stream = net
        .open_stream(peer, REPLICATION_PROTOCOL)
        .await
        .map_err(broken)?;
    let req = Request {
        kind: Kind::Fetch as i32,
        repo: repo.to_string(),
        body: body.clone(),
        resume_offset,
        resume_sha1,
        ..Default::default()
    };
    write_frame(&mut stream, &req).await.map_err(broken)?;
    let reader = SyncIoBridge::new(stream.compat());
    blocking(move || {
        let mut reader = std::io::BufReader::with_capacity(64 * 1024, reader);
        replica.receive(&repo, &tips, &body, resume_offset, &mut reader)
    })
    .await
    .map_err(local)?
    .map_err(failure)
}

//! The client side of a protocol v2 `fetch`, as one node uses it to take
//! objects from another: the request, and the reception of the answer
//! through the same quarantine as a push ([`crate::pack_in`]).
//!
//! The answer is untrusted. Its pack is indexed (every object hashed), must
//! connect the wanted tips to what the repository holds, and becomes visible
//! only after both checks. Bytes of an answer that broke off are kept
//! ([`crate::resume`]) so the next attempt asks for the rest only.

use std::io::BufRead;

use gix_hash::ObjectId;

use crate::error::Error;
use crate::pktline::{PackfileReader, PktWriter};
use crate::resume::{Partial, ResumePoint};
use crate::storage::Repo;

/// Why receiving a fetch answer failed, by whose fault.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// What the server sent is invalid: malformed or truncated pack, wrong
    /// hashes, objects that do not connect, an error on band 3.
    #[error("{0}")]
    Invalid(Error),
    /// The answer broke off; the bytes that arrived are kept, and the next
    /// attempt with the same request resumes after them.
    #[error("the transfer broke off: {0}")]
    Interrupted(Error),
    /// This node failed (its storage, its database).
    #[error("{0}")]
    Local(Error),
}

impl FetchError {
    /// What the server is to blame for: what it sent. This node's own
    /// failures (its disk, its database) are local, so an honest server is
    /// never struck for them.
    fn classify(e: Error) -> FetchError {
        match e {
            Error::Protocol(_)
            | Error::TooLarge(_)
            | Error::Pack(_)
            | Error::NotConnected { .. }
            | Error::CorruptObject { .. }
            | Error::MissingObject(_)
            | Error::Limit { .. }
            | Error::Unsupported(_) => FetchError::Invalid(e),
            other => FetchError::Local(other),
        }
    }
}

/// A protocol v2 `fetch` request for `wants`, telling the server about
/// `haves` so that it sends only what is new, in one round trip (`done`).
pub fn request(wants: &[ObjectId], haves: &[ObjectId]) -> Vec<u8> {
    let mut w = PktWriter::new(Vec::new());
    // Writing to a Vec cannot fail.
    let _ = write_request(&mut w, wants, haves);
    w.into_inner()
}

fn write_request(
    w: &mut PktWriter<Vec<u8>>,
    wants: &[ObjectId],
    haves: &[ObjectId],
) -> std::io::Result<()> {
    w.line("command=fetch")?;
    w.line("object-format=sha1")?;
    w.delim()?;
    w.line("ofs-delta")?;
    w.line("no-progress")?;
    for want in wants {
        w.line(&format!("want {want}"))?;
    }
    for have in haves {
        w.line(&format!("have {have}"))?;
    }
    w.line("done")?;
    w.flush_pkt()
}

/// A fetch request for `wants` with every ref tip of `repo` as a have.
pub fn request_for(repo: &Repo, wants: &[ObjectId]) -> crate::Result<Vec<u8>> {
    let haves: Vec<ObjectId> = repo.refs()?.into_iter().map(|r| r.id).collect();
    Ok(request(wants, &haves))
}

/// The pack bytes kept from an interrupted answer to `request`, if any.
pub fn resume_point(repo: &Repo, request: &[u8]) -> Option<ResumePoint> {
    Partial::for_request(&repo.objects_dir(), request)
        .point()
        .ok()
        .flatten()
}

/// Receive the server's answer to `request` (a v2 `fetch` response) into
/// `repo`: its pack goes through the quarantine, must connect `tips`, and is
/// published only then. The first `resume_from` pack bytes are the ones kept
/// from an earlier attempt (the answer leaves them out); if the answer
/// breaks off, what arrived is kept for the next attempt.
///
/// Returns the Git LFS pointers among the pack's blobs (at most
/// [`crate::lfs::MAX_POINTERS_PER_PACK`]): the LFS objects the new
/// objects refer to, which the caller may then fetch.
pub fn receive(
    repo: &Repo,
    tips: &[ObjectId],
    request: &[u8],
    resume_from: u64,
    answer: &mut dyn BufRead,
    max_pack_bytes: u64,
) -> Result<Vec<crate::lfs::LfsPointer>, FetchError> {
    let local = |e: Error| FetchError::Local(e);
    let odb = repo.objects().map_err(local)?;
    let partial = Partial::for_request(&repo.objects_dir(), request);
    let network = PackfileReader::new(answer);
    let reader = partial
        .reader(resume_from, network)
        .map_err(|e| local(e.into()))?;
    let mut reader = std::io::BufReader::new(reader);
    let received = crate::pack_in::receive(
        &repo.objects_dir(),
        &odb,
        &mut reader,
        &crate::pack_in::PackLimits::for_max_pack_bytes(max_pack_bytes),
        &mut |_| {},
    );
    let kept = partial.settle(reader.into_inner(), received.is_ok());
    let q = received.map_err(|e| {
        if kept {
            FetchError::Interrupted(e)
        } else {
            FetchError::classify(e)
        }
    })?;
    q.check_connectivity(&odb, tips)
        .map_err(FetchError::classify)?;
    // The pack is valid (indexed, every object hashed): a failure to scan
    // it is not the server's fault, and costs only its LFS objects.
    let pointers =
        crate::lfs::pointers_in(&q, crate::lfs::MAX_POINTERS_PER_PACK).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot look for LFS pointers in a received pack");
            Vec::new()
        });
    q.publish(&repo.objects_dir()).map_err(local)?;
    Ok(pointers)
}

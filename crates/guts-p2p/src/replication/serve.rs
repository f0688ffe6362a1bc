//! Serving peers' replication requests (identity, log summary, buckets,
//! keys, entries, objects, LFS objects), within bounds on how many are
//! served at once.

use std::io::Write;
use std::sync::Arc;

use futures_util::StreamExt;
use guts_git::names::RepoName;
use guts_git::resume::ResumePoint;
use libp2p::PeerId;
use prost::Message;
use tokio_util::compat::FuturesAsyncWriteCompatExt;
use tokio_util::io::SyncIoBridge;

use super::driver::blocking;
use super::Replica;
use crate::error::{Error, Result};
use crate::limits::{
    LOG_PAGE_BYTES, MAX_FRAME_BYTES, MAX_LOG_ENTRIES, MAX_SERVED_PER_PEER, MAX_SERVED_TOTAL,
    STREAM_TIMEOUT,
};
use crate::logset::Key;
use crate::network::Handle;
use crate::wire::{
    read_frame, write_frame, Items, Kind, LogSummary, Request, REPLICATION_PROTOCOL,
};

/// Bounds on the replication requests served at once
/// ([`MAX_SERVED_PER_PEER`] per peer, [`MAX_SERVED_TOTAL`] in all).
#[derive(Default)]
struct ServeLimits {
    per_peer: Arc<std::sync::Mutex<std::collections::HashMap<PeerId, usize>>>,
    total: Arc<std::sync::atomic::AtomicUsize>,
}

/// One admitted request; released when dropped.
struct ServePermit {
    peer: PeerId,
    limits: ServeLimits,
}

impl ServeLimits {
    fn admit(&mut self, peer: PeerId) -> Option<ServePermit> {
        use std::sync::atomic::Ordering;
        let mut map = self.per_peer.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(peer).or_default();
        if *n >= MAX_SERVED_PER_PEER || self.total.load(Ordering::SeqCst) >= MAX_SERVED_TOTAL {
            return None;
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::SeqCst);
        Some(ServePermit {
            peer,
            limits: ServeLimits {
                per_peer: Arc::clone(&self.per_peer),
                total: Arc::clone(&self.total),
            },
        })
    }
}

impl Drop for ServePermit {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        let mut map = self
            .limits
            .per_peer
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
        self.limits.total.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Keys in one `Keys` answer, so that it fits in a frame (each key costs
/// 32 bytes and a little framing).
pub const MAX_KEYS_PER_ANSWER: usize = (MAX_FRAME_BYTES - 64 * 1024) / 40;

/// The answer to a request other than `Fetch`, from `replica`: what a
/// peer asking for it gets. Pure and synchronous (the simulator serves with
/// it too); `None` fields become an error answer.
pub fn answer<R: Replica>(replica: &R, req: &Request) -> Items {
    let refused = |error: String| Items {
        error,
        ..Default::default()
    };
    let Ok(kind) = Kind::try_from(req.kind) else {
        return refused(format!("unknown request kind {}", req.kind));
    };
    // Not a repository name: no repository this node has.
    let Ok(repo) = RepoName::parse(&req.repo) else {
        return refused(format!("this node does not have {}", req.repo));
    };
    let items = match kind {
        Kind::Identity => replica.identity(&repo),
        Kind::LogSummary => summary_answer(replica, &repo, &req.summary),
        Kind::Buckets => replica
            .log_buckets(&repo)
            .map(|b| vec![b.to_wire().encode_to_vec()]),
        Kind::Keys => keys_answer(replica, &repo, &req.buckets),
        Kind::Entries if req.buckets.is_empty() => {
            return entries_answer(replica, &repo, &req.keys)
        }
        Kind::Entries => return range_answer(replica, &repo, req),
        Kind::Fetch => return refused("a fetch is answered with a pack".into()),
        Kind::Lfs => return refused("an LFS object is answered with its bytes".into()),
    };
    match items {
        Some(items) => Items {
            items,
            ..Default::default()
        },
        None => refused(format!("this node does not have {repo}")),
    }
}

/// The summary; with the buckets too when the requester's summary differs
/// (read only then: comparing equal logs, the common case, reads them once).
fn summary_answer<R: Replica>(replica: &R, repo: &RepoName, theirs: &[u8]) -> Option<Vec<Vec<u8>>> {
    let ours = replica.log_summary(repo)?;
    let differs = LogSummary::decode(theirs).is_ok_and(|t| !t.same_updates(&ours));
    let mut items = vec![ours.encode_to_vec()];
    if differs && ours.updates > 0 {
        items.push(replica.log_buckets(repo)?.to_wire().encode_to_vec());
    }
    Some(items)
}

/// The entries of `req.buckets` whose keys are above `req.after` and not
/// in `req.keys`, in key order, as many as fit in [`LOG_PAGE_BYTES`] and
/// [`MAX_LOG_ENTRIES`]; `next` is 1 when more remain.
fn range_answer<R: Replica>(replica: &R, repo: &RepoName, req: &Request) -> Items {
    let refused = |error: String| Items {
        error,
        ..Default::default()
    };
    if req.keys.len() > MAX_KEYS_PER_ANSWER {
        return refused(format!("{} keys held: over the limit", req.keys.len()));
    }
    let haves: std::collections::HashSet<&[u8]> = req.keys.iter().map(Vec::as_slice).collect();
    let mut buckets = req.buckets.clone();
    buckets.sort_unstable();
    buckets.dedup();
    let Some(keys) = replica.log_keys(repo, &buckets) else {
        return refused(format!("this node does not have {repo}"));
    };
    let mut items = Vec::new();
    let (mut bytes, mut more) = (0usize, false);
    for key in keys
        .iter()
        .filter(|k| k.as_slice() > req.after.as_slice() && !haves.contains(k.as_slice()))
    {
        let Some((_, entry)) = replica.log_entry(repo, key) else {
            continue;
        };
        let cost = entry.len() + 8;
        if items.len() == MAX_LOG_ENTRIES || (!items.is_empty() && bytes + cost > LOG_PAGE_BYTES) {
            more = true;
            break;
        }
        bytes += cost;
        items.push(entry);
    }
    Items {
        items,
        error: String::new(),
        next: u64::from(more),
    }
}

/// The keys in `buckets` (each bucket once), at most
/// [`MAX_KEYS_PER_ANSWER`]: a peer that lacks more gets the rest at its
/// next comparison.
fn keys_answer<R: Replica>(replica: &R, repo: &RepoName, buckets: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut wanted = buckets.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    let keys = replica.log_keys(repo, &wanted)?;
    Some(
        keys.iter()
            .take(MAX_KEYS_PER_ANSWER)
            .map(|k| k.to_vec())
            .collect(),
    )
}

/// The entries of `keys`, in this node's log order, as many as fit in
/// [`LOG_PAGE_BYTES`] (at most [`MAX_LOG_ENTRIES`] keys are looked at);
/// `next` says how many keys were answered when not all.
fn entries_answer<R: Replica>(replica: &R, repo: &RepoName, keys: &[Vec<u8>]) -> Items {
    if replica.log_buckets(repo).is_none() {
        return Items {
            error: format!("this node does not have {repo}"),
            ..Default::default()
        };
    }
    let mut found = Vec::new();
    let (mut bytes, mut answered) = (0usize, 0usize);
    for k in keys.iter().take(MAX_LOG_ENTRIES) {
        let Ok(key) = Key::try_from(k.as_slice()) else {
            return Items {
                error: format!("a key of {} bytes", k.len()),
                ..Default::default()
            };
        };
        if let Some((seq, entry)) = replica.log_entry(repo, &key) {
            let cost = entry.len() + 8;
            if answered > 0 && bytes + cost > LOG_PAGE_BYTES {
                break;
            }
            bytes += cost;
            found.push((seq, entry));
        }
        answered += 1;
    }
    found.sort_unstable_by_key(|(seq, _)| *seq);
    Items {
        items: found.into_iter().map(|(_, e)| e).collect(),
        error: String::new(),
        next: if answered < keys.len() {
            answered as u64
        } else {
            0
        },
    }
}

/// Accept replication streams and serve each on its own task, within
/// [`ServeLimits`] and [`STREAM_TIMEOUT`].
pub(super) fn spawn_server<R: Replica>(net: &Handle, replica: Arc<R>) -> Result<()> {
    let mut incoming = net.accept(REPLICATION_PROTOCOL)?;
    tokio::spawn(async move {
        let mut limits = ServeLimits::default();
        while let Some((peer, stream)) = incoming.next().await {
            // A flood of requests is refused, not queued: the stream is
            // dropped (the peer sees it closed).
            let Some(permit) = limits.admit(peer) else {
                tracing::warn!(%peer, "too many concurrent replication requests; one refused");
                continue;
            };
            let replica = Arc::clone(&replica);
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(STREAM_TIMEOUT, serve(replica, peer, stream)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(%peer, error = %e, "replication request failed")
                    }
                    Err(_) => tracing::warn!(%peer, "replication request timed out"),
                }
            });
        }
    });
    Ok(())
}

/// Serve one request.
async fn serve<R: Replica>(
    replica: Arc<R>,
    peer: PeerId,
    mut stream: libp2p::Stream,
) -> Result<()> {
    let req: Request = read_frame(&mut stream).await?;
    if req.kind == Kind::Lfs as i32 {
        return super::lfs::serve(replica, peer, req, stream).await;
    }
    if req.kind == Kind::Fetch as i32 {
        let repo = RepoName::parse(&req.repo)
            .map_err(|e| Error::Peer(format!("bad repository name: {e}")))?;
        return serve_objects(replica, peer, repo, req, stream).await;
    }
    let reply = blocking(move || answer(&*replica, &req)).await?;
    write_frame(&mut stream, &reply).await
}

/// Answer a `Fetch` request with upload-pack's output, streamed until
/// done, leaving out the prefix the peer holds if it matches.
async fn serve_objects<R: Replica>(
    replica: Arc<R>,
    peer: PeerId,
    repo: RepoName,
    req: Request,
    stream: libp2p::Stream,
) -> Result<()> {
    tracing::debug!(%peer, %repo, "serving objects");
    // Buffered: upload-pack writes pkt-lines, often small; each
    // unbuffered write would be its own yamux frame.
    let mut writer =
        std::io::BufWriter::with_capacity(64 * 1024, SyncIoBridge::new(stream.compat_write()));
    blocking(move || {
        let resume = <[u8; 20]>::try_from(req.resume_sha1.as_slice())
            .ok()
            .filter(|_| req.resume_offset > 0)
            .map(|sha1| ResumePoint {
                offset: req.resume_offset,
                sha1,
            });
        let result = replica.serve_fetch(&repo, &req.body, resume, &mut writer);
        let _ = writer.flush();
        let _ = writer.get_mut().shutdown();
        result
    })
    .await?
    .map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_is_bounded_per_peer_and_in_all() {
        let mut limits = ServeLimits::default();
        let a = PeerId::random();
        let mut held: Vec<ServePermit> = (0..MAX_SERVED_PER_PEER)
            .map(|_| limits.admit(a).expect("within the per-peer bound"))
            .collect();
        assert!(limits.admit(a).is_none(), "one more from the same peer");
        held.pop();
        assert!(
            limits.admit(a).is_some(),
            "a slot freed by a finished request"
        );
        drop(held);
        let mut others = Vec::new();
        while let Some(p) = limits.admit(PeerId::random()) {
            others.push(p);
            assert!(others.len() <= MAX_SERVED_TOTAL);
        }
        assert_eq!(others.len(), MAX_SERVED_TOTAL);
        drop(others);
        assert!(limits.admit(a).is_some(), "all released");
    }
}

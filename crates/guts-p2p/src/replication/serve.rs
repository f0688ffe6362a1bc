//! Serving peers' replication requests (identity, log, log summary,
//! objects), within bounds on how many are served at once.

use std::io::Write;
use std::sync::Arc;

use futures_util::StreamExt;
use guts_git::names::RepoName;
use guts_git::resume::ResumePoint;
use libp2p::PeerId;
use prost::Message;
use tokio_util::compat::FuturesAsyncWriteCompatExt;
use tokio_util::io::SyncIoBridge;

use super::{blocking, Replica, Replicator};
use crate::error::{Error, Result};
use crate::limits::{
    LOG_PAGE_BYTES, MAX_LOG_ENTRIES, MAX_SERVED_PER_PEER, MAX_SERVED_TOTAL, STREAM_TIMEOUT,
};
use crate::wire::{read_frame, write_frame, Items, Kind, Request, REPLICATION_PROTOCOL};

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

/// One page of a log: entries from `start` on, at most [`MAX_LOG_ENTRIES`]
/// and [`LOG_PAGE_BYTES`] of them, and where the next page starts (0: none).
pub fn log_page(mut log: Vec<Vec<u8>>, start: usize) -> (Vec<Vec<u8>>, u64) {
    let start = start.min(log.len());
    let mut page: Vec<Vec<u8>> = log.drain(start..).collect();
    let (mut count, mut bytes) = (0, 0);
    for entry in &page {
        // Each entry costs its length plus a few bytes of protobuf framing.
        let cost = entry.len() + 8;
        if count == MAX_LOG_ENTRIES || (count > 0 && bytes + cost > LOG_PAGE_BYTES) {
            break;
        }
        count += 1;
        bytes += cost;
    }
    let more = page.len() > count;
    page.truncate(count);
    let next = if more { (start + count) as u64 } else { 0 };
    (page, next)
}

impl<R: Replica> Replicator<R> {
    /// Accept replication streams and serve each on its own task, within
    /// [`ServeLimits`] and [`STREAM_TIMEOUT`].
    pub(super) fn spawn_server(&self) -> Result<()> {
        let mut incoming = self.net.accept(REPLICATION_PROTOCOL)?;
        let server = self.clone();
        tokio::spawn(async move {
            let mut limits = ServeLimits::default();
            while let Some((peer, stream)) = incoming.next().await {
                // A flood of requests is refused, not queued: the stream is
                // dropped (the peer sees it closed).
                let Some(permit) = limits.admit(peer) else {
                    tracing::warn!(%peer, "too many concurrent replication requests; one refused");
                    continue;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(STREAM_TIMEOUT, server.serve(peer, stream)).await {
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
    async fn serve(&self, peer: PeerId, mut stream: libp2p::Stream) -> Result<()> {
        let req: Request = read_frame(&mut stream).await?;
        let kind =
            Kind::try_from(req.kind).map_err(|_| Error::Peer("unknown request kind".into()))?;
        let name = RepoName::parse(&req.repo);
        if kind == Kind::Fetch {
            let repo = name.map_err(|e| Error::Peer(format!("bad repository name: {e}")))?;
            return self.serve_objects(peer, repo, req, stream).await;
        }
        let reply = match name {
            Ok(repo) => self.answer(kind, repo, req.start).await?,
            // Not a repository name: no repository this node has.
            Err(_) => None,
        };
        let reply = reply.unwrap_or_else(|| Items {
            error: format!("this node does not have {}", req.repo),
            ..Default::default()
        });
        write_frame(&mut stream, &reply).await
    }

    /// The answer to an `Identity`, `Log` (the page from `start`) or
    /// `LogSummary` request, if this node has the repository.
    async fn answer(&self, kind: Kind, repo: RepoName, start: u64) -> Result<Option<Items>> {
        let replica = Arc::clone(&self.replica);
        blocking(move || {
            let items = match kind {
                Kind::Identity => replica.identity(&repo)?,
                Kind::LogSummary => vec![replica.log_summary(&repo)?.encode_to_vec()],
                _ => {
                    let log = replica.log(&repo)?;
                    let log = log.iter().map(Message::encode_to_vec).collect();
                    let start = usize::try_from(start).unwrap_or(usize::MAX);
                    let (items, next) = log_page(log, start);
                    return Some(Items {
                        items,
                        error: String::new(),
                        next,
                    });
                }
            };
            Some(Items {
                items,
                ..Default::default()
            })
        })
        .await
    }

    /// Answer a `Fetch` request with upload-pack's output, streamed until
    /// done, leaving out the prefix the peer holds if it matches.
    async fn serve_objects(
        &self,
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
        let replica = Arc::clone(&self.replica);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_paged_by_count_and_bytes() {
        let small: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10]).collect();
        assert_eq!(log_page(small.clone(), 0), (small.clone(), 0));
        assert_eq!(log_page(small.clone(), 3), (small[3..].to_vec(), 0));
        assert_eq!(log_page(small.clone(), 9), (Vec::new(), 0));
        // Entries of 1 MiB: a page stops before the frame would overflow.
        let big: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 1 << 20]).collect();
        let (first, next) = log_page(big.clone(), 0);
        assert!(!first.is_empty() && first.len() < 10);
        assert!(first.iter().map(|e| e.len() + 8).sum::<usize>() <= LOG_PAGE_BYTES);
        let mut all = first;
        let mut start = next;
        while start != 0 {
            let (page, next) = log_page(big.clone(), start as usize);
            assert!(!page.is_empty(), "every page makes progress");
            all.extend(page);
            start = next;
        }
        assert_eq!(all, big, "the pages cover the log once, in order");
        let many: Vec<Vec<u8>> = (0..MAX_LOG_ENTRIES + 3).map(|_| vec![1]).collect();
        let (page, next) = log_page(many, 0);
        assert_eq!(
            (page.len(), next),
            (MAX_LOG_ENTRIES, MAX_LOG_ENTRIES as u64)
        );
    }

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

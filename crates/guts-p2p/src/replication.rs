//! The replication protocol.
//!
//! - A node that accepts a push announces the signed update on the
//!   repository's gossip topic. A receiver hands it to its [`Replica`], which
//!   verifies it (signature, delegate, repository) before anything else;
//!   invalid announcements are rejected, which stops their propagation and
//!   counts against the sender ([`Fault::Peer`] only; a failure of this
//!   node, [`Fault::Local`], does not). Valid ones are forwarded.
//! - Missing objects are fetched in one round trip from the peer that
//!   delivered the announcement: a git protocol v2 `fetch` (wants = the new
//!   tips, haves = local tips, `done`) answered by the peer's upload-pack,
//!   streamed into the replica's push quarantine and checked there (object
//!   hashes, connectivity) before refs move. Then the node re-announces, so
//!   peers further away can fetch from it.
//! - On every new connection, and when a repository is first seeded, peers
//!   exchange signed-update logs; entries a node lacks are applied like
//!   announcements (catch-up after downtime).

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use libp2p::PeerId;
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::compat::{FuturesAsyncReadCompatExt, FuturesAsyncWriteCompatExt};
use tokio_util::io::SyncIoBridge;

use crate::error::{Error, Result};
use crate::limits::{
    FETCH_ATTEMPTS, FETCH_RETRY_DELAY, LOG_PAGE_BYTES, MAX_LOG_ENTRIES, MAX_LOG_PAGES,
    MAX_SERVED_PER_PEER, MAX_SERVED_TOTAL, REQUEST_ATTEMPTS, REQUEST_RETRY_DELAY, STREAM_TIMEOUT,
};
use crate::network::{Event, Handle};
use crate::wire::{
    read_frame, topic, write_frame, Announce, Items, Kind, Request, REPLICATION_PROTOCOL,
};

/// A repository this node follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seeded {
    /// Canonical name, `OWNER/NAME`.
    pub name: String,
    /// Repository id (text form), which names its gossip topic and DHT key.
    pub id: String,
}

/// What applying an update needs.
#[derive(Debug)]
pub enum Plan {
    /// Already in the log: nothing to do.
    Known,
    /// The update was accepted under a newer identity document than this
    /// node holds: fetch the document chain from the peer first.
    NeedIdentity,
    /// Valid; these new tips (hex ids) must be fetched first, if any.
    Apply {
        /// Tips whose objects are missing.
        missing: Vec<String>,
    },
}

/// Why the replica refused or failed an operation: what the peer sent, or
/// this node. Only peer faults count against the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// What the peer sent is invalid (bad signature, not a delegate, wrong
    /// repository, corrupt or incomplete pack, ...).
    Peer(String),
    /// This node failed (storage, database, a name already taken here).
    Local(String),
    /// The peer's answer broke off (closed or reset mid-pack); what arrived
    /// is kept, and the next attempt resumes after it. Only if that keeps
    /// happening does it count against the peer.
    Interrupted(String),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Peer(m) | Fault::Local(m) | Fault::Interrupted(m) => f.write_str(m),
        }
    }
}

impl From<Fault> for Error {
    fn from(f: Fault) -> Self {
        match f {
            Fault::Peer(m) => Error::Peer(m),
            Fault::Local(m) => Error::Replica(m),
            Fault::Interrupted(m) => Error::Peer(format!("the transfer broke off: {m}")),
        }
    }
}

/// The node's storage, as replication sees it. Every method is blocking and
/// is called from a blocking thread. Nothing a peer sends is stored before
/// the replica has checked it.
pub trait Replica: Send + Sync + 'static {
    /// Repositories followed.
    fn seeded(&self) -> Vec<Seeded>;
    /// Identity document versions of `repo`, oldest first.
    fn identity(&self, repo: &str) -> Option<Vec<Vec<u8>>>;
    /// Verify document versions fetched from a peer; start following the
    /// repository (created empty) if it is new here, or take the versions
    /// beyond the ones held. Returns its id.
    fn adopt(&self, repo: &str, versions: &[Vec<u8>]) -> std::result::Result<String, Fault>;
    /// The signed-update log of `repo`.
    fn log(&self, repo: &str) -> Option<Vec<Vec<u8>>>;
    /// A summary of the log that two nodes holding the same set of updates
    /// (in any order) agree on, and that differs otherwise.
    fn log_summary(&self, repo: &str) -> Option<Vec<u8>>;
    /// Check an update (signature, delegate, repository) and say what applying it needs.
    fn plan(&self, repo: &str, update: &[u8]) -> std::result::Result<Plan, Fault>;
    /// A v2 fetch request for `wants`, with the local ref tips as haves.
    fn fetch_request(&self, repo: &str, wants: &[String]) -> std::result::Result<Vec<u8>, String>;
    /// Pack bytes kept from an interrupted answer to `request` (the exact
    /// fetch request body): how many, and their SHA-1.
    fn resume_point(&self, repo: &str, request: &[u8]) -> Option<(u64, [u8; 20])>;
    /// Receive a peer's fetch response to `request` for `tips` through the
    /// quarantine (hashes, connectivity) and keep its objects. The first
    /// `resume_from` pack bytes are the ones kept from an earlier attempt
    /// (the response leaves them out); if the response breaks off, what
    /// arrived is kept for the next attempt.
    fn receive(
        &self,
        repo: &str,
        tips: &[String],
        request: &[u8],
        resume_from: u64,
        pack: &mut dyn BufRead,
    ) -> std::result::Result<(), Fault>;
    /// Apply a checked update whose objects are all present. Returns whether
    /// anything changed.
    fn apply(&self, repo: &str, update: &[u8]) -> std::result::Result<bool, Fault>;
    /// Answer a peer's v2 fetch request with upload-pack's output, leaving
    /// out the first pack bytes if `resume` (their count and SHA-1) matches.
    fn serve_fetch(
        &self,
        repo: &str,
        request: &[u8],
        resume: Option<(u64, [u8; 20])>,
        out: &mut dyn Write,
    ) -> std::result::Result<(), String>;
}

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

fn needs_identity() -> Error {
    Error::Peer("the update needs an identity document the peer does not have".into())
}

/// How one transfer attempt failed: broken off (worth resuming) or not.
enum Attempt {
    Interrupted(Error),
    Failed(Error),
}

/// Drives replication for one node.
pub struct Replicator<R: Replica> {
    net: Handle,
    replica: Arc<R>,
    /// One applying task per repository at a time (announcement, catch-up,
    /// log comparison): a second one waits, then finds the update known
    /// instead of fetching the same objects again into the same partial
    /// pack.
    applying: Arc<std::sync::Mutex<std::collections::HashMap<String, RepoLock>>>,
}

type RepoLock = Arc<tokio::sync::Mutex<()>>;

impl<R: Replica> Clone for Replicator<R> {
    fn clone(&self) -> Self {
        Replicator {
            net: self.net.clone(),
            replica: Arc::clone(&self.replica),
            applying: Arc::clone(&self.applying),
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Replica(format!("task failed: {e}")))
}

impl<R: Replica> Replicator<R> {
    /// Start serving peers and handling network events.
    pub async fn start(
        net: Handle,
        mut events: mpsc::Receiver<Event>,
        replica: Arc<R>,
        sync_interval: Option<Duration>,
    ) -> Result<Self> {
        let this = Replicator {
            net,
            replica,
            applying: Default::default(),
        };
        let mut incoming = this.net.accept(REPLICATION_PROTOCOL)?;
        let server = this.clone();
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
        for s in this.replica_seeded().await? {
            this.follow(&s).await?;
        }
        if let Some(every) = sync_interval {
            let syncer = this.clone();
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    syncer.anti_entropy().await;
                }
            });
        }
        let handler = this.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let handler = handler.clone();
                tokio::spawn(async move { handler.on_event(event).await });
            }
        });
        Ok(this)
    }

    async fn replica_seeded(&self) -> Result<Vec<Seeded>> {
        let replica = Arc::clone(&self.replica);
        blocking(move || replica.seeded()).await
    }

    /// Follow a repository: subscribe to its announcements and tell the DHT
    /// this node provides it (keyed by its canonical name, which a node
    /// seeding it verifies against the owner's signed document).
    pub async fn follow(&self, s: &Seeded) -> Result<()> {
        self.net.subscribe(&topic(&s.id)).await?;
        self.net.provide(s.name.as_bytes().to_vec()).await
    }

    /// Stop following a repository.
    pub async fn unfollow(&self, s: &Seeded) -> Result<()> {
        self.net.unsubscribe(&topic(&s.id)).await
    }

    async fn on_event(&self, event: Event) {
        match event {
            Event::Gossip {
                source,
                data,
                message_id,
                ..
            } => {
                let valid = self.on_announce(source, &data).await;
                let verdict = match &valid {
                    Ok(_) => true,
                    Err(Error::Peer(_)) => false,
                    Err(_) => true,
                };
                if let Err(e) = &valid {
                    tracing::warn!(peer = %source, error = %e, "announcement not applied");
                }
                let _ = self.net.report(message_id, source, verdict).await;
            }
            Event::Connected(peer) => {
                if let Err(e) = self.catch_up_with(peer).await {
                    tracing::warn!(%peer, error = %e, "catch-up failed");
                }
            }
        }
    }

    /// Announce an update accepted locally (after a push).
    pub async fn announce(&self, repo: &str, repo_id: &str, update: Vec<u8>) -> Result<()> {
        let msg = Announce {
            repo: repo.to_owned(),
            update,
        };
        self.net.publish(&topic(repo_id), msg.encode_to_vec()).await
    }

    async fn on_announce(&self, source: PeerId, data: &[u8]) -> Result<()> {
        let msg = Announce::decode(data)
            .map_err(|e| Error::Peer(format!("undecodable announcement: {e}")))?;
        let seeded = self.replica_seeded().await?;
        let Some(s) = seeded.into_iter().find(|s| s.name == msg.repo) else {
            return Ok(());
        };
        if self.apply_from(source, &s.name, msg.update.clone()).await? {
            // Be a source for peers further away.
            self.announce(&s.name, &s.id, msg.update).await?;
        }
        Ok(())
    }

    /// The lock serializing updates of `repo` on this node.
    fn repo_lock(&self, repo: &str) -> RepoLock {
        let mut map = self.applying.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(repo.to_owned()).or_default())
    }

    /// Check, fetch what is missing from `peer`, and apply one update.
    async fn apply_from(&self, peer: PeerId, repo: &str, update: Vec<u8>) -> Result<bool> {
        let lock = self.repo_lock(repo);
        let _applying = lock.lock().await;
        let missing = match self.plan_from(peer, repo, &update).await? {
            Plan::Known => return Ok(false),
            Plan::NeedIdentity => return Err(needs_identity()),
            Plan::Apply { missing } => missing,
        };
        if !missing.is_empty() {
            self.fetch_tips(peer, repo, &missing).await?;
        }
        self.apply(repo, update).await
    }

    /// Plan an update; if it needs a newer identity document, take the
    /// peer's document chain (verified) and plan again.
    async fn plan_from(&self, peer: PeerId, repo: &str, update: &[u8]) -> Result<Plan> {
        let plan = self.plan(repo, update).await?;
        if !matches!(plan, Plan::NeedIdentity) {
            return Ok(plan);
        }
        self.take_identity(peer, repo).await?;
        self.plan(repo, update).await
    }

    async fn apply(&self, repo: &str, update: Vec<u8>) -> Result<bool> {
        let replica = Arc::clone(&self.replica);
        let r = repo.to_owned();
        blocking(move || replica.apply(&r, &update))
            .await?
            .map_err(Error::from)
    }

    /// Fetch the objects of `tips` from `peer` in one v2 fetch (wants: the
    /// tips, haves: the local refs). If the transfer breaks off, the bytes
    /// that arrived are kept and the next attempt (up to [`FETCH_ATTEMPTS`],
    /// and any later one for the same request) resumes after them.
    async fn fetch_tips(&self, peer: PeerId, repo: &str, tips: &[String]) -> Result<()> {
        let replica = Arc::clone(&self.replica);
        let (r, wants) = (repo.to_owned(), tips.to_vec());
        let body = blocking(move || replica.fetch_request(&r, &wants))
            .await?
            .map_err(Error::Replica)?;
        let mut attempt = 1;
        loop {
            match self.fetch_once(peer, repo, tips, &body).await {
                Ok(()) => return Ok(()),
                Err(Attempt::Interrupted(e)) if attempt < FETCH_ATTEMPTS => {
                    tracing::warn!(%peer, %repo, attempt, error = %e, "object transfer broke off; resuming");
                    tokio::time::sleep(FETCH_RETRY_DELAY * attempt).await;
                    attempt += 1;
                }
                Err(Attempt::Interrupted(e)) | Err(Attempt::Failed(e)) => return Err(e),
            }
        }
    }

    async fn fetch_once(
        &self,
        peer: PeerId,
        repo: &str,
        tips: &[String],
        body: &[u8],
    ) -> std::result::Result<(), Attempt> {
        let replica = Arc::clone(&self.replica);
        let (r, b) = (repo.to_owned(), body.to_vec());
        let resume = blocking(move || replica.resume_point(&r, &b))
            .await
            .map_err(Attempt::Failed)?;
        let (resume_offset, resume_sha1) = resume.map_or((0, Vec::new()), |(o, h)| (o, h.to_vec()));
        if resume_offset > 0 {
            tracing::info!(%peer, %repo, bytes = resume_offset, "resuming an interrupted transfer");
        }
        // A stream that cannot be opened or written is a broken transfer too.
        let mut stream = self
            .net
            .open_stream(peer, REPLICATION_PROTOCOL)
            .await
            .map_err(Attempt::Interrupted)?;
        let req = Request {
            kind: Kind::Fetch as i32,
            repo: repo.to_owned(),
            body: body.to_vec(),
            resume_offset,
            resume_sha1,
            start: 0,
        };
        write_frame(&mut stream, &req)
            .await
            .map_err(Attempt::Interrupted)?;
        let reader = SyncIoBridge::new(stream.compat());
        let replica = Arc::clone(&self.replica);
        let (r, tips, b) = (repo.to_owned(), tips.to_vec(), body.to_vec());
        let received = blocking(move || {
            let mut reader = std::io::BufReader::with_capacity(64 * 1024, reader);
            replica.receive(&r, &tips, &b, resume_offset, &mut reader)
        })
        .await
        .map_err(Attempt::Failed)?;
        match received {
            Ok(()) => Ok(()),
            Err(f @ Fault::Interrupted(_)) => Err(Attempt::Interrupted(f.into())),
            Err(f) => Err(Attempt::Failed(f.into())),
        }
    }

    async fn plan(&self, repo: &str, update: &[u8]) -> Result<Plan> {
        let replica = Arc::clone(&self.replica);
        let (r, u) = (repo.to_owned(), update.to_vec());
        blocking(move || replica.plan(&r, &u))
            .await?
            .map_err(Error::from)
    }

    /// Compare log summaries with every connected peer for every followed
    /// repository, and exchange logs where they differ: updates whose
    /// announcement was lost, or whose transfer failed, arrive even between
    /// nodes that stay connected.
    pub async fn anti_entropy(&self) {
        let (Ok(seeded), Ok(status)) = (self.replica_seeded().await, self.net.status().await)
        else {
            return;
        };
        for s in &seeded {
            let replica = Arc::clone(&self.replica);
            let r = s.name.clone();
            let Ok(Some(ours)) = blocking(move || replica.log_summary(&r)).await else {
                continue;
            };
            for &peer in &status.connected {
                let theirs = match self.request_items(peer, Kind::LogSummary, &s.name).await {
                    Ok(items) => items.into_iter().next(),
                    Err(_) => continue,
                };
                let Some(theirs) = theirs else { continue };
                // Summary: 8-byte update count, 32-byte digest, 8-byte number
                // of identity document versions.
                let versions = |sum: &[u8]| {
                    sum.get(40..48)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map_or(0, u64::from_be_bytes)
                };
                if versions(&theirs) > versions(&ours) {
                    // A document change with no push after it.
                    if let Err(e) = self.take_identity(peer, &s.name).await {
                        tracing::warn!(%peer, repo = %s.name, error = %e, "identity exchange failed");
                    }
                }
                if theirs.get(..40) != ours.get(..40) {
                    tracing::debug!(%peer, repo = %s.name, "logs differ; exchanging");
                    if let Err(e) = self.sync_repo(peer, &s.name).await {
                        tracing::warn!(%peer, repo = %s.name, error = %e, "log exchange failed");
                    }
                }
            }
        }
    }

    /// Take `peer`'s newer identity document versions of `repo` (verified
    /// as a chain from the versions held).
    async fn take_identity(&self, peer: PeerId, repo: &str) -> Result<()> {
        let versions = self.request_items(peer, Kind::Identity, repo).await?;
        let replica = Arc::clone(&self.replica);
        let r = repo.to_owned();
        blocking(move || replica.adopt(&r, &versions))
            .await?
            .map(|_| ())
            .map_err(Error::from)
    }

    /// Exchange logs with `peer` for every followed repository.
    async fn catch_up_with(&self, peer: PeerId) -> Result<()> {
        for s in self.replica_seeded().await? {
            self.sync_repo(peer, &s.name).await?;
        }
        Ok(())
    }

    /// Ask `peer` for `kind` of `repo`. A stream the peer drops before
    /// answering (it was busy accepting another, or over its limits) is
    /// opened again, up to [`REQUEST_ATTEMPTS`] times.
    async fn request_items(&self, peer: PeerId, kind: Kind, repo: &str) -> Result<Vec<Vec<u8>>> {
        self.request(peer, kind, repo, 0).await.map(|i| i.items)
    }

    async fn request(&self, peer: PeerId, kind: Kind, repo: &str, start: u64) -> Result<Items> {
        let mut attempt = 1;
        loop {
            match self.request_once(peer, kind, repo, start).await {
                Err(Error::Io(e)) if attempt < REQUEST_ATTEMPTS => {
                    tracing::debug!(%peer, %repo, attempt, error = %e, "request dropped; asking again");
                    tokio::time::sleep(REQUEST_RETRY_DELAY * attempt).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn request_once(
        &self,
        peer: PeerId,
        kind: Kind,
        repo: &str,
        start: u64,
    ) -> Result<Items> {
        let mut stream = self.net.open_stream(peer, REPLICATION_PROTOCOL).await?;
        write_frame(
            &mut stream,
            &Request {
                kind: kind as i32,
                repo: repo.to_owned(),
                start,
                ..Default::default()
            },
        )
        .await?;
        let items: Items = read_frame(&mut stream).await?;
        if !items.error.is_empty() {
            return Err(Error::Replica(format!("{peer}: {}", items.error)));
        }
        Ok(items)
    }

    /// Fetch `peer`'s log of `repo` and apply what is missing, in order.
    pub async fn sync_repo(&self, peer: PeerId, repo: &str) -> Result<usize> {
        match self.pull_log(peer, repo).await {
            Ok(applied) => Ok(applied),
            Err(e) => {
                tracing::debug!(%peer, %repo, error = %e, "peer has no log for this repository");
                Ok(0)
            }
        }
    }

    /// Ask for `peer`'s log page by page and apply each page; returns how
    /// many entries were new. Fails only if the first page cannot be had.
    async fn pull_log(&self, peer: PeerId, repo: &str) -> Result<usize> {
        let (mut start, mut applied) = (0u64, 0);
        for page in 0..MAX_LOG_PAGES {
            let items = match self.request(peer, Kind::Log, repo, start).await {
                Ok(items) => items,
                Err(e) if page == 0 => return Err(e),
                Err(e) => {
                    tracing::warn!(%peer, %repo, start, error = %e, "log page refused");
                    break;
                }
            };
            applied += self.apply_log(peer, repo, items.items).await;
            if items.next == 0 {
                return Ok(applied);
            }
            if items.next <= start {
                tracing::warn!(%peer, %repo, start, next = items.next, "log pages go backwards; stopped");
                break;
            }
            start = items.next;
        }
        Ok(applied)
    }

    /// Apply a peer's log entries one by one; returns how many were new.
    async fn apply_log(&self, peer: PeerId, repo: &str, entries: Vec<Vec<u8>>) -> usize {
        let lock = self.repo_lock(repo);
        let _applying = lock.lock().await;
        // Check every entry first, so that the objects of all the new ones
        // come in one fetch: a node that missed many updates still makes
        // one round trip for their objects.
        let mut ready = Vec::new();
        let mut wants = Vec::new();
        let mut wanted = std::collections::HashSet::new();
        for update in entries {
            match self.plan_from(peer, repo, &update).await {
                Ok(Plan::Known) => {}
                Ok(Plan::Apply { missing }) => {
                    for tip in missing {
                        if wanted.insert(tip.clone()) {
                            wants.push(tip);
                        }
                    }
                    ready.push(update);
                }
                Ok(Plan::NeedIdentity) => {
                    let e = needs_identity();
                    tracing::warn!(%peer, %repo, error = %e, "log entry refused");
                }
                Err(e) => tracing::warn!(%peer, %repo, error = %e, "log entry refused"),
            }
        }
        if !wants.is_empty() {
            if let Err(e) = self.fetch_tips(peer, repo, &wants).await {
                for _ in &ready {
                    tracing::warn!(%peer, %repo, error = %e, "log entry refused");
                }
                return 0;
            }
        }
        let mut applied = 0;
        for update in ready {
            match self.apply(repo, update).await {
                Ok(true) => applied += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(%peer, %repo, error = %e, "log entry refused"),
            }
        }
        if applied > 0 {
            tracing::info!(%peer, %repo, applied, "caught up");
        }
        applied
    }

    /// Start following `repo`: find peers that have it, take its identity
    /// from the first that answers with a valid document chain, then its log
    /// and objects.
    pub async fn seed(&self, repo: &str) -> Result<String> {
        let mut peers = self.net.status().await?.connected;
        peers.sort();
        let known = self
            .replica_seeded()
            .await?
            .into_iter()
            .find(|s| s.name == repo);
        if let Some(s) = known {
            self.follow(&s).await?;
            for p in peers {
                self.sync_repo(p, repo).await?;
            }
            return Ok(s.id);
        }
        // Connected peers first; the DHT's providers only if none of them has it.
        let mut tried = Vec::new();
        let first = match self.seed_from(repo, &peers, &mut tried).await {
            Ok(id) => return Ok(id),
            Err(e) => {
                tracing::debug!(%repo, error = %e, "no connected peer has it; asking the DHT");
                e
            }
        };
        let providers: Vec<PeerId> = self
            .net
            .find_providers(repo.as_bytes().to_vec())
            .await?
            .into_iter()
            .filter(|p| !tried.contains(p) && *p != self.net.peer_id())
            .collect();
        if providers.is_empty() {
            // Say why the connected peers failed, not only that the DHT had no one else.
            return Err(first);
        }
        self.seed_from(repo, &providers, &mut tried).await
    }

    async fn seed_from(
        &self,
        repo: &str,
        peers: &[PeerId],
        tried: &mut Vec<PeerId>,
    ) -> Result<String> {
        let mut last_err = Error::Replica(format!("no peer has {repo}"));
        for &peer in peers {
            tried.push(peer);
            // One request at a time: libp2p-stream drops an inbound stream
            // that arrives while the peer's accept loop is still taking the
            // previous one from the same connection.
            let versions = match self.request_items(peer, Kind::Identity, repo).await {
                Ok(v) => v,
                Err(e) => {
                    last_err = e;
                    continue;
                }
            };
            let replica = Arc::clone(&self.replica);
            let r = repo.to_owned();
            match blocking(move || replica.adopt(&r, &versions)).await? {
                Ok(id) => {
                    let s = Seeded {
                        name: repo.to_owned(),
                        id: id.clone(),
                    };
                    self.follow(&s).await?;
                    // The peer that gave the identity must give its log too:
                    // seeding must not report success with nothing copied.
                    self.pull_log(peer, repo).await?;
                    tracing::info!(%repo, %peer, "seeding");
                    return Ok(id);
                }
                Err(Fault::Peer(e) | Fault::Interrupted(e)) => {
                    tracing::warn!(%peer, %repo, error = %e, "peer sent an invalid identity");
                    last_err = Error::Peer(e);
                }
                Err(Fault::Local(e)) => {
                    tracing::warn!(%peer, %repo, error = %e, "cannot take the repository's identity");
                    last_err = Error::Replica(e);
                }
            }
        }
        Err(last_err)
    }

    async fn serve(&self, peer: PeerId, mut stream: libp2p::Stream) -> Result<()> {
        let req: Request = read_frame(&mut stream).await?;
        let kind =
            Kind::try_from(req.kind).map_err(|_| Error::Peer("unknown request kind".into()))?;
        let replica = Arc::clone(&self.replica);
        let repo = req.repo.clone();
        match kind {
            Kind::Identity | Kind::Log | Kind::LogSummary => {
                let items = blocking(move || match kind {
                    Kind::Identity => replica.identity(&repo),
                    Kind::LogSummary => replica.log_summary(&repo).map(|s| vec![s]),
                    _ => replica.log(&repo),
                })
                .await?;
                let reply = match items {
                    Some(items) if kind == Kind::Log => {
                        let start = usize::try_from(req.start).unwrap_or(usize::MAX);
                        let (items, next) = log_page(items, start);
                        Items {
                            items,
                            error: String::new(),
                            next,
                        }
                    }
                    Some(items) => Items {
                        items,
                        ..Default::default()
                    },
                    None => Items {
                        error: format!("this node does not have {}", req.repo),
                        ..Default::default()
                    },
                };
                write_frame(&mut stream, &reply).await?;
            }
            Kind::Fetch => {
                tracing::debug!(%peer, repo = %req.repo, "serving objects");
                // Buffered: upload-pack writes pkt-lines, often small; each
                // unbuffered write would be its own yamux frame.
                let mut writer = std::io::BufWriter::with_capacity(
                    64 * 1024,
                    SyncIoBridge::new(stream.compat_write()),
                );
                blocking(move || {
                    let resume = <[u8; 20]>::try_from(req.resume_sha1.as_slice())
                        .ok()
                        .filter(|_| req.resume_offset > 0)
                        .map(|sha1| (req.resume_offset, sha1));
                    let result = replica.serve_fetch(&repo, &req.body, resume, &mut writer);
                    let _ = writer.flush();
                    let _ = writer.get_mut().shutdown();
                    result
                })
                .await?
                .map_err(Error::Replica)?;
            }
        }
        Ok(())
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

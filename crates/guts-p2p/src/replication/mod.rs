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
//!
//! Bytes from the network (announcements, log pages, log summaries,
//! repository names) are decoded once, here, at the edge: the [`Replica`]
//! sees typed values only, and an undecodable message is the peer's fault.
//!
//! The [`Replicator`] is split by concern: this module holds the trait, the
//! announcements and the event loop; `serve` answers peers' requests within
//! limits; `sync` compares and exchanges logs (catch-up, anti-entropy,
//! seeding); `fetch` plans, fetches (resuming broken transfers) and applies
//! updates.

mod fetch;
mod serve;
mod sync;

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::Duration;

use guts_git::names::RepoName;
use guts_git::resume::ResumePoint;
use guts_git::ObjectId;
use guts_identity::{RepoId, SignedRefUpdate};
use libp2p::PeerId;
use prost::Message;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::network::{Event, Handle};
use crate::wire::{topic, Announce, LogSummary};

pub use serve::log_page;

/// A repository this node follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seeded {
    /// Canonical name, `OWNER/NAME`.
    pub name: RepoName,
    /// Repository id, which names its gossip topic.
    pub id: RepoId,
}

/// What applying an update needs.
#[derive(Debug)]
pub enum Plan<C> {
    /// Already in the log: nothing to do.
    Known,
    /// The update was accepted under a newer identity document than this
    /// node holds: fetch the document chain from the peer first.
    NeedIdentity,
    /// Valid; these new tips must be fetched first, if any, then `checked`
    /// applied.
    Apply {
        /// Tips whose objects are missing.
        missing: Vec<ObjectId>,
        /// The verified update, for [`Replica::apply`].
        checked: C,
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
    /// An update whose signature, delegate and repository were verified by
    /// [`Replica::plan`]; carried to [`Replica::apply`] so that nothing is
    /// verified or decoded twice.
    type Checked: Send + 'static;
    /// Repositories followed.
    fn seeded(&self) -> Vec<Seeded>;
    /// Signed identity document versions of `repo`, oldest first.
    fn identity(&self, repo: &RepoName) -> Option<Vec<Vec<u8>>>;
    /// Verify signed document versions fetched from a peer; start following
    /// the repository (created empty) if it is new here, or take the
    /// versions beyond the ones held. Returns its id.
    fn adopt(&self, repo: &RepoName, versions: &[Vec<u8>]) -> Result<RepoId, Fault>;
    /// The signed-update log of `repo`, in log order.
    fn log(&self, repo: &RepoName) -> Option<Vec<SignedRefUpdate>>;
    /// The summary of the log peers compare ([`LogSummary::new`]).
    fn log_summary(&self, repo: &RepoName) -> Option<LogSummary>;
    /// Check an update (signature, delegate, repository) and say what
    /// applying it needs.
    fn plan(&self, repo: &RepoName, update: SignedRefUpdate) -> Result<Plan<Self::Checked>, Fault>;
    /// A v2 fetch request for `wants`, with the local ref tips as haves.
    fn fetch_request(&self, repo: &RepoName, wants: &[ObjectId]) -> Result<Vec<u8>, Fault>;
    /// Pack bytes kept from an interrupted answer to `request` (the exact
    /// fetch request body): how many, and their SHA-1.
    fn resume_point(&self, repo: &RepoName, request: &[u8]) -> Option<ResumePoint>;
    /// Receive a peer's fetch response to `request` for `tips` through the
    /// quarantine (hashes, connectivity) and keep its objects. The first
    /// `resume_from` pack bytes are the ones kept from an earlier attempt
    /// (the response leaves them out); if the response breaks off, what
    /// arrived is kept for the next attempt.
    fn receive(
        &self,
        repo: &RepoName,
        tips: &[ObjectId],
        request: &[u8],
        resume_from: u64,
        pack: &mut dyn BufRead,
    ) -> Result<(), Fault>;
    /// Apply a checked update whose objects are all present. Returns whether
    /// anything changed.
    fn apply(&self, checked: Self::Checked) -> Result<bool, Fault>;
    /// Answer a peer's v2 fetch request with upload-pack's output, leaving
    /// out the first pack bytes if `resume` matches them.
    fn serve_fetch(
        &self,
        repo: &RepoName,
        request: &[u8],
        resume: Option<ResumePoint>,
        out: &mut dyn Write,
    ) -> Result<(), Fault>;
}

/// Drives replication for one node.
pub struct Replicator<R: Replica> {
    net: Handle,
    replica: Arc<R>,
    /// One applying task per repository at a time (announcement, catch-up,
    /// log comparison): a second one waits, then finds the update known
    /// instead of fetching the same objects again into the same partial
    /// pack.
    applying: Arc<std::sync::Mutex<std::collections::HashMap<RepoName, RepoLock>>>,
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

/// Run blocking replica work on a blocking thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Replica(format!("task failed: {e}")))
}

/// The error of an update that needs an identity document the peer lacks.
fn needs_identity() -> Error {
    Error::Peer("the update needs an identity document the peer does not have".into())
}

/// An undecodable signed update from a peer.
fn undecodable_update(e: prost::DecodeError) -> Error {
    Error::Peer(format!("undecodable update: {e}"))
}

impl<R: Replica> Replicator<R> {
    /// Start serving peers and handling network events.
    pub async fn start(
        net: Handle,
        events: mpsc::Receiver<Event>,
        replica: Arc<R>,
        sync_interval: Option<Duration>,
    ) -> Result<Self> {
        let this = Replicator {
            net,
            replica,
            applying: Default::default(),
        };
        this.spawn_server()?;
        for s in this.replica_seeded().await? {
            this.follow(&s).await?;
        }
        if let Some(every) = sync_interval {
            this.spawn_anti_entropy(every);
        }
        let handler = this.clone();
        tokio::spawn(async move { handler.handle_events(events).await });
        Ok(this)
    }

    /// Handle each network event on its own task.
    async fn handle_events(&self, mut events: mpsc::Receiver<Event>) {
        while let Some(event) = events.recv().await {
            let handler = self.clone();
            tokio::spawn(async move { handler.on_event(event).await });
        }
    }

    async fn replica_seeded(&self) -> Result<Vec<Seeded>> {
        let replica = Arc::clone(&self.replica);
        blocking(move || replica.seeded()).await
    }

    /// Follow a repository: subscribe to its announcements and tell the DHT
    /// this node provides it (keyed by its canonical name, which a node
    /// seeding it verifies against the owner's signed document).
    pub async fn follow(&self, s: &Seeded) -> Result<()> {
        self.net.subscribe(&topic(&s.id.to_string())).await?;
        self.net.provide(s.name.to_string().into_bytes()).await
    }

    /// Stop following a repository.
    pub async fn unfollow(&self, s: &Seeded) -> Result<()> {
        self.net.unsubscribe(&topic(&s.id.to_string())).await
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
    pub async fn announce(&self, s: &Seeded, update: &SignedRefUpdate) -> Result<()> {
        let msg = Announce {
            repo: s.name.to_string(),
            update: update.encode_to_vec(),
            doc_versions: 0,
        };
        self.net
            .publish(&topic(&s.id.to_string()), msg.encode_to_vec())
            .await
    }

    /// Announce that this node holds `versions` identity document versions
    /// of `s` (after a document change: peers behind take the new ones).
    pub async fn announce_identity(&self, s: &Seeded, versions: u64) -> Result<()> {
        let msg = Announce {
            repo: s.name.to_string(),
            update: Vec::new(),
            doc_versions: versions,
        };
        self.net
            .publish(&topic(&s.id.to_string()), msg.encode_to_vec())
            .await
    }

    /// An identity announcement: take the newer versions from `source`
    /// (verified as a chain), then pass the announcement on.
    async fn on_identity_announce(&self, source: PeerId, s: &Seeded, versions: u64) -> Result<()> {
        let replica = Arc::clone(&self.replica);
        let r = s.name.clone();
        let ours = blocking(move || replica.identity(&r).map_or(0, |v| v.len() as u64)).await?;
        if versions <= ours {
            return Ok(());
        }
        self.take_identity(source, &s.name).await?;
        self.announce_identity(s, versions).await
    }

    async fn on_announce(&self, source: PeerId, data: &[u8]) -> Result<()> {
        let msg = Announce::decode(data)
            .map_err(|e| Error::Peer(format!("undecodable announcement: {e}")))?;
        // A name that is not a repository name is no repository this node
        // follows: like any other, not its concern.
        let Ok(name) = RepoName::parse(&msg.repo) else {
            return Ok(());
        };
        let seeded = self.replica_seeded().await?;
        let Some(s) = seeded.into_iter().find(|s| s.name == name) else {
            return Ok(());
        };
        if msg.update.is_empty() && msg.doc_versions > 0 {
            return self
                .on_identity_announce(source, &s, msg.doc_versions)
                .await;
        }
        let update = SignedRefUpdate::decode(&msg.update[..]).map_err(undecodable_update)?;
        if self.apply_from(source, &s.name, update.clone()).await? {
            // Be a source for peers further away.
            self.announce(&s, &update).await?;
        }
        Ok(())
    }

    /// The lock serializing updates of `repo` on this node.
    fn repo_lock(&self, repo: &RepoName) -> RepoLock {
        let mut map = self.applying.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(repo.clone()).or_default())
    }
}

//! The replication protocol: the [`Replica`] the node implements, and the
//! thin tokio driver that carries out the decisions of the I/O-free
//! [`Service`](crate::service::Service) (ADR 0017).
//!
//! - A node that accepts a push announces the signed update on the
//!   repository's gossip topic; receivers verify it, fetch its missing
//!   objects from the peer that delivered it (one git protocol v2 `fetch`
//!   streamed into the push quarantine), apply it and announce it again.
//! - On every new connection, and periodically, peers compare logs by key
//!   ranges (ADR 0016) and take the entries they lack.
//!
//! Bytes from the network are decoded once, at the edge (the service, and
//! [`serve`] for requests): the [`Replica`] sees typed values only.
//!
//! `driver` runs the service and its `Io`; `serve` answers peers'
//! requests within limits; `fetch` carries out one object transfer; `lfs`
//! carries out and serves one Git LFS object transfer (ADR 0024).

mod driver;
mod fetch;
mod lfs;
pub mod serve;

use std::io::{BufRead, Read, Write};

use guts_git::lfs::{LfsOid, LfsPointer};
use guts_git::names::RepoName;
use guts_git::resume::ResumePoint;
use guts_git::ObjectId;
use guts_identity::{RepoId, SignedRefUpdate};
use libp2p::PeerId;

use crate::error::Error;
use crate::logset::{Buckets, Key};
use crate::service::Score;
use crate::wire::LogSummary;

pub use driver::Replicator;

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
    /// The buckets of `repo`'s log ([`crate::logset`]).
    fn log_buckets(&self, repo: &RepoName) -> Option<Buckets>;
    /// The summary of the log peers compare first.
    fn log_summary(&self, repo: &RepoName) -> Option<LogSummary> {
        let versions = self.identity(repo).map_or(0, |v| v.len() as u64);
        Some(self.log_buckets(repo)?.summary(versions))
    }
    /// The keys of `repo`'s log in `buckets`, in key order.
    fn log_keys(&self, repo: &RepoName, buckets: &[u8]) -> Option<Vec<Key>>;
    /// The log entry with `key` (an encoded `SignedRefUpdate`) and its
    /// position in this node's log.
    fn log_entry(&self, repo: &RepoName, key: &Key) -> Option<(u64, Vec<u8>)>;
    /// Whether the update with `key` is in `repo`'s log.
    fn is_logged(&self, repo: &RepoName, key: &Key) -> bool;
    /// What this node holds against peers (strikes, blocks).
    fn scores(&self) -> Vec<(PeerId, Score)>;
    /// Keep `peer`'s score (across restarts).
    fn save_score(&self, peer: &PeerId, score: Score);
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

    // Git LFS objects (ADR 0024). The node keeps the pointers found in the
    // packs it receives (`receive`); their objects are fetched after the
    // update is applied, never before.

    /// Git LFS objects named by pointers in objects received for `repo`
    /// that this node does not hold yet, at most `max`.
    fn lfs_wanted(&self, repo: &RepoName, max: usize) -> Vec<LfsPointer>;
    /// Whether this node holds the LFS object `oid` of `repo`.
    fn lfs_has(&self, repo: &RepoName, oid: &LfsOid) -> bool;
    /// The LFS object `oid` of `repo` for a peer, from byte `offset` on: its
    /// whole size and a reader of the rest. Only for a repository this node
    /// seeds; an error if it does not, or lacks the object.
    fn lfs_open(
        &self,
        repo: &RepoName,
        oid: &LfsOid,
        offset: u64,
    ) -> Result<(u64, Box<dyn Read + Send>), Fault>;
    /// Bytes of `pointer`'s object kept from an interrupted transfer.
    fn lfs_resume_point(&self, repo: &RepoName, pointer: &LfsPointer) -> u64;
    /// Store `pointer`'s object from a peer: the first `resume_from` bytes
    /// are those kept from an earlier attempt, `data` the rest. Verified
    /// (size and SHA-256) before it is visible; a wrong object is the
    /// peer's fault, a transfer that broke off is `Interrupted` and its
    /// bytes are kept.
    fn lfs_receive(
        &self,
        repo: &RepoName,
        pointer: &LfsPointer,
        resume_from: u64,
        data: &mut dyn Read,
    ) -> Result<(), Fault>;
}

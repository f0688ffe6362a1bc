//! The node's side of replication (`guts_p2p::replication::Replica`): how
//! updates from peers are checked, and how peers are served. Every change
//! goes through the domain layer ([`Repos`]).
//!
//! An update from a peer gets exactly the checks of a push, minus the nonce
//! (which only the accepting node can check): the certificate's signature,
//! its signer being a delegate under the document version it was accepted
//! under, and its pushee naming this repository. Its objects arrive through
//! the same quarantine as a push (`guts_git::fetch`) and are checked for
//! hashes and connectivity before anything is visible. The domain layer then
//! logs it and settles its refs with the conflict rule in one transaction.

use std::io::{BufRead, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use guts_git::fetch::FetchError;
use guts_git::lfs::{LfsOid, LfsPointer};
use guts_git::names::RepoName;
use guts_git::resume::{ResumePoint, SkipPrefix};
use guts_git::storage::Repo;
use guts_git::ObjectId;
use guts_identity::doc::RepoId;
use guts_identity::SignedRefUpdate;
use guts_p2p::conflict::ZERO;
use guts_p2p::logset::{Buckets, Key};
use guts_p2p::metrics::P2pMetrics;
use guts_p2p::replication::{Fault, Plan, Replica, Seeded};
use guts_p2p::service::Score;
use guts_p2p::wire::LogSummary;
use guts_p2p::PeerId;

use crate::error::NodeError;
use crate::identity::Identity;
use crate::log::Entry;
use crate::replica_lfs::PeerLfs;
use crate::repos::Repos;

/// Storage and identities, seen by the replication protocol.
pub struct NodeReplica {
    /// The node's repositories.
    pub repos: Arc<Repos>,
    /// Largest pack accepted from a peer.
    pub max_pack_bytes: u64,
    /// Strikes and blocks of peers (`peer-scores`: peer id -> score).
    scores: sled::Tree,
    /// Progress of the seeds a request waits for (`guts-node seed`).
    board: Arc<crate::progress::Board>,
    /// The p2p metrics, and when updates not yet applied were first seen.
    metrics: Arc<P2pMetrics>,
    first_seen: FirstSeen,
    /// Git LFS objects wanted from peers, and their transfers (ADR 0024).
    lfs: PeerLfs,
}

/// Whose fault an error of the domain layer is: what the peer sent, or
/// this node. Decided by the error's kind, never by its text.
fn fault(e: NodeError) -> Fault {
    use guts_git::Error as G;
    match e {
        NodeError::Identity(_) | NodeError::Invalid(_) => Fault::Peer(e.to_string()),
        NodeError::Git(G::InvalidRepoName { .. } | G::InvalidRefName(_)) => {
            Fault::Peer(e.to_string())
        }
        other => Fault::Local(other.to_string()),
    }
}

fn local(e: impl std::fmt::Display) -> Fault {
    Fault::Local(e.to_string())
}

fn peer(e: impl std::fmt::Display) -> Fault {
    Fault::Peer(e.to_string())
}

fn fetch_fault(e: FetchError) -> Fault {
    match e {
        FetchError::Invalid(_) => peer(e),
        FetchError::Interrupted(_) => Fault::Interrupted(e.to_string()),
        FetchError::Local(_) => local(e),
    }
}

/// An update from a peer, verified by [`Replica::plan`] and carried to
/// [`Replica::apply`]: nothing is decoded or verified twice.
pub struct CheckedUpdate {
    name: RepoName,
    entry: Entry,
    /// When this node first saw the update.
    seen: Instant,
}

impl NodeReplica {
    /// A replica over the node's repositories, recording the replication
    /// lag into `metrics` and the progress of seeds into `board`.
    pub fn new(
        repos: Arc<Repos>,
        max_pack_bytes: u64,
        board: Arc<crate::progress::Board>,
        metrics: P2pMetrics,
        lfs: PeerLfs,
    ) -> Result<Arc<Self>, NodeError> {
        let scores = repos
            .storage()
            .db()
            .open_tree("peer-scores")
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        Ok(Arc::new(NodeReplica {
            repos,
            max_pack_bytes,
            scores,
            board,
            metrics: Arc::new(metrics),
            first_seen: FirstSeen::default(),
            lfs,
        }))
    }

    /// The id of `name`, if held with an identity.
    fn repo_id(&self, name: &RepoName) -> Option<RepoId> {
        Some(self.repos.identities().current(name).ok()??.id)
    }

    /// The p2p metrics.
    pub fn metrics(&self) -> Arc<P2pMetrics> {
        Arc::clone(&self.metrics)
    }

    fn open(&self, name: &RepoName) -> Result<(Repo, Identity), Fault> {
        let repo = self.repos.open_repo(name).map_err(fault)?;
        let identity = self.repos.identity(name).map_err(fault)?;
        Ok((repo, identity))
    }

    /// Verify a signed update as a peer would: repository id, signature,
    /// delegate (or a delegate's grant) under its document version, no
    /// revocation of that grant in the newest document, pushee. Gives its
    /// log entry.
    fn check(&self, identity: &Identity, update: SignedRefUpdate) -> Result<Entry, Fault> {
        let version = usize::try_from(update.doc_version).map_err(peer)?;
        let doc = version
            .checked_sub(1)
            .and_then(|i| identity.docs.get(i))
            .ok_or_else(|| peer(format!("the update refers to identity document version {version}, which this node does not have")))?;
        let cert = update
            .verify(&identity.id, doc, &identity.doc)
            .map_err(peer)?;
        Entry::new(update, &cert).map_err(peer)
    }
}

impl Replica for NodeReplica {
    type Checked = CheckedUpdate;

    fn seeded(&self) -> Vec<Seeded> {
        let Ok(names) = self.repos.storage().list() else {
            return Vec::new();
        };
        names
            .into_iter()
            .filter(|n| self.repos.is_seeding(n))
            .filter_map(|name| {
                let id = self.repos.identities().current(&name).ok()??.id;
                Some(Seeded { name, id })
            })
            .collect()
    }

    fn identity(&self, name: &RepoName) -> Option<Vec<Vec<u8>>> {
        Some(self.repos.identities().current(name).ok()??.versions)
    }

    fn adopt(&self, name: &RepoName, versions: &[Vec<u8>]) -> Result<RepoId, Fault> {
        self.repos.adopt(name, versions).map_err(fault)
    }

    fn log_buckets(&self, name: &RepoName) -> Option<Buckets> {
        self.repos.open_repo(name).ok()?;
        self.repos.log().buckets(name).ok()
    }

    fn log_summary(&self, name: &RepoName) -> Option<LogSummary> {
        let buckets = self.log_buckets(name)?;
        let versions = self.repos.identities().current(name).ok()??.versions.len() as u64;
        Some(buckets.summary(versions))
    }

    fn log_keys(&self, name: &RepoName, buckets: &[u8]) -> Option<Vec<Key>> {
        self.repos.open_repo(name).ok()?;
        self.repos.log().keys_in(name, buckets).ok()
    }

    fn log_entry(&self, name: &RepoName, key: &Key) -> Option<(u64, Vec<u8>)> {
        self.repos.log().entry(name, key).ok()?
    }

    fn is_logged(&self, name: &RepoName, key: &Key) -> bool {
        self.repos.log().is_logged(name, key).unwrap_or(false)
    }

    fn scores(&self) -> Vec<(PeerId, Score)> {
        self.scores
            .iter()
            .filter_map(|item| {
                let (k, v) = item.ok()?;
                Some((PeerId::from_bytes(&k).ok()?, Score::from_bytes(&v)?))
            })
            .collect()
    }

    fn save_score(&self, peer: &PeerId, score: Score) {
        let result = if score == Score::default() {
            self.scores.remove(peer.to_bytes()).map(|_| ())
        } else {
            self.scores
                .insert(peer.to_bytes(), &score.to_bytes()[..])
                .map(|_| ())
        };
        if let Err(e) = result.and_then(|()| self.scores.flush().map(|_| ())) {
            tracing::warn!(%peer, error = %e, "cannot keep a peer's score");
        }
    }

    fn plan(&self, name: &RepoName, update: SignedRefUpdate) -> Result<Plan<CheckedUpdate>, Fault> {
        let (repo, identity) = self.open(name)?;
        if usize::try_from(update.doc_version).map_err(peer)? > identity.docs.len() {
            return Ok(Plan::NeedIdentity);
        }
        let entry = self.check(&identity, update)?;
        if self
            .repos
            .log()
            .is_logged(name, &entry.key)
            .map_err(fault)?
        {
            self.first_seen.forget(&entry.key);
            return Ok(Plan::Known);
        }
        let seen = self.first_seen.seen(&entry.key);
        let odb = repo.objects().map_err(local)?;
        let mut missing: Vec<ObjectId> = Vec::new();
        for line in entry.lines.iter().filter(|l| l.new != ZERO) {
            let new = ObjectId::Sha1(line.new);
            if !odb.contains(&new) && !missing.contains(&new) {
                missing.push(new);
            }
        }
        let checked = CheckedUpdate {
            name: name.clone(),
            entry,
            seen,
        };
        Ok(Plan::Apply { missing, checked })
    }

    fn fetch_request(&self, name: &RepoName, wants: &[ObjectId]) -> Result<Vec<u8>, Fault> {
        let (repo, _) = self.open(name)?;
        guts_git::fetch::request_for(&repo, wants).map_err(local)
    }

    fn resume_point(&self, name: &RepoName, request: &[u8]) -> Option<ResumePoint> {
        let (repo, _) = self.open(name).ok()?;
        guts_git::fetch::resume_point(&repo, request)
    }

    fn receive(
        &self,
        name: &RepoName,
        tips: &[ObjectId],
        request: &[u8],
        resume_from: u64,
        pack: &mut dyn BufRead,
    ) -> Result<(), Fault> {
        let (repo, identity) = self.open(name)?;
        let max = self.max_pack_bytes;
        let pointers = match self.board.get(name) {
            Some(p) => {
                p.phase("receiving objects", "bytes", None);
                p.set(resume_from);
                let mut counted = crate::progress::Counted::new(pack, &p);
                guts_git::fetch::receive(&repo, tips, request, resume_from, &mut counted, max)
            }
            None => guts_git::fetch::receive(&repo, tips, request, resume_from, pack, max),
        }
        .map_err(fetch_fault)?;
        if !pointers.is_empty() {
            tracing::debug!(repo = %name, pointers = pointers.len(), "LFS pointers among the received objects");
            self.lfs.record(&identity.id, &pointers);
        }
        Ok(())
    }

    fn apply(&self, checked: CheckedUpdate) -> Result<bool, Fault> {
        let CheckedUpdate { name, entry, seen } = checked;
        if let Some(p) = self.board.get(&name) {
            if p.snapshot().phase != "applying signed updates" {
                p.phase("applying signed updates", "updates", None);
            }
            p.add(1);
        }
        let repo = self.repos.open_repo(&name).map_err(fault)?;
        let odb = repo.objects().map_err(local)?;
        for line in entry.lines.iter().filter(|l| l.new != ZERO) {
            let tip = ObjectId::Sha1(line.new);
            if !odb.contains(&tip) {
                return Err(peer(format!("object {tip} is missing after the fetch")));
            }
        }
        let changed = self.repos.commit_replicated(&repo, &entry).map_err(fault)?;
        self.first_seen.forget(&entry.key);
        if changed {
            self.metrics.replication_lag(seen.elapsed());
        }
        Ok(changed)
    }

    fn serve_fetch(
        &self,
        name: &RepoName,
        request: &[u8],
        resume: Option<ResumePoint>,
        out: &mut dyn Write,
    ) -> Result<(), Fault> {
        if !self.repos.is_seeding(name) {
            return Err(local(format!("this node does not serve {name}")));
        }
        let repo = self.repos.open_repo(name).map_err(fault)?;
        let serve = |out: &mut dyn Write| {
            guts_git::upload_pack::upload_pack(
                &repo,
                guts_git::protocol::Version::V2,
                &mut &request[..],
                out,
            )
            .map_err(local)
        };
        match resume {
            None => serve(out),
            Some(point) => {
                tracing::info!(repo = %name, bytes = point.offset, "resuming a transfer for a peer");
                serve(&mut SkipPrefix::new(out, point))
            }
        }
    }

    fn lfs_wanted(&self, name: &RepoName, max: usize) -> Vec<LfsPointer> {
        self.repo_id(name)
            .map(|id| self.lfs.wanted(&id, max))
            .unwrap_or_default()
    }

    fn lfs_has(&self, name: &RepoName, oid: &LfsOid) -> bool {
        self.repo_id(name).is_some_and(|id| self.lfs.has(&id, oid))
    }

    fn lfs_open(
        &self,
        name: &RepoName,
        oid: &LfsOid,
        offset: u64,
    ) -> Result<(u64, Box<dyn Read + Send>), Fault> {
        if !self.repos.is_seeding(name) {
            return Err(local(format!("this node does not serve {name}")));
        }
        self.lfs.open_object(&self.lfs_repo(name)?, oid, offset)
    }

    fn lfs_resume_point(&self, name: &RepoName, pointer: &LfsPointer) -> u64 {
        self.repo_id(name)
            .map_or(0, |id| self.lfs.resume_point(&id, pointer))
    }

    fn lfs_receive(
        &self,
        name: &RepoName,
        pointer: &LfsPointer,
        resume_from: u64,
        data: &mut dyn Read,
    ) -> Result<(), Fault> {
        let id = self.lfs_repo(name)?;
        // What an upload over HTTP may still add (ADR 0022): the
        // repository's quota and the node's free disk apply to peers too.
        let room = self.repos.push_room(name).map_err(fault)?;
        let room = room.saturating_sub(self.lfs.repo_bytes(&id)?);
        self.lfs.receive(&id, pointer, (resume_from, room), data)?;
        tracing::info!(repo = %name, oid = %pointer.oid, size = pointer.size, "LFS object taken from a peer");
        Ok(())
    }
}

impl NodeReplica {
    fn lfs_repo(&self, name: &RepoName) -> Result<RepoId, Fault> {
        self.repo_id(name)
            .ok_or_else(|| local(format!("this node does not have {name}")))
    }
}

/// Most updates whose first sight is remembered until they are applied.
const MAX_FIRST_SEEN: usize = 4096;
/// An update not applied within this long is forgotten when room is needed.
const FIRST_SEEN_FOR: std::time::Duration = std::time::Duration::from_secs(3600);

/// When updates not yet applied were first seen (announced or listed in a
/// log comparison), for the replication lag. Bounded: when full, entries
/// older than [`FIRST_SEEN_FOR`] go; if none is, a new update's lag counts
/// from its current sight.
#[derive(Default)]
struct FirstSeen(std::sync::Mutex<std::collections::HashMap<Key, Instant>>);

impl FirstSeen {
    /// When `key` was first seen (now, if it was not).
    fn seen(&self, key: &Key) -> Instant {
        let now = Instant::now();
        let Ok(mut map) = self.0.lock() else {
            return now;
        };
        if let Some(t) = map.get(key) {
            return *t;
        }
        if map.len() >= MAX_FIRST_SEEN {
            map.retain(|_, t| t.elapsed() < FIRST_SEEN_FOR);
        }
        if map.len() < MAX_FIRST_SEEN {
            map.insert(*key, now);
        }
        now
    }

    /// `key` was applied or found known.
    fn forget(&self, key: &Key) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(key);
        }
    }
}

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

use std::io::{BufRead, Write};
use std::sync::Arc;

use guts_git::fetch::FetchError;
use guts_git::names::RepoName;
use guts_git::resume::{ResumePoint, SkipPrefix};
use guts_git::storage::Repo;
use guts_git::ObjectId;
use guts_identity::SignedRefUpdate;
use guts_p2p::replication::{Fault, Plan, Replica, Seeded};
use prost::Message;

use crate::error::NodeError;
use crate::identity::Identity;
use crate::log::Entry;
use crate::repos::Repos;

/// Storage and identities, seen by the replication protocol.
pub struct NodeReplica {
    /// The node's repositories.
    pub repos: Arc<Repos>,
    /// Largest pack accepted from a peer.
    pub max_pack_bytes: u64,
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

fn maybe_oid(hex: &str) -> Result<Option<ObjectId>, Fault> {
    let id =
        ObjectId::from_hex(hex.as_bytes()).map_err(|_| peer(format!("bad object id {hex}")))?;
    Ok((!id.is_null()).then_some(id))
}

impl NodeReplica {
    /// A replica over the node's repositories.
    pub fn new(repos: Arc<Repos>, max_pack_bytes: u64) -> Arc<Self> {
        Arc::new(NodeReplica {
            repos,
            max_pack_bytes,
        })
    }

    fn open(&self, name: &str) -> Result<(RepoName, Repo, Identity), Fault> {
        let name = RepoName::parse(name).map_err(local)?;
        let repo = self.repos.open_repo(&name).map_err(fault)?;
        let identity = self.repos.identity(&name).map_err(fault)?;
        Ok((name, repo, identity))
    }

    /// Verify a signed update as a peer would: repository id, signature,
    /// delegate under its document version, pushee. Gives its log entry.
    fn check(&self, identity: &Identity, update: SignedRefUpdate) -> Result<Entry, Fault> {
        let version = usize::try_from(update.doc_version).map_err(peer)?;
        let doc = version
            .checked_sub(1)
            .and_then(|i| identity.docs.get(i))
            .ok_or_else(|| peer(format!("the update refers to identity document version {version}, which this node does not have")))?;
        let cert = update.verify(&identity.id, doc).map_err(peer)?;
        Entry::new(update, &cert).map_err(peer)
    }
}

impl Replica for NodeReplica {
    fn seeded(&self) -> Vec<Seeded> {
        let Ok(names) = self.repos.storage().list() else {
            return Vec::new();
        };
        names
            .into_iter()
            .filter(|n| self.repos.is_seeding(n))
            .filter_map(|n| {
                let id = self.repos.identities().current(&n).ok()??.id.to_string();
                Some(Seeded {
                    name: n.to_string(),
                    id,
                })
            })
            .collect()
    }

    fn identity(&self, repo: &str) -> Option<Vec<Vec<u8>>> {
        let name = RepoName::parse(repo).ok()?;
        Some(self.repos.identities().current(&name).ok()??.versions)
    }

    fn adopt(&self, repo: &str, versions: &[Vec<u8>]) -> Result<String, Fault> {
        let name = RepoName::parse(repo).map_err(local)?;
        let id = self.repos.adopt(&name, versions).map_err(fault)?;
        Ok(id.to_string())
    }

    fn log(&self, repo: &str) -> Option<Vec<Vec<u8>>> {
        let name = RepoName::parse(repo).ok()?;
        self.repos.open_repo(&name).ok()?;
        let updates = self.repos.log().updates(&name).ok()?;
        Some(
            updates
                .into_iter()
                .map(|(_, u)| u.encode_to_vec())
                .collect(),
        )
    }

    fn log_summary(&self, repo: &str) -> Option<Vec<u8>> {
        let name = RepoName::parse(repo).ok()?;
        self.repos.open_repo(&name).ok()?;
        let keys = self.repos.log().keys(&name).ok()?;
        let versions = self.repos.identities().current(&name).ok()??.versions.len() as u64;
        Some(log_summary(&keys, versions))
    }

    fn plan(&self, repo: &str, update: &[u8]) -> Result<Plan, Fault> {
        let (name, repo, identity) = self.open(repo)?;
        let update = SignedRefUpdate::decode(update)
            .map_err(|e| peer(format!("undecodable update: {e}")))?;
        if usize::try_from(update.doc_version).map_err(peer)? > identity.docs.len() {
            return Ok(Plan::NeedIdentity);
        }
        let entry = self.check(&identity, update)?;
        if self
            .repos
            .log()
            .is_logged(&name, &entry.key)
            .map_err(fault)?
        {
            return Ok(Plan::Known);
        }
        let odb = repo.objects().map_err(local)?;
        let mut missing: Vec<String> = Vec::new();
        for line in &entry.lines {
            if line.new == guts_p2p::conflict::ZERO {
                continue;
            }
            let new = ObjectId::Sha1(line.new);
            if !odb.contains(&new) && !missing.contains(&new.to_string()) {
                missing.push(new.to_string());
            }
        }
        Ok(Plan::Apply { missing })
    }

    fn fetch_request(&self, repo: &str, wants: &[String]) -> Result<Vec<u8>, String> {
        let (_, repo, _) = self.open(repo).map_err(|f| f.to_string())?;
        let wants: Vec<ObjectId> = wants
            .iter()
            .map(|hex| maybe_oid(hex).and_then(|o| o.ok_or_else(|| peer("null id"))))
            .collect::<Result<_, _>>()
            .map_err(|f| f.to_string())?;
        guts_git::fetch::request_for(&repo, &wants).map_err(|e| e.to_string())
    }

    fn resume_point(&self, repo: &str, request: &[u8]) -> Option<(u64, [u8; 20])> {
        let (_, repo, _) = self.open(repo).ok()?;
        let point = guts_git::fetch::resume_point(&repo, request)?;
        Some((point.offset, point.sha1))
    }

    fn receive(
        &self,
        repo_name: &str,
        tips: &[String],
        request: &[u8],
        resume_from: u64,
        pack: &mut dyn BufRead,
    ) -> Result<(), Fault> {
        let (_, repo, _) = self.open(repo_name)?;
        let tips: Vec<ObjectId> = tips
            .iter()
            .filter_map(|t| maybe_oid(t).transpose())
            .collect::<Result<_, _>>()?;
        guts_git::fetch::receive(
            &repo,
            &tips,
            request,
            resume_from,
            pack,
            self.max_pack_bytes,
        )
        .map_err(fetch_fault)
    }

    fn apply(&self, repo_name: &str, update: &[u8]) -> Result<bool, Fault> {
        let (_, repo, identity) = self.open(repo_name)?;
        let update = SignedRefUpdate::decode(update)
            .map_err(|e| peer(format!("undecodable update: {e}")))?;
        let entry = self.check(&identity, update)?;
        let odb = repo.objects().map_err(local)?;
        for line in entry
            .lines
            .iter()
            .filter(|l| l.new != guts_p2p::conflict::ZERO)
        {
            let tip = ObjectId::Sha1(line.new);
            if !odb.contains(&tip) {
                return Err(peer(format!("object {tip} is missing after the fetch")));
            }
        }
        self.repos.commit_replicated(&repo, &entry).map_err(fault)
    }

    fn serve_fetch(
        &self,
        repo: &str,
        request: &[u8],
        resume: Option<(u64, [u8; 20])>,
        out: &mut dyn Write,
    ) -> Result<(), String> {
        let name = RepoName::parse(repo).map_err(|e| e.to_string())?;
        if !self.repos.is_seeding(&name) {
            return Err(format!("this node does not serve {name}"));
        }
        let repo = self.repos.open_repo(&name).map_err(|e| e.to_string())?;
        let serve = |out: &mut dyn Write| {
            guts_git::upload_pack::upload_pack(
                &repo,
                guts_git::protocol::Version::V2,
                &mut &request[..],
                out,
            )
            .map_err(|e| e.to_string())
        };
        match resume {
            None => serve(out),
            Some((offset, sha1)) => {
                tracing::info!(repo = %name, bytes = offset, "resuming a transfer for a peer");
                let mut skipping = SkipPrefix::new(out, ResumePoint { offset, sha1 });
                serve(&mut skipping)
            }
        }
    }
}

/// The log summary peers compare: the number of distinct updates (8 bytes,
/// big-endian), the SHA-256 of their sorted keys, and the number of
/// identity document versions held (8 bytes, big-endian).
fn log_summary(sorted_keys: &[[u8; 32]], doc_versions: u64) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for k in sorted_keys {
        h.update(k);
    }
    let mut out = (sorted_keys.len() as u64).to_be_bytes().to_vec();
    out.extend_from_slice(&h.finalize());
    out.extend_from_slice(&doc_versions.to_be_bytes());
    out
}

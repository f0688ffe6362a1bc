//! The node's side of replication: how updates from peers are checked and
//! stored, and how peers are served (`guts_p2p::replication::Replica`).
//!
//! An update from a peer gets exactly the checks of a push, minus the nonce
//! (which only the accepting node can check): the certificate's signature,
//! its signer being a delegate under the document version it was accepted
//! under, and its pushee naming this repository. Its objects arrive through
//! the same quarantine as a push and are checked for hashes and connectivity
//! before anything is visible. Refs then follow the conflict rule over the
//! whole log (`guts_p2p::conflict`), so every node ends on the same values.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};

use guts_git::names::RepoName;
use guts_git::resume::{Partial, ResumePoint, SkipPrefix};
use guts_git::storage::{RefUpdate, Repo, Storage};
use guts_git::ObjectId;
use guts_identity::{PushCert, RepoId, SignedRefUpdate, Verified};
use guts_p2p::conflict::{self, Resolution};
use guts_p2p::replication::{Fault, Plan, Replica, Seeded};
use guts_p2p::wire::LogSummary;

use crate::identity::{Identity, IdentityStore};

/// Storage and identities, seen by the replication protocol.
pub struct NodeReplica {
    /// Repositories.
    pub storage: Storage,
    /// Identity documents and logs.
    pub identities: IdentityStore,
    /// Largest pack accepted from a peer.
    pub max_pack_bytes: u64,
    /// Serializes log appends and ref resolution.
    settle_lock: Mutex<()>,
}

/// An update from a peer verified by `plan` (signature, delegate,
/// repository): what `apply` takes, so nothing is decoded or verified twice.
pub struct CheckedUpdate {
    name: RepoName,
    update: SignedRefUpdate,
    cert: PushCert<Verified>,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A failure of this node (storage, database): not the peer's fault.
fn local(e: impl std::fmt::Display) -> Fault {
    Fault::Local(e.to_string())
}

/// Something the peer sent is invalid.
fn peer(e: impl std::fmt::Display) -> Fault {
    Fault::Peer(e.to_string())
}

/// Receiving a pack: a malformed, truncated or disconnected pack is the
/// peer's fault; the node's own storage failing is not.
fn pack_fault(e: guts_git::Error) -> Fault {
    match e {
        guts_git::Error::Metadata(_) | guts_git::Error::RepoNotFound(_) => local(e),
        _ => peer(e),
    }
}

/// The conflict rule per ref over a log: every update's effective lines
/// (refused ones left out), keyed by the update's key. Only refs in `only`
/// when given. Entries whose certificate does not parse are skipped (they
/// were verified when logged).
pub fn resolve_log(
    log: &[SignedRefUpdate],
    only: Option<&HashSet<String>>,
) -> Result<std::collections::BTreeMap<String, Resolution>, String> {
    let mut per_ref: std::collections::BTreeMap<String, Vec<conflict::RefUpdate>> =
        Default::default();
    for u in log {
        let Ok(cert) = PushCert::parse(&u.certificate) else {
            continue;
        };
        let key = u.key();
        for c in cert.commands() {
            if u.refused.binary_search(&c.name).is_ok()
                || only.is_some_and(|o| !o.contains(&c.name))
            {
                continue;
            }
            per_ref
                .entry(c.name.clone())
                .or_default()
                .push(conflict::RefUpdate {
                    old: oid20(&c.old)?,
                    new: oid20(&c.new)?,
                    key,
                });
        }
    }
    Ok(per_ref
        .into_iter()
        .map(|(name, updates)| (name, conflict::resolve(&updates)))
        .collect())
}

fn oid20(hex: &str) -> Result<[u8; 20], String> {
    let id = ObjectId::from_hex(hex.as_bytes()).map_err(|_| format!("bad object id {hex}"))?;
    id.as_bytes()
        .try_into()
        .map_err(|_| "not a SHA-1 id".to_owned())
}

fn maybe_oid(hex: &str) -> Result<Option<ObjectId>, String> {
    let id = ObjectId::from_hex(hex.as_bytes()).map_err(|_| format!("bad object id {hex}"))?;
    Ok((!id.is_null()).then_some(id))
}

impl NodeReplica {
    /// A replica over the node's storage.
    pub fn new(storage: Storage, identities: IdentityStore, max_pack_bytes: u64) -> Arc<Self> {
        Arc::new(NodeReplica {
            storage,
            identities,
            max_pack_bytes,
            settle_lock: Mutex::new(()),
        })
    }

    fn repo(&self, name: &RepoName) -> Result<(Repo, Identity), Fault> {
        let repo = self.storage.open_repo(name).map_err(local)?;
        let identity = self
            .identities
            .current(name)
            .map_err(local)?
            .ok_or_else(|| local(format!("{name} has no identity document")))?;
        Ok((repo, identity))
    }

    /// Whether this node follows (and serves) `name`.
    pub fn is_seeding(&self, name: &RepoName) -> bool {
        self.identities.is_seeding(name).unwrap_or(false)
    }

    /// Verify a signed update as a peer would: repository id, signature,
    /// delegate under its document version, pushee.
    fn verify(
        &self,
        identity: &Identity,
        update: &SignedRefUpdate,
    ) -> Result<PushCert<Verified>, Fault> {
        let version = usize::try_from(update.doc_version).map_err(peer)?;
        let doc = version
            .checked_sub(1)
            .and_then(|i| identity.docs.get(i))
            .ok_or_else(|| peer(format!("the update refers to identity document version {version}, which this node does not have")))?;
        update.verify(&identity.id, doc).map_err(peer)
    }

    /// Whether the log already holds `update` (same key).
    fn is_logged(&self, name: &RepoName, update: &SignedRefUpdate) -> Result<bool, Fault> {
        let key = update.key();
        Ok(self
            .logged(name)
            .map_err(local)?
            .iter()
            .any(|u| u.key() == key))
    }

    fn logged(&self, name: &RepoName) -> Result<Vec<SignedRefUpdate>, String> {
        Ok(self
            .identities
            .updates(name)
            .map_err(err)?
            .into_iter()
            .map(|(_, u)| u)
            .collect())
    }

    /// Set each of `refs` to what the conflict rule gives over the whole log.
    pub fn settle(&self, name: &RepoName, refs: &HashSet<String>) -> Result<(), String> {
        let _guard = self.settle_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.settle_locked(name, refs)
    }

    fn settle_locked(&self, name: &RepoName, refs: &HashSet<String>) -> Result<(), String> {
        let repo = self.storage.open_repo(name).map_err(err)?;
        let odb = repo.objects().map_err(err)?;
        let resolved = resolve_log(&self.logged(name)?, Some(refs))?;
        let mut buf = Vec::new();
        let mut moves = Vec::new();
        for (ref_name, resolution) in resolved {
            let target = resolution.value.map(ObjectId::Sha1);
            let current = repo.find_ref(&ref_name).map_err(err)?;
            if current == target {
                continue;
            }
            let new_peeled = match target {
                Some(t) => match odb.peel(&t, &mut buf) {
                    Ok((p, _)) if p != t => Some(p),
                    Ok(_) => None,
                    Err(e) => return Err(format!("cannot move {ref_name}: {e}")),
                },
                None => None,
            };
            moves.push(RefUpdate {
                name: ref_name,
                old: current,
                new: target,
                new_peeled,
            });
        }
        if moves.is_empty() {
            return Ok(());
        }
        // One call: each ref is its own compare-and-swap, with one flush.
        let results = repo.update_refs(&moves, false).map_err(err)?;
        let mut settled = 0;
        for (update, result) in moves.iter().zip(&results) {
            match result {
                Ok(()) => {
                    settled += 1;
                    tracing::debug!(repo = %name, r#ref = %update.name, to = ?update.new, "ref settled by the replication rule")
                }
                Err(_) => {
                    tracing::warn!(repo = %name, r#ref = %update.name, "ref moved concurrently; will settle on the next update")
                }
            }
        }
        if let [one] = &moves[..] {
            tracing::info!(repo = %name, r#ref = %one.name, to = ?one.new, "ref settled by the replication rule");
        } else {
            tracing::info!(repo = %name, refs = settled, "refs settled by the replication rule");
        }
        Ok(())
    }
}

impl Replica for NodeReplica {
    type Checked = CheckedUpdate;

    fn seeded(&self) -> Vec<Seeded> {
        let Ok(names) = self.storage.list() else {
            return Vec::new();
        };
        names
            .into_iter()
            .filter(|n| self.identities.is_seeding(n).unwrap_or(false))
            .filter_map(|n| {
                let id = self.identities.current(&n).ok()??.id;
                Some(Seeded { name: n, id })
            })
            .collect()
    }

    fn identity(&self, name: &RepoName) -> Option<Vec<Vec<u8>>> {
        Some(self.identities.current(name).ok()??.versions)
    }

    fn adopt(&self, name: &RepoName, versions: &[Vec<u8>]) -> Result<RepoId, Fault> {
        let mut chain: Vec<guts_identity::Doc<Verified>> = Vec::new();
        for bytes in versions {
            let doc = guts_identity::Doc::from_bytes(bytes).map_err(peer)?;
            let verified = match chain.last() {
                None => doc.verify_genesis(),
                Some(prev) => doc.verify_successor(prev),
            }
            .map_err(peer)?;
            chain.push(verified);
        }
        let genesis = chain.first().ok_or_else(|| peer("no identity document"))?;
        if genesis.owner().method_id() != name.owner() || genesis.body().name != name.name() {
            return Err(peer(format!(
                "the identity document is not the one of {name}"
            )));
        }
        if let Some(existing) = self.identities.current(name).map_err(local)? {
            if genesis.genesis_id() != Some(existing.id) {
                return Err(peer(format!("the peer's {name} has another repository id")));
            }
            for bytes in versions.iter().skip(existing.versions.len()) {
                self.identities.update(name, bytes).map_err(local)?;
                tracing::info!(repo = %name, "took a newer identity document from a peer");
            }
            return Ok(existing.id);
        }
        let id = self.identities.create(name, genesis).map_err(local)?;
        let head = format!("refs/heads/{}", genesis.body().default_branch);
        self.storage.create_with_head(name, &head).map_err(local)?;
        for bytes in &versions[1..] {
            self.identities.update(name, bytes).map_err(local)?;
        }
        self.identities.set_seeding(name, true).map_err(local)?;
        Ok(id)
    }

    fn log(&self, name: &RepoName) -> Option<Vec<SignedRefUpdate>> {
        self.storage.open_repo(name).ok()?;
        self.logged(name).ok()
    }

    fn log_summary(&self, name: &RepoName) -> Option<LogSummary> {
        self.storage.open_repo(name).ok()?;
        let keys = self.logged(name).ok()?.iter().map(|u| u.key()).collect();
        let versions = self.identities.current(name).ok()??.versions.len() as u64;
        Some(LogSummary::new(keys, versions))
    }

    fn plan(&self, name: &RepoName, update: SignedRefUpdate) -> Result<Plan<CheckedUpdate>, Fault> {
        let (repo, identity) = self.repo(name)?;
        if usize::try_from(update.doc_version).map_err(peer)? > identity.docs.len() {
            return Ok(Plan::NeedIdentity);
        }
        let cert = self.verify(&identity, &update)?;
        if self.is_logged(name, &update)? {
            return Ok(Plan::Known);
        }
        let odb = repo.objects().map_err(local)?;
        let mut missing = Vec::new();
        for c in update.effective(&cert) {
            if let Some(new) = maybe_oid(&c.new).map_err(peer)? {
                if !odb.contains(&new) && !missing.contains(&new) {
                    missing.push(new);
                }
            }
        }
        let checked = CheckedUpdate {
            name: name.clone(),
            update,
            cert,
        };
        Ok(Plan::Apply { missing, checked })
    }

    fn fetch_request(&self, name: &RepoName, wants: &[ObjectId]) -> Result<Vec<u8>, Fault> {
        let (repo, _) = self.repo(name)?;
        let haves: Vec<ObjectId> = repo
            .refs()
            .map_err(local)?
            .into_iter()
            .map(|r| r.id)
            .collect();
        Ok(fetch_request(wants, &haves))
    }

    fn resume_point(&self, name: &RepoName, request: &[u8]) -> Option<ResumePoint> {
        let (repo, _) = self.repo(name).ok()?;
        Partial::for_request(&repo.objects_dir(), request)
            .point()
            .ok()?
    }

    fn receive(
        &self,
        name: &RepoName,
        tips: &[ObjectId],
        request: &[u8],
        resume_from: u64,
        pack: &mut dyn BufRead,
    ) -> Result<(), Fault> {
        let (repo, _) = self.repo(name)?;
        let odb = repo.objects().map_err(local)?;
        // The pack: bytes kept from an interrupted attempt, then the
        // network's, which are kept in turn until the pack is complete.
        let partial = Partial::for_request(&repo.objects_dir(), request);
        let network = guts_git::pktline::PackfileReader::new(pack);
        let mut reader =
            std::io::BufReader::new(partial.reader(resume_from, network).map_err(local)?);
        let received = guts_git::pack_in::receive(
            &repo.objects_dir(),
            &odb,
            &mut reader,
            self.max_pack_bytes,
            &mut |_| {},
        );
        let kept = partial.settle(reader.into_inner(), received.is_ok());
        let q = received.map_err(|e| {
            if kept {
                Fault::Interrupted(e.to_string())
            } else {
                pack_fault(e)
            }
        })?;
        q.check_connectivity(&odb, tips).map_err(pack_fault)?;
        q.publish(&repo.objects_dir()).map_err(local)
    }

    fn apply(&self, checked: CheckedUpdate) -> Result<bool, Fault> {
        let CheckedUpdate { name, update, cert } = checked;
        let repo = self.storage.open_repo(&name).map_err(local)?;
        let mut refs = HashSet::new();
        let odb = repo.objects().map_err(local)?;
        for c in update.effective(&cert) {
            if let Some(tip) = maybe_oid(&c.new).map_err(peer)? {
                if !odb.contains(&tip) {
                    return Err(peer(format!("object {tip} is missing after the fetch")));
                }
            }
            refs.insert(c.name.clone());
        }
        let _guard = self.settle_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_logged(&name, &update)? {
            return Ok(false);
        }
        self.identities
            .append_update(&name, &update)
            .map_err(local)?;
        self.settle_locked(&name, &refs).map_err(local)?;
        tracing::info!(repo = %name, signer = %cert.signer(), refused = update.refused.len(), "replicated a signed update");
        Ok(true)
    }

    fn serve_fetch(
        &self,
        name: &RepoName,
        request: &[u8],
        resume: Option<ResumePoint>,
        out: &mut dyn Write,
    ) -> Result<(), Fault> {
        if !self.identities.is_seeding(name).map_err(local)? {
            return Err(local(format!("this node does not serve {name}")));
        }
        let repo = self.storage.open_repo(name).map_err(local)?;
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
                let mut skipping = SkipPrefix::new(out, point);
                serve(&mut skipping)
            }
        }
    }
}

/// A protocol v2 `fetch` request for `wants`, telling the peer about `haves`
/// so that it sends only what is new, in one round trip.
fn fetch_request(wants: &[ObjectId], haves: &[ObjectId]) -> Vec<u8> {
    let mut lines = vec!["command=fetch".to_owned(), "object-format=sha1".to_owned()];
    let mut args = vec!["ofs-delta".to_owned(), "no-progress".to_owned()];
    args.extend(wants.iter().map(|w| format!("want {w}")));
    args.extend(haves.iter().map(|h| format!("have {h}")));
    args.push("done".to_owned());
    let mut req = Vec::new();
    for l in lines.drain(..) {
        let _ = guts_git::pktline::write_pkt(&mut req, format!("{l}\n").as_bytes());
    }
    req.extend_from_slice(b"0001");
    for a in args {
        let _ = guts_git::pktline::write_pkt(&mut req, format!("{a}\n").as_bytes());
    }
    req.extend_from_slice(b"0000");
    req
}

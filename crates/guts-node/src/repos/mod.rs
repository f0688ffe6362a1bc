//! The domain layer: every operation that changes a repository goes
//! through [`Repos`]: create, adopt (from a peer), delete, identity
//! updates, pushes, and replicated updates. HTTP, REST and replication call
//! it; nothing else coordinates storage, identities and the signed log
//! (ADR 0009).
//!
//! Refs and the signed-update log change together: [`Repos::commit_entry`]
//! computes each touched ref's value with the conflict rule over the logged
//! lines plus the new entry's, and commits those ref changes and the log
//! entry in one sled transaction, under the repository's lock. What
//! happened is published as [`RepoEvent`]s (replication announces local
//! pushes from them; `GET /api/v1/events` streams their ref moves).
//!
//! Every method blocks (sled, files): call them from blocking threads.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use guts_git::names::RepoName;
use guts_git::receive_pack::ReceiveOptions;
use guts_git::storage::{RefUpdate, Repo, Storage};
use guts_git::ObjectId;
use guts_identity::doc::RepoId;
use guts_identity::{Doc, NonceIssuer, Verified};
use guts_p2p::conflict;
use tokio::sync::broadcast;

use crate::auth::UsedNonces;
use crate::error::NodeError;
use crate::identity::{Identity, IdentityStore};
use crate::log::{Entry, SignedLog};
use crate::rules::Rules;

mod event;
pub use event::RepoEvent;

/// Repository locks: commits of one repository are serialized (pushes and
/// replicated updates alike), different repositories rarely share a stripe.
const LOCK_STRIPES: usize = 64;

/// Events kept for slow subscribers before the oldest are dropped.
const EVENT_BUFFER: usize = 1024;

/// The node's repositories.
pub struct Repos {
    storage: Storage,
    identities: IdentityStore,
    log: SignedLog,
    nonces: NonceIssuer,
    used_nonces: UsedNonces,
    nonce_slop: u64,
    receive: ReceiveOptions,
    rules: Rules,
    did_writes: crate::clients::RateLimiter<String>,
    locks: Vec<Mutex<()>>,
    events: broadcast::Sender<RepoEvent>,
}

fn internal(e: impl std::fmt::Display) -> NodeError {
    NodeError::Internal(e.to_string())
}

impl Repos {
    /// The domain over `storage` (identities and log live in its database).
    pub fn open(
        storage: Storage,
        nonce_slop: u64,
        receive: ReceiveOptions,
        rules: Rules,
    ) -> Result<Arc<Self>, NodeError> {
        let identities = IdentityStore::open(storage.db())?;
        let log = SignedLog::open(storage.db())?;
        let nonces = identities.nonce_issuer()?;
        let used_nonces = UsedNonces::open(storage.db())?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Ok(Arc::new(Repos {
            storage,
            identities,
            log,
            nonces,
            used_nonces,
            nonce_slop,
            receive,
            did_writes: crate::clients::RateLimiter::new(rules.did_rate),
            rules,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            events,
        }))
    }

    /// Repository storage (reads).
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Identity documents (reads).
    pub fn identities(&self) -> &IdentityStore {
        &self.identities
    }

    /// Signed-update logs (reads).
    pub fn log(&self) -> &SignedLog {
        &self.log
    }

    /// Push settings.
    pub fn receive_options(&self) -> ReceiveOptions {
        self.receive
    }

    /// Follow what happens to repositories.
    pub fn subscribe(&self) -> broadcast::Receiver<RepoEvent> {
        self.events.subscribe()
    }

    fn emit(&self, event: RepoEvent) {
        // No subscriber is fine: nothing to tell.
        let _ = self.events.send(event);
    }

    fn lock(&self, repo: &RepoName) -> MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        repo.to_string().hash(&mut h);
        let i = (h.finish() as usize) % self.locks.len().max(1);
        self.locks[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The canonical name of `OWNER/NAME`, OWNER an id or an alias.
    pub fn resolve(&self, owner: &str, name: &str) -> Result<RepoName, NodeError> {
        self.identities.resolve(owner, name)
    }

    /// Open an existing repository.
    pub fn open_repo(&self, name: &RepoName) -> Result<Repo, NodeError> {
        Ok(self.storage.open_repo(name)?)
    }

    /// A repository's identity, required (repositories without one refuse pushes).
    pub fn identity(&self, name: &RepoName) -> Result<Identity, NodeError> {
        self.identities
            .current(name)?
            .ok_or_else(|| NodeError::NoIdentity(name.to_string()))
    }

    /// Create a repository from its owner's signed first identity document.
    pub fn create(&self, document: &[u8]) -> Result<(RepoName, RepoId), NodeError> {
        let doc = Doc::from_bytes(document).and_then(Doc::verify_genesis)?;
        let name = RepoName::new(&doc.owner().method_id(), &doc.body().name)?;
        self.rules.check_create(&doc.owner())?;
        self.rules.check_blocked(&name)?;
        self.charge(&doc.owner())?;
        self.rules.check_disk()?;
        let owned = self
            .storage
            .list()?
            .iter()
            .filter(|n| n.owner() == name.owner())
            .count() as u64;
        if owned >= self.rules.max_repos_per_owner {
            return Err(NodeError::Quota(format!(
                "{} already has {owned} repositories on this node, the most it allows",
                doc.owner()
            )));
        }
        let id = {
            let _guard = self.lock(&name);
            self.create_from(&name, &doc, &[])?
        };
        tracing::info!(repo = %name, owner = %doc.owner(), aliases = ?doc.body().aliases, "repository created");
        Ok((name, id))
    }

    /// Create `name` with the verified first document `genesis`, then store
    /// the later `versions` (signed bytes, each verified against the one
    /// before). A failure leaves nothing behind.
    fn create_from(
        &self,
        name: &RepoName,
        genesis: &Doc<Verified>,
        versions: &[Vec<u8>],
    ) -> Result<RepoId, NodeError> {
        if self.storage.open_repo(name).is_ok() {
            return Err(guts_git::Error::RepoExists(name.to_string()).into());
        }
        self.clear_debris(name)?;
        // Claims the name atomically: a racing creation fails here and so
        // never reaches the clean-up below, which undoes only our own.
        let id = self.identities.create(name, genesis)?;
        let head = format!("refs/heads/{}", genesis.body().default_branch);
        let rest = self
            .storage
            .create_with_head(name, &head)
            .map_err(NodeError::from)
            .and_then(|_| {
                versions
                    .iter()
                    .try_for_each(|v| self.identities.update(name, v).map(|_| ()))
            });
        if let Err(e) = rest {
            let _ = self.storage.delete(name);
            self.identities.delete(name, &genesis.body().aliases, 0)?;
            return Err(e);
        }
        Ok(id)
    }

    /// What an interrupted deletion of `name` left (the storage goes first,
    /// so an identity or log without storage is debris). Caller holds the lock.
    fn clear_debris(&self, name: &RepoName) -> Result<(), NodeError> {
        if let Some(old) = self.identities.current(name)? {
            tracing::info!(repo = %name, "removing the identity left by an interrupted deletion");
            self.identities.delete(name, &old.doc.body().aliases, 0)?;
        }
        self.log.delete(name)
    }

    /// Take a repository's identity from a peer: `versions` is its whole
    /// document chain. Creates the repository (empty, seeded) if it is new
    /// here; otherwise stores the versions beyond the ones held.
    pub fn adopt(&self, name: &RepoName, versions: &[Vec<u8>]) -> Result<RepoId, NodeError> {
        let chain = verify_chain(versions)?;
        let genesis = chain
            .first()
            .ok_or_else(|| NodeError::Invalid("no identity document".into()))?;
        if genesis.owner().method_id() != name.owner() || genesis.body().name != name.name() {
            return Err(NodeError::Invalid(format!(
                "the identity document is not the one of {name}"
            )));
        }
        self.rules.check_disk()?;
        self.rules.check_seed(name)?;
        let _guard = self.lock(name);
        let stored = self.storage.open_repo(name).is_ok();
        if let (Some(existing), true) = (self.identities.current(name)?, stored) {
            if genesis.genesis_id() != Some(existing.id) {
                return Err(NodeError::Invalid(format!(
                    "the peer's {name} has another repository id"
                )));
            }
            for bytes in versions.iter().skip(existing.versions.len()) {
                self.identities.update(name, bytes)?;
                tracing::info!(repo = %name, "took a newer identity document from a peer");
            }
            return Ok(existing.id);
        }
        let id = self.create_from(name, genesis, versions.get(1..).unwrap_or_default())?;
        self.identities.set_seeding(name, true)?;
        tracing::info!(repo = %name, %id, "repository adopted from a peer");
        Ok(id)
    }

    /// Store the next version of `name`'s identity document.
    pub fn update_identity(
        &self,
        name: &RepoName,
        document: &[u8],
    ) -> Result<Doc<Verified>, NodeError> {
        let _guard = self.lock(name);
        if let Some(current) = self.identities.current(name)? {
            self.charge(&current.doc.owner())?;
        }
        let doc = self.identities.update(name, document)?;
        tracing::info!(repo = %name, version = doc.body().version, delegates = doc.delegates().len(), "identity document updated");
        if let Some(current) = self.identities.current(name)? {
            self.emit(RepoEvent::IdentityChanged {
                repo: name.clone(),
                id: current.id,
                versions: doc.body().version,
            });
        }
        Ok(doc)
    }

    /// Delete a repository: refs, objects, identity and log.
    pub fn delete(&self, name: &RepoName) -> Result<(), NodeError> {
        let _guard = self.lock(name);
        let aliases = self
            .identities
            .current(name)?
            .map(|i| i.doc.body().aliases.clone())
            .unwrap_or_default();
        self.storage.delete(name)?;
        let reserved_until = crate::auth::now().saturating_add(self.rules.alias_grace_secs);
        self.identities.delete(name, &aliases, reserved_until)?;
        self.log.delete(name)?;
        self.storage.db().flush().map_err(internal)?;
        tracing::info!(repo = %name, "repository deleted");
        Ok(())
    }

    /// Change a repository's settings (`None`: leave as is); returns them.
    pub fn set_settings(
        &self,
        name: &RepoName,
        deny_non_fast_forwards: Option<bool>,
    ) -> Result<guts_git::storage::RepoSettings, NodeError> {
        let _guard = self.lock(name);
        let repo = self.storage.open_repo(name)?;
        Ok(match deny_non_fast_forwards {
            Some(deny) => {
                let s = repo.set_deny_non_fast_forwards(deny)?;
                tracing::info!(repo = %name, deny_non_fast_forwards = deny, "settings changed");
                s
            }
            None => repo.settings()?,
        })
    }

    /// Start or stop following a repository.
    pub fn set_seeding(&self, name: &RepoName, seeding: bool) -> Result<(), NodeError> {
        self.identities.set_seeding(name, seeding)
    }

    /// Whether the node follows (and serves) `name`.
    pub fn is_seeding(&self, name: &RepoName) -> bool {
        self.identities.is_seeding(name).unwrap_or(false)
    }

    /// A fresh nonce for `repo` (push certificates, signed actions).
    pub fn issue_nonce(&self, repo: &RepoName) -> String {
        self.nonces.issue(&repo.to_string(), crate::auth::now())
    }

    /// Accept `nonce` for `repo` once: issued by this node for this
    /// repository, younger than the slop, and never used before.
    pub fn check_nonce(&self, repo: &RepoName, nonce: &str) -> Result<(), NodeError> {
        let now = crate::auth::now();
        self.nonces
            .check(nonce, &repo.to_string(), now, self.nonce_slop)
            .map_err(|e| NodeError::Unauthorized(e.to_string()))?;
        let expires = now.saturating_add(self.nonce_slop).saturating_add(1);
        if !self.used_nonces.claim(nonce, expires)? {
            return Err(NodeError::Unauthorized(
                "the nonce was already used (a replayed request or push certificate); \
                 ask the node for a fresh one (git does so when you push again)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Count one write by `did` against its rate limit (`rules.did_rate_limit`).
    pub fn charge(&self, did: &guts_identity::Did) -> Result<(), NodeError> {
        if self.rules.did_rate.per_sec <= 0.0 {
            return Ok(());
        }
        self.did_writes
            .take(did.method_id())
            .map_err(|retry_after| NodeError::RateLimited {
                client: did.to_string(),
                retry_after,
            })
    }

    /// The node's rules (policies, quotas).
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// How many pack bytes a push to `name` may still add: the smaller of
    /// what its repository and its owner may still store. Refuses when the
    /// node is low on disk or nothing is left.
    pub fn push_room(&self, name: &RepoName) -> Result<u64, NodeError> {
        self.rules.check_disk()?;
        let mut owner_bytes = 0u64;
        let mut repo_bytes = 0u64;
        for n in self
            .storage
            .list()?
            .iter()
            .filter(|n| n.owner() == name.owner())
        {
            let bytes = self.storage.open_repo(n)?.pack_bytes()?;
            owner_bytes = owner_bytes.saturating_add(bytes);
            if n == name {
                repo_bytes = bytes;
            }
        }
        let room = self
            .rules
            .max_repo_bytes
            .saturating_sub(repo_bytes)
            .min(self.rules.max_owner_bytes.saturating_sub(owner_bytes));
        if room == 0 {
            return Err(NodeError::Quota(format!(
                "{name} is over its storage quota on this node ({repo_bytes} bytes in the repository, {owner_bytes} for its owner)"
            )));
        }
        Ok(room)
    }
}

fn verify_chain(versions: &[Vec<u8>]) -> Result<Vec<Doc<Verified>>, NodeError> {
    let mut chain: Vec<Doc<Verified>> = Vec::new();
    for bytes in versions {
        let doc = Doc::from_bytes(bytes)?;
        let verified = match chain.last() {
            None => doc.verify_genesis(),
            Some(prev) => doc.verify_successor(prev),
        }?;
        chain.push(verified);
    }
    Ok(chain)
}

/// A ref change with its log entry: the commit itself.
impl Repos {
    /// Log `entry` (a verified update of `repo`) and move every ref it
    /// touches to the value the conflict rule gives over the logged lines
    /// plus the entry's, in one transaction. The caller holds the
    /// repository's lock. Fails with `Rejected` if the entry is logged.
    /// The value of `line`'s ref once `entry` is logged: from the index of
    /// old values when it settles it (an uncontested fast-forward, at a cost
    /// independent of the ref's history), else the conflict rule over every
    /// logged line of the ref.
    fn settle(
        &self,
        name: &RepoName,
        entry: &Entry,
        line: &crate::log::Line,
        current: Option<ObjectId>,
    ) -> Result<Option<ObjectId>, NodeError> {
        let of_ref = entry.lines.iter().filter(|l| l.name == line.name).count();
        let cur: Option<conflict::Oid> = match current {
            Some(c) => c.as_bytes().try_into().ok(),
            None => Some(conflict::ZERO),
        };
        if let (1, Some(cur)) = (of_ref, cur) {
            if let Some(v) = self.log.extends(name, line, &cur)? {
                return Ok((v != conflict::ZERO).then_some(ObjectId::Sha1(v)));
            }
        }
        let mut set = self.log.lines(name, &line.name)?;
        set.extend(entry.lines.iter().filter(|l| l.name == line.name).map(|l| {
            conflict::RefUpdate {
                old: l.old,
                new: l.new,
                key: entry.key,
            }
        }));
        Ok(conflict::resolve(&set).value.map(ObjectId::Sha1))
    }

    fn commit_entry(&self, repo: &Repo, entry: &Entry) -> Result<(u64, Vec<RefUpdate>), NodeError> {
        let odb = repo.objects()?;
        let mut buf = Vec::new();
        let mut moves = Vec::new();
        let mut seen = HashSet::new();
        for line in &entry.lines {
            if !seen.insert(line.name.as_str()) {
                continue;
            }
            let current = repo.find_ref(&line.name)?;
            let target = self.settle(repo.name(), entry, line, current)?;
            if current == target {
                continue;
            }
            let new_peeled = match target {
                Some(t) => match odb.peel(&t, &mut buf) {
                    Ok((p, _)) if p != t => Some(p),
                    Ok(_) => None,
                    Err(e) => {
                        return Err(NodeError::Internal(format!(
                            "cannot move {}: {e}",
                            line.name
                        )))
                    }
                },
                None => None,
            };
            moves.push(RefUpdate {
                name: line.name.clone(),
                old: current,
                new: target,
                new_peeled,
            });
        }
        let append = self.log.append(repo.name(), entry);
        repo.commit_refs(&moves, true, &append)?;
        let seq = append
            .seq()
            .ok_or_else(|| NodeError::Internal("the log entry was not written".into()))?;
        Ok((seq, moves))
    }

    /// Apply a verified update from a peer whose objects are present:
    /// log it and settle its refs. `Ok(false)` if it was logged already.
    pub fn commit_replicated(&self, repo: &Repo, entry: &Entry) -> Result<bool, NodeError> {
        let name = repo.name().clone();
        let _guard = self.lock(&name);
        if self.log.is_logged(&name, &entry.key)? {
            return Ok(false);
        }
        let (seq, moves) = self.commit_entry(repo, entry)?;
        tracing::info!(repo = %name, seq, refs = moves.len(), refused = entry.update.refused.len(), "replicated a signed update");
        self.emit_moves(name, entry, seq, moves, true);
        Ok(true)
    }

    /// Log an authorized push and move its refs (see `policy.rs`): the
    /// stale ones are refused, the others applied with their log entry.
    pub(crate) fn commit_push(
        &self,
        repo: &Repo,
        auth: crate::policy::AuthorizedPush,
        updates: &[RefUpdate],
        atomic: bool,
    ) -> Result<Vec<Result<(), guts_git::storage::RefRejection>>, NodeError> {
        use guts_git::storage::RefRejection;
        let name = repo.name().clone();
        let _guard = self.lock(&name);
        let mut results = Vec::with_capacity(updates.len());
        for u in updates {
            let fresh = repo.find_ref(&u.name)? == u.old;
            results.push(if fresh {
                Ok(())
            } else {
                Err(RefRejection::Stale)
            });
        }
        if atomic && results.iter().any(|r| r.is_err()) {
            for r in results.iter_mut().filter(|r| r.is_ok()) {
                *r = Err(RefRejection::AtomicFailed);
            }
            return Ok(results);
        }
        let applied: HashSet<&str> = updates
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .map(|(u, _)| u.name.as_str())
            .collect();
        if applied.is_empty() {
            return Ok(results);
        }
        let (id, entry) = auth.into_entry(&applied)?;
        let (seq, moves) = self.commit_entry(repo, &entry)?;
        tracing::info!(repo = %name, seq, refs = applied.len(), refused = entry.update.refused.len(), "signed update logged");
        self.emit(RepoEvent::Pushed {
            repo: name.clone(),
            id,
            update: entry.update.clone(),
            seq,
        });
        self.emit_moves(name, &entry, seq, moves, false);
        Ok(results)
    }

    fn emit_moves(
        &self,
        repo: RepoName,
        entry: &Entry,
        seq: u64,
        moves: Vec<RefUpdate>,
        replicated: bool,
    ) {
        if moves.is_empty() {
            return;
        }
        self.emit(RepoEvent::RefsMoved {
            repo,
            moves: moves.into_iter().map(|m| (m.name, m.old, m.new)).collect(),
            replicated,
            seq,
            signer: entry.signer.clone(),
            pushee: entry.pushee.clone(),
            at: crate::auth::now(),
        });
    }
}

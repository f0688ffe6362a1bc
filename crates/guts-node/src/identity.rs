//! Identity documents, owner aliases and signed-update logs of the node's
//! repositories, kept in sled beside the refs, and the push policy built on
//! them: a push is accepted only with a push certificate that verifies, is
//! signed by a delegate, names this repository and answers a fresh nonce.

use std::time::{SystemTime, UNIX_EPOCH};

use guts_git::names::RepoName;
use guts_git::receive_pack::{Command, PushPolicy};
use guts_identity::doc::RepoId;
use guts_identity::{Doc, NonceIssuer, PushCert, SignedRefUpdate, Verified};
use prost::Message;

use crate::error::NodeError;

/// How long an advertised push-certificate nonce stays valid, by default.
pub const DEFAULT_NONCE_SLOP_SECS: u64 = 600;

/// The sled trees holding identity data.
#[derive(Clone)]
pub struct IdentityStore {
    /// `OWNER/NAME \0 version(u64 BE)` → signed document bytes.
    docs: sled::Tree,
    /// `OWNER/NAME` → repository id (32 bytes).
    ids: sled::Tree,
    /// `ALIAS/NAME` → canonical `OWNER/NAME`.
    aliases: sled::Tree,
    /// `OWNER/NAME \0 seq(u64 BE)` → signed ref update.
    log: sled::Tree,
    /// Node secrets.
    meta: sled::Tree,
    /// `OWNER/NAME` of repositories this node stopped following.
    unseeded: sled::Tree,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn key(repo: &RepoName, n: u64) -> Vec<u8> {
    let mut k = repo.to_string().into_bytes();
    k.push(0);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn prefix(repo: &RepoName) -> Vec<u8> {
    let mut k = repo.to_string().into_bytes();
    k.push(0);
    k
}

fn id_err(e: guts_identity::Error) -> NodeError {
    NodeError::BadRequest(axum::http::StatusCode::BAD_REQUEST, e.to_string())
}

/// A repository's identity as the node currently holds it.
pub struct Identity {
    /// The repository id.
    pub id: RepoId,
    /// The latest verified document.
    pub doc: Doc<Verified>,
    /// Every version, oldest first, as stored.
    pub versions: Vec<Vec<u8>>,
    /// Every version, verified, oldest first (`docs[v - 1]` is version `v`).
    pub docs: Vec<Doc<Verified>>,
}

impl IdentityStore {
    /// Open the trees in `db`.
    pub fn open(db: &sled::Db) -> Result<Self, NodeError> {
        let t = |name: &str| {
            db.open_tree(name)
                .map_err(|e| NodeError::Internal(e.to_string()))
        };
        Ok(IdentityStore {
            docs: t("identity-docs")?,
            ids: t("identity-ids")?,
            aliases: t("identity-aliases")?,
            log: t("signed-updates")?,
            meta: t("node-meta")?,
            unseeded: t("unseeded")?,
        })
    }

    /// The canonical name of a repository addressed as `OWNER/NAME`, where
    /// OWNER is the owner's DID id (`z6Mk...`) or an alias its document declares.
    pub fn resolve(&self, owner: &str, name: &str) -> Result<RepoName, NodeError> {
        let given = RepoName::new(owner, name)?;
        if self.ids.contains_key(given.to_string()).map_err(internal)? {
            return Ok(given);
        }
        match self.aliases.get(given.to_string()).map_err(internal)? {
            Some(target) => Ok(RepoName::parse(&String::from_utf8_lossy(&target))?),
            None => Ok(given),
        }
    }

    /// Register a verified first document for `repo` and its aliases. The
    /// repository id is claimed atomically: of two creations racing, one
    /// gets `RepoExists` and touches nothing.
    pub fn create(&self, repo: &RepoName, doc: &Doc<Verified>) -> Result<RepoId, NodeError> {
        let id = doc.genesis_id().ok_or_else(|| {
            NodeError::BadRequest(
                axum::http::StatusCode::BAD_REQUEST,
                "not a first document".into(),
            )
        })?;
        self.check_aliases(repo, &doc.body().aliases)?;
        let claimed = self
            .ids
            .compare_and_swap(repo.to_string(), None as Option<&[u8]>, Some(&id.0[..]))
            .map_err(internal)?;
        if claimed.is_err() {
            return Err(guts_git::Error::RepoExists(repo.to_string()).into());
        }
        let stored = self
            .docs
            .insert(key(repo, 1), doc.to_bytes())
            .map_err(internal)
            .and_then(|_| self.set_aliases(repo, &[], &doc.body().aliases));
        if let Err(e) = stored {
            let _ = self.docs.remove(key(repo, 1));
            let _ = self.ids.remove(repo.to_string());
            return Err(e);
        }
        self.docs.flush().map_err(internal)?;
        Ok(id)
    }

    /// Refuse if one of `aliases` already names another repository here.
    fn check_aliases(&self, repo: &RepoName, aliases: &[String]) -> Result<(), NodeError> {
        for a in aliases {
            let alias = RepoName::new(a, repo.name())?.to_string();
            if let Some(t) = self.aliases.get(&alias).map_err(internal)? {
                if t.as_ref() != repo.to_string().as_bytes() {
                    return Err(guts_git::Error::RepoExists(alias).into());
                }
            }
        }
        Ok(())
    }

    /// Replace `old` aliases by `new` ones (checked first: nothing changes
    /// if one of `new` is taken).
    fn set_aliases(
        &self,
        repo: &RepoName,
        old: &[String],
        new: &[String],
    ) -> Result<(), NodeError> {
        self.check_aliases(repo, new)?;
        for a in old.iter().filter(|a| !new.contains(a)) {
            self.aliases
                .remove(RepoName::new(a, repo.name())?.to_string())
                .map_err(internal)?;
        }
        for a in new {
            let alias = RepoName::new(a, repo.name())?.to_string();
            self.aliases
                .insert(alias, repo.to_string().as_bytes())
                .map_err(internal)?;
        }
        Ok(())
    }

    /// Load and verify the document chain of `repo`; `None` for repositories
    /// without identity.
    pub fn current(&self, repo: &RepoName) -> Result<Option<Identity>, NodeError> {
        let Some(id) = self.ids.get(repo.to_string()).map_err(internal)? else {
            return Ok(None);
        };
        let id: [u8; 32] = id
            .as_ref()
            .try_into()
            .map_err(|_| NodeError::Internal("corrupt repository id".into()))?;
        let mut versions = Vec::new();
        let mut docs = Vec::new();
        let mut doc: Option<Doc<Verified>> = None;
        for item in self.docs.scan_prefix(prefix(repo)) {
            let (_, bytes) = item.map_err(internal)?;
            let unverified = Doc::from_bytes(&bytes)
                .map_err(|e| NodeError::Internal(format!("stored document: {e}")))?;
            let verified = match &doc {
                None => unverified.verify_genesis(),
                Some(prev) => unverified.verify_successor(prev),
            }
            .map_err(|e| NodeError::Internal(format!("stored document chain: {e}")))?;
            versions.push(bytes.to_vec());
            if let Some(prev) = doc.replace(verified) {
                docs.push(prev);
            }
        }
        let doc =
            doc.ok_or_else(|| NodeError::Internal("repository id without document".into()))?;
        docs.push(doc.clone());
        Ok(Some(Identity {
            id: RepoId(id),
            doc,
            versions,
            docs,
        }))
    }

    /// Verify `bytes` as the next version of `repo`'s document and store it.
    pub fn update(&self, repo: &RepoName, bytes: &[u8]) -> Result<Doc<Verified>, NodeError> {
        let current = self
            .current(repo)?
            .ok_or_else(|| guts_git::Error::RepoNotFound(repo.to_string()))?;
        let next = Doc::from_bytes(bytes)
            .and_then(|d| d.verify_successor(&current.doc))
            .map_err(id_err)?;
        // Aliases change only once the document is in: a lost race or a
        // taken alias leaves everything as it was.
        self.check_aliases(repo, &next.body().aliases)?;
        let inserted = self
            .docs
            .compare_and_swap(
                key(repo, next.body().version),
                None as Option<&[u8]>,
                Some(next.to_bytes()),
            )
            .map_err(internal)?;
        if inserted.is_err() {
            return Err(NodeError::BadRequest(
                axum::http::StatusCode::CONFLICT,
                "another update of the identity document won the race; fetch it and sign again"
                    .into(),
            ));
        }
        self.set_aliases(repo, &current.doc.body().aliases, &next.body().aliases)?;
        self.docs.flush().map_err(internal)?;
        Ok(next)
    }

    /// Forget everything about `repo`.
    pub fn delete(&self, repo: &RepoName, aliases: &[String]) -> Result<(), NodeError> {
        for tree in [&self.docs, &self.log] {
            for item in tree.scan_prefix(prefix(repo)).keys() {
                tree.remove(item.map_err(internal)?).map_err(internal)?;
            }
        }
        self.ids.remove(repo.to_string()).map_err(internal)?;
        self.set_aliases(repo, aliases, &[])?;
        self.ids.flush().map_err(internal)?;
        Ok(())
    }

    /// Whether the node follows `repo` (it does unless told to stop).
    pub fn is_seeding(&self, repo: &RepoName) -> Result<bool, NodeError> {
        Ok(!self
            .unseeded
            .contains_key(repo.to_string())
            .map_err(internal)?)
    }

    /// Start or stop following `repo`.
    pub fn set_seeding(&self, repo: &RepoName, seeding: bool) -> Result<(), NodeError> {
        if seeding {
            self.unseeded.remove(repo.to_string()).map_err(internal)?;
        } else {
            self.unseeded
                .insert(repo.to_string(), &[])
                .map_err(internal)?;
        }
        self.unseeded.flush().map_err(internal)?;
        Ok(())
    }

    /// Append an accepted push to the repository's log; returns its
    /// sequence number. Appends racing each other (concurrent pushes, a push
    /// and a replicated update) each get their own number: the slot is
    /// claimed with a compare-and-swap, never overwritten.
    pub fn append_update(
        &self,
        repo: &RepoName,
        update: &SignedRefUpdate,
    ) -> Result<u64, NodeError> {
        let bytes = update.encode_to_vec();
        let mut seq = match self.log.scan_prefix(prefix(repo)).keys().next_back() {
            Some(k) => {
                let k = k.map_err(internal)?;
                let tail: [u8; 8] = k
                    .get(k.len().saturating_sub(8)..)
                    .and_then(|t| t.try_into().ok())
                    .ok_or_else(|| NodeError::Internal("corrupt log key".into()))?;
                u64::from_be_bytes(tail) + 1
            }
            None => 1,
        };
        loop {
            let claimed = self
                .log
                .compare_and_swap(key(repo, seq), None as Option<&[u8]>, Some(&bytes[..]))
                .map_err(internal)?;
            if claimed.is_ok() {
                break;
            }
            seq += 1;
        }
        self.log.flush().map_err(internal)?;
        Ok(seq)
    }

    /// The repository's signed-update log, oldest first.
    pub fn updates(&self, repo: &RepoName) -> Result<Vec<(u64, SignedRefUpdate)>, NodeError> {
        let mut out = Vec::new();
        for item in self.log.scan_prefix(prefix(repo)) {
            let (k, v) = item.map_err(internal)?;
            let seq = u64::from_be_bytes(
                k[k.len() - 8..]
                    .try_into()
                    .map_err(|_| NodeError::Internal("corrupt log key".into()))?,
            );
            let update =
                SignedRefUpdate::decode(&v[..]).map_err(|e| NodeError::Internal(e.to_string()))?;
            out.push((seq, update));
        }
        Ok(out)
    }

    /// The node's secret for push-certificate nonces (made on first use).
    pub fn nonce_issuer(&self) -> Result<NonceIssuer, NodeError> {
        if let Some(seed) = self.meta.get("cert-nonce-seed").map_err(internal)? {
            return Ok(NonceIssuer::new(seed.to_vec()));
        }
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| NodeError::Internal(e.to_string()))?;
        // A concurrent first use may have stored another seed: use whichever won.
        let _ = self
            .meta
            .compare_and_swap("cert-nonce-seed", None as Option<&[u8]>, Some(&seed[..]))
            .map_err(internal)?;
        self.meta.flush().map_err(internal)?;
        let seed = self
            .meta
            .get("cert-nonce-seed")
            .map_err(internal)?
            .ok_or_else(|| NodeError::Internal("nonce seed vanished".into()))?;
        Ok(NonceIssuer::new(seed.to_vec()))
    }
}

fn internal(e: sled::Error) -> NodeError {
    NodeError::Internal(e.to_string())
}

/// What a push must prove on this node.
pub struct SignedPushPolicy {
    /// Canonical repository name (nonces are bound to it).
    pub repo: RepoName,
    /// The repository's identity.
    pub identity: Identity,
    /// Nonce issuer (node secret).
    pub issuer: NonceIssuer,
    /// Maximum nonce age, seconds.
    pub nonce_slop: u64,
    /// Where accepted pushes are logged.
    pub store: IdentityStore,
    /// Replication, when the node runs it: told about accepted pushes.
    pub p2p: Option<std::sync::Arc<crate::p2p::P2p>>,
}

/// What an unsigned push is told.
pub const UNSIGNED_PUSH_HELP: &str = "this repository accepts only signed pushes. Run `guts-node git-setup` in your clone \
     (it sets gpg.format=ssh, user.signingkey to your Guts key and push.gpgSign=if-asked), then push again";

impl PushPolicy for SignedPushPolicy {
    fn cert_nonce(&self) -> Option<String> {
        Some(self.issuer.issue(&self.repo.to_string(), now()))
    }

    fn authorize(&self, cert: Option<&str>, commands: &[Command]) -> Result<(), String> {
        let text = cert.ok_or_else(|| UNSIGNED_PUSH_HELP.to_owned())?;
        let cert = PushCert::parse(text)
            .and_then(PushCert::verify)
            .map_err(|e| e.to_string())?;
        guts_identity::update::authorize(&cert, &self.identity.doc).map_err(|e| e.to_string())?;
        let nonce = cert
            .nonce()
            .ok_or("push certificate refused: it carries no nonce")?;
        self.issuer
            .check(nonce, &self.repo.to_string(), now(), self.nonce_slop)
            .map_err(|e| e.to_string())?;
        if !same_commands(&cert, commands) {
            return Err(
                "push certificate refused: its ref lines differ from the pushed commands".into(),
            );
        }
        tracing::info!(repo = %self.repo, signer = %cert.signer(), "signed push authorized");
        Ok(())
    }

    fn accepted(&self, cert: Option<&str>, updated: &[String]) {
        let Some(cert) = cert else { return };
        // Refs the certificate names that this push did not update: git told
        // the pusher they were rejected, so they must not move anywhere.
        let mut refused: Vec<String> = PushCert::parse(cert)
            .map(|c| {
                c.commands()
                    .iter()
                    .map(|c| c.name.clone())
                    .filter(|n| !updated.contains(n))
                    .collect()
            })
            .unwrap_or_default();
        refused.sort();
        refused.dedup();
        let update = SignedRefUpdate {
            repo_id: self.identity.id.0.to_vec(),
            certificate: cert.to_owned(),
            doc_version: self.identity.doc.body().version,
            refused,
        };
        match self.store.append_update(&self.repo, &update) {
            Ok(seq) => {
                tracing::info!(repo = %self.repo, seq, refs = updated.len(), refused = update.refused.len(), "signed update logged")
            }
            Err(e) => {
                tracing::error!(repo = %self.repo, error = %e, "could not log a signed update");
                return;
            }
        }
        if let Some(p2p) = &self.p2p {
            p2p.accepted(
                &self.repo,
                self.identity.id,
                update,
                updated.iter().cloned().collect(),
            );
        }
    }
}

fn same_commands(cert: &PushCert<Verified>, commands: &[Command]) -> bool {
    let zero = "0".repeat(40);
    let hex = |id: &Option<guts_git::ObjectId>| id.map_or_else(|| zero.clone(), |i| i.to_string());
    cert.commands().len() == commands.len()
        && cert
            .commands()
            .iter()
            .zip(commands)
            .all(|(a, b)| a.old == hex(&b.old) && a.new == hex(&b.new) && a.name == b.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use guts_identity::{DocumentBody, Keypair};

    fn store() -> (tempfile::TempDir, IdentityStore) {
        let dir = tempfile::tempdir().expect("tmp");
        let db = sled::open(dir.path().join("db")).expect("sled");
        let store = IdentityStore::open(&db).expect("store");
        (dir, store)
    }

    fn genesis(owner: &Keypair, aliases: &[&str]) -> Doc<Verified> {
        let body = DocumentBody::genesis(
            owner.did(),
            "demo",
            "main",
            aliases.iter().map(|a| (*a).to_owned()).collect(),
        );
        Doc::from_signed(body.sign(&[owner]))
            .and_then(Doc::verify_genesis)
            .expect("genesis")
    }

    #[test]
    fn concurrent_appends_keep_every_entry() {
        let (_dir, store) = store();
        let repo = RepoName::new("z6Mkowner", "demo").expect("name");
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let (store, repo) = (&store, &repo);
                s.spawn(move || {
                    for i in 0..25u8 {
                        let update = SignedRefUpdate {
                            repo_id: vec![t, i],
                            certificate: format!("{t}-{i}"),
                            doc_version: 1,
                            refused: Vec::new(),
                        };
                        store.append_update(repo, &update).expect("append");
                    }
                });
            }
        });
        let log = store.updates(&repo).expect("log");
        assert_eq!(log.len(), 200, "no entry overwritten");
        let seqs: Vec<u64> = log.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
    }

    #[test]
    fn a_second_creation_is_refused_and_leaves_the_first_intact() {
        let (_dir, store) = store();
        let owner = Keypair::from_seed(&[4; 32]);
        let doc = genesis(&owner, &["alice"]);
        let repo = RepoName::new(&owner.did().method_id(), "demo").expect("name");
        store.create(&repo, &doc).expect("first");
        let err = store.create(&repo, &doc).expect_err("second");
        assert!(err.to_string().contains("already exists"), "{err}");
        let current = store.current(&repo).expect("load").expect("still there");
        assert_eq!(Some(current.id), doc.genesis_id());
        assert_eq!(store.resolve("alice", "demo").expect("alias"), repo);
    }

    #[test]
    fn a_taken_alias_changes_nothing() {
        let (_dir, store) = store();
        let (a, b) = (Keypair::from_seed(&[5; 32]), Keypair::from_seed(&[6; 32]));
        let repo_a = RepoName::new(&a.did().method_id(), "demo").expect("name");
        let repo_b = RepoName::new(&b.did().method_id(), "demo").expect("name");
        store.create(&repo_a, &genesis(&a, &["alice"])).expect("a");
        store.create(&repo_b, &genesis(&b, &["bob"])).expect("b");
        // b's next document gives up "bob" for "alice", which a holds.
        let current = store.current(&repo_b).expect("load").expect("b");
        let mut next = current.doc.successor();
        next.aliases = vec!["alice".into()];
        let err = store
            .update(&repo_b, &next.sign(&[&b]).encode_to_vec())
            .expect_err("alias taken");
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(store.resolve("bob", "demo").expect("bob kept"), repo_b);
        assert_eq!(store.resolve("alice", "demo").expect("alice kept"), repo_a);
        assert_eq!(
            store
                .current(&repo_b)
                .expect("load")
                .expect("b")
                .versions
                .len(),
            1
        );
    }
}

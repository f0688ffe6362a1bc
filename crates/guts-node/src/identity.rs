//! Identity documents and owner aliases of the node's repositories, kept in
//! sled beside the refs, the node's nonce secret, and which repositories it
//! seeds. The signed-update logs are in [`crate::log`].

use guts_git::names::RepoName;
use guts_identity::doc::RepoId;
use guts_identity::{Doc, NonceIssuer, Verified};

use crate::error::NodeError;

/// The sled trees holding identity data.
#[derive(Clone)]
pub struct IdentityStore {
    /// `OWNER/NAME \0 version(u64 BE)` → signed document bytes.
    docs: sled::Tree,
    /// `OWNER/NAME` → repository id (32 bytes).
    ids: sled::Tree,
    /// `ALIAS/NAME` → canonical `OWNER/NAME`.
    aliases: sled::Tree,
    /// Node secrets.
    meta: sled::Tree,
    /// `OWNER/NAME` of repositories this node stopped following.
    unseeded: sled::Tree,
    /// `ALIAS/NAME` of deleted repositories → the owner id, `\0`, and the
    /// time (u64 BE) until which only that owner may declare it again.
    retired: sled::Tree,
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
            meta: t("node-meta")?,
            unseeded: t("unseeded")?,
            retired: t("retired-aliases")?,
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
        let id = doc
            .genesis_id()
            .ok_or_else(|| NodeError::Invalid("not a first document".into()))?;
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
            self.check_retired(&alias, repo)?;
        }
        Ok(())
    }

    /// A deleted repository's alias stays its owner's for a grace period,
    /// so nobody can take over its URLs right after a deletion.
    fn check_retired(&self, alias: &str, repo: &RepoName) -> Result<(), NodeError> {
        let Some(v) = self.retired.get(alias).map_err(internal)? else {
            return Ok(());
        };
        let (owner, until) = match v.iter().position(|b| *b == 0) {
            Some(i) => (
                &v[..i],
                v.get(i + 1..)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0),
            ),
            None => (&v[..], 0),
        };
        if until > crate::auth::now() && owner != repo.owner().as_bytes() {
            return Err(NodeError::Conflict(format!(
                "{alias} belonged to a repository deleted recently; another owner may declare this alias only after the grace period (unix time {until})"
            )));
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
        let next = Doc::from_bytes(bytes).and_then(|d| d.verify_successor(&current.doc))?;
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
            return Err(NodeError::Conflict(
                "another update of the identity document won the race; fetch it and sign again"
                    .into(),
            ));
        }
        self.set_aliases(repo, &current.doc.body().aliases, &next.body().aliases)?;
        self.docs.flush().map_err(internal)?;
        Ok(next)
    }

    /// Forget everything about `repo`.
    /// `aliases` stay reserved for the owner until `reserved_until` (unix
    /// time; 0 for none, as when undoing a failed creation).
    pub fn delete(
        &self,
        repo: &RepoName,
        aliases: &[String],
        reserved_until: u64,
    ) -> Result<(), NodeError> {
        for item in self.docs.scan_prefix(prefix(repo)).keys() {
            self.docs
                .remove(item.map_err(internal)?)
                .map_err(internal)?;
        }
        self.ids.remove(repo.to_string()).map_err(internal)?;
        self.set_aliases(repo, aliases, &[])?;
        if reserved_until > 0 {
            for a in aliases {
                let mut v = repo.owner().as_bytes().to_vec();
                v.push(0);
                v.extend_from_slice(&reserved_until.to_be_bytes());
                let alias = RepoName::new(a, repo.name())?.to_string();
                self.retired.insert(alias, v).map_err(internal)?;
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use guts_identity::{DocumentBody, Keypair};
    use prost::Message;

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

//! LFS file locks, per repository, in the node's sled database.
//!
//! Tree `lfs_locks`: key `repository id (32 bytes) ‖ path`, value the lock
//! as JSON. One lock per path; listing goes in path order. Changes are
//! serialized by one mutex, so the count bound holds.

use std::sync::Mutex;

use guts_identity::doc::RepoId;
use serde::{Deserialize, Serialize};

use crate::error::NodeError;

/// Most locks one repository may hold.
pub const MAX_LOCKS_PER_REPO: usize = 10_000;
/// Longest locked path, in bytes.
pub const MAX_LOCK_PATH: usize = 4096;

/// A lock on a path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lock {
    /// Random id (hex).
    pub id: String,
    /// The locked path, relative to the repository root.
    pub path: String,
    /// Who holds it: a `did:key` (of a push token's grantee) or `operator`.
    pub owner: String,
    /// When it was taken, Unix seconds.
    pub locked_at: u64,
}

/// What creating a lock did.
pub enum Created {
    /// The new lock.
    New(Lock),
    /// The path was locked already: that lock.
    Exists(Lock),
}

/// The locks of every repository.
pub struct LockStore {
    tree: sled::Tree,
    write: Mutex<()>,
}

fn internal(e: impl std::fmt::Display) -> NodeError {
    NodeError::Internal(format!("LFS locks: {e}"))
}

fn key(repo: &RepoId, path: &str) -> Vec<u8> {
    let mut k = repo.0.to_vec();
    k.extend_from_slice(path.as_bytes());
    k
}

fn decode(bytes: &[u8]) -> Result<Lock, NodeError> {
    serde_json::from_slice(bytes).map_err(internal)
}

/// A path a lock may name: relative, no NUL, bounded.
pub fn check_path(path: &str) -> Result<(), NodeError> {
    if path.is_empty() || path.len() > MAX_LOCK_PATH || path.contains('\0') {
        return Err(NodeError::Invalid(format!(
            "a locked path has 1 to {MAX_LOCK_PATH} bytes and no NUL"
        )));
    }
    Ok(())
}

impl LockStore {
    /// Open the locks tree of `db`.
    pub fn open(db: &sled::Db) -> Result<Self, NodeError> {
        Ok(LockStore {
            tree: db.open_tree("lfs_locks").map_err(internal)?,
            write: Mutex::new(()),
        })
    }

    /// Lock `path` of `repo` for `owner` at `now`.
    pub fn create(
        &self,
        repo: &RepoId,
        path: &str,
        owner: &str,
        now: u64,
    ) -> Result<Created, NodeError> {
        check_path(path)?;
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let k = key(repo, path);
        if let Some(v) = self.tree.get(&k).map_err(internal)? {
            return Ok(Created::Exists(decode(&v)?));
        }
        if self.tree.scan_prefix(repo.0).count() >= MAX_LOCKS_PER_REPO {
            return Err(NodeError::Quota(format!(
                "this repository holds {MAX_LOCKS_PER_REPO} locks, the most this node keeps"
            )));
        }
        let mut rand = [0u8; 16];
        getrandom::getrandom(&mut rand).map_err(internal)?;
        let lock = Lock {
            id: rand.iter().map(|b| format!("{b:02x}")).collect(),
            path: path.to_owned(),
            owner: owner.to_owned(),
            locked_at: now,
        };
        let value = serde_json::to_vec(&lock).map_err(internal)?;
        self.tree.insert(k, value).map_err(internal)?;
        self.tree.flush().map_err(internal)?;
        Ok(Created::New(lock))
    }

    /// Remove every lock of `repo` (a deleted repository).
    pub fn remove_repo(&self, repo: &RepoId) -> Result<(), NodeError> {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        for item in self.tree.scan_prefix(repo.0) {
            let (k, _) = item.map_err(internal)?;
            self.tree.remove(k).map_err(internal)?;
        }
        self.tree.flush().map_err(internal)?;
        Ok(())
    }

    /// The lock with `id` in `repo`.
    pub fn by_id(&self, repo: &RepoId, id: &str) -> Result<Option<Lock>, NodeError> {
        for item in self.tree.scan_prefix(repo.0) {
            let (_, v) = item.map_err(internal)?;
            let lock = decode(&v)?;
            if lock.id == id {
                return Ok(Some(lock));
            }
        }
        Ok(None)
    }

    /// Remove `lock` (if it is still there, unchanged).
    pub fn remove(&self, repo: &RepoId, lock: &Lock) -> Result<bool, NodeError> {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let k = key(repo, &lock.path);
        match self.tree.get(&k).map_err(internal)? {
            Some(v) if decode(&v)?.id == lock.id => {
                self.tree.remove(&k).map_err(internal)?;
                self.tree.flush().map_err(internal)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Up to `limit` locks of `repo` in path order, from the path `after`
    /// (included), and the path to continue from.
    pub fn page(
        &self,
        repo: &RepoId,
        from: Option<&str>,
        limit: usize,
        keep: impl Fn(&Lock) -> bool,
    ) -> Result<(Vec<Lock>, Option<String>), NodeError> {
        let start = key(repo, from.unwrap_or(""));
        let mut out = Vec::new();
        for item in self.tree.range(start..) {
            let (k, v) = item.map_err(internal)?;
            if !k.starts_with(&repo.0) {
                break;
            }
            let lock = decode(&v)?;
            if !keep(&lock) {
                continue;
            }
            if out.len() == limit {
                return Ok((out, Some(lock.path)));
            }
            out.push(lock);
        }
        Ok((out, None))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_lock_per_path_per_repository_and_pages() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let store = LockStore::open(&db).unwrap();
        let (a, b) = (RepoId([1; 32]), RepoId([2; 32]));
        let Created::New(first) = store.create(&a, "x.bin", "did:key:z1", 5).unwrap() else {
            panic!("not created")
        };
        let Created::Exists(same) = store.create(&a, "x.bin", "did:key:z2", 6).unwrap() else {
            panic!("locked twice")
        };
        assert_eq!(same, first);
        assert!(matches!(
            store.create(&b, "x.bin", "did:key:z2", 6).unwrap(),
            Created::New(_)
        ));
        for p in ["a", "b", "c"] {
            store.create(&a, p, "did:key:z1", 7).unwrap();
        }
        let (page, next) = store.page(&a, None, 2, |_| true).unwrap();
        assert_eq!(
            page.iter().map(|l| l.path.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let (rest, end) = store.page(&a, next.as_deref(), 2, |_| true).unwrap();
        assert_eq!(
            rest.iter().map(|l| l.path.as_str()).collect::<Vec<_>>(),
            ["c", "x.bin"]
        );
        assert_eq!(end, None);
        assert_eq!(store.by_id(&b, &first.id).unwrap(), None);
        assert!(store.remove(&a, &first).unwrap());
        assert!(!store.remove(&a, &first).unwrap());
        store.remove_repo(&a).unwrap();
        assert!(store.page(&a, None, 10, |_| true).unwrap().0.is_empty());
        assert_eq!(store.page(&b, None, 10, |_| true).unwrap().0.len(), 1);
        assert!(check_path("").is_err() && check_path("a\0b").is_err());
    }
}

//! Where repositories live: pack files on disk, refs and settings in sled.
//!
//! Layout under the node's data dir:
//!
//! ```text
//! meta/                         sled database: repo settings, refs, HEAD
//! repos/OWNER/NAME.git/objects/pack/pack-*.{pack,idx}
//! repos/OWNER/NAME.git/objects/incoming-*/   push quarantine (never read by fetches)
//! trash/                        repositories being deleted
//! ```
//!
//! Refs of one repository are a sled tree `refs:OWNER/NAME` mapping the ref
//! name to its object id (20 bytes), followed by the peeled id (20 more) for
//! annotated tags. Every ref update is a compare-and-swap inside a sled
//! transaction, and the database is flushed before a push is acknowledged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use gix_hash::ObjectId;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::names::RepoName;
use crate::odb::ObjectStore;

mod commit;
pub mod maintain;
pub use commit::{Journal, NoJournal};
pub use maintain::{MaintainOptions, MaintainReport, MaintainedState};

/// What every handle on one storage shares: per-repository maintenance
/// locks and the limits of serving fetches.
#[derive(Default)]
pub(crate) struct Shared {
    maintenance: Mutex<HashMap<RepoName, Arc<Mutex<()>>>>,
    /// Opened commit-graphs, with the file's modification time and length
    /// they were read at.
    graphs: Mutex<HashMap<RepoName, GraphSlot>>,
    /// Pack-generation slots and the pack cache ([`crate::upload_pack`]).
    pub(crate) serving: crate::upload_pack::Serving,
}

/// One repository's opened commit-graph and the file state it came from.
type GraphSlot = (SystemTime, u64, Arc<crate::commit_graph::CommitGraph>);

impl Shared {
    /// The repository's commit-graph, read again only when the file changed.
    /// A missing or unreadable file is no graph (walks read objects then).
    fn commit_graph(
        &self,
        name: &RepoName,
        objects_dir: &Path,
    ) -> Option<Arc<crate::commit_graph::CommitGraph>> {
        let meta = std::fs::metadata(objects_dir.join("info/commit-graph")).ok()?;
        let stamp = (meta.modified().ok()?, meta.len());
        let mut map = self.graphs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, len, graph)) = map.get(name) {
            if (*at, *len) == stamp {
                return Some(Arc::clone(graph));
            }
        }
        match crate::commit_graph::CommitGraph::open(objects_dir) {
            Ok(Some(graph)) => {
                let graph = Arc::new(graph);
                map.insert(name.clone(), (stamp.0, stamp.1, Arc::clone(&graph)));
                Some(graph)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(repo = %name, error = %e, "ignoring an unreadable commit-graph");
                None
            }
        }
    }

    fn maintenance_lock(&self, name: &RepoName) -> Arc<Mutex<()>> {
        let mut map = self.maintenance.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(name.clone()).or_default().clone()
    }
}

/// The branch a new repository's HEAD points to.
pub const DEFAULT_BRANCH: &str = "refs/heads/main";

/// Settings of one repository, stored as JSON in sled.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RepoSettings {
    /// The ref HEAD points to (a symref, always).
    pub head: String,
    /// Refuse pushes that are not fast-forwards.
    #[serde(default)]
    pub deny_non_fast_forwards: bool,
    /// Creation time, seconds since the epoch.
    pub created_at: u64,
}

/// The node's repository storage.
#[derive(Clone)]
pub struct Storage {
    root: PathBuf,
    db: sled::Db,
    repos: sled::Tree,
    /// Serializes creating and deleting repositories (directory and settings together).
    lifecycle: Arc<Mutex<()>>,
    shared: Arc<Shared>,
}

impl Storage {
    /// Open (creating if needed) the storage in `data_dir`, and remove what
    /// interrupted pushes and deletions left behind.
    pub fn open(data_dir: &Path) -> Result<Self> {
        Self::open_with(data_dir, crate::upload_pack::Serving::default())
    }

    /// [`Storage::open`] with the node's limits for serving fetches.
    pub fn open_with(data_dir: &Path, serving: crate::upload_pack::Serving) -> Result<Self> {
        std::fs::create_dir_all(data_dir.join("repos"))?;
        let db = sled::Config::new().path(data_dir.join("meta")).open()?;
        let repos = db.open_tree("repos")?;
        let storage = Storage {
            root: data_dir.to_owned(),
            db,
            repos,
            lifecycle: Arc::new(Mutex::new(())),
            shared: Arc::new(Shared {
                maintenance: Mutex::default(),
                graphs: Mutex::default(),
                serving,
            }),
        };
        storage.cleanup()?;
        Ok(storage)
    }

    fn cleanup(&self) -> Result<()> {
        let trash = self.root.join("trash");
        if trash.exists() {
            std::fs::remove_dir_all(&trash)?;
        }
        for name in self.list()? {
            let objects = self.repo_dir(&name).join("objects");
            let Ok(entries) = std::fs::read_dir(&objects) else {
                continue;
            };
            for entry in entries.flatten() {
                let file_name = entry.file_name().to_string_lossy().into_owned();
                if file_name.starts_with("incoming-") {
                    tracing::info!(repo = %name, dir = %entry.path().display(), "removing quarantine left by an interrupted push");
                    std::fs::remove_dir_all(entry.path())?;
                } else if file_name.starts_with("maintain-") || file_name == "retired" {
                    // Scratch of an interrupted maintenance, or indexes of
                    // retired packs (no reader is left at startup).
                    tracing::info!(repo = %name, dir = %entry.path().display(), "removing what maintenance left");
                    std::fs::remove_dir_all(entry.path())?;
                }
            }
            // A crash between moving a pack and its index leaves a pack
            // without index: never visible to reads, and safe to remove.
            for entry in std::fs::read_dir(objects.join("pack"))?.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "pack")
                    && !path.with_extension("idx").exists()
                {
                    tracing::info!(repo = %name, pack = %path.display(), "removing pack without index (interrupted push, or retired by maintenance)");
                    std::fs::remove_file(&path)?;
                }
            }
        }
        Ok(())
    }

    fn repo_dir(&self, name: &RepoName) -> PathBuf {
        self.root
            .join("repos")
            .join(name.owner())
            .join(format!("{}.git", name.name()))
    }

    /// The metadata database, for other node metadata kept beside the refs
    /// (identity documents, signed-update logs) in their own trees.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Create an empty repository whose HEAD points at `head` (a full ref
    /// name). Fails with [`Error::RepoExists`] if it exists.
    pub fn create_with_head(&self, name: &RepoName, head: &str) -> Result<Repo> {
        crate::names::check_ref_name(head)?;
        self.create_inner(name, head)
    }

    /// Create an empty repository. Fails with [`Error::RepoExists`] if it exists.
    pub fn create(&self, name: &RepoName) -> Result<Repo> {
        self.create_inner(name, DEFAULT_BRANCH)
    }

    fn create_inner(&self, name: &RepoName, head: &str) -> Result<Repo> {
        let _guard = self.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
        let settings = RepoSettings {
            head: head.to_owned(),
            deny_non_fast_forwards: false,
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let dir = self.repo_dir(name);
        // A directory without settings is debris of a failed create or delete.
        if self.repos.get(name.to_string())?.is_none() && dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(dir.join("objects").join("pack"))?;
        let value = serde_json::to_vec(&settings).map_err(|e| Error::Metadata(e.to_string()))?;
        let swapped =
            self.repos
                .compare_and_swap(name.to_string(), None as Option<&[u8]>, Some(value))?;
        if swapped.is_err() {
            return Err(Error::RepoExists(name.to_string()));
        }
        self.db.flush()?;
        self.open_repo(name)
    }

    /// Open an existing repository.
    pub fn open_repo(&self, name: &RepoName) -> Result<Repo> {
        if self.repos.get(name.to_string())?.is_none() {
            return Err(Error::RepoNotFound(name.to_string()));
        }
        Ok(Repo {
            name: name.clone(),
            dir: self.repo_dir(name),
            refs: self.db.open_tree(refs_tree_name(name))?,
            repos: self.repos.clone(),
            db: self.db.clone(),
            shared: self.shared.clone(),
        })
    }

    /// All repositories, sorted by name.
    pub fn list(&self) -> Result<Vec<RepoName>> {
        let mut out = Vec::new();
        for item in self.repos.iter() {
            let (key, _) = item?;
            let key = String::from_utf8_lossy(&key).into_owned();
            out.push(RepoName::parse(&key)?);
        }
        Ok(out)
    }

    /// Delete a repository with its refs and objects.
    pub fn delete(&self, name: &RepoName) -> Result<()> {
        let _guard = self.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
        if self.repos.remove(name.to_string())?.is_none() {
            return Err(Error::RepoNotFound(name.to_string()));
        }
        self.db.drop_tree(refs_tree_name(name))?;
        self.db.flush()?;
        let dir = self.repo_dir(name);
        if dir.exists() {
            let trash = self.root.join("trash");
            std::fs::create_dir_all(&trash)?;
            // Renaming first makes the removal atomic for readers. Leftovers
            // of an earlier failed removal under the same name go first.
            let target = trash.join(format!("{}-{}", name.owner(), name.name()));
            if target.exists() {
                std::fs::remove_dir_all(&target)?;
            }
            std::fs::rename(&dir, &target)?;
            std::fs::remove_dir_all(&target)?;
        }
        Ok(())
    }
}

fn refs_tree_name(name: &RepoName) -> String {
    format!("refs:{name}")
}

/// One ref as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ref {
    /// Full name, `refs/...`.
    pub name: String,
    /// The object it points to.
    pub id: ObjectId,
    /// For annotated tags: the non-tag object at the end of the tag chain.
    pub peeled: Option<ObjectId>,
}

/// What HEAD resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The symref target, e.g. `refs/heads/main`.
    pub target: String,
    /// Its value, `None` while the branch is unborn.
    pub id: Option<ObjectId>,
}

/// One requested ref change: compare-and-swap from `old` to `new`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    /// Full ref name.
    pub name: String,
    /// Expected current value; `None` means the ref must not exist.
    pub old: Option<ObjectId>,
    /// New value; `None` deletes the ref.
    pub new: Option<ObjectId>,
    /// Peeled id of `new` if it is an annotated tag.
    pub new_peeled: Option<ObjectId>,
}

/// Why a single ref update was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefRejection {
    /// The ref's current value is not the expected old value.
    #[error("stale info: the ref changed since you fetched; fetch first")]
    Stale,
    /// Another update in the same atomic push failed.
    #[error("atomic push failed")]
    AtomicFailed,
}

/// One repository: its objects on disk and its refs in sled.
#[derive(Clone)]
pub struct Repo {
    name: RepoName,
    dir: PathBuf,
    refs: sled::Tree,
    repos: sled::Tree,
    db: sled::Db,
    shared: Arc<Shared>,
}

impl Repo {
    /// The repository's name.
    pub fn name(&self) -> &RepoName {
        &self.name
    }

    /// What serving fetches shares across requests (slots, pack cache),
    /// node-wide: the same for every repository of this storage.
    pub fn serving(&self) -> &crate::upload_pack::Serving {
        &self.shared.serving
    }

    /// The `objects/` directory.
    pub fn objects_dir(&self) -> PathBuf {
        self.dir.join("objects")
    }

    /// Open the object database (commits read through the commit-graph
    /// where maintenance wrote one).
    pub fn objects(&self) -> Result<ObjectStore> {
        let dir = self.objects_dir();
        Ok(ObjectStore::open(&dir)?.with_graph(self.shared.commit_graph(&self.name, &dir)))
    }

    /// Current settings.
    pub fn settings(&self) -> Result<RepoSettings> {
        let raw = self
            .repos
            .get(self.name.to_string())?
            .ok_or_else(|| Error::RepoNotFound(self.name.to_string()))?;
        serde_json::from_slice(&raw).map_err(|e| Error::Metadata(e.to_string()))
    }

    /// Change whether non-fast-forward pushes are refused.
    pub fn set_deny_non_fast_forwards(&self, deny: bool) -> Result<RepoSettings> {
        let key = self.name.to_string();
        let mut result = None;
        self.repos.fetch_and_update(&key, |old| {
            let mut s: RepoSettings = old.and_then(|raw| serde_json::from_slice(raw).ok())?;
            s.deny_non_fast_forwards = deny;
            let bytes = serde_json::to_vec(&s).ok();
            result = Some(s);
            bytes
        })?;
        self.db.flush()?;
        result.ok_or(Error::RepoNotFound(key))
    }

    /// All refs, sorted by name.
    pub fn refs(&self) -> Result<Vec<Ref>> {
        let mut out = Vec::new();
        for item in self.refs.iter() {
            let (key, value) = item?;
            out.push(decode_ref(&key, &value)?);
        }
        Ok(out)
    }

    /// One ref's value.
    pub fn find_ref(&self, name: &str) -> Result<Option<ObjectId>> {
        Ok(match self.refs.get(name)? {
            Some(v) => Some(decode_ref(name.as_bytes(), &v)?.id),
            None => None,
        })
    }

    /// HEAD's target and value.
    pub fn head(&self) -> Result<Head> {
        let target = self.settings()?.head;
        let id = self.find_ref(&target)?;
        Ok(Head { target, id })
    }

    /// Number of objects and bytes on disk in the repository's packs.
    pub fn disk_usage(&self) -> Result<(u64, u64)> {
        let mut objects = 0u64;
        let mut bytes = 0u64;
        let pack_dir = self.objects_dir().join("pack");
        for entry in std::fs::read_dir(&pack_dir)? {
            let entry = entry?;
            let path = entry.path();
            bytes += entry.metadata()?.len();
            if path.extension().is_some_and(|e| e == "idx") {
                let idx = gix_pack::index::File::at(&path, crate::odb::HASH)
                    .map_err(|e| Error::pack("reading pack index", e))?;
                objects += u64::from(idx.num_objects());
            }
        }
        Ok((objects, bytes))
    }

    /// Bytes of the repository's pack files and indexes (file sizes only,
    /// nothing opened: cheap enough for every push's quota check).
    pub fn pack_bytes(&self) -> Result<u64> {
        let mut bytes = 0u64;
        for entry in std::fs::read_dir(self.objects_dir().join("pack"))? {
            bytes = bytes.saturating_add(entry?.metadata()?.len());
        }
        Ok(bytes)
    }
}

fn decode_ref(key: &[u8], value: &[u8]) -> Result<Ref> {
    let name = String::from_utf8(key.to_vec())
        .map_err(|_| Error::Metadata("ref name is not UTF-8".into()))?;
    let id = oid_from(value.get(..20))
        .ok_or_else(|| Error::Metadata(format!("ref {name} has a corrupt value")))?;
    let peeled = oid_from(value.get(20..40));
    Ok(Ref { name, id, peeled })
}

fn oid_from(bytes: Option<&[u8]>) -> Option<ObjectId> {
    bytes.and_then(|b| ObjectId::try_from(b).ok())
}

//! A node-wide disk cache of generated packs.
//!
//! Many clients (CI above all) clone the same tips; generating the same pack
//! again and again wastes CPU. Upload-pack asks [`PackCache::get`] first; on
//! a miss it generates the pack as usual and tees the bytes into a
//! [`Recorder`] from [`PackCache::record`], which keeps them once
//! [`Recorder::finish`] says the pack was sent completely.
//!
//! An entry is identified by a [`CacheKey`]: the repository, a digest of the
//! state of its refs and a digest of the request (see [`digest`]). When the
//! refs of a repository move, its entries under the old refs digest are
//! stale: the first [`PackCache::get`] or [`PackCache::record`] with the new
//! digest removes them.
//!
//! Layout under [`CacheConfig::dir`]:
//!
//! ```text
//! <hex(sha256(repo))[..32]>/<hex(refs_digest)>/<hex(request_digest)>-<len>.pack
//! tmp/<pid>-<counter>-<nanos>.part      (packs being recorded)
//! tmp/<pid>-<counter>-<nanos>.dead      (evicted, being deleted)
//! ```
//!
//! The length in the name lets a truncated entry be told from a complete
//! one. The cache keeps an in-memory index (sizes and recency), rebuilt by a
//! scan at [`PackCache::new`] with file mtimes as the initial recency. A
//! damaged directory never makes the cache panic or fail a request: a bad
//! entry is a miss and is removed. Names at the top level that are not the
//! cache's own are left alone. One [`PackCache`] per directory: two
//! instances on the same directory do not share their index.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tracing::debug;

use crate::error::{Error, Result};

mod scan;

/// Directory of packs being recorded.
const TMP_DIR: &str = "tmp";
/// Buffer between a recorder and its temp file.
const WRITE_BUFFER: usize = 64 * 1024;
/// Makes temp file names unique within the process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// SHA-256 over `parts`, each prefixed with its length (8 bytes, big
/// endian), so that `["ab", "c"]` and `["a", "bc"]` differ.
pub fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// Limits of the cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Directory of the cache; created if missing.
    pub dir: PathBuf,
    /// Total size of the kept packs; least recently used ones are evicted
    /// beyond it. A pack larger than this is not kept.
    pub max_bytes: u64,
    /// No new recording starts while the file system of `dir` has less free
    /// space than this (0: never checked).
    pub min_free_bytes: u64,
    /// Packs smaller than this are not kept (cheap to generate again).
    pub min_entry_bytes: u64,
}

/// What identifies a pack: the repository, the state of its refs, and the request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    repo: String,
    refs_digest: [u8; 32],
    request_digest: [u8; 32],
}

impl CacheKey {
    /// The key of the pack answering a request (digest of what determines
    /// the pack, see [`digest`]) in `repo` (e.g. `owner/name`) while its
    /// refs are in the state `refs_digest`.
    pub fn new(repo: &str, refs_digest: [u8; 32], request_digest: [u8; 32]) -> Self {
        CacheKey {
            repo: repo.to_owned(),
            refs_digest,
            request_digest,
        }
    }

    fn slot(&self) -> Slot {
        let repo = Sha256::digest(self.repo.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&repo[..16]);
        Slot {
            repo: id,
            refs: self.refs_digest,
            req: self.request_digest,
        }
    }
}

/// A repository as named on disk: the first 16 bytes of SHA-256 of its name.
type RepoId = [u8; 16];

/// A [`CacheKey`] as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Slot {
    repo: RepoId,
    refs: [u8; 32],
    req: [u8; 32],
}

#[derive(Debug)]
struct Entry {
    len: u64,
    /// Recency: larger is more recent; also its key in [`Index::lru`].
    tick: u64,
}

/// The entries of one repository: all under its current refs digest.
#[derive(Debug)]
struct RepoState {
    refs: [u8; 32],
    entries: HashMap<[u8; 32], Entry>,
}

/// What the cache holds, in memory.
#[derive(Debug, Default)]
struct Index {
    repos: HashMap<RepoId, RepoState>,
    lru: BTreeMap<u64, Slot>,
    recording: HashSet<Slot>,
    total: u64,
    tick: u64,
}

impl Index {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn entries(&mut self, slot: &Slot) -> Option<&mut HashMap<[u8; 32], Entry>> {
        let repo = self.repos.get_mut(&slot.repo)?;
        (repo.refs == slot.refs).then_some(&mut repo.entries)
    }

    /// The length of the entry, made the most recent.
    fn touch(&mut self, slot: &Slot) -> Option<u64> {
        let tick = self.next_tick();
        let entry = self.entries(slot)?.get_mut(&slot.req)?;
        let old = std::mem::replace(&mut entry.tick, tick);
        let len = entry.len;
        self.lru.remove(&old);
        self.lru.insert(tick, *slot);
        Some(len)
    }

    /// Add an entry as the most recent; the length of the one it replaces.
    fn insert(&mut self, slot: Slot, len: u64) -> Option<u64> {
        let tick = self.next_tick();
        let repo = self.repos.entry(slot.repo).or_insert_with(|| RepoState {
            refs: slot.refs,
            entries: HashMap::new(),
        });
        let old = repo.entries.insert(slot.req, Entry { len, tick });
        self.lru.insert(tick, slot);
        self.total = self.total.saturating_add(len);
        let old = old?;
        self.lru.remove(&old.tick);
        self.total = self.total.saturating_sub(old.len);
        Some(old.len)
    }

    /// Drop an entry (and its repository once it has none); its length.
    fn remove(&mut self, slot: &Slot) -> Option<u64> {
        let entries = self.entries(slot)?;
        let entry = entries.remove(&slot.req)?;
        if entries.is_empty() {
            self.repos.remove(&slot.repo);
        }
        self.lru.remove(&entry.tick);
        self.total = self.total.saturating_sub(entry.len);
        Some(entry.len)
    }

    /// Make `refs` the current refs digest of `repo`, if it has entries or
    /// had: those under its former digest, now stale, are dropped and
    /// returned.
    fn set_refs(&mut self, repo: RepoId, refs: [u8; 32]) -> Vec<(Slot, u64)> {
        let Some(state) = self.repos.get_mut(&repo).filter(|s| s.refs != refs) else {
            return Vec::new();
        };
        let old = std::mem::replace(&mut state.refs, refs);
        let mut stale = Vec::new();
        for (req, entry) in state.entries.drain() {
            self.lru.remove(&entry.tick);
            self.total = self.total.saturating_sub(entry.len);
            stale.push((
                Slot {
                    repo,
                    refs: old,
                    req,
                },
                entry.len,
            ));
        }
        stale
    }

    /// Drop least recently used entries until the total is at most `max`.
    fn evict(&mut self, max: u64) -> Vec<(Slot, u64)> {
        let mut out = Vec::new();
        while self.total > max {
            let Some((_, slot)) = self.lru.pop_first() else {
                break;
            };
            out.extend(self.remove(&slot).map(|len| (slot, len)));
        }
        out
    }
}

/// Node-wide cache of generated packs. A clone-able handle (`Arc` inside),
/// `Send + Sync`: [`get`](Self::get) and [`record`](Self::record) may be
/// called from many threads at once.
#[derive(Clone)]
pub struct PackCache {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: CacheConfig,
    index: Mutex<Index>,
}

impl std::fmt::Debug for PackCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the index: it can be large.
        f.debug_struct("PackCache")
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

impl PackCache {
    /// Open the cache in `cfg.dir`: create the directory, remove temp files
    /// left by a crash, index the entries found (removing damaged ones) and
    /// evict down to `cfg.max_bytes`. Fails only if the directory cannot be
    /// created or read ([`Error::Io`], naming the path).
    pub fn new(cfg: CacheConfig) -> Result<Self> {
        let ctx = |what: &str, path: &Path, e: io::Error| {
            let msg = format!("pack cache: {what} {}: {e}", path.display());
            Error::from(io::Error::new(e.kind(), msg))
        };
        fs::create_dir_all(&cfg.dir).map_err(|e| ctx("cannot create", &cfg.dir, e))?;
        let tmp = cfg.dir.join(TMP_DIR);
        if tmp.symlink_metadata().is_ok() {
            remove_any(&tmp);
        }
        fs::create_dir(&tmp).map_err(|e| ctx("cannot create", &tmp, e))?;
        let (mut index, mut victims) =
            scan::scan(&cfg.dir).map_err(|e| ctx("cannot read", &cfg.dir, e))?;
        victims.extend(index.evict(cfg.max_bytes));
        let cache = PackCache {
            inner: Arc::new(Inner {
                cfg,
                index: Mutex::new(index),
            }),
        };
        delete(cache.retire(&victims));
        Ok(cache)
    }

    /// A cached pack for this key: an open file positioned at 0 and its
    /// length. Makes the entry the most recently used. Entries of the same
    /// repository under another refs digest are stale and removed.
    ///
    /// The file stays readable even if the entry is evicted meanwhile.
    pub fn get(&self, key: &CacheKey) -> Option<(File, u64)> {
        let slot = key.slot();
        let (len, dead) = {
            let mut index = self.lock();
            let stale = index.set_refs(slot.repo, slot.refs);
            (index.touch(&slot), self.retire(&stale))
        };
        delete(dead);
        let len = len?;
        let path = self.entry_path(&slot, len);
        match open_entry(&path, len) {
            Ok(file) => Some((file, len)),
            Err(e) => {
                debug!(path = %path.display(), error = %e, "pack cache: bad entry removed");
                let mut index = self.lock();
                if index.remove(&slot).is_some() {
                    remove_file(&path);
                }
                None
            }
        }
    }

    /// Start recording the pack for `key`. `None` when the cache is off for
    /// now: less free space than `min_free_bytes` in the cache's file
    /// system, the pack is cached already, or another writer is already
    /// recording the same key. Entries of the same repository under another
    /// refs digest are removed, as in [`get`](Self::get).
    pub fn record(&self, key: &CacheKey) -> Option<Recorder> {
        let cfg = &self.inner.cfg;
        if cfg.min_free_bytes > 0 {
            let free = free_bytes(&cfg.dir);
            if !free.as_ref().is_ok_and(|free| *free >= cfg.min_free_bytes) {
                debug!(
                    ?free,
                    min = cfg.min_free_bytes,
                    "pack cache: low disk, not recording"
                );
                return None;
            }
        }
        let slot = key.slot();
        let (claimed, dead) = {
            let mut index = self.lock();
            let stale = index.set_refs(slot.repo, slot.refs);
            let cached = index
                .entries(&slot)
                .is_some_and(|e| e.contains_key(&slot.req));
            (!cached && index.recording.insert(slot), self.retire(&stale))
        };
        delete(dead);
        if !claimed {
            return None;
        }
        match create_tmp(&cfg.dir.join(TMP_DIR)) {
            Ok((tmp, file)) => Some(Recorder {
                cache: self.clone(),
                slot,
                tmp,
                out: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
                written: 0,
                claimed: true,
            }),
            Err(e) => {
                debug!(error = %e, "pack cache: cannot create temp file");
                self.lock().recording.remove(&slot);
                None
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        // A panic while holding the lock can at worst leave a wrong size or
        // recency: entries stay usable.
        self.inner
            .index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn entry_path(&self, slot: &Slot, len: u64) -> PathBuf {
        self.refs_dir(slot)
            .join(format!("{}-{len}.pack", hex(&slot.req)))
    }

    fn refs_dir(&self, slot: &Slot) -> PathBuf {
        let repo = self.inner.cfg.dir.join(hex(&slot.repo));
        repo.join(hex(&slot.refs))
    }

    /// Move the files of dropped entries into the temp directory (and
    /// remove their directories once empty), to be deleted by the caller
    /// once the index lock is released. Called under that lock, as every
    /// change of an entry path is: a new entry at the same path is never
    /// removed by mistake.
    fn retire(&self, entries: &[(Slot, u64)]) -> Vec<PathBuf> {
        let tmp = self.inner.cfg.dir.join(TMP_DIR);
        let mut dead = Vec::new();
        for (slot, len) in entries {
            let path = self.entry_path(slot, *len);
            let to = tmp.join(unique_name("dead"));
            match fs::rename(&path, &to) {
                Ok(()) => dead.push(to),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(_) => remove_file(&path),
            }
            for dir in path.ancestors().skip(1).take(2) {
                let _ = fs::remove_dir(dir);
            }
        }
        dead
    }

    /// Move a complete recording into place and evict down to the limit.
    /// Releases the claim on `slot` in any case.
    fn commit(&self, slot: &Slot, tmp: &Path, len: u64) {
        let path = self.entry_path(slot, len);
        let dead = {
            let mut index = self.lock();
            index.recording.remove(slot);
            let current = index.repos.get(&slot.repo).map(|r| r.refs);
            if current.is_some_and(|refs| refs != slot.refs) {
                debug!("pack cache: refs moved while recording, pack not kept");
                return;
            }
            if let Err(e) = place(tmp, &path) {
                debug!(path = %path.display(), error = %e, "pack cache: cannot keep pack");
                return;
            }
            let replaced = index.insert(*slot, len).filter(|old| *old != len);
            let mut victims = index.evict(self.inner.cfg.max_bytes);
            victims.extend(replaced.map(|old| (*slot, old)));
            self.retire(&victims)
        };
        delete(dead);
    }
}

/// Open an entry and check that it is a regular file of the expected length.
fn open_entry(path: &Path, len: u64) -> io::Result<File> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() != len {
        let msg = format!("expected a file of {len} bytes, found {}", meta.len());
        return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
    }
    // Recency for the next scan; best effort.
    let _ = file.set_modified(SystemTime::now());
    Ok(file)
}

/// Rename `tmp` to `path`, creating its directories.
fn place(tmp: &Path, path: &Path) -> io::Result<()> {
    fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    fs::rename(tmp, path)
}

/// A file name unique in this process and unlikely to clash with one left
/// by an earlier process: `<pid>-<counter>-<nanos>.<ext>`.
fn unique_name(ext: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{n}-{nanos}.{ext}", std::process::id())
}

fn create_tmp(dir: &Path) -> io::Result<(PathBuf, File)> {
    let path = dir.join(unique_name("part"));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    Ok((path, file))
}

fn delete(files: Vec<PathBuf>) {
    for f in files {
        remove_file(&f);
    }
}

/// Free bytes for unprivileged users in the file system holding `dir`.
fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statvfs is a plain C struct; all-zero is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

fn remove_file(path: &Path) {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            debug!(path = %path.display(), error = %e, "pack cache: cannot remove");
        }
        _ => {}
    }
}

/// Remove a file, link or directory tree (garbage in the cache's namespace).
fn remove_any(path: &Path) {
    let is_dir = path.symlink_metadata().is_ok_and(|m| m.is_dir());
    let res = if is_dir {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    if let Err(e) = res {
        debug!(path = %path.display(), error = %e, "pack cache: cannot remove");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Tees the bytes of a pack into a temp file in the cache directory.
///
/// Writing never fails: an I/O error (or a pack larger than the whole
/// cache) marks the recorder broken, its data is dropped and the caller's
/// response goes on. [`flush`](Write::flush) does nothing: the bytes reach
/// the file at [`finish`](Self::finish). Dropping a recorder without
/// `finish` (the request failed or the client left) removes its temp file.
#[derive(Debug)]
pub struct Recorder {
    cache: PackCache,
    slot: Slot,
    tmp: PathBuf,
    /// `None` once broken.
    out: Option<BufWriter<File>>,
    written: u64,
    /// Whether this recorder still holds its key in [`Index::recording`].
    claimed: bool,
}

impl Recorder {
    /// The pack was sent completely: keep it if it is at least
    /// `min_entry_bytes` and nothing went wrong (no fsync: it is a cache),
    /// then evict least recently used entries down to `max_bytes`.
    pub fn finish(mut self) {
        let Some(out) = self.out.take() else {
            return;
        };
        if let Err(e) = out.into_inner() {
            let (err, out) = e.into_parts();
            drop(out.into_parts());
            debug!(error = %err, "pack cache: write failed, pack not kept");
            return;
        }
        if self.written < self.cache.inner.cfg.min_entry_bytes {
            return;
        }
        self.claimed = false;
        self.cache.commit(&self.slot, &self.tmp, self.written);
    }

    fn fail(&mut self, why: &dyn std::fmt::Display) {
        debug!(reason = %why, "pack cache: recording dropped");
        if let Some(out) = self.out.take() {
            // Discard the buffer instead of flushing it.
            drop(out.into_parts());
        }
        remove_file(&self.tmp);
    }
}

impl Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(out) = self.out.as_mut() {
            let total = self.written.saturating_add(buf.len() as u64);
            if total > self.cache.inner.cfg.max_bytes {
                self.fail(&"pack larger than the cache");
            } else if let Err(e) = out.write_all(buf) {
                self.fail(&e);
            } else {
                self.written = total;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(out) = self.out.take() {
            drop(out.into_parts());
        }
        // Gone already if it became an entry.
        remove_file(&self.tmp);
        if self.claimed {
            self.cache.lock().recording.remove(&self.slot);
        }
    }
}

#[cfg(test)]
mod tests;

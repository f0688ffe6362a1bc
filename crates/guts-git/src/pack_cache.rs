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

    /// The length of the entry, made the most recent.
    fn touch(&mut self, slot: &Slot) -> Option<u64> {
        let tick = self.next_tick();
        let repo = self.repos.get_mut(&slot.repo)?;
        let entry = repo
            .entries
            .get_mut(&slot.req)
            .filter(|_| repo.refs == slot.refs)?;
        self.lru.remove(&entry.tick);
        entry.tick = tick;
        self.lru.insert(tick, *slot);
        Some(entry.len)
    }

    fn contains(&self, slot: &Slot) -> bool {
        self.repos
            .get(&slot.repo)
            .is_some_and(|r| r.refs == slot.refs && r.entries.contains_key(&slot.req))
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

    fn remove(&mut self, slot: &Slot) -> Option<u64> {
        let repo = self
            .repos
            .get_mut(&slot.repo)
            .filter(|r| r.refs == slot.refs)?;
        let entry = repo.entries.remove(&slot.req)?;
        self.lru.remove(&entry.tick);
        self.total = self.total.saturating_sub(entry.len);
        Some(entry.len)
    }

    /// Make `refs` the current refs digest of `repo`; the entries under
    /// its former digest, now stale, are dropped and returned.
    fn set_refs(&mut self, repo: RepoId, refs: [u8; 32]) -> Vec<(Slot, u64)> {
        let state = self.repos.entry(repo).or_insert_with(|| RepoState {
            refs,
            entries: HashMap::new(),
        });
        if state.refs == refs {
            return Vec::new();
        }
        let old = std::mem::replace(&mut state.refs, refs);
        let stale: Vec<_> = state.entries.drain().collect();
        stale
            .into_iter()
            .map(|(req, entry)| {
                self.lru.remove(&entry.tick);
                self.total = self.total.saturating_sub(entry.len);
                (
                    Slot {
                        repo,
                        refs: old,
                        req,
                    },
                    entry.len,
                )
            })
            .collect()
    }

    /// Drop least recently used entries until the total is at most `max`.
    fn evict(&mut self, max: u64) -> Vec<(Slot, u64)> {
        let mut out = Vec::new();
        while self.total > max {
            let Some((_, slot)) = self.lru.pop_first() else {
                break;
            };
            let Some(state) = self.repos.get_mut(&slot.repo) else {
                continue;
            };
            if state.refs == slot.refs {
                if let Some(entry) = state.entries.remove(&slot.req) {
                    self.total = self.total.saturating_sub(entry.len);
                    out.push((slot, entry.len));
                }
            }
            if state.entries.is_empty() {
                self.repos.remove(&slot.repo);
            }
        }
        out
    }
}

/// Node-wide cache of generated packs. A clone-able handle (`Arc` inside),
/// `Send + Sync`: [`get`](Self::get) and [`record`](Self::record) may be
/// called from many threads at once.
#[derive(Debug, Clone)]
pub struct PackCache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: CacheConfig,
    index: Mutex<Index>,
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
        let mut index = scan(&cfg.dir).map_err(|e| ctx("cannot read", &cfg.dir, e))?;
        let victims = index.evict(cfg.max_bytes);
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
            (index.touch(&slot), self.retire_stale(&stale))
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
            match free_bytes(&cfg.dir) {
                Ok(free) if free >= cfg.min_free_bytes => {}
                Ok(free) => {
                    debug!(
                        free,
                        min = cfg.min_free_bytes,
                        "pack cache: low disk, not recording"
                    );
                    return None;
                }
                Err(e) => {
                    debug!(error = %e, "pack cache: statvfs failed, not recording");
                    return None;
                }
            }
        }
        let slot = key.slot();
        let (claimed, dead) = {
            let mut index = self.lock();
            let stale = index.set_refs(slot.repo, slot.refs);
            let claimed = !index.contains(&slot) && index.recording.insert(slot);
            (claimed, self.retire_stale(&stale))
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
                kept: false,
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
        self.inner
            .cfg
            .dir
            .join(hex(&slot.repo))
            .join(hex(&slot.refs))
    }

    /// Move the files of dropped entries into the temp directory, to be
    /// deleted by the caller once the index lock is released. Called under
    /// that lock: every change of an entry path is, so a new entry at the
    /// same path is never removed by mistake.
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
        }
        dead
    }

    /// [`retire`](Self::retire) stale entries (all under one refs
    /// directory) and remove that directory.
    fn retire_stale(&self, stale: &[(Slot, u64)]) -> Vec<PathBuf> {
        let dead = self.retire(stale);
        if let Some((slot, _)) = stale.first() {
            let _ = fs::remove_dir(self.refs_dir(slot));
        }
        dead
    }

    /// Move a complete recording into place and evict down to the limit.
    /// Releases the claim on `slot` in any case; whether the pack was kept.
    fn commit(&self, slot: &Slot, tmp: &Path, len: u64) -> bool {
        let path = self.entry_path(slot, len);
        let dead = {
            let mut index = self.lock();
            index.recording.remove(slot);
            let current = index.repos.get(&slot.repo).map(|r| r.refs);
            if current.is_some_and(|refs| refs != slot.refs) {
                debug!("pack cache: refs moved while recording, pack not kept");
                return false;
            }
            if let Err(e) = place(tmp, &path) {
                debug!(path = %path.display(), error = %e, "pack cache: cannot keep pack");
                return false;
            }
            let replaced = index.insert(*slot, len).filter(|old| *old != len);
            let mut victims = index.evict(self.inner.cfg.max_bytes);
            victims.extend(replaced.map(|old| (*slot, old)));
            self.retire(&victims)
        };
        delete(dead);
        true
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

/// Index the entries under `dir`, removing damaged ones.
fn scan(dir: &Path) -> io::Result<Index> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)?.flatten() {
        let name = entry.file_name();
        let name = name.to_str().unwrap_or("");
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        match parse_hex::<16>(name) {
            Some(repo) if is_dir => scan_repo(&entry.path(), repo, &mut found),
            _ if name == TMP_DIR => {}
            _ => debug!(name, "pack cache: not an entry, left alone"),
        }
    }
    found.sort_by_key(|(_, _, mtime)| *mtime);
    let mut index = Index::default();
    for (slot, len, _) in found {
        index.insert(slot, len);
    }
    Ok(index)
}

/// Add the entries of one repository directory to `found`; only those of
/// its most recently used refs directory, the others are stale.
fn scan_repo(dir: &Path, repo: RepoId, found: &mut Vec<(Slot, u64, SystemTime)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut groups = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let refs = entry.file_name().to_str().and_then(parse_hex::<32>);
        match refs {
            Some(refs) if is_dir => {
                let packs = scan_refs(&path);
                let newest = packs.iter().map(|p| p.2).max();
                match newest {
                    Some(newest) => groups.push((newest, refs, path, packs)),
                    None => {
                        let _ = fs::remove_dir(&path);
                    }
                }
            }
            _ => remove_any(&path),
        }
    }
    groups.sort_by_key(|g| g.0);
    if let Some((_, refs, _, packs)) = groups.pop() {
        found.extend(
            packs
                .into_iter()
                .map(|(req, len, mtime)| (Slot { repo, refs, req }, len, mtime)),
        );
    }
    for (_, _, path, _) in groups {
        remove_any(&path);
    }
}

/// The complete entries of one refs directory; others are removed.
fn scan_refs(dir: &Path) -> Vec<([u8; 32], u64, SystemTime)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let parsed = entry.file_name().to_str().and_then(parse_entry_name);
        let meta = path.symlink_metadata();
        match (parsed, meta) {
            (Some((req, len)), Ok(meta)) if meta.is_file() && meta.len() == len => {
                out.push((req, len, meta.modified().unwrap_or(UNIX_EPOCH)));
            }
            _ => {
                debug!(path = %path.display(), "pack cache: bad entry removed");
                remove_any(&path);
            }
        }
    }
    out
}

/// `<hex request digest>-<decimal length>.pack`.
fn parse_entry_name(name: &str) -> Option<([u8; 32], u64)> {
    let (req, len) = name.strip_suffix(".pack")?.split_once('-')?;
    let n: u64 = len.parse().ok()?;
    (n.to_string() == len).then_some((parse_hex::<32>(req)?, n))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Lower-case hex of exactly `N` bytes.
fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
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
    /// Whether the temp file became an entry.
    kept: bool,
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
        self.kept = self.cache.commit(&self.slot, &self.tmp, self.written);
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
        if !self.kept {
            remove_file(&self.tmp);
        }
        if self.claimed {
            self.cache.lock().recording.remove(&self.slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn config(dir: &Path, max_bytes: u64) -> CacheConfig {
        CacheConfig {
            dir: dir.to_path_buf(),
            max_bytes,
            min_free_bytes: 0,
            min_entry_bytes: 10,
        }
    }

    fn key(repo: &str, refs: u8, req: u8) -> CacheKey {
        CacheKey::new(repo, [refs; 32], [req; 32])
    }

    /// Bytes that differ for every key.
    fn body(k: &CacheKey, len: usize) -> Vec<u8> {
        let d = digest(&[k.repo.as_bytes(), &k.refs_digest, &k.request_digest]);
        (0..len).map(|i| d[i % 32] ^ (i / 32) as u8).collect()
    }

    fn put(cache: &PackCache, k: &CacheKey, data: &[u8]) {
        let mut r = cache.record(k).expect("recording starts");
        for c in data.chunks(7000) {
            r.write_all(c).expect("write");
        }
        r.finish();
    }

    fn read(cache: &PackCache, k: &CacheKey) -> Option<Vec<u8>> {
        let (mut f, len) = cache.get(k)?;
        let mut out = Vec::new();
        f.read_to_end(&mut out).expect("read");
        assert_eq!(out.len() as u64, len);
        Some(out)
    }

    /// Every file under `dir`, recursively.
    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).expect("read_dir").flatten() {
            if e.file_type().expect("type").is_dir() {
                out.extend(files(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out
    }

    fn path_of(cache: &PackCache, k: &CacheKey, len: u64) -> PathBuf {
        cache.entry_path(&k.slot(), len)
    }

    #[test]
    fn pack_cache_digest_prefixes_lengths() {
        assert_ne!(digest(&[b"ab", b"c"]), digest(&[b"a", b"bc"]));
        assert_ne!(digest(&[]), digest(&[b""]));
        assert_eq!(digest(&[b"a", b"bc"]), digest(&[b"a", b"bc"]));
    }

    #[test]
    fn pack_cache_roundtrip_and_invalidation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = PackCache::new(config(dir.path(), 1 << 20)).expect("new");
        let (a, b, c) = (key("o/r1", 1, 1), key("o/r1", 1, 2), key("o/r2", 1, 1));
        for k in [&a, &b, &c] {
            put(&cache, k, &body(k, 20_000));
        }
        assert_eq!(read(&cache, &a), Some(body(&a, 20_000)));
        assert_eq!(read(&cache, &key("o/r1", 1, 9)), None);
        assert!(cache.record(&a).is_none(), "already cached");
        assert_eq!(files(dir.path()).len(), 3);

        // The refs of o/r1 moved: its old entries go, o/r2's stay.
        assert!(cache.get(&key("o/r1", 2, 1)).is_none());
        assert_eq!(files(dir.path()), vec![path_of(&cache, &c, 20_000)]);
        assert!(!cache.refs_dir(&a.slot()).exists());
        assert!(read(&cache, &a).is_none());
        assert_eq!(read(&cache, &c), Some(body(&c, 20_000)));
        assert_eq!(cache.lock().total, 20_000);

        // A cache opened again on the directory sees the entries.
        put(&cache, &key("o/r1", 2, 1), b"0123456789abc");
        drop(cache);
        let cache = PackCache::new(config(dir.path(), 1 << 20)).expect("reopen");
        assert_eq!(read(&cache, &c), Some(body(&c, 20_000)));
        assert_eq!(
            read(&cache, &key("o/r1", 2, 1)),
            Some(b"0123456789abc".to_vec())
        );
    }

    #[test]
    fn pack_cache_small_dropped_and_busy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = PackCache::new(config(dir.path(), 1 << 20)).expect("new");
        let k = key("o/r", 1, 1);
        put(&cache, &k, b"tiny");
        assert!(cache.get(&k).is_none(), "below min_entry_bytes");

        let mut r = cache.record(&k).expect("recording starts");
        r.write_all(&[7; 5000]).expect("write");
        assert!(cache.record(&k).is_none(), "another writer records it");
        drop(r);
        assert!(cache.get(&k).is_none());
        assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));

        // Larger than the whole cache: not kept.
        let cache = PackCache::new(config(dir.path(), 1000)).expect("new");
        put(&cache, &k, &[1; 1001]);
        assert!(cache.get(&k).is_none());
        assert!(files(dir.path()).is_empty());
    }

    #[test]
    fn pack_cache_evicts_least_recently_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = PackCache::new(config(dir.path(), 2500)).expect("new");
        let (a, b, c) = (key("o/r", 1, 1), key("o/r", 1, 2), key("o/s", 1, 3));
        put(&cache, &a, &body(&a, 1000));
        put(&cache, &b, &body(&b, 1000));
        assert!(read(&cache, &a).is_some());
        put(&cache, &c, &body(&c, 1000));
        assert!(cache.get(&b).is_none());
        assert!(!path_of(&cache, &b, 1000).exists());
        assert_eq!(read(&cache, &a), Some(body(&a, 1000)));
        assert_eq!(read(&cache, &c), Some(body(&c, 1000)));
        assert_eq!(files(dir.path()).len(), 2);
    }

    #[test]
    fn pack_cache_off_on_low_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(dir.path(), 1 << 20);
        cfg.min_free_bytes = u64::MAX;
        let cache = PackCache::new(cfg).expect("new");
        assert!(cache.record(&key("o/r", 1, 1)).is_none());
        cfg = config(dir.path(), 1 << 20);
        cfg.min_free_bytes = 1;
        let cache = PackCache::new(cfg).expect("new");
        assert!(cache.record(&key("o/r", 1, 1)).is_some());
    }

    #[test]
    fn pack_cache_concurrent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = PackCache::new(config(dir.path(), 200_000)).expect("new");
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    for round in 0..60u8 {
                        let repo = format!("o/r{}", round % 3);
                        let k = key(&repo, round / 20, t % 4 + round % 5);
                        let data = body(&k, 1000 + 7000 * usize::from(k.request_digest[0]));
                        if let Some(got) = read(&cache, &k) {
                            assert!(got == data, "wrong bytes for {k:?}");
                        } else if let Some(mut r) = cache.record(&k) {
                            for c in data.chunks(3000) {
                                r.write_all(c).expect("write");
                            }
                            if round % 7 != 0 {
                                r.finish();
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no panic");
        }
        let on_disk: u64 = files(dir.path())
            .iter()
            .map(|p| p.metadata().expect("metadata").len())
            .sum();
        let total = cache.lock().total;
        assert!(total <= 200_000);
        assert_eq!(on_disk, total, "{:?}", files(dir.path()));
    }

    #[test]
    fn pack_cache_survives_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = PackCache::new(config(dir.path(), 1 << 20)).expect("new");
        let (a, b, c) = (key("o/r", 1, 1), key("o/r", 1, 2), key("o/r", 1, 3));
        for k in [&a, &b, &c] {
            put(&cache, k, &body(k, 5000));
        }
        // Truncated under a running cache: a miss, and removed.
        let pa = path_of(&cache, &a, 5000);
        fs::write(&pa, b"PACK").expect("truncate");
        assert!(cache.get(&a).is_none());
        assert!(!pa.exists());

        // Garbage everywhere, then a restart.
        let pc = path_of(&cache, &c, 5000);
        fs::write(&pc, b"").expect("truncate");
        let refs = cache.refs_dir(&a.slot());
        let repo = refs.parent().expect("repo dir").to_path_buf();
        let junk = [
            refs.join(format!("{}-99.pack", hex(&[9; 32]))),
            refs.join("zzz.pack"),
            repo.join("not-refs"),
            dir.path().join(hex(&[5; 16])).join(hex(&[5; 32])).join("x"),
            dir.path().join("tmp").join("1-2-3.part"),
        ];
        for p in &junk {
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            fs::write(p, b"garbage").expect("write");
        }
        fs::write(dir.path().join("README"), b"not ours").expect("write");
        let cache = PackCache::new(config(dir.path(), 1 << 20)).expect("reopen");
        assert!(cache.get(&c).is_none());
        assert_eq!(read(&cache, &b), Some(body(&b, 5000)));
        let mut left = files(dir.path());
        left.sort();
        assert_eq!(
            left,
            vec![path_of(&cache, &b, 5000), dir.path().join("README")]
        );
        assert_eq!(cache.lock().total, 5000);
    }
}

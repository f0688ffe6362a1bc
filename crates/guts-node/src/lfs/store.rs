//! Content-addressed Git LFS object storage, per repository (ADR 0022).
//!
//! Objects live under `DATA_DIR/lfs/objects/<repository id, hex>/<oid[0..2]>/<oid[2..4]>/<oid>`.
//! Keying by the repository's stable id (the SHA-256 of its first identity
//! document, not its name) means an object id learnt from one repository
//! cannot be read through another, and a renamed alias keeps its objects.
//!
//! An import streams into a temporary file under `DATA_DIR/lfs/tmp`, hashing
//! as it goes; only when the SHA-256 and the size match the object id and
//! the declared size is the file synced and renamed into place. A wrong
//! hash or size, an I/O error or a client that goes away leaves nothing.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use guts_identity::doc::RepoId;
use sha2::{Digest, Sha256};

use crate::error::NodeError;

/// Directory under the data dir holding everything of LFS.
pub const LFS_DIR: &str = "lfs";
/// Buffer of an import: the most of an object held in memory at once.
const IMPORT_BUFFER: usize = 64 * 1024;

/// A Git LFS object id: the SHA-256 of the object's content (the type
/// pointers carry, `guts_git::lfs`).
pub use guts_git::lfs::LfsOid;

/// Parse an object id from a request: exactly 64 lowercase hex characters
/// (the form git-lfs sends).
pub fn parse_oid(s: &str) -> Result<LfsOid, NodeError> {
    LfsOid::from_hex(s.as_bytes()).ok_or_else(|| {
        NodeError::Invalid(format!(
            "{:?} is not an LFS object id (64 lowercase hex characters)",
            truncate(s)
        ))
    })
}

/// At most 80 characters of hostile input, for an error message.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// The size of an LFS object in bytes, as declared by a client (never
/// negative: the JSON `size` is checked when it is parsed).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct LfsSize(pub u64);

impl LfsSize {
    /// The size from a JSON number; `None` if it is negative.
    pub fn from_json(n: i64) -> Option<Self> {
        u64::try_from(n).ok().map(LfsSize)
    }

    /// The size in bytes.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for LfsSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportOutcome {
    /// The object was written (verified, synced, renamed into place).
    Stored,
    /// The repository already had the object, with the declared size: the
    /// reader was not read.
    AlreadyPresent,
}

/// The LFS objects of every repository of a node.
#[derive(Debug, Clone)]
pub struct LfsStore {
    objects: PathBuf,
    tmp: PathBuf,
}

impl LfsStore {
    /// Open (creating) the store under `data_dir`; temporary files left by a
    /// crash are removed.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        let root = data_dir.join(LFS_DIR);
        let objects = root.join("objects");
        let tmp = root.join("tmp");
        fs::create_dir_all(&objects)?;
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        Ok(LfsStore { objects, tmp })
    }

    /// The directory of `repo`'s objects.
    fn repo_dir(&self, repo: &RepoId) -> PathBuf {
        self.objects.join(hex(&repo.0))
    }

    /// Where `oid` of `repo` lives (whether or not it is there).
    fn path(&self, repo: &RepoId, oid: &LfsOid) -> PathBuf {
        let name = oid.to_string();
        self.repo_dir(repo)
            .join(&name[0..2])
            .join(&name[2..4])
            .join(name)
    }

    /// The size of `oid` in `repo`, if the repository has it.
    pub fn size(&self, repo: &RepoId, oid: &LfsOid) -> Option<u64> {
        fs::metadata(self.path(repo, oid))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// Open `oid` of `repo` for reading (seek for a resumed download);
    /// `NotFound` if the repository does not have it.
    pub fn open_read(&self, repo: &RepoId, oid: &LfsOid) -> io::Result<File> {
        File::open(self.path(repo, oid))
    }

    /// Remove every object of `repo` (a deleted repository): its directory
    /// is moved under the temporary directory, then removed, so a crash
    /// halfway leaves nothing visible (the next start clears `tmp`).
    pub fn remove_repo(&self, repo: &RepoId) -> io::Result<()> {
        let dir = self.repo_dir(repo);
        let mut rand = [0u8; 16];
        getrandom::getrandom(&mut rand).map_err(|e| io::Error::other(e.to_string()))?;
        let doomed = self.tmp.join(format!("{}.deleted", hex(&rand)));
        match fs::rename(&dir, &doomed) {
            Ok(()) => fs::remove_dir_all(&doomed),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Bytes of LFS objects `repo` holds (walks its directory: counted
    /// against the repository's storage quota before an upload).
    pub fn repo_bytes(&self, repo: &RepoId) -> io::Result<u64> {
        fn walk(dir: &Path, depth: u8, total: &mut u64) -> io::Result<()> {
            let entries = match fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let meta = entry.metadata()?;
                if depth > 0 && meta.is_dir() {
                    walk(&entry.path(), depth - 1, total)?;
                } else if depth == 0 && meta.is_file() {
                    *total = total.saturating_add(meta.len());
                }
            }
            Ok(())
        }
        let mut total = 0;
        walk(&self.repo_dir(repo), 2, &mut total)?;
        Ok(total)
    }

    /// Store `oid` in `repo` from `reader`, which must yield exactly
    /// `expected_size` bytes hashing to `oid`. Refuses before reading when
    /// `expected_size` is over `max_size`. The object becomes visible only
    /// once verified and synced; on any error nothing is left behind. An
    /// object already present (with that size) is not read again.
    pub fn import(
        &self,
        repo: &RepoId,
        oid: &LfsOid,
        expected_size: LfsSize,
        max_size: u64,
        reader: &mut dyn Read,
    ) -> Result<ImportOutcome, NodeError> {
        if expected_size.get() > max_size {
            return Err(too_large(oid, expected_size.get(), max_size));
        }
        match self.size(repo, oid) {
            Some(len) if len == expected_size.get() => return Ok(ImportOutcome::AlreadyPresent),
            Some(len) => {
                return Err(NodeError::Invalid(format!(
                    "LFS object {oid} has {len} bytes, not {expected_size}"
                )))
            }
            None => {}
        }
        let mut tmp = TempFile::create(&self.tmp)?;
        let digest = copy_verified(reader, &mut tmp.file, expected_size.get(), oid)?;
        if digest != oid.0 {
            return Err(NodeError::Invalid(format!(
                "LFS object content does not match its id {oid} (its SHA-256 is {})",
                hex(&digest)
            )));
        }
        tmp.file.sync_all()?;
        let dest = self.path(repo, oid);
        let parent = dest
            .parent()
            .ok_or_else(|| NodeError::Internal("LFS object path has no parent".into()))?;
        fs::create_dir_all(parent)?;
        tmp.persist(&dest)?;
        File::open(parent)?.sync_all()?;
        tracing::debug!(%oid, size = expected_size.get(), "LFS object stored");
        Ok(ImportOutcome::Stored)
    }
}

/// The refusal of an object of `size` bytes when at most `max` may be stored.
pub(crate) fn too_large(oid: &LfsOid, size: u64, max: u64) -> NodeError {
    NodeError::Git(guts_git::Error::TooLarge(format!(
        "LFS object {oid} of {size} bytes is over the {max} bytes this repository may still store or this node accepts per object"
    )))
}

/// Copy exactly `expected` bytes from `reader` to `out`, returning their
/// SHA-256; fails as soon as the reader yields more, or at its end if less.
fn copy_verified(
    reader: &mut dyn Read,
    out: &mut File,
    expected: u64,
    oid: &LfsOid,
) -> Result<[u8; 32], NodeError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; IMPORT_BUFFER];
    let mut total: u64 = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        total = total.saturating_add(n as u64);
        if total > expected {
            return Err(NodeError::Invalid(format!(
                "LFS object {oid} is longer than its declared {expected} bytes"
            )));
        }
        let chunk = buf.get(..n).unwrap_or_default();
        hasher.update(chunk);
        out.write_all(chunk)?;
    }
    if total != expected {
        return Err(NodeError::Invalid(format!(
            "LFS object {oid} has {total} bytes, not its declared {expected}"
        )));
    }
    Ok(hasher.finalize().into())
}

/// A temporary file removed on drop unless persisted.
struct TempFile {
    path: PathBuf,
    file: File,
    persisted: bool,
}

impl TempFile {
    fn create(dir: &Path) -> io::Result<Self> {
        let mut rand = [0u8; 16];
        getrandom::getrandom(&mut rand).map_err(|e| io::Error::other(e.to_string()))?;
        let path = dir.join(format!("{}.tmp", hex(&rand)));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(TempFile {
            path,
            file,
            persisted: false,
        })
    }

    fn persist(&mut self, dest: &Path) -> io::Result<()> {
        fs::rename(&self.path, dest)?;
        self.persisted = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            if let Err(e) = fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove LFS temporary file");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn oid_of(data: &[u8]) -> LfsOid {
        LfsOid(Sha256::digest(data).into())
    }

    fn tmp_entries(dir: &Path) -> usize {
        fs::read_dir(dir.join(LFS_DIR).join("tmp")).unwrap().count()
    }

    #[test]
    fn oid_parses_only_64_lowercase_hex() {
        let s = "a".repeat(64);
        assert_eq!(parse_oid(&s).unwrap().to_string(), s);
        let h = oid_of(b"x");
        assert_eq!(parse_oid(&h.to_string()).unwrap(), h);
        assert!(parse_oid(&"A".repeat(64)).is_err());
        assert!(parse_oid(&"a".repeat(63)).is_err());
        assert!(parse_oid(&"a".repeat(65)).is_err());
        assert!(parse_oid(&"g".repeat(64)).is_err());
        assert!(parse_oid(&format!("{}é", "a".repeat(62))).is_err());
        assert!(parse_oid(&"../".repeat(22)).is_err());
        assert_eq!(LfsSize::from_json(-1), None);
        assert_eq!(LfsSize::from_json(5), Some(LfsSize(5)));
    }

    #[test]
    fn import_verifies_and_is_per_repository() {
        let dir = tempfile::tempdir().unwrap();
        let store = LfsStore::open(dir.path()).unwrap();
        let (a, b) = (RepoId([1; 32]), RepoId([2; 32]));
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let oid = oid_of(&data);
        let size = LfsSize(data.len() as u64);
        let out = store
            .import(&a, &oid, size, u64::MAX, &mut &data[..])
            .unwrap();
        assert_eq!(out, ImportOutcome::Stored);
        assert_eq!(store.size(&a, &oid), Some(data.len() as u64));
        assert_eq!(store.size(&b, &oid), None);
        assert!(store.open_read(&b, &oid).is_err());
        let mut back = Vec::new();
        store
            .open_read(&a, &oid)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        assert_eq!(store.repo_bytes(&a).unwrap(), data.len() as u64);
        assert_eq!(store.repo_bytes(&b).unwrap(), 0);
        // Idempotent: the reader is not even read.
        let mut failing = FailingReader;
        let again = store
            .import(&a, &oid, size, u64::MAX, &mut failing)
            .unwrap();
        assert_eq!(again, ImportOutcome::AlreadyPresent);
        assert_eq!(tmp_entries(dir.path()), 0);
        store.remove_repo(&a).unwrap();
        store.remove_repo(&b).unwrap();
        assert_eq!(store.size(&a, &oid), None);
        assert_eq!(store.repo_bytes(&a).unwrap(), 0);
        assert_eq!(tmp_entries(dir.path()), 0);
    }

    struct FailingReader;
    impl Read for FailingReader {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("client went away"))
        }
    }

    #[test]
    fn wrong_content_size_or_errors_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = LfsStore::open(dir.path()).unwrap();
        let repo = RepoId([3; 32]);
        let data = b"hello lfs".to_vec();
        let oid = oid_of(&data);
        let n = data.len() as u64;
        let wrong = b"hello LFS".to_vec();
        let cases: Vec<(LfsSize, Box<dyn Read>)> = vec![
            (LfsSize(n), Box::new(io::Cursor::new(wrong))),
            (LfsSize(n - 1), Box::new(io::Cursor::new(data.clone()))),
            (LfsSize(n + 1), Box::new(io::Cursor::new(data.clone()))),
            (LfsSize(n), Box::new(FailingReader)),
        ];
        for (size, mut reader) in cases {
            assert!(store
                .import(&repo, &oid, size, u64::MAX, &mut reader)
                .is_err());
            assert_eq!(store.size(&repo, &oid), None);
            assert_eq!(tmp_entries(dir.path()), 0);
        }
    }

    #[test]
    fn too_large_is_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let store = LfsStore::open(dir.path()).unwrap();
        let repo = RepoId([4; 32]);
        let oid = oid_of(b"big");
        let err = store
            .import(&repo, &oid, LfsSize(1000), 999, &mut FailingReader)
            .unwrap_err();
        assert_eq!(
            crate::error::status_for(&err),
            axum::http::StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(store.size(&repo, &oid), None);
    }

    #[test]
    fn open_removes_crash_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        LfsStore::open(dir.path()).unwrap();
        fs::write(
            dir.path().join(LFS_DIR).join("tmp").join("x.tmp"),
            b"partial",
        )
        .unwrap();
        LfsStore::open(dir.path()).unwrap();
        assert_eq!(tmp_entries(dir.path()), 0);
    }
}

//! The node's side of Git LFS replication (ADR 0024): which LFS objects a
//! repository still lacks, serving objects to peers from the LFS store, and
//! taking objects from peers into it (verified by the store's `import`),
//! resuming an interrupted transfer after the bytes that arrived.
//!
//! - The pointers found in each pack received from a peer are kept in the
//!   sled tree `lfs-wanted` (repository id, object id → size) until their
//!   objects are stored: a restart forgets nothing, and an object no peer
//!   has yet is asked for again at the next round.
//! - The bytes of a transfer that broke off are kept in
//!   `DATA_DIR/lfs/partial/<repository id>-<object id>`; the next attempt
//!   asks the peer for the rest only. The object is verified whole (size
//!   and SHA-256) as it is copied into the store, so kept bytes are never
//!   trusted.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use guts_git::lfs::{LfsOid, LfsPointer};
use guts_identity::doc::RepoId;
use guts_p2p::replication::Fault;

use crate::error::NodeError;
use crate::lfs::{LfsSize, LfsStore};

/// LFS objects wanted from peers, and their transfers.
pub struct PeerLfs {
    store: LfsStore,
    /// `repository id (32) ‖ object id (32)` → size (u64 BE).
    wanted: sled::Tree,
    partial: PathBuf,
    max_object_bytes: u64,
}

fn key(repo: &RepoId, oid: &LfsOid) -> [u8; 64] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(&repo.0);
    k[32..].copy_from_slice(&oid.0);
    k
}

fn local(e: impl std::fmt::Display) -> Fault {
    Fault::Local(e.to_string())
}

impl PeerLfs {
    /// Over `store` (the node's, shared with the HTTP API), keeping its list
    /// in `db` and partial transfers under `data_dir/lfs/partial`; objects
    /// over `max_object_bytes` (the HTTP API's limit) are not taken.
    pub fn open(
        store: LfsStore,
        db: &sled::Db,
        data_dir: &Path,
        max_object_bytes: u64,
    ) -> Result<Self, NodeError> {
        let wanted = db
            .open_tree("lfs-wanted")
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        let partial = data_dir.join(crate::lfs::store::LFS_DIR).join("partial");
        std::fs::create_dir_all(&partial)?;
        Ok(PeerLfs {
            store,
            wanted,
            partial,
            max_object_bytes,
        })
    }

    /// Keep `pointers` (found in objects received for `repo`) whose objects
    /// this node lacks, to fetch them.
    pub fn record(&self, repo: &RepoId, pointers: &[LfsPointer]) {
        for p in pointers {
            if p.size > self.max_object_bytes {
                tracing::warn!(oid = %p.oid, size = p.size, max = self.max_object_bytes, "an LFS object over this node's limit is not taken from peers");
                continue;
            }
            if self.has(repo, &p.oid) {
                continue;
            }
            if let Err(e) = self.wanted.insert(key(repo, &p.oid), &p.size.to_be_bytes()) {
                tracing::warn!(oid = %p.oid, error = %e, "cannot keep an LFS object to fetch");
            }
        }
    }

    /// LFS objects of `repo` still to fetch, at most `max`; those stored
    /// meanwhile (pushed over HTTP) are forgotten.
    pub fn wanted(&self, repo: &RepoId, max: usize) -> Vec<LfsPointer> {
        let mut out = Vec::new();
        for item in self.wanted.scan_prefix(repo.0) {
            let Ok((k, v)) = item else { break };
            let oid = k.get(32..).and_then(|b| <[u8; 32]>::try_from(b).ok());
            let size = <[u8; 8]>::try_from(v.as_ref()).ok().map(u64::from_be_bytes);
            let (Some(oid), Some(size)) = (oid, size) else {
                let _ = self.wanted.remove(k);
                continue;
            };
            let oid = LfsOid(oid);
            if self.has(repo, &oid) {
                let _ = self.wanted.remove(k);
                continue;
            }
            out.push(LfsPointer { oid, size });
            if out.len() >= max {
                break;
            }
        }
        out
    }

    /// Whether the store holds `oid` of `repo`.
    pub fn has(&self, repo: &RepoId, oid: &LfsOid) -> bool {
        self.store.size(repo, oid).is_some()
    }

    /// `oid` of `repo` from byte `offset` on, and its whole size.
    pub fn open_object(
        &self,
        repo: &RepoId,
        oid: &LfsOid,
        offset: u64,
    ) -> Result<(u64, Box<dyn Read + Send>), Fault> {
        let mut file = self
            .store
            .open_read(repo, oid)
            .map_err(|_| local(format!("this node does not have LFS object {oid}")))?;
        let size = file.metadata().map_err(local)?.len();
        if offset > size {
            return Err(local(format!(
                "LFS object {oid} has {size} bytes, fewer than the {offset} asked to skip"
            )));
        }
        file.seek(SeekFrom::Start(offset)).map_err(local)?;
        Ok((size, Box::new(file)))
    }

    fn partial_path(&self, repo: &RepoId, oid: &LfsOid) -> PathBuf {
        let repo_hex: String = repo.0.iter().map(|b| format!("{b:02x}")).collect();
        self.partial.join(format!("{repo_hex}-{oid}"))
    }

    /// Bytes of `pointer`'s object kept from an interrupted transfer.
    pub fn resume_point(&self, repo: &RepoId, pointer: &LfsPointer) -> u64 {
        std::fs::metadata(self.partial_path(repo, &pointer.oid))
            .map(|m| m.len())
            .ok()
            .filter(|&n| n < pointer.size)
            .unwrap_or(0)
    }

    /// Bytes of LFS objects `repo` holds.
    pub fn repo_bytes(&self, repo: &RepoId) -> Result<u64, Fault> {
        self.store.repo_bytes(repo).map_err(local)
    }

    /// Store `pointer`'s object: the first `resume_from` bytes from the
    /// partial file, then `network`, copied to the partial file as it is
    /// read, all verified by the store's import. An object over `room`
    /// (what the repository may still store) is refused before a byte is
    /// read, as a local failure.
    pub fn receive(
        &self,
        repo: &RepoId,
        pointer: &LfsPointer,
        (resume_from, room): (u64, u64),
        network: &mut dyn Read,
    ) -> Result<(), Fault> {
        let path = self.partial_path(repo, &pointer.oid);
        let kept = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(local)?;
        // Only the bytes the peer was told of are kept.
        kept.set_len(resume_from).map_err(local)?;
        let head = File::open(&path).map_err(local)?.take(resume_from);
        let mut tail = kept;
        tail.seek(SeekFrom::Start(resume_from)).map_err(local)?;
        let mut tee = Tee {
            network,
            copy: io::BufWriter::new(tail),
            broke_off: false,
            ended: false,
        };
        let imported = self.store.import(
            repo,
            &pointer.oid,
            LfsSize(pointer.size),
            room.min(self.max_object_bytes),
            &mut head.chain(&mut tee),
        );
        let (broke_off, ended) = (tee.broke_off, tee.ended);
        let mut copy = tee.copy;
        match imported {
            Ok(_) => {
                drop(copy);
                let _ = std::fs::remove_file(&path);
                let _ = self.wanted.remove(key(repo, &pointer.oid));
                Ok(())
            }
            // The network failed, or the peer closed the stream before the
            // whole object: keep what arrived for the next attempt.
            Err(e) if broke_off || (ended && short(&path, &mut copy, pointer.size)) => {
                Err(Fault::Interrupted(e.to_string()))
            }
            Err(e) => {
                drop(copy);
                let _ = std::fs::remove_file(&path);
                match e {
                    // Bytes kept from an earlier attempt (perhaps from
                    // another peer) may be what is wrong: start over
                    // before blaming anyone.
                    NodeError::Invalid(m) if resume_from > 0 => Err(Fault::Interrupted(m)),
                    NodeError::Invalid(m) => Err(Fault::Peer(m)),
                    other => Err(local(other)),
                }
            }
        }
    }
}

/// Whether the partial file (flushed first) is shorter than `size`.
fn short(path: &Path, copy: &mut io::BufWriter<File>, size: u64) -> bool {
    use std::io::Write;
    copy.flush().is_ok() && std::fs::metadata(path).is_ok_and(|m| m.len() < size)
}

/// A reader of the network that copies what it reads to the partial file,
/// and remembers whether the network failed or ended.
struct Tee<'a> {
    network: &'a mut dyn Read,
    copy: io::BufWriter<File>,
    broke_off: bool,
    ended: bool,
}

impl Read for Tee<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        use std::io::Write;
        match self.network.read(out) {
            Ok(0) => {
                self.ended = true;
                Ok(0)
            }
            Ok(n) => {
                self.copy.write_all(out.get(..n).unwrap_or_default())?;
                Ok(n)
            }
            Err(e) => {
                self.broke_off = e.kind() != io::ErrorKind::Interrupted;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    const MAX: u64 = 1024 * 1024;

    fn setup() -> (tempfile::TempDir, PeerLfs, RepoId) {
        let tmp = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let store = LfsStore::open(tmp.path()).unwrap();
        let lfs = PeerLfs::open(store, &db, tmp.path(), MAX).unwrap();
        (tmp, lfs, RepoId([7; 32]))
    }

    fn object(n: usize) -> (Vec<u8>, LfsPointer) {
        let content: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
        let pointer = LfsPointer {
            oid: LfsOid(Sha256::digest(&content).into()),
            size: n as u64,
        };
        (content, pointer)
    }

    /// Yields its bytes, then fails like a reset connection.
    struct Reset<'a>(&'a [u8]);

    impl Read for Reset<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::from(io::ErrorKind::ConnectionReset));
            }
            let n = self.0.len().min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn an_interrupted_transfer_resumes_after_the_bytes_that_arrived() {
        let (_tmp, lfs, repo) = setup();
        let (content, p) = object(200_000);
        lfs.record(&repo, &[p]);
        assert_eq!(lfs.wanted(&repo, 10), vec![p]);
        let broke = lfs.receive(&repo, &p, (0, MAX), &mut Reset(&content[..70_000]));
        assert!(matches!(broke, Err(Fault::Interrupted(_))), "{broke:?}");
        assert!(!lfs.has(&repo, &p.oid));
        assert_eq!(lfs.resume_point(&repo, &p), 70_000);
        // The peer closes the stream early: kept too.
        let closed = lfs.receive(&repo, &p, (70_000, MAX), &mut &content[70_000..90_000]);
        assert!(matches!(closed, Err(Fault::Interrupted(_))), "{closed:?}");
        assert_eq!(lfs.resume_point(&repo, &p), 90_000);
        lfs.receive(&repo, &p, (90_000, MAX), &mut &content[90_000..])
            .unwrap();
        assert!(lfs.has(&repo, &p.oid));
        assert_eq!(lfs.resume_point(&repo, &p), 0, "the partial file is gone");
        assert!(lfs.wanted(&repo, 10).is_empty());
        // Served to a peer from an offset.
        let (size, mut rest) = lfs.open_object(&repo, &p.oid, 10).unwrap();
        let mut read = Vec::new();
        rest.read_to_end(&mut read).unwrap();
        assert_eq!((size, &read[..]), (200_000, &content[10..]));
        assert!(lfs.open_object(&repo, &p.oid, 200_001).is_err());
        assert!(lfs.open_object(&RepoId([8; 32]), &p.oid, 0).is_err());
    }

    #[test]
    fn a_wrong_object_is_the_peers_fault_and_nothing_is_kept() {
        let (_tmp, lfs, repo) = setup();
        let (content, p) = object(5_000);
        let mut wrong = content.clone();
        wrong[100] ^= 1;
        let refused = lfs.receive(&repo, &p, (0, MAX), &mut &wrong[..]);
        assert!(matches!(refused, Err(Fault::Peer(_))), "{refused:?}");
        let mut longer = content.clone();
        longer.push(0);
        let refused = lfs.receive(&repo, &p, (0, MAX), &mut &longer[..]);
        assert!(matches!(refused, Err(Fault::Peer(_))), "{refused:?}");
        assert!(!lfs.has(&repo, &p.oid));
        assert_eq!(lfs.resume_point(&repo, &p), 0);
    }

    #[test]
    fn a_wrong_object_after_resuming_starts_over_without_blame() {
        let (_tmp, lfs, repo) = setup();
        let (content, p) = object(5_000);
        let mut bad_start = content[..1_000].to_vec();
        bad_start[0] ^= 1;
        let broke = lfs.receive(&repo, &p, (0, MAX), &mut Reset(&bad_start));
        assert!(matches!(broke, Err(Fault::Interrupted(_))), "{broke:?}");
        // Another peer sends the right rest: the kept bytes were wrong.
        let again = lfs.receive(&repo, &p, (1_000, MAX), &mut &content[1_000..]);
        assert!(matches!(again, Err(Fault::Interrupted(_))), "{again:?}");
        assert_eq!(lfs.resume_point(&repo, &p), 0, "starts over");
        lfs.receive(&repo, &p, (0, MAX), &mut &content[..]).unwrap();
        assert!(lfs.has(&repo, &p.oid));
    }

    #[test]
    fn objects_over_the_limit_or_held_are_not_wanted() {
        let (_tmp, lfs, repo) = setup();
        let (content, held) = object(100);
        lfs.receive(&repo, &held, (0, MAX), &mut &content[..])
            .unwrap();
        let huge = LfsPointer {
            oid: LfsOid([1; 32]),
            size: MAX + 1,
        };
        let (_, small) = object(300);
        lfs.record(&repo, &[held, huge, small]);
        assert_eq!(lfs.wanted(&repo, 10), vec![small]);
        assert!(lfs.wanted(&RepoId([9; 32]), 10).is_empty());
        // No room left in the repository: refused, nothing read or kept.
        let (content, p) = object(300);
        let refused = lfs.receive(&repo, &p, (0, 299), &mut &content[..]);
        assert!(matches!(refused, Err(Fault::Local(_))), "{refused:?}");
        assert_eq!(lfs.repo_bytes(&repo).unwrap(), 100);
    }
}

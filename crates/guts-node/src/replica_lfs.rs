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

fn store_oid(oid: &LfsOid) -> crate::lfs::LfsOid {
    crate::lfs::LfsOid(oid.0)
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
        self.store.size(repo, &store_oid(oid)).is_some()
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
            .open_read(repo, &store_oid(oid))
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

    /// Store `pointer`'s object: the first `resume_from` bytes from the
    /// partial file, then `network`, copied to the partial file as it is
    /// read, all verified by the store's import.
    pub fn receive(
        &self,
        repo: &RepoId,
        pointer: &LfsPointer,
        resume_from: u64,
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
            &store_oid(&pointer.oid),
            LfsSize(pointer.size),
            self.max_object_bytes,
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

//! Git's commit-graph file (`objects/info/commit-graph`): written by this
//! node, read by this node and by stock git.
//!
//! A node keeps repositories as plain pack directories and its refs in a
//! database, so nothing else would ever write the file git uses to walk
//! history without inflating commits. [`write()`] produces it from a list of
//! commits; [`CommitGraph`] reads it back.
//!
//! The format is git's `gitformat-commit-graph(5)`, version 1 with SHA-1
//! ids, a single file (no split chains, no Bloom filters):
//!
//! * a header (`CGPH`, version 1, hash version 1, chunk count, 0 base graphs),
//! * a chunk table of `(id, offset)` pairs ended by a zero id,
//! * the chunks: `OIDF` (256 cumulative counts by first byte), `OIDL`
//!   (sorted commit ids), `CDAT` (tree, two parent positions, topological
//!   level and commit time), `GDA2`/`GDO2` (corrected commit date offsets,
//!   the overflow chunk only when needed) and `EDGE` (parents of octopus
//!   merges after the first, only when there is one),
//! * a trailer: the SHA-1 of everything before it.
//!
//! Everything is big-endian. The file's bytes are laid out exactly as git
//! 2.47 lays out `git commit-graph write --reachable` for the same commits
//! (a test checks this).
//!
//! The reader is this module's own rather than `gix-commitgraph`: it reads
//! the file into memory (no mmap, so a file replaced or damaged later
//! cannot fault the node), checks the trailer checksum, chunk sizes, id
//! order and fanout when opening, and turns any inconsistency found while
//! reading a commit into an error.

mod read;
mod write;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use gix_hash::ObjectId;

use crate::error::Error;

pub use read::CommitGraph;
pub use write::write;

/// One commit as the writer needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphCommit {
    /// The commit's id.
    pub id: ObjectId,
    /// Its root tree.
    pub tree: ObjectId,
    /// Its parents, in order; every one must be among the commits written.
    pub parents: Vec<ObjectId>,
    /// Its committer time, seconds since the epoch. The file holds 34 bits:
    /// times before the epoch are stored as 0, times past 2^34 - 1 as 2^34 - 1.
    pub time: i64,
}

/// What [`write()`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphStats {
    /// Commits in the file.
    pub commits: usize,
    /// Size of the file in bytes.
    pub bytes: u64,
}

/// One commit as read back from a commit-graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphEntry {
    /// The commit's id.
    pub id: ObjectId,
    /// Its root tree.
    pub tree: ObjectId,
    /// Its parents, in order.
    pub parents: Vec<ObjectId>,
    /// Its committer time as stored (34 bits, see [`GraphCommit::time`]).
    pub time: i64,
    /// Its topological level (generation number v1): 1 for a root commit,
    /// otherwise one more than the highest level among its parents, capped
    /// at 2^30 - 1.
    pub generation: u32,
}

/// The file name under `objects/info`.
const FILE_NAME: &str = "commit-graph";
/// Length of a SHA-1 id, the only hash this module reads and writes.
const HASH_LEN: usize = 20;
/// Header: signature, version, hash version, chunk count, base graph count.
const HEADER_LEN: usize = 8;
/// One chunk table entry: 4-byte id and 8-byte offset.
const TOC_ENTRY_LEN: usize = 12;
/// One `CDAT` record: tree, two parent positions, level and time.
const CDAT_LEN: usize = HASH_LEN + 16;
/// The file's signature.
const SIGNATURE: &[u8; 4] = b"CGPH";
/// Chunk ids.
const OIDF: [u8; 4] = *b"OIDF";
const OIDL: [u8; 4] = *b"OIDL";
const CDAT: [u8; 4] = *b"CDAT";
const GDA2: [u8; 4] = *b"GDA2";
const GDO2: [u8; 4] = *b"GDO2";
const EDGE: [u8; 4] = *b"EDGE";
/// Parent position meaning "no parent here".
const NO_PARENT: u32 = 0x7000_0000;
/// High bit of a parent position: "index into EDGE" in `CDAT`, "last parent"
/// in `EDGE`; in `GDA2`, "index into GDO2".
const HIGH_BIT: u32 = 0x8000_0000;
/// Most commits one file can address (positions stay below [`NO_PARENT`]).
const MAX_COMMITS: usize = NO_PARENT as usize;
/// Highest topological level the 30 bits of `CDAT` hold.
const GENERATION_V1_MAX: u32 = 0x3FFF_FFFF;
/// Highest commit time the 34 bits of `CDAT` hold.
const TIME_MAX: u64 = (1 << 34) - 1;
/// Highest corrected date offset stored in `GDA2` itself.
const OFFSET_MAX: u64 = 0x7FFF_FFFF;

/// `objects_dir/info/commit-graph`.
fn graph_path(objects_dir: &Path) -> PathBuf {
    objects_dir.join("info").join(FILE_NAME)
}

/// The error for a damaged file at `path`, or for commits that cannot be
/// written to it.
fn graph_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::CommitGraph {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

//! Reading `objects/info/commit-graph`.

use std::fs;
use std::io::ErrorKind;
use std::ops::Range;
use std::path::{Path, PathBuf};

use gix_hash::ObjectId;

use super::{
    graph_error, graph_path, GraphEntry, CDAT, CDAT_LEN, EDGE, GDA2, GDO2, HASH_LEN, HEADER_LEN,
    HIGH_BIT, MAX_COMMITS, NO_PARENT, OIDF, OIDL, SIGNATURE, TOC_ENTRY_LEN,
};
use crate::error::{Error, Result};

/// An opened commit-graph file, held in memory (about 60 bytes a commit).
///
/// [`CommitGraph::open`] checks the structure and the checksum, so lookups
/// need no further validation; what it cannot check without walking every
/// commit (parent positions, `EDGE` lists, `GDO2` indexes) is checked when a
/// commit is read, and reported as an error rather than a panic.
pub struct CommitGraph {
    path: PathBuf,
    data: Vec<u8>,
    at: Layout,
}

impl std::fmt::Debug for CommitGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitGraph")
            .field("path", &self.path)
            .field("len", &self.at.len)
            .finish_non_exhaustive()
    }
}

impl CommitGraph {
    /// Open and validate `objects_dir/info/commit-graph`: `Ok(None)` when
    /// there is no such file, [`Error::CommitGraph`] when it is damaged or
    /// not a single-file SHA-1 commit-graph of version 1.
    pub fn open(objects_dir: &Path) -> Result<Option<CommitGraph>> {
        let path = graph_path(objects_dir);
        match fs::read(&path) {
            Ok(data) => Self::from_bytes(path, data).map(Some),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::from(e)),
        }
    }

    /// Validate the contents of the file at `path`.
    pub(super) fn from_bytes(path: PathBuf, data: Vec<u8>) -> Result<CommitGraph> {
        match parse(&data) {
            Ok(at) => Ok(CommitGraph { path, data, at }),
            Err(reason) => Err(graph_error(&path, reason)),
        }
    }

    /// Number of commits in the file.
    pub fn len(&self) -> usize {
        self.at.len
    }

    /// Whether the file holds no commit.
    pub fn is_empty(&self) -> bool {
        self.at.len == 0
    }

    /// Position of a commit, by binary search in `OIDL` within the range the
    /// fanout gives for its first byte; `None` when it is not in the file.
    pub fn lookup(&self, id: &gix_hash::oid) -> Option<u32> {
        let want = id.as_bytes();
        if want.len() != HASH_LEN {
            return None;
        }
        let first = usize::from(want[0]);
        let mut lo = match first {
            0 => 0,
            _ => self.fanout_at(first - 1)?,
        };
        let mut hi = self.fanout_at(first)?;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.oid_bytes(mid)?.cmp(want) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return u32::try_from(mid).ok(),
            }
        }
        None
    }

    /// Tree, parents (as ids), commit time and topological level of the
    /// commit at `pos`.
    pub fn commit(&self, pos: u32) -> Result<GraphEntry> {
        let pos = self.position(pos)?;
        let id = self.id_at(pos)?;
        let start = self.at.cdat + pos * CDAT_LEN;
        let rec: &[u8; CDAT_LEN] = self
            .data
            .get(start..start + CDAT_LEN)
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| self.error(format!("CDAT has no record {pos}")))?;
        let tree = object_id(&rec[..HASH_LEN]).ok_or_else(|| self.error("bad tree id"))?;
        let word = |at: usize| u32::from_be_bytes([rec[at], rec[at + 1], rec[at + 2], rec[at + 3]]);
        let parents = self.parents(word(20), word(24))?;
        let (high, low) = (word(28), word(32));
        Ok(GraphEntry {
            id,
            tree,
            parents,
            time: (i64::from(high & 3) << 32) | i64::from(low),
            generation: high >> 2,
        })
    }

    /// Convenience: [`CommitGraph::lookup`] and [`CommitGraph::commit`].
    pub fn get(&self, id: &gix_hash::oid) -> Result<Option<GraphEntry>> {
        self.lookup(id).map(|pos| self.commit(pos)).transpose()
    }

    /// Corrected commit date (generation number v2) of the commit at `pos`,
    /// from the `GDA2` and `GDO2` chunks; `None` when the file has no `GDA2`.
    pub fn corrected_date(&self, pos: u32) -> Result<Option<i64>> {
        let time = self.commit(pos)?.time;
        let Some(gda2) = self.at.gda2 else {
            return Ok(None);
        };
        let pos = self.position(pos)?;
        let value = u32_at(&self.data, gda2 + 4 * pos)
            .ok_or_else(|| self.error(format!("GDA2 has no entry {pos}")))?;
        let offset = if value & HIGH_BIT == 0 {
            u64::from(value)
        } else {
            let at = self.at.gdo2.start + 8 * (value & !HIGH_BIT) as usize;
            self.data
                .get(at..at + 8)
                .filter(|_| at + 8 <= self.at.gdo2.end)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| self.error(format!("GDA2 entry {pos} points past GDO2")))?
        };
        i64::try_from(offset)
            .ok()
            .and_then(|o| time.checked_add(o))
            .map(Some)
            .ok_or_else(|| self.error(format!("corrected date of commit {pos} overflows")))
    }

    /// The parents a `CDAT` record names by its two parent words.
    fn parents(&self, first: u32, second: u32) -> Result<Vec<ObjectId>> {
        let mut out = Vec::new();
        if first == NO_PARENT {
            if second != NO_PARENT {
                return Err(self.error("a second parent without a first"));
            }
            return Ok(out);
        }
        out.push(self.parent_id(first)?);
        if second == NO_PARENT {
            return Ok(out);
        }
        if second & HIGH_BIT == 0 {
            out.push(self.parent_id(second)?);
            return Ok(out);
        }
        // An octopus merge: parents 2.. are in EDGE, the last one flagged.
        let mut at = self.at.edge.start + 4 * (second & !HIGH_BIT) as usize;
        loop {
            let value = (self.data.get(..self.at.edge.end))
                .and_then(|edge| u32_at(edge, at))
                .ok_or_else(|| self.error("an EDGE list runs past its chunk"))?;
            out.push(self.parent_id(value & !HIGH_BIT)?);
            if value & HIGH_BIT != 0 {
                return Ok(out);
            }
            at += 4;
        }
    }

    /// `pos` as an index, if it is one.
    fn position(&self, pos: u32) -> Result<usize> {
        let index = pos as usize;
        if index < self.at.len {
            Ok(index)
        } else {
            Err(self.error(format!(
                "position {pos} is past the {} commits",
                self.at.len
            )))
        }
    }

    /// The id of a parent position read from the file.
    fn parent_id(&self, pos: u32) -> Result<ObjectId> {
        match self.position(pos) {
            Ok(index) => self.id_at(index),
            Err(_) => Err(self.error(format!("parent position {pos} is out of range"))),
        }
    }

    fn id_at(&self, index: usize) -> Result<ObjectId> {
        self.oid_bytes(index)
            .and_then(object_id)
            .ok_or_else(|| self.error(format!("OIDL has no entry {index}")))
    }

    fn oid_bytes(&self, index: usize) -> Option<&[u8]> {
        let start = self.at.oids + index * HASH_LEN;
        self.data.get(start..start + HASH_LEN)
    }

    fn fanout_at(&self, byte: usize) -> Option<usize> {
        u32_at(&self.data, self.at.fanout + 4 * byte).map(|v| v as usize)
    }

    fn error(&self, reason: impl Into<String>) -> Error {
        graph_error(&self.path, reason)
    }
}

/// Where the chunks are, once [`parse`] has validated them.
struct Layout {
    len: usize,
    fanout: usize,
    oids: usize,
    cdat: usize,
    edge: Range<usize>,
    gda2: Option<usize>,
    gdo2: Range<usize>,
}

/// Validate header, trailer, chunk table, sizes, fanout and id order.
fn parse(data: &[u8]) -> Result<Layout, String> {
    let count = check_header(data)?;
    check_trailer(data)?;
    let chunks = chunk_table(data, count)?;
    let find = |id: [u8; 4]| {
        chunks
            .iter()
            .find(|(c, _)| *c == id)
            .map(|(_, r)| r.clone())
    };
    let name = |id: [u8; 4]| String::from_utf8_lossy(&id).into_owned();
    let required = |id| find(id).ok_or_else(|| format!("no {} chunk", name(id)));
    let (fanout, oids, cdat) = (required(OIDF)?, required(OIDL)?, required(CDAT)?);
    let len = oids.len() / HASH_LEN;
    if oids.len() % HASH_LEN != 0 || len >= MAX_COMMITS {
        return Err(format!("OIDL has a bad size ({} bytes)", oids.len()));
    }
    let sized = |id: [u8; 4], range: &Range<usize>, want: usize| match range.len() == want {
        true => Ok(()),
        false => Err(format!(
            "{} has {} bytes, not {want}",
            name(id),
            range.len()
        )),
    };
    sized(OIDF, &fanout, 256 * 4)?;
    sized(CDAT, &cdat, len * CDAT_LEN)?;
    let edge = find(EDGE).unwrap_or(0..0);
    sized(EDGE, &edge, edge.len() / 4 * 4)?;
    let gda2 = find(GDA2);
    if let Some(gda2) = &gda2 {
        sized(GDA2, gda2, len * 4)?;
    }
    let gdo2 = find(GDO2).unwrap_or(0..0);
    sized(GDO2, &gdo2, gdo2.len() / 8 * 8)?;
    check_ids(&data[fanout.clone()], &data[oids.clone()])?;
    Ok(Layout {
        len,
        fanout: fanout.start,
        oids: oids.start,
        cdat: cdat.start,
        edge,
        gda2: gda2.map(|r| r.start),
        gdo2,
    })
}

/// Check the header and return the chunk count.
fn check_header(data: &[u8]) -> Result<usize, String> {
    if data.len() < HEADER_LEN + TOC_ENTRY_LEN + HASH_LEN {
        return Err(format!("file too short ({} bytes)", data.len()));
    }
    if &data[..4] != SIGNATURE {
        return Err("bad signature (not CGPH)".into());
    }
    match (data[4], data[5], data[7]) {
        (1, 1, 0) => Ok(usize::from(data[6])),
        (1, 1, bases) => Err(format!(
            "{bases} base graphs: split chains are not supported"
        )),
        (1, hash, _) => Err(format!(
            "hash version {hash} is not supported (only 1, SHA-1)"
        )),
        (version, _, _) => Err(format!("version {version} is not supported (only 1)")),
    }
}

/// Check the SHA-1 trailer over everything before it.
fn check_trailer(data: &[u8]) -> Result<(), String> {
    let (body, trailer) = data.split_at(data.len() - HASH_LEN);
    let mut hasher = gix_hash::hasher(gix_hash::Kind::Sha1);
    hasher.update(body);
    let sum = hasher.try_finalize().map_err(|e| e.to_string())?;
    if sum.as_slice() != trailer {
        return Err(format!("checksum mismatch: the file hashes to {sum}"));
    }
    Ok(())
}

/// A chunk's id and the bytes it covers.
type Chunk = ([u8; 4], Range<usize>);

/// The chunks listed in the table: ids with the byte ranges they cover.
fn chunk_table(data: &[u8], count: usize) -> Result<Vec<Chunk>, String> {
    let table_end = HEADER_LEN + (count + 1) * TOC_ENTRY_LEN;
    let body_end = data.len() - HASH_LEN;
    if table_end > body_end {
        return Err(format!("the table of {count} chunks runs past the end"));
    }
    let mut entries = Vec::with_capacity(count + 1);
    let mut previous = table_end;
    for entry in data[HEADER_LEN..table_end].chunks_exact(TOC_ENTRY_LEN) {
        let id = [entry[0], entry[1], entry[2], entry[3]];
        let mut offset = [0u8; 8];
        offset.copy_from_slice(&entry[4..]);
        let offset = u64::from_be_bytes(offset);
        let offset = usize::try_from(offset)
            .ok()
            .filter(|o| (previous..=body_end).contains(o))
            .ok_or_else(|| format!("chunk offset {offset} is out of order or out of bounds"))?;
        let last = entries.len() == count;
        if (id == [0; 4]) != last {
            return Err("the chunk table's zero id is misplaced".into());
        }
        if entries.iter().any(|(seen, _)| *seen == id) {
            return Err(format!(
                "chunk {} appears twice",
                String::from_utf8_lossy(&id)
            ));
        }
        entries.push((id, offset));
        previous = offset;
    }
    Ok(entries
        .windows(2)
        .map(|pair| (pair[0].0, pair[0].1..pair[1].1))
        .collect())
}

/// Check that the ids are sorted and the fanout counts them exactly.
fn check_ids(fanout: &[u8], oids: &[u8]) -> Result<(), String> {
    let mut counts = [0u32; 256];
    let mut previous: Option<&[u8]> = None;
    for oid in oids.chunks_exact(HASH_LEN) {
        if previous.is_some_and(|p| p >= oid) {
            return Err("OIDL is not in strictly ascending order".into());
        }
        counts[usize::from(oid[0])] += 1;
        previous = Some(oid);
    }
    let mut total = 0u32;
    for (byte, count) in counts.iter().enumerate() {
        total += count;
        let stored = u32_at(fanout, 4 * byte).ok_or("OIDF is too short")?;
        if stored != total {
            return Err(format!(
                "fanout entry {byte} is {stored}, but OIDL has {total} ids up to that byte"
            ));
        }
    }
    Ok(())
}

/// The big-endian `u32` at `at`, if `bytes` holds one there.
fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let word = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([word[0], word[1], word[2], word[3]]))
}

/// A SHA-1 id from 20 bytes.
fn object_id(bytes: &[u8]) -> Option<ObjectId> {
    ObjectId::try_from(bytes)
        .ok()
        .filter(|id| id.as_slice().len() == HASH_LEN)
}

//! Writing `objects/info/commit-graph`.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use gix_hash::ObjectId;

use super::{
    graph_error, graph_path, GraphCommit, GraphStats, CDAT, CDAT_LEN, EDGE, GDA2, GDO2,
    GENERATION_V1_MAX, HASH_LEN, HEADER_LEN, HIGH_BIT, MAX_COMMITS, NO_PARENT, OFFSET_MAX, OIDF,
    OIDL, SIGNATURE, TIME_MAX, TOC_ENTRY_LEN,
};
use crate::error::{Error, Result};

/// Write `objects_dir/info/commit-graph` for these commits.
///
/// The commits may come in any order (duplicates of one id are written
/// once); every parent must be among them, or nothing is written and an
/// [`Error::CommitGraph`] names the missing parent. The file gets the
/// topological level of every commit (generation number v1, in `CDAT`) and
/// its corrected commit date (generation number v2, in `GDA2`/`GDO2`), so
/// stock git uses either generation version.
///
/// Crash-safe: the file is written under a temporary name in
/// `objects_dir/info/`, synced, renamed over `commit-graph`, and the
/// directory is synced; a reader sees the old file or the new one.
pub fn write(objects_dir: &Path, mut commits: Vec<GraphCommit>) -> Result<GraphStats> {
    let path = graph_path(objects_dir);
    commits.sort_by_key(|c| c.id);
    commits.dedup_by(|a, b| a.id == b.id);
    let bytes = encode(&commits).map_err(|reason| graph_error(&path, reason))?;
    persist(objects_dir, &path, &bytes)?;
    Ok(GraphStats {
        commits: commits.len(),
        bytes: bytes.len() as u64,
    })
}

/// The commit time as the file holds it: clamped to 0..=2^34-1.
fn stored_time(time: i64) -> u64 {
    u64::try_from(time).unwrap_or(0).min(TIME_MAX)
}

/// The position of every commit's parents in the sorted `commits`.
fn parent_positions(commits: &[GraphCommit]) -> Result<Vec<Vec<u32>>, String> {
    let position = |id: &ObjectId| commits.binary_search_by(|c| c.id.cmp(id)).ok();
    let mut all = Vec::with_capacity(commits.len());
    for c in commits {
        for id in [&c.id, &c.tree] {
            if id.as_slice().len() != HASH_LEN {
                return Err(format!("{id} is not a SHA-1 id"));
            }
        }
        let mut mine = Vec::with_capacity(c.parents.len());
        for p in &c.parents {
            match position(p) {
                // Positions are below MAX_COMMITS, checked by the caller.
                Some(pos) => mine.push(pos as u32),
                None => return Err(format!("parent {p} of {} is not among the commits", c.id)),
            }
        }
        all.push(mine);
    }
    Ok(all)
}

/// Topological level and corrected commit date of every commit.
struct Generations {
    /// Generation number v1, capped at [`GENERATION_V1_MAX`].
    level: Vec<u32>,
    /// Generation number v2: at least the commit's time, and more than
    /// every parent's corrected date.
    corrected: Vec<u64>,
}

/// Compute [`Generations`] parents first, with an explicit stack (histories
/// are deeper than the call stack), refusing a cycle.
fn generations(parents: &[Vec<u32>], times: &[u64]) -> Result<Generations, String> {
    let n = parents.len();
    // level 0 = not computed yet; computed levels are at least 1.
    let mut level = vec![0u32; n];
    let mut corrected = vec![0u64; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    for start in 0..n {
        if level[start] != 0 {
            continue;
        }
        stack.push(start);
        on_stack[start] = true;
        while let Some(&top) = stack.last() {
            let pending = parents[top]
                .iter()
                .map(|&p| p as usize)
                .find(|&p| level[p] == 0);
            if let Some(p) = pending {
                if on_stack[p] {
                    return Err("the commits' parents form a cycle".into());
                }
                on_stack[p] = true;
                stack.push(p);
                continue;
            }
            let (mut max_level, mut max_date) = (0u32, None::<u64>);
            for &p in &parents[top] {
                max_level = max_level.max(level[p as usize]);
                max_date = max_date.max(Some(corrected[p as usize]));
            }
            level[top] = max_level.saturating_add(1).min(GENERATION_V1_MAX);
            corrected[top] = match max_date {
                Some(d) => times[top].max(d.saturating_add(1)),
                None => times[top],
            };
            on_stack[top] = false;
            stack.pop();
        }
    }
    Ok(Generations { level, corrected })
}

/// The whole file for the sorted, deduplicated `commits`: header, chunk
/// table, chunks, trailer.
fn encode(commits: &[GraphCommit]) -> Result<Vec<u8>, String> {
    if commits.len() >= MAX_COMMITS {
        return Err(format!(
            "{} commits is too many for one file",
            commits.len()
        ));
    }
    let parents = parent_positions(commits)?;
    let times: Vec<u64> = commits.iter().map(|c| stored_time(c.time)).collect();
    let gens = generations(&parents, &times)?;
    let mut fanout = [0u32; 256];
    for c in commits {
        fanout[usize::from(c.id.as_slice()[0])] += 1;
    }
    let mut oidf = Vec::with_capacity(256 * 4);
    let mut total = 0u32;
    for count in fanout {
        total += count;
        oidf.extend_from_slice(&total.to_be_bytes());
    }
    let mut oidl = Vec::with_capacity(commits.len() * HASH_LEN);
    for c in commits {
        oidl.extend_from_slice(c.id.as_slice());
    }
    let (cdat, edge) = commit_data(commits, &parents, &times, &gens.level)?;
    let (gda2, gdo2) = generation_data(&times, &gens.corrected);
    let mut chunks = vec![(OIDF, oidf), (OIDL, oidl), (CDAT, cdat), (GDA2, gda2)];
    if !gdo2.is_empty() {
        chunks.push((GDO2, gdo2));
    }
    if !edge.is_empty() {
        chunks.push((EDGE, edge));
    }
    assemble(&chunks)
}

/// The `CDAT` chunk and the `EDGE` chunk (empty without octopus merges).
fn commit_data(
    commits: &[GraphCommit],
    parents: &[Vec<u32>],
    times: &[u64],
    level: &[u32],
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut cdat = Vec::with_capacity(commits.len() * CDAT_LEN);
    let mut edge: Vec<u8> = Vec::new();
    for (i, c) in commits.iter().enumerate() {
        cdat.extend_from_slice(c.tree.as_slice());
        let first = parents[i].first().copied().unwrap_or(NO_PARENT);
        let second = match parents[i].as_slice() {
            [] | [_] => NO_PARENT,
            [_, p] => *p,
            [_, rest @ ..] => {
                let index = u32::try_from(edge.len() / 4)
                    .ok()
                    .filter(|i| i & HIGH_BIT == 0)
                    .ok_or("too many octopus parents for one file")?;
                for (k, p) in rest.iter().enumerate() {
                    let last = if k + 1 == rest.len() { HIGH_BIT } else { 0 };
                    edge.extend_from_slice(&(p | last).to_be_bytes());
                }
                index | HIGH_BIT
            }
        };
        cdat.extend_from_slice(&first.to_be_bytes());
        cdat.extend_from_slice(&second.to_be_bytes());
        // Level in the top 30 bits, then the 34-bit time.
        let high = (level[i] << 2) | (times[i] >> 32) as u32;
        cdat.extend_from_slice(&high.to_be_bytes());
        cdat.extend_from_slice(&(times[i] as u32).to_be_bytes());
    }
    Ok((cdat, edge))
}

/// The `GDA2` chunk and the `GDO2` chunk (empty when every offset fits 31 bits).
fn generation_data(times: &[u64], corrected: &[u64]) -> (Vec<u8>, Vec<u8>) {
    let mut gda2 = Vec::with_capacity(times.len() * 4);
    let mut gdo2 = Vec::new();
    for (time, date) in times.iter().zip(corrected) {
        let offset = date - time;
        if offset > OFFSET_MAX {
            // At most one entry per commit, so the index fits 31 bits.
            let index = (gdo2.len() / 8) as u32;
            gda2.extend_from_slice(&(index | HIGH_BIT).to_be_bytes());
            gdo2.extend_from_slice(&offset.to_be_bytes());
        } else {
            gda2.extend_from_slice(&(offset as u32).to_be_bytes());
        }
    }
    (gda2, gdo2)
}

/// Header, chunk table, the chunks in order, and the SHA-1 trailer.
fn assemble(chunks: &[([u8; 4], Vec<u8>)]) -> Result<Vec<u8>, String> {
    let body: usize = chunks.iter().map(|(_, data)| data.len()).sum();
    let table = (chunks.len() + 1) * TOC_ENTRY_LEN;
    let mut out = Vec::with_capacity(HEADER_LEN + table + body + HASH_LEN);
    out.extend_from_slice(SIGNATURE);
    out.extend_from_slice(&[1, 1, chunks.len() as u8, 0]);
    let mut offset = (HEADER_LEN + table) as u64;
    for (id, data) in chunks {
        out.extend_from_slice(id);
        out.extend_from_slice(&offset.to_be_bytes());
        offset += data.len() as u64;
    }
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&offset.to_be_bytes());
    for (_, data) in chunks {
        out.extend_from_slice(data);
    }
    let mut hasher = gix_hash::hasher(gix_hash::Kind::Sha1);
    hasher.update(&out);
    let sum = hasher.try_finalize().map_err(|e| e.to_string())?;
    out.extend_from_slice(sum.as_slice());
    Ok(out)
}

/// Put `bytes` at `path` through a synced temporary file and a rename.
fn persist(objects_dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let info = objects_dir.join("info");
    fs::create_dir_all(&info)?;
    let tmp = info.join(format!(
        "tmp_commit_graph_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    let written = (|| -> std::io::Result<()> {
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    drop(file);
    if let Err(e) = written {
        if let Err(rm) = fs::remove_file(&tmp) {
            tracing::warn!(file = %tmp.display(), error = %rm, "could not remove a temporary commit-graph");
        }
        return Err(Error::from(e));
    }
    File::open(&info)?.sync_all()?;
    Ok(())
}

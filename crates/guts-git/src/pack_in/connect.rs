//! What a received pack's objects reference, in time linear in the pack.
//!
//! [`classify`] learns every object's kind from the entry headers alone: a
//! base entry names its kind, a delta has the kind of its base, and each
//! chain is walked once (results are kept per entry), so blobs are never
//! inflated and a chain 60,000 deep costs 60,000 header reads, not
//! 60,000²/2. It also measures every chain, ref-deltas included.
//!
//! [`referenced_outside`] then inflates only the commits, trees and tags.
//! They form delta trees of their own (a delta's base has its kind), which
//! gix-pack's delta-tree traversal resolves top-down, each object from its
//! already resolved base, so each is inflated once whatever the depth.

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;

use gix_hash::ObjectId;
use gix_object::Kind;
use gix_pack::data::entry::Header;
use gix_utils::progress::Discard;

use crate::error::{Error, Result};
use crate::odb::{for_each_tree_entry, parse_commit, tag_target, HASH};

/// A commit, tree or tag of the pack: its pack offset and index position.
pub(super) type Entry = (u64, u32);

/// The non-blob entries of `bundle`, by ascending pack offset. Refuses a
/// pack with a delta chain deeper than `max_depth`.
pub(super) fn classify(bundle: &gix_pack::Bundle, max_depth: u32) -> Result<Vec<Entry>> {
    let headers = Headers {
        bundle,
        file: std::fs::File::open(bundle.pack.path())?,
    };
    let index = &bundle.index;
    let mut by_offset: Vec<Entry> = (0..index.num_objects())
        .map(|i| (index.pack_offset_at_index(i), i))
        .collect();
    by_offset.sort_unstable();
    let mut known: Vec<Option<(Kind, u32)>> = vec![None; by_offset.len()];
    let mut chain = Vec::new();
    for start in 0..by_offset.len() {
        resolve_kind(
            &headers, &by_offset, &mut known, &mut chain, start, max_depth,
        )?;
    }
    let mut keep: Vec<bool> = known
        .iter()
        .map(|k| k.is_some_and(|(kind, _)| kind != Kind::Blob))
        .collect();
    keep_first_chain(&headers, &by_offset, &mut keep, max_depth)?;
    Ok(by_offset
        .into_iter()
        .zip(keep)
        .filter(|(_, keep)| *keep)
        .map(|(e, _)| e)
        .collect())
}

/// Keep the pack's first entry and its bases too: gix-pack's delta tree is
/// built by reading entry headers from the first entry on.
fn keep_first_chain(
    headers: &Headers<'_>,
    by_offset: &[Entry],
    keep: &mut [bool],
    max_depth: u32,
) -> Result<()> {
    let mut at = 0;
    for _ in 0..=max_depth {
        let Some(&(offset, _)) = by_offset.get(at) else {
            return Ok(());
        };
        if let Some(k) = keep.get_mut(at) {
            *k = true;
        }
        match headers.step(offset)? {
            Step::Kind(_) => return Ok(()),
            Step::Base(base) => at = position(by_offset, offset, base)?,
        }
    }
    Err(too_deep(0, max_depth as usize + 1, max_depth))
}

fn position(by_offset: &[Entry], offset: u64, base: u64) -> Result<usize> {
    by_offset
        .binary_search_by_key(&base, |e| e.0)
        .map_err(|_| Error::Pack(format!("delta at pack offset {offset} has no base")))
}

/// Set `known[start]` (kind and depth), walking down its chain until an
/// entry already known or a base object, then filling in the entries passed.
fn resolve_kind(
    headers: &Headers<'_>,
    by_offset: &[Entry],
    known: &mut [Option<(Kind, u32)>],
    chain: &mut Vec<usize>,
    start: usize,
    max_depth: u32,
) -> Result<()> {
    chain.clear();
    let mut at = start;
    let (kind, mut depth) = loop {
        if let Some(k) = known.get(at).copied().flatten() {
            break k;
        }
        let offset = by_offset.get(at).map_or(0, |e| e.0);
        let base_offset = match headers.step(offset)? {
            Step::Kind(kind) => break (kind, 0),
            Step::Base(base) => base,
        };
        chain.push(at);
        if chain.len() > max_depth as usize {
            return Err(too_deep(offset, chain.len(), max_depth));
        }
        at = position(by_offset, offset, base_offset)?;
    };
    if let Some(slot @ None) = known.get_mut(at) {
        *slot = Some((kind, depth));
    }
    for &p in chain.iter().rev() {
        depth += 1;
        if depth > max_depth {
            let offset = by_offset.get(p).map_or(0, |e| e.0);
            return Err(too_deep(offset, depth as usize, max_depth));
        }
        if let Some(slot) = known.get_mut(p) {
            *slot = Some((kind, depth));
        }
    }
    Ok(())
}

/// What the entry header at a pack offset says: a kind, or a delta's base.
enum Step {
    Kind(Kind),
    Base(u64),
}

/// Entry headers of the received pack, read with `pread` rather than through
/// the pack's memory map: every entry's header is read here, and nearly every
/// page of a pack holds one, so reading them through the map would make the
/// whole pack resident in the node (blobs included) for a few bytes a page.
struct Headers<'a> {
    bundle: &'a gix_pack::Bundle,
    file: std::fs::File,
}

/// Longest entry header: a size varint (at most 10 bytes for 64 bits) and
/// an offset varint or a 20-byte base id.
const MAX_HEADER: usize = 40;

impl Headers<'_> {
    fn step(&self, offset: u64) -> Result<Step> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; MAX_HEADER];
        let mut n = 0;
        while n < buf.len() {
            match self.file.read_at(&mut buf[n..], offset + n as u64)? {
                0 => break,
                k => n += k,
            }
        }
        let entry =
            gix_pack::data::Entry::from_bytes(&buf[..n], offset, HASH).map_err(read_error)?;
        let base = match entry.header {
            Header::OfsDelta { base_distance } => entry.checked_base_pack_offset(base_distance),
            Header::RefDelta { base_id } => self
                .bundle
                .index
                .lookup(base_id)
                .map(|i| self.bundle.index.pack_offset_at_index(i)),
            Header::Commit => return Ok(Step::Kind(Kind::Commit)),
            Header::Tree => return Ok(Step::Kind(Kind::Tree)),
            Header::Blob => return Ok(Step::Kind(Kind::Blob)),
            Header::Tag => return Ok(Step::Kind(Kind::Tag)),
        };
        base.map(Step::Base)
            .ok_or_else(|| Error::Pack(format!("delta at pack offset {offset} has no base")))
    }
}

fn read_error(e: impl std::error::Error + 'static) -> Error {
    Error::pack("reading received pack", e)
}

fn too_deep(offset: u64, depth: usize, max_depth: u32) -> Error {
    Error::Limit {
        what: format!("the delta chain at pack offset {offset} is at least {depth} deltas deep"),
        limit: u64::from(max_depth),
    }
}

/// A commit, tree or tag being checked, and what it references outside the pack.
struct Node {
    offset: u64,
    index: u32,
    outside: Vec<ObjectId>,
    failed: Option<Error>,
}

/// The ids that the `non_blobs` of `bundle` reference and the pack lacks.
/// Each is inflated once; `alloc_limit` bounds each object's size.
pub(super) fn referenced_outside(
    bundle: &gix_pack::Bundle,
    non_blobs: &[Entry],
    alloc_limit: Option<usize>,
) -> Result<HashSet<ObjectId>> {
    if non_blobs.is_empty() {
        return Ok(HashSet::new());
    }
    let index = &bundle.index;
    let interrupt = AtomicBool::new(false);
    let tree = gix_pack::cache::delta::Tree::from_offsets_in_pack(
        bundle.pack.path(),
        non_blobs.iter().map(|&(offset, index)| Node {
            offset,
            index,
            outside: Vec::new(),
            failed: None,
        }),
        &|n| n.offset,
        &|id| Ok(index.lookup(id).map(|i| index.pack_offset_at_index(i))),
        &mut Discard,
        &interrupt,
        HASH,
    )
    .map_err(|e| Error::pack("checking received pack", e))?;
    let outcome = tree
        .traverse(
            |range, pack: &gix_pack::data::File| pack.entry_slice(range),
            &bundle.pack,
            bundle.pack.pack_end() as u64,
            |node: &mut Node, _: &dyn gix_utils::progress::Progress, ctx| {
                inspect(index, node, ctx.entry.header.as_kind(), ctx.decompressed);
                Ok(())
            },
            gix_pack::cache::delta::traverse::Options {
                object_progress: Box::new(Discard),
                size_progress: &mut Discard,
                thread_limit: None,
                should_interrupt: &interrupt,
                object_hash: HASH,
                alloc_limit_bytes: alloc_limit,
            },
        )
        .map_err(|e| Error::pack("checking received pack", e))?;
    let mut outside = HashSet::new();
    let mut nodes: Vec<Node> = outcome
        .roots
        .into_iter()
        .chain(outcome.children)
        .map(|item| item.data)
        .collect();
    nodes.sort_unstable_by_key(|n| n.offset);
    for node in nodes {
        if let Some(e) = node.failed {
            return Err(e);
        }
        outside.extend(node.outside);
    }
    Ok(outside)
}

/// Note in `node` what the object `data` (of `kind`) references outside the pack.
fn inspect(index: &gix_pack::index::File, node: &mut Node, kind: Option<Kind>, data: &[u8]) {
    let id = index.oid_at_index(node.index).to_owned();
    let outside = &mut node.outside;
    let mut note = |r: ObjectId| {
        if index.lookup(r).is_none() {
            outside.push(r);
        }
    };
    let parsed = match kind {
        Some(Kind::Commit) => parse_commit(&id, data).map(|info| {
            note(info.tree);
            info.parents.into_iter().for_each(&mut note);
        }),
        Some(Kind::Tree) => for_each_tree_entry(&id, data, |e, _| note(e)),
        Some(Kind::Tag) => tag_target(&id, data).map(note),
        Some(Kind::Blob) | None => Ok(()),
    };
    if let Err(e) = parsed {
        node.failed = Some(e);
    }
}

//! Shallow clones: where a fetch cuts history, and what the client learns
//! about its new boundary (`shallow` / `unshallow` lines).
//!
//! Semantics follow git's `upload-pack.c` and `shallow.c`:
//! - `deepen N`: commits at depth N from the wants (wants are depth 1,
//!   counting along the shortest path) become the boundary;
//!   `deepen-relative` adds the depth of the client's current boundary;
//!   `deepen 2147483647` (`--unshallow`) removes the boundary altogether.
//! - `deepen-since T` / `deepen-not REF`: the commits reachable from the wants
//!   through commits not older than T and not reachable from REF; those with
//!   a parent outside that set become the boundary.
//!
//! A client boundary commit that ends up inside the new history is
//! "unshallowed": its parents are sent (they become wants) while the commit
//! itself, which the client has, is treated as common.

use std::collections::{HashMap, HashSet, VecDeque};

use gix_hash::ObjectId;

use crate::error::{Error, Result};
use crate::odb::ObjectStore;

/// `deepen` value git uses for `--unshallow`.
pub const INFINITE_DEPTH: u32 = 0x7fff_ffff;

/// How the client asked to deepen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Deepen {
    /// No deepening requested (the client may still be shallow).
    #[default]
    None,
    /// `deepen N` (with `deepen-relative` when `relative`).
    Depth {
        /// Requested depth.
        depth: u32,
        /// Depth counts from the client's current boundary.
        relative: bool,
    },
    /// `deepen-since` and/or `deepen-not`.
    RevList {
        /// Oldest commit time to include.
        since: Option<i64>,
        /// History reachable from these commits is excluded.
        not: Vec<ObjectId>,
    },
}

/// The outcome of shallow processing for one fetch.
#[derive(Debug, Default, Clone)]
pub struct ShallowPlan {
    /// New boundary commits to announce with `shallow` lines.
    pub shallow: Vec<ObjectId>,
    /// Client boundary commits to announce with `unshallow` lines.
    pub unshallow: Vec<ObjectId>,
    /// Commits whose parents the pack must not include.
    pub cut: HashSet<ObjectId>,
    /// Extra wants: parents of unshallowed commits.
    pub extra_wants: Vec<ObjectId>,
    /// Extra common commits: the unshallowed commits themselves.
    pub extra_haves: Vec<ObjectId>,
    /// Whether any deepening was requested (then the shallow list is sent).
    pub deepened: bool,
}

/// Compute the shallow plan for `wants` (already peeled to commits where
/// possible), the client's current boundary `client` and the request.
pub fn plan(
    odb: &ObjectStore,
    wants: &[ObjectId],
    client: &[ObjectId],
    deepen: &Deepen,
) -> Result<ShallowPlan> {
    let client_set: HashSet<ObjectId> = client.iter().copied().collect();
    let mut plan = ShallowPlan {
        cut: client_set.clone(),
        ..ShallowPlan::default()
    };
    if matches!(deepen, Deepen::None) {
        // Nothing to read: a clone served from a stored pack touches no object.
        return Ok(plan);
    }
    let mut buf = Vec::new();
    let heads = peel_heads(odb, wants, &mut buf)?;
    let boundary = match deepen {
        Deepen::None => return Ok(plan),
        Deepen::Depth { depth, .. } if *depth >= INFINITE_DEPTH => Some(Boundary {
            border: Vec::new(),
            not_shallow: client_set.clone(),
        }),
        Deepen::Depth { depth, relative } => {
            depth_boundary(odb, &heads, client, *depth, *relative, &mut buf)?
        }
        Deepen::RevList { since, not } => {
            Some(rev_list_boundary(odb, &heads, *since, not, &mut buf)?)
        }
    };
    plan.deepened = true;
    match boundary {
        Some(boundary) => apply_boundary(odb, plan, boundary, client, &client_set, &mut buf),
        None => Ok(plan),
    }
}

/// Where the new history ends.
struct Boundary {
    /// Commits whose parents are not sent.
    border: Vec<ObjectId>,
    /// Commits inside the new history, whose parents are sent.
    not_shallow: HashSet<ObjectId>,
}

/// The boundary of `deepen N`: commits at depth N from the heads. With
/// `deepen-relative` the depth adds to the client's current one; `None`
/// when none of the client's boundary commits is reachable from the heads
/// (then nothing changes).
fn depth_boundary(
    odb: &ObjectStore,
    heads: &[ObjectId],
    client: &[ObjectId],
    mut depth: u32,
    relative: bool,
    buf: &mut Vec<u8>,
) -> Result<Option<Boundary>> {
    if relative {
        // Only `deepen-relative` needs the client's current depth,
        // hence a walk of the whole history.
        let depths = commit_depths(odb, heads, None, buf)?;
        match client.iter().filter_map(|c| depths.get(c)).min() {
            Some(cur) => depth = depth.saturating_add(*cur),
            None => return Ok(None),
        }
    }
    let limited = commit_depths(odb, heads, Some(depth), buf)?;
    let border = limited
        .iter()
        .filter(|(_, d)| **d >= depth)
        .map(|(c, _)| *c)
        .collect();
    let not_shallow = limited
        .iter()
        .filter(|(_, d)| **d < depth)
        .map(|(c, _)| *c)
        .collect();
    Ok(Some(Boundary {
        border,
        not_shallow,
    }))
}

/// The boundary of `deepen-since` / `deepen-not`: the commits reachable
/// from the heads through commits not older than `since` and not reachable
/// from `not`; those with a parent outside that set form the border.
fn rev_list_boundary(
    odb: &ObjectStore,
    heads: &[ObjectId],
    since: Option<i64>,
    not: &[ObjectId],
    buf: &mut Vec<u8>,
) -> Result<Boundary> {
    let excluded = reachable(odb, not, buf)?;
    let mut selected = HashSet::new();
    let mut parents_of = HashMap::new();
    let mut queue: VecDeque<ObjectId> = heads.iter().copied().collect();
    while let Some(c) = queue.pop_front() {
        if selected.contains(&c) || excluded.contains(&c) {
            continue;
        }
        let info = odb.commit(&c, buf)?;
        if since.is_some_and(|t| info.time < t) {
            continue;
        }
        selected.insert(c);
        queue.extend(info.parents.iter().copied());
        parents_of.insert(c, info.parents);
    }
    if selected.is_empty() {
        return Err(Error::Protocol(
            "no commits selected for shallow requests".into(),
        ));
    }
    let border: Vec<ObjectId> = selected
        .iter()
        .filter(|c| {
            parents_of
                .get(*c)
                .is_some_and(|ps| ps.iter().any(|p| !selected.contains(p)))
        })
        .copied()
        .collect();
    let border_set: HashSet<_> = border.iter().copied().collect();
    let not_shallow = selected.difference(&border_set).copied().collect();
    Ok(Boundary {
        border,
        not_shallow,
    })
}

/// Fill `plan` from the new boundary: new `shallow` commits (those the
/// client does not already have as boundary), the cut, and the client
/// boundary commits that become `unshallow` (their parents are then sent).
fn apply_boundary(
    odb: &ObjectStore,
    mut plan: ShallowPlan,
    boundary: Boundary,
    client: &[ObjectId],
    client_set: &HashSet<ObjectId>,
    buf: &mut Vec<u8>,
) -> Result<ShallowPlan> {
    let Boundary {
        border,
        not_shallow,
    } = boundary;
    for c in border {
        if !client_set.contains(&c) && !not_shallow.contains(&c) {
            plan.shallow.push(c);
        }
        plan.cut.insert(c);
    }
    plan.shallow.sort();
    for c in client {
        if not_shallow.contains(c) {
            plan.unshallow.push(*c);
            plan.extra_haves.push(*c);
            plan.extra_wants.extend(odb.commit(c, buf)?.parents);
        }
    }
    Ok(plan)
}

fn peel_heads(odb: &ObjectStore, wants: &[ObjectId], buf: &mut Vec<u8>) -> Result<Vec<ObjectId>> {
    let mut heads = Vec::new();
    for w in wants {
        let (id, kind) = odb.peel(w, buf)?;
        if kind == gix_object::Kind::Commit && !heads.contains(&id) {
            heads.push(id);
        }
    }
    Ok(heads)
}

/// Smallest depth of every commit reachable from `heads` (heads are 1).
/// With `limit`, commits at that depth are recorded but not expanded.
fn commit_depths(
    odb: &ObjectStore,
    heads: &[ObjectId],
    limit: Option<u32>,
    buf: &mut Vec<u8>,
) -> Result<HashMap<ObjectId, u32>> {
    let mut depths = HashMap::new();
    let mut queue = VecDeque::new();
    for h in heads {
        if depths.insert(*h, 1).is_none() {
            queue.push_back(*h);
        }
    }
    while let Some(c) = queue.pop_front() {
        let d = depths.get(&c).copied().unwrap_or(1);
        if limit.is_some_and(|l| d >= l) {
            continue;
        }
        for p in odb.commit(&c, buf)?.parents {
            if let std::collections::hash_map::Entry::Vacant(e) = depths.entry(p) {
                e.insert(d + 1);
                queue.push_back(p);
            }
        }
    }
    Ok(depths)
}

/// Every commit reachable from `tips`.
fn reachable(odb: &ObjectStore, tips: &[ObjectId], buf: &mut Vec<u8>) -> Result<HashSet<ObjectId>> {
    let mut seen = HashSet::new();
    let mut stack = peel_heads(odb, tips, buf)?;
    while let Some(c) = stack.pop() {
        if seen.insert(c) {
            stack.extend(odb.commit(&c, buf)?.parents);
        }
    }
    Ok(seen)
}

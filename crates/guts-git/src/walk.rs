//! History walks: which objects a fetch must send, and ancestry checks.
//!
//! The walk is the one `git rev-list --objects WANTS --not HAVES` does:
//! commits are visited newest first from the wants and the haves together,
//! "uninteresting" marks flow from the haves to their ancestors, and the walk
//! stops once only uninteresting commits are left in the queue. Trees of the
//! boundary commits are marked as already present on the client, so a tree
//! or blob the client has is never sent. Only the commits between the wants
//! and the haves are visited, never the whole history.

use std::collections::{BinaryHeap, HashMap, HashSet};

use gix_hash::ObjectId;

use crate::error::Result;
use crate::filter::Filter;
use crate::odb::{for_each_tree_entry, tag_target, ObjectStore};

/// How many extra commits to visit after the queue became all-uninteresting,
/// to tolerate clock skew between commits (git's `SLOP`).
const SLOP: usize = 5;

#[derive(Default, Clone, Copy)]
struct Flags {
    uninteresting: bool,
    visited: bool,
}

struct Walker<'a> {
    odb: &'a ObjectStore,
    shallow: &'a HashSet<ObjectId>,
    buf: Vec<u8>,
    flags: HashMap<ObjectId, Flags>,
    parents: HashMap<ObjectId, Vec<ObjectId>>,
    trees: HashMap<ObjectId, ObjectId>,
    queue: BinaryHeap<(i64, u64, ObjectId)>,
    seq: u64,
}

impl<'a> Walker<'a> {
    fn new(odb: &'a ObjectStore, shallow: &'a HashSet<ObjectId>) -> Self {
        Walker {
            odb,
            shallow,
            buf: Vec::new(),
            flags: HashMap::new(),
            parents: HashMap::new(),
            trees: HashMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
        }
    }

    fn push(&mut self, id: ObjectId, uninteresting: bool) -> Result<()> {
        let entry = self.flags.entry(id).or_default();
        let newly_uninteresting = uninteresting && !entry.uninteresting;
        if uninteresting {
            entry.uninteresting = true;
        }
        if entry.visited {
            if newly_uninteresting {
                self.propagate_uninteresting(id);
            }
            return Ok(());
        }
        let already_queued = self.trees.contains_key(&id);
        if !already_queued {
            let info = self.odb.commit(&id, &mut self.buf)?;
            self.trees.insert(id, info.tree);
            // A shallow commit's parents are cut off: the walk ends there.
            let parents = if self.shallow.contains(&id) {
                Vec::new()
            } else {
                info.parents
            };
            self.parents.insert(id, parents);
            self.seq += 1;
            // Newest first; among equal times, first pushed first.
            self.queue.push((info.time, u64::MAX - self.seq, id));
        }
        Ok(())
    }

    /// Mark the known ancestors of an already visited commit uninteresting.
    fn propagate_uninteresting(&mut self, id: ObjectId) {
        let mut stack = vec![id];
        while let Some(c) = stack.pop() {
            for p in self.parents.get(&c).cloned().unwrap_or_default() {
                let f = self.flags.entry(p).or_default();
                if !f.uninteresting {
                    f.uninteresting = true;
                    if f.visited {
                        stack.push(p);
                    }
                }
            }
        }
    }

    fn all_queued_uninteresting(&self) -> bool {
        self.queue
            .iter()
            .all(|(_, _, id)| self.flags.get(id).is_some_and(|f| f.uninteresting))
    }

    /// Visit commits; returns the interesting ones in visit order.
    fn run(&mut self) -> Result<Vec<ObjectId>> {
        let mut order = Vec::new();
        let mut slop = SLOP;
        while let Some((_, _, id)) = self.queue.pop() {
            let flags = {
                let f = self.flags.entry(id).or_default();
                f.visited = true;
                *f
            };
            let parents = self.parents.get(&id).cloned().unwrap_or_default();
            for p in parents {
                self.push(p, flags.uninteresting)?;
            }
            if !flags.uninteresting {
                order.push(id);
            }
            if self.all_queued_uninteresting() {
                if slop == 0 {
                    break;
                }
                slop -= 1;
            } else {
                slop = SLOP;
            }
        }
        Ok(order
            .into_iter()
            .filter(|id| self.flags.get(id).is_some_and(|f| !f.uninteresting))
            .collect())
    }
}

/// The objects a fetch must send, in the order commits, then their trees and blobs.
#[derive(Debug, Default)]
pub struct ObjectsToSend {
    /// Every object id, each once.
    pub ids: Vec<ObjectId>,
    /// How many of them are commits.
    pub commits: usize,
}

/// What a fetch asks for, after negotiation and shallow processing.
#[derive(Debug, Default, Clone, Copy)]
pub struct WalkSpec<'a> {
    /// Objects the client named (commits, tags, trees or blobs); always sent.
    pub wants: &'a [ObjectId],
    /// Commits the client has: they and their ancestors are not sent.
    pub haves: &'a [ObjectId],
    /// Commits whose parents are cut off (the client's shallow boundary).
    pub shallow: Option<&'a HashSet<ObjectId>>,
    /// The partial clone filter, if any.
    pub filter: Option<&'a Filter>,
}

/// Compute the objects reachable from `wants` but not from `haves`,
/// honouring the shallow boundary and the filter.
pub fn objects_to_send(odb: &ObjectStore, spec: WalkSpec<'_>) -> Result<ObjectsToSend> {
    let empty = HashSet::new();
    let shallow = spec.shallow.unwrap_or(&empty);
    let mut buf = Vec::new();
    let mut walker = Walker::new(odb, shallow);
    let mut emitted: HashSet<ObjectId> = HashSet::new();
    let wants = classify_wants(odb, spec.wants, &mut walker, &mut emitted, &mut buf)?;
    for have in spec.haves {
        walker.push(*have, true)?;
    }
    let commits = walker.run()?;
    let present = present_at_boundary(odb, &walker, &commits, spec.haves, &mut buf)?;

    let mut out = ObjectsToSend::default();
    let keep_commit = match spec.filter {
        Some(f) => f.keeps(gix_object::Kind::Commit, || Ok(0), 0)?,
        None => true,
    };
    for c in &commits {
        if (keep_commit || wants.commits.contains(c)) && emitted.insert(*c) {
            out.ids.push(*c);
        }
    }
    out.commits = out.ids.len();
    out.ids.extend(wants.tags);
    let mut roots: Vec<(ObjectId, bool)> = commits
        .iter()
        .filter_map(|c| walker.trees.get(c).map(|t| (*t, false)))
        .collect();
    roots.extend(wants.trees.into_iter().map(|t| (t, true)));
    let mut trees = TreeWalk {
        odb,
        present: &present,
        emitted: &mut emitted,
        filter: spec.filter,
        depth_seen: HashMap::new(),
        buf,
    };
    for (root, user_given) in roots {
        trees.walk(root, user_given, &mut out.ids)?;
    }
    for b in wants.blobs {
        if emitted.insert(b) {
            out.ids.push(b);
        }
    }
    Ok(out)
}

/// The wants sorted by kind once annotated tags are peeled.
#[derive(Default)]
struct ClassifiedWants {
    /// Commits named directly or through tags; sent even when a filter drops commits.
    commits: HashSet<ObjectId>,
    /// Trees named directly or through tags; the filter does not apply to them.
    trees: Vec<ObjectId>,
    /// Blobs named directly or through tags; always sent.
    blobs: Vec<ObjectId>,
    /// Every tag on the way, in order, each once.
    tags: Vec<ObjectId>,
}

/// Peel each want through its tag chain: tags are recorded (and marked
/// `emitted`), commits start the walk, trees and blobs are kept aside.
fn classify_wants(
    odb: &ObjectStore,
    wants: &[ObjectId],
    walker: &mut Walker<'_>,
    emitted: &mut HashSet<ObjectId>,
    buf: &mut Vec<u8>,
) -> Result<ClassifiedWants> {
    let mut out = ClassifiedWants::default();
    for want in wants {
        let mut id = *want;
        for _ in 0..crate::limits::MAX_TAG_CHAIN {
            let data = odb.read(&id, buf)?;
            match data.kind {
                gix_object::Kind::Tag => {
                    if emitted.insert(id) {
                        out.tags.push(id);
                    }
                    id = tag_target(&id, data.data)?;
                    continue;
                }
                gix_object::Kind::Commit => {
                    out.commits.insert(id);
                    walker.push(id, false)?;
                }
                gix_object::Kind::Tree => out.trees.push(id),
                gix_object::Kind::Blob => out.blobs.push(id),
            }
            break;
        }
    }
    Ok(out)
}

/// Everything the client has at the boundary: the haves and the
/// uninteresting parents of the commits sent (except across the shallow
/// cut), with their whole trees.
fn present_at_boundary(
    odb: &ObjectStore,
    walker: &Walker<'_>,
    commits: &[ObjectId],
    haves: &[ObjectId],
    buf: &mut Vec<u8>,
) -> Result<HashSet<ObjectId>> {
    let mut present: HashSet<ObjectId> = HashSet::new();
    let mut boundary: Vec<ObjectId> = haves.to_vec();
    for c in commits {
        if walker.shallow.contains(c) {
            continue;
        }
        for p in walker.parents.get(c).map(Vec::as_slice).unwrap_or_default() {
            if walker.flags.get(p).is_some_and(|f| f.uninteresting) {
                boundary.push(*p);
            }
        }
    }
    for b in boundary {
        present.insert(b);
        if let Some(tree) = walker.trees.get(&b).copied() {
            mark_tree(odb, tree, &mut present, buf)?;
        }
    }
    Ok(present)
}

/// Walks trees below commits, emitting what the filter keeps and the client lacks.
struct TreeWalk<'a> {
    odb: &'a ObjectStore,
    present: &'a HashSet<ObjectId>,
    emitted: &'a mut HashSet<ObjectId>,
    filter: Option<&'a Filter>,
    /// Smallest depth each tree was visited at (any depth = 0 without a depth filter).
    depth_seen: HashMap<ObjectId, u64>,
    buf: Vec<u8>,
}

impl TreeWalk<'_> {
    fn walk(&mut self, root: ObjectId, user_given: bool, out: &mut Vec<ObjectId>) -> Result<()> {
        let uses_depth = self.filter.is_some_and(Filter::uses_depth);
        let mut stack = vec![(root, 0u64, user_given)];
        while let Some((tree, depth, user_given)) = stack.pop() {
            if self.present.contains(&tree) {
                continue;
            }
            let depth = if uses_depth { depth } else { 0 };
            if self
                .depth_seen
                .get(&tree)
                .is_some_and(|&seen| seen <= depth)
            {
                continue;
            }
            self.depth_seen.insert(tree, depth);
            let keep = match self.filter {
                Some(f) if !user_given => f.keeps(gix_object::Kind::Tree, || Ok(0), depth)?,
                _ => true,
            };
            if keep && self.emitted.insert(tree) {
                out.push(tree);
            }
            if self.filter.is_some_and(|f| !f.descends(depth)) {
                continue;
            }
            let data = self.odb.read(&tree, &mut self.buf)?;
            let mut blobs = Vec::new();
            for_each_tree_entry(&tree, data.data, |id, is_tree| {
                if is_tree {
                    stack.push((id, depth + 1, false));
                } else {
                    blobs.push(id);
                }
            })?;
            for blob in blobs {
                if self.present.contains(&blob) || self.emitted.contains(&blob) {
                    continue;
                }
                let keep = match self.filter {
                    Some(f) => {
                        f.keeps(gix_object::Kind::Blob, || self.odb.size(&blob), depth + 1)?
                    }
                    None => true,
                };
                if keep {
                    self.emitted.insert(blob);
                    out.push(blob);
                }
            }
        }
        Ok(())
    }
}

/// Mark a tree and everything below it as present on the client.
/// Subtrees already marked are not entered again.
fn mark_tree(
    odb: &ObjectStore,
    root: ObjectId,
    present: &mut HashSet<ObjectId>,
    buf: &mut Vec<u8>,
) -> Result<()> {
    present.insert(root);
    let mut stack = vec![root];
    while let Some(tree) = stack.pop() {
        let data = odb.read(&tree, buf)?;
        let mut subtrees = Vec::new();
        for_each_tree_entry(&tree, data.data, |id, is_tree| {
            if present.insert(id) && is_tree {
                subtrees.push(id);
            }
        })?;
        stack.extend(subtrees);
    }
    Ok(())
}

/// Whether `ancestor` is reachable from `descendant` (or equal to it).
pub fn is_ancestor(odb: &ObjectStore, ancestor: ObjectId, descendant: ObjectId) -> Result<bool> {
    if ancestor == descendant {
        return Ok(true);
    }
    let mut buf = Vec::new();
    let mut seen = HashSet::new();
    let mut queue = BinaryHeap::new();
    // With generation numbers (commit-graph), a commit at or below the
    // ancestor's generation cannot reach it: the walk stops there.
    let floor = odb.commit(&ancestor, &mut buf)?.generation;
    let first = odb.commit(&descendant, &mut buf)?;
    queue.push((first.time, descendant, first.parents, first.generation));
    // Newest first, to the end if need be: commit dates are the committer's
    // claim, so no date can prove the ancestor is not further down.
    while let Some((_, id, parents, generation)) = queue.pop() {
        if id == ancestor {
            return Ok(true);
        }
        if let (Some(g), Some(floor)) = (generation, floor) {
            if g <= floor {
                continue;
            }
        }
        for p in parents {
            if seen.insert(p) {
                let info = odb.commit(&p, &mut buf)?;
                queue.push((info.time, p, info.parents, info.generation));
            }
        }
    }
    Ok(false)
}

/// Negotiation state of one fetch: which client commits we know are common.
pub struct Negotiation<'a> {
    odb: &'a ObjectStore,
    buf: Vec<u8>,
    they_have: HashSet<ObjectId>,
    oldest_have: Option<i64>,
    /// The lowest generation among the acknowledged commits, while every one
    /// of them has one (is in the commit-graph); `None` once one has not.
    lowest_generation: Option<u32>,
    /// Whether some acknowledged commit is outside the commit-graph.
    ungraphed_have: bool,
    /// The common objects, in the order the client named them, as git's
    /// `have_obj` counts them (what v2 acknowledges, and what decides v0's
    /// lone `ACK` and `NAK`): a commit once, and not when it was already
    /// known as the parent of an earlier one; another object each time.
    pub common: Vec<ObjectId>,
    reachable_cache: HashMap<ObjectId, bool>,
}

impl<'a> Negotiation<'a> {
    /// Start negotiating against `odb`.
    pub fn new(odb: &'a ObjectStore) -> Self {
        Negotiation {
            odb,
            buf: Vec::new(),
            they_have: HashSet::new(),
            oldest_have: None,
            lowest_generation: None,
            ungraphed_have: false,
            common: Vec::new(),
            reachable_cache: HashMap::new(),
        }
    }

    /// Process one `have`; returns whether we have the object (then it is common).
    pub fn have(&mut self, id: ObjectId) -> Result<bool> {
        let Some(kind) = self.odb.probe_kind(&id)? else {
            return Ok(false);
        };
        let is_commit = kind == gix_object::Kind::Commit;
        let known = is_commit && self.they_have.contains(&id);
        if is_commit && !known {
            let info = self.odb.commit(&id, &mut self.buf)?;
            self.they_have.insert(id);
            self.oldest_have = Some(self.oldest_have.map_or(info.time, |t| t.min(info.time)));
            self.note_generation(info.generation);
            // The parents count as had too (as in git); their generations
            // bound the search as well.
            for p in &info.parents {
                let generation = if self.odb.has_graph() {
                    self.odb.commit(p, &mut self.buf)?.generation
                } else {
                    None
                };
                self.note_generation(generation);
            }
            self.they_have.extend(info.parents);
            self.reachable_cache.retain(|_, v| *v);
        }
        if !known {
            self.common.push(id);
        }
        Ok(true)
    }

    /// Whether every want has a common commit among its ancestors, so that
    /// the client can stop sending haves (git's `ok_to_give_up`).
    pub fn ok_to_give_up(&mut self, wants: &[ObjectId]) -> Result<bool> {
        let Some(oldest) = self.oldest_have else {
            return Ok(false);
        };
        for want in wants {
            if let Some(&known) = self.reachable_cache.get(want) {
                if !known {
                    return Ok(false);
                }
                continue;
            }
            let reach = self.reaches_common(*want, oldest)?;
            self.reachable_cache.insert(*want, reach);
            if !reach {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn note_generation(&mut self, g: Option<u32>) {
        match g {
            Some(g) => {
                self.lowest_generation = Some(self.lowest_generation.map_or(g, |l| l.min(g)))
            }
            None => self.ungraphed_have = true,
        }
    }

    /// A commit of generation `g` reaches only commits of lower generations:
    /// at or below every had commit's, it reaches none of them (and it is
    /// not one of them: that was checked first).
    fn below_every_have(&self, g: Option<u32>) -> bool {
        match (g, self.lowest_generation) {
            (Some(g), Some(lowest)) => !self.ungraphed_have && g <= lowest,
            _ => false,
        }
    }

    fn reaches_common(&mut self, want: ObjectId, oldest: i64) -> Result<bool> {
        let (want, kind) = self.odb.peel(&want, &mut self.buf)?;
        if kind != gix_object::Kind::Commit {
            return Ok(true);
        }
        let mut seen = HashSet::new();
        let mut stack = vec![want];
        while let Some(c) = stack.pop() {
            if self.they_have.contains(&c) {
                return Ok(true);
            }
            let info = self.odb.commit(&c, &mut self.buf)?;
            if info.time < oldest || self.below_every_have(info.generation) {
                continue;
            }
            for p in info.parents {
                if seen.insert(p) {
                    stack.push(p);
                }
            }
        }
        Ok(false)
    }
}

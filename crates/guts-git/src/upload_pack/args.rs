//! What a fetch asks for, in either protocol version, and the checks on it.

use std::collections::HashSet;

use gix_hash::ObjectId;

use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::limits::{MAX_DEEPEN_NOT, MAX_HAVES, MAX_WANTS};
use crate::odb::ObjectStore;
use crate::pktline::SideBandMode;
use crate::shallow::Deepen;
use crate::storage::Ref;

/// The arguments of one fetch request.
#[derive(Debug, Default)]
pub(super) struct FetchArgs {
    pub wants: Vec<ObjectId>,
    /// v2 `want-ref`: the refs named and their current values.
    pub want_refs: Vec<(String, ObjectId)>,
    pub haves: Vec<ObjectId>,
    pub done: bool,
    pub client_shallow: Vec<ObjectId>,
    pub depth: Option<u32>,
    pub deepen_relative: bool,
    pub deepen_since: Option<i64>,
    pub deepen_not: Vec<String>,
    pub filter: Option<Filter>,
    pub sideband: Option<SideBandMode>,
    pub progress: bool,
    pub include_tag: bool,
    pub ofs_delta: bool,
    pub wait_for_done: bool,
    pub sideband_all: bool,
}

pub(super) fn parse_oid(s: &str, what: &str) -> Result<ObjectId> {
    ObjectId::from_hex(s.as_bytes())
        .map_err(|_| Error::Protocol(format!("invalid object id in {what}: {s:?}")))
}

impl FetchArgs {
    pub fn new() -> Self {
        FetchArgs {
            progress: true,
            ..FetchArgs::default()
        }
    }

    pub fn add_want(&mut self, id: ObjectId) -> Result<()> {
        if self.wants.len() >= MAX_WANTS {
            return Err(Error::TooLarge(format!("more than {MAX_WANTS} wants")));
        }
        if !self.wants.contains(&id) {
            self.wants.push(id);
        }
        Ok(())
    }

    pub fn add_have(&mut self, id: ObjectId) -> Result<()> {
        if self.haves.len() >= MAX_HAVES {
            return Err(Error::TooLarge(format!("more than {MAX_HAVES} haves")));
        }
        self.haves.push(id);
        Ok(())
    }

    /// Handle a shallow/deepen/filter line; `Ok(false)` if it is none of them.
    pub fn shallow_or_filter_line(&mut self, line: &str) -> Result<bool> {
        if let Some(hex) = line.strip_prefix("shallow ") {
            if self.client_shallow.len() >= MAX_HAVES {
                return Err(Error::TooLarge("too many shallow lines".into()));
            }
            self.client_shallow.push(parse_oid(hex, "shallow")?);
        } else if let Some(n) = line.strip_prefix("deepen ") {
            let depth = n
                .parse::<u32>()
                .ok()
                .filter(|d| *d > 0)
                .ok_or_else(|| Error::Protocol(format!("Invalid deepen: {line}")))?;
            self.depth = Some(depth);
        } else if let Some(t) = line.strip_prefix("deepen-since ") {
            let t = t
                .parse::<i64>()
                .ok()
                .filter(|t| *t != -1)
                .ok_or_else(|| Error::Protocol(format!("Invalid deepen-since: {line}")))?;
            self.deepen_since = Some(t);
        } else if let Some(r) = line.strip_prefix("deepen-not ") {
            if self.deepen_not.len() >= MAX_DEEPEN_NOT {
                return Err(Error::TooLarge(format!(
                    "more than {MAX_DEEPEN_NOT} deepen-not lines"
                )));
            }
            self.deepen_not.push(r.to_owned());
        } else if let Some(spec) = line.strip_prefix("filter ") {
            self.filter = Some(super::parse_filter(spec, &self.filter)?);
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    /// The deepen request, with `deepen-not` names resolved against `refs`.
    pub fn deepen(&self, refs: &[Ref]) -> Result<Deepen> {
        let rev_list = self.deepen_since.is_some() || !self.deepen_not.is_empty();
        match (self.depth, rev_list) {
            (Some(_), true) => Err(Error::Protocol(
                "deepen and deepen-since (or deepen-not) cannot be used together".into(),
            )),
            (Some(depth), false) => Ok(Deepen::Depth {
                depth,
                relative: self.deepen_relative,
            }),
            (None, true) => {
                let mut not = Vec::new();
                for name in &self.deepen_not {
                    not.push(expand_ref(refs, name)?);
                }
                Ok(Deepen::RevList {
                    since: self.deepen_since,
                    not,
                })
            }
            (None, false) => Ok(Deepen::None),
        }
    }

    /// The client's shallow commits that exist here (unknown ones are ignored, as git does).
    pub fn known_client_shallow(&self, odb: &ObjectStore) -> Result<Vec<ObjectId>> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for c in &self.client_shallow {
            match odb.kind(c, &mut buf)? {
                None => {}
                Some(gix_object::Kind::Commit) => out.push(*c),
                Some(_) => return Err(Error::Protocol(format!("invalid shallow object {c}"))),
            }
        }
        Ok(out)
    }
}

/// Resolve a short or full ref name the way git's `expand_ref` does.
fn expand_ref(refs: &[Ref], name: &str) -> Result<ObjectId> {
    let candidates = [
        name.to_owned(),
        format!("refs/{name}"),
        format!("refs/tags/{name}"),
        format!("refs/heads/{name}"),
        format!("refs/remotes/{name}"),
        format!("refs/remotes/{name}/HEAD"),
    ];
    let found: Vec<&Ref> = candidates
        .iter()
        .filter_map(|c| refs.iter().find(|r| &r.name == c))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.id),
        [] => Err(Error::Protocol(format!("deepen-not is not a ref: {name}"))),
        _ => Err(Error::Protocol(format!("ambiguous deepen-not: {name}"))),
    }
}

/// Check wants the way git's upload-pack does over stateless HTTP:
/// every want must exist; in v0/v1 (`reachable_only`), a commit that is not
/// a ref tip must be reachable from one (`allow-reachable-sha1-in-want`).
pub(super) fn check_wants(
    odb: &ObjectStore,
    wants: &[ObjectId],
    refs: &[Ref],
    reachable_only: bool,
) -> Result<()> {
    let tips: HashSet<ObjectId> = refs
        .iter()
        .flat_map(|r| std::iter::once(r.id).chain(r.peeled))
        .collect();
    let mut buf = Vec::new();
    let mut pending = HashSet::new();
    for w in wants {
        if tips.contains(w) {
            continue;
        }
        match odb.kind(w, &mut buf)? {
            None => return Err(Error::NotOurRef(*w)),
            Some(gix_object::Kind::Commit) if reachable_only => {
                pending.insert(*w);
            }
            Some(_) => {}
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    let mut seen = HashSet::new();
    let mut stack: Vec<ObjectId> = Vec::new();
    for t in &tips {
        if odb.kind(t, &mut buf)? == Some(gix_object::Kind::Commit) {
            stack.push(*t);
        }
    }
    while let Some(c) = stack.pop() {
        if !seen.insert(c) {
            continue;
        }
        pending.remove(&c);
        if pending.is_empty() {
            return Ok(());
        }
        stack.extend(odb.commit(&c, &mut buf)?.parents);
    }
    match pending.into_iter().min() {
        Some(first) => Err(Error::NotOurRef(first)),
        None => Ok(()),
    }
}

/// A v2 fetch argument or v0 capability this node does not implement.
pub(super) fn unsupported(line: &str) -> Option<Error> {
    let feature = ["packfile-uris"]
        .into_iter()
        .find(|f| line.starts_with(f))?;
    Some(Error::Unsupported(format!("'{feature}'")))
}

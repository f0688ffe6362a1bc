//! Serving a clone from the reachable pack that maintenance wrote.
//!
//! Maintenance ([`crate::storage::maintain`]) records which refs its
//! reachable pack holds everything for. A clone (no haves, no shallow
//! boundary, no filter) that wants every one of those refs, at its current
//! value, can be served from that pack without walking trees:
//!
//! - **verbatim**: the refs have not moved and nothing else is wanted: the
//!   pack file is sent as it is, bytes unchanged (only to a client that
//!   asked for `ofs-delta`: for the others the entries are rewritten, as a
//!   prefix with nothing after it);
//! - **prefix**: refs moved or were added since: the pack's entries are sent
//!   unchanged, followed by the objects the wants reach beyond the recorded
//!   tips (a walk of the new history only), under a new header and trailer.
//!
//! Neither is used once a recorded ref was deleted or moved other than by
//! a fast-forward: the pack would then hold objects no wanted ref reaches
//! (a branch deleted because it held a secret, say), and a clone must not
//! receive them. Background maintenance soon records the new refs.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Seek, SeekFrom};

use gix_hash::ObjectId;

use crate::odb::ObjectStore;
use crate::storage::maintain::MaintainedState;
use crate::storage::{Ref, Repo};
use crate::walk::WalkSpec;

/// How a request can use the reachable pack.
pub(super) enum Reuse {
    /// Send this file unchanged.
    Verbatim {
        /// The pack, at offset 0.
        file: File,
        /// Its length.
        len: u64,
        /// Its objects.
        objects: u32,
    },
    /// Send the pack's entries, then what the walk from `tips` finds.
    Prefix {
        /// The pack, positioned after its header.
        file: File,
        /// Length of its entries (without header and trailer).
        body_len: u64,
        /// Its objects.
        objects: u32,
        /// Its index: what is already sent.
        index: Box<gix_pack::index::File>,
        /// The recorded tips as commits, the haves of the walk for the rest.
        tips: Vec<ObjectId>,
    },
}

/// Whether and how `walk` can be served from the reachable pack, to a
/// client that did or did not ask for `ofs-delta`.
pub(super) fn plan(
    repo: &Repo,
    odb: &ObjectStore,
    refs: &[Ref],
    walk: &WalkSpec<'_>,
    ofs_delta: bool,
) -> Option<Reuse> {
    let is_clone =
        walk.haves.is_empty() && walk.filter.is_none() && walk.shallow.is_none_or(|s| s.is_empty());
    if !is_clone || walk.wants.is_empty() {
        return None;
    }
    let state = repo.maintenance_state()?;
    let wants: HashSet<ObjectId> = walk.wants.iter().copied().collect();
    if !covers_recorded_refs(&state, refs, &wants) || !only_fast_forwards(odb, &state, refs) {
        return None;
    }
    let pack_dir = repo.objects_dir().join("pack");
    let mut file = File::open(pack_dir.join(format!("{}.pack", state.pack))).ok()?;
    let len = file.metadata().ok()?.len();
    let unchanged: HashSet<ObjectId> = state.tips.iter().map(|t| t.id).collect();
    if wants == unchanged && ofs_delta {
        return Some(Reuse::Verbatim {
            file,
            len,
            objects: state.objects,
        });
    }
    let index = gix_pack::index::File::at(
        pack_dir.join(format!("{}.idx", state.pack)),
        crate::odb::HASH,
    )
    .ok()?;
    // The entries start after the 12-byte header, which is written anew.
    file.seek(SeekFrom::Start(12)).ok()?;
    Some(Reuse::Prefix {
        file,
        body_len: len.checked_sub(32)?,
        objects: index.num_objects(),
        index: Box::new(index),
        tips: state
            .tips
            .iter()
            .map(|t| t.peeled.unwrap_or(t.id))
            .collect(),
    })
}

fn find<'r>(refs: &'r [Ref], name: &str) -> Option<&'r Ref> {
    refs.binary_search_by(|r| r.name.as_str().cmp(name))
        .ok()
        .map(|i| &refs[i])
}

/// Every ref the pack was made for still exists and is wanted at its
/// current value: the client asks for at least what the pack holds.
fn covers_recorded_refs(state: &MaintainedState, refs: &[Ref], wants: &HashSet<ObjectId>) -> bool {
    state
        .tips
        .iter()
        .all(|tip| find(refs, &tip.name).is_some_and(|r| wants.contains(&r.id)))
}

/// Every recorded ref that moved since moved forward: its old value is an
/// ancestor of its new one, so everything in the pack is still reachable.
fn only_fast_forwards(odb: &ObjectStore, state: &MaintainedState, refs: &[Ref]) -> bool {
    state.tips.iter().all(|tip| {
        let Some(r) = find(refs, &tip.name) else {
            return false;
        };
        if r.id == tip.id {
            return true;
        }
        let (old, new) = (tip.peeled.unwrap_or(tip.id), r.peeled.unwrap_or(r.id));
        crate::walk::is_ancestor(odb, old, new).unwrap_or(false)
    })
}

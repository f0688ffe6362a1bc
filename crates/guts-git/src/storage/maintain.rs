//! Repository maintenance: consolidate packs and write the indexes serving uses.
//!
//! Every push and every replicated update adds a pack. Maintenance rewrites
//! what a repository holds into at most two packs (ADR 0011):
//!
//! - the **reachable pack**: exactly the objects reachable from the refs at
//!   the start, in the order a clone needs them. Its name and the refs it was
//!   made for are recorded in `objects/info/guts-maintained.json`; a clone
//!   that asks for those refs gets this file's bytes as they are
//!   ([`crate::upload_pack`]);
//! - the **cruft pack**: every other object the old packs held (objects of
//!   deleted refs, of pushes that lost a race). Nothing is pruned: a pack
//!   published by a push whose refs are not updated yet must not lose objects.
//!
//! plus a commit-graph (`objects/info/commit-graph`, git's format) of the
//! reachable commits with their generation numbers.
//!
//! Crash safety, step by step (each step leaves a readable repository):
//!
//! 1. new packs are written in `objects/maintain-*/` (removed at startup);
//! 2. each is synced and moved into `objects/pack` (pack first, index last:
//!    the index makes a pack visible); objects now exist twice, harmlessly;
//! 3. the commit-graph and the state file are replaced by rename;
//! 4. the old packs are retired: their `.idx` moves to `objects/retired/`,
//!    so new readers no longer see them, while their `.pack` stays where it
//!    is for readers that already loaded the index (a clone in flight keeps
//!    reading). Retired packs are deleted after [`RETIRED_PACK_GRACE`], and at
//!    startup (a `.pack` without `.idx`, see `Storage::open`).

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gix_hash::ObjectId;
use serde::{Deserialize, Serialize};

use super::Repo;
use crate::error::{Error, Result};
use crate::pack_out::{write_index, write_pack_with, PackOptions};
use crate::walk::{objects_to_send, WalkSpec};

/// How long a retired pack stays on disk for readers that still use it.
pub const RETIRED_PACK_GRACE: Duration = Duration::from_secs(30 * 60);
/// Where the state of the last maintenance is kept, under `objects/`.
pub const STATE_FILE: &str = "info/guts-maintained.json";

/// How to run maintenance.
#[derive(Debug, Default, Clone)]
pub struct MaintainOptions {
    /// Threads for writing packs; `None` uses every core. The node passes 1
    /// so that maintenance never competes with serving for more than a core.
    pub threads: Option<usize>,
    /// Where the run reports its phases and counts (the CLI's progress bar).
    pub progress: Option<std::sync::Arc<crate::progress::Progress>>,
}

impl MaintainOptions {
    fn phase(&self, phase: &'static str, unit: &'static str, total: Option<u64>) {
        if let Some(p) = &self.progress {
            p.phase(phase, unit, total);
        }
    }
}

/// One ref as the reachable pack was made for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tip {
    /// Full ref name.
    pub name: String,
    /// Its value.
    #[serde(with = "hex_oid")]
    pub id: ObjectId,
    /// The commit it peels to, for annotated tags.
    #[serde(default, with = "hex_oid_opt", skip_serializing_if = "Option::is_none")]
    pub peeled: Option<ObjectId>,
}

/// What the last maintenance left (`objects/info/guts-maintained.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintainedState {
    /// When it finished, seconds since the epoch.
    pub at: u64,
    /// The reachable pack's file stem, `pack-<hex>`.
    pub pack: String,
    /// Objects in the reachable pack.
    pub objects: u32,
    /// The cruft pack's file stem, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cruft: Option<String>,
    /// The refs it holds everything for.
    pub tips: Vec<Tip>,
}

/// What one maintenance run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MaintainReport {
    /// Packs before.
    pub packs_before: usize,
    /// Packs after (not counting packs pushed meanwhile).
    pub packs_after: usize,
    /// Objects reachable from the refs (the reachable pack).
    pub reachable_objects: usize,
    /// Other objects kept (the cruft pack).
    pub cruft_objects: usize,
    /// Commits in the commit-graph.
    pub commits: usize,
    /// Bytes of the new packs.
    pub pack_bytes: u64,
    /// Nothing had changed since the last run: nothing was written.
    pub up_to_date: bool,
    /// Wall time, milliseconds.
    pub millis: u64,
}

/// A pack written in the maintenance directory, not yet published.
struct NewPack {
    stem: String,
    pack: PathBuf,
    idx: PathBuf,
    objects: u32,
    bytes: u64,
}

/// Removes the maintenance scratch directory however the run ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.0.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.0) {
                tracing::warn!(dir = %self.0.display(), error = %e, "could not remove maintenance scratch");
            }
        }
    }
}

impl Repo {
    /// Consolidate the packs and write the commit-graph (module docs).
    /// Runs of the same repository are serialized; pushes and fetches go on.
    pub fn maintain(&self, opts: MaintainOptions) -> Result<MaintainReport> {
        let lock = self.shared.maintenance_lock(self.name());
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let objects_dir = self.objects_dir();
        remove_expired(&objects_dir, RETIRED_PACK_GRACE)?;
        let old = pack_stems(&objects_dir.join("pack"))?;
        let refs = self.refs()?;
        let tips: Vec<Tip> = refs
            .iter()
            .map(|r| Tip {
                name: r.name.clone(),
                id: r.id,
                peeled: r.peeled,
            })
            .collect();
        if self.up_to_date(&old, &tips) {
            return Ok(MaintainReport {
                packs_before: old.len(),
                packs_after: old.len(),
                up_to_date: true,
                millis: started.elapsed().as_millis() as u64,
                ..MaintainReport::default()
            });
        }
        let mut report = MaintainReport {
            packs_before: old.len(),
            ..MaintainReport::default()
        };
        if old.is_empty() {
            return Ok(report);
        }
        let scratch = Scratch(objects_dir.join(format!(
            "maintain-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        )));
        std::fs::create_dir_all(&scratch.0)?;
        let odb = self.objects()?;
        let wants: Vec<ObjectId> = dedup(refs.iter().map(|r| r.id));
        opts.phase("counting reachable objects", "objects", None);
        let reach = objects_to_send(
            &odb,
            WalkSpec {
                wants: &wants,
                ..WalkSpec::default()
            },
        )?;
        let commit_ids: Vec<ObjectId> = reach.ids[..reach.commits].to_vec();
        let reach_set: HashSet<ObjectId> = reach.ids.iter().copied().collect();
        let cruft = cruft_ids(&objects_dir.join("pack"), &old, &reach_set)?;
        drop(reach_set);
        report.reachable_objects = reach.ids.len();
        report.cruft_objects = cruft.len();
        let new = write_and_publish(&odb, &objects_dir, reach.ids, cruft, &scratch.0, &opts)?;
        report.pack_bytes = new.iter().map(|p| p.bytes).sum();
        opts.phase(
            "writing the commit-graph",
            "commits",
            Some(commit_ids.len() as u64),
        );
        report.commits = write_commit_graph(&odb, &objects_dir, &commit_ids)?;
        record_state(&objects_dir, &new, !wants.is_empty(), tips)?;
        let keep: HashSet<&str> = new.iter().map(|p| p.stem.as_str()).collect();
        retire(
            &objects_dir,
            old.iter().filter(|s| !keep.contains(s.as_str())),
        )?;
        report.packs_after = new.len();
        report.millis = started.elapsed().as_millis() as u64;
        tracing::info!(repo = %self.name(), ?report, "maintenance done");
        Ok(report)
    }

    /// Nothing changed since the last run: the same refs, and no pack but
    /// the ones it wrote.
    fn up_to_date(&self, packs: &[String], tips: &[Tip]) -> bool {
        self.maintenance_state().is_some_and(|s| {
            s.tips == tips
                && packs
                    .iter()
                    .all(|p| *p == s.pack || s.cruft.as_deref() == Some(p.as_str()))
        })
    }

    /// What the last maintenance left, if it ran and its file is readable.
    pub fn maintenance_state(&self) -> Option<MaintainedState> {
        let raw = std::fs::read(self.objects_dir().join(STATE_FILE)).ok()?;
        serde_json::from_slice(&raw).ok()
    }

    /// How many packs the repository has (visible ones: those with an index).
    pub fn pack_count(&self) -> Result<usize> {
        Ok(pack_stems(&self.objects_dir().join("pack"))?.len())
    }
}

fn dedup(ids: impl Iterator<Item = ObjectId>) -> Vec<ObjectId> {
    let mut seen = HashSet::new();
    ids.filter(|id| seen.insert(*id)).collect()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Stems (`pack-<hex>`) of the packs in `pack_dir` that have an index.
pub(crate) fn pack_stems(pack_dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(pack_dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".idx") {
            if stem.starts_with("pack-") {
                out.push(stem.to_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Objects of the old packs that are not reachable, each once.
fn cruft_ids(
    pack_dir: &Path,
    stems: &[String],
    reachable: &HashSet<ObjectId>,
) -> Result<Vec<ObjectId>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for stem in stems {
        let idx = gix_pack::index::File::at(pack_dir.join(format!("{stem}.idx")), crate::odb::HASH)
            .map_err(|e| Error::pack(&format!("reading the index of {stem}"), e))?;
        for entry in idx.iter() {
            if !reachable.contains(&entry.oid) && seen.insert(entry.oid) {
                out.push(entry.oid);
            }
        }
    }
    Ok(out)
}

/// Write the reachable and the cruft pack (those not empty) in `scratch`,
/// then move them into `objects/pack`.
fn write_and_publish(
    odb: &crate::odb::ObjectStore,
    objects_dir: &Path,
    reachable: Vec<ObjectId>,
    cruft: Vec<ObjectId>,
    scratch: &Path,
    opts: &MaintainOptions,
) -> Result<Vec<NewPack>> {
    let mut new = Vec::new();
    for (ids, phase) in [
        (reachable, "writing the reachable pack"),
        (cruft, "writing the cruft pack"),
    ] {
        if !ids.is_empty() {
            opts.phase(phase, "objects", Some(ids.len() as u64));
            new.push(write_pack_file(odb, ids, scratch, opts)?);
        }
    }
    publish(&objects_dir.join("pack"), &new)?;
    Ok(new)
}

/// Write a pack of `ids` and its index into `dir`.
fn write_pack_file(
    odb: &crate::odb::ObjectStore,
    ids: Vec<ObjectId>,
    dir: &Path,
    opts: &MaintainOptions,
) -> Result<NewPack> {
    let tmp = dir.join("pack.tmp");
    let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
    let stats = write_pack_with(
        odb,
        ids,
        None,
        &mut file,
        &mut |done, _| {
            if let Some(p) = &opts.progress {
                p.set(done as u64);
            }
        },
        PackOptions {
            threads: opts.threads,
            index: true,
            ..PackOptions::default()
        },
    )?;
    file.into_inner()
        .map_err(|e| Error::from(e.into_error()))?
        .sync_all()?;
    let objects = u32::try_from(stats.entries.len())
        .map_err(|_| Error::TooLarge("too many objects for one pack".into()))?;
    let stem = format!("pack-{}", hex(&stats.checksum));
    let pack = dir.join(format!("{stem}.pack"));
    std::fs::rename(&tmp, &pack)?;
    let idx = dir.join(format!("{stem}.idx"));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&idx)?);
    write_index(stats.entries, &stats.checksum, &mut out)?;
    out.into_inner()
        .map_err(|e| Error::from(e.into_error()))?
        .sync_all()?;
    Ok(NewPack {
        stem,
        pack,
        idx,
        objects,
        bytes: stats.bytes,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Move the new packs into `objects/pack`, each pack before its index.
fn publish(pack_dir: &Path, new: &[NewPack]) -> Result<()> {
    for p in new {
        std::fs::rename(&p.pack, pack_dir.join(format!("{}.pack", p.stem)))?;
        std::fs::rename(&p.idx, pack_dir.join(format!("{}.idx", p.stem)))?;
    }
    std::fs::File::open(pack_dir)?.sync_all()?;
    Ok(())
}

/// Record the reachable pack (the first of `new` when the refs reach
/// anything) and the refs it was made for; with no ref, remove the record.
fn record_state(objects_dir: &Path, new: &[NewPack], has_refs: bool, tips: Vec<Tip>) -> Result<()> {
    match new.first().filter(|_| has_refs) {
        Some(reachable) => write_state(
            objects_dir,
            &MaintainedState {
                at: now_secs(),
                pack: reachable.stem.clone(),
                objects: reachable.objects,
                cruft: new.get(1).map(|p| p.stem.clone()),
                tips,
            },
        ),
        None => match std::fs::remove_file(objects_dir.join(STATE_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        },
    }
}

fn write_state(objects_dir: &Path, state: &MaintainedState) -> Result<()> {
    let info = objects_dir.join("info");
    std::fs::create_dir_all(&info)?;
    let tmp = info.join("guts-maintained.json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(state).map_err(|e| Error::Metadata(e.to_string()))?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, objects_dir.join(STATE_FILE))?;
    std::fs::File::open(&info)?.sync_all()?;
    Ok(())
}

/// Hide old packs from new readers: move their index to `objects/retired/`
/// under a name that records when.
fn retire<'a>(objects_dir: &Path, stems: impl Iterator<Item = &'a String>) -> Result<()> {
    let retired = objects_dir.join("retired");
    std::fs::create_dir_all(&retired)?;
    let now = now_secs();
    for stem in stems {
        let idx = objects_dir.join("pack").join(format!("{stem}.idx"));
        std::fs::rename(&idx, retired.join(format!("{now}-{stem}.idx")))?;
    }
    std::fs::File::open(objects_dir.join("pack"))?.sync_all()?;
    Ok(())
}

/// Delete retired packs older than `grace` (their index in `retired/`,
/// their data in `pack/`).
fn remove_expired(objects_dir: &Path, grace: Duration) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(objects_dir.join("retired")) else {
        return Ok(());
    };
    let now = now_secs();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((secs, rest)) = name.split_once('-') else {
            continue;
        };
        let Ok(secs) = secs.parse::<u64>() else {
            continue;
        };
        if now.saturating_sub(secs) < grace.as_secs() {
            continue;
        }
        if let Some(stem) = rest.strip_suffix(".idx") {
            let pack = objects_dir.join("pack").join(format!("{stem}.pack"));
            // A pack of the same name may have been published again since.
            if !pack.with_extension("idx").exists() {
                let _ = std::fs::remove_file(&pack);
            }
        }
        std::fs::remove_file(entry.path())?;
    }
    Ok(())
}

/// Write the commit-graph of the reachable commits; returns how many.
fn write_commit_graph(
    odb: &crate::odb::ObjectStore,
    objects_dir: &Path,
    commits: &[ObjectId],
) -> Result<usize> {
    let mut buf = Vec::new();
    let mut graph = Vec::with_capacity(commits.len());
    for id in commits {
        let info = odb.commit(id, &mut buf)?;
        graph.push(crate::commit_graph::GraphCommit {
            id: *id,
            tree: info.tree,
            parents: info.parents,
            time: info.time,
        });
    }
    Ok(crate::commit_graph::write(objects_dir, graph)?.commits)
}

/// Object ids as hex strings in the state file.
mod hex_oid {
    use gix_hash::ObjectId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &ObjectId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&id.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectId, D::Error> {
        let hex = String::deserialize(d)?;
        ObjectId::from_hex(hex.as_bytes()).map_err(serde::de::Error::custom)
    }
}

/// Optional object ids as hex strings.
mod hex_oid_opt {
    use gix_hash::ObjectId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &Option<ObjectId>, s: S) -> Result<S::Ok, S::Error> {
        match id {
            Some(id) => s.serialize_str(&id.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ObjectId>, D::Error> {
        let hex: Option<String> = Option::deserialize(d)?;
        hex.map(|h| ObjectId::from_hex(h.as_bytes()).map_err(serde::de::Error::custom))
            .transpose()
    }
}

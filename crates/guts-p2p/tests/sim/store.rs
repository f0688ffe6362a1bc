//! The fake replica: a node's disk in memory (logs, objects, identity
//! versions, refs, scores). Updates are real `SignedRefUpdate`s whose
//! certificate is a text the fake parses instead of verifying:
//!
//! ```text
//! sim-cert NONCE
//! refs/heads/main OLD_HEX NEW_HEX
//! FORGED            (optional: the update is invalid)
//! ```
//!
//! Git LFS objects are kept whole per repository; which pointers a tip's
//! objects hold is recorded on the node that pushed it and travels with
//! the tip's objects (as the pack scan finds them on a real node).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, Read, Write};
use std::sync::{Mutex, MutexGuard};

use guts_git::lfs::{LfsOid, LfsPointer};
use guts_git::names::RepoName;
use guts_git::resume::ResumePoint;
use guts_git::ObjectId;
use guts_identity::{RepoId, SignedRefUpdate};
use guts_p2p::conflict::{resolve, Oid, RefUpdate, ZERO};
use guts_p2p::logset::{Buckets, Key, LogSet};
use guts_p2p::replication::{Fault, Plan, Replica, Seeded};
use guts_p2p::service::Score;
use libp2p::PeerId;
use prost::Message;
use sha2::{Digest, Sha256};

/// One line of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Ref name.
    pub name: String,
    /// Old value.
    pub old: Oid,
    /// New value.
    pub new: Oid,
}

/// Hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Oid> {
    if s.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The certificate text of an update.
pub fn certificate(nonce: u64, lines: &[Line], forged: bool) -> String {
    let mut s = format!("sim-cert {nonce}\n");
    for l in lines {
        s.push_str(&format!("{} {} {}\n", l.name, hex(&l.old), hex(&l.new)));
    }
    if forged {
        s.push_str("FORGED\n");
    }
    s
}

/// The lines of a certificate; `None` if forged or unreadable.
pub fn parse(cert: &str) -> Option<Vec<Line>> {
    let mut it = cert.lines();
    if !it.next()?.starts_with("sim-cert ") {
        return None;
    }
    let mut lines = Vec::new();
    for l in it {
        let mut parts = l.split(' ');
        let (name, old, new) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || !name.starts_with("refs/") {
            return None;
        }
        lines.push(Line {
            name: name.to_string(),
            old: unhex(old)?,
            new: unhex(new)?,
        });
    }
    (!lines.is_empty()).then_some(lines)
}

/// A signed update of `repo` with these lines.
pub fn update(repo: &RepoId, nonce: u64, lines: &[Line], forged: bool) -> SignedRefUpdate {
    SignedRefUpdate {
        repo_id: repo.0.to_vec(),
        certificate: certificate(nonce, lines, forged),
        doc_version: 1,
        refused: Vec::new(),
        grant: Vec::new(),
    }
}

/// The repository id of a first identity version.
pub fn repo_id(first_version: &[u8]) -> RepoId {
    RepoId(Sha256::digest(first_version).into())
}

/// What a node holds of one repository.
#[derive(Debug, Clone)]
pub struct RepoState {
    /// Its id.
    pub id: RepoId,
    /// The signed-update log.
    pub log: LogSet,
    /// Position of each key in the log.
    seqs: HashMap<Key, u64>,
    /// Logged lines, by ref.
    lines: BTreeMap<String, Vec<RefUpdate>>,
    /// Objects held (tips only).
    pub objects: BTreeSet<ObjectId>,
    /// Identity document versions.
    pub versions: Vec<Vec<u8>>,
    /// Ref values (the resolution over the logged lines).
    pub refs: BTreeMap<String, Oid>,
}

impl RepoState {
    fn new(versions: Vec<Vec<u8>>) -> Self {
        RepoState {
            id: repo_id(versions.first().map_or(&[][..], |v| v)),
            log: LogSet::default(),
            seqs: HashMap::new(),
            lines: BTreeMap::new(),
            objects: BTreeSet::new(),
            versions,
            refs: BTreeMap::new(),
        }
    }

    /// Log an update whose objects are here; false if already logged.
    fn log(&mut self, update: &SignedRefUpdate, lines: &[Line]) -> bool {
        let key = update.key();
        let seq = self.log.len() as u64;
        if !self.log.insert(key, update.encode_to_vec()) {
            return false;
        }
        self.seqs.insert(key, seq);
        for l in lines {
            let all = self.lines.entry(l.name.clone()).or_default();
            all.push(RefUpdate {
                old: l.old,
                new: l.new,
                key,
            });
            match resolve(all).value {
                Some(v) => self.refs.insert(l.name.clone(), v),
                None => self.refs.remove(&l.name),
            };
        }
        true
    }

    /// Every key, in key order.
    pub fn keys(&self) -> Vec<Key> {
        let all: Vec<u8> = (0..=255).collect();
        self.log.keys_in(&all)
    }
}

/// An update checked by [`FakeReplica::plan`].
pub struct Checked {
    repo: RepoName,
    update: SignedRefUpdate,
    lines: Vec<Line>,
}

#[derive(Default)]
struct Store {
    repos: BTreeMap<RepoName, RepoState>,
    followed: BTreeSet<RepoName>,
    scores: BTreeMap<PeerId, Score>,
    /// LFS objects held, by repository.
    lfs: BTreeMap<RepoName, BTreeMap<LfsOid, Vec<u8>>>,
    /// LFS objects named by received objects and not held yet.
    lfs_wanted: BTreeMap<RepoName, BTreeSet<LfsPointer>>,
    /// The LFS pointers among the objects of a tip.
    lfs_of: BTreeMap<ObjectId, Vec<LfsPointer>>,
    /// Serve LFS objects with a flipped byte (a lying peer).
    lfs_lies: bool,
}

/// The pointer of an LFS object's content.
pub fn lfs_pointer(content: &[u8]) -> LfsPointer {
    LfsPointer {
        oid: LfsOid(Sha256::digest(content).into()),
        size: content.len() as u64,
    }
}

/// A replica in memory.
#[derive(Default)]
pub struct FakeReplica {
    store: Mutex<Store>,
}

impl FakeReplica {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follow `repo`, whose identity is `versions`; returns its id.
    pub fn follow(&self, repo: &RepoName, versions: Vec<Vec<u8>>) -> RepoId {
        let mut s = self.lock();
        s.followed.insert(repo.clone());
        s.repos
            .entry(repo.clone())
            .or_insert_with(|| RepoState::new(versions))
            .id
    }

    /// The node's own push: keep the new tips, log the update, move refs.
    pub fn commit(&self, repo: &RepoName, update: &SignedRefUpdate) -> bool {
        let lines = parse(&update.certificate).expect("a readable certificate");
        let mut s = self.lock();
        let r = s.repos.get_mut(repo).expect("a followed repository");
        for l in lines.iter().filter(|l| l.new != ZERO) {
            r.objects.insert(ObjectId::from(l.new));
        }
        r.log(update, &lines)
    }

    /// A copy of what is held of `repo`.
    pub fn state(&self, repo: &RepoName) -> Option<RepoState> {
        self.lock().repos.get(repo).cloned()
    }

    /// The refs of `repo`.
    pub fn refs(&self, repo: &RepoName) -> BTreeMap<String, Oid> {
        self.lock()
            .repos
            .get(repo)
            .map(|r| r.refs.clone())
            .unwrap_or_default()
    }

    /// The summary digest and count of `repo`'s log.
    pub fn log_len(&self, repo: &RepoName) -> usize {
        self.lock().repos.get(repo).map_or(0, |r| r.log.len())
    }

    /// Whether all `tips` of `repo` are held.
    pub fn holds(&self, repo: &RepoName, tips: &[ObjectId]) -> bool {
        let s = self.lock();
        s.repos
            .get(repo)
            .is_some_and(|r| tips.iter().all(|t| r.objects.contains(t)))
    }

    /// Keep fetched objects.
    pub fn store_objects(&self, repo: &RepoName, tips: &[ObjectId]) {
        if let Some(r) = self.lock().repos.get_mut(repo) {
            r.objects.extend(tips.iter().copied());
        }
    }

    /// The node's own push of LFS files in `tip`: keep the objects, and
    /// which pointers the tip holds.
    pub fn add_lfs(&self, repo: &RepoName, tip: ObjectId, contents: &[Vec<u8>]) {
        let mut s = self.lock();
        let pointers = contents.iter().map(|c| lfs_pointer(c)).collect();
        s.lfs_of.insert(tip, pointers);
        let held = s.lfs.entry(repo.clone()).or_default();
        for c in contents {
            held.insert(lfs_pointer(c).oid, c.clone());
        }
    }

    /// The LFS pointers among the objects of `tips`.
    pub fn pointers_of(&self, tips: &[ObjectId]) -> Vec<(ObjectId, Vec<LfsPointer>)> {
        let s = self.lock();
        tips.iter()
            .filter_map(|t| Some((*t, s.lfs_of.get(t)?.clone())))
            .collect()
    }

    /// Objects received from a peer hold these pointers: want their LFS
    /// objects (as the node's pack scan records them).
    pub fn record_lfs(&self, repo: &RepoName, found: Vec<(ObjectId, Vec<LfsPointer>)>) {
        let mut s = self.lock();
        for (tip, pointers) in found {
            let held: BTreeSet<LfsOid> = s
                .lfs
                .get(repo)
                .map(|m| m.keys().copied().collect())
                .unwrap_or_default();
            let wanted = s.lfs_wanted.entry(repo.clone()).or_default();
            wanted.extend(pointers.iter().filter(|p| !held.contains(&p.oid)));
            s.lfs_of.insert(tip, pointers);
        }
    }

    /// The LFS objects of `repo` held.
    pub fn lfs_held(&self, repo: &RepoName) -> BTreeSet<LfsOid> {
        self.lock()
            .lfs
            .get(repo)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Serve wrong LFS objects from now on.
    pub fn lie_about_lfs(&self) {
        self.lock().lfs_lies = true;
    }

    fn with<T>(&self, repo: &RepoName, f: impl FnOnce(&RepoState) -> T) -> Option<T> {
        self.lock().repos.get(repo).map(f)
    }
}

impl Replica for FakeReplica {
    type Checked = Checked;

    fn seeded(&self) -> Vec<Seeded> {
        let s = self.lock();
        s.followed
            .iter()
            .filter_map(|n| {
                s.repos.get(n).map(|r| Seeded {
                    name: n.clone(),
                    id: r.id,
                })
            })
            .collect()
    }

    fn identity(&self, repo: &RepoName) -> Option<Vec<Vec<u8>>> {
        self.with(repo, |r| r.versions.clone())
    }

    fn adopt(&self, repo: &RepoName, versions: &[Vec<u8>]) -> Result<RepoId, Fault> {
        let mut s = self.lock();
        if versions.is_empty() {
            return Err(Fault::Peer("no identity versions".into()));
        }
        let r = s
            .repos
            .entry(repo.clone())
            .or_insert_with(|| RepoState::new(versions.to_vec()));
        if versions.len() < r.versions.len() || versions[..r.versions.len()] != r.versions[..] {
            return Err(Fault::Peer("identity versions do not extend ours".into()));
        }
        r.versions = versions.to_vec();
        let id = r.id;
        s.followed.insert(repo.clone());
        Ok(id)
    }

    fn log_buckets(&self, repo: &RepoName) -> Option<Buckets> {
        self.with(repo, |r| r.log.buckets().clone())
    }

    fn log_keys(&self, repo: &RepoName, buckets: &[u8]) -> Option<Vec<Key>> {
        self.with(repo, |r| r.log.keys_in(buckets))
    }

    fn log_entry(&self, repo: &RepoName, key: &Key) -> Option<(u64, Vec<u8>)> {
        self.with(repo, |r| {
            let seq = *r.seqs.get(key)?;
            Some((seq, r.log.entries(&[*key]).pop()?))
        })?
    }

    fn is_logged(&self, repo: &RepoName, key: &Key) -> bool {
        self.with(repo, |r| r.log.contains(key)).unwrap_or(false)
    }

    fn scores(&self) -> Vec<(PeerId, Score)> {
        self.lock().scores.iter().map(|(p, s)| (*p, *s)).collect()
    }

    fn save_score(&self, peer: &PeerId, score: Score) {
        self.lock().scores.insert(*peer, score);
    }

    fn plan(&self, repo: &RepoName, update: SignedRefUpdate) -> Result<Plan<Checked>, Fault> {
        let s = self.lock();
        let r = s
            .repos
            .get(repo)
            .ok_or_else(|| Fault::Local(format!("{repo} is not here")))?;
        if update.repo_id != r.id.0 {
            return Err(Fault::Peer("an update of another repository".into()));
        }
        let lines = parse(&update.certificate).ok_or_else(|| Fault::Peer("forged".into()))?;
        if r.log.contains(&update.key()) {
            return Ok(Plan::Known);
        }
        if update.doc_version > r.versions.len() as u64 {
            return Ok(Plan::NeedIdentity);
        }
        let mut missing: Vec<ObjectId> = Vec::new();
        for l in lines.iter().filter(|l| l.new != ZERO) {
            let tip = ObjectId::from(l.new);
            if !r.objects.contains(&tip) && !missing.contains(&tip) {
                missing.push(tip);
            }
        }
        let checked = Checked {
            repo: repo.clone(),
            update,
            lines,
        };
        Ok(Plan::Apply { missing, checked })
    }

    fn apply(&self, c: Checked) -> Result<bool, Fault> {
        let mut s = self.lock();
        let r = s
            .repos
            .get_mut(&c.repo)
            .ok_or_else(|| Fault::Local(format!("{} is not here", c.repo)))?;
        for l in c.lines.iter().filter(|l| l.new != ZERO) {
            if !r.objects.contains(&ObjectId::from(l.new)) {
                return Err(Fault::Peer("an object is missing after the fetch".into()));
            }
        }
        Ok(r.log(&c.update, &c.lines))
    }

    fn fetch_request(&self, _: &RepoName, _: &[ObjectId]) -> Result<Vec<u8>, Fault> {
        Err(Fault::Local("not simulated".into()))
    }

    fn resume_point(&self, _: &RepoName, _: &[u8]) -> Option<ResumePoint> {
        None
    }

    fn receive(
        &self,
        _: &RepoName,
        _: &[ObjectId],
        _: &[u8],
        _: u64,
        _: &mut dyn BufRead,
    ) -> Result<(), Fault> {
        Err(Fault::Local("not simulated".into()))
    }

    fn serve_fetch(
        &self,
        _: &RepoName,
        _: &[u8],
        _: Option<ResumePoint>,
        _: &mut dyn Write,
    ) -> Result<(), Fault> {
        Err(Fault::Local("not simulated".into()))
    }

    fn lfs_wanted(&self, repo: &RepoName, max: usize) -> Vec<LfsPointer> {
        let s = self.lock();
        let held = s.lfs.get(repo);
        s.lfs_wanted
            .get(repo)
            .into_iter()
            .flatten()
            .filter(|p| !held.is_some_and(|h| h.contains_key(&p.oid)))
            .take(max)
            .copied()
            .collect()
    }

    fn lfs_has(&self, repo: &RepoName, oid: &LfsOid) -> bool {
        self.lock()
            .lfs
            .get(repo)
            .is_some_and(|m| m.contains_key(oid))
    }

    fn lfs_open(
        &self,
        repo: &RepoName,
        oid: &LfsOid,
        offset: u64,
    ) -> Result<(u64, Box<dyn Read + Send>), Fault> {
        let s = self.lock();
        let content = s
            .lfs
            .get(repo)
            .and_then(|m| m.get(oid))
            .filter(|_| s.followed.contains(repo))
            .ok_or_else(|| Fault::Local(format!("this node does not have LFS object {oid}")))?;
        let mut bytes = content.clone();
        if s.lfs_lies {
            if let Some(b) = bytes.first_mut() {
                *b ^= 1;
            }
        }
        let rest = bytes.split_off((offset as usize).min(bytes.len()));
        Ok((content.len() as u64, Box::new(std::io::Cursor::new(rest))))
    }

    fn lfs_resume_point(&self, _: &RepoName, _: &LfsPointer) -> u64 {
        0
    }

    fn lfs_receive(
        &self,
        repo: &RepoName,
        pointer: &LfsPointer,
        _: u64,
        data: &mut dyn Read,
    ) -> Result<(), Fault> {
        let mut bytes = Vec::new();
        data.take(pointer.size + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Fault::Interrupted(e.to_string()))?;
        if lfs_pointer(&bytes) != *pointer {
            return Err(Fault::Peer(format!("not LFS object {}", pointer.oid)));
        }
        let mut s = self.lock();
        s.lfs
            .entry(repo.clone())
            .or_default()
            .insert(pointer.oid, bytes);
        if let Some(w) = s.lfs_wanted.get_mut(repo) {
            w.remove(pointer);
        }
        Ok(())
    }
}

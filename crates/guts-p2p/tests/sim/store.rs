//! The fake replica: a node's disk in memory (logs, objects, identity
//! versions, refs, scores). Updates are real `SignedRefUpdate`s whose
//! certificate is a text the fake parses instead of verifying:
//!
//! ```text
//! sim-cert NONCE
//! refs/heads/main OLD_HEX NEW_HEX
//! FORGED            (optional: the update is invalid)
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, Write};
use std::sync::{Mutex, MutexGuard};

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
}

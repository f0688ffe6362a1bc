//! The replication service (`guts_p2p::service`) fed hostile input: the
//! bytes drive a sequence of events (peers connecting and leaving, gossip
//! messages, answers to its requests with arbitrary items, failed or
//! finished transfers, the clock) over an in-memory replica that follows
//! one repository. Whatever arrives, the service must not panic, must not
//! ask for anything from a blocked peer, and must answer every seeding.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use guts_git::lfs::{LfsOid, LfsPointer};
use guts_git::names::RepoName;
use guts_git::ObjectId;
use guts_identity::{RepoId, SignedRefUpdate};
use guts_p2p::logset::{Buckets, Key, LogSet};
use guts_p2p::replication::{Fault, Plan, Replica, Seeded};
use guts_p2p::service::{Config, Failure, GossipId, Io, Score, Service};
use guts_p2p::wire::Items;
use guts_p2p::{NodeKeypair, PeerId};
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// One repository, its log, and scores, in memory.
struct Memory {
    name: RepoName,
    id: RepoId,
    log: Mutex<LogSet>,
    docs: Mutex<Vec<Vec<u8>>>,
    scores: Mutex<BTreeMap<PeerId, Score>>,
    /// LFS objects named by pointers received, and those held.
    lfs_wanted: Vec<LfsPointer>,
    lfs_held: Mutex<BTreeSet<LfsOid>>,
}

impl Replica for Memory {
    type Checked = (Key, Vec<u8>);
    fn seeded(&self) -> Vec<Seeded> {
        vec![Seeded { name: self.name.clone(), id: self.id }]
    }
    fn identity(&self, repo: &RepoName) -> Option<Vec<Vec<u8>>> {
        (*repo == self.name).then(|| self.docs.lock().expect("docs").clone())
    }
    fn adopt(&self, repo: &RepoName, versions: &[Vec<u8>]) -> Result<RepoId, Fault> {
        if *repo != self.name || versions.iter().any(|v| v.first() == Some(&0)) {
            return Err(Fault::Peer("not a chain".into()));
        }
        let mut docs = self.docs.lock().expect("docs");
        if versions.len() > docs.len() {
            *docs = versions.to_vec();
        }
        Ok(self.id)
    }
    fn log_buckets(&self, repo: &RepoName) -> Option<Buckets> {
        (*repo == self.name).then(|| self.log.lock().expect("log").buckets().clone())
    }
    fn log_keys(&self, _: &RepoName, buckets: &[u8]) -> Option<Vec<Key>> {
        Some(self.log.lock().expect("log").keys_in(buckets))
    }
    fn log_entry(&self, _: &RepoName, key: &Key) -> Option<(u64, Vec<u8>)> {
        let entries = self.log.lock().expect("log").entries(&[*key]);
        entries.into_iter().next().map(|e| (0, e))
    }
    fn is_logged(&self, _: &RepoName, key: &Key) -> bool {
        self.log.lock().expect("log").contains(key)
    }
    fn scores(&self) -> Vec<(PeerId, Score)> {
        self.scores.lock().expect("scores").iter().map(|(p, s)| (*p, *s)).collect()
    }
    fn save_score(&self, peer: &PeerId, score: Score) {
        self.scores.lock().expect("scores").insert(*peer, score);
    }
    fn plan(&self, repo: &RepoName, update: SignedRefUpdate) -> Result<Plan<Self::Checked>, Fault> {
        if *repo != self.name || update.certificate.starts_with('x') {
            return Err(Fault::Peer("forged".into()));
        }
        if update.doc_version > self.docs.lock().expect("docs").len() as u64 + 1 {
            return Ok(Plan::NeedIdentity);
        }
        let key = update.key();
        if self.is_logged(repo, &key) {
            return Ok(Plan::Known);
        }
        let missing = match update.certificate.len() % 3 {
            0 => Vec::new(),
            n => vec![ObjectId::Sha1([n as u8; 20])],
        };
        Ok(Plan::Apply { missing, checked: (key, update.encode_to_vec()) })
    }
    fn fetch_request(&self, _: &RepoName, _: &[ObjectId]) -> Result<Vec<u8>, Fault> {
        Err(Fault::Local("not here".into()))
    }
    fn resume_point(&self, _: &RepoName, _: &[u8]) -> Option<guts_git::resume::ResumePoint> {
        None
    }
    fn receive(&self, _: &RepoName, _: &[ObjectId], _: &[u8], _: u64, _: &mut dyn std::io::BufRead) -> Result<(), Fault> {
        Err(Fault::Local("not here".into()))
    }
    fn apply(&self, (key, bytes): Self::Checked) -> Result<bool, Fault> {
        Ok(self.log.lock().expect("log").insert(key, bytes))
    }
    fn serve_fetch(&self, _: &RepoName, _: &[u8], _: Option<guts_git::resume::ResumePoint>, _: &mut dyn std::io::Write) -> Result<(), Fault> {
        Err(Fault::Local("not here".into()))
    }
    fn lfs_wanted(&self, repo: &RepoName, max: usize) -> Vec<LfsPointer> {
        if *repo != self.name {
            return Vec::new();
        }
        let held = self.lfs_held.lock().expect("lfs");
        self.lfs_wanted.iter().filter(|p| !held.contains(&p.oid)).take(max).copied().collect()
    }
    fn lfs_has(&self, _: &RepoName, oid: &LfsOid) -> bool {
        self.lfs_held.lock().expect("lfs").contains(oid)
    }
    fn lfs_open(&self, _: &RepoName, _: &LfsOid, _: u64) -> Result<(u64, Box<dyn std::io::Read + Send>), Fault> {
        Err(Fault::Local("not here".into()))
    }
    fn lfs_resume_point(&self, _: &RepoName, _: &LfsPointer) -> u64 {
        0
    }
    fn lfs_receive(&self, _: &RepoName, pointer: &LfsPointer, _: u64, _: &mut dyn std::io::Read) -> Result<(), Fault> {
        self.lfs_held.lock().expect("lfs").insert(pointer.oid);
        Ok(())
    }
}

fn peer(i: u8) -> PeerId {
    let mut seed = [7u8; 32];
    seed[0] = i % 4;
    NodeKeypair::ed25519_from_bytes(seed).expect("key").public().to_peer_id()
}

fuzz_target!(|data: &[u8]| {
    let name = RepoName::parse("fuzz/seeded").expect("name");
    let replica = std::sync::Arc::new(Memory {
        name: name.clone(),
        id: RepoId([9; 32]),
        log: Mutex::default(),
        docs: Mutex::new(vec![b"genesis".to_vec()]),
        scores: Mutex::default(),
        lfs_wanted: (0..3u8).map(|i| LfsPointer { oid: LfsOid([i; 32]), size: u64::from(i) }).collect(),
        lfs_held: Mutex::default(),
    });
    let mut now = 1_000;
    let mut s = Service::new(peer(9), replica, Config::default(), now);
    let (mut open, mut seeds, mut blocked) = (Vec::new(), BTreeSet::new(), BTreeSet::new());
    let mut rest = data;
    while let [op, arg, tail @ ..] = rest {
        let len = usize::from(*arg).min(tail.len());
        let (chunk, tail) = tail.split_at(len);
        rest = tail;
        now += 37;
        match op % 8 {
            0 => s.connected_to(peer(*arg), now),
            1 => s.disconnected(peer(*arg), now),
            2 => s.gossip(peer(*arg), GossipId::new(chunk), chunk, now),
            3 => {
                if let Some(id) = open.pop() {
                    match Items::decode(chunk) {
                        Ok(items) => s.answered(id, Ok(items), now),
                        Err(_) => s.answered(id, Err(Failure::Dropped("fuzz".into())), now),
                    }
                }
            }
            4 => {
                if let Some(id) = open.pop() {
                    let r = match arg % 4 {
                        0 => Ok(()),
                        1 => Err(Failure::Peer("bad pack".into())),
                        2 => Err(Failure::Interrupted("cut".into())),
                        _ => Err(Failure::Timeout),
                    };
                    s.fetched(id, r, now);
                }
            }
            5 => now += u64::from(*arg) * 1_000,
            6 => {
                seeds.insert(u64::from(*arg) + 1_000_000);
                s.seed(u64::from(*arg) + 1_000_000, name.clone(), now);
            }
            _ => {
                if let Some(id) = open.first().copied() {
                    s.providers(id, vec![peer(*arg)], now);
                }
            }
        }
        s.tick(now);
        for io in s.drain() {
            match io {
                Io::Request { id, peer, .. } | Io::Fetch { id, peer, .. } | Io::FetchLfs { id, peer, .. } => {
                    assert!(!blocked.contains(&peer), "asked a blocked peer");
                    open.push(id);
                }
                Io::FindProviders { id, .. } => open.push(id),
                Io::Block(p) => {
                    blocked.insert(p);
                }
                Io::Unblock(p) => {
                    blocked.remove(&p);
                }
                Io::SeedDone { id, .. } => {
                    seeds.remove(&id);
                }
                _ => {}
            }
        }
    }
});

//! The simulated network: nodes, links, the virtual clock, the queue of
//! messages in flight, and the run loop.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use guts_git::lfs::LfsPointer;
use guts_git::names::RepoName;
use guts_git::ObjectId;
use guts_identity::SignedRefUpdate;
use guts_p2p::conflict::Oid;
use guts_p2p::replication::Replica;
use guts_p2p::service::{Config, Failure, OpId, Service, Time};
use guts_p2p::wire::{Items, Request};
use libp2p::gossipsub::MessageId;
use libp2p::PeerId;

use super::store::{self, FakeReplica, Line};
use super::Rng;

/// How the simulated network behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// PRNG seed (topology, latencies, losses, peer ids).
    pub seed: u64,
    /// Probability that a gossip hop, a request, an answer or a transfer
    /// is lost.
    pub loss: f64,
    /// Latency of one message, ms (uniform in this range).
    pub latency: (Time, Time),
    /// How often services are ticked, ms.
    pub tick: Time,
    /// The services' configuration.
    pub service: Config,
}

impl SimConfig {
    /// Defaults for `seed`: 5–50 ms latency, no loss, ticks every 100 ms,
    /// sync every 5 s, requests time out after 0.5 s, transfers after 1 s
    /// (ten times the slowest message).
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            loss: 0.0,
            latency: (5, 50),
            tick: 100,
            service: Config {
                sync_interval: Some(5_000),
                request_timeout: 500,
                fetch_timeout: 1_000,
            },
        }
    }
}

/// What one node sent and received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages sent (gossip hops, requests, answers, transfers).
    pub messages: u64,
    /// Of which gossip hops.
    pub gossip: u64,
    /// Bytes sent.
    pub sent: u64,
    /// Bytes received.
    pub received: u64,
}

impl std::ops::Sub for Stats {
    type Output = Stats;
    fn sub(self, o: Stats) -> Stats {
        Stats {
            messages: self.messages - o.messages,
            gossip: self.gossip - o.gossip,
            sent: self.sent - o.sent,
            received: self.received - o.received,
        }
    }
}

impl std::ops::Add for Stats {
    type Output = Stats;
    fn add(self, o: Stats) -> Stats {
        Stats {
            messages: self.messages + o.messages,
            gossip: self.gossip + o.gossip,
            sent: self.sent + o.sent,
            received: self.received + o.received,
        }
    }
}

/// One simulated node.
pub struct Node {
    /// Its peer id.
    pub peer: PeerId,
    /// Its disk, kept across crashes.
    pub replica: Arc<FakeReplica>,
    /// Its running service; `None` while crashed.
    pub service: Option<Service<FakeReplica>>,
    /// Bumped at every restart: messages for an earlier run are dropped.
    pub incarnation: u32,
    pub(super) topics: BTreeSet<String>,
    pub(super) seen: HashSet<MessageId>,
    pub(super) pending: HashMap<MessageId, (String, Arc<[u8]>)>,
    pub(super) sources: HashMap<MessageId, usize>,
    /// Peers this node blocked.
    pub blocked: BTreeSet<PeerId>,
    /// Traffic.
    pub stats: Stats,
}

/// A message in flight.
/// The LFS pointers among the objects of each tip.
pub(super) type TipPointers = Vec<(ObjectId, Vec<LfsPointer>)>;

pub(super) enum Event {
    Gossip {
        to: usize,
        from: usize,
        id: MessageId,
        topic: String,
        data: Arc<[u8]>,
    },
    Request {
        to: usize,
        from: usize,
        inc: u32,
        op: OpId,
        request: Request,
    },
    Answer {
        to: usize,
        from: usize,
        inc: u32,
        op: OpId,
        result: Result<Items, Failure>,
    },
    Fetch {
        to: usize,
        from: usize,
        inc: u32,
        op: OpId,
        repo: RepoName,
        tips: Vec<ObjectId>,
    },
    Fetched {
        to: usize,
        from: usize,
        inc: u32,
        op: OpId,
        repo: RepoName,
        /// The tips, and the LFS pointers among their objects.
        result: Result<(Vec<ObjectId>, TipPointers), Failure>,
    },
    /// The outcome of an LFS object transfer (the object's bytes, as the
    /// peer served them), arriving at the requester.
    LfsFetched {
        to: usize,
        from: usize,
        inc: u32,
        op: OpId,
        repo: RepoName,
        pointer: LfsPointer,
        result: Result<Vec<u8>, Failure>,
    },
    Providers {
        to: usize,
        inc: u32,
        op: OpId,
        peers: Vec<PeerId>,
    },
    Push {
        node: usize,
        name: String,
    },
}

impl Event {
    /// The node the event is addressed to.
    pub(super) fn to(&self) -> usize {
        match self {
            Event::Gossip { to, .. }
            | Event::Request { to, .. }
            | Event::Answer { to, .. }
            | Event::Fetch { to, .. }
            | Event::Fetched { to, .. }
            | Event::LfsFetched { to, .. }
            | Event::Providers { to, .. } => *to,
            Event::Push { node, .. } => *node,
        }
    }
}

pub struct Scheduled {
    pub(super) at: Time,
    pub(super) seq: u64,
    pub(super) event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    /// Reversed: the earliest first out of the max-heap.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// The simulated network.
pub struct Sim {
    /// Its configuration.
    pub config: SimConfig,
    /// Virtual time, ms.
    pub now: Time,
    /// The nodes.
    pub nodes: Vec<Node>,
    /// The repository replicated.
    pub repo: RepoName,
    pub(super) rng: Rng,
    pub queue: BinaryHeap<Scheduled>,
    seq: u64,
    /// Links, each as (smaller index, larger index).
    pub links: BTreeSet<(usize, usize)>,
    pub(super) index: BTreeMap<PeerId, usize>,
    next_tick: Time,
    nonce: u64,
    /// Every update pushed, in push order.
    pub pushed: Vec<SignedRefUpdate>,
    /// Messages delivered, in all.
    pub delivered: u64,
}

impl Sim {
    /// `n` nodes following the test repository, not linked yet.
    pub fn new(config: SimConfig, n: usize) -> Self {
        let (repo, versions) = super::repo();
        let mut nodes = Vec::with_capacity(n);
        let mut index = BTreeMap::new();
        let now = 1_000_000;
        for i in 0..n {
            let peer = super::peer_id(config.seed, i);
            let replica = Arc::new(FakeReplica::default());
            replica.follow(&repo, versions.clone());
            index.insert(peer, i);
            nodes.push(Node {
                peer,
                replica,
                service: None,
                incarnation: 0,
                topics: BTreeSet::new(),
                seen: HashSet::new(),
                pending: HashMap::new(),
                sources: HashMap::new(),
                blocked: BTreeSet::new(),
                stats: Stats::default(),
            });
        }
        let mut sim = Sim {
            rng: Rng::new(config.seed),
            next_tick: now + config.tick,
            config,
            now,
            nodes,
            repo,
            queue: BinaryHeap::new(),
            seq: 0,
            links: BTreeSet::new(),
            index,
            nonce: 0,
            pushed: Vec::new(),
            delivered: 0,
        };
        for i in 0..n {
            sim.start(i);
        }
        sim
    }

    /// (Re)start node `i`'s service on its replica, and connect it to its
    /// linked live neighbours.
    pub fn start(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let service = Service::new(
            node.peer,
            Arc::clone(&node.replica),
            self.config.service.clone(),
            self.now,
        );
        node.service = Some(service);
        node.incarnation += 1;
        self.flush(i);
        for j in self.neighbours(i) {
            self.connect(i, j);
        }
    }

    /// Crash node `i`: its service and everything in flight to it are
    /// gone; its replica stays.
    pub fn crash(&mut self, i: usize) {
        let neighbours = self.neighbours(i);
        let node = &mut self.nodes[i];
        node.service = None;
        node.topics.clear();
        node.seen.clear();
        node.pending.clear();
        node.sources.clear();
        // The swarm's blocks are in memory; the service restores them from
        // the scores its replica kept.
        node.blocked.clear();
        let queue = std::mem::take(&mut self.queue);
        self.queue = queue.into_iter().filter(|s| s.event.to() != i).collect();
        for j in neighbours {
            self.disconnect_one(j, i);
        }
    }

    /// Whether node `i` runs.
    pub fn alive(&self, i: usize) -> bool {
        self.nodes[i].service.is_some()
    }

    /// Linked neighbours of `i` (up or not).
    pub fn neighbours(&self, i: usize) -> Vec<usize> {
        self.links
            .iter()
            .filter_map(|&(a, b)| match (a == i, b == i) {
                (true, _) => Some(b),
                (_, true) => Some(a),
                _ => None,
            })
            .collect()
    }

    /// Whether `i` and `j` can talk now.
    pub fn linked(&self, i: usize, j: usize) -> bool {
        self.links.contains(&(i.min(j), i.max(j))) && self.alive(i) && self.alive(j)
    }

    /// Bring up the link `i`–`j`, unless one blocked the other.
    pub fn link(&mut self, i: usize, j: usize) {
        let (pi, pj) = (self.nodes[i].peer, self.nodes[j].peer);
        if i == j || self.nodes[i].blocked.contains(&pj) || self.nodes[j].blocked.contains(&pi) {
            return;
        }
        if self.links.insert((i.min(j), i.max(j))) {
            self.connect(i, j);
        }
    }

    /// Bring down the link `i`–`j`.
    pub fn unlink(&mut self, i: usize, j: usize) {
        if self.links.remove(&(i.min(j), i.max(j))) {
            self.disconnect_one(i, j);
            self.disconnect_one(j, i);
        }
    }

    fn connect(&mut self, i: usize, j: usize) {
        if !self.linked(i, j) {
            return;
        }
        for (a, b) in [(i, j), (j, i)] {
            let (peer, now) = (self.nodes[b].peer, self.now);
            if let Some(s) = self.nodes[a].service.as_mut() {
                s.connected_to(peer, now);
            }
            self.flush(a);
        }
    }

    fn disconnect_one(&mut self, a: usize, b: usize) {
        let (peer, now) = (self.nodes[b].peer, self.now);
        if let Some(s) = self.nodes[a].service.as_mut() {
            s.disconnected(peer, now);
        }
        self.flush(a);
    }

    /// Split the nodes into `group` and the rest: the links across are
    /// brought down and returned (for [`Sim::heal`]).
    pub fn partition(&mut self, group: &BTreeSet<usize>) -> Vec<(usize, usize)> {
        let cut: Vec<(usize, usize)> = self
            .links
            .iter()
            .filter(|(a, b)| group.contains(a) != group.contains(b))
            .copied()
            .collect();
        for &(a, b) in &cut {
            self.unlink(a, b);
        }
        cut
    }

    /// Bring the links back.
    pub fn heal(&mut self, cut: &[(usize, usize)]) {
        for &(a, b) in cut {
            self.link(a, b);
        }
    }

    pub(super) fn schedule(&mut self, delay: Time, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at: self.now + delay,
            seq: self.seq,
            event,
        });
    }

    pub(super) fn latency(&mut self) -> Time {
        let (lo, hi) = self.config.latency;
        self.rng.range(lo, hi)
    }

    pub(super) fn lost(&mut self) -> bool {
        let loss = self.config.loss;
        self.rng.chance(loss)
    }

    /// Schedule a push at node `node` on ref `name` in `delay` ms: from the
    /// node's value of the ref then, to a new object.
    pub fn push_at(&mut self, delay: Time, node: usize, name: &str) {
        let name = name.to_string();
        self.schedule(delay, Event::Push { node, name });
    }

    /// Push now at node `node`: commit locally, then announce.
    pub fn push(&mut self, node: usize, name: &str) -> SignedRefUpdate {
        let old = self.nodes[node]
            .replica
            .refs(&self.repo)
            .get(name)
            .copied()
            .unwrap_or(guts_p2p::conflict::ZERO);
        let line = Line {
            name: name.to_string(),
            old,
            new: self.rng.oid(),
        };
        self.nonce += 1;
        let repo = self.repo.clone();
        let seeded = self.seeded();
        let update = store::update(&seeded.id, self.nonce, &[line], false);
        self.nodes[node].replica.commit(&repo, &update);
        if let Some(s) = self.nodes[node].service.as_mut() {
            s.announce(&seeded, &update);
        }
        self.flush(node);
        self.pushed.push(update.clone());
        update
    }

    /// The test repository as followed.
    pub fn seeded(&self) -> guts_p2p::replication::Seeded {
        self.nodes[0]
            .replica
            .seeded()
            .into_iter()
            .find(|s| s.name == self.repo)
            .expect("the repository is followed")
    }

    /// Process the next event or tick; false past `until`.
    pub fn step(&mut self, until: Time) -> bool {
        let next_event = self.queue.peek().map(|s| s.at);
        match next_event {
            Some(at) if at <= self.next_tick => {
                if at > until {
                    return false;
                }
                let s = self.queue.pop().expect("peeked");
                self.now = self.now.max(s.at);
                self.delivered += 1;
                self.handle(s.event);
            }
            _ => {
                if self.next_tick > until {
                    return false;
                }
                self.now = self.next_tick;
                self.next_tick += self.config.tick;
                self.tick_all();
            }
        }
        true
    }

    fn tick_all(&mut self) {
        for i in 0..self.nodes.len() {
            let now = self.now;
            if let Some(s) = self.nodes[i].service.as_mut() {
                s.tick(now);
            }
            self.flush(i);
        }
    }

    /// Run until `done` holds (checked at every tick) or `limit` ms have
    /// passed; returns the time it took, or `None`.
    pub fn run_until(&mut self, limit: Time, mut done: impl FnMut(&Sim) -> bool) -> Option<Time> {
        let (start, until) = (self.now, self.now + limit);
        let mut last_tick = self.next_tick;
        while self.step(until) {
            if self.next_tick != last_tick {
                last_tick = self.next_tick;
                if done(self) {
                    return Some(self.now - start);
                }
            }
        }
        None
    }

    /// Run for `ms` of virtual time.
    pub fn run_for(&mut self, ms: Time) {
        let until = self.now + ms;
        while self.step(until) {}
        self.now = until;
    }

    /// Whether nothing is in flight (pushes included).
    pub fn queue_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether every live service is idle.
    pub fn idle(&self) -> bool {
        self.nodes
            .iter()
            .all(|n| n.service.as_ref().is_none_or(|s| s.is_idle()))
    }

    /// Whether all `nodes` hold the same log and refs.
    pub fn converged(&self, nodes: &[usize]) -> bool {
        let first = nodes.first().map(|&i| self.fingerprint(i));
        nodes.iter().all(|&i| Some(self.fingerprint(i)) == first)
    }

    /// Node `i`'s log summary and refs.
    pub fn fingerprint(&self, i: usize) -> (Vec<u8>, u64, BTreeMap<String, Oid>) {
        let r = &self.nodes[i].replica;
        let summary = r.log_summary(&self.repo).unwrap_or_default();
        (summary.digest, summary.updates, r.refs(&self.repo))
    }

    /// Traffic of all nodes together.
    pub fn total(&self) -> Stats {
        self.nodes
            .iter()
            .fold(Stats::default(), |acc, n| acc + n.stats)
    }

    /// The refs every node should have: the conflict rule over every
    /// update pushed.
    pub fn expected_refs(&self) -> BTreeMap<String, Oid> {
        let mut by_ref: BTreeMap<String, Vec<guts_p2p::conflict::RefUpdate>> = BTreeMap::new();
        for u in &self.pushed {
            for l in store::parse(&u.certificate).expect("readable") {
                by_ref
                    .entry(l.name)
                    .or_default()
                    .push(guts_p2p::conflict::RefUpdate {
                        old: l.old,
                        new: l.new,
                        key: u.key(),
                    });
            }
        }
        by_ref
            .into_iter()
            .filter_map(|(name, ups)| Some((name, guts_p2p::conflict::resolve(&ups).value?)))
            .collect()
    }

    /// Whether a transfer to node `i` is in flight (asked or answered).
    pub fn fetch_in_flight(&self, i: usize) -> bool {
        self.queue.iter().any(|s| match &s.event {
            Event::Fetch { from, .. } => *from == i,
            Event::Fetched { to, .. } => *to == i,
            _ => false,
        })
    }

    /// The score node `i` holds against `peer`.
    pub fn score(&self, i: usize, peer: &PeerId) -> guts_p2p::service::Score {
        self.nodes[i]
            .service
            .as_ref()
            .map(|s| s.score(peer))
            .unwrap_or_default()
    }

    /// Index of a peer.
    pub fn node_of(&self, peer: &PeerId) -> Option<usize> {
        self.index.get(peer).copied()
    }
}

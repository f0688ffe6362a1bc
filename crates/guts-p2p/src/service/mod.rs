//! The replication protocol's decisions, without I/O (ADR 0017).
//!
//! A [`Service`] takes events (a peer connected, a gossip message, the
//! answer to a request, a finished transfer, the clock) and returns
//! [`Io`] values: what to publish, whom to ask for what, what to fetch
//! from whom, whom to block. It never touches a socket or a timer: the
//! tokio driver in [`crate::replication`] carries out its `Io` and feeds
//! the outcomes back, and the simulator in the tests does the same for a
//! hundred services in one process, with a virtual clock, lost and
//! reordered messages, partitions and crashes.
//!
//! The service reads and writes the node's storage through the
//! [`Replica`](crate::replication::Replica) synchronously, as Radicle's
//! service reads its storage: verifying and applying an update are
//! decisions; moving bytes is I/O.
//!
//! - `gossip`: announcements of signed updates and identity documents;
//! - `session`: log comparison with one peer for one repository
//!   (summary, buckets, keys, entries; ADR 0016);
//! - `seed`: following a new repository, from connected peers or the DHT;
//! - `lfs`: fetching the Git LFS objects of applied updates (ADR 0024);
//! - `scores`: strikes and blocks of misbehaving peers, persisted.

mod counts;
mod gossip;
mod lfs;
mod ops;
mod scores;
mod seed;
mod session;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use guts_git::lfs::LfsPointer;
use guts_git::names::RepoName;
use guts_git::ObjectId;
use guts_identity::{RepoId, SignedRefUpdate};
use libp2p::gossipsub::MessageId;
use libp2p::PeerId;

use crate::replication::{Replica, Seeded};
use crate::wire::{Items, Request};

pub use counts::{Counts, RejectReason};
pub use libp2p::gossipsub::MessageId as GossipId;
pub use scores::Score;

/// Most updates taken in one page of a log comparison that are announced
/// (see [`Service::apply_all`]).
const MAX_ANNOUNCED_CATCH_UP: usize = 64;

/// Checked updates whose objects are (to be) present, with the updates.
type Ready<C> = Vec<(SignedRefUpdate, C)>;

/// Milliseconds since the Unix epoch (virtual in the simulator).
pub type Time = u64;

/// Identifies one request, transfer or provider query the service asked
/// for, and its outcome.
pub type OpId = u64;

/// How the service paces itself.
#[derive(Debug, Clone)]
pub struct Config {
    /// Compare logs with every connected peer this often (ms; None: only
    /// on connection).
    pub sync_interval: Option<Time>,
    /// A request with no outcome after this long has failed (ms).
    pub request_timeout: Time,
    /// A transfer with no outcome after this long has failed (ms).
    pub fetch_timeout: Time,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sync_interval: Some(60_000),
            request_timeout: 60_000,
            fetch_timeout: crate::limits::STREAM_TIMEOUT.as_millis() as Time + 60_000,
        }
    }
}

/// What gossipsub is told of a message: forward it, drop it and penalize
/// its sender, or drop it without blame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: forward.
    Accept,
    /// Invalid: drop, and count against the sender.
    Reject,
    /// Not judged (a failure of this node, a transfer that kept breaking).
    Ignore,
}

/// What the service asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Io {
    /// Follow a gossip topic.
    Subscribe(String),
    /// Stop following a gossip topic.
    Unsubscribe(String),
    /// Tell the DHT this node provides `key`.
    Provide(Vec<u8>),
    /// Ask the DHT who provides `key`; answer with [`Service::providers`].
    FindProviders {
        /// Outcome id.
        id: OpId,
        /// The key (a repository name).
        key: Vec<u8>,
    },
    /// Publish on a topic.
    Publish {
        /// Topic.
        topic: String,
        /// Encoded [`crate::wire::Announce`].
        data: Vec<u8>,
    },
    /// Judge a received gossip message.
    Report {
        /// The message.
        message: MessageId,
        /// Who delivered it.
        source: PeerId,
        /// The verdict.
        verdict: Verdict,
    },
    /// Send a request on a replication stream; answer with
    /// [`Service::answered`].
    Request {
        /// Outcome id.
        id: OpId,
        /// To whom.
        peer: PeerId,
        /// What.
        request: Request,
    },
    /// Fetch the objects of `tips` from `peer` into the replica (resuming
    /// a transfer that broke off); answer with [`Service::fetched`].
    Fetch {
        /// Outcome id.
        id: OpId,
        /// From whom.
        peer: PeerId,
        /// Repository.
        repo: RepoName,
        /// The tips whose objects are missing.
        tips: Vec<ObjectId>,
    },
    /// Fetch one Git LFS object from `peer` into the replica (resuming
    /// after the bytes kept from an interrupted attempt); answer with
    /// [`Service::fetched`].
    FetchLfs {
        /// Outcome id.
        id: OpId,
        /// From whom.
        peer: PeerId,
        /// Repository.
        repo: RepoName,
        /// The object.
        pointer: LfsPointer,
    },
    /// Disconnect and refuse a peer.
    Block(PeerId),
    /// Accept a peer again.
    Unblock(PeerId),
    /// A seeding asked with [`Service::seed`] ended.
    SeedDone {
        /// The id given to `seed`.
        id: OpId,
        /// The repository's id, or why seeding failed.
        result: Result<RepoId, String>,
    },
}

/// Why a request or transfer failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The stream could not be opened, or closed before an answer (the
    /// peer was busy, the connection dropped): worth asking again.
    Dropped(String),
    /// No outcome in time.
    Timeout,
    /// The peer answered that it cannot (it does not have the repository).
    Refused(String),
    /// What the peer sent is invalid: counts against it.
    Peer(String),
    /// The transfer broke off; what arrived is kept for the next attempt.
    Interrupted(String),
    /// This node failed.
    Local(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("no answer in time"),
            Failure::Dropped(m) => write!(f, "stream dropped: {m}"),
            Failure::Refused(m) => write!(f, "refused: {m}"),
            Failure::Peer(m) => write!(f, "invalid: {m}"),
            Failure::Interrupted(m) => write!(f, "broke off: {m}"),
            Failure::Local(m) => write!(f, "local failure: {m}"),
        }
    }
}

/// The outcome of an op, as its task sees it.
enum Outcome {
    Items(Items),
    Fetched,
    Providers(Vec<PeerId>),
    Failed(Failure),
}

/// What an op is, kept to repeat it.
#[derive(Debug, Clone)]
enum OpKind {
    Request(Request),
    Fetch { repo: RepoName, tips: Vec<ObjectId> },
    Lfs { repo: RepoName, pointer: LfsPointer },
    Providers(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Op {
    task: TaskId,
    peer: PeerId,
    kind: OpKind,
    attempt: u32,
    deadline: Time,
    /// Whether it holds its peer's stream slot (see `Service::streaming`).
    holds_stream: bool,
}

type TaskId = u64;

/// Work in progress, waiting for outcomes.
enum Task<C> {
    Session(session::Session<C>),
    Announce(gossip::Announced<C>),
    Seed(seed::Seeding),
    Lfs(lfs::LfsRound),
}

/// The replication state machine of one node.
pub struct Service<R: Replica> {
    local: PeerId,
    replica: Arc<R>,
    config: Config,
    now: Time,
    connected: BTreeSet<PeerId>,
    tasks: BTreeMap<TaskId, Task<R::Checked>>,
    ops: BTreeMap<OpId, Op>,
    next_id: u64,
    /// Log comparisons under way, by peer and repository.
    sessions: BTreeMap<(PeerId, RepoName), TaskId>,
    /// The task planning, fetching and applying updates of a repository
    /// (one at a time: a second one then finds them known).
    busy: BTreeMap<RepoName, TaskId>,
    waiting: BTreeMap<RepoName, VecDeque<TaskId>>,
    /// The round fetching Git LFS objects of a repository, if one is under
    /// way (one at a time per repository).
    lfs_rounds: BTreeMap<RepoName, TaskId>,
    /// Ops to start later (retries), by time.
    delayed: BTreeMap<(Time, OpId), Op>,
    /// Peers with a stream op (request or transfer) under way, and the ops
    /// waiting for it to end: one stream at a time per peer, as
    /// libp2p-stream drops an inbound stream that arrives while the peer is
    /// still taking the previous one.
    streaming: BTreeSet<PeerId>,
    queued: BTreeMap<PeerId, VecDeque<(OpId, Op)>>,
    /// Ops for peers blocked since they were asked for: failed, not sent,
    /// before the next `Io` is handed out.
    refused: Vec<OpId>,
    scores: BTreeMap<PeerId, Score>,
    next_sync: Time,
    outbox: VecDeque<Io>,
    /// Whether [`Service::release`] is resuming waiting tasks (further up
    /// the stack): a task that ends at once then only frees the repository.
    releasing: bool,
    counts: Counts,
}

impl<R: Replica> Service<R> {
    /// A service for the node `local` over `replica`, at time `now`: it
    /// follows the seeded repositories and blocks the peers still blocked.
    pub fn new(local: PeerId, replica: Arc<R>, config: Config, now: Time) -> Self {
        let mut s = Service {
            local,
            replica,
            next_sync: now + config.sync_interval.unwrap_or(0),
            config,
            now,
            connected: BTreeSet::new(),
            tasks: BTreeMap::new(),
            ops: BTreeMap::new(),
            next_id: 1,
            sessions: BTreeMap::new(),
            busy: BTreeMap::new(),
            waiting: BTreeMap::new(),
            lfs_rounds: BTreeMap::new(),
            delayed: BTreeMap::new(),
            streaming: BTreeSet::new(),
            queued: BTreeMap::new(),
            refused: Vec::new(),
            scores: BTreeMap::new(),
            outbox: VecDeque::new(),
            releasing: false,
            counts: Counts::default(),
        };
        for seeded in s.replica.seeded() {
            s.follow(&seeded);
        }
        s.load_scores();
        s
    }

    /// This node's peer id.
    pub fn local(&self) -> PeerId {
        self.local
    }

    /// The next thing to do, if any.
    pub fn next_io(&mut self) -> Option<Io> {
        if self.outbox.is_empty() {
            self.settle_refused();
        }
        self.outbox.pop_front()
    }

    /// Strikes, blocks and rejections so far (for metrics).
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Everything to do now.
    pub fn drain(&mut self) -> Vec<Io> {
        self.settle_refused();
        self.outbox.drain(..).collect()
    }

    /// Peers connected now.
    pub fn connected(&self) -> impl Iterator<Item = &PeerId> {
        self.connected.iter()
    }

    /// Whether nothing is under way (no request, transfer or retry).
    pub fn is_idle(&self) -> bool {
        self.ops.is_empty()
            && self.delayed.is_empty()
            && self.tasks.is_empty()
            && self.queued.is_empty()
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn push(&mut self, io: Io) {
        self.outbox.push_back(io);
    }

    /// Follow a repository: its topic, and the DHT record saying this node
    /// provides it.
    pub fn follow(&mut self, s: &Seeded) {
        self.push(Io::Subscribe(crate::wire::topic(&s.id.to_string())));
        self.push(Io::Provide(s.name.to_string().into_bytes()));
    }

    /// Stop following a repository.
    pub fn unfollow(&mut self, s: &Seeded) {
        self.push(Io::Unsubscribe(crate::wire::topic(&s.id.to_string())));
    }

    /// A repository this node follows, by name.
    fn seeded(&self, repo: &RepoName) -> Option<Seeded> {
        self.replica.seeded().into_iter().find(|s| s.name == *repo)
    }

    /// A connection to `peer` opened: compare logs of every followed
    /// repository with it (catch-up after downtime).
    pub fn connected_to(&mut self, peer: PeerId, now: Time) {
        self.now = now;
        if self.is_blocked(&peer) {
            self.push(Io::Block(peer));
            return;
        }
        if self.connected.insert(peer) {
            for s in self.replica.seeded() {
                self.start_session(peer, s.name, None);
            }
        }
    }

    /// The last connection to `peer` closed.
    pub fn disconnected(&mut self, peer: PeerId, now: Time) {
        self.now = now;
        self.connected.remove(&peer);
    }

    /// The clock moved: retries, timeouts, periodic log comparison, expired
    /// blocks.
    pub fn tick(&mut self, now: Time) {
        self.now = now;
        let due: Vec<(Time, OpId)> = self
            .delayed
            .range(..=(now, OpId::MAX))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            if let Some(op) = self.delayed.remove(&key) {
                self.start_op(key.1, op);
            }
        }
        let expired: Vec<OpId> = self
            .ops
            .iter()
            .filter(|(_, op)| op.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.complete(id, Outcome::Failed(Failure::Timeout));
        }
        if let Some(every) = self.config.sync_interval {
            if now >= self.next_sync {
                self.next_sync = now + every;
                self.anti_entropy();
            }
        }
        self.expire_blocks();
    }

    /// Compare logs with every connected peer for every followed repository
    /// (updates whose announcement was lost arrive anyway).
    pub fn anti_entropy(&mut self) {
        let peers: Vec<PeerId> = self.connected.iter().copied().collect();
        for s in self.replica.seeded() {
            for &peer in &peers {
                self.start_session(peer, s.name.clone(), None);
            }
        }
    }

    /// The answer to [`Io::Request`] `id`.
    pub fn answered(&mut self, id: OpId, result: Result<Items, Failure>, now: Time) {
        self.now = now;
        let outcome = match result {
            Ok(items) if !items.error.is_empty() => Outcome::Failed(Failure::Refused(items.error)),
            Ok(items) => Outcome::Items(items),
            Err(f) => Outcome::Failed(f),
        };
        self.complete(id, outcome);
    }

    /// The outcome of [`Io::Fetch`] `id`.
    pub fn fetched(&mut self, id: OpId, result: Result<(), Failure>, now: Time) {
        self.now = now;
        self.complete(
            id,
            result.map_or_else(Outcome::Failed, |()| Outcome::Fetched),
        );
    }

    /// The answer to [`Io::FindProviders`] `id`.
    pub fn providers(&mut self, id: OpId, peers: Vec<PeerId>, now: Time) {
        self.now = now;
        self.complete(id, Outcome::Providers(peers));
    }

    /// Publish an update this node applied, so that peers further away
    /// fetch from it.
    pub fn announce(&mut self, s: &Seeded, update: &SignedRefUpdate) {
        use prost::Message;
        let msg = crate::wire::Announce {
            repo: s.name.to_string(),
            update: update.encode_to_vec(),
            doc_versions: 0,
        };
        self.push(Io::Publish {
            topic: crate::wire::topic(&s.id.to_string()),
            data: msg.encode_to_vec(),
        });
    }

    /// Publish that this node holds `versions` identity document versions.
    pub fn announce_identity(&mut self, s: &Seeded, versions: u64) {
        use prost::Message;
        let msg = crate::wire::Announce {
            repo: s.name.to_string(),
            update: Vec::new(),
            doc_versions: versions,
        };
        self.push(Io::Publish {
            topic: crate::wire::topic(&s.id.to_string()),
            data: msg.encode_to_vec(),
        });
    }
}

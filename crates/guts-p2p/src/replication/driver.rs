//! The thin tokio loop around the [`Service`]: network events, commands
//! from the node, outcomes of requests and transfers and the clock go in;
//! the service's [`Io`] comes out and is carried out here (requests and
//! transfers on their own tasks, whose outcomes come back in).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use guts_git::names::RepoName;
use guts_identity::{RepoId, SignedRefUpdate};
use libp2p::gossipsub::MessageAcceptance;
use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot};

use super::{fetch, lfs, serve, Replica, Seeded};
use crate::error::{Error, Result};
use crate::metrics::P2pMetrics;
use crate::network::{Event, Handle};
use crate::service::{Config, Failure, Io, OpId, Service, Time, Verdict};
use crate::wire::{read_frame, write_frame, Items, Request, REPLICATION_PROTOCOL};

/// How often the service's clock ticks (retries, timeouts, comparisons).
const TICK: Duration = Duration::from_millis(100);
/// How long a request other than a fetch may take before the driver
/// reports it failed (the service's own timeout is longer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Run blocking replica work on a blocking thread.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Replica(format!("task failed: {e}")))
}

fn now() -> Time {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Time)
}

/// What the node asks of replication.
enum Command {
    Follow(Seeded),
    Unfollow(Seeded),
    Announce(Seeded, Box<SignedRefUpdate>),
    AnnounceIdentity(Seeded, u64),
    Seed(RepoName, oneshot::Sender<Result<RepoId, String>>),
    AntiEntropy,
}

/// An outcome coming back from a task.
enum Done {
    Answered(OpId, std::result::Result<Items, Failure>),
    Fetched(OpId, std::result::Result<(), Failure>),
    Providers(OpId, Vec<PeerId>),
}

/// Drives replication for one node; cheap to clone.
pub struct Replicator<R: Replica> {
    commands: mpsc::Sender<Command>,
    _replica: std::marker::PhantomData<fn() -> R>,
}

impl<R: Replica> Clone for Replicator<R> {
    fn clone(&self) -> Self {
        Replicator {
            commands: self.commands.clone(),
            _replica: std::marker::PhantomData,
        }
    }
}

impl<R: Replica> Replicator<R> {
    /// Start serving peers and running the service on the current
    /// (multi-threaded) tokio runtime; record into `metrics` if given.
    pub async fn start(
        net: Handle,
        events: mpsc::Receiver<Event>,
        replica: Arc<R>,
        sync_interval: Option<Duration>,
        metrics: Option<Arc<P2pMetrics>>,
    ) -> Result<Self> {
        serve::spawn_server(&net, Arc::clone(&replica))?;
        let config = Config {
            sync_interval: sync_interval.map(|d| d.as_millis() as Time),
            ..Config::default()
        };
        let local = net.peer_id();
        let r = Arc::clone(&replica);
        let service = blocking(move || Service::new(local, r, config, now())).await?;
        let (tx, rx) = mpsc::channel(256);
        let (done_tx, done_rx) = mpsc::channel(256);
        let driver = Driver {
            service,
            net,
            replica,
            done: done_tx,
            seeds: HashMap::new(),
            metrics,
        };
        tokio::spawn(driver.run(events, rx, done_rx));
        Ok(Replicator {
            commands: tx,
            _replica: std::marker::PhantomData,
        })
    }

    async fn send(&self, c: Command) -> Result<()> {
        self.commands.send(c).await.map_err(|_| Error::Stopped)
    }

    /// Follow a repository: subscribe to its announcements and tell the DHT
    /// this node provides it.
    pub async fn follow(&self, s: &Seeded) -> Result<()> {
        self.send(Command::Follow(s.clone())).await
    }

    /// Stop following a repository.
    pub async fn unfollow(&self, s: &Seeded) -> Result<()> {
        self.send(Command::Unfollow(s.clone())).await
    }

    /// Announce an update accepted locally (after a push).
    pub async fn announce(&self, s: &Seeded, update: &SignedRefUpdate) -> Result<()> {
        self.send(Command::Announce(s.clone(), Box::new(update.clone())))
            .await
    }

    /// Announce that this node holds `versions` identity document versions
    /// of `s` (after a document change: peers behind take the new ones).
    pub async fn announce_identity(&self, s: &Seeded, versions: u64) -> Result<()> {
        self.send(Command::AnnounceIdentity(s.clone(), versions))
            .await
    }

    /// Compare logs with every connected peer now.
    pub async fn anti_entropy(&self) -> Result<()> {
        self.send(Command::AntiEntropy).await
    }

    /// Start following `repo` (from connected peers, else the DHT's
    /// providers); returns once its identity, log and objects are here.
    pub async fn seed(&self, repo: &RepoName) -> Result<RepoId> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Seed(repo.clone(), tx)).await?;
        rx.await
            .map_err(|_| Error::Stopped)?
            .map_err(Error::Replica)
    }
}

struct Driver<R: Replica> {
    service: Service<R>,
    net: Handle,
    replica: Arc<R>,
    done: mpsc::Sender<Done>,
    seeds: HashMap<OpId, oneshot::Sender<std::result::Result<RepoId, String>>>,
    metrics: Option<Arc<P2pMetrics>>,
}

impl<R: Replica> Driver<R> {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        mut commands: mpsc::Receiver<Command>,
        mut done: mpsc::Receiver<Done>,
    ) {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_seed: OpId = 1;
        // What the service decided at start (follow, blocks kept from before).
        for io in self.service.drain() {
            self.execute(io).await;
        }
        loop {
            tokio::select! {
                Some(event) = events.recv() => self.observe(&event).step(|s| match event {
                    Event::Gossip { source, data, message_id, .. } => s.gossip(source, message_id, &data, now()),
                    Event::Connected(peer) => s.connected_to(peer, now()),
                    Event::Disconnected(peer) => s.disconnected(peer, now()),
                }),
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    if let Command::Seed(repo, reply) = command {
                        next_seed += 1;
                        self.seeds.insert(next_seed, reply);
                        self.step(|s| s.seed(next_seed, repo, now()));
                    } else {
                        self.step(|s| on_command(s, command));
                    }
                }
                Some(d) = done.recv() => self.step(|s| match d {
                    Done::Answered(id, r) => s.answered(id, r, now()),
                    Done::Fetched(id, r) => s.fetched(id, r, now()),
                    Done::Providers(id, peers) => s.providers(id, peers, now()),
                }),
                _ = ticks.tick() => self.step(|s| s.tick(now())),
            }
            for io in self.service.drain() {
                self.execute(io).await;
            }
        }
    }

    /// Give the service an input; it may read and write the replica, so it
    /// runs where blocking is allowed.
    fn step(&mut self, f: impl FnOnce(&mut Service<R>)) {
        tokio::task::block_in_place(|| f(&mut self.service));
        if let Some(m) = &self.metrics {
            m.export(self.service.counts());
        }
    }

    /// Count a network event.
    fn observe(&mut self, event: &Event) -> &mut Self {
        if let Some(m) = &self.metrics {
            match event {
                Event::Gossip { .. } => m.gossip_in(),
                Event::Connected(_) => m.peer_connected(),
                Event::Disconnected(_) => m.peer_disconnected(),
            }
        }
        self
    }

    async fn execute(&mut self, io: Io) {
        let net = self.net.clone();
        let result = match io {
            Io::Subscribe(t) => net.subscribe(&t).await,
            Io::Unsubscribe(t) => net.unsubscribe(&t).await,
            Io::Provide(key) => net.provide(key).await,
            Io::Publish { topic, data } => {
                if let Some(m) = &self.metrics {
                    m.gossip_out();
                }
                net.publish(&topic, data).await
            }
            Io::Report {
                message,
                source,
                verdict,
            } => {
                let acceptance = match verdict {
                    Verdict::Accept => MessageAcceptance::Accept,
                    Verdict::Reject => MessageAcceptance::Reject,
                    Verdict::Ignore => MessageAcceptance::Ignore,
                };
                net.report(message, source, acceptance).await
            }
            Io::Block(peer) => net.block(peer, true).await,
            Io::Unblock(peer) => net.block(peer, false).await,
            Io::SeedDone { id, result } => {
                if let Some(reply) = self.seeds.remove(&id) {
                    let _ = reply.send(result);
                }
                Ok(())
            }
            Io::Request { id, peer, request } => {
                let done = self.done.clone();
                tokio::spawn(async move {
                    let r = request_once(&net, peer, &request).await;
                    let _ = done.send(Done::Answered(id, r)).await;
                });
                Ok(())
            }
            Io::Fetch {
                id,
                peer,
                repo,
                tips,
            } => {
                let (done, replica) = (self.done.clone(), Arc::clone(&self.replica));
                tokio::spawn(async move {
                    let r = fetch::fetch(&net, replica, peer, repo, tips).await;
                    let _ = done.send(Done::Fetched(id, r)).await;
                });
                Ok(())
            }
            Io::FetchLfs {
                id,
                peer,
                repo,
                pointer,
            } => {
                let (done, replica) = (self.done.clone(), Arc::clone(&self.replica));
                tokio::spawn(async move {
                    let r = lfs::fetch(&net, replica, peer, repo, pointer).await;
                    let _ = done.send(Done::Fetched(id, r)).await;
                });
                Ok(())
            }
            Io::FindProviders { id, key } => {
                let done = self.done.clone();
                tokio::spawn(async move {
                    let found = net.find_providers(key).await.unwrap_or_default();
                    let _ = done.send(Done::Providers(id, found)).await;
                });
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "replication I/O failed");
        }
    }
}

fn on_command<R: Replica>(s: &mut Service<R>, command: Command) {
    match command {
        Command::Follow(seeded) => s.follow(&seeded),
        Command::Unfollow(seeded) => s.unfollow(&seeded),
        Command::Announce(seeded, update) => s.announce(&seeded, &update),
        Command::AnnounceIdentity(seeded, versions) => s.announce_identity(&seeded, versions),
        Command::AntiEntropy => s.anti_entropy(),
        Command::Seed(..) => {}
    }
}

/// Send one request and read its answer.
async fn request_once(
    net: &Handle,
    peer: PeerId,
    request: &Request,
) -> std::result::Result<Items, Failure> {
    let exchange = async {
        let mut stream = net.open_stream(peer, REPLICATION_PROTOCOL).await?;
        write_frame(&mut stream, request).await?;
        read_frame::<_, Items>(&mut stream).await
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Err(_) => Err(Failure::Timeout),
        Ok(Ok(items)) => Ok(items),
        Ok(Err(Error::Peer(m))) => Err(Failure::Peer(m)),
        Ok(Err(e)) => Err(Failure::Dropped(e.to_string())),
    }
}

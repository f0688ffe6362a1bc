//! Exchanging logs and identities with peers: catch-up on connection,
//! periodic comparison of log summaries (anti-entropy), and seeding a
//! repository from the peers that have it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use guts_git::names::RepoName;
use guts_git::ObjectId;
use guts_identity::{RepoId, SignedRefUpdate};
use libp2p::PeerId;
use prost::Message;

use super::{
    blocking, needs_identity, undecodable_update, Fault, Plan, Replica, Replicator, Seeded,
};
use crate::error::{Error, Result};
use crate::limits::{MAX_LOG_PAGES, REQUEST_ATTEMPTS, REQUEST_RETRY_DELAY};
use crate::wire::{
    read_frame, write_frame, Items, Kind, LogSummary, Request, REPLICATION_PROTOCOL,
};

impl<R: Replica> Replicator<R> {
    /// Compare log summaries with connected peers every `every`.
    pub(super) fn spawn_anti_entropy(&self, every: Duration) {
        let syncer = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                syncer.anti_entropy().await;
            }
        });
    }

    /// Compare log summaries with every connected peer for every followed
    /// repository, and exchange logs where they differ: updates whose
    /// announcement was lost, or whose transfer failed, arrive even between
    /// nodes that stay connected.
    pub async fn anti_entropy(&self) {
        let (Ok(seeded), Ok(status)) = (self.replica_seeded().await, self.net.status().await)
        else {
            return;
        };
        for s in &seeded {
            let replica = Arc::clone(&self.replica);
            let r = s.name.clone();
            let Ok(Some(ours)) = blocking(move || replica.log_summary(&r)).await else {
                continue;
            };
            for &peer in &status.connected {
                self.compare_with(peer, &s.name, &ours).await;
            }
        }
    }

    /// Compare `peer`'s log summary of `repo` with `ours`; take its newer
    /// identity document versions, and exchange logs if the updates differ.
    async fn compare_with(&self, peer: PeerId, repo: &RepoName, ours: &LogSummary) {
        let theirs = match self.request_items(peer, Kind::LogSummary, repo).await {
            Ok(items) => items.into_iter().next(),
            Err(_) => return,
        };
        let Some(theirs) = theirs else { return };
        let theirs = match LogSummary::decode(&theirs[..]) {
            Ok(theirs) => theirs,
            Err(e) => {
                tracing::warn!(%peer, %repo, error = %e, "undecodable log summary");
                return;
            }
        };
        if theirs.doc_versions > ours.doc_versions {
            // A document change with no push after it.
            if let Err(e) = self.take_identity(peer, repo).await {
                tracing::warn!(%peer, %repo, error = %e, "identity exchange failed");
            }
        }
        if !theirs.same_updates(ours) {
            tracing::debug!(%peer, %repo, "logs differ; exchanging");
            if let Err(e) = self.sync_repo(peer, repo).await {
                tracing::warn!(%peer, %repo, error = %e, "log exchange failed");
            }
        }
    }

    /// Take `peer`'s newer identity document versions of `repo` (verified
    /// as a chain from the versions held).
    pub(super) async fn take_identity(&self, peer: PeerId, repo: &RepoName) -> Result<()> {
        let versions = self.request_items(peer, Kind::Identity, repo).await?;
        let replica = Arc::clone(&self.replica);
        let r = repo.clone();
        blocking(move || replica.adopt(&r, &versions))
            .await?
            .map(|_| ())
            .map_err(Error::from)
    }

    /// Exchange logs with `peer` for every followed repository.
    pub(super) async fn catch_up_with(&self, peer: PeerId) -> Result<()> {
        for s in self.replica_seeded().await? {
            self.sync_repo(peer, &s.name).await?;
        }
        Ok(())
    }

    /// Ask `peer` for `kind` of `repo`. A stream the peer drops before
    /// answering (it was busy accepting another, or over its limits) is
    /// opened again, up to [`REQUEST_ATTEMPTS`] times.
    async fn request_items(
        &self,
        peer: PeerId,
        kind: Kind,
        repo: &RepoName,
    ) -> Result<Vec<Vec<u8>>> {
        self.request(peer, kind, repo, 0).await.map(|i| i.items)
    }

    async fn request(
        &self,
        peer: PeerId,
        kind: Kind,
        repo: &RepoName,
        start: u64,
    ) -> Result<Items> {
        let mut attempt = 1;
        loop {
            match self.request_once(peer, kind, repo, start).await {
                Err(Error::Io(e)) if attempt < REQUEST_ATTEMPTS => {
                    tracing::debug!(%peer, %repo, attempt, error = %e, "request dropped; asking again");
                    tokio::time::sleep(REQUEST_RETRY_DELAY * attempt).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn request_once(
        &self,
        peer: PeerId,
        kind: Kind,
        repo: &RepoName,
        start: u64,
    ) -> Result<Items> {
        let mut stream = self.net.open_stream(peer, REPLICATION_PROTOCOL).await?;
        write_frame(
            &mut stream,
            &Request {
                kind: kind as i32,
                repo: repo.to_string(),
                start,
                ..Default::default()
            },
        )
        .await?;
        let items: Items = read_frame(&mut stream).await?;
        if !items.error.is_empty() {
            return Err(Error::Replica(format!("{peer}: {}", items.error)));
        }
        Ok(items)
    }

    /// Fetch `peer`'s log of `repo` and apply what is missing, in order.
    pub async fn sync_repo(&self, peer: PeerId, repo: &RepoName) -> Result<usize> {
        match self.pull_log(peer, repo).await {
            Ok(applied) => Ok(applied),
            Err(e) => {
                tracing::debug!(%peer, %repo, error = %e, "peer has no log for this repository");
                Ok(0)
            }
        }
    }

    /// Ask for `peer`'s log page by page and apply each page; returns how
    /// many entries were new. Fails only if the first page cannot be had.
    async fn pull_log(&self, peer: PeerId, repo: &RepoName) -> Result<usize> {
        let (mut start, mut applied) = (0u64, 0);
        for page in 0..MAX_LOG_PAGES {
            let items = match self.request(peer, Kind::Log, repo, start).await {
                Ok(items) => items,
                Err(e) if page == 0 => return Err(e),
                Err(e) => {
                    tracing::warn!(%peer, %repo, start, error = %e, "log page refused");
                    break;
                }
            };
            applied += self.apply_log(peer, repo, items.items).await;
            if items.next == 0 {
                return Ok(applied);
            }
            if items.next <= start {
                tracing::warn!(%peer, %repo, start, next = items.next, "log pages go backwards; stopped");
                break;
            }
            start = items.next;
        }
        Ok(applied)
    }

    /// Apply a peer's log entries one by one; returns how many were new.
    async fn apply_log(&self, peer: PeerId, repo: &RepoName, entries: Vec<Vec<u8>>) -> usize {
        let lock = self.repo_lock(repo);
        let _applying = lock.lock().await;
        // Check every entry first, so that the objects of all the new ones
        // come in one fetch: a node that missed many updates still makes
        // one round trip for their objects.
        let (ready, wants) = self.plan_log(peer, repo, entries).await;
        if !wants.is_empty() {
            if let Err(e) = self.fetch_tips(peer, repo, &wants).await {
                for _ in &ready {
                    tracing::warn!(%peer, %repo, error = %e, "log entry refused");
                }
                return 0;
            }
        }
        let mut applied = 0;
        for checked in ready {
            match self.apply(checked).await {
                Ok(true) => applied += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(%peer, %repo, error = %e, "log entry refused"),
            }
        }
        if applied > 0 {
            tracing::info!(%peer, %repo, applied, "caught up");
        }
        applied
    }

    /// Decode and plan a peer's log entries: the checked new ones, in
    /// order, and the tips (each once) whose objects they need.
    async fn plan_log(
        &self,
        peer: PeerId,
        repo: &RepoName,
        entries: Vec<Vec<u8>>,
    ) -> (Vec<R::Checked>, Vec<ObjectId>) {
        let mut ready = Vec::new();
        let mut wants = Vec::new();
        let mut wanted = HashSet::new();
        for bytes in entries {
            let planned = match SignedRefUpdate::decode(&bytes[..]) {
                Ok(update) => self.plan_from(peer, repo, update).await,
                Err(e) => Err(undecodable_update(e)),
            };
            match planned {
                Ok(Plan::Known) => {}
                Ok(Plan::Apply { missing, checked }) => {
                    for tip in missing {
                        if wanted.insert(tip) {
                            wants.push(tip);
                        }
                    }
                    ready.push(checked);
                }
                Ok(Plan::NeedIdentity) => {
                    let e = needs_identity();
                    tracing::warn!(%peer, %repo, error = %e, "log entry refused");
                }
                Err(e) => tracing::warn!(%peer, %repo, error = %e, "log entry refused"),
            }
        }
        (ready, wants)
    }

    /// Start following `repo`: find peers that have it, take its identity
    /// from the first that answers with a valid document chain, then its log
    /// and objects.
    pub async fn seed(&self, repo: &RepoName) -> Result<RepoId> {
        let mut peers = self.net.status().await?.connected;
        peers.sort();
        let known = self
            .replica_seeded()
            .await?
            .into_iter()
            .find(|s| s.name == *repo);
        if let Some(s) = known {
            self.follow(&s).await?;
            for p in peers {
                self.sync_repo(p, repo).await?;
            }
            return Ok(s.id);
        }
        // Connected peers first; the DHT's providers only if none of them has it.
        let mut tried = Vec::new();
        let first = match self.seed_from(repo, &peers, &mut tried).await {
            Ok(id) => return Ok(id),
            Err(e) => {
                tracing::debug!(%repo, error = %e, "no connected peer has it; asking the DHT");
                e
            }
        };
        let providers: Vec<PeerId> = self
            .net
            .find_providers(repo.to_string().into_bytes())
            .await?
            .into_iter()
            .filter(|p| !tried.contains(p) && *p != self.net.peer_id())
            .collect();
        if providers.is_empty() {
            // Say why the connected peers failed, not only that the DHT had no one else.
            return Err(first);
        }
        self.seed_from(repo, &providers, &mut tried).await
    }

    /// Seed `repo` from the first of `peers` that gives a valid identity
    /// and its log; each peer asked is added to `tried`.
    async fn seed_from(
        &self,
        repo: &RepoName,
        peers: &[PeerId],
        tried: &mut Vec<PeerId>,
    ) -> Result<RepoId> {
        let mut last_err = Error::Replica(format!("no peer has {repo}"));
        for &peer in peers {
            tried.push(peer);
            // One request at a time: libp2p-stream drops an inbound stream
            // that arrives while the peer's accept loop is still taking the
            // previous one from the same connection.
            let versions = match self.request_items(peer, Kind::Identity, repo).await {
                Ok(v) => v,
                Err(e) => {
                    last_err = e;
                    continue;
                }
            };
            let replica = Arc::clone(&self.replica);
            let r = repo.clone();
            match blocking(move || replica.adopt(&r, &versions)).await? {
                Ok(id) => {
                    let s = Seeded {
                        name: repo.clone(),
                        id,
                    };
                    self.follow(&s).await?;
                    // The peer that gave the identity must give its log too:
                    // seeding must not report success with nothing copied.
                    self.pull_log(peer, repo).await?;
                    tracing::info!(%repo, %peer, "seeding");
                    return Ok(id);
                }
                Err(Fault::Peer(e) | Fault::Interrupted(e)) => {
                    tracing::warn!(%peer, %repo, error = %e, "peer sent an invalid identity");
                    last_err = Error::Peer(e);
                }
                Err(Fault::Local(e)) => {
                    tracing::warn!(%peer, %repo, error = %e, "cannot take the repository's identity");
                    last_err = Error::Replica(e);
                }
            }
        }
        Err(last_err)
    }
}

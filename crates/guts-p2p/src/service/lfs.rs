//! Git LFS objects of replicated updates (ADR 0024): once an update is
//! applied (refs first), the objects named by the LFS pointers among its
//! new blobs that this node lacks are fetched, one at a time, from the peer
//! the update came from, then from other connected peers. An object no peer
//! gave waits for the next round: the next applied update or log
//! comparison of the repository (every `--sync-interval`). A peer that
//! sends a wrong object gets a strike.

use std::collections::VecDeque;

use guts_git::lfs::LfsPointer;
use guts_git::names::RepoName;
use libp2p::PeerId;

use super::{Failure, OpKind, Outcome, Service, Task, TaskId};
use crate::limits::{MAX_LFS_PEERS, MAX_LFS_PER_ROUND};
use crate::replication::Replica;

/// One round of fetching a repository's missing LFS objects.
pub(super) struct LfsRound {
    repo: RepoName,
    /// Objects still to fetch in this round, the first being fetched.
    wants: VecDeque<LfsPointer>,
    /// Peers to ask, in order (at most [`MAX_LFS_PEERS`]).
    peers: Vec<PeerId>,
    /// The peer (index in `peers`) asked for the first of `wants`.
    at: usize,
    fetched: usize,
    missing: usize,
}

impl<R: Replica> Service<R> {
    /// Fetch the LFS objects of `repo` that this node lacks (at most
    /// [`MAX_LFS_PER_ROUND`]), asking `first` before the other connected
    /// peers; nothing if a round is under way for `repo` already.
    pub(super) fn fetch_lfs(&mut self, repo: &RepoName, first: PeerId) {
        if self.lfs_rounds.contains_key(repo) {
            return;
        }
        let wants: VecDeque<LfsPointer> = self.replica.lfs_wanted(repo, MAX_LFS_PER_ROUND).into();
        if wants.is_empty() {
            return;
        }
        let mut peers = vec![first];
        let others: Vec<PeerId> = self
            .connected
            .iter()
            .filter(|p| **p != first && **p != self.local && !self.is_blocked(p))
            .take(MAX_LFS_PEERS.saturating_sub(1))
            .copied()
            .collect();
        peers.extend(others);
        tracing::info!(%repo, objects = wants.len(), peers = peers.len(), "fetching LFS objects from peers");
        let task = self.id();
        self.lfs_rounds.insert(repo.clone(), task);
        let round = LfsRound {
            repo: repo.clone(),
            wants,
            peers,
            at: 0,
            fetched: 0,
            missing: 0,
        };
        self.lfs_next(task, round);
    }

    /// Ask for the next object (from the next peer), or end the round.
    fn lfs_next(&mut self, task: TaskId, mut r: LfsRound) {
        while let Some(pointer) = r.wants.front().copied() {
            let peer = r.peers.get(r.at).copied();
            let held = self.replica.lfs_has(&r.repo, &pointer.oid);
            match peer {
                _ if held => {}
                None => {
                    tracing::warn!(repo = %r.repo, oid = %pointer.oid, size = pointer.size, "no peer gave this LFS object; asking again at the next log comparison");
                    r.missing += 1;
                }
                Some(peer) => {
                    let kind = OpKind::Lfs {
                        repo: r.repo.clone(),
                        pointer,
                    };
                    self.tasks.insert(task, Task::Lfs(r));
                    return self.new_op(task, peer, kind);
                }
            }
            r.wants.pop_front();
            r.at = 0;
        }
        self.lfs_rounds.remove(&r.repo);
        tracing::info!(repo = %r.repo, fetched = r.fetched, missing = r.missing, "LFS objects fetched from peers");
    }

    /// The outcome of one object's transfer from `peer`.
    pub(super) fn lfs_outcome(
        &mut self,
        task: TaskId,
        mut r: LfsRound,
        peer: PeerId,
        outcome: Outcome,
    ) {
        match outcome {
            Outcome::Fetched => {
                self.counts.lfs_fetched += 1;
                r.fetched += 1;
                r.wants.pop_front();
                r.at = 0;
            }
            Outcome::Failed(f) => {
                self.counts.lfs_failed += 1;
                let oid = r.wants.front().map(|p| p.oid);
                match &f {
                    Failure::Peer(why) => {
                        tracing::warn!(%peer, repo = %r.repo, ?oid, error = %f, "a peer sent a wrong LFS object");
                        self.strike(peer, why);
                    }
                    Failure::Local(_) => {
                        // This node's failure (its disk): the other objects
                        // would fail too; the next round tries again.
                        tracing::warn!(repo = %r.repo, ?oid, error = %f, "cannot store LFS objects");
                        r.missing += r.wants.len();
                        r.wants.clear();
                    }
                    _ => {
                        tracing::debug!(%peer, repo = %r.repo, ?oid, error = %f, "LFS object not had from this peer")
                    }
                }
                r.at += 1;
            }
            Outcome::Items(_) | Outcome::Providers(_) => r.at += 1,
        }
        self.lfs_next(task, r);
    }
}

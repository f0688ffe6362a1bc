//! Following a new repository: take its identity from the first peer that
//! gives a valid document chain (connected peers first, then the DHT's
//! providers), then compare logs with that peer; seeding succeeds only once
//! its log and objects are here.

use std::collections::VecDeque;

use guts_git::names::RepoName;
use libp2p::PeerId;

use super::{Io, OpId, OpKind, Outcome, Service, Task, TaskId};
use crate::replication::{Replica, Seeded};
use crate::wire::{Kind, Request};

/// A seeding under way.
pub(super) struct Seeding {
    /// The id given to [`Service::seed`], reported in [`Io::SeedDone`].
    id: OpId,
    repo: RepoName,
    candidates: VecDeque<PeerId>,
    tried: Vec<PeerId>,
    asked_dht: bool,
    last_error: String,
}

impl<R: Replica> Service<R> {
    /// Start following `repo`; [`Io::SeedDone`] with `id` tells how it
    /// ended. A repository followed already is compared with the connected
    /// peers (the first comparison ends the seeding).
    pub fn seed(&mut self, id: OpId, repo: RepoName, now: super::Time) {
        self.now = now;
        if let Some(s) = self.seeded(&repo) {
            if self.replica.identity(&repo).is_some() {
                return self.seed_known(id, s);
            }
        }
        let candidates: VecDeque<PeerId> = self.connected.iter().copied().collect();
        let seeding = Seeding {
            id,
            last_error: format!("no peer has {repo}"),
            repo,
            candidates,
            tried: Vec::new(),
            asked_dht: false,
        };
        let task = self.id();
        self.try_next(task, seeding);
    }

    fn seed_known(&mut self, id: OpId, s: Seeded) {
        self.follow(&s);
        let peers: Vec<PeerId> = self.connected.iter().copied().collect();
        let Some((first, others)) = peers.split_first() else {
            return self.push(Io::SeedDone {
                id,
                result: Ok(s.id),
            });
        };
        self.start_session(*first, s.name.clone(), Some(id));
        for p in others {
            self.start_session(*p, s.name.clone(), None);
        }
    }

    /// Ask the next candidate for the identity; when none is left, ask the
    /// DHT once; then give up.
    fn try_next(&mut self, task: TaskId, mut s: Seeding) {
        while let Some(peer) = s.candidates.pop_front() {
            if peer == self.local || s.tried.contains(&peer) || self.is_blocked(&peer) {
                continue;
            }
            s.tried.push(peer);
            let req = Request {
                kind: Kind::Identity as i32,
                repo: s.repo.to_string(),
                ..Default::default()
            };
            self.request(task, peer, req);
            self.tasks.insert(task, Task::Seed(s));
            return;
        }
        if !s.asked_dht {
            s.asked_dht = true;
            let key = s.repo.to_string().into_bytes();
            self.new_op(task, self.local, OpKind::Providers(key));
            self.tasks.insert(task, Task::Seed(s));
            return;
        }
        self.push(Io::SeedDone {
            id: s.id,
            result: Err(s.last_error),
        });
    }

    pub(super) fn seed_outcome(
        &mut self,
        task: TaskId,
        mut s: Seeding,
        peer: PeerId,
        outcome: Outcome,
    ) {
        match outcome {
            Outcome::Items(items) => match self.replica.adopt(&s.repo, &items.items) {
                Ok(id) => {
                    let seeded = Seeded {
                        name: s.repo.clone(),
                        id,
                    };
                    self.follow(&seeded);
                    // The peer that gave the identity must give its log too.
                    return self.start_session(peer, s.repo, Some(s.id));
                }
                Err(e) => {
                    tracing::warn!(%peer, repo = %s.repo, error = %e, "peer sent an unusable identity");
                    if let crate::replication::Fault::Peer(why) = &e {
                        self.strike(peer, why);
                    }
                    s.last_error = e.to_string();
                }
            },
            Outcome::Providers(found) => {
                tracing::debug!(repo = %s.repo, providers = found.len(), "providers found in the DHT");
                s.candidates.extend(found);
            }
            Outcome::Failed(f) => s.last_error = format!("{peer}: {f}"),
            Outcome::Fetched => {}
        }
        self.try_next(task, s);
    }
}

//! The service's bookkeeping of ops (requests, transfers, provider
//! queries): starting them one stream at a time per peer, retrying them,
//! handing their outcomes to their tasks; and the repository slot that lets
//! one task at a time plan, fetch and apply updates of a repository.

use std::collections::VecDeque;

use guts_git::names::RepoName;
use libp2p::PeerId;

use super::{Failure, Io, Op, OpId, OpKind, Outcome, Ready, Service, Task, TaskId, Time};
use crate::limits::{FETCH_ATTEMPTS, FETCH_RETRY_DELAY, REQUEST_ATTEMPTS, REQUEST_RETRY_DELAY};
use crate::replication::Replica;
use crate::wire::Request;

impl<R: Replica> Service<R> {
    /// Fail the ops refused because their peer is blocked (their tasks
    /// end or move on, which may refuse more).
    pub(super) fn settle_refused(&mut self) {
        while !self.refused.is_empty() {
            for id in std::mem::take(&mut self.refused) {
                let blocked = Failure::Refused("the peer is blocked".into());
                self.complete(id, Outcome::Failed(blocked));
            }
        }
    }

    /// Ask `peer` for something, on behalf of `task`.
    pub(super) fn request(&mut self, task: TaskId, peer: PeerId, request: Request) {
        self.new_op(task, peer, OpKind::Request(request));
    }

    pub(super) fn new_op(&mut self, task: TaskId, peer: PeerId, kind: OpKind) {
        let op = Op {
            task,
            peer,
            kind,
            attempt: 1,
            deadline: 0,
            holds_stream: false,
        };
        let id = self.id();
        self.start_op(id, op);
    }

    pub(super) fn start_op(&mut self, id: OpId, mut op: Op) {
        let streams = !matches!(op.kind, OpKind::Providers(_));
        if streams && self.is_blocked(&op.peer) {
            // Nothing is asked of a blocked peer: the op fails instead.
            op.deadline = Time::MAX;
            self.ops.insert(id, op);
            self.refused.push(id);
            return;
        }
        if streams && !self.streaming.insert(op.peer) {
            self.queued.entry(op.peer).or_default().push_back((id, op));
            return;
        }
        op.holds_stream = streams;
        let (io, timeout) = match &op.kind {
            OpKind::Request(r) => (
                Io::Request {
                    id,
                    peer: op.peer,
                    request: r.clone(),
                },
                self.config.request_timeout,
            ),
            OpKind::Fetch { repo, tips } => (
                Io::Fetch {
                    id,
                    peer: op.peer,
                    repo: repo.clone(),
                    tips: tips.clone(),
                },
                self.config.fetch_timeout,
            ),
            OpKind::Lfs { repo, pointer } => (
                Io::FetchLfs {
                    id,
                    peer: op.peer,
                    repo: repo.clone(),
                    pointer: *pointer,
                },
                self.config.fetch_timeout,
            ),
            OpKind::Providers(key) => (
                Io::FindProviders {
                    id,
                    key: key.clone(),
                },
                self.config.request_timeout,
            ),
        };
        op.deadline = self.now + timeout;
        self.ops.insert(id, op);
        self.push(io);
    }

    /// An op ended: try it again if that may help, else give the outcome to
    /// its task.
    pub(super) fn complete(&mut self, id: OpId, outcome: Outcome) {
        let Some(op) = self.ops.remove(&id) else {
            return; // Late, after a timeout: already handled.
        };
        if op.holds_stream {
            self.streaming.remove(&op.peer);
            let next = self.queued.get_mut(&op.peer).and_then(VecDeque::pop_front);
            if self.queued.get(&op.peer).is_some_and(VecDeque::is_empty) {
                self.queued.remove(&op.peer);
            }
            if let Some((next_id, next)) = next {
                self.start_op(next_id, next);
            }
        }
        if let Outcome::Failed(f) = &outcome {
            let retry = match (&op.kind, f) {
                (OpKind::Request(_), Failure::Dropped(_) | Failure::Timeout) => {
                    (op.attempt < REQUEST_ATTEMPTS).then_some(REQUEST_RETRY_DELAY)
                }
                (
                    OpKind::Fetch { .. } | OpKind::Lfs { .. },
                    Failure::Interrupted(_) | Failure::Dropped(_) | Failure::Timeout,
                ) => (op.attempt < FETCH_ATTEMPTS).then_some(FETCH_RETRY_DELAY),
                _ => None,
            };
            if let Some(delay) = retry {
                if let OpKind::Fetch { repo, .. } = &op.kind {
                    tracing::warn!(peer = %op.peer, %repo, attempt = op.attempt, error = %f, "object transfer broke off; resuming");
                } else if let OpKind::Lfs { repo, pointer } = &op.kind {
                    tracing::warn!(peer = %op.peer, %repo, oid = %pointer.oid, attempt = op.attempt, error = %f, "LFS object transfer broke off; resuming");
                } else {
                    tracing::debug!(peer = %op.peer, attempt = op.attempt, error = %f, "request dropped; asking again");
                }
                let at = self.now + delay.as_millis() as Time * Time::from(op.attempt);
                let again = Op {
                    attempt: op.attempt + 1,
                    holds_stream: false,
                    ..op
                };
                let new_id = self.id();
                self.delayed.insert((at, new_id), again);
                return;
            }
        }
        let task = op.task;
        match self.tasks.remove(&task) {
            Some(Task::Session(s)) => self.session_outcome(task, s, op.peer, outcome),
            Some(Task::Announce(a)) => self.announce_outcome(task, a, outcome),
            Some(Task::Seed(s)) => self.seed_outcome(task, s, op.peer, outcome),
            Some(Task::Lfs(r)) => self.lfs_outcome(task, r, op.peer, outcome),
            None => {}
        }
    }

    /// Take the repository for `task`, or queue the task behind the one
    /// holding it (it is resumed by [`Service::release`]).
    pub(super) fn acquire(&mut self, repo: &RepoName, task: TaskId) -> bool {
        match self.busy.get(repo) {
            None => {
                self.busy.insert(repo.clone(), task);
                true
            }
            Some(&holder) if holder == task => true,
            Some(_) => {
                self.waiting
                    .entry(repo.clone())
                    .or_default()
                    .push_back(task);
                false
            }
        }
    }

    /// `task` is done with the repository: resume the next one waiting.
    /// Tasks that end at once (an announcement already known) release it
    /// again; they are resumed in a loop, not by recursion, however many
    /// wait.
    pub(super) fn release(&mut self, repo: &RepoName, task: TaskId) {
        if self.busy.get(repo) != Some(&task) {
            return;
        }
        self.busy.remove(repo);
        if self.releasing {
            return;
        }
        self.releasing = true;
        while let Some(repo) = self
            .waiting
            .keys()
            .find(|r| !self.busy.contains_key(*r))
            .cloned()
        {
            let next = self.waiting.get_mut(&repo).and_then(VecDeque::pop_front);
            if self.waiting.get(&repo).is_some_and(VecDeque::is_empty) {
                self.waiting.remove(&repo);
            }
            let Some(next) = next else { continue };
            self.busy.insert(repo.clone(), next);
            match self.tasks.remove(&next) {
                Some(Task::Session(s)) => self.session_resume(next, s),
                Some(Task::Announce(a)) => self.announce_resume(next, a),
                Some(other) => {
                    self.tasks.insert(next, other);
                    self.busy.remove(&repo);
                }
                None => {
                    self.busy.remove(&repo);
                }
            }
        }
        self.releasing = false;
    }

    /// Apply verified updates whose objects are present; returns how many
    /// changed something. A few updates taken from a peer's log are
    /// announced, as those received by gossip are: otherwise what crossed a
    /// healed partition would spread one hop per sync interval. A long
    /// catch-up is not (peers compare logs instead).
    pub(super) fn apply_all(&mut self, repo: &RepoName, ready: Ready<R::Checked>) -> usize {
        let announce = ready.len() <= super::MAX_ANNOUNCED_CATCH_UP;
        let seeded = self.seeded(repo);
        let mut applied = 0;
        for (update, checked) in ready {
            match self.replica.apply(checked) {
                Ok(true) => {
                    applied += 1;
                    if let Some(s) = seeded.as_ref().filter(|_| announce) {
                        self.announce(s, &update);
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(%repo, error = %e, "update not applied"),
            }
        }
        applied
    }
}

//! Log comparison with one peer for one repository (ADR 0016): the
//! summary (with the peer's buckets when they differ from ours), then the
//! entries of the buckets that differ whose keys this node lacks (or, when
//! it holds too many keys in them to list, their keys first), whose objects
//! come in one fetch per page of entries.

use std::collections::HashSet;

use guts_git::names::RepoName;
use guts_git::ObjectId;
use guts_identity::SignedRefUpdate;
use libp2p::PeerId;
use prost::Message;

use super::{Failure, OpId, OpKind, Outcome, Ready, Service, Task, TaskId};
use crate::limits::MAX_LOG_ENTRIES;
use crate::logset::{Buckets, Key};
use crate::replication::{Fault, Plan, Replica};
use crate::wire::{Items, Kind, LogSummary, Request};

/// A log comparison under way.
pub(super) struct Session<C> {
    peer: PeerId,
    repo: RepoName,
    /// The seeding to report when this comparison ends.
    seed: Option<OpId>,
    state: State<C>,
    /// Whether the peer's identity document versions were taken already
    /// (asked at most once per comparison).
    identity_taken: bool,
    applied: usize,
}

enum State<C> {
    Summary,
    /// The peer holds newer identity document versions: taking them.
    Identity {
        theirs: LogSummary,
        buckets: Option<Buckets>,
    },
    Buckets,
    Keys,
    /// Asked for the entries of `asked`; `rest` to ask next.
    Entries {
        asked: Vec<Key>,
        rest: Next,
    },
    /// Asked for a range of entries (`Next::Range`).
    Range {
        buckets: Vec<u8>,
        haves: Vec<Key>,
        after: Option<Key>,
    },
    /// Entries received, waiting for the repository (another task is
    /// applying to it).
    Waiting {
        entries: Vec<Vec<u8>>,
        rest: Next,
    },
    /// An entry needs identity document versions the peer holds.
    EntryIdentity {
        entries: Vec<Vec<u8>>,
        rest: Next,
    },
    Fetching {
        ready: Ready<C>,
        rest: Next,
    },
}

/// What to ask for once the entries at hand are applied.
pub(super) enum Next {
    /// The entries of these keys.
    Keys(Vec<Key>),
    /// Every entry of `buckets` whose key is above `after` and not in
    /// `haves` (this node's keys in those buckets).
    Range {
        buckets: Vec<u8>,
        haves: Vec<Key>,
        after: Option<Key>,
    },
    /// Nothing: the comparison is over.
    Done,
}

/// Most keys of its own in the buckets that differ for which this node asks
/// for the peer's other entries of those buckets at once (sending its keys
/// along); beyond, it asks for the peer's keys first.
const MAX_HAVES: usize = 20_000;

fn request(kind: Kind, repo: &RepoName) -> Request {
    Request {
        kind: kind as i32,
        repo: repo.to_string(),
        ..Default::default()
    }
}

/// The keys of a `Keys` answer; every item must be 32 bytes.
fn keys_of(items: Items) -> Result<Vec<Key>, Failure> {
    items
        .items
        .into_iter()
        .map(|k| {
            Key::try_from(k.as_slice())
                .map_err(|_| Failure::Peer(format!("a key of {} bytes", k.len())))
        })
        .collect()
}

impl<R: Replica> Service<R> {
    /// Compare logs of `repo` with `peer`, unless a comparison with it is
    /// under way already.
    pub(super) fn start_session(&mut self, peer: PeerId, repo: RepoName, seed: Option<OpId>) {
        if self.sessions.contains_key(&(peer, repo.clone())) || self.is_blocked(&peer) {
            if let Some(id) = seed {
                let result = self
                    .seeded(&repo)
                    .map(|s| s.id)
                    .ok_or_else(|| format!("{repo} is not seeded"));
                self.push(super::Io::SeedDone { id, result });
            }
            return;
        }
        let task = self.id();
        self.sessions.insert((peer, repo.clone()), task);
        let mut req = request(Kind::LogSummary, &repo);
        // Ours, so that the peer sends its buckets along when they differ.
        if let Some(ours) = self.replica.log_summary(&repo) {
            req.summary = ours.encode_to_vec();
        }
        self.request(task, peer, req);
        let session = Session {
            peer,
            repo,
            seed,
            state: State::Summary,
            identity_taken: false,
            applied: 0,
        };
        self.tasks.insert(task, Task::Session(session));
    }

    pub(super) fn session_outcome(
        &mut self,
        task: TaskId,
        mut s: Session<R::Checked>,
        peer: PeerId,
        outcome: Outcome,
    ) {
        let items = match outcome {
            Outcome::Items(items) => items,
            Outcome::Fetched => {
                return match std::mem::replace(&mut s.state, State::Summary) {
                    State::Fetching { ready, rest } => {
                        s.applied += self.apply_all(&s.repo, ready);
                        self.release(&s.repo, task);
                        self.next_entries(task, s, rest);
                    }
                    _ => self.end(task, s, Err(Failure::Local("unexpected transfer".into()))),
                };
            }
            Outcome::Providers(_) => {
                return self.end(task, s, Err(Failure::Local("unexpected providers".into())))
            }
            Outcome::Failed(f) => {
                if let State::Fetching { ready, .. } = &s.state {
                    tracing::warn!(%peer, repo = %s.repo, entries = ready.len(), error = %f, "log entry refused: its objects could not be had");
                }
                if let Failure::Peer(why) = &f {
                    self.strike(peer, why);
                }
                return self.end(task, s, Err(f));
            }
        };
        let step = match std::mem::replace(&mut s.state, State::Summary) {
            State::Summary => self.on_summary(task, &mut s, items),
            State::Identity { theirs, buckets } => {
                self.on_identity(task, &mut s, items, theirs, buckets)
            }
            State::Buckets => Buckets::decode(items.items.first().map_or(&[][..], |b| &b[..]))
                .ok_or_else(|| Failure::Peer("undecodable log buckets".into()))
                .map(|theirs| self.after_buckets(task, &mut s, &theirs)),
            State::Keys => keys_of(items).map(|keys| {
                let missing: Vec<Key> = keys
                    .into_iter()
                    .filter(|k| !self.replica.is_logged(&s.repo, k))
                    .collect();
                Some(Next::Keys(missing))
            }),
            State::Entries { asked, rest } => return self.on_entries(task, s, items, asked, rest),
            State::Range {
                buckets,
                haves,
                after,
            } => return self.on_range(task, s, items, (buckets, haves, after)),
            State::EntryIdentity { entries, rest } => {
                s.identity_taken = true;
                match self.adopt(&s.repo, &items) {
                    Ok(()) => {
                        s.state = State::Waiting { entries, rest };
                        return self.session_resume(task, s);
                    }
                    Err(f) => Err(f),
                }
            }
            State::Waiting { .. } | State::Fetching { .. } => {
                Err(Failure::Local("unexpected answer".into()))
            }
        };
        match step {
            // Waiting for the next answer.
            Ok(None) => {
                self.tasks.insert(task, Task::Session(s));
            }
            Ok(Some(next)) => self.next_entries(task, s, next),
            Err(f) => {
                if let Failure::Peer(why) = &f {
                    self.strike(s.peer, why);
                }
                self.end(task, s, Err(f));
            }
        }
    }

    /// The peer's summary (and its buckets if they differ from ours):
    /// take its newer identity versions, and go on if the updates differ.
    /// `Ok(None)`: waiting; `Ok(Some(next))`: entries to ask.
    fn on_summary(
        &mut self,
        task: TaskId,
        s: &mut Session<R::Checked>,
        items: Items,
    ) -> Result<Option<Next>, Failure> {
        let theirs = items
            .items
            .first()
            .and_then(|b| LogSummary::decode(&b[..]).ok())
            .ok_or_else(|| Failure::Peer("no log summary".into()))?;
        let buckets = match items.items.get(1) {
            Some(b) => Some(
                Buckets::decode(b)
                    .ok_or_else(|| Failure::Peer("undecodable log buckets".into()))?,
            ),
            None => None,
        };
        let ours = self.replica.log_summary(&s.repo).unwrap_or_default();
        if theirs.doc_versions > ours.doc_versions && !s.identity_taken {
            self.request(task, s.peer, request(Kind::Identity, &s.repo));
            s.state = State::Identity { theirs, buckets };
            return Ok(None);
        }
        Ok(self.compare(task, s, &theirs, &ours, buckets))
    }

    fn on_identity(
        &mut self,
        task: TaskId,
        s: &mut Session<R::Checked>,
        items: Items,
        theirs: LogSummary,
        buckets: Option<Buckets>,
    ) -> Result<Option<Next>, Failure> {
        s.identity_taken = true;
        self.adopt(&s.repo, &items)?;
        let ours = self.replica.log_summary(&s.repo).unwrap_or_default();
        Ok(self.compare(task, s, &theirs, &ours, buckets))
    }

    /// Take identity document versions from a peer's answer.
    pub(super) fn adopt(&mut self, repo: &RepoName, items: &Items) -> Result<(), Failure> {
        match self.replica.adopt(repo, &items.items) {
            Ok(_) => Ok(()),
            Err(Fault::Peer(e)) => Err(Failure::Peer(e)),
            Err(Fault::Interrupted(e)) => Err(Failure::Interrupted(e)),
            Err(Fault::Local(e)) => Err(Failure::Local(e)),
        }
    }

    fn compare(
        &mut self,
        task: TaskId,
        s: &mut Session<R::Checked>,
        theirs: &LogSummary,
        ours: &LogSummary,
        buckets: Option<Buckets>,
    ) -> Option<Next> {
        if theirs.updates == 0 || theirs.same_updates(ours) {
            return Some(Next::Done);
        }
        tracing::debug!(peer = %s.peer, repo = %s.repo, theirs = theirs.updates, ours = ours.updates, "logs differ; comparing buckets");
        if let Some(theirs) = buckets {
            return self.after_buckets(task, s, &theirs);
        }
        self.request(task, s.peer, request(Kind::Buckets, &s.repo));
        s.state = State::Buckets;
        None
    }

    /// The peer's buckets: ask for the entries of those that differ,
    /// sending this node's keys in them, or for their keys first when this
    /// node holds too many.
    fn after_buckets(
        &mut self,
        task: TaskId,
        s: &mut Session<R::Checked>,
        theirs: &Buckets,
    ) -> Option<Next> {
        let ours = self.replica.log_buckets(&s.repo).unwrap_or_default();
        let wanted = ours.wanted_from(theirs);
        if wanted.is_empty() {
            return Some(Next::Done);
        }
        let held: u64 = wanted
            .iter()
            .filter_map(|&b| ours.0.get(usize::from(b)))
            .map(|b| b.count)
            .sum();
        if held <= MAX_HAVES as u64 {
            let haves = self.replica.log_keys(&s.repo, &wanted).unwrap_or_default();
            return Some(Next::Range {
                buckets: wanted,
                haves,
                after: None,
            });
        }
        let mut req = request(Kind::Keys, &s.repo);
        req.buckets = wanted;
        self.request(task, s.peer, req);
        s.state = State::Keys;
        None
    }

    /// Ask for the next page of entries, or end.
    fn next_entries(&mut self, task: TaskId, mut s: Session<R::Checked>, next: Next) {
        match next {
            Next::Done => self.end(task, s, Ok(())),
            Next::Keys(keys) if keys.is_empty() => self.end(task, s, Ok(())),
            Next::Keys(mut asked) => {
                let later = asked.split_off(asked.len().min(MAX_LOG_ENTRIES));
                let mut req = request(Kind::Entries, &s.repo);
                req.keys = asked.iter().map(|k| k.to_vec()).collect();
                self.request(task, s.peer, req);
                s.state = State::Entries {
                    asked,
                    rest: Next::Keys(later),
                };
                self.tasks.insert(task, Task::Session(s));
            }
            Next::Range {
                buckets,
                haves,
                after,
            } => {
                let mut req = request(Kind::Entries, &s.repo);
                req.buckets = buckets.clone();
                req.keys = haves.iter().map(|k| k.to_vec()).collect();
                req.after = after.map(|k| k.to_vec()).unwrap_or_default();
                self.request(task, s.peer, req);
                s.state = State::Range {
                    buckets,
                    haves,
                    after,
                };
                self.tasks.insert(task, Task::Session(s));
            }
        }
    }

    /// A page of a range: the entries, and the range after the last one
    /// if the page was cut (which must move forward).
    fn on_range(
        &mut self,
        task: TaskId,
        s: Session<R::Checked>,
        items: Items,
        (buckets, haves, before): (Vec<u8>, Vec<Key>, Option<Key>),
    ) {
        let last = items
            .items
            .iter()
            .filter_map(|e| SignedRefUpdate::decode(&e[..]).ok())
            .map(|u| u.key())
            .max();
        let rest = match (items.next, last) {
            (0, _) => Next::Done,
            (_, Some(after)) if Some(after) > before => Next::Range {
                buckets,
                haves,
                after: Some(after),
            },
            (_, _) => {
                self.strike(s.peer, "a log page out of bounds");
                return self.end(
                    task,
                    s,
                    Err(Failure::Peer("a cut log page that does not move on".into())),
                );
            }
        };
        self.wait_for_repo(task, s, items.items, rest);
    }

    /// Hold entries until the repository is this task's (at once if free).
    fn wait_for_repo(
        &mut self,
        task: TaskId,
        mut s: Session<R::Checked>,
        entries: Vec<Vec<u8>>,
        rest: Next,
    ) {
        s.state = State::Waiting { entries, rest };
        if self.acquire(&s.repo.clone(), task) {
            self.session_resume(task, s);
        } else {
            self.tasks.insert(task, Task::Session(s));
        }
    }

    fn on_entries(
        &mut self,
        task: TaskId,
        s: Session<R::Checked>,
        items: Items,
        mut asked: Vec<Key>,
        rest: Next,
    ) {
        let answered = match usize::try_from(items.next) {
            Ok(0) => asked.len(),
            Ok(n) => n.min(asked.len()),
            Err(_) => asked.len(),
        };
        if answered == 0 || items.items.len() > asked.len() {
            self.strike(s.peer, "a log page out of bounds");
            return self.end(
                task,
                s,
                Err(Failure::Peer("a log page out of bounds".into())),
            );
        }
        let mut unanswered = asked.split_off(answered);
        let rest = match rest {
            Next::Keys(mut later) => {
                unanswered.append(&mut later);
                Next::Keys(unanswered)
            }
            other => other,
        };
        self.wait_for_repo(task, s, items.items, rest);
    }

    /// Continue with the repository held: plan the entries received, fetch
    /// their objects, apply them.
    pub(super) fn session_resume(&mut self, task: TaskId, mut s: Session<R::Checked>) {
        let State::Waiting { entries, rest } = std::mem::replace(&mut s.state, State::Summary)
        else {
            self.release(&s.repo, task);
            return self.end(task, s, Err(Failure::Local("nothing to apply".into())));
        };
        let (ready, wants, needs_identity) = self.plan_entries(&s, &entries);
        if needs_identity && !s.identity_taken {
            self.request(task, s.peer, request(Kind::Identity, &s.repo));
            s.state = State::EntryIdentity { entries, rest };
            self.tasks.insert(task, Task::Session(s));
            return;
        }
        if wants.is_empty() {
            s.applied += self.apply_all(&s.repo, ready);
            self.release(&s.repo, task);
            return self.next_entries(task, s, rest);
        }
        let kind = OpKind::Fetch {
            repo: s.repo.clone(),
            tips: wants,
        };
        self.new_op(task, s.peer, kind);
        s.state = State::Fetching { ready, rest };
        self.tasks.insert(task, Task::Session(s));
    }

    /// Decode and check entries: the new ones in order, the tips (each
    /// once) whose objects they need, and whether one needs identity
    /// document versions not held. Invalid entries count against the peer.
    fn plan_entries(
        &mut self,
        s: &Session<R::Checked>,
        entries: &[Vec<u8>],
    ) -> (Ready<R::Checked>, Vec<ObjectId>, bool) {
        let (mut ready, mut wants, mut wanted) = (Vec::new(), Vec::new(), HashSet::new());
        let mut needs_identity = false;
        // A page with invalid entries counts once against the peer.
        let mut invalid = None;
        for bytes in entries {
            let planned = match SignedRefUpdate::decode(&bytes[..]) {
                Ok(update) => self
                    .replica
                    .plan(&s.repo, update.clone())
                    .map(|plan| (update, plan)),
                Err(e) => Err(Fault::Peer(format!("undecodable update: {e}"))),
            };
            match planned {
                Ok((_, Plan::Known)) => {}
                Ok((update, Plan::Apply { missing, checked })) => {
                    wants.extend(missing.into_iter().filter(|t| wanted.insert(*t)));
                    ready.push((update, checked));
                }
                Ok((_, Plan::NeedIdentity)) => needs_identity = true,
                Err(Fault::Peer(e)) => {
                    tracing::warn!(peer = %s.peer, repo = %s.repo, error = %e, "log entry refused");
                    invalid.get_or_insert(e);
                }
                Err(e) => {
                    tracing::warn!(peer = %s.peer, repo = %s.repo, error = %e, "log entry not applied")
                }
            }
        }
        if let Some(why) = invalid {
            self.strike(s.peer, &why);
        }
        (ready, wants, needs_identity)
    }

    /// The comparison ended: report a seeding, and compare with the other
    /// peers once a new repository is seeded.
    fn end(&mut self, task: TaskId, s: Session<R::Checked>, result: Result<(), Failure>) {
        self.sessions.remove(&(s.peer, s.repo.clone()));
        self.release(&s.repo, task);
        match &result {
            Ok(()) if s.applied > 0 => {
                tracing::info!(peer = %s.peer, repo = %s.repo, applied = s.applied, "caught up")
            }
            Ok(()) => {}
            Err(Failure::Refused(e)) => {
                tracing::debug!(peer = %s.peer, repo = %s.repo, error = %e, "peer has no log for this repository")
            }
            Err(e) => {
                tracing::warn!(peer = %s.peer, repo = %s.repo, error = %e, "log comparison failed")
            }
        }
        if result.is_ok() {
            // The LFS objects of what was applied, and those missing from
            // earlier rounds.
            self.fetch_lfs(&s.repo, s.peer);
        }
        let Some(id) = s.seed else { return };
        let result = match result {
            Ok(()) => self
                .seeded(&s.repo)
                .map(|x| x.id)
                .ok_or_else(|| format!("{} is no longer seeded", s.repo)),
            Err(e) => Err(format!(
                "{} gave the identity of {} but not its log: {e}",
                s.peer, s.repo
            )),
        };
        if result.is_ok() {
            tracing::info!(repo = %s.repo, peer = %s.peer, "seeding");
            let others: Vec<PeerId> = self
                .connected
                .iter()
                .filter(|p| **p != s.peer)
                .copied()
                .collect();
            for p in others {
                self.start_session(p, s.repo.clone(), None);
            }
        }
        self.push(super::Io::SeedDone { id, result });
    }
}

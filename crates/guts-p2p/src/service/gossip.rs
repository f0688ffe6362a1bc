//! Announcements: a signed update another node accepted, or a change of a
//! repository's identity document. An update is verified before anything
//! else, its missing objects fetched from the peer that delivered it, then
//! applied; only then is the message judged, and forwarded if valid, so
//! that peers further away fetch from a node that holds the objects. If
//! that took longer than gossipsub keeps a message for ([`REANNOUNCE_AFTER`]),
//! the forward is lost and the update is announced again instead.

use guts_git::names::RepoName;
use guts_identity::SignedRefUpdate;
use libp2p::gossipsub::MessageId;
use libp2p::PeerId;
use prost::Message;

use super::{Failure, Io, OpKind, Outcome, RejectReason, Service, Task, TaskId, Time, Verdict};
use crate::limits::REANNOUNCE_AFTER;
use crate::replication::{Fault, Plan, Replica, Seeded};
use crate::wire::{Announce, Kind, Request};

/// A received announcement being handled.
pub(super) struct Announced<C> {
    source: PeerId,
    message: MessageId,
    seeded: Seeded,
    what: What<C>,
    identity_taken: bool,
    /// When it arrived.
    received: Time,
}

enum What<C> {
    /// An update, waiting for the repository or being planned.
    Update(SignedRefUpdate),
    /// Taking identity versions the update needs.
    Identity(SignedRefUpdate),
    /// Fetching the objects of a checked update.
    Fetching(SignedRefUpdate, C),
    /// A document announcement: taking the versions.
    Document(u64),
}

impl<R: Replica> Service<R> {
    /// A gossip message from `source`.
    pub fn gossip(&mut self, source: PeerId, message: MessageId, data: &[u8], now: Time) {
        self.now = now;
        let report = |verdict| Io::Report {
            message: message.clone(),
            source,
            verdict,
        };
        let msg = match Announce::decode(data) {
            Ok(m) => m,
            Err(e) => {
                self.strike(source, &format!("undecodable announcement: {e}"));
                self.counts.reject(RejectReason::Undecodable);
                return self.push(report(Verdict::Reject));
            }
        };
        // A name this node does not follow is none of its concern.
        let Some(seeded) = RepoName::parse(&msg.repo)
            .ok()
            .and_then(|n| self.seeded(&n))
        else {
            return self.push(report(Verdict::Ignore));
        };
        let what = if msg.update.is_empty() && msg.doc_versions > 0 {
            let ours = self
                .replica
                .identity(&seeded.name)
                .map_or(0, |v| v.len() as u64);
            if msg.doc_versions <= ours {
                return self.push(report(Verdict::Accept));
            }
            What::Document(msg.doc_versions)
        } else {
            match SignedRefUpdate::decode(&msg.update[..]) {
                Ok(u) => What::Update(u),
                Err(e) => {
                    self.strike(source, &format!("undecodable update: {e}"));
                    self.counts.reject(RejectReason::Undecodable);
                    return self.push(report(Verdict::Reject));
                }
            }
        };
        let task = self.id();
        let a = Announced {
            source,
            message,
            seeded,
            what,
            identity_taken: false,
            received: now,
        };
        if let What::Document(_) = a.what {
            self.request(task, source, identity_request(&a.seeded.name));
            self.tasks.insert(task, Task::Announce(a));
        } else if self.acquire(&a.seeded.name.clone(), task) {
            self.announce_resume(task, a);
        } else {
            self.tasks.insert(task, Task::Announce(a));
        }
    }

    /// Plan an update with the repository held: apply it, or fetch its
    /// objects first, or take identity versions first.
    pub(super) fn announce_resume(&mut self, task: TaskId, mut a: Announced<R::Checked>) {
        let What::Update(update) = std::mem::replace(&mut a.what, What::Document(0)) else {
            return self.finish(task, a, Verdict::Ignore);
        };
        match self.replica.plan(&a.seeded.name, update.clone()) {
            Ok(Plan::Known) => self.finish(task, a, Verdict::Accept),
            Ok(Plan::NeedIdentity) if !a.identity_taken => {
                self.request(task, a.source, identity_request(&a.seeded.name));
                a.what = What::Identity(update);
                self.tasks.insert(task, Task::Announce(a));
            }
            Ok(Plan::NeedIdentity) => {
                let why = "the update needs an identity document the peer does not have";
                self.strike(a.source, why);
                self.counts.reject(RejectReason::MissingIdentity);
                self.finish(task, a, Verdict::Reject);
            }
            Ok(Plan::Apply { missing, checked }) if missing.is_empty() => {
                self.apply_announced(task, a, update, checked)
            }
            Ok(Plan::Apply { missing, checked }) => {
                let kind = OpKind::Fetch {
                    repo: a.seeded.name.clone(),
                    tips: missing,
                };
                self.new_op(task, a.source, kind);
                a.what = What::Fetching(update, checked);
                self.tasks.insert(task, Task::Announce(a));
            }
            Err(Fault::Peer(e)) => {
                tracing::warn!(peer = %a.source, repo = %a.seeded.name, error = %e, "announcement not applied");
                self.strike(a.source, &e);
                self.counts.reject(RejectReason::InvalidUpdate);
                self.finish(task, a, Verdict::Reject);
            }
            Err(e) => {
                tracing::warn!(peer = %a.source, repo = %a.seeded.name, error = %e, "announcement not applied");
                self.finish(task, a, Verdict::Ignore);
            }
        }
    }

    fn apply_announced(
        &mut self,
        task: TaskId,
        a: Announced<R::Checked>,
        update: SignedRefUpdate,
        checked: R::Checked,
    ) {
        match self.replica.apply(checked) {
            Ok(changed) => {
                // Forwarding the message (on `Accept`) reaches the same
                // peers, unless gossipsub dropped it meanwhile.
                let late =
                    self.now.saturating_sub(a.received) >= REANNOUNCE_AFTER.as_millis() as Time;
                if changed && late {
                    self.announce(&a.seeded, &update);
                }
                let (repo, source) = (a.seeded.name.clone(), a.source);
                self.finish(task, a, Verdict::Accept);
                // Refs first; the LFS objects its new blobs name follow.
                self.fetch_lfs(&repo, source);
            }
            Err(Fault::Peer(e)) => {
                self.strike(a.source, &e);
                self.counts.reject(RejectReason::InvalidUpdate);
                self.finish(task, a, Verdict::Reject)
            }
            Err(e) => {
                tracing::warn!(repo = %a.seeded.name, error = %e, "announced update not applied");
                self.finish(task, a, Verdict::Ignore)
            }
        }
    }

    pub(super) fn announce_outcome(
        &mut self,
        task: TaskId,
        mut a: Announced<R::Checked>,
        outcome: Outcome,
    ) {
        let what = std::mem::replace(&mut a.what, What::Document(0));
        match (what, outcome) {
            (What::Identity(update), Outcome::Items(items)) => {
                a.identity_taken = true;
                match self.adopt(&a.seeded.name, &items) {
                    Ok(()) => {
                        a.what = What::Update(update);
                        self.announce_resume(task, a);
                    }
                    Err(f) => self.failed(task, a, f),
                }
            }
            (What::Document(versions), Outcome::Items(items)) => {
                match self.adopt(&a.seeded.name, &items) {
                    Ok(()) => {
                        let seeded = a.seeded.clone();
                        self.announce_identity(&seeded, versions);
                        self.finish(task, a, Verdict::Accept);
                    }
                    Err(f) => self.failed(task, a, f),
                }
            }
            (What::Fetching(update, checked), Outcome::Fetched) => {
                self.apply_announced(task, a, update, checked)
            }
            (_, Outcome::Failed(f)) => self.failed(task, a, f),
            _ => self.finish(task, a, Verdict::Ignore),
        }
    }

    fn failed(&mut self, task: TaskId, a: Announced<R::Checked>, f: Failure) {
        tracing::warn!(peer = %a.source, repo = %a.seeded.name, error = %f, "announcement not applied");
        if let Failure::Peer(why) = &f {
            self.strike(a.source, why);
            self.counts.reject(RejectReason::BadTransfer);
            return self.finish(task, a, Verdict::Reject);
        }
        self.finish(task, a, Verdict::Ignore)
    }

    /// Judge the message and let the next task have the repository.
    fn finish(&mut self, task: TaskId, a: Announced<R::Checked>, verdict: Verdict) {
        self.release(&a.seeded.name, task);
        self.push(Io::Report {
            message: a.message,
            source: a.source,
            verdict,
        });
    }
}

fn identity_request(repo: &RepoName) -> Request {
    Request {
        kind: Kind::Identity as i32,
        repo: repo.to_string(),
        ..Default::default()
    }
}

//! Carrying out the services' `Io`, and delivering messages in flight.

use std::sync::Arc;

use guts_git::lfs::LfsPointer;
use guts_git::names::RepoName;
use guts_git::ObjectId;
use guts_p2p::replication::{serve, Fault, Replica};
use guts_p2p::service::{Failure, Io, OpId, Verdict};
use guts_p2p::wire::{Items, Request};
use libp2p::gossipsub::MessageId;
use prost::Message;
use sha2::{Digest, Sha256};

use super::net::{Event, Sim, TipPointers};

/// Bytes a fetched tip is counted for.
pub const TIP_BYTES: u64 = 1024;

impl Sim {
    /// Carry out everything node `i`'s service asks.
    pub(super) fn flush(&mut self, i: usize) {
        loop {
            let Some(io) = self.nodes[i].service.as_mut().and_then(|s| s.next_io()) else {
                return;
            };
            self.io(i, io);
        }
    }

    fn io(&mut self, i: usize, io: Io) {
        match io {
            Io::Subscribe(t) => {
                self.nodes[i].topics.insert(t);
            }
            Io::Unsubscribe(t) => {
                self.nodes[i].topics.remove(&t);
            }
            Io::Provide(_) => {}
            Io::FindProviders { id, key } => self.find_providers(i, id, &key),
            Io::Publish { topic, data } => self.publish(i, topic, data),
            Io::Report {
                message, verdict, ..
            } => {
                let pending = self.nodes[i].pending.remove(&message);
                let source = self.nodes[i].sources.remove(&message);
                if let (Some((topic, data)), Verdict::Accept) = (pending, verdict) {
                    self.forward(i, source, &message, &topic, data);
                }
            }
            Io::Request { id, peer, request } => {
                let inc = self.nodes[i].incarnation;
                let to = self.node_of(&peer).expect("a simulated peer");
                self.nodes[i].stats.sent += request.encoded_len() as u64;
                self.nodes[i].stats.messages += 1;
                let delay = self.latency();
                if !self.lost() {
                    let event = Event::Request {
                        to,
                        from: i,
                        inc,
                        op: id,
                        request,
                    };
                    self.schedule(delay, event);
                }
            }
            Io::Fetch {
                id,
                peer,
                repo,
                tips,
            } => {
                let inc = self.nodes[i].incarnation;
                let to = self.node_of(&peer).expect("a simulated peer");
                self.nodes[i].stats.messages += 1;
                let delay = self.latency();
                if !self.lost() {
                    let event = Event::Fetch {
                        to,
                        from: i,
                        inc,
                        op: id,
                        repo,
                        tips,
                    };
                    self.schedule(delay, event);
                }
            }
            Io::FetchLfs {
                id,
                peer,
                repo,
                pointer,
            } => self.fetch_lfs(i, id, peer, repo, pointer),
            Io::Block(peer) => {
                self.nodes[i].blocked.insert(peer);
                if let Some(j) = self.node_of(&peer) {
                    self.unlink(i, j);
                }
            }
            Io::Unblock(peer) => {
                self.nodes[i].blocked.remove(&peer);
            }
            Io::SeedDone { .. } => {}
        }
    }

    fn find_providers(&mut self, i: usize, id: OpId, key: &[u8]) {
        let name = String::from_utf8_lossy(key).to_string();
        let peers = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, n)| {
                *j != i
                    && n.replica
                        .seeded()
                        .iter()
                        .any(|s| s.name.to_string() == name)
            })
            .map(|(_, n)| n.peer)
            .collect();
        let inc = self.nodes[i].incarnation;
        let delay = self.latency();
        let event = Event::Providers {
            to: i,
            inc,
            op: id,
            peers,
        };
        self.schedule(delay, event);
    }

    /// Node `i` asks `peer` for an LFS object: the peer serves what it
    /// holds (as it holds it now), which arrives after a delay.
    fn fetch_lfs(
        &mut self,
        i: usize,
        op: OpId,
        peer: libp2p::PeerId,
        repo: RepoName,
        pointer: LfsPointer,
    ) {
        use std::io::Read;
        let inc = self.nodes[i].incarnation;
        let to = self.node_of(&peer).expect("a simulated peer");
        self.nodes[i].stats.messages += 1;
        let result = if !self.linked(i, to) {
            Err(Failure::Dropped("no connection".into()))
        } else {
            match self.nodes[to].replica.lfs_open(&repo, &pointer.oid, 0) {
                Ok((_, mut reader)) => {
                    let mut bytes = Vec::new();
                    reader
                        .read_to_end(&mut bytes)
                        .map(|_| bytes)
                        .map_err(|e| Failure::Interrupted(e.to_string()))
                }
                Err(f) => Err(Failure::Refused(f.to_string())),
            }
        };
        if let Ok(bytes) = &result {
            self.nodes[to].stats.sent += bytes.len() as u64;
        }
        let delay = self.latency();
        let event = Event::LfsFetched {
            to: i,
            from: to,
            inc,
            op,
            repo,
            pointer,
            result,
        };
        self.schedule(delay, event);
    }

    fn on_lfs_fetched(
        &mut self,
        (to, from, inc, op): (usize, usize, u32, OpId),
        repo: RepoName,
        pointer: LfsPointer,
        result: Result<Vec<u8>, Failure>,
    ) {
        if self.nodes[to].incarnation != inc {
            return;
        }
        let result = match result {
            _ if !self.linked(to, from) => Err(Failure::Dropped("connection closed".into())),
            Ok(bytes) => {
                self.nodes[to].stats.received += bytes.len() as u64;
                self.nodes[to]
                    .replica
                    .lfs_receive(&repo, &pointer, 0, &mut &bytes[..])
                    .map_err(|f| match f {
                        Fault::Peer(m) => Failure::Peer(m),
                        Fault::Local(m) => Failure::Local(m),
                        Fault::Interrupted(m) => Failure::Interrupted(m),
                    })
            }
            Err(f) => Err(f),
        };
        let now = self.now;
        if let Some(s) = self.nodes[to].service.as_mut() {
            s.fetched(op, result, now);
        }
        self.flush(to);
    }

    /// Node `i` publishes: the message starts at it.
    pub fn publish(&mut self, i: usize, topic: String, data: Vec<u8>) {
        let mut h = Sha256::new();
        h.update(self.nodes[i].peer.to_bytes());
        h.update(&data);
        let id = MessageId::from(h.finalize().to_vec());
        self.nodes[i].seen.insert(id.clone());
        self.forward(i, None, &id, &topic, data.into());
    }

    /// Send a message on to `i`'s subscribed neighbours but `source`.
    fn forward(
        &mut self,
        i: usize,
        source: Option<usize>,
        id: &MessageId,
        topic: &str,
        data: Arc<[u8]>,
    ) {
        for j in self.neighbours(i) {
            if Some(j) == source || !self.linked(i, j) || !self.nodes[j].topics.contains(topic) {
                continue;
            }
            self.nodes[i].stats.sent += data.len() as u64;
            self.nodes[i].stats.messages += 1;
            self.nodes[i].stats.gossip += 1;
            let delay = self.latency();
            if self.lost() {
                continue;
            }
            let event = Event::Gossip {
                to: j,
                from: i,
                id: id.clone(),
                topic: topic.to_string(),
                data: Arc::clone(&data),
            };
            self.schedule(delay, event);
        }
    }

    /// Deliver one event.
    pub(super) fn handle(&mut self, event: Event) {
        match event {
            Event::Gossip {
                to,
                from,
                id,
                topic,
                data,
            } => self.on_gossip(to, from, id, topic, data),
            Event::Request {
                to,
                from,
                inc,
                op,
                request,
            } => self.on_request(to, from, inc, op, request),
            Event::Answer {
                to,
                from,
                inc,
                op,
                result,
            } => self.on_answer(to, from, inc, op, result),
            Event::Fetch {
                to,
                from,
                inc,
                op,
                repo,
                tips,
            } => self.on_fetch(to, from, inc, op, repo, tips),
            Event::Fetched {
                to,
                from,
                inc,
                op,
                repo,
                result,
            } => self.on_fetched(to, from, inc, op, repo, result),
            Event::LfsFetched {
                to,
                from,
                inc,
                op,
                repo,
                pointer,
                result,
            } => self.on_lfs_fetched((to, from, inc, op), repo, pointer, result),
            Event::Providers { to, inc, op, peers } => {
                if self.nodes[to].incarnation == inc {
                    let now = self.now;
                    if let Some(s) = self.nodes[to].service.as_mut() {
                        s.providers(op, peers, now);
                    }
                    self.flush(to);
                }
            }
            Event::Push { node, name } => {
                self.push(node, &name);
            }
        }
    }

    fn on_gossip(&mut self, to: usize, from: usize, id: MessageId, topic: String, data: Arc<[u8]>) {
        if !self.linked(to, from) {
            return;
        }
        self.nodes[to].stats.received += data.len() as u64;
        if !self.nodes[to].seen.insert(id.clone()) || !self.nodes[to].topics.contains(&topic) {
            return;
        }
        let node = &mut self.nodes[to];
        node.pending.insert(id.clone(), (topic, Arc::clone(&data)));
        node.sources.insert(id.clone(), from);
        let (peer, now) = (self.nodes[from].peer, self.now);
        if let Some(s) = self.nodes[to].service.as_mut() {
            s.gossip(peer, id, &data, now);
        }
        self.flush(to);
    }

    fn on_request(&mut self, to: usize, from: usize, inc: u32, op: OpId, request: Request) {
        let delay = self.latency();
        if !self.linked(to, from) {
            let result = Err(Failure::Dropped("no connection".into()));
            return self.schedule(
                delay,
                Event::Answer {
                    to: from,
                    from: to,
                    inc,
                    op,
                    result,
                },
            );
        }
        self.nodes[to].stats.received += request.encoded_len() as u64;
        let items = serve::answer(&*self.nodes[to].replica, &request);
        self.nodes[to].stats.sent += items.encoded_len() as u64;
        self.nodes[to].stats.messages += 1;
        if !self.lost() {
            let result = Ok(items);
            self.schedule(
                delay,
                Event::Answer {
                    to: from,
                    from: to,
                    inc,
                    op,
                    result,
                },
            );
        }
    }

    fn on_answer(
        &mut self,
        to: usize,
        from: usize,
        inc: u32,
        op: OpId,
        mut result: Result<Items, Failure>,
    ) {
        if self.nodes[to].incarnation != inc {
            return;
        }
        if !self.linked(to, from) {
            result = Err(Failure::Dropped("connection closed".into()));
        }
        if let Ok(items) = &result {
            self.nodes[to].stats.received += items.encoded_len() as u64;
        }
        let now = self.now;
        if let Some(s) = self.nodes[to].service.as_mut() {
            s.answered(op, result, now);
        }
        self.flush(to);
    }

    fn on_fetch(
        &mut self,
        to: usize,
        from: usize,
        inc: u32,
        op: OpId,
        repo: RepoName,
        tips: Vec<ObjectId>,
    ) {
        let mut delay = self.latency();
        let result = if !self.linked(to, from) {
            Err(Failure::Dropped("no connection".into()))
        } else if self.nodes[to].replica.holds(&repo, &tips) {
            delay += tips.len() as u64 / 100;
            self.nodes[to].stats.sent += TIP_BYTES * tips.len() as u64;
            self.nodes[to].stats.messages += 1;
            let pointers = self.nodes[to].replica.pointers_of(&tips);
            Ok((tips, pointers))
        } else {
            Err(Failure::Peer("objects not there".into()))
        };
        if result.is_err() || !self.lost() {
            let event = Event::Fetched {
                to: from,
                from: to,
                inc,
                op,
                repo,
                result,
            };
            self.schedule(delay, event);
        }
    }

    fn on_fetched(
        &mut self,
        to: usize,
        from: usize,
        inc: u32,
        op: OpId,
        repo: RepoName,
        mut result: Result<(Vec<ObjectId>, TipPointers), Failure>,
    ) {
        if self.nodes[to].incarnation != inc {
            return;
        }
        if !self.linked(to, from) {
            result = Err(Failure::Dropped("connection closed".into()));
        }
        if let Ok((tips, pointers)) = &mut result {
            self.nodes[to].stats.received += TIP_BYTES * tips.len() as u64;
            self.nodes[to].replica.store_objects(&repo, tips);
            self.nodes[to]
                .replica
                .record_lfs(&repo, std::mem::take(pointers));
        }
        let now = self.now;
        if let Some(s) = self.nodes[to].service.as_mut() {
            s.fetched(op, result.map(|_| ()), now);
        }
        self.flush(to);
    }
}

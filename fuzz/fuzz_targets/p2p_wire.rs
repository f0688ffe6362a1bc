//! What peers send each other: every message of `guts_p2p::wire` decoded
//! from the raw bytes (prost), then what the node decodes from inside them
//! (the `SignedRefUpdate` of an announcement, the repository name, the
//! documents, log entries and summary of an `Items` page), and the same
//! bytes as a stream of length-prefixed frames read with `read_frame`
//! (driven with `futures::executor::block_on` over an in-memory cursor).
//! Decoded messages must re-encode and decode to themselves.
#![no_main]

use futures::executor::block_on;
use futures::io::Cursor;
use guts_git::names::RepoName;
use guts_identity::{Doc, SignedRefUpdate};
use guts_p2p::conflict;
use guts_p2p::limits::MAX_FRAME_BYTES;
use guts_p2p::logset::{Buckets, LogSet};
use guts_p2p::wire::{read_frame, Announce, Items, Kind, LogSummary, Request};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn round_trips<M: Message + Default + PartialEq + std::fmt::Debug>(m: &M) {
    let again = M::decode(&m.encode_to_vec()[..]).expect("an encoded message decodes");
    assert_eq!(&again, m, "message does not survive re-encoding");
}

fn update(bytes: &[u8]) {
    if let Ok(u) = SignedRefUpdate::decode(bytes) {
        round_trips(&u);
        let _ = u.key();
        let _ = guts_identity::PushCert::parse(&u.certificate);
    }
}

fn announce(m: &Announce) {
    round_trips(m);
    let _ = RepoName::parse(&m.repo);
    update(&m.update);
}

fn request(m: &Request) {
    round_trips(m);
    let _ = Kind::try_from(m.kind);
    let _ = RepoName::parse(&m.repo);
}

fn items(m: &Items) {
    round_trips(m);
    for item in &m.items {
        let _ = Doc::from_bytes(item);
        update(item);
        if let Ok(s) = LogSummary::decode(&item[..]) {
            round_trips(&s);
            let _ = s.same_updates(&s);
        }
        if let Some(b) = Buckets::decode(item) {
            assert_eq!(Buckets::from_wire(&b.to_wire()), Some(b.clone()));
            let _ = b.wanted_from(&Buckets::default());
            let _ = b.summary(0);
        }
    }
    let keys: Vec<[u8; 32]> = m
        .items
        .iter()
        .filter_map(|i| SignedRefUpdate::decode(&i[..]).ok())
        .map(|u| u.key())
        .collect();
    let mut set = LogSet::default();
    for (k, i) in keys.iter().zip(&m.items) {
        set.insert(*k, i.clone());
    }
    let summary = set.buckets().summary(m.items.len() as u64);
    assert!(summary.updates as usize <= keys.len());
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(set.keys_in(&all).len(), set.len(), "every key is in a bucket");
    // The conflict rule over these updates as transitions of one ref: the
    // result depends on the set only, and accounts for each update once.
    let updates: Vec<conflict::RefUpdate> = keys
        .iter()
        .map(|k| conflict::RefUpdate {
            old: oid(k[0] % 4),
            new: oid(k[1] % 4),
            key: *k,
        })
        .collect();
    let r = conflict::resolve(&updates);
    let mut reversed = updates.clone();
    reversed.reverse();
    assert_eq!(
        conflict::resolve(&reversed),
        r,
        "resolution depends on order"
    );
    let mut distinct = keys;
    distinct.sort();
    distinct.dedup();
    let mut all: Vec<[u8; 32]> = r.winners.iter().chain(&r.superseded).copied().collect();
    all.sort();
    assert_eq!(all, distinct, "resolution loses or repeats an update");
}

fn oid(n: u8) -> conflict::Oid {
    let mut o = conflict::ZERO;
    o[0] = n;
    o
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Announce::decode(data) {
        announce(&m);
    }
    if let Ok(m) = Request::decode(data) {
        request(&m);
    }
    if let Ok(m) = Items::decode(data) {
        items(&m);
    }
    if let Ok(m) = LogSummary::decode(data) {
        round_trips(&m);
    }
    // A stream: frames read one after the other, as their first byte says
    // (Request first, as a served stream does; then Items, as a requester reads).
    let mut cursor = Cursor::new(data);
    for i in 0..16 {
        let before = cursor.position();
        let ok = match i % 3 {
            0 => block_on(read_frame::<_, Request>(&mut cursor)).map(|m| request(&m)),
            1 => block_on(read_frame::<_, Items>(&mut cursor)).map(|m| items(&m)),
            _ => block_on(read_frame::<_, Announce>(&mut cursor)).map(|m| announce(&m)),
        };
        assert!(cursor.position() - before <= 4 + MAX_FRAME_BYTES as u64);
        if ok.is_err() {
            break;
        }
    }
});

//! Rogue peers against real node processes. An in-process libp2p peer (the
//! node's own `guts_p2p::network`, driven by the test) joins a repository's
//! gossip topic and replication protocol and lies: it announces updates
//! nobody authorized, and serves packs that are not what was asked for. The
//! nodes must refuse all of it, leave nothing behind, and keep working with
//! honest peers.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::p2p::*;
use common::*;
use futures_util::{AsyncRead, AsyncWrite, AsyncWriteExt, StreamExt};
use guts_identity::{Doc, PushCert, SignedRefUpdate};
use guts_p2p::logset::LogSet;
use guts_p2p::network::{self, Handle, NetworkConfig};
use guts_p2p::wire::{self, Announce, Items, Kind, Request};
use guts_p2p::{Multiaddr, NodeKeypair, PeerId};
use prost::Message;
use tempfile::TempDir;
use tokio::runtime::Runtime;

// ---------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------

/// The value of the sample `name{labels}` in Prometheus text (0 if absent;
/// `labels` a substring of the label set, empty for a family without labels).
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(series, _)| {
            series == &name || (series.starts_with(&format!("{name}{{")) && series.contains(labels))
        })
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
}

fn peer_id_of(node: &Node) -> PeerId {
    let addr = p2p_addr(node);
    let (_, id) = addr
        .rsplit_once("/p2p/")
        .expect("address ends with /p2p/<id>");
    id.parse().expect("peer id")
}

fn certificates(node: &Node, owner: &str, name: &str) -> Vec<String> {
    updates(node, owner, name)
        .iter()
        .map(|u| u["certificate"].as_str().expect("certificate").to_owned())
        .collect()
}

/// The repository id (raw bytes and text) from the node's identity documents.
fn repo_id(node: &Node, owner: &str, name: &str) -> (Vec<u8>, String) {
    let view = node
        .get(&format!("/api/v1/repos/{owner}/{name}/identity"))
        .json();
    let genesis = base64::engine::general_purpose::STANDARD
        .decode(view["versions"][0].as_str().expect("first version"))
        .expect("base64 document");
    let id = Doc::from_bytes(&genesis)
        .and_then(Doc::verify_genesis)
        .expect("valid genesis document")
        .genesis_id()
        .expect("genesis has an id");
    assert_eq!(view["id"].as_str(), Some(id.to_string().as_str()));
    (id.0.to_vec(), id.to_string())
}

/// The node's log without ANSI colour sequences.
fn plain_log(node: &Node) -> String {
    let log = node.log();
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Log lines containing every one of `needles`.
fn log_lines(node: &Node, needles: &[&str]) -> Vec<String> {
    plain_log(node)
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

/// The node's object directory of a repository (its refs live in the node's
/// database, so this is not a git repository by itself).
fn objects_dir(node: &Node, owner: &str, name: &str) -> PathBuf {
    node.data_dir()
        .join("repos")
        .join(owner)
        .join(format!("{name}.git"))
        .join("objects")
}

/// Whether `objects` holds object `id`, asked of stock git through a scratch
/// repository borrowing that object directory.
fn has_object(objects: &Path, id: &str) -> bool {
    let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("guts-rogue-lookup.git");
    if !scratch.join("HEAD").exists() {
        std::fs::create_dir_all(&scratch).expect("scratch dir");
        git_ok(&scratch, &["init", "-q", "--bare"]);
    }
    let objects = objects.to_str().expect("utf-8 path");
    git_env(
        &scratch,
        &["cat-file", "-e", id],
        &[("GIT_OBJECT_DIRECTORY", objects)],
    )
    .status
    .success()
}

/// Every path under `dir`, relative to it.
fn listing(dir: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            let rel = path.strip_prefix(root).expect("under root");
            out.insert(rel.display().to_string());
            if path.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

// ---------------------------------------------------------------------------
// The rogue peer
// ---------------------------------------------------------------------------

/// What the rogue answers on replication streams, whatever is asked.
#[derive(Clone)]
struct Answers {
    /// The rogue's log, served by key range like an honest node's (the
    /// node compares logs on every new connection).
    log: Vec<Vec<u8>>,
    /// Raw bytes sent for `Kind::Fetch`.
    fetch: Vec<u8>,
    /// Instead of `fetch`: a pack whose first answer breaks off after
    /// `.1` bytes; a request resuming from there gets the rest.
    resumable: Option<(Vec<u8>, usize)>,
}

struct Rogue {
    net: Handle,
    /// Bodies of the `Fetch` requests the node sent to the rogue.
    fetches: Arc<Mutex<Vec<String>>>,
    /// What it answers now.
    answers: Arc<Mutex<Answers>>,
}

impl Rogue {
    /// Start a libp2p peer in `rt` that dials `bootstrap` and answers
    /// replication streams with `answers`.
    fn start(rt: &Runtime, bootstrap: &[&str], answers: Answers) -> Rogue {
        Rogue::start_as(rt, NodeKeypair::generate_ed25519(), bootstrap, answers)
    }

    /// Like [`Rogue::start`], with the peer id of `keypair`.
    fn start_as(rt: &Runtime, keypair: NodeKeypair, bootstrap: &[&str], answers: Answers) -> Rogue {
        let bootstrap: Vec<Multiaddr> = bootstrap
            .iter()
            .map(|a| a.parse().expect("bootstrap address"))
            .collect();
        rt.block_on(async move {
            let (net, mut events) = network::start(NetworkConfig {
                keypair,
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("listen address")],
                bootstrap,
                mdns: false,
                dht: false,
                accept: vec![wire::REPLICATION_PROTOCOL],
                nat: Default::default(),
            })
            .await
            .expect("start the rogue's network");
            // Registered before the dial, so the node's log request right
            // after connecting is answered too.
            let mut incoming = net
                .accept(wire::REPLICATION_PROTOCOL)
                .expect("accept replication streams");
            // Keep the swarm's event channel flowing; gossip the rogue
            // receives is never validated, hence never forwarded by it.
            tokio::spawn(async move { while events.recv().await.is_some() {} });
            let answers = Arc::new(Mutex::new(answers));
            let current = Arc::clone(&answers);
            let fetches = Arc::new(Mutex::new(Vec::new()));
            let seen = Arc::clone(&fetches);
            tokio::spawn(async move {
                while let Some((_peer, stream)) = incoming.next().await {
                    let now = current.lock().expect("answers").clone();
                    tokio::spawn(serve(stream, now, Arc::clone(&seen)));
                }
            });
            Rogue {
                net,
                fetches,
                answers,
            }
        })
    }

    fn peer_id(&self) -> PeerId {
        self.net.peer_id()
    }

    fn connected(&self, rt: &Runtime) -> Vec<PeerId> {
        rt.block_on(self.net.status())
            .expect("rogue status")
            .connected
    }

    fn wait_connected_to(&self, rt: &Runtime, peer: PeerId) {
        eventually(20, "the rogue connects to the node", || {
            self.connected(rt).contains(&peer)
        });
    }

    fn subscribe(&self, rt: &Runtime, topic: &str) {
        rt.block_on(self.net.subscribe(topic)).expect("subscribe");
    }

    /// Publish (fire and forget; a message already published once is
    /// dropped by gossipsub itself, so repeating is harmless).
    fn publish(&self, rt: &Runtime, topic: &str, data: &[u8]) {
        rt.block_on(self.net.publish(topic, data.to_vec()))
            .expect("publish");
    }

    /// Answer differently from now on.
    fn set_answers(&self, answers: Answers) {
        *self.answers.lock().expect("answers") = answers;
    }

    fn fetches(&self) -> Vec<String> {
        self.fetches.lock().expect("fetch list").clone()
    }
}

async fn serve<S>(mut stream: S, answers: Answers, fetches: Arc<Mutex<Vec<String>>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Ok(req) = wire::read_frame::<_, Request>(&mut stream).await else {
        return;
    };
    let _ = match Kind::try_from(req.kind) {
        Ok(kind @ (Kind::LogSummary | Kind::Buckets | Kind::Keys | Kind::Entries)) => {
            // What an honest node would say of this log (with no identity
            // document versions: the rogue gives none), one entry per
            // `Entries` answer, so that every node reading the rogue's log
            // goes through the paging.
            let mut log = LogSet::default();
            for u in &answers.log {
                if let Ok(update) = SignedRefUpdate::decode(&u[..]) {
                    log.insert(update.key(), u.clone());
                }
            }
            let items = match kind {
                Kind::LogSummary => vec![log.buckets().summary(0).encode_to_vec()],
                Kind::Buckets => vec![log.buckets().to_wire().encode_to_vec()],
                Kind::Keys => log
                    .keys_in(&req.buckets)
                    .iter()
                    .map(|k| k.to_vec())
                    .collect(),
                // A range: the node's keys in those buckets are left out.
                _ if !req.buckets.is_empty() => {
                    let wanted: Vec<[u8; 32]> = log
                        .keys_in(&req.buckets)
                        .into_iter()
                        .filter(|k| !req.keys.iter().any(|h| h.as_slice() == k))
                        .collect();
                    log.entries(&wanted)
                }
                _ => {
                    let keys: Vec<[u8; 32]> = req
                        .keys
                        .iter()
                        .take(1)
                        .filter_map(|k| k.as_slice().try_into().ok())
                        .collect();
                    let next = if req.keys.len() > 1 { 1 } else { 0 };
                    let items = Items {
                        items: log.entries(&keys),
                        error: String::new(),
                        next,
                    };
                    return drop(wire::write_frame(&mut stream, &items).await);
                }
            };
            let items = Items {
                items,
                error: String::new(),
                next: 0,
            };
            wire::write_frame(&mut stream, &items).await
        }
        Ok(Kind::Identity | Kind::Lfs) | Err(_) => {
            let items = Items {
                items: Vec::new(),
                error: "not telling".into(),
                next: 0,
            };
            wire::write_frame(&mut stream, &items).await
        }
        Ok(Kind::Fetch) => {
            fetches.lock().expect("fetch list").push(format!(
                "resume_offset={} {}",
                req.resume_offset,
                String::from_utf8_lossy(&req.body)
            ));
            let answer = match &answers.resumable {
                None => answers.fetch.clone(),
                Some((pack, cut)) if req.resume_offset == 0 => {
                    // The pack section and `cut` bytes of the pack; then the
                    // stream closes without the final flush.
                    let mut out = fetch_response(&pack[..*cut]);
                    out.truncate(out.len() - 4);
                    out
                }
                Some((pack, cut)) => {
                    assert_eq!(req.resume_offset, *cut as u64, "resumed where it broke off");
                    assert_eq!(req.resume_sha1, sha1(&pack[..*cut]), "prefix hash");
                    fetch_response(&pack[*cut..])
                }
            };
            stream.write_all(&answer).await.map_err(Into::into)
        }
    };
    let _ = stream.close().await;
}

/// A protocol v2 fetch response carrying `pack` on side-band 1.
fn fetch_response(pack: &[u8]) -> Vec<u8> {
    let mut out = pkt(b"packfile\n");
    for chunk in pack.chunks(65515) {
        let mut data = vec![1u8];
        data.extend_from_slice(chunk);
        out.extend(pkt(&data));
    }
    out.extend_from_slice(b"0000");
    out
}

fn announce(repo: &str, update: &[u8]) -> Vec<u8> {
    Announce {
        repo: repo.to_owned(),
        update: update.to_vec(),
        doc_versions: 0,
    }
    .encode_to_vec()
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------------------
// Packs by hand
// ---------------------------------------------------------------------------

/// SHA-1 (for pack trailers and object ids of hand-made objects).
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h = gix_hash::hasher(gix_hash::Kind::Sha1);
    h.update(data);
    let id = h.try_finalize().expect("sha1 without collision");
    id.as_bytes().try_into().expect("20 bytes")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const KIND_NAMES: [&str; 5] = ["", "commit", "tree", "blob", "tag"];

/// The git object id of a `kind` (pack type number) object with `data`.
fn object_id(kind: u8, data: &[u8]) -> String {
    let mut raw = format!("{} {}\0", KIND_NAMES[kind as usize], data.len()).into_bytes();
    raw.extend_from_slice(data);
    hex(&sha1(&raw))
}

/// One undeltified object of a pack.
struct PackEntry {
    kind: u8,
    data: Vec<u8>,
    /// Where its zlib stream lies in the pack.
    zlib: std::ops::Range<usize>,
}

/// The objects of a pack without deltas.
fn parse_pack(pack: &[u8]) -> Vec<PackEntry> {
    let mut pos = 12;
    let mut entries = Vec::new();
    for _ in 0..pack_object_count(pack) {
        let mut c = pack[pos];
        pos += 1;
        let kind = (c >> 4) & 7;
        let mut size = usize::from(c & 15);
        let mut shift = 4;
        while c & 0x80 != 0 {
            c = pack[pos];
            pos += 1;
            size |= usize::from(c & 0x7f) << shift;
            shift += 7;
        }
        assert!((1..=4).contains(&kind), "unexpected delta in the test pack");
        let mut z = flate2::bufread::ZlibDecoder::new(&pack[pos..]);
        let mut data = Vec::new();
        z.read_to_end(&mut data).expect("inflate pack entry");
        assert_eq!(data.len(), size, "pack entry size");
        let used = usize::try_from(z.total_in()).expect("size");
        entries.push(PackEntry {
            kind,
            data,
            zlib: pos..pos + used,
        });
        pos += used;
    }
    assert_eq!(pos + 20, pack.len(), "pack parsed to its trailer");
    entries
}

/// A pack of undeltified objects, with a correct trailer.
fn build_pack(objects: &[(u8, &[u8])]) -> Vec<u8> {
    let mut pack = b"PACK".to_vec();
    pack.extend_from_slice(&2u32.to_be_bytes());
    pack.extend_from_slice(&u32::try_from(objects.len()).expect("count").to_be_bytes());
    for (kind, data) in objects {
        let mut size = data.len();
        let mut c = (kind << 4) | (size & 15) as u8;
        size >>= 4;
        while size > 0 {
            pack.push(c | 0x80);
            c = (size & 0x7f) as u8;
            size >>= 7;
        }
        pack.push(c);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(data).expect("deflate");
        pack.extend(z.finish().expect("deflate"));
    }
    let trailer = sha1(&pack);
    pack.extend_from_slice(&trailer);
    pack
}

/// Recompute a pack's trailer after editing it.
fn fix_trailer(pack: &mut [u8]) {
    let body = pack.len() - 20;
    let trailer = sha1(&pack[..body]);
    pack[body..].copy_from_slice(&trailer);
}

/// Whether stock git accepts `pack` (`index-pack --fsck-objects`) in a scratch repository.
fn git_accepts_pack(scratch: &Path, pack: &[u8]) -> bool {
    if !scratch.join("HEAD").exists() {
        std::fs::create_dir_all(scratch).expect("scratch dir");
        git_ok(scratch, &["init", "-q", "--bare"]);
    }
    git_stdin(scratch, &["index-pack", "--stdin", "--fsck-objects"], pack)
        .status
        .success()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// A and B replicate a repository; a rogue peer connected to A announces
/// updates that no delegate authorized (signed by a stranger, tampered with
/// after a delegate signed, signed by the delegate for another repository,
/// made under push grants that are expired, revoked, for another repository
/// or signed by a non-delegate),
/// over gossip and in its log when A catches up with it. Neither node moves
/// a ref or logs anything, A never even asks the rogue for objects, A tells
/// gossipsub the messages are invalid (so they go no further), and honest
/// replication A → B still works afterwards with the rogue still connected.
#[test]
fn forged_update_from_a_rogue_peer_is_rejected_by_all() {
    let tmp = TempDir::new().expect("tmp");
    let a = peer_node(&tmp.path().join("a"), None, true);
    let a_addr = p2p_addr(&a);
    let a_peer = peer_id_of(&a);
    let owner = test_identity().owner_id();
    let repo = format!("{owner}/demo");

    a.create_repo("alice", "demo");
    let work = tmp.path().join("work");
    let c1 = init_work_repo(&work);
    git_ok(&work, &["push", "-q", &a.repo_url("alice", "demo"), "main"]);
    let b = seeded_follower(&a, &tmp.path().join("b"), &owner);
    let refs_before = a.server_refs(&owner, "demo");
    assert_eq!(refs_before.get("refs/heads/main"), Some(&c1));
    let log_before = certificates(&a, &owner, "demo");
    assert_eq!(log_before.len(), 1, "one push, one log entry");
    assert_eq!(certificates(&b, &owner, "demo"), log_before);

    // The rogue's commit: on top of c1, never pushed anywhere. The rogue
    // would serve it, so only verification can keep it out.
    let tree = rev_parse(&work, "HEAD^{tree}");
    let evil = git_ok(&work, &["commit-tree", &tree, "-p", &c1, "-m", "evil"]);
    let evil_pack = pack_objects(&work, &[&evil, &format!("^{c1}")], false);

    let (id_bytes, id_text) = repo_id(&a, &owner, "demo");
    let topic = wire::topic(&id_text);
    let mallory = TestIdentity::from_seed("mallory", 0x66);
    let nonce = "1700000000-0123456789abcdef";
    let by_stranger = push_certificate(
        &mallory,
        &a.repo_url(&owner, "demo"),
        nonce,
        &[
            format!("{c1} {evil} refs/heads/main"),
            format!("{ZERO_ID} {c1} refs/heads/evil"),
        ],
    );
    let signer = PushCert::parse(&by_stranger)
        .and_then(PushCert::verify)
        .expect("mallory's signature itself is valid")
        .signer();
    assert_eq!(signer, mallory.key.did());
    let genuine = &log_before[0];
    let tampered = genuine.replacen(
        &format!("{ZERO_ID} {c1} refs/heads/main"),
        &format!("{ZERO_ID} {evil} refs/heads/main"),
        1,
    );
    assert_ne!(&tampered, genuine, "the certificate was tampered with");
    assert!(PushCert::parse(&tampered)
        .and_then(PushCert::verify)
        .is_err());
    let for_other_repo = push_certificate(
        test_identity(),
        &a.repo_url(&owner, "other"),
        nonce,
        &[format!("{c1} {evil} refs/heads/main")],
    );
    let mut forged: Vec<(&str, Vec<u8>, &str)> = [
        ("signed by a non-delegate", by_stranger, "is not a delegate"),
        (
            "tampered after a delegate signed",
            tampered,
            "signature does not match",
        ),
        (
            "signed by the delegate for another repository",
            for_other_repo,
            "not for this repository",
        ),
    ]
    .into_iter()
    .map(|(what, certificate, reason)| {
        let update = SignedRefUpdate {
            repo_id: id_bytes.clone(),
            certificate,
            doc_version: 1,
            refused: Vec::new(),
            grant: Vec::new(),
        };
        (what, update.encode_to_vec(), reason)
    })
    .collect();
    forged.extend(granted_updates(
        &a,
        &b,
        &owner,
        &id_bytes,
        &format!("{c1} {evil} refs/heads/main"),
    ));

    let rt = runtime();
    let b_addr = p2p_addr(&b);
    let b_peer = peer_id_of(&b);
    // One rogue per forgery: a node blocks a peer after a few invalid
    // messages (its log page counts once, each announcement once), and each
    // forgery must be judged on its own.
    let mut rogues = Vec::new();
    for (what, update, reason) in &forged {
        let rogue = Rogue::start(
            &rt,
            &[&a_addr, &b_addr],
            Answers {
                log: vec![update.clone()],
                fetch: fetch_response(&evil_pack),
                resumable: None,
            },
        );
        let rogue_id = rogue.peer_id().to_string();
        rogue.wait_connected_to(&rt, a_peer);
        rogue.wait_connected_to(&rt, b_peer);
        rogue.subscribe(&rt, &topic);
        // Publishing fails quietly until the nodes' subscriptions reached
        // the rogue: keep publishing until both judged it (a message is
        // delivered once; repeats are dropped as duplicates).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            rogue.publish(&rt, &topic, &announce(&repo, update));
            let rejected = [&a, &b].iter().all(|n| {
                !log_lines(n, &["rejecting an invalid announcement", &rogue_id]).is_empty()
            });
            if rejected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "A and B did not both reject the announcement {what}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        // Catch-up on connection: each node asked the rogue for its log and
        // refused the entry.
        eventually(10, "A and B refuse the rogue's log entry", || {
            [&a, &b]
                .iter()
                .all(|n| !log_lines(n, &["log entry refused", &rogue_id]).is_empty())
        });
        for (node, label) in [(&a, "A"), (&b, "B")] {
            let lines = log_lines(node, &["announcement not applied", &rogue_id, reason]);
            assert!(
                !lines.is_empty(),
                "{label} gave no reason ({reason:?}) for refusing the update {what}"
            );
            println!("{label}, update {what}: {}", lines[0].trim());
        }
        rogues.push(rogue);
    }
    // Give gossip time to go anywhere it (wrongly) could.
    std::thread::sleep(Duration::from_secs(2));
    let rogue_ids: Vec<String> = rogues.iter().map(|r| r.peer_id().to_string()).collect();
    let asked =
        |rogues: &[Rogue]| -> Vec<String> { rogues.iter().flat_map(Rogue::fetches).collect() };

    for node in [&a, &b] {
        assert_eq!(node.server_refs(&owner, "demo"), refs_before);
        assert_eq!(certificates(node, &owner, "demo"), log_before);
        let objects = objects_dir(node, &owner, "demo");
        assert!(has_object(&objects, &c1), "the object lookup works");
        assert!(!has_object(&objects, &evil), "the rogue's commit got in");
    }
    assert!(
        asked(&rogues).is_empty(),
        "a node asked a rogue for objects of an unverified update: {:?}",
        asked(&rogues)
    );
    // Nothing was applied anywhere: A never replicated an update, B only the
    // one it seeded (and A forwarded nothing to B: B's only rejections are
    // of what the rogue sent it directly).
    assert!(log_lines(&b, &["rejecting an invalid announcement"])
        .iter()
        .all(|l| rogue_ids.iter().any(|r| l.contains(r))));
    assert_eq!(log_lines(&a, &["replicated a signed update"]).len(), 0);
    assert_eq!(log_lines(&b, &["replicated a signed update"]).len(), 1);

    // Harmless whether A keeps the rogue connected or cuts it off: an honest
    // push to A reaches B as usual, and the rogue is asked for nothing.
    let still = rogues
        .iter()
        .flat_map(|r| r.connected(&rt))
        .collect::<Vec<_>>();
    println!(
        "rogues still connected after the attack: to A {}, to B {}",
        still.contains(&a_peer),
        still.contains(&b_peer)
    );
    let c2 = commit_file(&work, "NEWS.md", "still fine\n", "after the attack");
    git_ok(&work, &["push", "-q", &a.repo_url("alice", "demo"), "main"]);
    eventually(20, "B follows the honest push", || {
        b.server_refs(&owner, "demo").get("refs/heads/main") == Some(&c2)
    });
    assert_eq!(b.server_refs(&owner, "demo"), a.server_refs(&owner, "demo"));
    assert_eq!(certificates(&b, &owner, "demo").len(), 2);
    assert_eq!(
        certificates(&b, &owner, "demo"),
        certificates(&a, &owner, "demo")
    );
    assert!(asked(&rogues).is_empty());
    drop(rogues);
    rt.shutdown_background();
}

/// A node in `dir` that connects to `a`, seeds `OWNER/demo` from it and
/// holds A's refs.
/// Updates made under push grants that do not authorize them, each with
/// the reason a node gives: expired, revoked (by a document version B got
/// from A before the attack, while the update claims version 1), for
/// another repository, signed by a non-delegate.
fn granted_updates(
    a: &Node,
    b: &Node,
    owner: &str,
    id: &[u8],
    line: &str,
) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    use guts_identity::grant::GrantBody;
    use guts_identity::{Keypair, PushToken};
    let key = test_identity().key_path.display().to_string();
    let revoked = cli_ok(a, &["token", "new", "alice/demo", "--key", &key]);
    cli_ok(
        a,
        &[
            "token",
            "revoke",
            "alice/demo",
            revoked.trim(),
            "--key",
            &key,
        ],
    );
    eventually(20, "B takes the revocation", || {
        b.repo_info(owner, "demo")["doc_version"] == 2
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let grant = |repo: &[u8], until: u64, by: &Keypair| {
        let grantee = Keypair::from_seed(&[0x70; 32]);
        let body = GrantBody {
            repo_id: repo.to_vec(),
            grantee: grantee.did().to_string(),
            refs: vec!["refs/heads/*".into()],
            not_before: now - 100,
            not_after: until,
            note: String::new(),
        };
        PushToken::new(grantee, &body.sign(by)).expect("token")
    };
    let owner_key = &test_identity().key;
    let mallory = Keypair::from_seed(&[0x66; 32]);
    let tokens = [
        (
            "under an expired grant",
            grant(id, now - 50, owner_key),
            "expired",
        ),
        (
            "under a revoked grant",
            PushToken::parse(revoked.trim()).expect("token"),
            "was revoked",
        ),
        (
            "under a grant for another repository",
            grant(&[7; 32], now + 100, owner_key),
            "for another repository",
        ),
        (
            "under a grant by a non-delegate",
            grant(id, now + 100, &mallory),
            "is not a delegate",
        ),
    ];
    let (old, rest) = line.split_once(' ').expect("line");
    let (new, name) = rest.split_once(' ').expect("line");
    let lines = [(old.to_owned(), new.to_owned(), name.to_owned())];
    tokens
        .into_iter()
        .map(|(what, token, reason)| {
            let pushee = a.repo_url(owner, "demo");
            let cert = token
                .certificate(&pushee, "1-n", now, &lines)
                .expect("signs");
            let update = SignedRefUpdate {
                repo_id: id.to_vec(),
                certificate: cert.text().to_owned(),
                doc_version: 1,
                refused: Vec::new(),
                grant: token.grant().to_bytes().to_vec(),
            };
            (what, update.encode_to_vec(), reason)
        })
        .collect()
}

fn seeded_follower(a: &Node, dir: &Path, owner: &str) -> Node {
    let node = peer_node(dir, Some(&p2p_addr(a)), true);
    eventually(20, "the follower connects to A", || {
        !connected(&node).is_empty()
    });
    seed(&node, owner, "demo");
    eventually(20, "the follower has A's refs", || {
        node.server_refs(owner, "demo") == a.server_refs(owner, "demo")
    });
    node
}

/// A and A2 share a repository; A2, cut off from A, accepted a push (c1 →
/// c2 on main) that A has not seen. `update` is A2's signed update for it.
struct Diverged {
    tmp: TempDir,
    a: Node,
    a_addr: String,
    a_peer: PeerId,
    a2: Node,
    a2_dir: PathBuf,
    owner: String,
    repo: String,
    work: PathBuf,
    c1: String,
    c2: String,
    certificate: String,
    update: Vec<u8>,
    topic: String,
}

fn diverged() -> Diverged {
    diverged_with(&["--sync-interval", "0"])
}

/// [`diverged`], with more flags for A.
fn diverged_with(a_args: &[&str]) -> Diverged {
    let tmp = TempDir::new().expect("tmp");
    let a = peer_node_with(&tmp.path().join("a"), None, true, a_args);
    let a_addr = p2p_addr(&a);
    let a_peer = peer_id_of(&a);
    let owner = test_identity().owner_id();
    let repo = format!("{owner}/demo");
    a.create_repo("alice", "demo");
    let work = tmp.path().join("work");
    let c1 = init_work_repo(&work);
    git_ok(&work, &["push", "-q", &a.repo_url("alice", "demo"), "main"]);

    // A2 seeds from A, then is restarted on its own.
    let a2_dir = tmp.path().join("a2");
    let mut a2 = seeded_follower(&a, &a2_dir, &owner);
    a2.stop();
    let a2 = peer_node(&a2_dir, None, true);
    assert!(connected(&a2).is_empty(), "A2 is isolated");

    let big: String = (0..2000)
        .map(|i| format!("line {i} of a bigger file, {}\n", i * 7919 % 1000))
        .collect();
    let c2 = commit_file(&work, "big.txt", &big, "add big.txt");
    git_ok(&work, &["push", "-q", &a2.repo_url(&owner, "demo"), "main"]);
    assert_eq!(
        a2.server_refs(&owner, "demo").get("refs/heads/main"),
        Some(&c2)
    );
    assert_eq!(
        a.server_refs(&owner, "demo").get("refs/heads/main"),
        Some(&c1)
    );
    let a2_log = updates(&a2, &owner, "demo");
    assert_eq!(a2_log.len(), 2);
    let logged = a2_log.last().expect("A2's update");
    assert_eq!(
        logged["updates"][0].as_str(),
        Some(format!("{c1} {c2} refs/heads/main").as_str())
    );
    let (id_bytes, id_text) = repo_id(&a, &owner, "demo");
    let topic = wire::topic(&id_text);
    let certificate = logged["certificate"]
        .as_str()
        .expect("certificate")
        .to_owned();
    let update = SignedRefUpdate {
        repo_id: id_bytes,
        certificate: certificate.clone(),
        doc_version: logged["doc_version"].as_u64().expect("doc_version"),
        refused: Vec::new(),
        grant: Vec::new(),
    }
    .encode_to_vec();
    Diverged {
        tmp,
        a,
        a_addr,
        a_peer,
        a2,
        a2_dir,
        owner,
        repo,
        work,
        c1,
        c2,
        certificate,
        update,
        topic,
    }
}

/// Have a rogue with `answers` announce `d.update` to A until A has acted
/// on it; returns the rogue.
fn rogue_announces(rt: &Runtime, d: &Diverged, answers: Answers, what: &str) -> Rogue {
    let rogue = Rogue::start(rt, &[&d.a_addr], answers);
    let rogue_id = rogue.peer_id().to_string();
    rogue.wait_connected_to(rt, d.a_peer);
    rogue.subscribe(rt, &d.topic);
    let deadline = Instant::now() + Duration::from_secs(30);
    while rogue.fetches().is_empty()
        || (log_lines(&d.a, &["announcement not applied", &rogue_id]).is_empty()
            && log_lines(&d.a, &["replicated a signed update"]).is_empty())
    {
        assert!(
            Instant::now() < deadline,
            "A never acted on the rogue's announcement ({what})"
        );
        rogue.publish(rt, &d.topic, &announce(&d.repo, &d.update));
        std::thread::sleep(Duration::from_millis(300));
    }
    rogue
}

/// A valid signed update whose objects A lacks (pushed to A2 while A2 was
/// cut off) is replayed by rogue peers that then answer A's object fetch
/// with the wrong data: another commit, the wanted commit rewritten (so its
/// id differs), the commit without its tree, a flipped byte inside
/// compressed data (trailer recomputed), a truncated pack. A refuses each:
/// refs and log unchanged, no quarantine left, no object kept. When A later
/// meets A2, it applies the very same update with A2's objects.
#[test]
fn objects_with_a_wrong_hash_are_rejected() {
    let mut d = diverged();
    let (a, owner, work, c1, c2) = (&d.a, &d.owner, &d.work, &d.c1, &d.c2);
    // The right objects, and wrong ones.
    let good = pack_objects(work, &[c2, &format!("^{c1}")], false);
    let entries = parse_pack(&good);
    let kinds: Vec<u8> = entries.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [1, 2, 3], "commit, tree, blob");
    assert_eq!(&object_id(1, &entries[0].data), c2);
    let (tree, blob) = (
        object_id(2, &entries[1].data),
        object_id(3, &entries[2].data),
    );
    assert_eq!(rev_parse(work, "HEAD^{tree}"), tree);
    assert_eq!(rev_parse(work, "HEAD:big.txt"), blob);

    let other = git_ok(
        work,
        &[
            "commit-tree",
            &tree,
            "-p",
            c1,
            "-m",
            "not what you asked for",
        ],
    );
    let other_pack = pack_objects(work, &[&other, &format!("^{c1}")], false);

    let rewritten_commit = String::from_utf8(entries[0].data.clone())
        .expect("commit text")
        .replace("add big.txt", "add BIG.txt")
        .into_bytes();
    let rewritten = object_id(1, &rewritten_commit);
    assert_ne!(&rewritten, c2);
    let rewritten_pack = build_pack(&[
        (1, &rewritten_commit),
        (2, &entries[1].data),
        (3, &entries[2].data),
    ]);
    let commit_only = build_pack(&[(1, &entries[0].data)]);

    let mut flipped = good.clone();
    let z = &entries[2].zlib;
    flipped[z.start + z.len() / 2] ^= 0x40;
    fix_trailer(&mut flipped);

    let scratch = d.tmp.path().join("scratch.git");
    assert!(git_accepts_pack(&scratch, &rewritten_pack));
    assert!(
        !git_accepts_pack(&scratch, &flipped),
        "the flipped byte must corrupt the pack"
    );

    let variants: Vec<(&str, Vec<u8>)> = vec![
        ("a pack of another commit", fetch_response(&other_pack)),
        (
            "the wanted commit rewritten (another id)",
            fetch_response(&rewritten_pack),
        ),
        (
            "the commit without its tree and blob",
            fetch_response(&commit_only),
        ),
        (
            "a flipped byte in compressed data, trailer recomputed",
            fetch_response(&flipped),
        ),
        ("a truncated pack", fetch_response(&good[..good.len() / 2])),
    ];

    let objects = objects_dir(a, owner, "demo");
    assert!(has_object(&objects, c1), "the object lookup works");
    let objects_before = listing(&objects);
    let refs_before = a.server_refs(owner, "demo");
    let log_before = certificates(a, owner, "demo");
    assert_eq!(log_before.len(), 1);

    let rt = runtime();
    for (what, response) in &variants {
        let answers = Answers {
            log: vec![d.update.clone()],
            fetch: response.clone(),
            resumable: None,
        };
        let rogue = rogue_announces(&rt, &d, answers, what);
        let rogue_id = rogue.peer_id().to_string();
        eventually(10, "A refuses the rogue's log entry", || {
            !log_lines(a, &["log entry refused", &rogue_id]).is_empty()
        });
        let fetches = rogue.fetches();
        assert!(
            fetches.len() >= 2,
            "A fetched from the rogue after its announcement and its log ({what}): {fetches:?}"
        );
        for f in &fetches {
            assert!(f.contains(&format!("want {c2}")), "A asked for {f:?}");
        }
        for line in log_lines(a, &[&rogue_id, "not applied"])
            .iter()
            .chain(&log_lines(a, &[&rogue_id, "refused"]))
        {
            println!("A, rogue serving {what}: {}", line.trim());
        }
        assert_eq!(a.server_refs(owner, "demo"), refs_before, "{what}");
        assert_eq!(certificates(a, owner, "demo"), log_before, "{what}");
        drop(rogue);
    }

    assert_eq!(
        listing(&objects),
        objects_before,
        "the bad packs left something under {}",
        objects.display()
    );
    for id in [c2, &tree, &blob, &other, &rewritten] {
        assert!(!has_object(&objects, id), "A kept object {id}");
    }
    assert_eq!(a.server_refs(owner, "demo"), refs_before);
    assert_eq!(certificates(a, owner, "demo"), log_before);
    rt.shutdown_background();

    // The same update from an honest peer is applied.
    d.a2.stop();
    d.a2 = peer_node(&d.a2_dir, Some(&d.a_addr), true);
    eventually(30, "A applies A2's update", || {
        a.server_refs(owner, "demo").get("refs/heads/main") == Some(c2)
    });
    assert_eq!(
        a.server_refs(owner, "demo"),
        d.a2.server_refs(owner, "demo")
    );
    let log_after = certificates(a, owner, "demo");
    assert_eq!(log_after.len(), 2);
    assert_eq!(
        log_after[1], d.certificate,
        "the replayed update, now applied"
    );
    assert!(!listing(&objects).iter().any(|p| p.contains("incoming-")));
    assert!(has_object(&objects, &blob));
    let clone = clone_refs(a, owner, "demo", &d.tmp.path().join("clone.git"));
    assert_eq!(clone.get("refs/heads/main"), Some(c2));
}

/// A2's objects reach A through a peer whose first answer breaks off in the
/// middle of the pack. A keeps the bytes that arrived and asks again with
/// their count and hash; the peer sends only the rest, and the update
/// applies. No byte crosses twice, and nothing partial is left behind.
#[test]
fn an_interrupted_transfer_resumes_where_it_broke_off() {
    let d = diverged();
    let (a, owner) = (&d.a, &d.owner);
    let pack = pack_objects(&d.work, &[&d.c2, &format!("^{}", d.c1)], false);
    let cut = pack.len() * 2 / 3;
    assert!(cut > 1000, "a pack worth resuming ({} bytes)", pack.len());
    let rt = runtime();
    let answers = Answers {
        log: vec![d.update.clone()],
        fetch: Vec::new(),
        resumable: Some((pack.clone(), cut)),
    };
    let rogue = rogue_announces(&rt, &d, answers, "a broken-off pack");
    eventually(30, "A applies the update", || {
        a.server_refs(owner, "demo").get("refs/heads/main") == Some(&d.c2)
    });
    let offsets: Vec<String> = rogue
        .fetches()
        .iter()
        .map(|f| f.split_whitespace().next().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        offsets[..2],
        ["resume_offset=0".to_owned(), format!("resume_offset={cut}")],
        "a full request, then one resuming after {cut} bytes"
    );
    assert!(
        !log_lines(a, &["object transfer broke off; resuming"]).is_empty(),
        "A says the transfer broke off"
    );
    assert!(!log_lines(a, &["resuming an interrupted transfer", &cut.to_string()]).is_empty());
    let objects = objects_dir(a, owner, "demo");
    let left: Vec<String> = listing(&objects)
        .into_iter()
        .filter(|p| p.contains("incoming-") || p.starts_with("resume"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(certificates(a, owner, "demo").len(), 2);
    let clone = clone_refs(a, owner, "demo", &d.tmp.path().join("clone.git"));
    assert_eq!(clone.get("refs/heads/main"), Some(&d.c2));
    drop(rogue);
    rt.shutdown_background();
}

/// An update that a connected peer holds but never announced (a lost
/// announcement) reaches A through the periodic log comparison: the peer's
/// log summary differs from A's, A asks for its log, checks the new entry
/// and fetches its objects.
#[test]
fn a_missed_update_arrives_by_periodic_log_comparison() {
    let d = diverged_with(&["--sync-interval", "1"]);
    let (a, owner) = (&d.a, &d.owner);
    let pack = pack_objects(&d.work, &[&d.c2, &format!("^{}", d.c1)], false);
    let rt = runtime();
    let quiet = Answers {
        log: Vec::new(),
        fetch: fetch_response(&pack),
        resumable: None,
    };
    let rogue = Rogue::start(&rt, &[&d.a_addr], quiet.clone());
    rogue.wait_connected_to(&rt, d.a_peer);
    // Catch-up on connection found nothing; a few comparisons pass.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        a.server_refs(owner, "demo").get("refs/heads/main"),
        Some(&d.c1)
    );
    assert!(rogue.fetches().is_empty());
    // The peer now holds the update, without announcing it.
    rogue.set_answers(Answers {
        log: vec![d.update.clone()],
        ..quiet
    });
    eventually(20, "A finds the update by comparing logs", || {
        a.server_refs(owner, "demo").get("refs/heads/main") == Some(&d.c2)
    });
    assert_eq!(rogue.fetches().len(), 1, "one fetch for the missed update");
    assert_eq!(certificates(a, owner, "demo").len(), 2);
    let clone = clone_refs(a, owner, "demo", &d.tmp.path().join("clone.git"));
    assert_eq!(clone.get("refs/heads/main"), Some(&d.c2));
    drop(rogue);
    rt.shutdown_background();
}

/// A peer that keeps sending undecodable announcements is blocked after
/// three, and stays blocked when the node restarts: the block is kept in
/// the node's database, not only in memory.
#[test]
fn a_blocked_peer_stays_blocked_after_a_restart() {
    let tmp = TempDir::new().expect("tmp");
    let a_dir = tmp.path().join("a");
    let mut a = peer_node(&a_dir, None, false);
    let a_addr = p2p_addr(&a);
    let a_peer = peer_id_of(&a);
    let owner = test_identity().owner_id();
    a.create_repo("alice", "demo");
    let (_, id_text) = repo_id(&a, &owner, "demo");
    let topic = wire::topic(&id_text);

    let rt = runtime();
    let key = NodeKeypair::generate_ed25519();
    let empty = Answers {
        log: Vec::new(),
        fetch: Vec::new(),
        resumable: None,
    };
    let rogue = Rogue::start_as(&rt, key.clone(), &[&a_addr], empty.clone());
    let rogue_id = rogue.peer_id().to_string();
    rogue.wait_connected_to(&rt, a_peer);
    rogue.subscribe(&rt, &topic);
    let mut n = 0u8;
    eventually(20, "A blocks the rogue", || {
        n = n.wrapping_add(1);
        rogue.publish(&rt, &topic, &[0xff, n, 0xff, 0xff]);
        std::thread::sleep(Duration::from_millis(200));
        !log_lines(&a, &["blocking a misbehaving peer", &rogue_id]).is_empty()
    });
    assert!(log_lines(&a, &["strike against a peer", &rogue_id]).len() >= 3);
    eventually(10, "the rogue is disconnected", || {
        !rogue.connected(&rt).contains(&a_peer)
    });
    drop(rogue);
    // The operator sees it in the metrics: three strikes or more, one
    // block, the announcements rejected as undecodable.
    eventually(10, "the metrics count the strikes and the block", || {
        let text = a.get("/metrics").text();
        metric(&text, "guts_p2p_peer_strikes_total", "") >= 3.0
            && metric(&text, "guts_p2p_peer_blocks_total", "") == 1.0
            && metric(
                &text,
                "guts_p2p_gossip_rejected_total",
                "reason=\"undecodable\"",
            ) >= 3.0
    });

    a.stop();
    let a = peer_node(&a_dir, None, false);
    assert!(
        !log_lines(&a, &["peer still blocked", &rogue_id]).is_empty(),
        "A remembers the block"
    );
    let a_addr = p2p_addr(&a);
    let again = Rogue::start_as(&rt, key, &[&a_addr], empty);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !again.connected(&rt).contains(&a_peer),
        "the blocked peer got a connection after the restart"
    );
    // An honest peer still connects.
    let honest = Rogue::start(
        &rt,
        &[&a_addr],
        Answers {
            log: Vec::new(),
            fetch: Vec::new(),
            resumable: None,
        },
    );
    honest.wait_connected_to(&rt, a_peer);
    rt.shutdown_background();
}

//! Helper of `seed-corpora.sh` (built with `--features seed`; not a fuzz
//! target): writes the fixed key, and seeds made by the crates themselves.
//!
//! - `key PATH`: the owner key (`guts_fuzz::owner_key`) as an OpenSSH key file;
//! - `cert`: a push certificate signed by `guts_identity::Keypair::sign_ssh`, on stdout;
//! - `docs DIR`: identity documents (genesis, successors, co-signed) and
//!   signed ref updates;
//! - `wire CERT FETCH DIR`: p2p messages, raw and framed, carrying the git
//!   push certificate CERT and the v2 fetch request FETCH (with its selector byte).

use std::path::Path;

use guts_fuzz::{genesis, genesis_body, other_key, owner_key, SMALL_REFS};
use guts_identity::{Doc, SignedRefUpdate};
use guts_p2p::wire::{Announce, Items, Kind, LogSummary, Request};
use prost::Message;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn guts_cert() -> String {
    let key = owner_key();
    let ids: Vec<&str> = SMALL_REFS.lines().map(|l| &l[..40]).collect();
    let payload = format!(
        "certificate version 0.1\n\
         pusher {} 1700000000 +0000\n\
         pushee https://node.example/fuzz/seeded.git\n\
         nonce 1700000000-0123456789abcdef\n\
         push-option ci.skip\n\
         \n\
         {} {} refs/heads/main\n\
         {} {} refs/heads/topic\n",
        key.ssh_fingerprint().expect("fingerprint"),
        ids[1],
        ids[0],
        "0".repeat(40),
        ids[1],
    );
    let sig = key.sign_ssh("git", payload.as_bytes()).expect("sign");
    payload + &sig
}

fn update(cert: String, refused: Vec<String>) -> SignedRefUpdate {
    SignedRefUpdate {
        repo_id: genesis().genesis_id().expect("genesis").0.to_vec(),
        certificate: cert,
        doc_version: 1,
        refused,
        grant: Vec::new(),
    }
}

/// A push token of the fixed identity's repository, for `other_key`, and
/// a logged update of a push made with it.
fn token_seeds() -> (String, Vec<u8>, Vec<u8>) {
    use guts_identity::grant::GrantBody;
    use guts_identity::PushToken;
    let body = GrantBody {
        repo_id: genesis().genesis_id().expect("genesis").0.to_vec(),
        grantee: other_key().did().to_string(),
        refs: vec!["refs/heads/*".into(), "refs/tags/v1".into()],
        not_before: 1_700_000_000,
        not_after: 1_800_000_000,
        note: "fuzz".into(),
    };
    let signed = body.sign(&owner_key());
    let token = PushToken::new(other_key(), &signed).expect("token");
    let lines = [("0".repeat(40), "a".repeat(40), "refs/heads/main".to_owned())];
    let cert = token
        .certificate("http://h/fuzz/seeded.git", "1-n", 1_750_000_000, &lines)
        .expect("certificate");
    let mut up = update(cert.text().to_owned(), Vec::new());
    up.grant = signed.encode_to_vec();
    (token.encode(), signed.encode_to_vec(), up.encode_to_vec())
}

fn frame(m: &impl Message) -> Vec<u8> {
    let b = m.encode_to_vec();
    let mut v = (b.len() as u32).to_be_bytes().to_vec();
    v.extend(b);
    v
}

fn docs() -> Vec<Vec<u8>> {
    let owner = owner_key();
    let other = other_key();
    let g = genesis();
    let mut v2 = g.successor();
    v2.delegates.push(other.did().to_string());
    v2.threshold = 2;
    v2.aliases.push("fuzz-alias".into());
    let v2 = Doc::from_signed(v2.sign(&[&owner]))
        .and_then(|d| d.verify_successor(g))
        .expect("v2 verifies");
    let mut v3 = v2.successor();
    v3.default_branch = "trunk".into();
    let mut signed = v3.sign(&[&owner]);
    signed.add_signature(&other);
    vec![
        g.to_bytes(),
        v2.to_bytes(),
        Doc::from_signed(signed).expect("v3").to_bytes(),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("key") => owner_key()
            .write_openssh(Path::new(&args[2]), "guts-fuzz")
            .expect("write key"),
        Some("cert") => print!("{}", guts_cert()),
        Some("tokens") => {
            let dir = Path::new(&args[2]);
            let (token, grant, update) = token_seeds();
            write(dir, "token", token.as_bytes());
            write(dir, "grant", &grant);
            write(dir, "update-with-grant", &update);
        }
        Some("docs") => {
            let dir = Path::new(&args[2]);
            for (i, d) in docs().iter().enumerate() {
                write(dir, &format!("doc-v{}", i + 1), d);
            }
            let mut alias = genesis_body();
            alias.aliases = vec!["alice".into(), "alice-2".into()];
            alias.delegates.push(other_key().did().to_string());
            write(
                dir,
                "doc-two-delegates",
                &alias.sign(&[&owner_key()]).encode_to_vec(),
            );
            write(
                dir,
                "update",
                &update(guts_cert(), Vec::new()).encode_to_vec(),
            );
            write(
                dir,
                "update-refused",
                &update(guts_cert(), vec!["refs/heads/topic".into()]).encode_to_vec(),
            );
        }
        Some("wire") => {
            let cert = std::fs::read_to_string(&args[2]).expect("cert");
            let fetch = std::fs::read(&args[3]).expect("fetch request");
            let fetch = fetch[1..].to_vec();
            let dir = Path::new(&args[4]);
            let up = update(cert, Vec::new()).encode_to_vec();
            let ours = update(guts_cert(), Vec::new()).encode_to_vec();
            let announce = Announce {
                repo: "fuzz/seeded".into(),
                update: up.clone(),
                doc_versions: 0,
            };
            let fetch_req = Request {
                kind: Kind::Fetch as i32,
                repo: "fuzz/seeded".into(),
                body: fetch,
                resume_offset: 1234,
                resume_sha1: vec![0xab; 20],
                ..Request::default()
            };
            let mut set = guts_p2p::logset::LogSet::default();
            for u in [&up, &ours] {
                let key = SignedRefUpdate::decode(&u[..]).expect("decodes").key();
                set.insert(key, u.clone());
            }
            let log_req = Request {
                kind: Kind::Entries as i32,
                repo: "fuzz/seeded".into(),
                keys: set.keys_in(&(0..=255).collect::<Vec<u8>>()).iter().map(|k| k.to_vec()).collect(),
                ..Request::default()
            };
            let summary = set.buckets().summary(3);
            let buckets_items = Items {
                items: vec![set.buckets().to_wire().encode_to_vec()],
                ..Items::default()
            };
            let identity = Items {
                items: docs(),
                error: String::new(),
                next: 0,
            };
            let log = Items {
                items: vec![up.clone(), ours.clone()],
                error: String::new(),
                next: 7,
            };
            let summary_items = Items {
                items: vec![summary.encode_to_vec()],
                ..Items::default()
            };
            let refused = Items {
                error: "unknown repository fuzz/other".into(),
                ..Items::default()
            };
            write(dir, "announce", &announce.encode_to_vec());
            write(dir, "request-fetch", &fetch_req.encode_to_vec());
            write(dir, "request-log", &log_req.encode_to_vec());
            write(dir, "items-identity", &identity.encode_to_vec());
            write(dir, "items-log", &log.encode_to_vec());
            write(dir, "log-summary", &summary.encode_to_vec());
            write(dir, "items-buckets", &buckets_items.encode_to_vec());
            // Streams in the order the target reads frames: Request, Items, Announce, ...
            let mut s = frame(&fetch_req);
            s.extend(frame(&refused));
            s.extend(frame(&announce));
            write(dir, "stream-fetch", &s);
            let mut s = frame(&log_req);
            s.extend(frame(&log));
            s.extend(frame(&announce));
            s.extend(frame(&Request {
                kind: Kind::LogSummary as i32,
                repo: "fuzz/seeded".into(),
                ..Request::default()
            }));
            s.extend(frame(&summary_items));
            write(dir, "stream-log", &s);
            let mut s = frame(&Request {
                kind: Kind::Identity as i32,
                repo: "fuzz/seeded".into(),
                ..Request::default()
            });
            s.extend(frame(&identity));
            write(dir, "stream-identity", &s);
        }
        _ => {
            eprintln!("usage: seed-corpora key PATH | cert | docs DIR | wire CERT FETCH DIR");
            std::process::exit(2);
        }
    }
}

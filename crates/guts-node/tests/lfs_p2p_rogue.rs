//! Git LFS objects from peers that do not have them, break off, or lie
//! (ADR 0024): a real node B seeds a repository from node A, whose commit
//! holds two LFS pointers whose objects A lacks; an in-process libp2p peer
//! connected to B serves one object in two halves (the first transfer
//! breaks off) and the other with a flipped byte. No git-lfs client needed.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::p2p::*;
use common::*;
use futures_util::{AsyncRead, AsyncWrite, AsyncWriteExt, StreamExt};
use guts_p2p::network::{self, Handle, NetworkConfig};
use guts_p2p::wire::{self, Items, Kind, Request};
use guts_p2p::{Multiaddr, NodeKeypair, PeerId};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// What the peer serves per object id: the bytes, and where the first
/// transfer of them stops (the stream closes early).
type Served = BTreeMap<[u8; 32], (Vec<u8>, Option<usize>)>;

/// The `Lfs` requests the peer got: object id (hex) and offset.
type Asked = Arc<Mutex<Vec<(String, u64)>>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn pointer(content: &[u8]) -> String {
    format!(
        "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n",
        hex(&Sha256::digest(content)),
        content.len()
    )
}

async fn serve<S>(mut stream: S, served: Arc<Served>, asked: Asked)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Ok(req) = wire::read_frame::<_, Request>(&mut stream).await else {
        return;
    };
    let object = <[u8; 32]>::try_from(req.lfs_oid.as_slice())
        .ok()
        .and_then(|oid| served.get(&oid))
        .filter(|_| req.kind == Kind::Lfs as i32);
    let Some((bytes, cut)) = object else {
        let refused = Items {
            error: "not telling".into(),
            ..Default::default()
        };
        let _ = wire::write_frame(&mut stream, &refused).await;
        let _ = stream.close().await;
        return;
    };
    asked
        .lock()
        .expect("asked")
        .push((hex(&req.lfs_oid), req.resume_offset));
    let header = Items {
        next: bytes.len() as u64,
        ..Default::default()
    };
    let from = usize::try_from(req.resume_offset).expect("an offset");
    let to = match cut {
        Some(cut) if from == 0 => *cut,
        _ => bytes.len(),
    };
    if wire::write_frame(&mut stream, &header).await.is_ok() {
        let _ = stream.write_all(&bytes[from..to]).await;
    }
    let _ = stream.close().await;
}

/// An in-process peer dialing `bootstrap` that answers only `Lfs` requests.
fn start_peer(rt: &tokio::runtime::Runtime, bootstrap: &str, served: Served) -> (Handle, Asked) {
    let bootstrap: Multiaddr = bootstrap.parse().expect("address");
    rt.block_on(async move {
        let (net, mut events) = network::start(NetworkConfig {
            keypair: NodeKeypair::generate_ed25519(),
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("listen address")],
            bootstrap: vec![bootstrap],
            mdns: false,
            dht: false,
            accept: vec![wire::REPLICATION_PROTOCOL],
            nat: Default::default(),
        })
        .await
        .expect("start the peer's network");
        let mut incoming = net
            .accept(wire::REPLICATION_PROTOCOL)
            .expect("accept replication streams");
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        let (served, asked) = (Arc::new(served), Asked::default());
        let seen = Arc::clone(&asked);
        tokio::spawn(async move {
            while let Some((_peer, stream)) = incoming.next().await {
                tokio::spawn(serve(stream, Arc::clone(&served), Arc::clone(&seen)));
            }
        });
        (net, asked)
    })
}

/// The sum of a metric's samples whose line starts with `prefix`.
fn metric(node: &Node, prefix: &str) -> f64 {
    node.get("/metrics")
        .text()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[test]
fn lfs_objects_resume_after_a_break_and_a_wrong_one_is_refused_with_a_strike() {
    let tmp = TempDir::new().expect("tmp");
    let a = peer_node(&tmp.path().join("a"), None, false);
    let b = peer_node(&tmp.path().join("b"), Some(&p2p_addr(&a)), false);
    wait_connected(&b, 1);
    a.create_repo("alice", "demo");
    let mut rng = Rng(0x5eed);
    let (good, bad) = (rng.noise(300_000), rng.noise(50_000));
    let work = tmp.path().join("work");
    init_work_repo(&work);
    commit_file(&work, "good.bin", &pointer(&good), "good");
    commit_file(&work, "bad.bin", &pointer(&bad), "bad");
    git_ok(&work, &["push", "-q", &a.repo_url("alice", "demo"), "main"]);

    let good_oid: [u8; 32] = Sha256::digest(&good).into();
    let bad_oid: [u8; 32] = Sha256::digest(&bad).into();
    let mut wrong = bad.clone();
    wrong[25_000] ^= 1;
    let cut = 120_000;
    let served: Served = [
        (good_oid, (good.clone(), Some(cut))),
        (bad_oid, (wrong, None)),
    ]
    .into_iter()
    .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (peer, asked) = start_peer(&rt, &p2p_addr(&b), served);
    let peer_id: PeerId = peer.peer_id();
    eventually(20, "B connects to the peer", || {
        connected(&b).contains(&peer_id.to_string())
    });

    // B seeds from A, which lacks the objects: B asks A, then the peer.
    let owner = test_identity().owner_id();
    seed(&b, &owner, "demo");
    let stored = b.data_dir().join("lfs").join("objects");
    let has = |oid: &[u8; 32]| {
        walk_files(&stored)
            .into_iter()
            .any(|p| p.file_name().is_some_and(|n| n == hex(oid).as_str()))
    };
    eventually(30, "B stores the object that broke off once", || {
        has(&good_oid)
    });
    eventually(30, "B gives up on the wrong object for this round", || {
        metric(&b, "guts_p2p_lfs_objects_total{result=\"failed\"}") >= 3.0
    });
    let stored_good = walk_files(&stored)
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == hex(&good_oid).as_str()))
        .expect("the object's file");
    assert_eq!(std::fs::read(stored_good).expect("read"), good);
    assert!(!has(&bad_oid), "the wrong object was not stored");
    let requests = asked.lock().expect("asked").clone();
    assert_eq!(
        requests,
        // Object ids are asked in id order; the first transfer of `good`
        // broke off after `cut` bytes, the next resumed there.
        {
            let mut expected = vec![
                (hex(&good_oid), 0),
                (hex(&good_oid), cut as u64),
                (hex(&bad_oid), 0),
            ];
            if bad_oid < good_oid {
                expected.rotate_right(1);
            }
            expected
        }
    );
    // A lacked both (refused, no blame); the peer sent one wrong object.
    assert_eq!(metric(&b, "guts_p2p_peer_strikes_total"), 1.0);
    assert_eq!(
        metric(&b, "guts_p2p_lfs_objects_total{result=\"fetched\"}"),
        1.0
    );
    assert_eq!(
        metric(&b, "guts_p2p_lfs_objects_total{result=\"failed\"}"),
        3.0
    );
    let partial = b.data_dir().join("lfs").join("partial");
    assert_eq!(walk_files(&partial).len(), 0, "no partial transfer left");
    assert!(b.log().contains("a peer sent a wrong LFS object"));
    assert!(b.log().contains("LFS object transfer broke off; resuming"));
    rt.shutdown_background();
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

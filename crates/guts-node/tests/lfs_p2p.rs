//! Git LFS over the peer network (ADR 0024), with real node processes and
//! stock git and git-lfs: files pushed with git-lfs to one node are fetched
//! by a seeding peer from it, and a clone from that peer gets them whole.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::p2p::*;
use common::*;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

const GIT_LFS: &str = "/usr/bin/git-lfs";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Most a seeding node's peak RSS may rise over its idle RSS while it
/// fetches the 200 MB object from its peer.
const RSS_HEADROOM_KIB: u64 = 64 * 1024;
/// The large LFS file's size.
const HUGE: u64 = 200 * 1024 * 1024;

/// The SHA-256 (hex) of a file, read a MiB at a time.
fn file_oid(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf).ok()? {
            0 => return Some(hex(&hasher.finalize())),
            n => hasher.update(&buf[..n]),
        }
    }
}

/// The LFS objects in a node's store whose content hashes to their name
/// (`DATA_DIR/lfs/objects/<repository id>/<aa>/<bb>/<oid>`).
fn verified_store_objects(data_dir: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut stack = vec![data_dir.join("lfs").join("objects")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = entry.file_name().to_string_lossy().into_owned();
                if file_oid(&path).as_deref() == Some(name.as_str()) {
                    found.insert(name);
                }
            }
        }
    }
    found
}

/// The value of a metric line of the node's `/metrics` (0 if absent).
fn metric(node: &Node, line_start: &str) -> f64 {
    node.get("/metrics")
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn lfs_files_pushed_to_one_node_are_cloned_whole_from_a_seeding_peer() {
    if !Path::new(GIT_LFS).exists() {
        println!("SKIP lfs_p2p: {GIT_LFS} is missing");
        return;
    }
    let tmp = TempDir::new().expect("tmp");
    let a = peer_node(&tmp.path().join("a"), None, false);
    let b = peer_node(&tmp.path().join("b"), Some(&p2p_addr(&a)), false);
    wait_connected(&b, 1);
    a.create_repo("alice", "demo");

    // A signed push of three LFS files (1 KB, 10 MB and 200 MB,
    // pseudo-random) to A; git-lfs uploads them with the operator token as
    // its password.
    let work = tmp.path().join("work");
    init_work_repo(&work);
    git_ok(&work, &["lfs", "install", "--local"]);
    git_ok(&work, &["lfs", "track", "*.bin"]);
    let mut rng = Rng(0x1f5_2024);
    let small = rng.noise(1024);
    let big = rng.noise(10 * 1024 * 1024);
    std::fs::write(work.join("small.bin"), &small).expect("write");
    std::fs::write(work.join("big.bin"), &big).expect("write");
    let huge = lfs::fixture_file(HUGE, 0x200);
    std::fs::hard_link(&huge, work.join("huge.bin"))
        .or_else(|_| std::fs::copy(&huge, work.join("huge.bin")).map(|_| ()))
        .expect("place huge.bin");
    git_ok(
        &work,
        &["add", ".gitattributes", "small.bin", "big.bin", "huge.bin"],
    );
    git_ok(&work, &["commit", "-q", "-m", "lfs files"]);
    let creds = tmp.path().join("credentials");
    std::fs::write(
        &creds,
        format!("http://operator:{}@{}\n", a.operator_token(), a.addr()),
    )
    .expect("write credentials");
    let helper = format!("store --file={}", creds.display());
    git_ok(&work, &["config", "credential.helper", &helper]);
    git_ok(&work, &["push", "-q", &a.repo_url("alice", "demo"), "main"]);
    let expected: BTreeSet<String> = [
        hex(&Sha256::digest(&small)),
        hex(&Sha256::digest(&big)),
        file_oid(&huge).expect("hash huge.bin"),
    ]
    .into_iter()
    .collect();
    assert_eq!(verified_store_objects(a.data_dir()), expected, "A's store");

    // B seeds the repository: refs first, then the LFS objects, from A,
    // streamed: B's memory stays flat while 200 MB arrive.
    let owner = test_identity().owner_id();
    let b_pid = lfs::node_pid(&b);
    let idle = lfs::vm_kib(b_pid, "VmRSS");
    seed(&b, &owner, "demo");
    assert!(same_refs(&a, &b, &owner, "demo"), "seeding copied the refs");
    eventually(120, "B holds the three LFS objects, verified", || {
        metric(&b, "guts_p2p_lfs_objects_total{result=\"fetched\"} ") >= 3.0
    });
    let peak = lfs::vm_kib(b_pid, "VmHWM");
    println!("seeding node RSS idle {idle} KiB, peak {peak} KiB while fetching {HUGE} bytes");
    assert!(
        peak < idle + RSS_HEADROOM_KIB,
        "B's peak RSS {peak} KiB is over idle {idle} KiB + {RSS_HEADROOM_KIB} KiB"
    );
    assert_eq!(verified_store_objects(b.data_dir()), expected, "B's store");
    assert_eq!(
        metric(&b, "guts_p2p_lfs_objects_total{result=\"fetched\"} "),
        3.0
    );
    assert_eq!(
        metric(&b, "guts_p2p_lfs_objects_total{result=\"failed\"} "),
        0.0
    );
    let partial = b.data_dir().join("lfs").join("partial");
    let left = std::fs::read_dir(&partial).map_or(0, |d| d.count());
    assert_eq!(left, 0, "no partial transfer left behind");

    // A clone from B with git-lfs gets the files whole.
    let clone = tmp.path().join("clone");
    git_ok(
        tmp.path(),
        &["clone", "-q", &b.repo_url("alice", "demo"), "clone"],
    );
    git_ok(&clone, &["lfs", "install", "--local"]);
    git_ok(&clone, &["lfs", "pull"]);
    assert_eq!(
        std::fs::read(clone.join("small.bin")).expect("small"),
        small
    );
    assert!(
        std::fs::read(clone.join("big.bin")).expect("big") == big,
        "big.bin differs"
    );
    assert!(
        lfs::same_contents(&clone.join("huge.bin"), &huge),
        "huge.bin differs"
    );
    git_ok(&clone, &["lfs", "fsck"]);
}

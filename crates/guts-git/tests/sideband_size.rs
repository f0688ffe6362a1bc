//! Pack data goes out in full side-band packets, as git sends them
//! (65,515 data bytes with `side-band-64k`, 995 with `side-band`): many
//! small packets slow some clients (dulwich, isomorphic-git) down.

mod common;
use common::{empty_repo, git, pkt, push_pack, text};

use guts_git::pktline::{Packet, PktReader};
use guts_git::protocol::Version;
use guts_git::storage::{MaintainOptions, Repo};
use guts_git::upload_pack::{upload_pack, Serving};

const ZERO: &str = "0000000000000000000000000000000000000000";

/// Incompressible bytes (a xorshift stream), so that packs are large.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A repository of small and large (over 64 KiB) blobs in a few commits.
fn repo_with_blobs(tmp: &std::path::Path) -> (Repo, String) {
    let (repo, work) = empty_repo(tmp, Serving::default());
    for c in 0..4u64 {
        for f in 0..40u64 {
            let len = if f % 10 == 0 {
                150_000
            } else {
                300 + 97 * f as usize
            };
            std::fs::write(work.join(format!("f{f}")), noise(c * 100 + f, len)).expect("write");
        }
        git(&work, &["add", "."], None);
        git(&work, &["commit", "-q", "-m", &format!("c{c}")], None);
    }
    let main = text(&work, &["rev-parse", "HEAD"]);
    let pack = git(
        &work,
        &[
            "pack-objects",
            "--stdout",
            "--revs",
            "--delta-base-offset",
            "-q",
        ],
        Some(format!("{main}\n").as_bytes()),
    );
    push_pack(&repo, &[format!("{ZERO} {main} refs/heads/main")], &pack);
    (repo, main)
}

/// The data sizes of the band-1 packets of a v0 clone with `sideband`.
fn band1_sizes(repo: &Repo, main: &str, sideband: &str) -> Vec<usize> {
    let mut req = pkt(&format!("want {main} {sideband} ofs-delta\n"));
    req.extend(b"0000");
    req.extend(pkt("done\n"));
    let mut out = Vec::new();
    upload_pack(repo, Version::V0, &mut &req[..], &mut out).expect("fetch");
    let mut reader = PktReader::new(&out[..]);
    let mut sizes = Vec::new();
    while let Some(p) = reader.read().expect("valid response") {
        if let Packet::Data([1, data @ ..]) = p {
            sizes.push(data.len());
        }
    }
    sizes
}

/// Every band-1 packet but the last is full (the counts are printed).
fn assert_full(sizes: &[usize], full: usize, what: &str) {
    let (last, rest) = sizes.split_last().expect("some pack data");
    let total: usize = sizes.iter().sum();
    eprintln!(
        "{what}: {} packets for {total} bytes (mean {}), {} not full before the last",
        sizes.len(),
        total / sizes.len(),
        rest.iter().filter(|s| **s != full).count()
    );
    let short: Vec<&usize> = rest.iter().filter(|s| **s != full).collect();
    assert!(
        short.is_empty(),
        "{what}: {} of {} packets are not full ({full} bytes): {:?}",
        short.len(),
        sizes.len(),
        &short[..short.len().min(20)]
    );
    assert!(*last <= full);
}

#[test]
fn pack_data_fills_side_band_packets() {
    let tmp = tempfile::TempDir::new().expect("tmp");
    let (repo, main) = repo_with_blobs(tmp.path());
    let generated = band1_sizes(&repo, &main, "side-band-64k");
    assert_full(&generated, 65515, "generated, side-band-64k");
    let small = band1_sizes(&repo, &main, "side-band");
    assert_full(&small, 995, "generated, side-band");
    repo.maintain(MaintainOptions::default()).expect("maintain");
    let stored = band1_sizes(&repo, &main, "side-band-64k");
    assert_full(&stored, 65515, "maintained pack, side-band-64k");
}

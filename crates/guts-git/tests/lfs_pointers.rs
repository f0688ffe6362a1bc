//! Finding Git LFS pointers among the blobs of a received pack, as a node
//! does for a pack a peer sent (ADR 0024): packs built by stock git, with
//! pointers stored whole and as deltas, lookalikes and large blobs.

mod common;
use common::{empty_repo, git};

use guts_git::lfs::{pointers_in, LfsPointer, MAX_POINTERS_PER_PACK};
use guts_git::pack_in::{self, PackLimits};
use guts_git::upload_pack::Serving;

fn pointer_text(oid_byte: u8, size: u64) -> String {
    format!(
        "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {size}\n",
        format!("{oid_byte:02x}").repeat(32)
    )
}

/// Pseudo-random bytes (no compression, no deltas between them).
fn noise(n: usize, mut x: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn the_pointers_of_a_pack_are_found_and_nothing_else() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (repo, work) = empty_repo(tmp.path(), Serving::default());
    // Fifty pointers differing in one line each: git stores most of them
    // as deltas of one another.
    let mut expected = Vec::new();
    for i in 0..50u8 {
        let text = pointer_text(i, 1000 + u64::from(i));
        std::fs::write(work.join(format!("p{i}.bin")), &text).expect("write");
        expected.push(LfsPointer::parse(text.as_bytes()).expect("a pointer"));
    }
    // Lookalikes and other blobs.
    let mut almost = pointer_text(200, 5);
    almost.push('\n');
    std::fs::write(work.join("almost.bin"), almost).expect("write");
    std::fs::write(
        work.join("crlf.bin"),
        pointer_text(201, 5).replace('\n', "\r\n"),
    )
    .expect("write");
    std::fs::write(work.join("big.bin"), noise(3 * 1024 * 1024, 7)).expect("write");
    let mut big_pointer = pointer_text(202, 9).into_bytes();
    big_pointer.extend(noise(2000, 9));
    std::fs::write(work.join("long.bin"), big_pointer).expect("write");
    git(&work, &["add", "."], None);
    git(&work, &["commit", "-q", "-m", "lfs"], None);
    // A second commit changing one pointer: its blob is a delta in the pack.
    let changed = pointer_text(60, 77);
    std::fs::write(work.join("p0.bin"), &changed).expect("write");
    expected.push(LfsPointer::parse(changed.as_bytes()).expect("a pointer"));
    git(&work, &["commit", "-q", "-am", "change"], None);
    let pack = git(
        &work,
        &["pack-objects", "--stdout", "--revs", "--window=50"],
        Some(b"HEAD\n"),
    );

    let odb = repo.objects().expect("odb");
    let q = pack_in::receive(
        &repo.objects_dir(),
        &odb,
        &mut &pack[..],
        &PackLimits::DEFAULT,
        &mut |_| {},
    )
    .expect("a valid pack");
    let mut found = pointers_in(&q, MAX_POINTERS_PER_PACK).expect("scan");
    expected.sort();
    found.sort();
    assert_eq!(found, expected);

    // Bounded: at most `max` pointers are taken.
    assert_eq!(pointers_in(&q, 7).expect("scan").len(), 7);
}

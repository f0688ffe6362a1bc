//! Packs built to make a node work without bound: each must be refused (or,
//! for deep chains within the limit, checked in linear time) with nothing
//! left behind. Packs are written here byte by byte; no git, no sockets.

mod common;
use common::Open;

use guts_git::limits::{DEFAULT_MAX_DELTA_DEPTH, DEFAULT_MAX_OBJECT_BYTES};
use guts_git::names::RepoName;
use guts_git::pack_in::{self, PackLimits, Quarantine};
use guts_git::receive_pack::{receive_pack, ReceiveOptions};
use guts_git::storage::{Repo, Storage};
use guts_git::{Error, ObjectId};

const BLOB: u8 = 3;
const TREE: u8 = 2;
const OFS_DELTA: u8 = 6;
const REF_DELTA: u8 = 7;
const MIB: u64 = 1024 * 1024;

/// Writes a pack entry by entry.
struct PackWriter {
    buf: Vec<u8>,
    count: u32,
}

impl PackWriter {
    fn new() -> Self {
        let mut buf = b"PACK".to_vec();
        buf.extend(2u32.to_be_bytes());
        buf.extend(0u32.to_be_bytes());
        PackWriter { buf, count: 0 }
    }

    /// An entry of `kind` declaring `size` inflated bytes, with `base` bytes
    /// (ofs distance or ref id) and an already compressed body; returns its offset.
    fn raw(&mut self, kind: u8, size: u64, base: &[u8], compressed: &[u8]) -> u64 {
        let offset = self.buf.len() as u64;
        let mut c = (kind << 4) | (size & 0x0f) as u8;
        let mut rest = size >> 4;
        while rest > 0 {
            self.buf.push(c | 0x80);
            c = (rest & 0x7f) as u8;
            rest >>= 7;
        }
        self.buf.push(c);
        self.buf.extend_from_slice(base);
        self.buf.extend_from_slice(compressed);
        self.count += 1;
        offset
    }

    fn object(&mut self, kind: u8, data: &[u8]) -> u64 {
        self.raw(kind, data.len() as u64, &[], &deflate(data))
    }

    fn ofs_delta(&mut self, base_offset: u64, delta: &[u8]) -> u64 {
        let distance = ofs_encoding(self.buf.len() as u64 - base_offset);
        self.raw(OFS_DELTA, delta.len() as u64, &distance, &deflate(delta))
    }

    fn ref_delta(&mut self, base: &ObjectId, delta: &[u8]) -> u64 {
        self.raw(
            REF_DELTA,
            delta.len() as u64,
            base.as_bytes(),
            &deflate(delta),
        )
    }

    fn finish(mut self) -> Vec<u8> {
        self.buf[8..12].copy_from_slice(&self.count.to_be_bytes());
        let mut h = gix_hash::hasher(gix_hash::Kind::Sha1);
        h.update(&self.buf);
        let sum = h.try_finalize().expect("sha1");
        self.buf.extend_from_slice(sum.as_bytes());
        self.buf
    }
}

fn deflate(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut w = gix_zlib::stream::deflate::Write::new(Vec::new(), gix_zlib::Compression::BEST);
    w.write_all(data).expect("deflate");
    w.flush().expect("deflate");
    w.into_inner()
}

/// git's offset-delta distance: big-endian 7-bit groups, each but the last minus one.
fn ofs_encoding(mut n: u64) -> Vec<u8> {
    let mut out = vec![(n & 0x7f) as u8];
    n >>= 7;
    while n > 0 {
        n -= 1;
        out.push(0x80 | (n & 0x7f) as u8);
        n >>= 7;
    }
    out.reverse();
    out
}

fn size_varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n & 0x7f) as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A delta making `result_size` bytes from a base of `base_size`: `insert`
/// first, then `copy_len` bytes of the base from `copy_from`.
fn delta(base_size: u64, result_size: u64, insert: &[u8], copy_from: u8, copy_len: u8) -> Vec<u8> {
    let mut d = Vec::new();
    size_varint(base_size, &mut d);
    size_varint(result_size, &mut d);
    d.push(insert.len() as u8);
    d.extend_from_slice(insert);
    d.extend_from_slice(&[0x80 | 0x01 | 0x10, copy_from, copy_len]);
    d
}

fn id_of(kind: gix_object::Kind, data: &[u8]) -> ObjectId {
    gix_object::compute_hash(gix_hash::Kind::Sha1, kind, data).expect("hash")
}

struct Fixture {
    _tmp: tempfile::TempDir,
    repo: Repo,
}

fn fixture() -> Fixture {
    let tmp = tempfile::TempDir::new().expect("tmp");
    let storage = Storage::open(&tmp.path().join("data")).expect("storage");
    let repo = storage
        .create(&RepoName::new("mallory", "bombs").expect("name"))
        .expect("create");
    Fixture { _tmp: tmp, repo }
}

fn receive(repo: &Repo, pack: &[u8], limits: PackLimits) -> guts_git::Result<Quarantine> {
    let odb = repo.objects().expect("odb");
    pack_in::receive(
        &repo.objects_dir(),
        &odb,
        &mut &pack[..],
        &limits,
        &mut |_| {},
    )
}

/// The refusal `receive` must give, with nothing left in the repository.
fn refused(repo: &Repo, pack: &[u8], limits: PackLimits) -> Error {
    let err = match receive(repo, pack, limits) {
        Ok(_) => panic!("pack accepted"),
        Err(e) => e,
    };
    assert_clean(repo);
    err
}

/// No quarantine directory left, no pack published.
fn assert_clean(repo: &Repo) {
    let objects = repo.objects_dir();
    for entry in std::fs::read_dir(&objects).expect("objects dir") {
        let name = entry.expect("entry").file_name();
        assert!(
            !name.to_string_lossy().starts_with("incoming-"),
            "quarantine {name:?} left behind"
        );
    }
    let packs = std::fs::read_dir(objects.join("pack"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(packs, 0, "a refused pack was kept");
}

/// Push `pack` as a new `refs/heads/main` at `tip`; returns the report.
fn push(repo: &Repo, tip: &ObjectId, pack: &[u8]) -> String {
    let cmd = format!("{} {tip} refs/heads/main\0report-status\n", "0".repeat(40));
    let mut body = format!("{:04x}{cmd}0000", cmd.len() + 4).into_bytes();
    body.extend_from_slice(pack);
    let mut out = Vec::new();
    let _ = receive_pack(
        repo,
        &mut &body[..],
        &mut out,
        ReceiveOptions::DEFAULT,
        &Open,
    );
    String::from_utf8_lossy(&out).into_owned()
}

/// A 12-byte blob and a delta on it that says it makes a 1 TiB object.
fn huge_delta_pack() -> (Vec<u8>, u64) {
    let mut w = PackWriter::new();
    let base = w.object(BLOB, b"hello world\n");
    let at = w.ofs_delta(base, &delta(12, 1 << 40, b"x", 0, 12));
    (w.finish(), at)
}

#[test]
fn delta_declaring_a_huge_result_is_refused_before_it_is_resolved() {
    let f = fixture();
    let (pack, at) = huge_delta_pack();
    match refused(&f.repo, &pack, PackLimits::DEFAULT) {
        Error::Limit { what, limit } => {
            assert_eq!(limit, DEFAULT_MAX_OBJECT_BYTES);
            assert!(
                what.contains(&format!("delta at pack offset {at}")),
                "{what}"
            );
            assert!(what.contains(&(1u64 << 40).to_string()), "{what}");
        }
        other => panic!("unexpected error: {other}"),
    }
}

#[test]
fn huge_delta_push_is_reported_to_the_client() {
    let f = fixture();
    let (pack, _) = huge_delta_pack();
    let tip = id_of(gix_object::Kind::Blob, b"hello world\n");
    let report = push(&f.repo, &tip, &pack);
    assert!(
        report.contains("unpack pack refused: the object made by the delta"),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "over this node's limit of {DEFAULT_MAX_OBJECT_BYTES}"
        )),
        "{report}"
    );
    assert!(
        report.contains("ng refs/heads/main unpacker error"),
        "{report}"
    );
    assert!(f.repo.refs().expect("refs").is_empty());
    assert_clean(&f.repo);
}

#[test]
fn zlib_bombs_are_refused_from_their_headers() {
    let f = fixture();
    let size = 64 * MIB;
    let zeros = deflate(&vec![0u8; size as usize]);
    assert!(zeros.len() < 128 * 1024, "a bomb: {} bytes", zeros.len());
    let mut w = PackWriter::new();
    for _ in 0..4 {
        w.raw(BLOB, size, &[], &zeros);
    }
    let limits = PackLimits {
        max_object_bytes: MIB,
        ..PackLimits::DEFAULT
    };
    match refused(&f.repo, &w.finish(), limits) {
        Error::Limit { what, limit } => {
            assert_eq!(limit, MIB);
            assert!(
                what.contains(&format!("entry at pack offset 12 is {size} bytes")),
                "{what}"
            );
        }
        other => panic!("unexpected error: {other}"),
    }
}

#[test]
fn zlib_bombs_within_the_object_limit_exhaust_the_inflated_budget() {
    let f = fixture();
    let mut w = PackWriter::new();
    for i in 0..4u64 {
        w.object(BLOB, &vec![0u8; (8 * MIB + i) as usize]);
    }
    let limits = PackLimits {
        max_object_bytes: 16 * MIB,
        max_inflated_bytes: 20 * MIB,
        ..PackLimits::DEFAULT
    };
    match refused(&f.repo, &w.finish(), limits) {
        Error::Limit { what, limit } => {
            assert_eq!(limit, 20 * MIB);
            assert!(what.contains("the pack inflates to at least"), "{what}");
        }
        other => panic!("unexpected error: {other}"),
    }
}

#[test]
fn an_entry_inflating_past_its_declared_size_is_refused() {
    let f = fixture();
    let mut w = PackWriter::new();
    w.raw(BLOB, 100, &[], &deflate(&vec![0u8; MIB as usize]));
    match refused(&f.repo, &w.finish(), PackLimits::DEFAULT) {
        Error::Pack(m) => assert!(m.contains("inflates past its declared 100 bytes"), "{m}"),
        other => panic!("unexpected error: {other}"),
    }
}

/// Content of the `i`th blob of a chain: 32 bytes, the first 8 its number.
fn chain_blob(i: u64) -> Vec<u8> {
    let mut b = format!("{i:08}").into_bytes();
    b.extend_from_slice(b"-the-rest-of-the-blob-is-shared\n"[..24].as_ref());
    b
}

/// A blob and `depth` deltas, each on the one before (by offset or by id);
/// returns the pack and the last blob's id.
fn blob_chain(depth: u64, by_id: bool) -> (Vec<u8>, ObjectId) {
    let mut w = PackWriter::new();
    let mut prev = w.object(BLOB, &chain_blob(0));
    for i in 1..=depth {
        let d = delta(32, 32, &chain_blob(i)[..8], 8, 24);
        prev = if by_id {
            w.ref_delta(&id_of(gix_object::Kind::Blob, &chain_blob(i - 1)), &d)
        } else {
            w.ofs_delta(prev, &d)
        };
    }
    (
        w.finish(),
        id_of(gix_object::Kind::Blob, &chain_blob(depth)),
    )
}

#[test]
fn delta_chain_deeper_than_the_limit_is_refused() {
    let f = fixture();
    let (pack, _) = blob_chain(20_000, false);
    match refused(&f.repo, &pack, PackLimits::DEFAULT) {
        Error::Limit { what, limit } => {
            assert_eq!(limit, u64::from(DEFAULT_MAX_DELTA_DEPTH));
            assert!(what.contains("10001 deltas deep"), "{what}");
        }
        other => panic!("unexpected error: {other}"),
    }
}

#[test]
fn ref_delta_chain_deeper_than_the_limit_is_refused_after_indexing() {
    let f = fixture();
    let (pack, _) = blob_chain(1_200, true);
    let limits = PackLimits {
        max_delta_depth: 1_000,
        ..PackLimits::DEFAULT
    };
    match refused(&f.repo, &pack, limits) {
        Error::Limit { what, limit } => {
            assert_eq!(limit, 1_000);
            assert!(what.contains("at least 1001 deltas deep"), "{what}");
        }
        other => panic!("unexpected error: {other}"),
    }
}

#[test]
fn deep_blob_chain_within_the_limit_is_checked_without_inflating_it() {
    let f = fixture();
    let (pack, tip) = blob_chain(20_000, false);
    let limits = PackLimits {
        max_delta_depth: 30_000,
        ..PackLimits::DEFAULT
    };
    let q = receive(&f.repo, &pack, limits).expect("accepted");
    assert_eq!(q.objects, 20_001);
    let odb = f.repo.objects().expect("odb");
    q.check_connectivity(&odb, &[tip]).expect("connected");
    drop(q);
    assert_clean(&f.repo);
}

/// A tree of one file `f{i:08}` holding `blob`.
fn chain_tree(i: u64, blob: &ObjectId) -> Vec<u8> {
    let mut t = format!("100644 f{i:08}\0").into_bytes();
    t.extend_from_slice(blob.as_bytes());
    t
}

/// A blob (if `with_blob`) and a chain of `depth` tree deltas naming it.
fn tree_chain(depth: u64, with_blob: bool) -> (Vec<u8>, ObjectId, ObjectId) {
    let blob = b"the one file\n";
    let blob_id = id_of(gix_object::Kind::Blob, blob);
    let mut w = PackWriter::new();
    if with_blob {
        w.object(BLOB, blob);
    }
    let mut prev = w.object(TREE, &chain_tree(0, &blob_id));
    for i in 1..=depth {
        let t = chain_tree(i, &blob_id);
        prev = w.ofs_delta(prev, &delta(37, 37, &t[..16], 16, 21));
    }
    let tip = id_of(gix_object::Kind::Tree, &chain_tree(depth, &blob_id));
    (w.finish(), tip, blob_id)
}

#[test]
fn deep_tree_chain_is_checked_once_per_object() {
    let f = fixture();
    let limits = PackLimits {
        max_delta_depth: 30_000,
        ..PackLimits::DEFAULT
    };
    let odb = f.repo.objects().expect("odb");
    let (pack, tip, _) = tree_chain(20_000, true);
    let q = receive(&f.repo, &pack, limits).expect("accepted");
    q.check_connectivity(&odb, &[tip]).expect("connected");
    drop(q);

    let (pack, tip, blob) = tree_chain(20_000, false);
    let q = receive(&f.repo, &pack, limits).expect("indexed");
    match q.check_connectivity(&odb, &[tip]) {
        Err(Error::NotConnected { missing, example }) => {
            assert_eq!((missing, example), (1, blob));
        }
        other => panic!("unexpected outcome: {other:?}"),
    }
    drop(q);
    assert_clean(&f.repo);
}

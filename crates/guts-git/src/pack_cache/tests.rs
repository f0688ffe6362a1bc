//! Tests of [`super`]: the pack cache.

use super::*;
use std::io::Read;

fn config(dir: &Path, max_bytes: u64) -> CacheConfig {
    CacheConfig {
        dir: dir.to_path_buf(),
        max_bytes,
        min_free_bytes: 0,
        min_entry_bytes: 10,
    }
}

fn key(repo: &str, refs: u8, req: u8) -> CacheKey {
    CacheKey::new(repo, [refs; 32], [req; 32])
}

/// Bytes that differ for every key.
fn body(k: &CacheKey, len: usize) -> Vec<u8> {
    let d = digest(&[k.repo.as_bytes(), &k.refs_digest, &k.request_digest]);
    (0..len).map(|i| d[i % 32] ^ (i / 32) as u8).collect()
}

fn put(cache: &PackCache, k: &CacheKey, data: &[u8]) {
    let mut r = cache.record(k).expect("recording starts");
    for c in data.chunks(7000) {
        r.write_all(c).expect("write");
    }
    r.finish();
}

fn read(cache: &PackCache, k: &CacheKey) -> Option<Vec<u8>> {
    let (mut f, len) = cache.get(k)?;
    let mut out = Vec::new();
    f.read_to_end(&mut out).expect("read");
    assert_eq!(out.len() as u64, len);
    Some(out)
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("read_dir").flatten() {
        if e.file_type().expect("type").is_dir() {
            out.extend(files(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

fn path_of(cache: &PackCache, k: &CacheKey, len: u64) -> PathBuf {
    cache.entry_path(&k.slot(), len)
}

#[test]
fn pack_cache_handles_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<PackCache>();
    send::<Recorder>();
}

#[test]
fn pack_cache_digest_prefixes_lengths() {
    assert_ne!(digest(&[b"ab", b"c"]), digest(&[b"a", b"bc"]));
    assert_ne!(digest(&[]), digest(&[b""]));
    assert_eq!(digest(&[b"a", b"bc"]), digest(&[b"a", b"bc"]));
}

#[test]
fn pack_cache_roundtrip_and_invalidation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = PackCache::new(config(dir.path(), 1 << 20)).expect("new");
    let (a, b, c) = (key("o/r1", 1, 1), key("o/r1", 1, 2), key("o/r2", 1, 1));
    for k in [&a, &b, &c] {
        put(&cache, k, &body(k, 20_000));
    }
    assert_eq!(read(&cache, &a), Some(body(&a, 20_000)));
    assert_eq!(read(&cache, &key("o/r1", 1, 9)), None);
    assert!(cache.record(&a).is_none(), "already cached");
    assert_eq!(files(dir.path()).len(), 3);

    // The refs of o/r1 moved: its old entries go, o/r2's stay.
    assert!(cache.get(&key("o/r1", 2, 1)).is_none());
    assert_eq!(files(dir.path()), vec![path_of(&cache, &c, 20_000)]);
    assert!(!cache.refs_dir(&a.slot()).exists());
    assert!(read(&cache, &a).is_none());
    assert_eq!(read(&cache, &c), Some(body(&c, 20_000)));
    assert_eq!(cache.lock().total, 20_000);

    // A cache opened again on the directory sees the entries.
    put(&cache, &key("o/r1", 2, 1), b"0123456789abc");
    drop(cache);
    let cache = PackCache::new(config(dir.path(), 1 << 20)).expect("reopen");
    assert_eq!(read(&cache, &c), Some(body(&c, 20_000)));
    assert_eq!(
        read(&cache, &key("o/r1", 2, 1)),
        Some(b"0123456789abc".to_vec())
    );
}

#[test]
fn pack_cache_small_dropped_and_busy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = PackCache::new(config(dir.path(), 1 << 20)).expect("new");
    let k = key("o/r", 1, 1);
    put(&cache, &k, b"tiny");
    assert!(cache.get(&k).is_none(), "below min_entry_bytes");

    let mut r = cache.record(&k).expect("recording starts");
    r.write_all(&[7; 5000]).expect("write");
    assert!(cache.record(&k).is_none(), "another writer records it");
    drop(r);
    assert!(cache.get(&k).is_none());
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));

    // Larger than the whole cache: not kept.
    let cache = PackCache::new(config(dir.path(), 1000)).expect("new");
    put(&cache, &k, &[1; 1001]);
    assert!(cache.get(&k).is_none());
    assert!(files(dir.path()).is_empty());
}

#[test]
fn pack_cache_evicts_least_recently_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = PackCache::new(config(dir.path(), 2500)).expect("new");
    let (a, b, c) = (key("o/r", 1, 1), key("o/r", 1, 2), key("o/s", 1, 3));
    put(&cache, &a, &body(&a, 1000));
    put(&cache, &b, &body(&b, 1000));
    assert!(read(&cache, &a).is_some());
    put(&cache, &c, &body(&c, 1000));
    assert!(cache.get(&b).is_none());
    assert!(!path_of(&cache, &b, 1000).exists());
    assert_eq!(read(&cache, &a), Some(body(&a, 1000)));
    assert_eq!(read(&cache, &c), Some(body(&c, 1000)));
    assert_eq!(files(dir.path()).len(), 2);
}

#[test]
fn pack_cache_off_on_low_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path(), 1 << 20);
    cfg.min_free_bytes = u64::MAX;
    let cache = PackCache::new(cfg).expect("new");
    assert!(cache.record(&key("o/r", 1, 1)).is_none());
    cfg = config(dir.path(), 1 << 20);
    cfg.min_free_bytes = 1;
    let cache = PackCache::new(cfg).expect("new");
    assert!(cache.record(&key("o/r", 1, 1)).is_some());
}

#[test]
fn pack_cache_concurrent() {
    use std::sync::atomic::AtomicUsize;
    let hits = Arc::new(AtomicUsize::new(0));
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = PackCache::new(config(dir.path(), 200_000)).expect("new");
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let (cache, hits) = (cache.clone(), hits.clone());
            std::thread::spawn(move || {
                for round in 0..60u8 {
                    let repo = format!("o/r{}", round % 3);
                    let k = key(&repo, round / 20, t % 4 + round % 5);
                    let data = body(&k, 1000 + 7000 * usize::from(k.request_digest[0]));
                    if let Some(got) = read(&cache, &k) {
                        assert!(got == data, "wrong bytes for {k:?}");
                        hits.fetch_add(1, Ordering::Relaxed);
                    } else if let Some(mut r) = cache.record(&k) {
                        for c in data.chunks(3000) {
                            r.write_all(c).expect("write");
                        }
                        if round % 7 != 0 {
                            r.finish();
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("no panic");
    }
    let on_disk: u64 = files(dir.path())
        .iter()
        .map(|p| p.metadata().expect("metadata").len())
        .sum();
    let total = cache.lock().total;
    assert!(total <= 200_000);
    assert!(hits.load(Ordering::Relaxed) > 0, "no hit at all");
    assert_eq!(on_disk, total, "{:?}", files(dir.path()));
}

#[test]
fn pack_cache_survives_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = PackCache::new(config(dir.path(), 1 << 20)).expect("new");
    let (a, b, c) = (key("o/r", 1, 1), key("o/r", 1, 2), key("o/r", 1, 3));
    for k in [&a, &b, &c] {
        put(&cache, k, &body(k, 5000));
    }
    // Truncated under a running cache: a miss, and removed.
    let pa = path_of(&cache, &a, 5000);
    fs::write(&pa, b"PACK").expect("truncate");
    assert!(cache.get(&a).is_none());
    assert!(!pa.exists());

    // Garbage everywhere, then a restart.
    let pc = path_of(&cache, &c, 5000);
    fs::write(&pc, b"").expect("truncate");
    let refs = cache.refs_dir(&a.slot());
    let repo = refs.parent().expect("repo dir").to_path_buf();
    let junk = [
        refs.join(format!("{}-99.pack", hex(&[9; 32]))),
        refs.join("zzz.pack"),
        repo.join("not-refs"),
        dir.path().join(hex(&[5; 16])).join(hex(&[5; 32])).join("x"),
        dir.path().join("tmp").join("1-2-3.part"),
    ];
    for p in &junk {
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, b"garbage").expect("write");
    }
    fs::write(dir.path().join("README"), b"not ours").expect("write");
    // A link in the cache's namespace is removed, not followed.
    let outside = tempfile::tempdir().expect("tempdir");
    fs::write(outside.path().join("keep"), b"x").expect("write");
    let link = repo.join(hex(&[8; 32]));
    std::os::unix::fs::symlink(outside.path(), &link).expect("symlink");
    // An entry under older refs of the same repository is stale.
    let old = repo
        .join(hex(&[7; 32]))
        .join(format!("{}-5000.pack", hex(&[1; 32])));
    fs::create_dir_all(old.parent().expect("parent")).expect("mkdir");
    let f = File::create(&old).expect("create");
    f.set_len(5000).expect("set_len");
    f.set_modified(UNIX_EPOCH).expect("mtime");
    let cache = PackCache::new(config(dir.path(), 1 << 20)).expect("reopen");
    assert!(cache.get(&c).is_none());
    assert_eq!(read(&cache, &b), Some(body(&b, 5000)));
    let mut left = files(dir.path());
    left.sort();
    assert_eq!(
        left,
        vec![path_of(&cache, &b, 5000), dir.path().join("README")]
    );
    assert_eq!(cache.lock().total, 5000);
    assert!(!old.parent().expect("parent").exists());
    assert!(outside.path().join("keep").exists());
    assert!(link.symlink_metadata().is_err());
}

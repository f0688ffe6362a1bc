//! Pack reception: arbitrary bytes as a pushed pack through
//! `pack_in::receive` into a quarantine of the seeded repository (whose
//! objects serve as bases of thin packs), limited to 1 MiB; when the pack
//! indexes, `check_connectivity` (which decodes every received object:
//! commits, trees and tags are parsed) and the overlay lookups run.
//! The quarantine is dropped, never published; it must leave nothing behind.
#![no_main]

use guts_fuzz::{fixture, quarantines, Which, OPTS};
use guts_git::pack_in;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let repo = f.repo(Which::Seeded);
    let objects_dir = repo.objects_dir();
    let odb = repo.objects().expect("object store");
    let mut input = data;
    let mut progress = |_: u64| {};
    if let Ok(q) = pack_in::receive(
        &objects_dir,
        &odb,
        &mut input,
        &OPTS.pack_limits(),
        &mut progress,
    ) {
        assert!(q.bytes_received <= data.len() as u64);
        let head = repo.head().expect("head").id;
        let tips: Vec<_> = head.into_iter().collect();
        let _ = q.check_connectivity(&odb, &tips);
        let view = q.overlay(&odb);
        if let Some(id) = head {
            assert!(view.contains(&id));
        }
        drop(q);
    }
    let left = quarantines(&objects_dir);
    assert!(left.is_empty(), "quarantine left behind: {left:?}");
});

//! A receive-pack request body (commands, push certificate, push options,
//! shallow lines, then the pack) through `receive_pack` with a policy that
//! accepts everything, so parsing, pack reception, connectivity and ref
//! checks and the ref transaction all run.
//!
//! Input: one selector byte (low bit 0: the empty repository, 1: the seeded
//! one), then the body. Checked: the response is pkt-lines, no quarantine
//! is left behind, and the repository reads back after the push. A push
//! that changed refs resets the repository so every input starts alike.
#![no_main]

use guts_fuzz::{assert_pkt_lines, debug, fixture, quarantines, Open, Which, OPTS};
use guts_git::receive_pack::receive_pack;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let which = if sel & 1 == 0 {
        Which::Empty
    } else {
        Which::Seeded
    };
    let f = fixture();
    let repo = f.repo(which);
    let mut out = Vec::new();
    let result = receive_pack(&repo, &mut &body[..], &mut out, OPTS, &Open);
    debug(&format!("{which:?} {result:?}"), &out);
    assert_pkt_lines(&out, "receive-pack");
    let left = quarantines(&repo.objects_dir());
    assert!(left.is_empty(), "quarantine left behind: {left:?}");
    repo.refs().expect("refs readable after a push");
    repo.head().expect("HEAD readable after a push");
    if let Ok(outcome) = result {
        if !outcome.updated.is_empty() {
            f.reset(which);
        }
    }
});

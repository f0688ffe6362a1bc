//! Partial-clone filter specs: `Filter::parse` on arbitrary text, then the
//! predicates a walk asks of a parsed filter.
#![no_main]

use gix_object::Kind;
use guts_git::filter::{Filter, MAX_COMBINED_FILTERS, MAX_FILTER_NESTING};
use libfuzzer_sys::fuzz_target;

fn check_shape(f: &Filter, nesting: usize) {
    if let Filter::Combine(parts) = f {
        assert!(nesting < MAX_FILTER_NESTING, "combine nested too deep");
        assert!(!parts.is_empty() && parts.len() <= MAX_COMBINED_FILTERS);
        parts.iter().for_each(|p| check_shape(p, nesting + 1));
    }
}

fuzz_target!(|data: &[u8]| {
    let spec = String::from_utf8_lossy(data);
    let Ok(filter) = Filter::parse(&spec) else {
        return;
    };
    check_shape(&filter, 0);
    for kind in [Kind::Commit, Kind::Tree, Kind::Blob, Kind::Tag] {
        for depth in [0, 1, 2, 5, 1_000] {
            for size in [0u64, 1, 1023, 1024, u64::MAX] {
                let _ = filter.keeps(kind, || Ok(size), depth);
            }
            let _ = filter.descends(depth);
        }
    }
    let _ = filter.uses_depth();
});

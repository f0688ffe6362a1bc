//! upload-pack requests against the seeded repository (two commits on two
//! branches, an annotated tag) through `upload_pack`.
//!
//! Input: one selector byte, then
//! - 0 / 1 / 2: the arguments of a v2 `fetch` / `ls-refs` / `object-info`
//!   command, one per `\n`-separated line (the request around them is
//!   written as git writes it);
//! - 3: a raw protocol v2 request body;
//! - 4: a raw protocol v0 request body (`want`/`have`/`done` negotiation).
//!
//! Checked: the response is pkt-lines (for v2; a v0 response may end in a
//! raw pack), and nothing of the repository changes.
#![no_main]

use guts_fuzz::{assert_pkt_lines, debug, fixture, pkt, Which};
use guts_git::pktline::MAX_PKT_DATA;
use guts_git::protocol::Version;
use guts_git::upload_pack::upload_pack;
use libfuzzer_sys::fuzz_target;

fn v2_request(command: &str, args: &[u8]) -> Vec<u8> {
    let mut req = pkt(format!("command={command}\n").as_bytes());
    req.extend(pkt(b"agent=git/2.47.3\n"));
    req.extend(pkt(b"object-format=sha1\n"));
    req.extend_from_slice(b"0001");
    for line in args.split(|&b| b == b'\n') {
        let mut line = line.to_vec();
        line.push(b'\n');
        if line.len() <= MAX_PKT_DATA {
            req.extend(pkt(&line));
        }
    }
    req.extend_from_slice(b"0000");
    req
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (version, body) = match sel % 5 {
        0 => (Version::V2, v2_request("fetch", rest)),
        1 => (Version::V2, v2_request("ls-refs", rest)),
        2 => (Version::V2, v2_request("object-info", rest)),
        3 => (Version::V2, rest.to_vec()),
        _ => (Version::V0, rest.to_vec()),
    };
    let f = fixture();
    let repo = f.repo(Which::Seeded);
    let before = repo.refs().expect("refs");
    let mut out = Vec::new();
    let result = upload_pack(&repo, version, &mut &body[..], &mut out);
    debug(&format!("{version:?} {result:?}"), &out);
    if version == Version::V2 {
        assert_pkt_lines(&out, "upload-pack v2");
    }
    assert_eq!(repo.refs().expect("refs"), before, "a fetch changed refs");
});

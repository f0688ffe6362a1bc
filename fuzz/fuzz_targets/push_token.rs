//! Push tokens and grants (ADR 0012), as clients send them in
//! `Authorization` and peers in logged updates.
//!
//! The same bytes are tried as
//! - token text: `PushToken::parse` (lossy UTF-8), then the grant checked
//!   against the fixed identity (`guts_fuzz::genesis`), its patterns and
//!   times, and a certificate signed with the token;
//! - a signed grant: `Grant::from_bytes`, `verify`, `authorize` of a fixed
//!   certificate.
#![no_main]

use guts_fuzz::genesis;
use guts_identity::doc::RepoId;
use guts_identity::grant::{pattern_matches, Grant};
use guts_identity::{PushCert, PushToken};
use libfuzzer_sys::fuzz_target;

fn exercise(grant: Grant<guts_identity::Unverified>, token: Option<&PushToken>) {
    let g = genesis();
    let id = g.genesis_id().unwrap_or(RepoId([0; 32]));
    let body = grant.body().clone();
    assert!(!body.refs.is_empty() && body.not_after > body.not_before);
    for p in &body.refs {
        let _ = pattern_matches(p, "refs/heads/main");
    }
    let Ok(verified) = grant.verify(&id, g) else {
        return;
    };
    assert!(g.is_delegate(&verified.signer()));
    let _ = verified.check_time(body.not_before);
    let _ = verified.check_revocation(g, u64::MAX);
    let Some(token) = token else { return };
    let lines = [("0".repeat(40), "a".repeat(40), "refs/heads/main".to_owned())];
    if let Ok(cert) = token
        .certificate("http://h/fuzz/seeded.git", "1-n", body.not_before, &lines)
        .and_then(PushCert::verify)
    {
        assert_eq!(cert.signer(), verified.grantee());
        let _ = verified.authorize(&cert, g);
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(token) = PushToken::parse(&text) {
        let again = PushToken::parse(&token.encode()).expect("a parsed token re-parses");
        assert_eq!(again.grant().id(), token.grant().id());
        if let Ok(grant) = Grant::from_bytes(token.grant().to_bytes()) {
            exercise(grant, Some(&token));
        }
    }
    if let Ok(grant) = Grant::from_bytes(data) {
        assert_eq!(grant.to_bytes(), data);
        exercise(grant, None);
    }
});

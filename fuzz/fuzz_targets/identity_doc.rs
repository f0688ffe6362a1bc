//! Identity documents and signed ref updates, as peers and clients send them.
//!
//! The same bytes are tried as
//! - a signed document: `Doc::from_bytes` (canonical encoding, field
//!   checks), then `verify_genesis`, and `verify_successor` against a fixed
//!   verified genesis document (owned by `guts_fuzz::owner_key`);
//! - a `SignedRefUpdate` (prost): `key()`, `verify` against that document
//!   (certificate parsing and SSH signature included; a push grant, if the
//!   update carries one).
#![no_main]

use guts_fuzz::genesis;
use guts_identity::doc::RepoId;
use guts_identity::{Doc, SignedRefUpdate};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let g = genesis();
    if let Ok(doc) = Doc::from_bytes(data) {
        assert_eq!(
            doc.to_bytes(),
            data,
            "a decoded document re-encodes to other bytes"
        );
        assert!(!doc.delegates().is_empty());
        let _ = (doc.owner(), doc.hash());
        if let Ok(v) = doc.clone().verify_genesis() {
            assert!(v.genesis_id().is_some());
            let _ = v.successor();
        }
        if let Ok(v) = doc.verify_successor(g) {
            assert_eq!(v.owner(), g.owner());
            assert!(v.body().version > g.body().version);
        }
    }
    if let Ok(update) = SignedRefUpdate::decode(data) {
        let k1 = update.key();
        assert_eq!(k1, update.key());
        let id = g.genesis_id().unwrap_or(RepoId([0; 32]));
        if let Ok(cert) = update.verify(&id, g, g) {
            // A delegate signed it, or the grantee of a grant a delegate signed.
            let granted = guts_identity::Grant::from_bytes(&update.grant)
                .and_then(|gr| gr.verify(&id, g))
                .is_ok_and(|gr| gr.grantee() == cert.signer() && g.is_delegate(&gr.signer()));
            assert!(g.is_delegate(&cert.signer()) || granted);
            assert!(update.effective(&cert).next().is_some());
        }
    }
});

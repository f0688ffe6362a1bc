//! Push certificates: `PushCert::parse`, the accessors, `verify` (SSHSIG
//! decoding and Ed25519 verification) and the pushee check, on arbitrary
//! text (non-UTF-8 input is decoded lossily, so no input is wasted).
#![no_main]

use guts_identity::PushCert;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(cert) = PushCert::parse(&text) else {
        return;
    };
    assert_eq!(
        format!("{}{}", cert.payload(), cert.signature()),
        cert.text()
    );
    assert!(!cert.pusher().is_empty());
    assert!(!cert.commands().is_empty());
    for c in cert.commands() {
        assert_eq!(c.old.len(), 40);
        assert_eq!(c.new.len(), 40);
    }
    let _ = (cert.pushee(), cert.nonce(), cert.options());
    if let Ok(verified) = cert.verify() {
        let signer = verified.signer();
        let _ = verified.check_pushee(&[signer.method_id(), "fuzz".into()], "seeded");
    }
});

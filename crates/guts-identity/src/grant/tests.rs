use super::*;
use crate::doc::{DocumentBody, RevokedGrant};
use crate::update::SignedRefUpdate;

const T0: u64 = 1_700_000_000;

fn key(n: u8) -> Keypair {
    Keypair::from_seed(&[n; 32])
}

fn genesis(owner: &Keypair) -> (Doc<Verified>, RepoId) {
    let doc =
        Doc::from_signed(DocumentBody::genesis(owner.did(), "demo", "main", vec![]).sign(&[owner]))
            .and_then(Doc::verify_genesis)
            .expect("genesis");
    let id = doc.genesis_id().expect("id");
    (doc, id)
}

fn grant_body(id: &RepoId, grantee: &Keypair, refs: &[&str]) -> GrantBody {
    GrantBody {
        repo_id: id.0.to_vec(),
        grantee: grantee.did().to_string(),
        refs: refs.iter().map(|r| (*r).to_owned()).collect(),
        not_before: T0,
        not_after: T0 + 3600,
        note: "ci".into(),
    }
}

/// A token for key 2 to push `refs/heads/*`, granted by `owner`.
fn heads_token(owner: &Keypair, id: &RepoId) -> PushToken {
    let grant = grant_body(id, &key(2), &["refs/heads/*"]).sign(owner);
    PushToken::new(key(2), &grant).expect("token")
}

fn line(name: &str) -> (String, String, String) {
    ("0".repeat(40), "a".repeat(40), name.to_owned())
}

/// A logged update of a token push of `names` at time `at`.
fn token_update(
    doc: &Doc<Verified>,
    token: &PushToken,
    at: u64,
    names: &[&str],
) -> SignedRefUpdate {
    let lines: Vec<_> = names.iter().map(|n| line(n)).collect();
    let pushee = format!("http://h/{}/demo.git", doc.owner().method_id());
    let cert = token
        .certificate(&pushee, "1-n", at, &lines)
        .expect("signs");
    SignedRefUpdate {
        repo_id: doc.genesis_id().expect("id").0.to_vec(),
        certificate: cert.text().to_owned(),
        doc_version: 1,
        refused: Vec::new(),
        grant: token.grant().to_bytes().to_vec(),
    }
}

fn verify(u: &SignedRefUpdate, doc: &Doc<Verified>, latest: &Doc<Verified>) -> Result<Did> {
    let id = doc.genesis_id().expect("id");
    u.verify(&id, doc, latest).map(|c| c.signer())
}

#[test]
fn patterns() {
    assert!(pattern_matches("refs/heads/*", "refs/heads/a"));
    assert!(pattern_matches("refs/heads/*", "refs/heads/a/b"));
    assert!(!pattern_matches("refs/heads/*", "refs/heads/"));
    assert!(!pattern_matches("refs/heads/*", "refs/tags/v1"));
    assert!(pattern_matches("refs/heads/main", "refs/heads/main"));
    assert!(!pattern_matches("refs/heads/main", "refs/heads/main2"));
    assert!(pattern_matches("refs/heads/*-ci", "refs/heads/x-ci"));
    for bad in ["heads/*", "refs/*/*", "refs/a b", "refs/../x", ""] {
        assert!(!valid_pattern(bad), "{bad}");
    }
}

#[test]
fn a_token_push_verifies_like_a_certificate() {
    let (owner, grantee) = (key(1), key(2));
    let (doc, id) = genesis(&owner);
    let signed = grant_body(&id, &grantee, &["refs/heads/*"]).sign(&owner);
    let token = PushToken::new(key(2), &signed).expect("token");
    let parsed = PushToken::parse(&token.encode()).expect("parses");
    assert_eq!(parsed.grant().id(), token.grant().id());
    let u = token_update(&doc, &parsed, T0 + 10, &["refs/heads/feature"]);
    assert_eq!(verify(&u, &doc, &doc).expect("verifies"), grantee.did());
}

#[test]
fn what_a_grant_does_not_allow_is_refused() {
    let (owner, grantee) = (key(1), key(2));
    let (doc, id) = genesis(&owner);
    let token = heads_token(&owner, &id);
    let cases = [
        (T0 + 3601, &["refs/heads/a"][..], "expired"),
        (T0 - 301, &["refs/heads/a"][..], "not valid yet"),
        (
            T0 + 5,
            &["refs/heads/a", "refs/tags/v1"][..],
            "does not allow updating refs/tags/v1",
        ),
    ];
    for (at, names, why) in cases {
        let err = verify(&token_update(&doc, &token, at, names), &doc, &doc).expect_err(why);
        assert!(err.to_string().contains(why), "{err}");
    }
    // A grant for another repository, or signed by a non-delegate.
    let (_, other) = genesis(&key(5));
    let foreign = PushToken::new(
        key(2),
        &grant_body(&other, &grantee, &["refs/*"]).sign(&key(5)),
    )
    .expect("token");
    assert!(verify(
        &token_update(&doc, &foreign, T0, &["refs/heads/a"]),
        &doc,
        &doc
    )
    .is_err());
    let stranger = PushToken::new(
        key(2),
        &grant_body(&id, &grantee, &["refs/*"]).sign(&key(9)),
    )
    .expect("token");
    let err = verify(
        &token_update(&doc, &stranger, T0, &["refs/heads/a"]),
        &doc,
        &doc,
    )
    .expect_err("non-delegate");
    assert!(err.to_string().contains("not a delegate"), "{err}");
}

#[test]
fn forged_grants_and_swapped_keys_are_refused() {
    let (owner, grantee) = (key(1), key(2));
    let (doc, id) = genesis(&owner);
    let signed = grant_body(&id, &grantee, &["refs/heads/main"]).sign(&owner);
    let token = PushToken::new(key(2), &signed).expect("token");
    let good = token_update(&doc, &token, T0, &["refs/heads/main"]);
    for i in 0..good.grant.len() {
        let mut u = good.clone();
        u.grant[i] ^= 1;
        assert!(
            verify(&u, &doc, &doc).is_err(),
            "grant byte {i} flipped and still verified"
        );
    }
    // Widening the patterns breaks the delegate's signature.
    let mut wide = signed.clone();
    let mut body = GrantBody::decode(&wide.body[..]).expect("body");
    body.refs = vec!["refs/*".into()];
    wide.body = body.encode_to_vec();
    let mut u = good.clone();
    u.grant = wide.encode_to_vec();
    assert!(verify(&u, &doc, &doc).is_err());
    // Another grant for the same key is not the one the certificate names.
    let other = grant_body(&id, &grantee, &["refs/heads/*"]).sign(&owner);
    let mut u = good.clone();
    u.grant = other.encode_to_vec();
    let err = verify(&u, &doc, &doc).expect_err("other grant");
    assert!(
        err.to_string().contains("does not name its push grant"),
        "{err}"
    );
    // A certificate signed by some other key under this grant.
    let mut thief = token_update(&doc, &token, T0, &["refs/heads/main"]);
    let forged = PushToken {
        key: key(3),
        grant: Grant::from_bytes(&signed.encode_to_vec()).expect("grant"),
    };
    thief.certificate = token_update(&doc, &forged, T0, &["refs/heads/main"]).certificate;
    let err = verify(&thief, &doc, &doc).expect_err("wrong key");
    assert!(
        err.to_string().contains("not signed by the grant's key"),
        "{err}"
    );
    assert!(PushToken::new(key(3), &signed).is_err());
}

#[test]
fn revocation_stops_later_certificates_only() {
    let owner = key(1);
    let (doc, id) = genesis(&owner);
    let token = heads_token(&owner, &id);
    let mut next = doc.successor();
    next.revoked_grants.push(RevokedGrant {
        grant: token.grant().id().to_vec(),
        revoked_at: T0 + 100,
    });
    let v2 = Doc::from_signed(next.sign(&[&owner]))
        .and_then(|d| d.verify_successor(&doc))
        .expect("v2");
    let before = token_update(&doc, &token, T0 + 99, &["refs/heads/a"]);
    let after = token_update(&doc, &token, T0 + 100, &["refs/heads/a"]);
    assert!(verify(&before, &doc, &v2).is_ok());
    let err = verify(&after, &doc, &v2).expect_err("revoked");
    assert!(err.to_string().contains("was revoked"), "{err}");
    assert!(verify(&after, &doc, &doc).is_ok(), "unknown revocation");
}

#[test]
fn malformed_tokens_are_refused() {
    for bad in ["", "guts_", "guts_0OIl", "ghp_abc", &"guts_z".repeat(3000)] {
        assert!(PushToken::parse(bad).is_err(), "{bad:.20}");
    }
}

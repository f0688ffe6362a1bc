//! Signed ref updates: a push certificate bound to a repository id. Anyone
//! holding the repository's identity document can verify one, whichever node
//! accepted it.
//!
//! A certificate may name refs that the accepting node refused (a stale old
//! value in a non-atomic push, a non-fast-forward the repository denies):
//! git reports those refs as rejected to the pusher, so they must not move
//! anywhere. The update therefore carries the names of the refused refs,
//! and only the other lines ([`SignedRefUpdate::effective`]) take effect.
//! The refused list can only narrow what the signer authorized, never widen
//! it, so a peer need not trust the node that wrote it.

use prost::Message;
use sha2::{Digest, Sha256};

use crate::cert::{CertCommand, PushCert, Verified};
use crate::doc::{Doc, RepoId};
use crate::error::{Error, Result};
use crate::grant::Grant;

/// One accepted push, as kept in a repository's append-only log.
#[derive(Clone, PartialEq, Message)]
pub struct SignedRefUpdate {
    /// The repository id (SHA-256 of its first identity document).
    #[prost(bytes = "vec", tag = "1")]
    pub repo_id: Vec<u8>,
    /// The push certificate text, signature included.
    #[prost(string, tag = "2")]
    pub certificate: String,
    /// Version of the identity document the update was accepted under.
    #[prost(uint64, tag = "3")]
    pub doc_version: u64,
    /// Refs named by the certificate that the accepting node refused, sorted
    /// and without duplicates; their lines have no effect on any node.
    #[prost(string, repeated, tag = "4")]
    pub refused: Vec<String>,
    /// For a push made with a token: the [`crate::grant::SignedGrant`] by
    /// which a delegate let the certificate's signer push. Empty when a
    /// delegate signed the certificate.
    #[prost(bytes = "vec", tag = "5")]
    pub grant: Vec<u8>,
}

/// The identity of an update: SHA-256 of its certificate text, followed
/// (only when some refs were refused) by a NUL and the refused names, one
/// per line. The same push logged twice has the same key; a copy whose
/// refused list was altered is another update.
pub type UpdateKey = [u8; 32];

impl SignedRefUpdate {
    /// Verify against the repository's document `doc` (of version
    /// `doc_version`) and the newest document known, `latest`: the id
    /// matches, the signature is valid, the signer is a delegate under
    /// `doc` or holds a grant a delegate under `doc` signed, which
    /// allows every ref of the certificate at its time and which `latest`
    /// has not revoked by then ([`Grant::authorize`]); the pushee names
    /// the repository (by owner id or declared alias); the refused list is
    /// canonical and names refs of the certificate while leaving at least
    /// one line in effect.
    pub fn verify(
        &self,
        id: &RepoId,
        doc: &Doc<Verified>,
        latest: &Doc<Verified>,
    ) -> Result<PushCert<Verified>> {
        if self.repo_id != id.0 {
            return Err(Error::Refused(
                "the update belongs to another repository".into(),
            ));
        }
        let cert = PushCert::parse(&self.certificate)?.verify()?;
        if self.grant.is_empty() {
            authorize(&cert, doc)?;
        } else {
            let grant = Grant::from_bytes(&self.grant)?.verify(id, doc)?;
            authorize_granted(&cert, &grant, doc, latest)?;
        }
        self.check_refused(&cert)?;
        Ok(cert)
    }

    fn check_refused(&self, cert: &PushCert<Verified>) -> Result<()> {
        if self.refused.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::Refused(
                "the update's refused refs are not sorted and unique".into(),
            ));
        }
        if let Some(r) = self
            .refused
            .iter()
            .find(|r| !cert.commands().iter().any(|c| &c.name == *r))
        {
            return Err(Error::Refused(format!(
                "the update refuses {r}, which its certificate does not name"
            )));
        }
        if self.effective(cert).next().is_none() {
            return Err(Error::Refused(
                "the update refuses every ref of its certificate".into(),
            ));
        }
        Ok(())
    }

    /// The certificate's `old new ref` lines that take effect (all but the refused ones).
    pub fn effective<'a>(
        &'a self,
        cert: &'a PushCert<Verified>,
    ) -> impl Iterator<Item = &'a CertCommand> + 'a {
        cert.commands()
            .iter()
            .filter(|c| self.refused.binary_search(&c.name).is_err())
    }

    /// This update's identity (see [`UpdateKey`]).
    pub fn key(&self) -> UpdateKey {
        let mut h = Sha256::new();
        h.update(self.certificate.as_bytes());
        if !self.refused.is_empty() {
            h.update([0u8]);
            for r in &self.refused {
                h.update(r.as_bytes());
                h.update(b"\n");
            }
        }
        h.finalize().into()
    }
}

/// The checks a node applies to a verified certificate under `doc`, apart
/// from the nonce (which only the issuing node can check).
pub fn authorize(cert: &PushCert<Verified>, doc: &Doc<Verified>) -> Result<()> {
    if !doc.is_delegate(&cert.signer()) {
        return Err(Error::Refused(format!(
            "{} is not a delegate of this repository",
            cert.signer()
        )));
    }
    let mut owners = vec![doc.owner().method_id()];
    owners.extend(doc.body().aliases.iter().cloned());
    cert.check_pushee(&owners, &doc.body().name)
}

/// The checks a node applies to a verified certificate made under a
/// verified `grant` (signed by a delegate under `doc`), apart from the
/// nonce: the grant's own rules ([`Grant::authorize`], revocation by
/// `latest`) and the pushee.
pub fn authorize_granted(
    cert: &PushCert<Verified>,
    grant: &Grant<Verified>,
    doc: &Doc<Verified>,
    latest: &Doc<Verified>,
) -> Result<()> {
    grant.authorize(cert, latest)?;
    let mut owners = vec![doc.owner().method_id()];
    owners.extend(doc.body().aliases.iter().cloned());
    cert.check_pushee(&owners, &doc.body().name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::tests::sign;
    use crate::doc::DocumentBody;
    use crate::keys::Keypair;

    fn setup() -> (Keypair, Doc<Verified>, RepoId, String) {
        let owner = Keypair::from_seed(&[7; 32]);
        let doc = Doc::from_signed(
            DocumentBody::genesis(owner.did(), "demo", "main", vec![]).sign(&[&owner]),
        )
        .and_then(Doc::verify_genesis)
        .expect("genesis");
        let id = doc.genesis_id().expect("id");
        let payload = format!(
            "certificate version 0.1\npusher SOMEONE 1700000000 +0000\npushee http://h/{}/demo.git\nnonce 1-a\n\n{z} {a} refs/heads/a\n{z} {b} refs/heads/b\n",
            owner.did().method_id(),
            z = "0".repeat(40),
            a = "a".repeat(40),
            b = "b".repeat(40),
        );
        let cert = sign(&owner, &payload);
        (owner, doc, id, cert)
    }

    fn update(id: &RepoId, cert: &str, refused: &[&str]) -> SignedRefUpdate {
        SignedRefUpdate {
            repo_id: id.0.to_vec(),
            certificate: cert.to_owned(),
            doc_version: 1,
            refused: refused.iter().map(|r| (*r).to_owned()).collect(),
            grant: Vec::new(),
        }
    }

    #[test]
    fn refused_lines_do_not_take_effect() {
        let (_, doc, id, cert) = setup();
        let all = update(&id, &cert, &[]);
        let verified = all.verify(&id, &doc, &doc).expect("verifies");
        assert_eq!(all.effective(&verified).count(), 2);
        let partial = update(&id, &cert, &["refs/heads/a"]);
        let verified = partial.verify(&id, &doc, &doc).expect("verifies");
        let names: Vec<&str> = partial
            .effective(&verified)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["refs/heads/b"]);
        assert_ne!(
            all.key(),
            partial.key(),
            "another refused list is another update"
        );
        assert_eq!(partial.key(), partial.clone().key());
    }

    #[test]
    fn refused_list_must_be_canonical_and_narrow() {
        let (_, doc, id, cert) = setup();
        for (refused, why) in [
            (&["refs/heads/b", "refs/heads/a"][..], "not sorted"),
            (&["refs/heads/a", "refs/heads/a"][..], "duplicate"),
            (&["refs/heads/c"][..], "not in the certificate"),
            (&["refs/heads/a", "refs/heads/b"][..], "refuses everything"),
        ] {
            assert!(
                update(&id, &cert, refused).verify(&id, &doc, &doc).is_err(),
                "{why}"
            );
        }
    }

    #[test]
    fn other_repositories_and_non_delegates_are_refused() {
        let (_, doc, id, _) = setup();
        let mut other = update(&id, "", &[]);
        other.repo_id = vec![0; 32];
        assert!(other.verify(&id, &doc, &doc).is_err());
        let stranger = Keypair::from_seed(&[9; 32]);
        let payload = format!(
            "certificate version 0.1\npusher S 1 +0000\npushee http://h/{}/demo.git\nnonce 1-a\n\n{} {} refs/heads/a\n",
            doc.owner().method_id(),
            "0".repeat(40),
            "a".repeat(40)
        );
        let err = update(&id, &sign(&stranger, &payload), &[])
            .verify(&id, &doc, &doc)
            .expect_err("non-delegate");
        assert!(err.to_string().contains("not a delegate"), "{err}");
    }
}

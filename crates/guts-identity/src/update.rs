//! Signed ref updates: a push certificate bound to a repository id. Anyone
//! holding the repository's identity document can verify one, whichever node
//! accepted it.

use prost::Message;

use crate::cert::{PushCert, Verified};
use crate::doc::{Doc, RepoId};
use crate::error::{Error, Result};

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
}

impl SignedRefUpdate {
    /// Verify against the repository's document (of version `doc_version`):
    /// the id matches, the signature is valid, the signer is a delegate and
    /// the pushee names the repository (by owner id or declared alias).
    pub fn verify(&self, id: &RepoId, doc: &Doc<Verified>) -> Result<PushCert<Verified>> {
        if self.repo_id != id.0 {
            return Err(Error::Refused(
                "the update belongs to another repository".into(),
            ));
        }
        let cert = PushCert::parse(&self.certificate)?.verify()?;
        authorize(&cert, doc)?;
        Ok(cert)
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

//! Repository actions signed by delegates: deleting a repository or
//! changing its settings on a node without being that node's operator.
//!
//! An action names the repository id, what to do (`delete`, or a settings
//! change spelled out in full) and a nonce the node issued for that
//! repository. The node accepts it once (the nonce is single-use) if at
//! least the current document's threshold of its delegates signed it, the
//! same rule as for a new document version.

use prost::Message;

use crate::doc::{sign_all, valid_signers, Doc, DocSignature, RepoId};
use crate::error::{Error, Result};
use crate::{Did, Keypair, Verified};

const SIGNING_CONTEXT: &[u8] = b"guts repository action v1\0";

/// Largest encoded signed action accepted.
pub const MAX_ACTION_BYTES: usize = 16 * 1024;

/// What a signed action asks for.
#[derive(Clone, PartialEq, Message)]
pub struct RepoAction {
    /// The repository id (32 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub repo_id: Vec<u8>,
    /// `delete`, or `settings <key>=<value>[ <key>=<value>...]`.
    #[prost(string, tag = "2")]
    pub action: String,
    /// A nonce the node issued for this repository.
    #[prost(string, tag = "3")]
    pub nonce: String,
}

/// An action with its delegates' signatures, as sent.
#[derive(Clone, PartialEq, Message)]
pub struct SignedAction {
    /// The encoded [`RepoAction`].
    #[prost(bytes = "vec", tag = "1")]
    pub body: Vec<u8>,
    /// Signatures over the signing context and `body`.
    #[prost(message, repeated, tag = "2")]
    pub signatures: Vec<DocSignature>,
}

impl RepoAction {
    /// Encode and sign with each of `keys`.
    pub fn sign(&self, keys: &[&Keypair]) -> SignedAction {
        let body = self.encode_to_vec();
        let signatures = sign_all(SIGNING_CONTEXT, &body, keys);
        SignedAction { body, signatures }
    }
}

impl SignedAction {
    /// Decode from bytes (bounded).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_ACTION_BYTES {
            return Err(Error::Refused("the signed action is too large".into()));
        }
        SignedAction::decode(bytes)
            .map_err(|e| Error::Refused(format!("undecodable signed action: {e}")))
    }

    /// Check the action against a repository's current document: it names
    /// `id`, and at least the document's threshold of its delegates signed
    /// it (every signature present must be valid). Returns the action and
    /// who signed it; the caller checks the nonce and the action itself.
    pub fn verify(&self, id: &RepoId, doc: &Doc<Verified>) -> Result<(RepoAction, Vec<Did>)> {
        let action = RepoAction::decode(&self.body[..])
            .map_err(|e| Error::Refused(format!("undecodable action: {e}")))?;
        if action.repo_id != id.0 {
            return Err(Error::Refused(
                "the action is signed for another repository".into(),
            ));
        }
        let signers = valid_signers(SIGNING_CONTEXT, &self.body, &self.signatures)?;
        let delegates: Vec<Did> = signers.into_iter().filter(|d| doc.is_delegate(d)).collect();
        let needed = doc.body().threshold as usize;
        if delegates.len() < needed.max(1) {
            return Err(Error::Refused(format!(
                "{} of the repository's delegates signed the action; {} needed",
                delegates.len(),
                needed.max(1)
            )));
        }
        Ok((action, delegates))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::DocumentBody;

    fn doc(owner: &Keypair) -> (Doc<Verified>, RepoId) {
        let doc = Doc::from_signed(
            DocumentBody::genesis(owner.did(), "demo", "main", vec![]).sign(&[owner]),
        )
        .and_then(Doc::verify_genesis)
        .expect("genesis");
        let id = doc.genesis_id().expect("id");
        (doc, id)
    }

    #[test]
    fn a_delegate_signature_verifies_and_others_do_not() {
        let owner = Keypair::from_seed(&[1; 32]);
        let stranger = Keypair::from_seed(&[2; 32]);
        let (doc, id) = doc(&owner);
        let action = RepoAction {
            repo_id: id.0.to_vec(),
            action: "delete".into(),
            nonce: "1-abc".into(),
        };
        let (got, signers) = action.sign(&[&owner]).verify(&id, &doc).expect("owner may");
        assert_eq!(got, action);
        assert_eq!(signers, vec![owner.did()]);
        let err = action
            .sign(&[&stranger])
            .verify(&id, &doc)
            .expect_err("stranger");
        assert!(
            err.to_string().contains("0 of the repository's delegates"),
            "{err}"
        );
        let mut forged = action.sign(&[&owner]);
        forged.body = RepoAction {
            action: "settings deny_non_fast_forwards=false".into(),
            ..action.clone()
        }
        .encode_to_vec();
        assert!(
            forged.verify(&id, &doc).is_err(),
            "body changed after signing"
        );
        let other = RepoId([9; 32]);
        assert!(action.sign(&[&owner]).verify(&other, &doc).is_err());
    }
}

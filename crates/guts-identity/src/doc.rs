//! Repository identity documents.
//!
//! A document says who owns a repository, who may update it (delegates) and
//! how many of them must sign the next version of the document (threshold).
//! Version 1 is signed by the owner; version N+1 names the hash of version N
//! and is signed by a threshold of version N's delegates. The repository id
//! is the hash of version 1, so it never changes while the document evolves.
//!
//! Encoding is prost (protobuf). Signatures cover the exact body bytes, and a
//! body must be canonical (decoding and re-encoding gives the same bytes), so
//! one document has one encoding and one hash. [`Doc<Unverified>`] is what was
//! received; only [`Doc::verify_genesis`] and [`Doc::verify_successor`]
//! produce a [`Doc<Verified>`].

use std::collections::BTreeSet;
use std::fmt;
use std::marker::PhantomData;

use ed25519_dalek::{Signature, Verifier};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::cert::{Unverified, Verified};
use crate::did::Did;
use crate::error::{Error, Result};
use crate::keys::Keypair;

/// Domain separation for document signatures.
const SIGNING_CONTEXT: &[u8] = b"guts identity document v1\0";
/// Most delegates a document may list.
pub const MAX_DELEGATES: usize = 255;
/// Most aliases a document may declare.
pub const MAX_ALIASES: usize = 16;
/// Most revoked grants a document may list.
pub const MAX_REVOKED_GRANTS: usize = 1024;
/// Largest encoded document accepted.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// The signed content of a document.
#[derive(Clone, PartialEq, Message)]
pub struct DocumentBody {
    /// 1 for the first document, +1 for each update.
    #[prost(uint64, tag = "1")]
    pub version: u64,
    /// The owner's `did:key`.
    #[prost(string, tag = "2")]
    pub owner: String,
    /// Repository name (the `NAME` in `OWNER/NAME`).
    #[prost(string, tag = "3")]
    pub name: String,
    /// DIDs allowed to push and to sign the next version.
    #[prost(string, repeated, tag = "4")]
    pub delegates: Vec<String>,
    /// Signatures of delegates needed for the next version.
    #[prost(uint32, tag = "5")]
    pub threshold: u32,
    /// Branch name HEAD points to, e.g. `main`.
    #[prost(string, tag = "6")]
    pub default_branch: String,
    /// SHA-256 of the previous version's body; empty in version 1.
    #[prost(bytes = "vec", tag = "7")]
    pub previous: Vec<u8>,
    /// Human owner names nodes may accept in place of the DID in URLs.
    #[prost(string, repeated, tag = "8")]
    pub aliases: Vec<String>,
    /// Push grants ([`crate::grant`]) the delegates revoked, each with the
    /// time from which it authorizes nothing. Kept by later versions
    /// unless the delegates decide otherwise.
    #[prost(message, repeated, tag = "9")]
    pub revoked_grants: Vec<RevokedGrant>,
}

/// A revoked push grant.
#[derive(Clone, PartialEq, Message)]
pub struct RevokedGrant {
    /// The grant's id ([`crate::grant::GrantId`], 32 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub grant: Vec<u8>,
    /// From when (Unix seconds) it authorizes no push.
    #[prost(uint64, tag = "2")]
    pub revoked_at: u64,
}

/// One signature over a body.
#[derive(Clone, PartialEq, Message)]
pub struct DocSignature {
    /// The signer's `did:key`.
    #[prost(string, tag = "1")]
    pub signer: String,
    /// Ed25519 signature of the signing context and the body bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub signature: Vec<u8>,
}

/// A body with its signatures, as stored and sent.
#[derive(Clone, PartialEq, Message)]
pub struct SignedDocument {
    /// The encoded [`DocumentBody`].
    #[prost(bytes = "vec", tag = "1")]
    pub body: Vec<u8>,
    /// Signatures over `body`.
    #[prost(message, repeated, tag = "2")]
    pub signatures: Vec<DocSignature>,
}

/// The id of a repository: the SHA-256 of its first document's body.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoId(pub [u8; 32]);

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "z{}", bs58::encode(self.0).into_string())
    }
}

impl std::str::FromStr for RepoId {
    type Err = Error;

    /// Parse the text form `z<base58btc>` ([`fmt::Display`]).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidDocument(format!("{s:?} is not a repository id"));
        let rest = s.strip_prefix('z').ok_or_else(bad)?;
        let bytes = bs58::decode(rest).into_vec().map_err(|_| bad())?;
        Ok(RepoId(bytes.try_into().map_err(|_| bad())?))
    }
}

impl fmt::Debug for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoId({self})")
    }
}

/// A document whose signatures have (`Verified`) or have not been checked.
#[derive(Debug, Clone)]
pub struct Doc<S = Unverified> {
    signed: SignedDocument,
    body: DocumentBody,
    owner: Did,
    delegates: Vec<Did>,
    hash: [u8; 32],
    _state: PhantomData<S>,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidDocument(msg.into())
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl DocumentBody {
    /// A first version: owner is the only delegate, threshold 1.
    pub fn genesis(owner: Did, name: &str, default_branch: &str, aliases: Vec<String>) -> Self {
        DocumentBody {
            version: 1,
            owner: owner.to_string(),
            name: name.to_owned(),
            delegates: vec![owner.to_string()],
            threshold: 1,
            default_branch: default_branch.to_owned(),
            previous: Vec::new(),
            aliases,
            revoked_grants: Vec::new(),
        }
    }

    /// Encode and sign with each of `keys`.
    pub fn sign(&self, keys: &[&Keypair]) -> SignedDocument {
        let body = self.encode_to_vec();
        let signatures = sign_all(SIGNING_CONTEXT, &body, keys);
        SignedDocument { body, signatures }
    }
}

/// Each of `keys`' Ed25519 signature of `context` followed by `body`.
pub(crate) fn sign_all(context: &[u8], body: &[u8], keys: &[&Keypair]) -> Vec<DocSignature> {
    let mut msg = context.to_vec();
    msg.extend_from_slice(body);
    keys.iter()
        .map(|k| DocSignature {
            signer: k.did().to_string(),
            signature: k.sign(&msg).to_vec(),
        })
        .collect()
}

/// The signers of `signatures` over `context` followed by `body`. Any
/// invalid signature is an error.
pub(crate) fn valid_signers(
    context: &[u8],
    body: &[u8],
    signatures: &[DocSignature],
) -> Result<BTreeSet<Did>> {
    let mut msg = context.to_vec();
    msg.extend_from_slice(body);
    let mut out = BTreeSet::new();
    for s in signatures {
        let did: Did = s.signer.parse()?;
        let sig = Signature::from_slice(&s.signature)
            .map_err(|_| Error::BadSignature(format!("malformed signature by {did}")))?;
        did.verifying_key()?
            .verify(&msg, &sig)
            .map_err(|_| Error::BadSignature(format!("invalid signature by {did}")))?;
        out.insert(did);
    }
    Ok(out)
}

impl SignedDocument {
    /// Add one more signature (a co-signing delegate).
    pub fn add_signature(&mut self, key: &Keypair) {
        let signer = key.did().to_string();
        self.signatures.retain(|s| s.signer != signer);
        self.signatures
            .extend(sign_all(SIGNING_CONTEXT, &self.body, &[key]));
    }
}

impl Doc<Unverified> {
    /// Decode and check the fields; signatures are checked by `verify_*`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err(invalid("document too large"));
        }
        let signed =
            SignedDocument::decode(bytes).map_err(|e| invalid(format!("bad encoding: {e}")))?;
        if signed.encode_to_vec() != bytes {
            return Err(invalid("not canonically encoded"));
        }
        Doc::from_signed(signed)
    }

    /// Check the fields of an already decoded document.
    pub fn from_signed(signed: SignedDocument) -> Result<Self> {
        let body = DocumentBody::decode(&signed.body[..])
            .map_err(|e| invalid(format!("bad body encoding: {e}")))?;
        if body.encode_to_vec() != signed.body {
            return Err(invalid("body is not canonically encoded"));
        }
        let owner: Did = body.owner.parse()?;
        if !valid_segment(&body.name) {
            return Err(invalid(format!("invalid repository name {:?}", body.name)));
        }
        if body.delegates.is_empty() || body.delegates.len() > MAX_DELEGATES {
            return Err(invalid("a document needs 1 to 255 delegates"));
        }
        let mut delegates = Vec::with_capacity(body.delegates.len());
        for d in &body.delegates {
            let did: Did = d.parse()?;
            if delegates.contains(&did) {
                return Err(invalid(format!("delegate {did} listed twice")));
            }
            delegates.push(did);
        }
        if body.threshold == 0 || body.threshold as usize > delegates.len() {
            return Err(invalid(format!(
                "threshold {} must be between 1 and the number of delegates ({})",
                body.threshold,
                delegates.len()
            )));
        }
        if !valid_segment(&body.default_branch) || body.default_branch.contains("..") {
            return Err(invalid(format!(
                "invalid default branch {:?}",
                body.default_branch
            )));
        }
        if body.aliases.len() > MAX_ALIASES
            || body
                .aliases
                .iter()
                .any(|a| !valid_segment(a) || a.starts_with("z6Mk"))
        {
            return Err(invalid("aliases must be at most 16 valid names, not DIDs"));
        }
        if body.revoked_grants.len() > MAX_REVOKED_GRANTS
            || body.revoked_grants.iter().any(|r| r.grant.len() != 32)
        {
            return Err(invalid("revoked grants: at most 1024 ids of 32 bytes"));
        }
        let hash: [u8; 32] = Sha256::digest(&signed.body).into();
        Ok(Doc {
            signed,
            body,
            owner,
            delegates,
            hash,
            _state: PhantomData,
        })
    }

    /// Verify a first version: version 1, no previous, signed by the owner.
    pub fn verify_genesis(self) -> Result<Doc<Verified>> {
        if self.body.version != 1 || !self.body.previous.is_empty() {
            return Err(invalid(
                "a first document has version 1 and no previous hash",
            ));
        }
        let signers = self.valid_signers()?;
        if !signers.contains(&self.owner) {
            return Err(Error::BadSignature(
                "the first document must be signed by its owner".into(),
            ));
        }
        Ok(self.into_verified())
    }

    /// Verify version N+1 against verified version N: same owner and name,
    /// `previous` is N's hash, and at least N's threshold of N's delegates signed.
    pub fn verify_successor(self, prev: &Doc<Verified>) -> Result<Doc<Verified>> {
        if self.body.version != prev.body.version + 1 {
            return Err(invalid(format!(
                "expected version {}, got {}",
                prev.body.version + 1,
                self.body.version
            )));
        }
        if self.body.previous != prev.hash {
            return Err(invalid("previous hash does not match the current document"));
        }
        if self.body.owner != prev.body.owner || self.body.name != prev.body.name {
            return Err(invalid("owner and name cannot change"));
        }
        let signers = self.valid_signers()?;
        let count = prev
            .delegates
            .iter()
            .filter(|d| signers.contains(d))
            .count();
        if count < prev.body.threshold as usize {
            return Err(Error::BadSignature(format!(
                "{count} of the current delegates signed; {} needed",
                prev.body.threshold
            )));
        }
        Ok(self.into_verified())
    }

    /// Signers whose signature is valid. Any invalid signature is an error.
    fn valid_signers(&self) -> Result<BTreeSet<Did>> {
        valid_signers(SIGNING_CONTEXT, &self.signed.body, &self.signed.signatures)
    }

    fn into_verified(self) -> Doc<Verified> {
        Doc {
            signed: self.signed,
            body: self.body,
            owner: self.owner,
            delegates: self.delegates,
            hash: self.hash,
            _state: PhantomData,
        }
    }
}

impl<S> Doc<S> {
    /// The body.
    pub fn body(&self) -> &DocumentBody {
        &self.body
    }

    /// The owner.
    pub fn owner(&self) -> Did {
        self.owner
    }

    /// The delegates.
    pub fn delegates(&self) -> &[Did] {
        &self.delegates
    }

    /// SHA-256 of the body.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// The encoded signed document.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.signed.encode_to_vec()
    }

    /// The signed document.
    pub fn signed(&self) -> &SignedDocument {
        &self.signed
    }
}

impl Doc<Verified> {
    /// The repository id, if this is the first version (else use the stored id).
    pub fn genesis_id(&self) -> Option<RepoId> {
        (self.body.version == 1).then_some(RepoId(self.hash))
    }

    /// Whether `did` may push.
    pub fn is_delegate(&self, did: &Did) -> bool {
        self.delegates.contains(did)
    }

    /// When the push grant `id` was revoked, if this document revokes it.
    pub fn revoked_at(&self, id: &[u8; 32]) -> Option<u64> {
        self.body
            .revoked_grants
            .iter()
            .filter(|r| r.grant == id)
            .map(|r| r.revoked_at)
            .min()
    }

    /// The next version's body, to be edited and signed.
    pub fn successor(&self) -> DocumentBody {
        let mut next = self.body.clone();
        next.version += 1;
        next.previous = self.hash.to_vec();
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Keypair {
        Keypair::from_seed(&[n; 32])
    }

    fn genesis(owner: &Keypair) -> Doc<Verified> {
        let body = DocumentBody::genesis(owner.did(), "demo", "main", vec!["alice".into()]);
        Doc::from_bytes(&body.sign(&[owner]).encode_to_vec())
            .and_then(Doc::verify_genesis)
            .expect("valid genesis")
    }

    #[test]
    fn genesis_must_be_signed_by_the_owner() {
        let owner = key(1);
        let doc = genesis(&owner);
        assert_eq!(doc.owner(), owner.did());
        assert!(doc.genesis_id().is_some());
        let body = DocumentBody::genesis(owner.did(), "demo", "main", vec![]);
        let by_other = body.sign(&[&key(2)]).encode_to_vec();
        assert!(Doc::from_bytes(&by_other)
            .and_then(Doc::verify_genesis)
            .is_err());
        let unsigned = body.sign(&[]).encode_to_vec();
        assert!(Doc::from_bytes(&unsigned)
            .and_then(Doc::verify_genesis)
            .is_err());
    }

    #[test]
    fn tampering_any_byte_breaks_verification() {
        let owner = key(1);
        let bytes = genesis(&owner).to_bytes();
        for i in 0..bytes.len() {
            let mut t = bytes.clone();
            t[i] ^= 0x01;
            assert!(
                Doc::from_bytes(&t).and_then(Doc::verify_genesis).is_err(),
                "byte {i} tampered and still verified"
            );
        }
    }

    #[test]
    fn successor_needs_threshold_of_previous_delegates() {
        let (a, b, c) = (key(1), key(2), key(3));
        let v1 = genesis(&a);
        // v2: add b and c, threshold 2; signed by a (v1's only delegate).
        let mut body = v1.successor();
        body.delegates.push(b.did().to_string());
        body.delegates.push(c.did().to_string());
        body.threshold = 2;
        let v2 = Doc::from_bytes(&body.sign(&[&a]).encode_to_vec())
            .and_then(|d| d.verify_successor(&v1))
            .expect("v2");
        // v3 signed by one delegate only: refused; by two: accepted.
        let mut body = v2.successor();
        body.delegates.retain(|d| *d != c.did().to_string());
        body.threshold = 1;
        let one = body.sign(&[&b]).encode_to_vec();
        let err = Doc::from_bytes(&one)
            .and_then(|d| d.verify_successor(&v2))
            .expect_err("1 of 2");
        assert!(
            err.to_string()
                .contains("1 of the current delegates signed; 2 needed"),
            "{err}"
        );
        // A non-delegate's signature does not count.
        let with_outsider = body.sign(&[&b, &key(9)]).encode_to_vec();
        assert!(Doc::from_bytes(&with_outsider)
            .and_then(|d| d.verify_successor(&v2))
            .is_err());
        let two = body.sign(&[&b, &c]).encode_to_vec();
        let v3 = Doc::from_bytes(&two)
            .and_then(|d| d.verify_successor(&v2))
            .expect("2 of 2");
        assert!(!v3.is_delegate(&c.did()));
        // Skipping a version or pointing at another previous fails.
        assert!(Doc::from_bytes(&two)
            .and_then(|d| d.verify_successor(&v1))
            .is_err());
    }

    #[test]
    fn field_rules() {
        let a = key(1);
        let mut body = DocumentBody::genesis(a.did(), "demo", "main", vec![]);
        body.threshold = 2;
        assert!(
            Doc::from_bytes(&body.sign(&[&a]).encode_to_vec()).is_err(),
            "threshold > delegates"
        );
        let mut body = DocumentBody::genesis(a.did(), "../x", "main", vec![]);
        assert!(
            Doc::from_bytes(&body.sign(&[&a]).encode_to_vec()).is_err(),
            "bad name"
        );
        body.name = "ok".into();
        body.delegates.push(a.did().to_string());
        assert!(
            Doc::from_bytes(&body.sign(&[&a]).encode_to_vec()).is_err(),
            "duplicate delegate"
        );
    }
}

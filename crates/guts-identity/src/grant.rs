//! Push grants: a delegate lets another key push to some refs of a
//! repository until a time, so that clients which cannot sign git push
//! certificates (libgit2, dulwich, isomorphic-git, JGit) can push with a
//! token (ADR 0012).
//!
//! A [`SignedGrant`] names the repository id, the grantee's `did:key`, ref
//! patterns and a validity window, signed by one delegate. A [`PushToken`]
//! is the grant together with the grantee's secret key: the holder gives
//! it to a node as an HTTP password, and the node signs, with that key, a
//! push certificate that names the grant (`push-option guts-grant=<id>`).
//! The logged update carries the grant, so every peer checks the chain
//! delegate → grant → certificate as it checks a delegate's certificate
//! ([`crate::update::SignedRefUpdate::verify`]).
//!
//! Revocation lives in the identity document (`revoked_grants`): a grant
//! revoked at time T authorizes no certificate made at or after T.

use std::marker::PhantomData;

use prost::Message;
use sha2::{Digest, Sha256};

use crate::cert::{PushCert, Unverified, Verified};
use crate::doc::{sign_all, valid_signers, Doc, DocSignature, RepoId};
use crate::error::{Error, Result};
use crate::{Did, Keypair};

const SIGNING_CONTEXT: &[u8] = b"guts push grant v1\0";
/// Largest encoded signed grant accepted.
pub const MAX_GRANT_BYTES: usize = 4 * 1024;
/// Most ref patterns one grant may list.
pub const MAX_GRANT_PATTERNS: usize = 16;
/// Longest ref pattern accepted, in bytes.
pub const MAX_PATTERN_BYTES: usize = 255;
/// How far in the future a certificate's time may be, against a grant's
/// start, before it is refused (clock skew between the granting delegate
/// and the accepting node).
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;
/// The push option a token push's certificate names its grant with.
pub const GRANT_OPTION: &str = "guts-grant=";
/// How a token's text starts (so that secret scanners can find it).
pub const TOKEN_PREFIX: &str = "guts_";
/// Longest token text accepted.
pub const MAX_TOKEN_CHARS: usize = 8 * 1024;

/// What a delegate grants.
#[derive(Clone, PartialEq, Message)]
pub struct GrantBody {
    /// The repository id (32 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub repo_id: Vec<u8>,
    /// The `did:key` allowed to push.
    #[prost(string, tag = "2")]
    pub grantee: String,
    /// Ref patterns the grantee may create, move or delete: a full ref
    /// name, or a name with one `*` that matches any non-empty sequence
    /// (`refs/heads/*`, `refs/heads/feature/*`).
    #[prost(string, repeated, tag = "3")]
    pub refs: Vec<String>,
    /// Start of validity (Unix seconds).
    #[prost(uint64, tag = "4")]
    pub not_before: u64,
    /// End of validity (Unix seconds): no certificate made later counts.
    #[prost(uint64, tag = "5")]
    pub not_after: u64,
    /// A label for people (who the token is for).
    #[prost(string, tag = "6")]
    pub note: String,
}

/// A grant body with its delegate's signature, as carried by tokens and
/// logged updates.
#[derive(Clone, PartialEq, Message)]
pub struct SignedGrant {
    /// The encoded [`GrantBody`].
    #[prost(bytes = "vec", tag = "1")]
    pub body: Vec<u8>,
    /// The granting delegate's signature.
    #[prost(message, optional, tag = "2")]
    pub signature: Option<DocSignature>,
}

/// The id of a grant: SHA-256 of its body. Revocations name it.
pub type GrantId = [u8; 32];

/// A decoded grant whose signature was (`Verified`) or was not checked.
#[derive(Debug, Clone)]
pub struct Grant<S = Unverified> {
    bytes: Vec<u8>,
    body: GrantBody,
    grantee: Did,
    signer: Did,
    signature: DocSignature,
    id: GrantId,
    _state: PhantomData<S>,
}

fn refused(msg: impl Into<String>) -> Error {
    Error::Refused(msg.into())
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidGrant(msg.into())
}

/// Whether `pattern` is acceptable: a ref name under `refs/` with at most
/// one `*`, no control characters, spaces or `..`.
fn valid_pattern(p: &str) -> bool {
    p.starts_with("refs/")
        && p.len() <= MAX_PATTERN_BYTES
        && p.matches('*').count() <= 1
        && !p.contains("..")
        && !p.bytes().any(|b| b <= b' ' || b == 0x7f)
}

/// Whether `name` matches `pattern` (see [`GrantBody::refs`]).
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            name.len() > head.len() + tail.len() && name.starts_with(head) && name.ends_with(tail)
        }
    }
}

impl GrantBody {
    /// Encode and sign with the delegate's key.
    pub fn sign(&self, delegate: &Keypair) -> SignedGrant {
        let body = self.encode_to_vec();
        let signature = sign_all(SIGNING_CONTEXT, &body, &[delegate]).pop();
        SignedGrant { body, signature }
    }
}

impl Grant<Unverified> {
    /// Decode a signed grant (bounded, canonical) and check its fields.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_GRANT_BYTES {
            return Err(invalid("too large"));
        }
        let signed = SignedGrant::decode(bytes).map_err(|e| invalid(format!("{e}")))?;
        if signed.encode_to_vec() != bytes {
            return Err(invalid("not canonically encoded"));
        }
        let body = GrantBody::decode(&signed.body[..]).map_err(|e| invalid(format!("{e}")))?;
        if body.encode_to_vec() != signed.body {
            return Err(invalid("body not canonically encoded"));
        }
        let signature = signed.signature.ok_or_else(|| invalid("unsigned"))?;
        if body.repo_id.len() != 32 {
            return Err(invalid("bad repository id"));
        }
        if body.refs.is_empty()
            || body.refs.len() > MAX_GRANT_PATTERNS
            || !body.refs.iter().all(|p| valid_pattern(p))
        {
            return Err(invalid(
                "it needs 1 to 16 ref patterns under refs/, each with at most one '*'",
            ));
        }
        if body.not_after <= body.not_before {
            return Err(invalid("it ends before it starts"));
        }
        Ok(Grant {
            grantee: body.grantee.parse()?,
            signer: signature.signer.parse()?,
            signature,
            id: Sha256::digest(&signed.body).into(),
            bytes: bytes.to_vec(),
            body,
            _state: PhantomData,
        })
    }

    /// Check that the grant is for `id`, that its signature is valid and
    /// that its signer is a delegate under `doc`.
    pub fn verify(self, id: &RepoId, doc: &Doc<Verified>) -> Result<Grant<Verified>> {
        if self.body.repo_id != id.0 {
            return Err(refused("the push grant is for another repository"));
        }
        let body = self.body.encode_to_vec();
        let signers = valid_signers(
            SIGNING_CONTEXT,
            &body,
            std::slice::from_ref(&self.signature),
        )?;
        if !signers.contains(&self.signer) {
            return Err(Error::BadSignature(
                "the push grant is not signed by its signer".into(),
            ));
        }
        if !doc.is_delegate(&self.signer) {
            return Err(refused(format!(
                "the push grant was signed by {}, who is not a delegate of this repository",
                self.signer
            )));
        }
        Ok(Grant {
            bytes: self.bytes,
            body: self.body,
            grantee: self.grantee,
            signer: self.signer,
            signature: self.signature,
            id: self.id,
            _state: PhantomData,
        })
    }
}

impl<S> Grant<S> {
    /// The signed grant's encoding.
    pub fn to_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The grant's content.
    pub fn body(&self) -> &GrantBody {
        &self.body
    }

    /// The key the grant is for.
    pub fn grantee(&self) -> Did {
        self.grantee
    }

    /// The delegate who signed it (checked only when `Verified`).
    pub fn signer(&self) -> Did {
        self.signer
    }

    /// Its id (SHA-256 of the body).
    pub fn id(&self) -> GrantId {
        self.id
    }

    /// Its id in hex, as the certificate's push option writes it.
    pub fn id_hex(&self) -> String {
        hex(&self.id)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Grant<Verified> {
    /// The first ref of `names` no pattern of the grant allows.
    pub fn first_denied<'a>(&self, mut names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
        names.find(|n| !self.body.refs.iter().any(|p| pattern_matches(p, n)))
    }

    /// Whether the grant covers time `at` (Unix seconds), allowing for
    /// [`MAX_CLOCK_SKEW_SECS`] before its start.
    pub fn check_time(&self, at: u64) -> Result<()> {
        if at.saturating_add(MAX_CLOCK_SKEW_SECS) < self.body.not_before {
            return Err(refused("the push grant is not valid yet"));
        }
        if at > self.body.not_after {
            return Err(refused(format!(
                "the push grant expired at {} (Unix time)",
                self.body.not_after
            )));
        }
        Ok(())
    }

    /// Whether `latest` (the newest identity document known) revoked the
    /// grant at or before `at`.
    pub fn check_revocation(&self, latest: &Doc<Verified>, at: u64) -> Result<()> {
        match latest.revoked_at(&self.id) {
            Some(when) if when <= at => Err(refused(format!(
                "the push grant {} was revoked (identity document version {})",
                self.id_hex(),
                latest.body().version
            ))),
            _ => Ok(()),
        }
    }

    /// Every check a peer applies to a certificate made under this grant:
    /// signed by the grantee, naming this grant, made inside the validity
    /// window and before any revocation in `latest`, and touching only
    /// refs the grant allows.
    pub fn authorize(&self, cert: &PushCert<Verified>, latest: &Doc<Verified>) -> Result<()> {
        if cert.signer() != self.grantee {
            return Err(refused("the certificate is not signed by the grant's key"));
        }
        let named = format!("{GRANT_OPTION}{}", self.id_hex());
        if !cert.options().contains(&named) {
            return Err(refused("the certificate does not name its push grant"));
        }
        let at = cert
            .timestamp()
            .ok_or_else(|| refused("the certificate's pusher line has no time"))?;
        self.check_time(at)?;
        self.check_revocation(latest, at)?;
        if let Some(name) = self.first_denied(cert.commands().iter().map(|c| c.name.as_str())) {
            return Err(refused(format!(
                "the push grant does not allow updating {name}"
            )));
        }
        Ok(())
    }
}

/// The encoded content of a [`PushToken`].
#[derive(Clone, PartialEq, Message)]
struct TokenBytes {
    #[prost(bytes = "vec", tag = "1")]
    seed: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    grant: Vec<u8>,
}

/// A grant and the grantee's secret key: what a client presents instead of
/// a signed push. Whoever holds it can push what the grant allows until it
/// expires or is revoked.
pub struct PushToken {
    key: Keypair,
    grant: Grant<Unverified>,
}

impl std::fmt::Debug for PushToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PushToken(grant {})", self.grant.id_hex())
    }
}

impl PushToken {
    /// A token for `grant`, whose grantee is `key`.
    pub fn new(key: Keypair, grant: &SignedGrant) -> Result<Self> {
        let grant = Grant::from_bytes(&grant.encode_to_vec())?;
        if grant.grantee() != key.did() {
            return Err(invalid("the token's key is not the grant's grantee"));
        }
        Ok(PushToken { key, grant })
    }

    /// Parse the text form ([`PushToken::encode`]).
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || invalid("this is not a Guts push token");
        let text = text.trim();
        if text.len() > MAX_TOKEN_CHARS {
            return Err(bad());
        }
        let rest = text.strip_prefix(TOKEN_PREFIX).ok_or_else(bad)?;
        let bytes = bs58::decode(rest).into_vec().map_err(|_| bad())?;
        let t = TokenBytes::decode(&bytes[..]).map_err(|_| bad())?;
        let seed: [u8; 32] = t.seed.as_slice().try_into().map_err(|_| bad())?;
        let key = Keypair::from_seed(&seed);
        let grant = Grant::from_bytes(&t.grant)?;
        if grant.grantee() != key.did() {
            return Err(invalid("the token's key is not the grant's grantee"));
        }
        Ok(PushToken { key, grant })
    }

    /// The text form: `guts_` and base58 of the key and the grant.
    pub fn encode(&self) -> String {
        let t = TokenBytes {
            seed: self.key.seed().to_vec(),
            grant: self.grant.to_bytes().to_vec(),
        };
        format!(
            "{TOKEN_PREFIX}{}",
            bs58::encode(t.encode_to_vec()).into_string()
        )
    }

    /// The grant (not yet checked against a document).
    pub fn grant(&self) -> &Grant<Unverified> {
        &self.grant
    }

    /// Sign a push certificate for `commands` (`old new ref` lines) under
    /// the grant, as the grantee, made at `at` (Unix seconds).
    pub fn certificate(
        &self,
        pushee: &str,
        nonce: &str,
        at: u64,
        commands: &[(String, String, String)],
    ) -> Result<PushCert<Unverified>> {
        let mut payload = format!(
            "certificate version 0.1\npusher {} {at} +0000\npushee {pushee}\nnonce {nonce}\npush-option {GRANT_OPTION}{}\n\n",
            self.key.did(),
            self.grant.id_hex(),
        );
        for (old, new, name) in commands {
            payload.push_str(&format!("{old} {new} {name}\n"));
        }
        let sig = self
            .key
            .sign_ssh(crate::cert::GIT_NAMESPACE, payload.as_bytes())?;
        PushCert::parse(&format!("{payload}{sig}"))
    }
}

#[cfg(test)]
mod tests;

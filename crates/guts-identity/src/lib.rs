//! `guts-identity`: who may change a repository, and the proof that they did.
//!
//! - [`did`]: user identities as `did:key` (Ed25519);
//! - [`action`]: repository actions (delete, settings) signed by delegates;
//! - [`keys`]: signing keys stored as OpenSSH key files, so one key signs
//!   identity documents here and pushes in git (`gpg.format=ssh`);
//! - [`doc`]: repository identity documents (owner, delegates, threshold),
//!   versioned and signed, with the repository id derived from version 1;
//! - [`cert`]: git push certificates with SSH signatures;
//! - [`grant`]: push grants and the tokens that carry them, for clients
//!   that cannot sign certificates;
//! - [`nonce`]: push-certificate nonces a node can check statelessly;
//! - [`update`]: signed ref updates anyone holding the document can verify.
//!
//! Types separate what was received from what was checked
//! ([`cert::Unverified`] / [`cert::Verified`]). This crate does no I/O
//! beyond reading and writing key files, and knows nothing of HTTP, git
//! storage or peers.
#![deny(clippy::unwrap_used)]
#![warn(missing_docs)]

pub mod action;
pub mod cert;
pub mod did;
pub mod doc;
pub mod error;
pub mod grant;
pub mod keys;
pub mod nonce;
pub mod update;

pub use action::{RepoAction, SignedAction};
pub use cert::{PushCert, Unverified, Verified};
pub use did::Did;
pub use doc::{Doc, DocumentBody, RepoId, SignedDocument};
pub use error::{Error, Result};
pub use grant::{Grant, PushToken, SignedGrant};
pub use keys::Keypair;
pub use nonce::NonceIssuer;
pub use update::SignedRefUpdate;

//! The one error type of this crate.

/// Everything that can go wrong with identities, documents and certificates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `did:key` string is malformed or not an Ed25519 key.
    #[error("invalid DID {0:?}: {1}")]
    InvalidDid(String, &'static str),
    /// A key file could not be read or written.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// An identity document is malformed (bad encoding or invalid fields).
    #[error("invalid identity document: {0}")]
    InvalidDocument(String),
    /// A signature does not verify, or not enough valid signatures.
    #[error("signature check failed: {0}")]
    BadSignature(String),
    /// A push certificate is malformed.
    #[error("invalid push certificate: {0}")]
    InvalidCertificate(String),
    /// A push grant or token is malformed.
    #[error("invalid push grant: {0}")]
    InvalidGrant(String),
    /// A push certificate is well-formed and signed but not acceptable here.
    #[error("push certificate refused: {0}")]
    Refused(String),
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! `did:key` identifiers for Ed25519 keys (W3C CCG did:key method).
//!
//! `did:key:z` + base58btc(multicodec `ed25519-pub` = varint 0xed, i.e. the
//! bytes `0xed 0x01`, followed by the 32-byte public key). Such DIDs start
//! with `did:key:z6Mk`.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::VerifyingKey;

use crate::error::{Error, Result};

const PREFIX: &str = "did:key:";
const MULTICODEC_ED25519: [u8; 2] = [0xed, 0x01];

/// A user identity: an Ed25519 public key written as a `did:key`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Did([u8; 32]);

impl Did {
    /// The DID of a public key. Fails for byte strings that are not a valid point.
    pub fn from_public_key_bytes(bytes: [u8; 32]) -> Result<Self> {
        VerifyingKey::from_bytes(&bytes)
            .map_err(|_| Error::InvalidDid(hex(&bytes), "not an Ed25519 public key"))?;
        Ok(Did(bytes))
    }

    /// The DID of a verifying key.
    pub fn from_key(key: &VerifyingKey) -> Self {
        Did(key.to_bytes())
    }

    /// The public key bytes.
    pub fn public_key_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The verifying key.
    pub fn verifying_key(&self) -> Result<VerifyingKey> {
        VerifyingKey::from_bytes(&self.0)
            .map_err(|_| Error::InvalidDid(self.to_string(), "not an Ed25519 public key"))
    }

    /// The method-specific part, `z6Mk...`, used as a repository owner in URLs.
    pub fn method_id(&self) -> String {
        let mut bytes = Vec::with_capacity(34);
        bytes.extend_from_slice(&MULTICODEC_ED25519);
        bytes.extend_from_slice(&self.0);
        format!("z{}", bs58::encode(bytes).into_string())
    }

    /// Parse either `did:key:z6Mk...` or the bare `z6Mk...` part.
    pub fn parse_any(s: &str) -> Result<Self> {
        s.parse().or_else(|_| format!("{PREFIX}{s}").parse())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl fmt::Display for Did {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.method_id())
    }
}

impl fmt::Debug for Did {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Did({self})")
    }
}

impl FromStr for Did {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = |why| Error::InvalidDid(s.to_owned(), why);
        let multibase = s
            .strip_prefix(PREFIX)
            .ok_or_else(|| invalid("does not start with did:key:"))?;
        let b58 = multibase
            .strip_prefix('z')
            .ok_or_else(|| invalid("not base58btc multibase (z...)"))?;
        let bytes = bs58::decode(b58)
            .into_vec()
            .map_err(|_| invalid("bad base58"))?;
        let key = bytes
            .strip_prefix(&MULTICODEC_ED25519[..])
            .ok_or_else(|| invalid("not an Ed25519 key (multicodec 0xed01)"))?;
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| invalid("Ed25519 key is not 32 bytes"))?;
        Did::from_public_key_bytes(key).map_err(|_| invalid("not a valid Ed25519 point"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b58(s: &str) -> [u8; 32] {
        bs58::decode(s)
            .into_vec()
            .expect("base58 vector")
            .try_into()
            .expect("32-byte key")
    }

    /// Published did:key vectors: (DID, publicKeyBase58).
    const VECTORS: &[(&str, &str)] = &[
        (
            "did:key:z6MkmjY8GnV5i9YTDtPETC2uUAW6ejw3nk5mXF5yci5ab7th",
            "8HH5gYEeNc3z7PYXmd54d4x6qAfCNrqQqEB3nS7Zfu7K",
        ),
        (
            "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
            "4zvwRjXUKGfvwnParsHAS3HuSVzV5cA4McphgmoCtajS",
        ),
    ];

    #[test]
    fn round_trips_known_vectors() {
        for (did, key) in VECTORS {
            let parsed: Did = did.parse().expect("valid vector");
            assert_eq!(parsed.public_key_bytes(), &b58(key), "{did}");
            assert_eq!(&parsed.to_string(), did);
            let from_key = Did::from_public_key_bytes(b58(key)).expect("valid key");
            assert_eq!(&from_key.to_string(), did);
            assert!(from_key.method_id().starts_with("z6Mk"));
            assert_eq!(Did::parse_any(&from_key.method_id()).ok(), Some(from_key));
        }
    }

    /// The spec's Ed25519 vector derived from the all-zero seed: key to DID.
    #[test]
    fn the_zero_seed_gives_the_spec_vector() {
        let key = crate::keys::Keypair::from_seed(&[0; 32]);
        assert_eq!(
            key.did().to_string(),
            "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "did:web:example.com",
            "did:key:6MkmjY8GnV5i9YTDtPETC2uUAW6ejw3nk5mXF5yci5ab7th",
            "did:key:z0OIl",
            "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme",
            "did:key:z6MkmjY8GnV5i9YTDtPETC2uUAW6ejw3nk5mXF5yci5ab7",
        ] {
            assert!(bad.parse::<Did>().is_err(), "{bad}");
        }
    }
}

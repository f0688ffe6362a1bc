//! git push certificates (`git push --signed`, gitprotocol-pack "Push
//! Certificate") signed with SSH keys (`gpg.format=ssh`, SSHSIG, namespace
//! `git`).
//!
//! A certificate is header lines (`certificate version 0.1`, `pusher`,
//! `pushee`, `nonce`, `push-option`), a blank line, one `old new ref` line
//! per update, then an armored SSH signature over everything before it.
//! [`PushCert<Unverified>`] is what came off the wire; only
//! [`PushCert::verify`] turns it into a [`PushCert<Verified>`] that knows its
//! signer, so unverified certificates cannot be mistaken for authority.

use std::marker::PhantomData;

use ssh_key::public::KeyData;
use ssh_key::{HashAlg, PublicKey, SshSig};

use crate::did::Did;
use crate::error::{Error, Result};

/// The SSHSIG namespace git signs push certificates in.
pub const GIT_NAMESPACE: &str = "git";
/// Largest certificate accepted, in bytes.
pub const MAX_CERT_BYTES: usize = 1 << 20;
const SIG_BEGIN: &str = "-----BEGIN SSH SIGNATURE-----";

/// Marker: signature not checked.
#[derive(Debug, Clone, Copy)]
pub struct Unverified;
/// Marker: signature checked; the signer is known.
#[derive(Debug, Clone, Copy)]
pub struct Verified;

/// One `old new ref` line of a certificate (hex ids as written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertCommand {
    /// Old value, 40 hex digits (all zeros for a create).
    pub old: String,
    /// New value, 40 hex digits (all zeros for a delete).
    pub new: String,
    /// Full ref name.
    pub name: String,
}

/// A push certificate.
#[derive(Debug, Clone)]
pub struct PushCert<S = Unverified> {
    text: String,
    payload_len: usize,
    pusher: String,
    pushee: Option<String>,
    nonce: Option<String>,
    options: Vec<String>,
    commands: Vec<CertCommand>,
    signer: Option<Did>,
    _state: PhantomData<S>,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidCertificate(msg.into())
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl PushCert<Unverified> {
    /// Parse a certificate as received (payload followed by the signature).
    pub fn parse(text: &str) -> Result<Self> {
        if text.len() > MAX_CERT_BYTES {
            return Err(invalid("certificate too large"));
        }
        let payload_len = text
            .match_indices(SIG_BEGIN)
            .map(|(i, _)| i)
            .find(|i| *i == 0 || text.as_bytes()[i - 1] == b'\n')
            .ok_or_else(|| {
                invalid("no SSH signature found (only SSH-signed pushes are accepted: set gpg.format=ssh)")
            })?;
        let payload = &text[..payload_len];
        let (header, body) = payload
            .split_once("\n\n")
            .ok_or_else(|| invalid("no blank line after the header"))?;
        let mut lines = header.lines();
        if lines.next() != Some("certificate version 0.1") {
            return Err(invalid("expected 'certificate version 0.1'"));
        }
        let mut cert = PushCert {
            text: text.to_owned(),
            payload_len,
            pusher: String::new(),
            pushee: None,
            nonce: None,
            options: Vec::new(),
            commands: Vec::new(),
            signer: None,
            _state: PhantomData,
        };
        for line in lines {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "pusher" => cert.pusher = value.to_owned(),
                "pushee" => cert.pushee = Some(value.to_owned()),
                "nonce" => cert.nonce = Some(value.to_owned()),
                "push-option" => cert.options.push(value.to_owned()),
                other => return Err(invalid(format!("unknown header {other:?}"))),
            }
        }
        if cert.pusher.is_empty() {
            return Err(invalid("no pusher line"));
        }
        for line in body.lines() {
            let mut parts = line.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(old), Some(new), Some(name))
                    if is_hex_id(old) && is_hex_id(new) && !name.is_empty() =>
                {
                    cert.commands.push(CertCommand {
                        old: old.to_owned(),
                        new: new.to_owned(),
                        name: name.to_owned(),
                    })
                }
                _ => return Err(invalid(format!("malformed update line {line:?}"))),
            }
        }
        if cert.commands.is_empty() {
            return Err(invalid("no ref updates"));
        }
        Ok(cert)
    }

    /// Check the SSH signature (namespace `git`, SHA-256 or SHA-512) over the
    /// payload. The signer is the Ed25519 key embedded in the signature.
    pub fn verify(self) -> Result<PushCert<Verified>> {
        let sig = SshSig::from_pem(self.signature())
            .map_err(|e| Error::BadSignature(format!("unreadable SSH signature: {e}")))?;
        if sig.namespace() != GIT_NAMESPACE {
            return Err(Error::BadSignature(format!(
                "signature namespace is {:?}, expected \"git\"",
                sig.namespace()
            )));
        }
        let key = match sig.public_key() {
            KeyData::Ed25519(k) => k.0,
            _ => {
                return Err(Error::BadSignature(
                    "only Ed25519 SSH keys are accepted".into(),
                ))
            }
        };
        let public = PublicKey::from(sig.public_key().clone());
        public
            .verify(GIT_NAMESPACE, self.payload().as_bytes(), &sig)
            .map_err(|_| {
                Error::BadSignature("the SSH signature does not match the certificate".into())
            })?;
        // git writes the signing key's fingerprint as the pusher; if it did, it must agree.
        if let Some(fp) = self
            .pusher
            .split(' ')
            .next()
            .filter(|f| f.starts_with("SHA256:"))
        {
            if public.fingerprint(HashAlg::Sha256).to_string() != fp {
                return Err(Error::BadSignature(
                    "the pusher line names a different key than the signature".into(),
                ));
            }
        }
        let signer = Did::from_public_key_bytes(key)?;
        Ok(PushCert {
            signer: Some(signer),
            text: self.text,
            payload_len: self.payload_len,
            pusher: self.pusher,
            pushee: self.pushee,
            nonce: self.nonce,
            options: self.options,
            commands: self.commands,
            _state: PhantomData,
        })
    }
}

impl<S> PushCert<S> {
    /// The whole certificate as received.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The signed part.
    pub fn payload(&self) -> &str {
        &self.text[..self.payload_len]
    }

    /// The armored signature.
    pub fn signature(&self) -> &str {
        &self.text[self.payload_len..]
    }

    /// The `pusher` line's value.
    pub fn pusher(&self) -> &str {
        &self.pusher
    }

    /// The time on the `pusher` line (Unix seconds): `pusher IDENT TIME TZ`.
    pub fn timestamp(&self) -> Option<u64> {
        let mut parts = self.pusher.rsplitn(3, ' ');
        let _tz = parts.next()?;
        parts.next()?.parse().ok()
    }

    /// The URL pushed to, as the client wrote it.
    pub fn pushee(&self) -> Option<&str> {
        self.pushee.as_deref()
    }

    /// The server nonce the certificate answers.
    pub fn nonce(&self) -> Option<&str> {
        self.nonce.as_deref()
    }

    /// `push-option` values.
    pub fn options(&self) -> &[String] {
        &self.options
    }

    /// The ref updates the certificate authorizes.
    pub fn commands(&self) -> &[CertCommand] {
        &self.commands
    }
}

impl PushCert<Verified> {
    /// Who signed.
    pub fn signer(&self) -> Did {
        // Always set by `verify`, the only constructor of this state.
        self.signer
            .unwrap_or_else(|| unreachable!("verified certificate without signer"))
    }

    /// Check that the pushee URL's path names the repository, as
    /// `.../OWNER/NAME` or `.../OWNER/NAME.git` for one of the `owners`
    /// (the owner's DID id or an alias). The host is not checked: a
    /// repository is reachable through any node.
    pub fn check_pushee(&self, owners: &[String], name: &str) -> Result<()> {
        let url = self
            .pushee
            .as_deref()
            .ok_or_else(|| Error::Refused("the certificate names no pushee".into()))?;
        let path = url
            .split_once("://")
            .map(|(_, rest)| rest.find('/').map_or("", |i| &rest[i..]))
            .unwrap_or(url);
        let path = path
            .split(['?', '#'])
            .next()
            .unwrap_or("")
            .trim_end_matches('/');
        let path = path.strip_suffix(".git").unwrap_or(path);
        let matches = owners
            .iter()
            .any(|o| path.ends_with(&format!("/{o}/{name}")));
        if matches {
            Ok(())
        } else {
            Err(Error::Refused(format!(
                "the certificate was made for {url}, not for this repository"
            )))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::Keypair;

    /// Sign a certificate payload as git does (`ssh-keygen -Y sign -n git`).
    pub(crate) fn sign(key: &Keypair, payload: &str) -> String {
        sign_with(key, payload, HashAlg::Sha512)
    }

    /// [`sign`] with another hash (`ssh-keygen -Y sign -O hashalg=sha256`).
    pub(crate) fn sign_with(key: &Keypair, payload: &str, hash: HashAlg) -> String {
        let pair = ssh_key::private::Ed25519Keypair::from_seed(&key.seed());
        let private = ssh_key::PrivateKey::new(ssh_key::private::KeypairData::Ed25519(pair), "t")
            .expect("key");
        let sig = private
            .sign(GIT_NAMESPACE, hash, payload.as_bytes())
            .expect("sign");
        format!(
            "{payload}{}",
            sig.to_pem(ssh_key::LineEnding::LF).expect("pem")
        )
    }

    pub(crate) fn payload(nonce: &str, pushee: &str) -> String {
        format!(
            "certificate version 0.1\npusher SOMEONE 1700000000 +0000\npushee {pushee}\nnonce {nonce}\n\n{} {} refs/heads/main\n",
            "0".repeat(40),
            "a".repeat(40)
        )
    }

    #[test]
    fn parses_and_verifies() {
        let key = Keypair::from_seed(&[1; 32]);
        let text = sign(&key, &payload("123-abc", "http://h:1/z6Mkx/demo.git"));
        let cert = PushCert::parse(&text)
            .expect("parse")
            .verify()
            .expect("verify");
        assert_eq!(cert.signer(), key.did());
        assert_eq!(cert.nonce(), Some("123-abc"));
        assert_eq!(cert.commands().len(), 1);
        assert_eq!(cert.commands()[0].name, "refs/heads/main");
        assert!(cert.check_pushee(&["z6Mkx".into()], "demo").is_ok());
        assert!(cert.check_pushee(&["alice".into()], "demo").is_err());
        assert!(cert.check_pushee(&["z6Mkx".into()], "other").is_err());
    }

    #[test]
    fn sha256_signatures_verify_too() {
        let key = Keypair::from_seed(&[4; 32]);
        let text = sign_with(&key, &payload("1-a", "http://h/o/n"), HashAlg::Sha256);
        let cert = PushCert::parse(&text)
            .and_then(PushCert::verify)
            .expect("sha256 signature");
        assert_eq!(cert.signer(), key.did());
    }

    #[test]
    fn any_changed_byte_breaks_the_signature() {
        let key = Keypair::from_seed(&[2; 32]);
        let text = sign(&key, &payload("1-a", "http://h/o/n"));
        // Every byte of the signed payload. (The armor is not covered: its
        // encoding is malleable in places, e.g. a length field the parser
        // tolerates; that changes the text, not what was signed or by whom.)
        let payload_len = text.find(SIG_BEGIN).expect("sig");
        for i in 0..payload_len {
            let mut bytes = text.clone().into_bytes();
            bytes[i] ^= 0x01;
            let Ok(tampered) = String::from_utf8(bytes) else {
                continue;
            };
            let ok = PushCert::parse(&tampered)
                .and_then(PushCert::verify)
                .is_ok();
            assert!(
                !ok,
                "tampering byte {i} ({:?} -> {:?}) was not detected",
                text.as_bytes()[i] as char,
                (text.as_bytes()[i] ^ 1) as char
            );
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "no signature at all\n",
            "certificate version 0.2\npusher x\n\n-----BEGIN SSH SIGNATURE-----\n",
            "certificate version 0.1\n\n-----BEGIN SSH SIGNATURE-----\n",
        ] {
            assert!(PushCert::parse(bad).is_err(), "{bad}");
        }
        let key = Keypair::from_seed(&[3; 32]);
        let other_ns = {
            let pair = ssh_key::private::Ed25519Keypair::from_seed(&key.seed());
            let private =
                ssh_key::PrivateKey::new(ssh_key::private::KeypairData::Ed25519(pair), "t")
                    .expect("key");
            let p = payload("1-a", "http://h/o/n");
            let sig = private
                .sign("file", HashAlg::Sha512, p.as_bytes())
                .expect("sign");
            format!("{p}{}", sig.to_pem(ssh_key::LineEnding::LF).expect("pem"))
        };
        let err = PushCert::parse(&other_ns)
            .and_then(PushCert::verify)
            .expect_err("namespace");
        assert!(err.to_string().contains("namespace"), "{err}");
    }
}

//! A user's signing key, stored as an OpenSSH key file so that the same key
//! signs identity documents here and pushes in git (`gpg.format=ssh`).

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey};
use ssh_key::private::{Ed25519Keypair, KeypairData};
use ssh_key::{LineEnding, PrivateKey};

use crate::did::Did;
use crate::error::{Error, Result};

/// An Ed25519 signing identity.
pub struct Keypair {
    signing: SigningKey,
}

fn key_err(path: &Path, reason: impl ToString) -> Error {
    Error::KeyFile {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl Keypair {
    /// A new random key from the operating system's RNG.
    pub fn generate() -> Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| Error::KeyFile {
            path: "<rng>".into(),
            reason: e.to_string(),
        })?;
        Ok(Keypair::from_seed(&seed))
    }

    /// The key for a 32-byte seed (tests and fixtures).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Keypair {
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// The 32-byte seed (secret!), for handing the key to SSH tooling.
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// This key's DID.
    pub fn did(&self) -> Did {
        Did::from_key(&self.signing.verifying_key())
    }

    /// Sign `msg` (raw Ed25519).
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }

    fn ssh_private(&self, comment: &str) -> Result<PrivateKey> {
        let pair = Ed25519Keypair::from_seed(&self.signing.to_bytes());
        PrivateKey::new(KeypairData::Ed25519(pair), comment)
            .map_err(|e| key_err(Path::new("<memory>"), e))
    }

    /// An armored SSH signature (SSHSIG, SHA-512) of `msg` in `namespace`,
    /// as `ssh-keygen -Y sign -n NAMESPACE` makes it.
    pub fn sign_ssh(&self, namespace: &str, msg: &[u8]) -> Result<String> {
        let sig = self
            .ssh_private("")?
            .sign(namespace, ssh_key::HashAlg::Sha512, msg)
            .map_err(|e| key_err(Path::new("<memory>"), e))?;
        sig.to_pem(LineEnding::LF)
            .map_err(|e| key_err(Path::new("<memory>"), e))
    }

    /// The key's OpenSSH SHA-256 fingerprint (`SHA256:...`), as git writes it
    /// in a push certificate's `pusher` line.
    pub fn ssh_fingerprint(&self) -> Result<String> {
        Ok(self
            .ssh_private("")?
            .public_key()
            .fingerprint(ssh_key::HashAlg::Sha256)
            .to_string())
    }

    /// The public key in OpenSSH format (`ssh-ed25519 AAAA... comment`).
    pub fn ssh_public_key(&self, comment: &str) -> Result<String> {
        self.ssh_private(comment)?
            .public_key()
            .to_openssh()
            .map_err(|e| key_err(Path::new("<memory>"), e))
    }

    /// Write the private key (mode 0600) to `path` and the public key to
    /// `path.pub`. Refuses to overwrite an existing key.
    pub fn write_openssh(&self, path: &Path, comment: &str) -> Result<()> {
        if path.exists() {
            return Err(key_err(path, "already exists; refusing to overwrite a key"));
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| key_err(dir, e))?;
        }
        self.ssh_private(comment)?
            .write_openssh_file(path, LineEnding::LF)
            .map_err(|e| key_err(path, e))?;
        let pub_path = public_key_path(path);
        std::fs::write(&pub_path, format!("{}\n", self.ssh_public_key(comment)?))
            .map_err(|e| key_err(&pub_path, e))
    }

    /// Read an unencrypted OpenSSH Ed25519 private key file.
    pub fn read_openssh(path: &Path) -> Result<Self> {
        let key = PrivateKey::read_openssh_file(path).map_err(|e| key_err(path, e))?;
        if key.is_encrypted() {
            return Err(key_err(path, "passphrase-protected keys are not supported"));
        }
        match key.key_data() {
            KeypairData::Ed25519(pair) => Ok(Keypair {
                signing: SigningKey::from_bytes(&pair.private.to_bytes()),
            }),
            _ => Err(key_err(path, "not an Ed25519 key")),
        }
    }
}

/// `path` with `.pub` appended, where OpenSSH keeps the public key.
pub fn public_key_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssh_file_round_trip_keeps_the_did() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("id_ed25519");
        let key = Keypair::from_seed(&[7; 32]);
        key.write_openssh(&path, "test").expect("write");
        let back = Keypair::read_openssh(&path).expect("read");
        assert_eq!(back.did(), key.did());
        assert!(key.write_openssh(&path, "test").is_err(), "overwrote a key");
        let public = std::fs::read_to_string(public_key_path(&path)).expect("pub");
        assert!(public.starts_with("ssh-ed25519 "));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}

//! Push certificate nonces, like git's `receive.certNonceSeed` ones plus a
//! random salt: `<unix time>.<salt>-<HMAC(seed, "<repo>:<unix time>.<salt>")>`.
//! A node can check a nonce it issued without remembering it: the HMAC
//! proves origin and binds the repository, the timestamp bounds its age.
//! The salt makes every nonce distinct, so a node can accept each one once
//! (two pushes in the same second get different nonces).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// Hex digits of the HMAC kept in a nonce.
const MAC_HEX: usize = 40;

/// Issues and checks nonces with a node secret.
#[derive(Clone)]
pub struct NonceIssuer {
    seed: Vec<u8>,
}

impl NonceIssuer {
    /// Use `seed` (keep it secret and stable across restarts).
    pub fn new(seed: Vec<u8>) -> Self {
        NonceIssuer { seed }
    }

    fn mac(&self, repo: &str, stamp: &str) -> String {
        let mut mac = match HmacSha256::new_from_slice(&self.seed) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        mac.update(format!("{repo}:{stamp}").as_bytes());
        let bytes = mac.finalize().into_bytes();
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .take(MAC_HEX / 2)
            .collect()
    }

    /// A nonce for `repo` at time `now` (seconds since the epoch), with a
    /// random salt.
    pub fn issue(&self, repo: &str, now: u64) -> String {
        let mut salt = [0u8; 8];
        // Without randomness the nonce is still valid, only not unique
        // within its second; the node then refuses the second use.
        let _ = getrandom::getrandom(&mut salt);
        self.issue_salted(repo, now, u64::from_be_bytes(salt))
    }

    /// A nonce for `repo` at time `now` with the given salt.
    pub fn issue_salted(&self, repo: &str, now: u64, salt: u64) -> String {
        let stamp = format!("{now}.{salt:016x}");
        format!("{stamp}-{}", self.mac(repo, &stamp))
    }

    /// Accept `nonce` if this issuer made it for `repo` at most `max_age`
    /// seconds before `now` (and not in the future).
    pub fn check(&self, nonce: &str, repo: &str, now: u64, max_age: u64) -> Result<()> {
        let (stamped, mac) = nonce
            .split_once('-')
            .ok_or_else(|| Error::Refused("malformed nonce".into()))?;
        let stamp: u64 = stamped
            .split_once('.')
            .map_or(stamped, |(t, _)| t)
            .parse()
            .map_err(|_| Error::Refused("malformed nonce".into()))?;
        let expected = self.mac(repo, stamped);
        // Compare without early exit.
        let same = expected.len() == mac.len()
            && expected
                .bytes()
                .zip(mac.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return Err(Error::Refused(
                "the nonce was not issued by this node for this repository".into(),
            ));
        }
        if stamp > now.saturating_add(5) {
            return Err(Error::Refused("the nonce is from the future".into()));
        }
        if now - stamp.min(now) > max_age {
            return Err(Error::Refused(format!(
                "the nonce is stale (issued {}s ago, at most {max_age}s allowed); push again",
                now - stamp
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_nonces_pass_others_fail() {
        let n = NonceIssuer::new(b"secret".to_vec());
        let nonce = n.issue("o/r", 1000);
        assert!(n.check(&nonce, "o/r", 1010, 60).is_ok());
        assert!(n.check(&nonce, "o/r", 1100, 60).is_err(), "stale");
        assert!(n.check(&nonce, "o/other", 1010, 60).is_err(), "other repo");
        assert!(
            NonceIssuer::new(b"x".to_vec())
                .check(&nonce, "o/r", 1010, 60)
                .is_err(),
            "other node"
        );
        assert!(n.check("1000-00", "o/r", 1010, 60).is_err());
        assert_ne!(
            n.issue("o/r", 1000),
            n.issue("o/r", 1000),
            "salted: unique within a second"
        );
        let salted = n.issue_salted("o/r", 1000, 7);
        assert!(n.check(&salted, "o/r", 1010, 60).is_ok());
        let tampered = salted.replace(".0000000000000007", ".0000000000000008");
        assert!(
            n.check(&tampered, "o/r", 1010, 60).is_err(),
            "salt is signed"
        );
        assert!(n.check("garbage", "o/r", 1010, 60).is_err());
        assert!(
            n.check(&n.issue("o/r", 2000), "o/r", 1010, 60).is_err(),
            "future"
        );
    }
}

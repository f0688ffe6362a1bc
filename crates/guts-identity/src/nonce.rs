//! Push certificate nonces, as git's `receive.certNonceSeed` makes them:
//! `<unix time>-<HMAC(seed, "<repo>:<unix time>")>`. A node can check a nonce
//! it issued without remembering it: the HMAC proves origin and binds the
//! repository, the timestamp bounds its age.

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

    fn mac(&self, repo: &str, stamp: u64) -> String {
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

    /// A nonce for `repo` at time `now` (seconds since the epoch).
    pub fn issue(&self, repo: &str, now: u64) -> String {
        format!("{now}-{}", self.mac(repo, now))
    }

    /// Accept `nonce` if this issuer made it for `repo` at most `max_age`
    /// seconds before `now` (and not in the future).
    pub fn check(&self, nonce: &str, repo: &str, now: u64, max_age: u64) -> Result<()> {
        let (stamp, mac) = nonce
            .split_once('-')
            .ok_or_else(|| Error::Refused("malformed nonce".into()))?;
        let stamp: u64 = stamp
            .parse()
            .map_err(|_| Error::Refused("malformed nonce".into()))?;
        let expected = self.mac(repo, stamp);
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
        assert!(n.check("garbage", "o/r", 1010, 60).is_err());
        assert!(
            n.check(&n.issue("o/r", 2000), "o/r", 1010, 60).is_err(),
            "future"
        );
    }
}

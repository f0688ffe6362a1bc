//! Pushes with a token (ADR 0012): for clients that cannot sign git push
//! certificates. The token travels as the password of HTTP Basic auth
//! (any user name) or as `Authorization: Bearer`; it holds a push grant a
//! delegate signed and the grantee's key, with which the node signs the
//! push certificate it logs ([`guts_identity::grant`]).

use axum::http::{header, HeaderMap};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use guts_identity::grant::{Grant, TOKEN_PREFIX};
use guts_identity::{PushToken, Verified};

use serde::{Deserialize, Serialize};

use crate::error::NodeError;
use crate::identity::Identity;

/// What a push with neither a certificate nor a token is told.
pub const NO_CREDENTIAL_HELP: &str = "this repository accepts signed pushes and pushes with a token. \
     To sign (stock git): run `guts-node git-setup` in your clone; it sets gpg.format=ssh, your Guts key and push.gpgSign=if-asked. \
     Or push with a token from a delegate (`guts-node token new OWNER/NAME`): give it as the password \
     (any user name) or as `Authorization: Bearer <token>`; stock git remembers it with `guts-node token save URL TOKEN`";

/// The push token a request carries, if any. A credential that is not a
/// Guts push token is refused (401), so the client's prompt can ask again.
pub fn from_headers(headers: &HeaderMap) -> Result<Option<PushToken>, NodeError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not text"))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let text = if scheme.eq_ignore_ascii_case("bearer") {
        rest.trim().to_owned()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let raw = B64
            .decode(rest.trim())
            .map_err(|_| unauthorized("the Basic credentials are not base64"))?;
        let pair = String::from_utf8(raw).map_err(|_| unauthorized("bad Basic credentials"))?;
        let (user, password) = pair.split_once(':').unwrap_or((&pair, ""));
        // Any user name; some clients put a token in the user name instead.
        if password.starts_with(TOKEN_PREFIX) || !user.starts_with(TOKEN_PREFIX) {
            password.to_owned()
        } else {
            user.to_owned()
        }
    } else {
        return Err(unauthorized(
            "use HTTP Basic (the token as the password) or Bearer authentication",
        ));
    };
    PushToken::parse(&text)
        .map(Some)
        .map_err(|e| unauthorized(&format!("{e}")))
}

fn unauthorized(why: &str) -> NodeError {
    NodeError::Unauthorized(format!("push token refused: {why}"))
}

/// Check a token against the repository's current identity at time `now`:
/// the grant is for this repository, signed by a current delegate, valid
/// now, and not revoked (whenever the revocation takes effect: the node
/// refuses a revoked grant at once).
pub fn check(
    token: &PushToken,
    identity: &Identity,
    now: u64,
) -> Result<Grant<Verified>, NodeError> {
    let grant = token
        .grant()
        .clone()
        .verify(&identity.id, &identity.doc)
        .map_err(|e| unauthorized(&e.to_string()))?;
    grant
        .check_time(now)
        .map_err(|e| unauthorized(&e.to_string()))?;
    if identity.doc.revoked_at(&grant.id()).is_some() {
        return Err(unauthorized(&format!(
            "its grant {} was revoked",
            grant.id_hex()
        )));
    }
    Ok(grant)
}

/// Whether a client that sends no credentials can sign push certificates,
/// judged by its `User-Agent`: stock git (`git/2.47.0`) and JGit can;
/// libgit2 (`git/2.0 (libgit2 …)`), dulwich (`git/dulwich/…`),
/// isomorphic-git (no `User-Agent` at all), go-git and others cannot, and
/// are asked for a token with a `401` when they start a push, so that
/// their credential prompt or callback runs.
pub fn signs_pushes(headers: &HeaderMap) -> bool {
    let ua = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ua.starts_with("JGit/") {
        return true;
    }
    ua.strip_prefix("git/")
        .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()) && !ua.contains("libgit2"))
}

/// A push grant, as shown with a token push's update.
#[derive(Serialize, Deserialize, Debug, utoipa::ToSchema)]
pub struct GrantView {
    /// The grant id (hex SHA-256 of its body).
    pub id: String,
    /// The delegate who signed it.
    pub granted_by: String,
    /// The key it lets push (the certificate's signer).
    pub grantee: String,
    /// Ref patterns it allows.
    pub refs: Vec<String>,
    /// End of validity (Unix seconds).
    pub not_after: u64,
}

/// The view of an encoded signed grant (`None` if it does not decode).
pub fn grant_view(bytes: &[u8]) -> Option<GrantView> {
    let g = guts_identity::Grant::from_bytes(bytes).ok()?;
    Some(GrantView {
        id: g.id_hex(),
        granted_by: g.signer().to_string(),
        grantee: g.grantee().to_string(),
        refs: g.body().refs.clone(),
        not_after: g.body().not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).expect("header"));
        h
    }

    #[test]
    fn who_signs() {
        for (ua, signs) in [
            ("git/2.47.3", true),
            ("JGit/6.9.0", true),
            ("git/2.0 (libgit2 1.8.1)", false),
            ("git/dulwich/0.22.1", false),
            ("git/isomorphic-git@1.27.1", false),
            ("go-git/5.x", false),
            ("", false),
        ] {
            assert_eq!(
                signs_pushes(&headers(header::USER_AGENT, ua)),
                signs,
                "{ua}"
            );
        }
    }

    #[test]
    fn credentials_that_are_not_tokens_are_refused() {
        assert!(from_headers(&HeaderMap::new()).expect("none").is_none());
        let basic = |s: &str| headers(header::AUTHORIZATION, &format!("Basic {}", B64.encode(s)));
        for bad in [
            basic("user:password"),
            basic("guts_zzz:"),
            headers(header::AUTHORIZATION, "Bearer abc"),
            headers(header::AUTHORIZATION, "Digest x"),
            headers(header::AUTHORIZATION, "Basic !!!"),
        ] {
            let err = from_headers(&bad).expect_err("refused");
            assert!(matches!(err, NodeError::Unauthorized(_)), "{err}");
        }
    }
}

//! Who may change node state over HTTP.
//!
//! - **The operator**: a bearer token created (mode 0600) in the data dir on
//!   first start, `DATA_DIR/operator.token`. The local CLI reads it; remote
//!   tools send `Authorization: Bearer <token>`.
//! - **A repository's delegates**, for that repository only (delete it,
//!   change its settings): `Authorization: GutsAction <base64 SignedAction>`,
//!   an action signed by at least the document's threshold of delegates
//!   over a nonce the node issued (`GET /api/v1/repos/OWNER/NAME/nonce`),
//!   accepted once ([`UsedNonces`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use guts_git::names::RepoName;
use guts_identity::{Did, SignedAction};

use crate::error::NodeError;
use crate::repos::Repos;

/// File name of the operator token in the data dir.
pub const TOKEN_FILE: &str = "operator.token";

/// How often (in claims) expired nonces are swept from the store.
const NONCE_SWEEP_EVERY: u64 = 256;

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The operator's bearer token.
#[derive(Clone)]
pub struct OperatorToken(String);

impl OperatorToken {
    /// Path of the token in `data_dir`.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(TOKEN_FILE)
    }

    /// Read the token, creating it (32 random bytes, hex, mode 0600) on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, NodeError> {
        let path = Self::path(data_dir);
        match std::fs::read_to_string(&path) {
            Ok(t) if t.trim().len() >= 32 => return Ok(OperatorToken(t.trim().to_owned())),
            Ok(_) => {
                return Err(NodeError::Config(format!(
                    "the operator token {} is too short; delete it to have a new one made",
                    path.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(NodeError::Config(format!(
                    "cannot read the operator token {}: {e}",
                    path.display()
                )))
            }
        }
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(|e| NodeError::Internal(e.to_string()))?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        write_private(&path, token.as_bytes())?;
        tracing::info!(path = %path.display(), "created the operator token");
        Ok(OperatorToken(token))
    }

    /// Whether `given` is the token (constant time in the token's length).
    pub fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Write `bytes` to `path` readable by the owner only, atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Who made an authenticated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The node's operator (bearer token).
    Operator,
    /// Delegates of the repository, by a signed action.
    Delegates(Vec<Did>),
}

/// Nonces already used by a push certificate or a signed action. Entries
/// expire with the nonce slop, so the store holds at most the nonces used
/// within one slop window.
#[derive(Clone)]
pub struct UsedNonces {
    tree: sled::Tree,
    claims: std::sync::Arc<AtomicU64>,
}

impl UsedNonces {
    /// Open the `used-nonces` tree.
    pub fn open(db: &sled::Db) -> Result<Self, NodeError> {
        Ok(UsedNonces {
            tree: db
                .open_tree("used-nonces")
                .map_err(|e| NodeError::Internal(e.to_string()))?,
            claims: Default::default(),
        })
    }

    /// Claim `nonce` until `expires` (seconds since the epoch): `Ok(false)`
    /// if it was claimed before.
    pub fn claim(&self, nonce: &str, expires: u64) -> Result<bool, NodeError> {
        let internal = |e: sled::Error| NodeError::Internal(e.to_string());
        let fresh = self
            .tree
            .compare_and_swap(
                nonce.as_bytes(),
                None as Option<&[u8]>,
                Some(&expires.to_be_bytes()[..]),
            )
            .map_err(internal)?
            .is_ok();
        // No flush of its own: the commit or change the nonce authorizes
        // flushes the database (this tree with it) before it is answered.
        if self
            .claims
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(NONCE_SWEEP_EVERY)
        {
            self.sweep(now())?;
        }
        Ok(fresh)
    }

    /// Remove the nonces that expired before `now`.
    pub fn sweep(&self, now: u64) -> Result<usize, NodeError> {
        let mut removed = 0;
        for item in self.tree.iter() {
            let (k, v) = item.map_err(|e| NodeError::Internal(e.to_string()))?;
            let expires = v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
            if expires < now {
                let _ = self.tree.remove(k);
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// The request must carry the operator token.
pub fn require_operator(token: &OperatorToken, headers: &HeaderMap) -> Result<Caller, NodeError> {
    match authorization(headers).and_then(|a| a.strip_prefix("Bearer ")) {
        Some(given) if token.matches(given.trim()) => Ok(Caller::Operator),
        Some(_) => Err(NodeError::Unauthorized(
            "the operator token is not valid".into(),
        )),
        None => Err(NodeError::Unauthorized(format!(
            "this changes the node: send `Authorization: Bearer <token>` with the operator token from DATA_DIR/{TOKEN_FILE} (the local CLI does so)"
        ))),
    }
}

/// The request must carry the operator token, or an action `action` on
/// `repo` signed by its delegates. Blocking (sled).
pub fn require_operator_or_delegates(
    token: &OperatorToken,
    repos: &Repos,
    repo: &RepoName,
    action: &str,
    headers: &HeaderMap,
) -> Result<Caller, NodeError> {
    let Some(signed) = authorization(headers).and_then(|a| a.strip_prefix("GutsAction ")) else {
        return require_operator(token, headers).map_err(|_| {
            NodeError::Unauthorized(format!(
                "only the node's operator (Authorization: Bearer) or the repository's delegates \
                 (Authorization: GutsAction, a `{action}` action they signed; `guts-node repo` does it) may do this"
            ))
        });
    };
    let bytes = B64
        .decode(signed.trim())
        .map_err(|e| NodeError::Unauthorized(format!("the signed action is not base64: {e}")))?;
    let identity = repos.identity(repo)?;
    let (signed_action, signers) = SignedAction::from_bytes(&bytes)
        .and_then(|a| a.verify(&identity.id, &identity.doc))
        .map_err(|e| NodeError::Unauthorized(e.to_string()))?;
    if signed_action.action != action {
        return Err(NodeError::Unauthorized(format!(
            "the signed action is `{}`, this request is `{action}`",
            signed_action.action
        )));
    }
    for did in &signers {
        repos.charge(did)?;
    }
    repos.check_nonce(repo, &signed_action.nonce)?;
    Ok(Caller::Delegates(signers))
}

//! What a push must prove on this node: a push certificate that verifies,
//! is signed by a delegate, names this repository and answers a fresh nonce
//! of this node; or a push token whose grant allows the pushed refs, with
//! which the node signs such a certificate itself ([`crate::tokens`]). The
//! verified certificate is carried, as an [`AuthorizedPush`], into the
//! commit that moves the refs and logs it.

use std::collections::HashSet;

use guts_git::names::RepoName;
use guts_git::receive_pack::{Command, PushPolicy};
use guts_git::storage::{RefRejection, RefUpdate, Repo};
use guts_identity::doc::RepoId;
use guts_identity::{PushCert, PushToken, SignedRefUpdate, Verified};

use crate::error::NodeError;
use crate::identity::Identity;
use crate::log::Entry;
use crate::repos::Repos;

/// How long an advertised push-certificate nonce stays valid, by default.
pub const DEFAULT_NONCE_SLOP_SECS: u64 = 600;

/// A push whose certificate verified and authorized it.
pub struct AuthorizedPush {
    cert: PushCert<Verified>,
    /// The signed grant a token push was made under (empty otherwise).
    grant: Vec<u8>,
    repo_id: RepoId,
    doc_version: u64,
}

impl AuthorizedPush {
    /// The log entry of this push when the refs in `applied` are updated:
    /// every other ref of the certificate is recorded as refused, so it
    /// moves nowhere.
    pub(crate) fn into_entry(self, applied: &HashSet<&str>) -> Result<(RepoId, Entry), NodeError> {
        let mut refused: Vec<String> = self
            .cert
            .commands()
            .iter()
            .map(|c| c.name.clone())
            .filter(|n| !applied.contains(n.as_str()))
            .collect();
        refused.sort();
        refused.dedup();
        let update = SignedRefUpdate {
            repo_id: self.repo_id.0.to_vec(),
            certificate: self.cert.text().to_owned(),
            doc_version: self.doc_version,
            refused,
            grant: self.grant,
        };
        let entry = Entry::new(update, &self.cert).map_err(NodeError::Invalid)?;
        Ok((self.repo_id, entry))
    }
}

/// The push policy of one repository.
pub struct SignedPushPolicy<'a> {
    repos: &'a Repos,
    repo: RepoName,
    identity: Identity,
    /// Hosts (`host[:port]`) a certificate's pushee may name: the request's
    /// `Host` and the node's configured public URLs.
    hosts: Vec<String>,
    /// Why every push is refused before it is read (low disk, quota).
    refusal: Option<String>,
    /// The push token the request carried, if any.
    token: Option<PushToken>,
}

impl<'a> SignedPushPolicy<'a> {
    /// The policy of `repo` under its already loaded `identity`, for a
    /// request addressed to `host` (its `Host` header).
    pub fn with_identity(
        repos: &'a Repos,
        repo: &RepoName,
        identity: Identity,
        host: Option<&str>,
    ) -> Self {
        let mut hosts = repos.rules().public_hosts();
        hosts.extend(host.map(str::to_ascii_lowercase));
        SignedPushPolicy {
            repos,
            repo: repo.clone(),
            identity,
            hosts,
            refusal: None,
            token: None,
        }
    }

    /// Authorize an unsigned push with `token` (from the request's
    /// `Authorization` header).
    pub fn with_token(mut self, token: Option<PushToken>) -> Self {
        self.token = token;
        self
    }

    /// Refuse every push with `reason` (told to the pusher after their
    /// commands are read, on each ref).
    pub fn refusing(mut self, reason: Option<String>) -> Self {
        self.refusal = reason;
        self
    }

    /// The certificate's pushee must name this node: its host is the
    /// request's or one of the node's public URLs (the path was checked
    /// against the repository by `update::authorize`).
    fn check_pushee(&self, cert: &PushCert<Verified>) -> Result<(), String> {
        let pushee = cert.pushee().unwrap_or_default();
        let host = pushee
            .split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or_default())
            .map(|h| {
                h.rsplit('@')
                    .next()
                    .unwrap_or_default()
                    .to_ascii_lowercase()
            });
        match host {
            Some(h) if self.hosts.contains(&h) => Ok(()),
            _ => Err(format!(
                "push certificate refused: its pushee {pushee:?} does not name this node \
                 (expected one of: {})",
                self.hosts.join(", ")
            )),
        }
    }
}

impl PushPolicy for SignedPushPolicy<'_> {
    type Authorized = AuthorizedPush;

    fn cert_nonce(&self) -> Option<String> {
        Some(self.repos.issue_nonce(&self.repo))
    }

    fn authorize(
        &self,
        cert: Option<&str>,
        commands: &[Command],
    ) -> Result<AuthorizedPush, String> {
        if let Some(reason) = &self.refusal {
            return Err(reason.clone());
        }
        let text = match (cert, &self.token) {
            (Some(text), _) => text,
            (None, Some(token)) => return self.authorize_token(token, commands),
            (None, None) => return Err(crate::tokens::NO_CREDENTIAL_HELP.to_owned()),
        };
        let cert = PushCert::parse(text)
            .and_then(PushCert::verify)
            .map_err(|e| e.to_string())?;
        guts_identity::update::authorize(&cert, &self.identity.doc).map_err(|e| e.to_string())?;
        self.repos
            .charge(&cert.signer())
            .map_err(|e| e.to_string())?;
        let nonce = cert
            .nonce()
            .ok_or("push certificate refused: it carries no nonce")?;
        if !same_commands(&cert, commands) {
            return Err(
                "push certificate refused: its ref lines differ from the pushed commands".into(),
            );
        }
        self.check_pushee(&cert)?;
        self.repos
            .check_nonce(&self.repo, nonce)
            .map_err(|e| format!("push certificate refused: {e}"))?;
        tracing::info!(repo = %self.repo, signer = %cert.signer(), "signed push authorized");
        Ok(AuthorizedPush {
            cert,
            grant: Vec::new(),
            repo_id: self.identity.id,
            doc_version: self.identity.doc.body().version,
        })
    }

    fn commit(
        &self,
        repo: &Repo,
        authorized: AuthorizedPush,
        updates: &[RefUpdate],
        atomic: bool,
    ) -> guts_git::Result<Vec<Result<(), RefRejection>>> {
        self.repos
            .commit_push(repo, authorized, updates, atomic)
            .map_err(NodeError::into_git)
    }
}

impl SignedPushPolicy<'_> {
    /// A token push: the grant must allow every pushed ref now; the node
    /// then signs, as the grantee, a certificate naming the grant, this
    /// node and a nonce it uses at once, and checks it as a peer will.
    fn authorize_token(
        &self,
        token: &PushToken,
        commands: &[Command],
    ) -> Result<AuthorizedPush, String> {
        let now = crate::auth::now();
        let doc = &self.identity.doc;
        let grant = crate::tokens::check(token, &self.identity, now).map_err(|e| e.to_string())?;
        if let Some(name) = grant.first_denied(commands.iter().map(|c| c.name.as_str())) {
            return Err(format!(
                "push token refused: its grant allows only {}, not {name}",
                grant.body().refs.join(", ")
            ));
        }
        self.repos
            .charge(&grant.grantee())
            .map_err(|e| e.to_string())?;
        let host = self.hosts.last().map_or("localhost", String::as_str);
        let pushee = format!(
            "http://{host}/{}/{}.git",
            doc.owner().method_id(),
            doc.body().name
        );
        let nonce = self.repos.issue_nonce(&self.repo);
        let zero = "0".repeat(40);
        let hex =
            |id: &Option<guts_git::ObjectId>| id.map_or_else(|| zero.clone(), |i| i.to_string());
        let lines: Vec<(String, String, String)> = commands
            .iter()
            .map(|c| (hex(&c.old), hex(&c.new), c.name.clone()))
            .collect();
        let cert = token
            .certificate(&pushee, &nonce, now, &lines)
            .and_then(PushCert::verify)
            .map_err(|e| format!("push token refused: {e}"))?;
        guts_identity::update::authorize_granted(&cert, &grant, doc, doc)
            .map_err(|e| e.to_string())?;
        self.repos
            .check_nonce(&self.repo, &nonce)
            .map_err(|e| format!("push token refused: {e}"))?;
        tracing::info!(repo = %self.repo, grantee = %grant.grantee(), granted_by = %grant.signer(), grant = %grant.id_hex(), "token push authorized");
        Ok(AuthorizedPush {
            cert,
            grant: grant.to_bytes().to_vec(),
            repo_id: self.identity.id,
            doc_version: doc.body().version,
        })
    }
}

fn same_commands(cert: &PushCert<Verified>, commands: &[Command]) -> bool {
    let zero = "0".repeat(40);
    let hex = |id: &Option<guts_git::ObjectId>| id.map_or_else(|| zero.clone(), |i| i.to_string());
    cert.commands().len() == commands.len()
        && cert
            .commands()
            .iter()
            .zip(commands)
            .all(|(a, b)| a.old == hex(&b.old) && a.new == hex(&b.new) && a.name == b.name)
}

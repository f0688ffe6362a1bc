//! The node's rules for strangers: who may create repositories here, how
//! much each owner may store, and when the node stops taking writes. Set
//! in the config file (`[rules]`), with defaults safe for a public node.

use std::path::{Path, PathBuf};

use guts_identity::Did;
use serde::Deserialize;

use crate::error::NodeError;

/// Repositories one owner may have on a public node, by default.
pub const DEFAULT_MAX_REPOS_PER_OWNER: u64 = 100;
/// Repositories one owner may have on a personal node (HTTP on loopback
/// only), by default.
pub const DEFAULT_MAX_REPOS_PER_OWNER_LOCAL: u64 = 10_000;
/// Bytes of packs one repository may hold, by default (10 GiB).
pub const DEFAULT_MAX_REPO_BYTES: u64 = 10 << 30;
/// Bytes of packs all of one owner's repositories may hold, by default (20 GiB).
pub const DEFAULT_MAX_OWNER_BYTES: u64 = 20 << 30;
/// Free bytes under which the node refuses new writes, by default (1 GiB).
pub const DEFAULT_MIN_FREE_BYTES: u64 = 1 << 30;
/// Writes (creations, pushes, identity updates, signed actions) per second
/// one DID may make on a public node, by default (a personal node, HTTP on
/// loopback only, has no per-DID limit unless configured).
pub const DEFAULT_DID_RATE: f64 = 1.0;
/// Writes one DID may make in a burst, by default.
pub const DEFAULT_DID_BURST: u32 = 60;
/// How long a deleted repository's aliases stay reserved for its owner, by default (30 days).
pub const DEFAULT_ALIAS_GRACE_SECS: u64 = 30 * 24 * 3600;

/// What a refusal for low disk space says.
pub const LOW_DISK: &str =
    "the node is low on disk space; it serves reads but takes no writes until space is freed";

/// Who may create repositories on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CreatePolicy {
    /// Anyone with an identity (a personal node on loopback).
    Open,
    /// Only the DIDs in `create_allow`.
    Allowlist,
    /// Nobody (repositories arrive only by seeding).
    Closed,
}

/// The `[rules]` table of the config file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// `open`, `allowlist` or `closed` [default: open when HTTP listens on
    /// loopback only, allowlist otherwise].
    pub create: Option<CreatePolicy>,
    /// DIDs (`did:key:z6Mk...` or `z6Mk...`) allowed to create repositories.
    #[serde(default)]
    pub create_allow: Vec<String>,
    /// Repositories per owner.
    pub max_repos_per_owner: Option<u64>,
    /// Bytes of packs per repository.
    pub max_repo_bytes: Option<u64>,
    /// Bytes of packs per owner, all repositories together.
    pub max_owner_bytes: Option<u64>,
    /// Free disk bytes under which writes are refused.
    pub min_free_bytes: Option<u64>,
    /// Seconds a deleted repository's aliases stay reserved for its owner.
    pub alias_grace_secs: Option<u64>,
    /// Public URLs of this node (e.g. `https://git.example.org`): push
    /// certificates may name them as pushee, besides the request's host.
    #[serde(default)]
    pub public_urls: Vec<String>,
    /// `all` (default) or `allowlist`: which repositories this node takes
    /// from peers (`guts-node seed`, identity adoption).
    pub seed: Option<SeedPolicy>,
    /// Repositories (`OWNER/NAME`) or owner DIDs seeded under `allowlist`.
    #[serde(default)]
    pub seed_allow: Vec<String>,
    /// Repositories or owner DIDs this node never creates nor seeds.
    #[serde(default)]
    pub block: Vec<String>,
    /// Writes per second one DID may make (0: no limit).
    pub did_rate_limit: Option<f64>,
    /// Writes one DID may make in a burst.
    pub did_rate_burst: Option<u32>,
}

/// Which repositories a node takes from peers (Radicle's "follow all" or
/// "selective").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeedPolicy {
    /// Any repository an operator or a peer asks for.
    All,
    /// Only those in `seed_allow` (by name or owner).
    Allowlist,
}

/// A repository or an owner, as the seeding lists name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One repository, canonical `OWNER/NAME`.
    Repo(String),
    /// Every repository of an owner (its `z6Mk...` id).
    Owner(String),
}

impl Scope {
    fn parse(s: &str) -> Result<Scope, NodeError> {
        if let Ok(did) = Did::parse_any(s) {
            return Ok(Scope::Owner(did.method_id()));
        }
        guts_git::names::RepoName::parse(s)
            .map(|n| Scope::Repo(n.to_string()))
            .map_err(|e| NodeError::Config(format!("{s:?} is neither a DID nor OWNER/NAME: {e}")))
    }

    fn covers(&self, repo: &guts_git::names::RepoName) -> bool {
        match self {
            Scope::Repo(r) => *r == repo.to_string(),
            Scope::Owner(o) => o == repo.owner(),
        }
    }
}

/// The resolved rules.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Who may create repositories.
    pub create: CreatePolicy,
    /// Allowed creators under [`CreatePolicy::Allowlist`].
    pub create_allow: Vec<Did>,
    /// Repositories per owner.
    pub max_repos_per_owner: u64,
    /// Bytes per repository.
    pub max_repo_bytes: u64,
    /// Bytes per owner.
    pub max_owner_bytes: u64,
    /// Free bytes under which writes are refused.
    pub min_free_bytes: u64,
    /// Alias reservation after a deletion, seconds.
    pub alias_grace_secs: u64,
    /// Public URLs.
    pub public_urls: Vec<String>,
    /// Which repositories the node takes from peers.
    pub seed: SeedPolicy,
    /// Seeded under [`SeedPolicy::Allowlist`].
    pub seed_allow: Vec<Scope>,
    /// Never created nor seeded.
    pub block: Vec<Scope>,
    /// Writes per DID (`per_sec` 0: no limit).
    pub did_rate: crate::limits::RateLimit,
    /// Where free space is measured.
    pub data_dir: PathBuf,
}

impl Rules {
    /// Resolve `config` for a node whose HTTP side is `public` (not loopback only).
    pub fn resolve(config: RulesConfig, public: bool, data_dir: &Path) -> Result<Self, NodeError> {
        let create_allow = config
            .create_allow
            .iter()
            .map(|d| {
                Did::parse_any(d).map_err(|e| NodeError::Config(format!("rules.create_allow: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let default_create = if public {
            CreatePolicy::Allowlist
        } else {
            CreatePolicy::Open
        };
        Ok(Rules {
            create: config.create.unwrap_or(default_create),
            create_allow,
            max_repos_per_owner: config.max_repos_per_owner.unwrap_or(if public {
                DEFAULT_MAX_REPOS_PER_OWNER
            } else {
                DEFAULT_MAX_REPOS_PER_OWNER_LOCAL
            }),
            max_repo_bytes: config.max_repo_bytes.unwrap_or(DEFAULT_MAX_REPO_BYTES),
            max_owner_bytes: config.max_owner_bytes.unwrap_or(DEFAULT_MAX_OWNER_BYTES),
            min_free_bytes: config.min_free_bytes.unwrap_or(DEFAULT_MIN_FREE_BYTES),
            alias_grace_secs: config.alias_grace_secs.unwrap_or(DEFAULT_ALIAS_GRACE_SECS),
            seed: config.seed.unwrap_or(SeedPolicy::All),
            seed_allow: parse_scopes(&config.seed_allow)?,
            block: parse_scopes(&config.block)?,
            did_rate: crate::limits::RateLimit {
                per_sec: config
                    .did_rate_limit
                    .unwrap_or(if public { DEFAULT_DID_RATE } else { 0.0 })
                    .max(0.0),
                burst: config.did_rate_burst.unwrap_or(DEFAULT_DID_BURST).max(1),
            },
            public_urls: config.public_urls,
            data_dir: data_dir.to_owned(),
        })
    }

    /// One line for the startup log.
    pub fn describe(&self) -> String {
        let create = match self.create {
            CreatePolicy::Open => "anyone with an identity may create repositories".to_owned(),
            CreatePolicy::Allowlist => format!(
                "only {} listed DID(s) may create repositories (rules.create_allow)",
                self.create_allow.len()
            ),
            CreatePolicy::Closed => "nobody may create repositories here".to_owned(),
        };
        let rate = if self.did_rate.per_sec > 0.0 {
            format!(
                "{} writes/s per DID (bursts of {})",
                self.did_rate.per_sec, self.did_rate.burst
            )
        } else {
            "no per-DID write limit".to_owned()
        };
        format!(
            "{create}; at most {} repositories and {} bytes per owner, {} bytes per repository; {rate}; writes stop under {} free bytes",
            self.max_repos_per_owner, self.max_owner_bytes, self.max_repo_bytes, self.min_free_bytes
        )
    }

    /// Hosts (`host[:port]`, lower case) of the public URLs.
    pub fn public_hosts(&self) -> Vec<String> {
        self.public_urls
            .iter()
            .filter_map(|u| u.split_once("://").map(|(_, r)| r))
            .map(|r| r.split('/').next().unwrap_or_default().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect()
    }

    /// May `owner` create a repository here?
    pub fn check_create(&self, owner: &Did) -> Result<(), NodeError> {
        match self.create {
            CreatePolicy::Open => Ok(()),
            CreatePolicy::Allowlist if self.create_allow.contains(owner) => Ok(()),
            CreatePolicy::Allowlist => Err(NodeError::Forbidden(format!(
                "{owner} may not create repositories on this node (it accepts only the DIDs its operator lists)"
            ))),
            CreatePolicy::Closed => Err(NodeError::Forbidden(
                "this node does not accept new repositories".into(),
            )),
        }
    }

    /// Refuse repositories or owners on the block list.
    pub fn check_blocked(&self, repo: &guts_git::names::RepoName) -> Result<(), NodeError> {
        if self.block.iter().any(|s| s.covers(repo)) {
            return Err(NodeError::Forbidden(format!(
                "{repo} is blocked on this node"
            )));
        }
        Ok(())
    }

    /// May this node take `repo` from peers?
    pub fn check_seed(&self, repo: &guts_git::names::RepoName) -> Result<(), NodeError> {
        self.check_blocked(repo)?;
        match self.seed {
            SeedPolicy::All => Ok(()),
            SeedPolicy::Allowlist if self.seed_allow.iter().any(|s| s.covers(repo)) => Ok(()),
            SeedPolicy::Allowlist => Err(NodeError::Forbidden(format!(
                "this node seeds only the repositories its operator lists, and not {repo}"
            ))),
        }
    }

    /// Refuse writes when the data dir's file system is low on space.
    pub fn check_disk(&self) -> Result<(), NodeError> {
        match free_bytes(&self.data_dir) {
            Some(free) if free < self.min_free_bytes => Err(NodeError::LowDisk(LOW_DISK.into())),
            _ => Ok(()),
        }
    }
}

fn parse_scopes(list: &[String]) -> Result<Vec<Scope>, NodeError> {
    list.iter().map(|s| Scope::parse(s)).collect()
}

/// Free bytes available to this process on `path`'s file system.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe_zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail.saturating_mul(st.f_frsize))
}

fn unsafe_zeroed() -> libc::statvfs {
    // SAFETY: statvfs is a plain C struct; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

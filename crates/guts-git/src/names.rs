//! Validation of repository names and ref names.

use crate::error::{Error, Result};
use crate::limits::MAX_REPO_SEGMENT_LEN;

/// A validated `OWNER/NAME` repository name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName {
    owner: String,
    name: String,
}

impl RepoName {
    /// Validate `owner` and `name`. A trailing `.git` on `name` is removed.
    ///
    /// Each segment is `[A-Za-z0-9._-]`, does not start with a dot, is not `..`
    /// and is at most [`MAX_REPO_SEGMENT_LEN`] bytes.
    pub fn new(owner: &str, name: &str) -> Result<Self> {
        let name = name.strip_suffix(".git").unwrap_or(name);
        let full = format!("{owner}/{name}");
        check_segment(owner).map_err(|reason| Error::InvalidRepoName {
            name: full.clone(),
            reason,
        })?;
        check_segment(name).map_err(|reason| Error::InvalidRepoName {
            name: full.clone(),
            reason,
        })?;
        Ok(RepoName {
            owner: owner.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Parse `OWNER/NAME` (or `OWNER/NAME.git`).
    pub fn parse(s: &str) -> Result<Self> {
        match s.split_once('/') {
            Some((owner, name)) => RepoName::new(owner, name),
            None => Err(Error::InvalidRepoName {
                name: s.to_owned(),
                reason: "expected OWNER/NAME",
            }),
        }
    }

    /// The owner segment.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The name segment, without `.git`.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for RepoName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

fn check_segment(s: &str) -> std::result::Result<(), &'static str> {
    if s.is_empty() {
        return Err("empty segment");
    }
    if s.len() > MAX_REPO_SEGMENT_LEN {
        return Err("segment longer than 100 bytes");
    }
    if s.starts_with('.') {
        return Err("segment starts with a dot");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("only A-Z, a-z, 0-9, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Check a full ref name the way `git check-ref-format` does, and require it
/// to live under `refs/` (receive-pack refuses anything else).
pub fn check_ref_name(name: &str) -> Result<()> {
    let invalid = || Error::InvalidRefName(name.to_owned());
    if !name.starts_with("refs/") || name.len() > crate::limits::MAX_REF_NAME_LEN {
        return Err(invalid());
    }
    gix_validate::reference::name(name.as_bytes().into()).map_err(|_| invalid())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_names() {
        assert!(RepoName::new("alice", "demo").is_ok());
        assert_eq!(
            RepoName::new("alice", "demo.git")
                .map(|r| r.to_string())
                .ok(),
            Some("alice/demo".to_owned())
        );
        assert!(RepoName::new("a-b_c.d", "x.y").is_ok());
        for (o, n) in [
            ("..", "x"),
            (".hidden", "x"),
            ("alice", ""),
            ("a b", "x"),
            ("alice", "a/b"),
            ("alice", "ü"),
        ] {
            assert!(RepoName::new(o, n).is_err(), "{o}/{n} should be invalid");
        }
        assert!(RepoName::new(&"a".repeat(101), "x").is_err());
        assert!(RepoName::new(&"a".repeat(100), "x").is_ok());
        assert!(RepoName::parse("nodash").is_err());
    }

    #[test]
    fn ref_names() {
        for ok in [
            "refs/heads/main",
            "refs/tags/v1.0",
            "refs/heads/feature/x-1",
        ] {
            assert!(check_ref_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "HEAD",
            "main",
            "refs/heads/a..b",
            "refs/heads/x.lock",
            "refs/heads/a~b",
            "refs/heads/a^b",
            "refs/heads/a:b",
            "refs/heads/a b",
            "refs/heads/end/",
            "refs/heads/.hidden",
            "refs/heads/a@{b",
            "refs/heads//double",
        ] {
            assert!(check_ref_name(bad).is_err(), "{bad} should be invalid");
        }
    }
}
